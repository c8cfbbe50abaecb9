/**
 * Direct reads (src/gateway/direct-reads.ts) on real loopback sockets: every
 * chunk handed out keeps its bytes after later reads reuse the scratch
 * buffer, pause() holds the bytes back in the kernel until resume(), EOF and
 * half-close arrive as 'end', a read observer sees each chunk first, a write
 * observer sees what write and end(data) are handed, TLS can
 * still wrap an adopted socket, and a socket that is already reading is
 * left as it is.
 */
import t from 'tap';
import { randomBytes } from 'node:crypto';
import { once } from 'node:events';
import { mkdtempSync, rmSync } from 'node:fs';
import { connect, createServer, type Server, type Socket } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import tls from 'node:tls';
import { adoptWithDirectReads, observeReads, observeWrites, unobserveReads, unobserveWrites, withDirectReadOption } from '../../src/gateway/direct-reads.js';
import { createServerSecureContext, loadServerTls } from '../../src/gateway/tls.js';

/** Listens on a loopback port, closed with the test; resolves the port. */
async function listen(t: { teardown(fn: () => unknown): void }, server: Server): Promise<number> {
  server.listen(0, '127.0.0.1');
  await once(server, 'listening');
  t.teardown(() => server.close());
  const address = server.address();
  if (address === null || typeof address === 'string') throw new Error('no port');
  return address.port;
}

/** A loopback server whose accepted sockets are adopted; resolves its port and a queue of adopted sockets. */
async function adoptingServer(t: { teardown(fn: () => unknown): void }): Promise<{ port: number; next(): Promise<Socket> }> {
  const waiting: Array<(s: Socket) => void> = [];
  const ready: Socket[] = [];
  const server: Server = createServer({ allowHalfOpen: true, pauseOnConnect: true }, (raw) => {
    const s = adoptWithDirectReads(raw);
    const w = waiting.shift();
    if (w) w(s);
    else ready.push(s);
  });
  return {
    port: await listen(t, server),
    next: () => new Promise<Socket>((resolve) => (ready.length > 0 ? resolve(ready.shift()!) : waiting.push(resolve))),
  };
}

function dial(port: number): Promise<Socket> {
  return new Promise((resolve, reject) => {
    const s = connect({ port, host: '127.0.0.1', allowHalfOpen: true }, () => resolve(s));
    s.once('error', reject);
  });
}

/** A client connected to an adopting server, and the server's adopted socket for it. */
async function connectedPair(t: { teardown(fn: () => unknown): void }): Promise<{ client: Socket; server: Socket }> {
  const srv = await adoptingServer(t);
  const client = await dial(srv.port);
  return { client, server: await srv.next() };
}

t.test('chunks kept from many reads hold exactly the bytes sent', async (t) => {
  const { client, server } = await connectedPair(t);
  const kept: Buffer[] = [];
  server.on('data', (chunk: Buffer) => kept.push(chunk));
  server.resume();
  const ended = once(server, 'end');
  // Many writes of odd sizes: many reads, each through the same scratch buffer.
  const parts: Buffer[] = [];
  for (let i = 0; i < 400; i++) parts.push(randomBytes(1 + ((i * 7919) % 9000)));
  for (const p of parts) client.write(p);
  client.end();
  await ended;
  t.ok(kept.length > 1, `arrived in ${kept.length} reads`);
  t.ok(Buffer.concat(kept).equals(Buffer.concat(parts)), 'every kept chunk still holds its own bytes');
  server.destroy();
});

t.test('pause() keeps further bytes in the kernel until resume()', async (t) => {
  const { client, server } = await connectedPair(t);
  const seen: Buffer[] = [];
  let pausedAt = -1;
  server.on('data', (chunk: Buffer) => {
    seen.push(chunk);
    if (pausedAt < 0) {
      pausedAt = seen.length;
      server.pause();
    }
  });
  server.resume();
  client.write('first');
  await new Promise<void>((resolve) => {
    const check = (): void => (seen.length > 0 ? resolve() : void setImmediate(check));
    check();
  });
  client.end('second');
  await once(client, 'finish');
  // The client's bytes are in the server's kernel buffer now; a paused socket must not hand them over.
  await new Promise((resolve) => setTimeout(resolve, 100));
  t.equal(seen.length, pausedAt, 'nothing delivered while paused');
  const ended = once(server, 'end');
  server.resume();
  await ended;
  t.equal(Buffer.concat(seen).toString(), 'firstsecond', 'everything delivered after resume, in order');
  server.destroy();
});

t.test('half-close: the server sees end and can still answer', async (t) => {
  const { client, server } = await connectedPair(t);
  server.on('data', () => {});
  server.resume();
  const reply: Buffer[] = [];
  client.on('data', (d: Buffer) => reply.push(d));
  const clientEnded = once(client, 'end');
  client.end('bye');
  await once(server, 'end');
  server.end('answered after your FIN');
  await clientEnded;
  t.equal(Buffer.concat(reply).toString(), 'answered after your FIN');
});

t.test('a read observer sees each chunk before any data listener, and only on sockets that read directly', async (t) => {
  const { client, server } = await connectedPair(t);
  const order: string[] = [];
  server.prependListener('data', (c: Buffer) => void order.push(`listener:${c.toString()}`));
  t.ok(observeReads(server, (c) => void order.push(`observer:${c.toString()}`)));
  server.resume();
  client.write('one');
  while (order.length < 2) await new Promise((resolve) => setImmediate(resolve));
  t.same(order, ['observer:one', 'listener:one']);
  t.ok(unobserveReads(server), 'removed');
  t.notOk(unobserveReads(server), 'nothing left to remove');
  client.write('two');
  while (order.length < 3) await new Promise((resolve) => setImmediate(resolve));
  t.same(order.slice(2), ['listener:two'], 'no observer after removal');
  t.notOk(observeReads(client, () => {}), 'a socket that does not read directly takes no observer');
  client.destroy();
  server.destroy();
});

t.test('an observer called afterward runs once per read, after every data listener returned', async (t) => {
  const { client, server } = await connectedPair(t);
  const order: string[] = [];
  server.on('data', (c: Buffer) => void order.push(`listener:${c.toString()}`));
  t.ok(observeReads(server, (c) => void order.push(`observer:${c.toString()}`), () => void order.push('afterward')));
  server.resume();
  client.write('one');
  while (order.length < 3) await new Promise((resolve) => setImmediate(resolve));
  client.write('two');
  while (order.length < 6) await new Promise((resolve) => setImmediate(resolve));
  t.same(order, ['observer:one', 'listener:one', 'afterward', 'observer:two', 'listener:two', 'afterward']);
  unobserveReads(server);
  client.destroy();
  server.destroy();
});

t.test('a write observer sees what write and end(data) are handed, and adds no property to the socket', async (t) => {
  const { client, server } = await connectedPair(t);
  const ownBefore = Object.getOwnPropertyNames(server).sort();
  const seen: string[] = [];
  t.ok(observeWrites(server, (chunk, encoding) => void seen.push(`${String(chunk)}/${encoding ?? '-'}`)));
  t.same(Object.getOwnPropertyNames(server).sort(), ownBefore, 'same own properties: the observer is a field of the class');
  const received: Buffer[] = [];
  client.on('data', (c: Buffer) => void received.push(c));
  const ended = once(client, 'end');
  server.write(Buffer.from('one'));
  server.write('two', 'latin1');
  server.end('three');
  await ended;
  t.equal(Buffer.concat(received).toString(), 'onetwothree');
  t.same(seen, ['one/-', 'two/latin1', 'three/-']);
  t.ok(unobserveWrites(server), 'removed');
  t.notOk(unobserveWrites(server), 'nothing left to remove');
  t.notOk(observeWrites(client, () => {}), 'a socket not adopted here takes no observer');
  client.destroy();
});

t.test('TLS wraps an adopted socket after plaintext was read from it (PostgreSQL SSLRequest)', async (t) => {
  const stateDir = mkdtempSync(join(tmpdir(), 'sluice-direct-reads-'));
  t.teardown(() => rmSync(stateDir, { recursive: true, force: true }));
  const secureContext = createServerSecureContext(await loadServerTls({ stateDir }));
  const { client, server } = await connectedPair(t);
  server.once('data', (first: Buffer) => {
    t.equal(first.toString(), 'upgrade?');
    server.pause();
    server.write('S');
    const secure = new tls.TLSSocket(server, { isServer: true, secureContext });
    secure.on('data', (d: Buffer) => secure.end(`echo:${d.toString()}`));
    secure.on('error', () => {});
  });
  server.resume();
  client.write('upgrade?');
  const [answer] = (await once(client, 'data')) as [Buffer];
  t.equal(answer.toString(), 'S');
  const secure = tls.connect({ socket: client, rejectUnauthorized: false });
  await once(secure, 'secureConnect');
  secure.write('inside');
  const got: Buffer[] = [];
  secure.on('data', (d: Buffer) => got.push(d));
  await once(secure, 'end');
  t.equal(Buffer.concat(got).toString(), 'echo:inside');
  secure.destroy();
});

t.test('an upstream connection made with the option reads the same way', async (t) => {
  const payload = randomBytes(300_000);
  const port = await listen(t, createServer((s) => s.end(payload)));
  const socket = connect(withDirectReadOption({ host: '127.0.0.1', port }));
  const kept: Buffer[] = [];
  socket.on('data', (chunk: Buffer) => kept.push(chunk));
  await once(socket, 'end');
  t.ok(Buffer.concat(kept).equals(payload), 'all bytes, intact');
  socket.destroy();
});

t.test('a socket that is already reading is returned unchanged', async (t) => {
  const accepted: Socket[] = [];
  const client = await dial(await listen(t, createServer((s) => accepted.push(s))));
  while (accepted.length === 0) await new Promise((resolve) => setImmediate(resolve));
  const s = accepted[0]!;
  s.on('data', () => {}); // flowing
  t.equal(adoptWithDirectReads(s), s);
  client.destroy();
  s.destroy();
});

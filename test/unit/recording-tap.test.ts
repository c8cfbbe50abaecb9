/**
 * The recording's cheap paths, checked for what they must not change:
 * - Redis "after framing" mode records a framed chunk straight from the
 *   socket's buffer and copies only what stays pending, so a buffer reused
 *   after its `data` event never alters the recording;
 * - full slabs whose records are on disk are handed to the next writer, and
 *   neither writer's file is disturbed by that;
 * - a client chunk read directly is recorded after the relay handled it,
 *   yet before any reply written meanwhile: the order stays as received,
 *   whether the tap observes the reads or the relay hands them over;
 * - one spare slab per open writer is kept for reuse, and no more than the
 *   floor once they closed;
 * - a short session's first slab goes to the next session, only once the
 *   seal thread has written its records.
 */
import { randomBytes } from 'node:crypto';
import { EventEmitter, once } from 'node:events';
import { mkdtempSync, rmSync } from 'node:fs';
import { connect, createServer, type AddressInfo, type Socket } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import t, { type Test } from 'tap';
import { adoptWithDirectReads } from '../../src/gateway/direct-reads.js';
import type { RecordingMeta } from '../../src/recording/format.js';
import { loadRecordingPublicKeys, openRecordingKey } from '../../src/recording/keys.js';
import { readRecording } from '../../src/recording/reader.js';
import { sealThread } from '../../src/recording/seal-thread.js';
import { RecordingTap } from '../../src/recording/tap.js';
import { verifyRecording } from '../../src/recording/verify.js';
import { RecordingWriter, spareSlabStats, trimSpareSlabs } from '../../src/recording/writer.js';

function tempDir(t: Test): string {
  const d = mkdtempSync(join(tmpdir(), 'sluice-rectap-'));
  t.teardown(() => rmSync(d, { recursive: true, force: true }));
  return d;
}

function meta(): RecordingMeta {
  return {
    sessionId: 'sess_' + randomBytes(6).toString('hex'),
    target: 'cache',
    protocol: 'redis',
    subject: 'ci-job',
    groups: ['ci'],
    issuer: 'https://issuer.example',
    startedAt: '2025-03-04T05:06:07.000Z',
  };
}

/** Just enough of a socket for the tap: `data` events, write/end, writable. */
class FakeSocket extends EventEmitter {
  writable = true;
  written: Buffer[] = [];
  write(chunk: Buffer): boolean {
    this.written.push(Buffer.from(chunk));
    return true;
  }
  end(): this {
    this.writable = false;
    return this;
  }
}

t.test('after framing: chunks recorded from the socket buffer; a pending remainder is copied before the buffer is reused', async (t) => {
  const stateDir = tempDir(t);
  const key = await openRecordingKey(stateDir);
  const w = await RecordingWriter.open({ stateDir, meta: meta(), key, flushIntervalMs: 5, onFailure: (e) => t.fail(e.message) });
  const socket = new FakeSocket();
  const tap = new RecordingTap();
  const unframed: string[] = [];
  // The session's scrubber for bytes never framed: here it keeps them, so the test sees they reach it.
  tap.framesClientAfterLogin((b) => (unframed.push(b.toString()), b));
  tap.attach(socket as unknown as Socket);
  tap.release(w);
  tap.recordClientAfterFraming();
  t.equal(socket.listenerCount('data'), 0, 'the tap no longer listens: the relay hands it each chunk');

  // A relay stand-in: hands the chunk over, frames whole "commands" (lines ending in \n), tells the tap, then reuses the chunk's memory.
  let received = 0;
  let pendingLine = 0;
  socket.on('data', (chunk: Buffer) => {
    tap.received(chunk);
    received += chunk.length;
    const lastNl = chunk.lastIndexOf(0x0a);
    const unframed = lastNl < 0 ? pendingLine + chunk.length : chunk.length - lastNl - 1;
    pendingLine = unframed;
    tap.framed(received - unframed);
    chunk.fill(0x58); // 'X': a reader that reuses its buffer must not change what was recorded
  });

  const sent: Buffer[] = [];
  const feed = (s: string): void => {
    const b = Buffer.from(s);
    sent.push(Buffer.from(b));
    socket.emit('data', b);
  };
  feed('SET a 1\nGET a\n'); // whole commands: recorded as received
  feed('SET b 2\nGET'); // a command straddles: 'GET' stays pending
  feed(' b\nPING\n'); // ... and completes here
  feed('ECHO lon'); // no command ends in this chunk
  feed('g\n');
  socket.write(Buffer.from('+OK\r\n'));
  feed('QUIT'); // never framed: the session's scrubber decides, when the tap finishes

  tap.finish();
  await w.close({ closeReason: 'test' });

  const client = await readRecording(w.path).bytesOf('client');
  t.equal(client.toString(), Buffer.concat(sent).toString(), 'the client stream is byte-exact, nothing overwritten');
  t.notOk(client.includes('X'), 'no reused buffer content reached the recording');
  const records: string[] = [];
  for await (const e of readRecording(w.path)) if (e.type === 'data' && e.direction === 'client') records.push(e.bytes.toString());
  t.same(records, ['SET a 1\nGET a\n', 'SET b 2\n', 'GET b\nPING\n', 'ECHO long\n', 'QUIT'], 'records follow the framing');
  t.same(unframed, ['QUIT'], 'only the unframed bytes went to the scrubber');
  t.equal((await readRecording(w.path).bytesOf('server')).toString(), '+OK\r\n');
});

t.test('slabs handed from one writer to the next: both recordings byte-exact and verified', async (t) => {
  const stateDir = tempDir(t);
  const key = await openRecordingKey(stateDir);
  const keys = await loadRecordingPublicKeys(stateDir);
  const open = (): Promise<RecordingWriter> =>
    RecordingWriter.open({ stateDir, meta: meta(), key, flushIntervalMs: 5, onFailure: (e) => t.fail(e.message) });
  // Several MiB each, so slabs fill, are written, and go back to the spares.
  const run = async (w: RecordingWriter, other?: RecordingWriter): Promise<Buffer[]> => {
    const sent: Buffer[] = [];
    for (let i = 0; i < 1500; i++) {
      const b = randomBytes(1000 + (i % 7) * 500);
      sent.push(b);
      w.record('server', b);
      if (other) other.record('client', b.subarray(0, 100));
      if (i % 100 === 99) await new Promise((r) => setTimeout(r, 8));
    }
    return sent;
  };
  const a = await open();
  const aSent = await run(a);
  const b = await open();
  const bSent = await run(b, a); // b takes a's spare slabs while a still records
  const c = await open();
  const cSent = await run(c);
  await a.close({ closeReason: 'a' });
  await b.close({ closeReason: 'b' });
  await c.close({ closeReason: 'c' });
  for (const [w, sent] of [[a, aSent], [b, bSent], [c, cSent]] as const) {
    t.ok((await readRecording(w.path).bytesOf('server')).equals(Buffer.concat(sent)), 'server stream byte-exact');
    const v = await verifyRecording(w.path, keys);
    t.ok(v.ok && v.complete, 'verifies');
  }
  t.ok((await readRecording(a.path).bytesOf('client')).equals(Buffer.concat(bSent.map((s) => s.subarray(0, 100)))), "a's later records intact");
});

/**
 * A relay stand-in on a socket that reads directly: it looks at the chunk
 * and answers on the same socket. The tap either observes the reads
 * (before a relay runs) or, with `handOver`, is handed each chunk as a
 * relay does (received, then handled). Either way the chunk must be
 * recorded once the stand-in has handled it (nothing staged while it
 * runs), yet before the answer it wrote meanwhile, and only once.
 */
async function requestThenReply(t: Test, handOver: boolean): Promise<void> {
  const stateDir = tempDir(t);
  const key = await openRecordingKey(stateDir);
  const writer = await RecordingWriter.open({ stateDir, meta: meta(), key, onFailure: (e) => t.fail(e.message) });
  const server = createServer({ pauseOnConnect: true });
  server.listen(0, '127.0.0.1');
  await once(server, 'listening');
  t.teardown(() => server.close());
  const accepted = once(server, 'connection');
  const client = connect({ port: (server.address() as AddressInfo).port, host: '127.0.0.1' });
  const socket = adoptWithDirectReads(((await accepted) as [Socket])[0]);
  const tap = new RecordingTap();
  tap.attach(socket);
  tap.release(writer);
  // What a PostgreSQL session does when its relay starts.
  if (handOver) tap.handOverReads();
  const stagedWhileHandled: number[] = [];
  socket.on('data', (chunk: Buffer) => {
    if (handOver) tap.received(chunk);
    stagedWhileHandled.push(writer.backlogBytes);
    socket.write(Buffer.concat([Buffer.from('re:'), chunk]));
    if (handOver) tap.handled();
  });
  socket.resume();
  client.write('ping');
  const [reply] = (await once(client, 'data')) as [Buffer];
  t.equal(reply.toString(), 're:ping');
  t.same(stagedWhileHandled, [0], 'nothing recorded yet while the relay handled the chunk');
  tap.finish();
  client.destroy();
  socket.destroy();
  await writer.close({ closeReason: 'test' });
  const records: Array<[string, string]> = [];
  for await (const r of readRecording(writer.path)) if (r.type === 'data') records.push([r.direction, r.bytes.toString()]);
  t.same(records, [['client', 'ping'], ['server', 're:ping']], 'request first, then the reply, each once');
}

t.test('a client chunk read directly is recorded once the relay handled it, and before the reply it wrote meanwhile', (t) =>
  requestThenReply(t, false),
);

t.test('reads handed over by the relay: the same order, each chunk recorded once', (t) => requestThenReply(t, true));

t.test('short sessions hand their first slab to the next ones, once its records are on disk', async (t) => {
  const stateDir = tempDir(t);
  const key = await openRecordingKey(stateDir);
  const open = () => RecordingWriter.open({ stateDir, meta: meta(), key, flushIntervalMs: 5, onFailure: (e) => t.fail(e.message) });
  trimSpareSlabs();
  // Any full-size spare left by earlier tests would be taken first: use them up.
  const holders = await Promise.all(Array.from({ length: spareSlabStats().spares }, open));
  t.equal(spareSlabStats().spares, 0, 'no full-size spare left');
  const first = await open();
  const before = spareSlabStats().firstSpares;
  first.record('client', Buffer.from('SELECT 1; -- a longer command than the next session sends'));
  // The seal thread held, as a slow disk would: the slab must not go back while its last batch waits.
  const release = sealThread().stall();
  const closing = first.close({ closeReason: 'test' });
  await new Promise((r) => setTimeout(r, 100));
  t.equal(spareSlabStats().firstSpares, before, 'not handed back while its records are not written');
  release();
  await closing;
  t.equal(spareSlabStats().firstSpares, before + 1, 'handed back once they are');
  const next = await open();
  t.equal(spareSlabStats().firstSpares, before, 'the next session takes it instead of a new one');
  next.record('client', Buffer.from('PING'));
  await next.close({ closeReason: 'test' });
  const records: string[] = [];
  for await (const r of readRecording(next.path)) if (r.type === 'data') records.push(`${r.direction} ${r.bytes.toString()}`);
  t.same(records, ['client PING'], 'a reused first slab records exactly what was recorded');
  const v = await verifyRecording(next.path, await loadRecordingPublicKeys(stateDir));
  t.ok(v.ok && v.complete, 'and verifies');
  for (const h of holders) await h.close({ closeReason: 'test' });
  trimSpareSlabs();
});

t.test('spare slabs: one per writer open at the peak is kept, handed to the next sessions, and trimmed later', async (t) => {
  const stateDir = tempDir(t);
  const key = await openRecordingKey(stateDir);
  const writers = await Promise.all(
    Array.from({ length: 40 }, () => RecordingWriter.open({ stateDir, meta: meta(), key, flushIntervalMs: 5, onFailure: (e) => t.fail(e.message) })),
  );
  t.equal(spareSlabStats().limit, 40, 'the limit follows the open writers');
  // Past the growth slabs (16+32+64+128 KiB) into full ones, so each writer retires at least one full slab.
  const chunk = randomBytes(8000);
  for (let i = 0; i < 80; i++) {
    for (const w of writers) w.record('server', chunk);
    await new Promise((r) => setTimeout(r, 2));
  }
  // Retired slabs come back once their batches are written: on a loaded machine (the whole suite
  // on two cores) that can take well over the 50 ms an idle one needs. Waited for, up to 10 s.
  for (let i = 0; i < 200 && spareSlabStats().spares <= 16; i++) await new Promise((r) => setTimeout(r, 50));
  t.ok(spareSlabStats().spares > 16, `more than the old fixed 16 are kept for reuse (${spareSlabStats().spares})`);
  for (const w of writers) await w.close({ closeReason: 'test' });
  const kept = spareSlabStats().spares;
  t.equal(spareSlabStats().limit, 40, 'closing writers does not lower the limit at once');
  t.ok(kept > 16, `the spares wait for the next sessions (${kept})`);

  // The next session's first slab is a spare, not a fresh 16 KiB one; the
  // bytes a slab held before never reach the new file.
  const next = await RecordingWriter.open({ stateDir, meta: meta(), key, flushIntervalMs: 5, onFailure: (e) => t.fail(e.message) });
  t.equal(spareSlabStats().spares, kept - 1, 'a new writer took a spare for its first slab');
  next.record('client', Buffer.from('PING\r\n'));
  next.record('server', Buffer.from('+PONG\r\n'));
  await next.close({ closeReason: 'test' });
  const records: string[] = [];
  for await (const r of readRecording(next.path)) if (r.type === 'data') records.push(`${r.direction} ${r.bytes.toString()}`);
  t.same(records, ['client PING\r\n', 'server +PONG\r\n'], 'a reused slab records exactly what was recorded');
  const v = await verifyRecording(next.path, await loadRecordingPublicKeys(stateDir));
  t.ok(v.ok && v.complete, 'and verifies');

  trimSpareSlabs();
  t.equal(spareSlabStats().limit, 16, 'trimmed with no writer open: the floor');
  t.ok(spareSlabStats().spares <= 16, 'back to at most 16');
});

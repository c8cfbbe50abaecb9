/**
 * endSocket (src/gateway/net.ts) on real loopback sockets: it ends our side
 * (the peer sees the FIN), and it does not call end() again on a socket
 * already ended or destroyed, where Node would build an error nobody reads.
 */
import t from 'tap';
import { once } from 'node:events';
import { connect, createServer, type Socket } from 'node:net';
import { endSocket } from '../../src/gateway/net.js';

/** A connected pair: `ours` (client side) and `theirs` (accepted), both closed with the test. */
async function pair(t: { teardown(fn: () => unknown): void }): Promise<{ ours: Socket; theirs: Socket }> {
  const server = createServer({ allowHalfOpen: true });
  server.listen(0, '127.0.0.1');
  await once(server, 'listening');
  const address = server.address();
  if (address === null || typeof address === 'string') throw new Error('no port');
  const accepted = once(server, 'connection') as Promise<[Socket]>;
  const ours = connect({ port: address.port, host: '127.0.0.1', allowHalfOpen: true });
  await once(ours, 'connect');
  const [theirs] = await accepted;
  t.teardown(() => {
    ours.destroy();
    theirs.destroy();
    server.close();
  });
  return { ours, theirs };
}

/** Counts the socket's end() calls, still ending it. */
function countEnds(socket: Socket): { readonly calls: number } {
  const counter = { calls: 0 };
  const end = socket.end.bind(socket);
  socket.end = ((...args: Parameters<Socket['end']>) => {
    counter.calls++;
    return end(...args);
  }) as Socket['end'];
  return counter;
}

t.test('ends a live socket: the peer sees the end of the stream', async (t) => {
  const { ours, theirs } = await pair(t);
  const ends = countEnds(ours);
  theirs.resume();
  const ended = once(theirs, 'end');
  endSocket(ours);
  await ended;
  t.equal(ends.calls, 1, 'end() called once');
  t.ok(ours.writableEnded, 'our side is ended');
});

t.test('a socket already ended is not ended again', async (t) => {
  const { ours, theirs } = await pair(t);
  theirs.resume();
  const ended = once(theirs, 'end');
  endSocket(ours);
  await ended;
  const ends = countEnds(ours);
  endSocket(ours);
  t.equal(ends.calls, 0, 'no second end()');
});

t.test('a destroyed socket is left alone, without an error', async (t) => {
  const { ours } = await pair(t);
  const errors: Error[] = [];
  ours.on('error', (err) => errors.push(err));
  ours.destroy();
  await once(ours, 'close');
  const ends = countEnds(ours);
  endSocket(ours);
  await new Promise((resolve) => setImmediate(resolve));
  t.equal(ends.calls, 0, 'no end() on a destroyed socket');
  t.same(errors, [], 'no error event');
});

/**
 * endSocket (src/gateway/net.ts) on real loopback sockets: it ends our side
 * (the peer sees the FIN), and it does not call end() again on a socket
 * already ended or destroyed, where Node would build an error nobody reads.
 * And newSessionId: ids an operator can pass to the CLI as they are.
 */
import t from 'tap';
import { once } from 'node:events';
import type { Socket } from 'node:net';
import { endSocket, newSessionId } from '../../src/gateway/net.js';
import { SESSION_ID_PATTERN } from '../../src/recording/format.js';
import { socketPair } from '../helpers/socket-pair.js';

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
  const { ours, theirs } = await socketPair(t, { allowHalfOpen: true });
  const ends = countEnds(ours);
  theirs.resume();
  const ended = once(theirs, 'end');
  endSocket(ours);
  await ended;
  t.equal(ends.calls, 1, 'end() called once');
  t.ok(ours.writableEnded, 'our side is ended');
});

t.test('a socket already ended is not ended again', async (t) => {
  const { ours, theirs } = await socketPair(t, { allowHalfOpen: true });
  theirs.resume();
  const ended = once(theirs, 'end');
  endSocket(ours);
  await ended;
  const ends = countEnds(ours);
  endSocket(ours);
  t.equal(ends.calls, 0, 'no second end()');
});

t.test('a destroyed socket is left alone, without an error', async (t) => {
  const { ours } = await socketPair(t, { allowHalfOpen: true });
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

t.test('session ids: 12 base64url characters, unique, and never starting with "-" (the CLI would read an option)', async (t) => {
  // Without the redraw, 1 id in 64 starts with '-': about 310 of these.
  const ids = Array.from({ length: 20_000 }, newSessionId);
  t.equal(ids.filter((id) => id.startsWith('-')).length, 0, 'no id starts with "-"');
  t.equal(ids.filter((id) => !/^[A-Za-z0-9_-]{12}$/.test(id) || !SESSION_ID_PATTERN.test(id)).length, 0, 'every id is 12 base64url characters, usable as a file name');
  t.equal(new Set(ids).size, ids.length, 'no two alike');
  t.ok(ids.some((id) => id.startsWith('_')) && ids.some((id) => id.slice(1).includes('-')), "'_' first and '-' after the first character still occur");
});

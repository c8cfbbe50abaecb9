/**
 * SocketReads (src/gateway/socket-reads.ts) on real loopback sockets: a
 * socket is read only when no reason holds it, each reason lets go on its
 * own, a hold until the other side drains takes one 'drain' listener
 * however often it is asked for, and once released for a close, nothing
 * holds it again.
 */
import t from 'tap';
import { ReadHold, SocketReads } from '../../src/gateway/socket-reads.js';
import { socketPair } from '../helpers/socket-pair.js';

t.test('read only when every reason has let go', async (t) => {
  const { ours } = await socketPair(t, { pauseOnConnect: true });
  const reads = new SocketReads(ours);
  t.ok(reads.holds(ReadHold.start), 'held for start as given');
  reads.hold(ReadHold.approval);
  reads.release(ReadHold.start);
  t.ok(ours.isPaused(), 'still paused: a statement waits for approval');
  reads.hold(ReadHold.recording);
  reads.release(ReadHold.approval);
  t.ok(ours.isPaused(), 'still paused: the recording is behind');
  reads.release(ReadHold.transform);
  t.ok(ours.isPaused(), 'a reason that did not hold changes nothing');
  reads.release(ReadHold.recording);
  t.notOk(ours.isPaused(), 'read again once the last reason let go');
  reads.hold(ReadHold.failed);
  t.ok(ours.isPaused(), 'paused again by a new reason');
});

t.test('held until the other side drains, with one listener however often asked', async (t) => {
  const { ours, theirs } = await socketPair(t, { pauseOnConnect: true });
  const reads = new SocketReads(ours);
  reads.release(ReadHold.start);
  const before = theirs.listenerCount('drain');
  reads.holdUntilDrained(theirs);
  reads.holdUntilDrained(theirs);
  reads.holdUntilDrained(theirs);
  t.ok(ours.isPaused(), 'paused while the other side buffers');
  t.equal(theirs.listenerCount('drain'), before + 1, 'one drain listener');
  theirs.emit('drain');
  t.notOk(ours.isPaused(), 'read again once it drained');
  t.equal(theirs.listenerCount('drain'), before, 'the listener is gone');
  reads.hold(ReadHold.approval);
  reads.holdUntilDrained(theirs);
  theirs.emit('drain');
  t.ok(ours.isPaused(), 'a drain does not release another reason');
});

t.test('closing: every reason lets go, and none holds the socket again', async (t) => {
  const { ours, theirs } = await socketPair(t, { pauseOnConnect: true });
  const reads = new SocketReads(ours);
  reads.hold(ReadHold.approval);
  reads.holdUntilDrained(theirs);
  reads.hold(ReadHold.failed);
  reads.releaseAll();
  t.notOk(ours.isPaused(), 'read at once, whatever held it');
  reads.hold(ReadHold.transform);
  reads.holdUntilDrained(theirs);
  t.notOk(ours.isPaused(), 'a hold asked for afterwards is not taken: the socket is read to its end');
});

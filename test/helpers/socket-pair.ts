/**
 * Two ends of one loopback TCP connection, for tests of what the gateway
 * does to a socket: `ours` is the accepted side (as a gateway holds a
 * client's socket), `theirs` the connecting side. Both, and the listener,
 * are closed with the test.
 */
import { once } from 'node:events';
import { connect, createServer, type Socket } from 'node:net';

export async function socketPair(
  t: { teardown(fn: () => unknown): void },
  opts: { allowHalfOpen?: boolean; pauseOnConnect?: boolean } = {},
): Promise<{ ours: Socket; theirs: Socket }> {
  const allowHalfOpen = opts.allowHalfOpen ?? false;
  const server = createServer({ allowHalfOpen, pauseOnConnect: opts.pauseOnConnect ?? false });
  server.listen(0, '127.0.0.1');
  await once(server, 'listening');
  const address = server.address();
  if (address === null || typeof address === 'string') throw new Error('no port');
  const accepted = once(server, 'connection') as Promise<[Socket]>;
  const theirs = connect({ port: address.port, host: '127.0.0.1', allowHalfOpen });
  await once(theirs, 'connect');
  const [ours] = await accepted;
  t.teardown(() => {
    ours.destroy();
    theirs.destroy();
    server.close();
  });
  return { ours, theirs };
}

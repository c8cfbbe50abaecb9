/**
 * The zero-parse TCP relay: the ceiling for any proxy written in Node.
 *
 * It never looks at a byte. Each 'data' chunk from one side is written to the
 * other as is; when a write reports a full kernel buffer (`write()` returns
 * false) the reading side is paused until 'drain'. That is all a gateway must
 * do at minimum, so its throughput and CPU per request bound what Sluice can
 * reach on the same machine. PERFORMANCE.md notes that a `pipe()` relay and
 * this one measured the same.
 *
 * Run as its own process (child_process.fork) so the harness can read its
 * CPU from /proc/<pid>/stat apart from the harness and the other contenders:
 *
 *   node dist/bench/lib/relay.js <upstream-host> <upstream-port>
 *
 * It listens on 127.0.0.1 on a kernel-chosen port and reports
 * `{ type: 'listening', port }` to the parent over IPC.
 */
import { connect, createServer, type Socket } from 'node:net';

/** Forwards `from` to `to` with backpressure: pause the reader while the writer's buffer is full. */
function forward(from: Socket, to: Socket): void {
  from.on('data', (chunk: Buffer) => {
    if (!to.write(chunk)) {
      from.pause();
      to.once('drain', () => from.resume());
    }
  });
  // Half-close passes through: a FIN from one side ends the other's write side.
  from.on('end', () => to.end());
}

function startRelay(upstreamHost: string, upstreamPort: number, onListening: (port: number) => void): void {
  const server = createServer({ allowHalfOpen: true }, (client) => {
    const upstream = connect({ host: upstreamHost, port: upstreamPort, allowHalfOpen: true });
    // Same socket options as Sluice's sessions: no Nagle delay on small messages.
    client.setNoDelay(true);
    upstream.setNoDelay(true);
    forward(client, upstream);
    forward(upstream, client);
    const close = (): void => {
      client.destroy();
      upstream.destroy();
    };
    client.on('error', close);
    upstream.on('error', close);
    client.on('close', close);
    upstream.on('close', close);
  });
  server.listen(0, '127.0.0.1', () => {
    const address = server.address();
    if (address === null || typeof address === 'string') throw new Error('relay: no TCP address');
    onListening(address.port);
  });
}

/** Entry point when forked by the harness. */
function main(): void {
  const [host, portText] = process.argv.slice(2);
  const port = Number(portText);
  if (!host || !Number.isInteger(port) || port <= 0) {
    process.stderr.write('usage: relay.js <upstream-host> <upstream-port>\n');
    process.exit(2);
  }
  startRelay(host, port, (listenPort) => {
    if (process.send) process.send({ type: 'listening', port: listenPort });
    else process.stdout.write(`listening on 127.0.0.1:${listenPort}\n`);
  });
  // The parent going away ends the relay too.
  process.on('disconnect', () => process.exit(0));
}

main();

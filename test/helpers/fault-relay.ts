/**
 * A fault-injecting TCP relay to put between Sluice and its upstream. The
 * client's bytes go through as they come; the server's bytes are re-cut:
 *
 *   'byte'      one byte per write, a setImmediate between writes (so each
 *               byte is its own TCP segment, mostly its own 'data' event)
 *   'random'    writes of random sizes 1..maxChunk, a macrotask between
 *   'coalesce'  everything the server sent within `coalesceMs` as ONE
 *               write (thousands of messages in one chunk)
 *
 * The mode can change between queries (`relay.mode = ...`).
 */
import { createServer, connect, type Server, type Socket, type AddressInfo } from 'node:net';

export type FaultMode = 'byte' | 'random' | 'coalesce' | 'pass';

export interface FaultRelay {
  port: number;
  mode: FaultMode;
  /** Bytes the server sent through this relay so far. */
  serverBytes: number;
  close(): Promise<void>;
}

export async function startFaultRelay(
  upstreamPort: number,
  opts: { mode?: FaultMode; maxChunk?: number; coalesceMs?: number; seed?: number } = {},
): Promise<FaultRelay> {
  const maxChunk = opts.maxChunk ?? 97;
  const coalesceMs = opts.coalesceMs ?? 20;
  // A small deterministic PRNG (mulberry32): a failing cut pattern can be replayed.
  let seed = opts.seed ?? 0x5eed;
  const random = (): number => {
    seed = (seed + 0x6d2b79f5) | 0;
    let x = Math.imul(seed ^ (seed >>> 15), 1 | seed);
    x = (x + Math.imul(x ^ (x >>> 7), 61 | x)) ^ x;
    return ((x ^ (x >>> 14)) >>> 0) / 4294967296;
  };
  const sockets = new Set<Socket>();
  const state: FaultRelay = { port: 0, mode: opts.mode ?? 'random', serverBytes: 0, close: async () => {} };

  const server: Server = createServer((client) => {
    client.setNoDelay(true);
    const upstream = connect(upstreamPort, '127.0.0.1');
    upstream.setNoDelay(true);
    sockets.add(client);
    sockets.add(upstream);
    const done = (): void => {
      client.destroy();
      upstream.destroy();
      sockets.delete(client);
      sockets.delete(upstream);
    };
    client.on('error', done);
    upstream.on('error', done);
    client.on('close', done);
    upstream.on('close', () => {
      // Let queued server bytes (and a pending coalesced write) drain first.
      if (timer) {
        clearTimeout(timer);
        timer = undefined;
        const all = Buffer.concat(pending);
        pending = [];
        writer = writer.then(() => write(all));
      }
      void writer.then(() => client.end());
    });
    client.pipe(upstream);

    // Server -> client, re-cut. `writer` serialises the cutting so order is kept.
    let writer: Promise<void> = Promise.resolve();
    let pending: Buffer[] = [];
    let timer: NodeJS.Timeout | undefined;
    const tick = (): Promise<void> => new Promise((r) => setImmediate(r));
    const write = async (b: Buffer): Promise<void> => {
      if (!client.writable) return;
      if (!client.write(b)) await new Promise<void>((r) => client.once('drain', () => r()));
    };
    upstream.on('data', (chunk: Buffer) => {
      state.serverBytes += chunk.length;
      const mode = state.mode;
      if (mode === 'coalesce') {
        pending.push(chunk);
        if (!timer) {
          timer = setTimeout(() => {
            timer = undefined;
            const all = Buffer.concat(pending);
            pending = [];
            writer = writer.then(() => write(all));
          }, coalesceMs);
        }
        return;
      }
      upstream.pause();
      writer = writer.then(async () => {
        if (mode === 'pass') {
          await write(chunk);
        } else {
          let pos = 0;
          while (pos < chunk.length) {
            const n = mode === 'byte' ? 1 : 1 + Math.floor(random() * maxChunk);
            await write(chunk.subarray(pos, pos + n));
            pos += n;
            await tick();
          }
        }
        upstream.resume();
      });
    });
  });
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', () => resolve()));
  state.port = (server.address() as AddressInfo).port;
  state.close = async () => {
    for (const s of sockets) s.destroy();
    await new Promise<void>((resolve) => server.close(() => resolve()));
  };
  return state;
}

/**
 * RESP fixtures built from bytes with builders (never pasted hex), and the
 * three ways every framer test feeds its input: whole, byte by byte, and
 * split into two chunks at every boundary.
 */

export type Arg = string | Buffer;

function b(x: Arg): Buffer {
  return typeof x === 'string' ? Buffer.from(x) : x;
}

/** A command as every client library writes it: `*<argc>\r\n` then `$<len>\r\n<arg>\r\n` per argument. */
export function command(...args: Arg[]): Buffer {
  const parts: Buffer[] = [Buffer.from(`*${args.length}\r\n`)];
  for (const a of args) {
    const body = b(a);
    parts.push(Buffer.from(`$${body.length}\r\n`), body, Buffer.from('\r\n'));
  }
  return Buffer.concat(parts);
}

/** Reply element builders, RESP2 and RESP3 (RESP3.md type table). */
export const r = {
  simple: (s: string): Buffer => Buffer.from(`+${s}\r\n`),
  err: (s: string): Buffer => Buffer.from(`-${s}\r\n`),
  int: (n: number | bigint): Buffer => Buffer.from(`:${n}\r\n`),
  bulk: (x: Arg): Buffer => Buffer.concat([Buffer.from(`$${b(x).length}\r\n`), b(x), Buffer.from('\r\n')]),
  nullBulk: (): Buffer => Buffer.from('$-1\r\n'),
  nullArray: (): Buffer => Buffer.from('*-1\r\n'),
  null: (): Buffer => Buffer.from('_\r\n'),
  double: (s: string): Buffer => Buffer.from(`,${s}\r\n`),
  bool: (v: boolean): Buffer => Buffer.from(`#${v ? 't' : 'f'}\r\n`),
  blobErr: (x: Arg): Buffer => Buffer.concat([Buffer.from(`!${b(x).length}\r\n`), b(x), Buffer.from('\r\n')]),
  verbatim: (fmt: string, x: Arg): Buffer => {
    const body = Buffer.concat([Buffer.from(`${fmt}:`), b(x)]);
    return Buffer.concat([Buffer.from(`=${body.length}\r\n`), body, Buffer.from('\r\n')]);
  },
  big: (s: string): Buffer => Buffer.from(`(${s}\r\n`),
  array: (...items: Buffer[]): Buffer => Buffer.concat([Buffer.from(`*${items.length}\r\n`), ...items]),
  set: (...items: Buffer[]): Buffer => Buffer.concat([Buffer.from(`~${items.length}\r\n`), ...items]),
  push: (...items: Buffer[]): Buffer => Buffer.concat([Buffer.from(`>${items.length}\r\n`), ...items]),
  /** Pairs flattened: key, value, key, value... */
  map: (...kv: Buffer[]): Buffer => Buffer.concat([Buffer.from(`%${kv.length / 2}\r\n`), ...kv]),
  attr: (...kv: Buffer[]): Buffer => Buffer.concat([Buffer.from(`|${kv.length / 2}\r\n`), ...kv]),
};

export interface Chunking {
  name: string;
  chunks: Buffer[];
}

/** One buffer fed as one chunk. */
export function whole(buf: Buffer): Chunking {
  return { name: 'whole', chunks: [buf] };
}

/** One buffer fed one byte per chunk. */
export function byteByByte(buf: Buffer): Chunking {
  const chunks: Buffer[] = [];
  for (let i = 0; i < buf.length; i++) chunks.push(buf.subarray(i, i + 1));
  return { name: 'byte by byte', chunks };
}

/** Every split of `buf` into two non-empty chunks (or only `at` positions if given). */
export function* splits(buf: Buffer, at?: Iterable<number>): Generator<Chunking> {
  const positions = at ?? range(1, buf.length);
  for (const i of positions) {
    if (i <= 0 || i >= buf.length) continue;
    yield { name: `split at ${i}`, chunks: [buf.subarray(0, i), buf.subarray(i)] };
  }
}

function* range(from: number, to: number): Generator<number> {
  for (let i = from; i < to; i++) yield i;
}

/** Split points for a big buffer: every one near both ends and `samples` spread in between. */
export function sampledSplitPoints(length: number, edge = 256, samples = 64): number[] {
  const out = new Set<number>();
  for (let i = 1; i < Math.min(edge, length); i++) out.add(i);
  for (let i = Math.max(1, length - edge); i < length; i++) out.add(i);
  for (let k = 1; k <= samples; k++) out.add(Math.floor((length * k) / (samples + 1)));
  return [...out].sort((x, y) => x - y);
}

/** Random chunk sizes from 1 to `max`, for fuzzing chunk boundaries. */
export function randomChunks(buf: Buffer, rand: () => number, max = 64): Buffer[] {
  const out: Buffer[] = [];
  let i = 0;
  while (i < buf.length) {
    const n = 1 + Math.floor(rand() * max);
    out.push(buf.subarray(i, i + n));
    i += n;
  }
  return out;
}

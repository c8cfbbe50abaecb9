/**
 * Build PostgreSQL wire fixtures from fields, not pasted hex (in the manner
 * of pg-protocol's testing BufferList):
 *
 *   new PgBytes().cstring('SELECT 1').typed('Q')         // Query
 *   new PgBytes().int32(PROTOCOL_3_0).cstring('user').cstring('u').byte(0).startup()
 *
 * `typed` and `startup` prepend the header and compute the length word; a
 * `length` override writes a wrong one on purpose.
 */
export class PgBytes {
  private readonly parts: Buffer[] = [];

  byte(value: number): this {
    this.parts.push(Buffer.from([value & 0xff]));
    return this;
  }

  char(c: string): this {
    return this.byte(c.charCodeAt(0));
  }

  int16(value: number): this {
    const b = Buffer.allocUnsafe(2);
    b.writeUInt16BE(value & 0xffff);
    this.parts.push(b);
    return this;
  }

  int32(value: number): this {
    const b = Buffer.allocUnsafe(4);
    b.writeUInt32BE(value >>> 0);
    this.parts.push(b);
    return this;
  }

  /** UTF-8 text followed by a NUL. */
  cstring(value: string): this {
    this.parts.push(Buffer.from(value, 'utf8'), Buffer.from([0]));
    return this;
  }

  /** UTF-8 text, no terminator. */
  string(value: string): this {
    this.parts.push(Buffer.from(value, 'utf8'));
    return this;
  }

  bytes(value: Uint8Array | readonly number[]): this {
    this.parts.push(Buffer.from(value));
    return this;
  }

  /** `n` bytes of `fill`. */
  fill(n: number, fill = 0x61): this {
    this.parts.push(Buffer.alloc(n, fill));
    return this;
  }

  get byteLength(): number {
    let n = 0;
    for (const p of this.parts) n += p.length;
    return n;
  }

  /** The body alone. */
  raw(): Buffer {
    return Buffer.concat(this.parts);
  }

  /** Byte1 type + Int32 length (counts itself, not the type) + body. */
  typed(type: string | number, length?: number): Buffer {
    const body = this.raw();
    const out = Buffer.allocUnsafe(5 + body.length);
    out[0] = typeof type === 'string' ? type.charCodeAt(0) : type;
    out.writeInt32BE(length ?? 4 + body.length, 1);
    body.copy(out, 5);
    return out;
  }

  /** Untyped startup-phase packet: Int32 length (counts itself) + payload. */
  startup(length?: number): Buffer {
    const body = this.raw();
    const out = Buffer.allocUnsafe(4 + body.length);
    out.writeInt32BE(length ?? 4 + body.length, 0);
    body.copy(out, 4);
    return out;
  }
}

/** Every way to cut `buf` into two non-empty chunks. */
export function* splitEverywhere(buf: Buffer): Generator<[Buffer, Buffer]> {
  for (let i = 1; i < buf.length; i++) yield [buf.subarray(0, i), buf.subarray(i)];
}

/** Cut `buf` into two at each of `points` (ignoring points outside 1..length-1). */
export function* splitAt(buf: Buffer, points: Iterable<number>): Generator<[Buffer, Buffer]> {
  for (const i of points) if (i > 0 && i < buf.length) yield [buf.subarray(0, i), buf.subarray(i)];
}

/** One chunk per byte. Each is a copy, so no chunk shares memory with the next. */
export function* bytewise(buf: Buffer): Generator<Buffer> {
  for (let i = 0; i < buf.length; i++) yield Buffer.from([buf[i]!]);
}

/** Small deterministic PRNG (mulberry32) so fuzz and random-split failures replay from a seed. */
export function prng(seed: number): () => number {
  let a = seed >>> 0;
  return () => {
    a = (a + 0x6d2b79f5) >>> 0;
    let t = a;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };
}

/** Cut `buf` into chunks of random sizes in [1, maxChunk]. */
export function* randomChunks(buf: Buffer, random: () => number, maxChunk = 64): Generator<Buffer> {
  let pos = 0;
  while (pos < buf.length) {
    const n = 1 + Math.floor(random() * maxChunk);
    yield buf.subarray(pos, Math.min(buf.length, pos + n));
    pos += n;
  }
}

/** A DataRow ('D') with these fields; null is SQL NULL (length -1). */
export function dataRow(fields: Array<Buffer | null>): Buffer {
  const b = new PgBytes().int16(fields.length);
  for (const f of fields) {
    if (f === null) b.int32(-1);
    else b.int32(f.length).bytes(f);
  }
  return b.typed('D');
}

/** Pushes chunks through a server transform (e.g. PgResultMasker) as the relay does, waiting when it asks; returns all it emitted. */
export async function transformAll(
  transform: { push(chunk: Buffer, emit: (bytes: Buffer) => void): void | Promise<void> },
  chunks: Iterable<Buffer>,
): Promise<Buffer> {
  const out: Buffer[] = [];
  for (const c of chunks) {
    const pending = transform.push(c, (b) => out.push(Buffer.from(b)));
    if (pending) await pending;
  }
  return Buffer.concat(out);
}

/**
 * Tells a PostgreSQL result masker that a simple Query went upstream, as the
 * gateway does before that query's results arrive (PgResultMasker.forwarded).
 */
export function queried<T extends { forwarded(type: number, bytes: Buffer): void }>(masker: T): T {
  const query = new PgBytes().cstring('select').typed('Q');
  masker.forwarded(query[0]!, query);
  return masker;
}


/**
 * A growable byte buffer the exact path writes masked values into, reused
 * from chunk to chunk (one per result masker): a masked value costs no
 * Buffer of its own. Whatever is handed on (emitted) must be copied out of
 * it first: the next chunk overwrites it.
 */
export class ByteSink {
  buf: Buffer;
  len = 0;
  readonly #keep: number;

  /** `keep`: after a reset, a buffer grown beyond this is dropped (memory stays bounded between huge values). */
  constructor(size = 64 * 1024, keep = 1024 * 1024) {
    this.buf = Buffer.allocUnsafeSlow(size);
    this.#keep = Math.max(size, keep);
  }

  reset(): void {
    this.len = 0;
    if (this.buf.length > this.#keep) this.buf = Buffer.allocUnsafeSlow(this.#keep);
  }

  /** Room for n more bytes (the bytes written so far are kept). */
  reserve(n: number): void {
    const need = this.len + n;
    if (need <= this.buf.length) return;
    const next = Buffer.allocUnsafeSlow(Math.max(need, 2 * this.buf.length));
    this.buf.copy(next, 0, 0, this.len);
    this.buf = next;
  }

  /** Appends src[s, e). */
  copy(src: Uint8Array, s: number, e: number): void {
    const n = e - s;
    if (n <= 0) return;
    this.reserve(n);
    const buf = this.buf;
    let w = this.len;
    // A short run is cheaper copied here than through a native call.
    if (n < 48) for (let i = s; i < e; i++) buf[w++] = src[i]!;
    else buf.set(src.subarray(s, e), w);
    this.len += n;
  }

  put(b: Uint8Array): void {
    this.copy(b, 0, b.length);
  }

  byte(b: number): void {
    this.reserve(1);
    this.buf[this.len++] = b;
  }

  /** Appends `count` copies of the bytes of `b`. */
  repeat(b: Uint8Array, count: number): void {
    const n = b.length * count;
    if (n <= 0) return;
    this.reserve(n);
    const buf = this.buf;
    let w = this.len;
    if (b.length === 1) {
      buf.fill(b[0]!, w, w + n);
      w += n;
    } else for (let c = 0; c < count; c++) for (let i = 0; i < b.length; i++) buf[w++] = b[i]!;
    this.len += n;
  }

  /** Appends a string as UTF-8. */
  string(s: string): void {
    this.reserve(3 * s.length);
    this.len += this.buf.write(s, this.len, 'utf8');
  }

  /** The bytes [off, off + len) as a new Buffer of their own (safe to hand on). */
  take(off: number, len: number): Buffer {
    return Buffer.from(this.buf.subarray(off, off + len));
  }
}

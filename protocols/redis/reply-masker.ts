/**
 * Masks every string a Redis server sends back, as a streaming transformer
 * in front of the relay's reply framer (RedisRelayOptions.serverTransform).
 *
 * RESP aggregates (array `*`, map `%`, set `~`, attribute `|`, push `>`)
 * carry element counts, never byte lengths, and masking never changes how
 * many elements there are. So the stream is rewritten token by token, with
 * no nesting state: aggregate headers and non-string scalars (`:` `,` `#`
 * `_` `(` and nulls) pass through as the original bytes; each string token
 * is assembled whole and rewritten with its length recomputed:
 *
 *   `+text`           simple string       `$len` bulk string
 *   `-text`           error               `!len` blob error
 *   `=len` `xxx:text` verbatim string (the 3-letter format and `:` kept)
 *
 * Every string is masked, keys included: a GET reply cannot be told apart
 * from a KEYS or SCAN reply on the wire, so key names that hold a secret
 * are masked too (the issue does not require key-name masking; over-masking
 * is the safe side). RESP3 streamed strings (`$?`) are refused: Redis does
 * not send them.
 *
 * A string is assembled up to `maxStringBytes` (the target's
 * max_message_size); a longer one ends the session rather than pass
 * unmasked. Strings of one chunk are masked together, inline when few and
 * through the worker pool when many or large (the relay pauses the
 * upstream while the batch is out).
 */
import { MaskingFailedError } from '../../masking/types.js';
import { ChunkSequencer, MaskCounts, type PolicyMasking } from '../../masking/session-masker.js';

export interface RedisReplyMaskerOptions {
  masking: PolicyMasking;
  /** Largest string assembled for masking; a longer one fails the session. */
  maxStringBytes: number;
  /** A chunk with more strings than this goes to the pool. Default 256. */
  batchValues?: number;
  /** ... or more bytes of them. Default 256 KiB. */
  batchBytes?: number;
}

const CR = 0x0d;
const LF = 0x0a;
const CRLF = Buffer.from('\r\n');

/** Line-form string tokens and bulk-form ones. */
const SIMPLE = new Set([0x2b /* + */, 0x2d /* - */]);
const BULK = new Set([0x24 /* $ */, 0x21 /* ! */, 0x3d /* = */]);
const KNOWN = new Set([...'+-:$*_,#!=(%~|>.'].map((c) => c.charCodeAt(0)));

interface Candidate {
  /** Index in the pieces list the rewritten token replaces. */
  piece: number;
  type: number;
  /** The string's value (for verbatim: after `xxx:`). */
  value: Buffer;
  /** Verbatim: the `xxx:` prefix. */
  prefix?: Buffer;
  /** The token as received, for when nothing matched. */
  raw: Buffer;
}

export class RedisReplyMasker {
  readonly #masking: PolicyMasking;
  readonly #maxString: number;
  readonly #batchValues: number;
  readonly #batchBytes: number;
  readonly #counts = new MaskCounts();

  /** Bytes of an incomplete line (a header or a simple string). */
  #line: Buffer[] = [];
  #lineLen = 0;
  /** A bulk body being assembled: type, the header line, the body (+ CRLF). */
  #bulk: { type: number; header: Buffer; body: Buffer; filled: number } | undefined;
  #dead = false;
  readonly #sequence = new ChunkSequencer();

  constructor(opts: RedisReplyMaskerOptions) {
    this.#masking = opts.masking;
    this.#maxString = opts.maxStringBytes;
    this.#batchValues = opts.batchValues ?? 256;
    this.#batchBytes = opts.batchBytes ?? 256 * 1024;
  }

  /** Hits per rule since the session started. */
  counts(): Record<string, number> {
    return this.#counts.snapshot();
  }

  push(chunk: Buffer, emit: (bytes: Buffer) => void): void | Promise<void> {
    return this.#sequence.run(() => this.#process(chunk, emit));
  }

  /** Masks bytes that must go out synchronously (the HELLO reply, bytes read with it); never uses the pool. */
  maskSync(bytes: Buffer): Buffer {
    const out: Buffer[] = [];
    const pending = this.#process(bytes, (b) => out.push(b), Infinity);
    if (pending) throw new MaskingFailedError('the login reply unexpectedly needed the worker pool');
    return Buffer.concat(out);
  }

  close(): void {
    this.#dead = true;
    this.#bulk = undefined;
    this.#line = [];
  }

  #process(chunk: Buffer, emit: (bytes: Buffer) => void, inlineUpTo = this.#batchBytes): void | Promise<void> {
    if (this.#dead) return;
    const pieces: Buffer[] = [];
    const candidates: Candidate[] = [];
    try {
      this.#tokens(chunk, pieces, candidates);
    } catch (err) {
      this.#dead = true;
      throw err;
    }
    if (candidates.length === 0) return flush(pieces, emit);
    const values = candidates.map((c) => c.value);
    let bytes = 0;
    for (const v of values) bytes += v.length;
    if ((values.length <= this.#batchValues || inlineUpTo === Infinity) && bytes <= inlineUpTo) {
      const counts = new Map<string, number>();
      this.#apply(pieces, candidates, this.#masking.engine.maskValues(values, counts));
      this.#counts.add(counts);
      return flush(pieces, emit);
    }
    return this.#masking
      .pool()
      .maskBatch(values)
      .then((result) => {
        if (this.#dead) return;
        this.#apply(pieces, candidates, result.values);
        this.#counts.add(result.counts);
        flush(pieces, emit);
      });
  }

  #apply(pieces: Buffer[], candidates: Candidate[], masked: Array<Buffer | undefined>): void {
    for (let i = 0; i < candidates.length; i++) {
      const c = candidates[i]!;
      const out = masked[i];
      if (!out) {
        pieces[c.piece] = c.raw;
        continue;
      }
      if (SIMPLE.has(c.type)) {
        // A simple string or error is one line: a replacement never holds CR or LF, but a kept byte could not either.
        pieces[c.piece] = Buffer.concat([Buffer.from([c.type]), out, CRLF]);
      } else {
        const body = c.prefix ? Buffer.concat([c.prefix, out]) : out;
        pieces[c.piece] = Buffer.concat([Buffer.from(`${String.fromCharCode(c.type)}${body.length}\r\n`, 'latin1'), body, CRLF]);
      }
    }
  }

  #tokens(chunk: Buffer, pieces: Buffer[], candidates: Candidate[]): void {
    let pos = 0;
    const n = chunk.length;
    while (pos < n) {
      const bulk = this.#bulk;
      if (bulk) {
        const take = Math.min(n - pos, bulk.body.length - bulk.filled);
        chunk.copy(bulk.body, bulk.filled, pos, pos + take);
        bulk.filled += take;
        pos += take;
        if (bulk.filled === bulk.body.length) {
          this.#bulk = undefined;
          this.#bulkDone(bulk.type, bulk.header, bulk.body, pieces, candidates);
        }
        continue;
      }
      // A line: a header, a simple string, a scalar.
      const lf = chunk.indexOf(LF, pos);
      if (lf < 0) {
        this.#held(chunk.subarray(pos));
        return;
      }
      let line: Buffer;
      if (this.#lineLen > 0) {
        this.#held(chunk.subarray(pos, lf + 1));
        line = Buffer.concat(this.#line, this.#lineLen);
        this.#line = [];
        this.#lineLen = 0;
      } else {
        line = chunk.subarray(pos, lf + 1);
      }
      pos = lf + 1;
      this.#lineToken(line, pieces, candidates);
    }
  }

  #held(part: Buffer): void {
    this.#lineLen += part.length;
    if (this.#lineLen > this.#maxString + 64) throw new MaskingFailedError('a reply line is longer than max_message_size; it cannot be masked');
    this.#line.push(Buffer.from(part));
  }

  #lineToken(line: Buffer, pieces: Buffer[], candidates: Candidate[]): void {
    const type = line[0]!;
    if (line.length < 3 || line[line.length - 2] !== CR || !KNOWN.has(type)) {
      throw new MaskingFailedError('the upstream sent a reply that is not RESP; it cannot be masked');
    }
    if (SIMPLE.has(type)) {
      candidates.push({ piece: pieces.length, type, value: line.subarray(1, line.length - 2), raw: line });
      pieces.push(line); // replaced once masked
      return;
    }
    if (BULK.has(type)) {
      const spec = line.toString('latin1', 1, line.length - 2);
      if (spec === '-1') {
        pieces.push(line); // RESP2 null bulk
        return;
      }
      if (!/^\d+$/.test(spec)) throw new MaskingFailedError(`a ${String.fromCharCode(type)}${spec} reply (streamed or malformed) cannot be masked`);
      const len = Number(spec);
      if (len > this.#maxString) throw new MaskingFailedError(`a ${len}-byte string exceeds max_message_size; it cannot be masked`);
      this.#bulk = { type, header: line, body: Buffer.allocUnsafe(len + 2), filled: 0 };
      return;
    }
    // Aggregate headers and non-string scalars: counts and numbers, nothing to mask.
    pieces.push(line);
  }

  #bulkDone(type: number, header: Buffer, body: Buffer, pieces: Buffer[], candidates: Candidate[]): void {
    if (body[body.length - 2] !== CR || body[body.length - 1] !== LF) throw new MaskingFailedError('a bulk string is not followed by CRLF');
    const raw = Buffer.concat([header, body]);
    let value = body.subarray(0, body.length - 2);
    let prefix: Buffer | undefined;
    if (type === 0x3d /* = */ && value.length >= 4 && value[3] === 0x3a) {
      prefix = value.subarray(0, 4);
      value = value.subarray(4);
    }
    if (value.length === 0) {
      pieces.push(raw);
      return;
    }
    candidates.push({ piece: pieces.length, type, value, raw, ...(prefix ? { prefix } : {}) });
    pieces.push(raw);
  }
}

function flush(pieces: Buffer[], emit: (bytes: Buffer) => void): void {
  if (pieces.length === 0) return;
  // One emit per chunk: the relay frames it like any chunk (a single small copy beats many tiny writes).
  emit(pieces.length === 1 ? pieces[0]! : Buffer.concat(pieces));
}

/**
 * RESP2/RESP3 framing for the Redis gateway.
 *
 * Spec: https://github.com/redis/redis-specifications/blob/master/protocol/RESP3.md
 * (RESP2 is the subset without `_ , # ! = ( % ~ | >`).
 *
 * Two framers share the pieces below (the error, the type bytes, Redis'
 * `string2ll` number grammar, the header-line scanner):
 *
 * - `RespRequestFramer` (client -> server) assembles each command whole,
 *   because policy looks at the whole command. A command inside one chunk is a
 *   `subarray` of it; one that straddles chunks is copied into a buffer of its
 *   own (never reused, so the caller may keep it across an await).
 * - `RespReplyFramer` (server -> client) never assembles a reply. It keeps a
 *   small stack of "elements still to come" counters, streams bulk bodies by
 *   counting them down and forwards the chunk untouched; only a header line
 *   split across chunks is copied (at most `maxLineBytes`).
 *
 * Both are strict: CRLF everywhere, lengths in Redis' `string2ll` grammar
 * (optional '-', no '+', no spaces, no leading zeros, "0" alone), every limit
 * checked before anything is allocated for it.
 */
import { ErrorCodes, SluiceError } from '../../src/errors.js';

/**
 * A peer broke RESP. `message` starts with 'Protocol error: ' like Redis'
 * own replies (networking.c), so the gateway can answer the client with
 * `-ERR ${message}` and close. `offset` is the absolute stream offset of the
 * offending byte (for the log).
 */
export class RespProtocolError extends SluiceError {
  readonly offset: number;

  constructor(message: string, offset: number) {
    super(ErrorCodes.PROTOCOL_VIOLATION, `Protocol error: ${message}`);
    this.name = 'RespProtocolError';
    this.offset = offset;
  }
}

// --- the wire ------------------------------------------------------------------

/** RESP type bytes (first byte of every element). */
export const RespType = {
  SimpleString: 0x2b, // '+'
  SimpleError: 0x2d, // '-'
  Integer: 0x3a, // ':'
  BulkString: 0x24, // '$'
  Array: 0x2a, // '*'
  Null: 0x5f, // '_'        RESP3
  Double: 0x2c, // ','      RESP3
  Boolean: 0x23, // '#'     RESP3
  BlobError: 0x21, // '!'   RESP3
  VerbatimString: 0x3d, // '=' RESP3
  BigNumber: 0x28, // '('   RESP3
  Map: 0x25, // '%'         RESP3
  Set: 0x7e, // '~'         RESP3
  Attribute: 0x7c, // '|'   RESP3
  Push: 0x3e, // '>'        RESP3
} as const;

const CR = 0x0d;
const LF = 0x0a;
const MINUS = 0x2d; // '-'
const PLUS = 0x2b; // '+'
const DOT = 0x2e; // '.'
const ZERO = 0x30;
const NINE = 0x39;

/** Why a request that is not a RESP array is refused (inline commands parse differently: a smuggling risk). */
export const INLINE_REFUSED = 'inline commands are not accepted by sluice; send RESP arrays (every Redis client library and redis-cli do)';

/** Redis' PROTO_INLINE_MAX_SIZE: the longest header line it waits for. */
export const PROTO_INLINE_MAX_SIZE = 64 * 1024;
/** Redis' default proto-max-bulk-len. */
export const PROTO_MAX_BULK_LEN = 512 * 1024 * 1024;

/** `parseLength` result for a line that is not a valid length. */
const INVALID = -2;

/**
 * Parses the length of a `$ * % ~ | > ! =` header: bytes [start, end) hold
 * the digits after the type byte. Returns the value, -1 for "-1" (the RESP2
 * null; callers decide whether they accept it), or INVALID.
 *
 * The grammar is Redis' `string2ll` (util.c): "0", or an optional '-' then a
 * digit 1-9 then digits; nothing else (no '+', no spaces, no leading zeros,
 * no "-0"). Lengths above 2^53 are INVALID: they exceed every limit anyway.
 *
 * `$?` / `*?` (streamed strings and aggregates of unknown length, RESP3
 * "Streamed strings"/"Streamed aggregated data types") are INVALID too: Redis 7
 * never sends them and no client sends them, so a gateway accepting them
 * would only widen what an attacker can feed the relay.
 */
function parseLength(buf: Buffer, start: number, end: number): number {
  const n = end - start;
  if (n === 1) {
    const c = buf[start]!;
    return c >= ZERO && c <= NINE ? c - ZERO : INVALID;
  }
  if (n === 2 && buf[start] === MINUS && buf[start + 1] === 0x31 /* '1' */) return -1;
  if (n === 0 || n > 15) return INVALID;
  let c = buf[start]!;
  if (c < 0x31 || c > NINE) return INVALID; // covers '-', '+', '?', ' ', leading '0'
  let v = c - ZERO;
  for (let i = start + 1; i < end; i++) {
    c = buf[i]!;
    if (c < ZERO || c > NINE) return INVALID;
    v = v * 10 + (c - ZERO);
  }
  return v;
}

/** `:` integer: a signed 64-bit number in `string2ll` grammar. */
function validInteger(buf: Buffer, start: number, end: number): boolean {
  let i = start;
  if (buf[i] === MINUS) i++;
  const digits = end - i;
  if (digits < 1 || digits > 19) return false;
  if (digits === 1) return buf[i]! >= ZERO && buf[i]! <= NINE && !(i > start && buf[i] === ZERO);
  if (buf[i]! < 0x31 || buf[i]! > NINE) return false;
  for (let j = i + 1; j < end; j++) if (buf[j]! < ZERO || buf[j]! > NINE) return false;
  if (digits === 19) {
    // Compare with 9223372036854775807 (or ...808 when negative) as text.
    const limit = i > start ? '9223372036854775808' : '9223372036854775807';
    const text = buf.toString('latin1', i, end);
    if (text > limit) return false;
  }
  return true;
}

/** `(` big number: an optional '-' and digits, no leading zeros. */
function validBigNumber(buf: Buffer, start: number, end: number): boolean {
  let i = start;
  if (buf[i] === MINUS) i++;
  if (i >= end) return false;
  if (buf[i] === ZERO) return end - i === 1 && i === start;
  for (let j = i; j < end; j++) if (buf[j]! < ZERO || buf[j]! > NINE) return false;
  return true;
}

/**
 * `,` double: `[+|-]digits[.digits][(e|E)[+|-]digits]`, or `inf`, `-inf`,
 * `nan` (RESP3 "Double type"; Redis writes `%.17g`, which also matches).
 */
function validDouble(buf: Buffer, start: number, end: number): boolean {
  let i = start;
  if (buf[i] === MINUS || buf[i] === PLUS) i++;
  if (end - i === 3) {
    const word = buf.toString('latin1', i, end);
    if (word === 'inf' || word === 'nan') return true;
  }
  const digitsFrom = (from: number): number => {
    let j = from;
    while (j < end && buf[j]! >= ZERO && buf[j]! <= NINE) j++;
    return j;
  };
  let j = digitsFrom(i);
  if (j === i) return false;
  if (j < end && buf[j] === DOT) {
    const k = digitsFrom(j + 1);
    if (k === j + 1) return false;
    j = k;
  }
  if (j < end && (buf[j] === 0x65 /* 'e' */ || buf[j] === 0x45) /* 'E' */) {
    j++;
    if (j < end && (buf[j] === MINUS || buf[j] === PLUS)) j++;
    const k = digitsFrom(j);
    if (k === j) return false;
    j = k;
  }
  return j === end;
}

/** `+` / `-` lines: any bytes but CR and LF (the CR that ends it is at `end`). */
function validSimpleLine(buf: Buffer, start: number, end: number): boolean {
  for (let i = start; i < end; i++) if (buf[i] === LF || buf[i] === CR) return false;
  return true;
}

/**
 * Scans for the CR that ends the header line whose type byte is at `start`.
 * Returns its index, or -1 if `end` comes first. The LF is checked by the caller.
 */
function findCR(buf: Buffer, from: number, end: number): number {
  // Header lines are a few bytes: a plain loop beats a native indexOf call here.
  for (let i = from; i < end; i++) if (buf[i] === CR) return i;
  return -1;
}

function printable(c: number): string {
  return c >= 0x20 && c < 0x7f ? String.fromCharCode(c) : `\\x${c.toString(16).padStart(2, '0')}`;
}

/**
 * A header line that arrived in pieces: only its bytes are copied, bounded by
 * the framer's line limit.
 */
class LineBuffer {
  buf: Buffer = Buffer.alloc(0);
  length = 0;

  append(src: Buffer, start: number, end: number): void {
    const need = this.length + (end - start);
    if (need > this.buf.length) {
      const next = Buffer.allocUnsafe(Math.max(need, 64, this.buf.length * 2));
      this.buf.copy(next, 0, 0, this.length);
      this.buf = next;
    }
    src.copy(this.buf, this.length, start, end);
    this.length = need;
  }

  reset(): void {
    this.length = 0;
    // A line longer than usual (a long error message) does not pin its buffer.
    if (this.buf.length > 4096) this.buf = Buffer.alloc(0);
  }
}

// --- client -> server ------------------------------------------------------------

export interface RequestSink {
  /**
   * One complete command. `raw` is the exact wire bytes of the whole command;
   * `args` are subarrays of `raw`, `args[0]` the command name. Both stay valid
   * after the call: `raw` is either a slice of the chunk given to `push` or a
   * buffer the framer allocated for this command alone.
   */
  command(raw: Buffer, args: Buffer[]): void;
}

/**
 * The allocation-free form of RequestSink (`pushSpans`), for the relay's hot
 * path: a command is bytes [start, end) of `buf`, which is either the chunk
 * given to `pushSpans` or a buffer the framer allocated for this command
 * alone (start 0). During the call, the framer's `argStart`/`argEnd`/`args`
 * describe its arguments; nothing is built unless the sink asks.
 */
export interface RequestSpanSink {
  span(buf: Buffer, start: number, end: number): void;
}

export interface RespRequestLimits {
  /** Longest bulk argument. Redis: proto-max-bulk-len (512 MiB). */
  maxBulkBytes: number;
  /** Most arguments in one command. */
  maxMultibulk: number;
  /** Longest header line without its CRLF. Redis: PROTO_INLINE_MAX_SIZE (64 KiB). */
  maxInlineBytes: number;
  /** Largest whole command, headers included. Redis: client-query-buffer-limit (1 GiB). */
  maxCommandBytes: number;
  /**
   * The limits are the pre-authentication ones: errors say "unauthenticated
   * multibulk/bulk length" as Redis does for a client that has not authenticated.
   */
  unauthenticated: boolean;
}

export const DEFAULT_REQUEST_LIMITS: Readonly<RespRequestLimits> = Object.freeze({
  maxBulkBytes: PROTO_MAX_BULK_LEN,
  maxMultibulk: 1024 * 1024,
  maxInlineBytes: PROTO_INLINE_MAX_SIZE,
  maxCommandBytes: 1024 * 1024 * 1024,
  unauthenticated: false,
});

/**
 * What Redis allows before a client authenticates (networking.c,
 * processMultibulkBuffer: `ll > 10 && authRequired(c)` and
 * `ll > 16384 && authRequired(c)`). A JWT sent with AUTH/HELLO fits in 16 KiB.
 */
export const UNAUTHENTICATED_REQUEST_LIMITS: Readonly<RespRequestLimits> = Object.freeze({
  ...DEFAULT_REQUEST_LIMITS,
  maxMultibulk: 10,
  maxBulkBytes: 16384,
  maxCommandBytes: 10 * (16384 + 32) + 32,
  unauthenticated: true,
});

// Request framer states.
const RQ_MULTIBULK = 0; // at the start of a command: '*<count>\r\n'
const RQ_BULK = 1; // before an argument: '$<len>\r\n'
const RQ_BODY = 2; // inside an argument's bytes
const RQ_CR = 3; // the CR after an argument
const RQ_LF = 4; // the LF after an argument

/**
 * Frames client -> server traffic into whole commands.
 *
 * Requests MUST be arrays of bulk strings ("Clients send commands to the
 * server as an array of bulk strings", RESP3.md "Client handshake" /
 * RESP2 "Sending commands"). Inline commands (telnet style) are refused: no
 * client library sends them and they would need a second, looser parser.
 *
 * Deviations from Redis, all stricter: `*-1` (which Redis silently skips) is
 * an error; the CRLF after each argument is checked (Redis skips 2 bytes);
 * a header CR must be followed by LF. `*0\r\n` is skipped as Redis does.
 */
export class RespRequestFramer {
  private limits: RespRequestLimits;
  private state = RQ_MULTIBULK;
  /** Absolute stream offset of the start of the current chunk. */
  private base = 0;
  private readonly line = new LineBuffer();
  /** Absolute offset where the current command starts. */
  private cmdStart = 0;
  /** Arguments still to come in the current command. */
  private argsLeft = 0;
  /** Bytes of the current argument still to come. */
  private bodyLeft = 0;
  /** Pairs of [start, end) offsets of the current command's arguments, relative to its first byte. */
  private argBounds: number[] = [];
  /** Arguments recorded in argBounds for the current command (the array is reused). */
  private argc = 0;
  /** The sink of the `push` or `pushSpans` in progress (exactly one is set). */
  private sink: RequestSink | null = null;
  private spanSink: RequestSpanSink | null = null;
  /** The part of a command that straddles chunks; allocated per command, never reused. */
  private owned: Buffer | null = null;
  private ownedLength = 0;
  private failed: RespProtocolError | null = null;
  /** An empty line's CR ended the last chunk: its LF must come first. */
  private pendingCR = false;

  constructor(opts?: Partial<RespRequestLimits>) {
    this.limits = { ...DEFAULT_REQUEST_LIMITS, ...opts };
  }

  /** Switch limits, e.g. from UNAUTHENTICATED_REQUEST_LIMITS to the defaults after AUTH. Applies from the next header. */
  setLimits(limits: Partial<RespRequestLimits>): void {
    this.limits = { ...this.limits, ...limits };
  }

  /** Bytes the framer holds for a command (or header line) that has not ended yet. */
  get bufferedBytes(): number {
    return this.ownedLength + this.line.length;
  }

  /** Absolute offset of the next byte `push` will see. */
  get offset(): number {
    return this.base;
  }

  /**
   * Frames `chunk`, delivering every command it completes. Throws
   * RespProtocolError at the first violation; commands before it were
   * delivered, and the framer refuses any further input.
   */
  push(chunk: Buffer, sink: RequestSink): void {
    this.sink = sink;
    try {
      this.frameChecked(chunk);
    } finally {
      this.sink = null;
    }
  }

  /** `push` for a RequestSpanSink: each command as a span, its arguments read from the framer. */
  pushSpans(chunk: Buffer, sink: RequestSpanSink): void {
    this.spanSink = sink;
    try {
      this.frameChecked(chunk);
    } finally {
      this.spanSink = null;
    }
  }

  /**
   * During `command` or `span`: the absolute stream offset of the command's
   * first byte. Not the end of the previous command: empty lines and `*0`
   * between commands are consumed without a command of their own.
   */
  get commandStart(): number {
    return this.cmdStart;
  }

  /** During `span`: how many arguments the command has (the name included). */
  get argCount(): number {
    return this.argc;
  }

  /** During `span`: where argument `i` of the command starts, relative to the command's first byte. */
  argStart(i: number): number {
    return this.argBounds[2 * i]!;
  }

  /** During `span`: where argument `i` ends (exclusive), relative to the command's first byte. */
  argEnd(i: number): number {
    return this.argBounds[2 * i + 1]!;
  }

  /** During `span`: the command's arguments as subarrays of `raw`, its bytes. */
  args(raw: Buffer): Buffer[] {
    const bounds = this.argBounds;
    const args: Buffer[] = new Array<Buffer>(this.argc);
    for (let i = 0; i < this.argc; i++) args[i] = raw.subarray(bounds[2 * i]!, bounds[2 * i + 1]!);
    return args;
  }

  private frameChecked(chunk: Buffer): void {
    if (this.failed) throw this.failed;
    try {
      this.frame(chunk);
    } catch (err) {
      if (err instanceof RespProtocolError) this.failed = err;
      throw err;
    }
  }

  private fail(message: string, pos: number): never {
    throw new RespProtocolError(message, this.base + pos);
  }

  private frame(chunk: Buffer): void {
    const end = chunk.length;
    let pos = 0;
    // Where the current command starts in this chunk; -1: in an earlier chunk (owned).
    let startInChunk = this.owned ? -1 : 0;

    while (pos < end) {
      // The usual case, a whole well-formed command in this chunk, in one pass.
      if (this.state === RQ_MULTIBULK && chunk[pos] === RespType.Array && this.line.length === 0 && !this.pendingCR) {
        const next = this.frameWhole(chunk, pos, end);
        if (next > 0) {
          this.cmdStart = this.base + pos;
          startInChunk = this.deliver(chunk, pos, next);
          pos = next;
          continue;
        }
      }
      switch (this.state) {
        case RQ_MULTIBULK:
        case RQ_BULK: {
          const lineStart = pos;
          if (this.line.length === 0) {
            if (this.state === RQ_MULTIBULK) {
              // An empty line between commands is a no-op in Redis
              // (processInlineBuffer skips it), and redis-cli --pipe sends one
              // before its closing ECHO. It carries nothing, so it is consumed
              // here and never forwarded; its LF may come in the next chunk.
              if (this.pendingCR) {
                this.pendingCR = false;
                if (chunk[pos] !== LF) this.fail(INLINE_REFUSED, pos);
                pos++;
                continue;
              }
              if (chunk[pos] === CR && (pos + 1 === end || chunk[pos + 1] === LF)) {
                if (pos + 1 === end) this.pendingCR = true;
                pos += pos + 1 === end ? 1 : 2;
                continue;
              }
              startInChunk = pos;
              this.cmdStart = this.base + pos;
              if (chunk[pos] !== RespType.Array) {
                this.fail(INLINE_REFUSED, pos);
              }
            } else if (chunk[pos] !== RespType.BulkString) {
              this.fail(`expected '$', got '${printable(chunk[pos]!)}'`, pos);
            }
          }
          // Find the CR, then the LF (possibly in the next chunk).
          let lineEnd: number; // index of the LF in `chunk`
          let lineBuf: Buffer;
          let lineFrom: number;
          let lineCR: number;
          if (this.line.length > 0 && this.line.buf[this.line.length - 1] === CR) {
            if (chunk[pos] !== LF) this.failLength(pos);
            lineEnd = pos;
          } else {
            const cr = findCR(chunk, pos, end);
            if (cr === -1 || cr + 1 === end) {
              this.line.append(chunk, pos, end);
              // Redis: `sdslen(querybuf) - qb_pos > PROTO_INLINE_MAX_SIZE` with no CR yet.
              if (this.line.length > this.limits.maxInlineBytes + 1) {
                this.fail(
                  this.state === RQ_MULTIBULK ? 'too big mbulk count string' : 'too big bulk count string',
                  end - 1,
                );
              }
              pos = end;
              break;
            }
            if (chunk[cr + 1] !== LF) this.failLength(cr + 1);
            lineEnd = cr + 1;
          }
          if (this.line.length > 0) {
            this.line.append(chunk, lineStart, lineEnd + 1);
            lineBuf = this.line.buf;
            lineFrom = 0;
            lineCR = this.line.length - 2;
          } else {
            lineBuf = chunk;
            lineFrom = lineStart;
            lineCR = lineEnd - 1;
          }
          if (lineCR - lineFrom > this.limits.maxInlineBytes) {
            this.fail(this.state === RQ_MULTIBULK ? 'too big mbulk count string' : 'too big bulk count string', lineEnd);
          }
          const n = parseLength(lineBuf, lineFrom + 1, lineCR);
          if (this.line.length > 0) this.line.reset();
          pos = lineEnd + 1;
          if (this.state === RQ_MULTIBULK) {
            if (n < 0) this.fail('invalid multibulk length', lineEnd);
            if (n > this.limits.maxMultibulk) {
              this.fail(this.limits.unauthenticated ? 'unauthenticated multibulk length' : 'invalid multibulk length', lineEnd);
            }
            if (n === 0) {
              // `*0\r\n`: Redis skips it; so do we (consumed, nothing delivered).
              this.dropOwned();
              startInChunk = pos;
              break;
            }
            this.argsLeft = n;
            this.argc = 0;
            this.state = RQ_BULK;
          } else {
            if (n < 0) this.fail('invalid bulk length', lineEnd);
            if (n > this.limits.maxBulkBytes) {
              this.fail(this.limits.unauthenticated ? 'unauthenticated bulk length' : 'invalid bulk length', lineEnd);
            }
            if (this.base + pos + n + 2 - this.cmdStart > this.limits.maxCommandBytes) {
              this.fail('command exceeds the query buffer limit', lineEnd);
            }
            this.bodyLeft = n;
            const k = 2 * this.argc++;
            const at = this.base + pos - this.cmdStart;
            this.argBounds[k] = at;
            this.argBounds[k + 1] = at + n;
            this.state = RQ_BODY;
          }
          break;
        }
        case RQ_BODY: {
          const avail = end - pos;
          if (avail < this.bodyLeft) {
            this.bodyLeft -= avail;
            pos = end;
            break;
          }
          pos += this.bodyLeft;
          this.bodyLeft = 0;
          // Fast path: the CRLF is in this chunk too.
          if (pos + 1 < end) {
            if (chunk[pos] !== CR || chunk[pos + 1] !== LF) this.fail('expected CRLF after bulk argument', pos);
            pos += 2;
            if (--this.argsLeft === 0) startInChunk = this.deliver(chunk, startInChunk, pos);
            else this.state = RQ_BULK;
          } else {
            this.state = RQ_CR;
          }
          break;
        }
        case RQ_CR:
          if (chunk[pos] !== CR) this.fail('expected CRLF after bulk argument', pos);
          pos++;
          this.state = RQ_LF;
          break;
        case RQ_LF:
          if (chunk[pos] !== LF) this.fail('expected CRLF after bulk argument', pos);
          pos++;
          if (--this.argsLeft === 0) startInChunk = this.deliver(chunk, startInChunk, pos);
          else this.state = RQ_BULK;
          break;
      }
    }

    // Keep the unfinished command's bytes of this chunk.
    if (this.state !== RQ_MULTIBULK || this.line.length > 0) {
      this.keep(chunk, startInChunk === -1 ? 0 : startInChunk, end);
    }
    this.base += end;
  }

  /**
   * The command starting at `start` (its `*`) when all of it is in the chunk
   * and within every limit: records its argument bounds and returns where it
   * ends. Returns -1 otherwise, having changed nothing the state machine
   * reads (argc and argBounds are reset by its own `*` header): the command
   * is then framed again from `start` by the state machine, which keeps
   * partial commands and reports every violation, so nothing is accepted
   * here that it would refuse.
   */
  private frameWhole(chunk: Buffer, start: number, end: number): number {
    const limits = this.limits;
    let p = start + 1;
    let n = 0;
    // '*<count>\r\n': 1 to 15 digits, no leading zero, at least one argument.
    let c = p < end ? chunk[p]! : 0;
    if (c < 0x31 || c > NINE) return -1;
    const countFrom = p;
    while (p < end && (c = chunk[p]!) >= ZERO && c <= NINE) {
      n = n * 10 + (c - ZERO);
      p++;
    }
    if (p + 1 >= end || c !== CR || chunk[p + 1] !== LF || p - countFrom > 15 || p - start > limits.maxInlineBytes) return -1;
    if (n > limits.maxMultibulk) return -1;
    p += 2;
    const bounds = this.argBounds;
    const maxBulk = limits.maxBulkBytes;
    const maxCommand = limits.maxCommandBytes;
    for (let i = 0; i < n; i++) {
      // '$<len>\r\n<len bytes>\r\n'
      if (p >= end || chunk[p] !== RespType.BulkString) return -1;
      const lineStart = p++;
      c = p < end ? chunk[p]! : 0;
      if (c < ZERO || c > NINE) return -1;
      const lenFrom = p;
      let len = 0;
      while (p < end && (c = chunk[p]!) >= ZERO && c <= NINE) {
        len = len * 10 + (c - ZERO);
        p++;
      }
      const digits = p - lenFrom;
      if (p + 1 >= end || c !== CR || chunk[p + 1] !== LF || digits > 15 || (digits > 1 && chunk[lenFrom] === ZERO)) return -1;
      if (p - lineStart > limits.maxInlineBytes || len > maxBulk) return -1;
      p += 2;
      const bodyEnd = p + len;
      if (bodyEnd + 2 - start > maxCommand || bodyEnd + 1 >= end) return -1;
      if (chunk[bodyEnd] !== CR || chunk[bodyEnd + 1] !== LF) return -1;
      bounds[2 * i] = p - start;
      bounds[2 * i + 1] = bodyEnd - start;
      p = bodyEnd + 2;
    }
    this.argc = n;
    return p;
  }

  private failLength(pos: number): never {
    this.fail(this.state === RQ_MULTIBULK ? 'invalid multibulk length' : 'invalid bulk length', pos);
  }

  /** Hands over the command ending at `pos`; returns where the next one starts in the chunk. */
  private deliver(chunk: Buffer, startInChunk: number, pos: number): number {
    let buf = chunk;
    let start = startInChunk;
    let end = pos;
    if (startInChunk < 0) {
      this.keep(chunk, 0, pos);
      buf = this.owned!;
      start = 0;
      end = this.ownedLength;
      this.owned = null;
      this.ownedLength = 0;
    }
    this.state = RQ_MULTIBULK;
    if (this.spanSink !== null) {
      this.spanSink.span(buf, start, end);
    } else {
      const raw = buf.subarray(start, end);
      this.sink!.command(raw, this.args(raw));
    }
    // A command with very many arguments does not pin its bounds array.
    if (this.argBounds.length > 2048) this.argBounds = [];
    return pos;
  }

  private keep(chunk: Buffer, start: number, end: number): void {
    const add = end - start;
    if (add === 0) return;
    const need = this.ownedLength + add;
    if (need > this.limits.maxCommandBytes) this.fail('command exceeds the query buffer limit', end - 1);
    if (!this.owned || need > this.owned.length) {
      // Reserve for the argument being read when we know its length.
      const hint = this.state === RQ_BODY ? need + this.bodyLeft + 2 : need;
      const size = Math.min(this.limits.maxCommandBytes, Math.max(hint, 256, (this.owned?.length ?? 0) * 2));
      const next = Buffer.allocUnsafe(Math.max(size, need));
      if (this.owned) this.owned.copy(next, 0, 0, this.ownedLength);
      this.owned = next;
    }
    chunk.copy(this.owned, this.ownedLength, start, end);
    this.ownedLength = need;
  }

  private dropOwned(): void {
    this.owned = null;
    this.ownedLength = 0;
  }
}

// --- server -> client --------------------------------------------------------------

export interface ReplyEndInfo {
  /** A RESP3 push ('>') at top level: out-of-band data, not the reply to a request. */
  push: boolean;
  /**
   * The reply was preceded by one or more top-level attributes ('|'). An
   * attribute is not a reply: it annotates the reply after it, so it produces
   * no `replyEnd` of its own and its bytes count as part of that reply.
   * One `replyEnd` is one reply (or one push), whatever attributes precede it.
   */
  attribute: boolean;
  /** Absolute stream offset just past the reply's last byte. */
  end: number;
}

export interface ReplySink {
  /**
   * Raw reply bytes to forward untouched, in order; contiguous bytes of one
   * chunk in ONE call (the chunk itself when it is all forwarded: zero copy).
   * It is called once per `push`, after the `replyEnd` calls for the replies
   * that ended in that chunk; `ReplyEndInfo.end` places each of them in the
   * stream if the relay must split the bytes (to insert a reply of its own).
   */
  passthrough(bytes: Buffer): void;
  /** A complete top-level reply (or push) ended. */
  replyEnd(info: ReplyEndInfo): void;
}

export interface RespReplyLimits {
  /** Longest `$` `!` `=` body. Redis: proto-max-bulk-len (512 MiB). */
  maxBulkBytes: number;
  /** Most elements in one aggregate (a map counts its entries). They cost no memory here. */
  maxAggregate: number;
  /** Longest header or simple-string line without its CRLF. */
  maxLineBytes: number;
  /** Deepest nesting of aggregates (attributes included). */
  maxDepth: number;
}

export const DEFAULT_REPLY_LIMITS: Readonly<RespReplyLimits> = Object.freeze({
  maxBulkBytes: PROTO_MAX_BULK_LEN,
  maxAggregate: 2 ** 32,
  maxLineBytes: PROTO_INLINE_MAX_SIZE,
  maxDepth: 128,
});

// Reply framer states.
const RP_ELEMENT = 0; // at the type byte of an element
const RP_LINE = 1; // inside a header line that started in an earlier chunk
const RP_BODY = 2; // inside a `$` `!` `=` body
const RP_CR = 3; // the CR after a body
const RP_LF = 4; // the LF after a body

/**
 * Frames server -> client traffic into top-level replies without holding them.
 *
 * Nesting is a stack of "elements still to come" counters: an array, set and
 * push count one per element, a map and an attribute two per entry. An
 * attribute frame does not count as an element of its parent: it annotates
 * the element after it (RESP3.md "Attribute type").
 */
export class RespReplyFramer {
  private readonly limits: RespReplyLimits;
  /** pushCounting: count replies instead of reporting each. */
  private counting = false;
  private counted = 0;
  private lastEndOffset = 0;
  private state = RP_ELEMENT;
  private base = 0;
  private readonly line = new LineBuffer();
  /** Elements still to come, per open aggregate. */
  private readonly remaining: Float64Array;
  /** 1 where the open aggregate is an attribute. */
  private readonly isAttribute: Uint8Array;
  private depth = 0;
  private bodyLeft = 0;
  /** For '=': index in the body still to reach of the ':' after the 3-byte format; -1 once checked. */
  private verbatimColon = -1;
  private topPush = false;
  private attributePending = false;
  /** End (in the chunk) of the last complete top-level reply: what an error may still pass through. */
  private lastReplyEnd = 0;
  private sink: ReplySink | null = null;
  private failed: RespProtocolError | null = null;

  constructor(opts?: Partial<RespReplyLimits>) {
    this.limits = { ...DEFAULT_REPLY_LIMITS, ...opts };
    this.remaining = new Float64Array(this.limits.maxDepth);
    this.isAttribute = new Uint8Array(this.limits.maxDepth);
  }

  /** Bytes held between chunks: only a split header line. */
  get bufferedBytes(): number {
    return this.line.buf.length;
  }

  /** Absolute offset of the next byte `push` will see. */
  get offset(): number {
    return this.base;
  }

  /** True between replies (nothing of a reply pending); an attribute alone is pending. */
  get atReplyBoundary(): boolean {
    return this.state === RP_ELEMENT && this.depth === 0 && !this.attributePending;
  }

  /**
   * Frames `chunk`: `replyEnd` for each reply that ends in it, then one
   * `passthrough`. On a protocol error, only the bytes of the replies that
   * ended in this chunk are passed through, then RespProtocolError is thrown
   * and the framer refuses any further input.
   */
  push(chunk: Buffer, sink: ReplySink): void {
    this.counting = false;
    this.frameChunk(chunk, sink);
  }

  /**
   * Frames `chunk` like `push`, with the same checks and the same
   * `passthrough`, but without a `replyEnd` per reply: returns how many
   * replies that are not RESP3 pushes ended in it, and `lastEnd` says where
   * the last reply (of any kind) ended. For a relay with nothing to insert
   * or take out, which only needs to count.
   */
  pushCounting(chunk: Buffer, sink: ReplySink): number {
    this.counting = true;
    this.counted = 0;
    this.frameChunk(chunk, sink);
    return this.counted;
  }

  /** Absolute offset just past the last complete top-level reply or push. */
  get lastEnd(): number {
    return this.lastEndOffset;
  }

  private frameChunk(chunk: Buffer, sink: ReplySink): void {
    if (this.failed) throw this.failed;
    this.sink = sink;
    this.lastReplyEnd = 0;
    try {
      this.frame(chunk);
    } catch (err) {
      if (err instanceof RespProtocolError) {
        this.failed = err;
        if (this.lastReplyEnd > 0) sink.passthrough(chunk.subarray(0, this.lastReplyEnd));
      }
      throw err;
    } finally {
      this.sink = null;
    }
    if (chunk.length > 0) sink.passthrough(chunk);
    this.base += chunk.length;
  }

  private fail(message: string, pos: number): never {
    throw new RespProtocolError(message, this.base + pos);
  }

  private frame(chunk: Buffer): void {
    const end = chunk.length;
    let pos = 0;
    while (pos < end) {
      switch (this.state) {
        case RP_ELEMENT: {
          // The usual reply to GET and friends, a whole bulk string in this chunk, in one step.
          if (chunk[pos] === RespType.BulkString && this.depth === 0) {
            const next = this.wholeBulk(chunk, pos, end);
            if (next > 0) {
              pos = next;
              break;
            }
          }
          const cr = findCR(chunk, pos + 1, end);
          if (cr === -1 || cr + 1 === end) {
            // The line goes on in the next chunk: check what we have, keep a copy.
            this.checkPartialLine(chunk, pos, end);
            this.line.append(chunk, pos, end);
            this.state = RP_LINE;
            pos = end;
            break;
          }
          if (chunk[cr + 1] !== LF) this.fail('expected LF after CR', cr + 1);
          if (cr - pos - 1 > this.limits.maxLineBytes) this.fail('too big inline string', pos + this.limits.maxLineBytes);
          this.header(chunk, pos, cr, cr + 2);
          pos = cr + 2;
          break;
        }
        case RP_LINE: {
          let lf: number;
          if (this.line.buf[this.line.length - 1] === CR) {
            if (chunk[pos] !== LF) this.fail('expected LF after CR', pos);
            lf = pos;
          } else {
            const cr = findCR(chunk, pos, end);
            if (cr === -1 || cr + 1 === end) {
              this.checkPartialLine(chunk, pos, end);
              this.line.append(chunk, pos, end);
              pos = end;
              break;
            }
            if (chunk[cr + 1] !== LF) this.fail('expected LF after CR', cr + 1);
            lf = cr + 1;
          }
          this.line.append(chunk, pos, lf + 1);
          const lineBuf = this.line.buf;
          const lineCR = this.line.length - 2;
          if (lineCR - 1 > this.limits.maxLineBytes) this.fail('too big inline string', lf);
          this.state = RP_ELEMENT;
          this.header(lineBuf, 0, lineCR, lf + 1, chunk);
          this.line.reset();
          pos = lf + 1;
          break;
        }
        case RP_BODY: {
          const avail = end - pos;
          if (this.verbatimColon >= 0) this.checkVerbatim(chunk, pos, Math.min(avail, this.bodyLeft));
          if (avail < this.bodyLeft) {
            this.bodyLeft -= avail;
            pos = end;
            break;
          }
          pos += this.bodyLeft;
          this.bodyLeft = 0;
          if (pos + 1 < end) {
            if (chunk[pos] !== CR || chunk[pos + 1] !== LF) this.fail('expected CRLF after bulk string', pos);
            pos += 2;
            this.state = RP_ELEMENT;
            this.elementDone(pos);
          } else {
            this.state = RP_CR;
          }
          break;
        }
        case RP_CR:
          if (chunk[pos] !== CR) this.fail('expected CRLF after bulk string', pos);
          pos++;
          this.state = RP_LF;
          break;
        case RP_LF:
          if (chunk[pos] !== LF) this.fail('expected CRLF after bulk string', pos);
          pos++;
          this.state = RP_ELEMENT;
          this.elementDone(pos);
          break;
      }
    }
  }

  /**
   * A top-level bulk string `$<n>\r\n<n bytes>\r\n` or null `$-1\r\n` that
   * is whole in the chunk from `start`: ends it and returns where it ends.
   * Returns -1 having changed nothing for anything else (a length the state machine
   * must judge, a reply cut by the chunk end, a bad terminator): the state
   * machine then frames it from `start` and reports any violation, so this
   * accepts nothing it would refuse.
   */
  private wholeBulk(chunk: Buffer, start: number, end: number): number {
    let p = start + 1;
    let c = p < end ? chunk[p]! : 0;
    if (c === MINUS) {
      // `$-1\r\n`: RESP2's null (GET of a missing key).
      if (start + 5 > end || chunk[start + 2] !== 0x31 /* '1' */ || chunk[start + 3] !== CR || chunk[start + 4] !== LF) return -1;
      this.topPush = false;
      this.elementDone(start + 5);
      return start + 5;
    }
    // 1 to 15 digits, no leading zero ("0" alone is fine), as parseLength.
    if (c < ZERO || c > NINE) return -1;
    let n = c - ZERO;
    p++;
    if (n !== 0) {
      while (p < end && (c = chunk[p]!) >= ZERO && c <= NINE) {
        n = n * 10 + (c - ZERO);
        p++;
      }
      if (p - start - 1 > 15) return -1;
    }
    if (p + 1 >= end || chunk[p] !== CR || chunk[p + 1] !== LF || n > this.limits.maxBulkBytes) return -1;
    const bodyEnd = p + 2 + n;
    if (bodyEnd + 2 > end || chunk[bodyEnd] !== CR || chunk[bodyEnd + 1] !== LF) return -1;
    this.topPush = false;
    this.elementDone(bodyEnd + 2);
    return bodyEnd + 2;
  }

  /**
   * Fails early on a header line cut by the chunk end when what arrived can
   * never become valid, so nothing after a bad byte is passed through.
   * `start` is the type byte when the line starts here.
   */
  private checkPartialLine(chunk: Buffer, start: number, end: number): void {
    const type = this.line.length > 0 ? this.line.buf[0]! : chunk[start]!;
    const first = this.line.length > 0 ? start : start + 1;
    const have = this.line.length + (end - start);
    if (have - 1 > this.limits.maxLineBytes + 1) this.fail('too big inline string', end - 1);
    switch (type) {
      case RespType.SimpleString:
      case RespType.SimpleError:
        for (let i = first; i < end; i++) if (chunk[i] === LF) this.fail('unexpected LF in a simple string', i);
        return;
      case RespType.BulkString:
      case RespType.Array:
      case RespType.BlobError:
      case RespType.VerbatimString:
      case RespType.Map:
      case RespType.Set:
      case RespType.Attribute:
      case RespType.Push:
        // Lengths are at most 15 digits (see parseLength) and '-' only starts "-1".
        if (have - 1 > 16) this.fail(lengthMessage(type), end - 1);
        for (let i = first; i < end; i++) {
          const c = chunk[i]!;
          const lineIndex = this.line.length + (i - start);
          if ((c < ZERO || c > NINE) && c !== CR && !(c === MINUS && lineIndex === 1)) {
            this.fail(lengthMessage(type), i);
          }
        }
        return;
      case RespType.Integer:
      case RespType.BigNumber:
      case RespType.Double:
      case RespType.Boolean:
      case RespType.Null:
        return; // judged when the line ends; bounded by maxLineBytes meanwhile
      default:
        this.fail(`unknown reply type byte '${printable(type)}'`, start);
    }
  }

  /**
   * One complete header line: type byte at buf[start], CR at buf[cr].
   * `next` is where the element's body (if any) starts in `chunk`.
   */
  private header(buf: Buffer, start: number, cr: number, next: number, chunk?: Buffer): void {
    const type = buf[start]!;
    // Offsets in errors: the CR of the line in the current chunk (approximate for split lines).
    const at = chunk ? next - 2 : start;
    switch (type) {
      case RespType.BulkString:
      case RespType.BlobError:
      case RespType.VerbatimString: {
        const n = parseLength(buf, start + 1, cr);
        if (n === -1 && type === RespType.BulkString) {
          this.beginElement(type);
          this.elementDone(next); // RESP2 null bulk string
          return;
        }
        if (n < 0 || n > this.limits.maxBulkBytes) this.fail('invalid bulk length', at);
        if (type === RespType.VerbatimString) {
          // "=<len>\r\n<3-byte format>:<text>": the length includes "fmt:".
          if (n < 4) this.fail('invalid verbatim string', at);
          this.verbatimColon = 3;
        }
        this.beginElement(type);
        this.bodyLeft = n;
        this.state = RP_BODY;
        return;
      }
      case RespType.Array:
      case RespType.Map:
      case RespType.Set:
      case RespType.Attribute:
      case RespType.Push: {
        const n = parseLength(buf, start + 1, cr);
        if (n === -1 && type === RespType.Array) {
          this.beginElement(type);
          this.elementDone(next); // RESP2 null array
          return;
        }
        if (n < 0 || n > this.limits.maxAggregate) this.fail(lengthMessage(type), at);
        const count = type === RespType.Map || type === RespType.Attribute ? n * 2 : n;
        if (type === RespType.Attribute) {
          if (count === 0) {
            if (this.depth === 0) this.attributePending = true;
            return;
          }
        } else {
          this.beginElement(type);
          if (count === 0) {
            this.elementDone(next);
            return;
          }
        }
        if (this.depth === this.limits.maxDepth) this.fail('too deep nesting', at);
        this.remaining[this.depth] = count;
        this.isAttribute[this.depth] = type === RespType.Attribute ? 1 : 0;
        this.depth++;
        return;
      }
      case RespType.SimpleString:
      case RespType.SimpleError:
        if (!validSimpleLine(buf, start + 1, cr)) this.fail('unexpected LF in a simple string', at);
        break;
      case RespType.Integer:
        if (!validInteger(buf, start + 1, cr)) this.fail('invalid integer', at);
        break;
      case RespType.Null:
        if (cr !== start + 1) this.fail('invalid null', at);
        break;
      case RespType.Boolean:
        if (cr !== start + 2 || (buf[start + 1] !== 0x74 /* 't' */ && buf[start + 1] !== 0x66) /* 'f' */) {
          this.fail('invalid boolean', at);
        }
        break;
      case RespType.Double:
        if (!validDouble(buf, start + 1, cr)) this.fail('invalid double', at);
        break;
      case RespType.BigNumber:
        if (!validBigNumber(buf, start + 1, cr)) this.fail('invalid big number', at);
        break;
      default:
        this.fail(`unknown reply type byte '${printable(type)}'`, at);
    }
    this.beginElement(type);
    this.elementDone(next);
  }

  /** A non-attribute element starts: at top level, note whether it is a push. */
  private beginElement(type: number): void {
    if (this.depth === 0) this.topPush = type === RespType.Push;
  }

  private checkVerbatim(chunk: Buffer, pos: number, n: number): void {
    if (this.verbatimColon < n) {
      if (chunk[pos + this.verbatimColon] !== 0x3a /* ':' */) this.fail('invalid verbatim string', pos + this.verbatimColon);
      this.verbatimColon = -1;
    } else {
      this.verbatimColon -= n;
    }
  }

  /** An element ended just before `pos` (in the current chunk): count it in its parents. */
  private elementDone(pos: number): void {
    let d = this.depth;
    while (d > 0) {
      const i = d - 1;
      if (--this.remaining[i] > 0) return;
      // The aggregate at level i is complete.
      this.depth = d = i;
      if (this.isAttribute[i] === 1) {
        // An attribute is not an element of its parent: the next one is.
        if (d === 0) this.attributePending = true;
        return;
      }
    }
    this.lastReplyEnd = pos;
    this.lastEndOffset = this.base + pos;
    if (this.counting) {
      if (!this.topPush) this.counted++;
      this.topPush = false;
      this.attributePending = false;
      return;
    }
    const info: ReplyEndInfo = { push: this.topPush, attribute: this.attributePending, end: this.base + pos };
    this.topPush = false;
    this.attributePending = false;
    this.sink!.replyEnd(info);
  }
}

function lengthMessage(type: number): string {
  switch (type) {
    case RespType.Array:
    case RespType.Push:
    case RespType.Set:
      return 'invalid multibulk length';
    case RespType.Map:
    case RespType.Attribute:
      return 'invalid map length';
    default:
      return 'invalid bulk length';
  }
}

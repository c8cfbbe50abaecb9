/**
 * Zero-copy framer for the PostgreSQL wire protocol (one direction of a
 * connection). https://www.postgresql.org/docs/current/protocol-overview.html
 *
 * Wire:
 *   startup phase (client only): Int32 length (counts itself) + payload, no
 *     type byte: StartupMessage, SSLRequest, GSSENCRequest, CancelRequest.
 *   afterwards: Byte1 type + Int32 length (counts itself, not the type) + body.
 *
 * States (between two pushes the framer is in exactly one):
 *   HEADER        at a message boundary, or holding 1..4 bytes of a header
 *                 that was split across chunks (`hdr`, `hdrLength`). A
 *                 header is validated (length >= 4, size <= maxMessageBytes)
 *                 as soon as it is complete, before any body byte is awaited.
 *   BODY_PASS     inside a message of a type nobody inspects: `remaining`
 *                 body bytes are counted down and forwarded as they arrive,
 *                 never accumulated (a 1 GB DataRow costs nothing).
 *   BODY_INSPECT  inside an inspected message that straddles chunks: its
 *                 bytes are copied into `msg` (grown by doubling up to the
 *                 message size) until it is whole, then handed to the sink;
 *                 the sink owns that buffer, the framer never reuses it.
 * Within one chunk, complete inspected messages are delivered as subarrays
 * of the chunk and every run of pass-through bytes goes out as one
 * `passthrough` call (the chunk itself when all of it passes through), so the
 * all-pass-through path allocates nothing per message.
 *
 * `startupNext` says whether the next header is an untyped startup-phase one.
 */
import { SluiceError, ErrorCodes } from '../../src/errors.js';

/**
 * PostgreSQL's MAX_STARTUP_PACKET_LENGTH (src/include/libpq/pqcomm.h): the
 * server refuses a longer startup packet, and so do we.
 */
export const MAX_STARTUP_PACKET_LENGTH = 10000;
/** Length word + request code: the shortest startup-phase packet. */
export const MIN_STARTUP_PACKET_LENGTH = 8;

// Same values as SSL_REQUEST_CODE / GSSENC_REQUEST_CODE in messages.ts,
// repeated here so that the framer imports nothing from the codec (which
// imports PgProtocolError from here).
const SSL_REQUEST = 80877103;
const GSSENC_REQUEST = 80877104;

export interface FramerSink {
  /**
   * Raw bytes to forward untouched, in order. Contiguous pass-through bytes
   * of one chunk come as ONE call (the chunk itself when the whole chunk
   * passes through: zero copy). Header bytes held over from earlier chunks
   * come as their own (copied) call just before.
   */
  passthrough(bytes: Buffer): void;
  /**
   * A whole message of an inspected type (or a startup-phase message, type
   * 0): `message` is the complete wire bytes (type byte + length + body; for
   * startup messages length + payload). A subarray of the chunk when it
   * arrived in one chunk (do not hold it across an await without copying);
   * a fresh buffer owned by the sink when it straddled chunks.
   */
  message(type: number, message: Buffer): void;
}

/**
 * Which message types are handed to `FramerSink.message` rather than passed
 * through. Internally always a 256-entry lookup table (one indexed load per
 * message on the hot path, no call); a function or a list is turned into
 * one table when set, so a function is called once per type code, not once
 * per message.
 */
export type InspectSpec =
  | Uint8Array // 256 entries, non-zero = inspect
  | readonly number[] // type codes
  | ((type: number) => boolean);

export interface PgFramerOptions {
  /**
   * Largest message accepted, counted in wire bytes (type byte + length
   * word + body). Checked from the header, before the body is awaited, for
   * every message whether inspected or not. Startup-phase packets are also
   * capped at MAX_STARTUP_PACKET_LENGTH.
   */
  maxMessageBytes: number;
  /** Default: nothing inspected (plain relay). */
  inspect?: InspectSpec;
  /** The first message is an untyped startup-phase one (client side). */
  startup?: boolean;
}

/** A peer broke the framing. Fatal to the connection: close it, log `offset`. */
export class PgProtocolError extends SluiceError {
  /**
   * Absolute stream offset (bytes since the framer was created) of the
   * offending message; -1 when not known (codec errors on a lone message).
   */
  readonly offset: number;

  constructor(
    code: typeof ErrorCodes.PROTOCOL_VIOLATION | typeof ErrorCodes.MESSAGE_TOO_LARGE,
    message: string,
    offset = -1,
  ) {
    super(code, message);
    this.name = 'PgProtocolError';
    this.offset = offset;
  }
}

/**
 * A message of a type the framer was told to refuse (`refuse`), stopped at
 * its header: not one byte of its body was framed or forwarded. `offset` is
 * where its type byte is.
 */
export class RefusedMessage extends PgProtocolError {
  constructor(what: string, type: number, offset: number) {
    super(ErrorCodes.PROTOCOL_VIOLATION, `${what} (message type ${printable(type)}) is not allowed here`, offset);
    this.name = 'RefusedMessage';
  }
}

const HEADER = 0;
const BODY_PASS = 1;
const BODY_INSPECT = 2;

/** First allocation for an inspected message that straddles chunks. */
const INITIAL_MESSAGE_CAPACITY = 16 * 1024;

const EMPTY = Buffer.alloc(0);

export function inspectTable(spec: InspectSpec | undefined): Uint8Array {
  const table = new Uint8Array(256);
  if (spec === undefined) return table;
  if (spec instanceof Uint8Array) {
    if (spec.length !== 256) throw new RangeError('inspect table must have 256 entries');
    table.set(spec);
  } else if (typeof spec === 'function') {
    for (let type = 0; type < 256; type++) table[type] = spec(type) ? 1 : 0;
  } else {
    for (const type of spec) table[type & 0xff] = 1;
  }
  return table;
}

function checkedLimit(max: number): number {
  if (!Number.isSafeInteger(max) || max < 5) throw new RangeError('maxMessageBytes must be an integer >= 5');
  return max;
}

function printable(type: number): string {
  return type >= 0x20 && type < 0x7f
    ? `'${String.fromCharCode(type)}'`
    : `0x${type.toString(16).padStart(2, '0')}`;
}

/** A type's entry in the framer's table: 0 passes through, 1 is inspected, REFUSE fails at its header. */
const REFUSE = 2;

export class PgFramer {
  private maxMessageBytes: number;
  /** Per type code: 0 pass through, 1 inspect, REFUSE. */
  private table: Uint8Array;
  /** Types refused (`refuse`), with what to call them: kept across setInspect. */
  private readonly refused = new Map<number, string>();
  private startupNext: boolean;

  private state = HEADER;
  /** Header bytes held across chunks (HEADER state). */
  private readonly hdr = Buffer.allocUnsafe(5);
  private hdrLength = 0;
  /** Body bytes still to forward (BODY_PASS). */
  private remaining = 0;
  /** Inspected message being assembled (BODY_INSPECT). */
  private msg: Buffer = EMPTY;
  private msgFilled = 0;
  private msgTotal = 0;
  private msgType = 0;
  /** The message being assembled was framed as a startup-phase packet. */
  private msgStartup = false;

  /** Absolute stream offset of the current chunk's first byte. */
  private chunkBase = 0;
  /** Bytes of the current chunk not yet framed (meaningful during sink calls). */
  private unframed = 0;
  private failure: PgProtocolError | undefined;

  constructor(opts: PgFramerOptions) {
    this.maxMessageBytes = checkedLimit(opts.maxMessageBytes);
    this.table = inspectTable(opts.inspect);
    this.startupNext = opts.startup === true;
  }

  /**
   * The next message is an untyped startup-phase message. The framer already
   * does this by itself after an SSLRequest or GSSENCRequest (whatever the
   * answer, the client's next packet is a startup-phase one); call it
   * wherever else the caller knows better. May be called from inside a sink
   * callback: it applies to the next message of the same chunk.
   */
  expectStartup(): void {
    this.startupNext = true;
  }

  /**
   * Change the size limit (e.g. a tight one before authentication, the
   * target's own after). Applies from the next header.
   */
  setMaxMessageBytes(maxMessageBytes: number): void {
    this.maxMessageBytes = checkedLimit(maxMessageBytes);
  }

  /**
   * Change which types are inspected (e.g. nothing during plain relay).
   * Applies from the next header; may be called from inside a sink callback.
   */
  setInspect(spec: InspectSpec | undefined): void {
    this.table = inspectTable(spec);
    for (const type of this.refused.keys()) this.table[type] = REFUSE;
  }

  /**
   * From the next header on, a message of `type` is a protocol violation
   * (RefusedMessage, named `what`), thrown as soon as its header is read:
   * its body is never framed, held or passed through. For a PasswordMessage
   * after authentication, whose body may be a credential. Kept across
   * setInspect.
   */
  refuse(type: number, what: string): void {
    this.refused.set(type & 0xff, what);
    this.table[type & 0xff] = REFUSE;
  }

  /**
   * Bytes the framer holds that do not yet form a complete inspected message
   * (a split header, a partial inspected message) plus, while a sink
   * callback runs, the bytes of the current chunk not yet framed. 0 at a
   * message boundary with nothing behind it.
   *
   * CVE-2021-23214 (bytes injected after SSLRequest): in the `message`
   * callback for the SSLRequest, require `bufferedBytes === 0` before
   * answering; after `push` returns, `bufferedBytes === 0 &&
   * atMessageBoundary` says nothing followed it in this push.
   */
  get bufferedBytes(): number {
    return this.hdrLength + (this.state === BODY_INSPECT ? this.msgFilled : 0) + this.unframed;
  }

  /**
   * Between pushes: the typed message assembled across chunks, if any (its
   * header was read, its body is not whole yet): its type and the stream
   * offset of its first byte.
   */
  get partialMessage(): { type: number; offset: number } | undefined {
    if (this.state !== BODY_INSPECT || this.msgStartup) return undefined;
    return { type: this.msgType, offset: this.chunkBase - this.msgFilled };
  }

  /** True when the framer is between two messages (no partial header or body). */
  get atMessageBoundary(): boolean {
    return this.state === HEADER && this.hdrLength === 0;
  }

  /** True when the next message will be framed as an untyped startup-phase one. */
  get expectingStartup(): boolean {
    return this.startupNext;
  }

  /**
   * Absolute stream offset of the first byte not yet framed. Inside a
   * `message` callback, the message started at `streamOffset - message.length`.
   */
  get streamOffset(): number {
    return this.chunkBase - this.unframed;
  }

  /** Bytes of heap the framer holds for partial messages (for memory bounds tests). */
  get bufferCapacity(): number {
    return this.msg.length;
  }

  /**
   * Feed one chunk; calls the sink synchronously, in wire order. Throws
   * PgProtocolError on a violation: everything before the bad message in
   * the same chunk has already been given to the sink. After a throw (ours
   * or the sink's) the framer is dead: every later push throws again.
   */
  push(chunk: Buffer, sink: FramerSink): void {
    if (this.failure !== undefined) throw this.failure;
    const end = chunk.length;
    const base = this.chunkBase;
    // Advance the base first: from here on `streamOffset` = base + end - unframed.
    this.chunkBase = base + end;
    this.unframed = end;
    try {
      this.frame(chunk, end, base, sink);
    } catch (err) {
      if (err instanceof PgProtocolError) this.failure = err;
      else this.failure = new PgProtocolError(ErrorCodes.PROTOCOL_VIOLATION, 'framer aborted by its sink', -1);
      this.unframed = 0;
      throw err;
    }
    this.unframed = 0;
  }

  private frame(chunk: Buffer, end: number, base: number, sink: FramerSink): void {
    let pos = 0;
    /** Start of the run of pass-through bytes not yet given to the sink. */
    let runStart = 0;

    // Finish what the previous chunk left open.
    if (this.state === BODY_PASS) {
      if (this.remaining >= end) {
        this.remaining -= end;
        if (this.remaining === 0) this.state = HEADER;
        if (end > 0) {
          this.unframed = 0;
          sink.passthrough(chunk); // the whole chunk: zero copy
        }
        return;
      }
      pos = this.remaining;
      this.remaining = 0;
      this.state = HEADER;
    } else if (this.state === BODY_INSPECT) {
      const n = Math.min(this.msgTotal - this.msgFilled, end);
      this.append(chunk, 0, n);
      if (this.msgFilled < this.msgTotal) return;
      pos = n;
      runStart = n;
      this.deliver(sink, end - pos);
    }

    while (pos < end) {
      const startup = this.startupNext;
      const headerSize = startup ? 4 : 5;
      const held = this.hdrLength;
      let type: number;
      let length: number;
      /** Index in `chunk` of the message's first byte; negative when part of the header was held. */
      let start: number;

      if (held === 0 && end - pos >= headerSize) {
        // Fast path: the whole header is in this chunk.
        start = pos;
        if (startup) {
          type = 0;
          length = (chunk[pos]! << 24) | (chunk[pos + 1]! << 16) | (chunk[pos + 2]! << 8) | chunk[pos + 3]!;
        } else {
          type = chunk[pos]!;
          length = (chunk[pos + 1]! << 24) | (chunk[pos + 2]! << 16) | (chunk[pos + 3]! << 8) | chunk[pos + 4]!;
        }
      } else {
        // Header split across chunks: gather it in `hdr`. Either it starts
        // near the end of this chunk (held === 0: it cannot complete here),
        // or earlier chunks left `held` bytes and this chunk starts at pos 0.
        const take = Math.min(headerSize - held, end - pos);
        chunk.copy(this.hdr, held, pos, pos + take);
        this.hdrLength = held + take;
        if (this.hdrLength < headerSize) {
          // Chunk exhausted inside the header: hold those bytes and forward
          // them only once the header has been validated.
          if (pos > runStart) {
            this.unframed = end - pos;
            sink.passthrough(chunk.subarray(runStart, pos));
          }
          return;
        }
        start = pos - held; // negative: the message began in an earlier chunk
        this.hdrLength = 0;
        const h = this.hdr;
        if (startup) {
          type = 0;
          length = h.readInt32BE(0);
        } else {
          type = h[0]!;
          length = h.readInt32BE(1);
        }
      }

      // A refused type is refused on its type byte, whatever its length says.
      const kind = startup ? 1 : this.table[type]!;
      if (kind === REFUSE) this.throwAt(sink, chunk, runStart, start, new RefusedMessage(this.refused.get(type) ?? 'this message', type, base + start));
      // Validate before awaiting any body byte.
      const total = startup ? length : length + 1;
      if (startup) {
        if (length < MIN_STARTUP_PACKET_LENGTH) {
          this.fail(sink, chunk, runStart, start, ErrorCodes.PROTOCOL_VIOLATION,
            `invalid length of startup packet: ${length} (minimum ${MIN_STARTUP_PACKET_LENGTH})`, base + start);
        }
        const limit = Math.min(MAX_STARTUP_PACKET_LENGTH, this.maxMessageBytes);
        if (length > limit) {
          this.fail(sink, chunk, runStart, start, ErrorCodes.MESSAGE_TOO_LARGE,
            `startup packet of ${length} bytes exceeds the limit of ${limit}`, base + start);
        }
        this.startupNext = false;
      } else {
        if (length < 4) {
          this.fail(sink, chunk, runStart, start, ErrorCodes.PROTOCOL_VIOLATION,
            `message ${printable(type)} has invalid length ${length} (minimum 4)`, base + start);
        }
        if (total > this.maxMessageBytes) {
          this.fail(sink, chunk, runStart, start, ErrorCodes.MESSAGE_TOO_LARGE,
            `message ${printable(type)} of ${total} bytes exceeds the limit of ${this.maxMessageBytes}`, base + start);
        }
      }

      const msgEnd = start + total; // index in chunk just past the message
      if (kind !== 0) {
        // Inspected (startup-phase messages always are).
        if (start >= 0 && msgEnd <= end) {
          if (start > runStart) {
            this.unframed = end - start;
            sink.passthrough(chunk.subarray(runStart, start));
          }
          pos = msgEnd;
          runStart = pos;
          if (startup) this.afterStartupPacket(chunk, start);
          this.unframed = end - pos;
          // A chunk that is exactly one message (a Query, a ReadyForQuery
          // read on its own) goes as the chunk object: no view allocated.
          sink.message(type, start === 0 && msgEnd === end ? chunk : chunk.subarray(start, msgEnd));
          continue;
        }
        // Straddles chunks: copy it out.
        const from = start < 0 ? 0 : start;
        if (from > runStart) {
          this.unframed = end - from;
          sink.passthrough(chunk.subarray(runStart, from));
        }
        this.msgType = type;
        this.msgStartup = startup;
        this.msgTotal = total;
        this.msgFilled = 0;
        this.msg = Buffer.allocUnsafe(Math.min(total, Math.max(INITIAL_MESSAGE_CAPACITY, 2 * (end - from) + held)));
        if (held > 0) this.append(this.hdr, 0, held);
        const upTo = msgEnd < end ? msgEnd : end;
        this.append(chunk, from, upTo);
        pos = upTo;
        runStart = pos;
        if (this.msgFilled < total) {
          this.state = BODY_INSPECT;
          return;
        }
        this.deliver(sink, end - pos);
        continue;
      }

      // Pass-through.
      if (held > 0) {
        // The start of this header came in earlier chunks: forward those
        // bytes (a copy: `hdr` is reused) before this chunk's run, which
        // already contains the rest of the header.
        this.unframed = end - pos;
        sink.passthrough(Buffer.from(this.hdr.subarray(0, held)));
      }
      if (msgEnd <= end) {
        pos = msgEnd;
      } else {
        this.remaining = msgEnd - end;
        this.state = BODY_PASS;
        pos = end;
      }
    }

    if (end > runStart) {
      this.unframed = 0;
      sink.passthrough(runStart === 0 ? chunk : chunk.subarray(runStart, end));
    }
  }

  /**
   * After an SSLRequest or GSSENCRequest, the next packet is startup-phase
   * again. Only for packets framed as startup-phase ones: a typed message
   * whose type byte happens to be 0 is not one (the fuzzer found that).
   */
  private afterStartupPacket(message: Buffer, at: number): void {
    const code = message.readInt32BE(at + 4); // startup packets are >= 8 bytes
    if (code === SSL_REQUEST || code === GSSENC_REQUEST) this.startupNext = true;
  }

  /** Copy chunk[from, to) into the message being assembled, growing it by doubling. */
  private append(src: Buffer, from: number, to: number): void {
    const need = this.msgFilled + (to - from);
    if (need > this.msg.length) {
      const grown = Buffer.allocUnsafe(Math.min(this.msgTotal, Math.max(2 * this.msg.length, need)));
      this.msg.copy(grown, 0, 0, this.msgFilled);
      this.msg = grown;
    }
    src.copy(this.msg, this.msgFilled, from, to);
    this.msgFilled = need;
  }

  /** Hand the assembled message (now owned by the sink) over and return to HEADER. */
  private deliver(sink: FramerSink, unframed: number): void {
    const message = this.msg; // length === msgTotal: growth is capped at the message size
    const type = this.msgType;
    this.msg = EMPTY;
    this.msgFilled = 0;
    this.state = HEADER;
    if (this.msgStartup) this.afterStartupPacket(message, 0);
    this.unframed = unframed;
    sink.message(type, message);
  }

  /** A violation by the message at `start`: see throwAt. */
  private fail(
    sink: FramerSink,
    chunk: Buffer,
    runStart: number,
    start: number,
    code: typeof ErrorCodes.PROTOCOL_VIOLATION | typeof ErrorCodes.MESSAGE_TOO_LARGE,
    message: string,
    offset: number,
  ): never {
    this.throwAt(sink, chunk, runStart, start, new PgProtocolError(code, message, offset));
  }

  /** Flush the pass-through bytes before the bad message at `start`, then throw `err`. */
  private throwAt(sink: FramerSink, chunk: Buffer, runStart: number, start: number, err: PgProtocolError): never {
    this.failure = err;
    if (start > runStart) {
      this.unframed = chunk.length - start;
      sink.passthrough(chunk.subarray(runStart, start));
    }
    throw err;
  }
}

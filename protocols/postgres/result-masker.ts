/**
 * Masks what a PostgreSQL server sends back, as a streaming transformer in
 * front of the relay's framer (RelayOptions.serverTransform).
 *
 * It frames the server's bytes itself. Messages that can carry data are
 * assembled whole (bounded by the target's max_message_size) and rewritten
 * with their length words recomputed; every other message passes through as
 * the original bytes, streamed as they arrive:
 *
 *   RowDescription 'T'       remembered: name, type OID, format of each column
 *                            (and the column rule that applies to it)
 *   DataRow 'D'              text fields, and binary fields of text-like types:
 *                            column rules (maskWhole) then content rules
 *   CopyOutResponse 'H'      COPY ... TO STDOUT: text/CSV rows are masked with
 *   CopyData 'd'             content rules; binary COPY, and any COPY while
 *                            column rules are active, is refused
 *   ErrorResponse 'E'        message, detail, hint, where, internal query
 *   NoticeResponse 'N'       (never the SQLSTATE or the object names)
 *   NotificationResponse 'A' payload
 *   ParameterStatus 'S'      value
 *   FunctionCallResponse 'V' result value
 *
 * Column selectors are matched on each column's origin (the table OID and
 * attribute number in RowDescription, resolved by column-origins.ts), and
 * on its name where the origin is unknown. When in doubt, mask.
 *
 * What cannot be masked is refused, not passed: a column rule on a binary
 * field of a non-text type, a content hit inside the binary form of a type
 * that frames text itself (an array, a record), a binary field of a
 * fixed-size type that is not its size (rows that are not the described
 * ones), rows with no RowDescription to map them while column rules are
 * active, binary COPY. The client gets a FATAL ErrorResponse (0A000) naming
 * the reason and the session ends. Which description applies to which rows
 * follows from what was sent upstream (`forwarded`): an Execute's rows
 * are read by the description of the portal it names.
 *
 * Rows of one chunk are masked together, in three steps (docs/masking.md,
 * "Performance", has the numbers):
 *
 * 1. Framing in place: the fields of the chunk's DataRows (and CopyData
 *    rows) are located by offset; nothing is copied or allocated per row.
 * 2. The engine's candidate scan runs once over all of them (markRanges)
 *    and marks the few values that may hold a hit.
 * 3. Marked values go through the exact path: inline on the event loop when
 *    there are at most `batchRows` of them and `batchBytes` of them (any
 *    64 KiB socket read of ordinary rows), else in the worker pool (a huge
 *    field; `push` then returns a promise, the relay pauses the upstream
 *    until the masked chunk has been emitted; one batch in flight per
 *    session, order kept).
 *
 * Only rows with a replacement are rewritten; every other byte goes out as
 * a view of the chunk (a chunk without a hit goes out as itself).
 */
import { ErrorCodes } from '../../src/errors.js';
import { ByteSink } from '../../masking/byte-sink.js';
import type { CompiledRule } from '../../masking/engine.js';
import { MaskingFailedError } from '../../masking/types.js';
import { ChunkSequencer, MaskCounts, type PolicyMasking } from '../../masking/session-masker.js';
import { Backend, Frontend, errorResponse, sqlstate } from './messages.js';
import { PgProtocolError } from './framer.js';
import { NAME_ONLY, type ColumnOrigins } from './column-origins.js';
import type { SqlDecoder } from './encoding.js';

export interface PgResultMaskerOptions {
  masking: PolicyMasking;
  /**
   * Reads a column name of a RowDescription: the server sends it in the
   * session's client_encoding (default: UTF-8). Read in another encoding, a
   * non-ASCII name would match no column rule.
   */
  decode?: SqlDecoder;
  /** Largest message assembled for masking (the target's max_message_size); a larger one is refused. */
  maxMessageBytes: number;
  /**
   * Ends the session with `error` (an ErrorResponse) when something cannot be
   * masked; session.ts passes the relay's shutdown. Without it the masker
   * throws and the relay ends the session with a generic error.
   */
  onRefuse?(reason: string, error: Buffer): void;
  /** Per-rule hit counts of each statement, at its CommandComplete (for the audit event). */
  onStatementCounts?(counts: Record<string, number>): void;
  /** Resolves RowDescription columns to their table columns for column rules; default: by name only, any table. */
  origins?: Pick<ColumnOrigins, 'ruleFor'>;
  /** A chunk with more values marked by the candidate scan than this goes to the pool. Default 4096. */
  batchRows?: number;
  /** ... or more bytes of them. Default 256 KiB. */
  batchBytes?: number;
}

/** Type OIDs whose binary send format is the text itself (jsonb: a version byte, then the text; bytea: the raw bytes). */
const TEXT = 25;
const VARCHAR = 1043;
const BPCHAR = 1042;
const NAME = 19;
const JSON_OID = 114;
const JSONB = 3802;
const XML = 142;
const BYTEA = 17;
const TEXT_LIKE_BINARY = new Set([TEXT, VARCHAR, BPCHAR, NAME, JSON_OID, JSONB, XML, BYTEA]);

/**
 * Built-in types whose binary form holds no text, by OID, with their size
 * where it is fixed: bool, "char", int2, int4, int8, oid, tid, xid, cid,
 * float4, float8, money, date, time, timetz, timestamp, timestamptz,
 * interval, uuid, macaddr, point. A binary field of one of these that is
 * not that size belongs to other rows than the RowDescription describes.
 */
const FIXED_BINARY_SIZE = new Map<number, number>([
  [16, 1], [18, 1], [21, 2], [23, 4], [20, 8], [26, 4], [27, 6], [28, 4], [29, 4],
  [700, 4], [701, 8], [790, 8], [1082, 4], [1083, 8], [1266, 12], [1114, 8], [1184, 8],
  [1186, 16], [2950, 16], [829, 6], [600, 16],
]);
/** ... and of variable size: numeric, inet, cidr, bit, varbit. */
const NO_TEXT_BINARY = new Set([1700, 869, 650, 1560, 1562]);

/** ErrorResponse / NoticeResponse fields that carry data: message, detail, hint, where, internal query. */
const MASKED_FIELDS = new Set(['M', 'D', 'H', 'W', 'q'].map((c) => c.charCodeAt(0)));

const INSPECT = new Uint8Array(256);
for (const t of [
  Backend.RowDescription,
  Backend.DataRow,
  Backend.CommandComplete,
  Backend.ReadyForQuery,
  Backend.EmptyQueryResponse,
  Backend.ErrorResponse,
  Backend.NoticeResponse,
  Backend.NotificationResponse,
  Backend.ParameterStatus,
  Backend.CopyOutResponse,
  Backend.CopyData,
  Backend.CopyDone,
  Backend.FunctionCallResponse,
  Backend.BindComplete,
  Backend.NoData,
  Backend.PortalSuspended,
  Backend.ParseComplete,
  Backend.CloseComplete,
  Backend.CopyInResponse,
]) INSPECT[t] = 1;

/**
 * A message sent upstream that the server answers, in order: a Query
 * (descriptions and rows inline), a Parse (ParseComplete), a Bind (a new
 * portal: BindComplete), a Describe (RowDescription or NoData; of a portal,
 * or of a statement when `portal` is undefined), an Execute (the portal's
 * rows), a Close (CloseComplete; of a portal, or of a statement), a Sync
 * (ReadyForQuery; after an error the server skips to it). Every message the
 * server can skip after an error is here, so an error always finds what it
 * skips at the head.
 */
interface Sent {
  k: number;
  portal?: string;
  /** A Bind that asked for a result column in binary: its result format codes (see #portalFormats). */
  formats?: readonly number[];
}
const SENT_QUERY: Sent = Object.freeze({ k: Frontend.Query });
const SENT_SYNC: Sent = Object.freeze({ k: Frontend.Sync });
const BIND_UNNAMED: Sent = Object.freeze({ k: Frontend.Bind, portal: '' });
const EXECUTE_UNNAMED: Sent = Object.freeze({ k: Frontend.Execute, portal: '' });
const DESCRIBE_UNNAMED: Sent = Object.freeze({ k: Frontend.Describe, portal: '' });
const DESCRIBE_STATEMENT: Sent = Object.freeze({ k: Frontend.Describe });
const SENT_PARSE: Sent = Object.freeze({ k: Frontend.Parse });
const CLOSE_STATEMENT: Sent = Object.freeze({ k: Frontend.Close });

interface Column {
  name: string;
  typeOid: number;
  format: number;
  rule: CompiledRule | undefined;
  /** Binary, of a type without text inside: its fixed size, 0 when variable; -1 when it may hold text (or is text, or not binary). */
  noTextSize: number;
}

/** Column.noTextSize of a column of this type and format. */
function noTextSize(typeOid: number, format: number): number {
  if (format === 0 || TEXT_LIKE_BINARY.has(typeOid)) return -1;
  return FIXED_BINARY_SIZE.get(typeOid) ?? (NO_TEXT_BINARY.has(typeOid) ? 0 : -1);
}

/** How a field's wire bytes map to the text the engine sees. */
const PLAIN = 0;
const JSONB_BINARY = 1; // 1-byte version prefix
const BYTEA_HEX = 2; // text format `\x` + hex digits
const JSON_VALUE = 4; // flag: a json/jsonb value (a whole-value replacement must stay JSON)
/**
 * Flag: the binary form of a type that may hold text inside its own framing
 * (an array, a record, an enum, an extension's type). Its raw bytes are
 * scanned; a hit cannot be rewritten without breaking that framing, so it
 * ends the session instead of passing.
 */
const OPAQUE_BINARY = 8;

/** What an output item of a chunk is. */
const PASS = 0; // bytes [start, end) of its buffer, sent as they are
const DATA_ROW = 1; // a DataRow at [start, end): fields may be replaced
const COPY_ROW = 2; // a CopyData row of COPY TO STDOUT at [start, end): its body may be replaced
const STATEMENT_END = 3; // a CommandComplete went by: the statement's counts are due

/** A replaced field's key: its item and its field index (a DataRow has at most 32767 fields). */
function fieldKey(item: number, field: number): number {
  return item * 65536 + field;
}

/** Above this, a chunk whose rows changed goes out as pieces (views, replacements) rather than copied into one buffer. */
const ONE_BUFFER_MAX = 1024 * 1024;
/**
 * Up to this many changed rows, a chunk goes out as views of itself around
 * the rewritten rows; above, copied whole into one buffer. Each emitted
 * piece costs a framer pass and a socket write in the relay, a copy costs a
 * fresh 64 KiB buffer: with 1% of rows hit (2-3 rows per chunk) the copy was
 * 20% of the masker's CPU.
 */
const FEW_CHANGED_ROWS = 8;

/**
 * One chunk's work, in arrays reused from chunk to chunk (the sequencer runs
 * one chunk at a time): the output items in order, the fields that content
 * rules must see (candidates), and what replaces fields. A row is never
 * copied or rebuilt unless one of its fields is replaced; rows without a hit
 * go out as the chunk's own bytes.
 */
class ChunkPlan {
  // Output items.
  items = 0;
  kind = new Uint8Array(256);
  start = new Int32Array(256);
  end = new Int32Array(256);
  /** Bytes an item grows (or shrinks) by once its replacements are in. */
  delta = new Int32Array(256);
  changed = new Uint8Array(256);
  bufs: Buffer[] = [];
  // Candidates: value bytes [cStart, cEnd) of cBuf, field cField of item cItem.
  candidates = 0;
  cItem = new Int32Array(256);
  cField = new Int32Array(256);
  cStart = new Int32Array(256);
  cEnd = new Int32Array(256);
  /** The field's length on the wire (differs from the value's for jsonb binary and hex bytea). */
  cWire = new Int32Array(256);
  cEncoding = new Uint8Array(256);
  /** Where the field's length word is in its item's buffer (a CopyData row: where its body starts). */
  cLenPos = new Int32Array(256);
  cBuf: Buffer[] = [];
  marks = new Uint8Array(256);
  /** The scan's hints per candidate: which detectors the exact path runs. */
  hints = new Int32Array(256);
  // Replacements, in the order made: field rField of item rItem becomes
  // rBuf (null: SQL NULL) or, when rBuf is SINK, the sink's bytes [rOff, rOff + rLen).
  repl = 0;
  rItem = new Int32Array(256);
  rField = new Int32Array(256);
  rOff = new Int32Array(256);
  rLen = new Int32Array(256);
  /** Where the replaced field's length word is in its item's buffer, and its length on the wire. */
  rPos = new Int32Array(256);
  rWire = new Int32Array(256);
  rBuf: Array<Buffer | null> = [];
  /** Made in (item, field) order (the usual case); else `order` lists them so, once the chunk is framed and masked. */
  sorted = true;
  lastKey = -1;
  order: number[] = [];
  /** The next replacement to write (rows are written in order). */
  cursor = 0;
  /** Masked values of the exact path, written in place (no Buffer per value). */
  readonly sink = new ByteSink();
  counts = new Map<string, number>();

  reset(): void {
    // Drop the last chunk's buffers so that they can be collected.
    this.bufs.fill(EMPTY, 0, this.items);
    this.cBuf.fill(EMPTY, 0, this.candidates);
    this.rBuf.fill(EMPTY, 0, this.repl);
    this.items = 0;
    this.candidates = 0;
    this.repl = 0;
    this.sorted = true;
    this.lastKey = -1;
    this.cursor = 0;
    this.sink.reset();
    this.counts.clear();
  }

  item(kind: number, buf: Buffer, start: number, end: number): number {
    const i = this.items;
    // Adjacent bytes of one buffer that go out as they are make one item.
    if (kind === PASS && i > 0 && this.kind[i - 1] === PASS && this.bufs[i - 1] === buf && this.end[i - 1] === start) {
      this.end[i - 1] = end;
      return i - 1;
    }
    if (i === this.kind.length) {
      const n = 2 * i;
      this.kind = grow(this.kind, n);
      this.start = grow(this.start, n);
      this.end = grow(this.end, n);
      this.delta = grow(this.delta, n);
      this.changed = grow(this.changed, n);
    }
    this.kind[i] = kind;
    this.start[i] = start;
    this.end[i] = end;
    this.delta[i] = 0;
    this.changed[i] = 0;
    this.bufs[i] = buf;
    this.items = i + 1;
    return i;
  }

  candidate(item: number, field: number, lenPos: number, buf: Buffer, start: number, end: number, wire: number, encoding: number): void {
    const k = this.candidates;
    if (k === this.cItem.length) {
      const n = 2 * k;
      this.cItem = grow(this.cItem, n);
      this.cField = grow(this.cField, n);
      this.cStart = grow(this.cStart, n);
      this.cEnd = grow(this.cEnd, n);
      this.cWire = grow(this.cWire, n);
      this.cEncoding = grow(this.cEncoding, n);
      this.cLenPos = grow(this.cLenPos, n);
      this.marks = grow(this.marks, n);
      this.hints = grow(this.hints, n);
    }
    this.cItem[k] = item;
    this.cField[k] = field;
    this.cStart[k] = start;
    this.cEnd[k] = end;
    this.cWire[k] = wire;
    this.cEncoding[k] = encoding;
    this.cLenPos[k] = lenPos;
    this.cBuf[k] = buf;
    this.candidates = k + 1;
  }

  /** Field `field` of `item`, `wire` bytes long on the wire, becomes `bytes` (null: SQL NULL). */
  replace(item: number, field: number, lenPos: number, wire: number, bytes: Buffer | null): void {
    this.#add(item, field, lenPos, wire, bytes, 0, bytes ? bytes.length : 0);
  }

  /** ... becomes the sink's bytes [off, off + len). */
  replaceFromSink(item: number, field: number, lenPos: number, wire: number, off: number, len: number): void {
    this.#add(item, field, lenPos, wire, SINK, off, len);
  }

  #add(item: number, field: number, lenPos: number, wire: number, buf: Buffer | null, off: number, len: number): void {
    const r = this.repl;
    if (r === this.rItem.length) {
      const n = 2 * r;
      this.rItem = grow(this.rItem, n);
      this.rField = grow(this.rField, n);
      this.rOff = grow(this.rOff, n);
      this.rLen = grow(this.rLen, n);
      this.rPos = grow(this.rPos, n);
      this.rWire = grow(this.rWire, n);
    }
    this.rItem[r] = item;
    this.rField[r] = field;
    this.rBuf[r] = buf;
    this.rOff[r] = off;
    this.rLen[r] = len;
    this.rPos[r] = lenPos;
    this.rWire[r] = wire;
    this.repl = r + 1;
    const key = fieldKey(item, field);
    if (key < this.lastKey) this.sorted = false;
    this.lastKey = key;
    this.delta[item] += len - wire;
    this.changed[item] = 1;
  }

  /** Before writing rows: replacements in (item, field) order, from the first. */
  rewind(): void {
    this.cursor = 0;
    if (this.sorted) return;
    this.order = Array.from({ length: this.repl }, (_, r) => r).sort(
      (a, b) => fieldKey(this.rItem[a]!, this.rField[a]!) - fieldKey(this.rItem[b]!, this.rField[b]!),
    );
  }

  /** writeChunk's length words to patch: where in the output, and the value. */
  patchAt = new Int32Array(256);
  patchLen = new Int32Array(256);

  /** The replacement at the cursor (in (item, field) order), or -1 when none is left. */
  peek(): number {
    if (this.cursor >= this.repl) return -1;
    return this.sorted ? this.cursor : this.order[this.cursor]!;
  }

  /** The replacement at the cursor when it is field `field` of item `item`, else -1. */
  at(item: number, field: number): number {
    if (this.cursor >= this.repl) return -1;
    const r = this.sorted ? this.cursor : this.order[this.cursor]!;
    return this.rItem[r] === item && this.rField[r] === field ? r : -1;
  }

  /** Writes replacement r's bytes into out at w; returns the new w. */
  writeReplacement(r: number, out: Buffer, w: number): number {
    const b = this.rBuf[r]!;
    const off = this.rOff[r]!;
    return copyBytes(b === SINK ? this.sink.buf : b, off, off + this.rLen[r]!, out, w);
  }

  /** Replacement r's bytes as a Buffer that may be handed on (null: SQL NULL). */
  replacementBytes(r: number): Buffer | null {
    const b = this.rBuf[r]!;
    return b === SINK ? this.sink.take(this.rOff[r]!, this.rLen[r]!) : b;
  }

  value(k: number): Buffer {
    return this.cBuf[k]!.subarray(this.cStart[k], this.cEnd[k]);
  }
}

const EMPTY = Buffer.alloc(0);
/** Marks a replacement held in the plan's sink. */
const SINK = Buffer.alloc(0);

function grow<T extends Uint8Array | Int32Array>(a: T, n: number): T {
  const b = new (a.constructor as { new (n: number): T })(n);
  b.set(a);
  return b;
}

class Refusal extends Error {}

export class PgResultMasker {
  readonly #masking: PolicyMasking;
  readonly #origins: Pick<ColumnOrigins, 'ruleFor'>;
  readonly #opts: PgResultMaskerOptions;
  readonly #batchRows: number;
  readonly #batchBytes: number;
  readonly #counts = new MaskCounts();
  /** Counts of the current statement not yet handed to onStatementCounts. */
  readonly #statement = new MaskCounts();
  readonly #plan = new ChunkPlan();

  // --- framing ---
  readonly #hdr = Buffer.alloc(5);
  #hdrLen = 0;
  /** Pass-through body bytes still to forward. */
  #passRemaining = 0;
  /** An inspected message being assembled. */
  #acc: Buffer | undefined;
  #accLen = 0;

  // --- protocol state ---
  /** The description of the rows now arriving (see `forwarded`). */
  #columns: Column[] | undefined;
  /** What the server owes, in order, from #sentHead on. */
  #sent: Sent[] = [];
  #sentHead = 0;
  /** Each portal's description, from its Describe (null: NoData). */
  readonly #portals = new Map<string, Column[] | null>();
  /**
   * The result format codes of portals whose Bind asked for binary results,
   * from the Bind (kept once the server's BindComplete answers it). Rows of
   * a portal never described are read by these alone: a binary field may be
   * an array or a record, whose inner lengths a replacement would break.
   */
  readonly #portalFormats = new Map<string, readonly number[]>();
  /** The formats of the portal whose rows arrive now, when it has no description (see #atHead). */
  #rowFormats: readonly number[] | undefined;
  /** A reply did not fit what was sent; no description is trusted from then on. */
  #lost = false;
  /**
   * The server failed an extended batch whose Sync has not gone upstream
   * yet (it sends an error as it happens, and a pipelining client may read
   * it before it sends the rest): it skips what comes before that Sync, so
   * nothing of it is owed (see forwarded).
   */
  #skippingToSync = false;
  #copyOut = false;
  #dead = false;
  readonly #sequence = new ChunkSequencer();

  constructor(opts: PgResultMaskerOptions) {
    this.#masking = opts.masking;
    this.#origins = opts.origins ?? NAME_ONLY;
    this.#opts = opts;
    this.#batchRows = opts.batchRows ?? DEFAULT_BATCH_ROWS;
    this.#batchBytes = opts.batchBytes ?? DEFAULT_BATCH_BYTES;
  }

  /**
   * A message as it goes upstream (type -1: pass-through bytes), told by the
   * statement gate or, without one, the relay. Rows are read by the
   * description of the portal their Execute names, paired in order with the
   * server's replies; a masker told nothing trusts no description. Only what
   * the server answers is kept (see Sent).
   */
  forwarded(type: number, bytes: Buffer): void {
    if (this.#skippingToSync) {
      if (type !== Frontend.Sync) return;
      this.#skippingToSync = false;
    }
    let sent: Sent;
    switch (type) {
      case Frontend.Query:
      case Frontend.FunctionCall: // answered like a Query: its result, then ReadyForQuery (no gate refused it)
        sent = SENT_QUERY;
        break;
      case Frontend.Sync:
        sent = SENT_SYNC;
        break;
      case Frontend.Bind: {
        const formats = binaryResultFormats(bytes);
        if (formats !== undefined) sent = { k: type, portal: bytes[5] === 0 ? '' : cstringAt(bytes, 5), formats };
        else sent = bytes[5] === 0 ? BIND_UNNAMED : { k: type, portal: cstringAt(bytes, 5) };
        break;
      }
      case Frontend.Execute:
        sent = bytes[5] === 0 ? EXECUTE_UNNAMED : { k: type, portal: cstringAt(bytes, 5) };
        break;
      case Frontend.Describe:
        if (bytes[5] !== 0x50 /* 'P' */) sent = DESCRIBE_STATEMENT;
        else sent = bytes[6] === 0 ? DESCRIBE_UNNAMED : { k: type, portal: cstringAt(bytes, 6) };
        break;
      case Frontend.Parse:
        sent = SENT_PARSE;
        break;
      case Frontend.Close:
        sent = bytes[5] !== 0x50 /* 'P' */ ? CLOSE_STATEMENT : { k: type, portal: cstringAt(bytes, 6) };
        break;
      default:
        return;
    }
    this.#sent.push(sent);
    // Nothing else owed: this Execute's rows come next (a portal described in an earlier batch).
    if (this.#sent.length - this.#sentHead === 1) this.#atHead();
  }

  /** Hits per rule since the session started. */
  counts(): Record<string, number> {
    return this.#counts.snapshot();
  }

  push(chunk: Buffer, emit: (bytes: Buffer) => void): void | Promise<void> {
    return this.#sequence.run(() => this.#process(chunk, emit));
  }

  /** Masks bytes that must go out synchronously (the startup reply): only ParameterStatus/Notice-like messages. */
  maskSync(bytes: Buffer): Buffer {
    const out: Buffer[] = [];
    const pending = this.#process(bytes, (b) => out.push(b));
    if (pending) throw new MaskingFailedError('the startup reply unexpectedly needed the worker pool');
    return Buffer.concat(out);
  }

  close(): void {
    this.#dead = true;
    this.#acc = undefined;
  }

  #process(chunk: Buffer, emit: (bytes: Buffer) => void): void | Promise<void> {
    if (this.#dead) return;
    const plan = this.#plan;
    plan.reset();
    try {
      this.#frame(chunk);
    } catch (err) {
      if (err instanceof Refusal) return;
      throw err;
    }
    const n = plan.candidates;
    if (n === 0) {
      this.#count(plan.counts); // column rules
      return this.#emit(emit);
    }
    this.#scan();
    // What the scan marked goes through the exact path: inline when small, else in the pool.
    let marked = 0;
    let bytes = 0;
    for (let k = 0; k < n; k++) {
      if (plan.marks[k] === 0) continue;
      marked++;
      bytes += plan.cEnd[k]! - plan.cStart[k]!;
    }
    if (marked <= this.#batchRows && bytes <= this.#batchBytes) {
      const engine = this.#masking.engine;
      const sink = plan.sink;
      for (let k = 0; k < n; k++) {
        if (plan.marks[k] === 0) continue;
        if ((plan.cEncoding[k]! & 3) === PLAIN && !(plan.cEncoding[k]! & OPAQUE_BINARY)) {
          // Masked straight into the sink: no Buffer per value.
          const off = sink.len;
          if (engine.maskCandidateInto(plan.cBuf[k]!, plan.cStart[k]!, plan.cEnd[k]!, plan.hints[k]!, sink, plan.counts))
            plan.replaceFromSink(plan.cItem[k]!, plan.cField[k]!, plan.cLenPos[k]!, plan.cWire[k]!, off, sink.len - off);
          continue;
        }
        const out = engine.maskCandidate(plan.value(k), plan.counts, plan.hints[k]);
        if (out && !this.#replaced(k, out)) return;
      }
      this.#count(plan.counts);
      return this.#emit(emit);
    }
    const ks: number[] = [];
    const values: Buffer[] = [];
    for (let k = 0; k < n; k++) {
      if (plan.marks[k] === 0) continue;
      ks.push(k);
      values.push(plan.value(k));
    }
    return this.#masking
      .pool()
      .maskBatch(values)
      .then((result) => {
        if (this.#dead) return;
        for (let j = 0; j < ks.length; j++) {
          const out = result.values[j];
          if (out && !this.#replaced(ks[j]!, out)) return;
        }
        this.#count(plan.counts);
        this.#count(result.counts);
        this.#emit(emit);
      });
  }

  /** The candidate scan over every candidate of the chunk: one call per run of candidates in one buffer. */
  #scan(): void {
    const plan = this.#plan;
    const engine = this.#masking.engine;
    const n = plan.candidates;
    let from = 0;
    while (from < n) {
      const buf = plan.cBuf[from]!;
      let to = from + 1;
      while (to < n && plan.cBuf[to] === buf) to++;
      if (from === 0) engine.markRanges(buf, plan.cStart, plan.cEnd, to, plan.marks, plan.hints);
      else
        engine.markRanges(
          buf,
          plan.cStart.subarray(from, to),
          plan.cEnd.subarray(from, to),
          to - from,
          plan.marks.subarray(from, to),
          plan.hints.subarray(from, to),
        );
      from = to;
    }
  }

  /** #replaceCandidate, false when it refused the session instead (nothing of the chunk goes out). */
  #replaced(k: number, masked: Buffer): boolean {
    try {
      this.#replaceCandidate(k, masked);
      return true;
    } catch (err) {
      if (err instanceof Refusal) return false;
      throw err;
    }
  }

  #replaceCandidate(k: number, masked: Buffer): void {
    const plan = this.#plan;
    if (plan.cEncoding[k]! & OPAQUE_BINARY) {
      this.#refuse(
        'a masked value in an opaque binary field',
        `sluice: a value to mask was found in a binary field (column ${plan.cField[k]! + 1}) of a type whose binary form sluice cannot rewrite; request text format`,
        sqlstate.FEATURE_NOT_SUPPORTED,
      );
    }
    plan.replace(plan.cItem[k]!, plan.cField[k]!, plan.cLenPos[k]!, plan.cWire[k]!, encodeBack(plan.cEncoding[k]!, masked, false));
  }

  #count(counts: Map<string, number> | Record<string, number>): void {
    this.#counts.add(counts);
    this.#statement.add(counts);
  }

  // --- framing ----------------------------------------------------------------

  #frame(chunk: Buffer): void {
    const plan = this.#plan;
    let pos = 0;
    const n = chunk.length;
    while (pos < n) {
      if (this.#acc) {
        const take = Math.min(n - pos, this.#acc.length - this.#accLen);
        chunk.copy(this.#acc, this.#accLen, pos, pos + take);
        this.#accLen += take;
        pos += take;
        if (this.#accLen === this.#acc.length) {
          const msg = this.#acc;
          this.#acc = undefined;
          if (msg[0] === Backend.DataRow) this.#dataRow(msg, 0, msg.length);
          else this.#message(msg, 0, msg.length);
        }
        continue;
      }
      if (this.#passRemaining > 0) {
        const take = Math.min(n - pos, this.#passRemaining);
        plan.item(PASS, chunk, pos, pos + take);
        this.#passRemaining -= take;
        pos += take;
        continue;
      }
      // HEADER: type byte + Int32 length (counts itself, not the type).
      let header: Buffer;
      let headerFromChunk = false;
      let type: number;
      let length: number;
      if (this.#hdrLen === 0 && n - pos >= 5) {
        header = chunk;
        headerFromChunk = true;
        type = chunk[pos]!;
        length = chunk.readInt32BE(pos + 1);
        pos += 5;
      } else {
        const take = Math.min(n - pos, 5 - this.#hdrLen);
        chunk.copy(this.#hdr, this.#hdrLen, pos, pos + take);
        this.#hdrLen += take;
        pos += take;
        if (this.#hdrLen < 5) continue;
        header = this.#hdr;
        type = header[0]!;
        length = header.readInt32BE(1);
        this.#hdrLen = 0;
      }
      if (length < 4) throw new PgProtocolError(ErrorCodes.PROTOCOL_VIOLATION, `server message length ${length} is below 4`);
      const total = length + 1;
      const body = total - 5;
      if (!INSPECT[type]) {
        if (headerFromChunk) plan.item(PASS, chunk, pos - 5, pos);
        else plan.item(PASS, Buffer.from(header), 0, 5);
        this.#passRemaining = body;
        continue;
      }
      if (total > this.#opts.maxMessageBytes) {
        this.#refuse(
          `a ${total}-byte server message exceeds max_message_size`,
          `sluice: a result message of ${total} bytes is larger than this target's max_message_size (${this.#opts.maxMessageBytes}) and cannot be masked; the session is closed`,
          sqlstate.PROGRAM_LIMIT_EXCEEDED,
        );
      }
      if (headerFromChunk && n - pos >= body) {
        // Whole in this chunk: framed in place, no copy.
        if (type === Backend.DataRow) this.#dataRow(chunk, pos - 5, pos + body);
        else this.#message(chunk, pos - 5, pos + body);
        pos += body;
        continue;
      }
      const acc = Buffer.allocUnsafe(total);
      if (headerFromChunk) chunk.copy(acc, 0, pos - 5, pos);
      else header.copy(acc, 0);
      this.#acc = acc;
      this.#accLen = 5;
      if (body === 0) {
        this.#acc = undefined;
        if (type === Backend.DataRow) this.#dataRow(acc, 0, total);
        else this.#message(acc, 0, total);
      }
    }
  }

  /** The message at buf[start, end). It has not been refused by the end of this call; or it throws Refusal. */
  #message(buf: Buffer, start: number, end: number): void {
    const engine = this.#masking.engine;
    const plan = this.#plan;
    /** A message that was decoded goes out as it came unless something in it was masked. */
    const pass = (out: Buffer, msg: Buffer): void => {
      if (out === msg) plan.item(PASS, buf, start, end);
      else plan.item(PASS, out, 0, out.length);
    };
    switch (buf[start]) {
      case Backend.BindComplete: {
        // A new portal: a description it had belongs to the one bound before.
        const head = this.#expect(Frontend.Bind);
        if (head !== undefined) {
          this.#portals.delete(head.portal!);
          if (head.formats !== undefined) this.#portalFormats.set(head.portal!, head.formats);
          else if (this.#portalFormats.size > 0) this.#portalFormats.delete(head.portal!);
        }
        this.#shift();
        plan.item(PASS, buf, start, end);
        return;
      }
      case Backend.ParseComplete:
        this.#expect(Frontend.Parse);
        this.#shift();
        plan.item(PASS, buf, start, end);
        return;
      case Backend.CloseComplete: {
        const head = this.#expect(Frontend.Close);
        if (head?.portal !== undefined) {
          this.#portals.delete(head.portal);
          this.#portalFormats.delete(head.portal);
        }
        this.#shift();
        plan.item(PASS, buf, start, end);
        return;
      }
      case Backend.CopyInResponse:
        // COPY FROM STDIN through Execute: the server ignores the Syncs the client sends until
        // CopyDone (libpq sends one right after the Execute), so which ReadyForQuery answers
        // which Sync is no longer known. Rare (drivers send COPY as a simple Query): fail closed.
        if (this.#head()?.k !== Frontend.Query) this.#desynced();
        plan.item(PASS, buf, start, end);
        return;
      case Backend.NoData: {
        const head = this.#expect(Frontend.Describe);
        if (head?.portal !== undefined) this.#portals.set(head.portal, null);
        this.#shift();
        plan.item(PASS, buf, start, end);
        return;
      }
      case Backend.RowDescription: {
        const msg = buf.subarray(start, end);
        const columns = (): Column[] =>
          parseRowDescription(msg, this.#opts.decode).map((c) => ({
            name: c.name,
            typeOid: c.typeOid,
            format: c.format,
            rule: engine.hasColumnRules ? this.#origins.ruleFor(engine, c.name, c.tableOid, c.attnum) : undefined,
            noTextSize: noTextSize(c.typeOid, c.format),
          }));
        const head = this.#head();
        if (head?.k === Frontend.Query) {
          if (!this.#lost) this.#columns = columns();
        } else {
          // A Describe's answer: kept for the portal (a statement's is not used for rows: its formats are not known yet).
          if (this.#expect(Frontend.Describe)?.portal !== undefined) this.#portals.set(head!.portal!, columns());
          this.#shift();
        }
        plan.item(PASS, buf, start, end);
        return;
      }
      case Backend.CommandComplete:
      case Backend.EmptyQueryResponse:
      case Backend.PortalSuspended:
      case Backend.ReadyForQuery:
        {
          const head = this.#head();
          if (buf[start] === Backend.ReadyForQuery) {
            // Answers a Sync or a Query (the startup reply's is made by the session, not relayed).
            if (head === undefined || (head.k !== Frontend.Sync && head.k !== Frontend.Query)) this.#desynced();
            // SQL run by a Query can close and open portals (CLOSE, DECLARE); the end of a
            // transaction drops them all. Either way no named portal's description still holds.
            if (head?.k === Frontend.Query || (end - start === 6 && buf[start + 5] === 0x49 /* 'I' */)) this.#forgetNamedPortals();
            if (head !== undefined) this.#shift();
            this.#columns = undefined;
            this.#rowFormats = undefined;
          } else if (head?.k === Frontend.Query) {
            // One statement of a simple Query ended; the next brings its own RowDescription.
            this.#columns = undefined;
            this.#rowFormats = undefined;
          } else {
            // What the portal ran may have closed or opened other portals (CLOSE, DECLARE, a function's OPEN).
            const ran = this.#expect(Frontend.Execute)?.portal;
            this.#forgetNamedPortals(ran);
            this.#shift();
          }
        }
        if (buf[start] !== Backend.PortalSuspended) this.#copyOut = false;
        plan.item(PASS, buf, start, end);
        if (buf[start] === Backend.CommandComplete) plan.item(STATEMENT_END, EMPTY, 0, 0);
        return;
      case Backend.ErrorResponse:
      case Backend.NoticeResponse: {
        if (buf[start] === Backend.ErrorResponse) this.#failed();
        const msg = buf.subarray(start, end);
        pass(this.#fields(msg), msg);
        return;
      }
      case Backend.NotificationResponse: {
        const msg = buf.subarray(start, end);
        pass(this.#strings(msg, 9, [false, true]), msg);
        return;
      }
      case Backend.ParameterStatus: {
        const msg = buf.subarray(start, end);
        pass(this.#strings(msg, 5, [false, true]), msg);
        return;
      }
      case Backend.CopyOutResponse: {
        const format = end - start > 5 ? buf[start + 5] : undefined;
        if (format !== 0) {
          this.#refuse('binary COPY refused', 'sluice: binary COPY TO STDOUT cannot be masked; use text or CSV format', sqlstate.FEATURE_NOT_SUPPORTED);
        }
        if (engine.hasColumnRules) {
          this.#refuse(
            'COPY refused under column rules',
            'sluice: COPY TO STDOUT is refused: this policy masks columns by name and COPY data carries no column names; use SELECT',
            sqlstate.FEATURE_NOT_SUPPORTED,
          );
        }
        this.#copyOut = true;
        plan.item(PASS, buf, start, end);
        return;
      }
      case Backend.CopyData: {
        // CopyBoth (replication) is not masked: see docs/masking.md
        if (!this.#copyOut || !engine.hasContentRules || end - start === 5) {
          plan.item(PASS, buf, start, end);
          return;
        }
        // A row of COPY TO STDOUT: content rules over its whole body, batched with the chunk's other values.
        const item = plan.item(COPY_ROW, buf, start, end);
        plan.candidate(item, 0, start + 5, buf, start + 5, end, end - start - 5, PLAIN);
        return;
      }
      case Backend.CopyDone:
        this.#copyOut = false;
        plan.item(PASS, buf, start, end);
        return;
      case Backend.FunctionCallResponse: {
        const msg = buf.subarray(start, end);
        const len = msg.readInt32BE(5);
        pass(len < 0 ? msg : this.#wholeBody(msg, 9), msg);
        return;
      }
      default:
        plan.item(PASS, buf, start, end);
    }
  }

  // --- pairing replies with what was sent (forwarded) ---------------------------

  #head(): Sent | undefined {
    return this.#sent[this.#sentHead];
  }

  /** The head, when it is of kind `k`; else the pairing is lost (and undefined). */
  #expect(k: number): Sent | undefined {
    const head = this.#head();
    if (head?.k === k) return head;
    this.#desynced();
    return undefined;
  }

  /** Drops the head; the rows that follow are the next Execute's, described as its portal was. */
  #shift(): void {
    if (this.#sentHead < this.#sent.length) this.#sentHead++;
    if (this.#sentHead === this.#sent.length) {
      this.#sent.length = 0;
      this.#sentHead = 0;
    } else if (this.#sentHead > 1024 && this.#sentHead * 2 > this.#sent.length) {
      this.#sent.splice(0, this.#sentHead);
      this.#sentHead = 0;
    }
    this.#atHead();
  }

  /** The rows that follow now are the head Execute's, described as its portal was; no others are. */
  #atHead(): void {
    const head = this.#head();
    const execute = head?.k === Frontend.Execute && !this.#lost;
    this.#columns = execute ? (this.#portals.get(head.portal!) ?? undefined) : undefined;
    this.#rowFormats = execute && this.#portalFormats.size > 0 ? this.#portalFormats.get(head.portal!) : undefined;
  }

  /** An ErrorResponse: in a simple Query, the statement ended; else the server skips to the next Sync. */
  #failed(): void {
    this.#columns = undefined;
    this.#rowFormats = undefined;
    const head = this.#head();
    if (head === undefined || head.k === Frontend.Query || head.k === Frontend.Sync) return;
    while (this.#sentHead < this.#sent.length && this.#sent[this.#sentHead]!.k !== Frontend.Sync) this.#sentHead++;
    if (this.#sentHead === this.#sent.length) this.#skippingToSync = true;
  }

  /** Forgets every named portal's description but `keep`'s (the unnamed portal cannot be made by SQL). */
  #forgetNamedPortals(keep?: string): void {
    if (this.#portalFormats.size === 0 && (this.#portals.size === 0 || (this.#portals.size === 1 && this.#portals.has(keep ?? '')))) return;
    for (const name of this.#portals.keys()) if (name !== '' && name !== keep) this.#portals.delete(name);
    for (const name of this.#portalFormats.keys()) if (name !== '' && name !== keep) this.#portalFormats.delete(name);
  }

  #desynced(): void {
    this.#lost = true;
    this.#columns = undefined;
    this.#rowFormats = undefined;
  }

  /**
   * DataRow: Int16 field count; per field an Int32 length (-1 = NULL) and the
   * bytes. Column rules are applied here; fields for content rules become
   * candidates of the chunk, located by offset (no view, no copy).
   */
  #dataRow(buf: Buffer, start: number, end: number): void {
    const engine = this.#masking.engine;
    const plan = this.#plan;
    if (end - start < 7) throw new PgProtocolError(ErrorCodes.PROTOCOL_VIOLATION, 'DataRow too short for its field count');
    const n = buf.readInt16BE(start + 5);
    const columns = this.#columns && this.#columns.length === n ? this.#columns : undefined;
    if (!columns && engine.hasColumnRules) {
      this.#refuse(
        'rows without a RowDescription under column rules',
        'sluice: result rows arrived without a matching RowDescription, so masked columns cannot be found; Describe the portal before Execute',
        sqlstate.FEATURE_NOT_SUPPORTED,
      );
    }
    const item = plan.item(DATA_ROW, buf, start, end);
    const content = engine.hasContentRules;
    let pos = start + 7;
    for (let i = 0; i < n; i++) {
      if (pos + 4 > end) {
        pos = -1; // fewer fields than the count says: reported below
        break;
      }
      const len = buf.readInt32BE(pos);
      pos += 4;
      if (len < 0) continue; // NULL
      const at = pos;
      pos += len;
      if (pos > end) break;
      const col = columns?.[i];
      if (col === undefined) {
        // No RowDescription (content rules only): text format, unless the Bind asked for this
        // column in binary, which may be an array or a record: scanned raw, and a hit ends the
        // session rather than break the value's inner lengths (as a described one does).
        if (content && len > 0) {
          if (binaryField(this.#rowFormats, i)) opaqueCandidate(plan, item, i, buf, at, pos);
          else plan.candidate(item, i, at - 4, buf, at, pos, len, PLAIN);
        }
        continue;
      }
      const { format, typeOid } = col;
      if (format !== 0 && !TEXT_LIKE_BINARY.has(typeOid)) {
        if (col.rule) {
          this.#refuse(
            `binary column ${col.name} refused`,
            `sluice: column "${col.name}" is masked but was requested in binary format for a type sluice cannot mask (type OID ${typeOid}); request text format`,
            sqlstate.FEATURE_NOT_SUPPORTED,
          );
        }
        const size = col.noTextSize;
        if (size > 0 && len !== size) {
          this.#refuse(
            'rows do not match their RowDescription',
            `sluice: a ${len}-byte value arrived in binary column "${col.name}", whose type (OID ${typeOid}) is ${size} bytes: these rows are not the ones described`,
            sqlstate.FEATURE_NOT_SUPPORTED,
          );
        }
        // Numbers, timestamps, uuids...: no text inside to find. Anything else is scanned raw.
        if (size < 0 && content && len > 0) opaqueCandidate(plan, item, i, buf, at, pos);
        continue;
      }
      const encoding =
        (format !== 0 && typeOid === JSONB ? JSONB_BINARY : format === 0 && typeOid === BYTEA && buf[at] === 0x5c && buf[at + 1] === 0x78 ? BYTEA_HEX : PLAIN) |
        (typeOid === JSON_OID || typeOid === JSONB ? JSON_VALUE : 0);
      if (col.rule) {
        const value = fieldText(buf, at, pos, encoding);
        const out = engine.maskWhole(col.rule, value, plan.counts);
        if (out === null || out !== value) {
          plan.replace(item, i, at - 4, len, out === null ? null : encodeBack(encoding, out, true));
          continue;
        }
      }
      if (!content) continue;
      const base = encoding & 3;
      if (base === PLAIN) {
        if (len > 0) plan.candidate(item, i, at - 4, buf, at, pos, len, encoding);
      } else if (base === JSONB_BINARY) {
        if (len > 1) plan.candidate(item, i, at - 4, buf, at + 1, pos, len, encoding);
      } else {
        const decoded = fieldText(buf, at, pos, encoding);
        if (decoded.length > 0) plan.candidate(item, i, at - 4, decoded, 0, decoded.length, len, encoding);
      }
    }
    if (pos !== end) throw new PgProtocolError(ErrorCodes.PROTOCOL_VIOLATION, 'DataRow field lengths do not add up to the message length');
  }

  /** ErrorResponse / NoticeResponse: Byte1 code + C string, repeated, then a zero byte. */
  #fields(msg: Buffer): Buffer {
    const engine = this.#masking.engine;
    if (!engine.hasContentRules) return msg;
    const parts: Buffer[] = [];
    let changed = false;
    let pos = 5;
    const counts = new Map<string, number>();
    while (pos < msg.length && msg[pos] !== 0) {
      const code = msg[pos]!;
      const end = msg.indexOf(0, pos + 1);
      if (end < 0) throw new PgProtocolError(ErrorCodes.PROTOCOL_VIOLATION, 'unterminated field in an ErrorResponse/NoticeResponse');
      const value = msg.subarray(pos + 1, end);
      const masked = MASKED_FIELDS.has(code) ? engine.maskBytes(value, counts) : undefined;
      if (masked) changed = true;
      parts.push(msg.subarray(pos, pos + 1), masked ? stripNul(masked) : value, ZERO);
      pos = end + 1;
    }
    this.#count(counts);
    if (!changed) return msg;
    return withLength(msg[0]!, [...parts, ZERO]);
  }

  /** A run of C strings from `offset` (after fixed fields, copied as is); `mask[i]` says which get content rules. */
  #strings(msg: Buffer, offset: number, mask: boolean[]): Buffer {
    const engine = this.#masking.engine;
    if (!engine.hasContentRules) return msg;
    const parts: Buffer[] = [msg.subarray(5, offset)];
    let changed = false;
    let pos = offset;
    const counts = new Map<string, number>();
    for (const m of mask) {
      const end = msg.indexOf(0, pos);
      if (end < 0) throw new PgProtocolError(ErrorCodes.PROTOCOL_VIOLATION, 'unterminated string in a server message');
      const value = msg.subarray(pos, end);
      const masked = m ? engine.maskBytes(value, counts) : undefined;
      if (masked) changed = true;
      parts.push(masked ? stripNul(masked) : value, ZERO);
      pos = end + 1;
    }
    this.#count(counts);
    if (!changed) return msg;
    parts.push(msg.subarray(pos));
    return withLength(msg[0]!, parts);
  }

  /** Content rules over everything after the result value's length word (FunctionCallResponse). */
  #wholeBody(msg: Buffer, offset: number): Buffer {
    const counts = new Map<string, number>();
    const masked = this.#masking.engine.maskBytes(msg.subarray(offset), counts);
    this.#count(counts);
    if (!masked) return msg;
    const len = Buffer.allocUnsafe(4);
    len.writeInt32BE(masked.length);
    return withLength(msg[0]!, [msg.subarray(5, offset - 4), len, masked]);
  }

  #refuse(reason: string, message: string, code: string): never {
    this.#dead = true;
    this.#acc = undefined;
    const error = errorResponse({ severity: 'FATAL', code, message });
    if (!this.#opts.onRefuse) throw new MaskingFailedError(reason);
    this.#opts.onRefuse(reason, error);
    throw new Refusal(reason);
  }

  /**
   * Sends the chunk's items in order. Unchanged items that are adjacent in
   * one buffer go out as one view (a chunk without a hit goes out as
   * itself) and a changed row on its own; when many rows changed, the whole
   * chunk is written into one new buffer instead (one emit, one write).
   */
  #emit(emit: (bytes: Buffer) => void): void {
    const plan = this.#plan;
    const items = plan.items;
    let size = 0;
    let changed = 0;
    plan.rewind();
    for (let i = 0; i < items; i++) {
      if (plan.kind[i] === STATEMENT_END) {
        const counts = this.#statement.take();
        if (this.#opts.onStatementCounts && Object.keys(counts).length > 0) this.#opts.onStatementCounts(counts);
        continue;
      }
      size += plan.end[i]! - plan.start[i]! + plan.delta[i]!;
      changed += plan.changed[i]!;
    }
    if (changed > FEW_CHANGED_ROWS && size <= ONE_BUFFER_MAX) {
      const out = Buffer.allocUnsafe(size);
      if (writeChunk(plan, out) !== size) throw new Error('masked chunk size mismatch');
      emit(out);
      return;
    }
    // Runs of unchanged bytes as views; changed rows on their own (small ones
    // written whole, a huge one as pieces that do not copy its untouched fields).
    let runBuf: Buffer | undefined;
    let runStart = 0;
    let runEnd = 0;
    const flush = (): void => {
      if (runBuf && runEnd > runStart) emit(runBuf.subarray(runStart, runEnd));
      runBuf = undefined;
    };
    for (let i = 0; i < items; i++) {
      const kind = plan.kind[i]!;
      if (kind === STATEMENT_END) continue;
      if (plan.changed[i]) {
        flush();
        const rowSize = plan.end[i]! - plan.start[i]! + plan.delta[i]!;
        if (rowSize <= ONE_BUFFER_MAX) {
          const row = Buffer.allocUnsafe(rowSize);
          writeRow(plan, i, row, 0);
          emit(row);
        } else for (const piece of rowPieces(plan, i)) emit(piece);
        continue;
      }
      const buf = plan.bufs[i]!;
      if (runBuf === buf && runEnd === plan.start[i]) {
        runEnd = plan.end[i]!;
        continue;
      }
      flush();
      runBuf = buf;
      runStart = plan.start[i]!;
      runEnd = plan.end[i]!;
    }
    flush();
  }
}

/**
 * Inline up to this many values marked by the scan in one chunk, and this
 * many bytes of them; more goes to the pool. A socket read is at most
 * 64 KiB, so ordinary rows are always masked inline (measured: the pool
 * costs 2-3x the CPU and 3-6x the time with one batch in flight); the pool
 * takes what would hold the event loop for long: a field of megabytes.
 */
const DEFAULT_BATCH_ROWS = 4096;
const DEFAULT_BATCH_BYTES = 256 * 1024;

const ZERO = Buffer.from([0]);

/** A C string cannot hold NUL: a replacement never has one, but a hit's copied bytes could not either. */
function stripNul(b: Buffer): Buffer {
  return b.includes(0) ? Buffer.from(b.filter((x) => x !== 0)) : b;
}

function withLength(type: number, parts: Buffer[]): Buffer {
  let body = 0;
  for (const p of parts) body += p.length;
  const head = Buffer.allocUnsafe(5);
  head[0] = type;
  head.writeInt32BE(4 + body, 1);
  return Buffer.concat([head, ...parts], 5 + body);
}

/**
 * A binary field of a type whose layout sluice does not rewrite (an array,
 * a record) as a candidate for content rules: a hit in it is refused, never
 * rewritten (OPAQUE_BINARY). An element's 4-byte length sits right before
 * its text, and its last byte may be a letter or digit (97 is `a`): joined
 * to the text, it hid a hit from every detector that wants a word start
 * (`apassword=x`), or lengthened a card's digits past its check. Where one
 * does (needsSeparation), the field is scanned as a copy with every byte
 * that is not element data (the header, each length, a record field's type
 * OID) made a newline, nested arrays and records too; a field of neither
 * layout, with its control bytes made newlines. Otherwise, as most are
 * (elements under 32 bytes, say), it is scanned where it lies: the copy
 * costs several times the scan of a value with nothing to find.
 */
function opaqueCandidate(plan: ChunkPlan, item: number, field: number, buf: Buffer, start: number, end: number): void {
  const len = end - start;
  if (!needsSeparation(buf, start, end)) {
    plan.candidate(item, field, start - 4, buf, start, end, len, PLAIN | OPAQUE_BINARY);
    return;
  }
  const copy = Buffer.from(buf.subarray(start, end));
  if (!separateLayout(copy, 0, len)) {
    for (let i = 0; i < len; i++) if (copy[i]! < 0x20) copy[i] = 0x0a;
  }
  plan.candidate(item, field, start - 4, copy, 0, len, len, PLAIN | OPAQUE_BINARY);
}

/**
 * Whether a byte of b[start, end)'s framing that is not a control byte
 * stands right before element data, here or in a nested array or record;
 * for a field of neither layout, whether it has a control byte (made a
 * newline for the scan). An element of neither layout is text as it lies.
 */
function needsSeparation(b: Buffer, start: number, end: number, nested = false): boolean {
  const elements = arrayElements(b, start, end) ?? recordFields(b, start, end);
  if (elements === undefined) {
    if (nested) return false;
    for (let i = start; i < end; i++) if (b[i]! < 0x20) return true;
    return false;
  }
  for (let k = 0; k < elements.length; k += 2) {
    if (b[elements[k]! - 1]! >= 0x20 || needsSeparation(b, elements[k]!, elements[k + 1]!, true)) return true;
  }
  return false;
}

/** Separates b[start, end) in place when it is a binary array or record (see opaqueCandidate); false when it is neither. */
function separateLayout(b: Buffer, start: number, end: number): boolean {
  const elements = arrayElements(b, start, end) ?? recordFields(b, start, end);
  if (elements === undefined) return false;
  let from = start;
  for (let k = 0; k < elements.length; k += 2) {
    b.fill(0x0a, from, elements[k]!);
    // An element that is itself an array or record: the same, inside it.
    separateLayout(b, elements[k]!, elements[k + 1]!);
    from = elements[k + 1]!;
  }
  b.fill(0x0a, from, end);
  return true;
}

/** [start, end) of each non-NULL element of a binary array (array_send), or undefined when b[start, end) is not one. */
function arrayElements(b: Buffer, start: number, end: number): number[] | undefined {
  if (end - start < 12) return undefined;
  const ndim = b.readInt32BE(start);
  const flags = b.readInt32BE(start + 4);
  if (ndim < 0 || ndim > 6 || (flags !== 0 && flags !== 1)) return undefined;
  let p = start + 12;
  if (p + 8 * ndim > end) return undefined;
  let count = ndim === 0 ? 0 : 1;
  for (let d = 0; d < ndim; d++) {
    const size = b.readInt32BE(p);
    if (size < 0) return undefined;
    count *= size;
    p += 8;
  }
  return lengthPrefixed(b, p, end, count, 0);
}

/** The same for a record (record_send): a field count, then each field's type OID, length and bytes. */
function recordFields(b: Buffer, start: number, end: number): number[] | undefined {
  if (end - start < 4) return undefined;
  const n = b.readInt32BE(start);
  if (n < 0 || n > 1664) return undefined;
  return lengthPrefixed(b, start + 4, end, n, 4);
}

/** `count` values from p, each `skip` bytes (an OID) then an Int32 length (-1: NULL) and its bytes, ending exactly at `end`. */
function lengthPrefixed(b: Buffer, p: number, end: number, count: number, skip: number): number[] | undefined {
  if (count > (end - p) / (4 + skip)) return undefined;
  const out: number[] = [];
  for (let k = 0; k < count; k++) {
    if (p + skip + 4 > end) return undefined;
    const len = b.readInt32BE(p + skip);
    p += skip + 4;
    if (len === -1) continue;
    if (len < 0 || p + len > end) return undefined;
    out.push(p, p + len);
    p += len;
  }
  return p === end ? out : undefined;
}

/** The text the engine sees for the field at buf[start, end). */
function fieldText(buf: Buffer, start: number, end: number, encoding: number): Buffer {
  const base = encoding & 3;
  if (base === JSONB_BINARY) return buf.subarray(start + 1, end);
  if (base === BYTEA_HEX) return Buffer.from(buf.toString('latin1', start + 2, end), 'hex');
  return buf.subarray(start, end);
}

/** Masked text back to the field's wire form. A whole-value replacement of a json column becomes a JSON string, so the client can still parse it. */
function encodeBack(encoding: number, masked: Buffer, whole: boolean): Buffer {
  let text = masked;
  if (encoding & JSON_VALUE && whole && !isJson(text)) text = Buffer.from(JSON.stringify(text.toString('utf8')), 'utf8');
  const base = encoding & 3;
  if (base === JSONB_BINARY) return Buffer.concat([Buffer.from([1]), text]);
  if (base === BYTEA_HEX) return Buffer.from(`\\x${text.toString('hex')}`, 'latin1');
  return text;
}

function isJson(b: Buffer): boolean {
  try {
    JSON.parse(b.toString('utf8'));
    return true;
  } catch {
    return false;
  }
}

/**
 * Writes the whole chunk into out (sized for it); returns the bytes
 * written. The bytes between two replacements are copied as one span, row
 * headers and all, even across rows (one copy per replacement rather than
 * several per row); the length word of each changed row is patched once
 * its span has been copied.
 */
function writeChunk(plan: ChunkPlan, out: Buffer): number {
  let w = 0;
  let src: Buffer | undefined; // the span not yet copied: src[from, to)
  let from = 0;
  let to = 0;
  let patches = 0; // changed rows whose length word is patched at the end
  for (let i = 0; i < plan.items; i++) {
    if (plan.kind[i] === STATEMENT_END) continue;
    const buf = plan.bufs[i]!;
    const start = plan.start[i]!;
    if (buf !== src || start !== to) {
      if (src) w = copyBytes(src, from, to, out, w);
      src = buf;
      from = start;
    }
    to = plan.end[i]!;
    if (!plan.changed[i]) continue;
    // The row's header lands at w + (start - from): its length word is fixed after the copies.
    if (patches === plan.patchAt.length) {
      plan.patchAt = grow(plan.patchAt, 2 * patches);
      plan.patchLen = grow(plan.patchLen, 2 * patches);
    }
    plan.patchAt[patches] = w + (start - from) + 1;
    plan.patchLen[patches++] = to - start - 1 + plan.delta[i]!;
    const copyRow = plan.kind[i] === COPY_ROW;
    // Its replacements, in field order (their fields lie in ascending order in the row).
    for (let r = plan.peek(); r >= 0 && plan.rItem[r] === i; r = plan.peek()) {
      plan.cursor++;
      const lenPos = plan.rPos[r]!;
      w = copyBytes(src, from, lenPos, out, w);
      if (copyRow) {
        from = to; // the body is replaced whole; no length word of its own
      } else {
        from = lenPos + 4 + Math.max(0, plan.rWire[r]!);
        w = putInt32(out, plan.rBuf[r] === null ? -1 : plan.rLen[r]!, w);
      }
      if (plan.rBuf[r] !== null) w = plan.writeReplacement(r, out, w);
    }
  }
  if (src) w = copyBytes(src, from, to, out, w);
  for (let p = 0; p < patches; p++) putInt32(out, plan.patchLen[p]!, plan.patchAt[p]!);
  return w;
}

/** Writes changed item i (a DataRow or a CopyData row) with its replacements and length words into out at w; returns the new w. */
function writeRow(plan: ChunkPlan, i: number, out: Buffer, w: number): number {
  const buf = plan.bufs[i]!;
  const start = plan.start[i]!;
  const end = plan.end[i]!;
  out[w] = buf[start]!;
  putInt32(out, end - start - 1 + plan.delta[i]!, w + 1);
  if (plan.kind[i] === COPY_ROW) {
    const r = plan.at(i, 0);
    plan.cursor++;
    return plan.writeReplacement(r, out, w + 5);
  }
  out[w + 5] = buf[start + 5]!; // field count
  out[w + 6] = buf[start + 6]!;
  w += 7;
  const n = buf.readInt16BE(start + 5);
  let pos = start + 7;
  let run = pos; // start of a run of untouched fields, copied in one go
  for (let f = 0; f < n; f++) {
    const len = buf.readInt32BE(pos);
    const next = pos + 4 + Math.max(0, len);
    const r = plan.at(i, f);
    if (r >= 0) {
      plan.cursor++;
      w = copyBytes(buf, run, pos, out, w);
      if (plan.rBuf[r] === null) {
        w = putInt32(out, -1, w);
      } else {
        w = putInt32(out, plan.rLen[r]!, w);
        w = plan.writeReplacement(r, out, w);
      }
      run = next;
    }
    pos = next;
  }
  return copyBytes(buf, run, end, out, w);
}

/** A big-endian Int32 (a length word) at w; returns w + 4. */
function putInt32(out: Buffer, v: number, w: number): number {
  out[w] = v >>> 24;
  out[w + 1] = v >>> 16;
  out[w + 2] = v >>> 8;
  out[w + 3] = v;
  return w + 4;
}

/**
 * src[s, e) into dst at w; returns the new w. Buffer#copy makes a view of
 * the source for every partial copy (an allocation and a native call): a
 * row's short pieces are cheaper copied byte by byte.
 */
function copyBytes(src: Buffer, s: number, e: number, dst: Buffer, w: number): number {
  const n = e - s;
  if (n <= 0) return w;
  if (n > 96) return w + src.copy(dst, w, s, e);
  for (let i = s; i < e; i++) dst[w++] = src[i]!;
  return w;
}

/** Changed item i as pieces: a new header and length words, views of the untouched fields, the replacements (no copy of a huge field). */
function rowPieces(plan: ChunkPlan, i: number): Buffer[] {
  const buf = plan.bufs[i]!;
  const start = plan.start[i]!;
  const end = plan.end[i]!;
  const copyRow = plan.kind[i] === COPY_ROW;
  const head = Buffer.allocUnsafe(copyRow ? 5 : 7);
  head[0] = buf[start]!;
  head.writeInt32BE(end - start - 1 + plan.delta[i]!, 1);
  if (copyRow) {
    const r = plan.at(i, 0);
    plan.cursor++;
    return [head, plan.replacementBytes(r)!];
  }
  buf.copy(head, 5, start + 5, start + 7);
  const parts: Buffer[] = [head];
  const n = buf.readInt16BE(start + 5);
  let pos = start + 7;
  let run = pos;
  for (let f = 0; f < n; f++) {
    const len = buf.readInt32BE(pos);
    const next = pos + 4 + Math.max(0, len);
    const k = plan.at(i, f);
    if (k >= 0) {
      plan.cursor++;
      if (pos > run) parts.push(buf.subarray(run, pos));
      const r = plan.replacementBytes(k);
      const lenWord = Buffer.allocUnsafe(4);
      lenWord.writeInt32BE(r === null ? -1 : r.length);
      parts.push(lenWord);
      if (r !== null) parts.push(r);
      run = next;
    }
    pos = next;
  }
  if (end > run) parts.push(buf.subarray(run, end));
  return parts;
}

/** RowDescription: Int16 count; per field: name, table OID, attnum, type OID, typlen, typmod, format. */
interface FieldDescription {
  name: string;
  /** The column's table and attribute number when it is a plain table column; 0 otherwise. */
  tableOid: number;
  attnum: number;
  typeOid: number;
  format: number;
}

function parseRowDescription(msg: Buffer, decode: SqlDecoder | undefined): FieldDescription[] {
  const n = msg.readInt16BE(5);
  const out: FieldDescription[] = [];
  let pos = 7;
  for (let i = 0; i < n; i++) {
    const end = msg.indexOf(0, pos);
    if (end < 0 || end + 19 > msg.length) throw new PgProtocolError(ErrorCodes.PROTOCOL_VIOLATION, 'malformed RowDescription');
    const name = decode === undefined ? msg.toString('utf8', pos, end) : decode(msg, pos, end);
    pos = end + 1;
    // Int32 table OID, Int16 attribute number, Int32 type OID, Int16 type size, Int32 type modifier, Int16 format.
    const tableOid = msg.readUInt32BE(pos);
    const attnum = msg.readInt16BE(pos + 4);
    const typeOid = msg.readUInt32BE(pos + 6);
    const format = msg.readInt16BE(pos + 16);
    pos += 18;
    out.push({ name, tableOid, attnum, typeOid, format });
  }
  return out;
}

/** The NUL-terminated string at `offset` (a portal or statement name). */
/**
 * A Bind's result format codes when one of them asks for binary (1), else
 * undefined (all text: almost every Bind). Bind: portal, statement, Int16
 * count and codes of the parameters' formats, Int16 count and (Int32
 * length, bytes) of the parameters, Int16 count and codes of the results'.
 * A malformed Bind is the server's to refuse: undefined.
 */
function binaryResultFormats(bind: Buffer): readonly number[] | undefined {
  let at = bind.indexOf(0, 5) + 1;
  if (at <= 0) return undefined;
  at = bind.indexOf(0, at) + 1;
  if (at <= 0 || at + 2 > bind.length) return undefined;
  const paramFormats = bind.readInt16BE(at);
  if (paramFormats < 0) return undefined;
  at += 2 + 2 * paramFormats;
  if (at + 2 > bind.length) return undefined;
  const params = bind.readInt16BE(at);
  if (params < 0) return undefined;
  at += 2;
  for (let p = 0; p < params; p++) {
    if (at + 4 > bind.length) return undefined;
    const len = bind.readInt32BE(at);
    at += 4 + (len > 0 ? len : 0);
  }
  if (at + 2 > bind.length) return undefined;
  const n = bind.readInt16BE(at);
  at += 2;
  if (n <= 0 || at + 2 * n > bind.length) return undefined;
  const codes: number[] = new Array(n);
  let binary = false;
  for (let i = 0; i < n; i++) {
    codes[i] = bind.readInt16BE(at + 2 * i);
    if (codes[i] === 1) binary = true;
  }
  return binary ? codes : undefined;
}

/** Whether field `i` comes in binary by a Bind's result format codes (one code applies to every column). */
function binaryField(formats: readonly number[] | undefined, i: number): boolean {
  if (formats === undefined) return false;
  return (formats.length === 1 ? formats[0] : formats[i]) === 1;
}

function cstringAt(bytes: Buffer, offset: number): string {
  const nul = bytes.indexOf(0, offset);
  // latin1: one character per byte, so two names are one key only when they are the same bytes
  // (in UTF-8, invalid bytes would all become U+FFFD).
  return bytes.toString('latin1', offset, nul < 0 ? bytes.length : nul);
}


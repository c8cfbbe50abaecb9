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
 * field of a non-text type, rows with no RowDescription to map them while
 * column rules are active, binary COPY. The client gets a FATAL
 * ErrorResponse (0A000) naming the reason and the session ends.
 *
 * Rows of one chunk are masked together: inline when the chunk holds few
 * (a 1-row result never leaves the event loop), in the worker pool when it
 * holds more than `batchRows` candidate values or `batchBytes` of them;
 * `push` then returns a promise and the relay pauses the upstream until the
 * masked chunk has been emitted. One batch in flight per session; order is
 * the chunk's order.
 */
import { ErrorCodes } from '../../src/errors.js';
import type { CompiledRule } from '../../masking/engine.js';
import { MaskingFailedError } from '../../masking/types.js';
import { ChunkSequencer, MaskCounts, type PolicyMasking } from '../../masking/session-masker.js';
import { Backend, errorResponse, sqlstate } from './messages.js';
import { PgProtocolError } from './framer.js';
import { NAME_ONLY, type ColumnOrigins } from './column-origins.js';

export interface PgResultMaskerOptions {
  masking: PolicyMasking;
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
  /** A chunk with more candidate values than this goes to the pool. Default 256. */
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
]) INSPECT[t] = 1;

interface Column {
  name: string;
  typeOid: number;
  format: number;
  rule: CompiledRule | undefined;
}

/** How a field's wire bytes map to the text the engine sees. */
const PLAIN = 0;
const JSONB_BINARY = 1; // 1-byte version prefix
const BYTEA_HEX = 2; // text format `\x` + hex digits

interface Row {
  msg: Buffer;
  /** Field i: [start, length] in msg (length -1 = NULL). */
  starts: Int32Array;
  lengths: Int32Array;
  /** Replacement per field index: bytes, or null for SQL NULL. */
  replaced: Map<number, Buffer | null> | undefined;
}

interface Candidate {
  row: Row;
  field: number;
  encoding: number;
  json: boolean;
}

/** An output item: bytes to emit, a row to rebuild, or the end of a statement (its counts are due). */
type Piece = Buffer | Row | typeof STATEMENT_END;
const STATEMENT_END = Symbol('statement end');

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

  // --- framing ---
  readonly #hdr = Buffer.alloc(5);
  #hdrLen = 0;
  /** Pass-through body bytes still to forward. */
  #passRemaining = 0;
  /** An inspected message being assembled. */
  #acc: Buffer | undefined;
  #accLen = 0;

  // --- protocol state ---
  #columns: Column[] | undefined;
  #copyOut = false;
  #dead = false;
  readonly #sequence = new ChunkSequencer();

  constructor(opts: PgResultMaskerOptions) {
    this.#masking = opts.masking;
    this.#origins = opts.origins ?? NAME_ONLY;
    this.#opts = opts;
    this.#batchRows = opts.batchRows ?? 256;
    this.#batchBytes = opts.batchBytes ?? 256 * 1024;
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
    const pieces: Piece[] = [];
    const candidates: Candidate[] = [];
    try {
      this.#frame(chunk, pieces, candidates);
    } catch (err) {
      if (err instanceof Refusal) return;
      throw err;
    }
    if (candidates.length === 0) return this.#emit(pieces, emit);
    const values = candidates.map((c) => this.#candidateBytes(c));
    let bytes = 0;
    for (const v of values) bytes += v.length;
    if (values.length <= this.#batchRows && bytes <= this.#batchBytes) {
      const counts = new Map<string, number>();
      const masked = this.#masking.engine.maskValues(values, counts);
      this.#apply(candidates, masked);
      this.#count(counts);
      return this.#emit(pieces, emit);
    }
    return this.#masking
      .pool()
      .maskBatch(values)
      .then((result) => {
        if (this.#dead) return;
        this.#apply(candidates, result.values);
        this.#count(result.counts);
        this.#emit(pieces, emit);
      });
  }

  #count(counts: Map<string, number> | Record<string, number>): void {
    this.#counts.add(counts);
    this.#statement.add(counts);
  }

  // --- framing ----------------------------------------------------------------

  #frame(chunk: Buffer, pieces: Piece[], candidates: Candidate[]): void {
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
          this.#message(msg, pieces, candidates);
        }
        continue;
      }
      if (this.#passRemaining > 0) {
        const take = Math.min(n - pos, this.#passRemaining);
        add(pieces, chunk.subarray(pos, pos + take));
        this.#passRemaining -= take;
        pos += take;
        continue;
      }
      // HEADER: type byte + Int32 length (counts itself, not the type).
      let header: Buffer;
      let headerFromChunk = false;
      if (this.#hdrLen === 0 && n - pos >= 5) {
        header = chunk.subarray(pos, pos + 5);
        headerFromChunk = true;
        pos += 5;
      } else {
        const take = Math.min(n - pos, 5 - this.#hdrLen);
        chunk.copy(this.#hdr, this.#hdrLen, pos, pos + take);
        this.#hdrLen += take;
        pos += take;
        if (this.#hdrLen < 5) continue;
        header = this.#hdr;
        this.#hdrLen = 0;
      }
      const type = header[0]!;
      const length = header.readInt32BE(1);
      if (length < 4) throw new PgProtocolError(ErrorCodes.PROTOCOL_VIOLATION, `server message length ${length} is below 4`);
      const total = length + 1;
      const body = total - 5;
      if (!INSPECT[type]) {
        add(pieces, headerFromChunk ? header : Buffer.from(header));
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
        // Whole in this chunk: a view, no copy.
        this.#message(chunk.subarray(pos - 5, pos + body), pieces, candidates);
        pos += body;
        continue;
      }
      const acc = Buffer.allocUnsafe(total);
      header.copy(acc, 0);
      this.#acc = acc;
      this.#accLen = 5;
      if (body === 0) {
        this.#acc = undefined;
        this.#message(acc, pieces, candidates);
      }
    }
  }

  /** The message has not been refused by the end of this call; or it throws Refusal. */
  #message(msg: Buffer, pieces: Piece[], candidates: Candidate[]): void {
    const engine = this.#masking.engine;
    switch (msg[0]) {
      case Backend.RowDescription:
        this.#columns = parseRowDescription(msg).map((c) => ({
          name: c.name,
          typeOid: c.typeOid,
          format: c.format,
          rule: engine.hasColumnRules ? this.#origins.ruleFor(engine, c.name, c.tableOid, c.attnum) : undefined,
        }));
        add(pieces, msg);
        return;
      case Backend.DataRow:
        this.#dataRow(msg, pieces, candidates);
        return;
      case Backend.CommandComplete:
      case Backend.EmptyQueryResponse:
      case Backend.ReadyForQuery:
        // The next statement brings its own RowDescription (a Describe of a portal, or the simple protocol's).
        // Between Execute calls of one portal (PortalSuspended) the last one stays.
        this.#columns = undefined;
        this.#copyOut = false;
        add(pieces, msg);
        if (msg[0] === Backend.CommandComplete) pieces.push(STATEMENT_END);
        return;
      case Backend.ErrorResponse:
      case Backend.NoticeResponse:
        add(pieces, this.#fields(msg));
        return;
      case Backend.NotificationResponse:
        add(pieces, this.#strings(msg, 9, [false, true]));
        return;
      case Backend.ParameterStatus:
        add(pieces, this.#strings(msg, 5, [false, true]));
        return;
      case Backend.CopyOutResponse: {
        const format = msg[5];
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
        add(pieces, msg);
        return;
      }
      case Backend.CopyData:
        if (!this.#copyOut) {
          add(pieces, msg); // CopyBoth (replication) is not masked: see docs/masking.md
          return;
        }
        add(pieces, this.#wholeBody(msg, 5));
        return;
      case Backend.CopyDone:
        this.#copyOut = false;
        add(pieces, msg);
        return;
      case Backend.FunctionCallResponse: {
        const len = msg.readInt32BE(5);
        add(pieces, len < 0 ? msg : this.#wholeBody(msg, 9));
        return;
      }
      default:
        add(pieces, msg);
    }
  }

  #dataRow(msg: Buffer, pieces: Piece[], candidates: Candidate[]): void {
    const engine = this.#masking.engine;
    const n = msg.readInt16BE(5);
    const starts = new Int32Array(n);
    const lengths = new Int32Array(n);
    let pos = 7;
    for (let i = 0; i < n; i++) {
      const len = msg.readInt32BE(pos);
      pos += 4;
      starts[i] = pos;
      lengths[i] = len;
      if (len > 0) pos += len;
    }
    if (pos !== msg.length) throw new PgProtocolError(ErrorCodes.PROTOCOL_VIOLATION, 'DataRow field lengths do not add up to the message length');
    const columns = this.#columns && this.#columns.length === n ? this.#columns : undefined;
    if (!columns && engine.hasColumnRules) {
      this.#refuse(
        'rows without a RowDescription under column rules',
        'sluice: result rows arrived without a matching RowDescription, so masked columns cannot be found; Describe the portal before Execute',
        sqlstate.FEATURE_NOT_SUPPORTED,
      );
    }
    const row: Row = { msg, starts, lengths, replaced: undefined };
    const counts = new Map<string, number>();
    for (let i = 0; i < n; i++) {
      if (lengths[i]! < 0) continue;
      const col = columns?.[i];
      const format = col?.format ?? 0;
      const typeOid = col?.typeOid ?? 0;
      if (format !== 0 && !TEXT_LIKE_BINARY.has(typeOid)) {
        if (col?.rule) {
          this.#refuse(
            `binary column ${col.name} refused`,
            `sluice: column "${col.name}" is masked but was requested in binary format for a type sluice cannot mask (type OID ${typeOid}); request text format`,
            sqlstate.FEATURE_NOT_SUPPORTED,
          );
        }
        continue; // numbers, timestamps, uuids...: no text inside to find
      }
      const encoding =
        format !== 0 && typeOid === JSONB ? JSONB_BINARY : format === 0 && typeOid === BYTEA && msg[starts[i]!] === 0x5c && msg[starts[i]! + 1] === 0x78 ? BYTEA_HEX : PLAIN;
      const json = typeOid === JSON_OID || typeOid === JSONB;
      const candidate: Candidate = { row, field: i, encoding, json };
      if (col?.rule) {
        const value = this.#candidateBytes(candidate);
        const out = engine.maskWhole(col.rule, value, counts);
        if (out === null) {
          (row.replaced ??= new Map()).set(i, null);
          continue;
        }
        if (out !== value) {
          (row.replaced ??= new Map()).set(i, encodeBack(candidate, out, true));
          continue;
        }
      }
      if (engine.hasContentRules && lengths[i]! > 0) candidates.push(candidate);
    }
    this.#count(counts);
    pieces.push(row);
  }

  /** The text the engine sees for a candidate field. */
  #candidateBytes(c: Candidate): Buffer {
    const start = c.row.starts[c.field]!;
    const raw = c.row.msg.subarray(start, start + c.row.lengths[c.field]!);
    if (c.encoding === JSONB_BINARY) return raw.subarray(1);
    if (c.encoding === BYTEA_HEX) return Buffer.from(raw.toString('latin1', 2), 'hex');
    return raw;
  }

  #apply(candidates: Candidate[], masked: Array<Buffer | undefined>): void {
    for (let i = 0; i < candidates.length; i++) {
      const out = masked[i];
      if (!out) continue;
      const c = candidates[i]!;
      (c.row.replaced ??= new Map()).set(c.field, encodeBack(c, out, false));
    }
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

  /** Content rules over everything after `offset` (CopyData row, function result); a length word at offset-4 is rewritten when offset is 9. */
  #wholeBody(msg: Buffer, offset: number): Buffer {
    const counts = new Map<string, number>();
    const masked = this.#masking.engine.maskBytes(msg.subarray(offset), counts);
    this.#count(counts);
    if (!masked) return msg;
    if (offset === 9) {
      const len = Buffer.allocUnsafe(4);
      len.writeInt32BE(masked.length);
      return withLength(msg[0]!, [len, masked]);
    }
    return withLength(msg[0]!, [masked]);
  }

  #refuse(reason: string, message: string, code: string): never {
    this.#dead = true;
    this.#acc = undefined;
    const error = errorResponse({ severity: 'FATAL', code, message });
    if (!this.#opts.onRefuse) throw new MaskingFailedError(reason);
    this.#opts.onRefuse(reason, error);
    throw new Refusal(reason);
  }

  #emit(pieces: Piece[], emit: (bytes: Buffer) => void): void {
    const out: Buffer[] = [];
    for (const p of pieces) {
      if (p === STATEMENT_END) {
        const counts = this.#statement.take();
        if (this.#opts.onStatementCounts && Object.keys(counts).length > 0) this.#opts.onStatementCounts(counts);
      } else if (Buffer.isBuffer(p)) {
        add(out, p);
      } else if (!p.replaced) {
        add(out, p.msg);
      } else {
        for (const b of rebuildRow(p)) add(out, b);
      }
    }
    for (const b of out) emit(b);
  }
}

const ZERO = Buffer.from([0]);

/** A C string cannot hold NUL: a replacement never has one, but a hit's copied bytes could not either. */
function stripNul(b: Buffer): Buffer {
  return b.includes(0) ? Buffer.from(b.filter((x) => x !== 0)) : b;
}

/** Appends, merging with the previous buffer when both are adjacent views of one chunk. */
function add(pieces: Piece[] | Buffer[], b: Buffer): void {
  const last = pieces[pieces.length - 1];
  if (Buffer.isBuffer(last) && last.buffer === b.buffer && last.byteOffset + last.length === b.byteOffset) {
    pieces[pieces.length - 1] = Buffer.from(last.buffer, last.byteOffset, last.length + b.length);
  } else {
    (pieces as Buffer[]).push(b);
  }
}

function withLength(type: number, parts: Buffer[]): Buffer {
  let body = 0;
  for (const p of parts) body += p.length;
  const head = Buffer.allocUnsafe(5);
  head[0] = type;
  head.writeInt32BE(4 + body, 1);
  return Buffer.concat([head, ...parts], 5 + body);
}

/** Masked text back to the field's wire form. A whole-value replacement of a json column becomes a JSON string, so the client can still parse it. */
function encodeBack(c: Candidate, masked: Buffer, whole: boolean): Buffer {
  let text = masked;
  if (c.json && whole && !isJson(text)) text = Buffer.from(JSON.stringify(text.toString('utf8')), 'utf8');
  if (c.encoding === JSONB_BINARY) return Buffer.concat([Buffer.from([1]), text]);
  if (c.encoding === BYTEA_HEX) return Buffer.from(`\\x${text.toString('hex')}`, 'latin1');
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

/** Large rows go out as pieces (no copy of the untouched fields); small ones as one buffer. */
function rebuildRow(row: Row): Buffer[] {
  const { msg, starts, lengths } = row;
  const replaced = row.replaced!;
  const n = starts.length;
  const parts: Buffer[] = [];
  let body = 6; // length word + field count
  for (let i = 0; i < n; i++) {
    const r = replaced.get(i);
    const lenWord = Buffer.allocUnsafe(4);
    if (r === null) {
      lenWord.writeInt32BE(-1);
      parts.push(lenWord);
      body += 4;
    } else if (r !== undefined) {
      lenWord.writeInt32BE(r.length);
      parts.push(lenWord, r);
      body += 4 + r.length;
    } else {
      const len = lengths[i]!;
      // The original length word and value, as one view.
      const view = msg.subarray(starts[i]! - 4, starts[i]! + Math.max(0, len));
      parts.push(view);
      body += view.length;
    }
  }
  const head = Buffer.allocUnsafe(7);
  head[0] = Backend.DataRow;
  head.writeInt32BE(body, 1);
  head.writeInt16BE(n, 5);
  if (body + 1 <= 64 * 1024) return [Buffer.concat([head, ...parts], body + 1)];
  return [head, ...parts];
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

function parseRowDescription(msg: Buffer): FieldDescription[] {
  const n = msg.readInt16BE(5);
  const out: FieldDescription[] = [];
  let pos = 7;
  for (let i = 0; i < n; i++) {
    const end = msg.indexOf(0, pos);
    if (end < 0 || end + 19 > msg.length) throw new PgProtocolError(ErrorCodes.PROTOCOL_VIOLATION, 'malformed RowDescription');
    const name = msg.toString('utf8', pos, end);
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

/**
 * PostgreSQL side of the transcript: decodes the two directions of a
 * recorded session into readable events, and splits a client stream into
 * messages for the replay server.
 *
 * Wire reference: https://www.postgresql.org/docs/current/protocol-message-formats.html
 * Startup-phase packets (StartupMessage, SSLRequest, GSSENCRequest,
 * CancelRequest) have no type byte: Int32 length + payload. Every later
 * message is Byte1 type + Int32 length (counting itself) + body. An
 * SSLRequest or GSSENCRequest is answered with ONE byte ('S'/'N'/'G'),
 * outside any message framing, and the client's next packet is again a
 * startup-phase one.
 *
 * The decoders are forensic, not a relay: they never throw on a malformed
 * stream, they report it as an event and stop decoding that direction.
 * Messages split across records are reassembled (ByteQueue); DataRows after
 * the first few of a result, and CopyData, are counted and skipped without
 * being buffered, so a 1 GB result costs no memory.
 */
import { classifySql } from '../../protocols/postgres/classify.js';
import { namesCredential, PreparedCredentials, withoutArguments, withoutPassword } from '../../protocols/postgres/credentials.js';
import type { SqlStatementFacts } from '../policy/types.js';
import type { Direction } from './format.js';
import { ByteQueue, type EmitFn, type ProtocolDecoder, type Stamp, preview, printable } from './transcript.js';

const SSL_REQUEST_CODE = 80877103;
const GSSENC_REQUEST_CODE = 80877104;
const CANCEL_REQUEST_CODE = 80877102;
/** Rows of each result rendered in full. */
export const ROWS_SHOWN = 3;
/** A message longer than this is not believed (PostgreSQL's own limit is 1 GB). */
const MAX_MESSAGE = 1024 * 1024 * 1024 + 64;

/** Type names of the built-in types a result most often has (pg_type.oid). */
const TYPE_NAMES: Readonly<Record<number, string>> = {
  16: 'bool', 17: 'bytea', 18: 'char', 19: 'name', 20: 'int8', 21: 'int2', 23: 'int4', 25: 'text', 26: 'oid',
  114: 'json', 700: 'float4', 701: 'float8', 1042: 'bpchar', 1043: 'varchar', 1082: 'date', 1083: 'time',
  1114: 'timestamp', 1184: 'timestamptz', 1186: 'interval', 1700: 'numeric', 2950: 'uuid', 3802: 'jsonb',
  869: 'inet', 1009: 'text[]', 1007: 'int4[]',
};

function typeName(oid: number): string {
  return TYPE_NAMES[oid] ?? `oid ${oid}`;
}

const TX_STATUS: Readonly<Record<string, string>> = { I: 'idle', T: 'in transaction', E: 'failed transaction' };

/** NUL-terminated strings, read leniently (a forensic reader shows what is there). */
class Cursor {
  pos: number;
  constructor(
    readonly buf: Buffer,
    start: number,
  ) {
    this.pos = start;
  }
  cstring(): string {
    const end = this.buf.indexOf(0, this.pos);
    const stop = end === -1 ? this.buf.length : end;
    const s = this.buf.toString('utf8', this.pos, stop);
    this.pos = stop + 1;
    return s;
  }
  int16(): number {
    if (this.pos + 2 > this.buf.length) throw new RangeError('short message');
    const v = this.buf.readInt16BE(this.pos);
    this.pos += 2;
    return v;
  }
  int32(): number {
    if (this.pos + 4 > this.buf.length) throw new RangeError('short message');
    const v = this.buf.readInt32BE(this.pos);
    this.pos += 4;
    return v;
  }
  bytes(n: number): Buffer {
    if (n < 0 || this.pos + n > this.buf.length) throw new RangeError('short message');
    const b = this.buf.subarray(this.pos, this.pos + n);
    this.pos += n;
    return b;
  }
}

/** Error/notice fields: Byte1 code + cstring, until a zero byte. */
export function errorFields(body: Buffer): Map<string, string> {
  const out = new Map<string, string>();
  const c = new Cursor(body, 0);
  while (c.pos < body.length && body[c.pos] !== 0) {
    const code = String.fromCharCode(body[c.pos]!);
    c.pos++;
    out.set(code, c.cstring());
  }
  return out;
}

/** A bound parameter or a column value: text when it is printable UTF-8 in text format, else hex. */
function value(bytes: Buffer | null, binary: boolean, max: number, quote: boolean): string {
  if (bytes === null) return 'NULL';
  return preview(bytes, max, !binary, quote);
}

interface Result {
  columns: { name: string; type: string; binary: boolean }[];
  rows: number;
  shown: string[];
}

/**
 * One direction's message splitter. `startup` = the next packet is a
 * startup-phase one (client side at first and after an SSL/GSSENC request).
 */
export class PgSplitter {
  readonly q = new ByteQueue();
  startup: boolean;
  /** Server side: the next byte is the one-byte answer to an SSLRequest/GSSENCRequest. */
  sslAnswerNext = false;
  /** Body bytes of a message being skipped (not buffered). */
  skipping = 0;

  constructor(startup: boolean) {
    this.startup = startup;
  }

  /**
   * The next whole message: type 0 for a startup-phase packet, 1 for the
   * one-byte SSL answer (`body` holds the byte); `skip` when `wantBody`
   * declined the body (its length is in `size`). undefined: need more bytes.
   */
  next(wantBody: (type: number, size: number) => boolean): { type: number; body: Buffer; size: number; skipped: boolean } | undefined {
    if (this.skipping > 0) {
      this.skipping -= this.q.drop(this.skipping);
      if (this.skipping > 0) return undefined;
    }
    if (this.sslAnswerNext) {
      if (this.q.length < 1) return undefined;
      this.sslAnswerNext = false;
      const b = this.q.take(1);
      return { type: 1, body: b, size: 1, skipped: false };
    }
    // A startup-phase packet is at most 10000 bytes, so its first byte is 0;
    // a stream that starts with a type byte (a recording that begins after
    // the handshake) is framed as typed messages from there.
    if (this.startup && this.q.length > 0 && this.q.peek(1)![0] !== 0) this.startup = false;
    if (this.startup) {
      const h = this.q.peek(4);
      if (!h) return undefined;
      const len = h.readInt32BE(0);
      if (len < 8 || len > 10000) throw new RangeError(`invalid startup packet length ${len}`);
      if (this.q.length < len) return undefined;
      const body = this.q.take(len).subarray(4);
      const code = body.readInt32BE(0);
      // After an SSL or GSSENC request the client sends a startup packet again.
      this.startup = code === SSL_REQUEST_CODE || code === GSSENC_REQUEST_CODE;
      return { type: 0, body, size: len, skipped: false };
    }
    const h = this.q.peek(5);
    if (!h) return undefined;
    const type = h[0]!;
    const len = h.readInt32BE(1);
    if (len < 4 || len > MAX_MESSAGE) throw new RangeError(`message '${String.fromCharCode(type)}' has an invalid length ${len}`);
    if (!wantBody(type, len - 4)) {
      this.q.drop(5);
      this.skipping = len - 4;
      this.skipping -= this.q.drop(this.skipping);
      return { type, body: Buffer.alloc(0), size: len + 1, skipped: true };
    }
    if (this.q.length < len + 1) return undefined;
    return { type, body: this.q.take(len + 1).subarray(5), size: len + 1, skipped: false };
  }
}

export class PostgresDecoder implements ProtocolDecoder {
  private readonly client = new PgSplitter(true);
  private readonly server = new PgSplitter(false);
  private dead: Partial<Record<Direction, boolean>> = {};
  private result: Result | undefined;
  private params: string[] = [];
  private paramsAt: Stamp | undefined;
  /** Runs of CopyData per direction: messages and bytes. */
  private copy: Partial<Record<Direction, { n: number; bytes: number; at: Stamp }>> = {};
  /** Result column formats by the last Bind's result-format codes (for binary results). */
  private resultFormats: number[] = [];
  /** Statements prepared (Parse or SQL PREPARE) from one that may carry a password: their Bind parameters and EXECUTE arguments are withheld. */
  private readonly credentialPrepared = new PreparedCredentials();
  /** The unnamed statement, which no EXECUTE can name: its Bind parameters are withheld when this is set. */
  private unnamedCredential = false;
  /**
   * The server's errors and notices about a statement that may carry a
   * password are withheld (but their code) up to the ReadyForQuery that
   * ends its batch: sync points (Query, Sync, FunctionCall) the client sent,
   * ReadyForQuery messages the server sent, and the sync point up to which
   * to withhold. Counted, not a flag: a pipelining client sends later
   * batches before the answers to earlier ones.
   */
  private clientSyncs = 0;
  private serverReadies = 0;
  private withholdThrough = 0;

  /**
   * SQL as the transcript shows it, as the audit trail shows it
   * (protocols/postgres/credentials.ts): a statement that may carry a
   * password (CREATE/ALTER ROLE ... PASSWORD, a user mapping's OPTIONS, a
   * connection string) is cut at the password, and an SQL EXECUTE of one
   * prepared in this session loses its arguments. A Query with such a
   * statement is shown statement by statement. Text the parser cannot read
   * is cut at anything that looks like a password, and counts as a
   * credential statement (the gate refused it; the client may still send
   * its Bind). `credential`: the parameters bound to it are withheld too
   * (`ALTER ROLE x PASSWORD $1`, `SELECT dblink_connect($1)`). A transcript
   * may withhold too much, never a credential.
   */
  private shownSql(text: string): { text: string; credential: boolean } {
    let facts: SqlStatementFacts[];
    try {
      facts = classifySql(text);
    } catch {
      return { text: withoutPassword(text), credential: true };
    }
    this.credentialPrepared.notePrepares(facts);
    let hidden = false;
    const shown = facts.map((f) => {
      if (this.credentialPrepared.executes(f)) {
        hidden = true;
        return withoutArguments(f.text);
      }
      if (!namesCredential(f)) return f.text;
      hidden = true;
      return withoutPassword(f.text);
    });
    return hidden ? { text: shown.join('; '), credential: true } : { text, credential: false };
  }

  push(direction: Direction, bytes: Buffer, at: Stamp, emit: EmitFn): void {
    if (this.dead[direction]) return;
    const s = direction === 'client' ? this.client : this.server;
    s.q.push(bytes);
    try {
      for (;;) {
        const m = s.next((type, size) => this.wantBody(direction, type, size));
        if (!m) break;
        if (direction === 'client') this.onClient(m.type, m.body, m.size, m.skipped, at, emit);
        else this.onServer(m.type, m.body, m.size, m.skipped, at, emit);
      }
    } catch (err) {
      this.dead[direction] = true;
      emit({ ...at, dir: direction, kind: 'undecodable', text: `cannot decode the ${direction} stream further: ${err instanceof Error ? err.message : String(err)}` });
    }
  }

  finish(emit: EmitFn, at: Stamp): void {
    this.flushParams(emit);
    this.flushCopy('client', emit);
    this.flushCopy('server', emit);
    if (this.result && (this.result.rows > 0 || this.result.columns.length)) this.emitResult(at, emit, undefined);
    for (const d of ['client', 'server'] as const) {
      const s = d === 'client' ? this.client : this.server;
      if (!this.dead[d] && (s.q.length > 0 || s.skipping > 0)) {
        emit({ ...at, dir: d, kind: 'partial', text: `${s.q.length + s.skipping} bytes of an unfinished message at the end` });
      }
    }
  }

  private wantBody(direction: Direction, type: number, size: number): boolean {
    // CopyData: counted, never shown.
    if (type === 0x64 /* d */) {
      this.countCopy(direction, size);
      return false;
    }
    // DataRows past the ones shown: counted.
    if (direction === 'server' && type === 0x44 /* D */ && this.result && this.result.shown.length >= ROWS_SHOWN) {
      this.result.rows++;
      return false;
    }
    return true;
  }

  private countCopy(direction: Direction, size: number): void {
    const c = this.copy[direction];
    if (c) {
      c.n++;
      c.bytes += size;
    } else {
      this.copy[direction] = { n: 1, bytes: size, at: this.lastStamp ?? { t: 0, seq: 0 } };
    }
  }

  private lastStamp: Stamp | undefined;

  private flushCopy(direction: Direction, emit: EmitFn): void {
    const c = this.copy[direction];
    if (!c) return;
    delete this.copy[direction];
    emit({ ...c.at, dir: direction, kind: 'copy-data', text: `CopyData x${c.n}, ${c.bytes} bytes`, data: { messages: c.n, bytes: c.bytes } });
  }

  private flushParams(emit: EmitFn): void {
    if (!this.params.length || !this.paramsAt) return;
    emit({ ...this.paramsAt, dir: 'server', kind: 'parameters', text: `ParameterStatus ${this.params.join(' ')}` });
    this.params = [];
    this.paramsAt = undefined;
  }

  private onClient(type: number, body: Buffer, size: number, skipped: boolean, at: Stamp, emit: EmitFn): void {
    this.lastStamp = at;
    const ev = (kind: string, text: string, data?: Record<string, unknown>) =>
      emit({ ...at, dir: 'client', kind, text, ...(data ? { data } : {}) });
    if (skipped) return; // CopyData, counted in wantBody
    if (type !== 0x64) this.flushCopy('client', emit);
    const c = new Cursor(body, 0);
    switch (type) {
      case 0: {
        const code = c.int32();
        if (code === SSL_REQUEST_CODE) {
          this.server.sslAnswerNext = true;
          return ev('ssl-request', 'SSLRequest');
        }
        if (code === GSSENC_REQUEST_CODE) {
          this.server.sslAnswerNext = true;
          return ev('gssenc-request', 'GSSENCRequest');
        }
        if (code === CANCEL_REQUEST_CODE) return ev('cancel-request', `CancelRequest for backend pid ${c.int32()}`);
        const params: Record<string, string> = {};
        while (c.pos < body.length && body[c.pos] !== 0) {
          const k = c.cstring();
          params[k] = c.cstring();
        }
        const shown = Object.entries(params).map(([k, v]) => `${printable(k)}=${printable(v)}`);
        return ev('startup', `StartupMessage protocol ${code >>> 16}.${code & 0xffff} ${shown.join(' ')}`, { params });
      }
      case 0x51 /* Q */: {
        const sql = this.shownSql(c.cstring());
        const text = sql.text;
        // A Query is its own sync point: its ReadyForQuery ends what it may have made the server say.
        this.clientSyncs++;
        if (sql.credential) this.withholdThrough = this.clientSyncs;
        return ev('query', `Query ${printable(text)}`, { query: text });
      }
      case 0x50 /* P */: {
        const name = c.cstring();
        const sql = this.shownSql(c.cstring());
        const text = sql.text;
        // Up to the ReadyForQuery of this batch's Sync.
        if (sql.credential) this.withholdThrough = this.clientSyncs + 1;
        if (name === '') this.unnamedCredential = sql.credential;
        else if (sql.credential) this.credentialPrepared.remember(name);
        const n = c.pos < body.length ? c.int16() : 0;
        const oids: number[] = [];
        for (let i = 0; i < n; i++) oids.push(c.int32() >>> 0);
        const types = oids.length ? ` param types (${oids.map((o) => (o === 0 ? 'unspecified' : typeName(o))).join(', ')})` : '';
        return ev('parse', `Parse ${name ? `statement "${printable(name)}"` : 'unnamed statement'}: ${printable(text)}${types}`, { statement: name, query: text, paramTypes: oids });
      }
      case 0x42 /* B */: {
        const portal = c.cstring();
        const stmt = c.cstring();
        const nf = c.int16();
        const formats: number[] = [];
        for (let i = 0; i < nf; i++) formats.push(c.int16());
        const np = c.int16();
        const params: string[] = [];
        for (let i = 0; i < np; i++) {
          const len = c.int32();
          const fmt = nf === 0 ? 0 : nf === 1 ? formats[0]! : (formats[i] ?? 0);
          params.push(value(len === -1 ? null : c.bytes(len), fmt === 1, 200, true));
        }
        // `ALTER ROLE x PASSWORD $1`: the parameter is the password, and the server's answer to it may quote it.
        if (this.credentialPrepared.has(stmt) || (stmt === '' && this.unnamedCredential)) {
          params.fill('[redacted]');
          this.withholdThrough = this.clientSyncs + 1;
        }
        const nr = c.pos < body.length ? c.int16() : 0;
        this.resultFormats = [];
        for (let i = 0; i < nr; i++) this.resultFormats.push(c.int16());
        return ev(
          'bind',
          `Bind ${portal ? `portal "${printable(portal)}"` : 'unnamed portal'} to ${stmt ? `statement "${printable(stmt)}"` : 'unnamed statement'}${np ? ` params [${params.join(', ')}]` : ''}`,
          { portal, statement: stmt, params },
        );
      }
      case 0x45 /* E */: {
        const portal = c.cstring();
        const max = c.int32();
        return ev('execute', `Execute ${portal ? `portal "${printable(portal)}"` : 'unnamed portal'}${max ? ` max ${max} rows` : ''}`, { portal, maxRows: max });
      }
      case 0x44 /* D */: {
        const what = String.fromCharCode(body[0] ?? 0x3f);
        c.pos = 1;
        const name = c.cstring();
        return ev('describe', `Describe ${what === 'S' ? 'statement' : 'portal'} ${name ? `"${printable(name)}"` : '(unnamed)'}`);
      }
      case 0x43 /* C */: {
        const what = String.fromCharCode(body[0] ?? 0x3f);
        c.pos = 1;
        const name = c.cstring();
        // A closed name may be prepared again from another statement.
        if (what === 'S' && name === '') this.unnamedCredential = false;
        else if (what === 'S') this.credentialPrepared.forget(name);
        return ev('close', `Close ${what === 'S' ? 'statement' : 'portal'} ${name ? `"${printable(name)}"` : '(unnamed)'}`);
      }
      case 0x53 /* S */:
        this.clientSyncs++;
        return ev('sync', 'Sync');
      case 0x48 /* H */:
        return ev('flush', 'Flush');
      case 0x58 /* X */:
        return ev('terminate', 'Terminate');
      case 0x63 /* c */:
        return ev('copy-done', 'CopyDone');
      case 0x66 /* f */:
        return ev('copy-fail', `CopyFail ${printable(c.cstring())}`);
      case 0x46 /* F */:
        this.clientSyncs++;
        return ev('function-call', `FunctionCall oid ${c.int32() >>> 0}`);
      case 0x70 /* p */: {
        // The taps record this redacted; whatever it holds, it is never shown.
        const redacted = body.includes(Buffer.from('[redacted]'));
        return ev('password', `PasswordMessage/SASL response ${redacted ? '[redacted]' : `(${body.length} bytes, not shown)`}`);
      }
      default:
        return ev('message', `message '${printable(String.fromCharCode(type))}' (${size} bytes)`);
    }
  }

  private onServer(type: number, body: Buffer, size: number, skipped: boolean, at: Stamp, emit: EmitFn): void {
    this.lastStamp = at;
    const ev = (kind: string, text: string, data?: Record<string, unknown>) =>
      emit({ ...at, dir: 'server', kind, text, ...(data ? { data } : {}) });
    if (skipped) return; // CopyData or a counted DataRow
    if (type !== 0x53 /* ParameterStatus */) this.flushParams(emit);
    if (type !== 0x64) this.flushCopy('server', emit);
    const c = new Cursor(body, 0);
    switch (type) {
      case 1: {
        const a = String.fromCharCode(body[0]!);
        return ev('ssl-answer', `answer to SSL/GSSENC request: '${printable(a)}' (${a === 'S' || a === 'G' ? 'encrypted from here on; the recording holds the cleartext' : 'refused, cleartext'})`);
      }
      case 0x52 /* R */: {
        const code = c.int32();
        switch (code) {
          case 0:
            return ev('auth', 'AuthenticationOk');
          case 3:
            return ev('auth', 'AuthenticationCleartextPassword');
          case 5:
            return ev('auth', 'AuthenticationMD5Password');
          case 10: {
            const mechs: string[] = [];
            while (c.pos < body.length && body[c.pos] !== 0) mechs.push(c.cstring());
            return ev('auth', `AuthenticationSASL ${mechs.join(', ')}`);
          }
          case 11:
            return ev('auth', 'AuthenticationSASLContinue');
          case 12:
            return ev('auth', 'AuthenticationSASLFinal');
          default:
            return ev('auth', `Authentication request ${code}`);
        }
      }
      case 0x53 /* S */: {
        const k = c.cstring();
        const v = c.cstring();
        if (!this.params.length) this.paramsAt = at;
        this.params.push(`${printable(k)}=${printable(v)}`);
        return;
      }
      case 0x4b /* K */:
        return ev('backend-key', `BackendKeyData pid ${c.int32()}`);
      case 0x5a /* Z */: {
        // The login's ReadyForQuery answers no Query or Sync: not counted.
        if (this.serverReadies < this.clientSyncs) this.serverReadies++;
        const s = String.fromCharCode(body[0] ?? 0x3f);
        return ev('ready', `ReadyForQuery ${TX_STATUS[s] ?? printable(s)}`, { status: s });
      }
      case 0x54 /* T */: {
        const n = c.int16();
        const columns: Result['columns'] = [];
        for (let i = 0; i < n; i++) {
          const name = c.cstring();
          c.int32(); // table oid
          c.int16(); // column number
          const oid = c.int32() >>> 0;
          c.int16(); // size
          c.int32(); // modifier
          const fmt = c.int16();
          columns.push({ name, type: typeName(oid), binary: fmt === 1 });
        }
        this.result = { columns, rows: 0, shown: [] };
        return;
      }
      case 0x44 /* D */: {
        this.result ??= { columns: [], rows: 0, shown: [] };
        const r = this.result;
        r.rows++;
        const n = c.int16();
        const cells: string[] = [];
        for (let i = 0; i < n; i++) {
          const len = c.int32();
          cells.push(value(len === -1 ? null : c.bytes(len), r.columns[i]?.binary ?? false, 64, false));
        }
        r.shown.push(cells.join(' | '));
        return;
      }
      case 0x43 /* C */:
        return this.emitResult(at, emit, c.cstring());
      case 0x49 /* I */:
        return ev('empty-query', 'EmptyQueryResponse');
      case 0x6e /* n */:
        this.result = undefined;
        return ev('no-data', 'NoData');
      case 0x31 /* 1 */:
        return ev('parse-complete', 'ParseComplete');
      case 0x32 /* 2 */:
        return ev('bind-complete', 'BindComplete');
      case 0x33 /* 3 */:
        return ev('close-complete', 'CloseComplete');
      case 0x73 /* s */:
        this.emitResult(at, emit, undefined, 'PortalSuspended');
        return;
      case 0x74 /* t */: {
        const n = c.int16();
        const oids: string[] = [];
        for (let i = 0; i < n; i++) oids.push(typeName(c.int32() >>> 0));
        return ev('parameter-description', `ParameterDescription (${oids.join(', ')})`);
      }
      case 0x45 /* E */:
      case 0x4e /* N */: {
        if (type === 0x45 && this.result && (this.result.rows > 0 || this.result.columns.length)) this.emitResult(at, emit, undefined, 'before the error');
        const f = errorFields(body);
        const severity = f.get('V') ?? f.get('S') ?? (type === 0x45 ? 'ERROR' : 'NOTICE');
        const code = f.get('C') ?? '?????';
        // The server's own words about a statement that may carry a password can quote it (libpq's
        // `missing "=" after "<part of it>" in connection info string`); Sluice's own never do.
        if (this.serverReadies < this.withholdThrough && !(f.get('M') ?? '').startsWith('sluice:')) {
          for (const k of ['M', 'D', 'H']) if (f.has(k)) f.set(k, '[withheld: the statement it answers may carry a password]');
        }
        const message = f.get('M') ?? '';
        const extra = [f.get('D') ? `DETAIL: ${f.get('D')}` : '', f.get('H') ? `HINT: ${f.get('H')}` : ''].filter(Boolean).join('; ');
        let kind = type === 0x45 ? 'error' : 'notice';
        if (message.startsWith('sluice: denied')) kind = 'denied';
        else if (/held for approval/.test(message)) kind = 'approval';
        const text = `${type === 0x45 ? 'ErrorResponse' : 'NoticeResponse'} ${severity} ${code} ${printable(message)}${extra ? ` (${printable(extra)})` : ''}`;
        return ev(kind, text, { severity, sqlstate: code, message, ...(f.get('D') ? { detail: f.get('D') } : {}), ...(f.get('H') ? { hint: f.get('H') } : {}) });
      }
      case 0x41 /* A */: {
        const pid = c.int32();
        const channel = c.cstring();
        const payload = c.cstring();
        return ev('notification', `NotificationResponse pid ${pid} channel "${printable(channel)}" payload ${JSON.stringify(preview(Buffer.from(payload), 64, true))}`);
      }
      case 0x47 /* G */:
      case 0x48 /* H */:
      case 0x57 /* W */: {
        const fmt = c.bytes(1)[0] === 1 ? 'binary' : 'text';
        const n = c.int16();
        const name = type === 0x47 ? 'CopyInResponse' : type === 0x48 ? 'CopyOutResponse' : 'CopyBothResponse';
        return ev('copy', `${name} ${fmt}, ${n} columns`);
      }
      case 0x63 /* c */:
        return ev('copy-done', 'CopyDone');
      case 0x76 /* v */: {
        const minor = c.int32();
        return ev('negotiate', `NegotiateProtocolVersion newest minor ${minor}`);
      }
      case 0x56 /* V */: {
        const len = c.int32();
        return ev('function-result', `FunctionCallResponse ${len === -1 ? 'NULL' : `${len} bytes`}`);
      }
      default:
        return ev('message', `message '${printable(String.fromCharCode(type))}' (${size} bytes)`);
    }
  }

  private emitResult(at: Stamp, emit: EmitFn, tag: string | undefined, note?: string): void {
    const r = this.result;
    this.result = undefined;
    if (!r) {
      emit({ ...at, dir: 'server', kind: 'complete', text: `CommandComplete ${printable(tag ?? '')}`, data: { tag } });
      return;
    }
    const cols = r.columns.length ? `columns (${r.columns.map((c) => `${printable(c.name)} ${c.type}`).join(', ')}); ` : '';
    const rows = `${r.rows} row${r.rows === 1 ? '' : 's'}`;
    const shown = r.shown.length ? `: ${r.shown.map((s) => `[${s}]`).join(' ')}${r.rows > r.shown.length ? ' ...' : ''}` : '';
    const end = tag !== undefined ? `; CommandComplete ${printable(tag)}` : note ? ` (${note})` : '';
    emit({
      ...at,
      dir: 'server',
      kind: 'result',
      text: `${cols}${rows}${shown}${end}`,
      data: { columns: r.columns, rows: r.rows, firstRows: r.shown, ...(tag !== undefined ? { tag } : {}) },
    });
  }
}

/**
 * Splits a client stream into messages for the replay server: returns the
 * message types completed by `bytes` (0 = startup-phase packet, with its
 * request code in `code`).
 */
export class PgClientMessages {
  private readonly s = new PgSplitter(true);

  /** `password`: a PasswordMessage's text (up to its NUL), for the replay server's login check. */
  push(bytes: Buffer): { type: number; code?: number; size: number; password?: Buffer }[] {
    this.s.q.push(bytes);
    const out: { type: number; code?: number; size: number; password?: Buffer }[] = [];
    for (;;) {
      const m = this.s.next((type) => type !== 0x64);
      if (!m) break;
      if (m.type === 0) out.push({ type: 0, code: m.body.readInt32BE(0), size: m.size });
      else if (m.type === 0x70 /* p */) {
        const nul = m.body.indexOf(0);
        out.push({ type: m.type, size: m.size, password: m.body.subarray(0, nul < 0 ? m.body.length : nul) });
      } else out.push({ type: m.type, size: m.size });
    }
    return out;
  }
}

export const PG_REQUEST_CODES = { ssl: SSL_REQUEST_CODE, gssenc: GSSENC_REQUEST_CODE, cancel: CANCEL_REQUEST_CODE } as const;

/** How a message is named in a divergence warning. */
export function pgMessageName(m: { type: number; code?: number }): string {
  if (m.type !== 0) return `'${printable(String.fromCharCode(m.type))}'`;
  if (m.code === SSL_REQUEST_CODE) return 'SSLRequest';
  if (m.code === GSSENC_REQUEST_CODE) return 'GSSENCRequest';
  if (m.code === CANCEL_REQUEST_CODE) return 'CancelRequest';
  return 'StartupMessage';
}

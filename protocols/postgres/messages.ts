/**
 * PostgreSQL message constants, the parsers for what a client says before it
 * is authenticated, and builders for the messages Sluice itself sends.
 * https://www.postgresql.org/docs/current/protocol-message-formats.html
 *
 * Parsers take the complete wire bytes as PgFramer delivers them (type byte +
 * length + body; for startup-phase packets length + payload) and throw
 * PgProtocolError (offset -1: the caller knows where the message was) on
 * anything malformed. Their error text never quotes a parameter value or a
 * password.
 *
 * Builders write strings as UTF-8 followed by a NUL terminator. A NUL inside
 * a string would end it early and shift every later field, so builders STRIP
 * NULs: refusing would turn the error report itself into a failure, and the
 * text Sluice sends (error messages, parameter values) loses nothing by it.
 */
import { ErrorCodes } from '../../src/errors.js';
import { PgProtocolError, MAX_STARTUP_PACKET_LENGTH, MIN_STARTUP_PACKET_LENGTH } from './framer.js';

export { MAX_STARTUP_PACKET_LENGTH, MIN_STARTUP_PACKET_LENGTH };

// Message type bytes. Some letters mean different messages in the two
// directions ('D' is Describe from the client, DataRow from the server), so
// each name is exported alone and grouped by direction in Frontend/Backend.

// Frontend (client to server)
export const Query = 0x51; // 'Q'
export const Parse = 0x50; // 'P'
export const Bind = 0x42; // 'B'
export const Execute = 0x45; // 'E'
export const Describe = 0x44; // 'D'
export const Close = 0x43; // 'C'
export const Sync = 0x53; // 'S'
export const Flush = 0x48; // 'H'
export const FunctionCall = 0x46; // 'F'
export const CopyFail = 0x66; // 'f'
/** Also GSSResponse, SASLInitialResponse and SASLResponse: the same byte, its meaning set by the auth exchange. */
export const PasswordMessage = 0x70; // 'p'
export const Terminate = 0x58; // 'X'
// Both directions
export const CopyData = 0x64; // 'd'
export const CopyDone = 0x63; // 'c'
// Backend (server to client)
export const Authentication = 0x52; // 'R'
export const BackendKeyData = 0x4b; // 'K'
export const ParameterStatus = 0x53; // 'S'
export const ReadyForQuery = 0x5a; // 'Z'
export const ErrorResponse = 0x45; // 'E'
export const NoticeResponse = 0x4e; // 'N'
export const RowDescription = 0x54; // 'T'
export const DataRow = 0x44; // 'D'
export const CommandComplete = 0x43; // 'C'
export const NegotiateProtocolVersion = 0x76; // 'v'
export const NotificationResponse = 0x41; // 'A'
export const CopyInResponse = 0x47; // 'G'
export const CopyOutResponse = 0x48; // 'H'
export const CopyBothResponse = 0x57; // 'W'
export const FunctionCallResponse = 0x56; // 'V'
export const ParseComplete = 0x31; // '1'
export const BindComplete = 0x32; // '2'
export const CloseComplete = 0x33; // '3'
export const NoData = 0x6e; // 'n'
export const PortalSuspended = 0x73; // 's'
export const EmptyQueryResponse = 0x49; // 'I'
export const ParameterDescription = 0x74; // 't'

/** Message types a frontend (client) sends. */
export const Frontend = {
  Query, Parse, Bind, Execute, Describe, Close, Sync, Flush, FunctionCall,
  CopyData, CopyDone, CopyFail, PasswordMessage, Terminate,
} as const;

/** Message types a backend (server) sends. */
export const Backend = {
  Authentication, BackendKeyData, ParameterStatus, ReadyForQuery, ErrorResponse,
  NoticeResponse, RowDescription, DataRow, CommandComplete, NegotiateProtocolVersion,
  NotificationResponse, CopyInResponse, CopyOutResponse, CopyBothResponse, CopyData,
  CopyDone, FunctionCallResponse, ParseComplete, BindComplete, CloseComplete, NoData,
  PortalSuspended, EmptyQueryResponse, ParameterDescription,
} as const;

/** Codes in the first Int32 of a startup-phase packet's payload. */
export const PROTOCOL_3_0 = 196608; // 3 << 16 | 0
export const SSL_REQUEST_CODE = 80877103; // 1234 << 16 | 5679
export const GSSENC_REQUEST_CODE = 80877104; // 1234 << 16 | 5680
export const CANCEL_REQUEST_CODE = 80877102; // 1234 << 16 | 5678

/** Authentication request codes (the Int32 after 'R'). */
export const AuthenticationCode = {
  Ok: 0,
  CleartextPassword: 3,
  MD5Password: 5,
  SASL: 10,
  SASLContinue: 11,
  SASLFinal: 12,
} as const;

/** The SQLSTATE codes Sluice uses. https://www.postgresql.org/docs/current/errcodes-appendix.html */
export const sqlstate = {
  PROTOCOL_VIOLATION: '08P01',
  INVALID_AUTHORIZATION_SPECIFICATION: '28000',
  INVALID_PASSWORD: '28P01',
  CONNECTION_FAILURE: '08006',
  CANNOT_CONNECT_NOW: '57P03',
  INSUFFICIENT_PRIVILEGE: '42501',
  SYNTAX_ERROR: '42601',
  FEATURE_NOT_SUPPORTED: '0A000',
  ADMIN_SHUTDOWN: '57P01',
  QUERY_CANCELED: '57014',
  TOO_MANY_CONNECTIONS: '53300',
  PROGRAM_LIMIT_EXCEEDED: '54000',
  INVALID_PARAMETER_VALUE: '22023',
  CONFIGURATION_LIMIT_EXCEEDED: '53400',
  IDLE_SESSION_TIMEOUT: '57P05',
  INTERNAL_ERROR: 'XX000',
} as const;

export type TransactionStatus = 'I' | 'T' | 'E';

// ---------------------------------------------------------------------------
// Parsers

export type StartupPacket =
  | { kind: 'ssl' }
  | { kind: 'gssenc' }
  | { kind: 'cancel'; processId: number; secretKey: number }
  | { kind: 'startup'; majorVersion: number; minorVersion: number; params: Map<string, string> };

const utf8 = new TextDecoder('utf-8', { fatal: true });

function violation(message: string): PgProtocolError {
  return new PgProtocolError(ErrorCodes.PROTOCOL_VIOLATION, message, -1);
}

function decodeUtf8(bytes: Buffer, what: string): string {
  try {
    return utf8.decode(bytes);
  } catch {
    throw violation(`${what} is not valid UTF-8`);
  }
}

/** A parameter name for an error text: quoted, control characters escaped, cut short. */
function quoteName(name: string): string {
  return JSON.stringify(name.length > 64 ? `${name.slice(0, 64)}...` : name);
}

/**
 * A startup-phase packet: StartupMessage, SSLRequest, GSSENCRequest or
 * CancelRequest. https://www.postgresql.org/docs/current/protocol-message-formats.html#PROTOCOL-MESSAGE-FORMATS-STARTUPMESSAGE
 *
 * StartupMessage: Int32 length, Int32 protocol version (major << 16 | minor),
 * then name/value pairs, each a NUL-terminated string, "A zero byte is
 * required as a terminator after the last name/value pair". Only protocol
 * major version 3 is accepted (PostgreSQL dropped 2.0 in version 14); the
 * minor version is returned for the caller to negotiate.
 */
export function parseStartupPacket(msg: Buffer): StartupPacket {
  const size = msg.length;
  if (size < MIN_STARTUP_PACKET_LENGTH || size > MAX_STARTUP_PACKET_LENGTH) {
    throw violation(`invalid length of startup packet: ${size}`);
  }
  if (msg.readInt32BE(0) !== size) {
    throw violation('startup packet length word does not match its size');
  }
  const code = msg.readInt32BE(4);
  switch (code) {
    case SSL_REQUEST_CODE:
    case GSSENC_REQUEST_CODE:
      if (size !== 8) throw violation(`${code === SSL_REQUEST_CODE ? 'SSLRequest' : 'GSSENCRequest'} must be 8 bytes, got ${size}`);
      return { kind: code === SSL_REQUEST_CODE ? 'ssl' : 'gssenc' };
    case CANCEL_REQUEST_CODE:
      // Protocol 3.0 key: Int32 process ID + Int32 secret key.
      if (size !== 16) throw violation(`CancelRequest must be 16 bytes, got ${size}`);
      return { kind: 'cancel', processId: msg.readInt32BE(8), secretKey: msg.readInt32BE(12) };
  }
  const majorVersion = code >>> 16;
  const minorVersion = code & 0xffff;
  if (majorVersion !== 3) {
    throw violation(`unsupported frontend protocol ${majorVersion}.${minorVersion}: only 3.x is spoken`);
  }
  if (size < 9 || msg[size - 1] !== 0) throw violation('StartupMessage lacks its terminating zero byte');
  const params = new Map<string, string>();
  const last = size - 1; // index of the terminator
  let pos = 8;
  while (pos < last) {
    const nameEnd = msg.indexOf(0, pos);
    if (nameEnd === pos) throw violation(`StartupMessage parameter ${params.size + 1} has an empty name`);
    // The terminator cannot double as a name's NUL: a value must follow.
    if (nameEnd >= last) throw violation(`StartupMessage parameter ${params.size + 1} has no value`);
    const valueEnd = msg.indexOf(0, nameEnd + 1);
    if (valueEnd >= last) throw violation(`StartupMessage parameter ${params.size + 1} is not followed by the terminating zero byte`);
    const name = decodeUtf8(msg.subarray(pos, nameEnd), `StartupMessage parameter ${params.size + 1} name`);
    const value = decodeUtf8(msg.subarray(nameEnd + 1, valueEnd), `StartupMessage parameter ${quoteName(name)} value`);
    if (params.has(name)) throw violation(`StartupMessage repeats parameter ${quoteName(name)}`);
    params.set(name, value);
    pos = valueEnd + 1;
  }
  return { kind: 'startup', majorVersion, minorVersion, params };
}

function checkTyped(msg: Buffer, type: number, name: string): void {
  if (msg.length < 5 || msg[0] !== type) throw violation(`not a ${name} message`);
  if (msg.readInt32BE(1) !== msg.length - 1) throw violation(`${name} length word does not match its size`);
}

/**
 * PasswordMessage ('p'): its body is exactly one NUL-terminated string.
 * https://www.postgresql.org/docs/current/protocol-message-formats.html#PROTOCOL-MESSAGE-FORMATS-PASSWORDMESSAGE
 * (the same byte carries SASL responses; parse this only after asking for a
 * cleartext password). The error text never includes the password.
 */
export function parsePasswordMessage(msg: Buffer): string {
  checkTyped(msg, Frontend.PasswordMessage, 'PasswordMessage');
  const last = msg.length - 1;
  if (last < 5 || msg[last] !== 0) throw violation('PasswordMessage is not a NUL-terminated string');
  if (msg.indexOf(0, 5) !== last) throw violation('PasswordMessage has bytes after its string');
  return decodeUtf8(msg.subarray(5, last), 'PasswordMessage');
}

/**
 * ErrorResponse ('E') or NoticeResponse ('N') fields: Byte1 field code then
 * a NUL-terminated value, repeated, ended by a zero byte.
 * https://www.postgresql.org/docs/current/protocol-error-fields.html
 * Values are decoded leniently (invalid UTF-8 becomes U+FFFD): the server
 * writes them in its client_encoding and they are only read, not trusted.
 */
export function parseErrorFields(msg: Buffer): Map<string, string> {
  if (msg.length < 5 || (msg[0] !== Backend.ErrorResponse && msg[0] !== Backend.NoticeResponse)) {
    throw violation('not an ErrorResponse or NoticeResponse message');
  }
  if (msg.readInt32BE(1) !== msg.length - 1) throw violation('ErrorResponse length word does not match its size');
  const fields = new Map<string, string>();
  const last = msg.length - 1;
  let pos = 5;
  for (;;) {
    if (pos > last) throw violation('ErrorResponse lacks its terminating zero byte');
    const code = msg[pos]!;
    if (code === 0) {
      if (pos !== last) throw violation('ErrorResponse has bytes after its terminator');
      return fields;
    }
    const valueEnd = msg.indexOf(0, pos + 1);
    if (valueEnd === -1 || valueEnd >= last) throw violation('ErrorResponse field is not terminated');
    fields.set(String.fromCharCode(code), msg.toString('utf8', pos + 1, valueEnd));
    pos = valueEnd + 1;
  }
}

// ---------------------------------------------------------------------------
// Builders

/** UTF-8 with NULs stripped (see the file comment). */
function text(value: string): Buffer {
  return Buffer.from(value.includes('\0') ? value.replaceAll('\0', '') : value, 'utf8');
}

/** Assemble a typed message: Byte1 type, Int32 length (counts itself), body parts. */
function typed(type: number, parts: readonly (Buffer | number)[], bodyBytes: number): Buffer {
  const out = Buffer.allocUnsafe(5 + bodyBytes);
  out[0] = type;
  out.writeInt32BE(4 + bodyBytes, 1);
  let pos = 5;
  for (const part of parts) {
    if (typeof part === 'number') {
      out.writeUInt32BE(part >>> 0, pos);
      pos += 4;
    } else {
      part.copy(out, pos);
      pos += part.length;
      out[pos++] = 0; // every Buffer part is a C string
    }
  }
  return out;
}

function bodySize(parts: readonly (Buffer | number)[]): number {
  let n = 0;
  for (const part of parts) n += typeof part === 'number' ? 4 : part.length + 1;
  return n;
}

function build(type: number, parts: readonly (Buffer | number)[]): Buffer {
  return typed(type, parts, bodySize(parts));
}

export interface ErrorFields {
  severity: 'FATAL' | 'ERROR';
  /** SQLSTATE, five characters from [0-9A-Z]; see `sqlstate`. */
  code: string;
  message: string;
  detail?: string;
  hint?: string;
}

export interface NoticeFields {
  severity: 'WARNING' | 'NOTICE' | 'DEBUG' | 'INFO' | 'LOG';
  code: string;
  message: string;
  detail?: string;
  hint?: string;
}

const SQLSTATE_FORMAT = /^[0-9A-Z]{5}$/;

function fieldList(type: number, f: ErrorFields | NoticeFields): Buffer {
  if (!SQLSTATE_FORMAT.test(f.code)) throw new RangeError(`invalid SQLSTATE ${JSON.stringify(f.code)}`);
  // Each field: Byte1 code + C string; the list ends with a zero byte.
  // S is the (possibly localized) severity, V the never-localized one (9.6+).
  const fields: [string, string][] = [
    ['S', f.severity],
    ['V', f.severity],
    ['C', f.code],
    ['M', f.message],
  ];
  if (f.detail !== undefined) fields.push(['D', f.detail]);
  if (f.hint !== undefined) fields.push(['H', f.hint]);
  const values = fields.map(([, v]) => text(v));
  let body = 1; // final zero byte
  for (const v of values) body += 1 + v.length + 1;
  const out = Buffer.allocUnsafe(5 + body);
  out[0] = type;
  out.writeInt32BE(4 + body, 1);
  let pos = 5;
  for (let i = 0; i < fields.length; i++) {
    out[pos++] = fields[i]![0].charCodeAt(0);
    pos += values[i]!.copy(out, pos);
    out[pos++] = 0;
  }
  out[pos] = 0;
  return out;
}

/** https://www.postgresql.org/docs/current/protocol-message-formats.html#PROTOCOL-MESSAGE-FORMATS-ERRORRESPONSE */
export function errorResponse(fields: ErrorFields): Buffer {
  return fieldList(Backend.ErrorResponse, fields);
}

/** https://www.postgresql.org/docs/current/protocol-message-formats.html#PROTOCOL-MESSAGE-FORMATS-NOTICERESPONSE */
export function noticeResponse(fields: NoticeFields): Buffer {
  return fieldList(Backend.NoticeResponse, fields);
}

/** https://www.postgresql.org/docs/current/protocol-message-formats.html#PROTOCOL-MESSAGE-FORMATS-AUTHENTICATIONCLEARTEXTPASSWORD */
export function authenticationCleartextPassword(): Buffer {
  return build(Backend.Authentication, [AuthenticationCode.CleartextPassword]);
}

/** https://www.postgresql.org/docs/current/protocol-message-formats.html#PROTOCOL-MESSAGE-FORMATS-AUTHENTICATIONOK */
export function authenticationOk(): Buffer {
  return build(Backend.Authentication, [AuthenticationCode.Ok]);
}

/** https://www.postgresql.org/docs/current/protocol-message-formats.html#PROTOCOL-MESSAGE-FORMATS-BACKENDKEYDATA (protocol 3.0: 4-byte secret key) */
export function backendKeyData(processId: number, secretKey: number): Buffer {
  return build(Backend.BackendKeyData, [processId, secretKey]);
}

/** https://www.postgresql.org/docs/current/protocol-message-formats.html#PROTOCOL-MESSAGE-FORMATS-READYFORQUERY */
export function readyForQuery(status: TransactionStatus | number): Buffer {
  const out = Buffer.allocUnsafe(6);
  out[0] = Backend.ReadyForQuery;
  out.writeInt32BE(5, 1);
  // 'I' idle, 'T' in a transaction block, 'E' in a failed transaction block;
  // a number is the status byte as read from an upstream ReadyForQuery.
  out[5] = typeof status === 'number' ? status : status.charCodeAt(0);
  return out;
}

/** https://www.postgresql.org/docs/current/protocol-message-formats.html#PROTOCOL-MESSAGE-FORMATS-PARAMETERSTATUS */
export function parameterStatus(name: string, value: string): Buffer {
  return build(Backend.ParameterStatus, [text(name), text(value)]);
}

/**
 * https://www.postgresql.org/docs/current/protocol-message-formats.html#PROTOCOL-MESSAGE-FORMATS-NEGOTIATEPROTOCOLVERSION
 * Int32 newest minor version supported for the requested major, Int32
 * count of protocol options (`_pq_.*`) not recognized, then their names.
 */
export function negotiateProtocolVersion(newestMinor: number, unrecognized: readonly string[]): Buffer {
  return build(Backend.NegotiateProtocolVersion, [newestMinor, unrecognized.length, ...unrecognized.map(text)]);
}

/** https://www.postgresql.org/docs/current/protocol-message-formats.html#PROTOCOL-MESSAGE-FORMATS-CANCELREQUEST (untyped, 16 bytes) */
export function cancelRequest(processId: number, secretKey: number): Buffer {
  const out = Buffer.allocUnsafe(16);
  out.writeInt32BE(16, 0);
  out.writeInt32BE(CANCEL_REQUEST_CODE, 4);
  out.writeUInt32BE(processId >>> 0, 8);
  out.writeUInt32BE(secretKey >>> 0, 12);
  return out;
}

/** https://www.postgresql.org/docs/current/protocol-message-formats.html#PROTOCOL-MESSAGE-FORMATS-SSLREQUEST (untyped, 8 bytes) */
export function sslRequest(): Buffer {
  const out = Buffer.allocUnsafe(8);
  out.writeInt32BE(8, 0);
  out.writeInt32BE(SSL_REQUEST_CODE, 4);
  return out;
}

/**
 * https://www.postgresql.org/docs/current/protocol-message-formats.html#PROTOCOL-MESSAGE-FORMATS-STARTUPMESSAGE
 * For Sluice's own upstream connections. Parameter order is the map's order.
 */
export function startupMessage(params: ReadonlyMap<string, string> | Readonly<Record<string, string>>, minorVersion = 0): Buffer {
  const entries = params instanceof Map ? [...params] : Object.entries(params);
  const parts: Buffer[] = [];
  for (const [name, value] of entries) {
    const n = text(name);
    if (n.length === 0) throw new RangeError('startup parameter names must not be empty');
    parts.push(n, text(value));
  }
  let size = 4 + 4 + 1;
  for (const p of parts) size += p.length + 1;
  if (size > MAX_STARTUP_PACKET_LENGTH) throw new RangeError(`StartupMessage of ${size} bytes exceeds ${MAX_STARTUP_PACKET_LENGTH}`);
  const out = Buffer.allocUnsafe(size);
  out.writeInt32BE(size, 0);
  out.writeInt32BE(PROTOCOL_3_0 | (minorVersion & 0xffff), 4);
  let pos = 8;
  for (const p of parts) {
    pos += p.copy(out, pos);
    out[pos++] = 0;
  }
  out[pos] = 0;
  return out;
}

/** https://www.postgresql.org/docs/current/protocol-message-formats.html#PROTOCOL-MESSAGE-FORMATS-PASSWORDMESSAGE */
export function passwordMessage(password: string): Buffer {
  return build(Frontend.PasswordMessage, [text(password)]);
}

/** https://www.postgresql.org/docs/current/protocol-message-formats.html#PROTOCOL-MESSAGE-FORMATS-QUERY */
export function queryMessage(sql: string): Buffer {
  return build(Frontend.Query, [text(sql)]);
}

/**
 * https://www.postgresql.org/docs/current/protocol-message-formats.html#PROTOCOL-MESSAGE-FORMATS-PARSE
 * Of statement `name`, with no parameter types (an Int16 count of 0).
 */
export function parseMessage(name: string, sql: string): Buffer {
  const parts = [text(name), text(sql)];
  const out = typed(Frontend.Parse, parts, bodySize(parts) + 2);
  out.writeInt16BE(0, out.length - 2);
  return out;
}

/** https://www.postgresql.org/docs/current/protocol-message-formats.html#PROTOCOL-MESSAGE-FORMATS-TERMINATE */
export function terminate(): Buffer {
  return build(Frontend.Terminate, []);
}

/**
 * Builders for the replies Sluice itself sends to a Redis client (the
 * gateway's answers to AUTH/HELLO, refusals, errors). Replies from the
 * server are never rebuilt: they are forwarded as their original bytes.
 *
 * Spec: https://github.com/redis/redis-specifications/blob/master/protocol/RESP3.md
 * `proto` is the protocol the client negotiated with HELLO (2 unless it said 3).
 */

export type RespVersion = 2 | 3;

const CRLF = '\r\n';

/** `+OK\r\n` */
export const OK: Buffer = Buffer.from('+OK\r\n');
/** `+QUEUED\r\n` (a command accepted inside MULTI) */
export const QUEUED: Buffer = Buffer.from('+QUEUED\r\n');
/** `+PONG\r\n` */
export const PONG: Buffer = Buffer.from('+PONG\r\n');
/** RESP2 null bulk string `$-1\r\n` */
export const NULL_BULK_RESP2: Buffer = Buffer.from('$-1\r\n');
/** RESP2 null array `*-1\r\n` */
export const NULL_ARRAY_RESP2: Buffer = Buffer.from('*-1\r\n');
/** RESP3 null `_\r\n` */
export const NULL_RESP3: Buffer = Buffer.from('_\r\n');
/** Empty array `*0\r\n` */
export const EMPTY_ARRAY: Buffer = Buffer.from('*0\r\n');

/** A simple string can carry no CR or LF; anything else is replaced by a space. */
function oneLine(s: string): string {
  return s.replace(/[\r\n]+/g, ' ');
}

/** `+<s>\r\n` (RESP "Simple strings"). CR/LF in `s` become spaces. */
export function simpleString(s: string): Buffer {
  return Buffer.from(`+${oneLine(s)}${CRLF}`);
}

/**
 * `-<code> <message>\r\n` (RESP "Simple errors"): `-ERR ...` by default.
 * The code is the first word clients match on (`ERR`, `NOPERM`,
 * `WRONGPASS`, `NOAUTH`...). CR/LF in `msg` become spaces: a simple error
 * is one line.
 */
export function error(msg: string, code: string = 'ERR'): Buffer {
  if (!/^[A-Z][A-Z0-9_]*$/.test(code)) throw new RangeError('error code must be an upper-case word');
  return Buffer.from(`-${code} ${oneLine(msg)}${CRLF}`);
}

/** `:<n>\r\n` (RESP "Integers"). */
export function integer(n: number | bigint): Buffer {
  if (typeof n === 'number' && !Number.isSafeInteger(n)) throw new RangeError('integer reply must be a safe integer');
  return Buffer.from(`:${n.toString()}${CRLF}`);
}

/** The null reply: `$-1\r\n` in RESP2, `_\r\n` in RESP3. */
export function nullReply(proto: RespVersion): Buffer {
  return proto === 3 ? NULL_RESP3 : NULL_BULK_RESP2;
}

/** `$<len>\r\n<bytes>\r\n` (RESP "Bulk strings"); null -> nullReply. */
export function bulk(value: Buffer | string | null, proto: RespVersion): Buffer {
  if (value === null) return nullReply(proto);
  const body = typeof value === 'string' ? Buffer.from(value) : value;
  const head = `$${body.length}${CRLF}`;
  const out = Buffer.allocUnsafe(Buffer.byteLength(head) + body.length + 2);
  let at = out.write(head, 'latin1');
  at += body.copy(out, at);
  out.write(CRLF, at, 'latin1');
  return out;
}

/** `*<n>\r\n` followed by `items` (already-encoded replies); null -> `*-1` / `_`. */
export function array(items: readonly Buffer[] | null, proto: RespVersion): Buffer {
  if (items === null) return proto === 3 ? NULL_RESP3 : NULL_ARRAY_RESP2;
  return Buffer.concat([Buffer.from(`*${items.length}${CRLF}`), ...items]);
}

/**
 * `%<n>\r\n` then key, value, key, value... (RESP3 "Map type"). RESP2 has no
 * map: it gets the flat array `*<2n>` Redis itself sends (e.g. HELLO 2, HGETALL).
 * Keys and values are already-encoded replies.
 */
export function map(entries: ReadonlyArray<readonly [Buffer, Buffer]>, proto: RespVersion): Buffer {
  const parts: Buffer[] = [
    Buffer.from(proto === 3 ? `%${entries.length}${CRLF}` : `*${entries.length * 2}${CRLF}`),
  ];
  for (const [k, v] of entries) parts.push(k, v);
  return Buffer.concat(parts);
}

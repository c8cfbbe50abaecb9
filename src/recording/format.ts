/**
 * The session recording file format, version 3 (docs/recording-format.md is
 * the normative description; keep the two in step).
 *
 *   file    = header record* footer trailer
 *   header  = "SLUICEREC\n" u16 version u32 jsonLength json u32 crc
 *   record  = u8 type u8 direction u32 seq u64 micros u32 length bytes u32 crc
 *   trailer = "SLUICEND" u32 footerFrameLength
 *
 * All integers big-endian (network order, like the protocols recorded).
 * Each CRC is CRC-32 (IEEE, zlib's) over every preceding byte of its own
 * header or record.
 *
 * What checkpoints and the footer sign (their `chain`/`finalChain`):
 * - versions 2 and 3: the running digest SHA-256(CHAIN_DOMAIN_V2 || header
 *   || every record before the signed one), one hash over the file's bytes
 *   in order, so the writer hashes a whole flush in one update;
 * - version 1 (still read and verified): a chain, chain0 = SHA-256(
 *   CHAIN_DOMAIN || header), chain_n = SHA-256(chain_{n-1} || record n-1),
 *   one SHA-256 per record.
 * Either binds the signature to every byte before it, in order. How the
 * signature is laid out (one per record up to version 2, one per batch of
 * records across recordings from version 3) is signed-records.ts's.
 */
import { createHash, type Hash } from 'node:crypto';
import * as zlib from 'node:zlib';

export const MAGIC = Buffer.from('SLUICEREC\n', 'latin1');
export const TRAILER_MAGIC = Buffer.from('SLUICEND', 'latin1');
/** The version the writer writes. */
export const FORMAT_VERSION = 3;
/** Versions readers and verify accept. */
export const READABLE_VERSIONS: readonly number[] = [1, 2, 3];
export const FILE_EXTENSION = '.sluicerec';

/** Domain separation: a recording hash or signature can never be taken for another Sluice hash or signature. */
export const CHAIN_DOMAIN = Buffer.from('sluice-recording-v1', 'latin1');
export const CHAIN_DOMAIN_V2 = Buffer.from('sluice-recording-v2', 'latin1');

/** magic(10) version(2) jsonLength(4); then json, then crc(4). */
export const HEADER_PREFIX = MAGIC.length + 2 + 4;
/** type(1) direction(1) seq(4) micros(8) length(4). */
export const RECORD_PREFIX = 18;
export const CRC_SIZE = 4;
export const RECORD_OVERHEAD = RECORD_PREFIX + CRC_SIZE;
export const TRAILER_SIZE = TRAILER_MAGIC.length + 4;
/** A header's JSON larger than this is refused by readers (it is metadata, not data). */
export const MAX_HEADER_JSON = 1 << 20;

export const RecordType = {
  /** Bytes of the client-facing stream, one chunk as relayed. */
  data: 1,
  /** Signed {sessionId, seq, chain}: the chain before this record. */
  checkpoint: 2,
  /** The size cap was reached; nothing after this but the footer. */
  truncated: 3,
  /** Signed {sessionId, recordCount, finalChain, ...}; the last record. */
  footer: 4,
} as const;
export type RecordTypeName = keyof typeof RecordType;
export const RECORD_TYPE_NAMES: Readonly<Record<number, RecordTypeName>> = {
  1: 'data',
  2: 'checkpoint',
  3: 'truncated',
  4: 'footer',
};

/** 0: client -> gateway (what the client sent); 1: gateway -> client (what the client received). */
export type Direction = 'client' | 'server';
export const DIRECTION_CODE: Readonly<Record<Direction, number>> = { client: 0, server: 1 };

/** Session metadata the gateway knows at admission; goes into the header. */
export interface RecordingMeta {
  sessionId: string;
  target: string;
  protocol: 'postgres' | 'redis';
  subject: string;
  groups: string[];
  issuer: string;
  /** SHA-256 hex of the token's jti (or of the token): never the token. */
  tokenIdHash?: string;
  clientAddress?: string;
  /** ISO 8601; also picks the YYYY/MM/DD directory (UTC). */
  startedAt: string;
}

export interface RecordingHeader extends RecordingMeta {
  version: number;
  keyId: string;
  /** process.hrtime.bigint() at open, ns, as a decimal string: the origin of every record's micros. */
  monotonicStart: string;
}

export interface CheckpointBody {
  sessionId: string;
  seq: number;
  /** Hex chain hash before this checkpoint record (over records 0..seq-1). */
  chain: string;
  /** Micros since start, for the reader's convenience. */
  micros: number;
}

export interface FooterBody {
  sessionId: string;
  keyId: string;
  /** Records before the footer (= the footer's own seq). */
  recordCount: number;
  /**
   * The footer record's own micros (from version 3): the footer is not fed
   * to the digest it signs, so its record header is covered this way.
   */
  micros?: number;
  /** Hex chain hash over the header and every record before the footer. */
  finalChain: string;
  endedAt: string;
  closeReason: string;
  /** Data bytes recorded client -> gateway and gateway -> client. */
  bytesClientToGateway: number;
  bytesGatewayToClient: number;
  /** True when a `truncated` record precedes the footer. */
  truncated: boolean;
}

// --- CRC-32 -----------------------------------------------------------------

type Crc32 = (data: Uint8Array, value?: number) => number;

/**
 * Slicing-by-16 tables: CRC_T[0] is the byte-wise table, CRC_T[k][n] the
 * CRC of byte n followed by k zero bytes, so sixteen bytes cost one 32-bit
 * XOR and sixteen independent lookups instead of sixteen dependent ones
 * (16 KiB of tables). Measured on the seal thread's records (an 18-byte
 * prefix and a short payload), per record: slicing-by-4 70 ns for the
 * prefix alone, 214 ns for a 162-byte record (a GET -P 16 reply: 16
 * values); slicing-by-16 35 and 160 ns, where zlib.crc32 with the view it
 * needs took 141 and 281 ns.
 */
const CRC_T: Uint32Array[] = ((): Uint32Array[] => {
  const t = Array.from({ length: 16 }, () => new Uint32Array(256));
  const t0 = t[0]!;
  for (let n = 0; n < 256; n++) {
    let c = n;
    for (let k = 0; k < 8; k++) c = c & 1 ? 0xedb88320 ^ (c >>> 1) : c >>> 1;
    t0[n] = c >>> 0;
  }
  for (let n = 0; n < 256; n++) {
    let c = t0[n]!;
    for (let k = 1; k < 16; k++) {
      c = t0[c & 0xff]! ^ (c >>> 8);
      t[k]![n] = c >>> 0;
    }
  }
  return t;
})();
const [T0, T1, T2, T3, T4, T5, T6, T7, T8, T9, T10, T11, T12, T13, T14, T15] = CRC_T as [
  Uint32Array, Uint32Array, Uint32Array, Uint32Array, Uint32Array, Uint32Array, Uint32Array, Uint32Array,
  Uint32Array, Uint32Array, Uint32Array, Uint32Array, Uint32Array, Uint32Array, Uint32Array, Uint32Array,
];

/**
 * CRC-32 of buf[start, end), continuing from `value` (zlib's convention).
 * For a record's prefix and short payload: the table steps in place cost
 * less than the view and the native call zlib.crc32 would need. The first
 * four bytes of each step are folded into the running CRC; the other
 * twelve only index their tables.
 */
function crc32Range(buf: Uint8Array, start: number, end: number, value: number): number {
  let c = ~value;
  let i = start;
  for (; i + 16 <= end; i += 16) {
    c ^= buf[i]! | (buf[i + 1]! << 8) | (buf[i + 2]! << 16) | (buf[i + 3]! << 24);
    c =
      T15[c & 0xff]! ^ T14[(c >>> 8) & 0xff]! ^ T13[(c >>> 16) & 0xff]! ^ T12[c >>> 24]! ^
      T11[buf[i + 4]!]! ^ T10[buf[i + 5]!]! ^ T9[buf[i + 6]!]! ^ T8[buf[i + 7]!]! ^
      T7[buf[i + 8]!]! ^ T6[buf[i + 9]!]! ^ T5[buf[i + 10]!]! ^ T4[buf[i + 11]!]! ^
      T3[buf[i + 12]!]! ^ T2[buf[i + 13]!]! ^ T1[buf[i + 14]!]! ^ T0[buf[i + 15]!]!;
  }
  for (; i < end; i++) c = T0[(c ^ buf[i]!) & 0xff]! ^ (c >>> 8);
  return ~c >>> 0;
}

/** CRC-32 (IEEE 802.3, reflected 0xEDB88320), zlib-compatible, by the table loop: for Node < 20.15 without zlib.crc32. */
export const crc32Table: Crc32 = (data, value = 0) => crc32Range(data, 0, data.length, value);
const nativeCrc32 = (zlib as { crc32?: Crc32 }).crc32;
export const crc32: Crc32 = typeof nativeCrc32 === 'function' ? nativeCrc32 : crc32Table;

// --- header -----------------------------------------------------------------

export function encodeHeader(header: RecordingHeader): Buffer {
  const json = Buffer.from(JSON.stringify(header), 'utf8');
  const buf = Buffer.allocUnsafe(HEADER_PREFIX + json.length + CRC_SIZE);
  MAGIC.copy(buf, 0);
  buf.writeUInt16BE(FORMAT_VERSION, MAGIC.length);
  buf.writeUInt32BE(json.length, MAGIC.length + 2);
  json.copy(buf, HEADER_PREFIX);
  buf.writeUInt32BE(crc32(buf.subarray(0, HEADER_PREFIX + json.length)), HEADER_PREFIX + json.length);
  return buf;
}

/**
 * What checkpoints and the footer sign: fed the header, then every record in
 * file order; `value()` is the hex digest over everything fed so far.
 */
export interface RecordDigest {
  /** Feeds bytes that follow what was fed before; any split of the same bytes gives the same values (versions 2 and 3). */
  update(bytes: Uint8Array): void;
  value(): string;
}

/** Versions 2 and 3: one running SHA-256 over the domain, the header and the records. */
class RunningDigest implements RecordDigest {
  readonly #hash: Hash;
  constructor(headerBytes: Uint8Array) {
    this.#hash = createHash('sha256').update(CHAIN_DOMAIN_V2).update(headerBytes);
  }
  update(bytes: Uint8Array): void {
    this.#hash.update(bytes);
  }
  value(): string {
    return this.#hash.copy().digest('hex');
  }
}

/** Version 1: a SHA-256 chain, one link per record; `update` must be given exactly one whole record. */
class ChainDigest implements RecordDigest {
  #chain: Buffer;
  constructor(headerBytes: Uint8Array) {
    this.#chain = createHash('sha256').update(CHAIN_DOMAIN).update(headerBytes).digest();
  }
  update(record: Uint8Array): void {
    this.#chain = createHash('sha256').update(this.#chain).update(record).digest();
  }
  value(): string {
    return this.#chain.toString('hex');
  }
}

/** The digest a file of `version` signs, seeded with its header (CRC included). */
export function recordDigest(version: number, headerBytes: Uint8Array): RecordDigest {
  return version === 1 ? new ChainDigest(headerBytes) : new RunningDigest(headerBytes);
}

// --- records ----------------------------------------------------------------

/** Big-endian u32 at `at`, by plain byte stores: writeUInt32BE's range checks cost more than the store (the caller sized `out`). */
function putU32(out: Uint8Array, value: number, at: number): void {
  out[at] = value >>> 24;
  out[at + 1] = value >>> 16;
  out[at + 2] = value >>> 8;
  out[at + 3] = value;
}

/**
 * Payloads up to this size get their CRC from the JS table loop: for the
 * short records of an unpipelined session (a command, a `+OK`) and the
 * replies of a pipelined one, the native zlib call costs more to enter
 * than the loop costs to run. Measured here over whole records, the loop
 * took 160 ns for 162 bytes and 562 for 610, zlib 281 and 422: they cross
 * between the two, near 400 by a straight line through both. 256 stays
 * well short of the crossing, where the loop is clearly the faster.
 */
const TABLE_CRC_MAX = 256;

/**
 * Payloads from this size are copied into the record with Buffer#fill, not
 * TypedArray#set. The writer's slabs are SharedArrayBuffers (seal-thread.ts),
 * and V8 copies into one with relaxed atomic stores, a word at a time only
 * when source and destination have the same alignment mod 8, else a byte at
 * a time; a payload lands 18 bytes after a record of any length, so mostly
 * the latter. Measured on this project's host (Node 20): set 3.3 GB/s into
 * a SharedArrayBuffer against 45 GB/s into ordinary memory; fill, whose
 * C++ side is one memcpy when the range is the value's length, costs a
 * fixed ~65 ns and then runs at memcpy speed. The two cross at about 180
 * bytes: below, set; a 64 KiB chunk, 20 µs with set, takes 1.5 µs with fill.
 */
const FILL_COPY_MIN = 192;

/**
 * Writes one record into `out` at `at` without its CRC: the prefix and the
 * payload, with the CRC's four bytes left for sealRecords to fill. Returns
 * the offset after the record (its CRC included). The recording writer
 * stages records this way on the event loop; the seal thread computes the
 * CRCs (seal-thread.ts).
 */
export function stageRecord(
  out: Buffer,
  at: number,
  type: number,
  direction: number,
  seq: number,
  micros: number,
  payload: Uint8Array,
): number {
  if (at + RECORD_OVERHEAD + payload.length > out.length) throw new RangeError('record does not fit in its buffer');
  out[at] = type;
  out[at + 1] = direction;
  putU32(out, seq >>> 0, at + 2);
  // micros < 2^53: two halves, no BigInt on the hot path.
  putU32(out, Math.floor(micros / 0x1_0000_0000), at + 6);
  putU32(out, micros >>> 0, at + 10);
  putU32(out, payload.length, at + 14);
  const from = at + RECORD_PREFIX;
  if (payload.length >= FILL_COPY_MIN) out.fill(payload, from, from + payload.length);
  else out.set(payload, from);
  return at + RECORD_OVERHEAD + payload.length;
}

/**
 * Puts the CRC of the record out[at, end) (prefix and payload) at `end`:
 * a short record in one pass of the table loop, a long payload by zlib.
 */
function sealRecord(out: Uint8Array, at: number, end: number): void {
  const crc =
    end - at - RECORD_PREFIX <= TABLE_CRC_MAX
      ? crc32Range(out, at, end, 0)
      : crc32(out.subarray(at + RECORD_PREFIX, end), crc32Range(out, at, at + RECORD_PREFIX, 0));
  putU32(out, crc, end);
}

/**
 * Fills in the CRC of every record staged (stageRecord) in buf[start, end),
 * which must hold whole records back to back. Returns the number of records.
 */
export function sealRecords(buf: Uint8Array, start: number, end: number): number {
  let at = start;
  let n = 0;
  while (at < end) {
    const length = ((buf[at + 14]! << 24) | (buf[at + 15]! << 16) | (buf[at + 16]! << 8) | buf[at + 17]!) >>> 0;
    const payloadEnd = at + RECORD_PREFIX + length;
    if (payloadEnd + CRC_SIZE > end) throw new RangeError('sealRecords: a record runs past the end of the run');
    sealRecord(buf, at, payloadEnd);
    at = payloadEnd + CRC_SIZE;
    n++;
  }
  return n;
}

export function encodeRecord(type: number, direction: number, seq: number, micros: number, payload: Uint8Array): Buffer {
  const buf = Buffer.allocUnsafe(RECORD_OVERHEAD + payload.length);
  sealRecord(buf, 0, stageRecord(buf, 0, type, direction, seq, micros, payload) - CRC_SIZE);
  return buf;
}

export function encodeTrailer(footerFrameLength: number): Buffer {
  const buf = Buffer.allocUnsafe(TRAILER_SIZE);
  TRAILER_MAGIC.copy(buf, 0);
  buf.writeUInt32BE(footerFrameLength, TRAILER_MAGIC.length);
  return buf;
}

/** `<stateDir>/recordings/YYYY/MM/DD` for a start time (UTC), relative parts only. */
export function datePath(startedAt: string): [string, string, string] {
  const d = new Date(startedAt);
  const ms = Number.isNaN(d.getTime()) ? Date.now() : d.getTime();
  const u = new Date(ms);
  return [
    String(u.getUTCFullYear()).padStart(4, '0'),
    String(u.getUTCMonth() + 1).padStart(2, '0'),
    String(u.getUTCDate()).padStart(2, '0'),
  ];
}

/** Session ids become file names: only these characters, so an id can never walk out of the directory. */
export const SESSION_ID_PATTERN = /^[A-Za-z0-9_.-]{1,128}$/;

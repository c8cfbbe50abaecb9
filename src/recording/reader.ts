/**
 * Reads recordings: a frame scanner shared with verify.ts, and
 * readRecording(), which yields the records in order and stops at the last
 * complete one (a partial trailing record after a crash, or the first record
 * whose CRC or sequence number is wrong). It checks framing only; signatures
 * and the signed digest are verify.ts's job. Reads format versions 1 to 3
 * (they frame records alike).
 */
import { constants } from 'node:fs';
import { open, type FileHandle } from 'node:fs/promises';
import { ErrorCodes, SluiceError } from '../errors.js';
import {
  CRC_SIZE,
  HEADER_PREFIX,
  MAGIC,
  MAX_HEADER_JSON,
  RECORD_OVERHEAD,
  RECORD_PREFIX,
  READABLE_VERSIONS,
  RECORD_TYPE_NAMES,
  TRAILER_MAGIC,
  TRAILER_SIZE,
  crc32,
  type CheckpointBody,
  type Direction,
  type FooterBody,
  type RecordTypeName,
  type RecordingHeader,
} from './format.js';
import { parseSignedPayload } from './signed-records.js';

/** A record longer than this is not believed (the writer's chunks are far smaller). */
export const MAX_RECORD_PAYLOAD = 256 * 1024 * 1024;
const WINDOW = 1024 * 1024;

/** Sequential reads through a window; positions only move forward. */
export class ByteSource {
  private win: Buffer = Buffer.alloc(0);
  private winStart = 0;

  constructor(
    private readonly fh: FileHandle,
    readonly size: number,
  ) {}

  /** The bytes [pos, pos+n), or undefined when the file ends first. */
  async get(pos: number, n: number): Promise<Buffer | undefined> {
    if (pos + n > this.size) return undefined;
    if (pos >= this.winStart && pos + n <= this.winStart + this.win.length) {
      return this.win.subarray(pos - this.winStart, pos - this.winStart + n);
    }
    const len = Math.min(this.size - pos, Math.max(n, WINDOW));
    const buf = Buffer.allocUnsafe(len);
    let got = 0;
    while (got < len) {
      const { bytesRead } = await this.fh.read(buf, got, len - got, pos + got);
      if (bytesRead === 0) break;
      got += bytesRead;
    }
    if (got < n) return undefined;
    this.win = buf.subarray(0, got);
    this.winStart = pos;
    return this.win.subarray(0, n);
  }
}

export type HeaderResult =
  | { ok: true; header: RecordingHeader; version: number; bytes: Buffer; end: number }
  | { ok: false; offset: number; reason: string };

export async function parseHeader(src: ByteSource): Promise<HeaderResult> {
  const prefix = await src.get(0, HEADER_PREFIX);
  if (!prefix || !prefix.subarray(0, MAGIC.length).equals(MAGIC)) {
    return { ok: false, offset: 0, reason: 'not a Sluice recording (bad magic)' };
  }
  const version = prefix.readUInt16BE(MAGIC.length);
  if (!READABLE_VERSIONS.includes(version)) return { ok: false, offset: MAGIC.length, reason: `unknown format version ${version}` };
  const n = prefix.readUInt32BE(MAGIC.length + 2);
  if (n > MAX_HEADER_JSON) return { ok: false, offset: MAGIC.length + 2, reason: `header length ${n} is not believable` };
  const all = await src.get(0, HEADER_PREFIX + n + CRC_SIZE);
  if (!all) return { ok: false, offset: 0, reason: 'the file ends inside the header' };
  const bytes = Buffer.from(all);
  if (crc32(bytes.subarray(0, HEADER_PREFIX + n)) !== bytes.readUInt32BE(HEADER_PREFIX + n)) {
    return { ok: false, offset: 0, reason: 'header CRC mismatch' };
  }
  let header: RecordingHeader;
  try {
    header = JSON.parse(bytes.subarray(HEADER_PREFIX, HEADER_PREFIX + n).toString('utf8')) as RecordingHeader;
  } catch {
    return { ok: false, offset: HEADER_PREFIX, reason: 'header JSON does not parse' };
  }
  if (!header || typeof header.sessionId !== 'string' || typeof header.keyId !== 'string') {
    return { ok: false, offset: HEADER_PREFIX, reason: 'header lacks sessionId or keyId' };
  }
  const wrong = wrongHeaderField(header);
  if (wrong !== undefined) return { ok: false, offset: HEADER_PREFIX, reason: `header field ${wrong} is not what the gateway writes` };
  return { ok: true, header, version, bytes, end: bytes.length };
}

/**
 * The first header field whose type is not what the writer gives it, if
 * any. A CRC proves no more than that the header was written whole: a
 * crafted file could carry anything, and the header's fields reach the
 * sessions index (recover.ts), transcripts and the API.
 */
function wrongHeaderField(h: RecordingHeader): string | undefined {
  const strings = ['target', 'subject', 'issuer', 'startedAt', 'monotonicStart'] as const;
  for (const k of strings) if (typeof h[k] !== 'string') return k;
  if (h.protocol !== 'postgres' && h.protocol !== 'redis') return 'protocol';
  if (!Array.isArray(h.groups) || !h.groups.every((g) => typeof g === 'string')) return 'groups';
  if (h.tokenIdHash !== undefined && typeof h.tokenIdHash !== 'string') return 'tokenIdHash';
  if (h.clientAddress !== undefined && typeof h.clientAddress !== 'string') return 'clientAddress';
  if (Number.isNaN(Date.parse(h.startedAt))) return 'startedAt';
  return undefined;
}

export interface RawFrame {
  offset: number;
  type: number;
  direction: number;
  seq: number;
  micros: number;
  payload: Buffer;
  /** The whole record, CRC included: what the signed digest covers. */
  raw: Buffer;
  crcOk: boolean;
}

export type ScanItem =
  | { kind: 'frame'; frame: RawFrame }
  | { kind: 'trailer'; offset: number; footerLength: number }
  | { kind: 'partial'; offset: number; have: number }
  | { kind: 'garbage'; offset: number; reason: string };

/** Frames from `start` to the end of the file; stops after a partial or garbage item. */
export async function* scanFrames(src: ByteSource, start: number): AsyncGenerator<ScanItem> {
  let pos = start;
  while (pos < src.size) {
    const first = await src.get(pos, 1);
    if (first && first[0] === TRAILER_MAGIC[0]) {
      const t = await src.get(pos, TRAILER_SIZE);
      if (t && t.subarray(0, TRAILER_MAGIC.length).equals(TRAILER_MAGIC)) {
        yield { kind: 'trailer', offset: pos, footerLength: t.readUInt32BE(TRAILER_MAGIC.length) };
        pos += TRAILER_SIZE;
        continue;
      }
    }
    const prefix = await src.get(pos, RECORD_PREFIX);
    if (!prefix) {
      yield { kind: 'partial', offset: pos, have: src.size - pos };
      return;
    }
    const type = prefix[0]!;
    if (!RECORD_TYPE_NAMES[type]) {
      yield { kind: 'garbage', offset: pos, reason: `unknown record type ${type}` };
      return;
    }
    const len = prefix.readUInt32BE(14);
    if (len > MAX_RECORD_PAYLOAD) {
      yield { kind: 'garbage', offset: pos, reason: `record length ${len} is not believable` };
      return;
    }
    const raw = await src.get(pos, RECORD_OVERHEAD + len);
    if (!raw) {
      yield { kind: 'partial', offset: pos, have: src.size - pos };
      return;
    }
    const copy = Buffer.from(raw);
    const frame: RawFrame = {
      offset: pos,
      type,
      direction: copy[1]!,
      seq: copy.readUInt32BE(2),
      micros: copy.readUInt32BE(6) * 0x1_0000_0000 + copy.readUInt32BE(10),
      payload: copy.subarray(RECORD_PREFIX, RECORD_PREFIX + len),
      raw: copy,
      crcOk: crc32(copy.subarray(0, RECORD_PREFIX + len)) === copy.readUInt32BE(RECORD_PREFIX + len),
    };
    yield { kind: 'frame', frame };
    pos += copy.length;
  }
}

export interface RecordEntry {
  seq: number;
  type: RecordTypeName;
  /** For data records; control records carry 'client' (direction byte 0). */
  direction: Direction;
  /** Microseconds since the session started (monotonic). */
  micros: number;
  /** Data: the bytes as relayed. Control records: their payload. */
  bytes: Buffer;
  offset: number;
  /** Checkpoint and footer: the signed body; truncated: its JSON. */
  body?: CheckpointBody | FooterBody | Record<string, unknown>;
}

/** The truncated marker's JSON note is parsed up to this size (the writer's: `{"reason":"size cap","maxBytes":N}`). */
const MAX_TRUNCATED_NOTE = 4096;

/**
 * Opens a recording to read, and its size. Non-blocking, so a FIFO put in a
 * file's place cannot hang a reader (verify --all, the start-up recovery);
 * anything but a regular file is refused with ENOTREG.
 */
export async function openRecordingFile(path: string): Promise<{ fh: FileHandle; size: number }> {
  const fh = await open(path, constants.O_RDONLY | constants.O_NONBLOCK);
  try {
    const st = await fh.stat();
    if (!st.isFile()) throw Object.assign(new Error(`${path} is not a regular file`), { code: 'ENOTREG' });
    return { fh, size: st.size };
  } catch (err) {
    await fh.close();
    throw err;
  }
}

/**
 * A recording as an async iterable of its records. After iteration:
 * `complete` is true when a footer was read; `stopped` says where and why
 * reading stopped early (partial trailing record, bad CRC, sequence gap).
 */
export class RecordingReader implements AsyncIterable<RecordEntry> {
  header: RecordingHeader | undefined;
  complete = false;
  stopped: { offset: number; reason: string } | undefined;

  constructor(readonly path: string) {}

  async *[Symbol.asyncIterator](): AsyncIterator<RecordEntry> {
    let fh: FileHandle;
    let size: number;
    try {
      ({ fh, size } = await openRecordingFile(this.path));
    } catch (err) {
      throw new SluiceError(ErrorCodes.RECORDING_UNREADABLE, `cannot open recording ${this.path}: ${(err as NodeJS.ErrnoException).code ?? String(err)}`, { cause: err });
    }
    try {
      const src = new ByteSource(fh, size);
      const h = await parseHeader(src);
      if (!h.ok) throw new SluiceError(ErrorCodes.RECORDING_UNREADABLE, `recording ${this.path}: ${h.reason} at offset ${h.offset}`);
      this.header = h.header;
      let expect = 0;
      for await (const item of scanFrames(src, h.end)) {
        if (item.kind === 'trailer') break;
        if (item.kind !== 'frame') {
          this.stopped = { offset: item.offset, reason: item.kind === 'partial' ? `partial trailing record (${item.have} bytes)` : item.reason };
          break;
        }
        const f = item.frame;
        if (!f.crcOk) {
          this.stopped = { offset: f.offset, reason: `CRC mismatch in record ${expect}` };
          break;
        }
        if (f.seq !== expect) {
          this.stopped = { offset: f.offset, reason: `expected record ${expect}, found ${f.seq}` };
          break;
        }
        expect++;
        const type = RECORD_TYPE_NAMES[f.type]!;
        const entry: RecordEntry = {
          seq: f.seq,
          type,
          direction: f.direction === 1 ? 'server' : 'client',
          micros: f.micros,
          bytes: f.payload,
          offset: f.offset,
        };
        if (type === 'checkpoint' || type === 'footer') {
          const p = parseSignedPayload(h.version, f.payload);
          if (p) entry.body = p.body as CheckpointBody | FooterBody;
        } else if (type === 'truncated' && f.payload.length <= MAX_TRUNCATED_NOTE) {
          // The writer's note is a few dozen bytes; a longer one is not parsed (a crafted file could
          // make the API's transcript parse hundreds of MiB of JSON in the gateway).
          try {
            entry.body = JSON.parse(f.payload.toString('utf8')) as Record<string, unknown>;
          } catch {
            // A marker whose note does not parse is still a marker.
          }
        }
        yield entry;
        if (type === 'footer') {
          this.complete = true;
          break;
        }
      }
    } finally {
      await fh.close();
    }
  }

  /** The data bytes of one direction, concatenated (for --raw and tests). */
  async bytesOf(direction: Direction): Promise<Buffer> {
    const parts: Buffer[] = [];
    for await (const e of this) if (e.type === 'data' && e.direction === direction) parts.push(e.bytes);
    return Buffer.concat(parts);
  }
}

export function readRecording(path: string): RecordingReader {
  return new RecordingReader(path);
}

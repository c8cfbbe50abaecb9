/**
 * Verifies a recording: header CRC, every record's CRC, sequence numbers
 * (0, 1, 2, ... without gap or repeat), the digest over the header and the
 * records (format.ts: a running hash from version 2, a chain in version 1) at
 * every signed checkpoint and at the footer, the signatures (from version 3
 * with the inclusion proof each signed record carries, signed-records.ts),
 * the footer's record count
 * and session id, and the trailer. Names the first bad record.
 *
 * `ok` means nothing was found altered. `complete` means a signed footer
 * closes the file. A recording cut short by a crash is ok but incomplete:
 * everything up to its last signed checkpoint (`verifiedThroughSeq`) is
 * proven; records after it are only CRC- and sequence-checked.
 */
import type { KeyObject } from 'node:crypto';
import {
  RecordType,
  TRAILER_MAGIC,
  TRAILER_SIZE,
  encodeTrailer,
  recordDigest,
  type CheckpointBody,
  type FooterBody,
  type RecordingHeader,
} from './format.js';
import { ByteSource, openRecordingFile, parseHeader, scanFrames } from './reader.js';
import { BATCH_SIGNED_VERSION, CHECKPOINT_SIG_DOMAIN, FOOTER_SIG_DOMAIN, parseSignedPayload, verifySignedPayload } from './signed-records.js';

export interface VerifyResult {
  ok: boolean;
  complete: boolean;
  /** Records read and found good (the footer not counted). */
  records: number;
  firstBad?: { seq?: number; offset: number; reason: string };
  header?: RecordingHeader;
  footer?: FooterBody;
  /** The highest seq covered by a valid signature (checkpoint or footer); -1 if none. */
  verifiedThroughSeq: number;
  /** A crash left part of a record at the end (offset, bytes). */
  partialTail?: { offset: number; bytes: number };
  /** The header's key id, when no known recording key has it (only reached without a signed record). */
  unknownKey?: string;
}

export type PublicKeys = ReadonlyMap<string, KeyObject>;

export interface VerifyOptions {
  /**
   * The session this file is verified as (`sluice verify ID`, the API, the
   * index's row): a file whose header names another session fails, even
   * when it is a whole, signed recording of that other session. Without
   * this, a complete recording copied over a deleted one's path would pass
   * under the deleted session's id.
   */
  sessionId?: string;
}

export async function verifyRecording(path: string, publicKeys: PublicKeys, opts: VerifyOptions = {}): Promise<VerifyResult> {
  let fh;
  let size: number;
  try {
    ({ fh, size } = await openRecordingFile(path));
  } catch (err) {
    return {
      ok: false,
      complete: false,
      records: 0,
      verifiedThroughSeq: -1,
      firstBad: { offset: 0, reason: (err as NodeJS.ErrnoException).code === 'ENOTREG' ? 'not a regular file' : `cannot open: ${(err as NodeJS.ErrnoException).code ?? String(err)}` },
    };
  }
  try {
    return await verifyOpen(new ByteSource(fh, size), publicKeys, opts.sessionId);
  } finally {
    await fh.close();
  }
}

async function verifyOpen(src: ByteSource, keys: PublicKeys, sessionId: string | undefined): Promise<VerifyResult> {
  const res: VerifyResult = { ok: true, complete: false, records: 0, verifiedThroughSeq: -1 };
  const bad = (offset: number, reason: string, seq?: number): VerifyResult => {
    res.ok = false;
    res.complete = false;
    res.firstBad = seq === undefined ? { offset, reason } : { seq, offset, reason };
    return res;
  };

  const h = await parseHeader(src);
  if (!h.ok) return bad(h.offset, h.reason);
  const header = h.header;
  res.header = header;
  if (sessionId !== undefined && header.sessionId !== sessionId) {
    return bad(0, `the file is the recording of session ${header.sessionId}, not of ${sessionId}: swapped`);
  }
  const key = keys.get(header.keyId);
  const digest = recordDigest(h.version, h.bytes);
  let expect = 0;
  let lastSigned = -1;
  let footerFrame: { offset: number; length: number } | undefined;
  let truncatedSeen = false;

  const checkSigned = (domain: Buffer, payload: Buffer, offset: number, seq: number, what: string) => {
    const p = parseSignedPayload(h.version, payload);
    if (!p) return { err: bad(offset, `${what} payload is malformed`, seq) };
    if (!key) return { err: bad(offset, `${what} is signed with key ${header.keyId}, which is not among the known recording keys`, seq) };
    if (!verifySignedPayload(domain, p, key)) return { err: bad(offset, `${what} signature does not verify`, seq) };
    return { body: p.body };
  };

  for await (const item of scanFrames(src, h.end)) {
    if (item.kind === 'partial') {
      if (footerFrame) {
        // The footer and its trailer go out in one write: a write cut short (a full disk, a power
        // loss before the fsync) can leave the signed footer and part of its trailer. That file is
        // incomplete, like one cut before its footer; anything else after the footer was added.
        const rest = await src.get(item.offset, item.have);
        if (rest !== undefined && isTrailerPrefix(rest, footerFrame.length)) {
          res.partialTail = { offset: item.offset, bytes: item.have };
          break;
        }
        return bad(item.offset, 'bytes after the footer');
      }
      // A crash leaves a partial record only at the end of a file that has
      // no trailer. With a trailer present, a record running past the end
      // means its length field was altered.
      const tail = src.size >= TRAILER_SIZE ? await src.get(src.size - TRAILER_SIZE, TRAILER_MAGIC.length) : undefined;
      if (tail?.equals(TRAILER_MAGIC)) {
        return bad(item.offset, 'record runs past the end of a closed recording: its length field was altered', expect);
      }
      res.partialTail = { offset: item.offset, bytes: item.have };
      break;
    }
    if (item.kind === 'garbage') return bad(item.offset, item.reason, footerFrame ? undefined : expect);
    if (item.kind === 'trailer') {
      if (!footerFrame) return bad(item.offset, 'trailer without a footer');
      if (item.footerLength !== footerFrame.length) return bad(item.offset, 'trailer does not match the footer');
      if (item.offset + TRAILER_SIZE !== src.size) return bad(item.offset + TRAILER_SIZE, 'bytes after the trailer');
      res.complete = true;
      continue;
    }
    const f = item.frame;
    if (footerFrame) return bad(f.offset, 'record after the footer', f.seq);
    if (!f.crcOk) return bad(f.offset, 'CRC mismatch: the record was altered', expect);
    if (f.seq !== expect) {
      const why =
        f.seq < expect
          ? `expected seq ${expect}, found ${f.seq}: a record is duplicated or out of order`
          : `expected seq ${expect}, found ${f.seq}: records are missing or out of order`;
      return bad(f.offset, why, expect);
    }
    if (truncatedSeen && f.type !== RecordType.footer) return bad(f.offset, 'record after the truncated marker', f.seq);

    // Control records carry direction 0 (every writer wrote it so); the signed ones are checked
    // here, since the footer is not part of the digest that would catch an edit.
    if ((f.type === RecordType.checkpoint || f.type === RecordType.footer) && f.direction !== 0) {
      return bad(f.offset, `${f.type === RecordType.footer ? 'footer' : 'checkpoint'} record has direction ${f.direction}, control records 0`, f.seq);
    }
    if (f.type === RecordType.checkpoint) {
      const r = checkSigned(CHECKPOINT_SIG_DOMAIN, f.payload, f.offset, f.seq, 'checkpoint');
      if (r.err) return r.err;
      const body = r.body as CheckpointBody;
      if (body.sessionId !== header.sessionId) {
        return bad(f.offset, `checkpoint belongs to session ${body.sessionId}, the header to ${header.sessionId}: spliced or swapped`, f.seq);
      }
      if (body.seq !== f.seq) return bad(f.offset, `checkpoint claims seq ${body.seq}`, f.seq);
      if (body.micros !== f.micros) return bad(f.offset, `checkpoint claims ${body.micros} µs, its record ${f.micros}`, f.seq);
      if (body.chain !== digest.value()) {
        return bad(f.offset, `chain mismatch at checkpoint: the header or a record after seq ${lastSigned} was altered, removed or inserted`, f.seq);
      }
      lastSigned = f.seq;
    } else if (f.type === RecordType.footer) {
      const r = checkSigned(FOOTER_SIG_DOMAIN, f.payload, f.offset, f.seq, 'footer');
      if (r.err) return r.err;
      const body = r.body as FooterBody;
      if (body.sessionId !== header.sessionId) {
        return bad(f.offset, `footer belongs to session ${body.sessionId}, the header to ${header.sessionId}: spliced or swapped`, f.seq);
      }
      if (body.keyId !== header.keyId) return bad(f.offset, `footer key ${body.keyId} differs from the header's ${header.keyId}`, f.seq);
      if (body.recordCount !== f.seq) return bad(f.offset, `footer counts ${body.recordCount} records, the file has ${f.seq}`, f.seq);
      // From version 3 the body holds the footer record's time; before, the footer's record header was unsigned.
      if (h.version >= BATCH_SIGNED_VERSION && body.micros !== f.micros) return bad(f.offset, `footer claims ${String(body.micros)} µs, its record ${f.micros}`, f.seq);
      if (body.finalChain !== digest.value()) {
        return bad(f.offset, `chain mismatch at footer: the header or a record after seq ${lastSigned} was altered, removed or inserted`, f.seq);
      }
      res.footer = body;
      lastSigned = f.seq;
      footerFrame = { offset: f.offset, length: f.raw.length };
      res.verifiedThroughSeq = lastSigned;
      continue;
    } else if (f.type === RecordType.truncated) {
      truncatedSeen = true;
    }
    digest.update(f.raw);
    expect++;
    res.records++;
    res.verifiedThroughSeq = lastSigned;
  }
  // A footer without its trailer (or with part of it, above) is a close cut short: incomplete.
  if (footerFrame && !res.complete && res.partialTail === undefined) res.partialTail = { offset: footerFrame.offset + footerFrame.length, bytes: 0 };
  res.verifiedThroughSeq = lastSigned;
  // Nothing signed to check, so nothing says who wrote the file: an unknown key is named (a
  // file made up whole, or one written under a key this state dir does not hold).
  if (!key) res.unknownKey = header.keyId;
  return res;
}

/**
 * A file's verification held against its row in the sessions index. The
 * file alone cannot tell a tail cut off after the session closed from a
 * crash before it did (both read as INCOMPLETE); the index can: it records
 * a recording's size and final hash once its footer is written. A file
 * that falls short of that was cut, or replaced, afterwards. The missing
 * footer counts only when footers are fsynced before their rows are
 * written (`recording.fsync: close`, the default).
 */
export function againstIndex(
  r: VerifyResult,
  row: { complete: boolean; recordingSize?: number | undefined; finalHash?: string | undefined } | undefined,
  opts: { footerDurable: boolean },
): VerifyResult {
  if (!r.ok || row === undefined || !row.complete) return r;
  // With `recording.fsync: off` a power loss may take the footer and leave the row: not tampering.
  if (!r.complete && opts.footerDurable) {
    return {
      ...r,
      ok: false,
      firstBad: {
        offset: r.partialTail?.offset ?? 0,
        reason: `the sessions index records this recording closed with its footer and trailer (${row.recordingSize ?? '?'} bytes), but the file ends before them: cut after it was closed`,
      },
    };
  }
  if (row.finalHash !== undefined && r.footer !== undefined && r.footer.finalChain !== row.finalHash) {
    return { ...r, ok: false, firstBad: { offset: 0, reason: 'the footer verifies, but its final hash is not the one the sessions index recorded at the close: another recording of this session' } };
  }
  return r;
}

/** `bytes` are the first bytes of the trailer a footer frame of `footerLength` bytes would have. */
function isTrailerPrefix(bytes: Buffer, footerLength: number): boolean {
  return bytes.length < TRAILER_SIZE && bytes.equals(encodeTrailer(footerLength).subarray(0, bytes.length));
}

/** One line for a person: what verify found. */
export function describeVerify(r: VerifyResult): string {
  if (!r.ok) {
    const where = r.firstBad?.seq !== undefined ? `record ${r.firstBad.seq} at offset ${r.firstBad.offset}` : `offset ${r.firstBad?.offset ?? 0}`;
    return `TAMPERED: ${where}: ${r.firstBad?.reason ?? 'unknown'}`;
  }
  if (!r.complete && r.footer !== undefined) {
    return `INCOMPLETE: the signed footer verifies (${r.records} records), but its trailer is missing or cut at offset ${r.partialTail?.offset ?? '?'}: the close was cut short`;
  }
  if (!r.complete) {
    const tail = r.partialTail ? `, partial trailing record at offset ${r.partialTail.offset} (${r.partialTail.bytes} bytes)` : '';
    const signed =
      r.verifiedThroughSeq >= 0
        ? `signed through record ${r.verifiedThroughSeq}`
        : r.unknownKey !== undefined
          ? `none signed, and its key ${r.unknownKey} is not among the known recording keys`
          : 'none signed yet';
    return `INCOMPLETE: no footer (the gateway stopped before closing the recording); ${r.records} records pass their CRCs, ${signed}${tail}`;
  }
  return `OK: ${r.records} records, complete${r.footer?.truncated ? ' (truncated at the size cap)' : ''}`;
}

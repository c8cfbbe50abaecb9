/**
 * Finishes the sessions index after a crash, from the recordings.
 *
 * A gateway that stops abruptly (`kill -9`, a power loss, an OOM kill)
 * leaves two kinds of gaps in the index:
 * - rows it had not written yet: rows wait up to 100 ms to be written
 *   together (store/sqlite.ts), so a session admitted just before the crash
 *   can have a recording and no row;
 * - rows of sessions that never ended: admitted, then the process died,
 *   so no end row came.
 *
 * A running gateway keeps a marker file in the state directory with its
 * process id (`gateway.running`), removed when it stops cleanly. At start,
 * before any listener opens, a marker left by a process that is gone means
 * that process stopped abruptly: the gateway then fills both gaps from the
 * recordings. After a clean stop there is no marker and nothing is read; a
 * marker whose process still runs (a second gateway on the same state
 * directory) is left alone, as are that gateway's sessions.
 *
 * Each recording is read at its two ends only: the header (who, which
 * target, when) and, when its last bytes are a trailer, the footer it
 * points at, whose signature is checked with the recording keys. A footer
 * that verifies gives the session's end (time, close reason, bytes, final
 * hash) and `complete: true`, which in the index means exactly that: the
 * recording has a signed footer. `sluice verify` checks everything in
 * between. Recordings of failed logins whose token did not verify (empty
 * subject) get no row, as in a running gateway.
 */
import { readFile, unlink, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import type { Logger } from '../log.js';
import type { SessionRecord, SessionStore } from '../store/types.js';
import { listRecordingFiles, recordingPathWithin } from './files.js';
import { indexRow } from './index-row.js';
import {
  FILE_EXTENSION,
  RecordType,
  TRAILER_MAGIC,
  TRAILER_SIZE,
  datePath,
  type FooterBody,
  type RecordingHeader,
} from './format.js';
import { ByteSource, openRecordingFile, parseHeader, scanFrames } from './reader.js';
import { FOOTER_SIG_DOMAIN, parseSignedPayload, verifySignedPayload } from './signed-records.js';
import type { PublicKeys } from './verify.js';

/** What a recovered row says of why its session ended, when its recording has no signed footer. */
export const CRASH_CLOSE_REASON = 'gateway stopped before the session ended';

/** In the state directory while a gateway runs on it: that process's id. */
const RUNNING_MARKER = 'gateway.running';

export interface RecoveryResult {
  /** Recordings that had no row and got one. */
  indexed: number;
  /** Rows of sessions that never ended, closed. */
  closed: number;
  /** Recordings that could not be read (logged each). */
  unreadable: number;
}

/**
 * At start, before the listeners open: finishes the index if the last
 * gateway on this state directory stopped abruptly, then marks the
 * directory as in use by this process. Undefined when there was nothing to
 * recover (a clean stop, a first start, or another gateway still running).
 */
export async function recoverAfterAbruptStop(stateDir: string, store: SessionStore, keys: PublicKeys, logger: Logger): Promise<RecoveryResult | undefined> {
  const marker = join(stateDir, RUNNING_MARKER);
  const previous = Number((await readFile(marker, 'utf8').catch(() => '')).trim());
  if (previous > 0 && previous !== process.pid && isRunning(previous)) {
    logger.warn({ pid: previous }, 'another gateway runs on this state directory; its sessions are not checked');
    return undefined;
  }
  let result: RecoveryResult | undefined;
  if (previous > 0) result = await recoverSessionIndex(stateDir, store, keys, logger);
  await writeFile(marker, `${process.pid}\n`, { mode: 0o600 });
  return result;
}

/** After a clean stop: the next start has nothing to recover. */
export async function markCleanStop(stateDir: string): Promise<void> {
  const marker = join(stateDir, RUNNING_MARKER);
  const owner = Number((await readFile(marker, 'utf8').catch(() => '')).trim());
  if (owner === process.pid) await unlink(marker).catch(() => undefined);
}

function isRunning(pid: number): boolean {
  try {
    process.kill(pid, 0);
    return true;
  } catch (err) {
    // EPERM: it runs, as another user.
    return (err as NodeJS.ErrnoException).code === 'EPERM';
  }
}

/** Fills the index's gaps from the recordings (see the top of this file). */
export async function recoverSessionIndex(stateDir: string, store: SessionStore, keys: PublicKeys, logger: Logger): Promise<RecoveryResult> {
  const result: RecoveryResult = { indexed: 0, closed: 0, unreadable: 0 };
  const unreadable = (path: string, err: unknown): void => {
    result.unreadable++;
    logger.error({ path, reason: err instanceof Error ? err.message : String(err) }, 'recording could not be read to finish the sessions index');
  };

  // Rows of sessions that never ended: none is live before the listeners open.
  for (;;) {
    const open = store.listSessions({ open: true, limit: 10_000 });
    for (const row of open) {
      let ends: RecordingEnds | undefined;
      // Only a file inside the recordings directory, as for the API and the CLI: a row pointing
      // elsewhere (a restored or edited database) must not have another file's size and time read into it.
      const path = row.recordingPath ? await recordingPathWithin(stateDir, row.recordingPath) : undefined;
      if (row.recordingPath && path === undefined) unreadable(row.recordingPath, new Error('not a recording file inside the state directory'));
      if (path !== undefined) ends = await readEnds(path, keys).catch((err: unknown) => void unreadable(path, err));
      // A file holding another session's recording says nothing about this one's end.
      if (ends?.header !== undefined && ends.header.sessionId !== row.id) {
        unreadable(path!, new Error(`the file holds session ${ends.header.sessionId}'s recording, not ${row.id}'s`));
        ends = undefined;
      }
      store.upsertSession(closedRow(row, ends));
      result.closed++;
    }
    if (open.length < 10_000) break;
  }

  // Recordings with no row, in the day directories a crash could have left one in: from the day
  // before the newest row's start (a session may cross midnight; days are UTC), or all of them when
  // the index is empty.
  const newest = store.listSessions({ limit: 1 })[0];
  // Never later than now: a row dated in the future (a crafted recording indexed earlier, a clock
  // set wrong) must not make every later recovery skip today's directory.
  // Nor before 1970: a crafted start far in the past (year -271821) would put the day before it
  // out of Date's range, and its toISOString would throw during start-up.
  const newestAt = newest ? Math.max(24 * 3_600_000, Math.min(Date.parse(newest.startedAt), Date.now())) : NaN;
  const fromDay = Number.isNaN(newestAt) ? '' : datePath(new Date(newestAt - 24 * 3_600_000).toISOString()).join('/');
  for (const path of await listRecordingFiles(stateDir, fromDay)) {
    const id = path.slice(path.lastIndexOf('/') + 1, -FILE_EXTENSION.length);
    if (store.getSession(id) !== undefined) continue;
    let ends: RecordingEnds;
    try {
      ends = await readEnds(path, keys);
    } catch (err) {
      unreadable(path, err);
      continue;
    }
    const h = ends.header;
    // A file named for another session's id is not this session's recording.
    if (h === undefined || h.subject === '' || h.sessionId !== id) continue;
    store.upsertSession(closedRow({ ...indexRow(h), recordingPath: path }, ends));
    result.indexed++;
  }
  if (result.indexed > 0 || result.closed > 0 || result.unreadable > 0) {
    logger.warn({ indexed: result.indexed, closed: result.closed, unreadable: result.unreadable }, 'sessions index finished after an abrupt stop');
  }
  return result;
}

interface RecordingEnds {
  header: RecordingHeader | undefined;
  /** The footer, when the file ends with one whose signature verifies. */
  footer: FooterBody | undefined;
  size: number;
  mtime: Date;
}

/** The header and, if the file ends with a trailer, the footer it points at (signature checked). */
async function readEnds(path: string, keys: PublicKeys): Promise<RecordingEnds> {
  const { fh } = await openRecordingFile(path);
  try {
    const st = await fh.stat();
    const src = new ByteSource(fh, st.size);
    const parsed = await parseHeader(src);
    const header = parsed.ok ? parsed.header : undefined;
    let footer: FooterBody | undefined;
    const trailer = header ? await src.get(st.size - TRAILER_SIZE, TRAILER_SIZE) : undefined;
    if (header && trailer && trailer.subarray(0, TRAILER_MAGIC.length).equals(TRAILER_MAGIC)) {
      const at = st.size - TRAILER_SIZE - trailer.readUInt32BE(TRAILER_MAGIC.length);
      const first = at > 0 ? (await scanFrames(src, at).next()).value : undefined;
      const frame = first?.kind === 'frame' ? first.frame : undefined;
      const signed = parsed.ok && frame?.type === RecordType.footer && frame.crcOk ? parseSignedPayload(parsed.version, frame.payload) : undefined;
      const key = keys.get(header.keyId);
      if (signed && key && verifySignedPayload(FOOTER_SIG_DOMAIN, signed, key)) {
        const body = signed.body as FooterBody;
        if (body.sessionId === header.sessionId) footer = body;
      }
    }
    return { header, footer, size: st.size, mtime: st.mtime };
  } finally {
    await fh.close();
  }
}

/**
 * The row of a session a crash ended: what its signed footer says when it
 * has one (the session had ended; only its end row was lost), else ended
 * when its recording was last written, incomplete.
 */
function closedRow(row: SessionRecord, ends: RecordingEnds | undefined): SessionRecord {
  const footer = ends?.footer;
  if (footer) {
    return {
      ...row,
      endedAt: footer.endedAt,
      closeReason: footer.closeReason,
      bytesIn: footer.bytesClientToGateway,
      bytesOut: footer.bytesGatewayToClient,
      recordingSize: ends!.size,
      finalHash: footer.finalChain,
      complete: true,
    };
  }
  return {
    ...row,
    endedAt: (ends?.mtime ?? new Date(row.startedAt)).toISOString(),
    closeReason: CRASH_CLOSE_REASON,
    ...(ends ? { recordingSize: ends.size } : {}),
    complete: false,
  };
}

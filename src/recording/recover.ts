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
 * At start, before any listener opens (so no session is live), the gateway
 * fills both from the recordings themselves: each is verified once, and
 * its row is written from its header and, where a footer made it to disk,
 * its footer. Only the sessions a crash interrupted are read, so this costs
 * nothing after a clean stop. Recordings of failed logins whose token did
 * not verify (empty subject) never get a row, as in a running gateway.
 */
import { stat } from 'node:fs/promises';
import type { Logger } from '../log.js';
import type { SessionRecord, SessionStore } from '../store/types.js';
import { listRecordingFiles } from './files.js';
import { FILE_EXTENSION, datePath } from './format.js';
import { verifyRecording, type PublicKeys, type VerifyResult } from './verify.js';

/** What a recovered row says of why its session ended, when its recording has no footer. */
export const CRASH_CLOSE_REASON = 'gateway stopped before the session ended';

export interface RecoveryResult {
  /** Recordings that had no row and got one. */
  indexed: number;
  /** Rows of sessions that never ended, closed. */
  closed: number;
}

export async function recoverSessionIndex(stateDir: string, store: SessionStore, keys: PublicKeys, logger: Logger): Promise<RecoveryResult> {
  const result: RecoveryResult = { indexed: 0, closed: 0 };

  // Rows of sessions that never ended: none is live before the listeners open.
  for (const row of store.listSessions({ open: true, limit: 10_000 })) {
    const checked = row.recordingPath ? await verifyRecording(row.recordingPath, keys) : undefined;
    store.upsertSession(await closedRow(row, checked));
    result.closed++;
  }

  // Recordings with no row, in the day directories a crash could have left one in: from the day
  // before the newest row's start (a session may cross midnight; dates are UTC), or all of them when
  // the index is empty.
  const newest = store.listSessions({ limit: 1 })[0];
  const fromDay = newest ? datePath(new Date(Date.parse(newest.startedAt) - 24 * 3_600_000).toISOString()).join('/') : '';
  for (const path of await listRecordingFiles(stateDir, fromDay)) {
    const id = path.slice(path.lastIndexOf('/') + 1, -FILE_EXTENSION.length);
    if (store.getSession(id) !== undefined) continue;
    const checked = await verifyRecording(path, keys);
    const h = checked.header;
    if (h === undefined || h.subject === '') continue;
    store.upsertSession(
      await closedRow(
        {
          id,
          subject: h.subject,
          groups: h.groups,
          issuer: h.issuer,
          ...(h.tokenIdHash !== undefined ? { tokenIdHash: h.tokenIdHash } : {}),
          target: h.target,
          protocol: h.protocol,
          ...(h.clientAddress !== undefined ? { clientAddress: h.clientAddress } : {}),
          startedAt: h.startedAt,
          bytesIn: 0,
          bytesOut: 0,
          statementsAllowed: 0,
          statementsDenied: 0,
          approvals: 0,
          maskingCounts: {},
          recordingPath: path,
          complete: false,
        },
        checked,
      ),
    );
    result.indexed++;
  }
  if (result.indexed > 0 || result.closed > 0) {
    logger.warn({ indexed: result.indexed, closed: result.closed }, 'sessions index finished after an abrupt stop');
  }
  return result;
}

/**
 * The row of a session a crash ended: what its footer says when it has one
 * (the session had ended; only its end row was lost), else ended when its
 * recording was last written, incomplete.
 */
async function closedRow(row: SessionRecord, checked: VerifyResult | undefined): Promise<SessionRecord> {
  const size = row.recordingPath ? await stat(row.recordingPath).catch(() => undefined) : undefined;
  const footer = checked?.ok && checked.complete ? checked.footer : undefined;
  if (footer) {
    return {
      ...row,
      endedAt: footer.endedAt,
      closeReason: footer.closeReason,
      bytesIn: footer.bytesClientToGateway,
      bytesOut: footer.bytesGatewayToClient,
      ...(size ? { recordingSize: size.size } : {}),
      finalHash: footer.finalChain,
      complete: true,
    };
  }
  return {
    ...row,
    endedAt: (size?.mtime ?? new Date(row.startedAt)).toISOString(),
    closeReason: CRASH_CLOSE_REASON,
    ...(size ? { recordingSize: size.size } : {}),
    complete: false,
  };
}

/**
 * A session's row in the sessions index (store/types.ts) as far as its
 * recording's metadata tells: who, which target, from where, since when;
 * every counter at zero, no end, not complete. The recording session
 * (tap.ts) adds what it counted and how it ended; the recovery after an
 * abrupt stop (recover.ts) adds what the recording's signed footer says.
 */
import type { SessionRecord } from '../store/types.js';
import type { RecordingMeta } from './format.js';

export function indexRow(meta: RecordingMeta): SessionRecord {
  return {
    id: meta.sessionId,
    subject: meta.subject,
    groups: meta.groups,
    issuer: meta.issuer,
    ...(meta.tokenIdHash !== undefined ? { tokenIdHash: meta.tokenIdHash } : {}),
    target: meta.target,
    protocol: meta.protocol,
    ...(meta.clientAddress !== undefined ? { clientAddress: meta.clientAddress } : {}),
    startedAt: meta.startedAt,
    bytesIn: 0,
    bytesOut: 0,
    statementsAllowed: 0,
    statementsDenied: 0,
    approvals: 0,
    maskingCounts: {},
    complete: false,
  };
}

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
  // One literal with every field, optional ones undefined (the store writes them as NULL): built
  // twice per session on the event loop, where conditional spreads cost more than the rest of it.
  return {
    id: meta.sessionId,
    subject: meta.subject,
    groups: meta.groups,
    issuer: meta.issuer,
    tokenIdHash: meta.tokenIdHash,
    target: meta.target,
    protocol: meta.protocol,
    clientAddress: meta.clientAddress,
    startedAt: meta.startedAt,
    endedAt: undefined,
    closeReason: undefined,
    bytesIn: 0,
    bytesOut: 0,
    statementsAllowed: 0,
    statementsDenied: 0,
    approvals: 0,
    maskingCounts: {},
    recordingPath: undefined,
    recordingSize: undefined,
    finalHash: undefined,
    complete: false,
  };
}

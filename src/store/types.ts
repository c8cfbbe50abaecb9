import type { EncodedBatch } from './audit-batches.js';
/**
 * The store behind the audit trail and approvals. The embedded default is
 * SQLite in the state dir (store/sqlite.ts); a shared PostgreSQL store for
 * several gateway instances can implement the same narrow interface later,
 * so nothing outside src/store knows which one runs.
 */

export type AuditVerdict = 'allowed' | 'denied' | 'approved' | 'approval_denied' | 'approval_expired' | 'approval_cancelled';

/** One statement or command as it happened. */
export interface AuditEvent {
  /** ISO 8601 time the statement arrived. */
  time: string;
  sessionId: string;
  subject: string;
  target: string;
  protocol: 'postgres' | 'redis';
  /** Kinds joined by ',' (PostgreSQL) or `command` / `command|subcommand` (Redis). */
  kind: string;
  /**
   * Statement text. For the extended protocol, read back from the store (API,
   * CLI) with the bound parameters appended as `-- params: [...]`.
   */
  text: string;
  /**
   * Extended protocol, as written by the gateway: the bound parameters as a
   * JSON array, kept apart from `text` so that a batch stores a prepared
   * statement's text once. The store appends them to `text` when read back
   * (`<text> -- params: <params>`), so readers never see this field.
   */
  params?: string;
  verdict: AuditVerdict;
  policy?: string;
  rule?: string;
  approvalId?: string;
  /** Time from arrival to the server's answer, ms (held time included). */
  durationMs?: number;
  /** Rows from the CommandComplete tag, when the server said. */
  rows?: number;
  /** SQLSTATE of the server's or Sluice's error, when there was one. */
  sqlstate?: string;
  /** Error message (server's or Sluice's), when there was one. */
  error?: string;
  /** Values masked in the statement's result, by masking rule; absent when nothing was masked. */
  masking?: Record<string, number>;
}

export interface AuditQuery {
  sessionId?: string;
  subject?: string;
  target?: string;
  verdict?: AuditVerdict;
  /** ISO times, inclusive. */
  since?: string;
  until?: string;
  /** Default 100, at most 1000. */
  limit?: number;
}

export type ApprovalStatus = 'pending' | 'approved' | 'denied' | 'expired' | 'cancelled' | 'used';

export interface ApprovalRecord {
  id: string;
  status: ApprovalStatus;
  sessionId: string;
  subject: string;
  /** The requester's issuer (absent in records made before it was kept). */
  issuer?: string;
  target: string;
  protocol: 'postgres' | 'redis';
  policy: string;
  rule: string;
  /** The held statement or command as text, for the approver to read. */
  text: string;
  /** SHA-256 hex of the exact held bytes: an approval releases only these. */
  statementHash: string;
  /** Normalised fingerprint, for time-window grants (`--for 15m`). */
  fingerprint: string;
  createdAt: string;
  expiresAt: string;
  decidedAt?: string;
  decidedBy?: string;
  reason?: string;
  /** When an approver granted a window: until when the same subject may run the same fingerprint. */
  windowUntil?: string;
}

export interface ApprovalQuery {
  status?: ApprovalStatus;
  subject?: string;
  target?: string;
  limit?: number;
}

/** One session as indexed in the store: who, where, how much, and its recording. */
export interface SessionRecord {
  id: string;
  subject: string;
  groups: string[];
  issuer: string;
  /** SHA-256 hex of the token id; never the token. */
  tokenIdHash?: string;
  target: string;
  protocol: 'postgres' | 'redis';
  clientAddress?: string;
  /** ISO 8601. */
  startedAt: string;
  endedAt?: string;
  closeReason?: string;
  /** Bytes client -> gateway and gateway -> client. */
  bytesIn: number;
  bytesOut: number;
  statementsAllowed: number;
  statementsDenied: number;
  approvals: number;
  /** Masked values by masking rule (or column), as counted by the masker. */
  maskingCounts: Record<string, number>;
  recordingPath?: string;
  recordingSize?: number;
  /** Hex chain hash the recording's footer signs. */
  finalHash?: string;
  /** The recording has a signed footer. */
  complete: boolean;
}

export interface SessionQuery {
  subject?: string;
  target?: string;
  /** ISO time: sessions started at or after it. */
  since?: string;
  /** true: only sessions with no end recorded (live ones, or ones a crash interrupted). */
  open?: boolean;
  /** Default 100, at most 10000. */
  limit?: number;
}

/** The session index (implemented by the SQLite store). */
export interface SessionStore {
  /** Insert or replace the row with this id (called at start and at end of a session). */
  upsertSession(rec: SessionRecord): void;
  getSession(id: string): SessionRecord | undefined;
  /** Newest first. */
  listSessions(query: SessionQuery): SessionRecord[];
  /** Every session with a recording path, id and path only, newest first (no page limit: `sluice verify --all`). */
  sessionRecordings(): Iterable<{ id: string; recordingPath: string }>;
  /** Deletes sessions that ended before `iso` (never one still open); returns the number of rows. */
  deleteSessionsBefore(iso: string): number;
}

export interface Store {
  insertAuditEvents(events: readonly AuditEvent[]): void;
  /**
   * The SQLite file behind the store, when audit batches may be committed
   * to it from another thread (the audit writer's commit thread). A store
   * without it gets every batch through `insertAuditEvents`.
   */
  readonly auditFile?: string;
  /** Commits a batch already encoded for the commit thread, on the calling thread (when the thread failed, or on flush). */
  insertEncodedAuditBatch?(batch: EncodedBatch): void;
  queryAuditEvents(query: AuditQuery): AuditEvent[];
  saveApproval(record: ApprovalRecord): void;
  getApproval(id: string): ApprovalRecord | undefined;
  listApprovals(query: ApprovalQuery): ApprovalRecord[];
  /**
   * Retention (`audit.retention`): deletes up to `maxBatches` audit batches
   * whose every event is before `beforeMs` (epoch ms), oldest first, in one
   * transaction; returns how many batches and events went. A caller loops
   * until fewer than `maxBatches` come back.
   */
  purgeAuditBefore?(beforeMs: number, maxBatches: number): { batches: number; events: number };
  /**
   * Retention: deletes decided, expired and cancelled approval requests
   * made before `beforeIso` whose window (if any) also closed before it.
   * Pending requests and open windows are never deleted.
   */
  purgeApprovalsBefore?(beforeIso: string): number;
  close(): void;
}

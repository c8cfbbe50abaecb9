import { closeSync, mkdirSync, openSync } from 'node:fs';
import { join } from 'node:path';
import Database from 'better-sqlite3';
import type { Logger } from '../log.js';
import { decodeBatch, encodeBatch, newestFirst, TimeParser, type EncodedBatch, type EventFilter, type KeyField, type StoredEvent } from './audit-batches.js';
import { migrate } from './migrations.js';
import { CommitThread, type CommitOutcome } from './commit-thread.js';
import type {
  ApprovalQuery,
  ApprovalRecord,
  ApprovalStatus,
  AuditEvent,
  AuditQuery,
  SessionQuery,
  SessionRecord,
  SessionStore,
  Store,
} from './types.js';

/**
 * The embedded store: SQLite (better-sqlite3) in `<stateDir>/sluice.db`.
 *
 * - WAL journal: readers (the API) never block the audit writer, nor it
 *   them. synchronous=NORMAL: in WAL mode a committed batch survives a
 *   crash of the process; only a power loss can drop the last few commits.
 * - busy_timeout: a second process on the same file (the CLI, a backup)
 *   makes a writer wait briefly instead of failing with SQLITE_BUSY.
 * - The file is created 0600 (its WAL and shm files inherit that mode):
 *   audit text holds statements, which can hold data.
 * - What is stored is what the caller gives, unchanged: audit text and
 *   error messages included. No caller passes a token or password (the
 *   gateway audits statements and verdicts, never the startup/auth
 *   exchange), and the schema has no column that could hold one.
 *
 * better-sqlite3 is synchronous: every call runs on the event loop. The
 * audit writer batches inserts (one transaction per batch) to keep that cost
 * off the relay's hot path; see audit-writer.ts.
 */
export function openSqliteStore(stateDir: string, opts: { logger?: Logger; file?: string } = {}): Store & SessionStore {
  mkdirSync(stateDir, { recursive: true, mode: 0o700 });
  const file = join(stateDir, opts.file ?? 'sluice.db');
  // Create the file with owner-only permissions before SQLite opens it (it
  // would otherwise use the umask); an existing file keeps its mode.
  closeSync(openSync(file, 'a', 0o600));
  const db = new Database(file);
  try {
    db.pragma('journal_mode = WAL');
    writerPragmas(db);
    const m = migrate(db);
    if (m.applied.length) opts.logger?.info({ file, from: m.from, to: m.to }, 'state database migrated');
    return new SqliteStore(db, file, opts.logger);
  } catch (err) {
    db.close();
    throw err;
  }
}

interface ApprovalRow {
  id: string;
  status: string;
  session_id: string;
  subject: string;
  issuer: string | null;
  target: string;
  protocol: string;
  policy: string;
  rule: string;
  text: string;
  statement_hash: string;
  fingerprint: string;
  created_at: string;
  expires_at: string;
  decided_at: string | null;
  decided_by: string | null;
  reason: string | null;
  window_until: string | null;
}

const DEFAULT_LIMIT = 100;
const MAX_LIMIT = 1000;

function clampLimit(limit: number | undefined): number {
  if (limit === undefined || !Number.isFinite(limit)) return DEFAULT_LIMIT;
  return Math.min(MAX_LIMIT, Math.max(1, Math.floor(limit)));
}

/** Epoch ms of an ISO time given as a filter; a filter that does not parse is refused, never ignored (that would widen the result). */
function filterTime(name: string, value: string): number {
  const ms = Date.parse(value);
  if (Number.isNaN(ms)) throw new RangeError(`audit query: ${name} is not an ISO 8601 time`);
  return ms;
}

interface SessionRow {
  id: string;
  subject: string;
  groups: string;
  issuer: string;
  token_id_hash: string | null;
  target: string;
  protocol: string;
  client_address: string | null;
  started_at: string;
  ended_at: string | null;
  close_reason: string | null;
  bytes_in: number;
  bytes_out: number;
  statements_allowed: number;
  statements_denied: number;
  approvals: number;
  masking_counts: string;
  recording_path: string | null;
  recording_size: number | null;
  final_hash: string | null;
  complete: number;
}

const SESSION_COLUMNS = [
  'id', 'subject', 'groups', 'issuer', 'token_id_hash', 'target', 'protocol', 'client_address',
  'started_at', 'started_ms', 'ended_at', 'ended_ms', 'close_reason', 'bytes_in', 'bytes_out',
  'statements_allowed', 'statements_denied', 'approvals', 'masking_counts', 'recording_path',
  'recording_size', 'final_hash', 'complete',
] as const;
const MAX_SESSION_LIMIT = 10_000;
/** How long a session row may wait to be written with others (see upsertSession). */
const SESSION_INDEX_DELAY_MS = 100;
/** After a failed write of the session index, the next attempt. */
const SESSION_INDEX_RETRY_MS = 1000;

/** A session as a row of the `sessions` table (SESSION_COLUMNS). */
function sessionRow(rec: SessionRecord): Record<(typeof SESSION_COLUMNS)[number], string | number | null> {
  const ms = (iso: string | undefined): number | null => {
    if (iso === undefined) return null;
    const v = Date.parse(iso);
    return Number.isNaN(v) ? null : v;
  };
  return {
    id: rec.id,
    subject: rec.subject,
    groups: JSON.stringify(rec.groups ?? []),
    issuer: rec.issuer,
    token_id_hash: rec.tokenIdHash ?? null,
    target: rec.target,
    protocol: rec.protocol,
    client_address: rec.clientAddress ?? null,
    started_at: rec.startedAt,
    started_ms: ms(rec.startedAt),
    ended_at: rec.endedAt ?? null,
    ended_ms: ms(rec.endedAt),
    close_reason: rec.closeReason ?? null,
    bytes_in: rec.bytesIn,
    bytes_out: rec.bytesOut,
    statements_allowed: rec.statementsAllowed,
    statements_denied: rec.statementsDenied,
    approvals: rec.approvals,
    masking_counts: JSON.stringify(rec.maskingCounts ?? {}),
    recording_path: rec.recordingPath ?? null,
    recording_size: rec.recordingSize ?? null,
    final_hash: rec.finalHash ?? null,
    complete: rec.complete ? 1 : 0,
  };
}

/** The state database's pragmas, for every connection that writes to it (the store's and the commit threads'). */
export function writerPragmas(db: Database.Database): void {
  db.pragma('synchronous = NORMAL');
  db.pragma('busy_timeout = 5000');
}

/** Upserts session rows in one transaction (the store's own writes, and the sessions commit thread's). */
export function sessionUpserter(db: Database.Database): (rows: SessionRecord[]) => void {
  const upsert = db.prepare(`
    INSERT INTO sessions (${SESSION_COLUMNS.join(', ')})
    VALUES (${SESSION_COLUMNS.map((c) => `@${c}`).join(', ')})
    ON CONFLICT (id) DO UPDATE SET
      ${SESSION_COLUMNS.filter((c) => c !== 'id').map((c) => `${c} = excluded.${c}`).join(', ')}`);
  return db.transaction((rows: SessionRecord[]) => {
    for (const rec of rows) upsert.run(sessionRow(rec));
  });
}

/** Commits one encoded audit batch (its row and its key rows) in one transaction. */
export function batchInserter(db: Database.Database): (b: EncodedBatch) => void {
  const insertBatch = db.prepare('INSERT INTO audit_batches (min_ms, max_ms, count, events) VALUES (?, ?, ?, ?)');
  const insertKey = db.prepare('INSERT OR IGNORE INTO audit_batch_keys (field, value, batch) VALUES (?, ?, ?)');
  return db.transaction((b: EncodedBatch) => {
    const id = insertBatch.run(b.minMs, b.maxMs, b.count, b.json).lastInsertRowid;
    for (const [field, value] of b.keys) insertKey.run(field, value, id);
  });
}

class SqliteStore implements Store, SessionStore {
  private readonly selectBatch: Database.Statement;
  private readonly insertMany: (events: readonly AuditEvent[]) => void;
  private readonly insertEncoded: (batch: EncodedBatch) => void;
  private readonly times = new TimeParser();
  private readonly upsertApproval: Database.Statement;
  private readonly selectApproval: Database.Statement;
  /** One prepared statement per combination of filters present, built on first use and reused. */
  private readonly auditQueries = new Map<string, Database.Statement>();
  private readonly approvalQueries = new Map<string, Database.Statement>();
  private readonly sessionQueries = new Map<string, Database.Statement>();
  private readonly selectSession: Database.Statement;
  /** Upserts rows in one transaction. */
  private readonly writeSessions: (rows: SessionRecord[]) => void;
  /** Session rows not yet written, by id (see upsertSession). */
  private readonly queuedSessions = new Map<string, SessionRecord>();
  private sessionTimer: NodeJS.Timeout | undefined;
  private sessionWriteFailing = false;
  /** Commits the queued rows off the event loop (commit-thread.ts); started on the first timed write. */
  private sessionThread: CommitThread<'sessions'> | undefined;
  private sessionThreadFailureLogged = false;
  private readonly deleteSessionsStmt: Database.Statement;
  private readonly selectRecordingPaths: Database.Statement;
  private readonly purgeAudit: (beforeMs: number, maxBatches: number) => { batches: number; events: number };
  private readonly deleteApprovalsStmt: Database.Statement;
  private closed = false;

  constructor(
    private readonly db: Database.Database,
    /** The database file: the audit writer and the sessions index commit to it from threads of their own (commit-thread.ts). */
    readonly auditFile: string,
    /** Where a failing write of the session index is reported. */
    private readonly logger?: Logger,
  ) {
    const insertEncoded = batchInserter(db);
    this.insertEncoded = insertEncoded;
    this.selectBatch = db.prepare('SELECT events FROM audit_batches WHERE id = ?').pluck();
    this.insertMany = (events: readonly AuditEvent[]) => insertEncoded(encodeBatch(events, this.times));
    this.upsertApproval = db.prepare(`
      INSERT INTO approvals (id, status, session_id, subject, issuer, target, protocol, policy, rule, text,
        statement_hash, fingerprint, created_at, expires_at, decided_at, decided_by, reason, window_until)
      VALUES (@id, @status, @session_id, @subject, @issuer, @target, @protocol, @policy, @rule, @text,
        @statement_hash, @fingerprint, @created_at, @expires_at, @decided_at, @decided_by, @reason, @window_until)
      ON CONFLICT (id) DO UPDATE SET
        status = excluded.status, decided_at = excluded.decided_at, decided_by = excluded.decided_by,
        reason = excluded.reason, window_until = excluded.window_until, expires_at = excluded.expires_at`);
    this.selectApproval = db.prepare('SELECT * FROM approvals WHERE id = ?');
    this.writeSessions = sessionUpserter(db);
    this.selectSession = db.prepare('SELECT * FROM sessions WHERE id = ?');
    this.selectRecordingPaths = db.prepare(
      'SELECT id, recording_path FROM sessions WHERE recording_path IS NOT NULL ORDER BY started_ms DESC, id DESC',
    );
    const oldBatches = db.prepare('SELECT id, count FROM audit_batches WHERE max_ms < ? ORDER BY max_ms, id LIMIT ?');
    const deleteKeys = db.prepare('DELETE FROM audit_batch_keys WHERE batch = ?');
    const deleteBatch = db.prepare('DELETE FROM audit_batches WHERE id = ?');
    this.purgeAudit = db.transaction((beforeMs: number, maxBatches: number) => {
      const rows = oldBatches.all(beforeMs, maxBatches) as { id: number; count: number }[];
      let events = 0;
      for (const r of rows) {
        deleteKeys.run(r.id);
        deleteBatch.run(r.id);
        events += r.count;
      }
      return { batches: rows.length, events };
    });
    // Text comparison: every time in the table is toISOString()'s (UTC, fixed width).
    this.deleteApprovalsStmt = db.prepare(
      `DELETE FROM approvals WHERE status <> 'pending' AND created_at < @before
         AND (decided_at IS NULL OR decided_at < @before) AND (window_until IS NULL OR window_until < @before)`,
    );
    this.deleteSessionsStmt = db.prepare(
      // Rows that never ended are live sessions (start-up recovery closes the ones a crash left).
      'DELETE FROM sessions WHERE ended_ms IS NOT NULL AND ended_ms < ?',
    );
  }

  /**
   * Queues the row; it is written within SESSION_INDEX_DELAY_MS, with every
   * other row queued by then, in one transaction. A session's later row
   * replaces its earlier one in the queue (each row is whole), so a short
   * session (a pgbench -C connection, a CI job's probe) costs one row write,
   * not two, and a burst of sessions one commit: the two autocommits per
   * session were about 6% of the gateway's CPU under pgbench -C with
   * recording on. The timed write goes through the sessions commit thread,
   * so neither SQLite's work (about 15 µs a row) nor its disk waits (a WAL
   * checkpoint's fsync) fall on the event loop. Reads through this store
   * (the API, retention) wait for that thread and write the rest of the
   * queue themselves first, so they never miss a row; another process (the
   * CLI) sees a row at most SESSION_INDEX_DELAY_MS late, plus the commit.
   * After close() a row is written at once (and fails, the database being
   * closed).
   */
  upsertSession(rec: SessionRecord): void {
    if (this.closed) {
      this.writeSessions([rec]);
      return;
    }
    this.queuedSessions.set(rec.id, rec);
    this.scheduleSessions(SESSION_INDEX_DELAY_MS);
  }

  private scheduleSessions(ms: number): void {
    if (this.sessionTimer !== undefined) return;
    this.sessionTimer = setTimeout(this.sessionTick, ms);
    // A clean shutdown writes the queue in close(); the timer must not hold the process open.
    this.sessionTimer.unref();
  }

  /** The timed write: the queue to the commit thread, unless a job is in flight there (its answer schedules the next). */
  private readonly sessionTick = (): void => {
    this.sessionTimer = undefined;
    if (this.queuedSessions.size === 0 || this.closed) return;
    const thread = this.sessionCommitThread();
    if (thread === undefined) {
      this.flushSessions();
      return;
    }
    if (thread.busy) return;
    const rows = [...this.queuedSessions.values()];
    this.queuedSessions.clear();
    thread.commit({ rows }, (outcome) => this.sessionsAnswered(rows, outcome));
  };

  /** A commit thread's answer (on the event loop, or inside wait()). A failed job's rows wait again, unless a newer row replaced one. */
  private sessionsAnswered(rows: SessionRecord[], outcome: CommitOutcome): void {
    if (outcome.ok) {
      if (this.sessionWriteFailing) this.logger?.info({ rows: rows.length }, 'session index writable again');
      this.sessionWriteFailing = false;
      if (this.queuedSessions.size > 0) this.scheduleSessions(SESSION_INDEX_DELAY_MS);
      return;
    }
    for (const row of rows) if (!this.queuedSessions.has(row.id)) this.queuedSessions.set(row.id, row);
    if (!this.sessionWriteFailing) {
      this.logger?.error({ rows: rows.length, reason: outcome.error }, 'session index rows could not be written; retrying');
    }
    this.sessionWriteFailing = true;
    if (!this.closed) this.scheduleSessions(SESSION_INDEX_RETRY_MS);
  }

  /** The sessions commit thread; undefined once it failed (rows are then written on the event loop, as before it existed). */
  private sessionCommitThread(): CommitThread<'sessions'> | undefined {
    this.sessionThread ??= new CommitThread(this.auditFile, 'sessions');
    if (this.sessionThread.alive) return this.sessionThread;
    if (!this.sessionThreadFailureLogged) {
      this.sessionThreadFailureLogged = true;
      this.logger?.error({}, 'sessions index commit thread unavailable; writing session rows on the event loop');
    }
    return undefined;
  }

  /**
   * Writes the queued rows in one transaction. A failure (a locked or full
   * disk) rolls the transaction back and leaves the rows queued for the
   * next attempt; it is logged once until a write succeeds again. Never
   * throws: it runs from a timer.
   */
  private readonly flushSessions = (): void => {
    // The thread's job first: its rows are older than any still queued.
    this.sessionThread?.wait();
    if (this.sessionTimer !== undefined) clearTimeout(this.sessionTimer);
    this.sessionTimer = undefined;
    if (this.queuedSessions.size === 0 || this.closed) return;
    const rows = [...this.queuedSessions.values()];
    try {
      this.writeSessions(rows);
      this.queuedSessions.clear();
      if (this.sessionWriteFailing) this.logger?.info({ rows: rows.length }, 'session index writable again');
      this.sessionWriteFailing = false;
    } catch (err) {
      if (!this.sessionWriteFailing) {
        this.logger?.error({ rows: rows.length, reason: err instanceof Error ? err.message : String(err) }, 'session index rows could not be written; retrying');
      }
      this.sessionWriteFailing = true;
      this.scheduleSessions(SESSION_INDEX_RETRY_MS);
    }
  };

  getSession(id: string): SessionRecord | undefined {
    this.flushSessions();
    const row = this.selectSession.get(id) as SessionRow | undefined;
    return row ? toSessionRecord(row) : undefined;
  }

  /** Newest first (by start); default 100, at most 10000. */
  listSessions(query: SessionQuery): SessionRecord[] {
    this.flushSessions();
    const where: string[] = [];
    const params: (string | number)[] = [];
    const key: string[] = [];
    for (const [col, v] of [
      ['subject', query.subject],
      ['target', query.target],
    ] as const) {
      if (v === undefined) continue;
      where.push(`${col} = ?`);
      params.push(v);
      key.push(col);
    }
    if (query.since !== undefined) {
      where.push('started_ms >= ?');
      params.push(filterTime('since', query.since));
      key.push('since');
    }
    if (query.open === true) {
      where.push('ended_ms IS NULL');
      key.push('open');
    }
    const k = key.join(',');
    let stmt = this.sessionQueries.get(k);
    if (!stmt) {
      stmt = this.db.prepare(
        `SELECT * FROM sessions${where.length ? ' WHERE ' + where.join(' AND ') : ''}
         ORDER BY started_ms DESC, id DESC LIMIT ?`,
      );
      this.sessionQueries.set(k, stmt);
    }
    let limit = DEFAULT_LIMIT;
    if (query.limit !== undefined && Number.isFinite(query.limit)) limit = Math.min(MAX_SESSION_LIMIT, Math.max(1, Math.floor(query.limit)));
    return (stmt.all(...params, limit) as SessionRow[]).map(toSessionRecord);
  }

  /** Every session with a recording path, newest first, read row by row (no limit). */
  *sessionRecordings(): Iterable<{ id: string; recordingPath: string }> {
    this.flushSessions();
    for (const r of this.selectRecordingPaths.iterate() as IterableIterator<{ id: string; recording_path: string }>) {
      yield { id: r.id, recordingPath: r.recording_path };
    }
  }

  deleteSessionsBefore(iso: string): number {
    const ms = filterTime('before', iso);
    this.flushSessions();
    return this.deleteSessionsStmt.run(ms).changes;
  }

  purgeAuditBefore(beforeMs: number, maxBatches: number): { batches: number; events: number } {
    return this.purgeAudit(beforeMs, maxBatches);
  }

  purgeApprovalsBefore(beforeIso: string): number {
    return this.deleteApprovalsStmt.run({ before: new Date(filterTime('before', beforeIso)).toISOString() }).changes;
  }

  insertEncodedAuditBatch(batch: EncodedBatch): void {
    this.insertEncoded(batch);
  }

  /** All events in one transaction: one fsync-equivalent per batch, not per row. */
  insertAuditEvents(events: readonly AuditEvent[]): void {
    if (events.length) this.insertMany(events);
  }

  /**
   * Newest first. Time filters compare instants, so any ISO offset works;
   * an event whose `time` did not parse is kept (text as given) but has no
   * instant: time filters skip it and it sorts last.
   *
   * Batches that can hold a match (key table, time range) are read newest
   * first by their latest instant; each is decoded and its events filtered
   * exactly. Reading stops once `limit` events are in hand and the next
   * batch's latest instant is older than the oldest of them: no later batch
   * can hold a newer match. Cost: one JSON.parse per batch read (0.5-1.5
   * ms for 500 events, measured), so a filter that matches one event in
   * every batch reads up to `limit` batches; 1000 events of one session
   * among eight take about 25 ms.
   */
  queryAuditEvents(query: AuditQuery): AuditEvent[] {
    const where: string[] = [];
    const params: (string | number)[] = [];
    const key: string[] = [];
    const filter: EventFilter = {};
    const eq = (field: KeyField, v: string | undefined): void => {
      if (v === undefined) return;
      where.push('id IN (SELECT batch FROM audit_batch_keys WHERE field = ? AND value = ?)');
      params.push(field, v);
      key.push(field);
    };
    eq('session', query.sessionId);
    eq('subject', query.subject);
    eq('target', query.target);
    eq('verdict', query.verdict);
    if (query.sessionId !== undefined) filter.sessionId = query.sessionId;
    if (query.subject !== undefined) filter.subject = query.subject;
    if (query.target !== undefined) filter.target = query.target;
    if (query.verdict !== undefined) filter.verdict = query.verdict;
    if (query.since !== undefined) {
      filter.sinceMs = filterTime('since', query.since);
      where.push('max_ms >= ?');
      params.push(filter.sinceMs);
      key.push('since');
    }
    if (query.until !== undefined) {
      filter.untilMs = filterTime('until', query.until);
      where.push('min_ms <= ?');
      params.push(filter.untilMs);
      key.push('until');
    }
    const k = key.join(',');
    let stmt = this.auditQueries.get(k);
    if (!stmt) {
      stmt = this.db.prepare(
        // Only ids and instants here: the ORDER BY may sort every candidate
        // batch, which must not drag their events through the sorter.
        `SELECT id, max_ms FROM audit_batches${where.length ? ' WHERE ' + where.join(' AND ') : ''}
         ORDER BY max_ms DESC, id DESC`,
      );
      this.auditQueries.set(k, stmt);
    }
    const limit = clampLimit(query.limit);
    // One read transaction: the batch list and the batches read from one snapshot.
    return this.readAudit(stmt, params, filter, limit);
  }

  private readAudit(stmt: Database.Statement, params: (string | number)[], filter: EventFilter, limit: number): AuditEvent[] {
    return this.db.transaction(() => this.collectAudit(stmt, params, filter, limit))();
  }

  private collectAudit(stmt: Database.Statement, params: (string | number)[], filter: EventFilter, limit: number): AuditEvent[] {
    let found: StoredEvent[] = [];
    for (const row of stmt.all(...params) as { id: number; max_ms: number | null }[]) {
      if (found.length >= limit) {
        // `found` is sorted and cut to `limit` here: its last is the oldest kept.
        const oldest = found[found.length - 1]!.ms ?? -Infinity;
        if ((row.max_ms ?? -Infinity) < oldest) break;
      }
      const events = this.selectBatch.get(row.id) as string | undefined;
      if (events !== undefined) decodeBatch(row.id, events, filter, found);
      if (found.length >= limit) {
        found.sort(newestFirst);
        found.length = limit;
      }
    }
    found.sort(newestFirst);
    if (found.length > limit) found = found.slice(0, limit);
    return found.map((f) => f.event);
  }

  saveApproval(record: ApprovalRecord): void {
    this.upsertApproval.run({
      id: record.id,
      status: record.status,
      session_id: record.sessionId,
      subject: record.subject,
      issuer: record.issuer ?? null,
      target: record.target,
      protocol: record.protocol,
      policy: record.policy,
      rule: record.rule,
      text: record.text,
      statement_hash: record.statementHash,
      fingerprint: record.fingerprint,
      created_at: record.createdAt,
      expires_at: record.expiresAt,
      decided_at: record.decidedAt ?? null,
      decided_by: record.decidedBy ?? null,
      reason: record.reason ?? null,
      window_until: record.windowUntil ?? null,
    });
  }

  getApproval(id: string): ApprovalRecord | undefined {
    const row = this.selectApproval.get(id) as ApprovalRow | undefined;
    return row ? toApprovalRecord(row) : undefined;
  }

  /** Newest first; default 100, at most 1000. */
  listApprovals(query: ApprovalQuery): ApprovalRecord[] {
    const where: string[] = [];
    const params: string[] = [];
    for (const [col, v] of [
      ['status', query.status],
      ['subject', query.subject],
      ['target', query.target],
    ] as const) {
      if (v === undefined) continue;
      where.push(`${col} = ?`);
      params.push(v);
    }
    const k = where.join(',');
    let stmt = this.approvalQueries.get(k);
    if (!stmt) {
      stmt = this.db.prepare(
        `SELECT * FROM approvals${where.length ? ' WHERE ' + where.join(' AND ') : ''}
         ORDER BY created_at DESC, id DESC LIMIT ?`,
      );
      this.approvalQueries.set(k, stmt);
    }
    return (stmt.all(...params, clampLimit(query.limit)) as ApprovalRow[]).map(toApprovalRecord);
  }

  close(): void {
    if (this.closed) return;
    this.flushSessions();
    if (this.queuedSessions.size > 0) {
      // Their recordings are on disk; only the index rows are lost.
      this.logger?.error({ rows: this.queuedSessions.size }, 'state database closed with session index rows it could not write');
    }
    this.closed = true;
    void this.sessionThread?.close();
    this.db.close();
  }
}

function parseJson<T>(text: string, fallback: T): T {
  try {
    return JSON.parse(text) as T;
  } catch {
    return fallback;
  }
}

function toSessionRecord(r: SessionRow): SessionRecord {
  const s: SessionRecord = {
    id: r.id,
    subject: r.subject,
    groups: parseJson<string[]>(r.groups, []),
    issuer: r.issuer,
    target: r.target,
    protocol: r.protocol as SessionRecord['protocol'],
    startedAt: r.started_at,
    bytesIn: r.bytes_in,
    bytesOut: r.bytes_out,
    statementsAllowed: r.statements_allowed,
    statementsDenied: r.statements_denied,
    approvals: r.approvals,
    maskingCounts: parseJson<Record<string, number>>(r.masking_counts, {}),
    complete: r.complete === 1,
  };
  if (r.token_id_hash !== null) s.tokenIdHash = r.token_id_hash;
  if (r.client_address !== null) s.clientAddress = r.client_address;
  if (r.ended_at !== null) s.endedAt = r.ended_at;
  if (r.close_reason !== null) s.closeReason = r.close_reason;
  if (r.recording_path !== null) s.recordingPath = r.recording_path;
  if (r.recording_size !== null) s.recordingSize = r.recording_size;
  if (r.final_hash !== null) s.finalHash = r.final_hash;
  return s;
}

function toApprovalRecord(r: ApprovalRow): ApprovalRecord {
  const a: ApprovalRecord = {
    id: r.id,
    status: r.status as ApprovalStatus,
    sessionId: r.session_id,
    subject: r.subject,
    target: r.target,
    protocol: r.protocol as ApprovalRecord['protocol'],
    policy: r.policy,
    rule: r.rule,
    text: r.text,
    statementHash: r.statement_hash,
    fingerprint: r.fingerprint,
    createdAt: r.created_at,
    expiresAt: r.expires_at,
  };
  if (r.issuer !== null) a.issuer = r.issuer;
  if (r.decided_at !== null) a.decidedAt = r.decided_at;
  if (r.decided_by !== null) a.decidedBy = r.decided_by;
  if (r.reason !== null) a.reason = r.reason;
  if (r.window_until !== null) a.windowUntil = r.window_until;
  return a;
}

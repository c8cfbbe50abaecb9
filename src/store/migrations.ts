import type Database from 'better-sqlite3';
import { ErrorCodes, SluiceError } from '../errors.js';

/**
 * Schema migrations of the embedded SQLite store: an ordered list of SQL
 * steps, each applied once, in its own transaction together with its row in
 * `schema_migrations`, so a crash mid-step leaves the database at the
 * previous version, never half-migrated.
 *
 * Rules for adding a step: append only (never edit or reorder a shipped
 * step), number it one higher than the last, and keep it forward-only
 * (no down migrations: restore from a copy of the state dir instead).
 */
export interface Migration {
  version: number;
  name: string;
  sql: string;
}

export const MIGRATIONS: readonly Migration[] = [
  {
    version: 1,
    name: 'audit events and approvals',
    sql: `
      CREATE TABLE audit_events (
        id           INTEGER PRIMARY KEY,
        time         TEXT    NOT NULL,  -- ISO 8601 exactly as given
        time_ms      INTEGER,           -- the same instant in epoch ms, for range filters whatever the offset
        session_id   TEXT    NOT NULL,
        subject      TEXT    NOT NULL,
        target       TEXT    NOT NULL,
        protocol     TEXT    NOT NULL,
        kind         TEXT    NOT NULL,
        text         TEXT    NOT NULL,
        verdict      TEXT    NOT NULL,
        policy       TEXT,
        rule         TEXT,
        approval_id  TEXT,
        duration_ms  REAL,
        row_count    INTEGER,           -- 'rows' is an SQL keyword
        sqlstate     TEXT,
        error        TEXT
      );
      CREATE TABLE approvals (
        id              TEXT PRIMARY KEY,
        status          TEXT NOT NULL,
        session_id      TEXT NOT NULL,
        subject         TEXT NOT NULL,
        target          TEXT NOT NULL,
        protocol        TEXT NOT NULL,
        policy          TEXT NOT NULL,
        rule            TEXT NOT NULL,
        text            TEXT NOT NULL,
        statement_hash  TEXT NOT NULL,
        fingerprint     TEXT NOT NULL,
        created_at      TEXT NOT NULL,
        expires_at      TEXT NOT NULL,
        decided_at      TEXT,
        decided_by      TEXT,
        reason          TEXT,
        window_until    TEXT
      );
    `,
  },
  {
    version: 2,
    name: 'indexes for the audit filters and approval lists',
    // Every audit filter is combined with a time order (newest first), so
    // each index ends in time_ms; id breaks ties in insertion order. Audit
    // rows are inserted at the statement rate (thousands a second), and each
    // index is a B-tree insert per row: subject, target and verdict filters
    // ride the time index instead of carrying their own (measured: the
    // three extra indexes cost about as much as the row itself).
    sql: `
      CREATE INDEX audit_events_time    ON audit_events (time_ms, id);
      CREATE INDEX audit_events_session ON audit_events (session_id, time_ms);
      CREATE INDEX approvals_status     ON approvals (status, created_at);
      CREATE INDEX approvals_subject    ON approvals (subject, created_at);
      CREATE INDEX approvals_target     ON approvals (target, created_at);
    `,
  },
  {
    version: 3,
    name: 'sessions index (session recording)',
    // started_ms / ended_ms: the same instants as epoch ms for range filters
    // and retention, whatever offset the ISO text was written with.
    sql: `
      CREATE TABLE sessions (
        id                  TEXT PRIMARY KEY,
        subject             TEXT    NOT NULL,
        groups              TEXT    NOT NULL,  -- JSON array
        issuer              TEXT    NOT NULL,
        token_id_hash       TEXT,
        target              TEXT    NOT NULL,
        protocol            TEXT    NOT NULL,
        client_address      TEXT,
        started_at          TEXT    NOT NULL,
        started_ms          INTEGER,
        ended_at            TEXT,
        ended_ms            INTEGER,
        close_reason        TEXT,
        bytes_in            INTEGER NOT NULL DEFAULT 0,
        bytes_out           INTEGER NOT NULL DEFAULT 0,
        statements_allowed  INTEGER NOT NULL DEFAULT 0,
        statements_denied   INTEGER NOT NULL DEFAULT 0,
        approvals           INTEGER NOT NULL DEFAULT 0,
        masking_counts      TEXT    NOT NULL DEFAULT '{}',  -- JSON object
        recording_path      TEXT,
        recording_size      INTEGER,
        final_hash          TEXT,
        complete            INTEGER NOT NULL DEFAULT 0  -- 0/1
      );
      CREATE INDEX sessions_started ON sessions (started_ms, id);
      CREATE INDEX sessions_subject ON sessions (subject, started_ms);
      CREATE INDEX sessions_target  ON sessions (target, started_ms);
    `,
  },
  {
    version: 4,
    name: 'masking counts on audit events',
    // JSON object: masked values by masking rule; NULL when nothing was masked.
    sql: `ALTER TABLE audit_events ADD COLUMN masking TEXT;`,
  },
  {
    version: 5,
    name: 'audit events stored in batches',
    // A row and two index entries per statement cost 7-9 µs of CPU and about
    // 1 KB of WAL and checkpoint writes per statement; a row per committed
    // batch (format in audit-batches.ts) costs a fraction of both. The key
    // table lists, per batch, each distinct session, subject, target and
    // verdict, so a filter reads only batches that can hold a match; the
    // time index picks batches newest first and by time range.
    //
    // Existing rows move over in batches of 500 by id, each event carrying
    // its header inline and its time text as stored (t0 = 0: ms absolute).
    sql: `
      CREATE TABLE audit_batches (
        id      INTEGER PRIMARY KEY,
        min_ms  INTEGER,           -- earliest event instant (epoch ms); NULL when no event time parsed
        max_ms  INTEGER,           -- latest event instant
        count   INTEGER NOT NULL,  -- events in the batch
        events  TEXT    NOT NULL   -- JSON, see src/store/audit-batches.ts
      );
      CREATE INDEX audit_batches_time ON audit_batches (max_ms, id);
      CREATE TABLE audit_batch_keys (
        field  TEXT    NOT NULL,   -- 'session' | 'subject' | 'target' | 'verdict'
        value  TEXT    NOT NULL,
        batch  INTEGER NOT NULL,
        PRIMARY KEY (field, value, batch)
      ) WITHOUT ROWID;
      INSERT INTO audit_batches (id, min_ms, max_ms, count, events)
        SELECT id / 500 + 1, min(time_ms), max(time_ms), count(*),
               json_object('v', 1, 't0', 0, 'h', json_array(), 'e', json_group_array(json_array(
                 json_array(session_id, subject, target, protocol, policy),
                 time_ms, time, kind, text, verdict, duration_ms, row_count, rule, approval_id, sqlstate, error,
                 CASE WHEN json_valid(masking) THEN json(masking) END  -- the old reader read bad JSON as none
               ) ORDER BY id))
        FROM audit_events GROUP BY id / 500;
      INSERT OR IGNORE INTO audit_batch_keys (field, value, batch)
        SELECT 'session', session_id, id / 500 + 1 FROM audit_events
        UNION SELECT 'subject', subject, id / 500 + 1 FROM audit_events
        UNION SELECT 'target', target, id / 500 + 1 FROM audit_events
        UNION SELECT 'verdict', verdict, id / 500 + 1 FROM audit_events;
      DROP TABLE audit_events;
    `,
  },
  {
    version: 6,
    name: 'the issuer of an approval request',
    // Self-approval and time windows compare issuer and subject: one name
    // from two trusted issuers is two principals. NULL in earlier rows.
    sql: `ALTER TABLE approvals ADD COLUMN issuer TEXT;`,
  },
  {
    version: 7,
    name: 'audit batch keys by batch, for retention',
    // audit.retention deletes whole batches, and their key rows with them: by
    // batch, which the key table's primary key (field, value, batch) cannot
    // find without a scan. One more B-tree insert per key row, a handful per
    // committed batch (not per event).
    sql: `CREATE INDEX audit_batch_keys_batch ON audit_batch_keys (batch);`,
  },
];

/**
 * Not yet in src/errors.ts (listed in the task report); once it is, use
 * ErrorCodes.STORE_SCHEMA_TOO_NEW instead. The cast only widens the type.
 */
export const STORE_SCHEMA_TOO_NEW = ErrorCodes.STORE_SCHEMA_TOO_NEW;

/** Versions already applied, ascending. Creates the tracking table when missing. */
export function appliedVersions(db: Database.Database): number[] {
  db.exec(`CREATE TABLE IF NOT EXISTS schema_migrations (
    version    INTEGER PRIMARY KEY,
    name       TEXT NOT NULL,
    applied_at TEXT NOT NULL
  )`);
  const rows = db.prepare('SELECT version FROM schema_migrations ORDER BY version').all() as { version: number }[];
  return rows.map((r) => r.version);
}

/**
 * Brings the database up to `upTo` (default: the last step). Returns the
 * version before and after. Refuses a database written by a newer Sluice:
 * an older binary writing into a schema it does not know could corrupt it.
 */
export function migrate(
  db: Database.Database,
  opts: { steps?: readonly Migration[]; upTo?: number } = {},
): { from: number; to: number; applied: number[] } {
  const steps = opts.steps ?? MIGRATIONS;
  const applied = appliedVersions(db);
  const from = applied.length ? applied[applied.length - 1]! : 0;
  const latest = steps.length ? steps[steps.length - 1]!.version : 0;
  if (from > latest) {
    throw new SluiceError(
      STORE_SCHEMA_TOO_NEW,
      `the state database is at schema version ${from}, newer than this Sluice knows (${latest}); run the newer Sluice or restore an older copy of the state dir`,
    );
  }
  const target = opts.upTo ?? latest;
  const done = new Set(applied);
  const record = db.prepare('INSERT INTO schema_migrations (version, name, applied_at) VALUES (?, ?, ?)');
  const now: number[] = [];
  for (const step of steps) {
    if (step.version > target || done.has(step.version)) continue;
    db.transaction(() => {
      db.exec(step.sql);
      record.run(step.version, step.name, new Date().toISOString());
    })();
    now.push(step.version);
  }
  const after = appliedVersions(db);
  return { from, to: after.length ? after[after.length - 1]! : 0, applied: now };
}

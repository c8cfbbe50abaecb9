import { existsSync, statSync } from 'node:fs';
import { join } from 'node:path';
import Database from 'better-sqlite3';
import t from 'tap';
import { createLogger } from '../../src/log.js';
import { AuditWriter } from '../../src/store/audit-writer.js';
import { MIGRATIONS, appliedVersions, migrate } from '../../src/store/migrations.js';
import { openSqliteStore } from '../../src/store/sqlite.js';
import type { ApprovalRecord, AuditEvent, Store } from '../../src/store/types.js';

function captureLogger() {
  const lines: Record<string, unknown>[] = [];
  const logger = createLogger('debug', { write: (s: string) => void lines.push(JSON.parse(s)) });
  return { logger, lines };
}

function event(over: Partial<AuditEvent> = {}): AuditEvent {
  return {
    time: '2025-01-01T00:00:00.000Z',
    sessionId: 's1',
    subject: 'alice',
    target: 'app-db',
    protocol: 'postgres',
    kind: 'select',
    text: 'SELECT 1',
    verdict: 'allowed',
    ...over,
  };
}

function approval(over: Partial<ApprovalRecord> = {}): ApprovalRecord {
  return {
    id: 'apr_aaaa',
    status: 'pending',
    sessionId: 's1',
    subject: 'agent-7',
    target: 'app-db',
    protocol: 'postgres',
    policy: 'agents',
    rule: 'roles-need-approval',
    text: 'CREATE ROLE x',
    statementHash: 'ab'.repeat(32),
    fingerprint: 'create role x',
    createdAt: '2025-01-01T00:00:00.000Z',
    expiresAt: '2025-01-01T00:05:00.000Z',
    ...over,
  };
}

t.test('audit events round-trip with every field, and without the optional ones', async (t) => {
  const store = openSqliteStore(t.testdir());
  t.teardown(() => store.close());
  const full = event({
    text: "SELECT $1 -- params: ['x']\n\u0000é 🚀",
    verdict: 'approved',
    policy: 'agents',
    rule: 'r1',
    approvalId: 'apr_x',
    durationMs: 12.5,
    rows: 3,
    sqlstate: '42501',
    error: 'sluice: denied by rule "r1": because',
  });
  const bare = event({ time: '2025-01-01T00:00:01.000Z', protocol: 'redis', kind: 'client|kill', text: 'CLIENT KILL ID 1' });
  store.insertAuditEvents([full, bare]);
  const got = store.queryAuditEvents({});
  t.same(got, [bare, full], 'newest first, stored exactly as given');
  t.notOk('policy' in got[0]!, 'absent optional fields stay absent');
  store.insertAuditEvents([]);
  t.equal(store.queryAuditEvents({}).length, 2);
});

t.test('audit filters: session, subject, target, verdict, time, limit', async (t) => {
  const store = openSqliteStore(t.testdir());
  t.teardown(() => store.close());
  const events: AuditEvent[] = [];
  for (let i = 0; i < 40; i++) {
    events.push(
      event({
        time: new Date(Date.UTC(2025, 0, 1, 0, 0, i)).toISOString(),
        sessionId: `s${i % 4}`,
        subject: i % 2 ? 'alice' : 'bob',
        target: i % 5 ? 'app-db' : 'cache',
        verdict: i % 10 === 0 ? 'denied' : 'allowed',
        text: `q${i}`,
      }),
    );
  }
  store.insertAuditEvents(events);
  const texts = (q: Parameters<Store['queryAuditEvents']>[0]) => store.queryAuditEvents(q).map((e) => e.text);
  t.same(texts({ sessionId: 's3' }), ['q39', 'q35', 'q31', 'q27', 'q23', 'q19', 'q15', 'q11', 'q7', 'q3']);
  t.ok(store.queryAuditEvents({ subject: 'bob' }).every((e) => e.subject === 'bob'));
  t.equal(store.queryAuditEvents({ subject: 'bob' }).length, 20);
  t.same(texts({ target: 'cache' }), ['q35', 'q30', 'q25', 'q20', 'q15', 'q10', 'q5', 'q0']);
  t.same(texts({ verdict: 'denied' }), ['q30', 'q20', 'q10', 'q0']);
  t.same(texts({ verdict: 'denied', subject: 'bob', target: 'cache' }), ['q30', 'q20', 'q10', 'q0']);
  t.same(texts({ verdict: 'denied', subject: 'alice' }), []);
  t.same(
    texts({ since: '2025-01-01T00:00:10.000Z', until: '2025-01-01T00:00:12.000Z' }),
    ['q12', 'q11', 'q10'],
    'since and until are inclusive',
  );
  t.same(
    texts({ since: '2025-01-01T01:00:37+01:00' }),
    ['q39', 'q38', 'q37'],
    'a filter with an offset compares the same instant',
  );
  t.same(texts({ limit: 2 }), ['q39', 'q38']);
  t.equal(store.queryAuditEvents({}).length, 40, 'default limit 100');
  t.throws(() => store.queryAuditEvents({ since: 'yesterday' }), RangeError, 'a bad time filter is refused, not ignored');
  // the same filter shape twice: the cached prepared statement is reused with new values
  t.same(texts({ sessionId: 's0', limit: 1 }), ['q36']);
  t.same(texts({ sessionId: 's1', limit: 1 }), ['q37']);
});

t.test('audit limit is capped at 1000', async (t) => {
  const store = openSqliteStore(t.testdir());
  t.teardown(() => store.close());
  store.insertAuditEvents(Array.from({ length: 1100 }, (_, i) => event({ text: `q${i}` })));
  t.equal(store.queryAuditEvents({ limit: 5000 }).length, 1000);
  t.equal(store.queryAuditEvents({ limit: 0 }).length, 1);
});

t.test('approvals round-trip, update in place, list filters', async (t) => {
  const dir = t.testdir();
  const store = openSqliteStore(dir);
  const a = approval();
  store.saveApproval(a);
  t.same(store.getApproval('apr_aaaa'), a);
  t.equal(store.getApproval('apr_nope'), undefined);
  const decided: ApprovalRecord = {
    ...a,
    status: 'approved',
    decidedAt: '2025-01-01T00:01:00.000Z',
    decidedBy: 'sec-1',
    windowUntil: '2025-01-01T00:16:00.000Z',
  };
  store.saveApproval(decided);
  t.same(store.getApproval('apr_aaaa'), decided, 'saving again updates the decision');
  store.saveApproval(approval({ id: 'apr_bbbb', subject: 'agent-8', createdAt: '2025-01-01T00:02:00.000Z' }));
  store.saveApproval(
    approval({ id: 'apr_cccc', status: 'denied', reason: 'no', target: 'cache', createdAt: '2025-01-01T00:03:00.000Z' }),
  );
  t.same(store.listApprovals({}).map((r) => r.id), ['apr_cccc', 'apr_bbbb', 'apr_aaaa'], 'newest first');
  t.same(store.listApprovals({ status: 'pending' }).map((r) => r.id), ['apr_bbbb']);
  t.same(store.listApprovals({ subject: 'agent-7' }).map((r) => r.id), ['apr_cccc', 'apr_aaaa']);
  t.same(store.listApprovals({ target: 'cache' }).map((r) => r.id), ['apr_cccc']);
  t.same(store.listApprovals({ limit: 1 }).map((r) => r.id), ['apr_cccc']);
  store.close();
  store.close(); // idempotent
  const again = openSqliteStore(dir);
  t.same(again.getApproval('apr_aaaa'), decided, 'persisted across reopen');
  again.close();
});

t.test('WAL mode, busy timeout, owner-only file, file option', async (t) => {
  const dir = t.testdir();
  const store = openSqliteStore(dir);
  store.insertAuditEvents([event()]);
  const file = join(dir, 'sluice.db');
  t.ok(existsSync(file + '-wal'), 'WAL file created');
  t.equal(statSync(file).mode & 0o777, 0o600, 'database file is owner-only');
  const raw = new Database(file, { readonly: true });
  t.equal(raw.pragma('journal_mode', { simple: true }), 'wal');
  raw.close();
  store.close();
  const other = openSqliteStore(dir, { file: 'other.db' });
  other.close();
  t.ok(existsSync(join(dir, 'other.db')));
});

t.test('a concurrent reader neither blocks the writer nor sees half a batch', async (t) => {
  const dir = t.testdir();
  const store = openSqliteStore(dir);
  t.teardown(() => store.close());
  store.insertAuditEvents([event()]);
  const reader = new Database(join(dir, 'sluice.db'), { readonly: true });
  t.teardown(() => reader.close());
  const count = reader.prepare('SELECT coalesce(sum(count), 0) AS n FROM audit_batches');
  reader.exec('BEGIN');
  t.equal((count.get() as { n: number }).n, 1);
  // The writer commits while the reader's transaction is open (WAL: no SQLITE_BUSY).
  store.insertAuditEvents(Array.from({ length: 500 }, () => event()));
  t.equal((count.get() as { n: number }).n, 1, 'reader keeps its snapshot');
  reader.exec('COMMIT');
  t.equal((count.get() as { n: number }).n, 501, 'then sees the whole batch');
  // A second store on the same file (e.g. the CLI) reads what the first wrote.
  const second = openSqliteStore(dir);
  t.equal(second.queryAuditEvents({ limit: 1000 }).length, 501);
  second.close();
});

t.test('migrations: an old-version database is brought up to date, data kept', async (t) => {
  const dir = t.testdir();
  const file = join(dir, 'sluice.db');
  const old = new Database(file);
  const m1 = migrate(old, { upTo: 1 });
  t.same(m1, { from: 0, to: 1, applied: [1] });
  old
    .prepare(
      `INSERT INTO audit_events (time, time_ms, session_id, subject, target, protocol, kind, text, verdict)
       VALUES ('2024-06-01T00:00:00.000Z', ?, 'old', 'alice', 'app-db', 'postgres', 'select', 'SELECT 1', 'allowed')`,
    )
    .run(Date.parse('2024-06-01T00:00:00.000Z'));
  const indexesBefore = old.prepare("SELECT name FROM sqlite_master WHERE type = 'index' AND name LIKE 'audit_%'").all();
  t.same(indexesBefore, [], 'version 1 has no indexes yet');
  old.close();

  const { logger, lines } = captureLogger();
  const store = openSqliteStore(dir, { logger });
  t.match(lines, [{ msg: 'state database migrated', from: 1, to: MIGRATIONS[MIGRATIONS.length - 1]!.version }]);
  t.same(store.queryAuditEvents({ sessionId: 'old' }).map((e) => e.text), ['SELECT 1'], 'old rows survive');
  store.close();

  const raw = new Database(file);
  t.same(appliedVersions(raw), MIGRATIONS.map((m) => m.version));
  const names = (raw.prepare("SELECT name FROM sqlite_master WHERE type = 'index'").all() as { name: string }[]).map(
    (r) => r.name,
  );
  for (const want of ['audit_batches_time', 'approvals_status', 'approvals_subject']) {
    t.ok(names.includes(want), `index ${want}`);
  }
  t.same(raw.prepare("SELECT name FROM sqlite_master WHERE name = 'audit_events'").all(), [], 'the row-per-event table is gone');
  t.same(migrate(raw).applied, [], 'migrating again is a no-op');
  raw.close();
});

t.test('migration 5: row-per-event audit rows move into batches, every field and every filter intact', async (t) => {
  const dir = t.testdir();
  const file = join(dir, 'sluice.db');
  const old = new Database(file);
  migrate(old, { upTo: 4 });
  const insert = old.prepare(
    `INSERT INTO audit_events (time, time_ms, session_id, subject, target, protocol, kind, text, verdict, policy, rule,
       approval_id, duration_ms, row_count, sqlstate, error, masking)
     VALUES (@time, @time_ms, @session_id, @subject, @target, @protocol, @kind, @text, @verdict, @policy, @rule,
       @approval_id, @duration_ms, @row_count, @sqlstate, @error, @masking)`,
  );
  const base = {
    policy: null, rule: null, approval_id: null, duration_ms: null, row_count: null, sqlstate: null, error: null, masking: null,
  };
  // 1203 rows: three batches of 500 and a partial one; ids start at 1.
  old.transaction(() => {
    for (let i = 0; i < 1203; i++) {
      const time = new Date(Date.UTC(2024, 5, 1, 0, 0, 0, i)).toISOString();
      insert.run({
        ...base,
        time,
        time_ms: Date.parse(time),
        session_id: `s${i % 3}`,
        subject: i % 2 ? 'alice' : 'bob',
        target: i % 7 ? 'app-db' : 'cache',
        protocol: i % 11 ? 'postgres' : 'redis',
        kind: 'select',
        text: `q${i}`,
        verdict: i % 100 === 0 ? 'denied' : 'allowed',
      });
    }
    insert.run({
      ...base,
      time: '2024-06-01T02:00:00+01:00',
      time_ms: Date.parse('2024-06-01T02:00:00+01:00'),
      session_id: 'full',
      subject: 'carol',
      target: 'app-db',
      protocol: 'postgres',
      kind: 'select,update',
      text: "SELECT $1 -- params: ['x'] é 🚀",
      verdict: 'approved',
      policy: 'agents',
      rule: 'r1',
      approval_id: 'apr_x',
      duration_ms: 12.5,
      row_count: 3,
      sqlstate: '42501',
      error: 'boom',
      masking: '{"emails":2}',
    });
    insert.run({ ...base, time: 'not a time', time_ms: null, session_id: 'bad', subject: 'carol', target: 'app-db', protocol: 'postgres', kind: 'select', text: 'no time', verdict: 'allowed', masking: '{not json' });
  })();
  old.close();

  const store = openSqliteStore(dir);
  t.teardown(() => store.close());
  t.same(store.queryAuditEvents({ sessionId: 'full' }), [
    {
      time: '2024-06-01T02:00:00+01:00',
      sessionId: 'full',
      subject: 'carol',
      target: 'app-db',
      protocol: 'postgres',
      kind: 'select,update',
      text: "SELECT $1 -- params: ['x'] é 🚀",
      verdict: 'approved',
      policy: 'agents',
      rule: 'r1',
      approvalId: 'apr_x',
      durationMs: 12.5,
      rows: 3,
      sqlstate: '42501',
      error: 'boom',
      masking: { emails: 2 },
    },
  ]);
  t.same(store.queryAuditEvents({ sessionId: 'bad' }).map((e) => e.time), ['not a time'], 'an unparsed time survives');
  t.notOk('masking' in store.queryAuditEvents({ sessionId: 'bad' })[0]!, 'masking text that is not JSON does not stop the migration');
  t.same(store.queryAuditEvents({ subject: 'carol' }).map((e) => e.text), ["SELECT $1 -- params: ['x'] é 🚀", 'no time'], 'no instant sorts last');
  t.same(store.queryAuditEvents({ verdict: 'denied', limit: 1000 }).map((e) => e.text), ['q1200', 'q1100', 'q1000', 'q900', 'q800', 'q700', 'q600', 'q500', 'q400', 'q300', 'q200', 'q100', 'q0']);
  t.same(store.queryAuditEvents({ limit: 3 }).map((e) => e.text), ["SELECT $1 -- params: ['x'] é 🚀", 'q1202', 'q1201']);
  t.equal(store.queryAuditEvents({ subject: 'alice', limit: 1000 }).length, 601);
  t.same(
    store.queryAuditEvents({ target: 'cache', since: '2024-06-01T00:00:00.490Z', until: '2024-06-01T00:00:00.510Z' }).map((e) => e.text),
    ['q504', 'q497', 'q490'],
    'a time range across two migrated batches',
  );
  const redis = store.queryAuditEvents({ sessionId: 's0', limit: 1000 }).filter((e) => e.protocol === 'redis');
  t.equal(redis.length, 37, 'the protocol comes over per event');
});

t.test('migrations: a failing step rolls back; a newer database is refused', async (t) => {
  const dir = t.testdir();
  const file = join(dir, 'sluice.db');
  const db = new Database(file);
  migrate(db);
  const last = MIGRATIONS[MIGRATIONS.length - 1]!.version;
  t.throws(() =>
    migrate(db, {
      steps: [...MIGRATIONS, { version: last + 1, name: 'broken', sql: 'CREATE TABLE half (a); THIS IS NOT SQL' }],
    }),
  );
  t.same(db.prepare("SELECT name FROM sqlite_master WHERE name = 'half'").all(), [], 'nothing of the step remains');
  t.equal(appliedVersions(db).at(-1), last);
  db.prepare('INSERT INTO schema_migrations (version, name, applied_at) VALUES (?, ?, ?)').run(999, 'future', 'x');
  db.close();
  t.throws(() => openSqliteStore(dir), { code: 'SLUICE_STORE_SCHEMA_TOO_NEW' });
});

/** A store that records each batch, optionally failing the first few. */
function spyStore(inner: Store, failFirst = 0) {
  const batches: number[] = [];
  let calls = 0;
  const store: Store = {
    insertAuditEvents(events) {
      calls++;
      if (calls <= failFirst) throw new Error('disk full');
      batches.push(events.length);
      inner.insertAuditEvents(events);
    },
    queryAuditEvents: (q) => inner.queryAuditEvents(q),
    saveApproval: (r) => inner.saveApproval(r),
    getApproval: (id) => inner.getApproval(id),
    listApprovals: (q) => inner.listApprovals(q),
    close: () => inner.close(),
  };
  return { store, batches, calls: () => calls };
}

function countRows(dir: string): number {
  const raw = new Database(join(dir, 'sluice.db'), { readonly: true });
  const n = (raw.prepare('SELECT coalesce(sum(count), 0) AS n FROM audit_batches').get() as { n: number }).n;
  raw.close();
  return n;
}

t.test('audit writer: 100k events, write() does no I/O, batches of 500, all present after close', async (t) => {
  const dir = t.testdir();
  const inner = openSqliteStore(dir);
  const spy = spyStore(inner);
  const writer = new AuditWriter(spy.store);
  for (let i = 0; i < 100_000; i++) writer.write(event({ sessionId: `s${i % 7}`, text: `q${i}` }));
  // write() only queues: the store has not been called while the loop ran.
  t.equal(spy.calls(), 0, 'no store call from write()');
  t.same(writer.stats, { written: 0, dropped: 0, queued: 100_000, failedBatches: 0, maxBatchMs: 0 });
  // Let the event loop drain some batches on its own (setImmediate path).
  while (writer.stats.written < 1500) await new Promise((r) => setImmediate(r));
  await writer.close();
  t.equal(writer.stats.written, 100_000);
  t.equal(writer.stats.queued, 0);
  t.ok(spy.batches.every((n) => n <= 500), 'no batch larger than maxBatch');
  t.equal(spy.batches.reduce((a, b) => a + b, 0), 100_000);
  t.equal(spy.batches.length, 200, '100k events in 200 transactions');
  t.comment(`slowest 500-row batch: ${writer.stats.maxBatchMs.toFixed(2)} ms`);
  inner.close();
  t.equal(countRows(dir), 100_000, 'every event is in the database');
});

t.test('audit writer: timer flush, close flushes the rest, writes after close are dropped', async (t) => {
  const dir = t.testdir();
  const inner = openSqliteStore(dir);
  const spy = spyStore(inner);
  const { logger, lines } = captureLogger();
  const writer = new AuditWriter(spy.store, { flushIntervalMs: 5, logger });
  writer.write(event({ text: 'a' }));
  writer.write(event({ text: 'b' }));
  while (writer.stats.written < 2) await new Promise((r) => setTimeout(r, 5));
  t.same(spy.batches, [2], 'a partial batch goes out on the timer');

  const slow = new AuditWriter(spy.store, { flushIntervalMs: 3_600_000 });
  slow.write(event({ text: 'c' }));
  slow.flush();
  t.equal(slow.stats.written, 1, 'flush() writes now');
  slow.write(event({ text: 'd' }));
  slow.write(event({ text: 'e' }));
  await slow.close();
  t.equal(slow.stats.written, 3, 'close() writes what is queued');
  await slow.close();
  slow.write(event({ text: 'late' }));
  t.equal(slow.stats.dropped, 1, 'a write after close is counted as dropped');

  await writer.close();
  inner.close();
  t.equal(countRows(dir), 5);
  t.notOk(lines.some((l) => l.level === 50), 'no errors logged');
});

t.test('audit writer: a full batch sent early cancels the flush timer, so the next events wait their own interval', async (t) => {
  const dir = t.testdir();
  const inner = openSqliteStore(dir);
  const spy = spyStore(inner);
  const writer = new AuditWriter(spy.store, { flushIntervalMs: 100, maxBatch: 10 });
  // The first event arms the flush timer (due at t0 + 100); the batch fills
  // at once and goes out on the next turn instead.
  for (let i = 0; i < 10; i++) writer.write(event({ text: `q${i}` }));
  await new Promise((r) => setImmediate(r));
  t.same(spy.batches, [10], 'the full batch went out on the next turn');
  await new Promise((r) => setTimeout(r, 50));
  // Written at t1 >= t0 + 50: its own timer is due at t1 + 100. The check
  // below is due at t1 + 60, after t0 + 100 and before t1 + 100; timers run
  // in the order they are due, however late the process is.
  writer.write(event({ text: 'next' }));
  await new Promise((r) => setTimeout(r, 60));
  t.same(spy.batches, [10], 'the first timer did not send a batch of one');
  while (writer.stats.written < 11) await new Promise((r) => setTimeout(r, 10));
  t.same(spy.batches, [10, 1], 'the next event went out on its own timer');
  await writer.close();
  inner.close();
});

t.test('audit writer: a full queue drops, counts and logs; never throws', async (t) => {
  const inner = openSqliteStore(t.testdir());
  t.teardown(() => inner.close());
  const { logger, lines } = captureLogger();
  const writer = new AuditWriter(inner, { maxQueue: 10, flushIntervalMs: 3_600_000, logger });
  for (let i = 0; i < 15; i++) writer.write(event({ text: `q${i}` }));
  t.match(writer.stats, { queued: 10, dropped: 5 });
  await writer.close();
  t.match(writer.stats, { written: 10, dropped: 5, queued: 0 });
  t.same(
    inner.queryAuditEvents({}).map((e) => e.text).sort(),
    Array.from({ length: 10 }, (_, i) => `q${i}`).sort(),
    'the oldest events are kept, the overflow dropped',
  );
  t.match(lines, [{ level: 40, msg: 'audit events dropped', dropped: 5, droppedTotal: 5 }]);
});

t.test('audit writer: a failing store keeps the batch and retries it', async (t) => {
  const inner = openSqliteStore(t.testdir());
  t.teardown(() => inner.close());
  const spy = spyStore(inner, 2);
  const { logger, lines } = captureLogger();
  const writer = new AuditWriter(spy.store, { flushIntervalMs: 2, maxBatch: 4, logger });
  for (let i = 0; i < 10; i++) writer.write(event({ text: `q${i}` }));
  while (writer.stats.written < 10) await new Promise((r) => setTimeout(r, 2));
  t.equal(writer.stats.failedBatches, 2);
  t.same(spy.batches, [4, 4, 2]);
  t.equal(inner.queryAuditEvents({}).length, 10, 'nothing lost');
  t.equal(lines.filter((l) => l.msg === 'audit batch could not be written; retrying').length, 1, 'logged once per outage');
  t.match(lines, [{ msg: 'audit batch could not be written; retrying' }, { msg: 'audit store writable again' }]);
  await writer.close();
});

t.test('audit writer: close with a store that still fails logs what is lost', async (t) => {
  const inner = openSqliteStore(t.testdir());
  t.teardown(() => inner.close());
  const spy = spyStore(inner, 1000);
  const { logger, lines } = captureLogger();
  const writer = new AuditWriter(spy.store, { flushIntervalMs: 3_600_000, logger });
  writer.write(event());
  await writer.close();
  t.match(lines, [{ msg: 'audit batch could not be written; retrying' }, { level: 50, lost: 1 }]);
});

/** The store's methods, with `auditFile` set as given and a count of the batches committed on the event loop. */
function threadStore(inner: Store, auditFile: string) {
  let loopBatches = 0;
  const store: Store = {
    auditFile,
    insertAuditEvents(events) {
      loopBatches++;
      inner.insertAuditEvents(events);
    },
    insertEncodedAuditBatch(batch) {
      loopBatches++;
      inner.insertEncodedAuditBatch!(batch);
    },
    queryAuditEvents: (q) => inner.queryAuditEvents(q),
    saveApproval: (r) => inner.saveApproval(r),
    getApproval: (id) => inner.getApproval(id),
    listApprovals: (q) => inner.listApprovals(q),
    close: () => inner.close(),
  };
  return { store, loopBatches: () => loopBatches };
}

t.test('audit writer: the commit thread writes batches in order; flush() waits for the one in flight', async (t) => {
  const dir = t.testdir();
  const inner = openSqliteStore(dir);
  t.teardown(() => inner.close());
  t.ok(inner.auditFile, 'the SQLite store names its file');
  const { store, loopBatches } = threadStore(inner, inner.auditFile!);
  const { logger, lines } = captureLogger();
  const writer = new AuditWriter(store, { maxBatch: 100, logger });
  for (let i = 0; i < 1000; i++) writer.write(event({ sessionId: `s${i % 3}`, text: `q${i}` }));
  while (writer.stats.written < 300) await new Promise((r) => setImmediate(r));
  t.equal(loopBatches(), 0, 'batches committed while the loop ran went through the thread');
  for (let i = 1000; i < 1050; i++) writer.write(event({ sessionId: `s${i % 3}`, text: `q${i}` }));
  writer.flush();
  t.match(writer.stats, { written: 1050, queued: 0, failedBatches: 0 }, 'flush() writes everything now');
  // Same instant for all: newest first is insertion order reversed, across batches from both threads.
  t.same(
    inner.queryAuditEvents({ limit: 1000 }).map((e) => e.text),
    Array.from({ length: 1000 }, (_, i) => `q${1049 - i}`),
  );
  t.same(inner.queryAuditEvents({ sessionId: 's1', limit: 1000 }).length, 350);
  await writer.close();
  t.equal(countRows(dir), 1050);
  t.notOk(lines.some((l) => l.level === 50), 'no errors logged');
});

t.test('audit writer: a commit thread that cannot open the database fails its batch; the event loop commits it', async (t) => {
  const dir = t.testdir();
  const inner = openSqliteStore(dir);
  t.teardown(() => inner.close());
  const { store, loopBatches } = threadStore(inner, join(dir, 'no-such-dir', 'sluice.db'));
  const { logger, lines } = captureLogger();
  const writer = new AuditWriter(store, { maxBatch: 4, flushIntervalMs: 2, logger });
  for (let i = 0; i < 10; i++) writer.write(event({ text: `q${i}` }));
  while (writer.stats.written < 10) await new Promise((r) => setTimeout(r, 2));
  t.ok(writer.stats.failedBatches >= 1, 'the batch sent to the thread failed');
  t.ok(loopBatches() >= 3, 'then every batch was committed on the event loop');
  t.same(
    inner.queryAuditEvents({}).map((e) => e.text),
    Array.from({ length: 10 }, (_, i) => `q${9 - i}`),
    'nothing lost, order kept',
  );
  t.match(lines, [{ msg: 'audit batch could not be written; retrying' }]);
  t.ok(lines.some((l) => l.msg === 'audit commit thread unavailable; committing audit batches on the event loop'));
  await writer.close();
});

t.test('audit batches: every filter and the order match a plain in-memory filter, across overlapping batches', async (t) => {
  const store = openSqliteStore(t.testdir());
  t.teardown(() => store.close());
  // A deterministic pseudo-random sequence (no flaky seeds).
  let seed = 42;
  const rnd = (n: number): number => {
    seed = (seed * 1103515245 + 12345) % 2147483648;
    return seed % n;
  };
  const odd = ['2025-01-01T01:00:00.250+01:00', 'not a time', '2025-02-30T00:00:00.000Z', '2025-01-01T00:00:01.5Z'];
  const all: AuditEvent[] = [];
  const base = Date.UTC(2025, 0, 1);
  for (let b = 0; b < 40; b++) {
    const batch: AuditEvent[] = [];
    const size = 1 + rnd(60);
    for (let i = 0; i < size; i++) {
      // Times overlap between batches (a long statement is written after later ones) and repeat (ties).
      const time = rnd(50) === 0 ? odd[rnd(odd.length)]! : new Date(base + b * 100 + rnd(400) - 200).toISOString();
      const e = event({
        time,
        sessionId: `s${rnd(5)}`,
        subject: ['alice', 'bob', 'carol'][rnd(3)]!,
        target: rnd(4) ? 'app-db' : 'cache',
        verdict: rnd(8) ? 'allowed' : 'denied',
        text: `q${all.length}`,
        ...(rnd(3) === 0 ? { durationMs: rnd(100) / 4, rows: rnd(10) } : {}),
        ...(rnd(10) === 0 ? { masking: { emails: 1 + rnd(3) } } : {}),
        ...(rnd(10) === 0 ? { sqlstate: '42501', error: 'no', rule: 'r' } : {}),
      });
      batch.push(e);
      all.push(e);
    }
    store.insertAuditEvents(batch);
  }
  const instant = (e: AuditEvent): number => {
    const ms = Date.parse(e.time);
    return Number.isNaN(ms) ? -Infinity : ms;
  };
  const expected = (q: Parameters<Store['queryAuditEvents']>[0]): string[] => {
    const since = q.since === undefined ? undefined : Date.parse(q.since);
    const until = q.until === undefined ? undefined : Date.parse(q.until);
    return all
      .map((e, seq) => ({ e, seq, ms: instant(e) }))
      .filter(({ e, ms }) =>
        (q.sessionId === undefined || e.sessionId === q.sessionId) &&
        (q.subject === undefined || e.subject === q.subject) &&
        (q.target === undefined || e.target === q.target) &&
        (q.verdict === undefined || e.verdict === q.verdict) &&
        (since === undefined || ms >= since) &&
        (until === undefined || (ms !== -Infinity && ms <= until)),
      )
      .sort((a, b) => (a.ms !== b.ms ? b.ms - a.ms : b.seq - a.seq))
      .slice(0, q.limit ?? 100)
      .map(({ e }) => e.text);
  };
  const queries: Parameters<Store['queryAuditEvents']>[0][] = [
    {},
    { limit: 1000 },
    { limit: 7 },
    { sessionId: 's2', limit: 1000 },
    { sessionId: 's3', limit: 5 },
    { subject: 'bob', limit: 30 },
    { target: 'cache', verdict: 'denied', limit: 1000 },
    { verdict: 'denied', limit: 3 },
    { since: new Date(base + 1000).toISOString(), until: new Date(base + 1500).toISOString(), limit: 1000 },
    { since: new Date(base + 2000).toISOString(), limit: 10 },
    { until: new Date(base + 300).toISOString(), subject: 'carol' },
    { sessionId: 's1', subject: 'alice', target: 'app-db', verdict: 'allowed', since: new Date(base + 500).toISOString(), limit: 1000 },
    { sessionId: 'nobody' },
  ];
  for (const q of queries) {
    t.same(store.queryAuditEvents(q).map((e) => e.text), expected(q), JSON.stringify(q));
  }
  // Every event comes back exactly as written.
  const byText = new Map(all.map((e) => [e.text, e]));
  for (const got of store.queryAuditEvents({ limit: 1000 })) t.same(got, byText.get(got.text));
});

t.test('audit batches: one row per batch, keys per distinct value, canonical times not stored twice', async (t) => {
  const dir = t.testdir();
  const store = openSqliteStore(dir);
  const batch = [
    event({ time: '2025-01-01T00:00:01.500Z', sessionId: 'a', text: 'first' }),
    // Earlier than the first: instants are relative to the first one and may be negative.
    event({ time: '2025-01-01T00:00:00.250Z', sessionId: 'b', subject: 'bob', verdict: 'denied', text: 'second' }),
    event({ time: '2025-01-01T01:00:00.000+01:00', sessionId: 'a', text: 'offset' }),
    event({ time: '2025-13-01T00:00:00.000Z', sessionId: 'a', text: 'bad month' }),
  ];
  store.insertAuditEvents(batch);
  store.close();
  const raw = new Database(join(dir, 'sluice.db'), { readonly: true });
  t.teardown(() => raw.close());
  const rows = raw.prepare('SELECT min_ms, max_ms, count, events FROM audit_batches').all() as { min_ms: number; max_ms: number; count: number; events: string }[];
  t.equal(rows.length, 1, 'one row for the batch');
  t.same(rows[0]!.min_ms, Date.parse('2025-01-01T00:00:00.000Z'));
  t.same(rows[0]!.max_ms, Date.parse('2025-01-01T00:00:01.500Z'));
  t.equal(rows[0]!.count, 4);
  const doc = JSON.parse(rows[0]!.events) as { e: unknown[][] };
  t.same(doc.e.map((e) => [e[1], e[2]]), [[0, null], [-1250, null], [-1500, '2025-01-01T01:00:00.000+01:00'], [null, '2025-13-01T00:00:00.000Z']]);
  const keys = raw.prepare('SELECT field, value FROM audit_batch_keys ORDER BY field, value').all();
  t.same(keys, [
    { field: 'session', value: 'a' },
    { field: 'session', value: 'b' },
    { field: 'subject', value: 'alice' },
    { field: 'subject', value: 'bob' },
    { field: 'target', value: 'app-db' },
    { field: 'verdict', value: 'allowed' },
    { field: 'verdict', value: 'denied' },
  ]);
  const again = openSqliteStore(dir);
  t.same(again.queryAuditEvents({}).map((e) => e.time), ['2025-01-01T00:00:01.500Z', '2025-01-01T00:00:00.250Z', '2025-01-01T01:00:00.000+01:00', '2025-13-01T00:00:00.000Z'], 'by instant, the unparsed last, each time text as written');
  again.close();
});

t.test('audit batches: a prepared statement is stored once per batch and read back with its parameters', async (t) => {
  const dir = t.testdir();
  const store = openSqliteStore(dir);
  const text = 'SELECT abalance FROM pgbench_accounts WHERE aid = $1';
  store.insertAuditEvents([
    event({ text, params: '["1"]', rows: 1 }),
    event({ text: 'SELECT 2' }),
    event({ text, params: '["2"]', rows: 1 }),
    event({ text: 'UPDATE t SET a = $1', params: '["x \\"y\\""]' }),
  ]);
  store.close();
  const raw = new Database(join(dir, 'sluice.db'), { readonly: true });
  t.teardown(() => raw.close());
  const json = (raw.prepare('SELECT events FROM audit_batches').get() as { events: string }).events;
  t.equal(json.split(text).length - 1, 1, 'the statement text is written once');
  const doc = JSON.parse(json) as { v: number; s: string[]; e: unknown[][] };
  t.equal(doc.v, 2);
  t.same(doc.s, [text, 'UPDATE t SET a = $1']);
  t.same(doc.e.map((e) => e[4]), [[0, '["1"]'], 'SELECT 2', [0, '["2"]'], [1, '["x \\"y\\""]']]);
  const again = openSqliteStore(dir);
  t.teardown(() => again.close());
  const read = again.queryAuditEvents({}).reverse();
  t.same(read.map((e) => e.text), [`${text} -- params: ["1"]`, 'SELECT 2', `${text} -- params: ["2"]`, 'UPDATE t SET a = $1 -- params: ["x \\"y\\""]']);
  t.notOk(read.some((e) => 'params' in e), 'readers see the parameters in the text only');
});

t.test('audit batches: version 1 batches written by earlier releases are still read', async (t) => {
  const dir = t.testdir();
  openSqliteStore(dir).close();
  const db = new Database(join(dir, 'sluice.db'));
  const t0 = Date.parse('2025-01-01T00:00:00.000Z');
  const v1 = { v: 1, t0, h: [['s1', 'alice', 'app-db', 'postgres', 'p']], e: [[0, 0, null, 'select', 'SELECT $1 -- params: ["7"]', 'allowed', 3, 1]] };
  const id = db.prepare('INSERT INTO audit_batches (min_ms, max_ms, count, events) VALUES (?, ?, 1, ?)').run(t0, t0, JSON.stringify(v1)).lastInsertRowid;
  for (const [field, value] of [['session', 's1'], ['subject', 'alice'], ['target', 'app-db'], ['verdict', 'allowed']]) {
    db.prepare('INSERT INTO audit_batch_keys (field, value, batch) VALUES (?, ?, ?)').run(field, value, id);
  }
  db.close();
  const store = openSqliteStore(dir);
  t.teardown(() => store.close());
  t.match(store.queryAuditEvents({ subject: 'alice' }), [
    { time: '2025-01-01T00:00:00.000Z', sessionId: 's1', policy: 'p', kind: 'select', text: 'SELECT $1 -- params: ["7"]', durationMs: 3, rows: 1 },
  ]);
});

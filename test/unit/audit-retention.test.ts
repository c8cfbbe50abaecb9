/**
 * audit.retention: old audit batches and old, finished approval requests
 * are purged from a real SQLite store; pending requests, open windows and
 * anything newer than the cutoff stay.
 */
import t from 'tap';
import { createLogger } from '../../src/log.js';
import { AuditRetention } from '../../src/store/audit-retention.js';
import { openSqliteStore } from '../../src/store/sqlite.js';
import type { ApprovalRecord, AuditEvent } from '../../src/store/types.js';

const DAY = 24 * 3_600_000;
const now = Date.parse('2026-06-01T00:00:00.000Z');
const iso = (ms: number): string => new Date(ms).toISOString();

function event(time: number, sessionId: string, i = 0): AuditEvent {
  return { time: iso(time + i), sessionId, subject: 'ci-job', target: 'app-db', protocol: 'postgres', kind: 'select', text: `SELECT ${i}`, verdict: 'allowed' };
}

function approval(id: string, over: Partial<ApprovalRecord>): ApprovalRecord {
  return {
    id,
    status: 'denied',
    sessionId: 's',
    subject: 'agent',
    target: 'app-db',
    protocol: 'postgres',
    policy: 'p',
    rule: 'r',
    text: 'DROP TABLE x',
    statementHash: 'h',
    fingerprint: 'f',
    createdAt: iso(now - 100 * DAY),
    expiresAt: iso(now - 100 * DAY + 300_000),
    decidedAt: iso(now - 100 * DAY + 60_000),
    ...over,
  };
}

t.test('purges audit batches and finished approval requests older than the retention, nothing newer', async (t) => {
  const store = openSqliteStore(t.testdir());
  t.teardown(() => store.close());
  const lines: string[] = [];
  const logger = createLogger('info', { write: (l: string) => void lines.push(l) });
  // 1,000 old events in batches of 500 (one insert = one batch) and a newer batch.
  for (let b = 0; b < 2; b++) store.insertAuditEvents(Array.from({ length: 500 }, (_, i) => event(now - 40 * DAY + b * 1000, 'old-session', i)));
  store.insertAuditEvents([event(now - 10 * DAY, 'new-session')]);
  // A batch that spans the cutoff goes only once its newest event is past it.
  store.insertAuditEvents([event(now - 31 * DAY, 'straddling'), event(now - 29 * DAY, 'straddling')]);

  store.saveApproval(approval('apr_old_denied', {}));
  store.saveApproval(approval('apr_old_expired', { status: 'expired', decidedAt: undefined }));
  store.saveApproval(approval('apr_old_window_open', { status: 'used', windowUntil: iso(now + DAY) }));
  store.saveApproval(approval('apr_old_window_closed', { status: 'used', windowUntil: iso(now - 60 * DAY) }));
  store.saveApproval(approval('apr_pending', { status: 'pending', decidedAt: undefined }));
  store.saveApproval(approval('apr_recent', { createdAt: iso(now - DAY), decidedAt: iso(now - DAY) }));

  const retention = new AuditRetention(store, 30 * DAY, logger);
  t.same(await retention.runOnce(now), { batches: 2, events: 1000, approvals: 3 });
  const left = store.queryAuditEvents({ limit: 10_000 });
  t.same([...new Set(left.map((e) => e.sessionId))].sort(), ['new-session', 'straddling'], 'the newer batches stay whole');
  t.same(store.queryAuditEvents({ sessionId: 'old-session', limit: 10 }), [], 'a filter by session finds none of the purged');
  t.same(
    store.listApprovals({ limit: 100 }).map((a) => a.id).sort(),
    ['apr_old_window_open', 'apr_pending', 'apr_recent'],
    'a pending request and an open window are never purged',
  );
  t.match(lines.join(''), /"msg":"audit retention purged"/);

  t.same(await retention.runOnce(now), { batches: 0, events: 0, approvals: 0 }, 'a second run finds nothing');
  t.same(await retention.runOnce(now + 2 * DAY), { batches: 1, events: 2, approvals: 0 }, 'the straddling batch, once wholly past');
});

t.test('a large trail is purged in chunks, the event loop turning between them', async (t) => {
  const store = openSqliteStore(t.testdir());
  t.teardown(() => store.close());
  for (let b = 0; b < 450; b++) store.insertAuditEvents([event(now - 40 * DAY + b, `s${b}`)]);
  const retention = new AuditRetention(store, 30 * DAY, createLogger('silent'));
  let turns = 0;
  const ticker = setInterval(() => turns++, 0);
  const result = await retention.runOnce(now);
  clearInterval(ticker);
  t.same(result, { batches: 450, events: 450, approvals: 0 });
  t.ok(turns >= 1, `timers ran while it purged (${turns})`);
  t.same(store.queryAuditEvents({ limit: 10 }), []);
});

t.test('retention 0 keeps everything; a failing store is logged, not thrown', async (t) => {
  const store = openSqliteStore(t.testdir());
  store.insertAuditEvents([event(now - 400 * DAY, 'ancient')]);
  const keep = new AuditRetention(store, 0, createLogger('silent'));
  keep.start();
  await keep.stop();
  t.equal(store.queryAuditEvents({ limit: 10 }).length, 1, 'retention 0 starts nothing');
  store.close();
  const lines: string[] = [];
  const failing = new AuditRetention(store, DAY, createLogger('warn', { write: (l: string) => void lines.push(l) }));
  t.same(await failing.runOnce(now), { batches: 0, events: 0, approvals: 0 });
  t.match(lines.join(''), /"msg":"audit retention failed"/);
});

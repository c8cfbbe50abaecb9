import { createHash } from 'node:crypto';
import { createServer, type IncomingMessage, type ServerResponse } from 'node:http';
import type { AddressInfo } from 'node:net';
import t, { type Test } from 'tap';
import { createLogger } from '../../src/log.js';
import {
  APPROVAL_TEXT_MAX,
  ApprovalManager,
  newApprovalId,
  releases,
  statementHash,
  type ApprovalManagerOptions,
  type ApprovalRequest,
} from '../../src/policy/approvals.js';
import { approvalWebhookPayload, postApprovalWebhook } from '../../src/policy/webhook.js';
import { openSqliteStore } from '../../src/store/sqlite.js';
import type { Store } from '../../src/store/types.js';

function captureLogger() {
  const lines: Record<string, unknown>[] = [];
  const logger = createLogger('debug', { write: (s: string) => void lines.push(JSON.parse(s)) });
  return { logger, lines };
}

function req(over: Partial<ApprovalRequest> = {}): ApprovalRequest {
  return {
    sessionId: 'sess-1',
    subject: 'agent-7',
    target: 'app-db',
    protocol: 'postgres',
    policy: 'agents',
    rule: 'roles-need-approval',
    text: 'CREATE ROLE reporting LOGIN',
    heldBytes: Buffer.from('Q\0\0\0\x20CREATE ROLE reporting LOGIN\0', 'latin1'),
    fingerprint: 'create role reporting login',
    ...over,
  };
}

function setup(t: Test, over: Partial<ApprovalManagerOptions> = {}) {
  const dir = t.testdir();
  const store = openSqliteStore(dir);
  const { logger, lines } = captureLogger();
  const mgr = new ApprovalManager({ store, logger, ...over });
  t.teardown(() => {
    mgr.close();
    store.close();
  });
  return { dir, store, mgr, lines, logger };
}

const security = { subject: 'sec-lead' };

t.test('ids are apr_ + 16 base32 characters, unique', async (t) => {
  const ids = Array.from({ length: 1000 }, () => newApprovalId());
  t.ok(ids.every((id) => /^apr_[a-z2-7]{16}$/.test(id)), 'format');
  t.equal(new Set(ids).size, 1000, 'unique');
});

t.test('request -> approve resolves approved exactly once, persisted, logged', async (t) => {
  const { mgr, store, lines } = setup(t);
  const r = req({ text: 'CREATE ROLE x ' + 'y'.repeat(2000) });
  const pending = mgr.request(r);
  t.equal(pending.record.status, 'pending');
  t.equal(pending.record.statementHash, statementHash(r.heldBytes));
  t.not(pending.record.statementHash, createHash('sha256').update(r.heldBytes).digest('hex'), 'keyed: no offline test of a guess at what the bytes hold');
  t.same(store.getApproval(pending.record.id), pending.record, 'the pending record is saved');
  const logged = lines.find((l) => l.msg === 'approval requested')!;
  t.match(logged, {
    approvalId: pending.record.id,
    subject: 'agent-7',
    target: 'app-db',
    rule: 'roles-need-approval',
    approveCommand: `sluice approvals approve ${pending.record.id}`,
  });
  t.equal((logged.text as string).length, 501, 'text truncated to 500 chars in the log');

  let resolved = 0;
  void pending.outcome.then(() => resolved++);
  const rec = mgr.approve(pending.record.id, security);
  t.match(rec, { status: 'approved', decidedBy: 'sec-lead' });
  t.ok(rec.decidedAt);
  const out = await pending.outcome;
  t.equal(out.status, 'approved');
  t.same(out.record, rec);
  t.ok(releases(out.record, 'sess-1', 'agent-7', r.heldBytes), 'releases the held bytes');
  t.notOk(releases(out.record, 'sess-2', 'agent-7', r.heldBytes), 'never in another session');
  t.notOk(releases(out.record, 'sess-1', 'agent-8', r.heldBytes), 'never for another subject');
  t.notOk(releases(out.record, 'sess-1', 'agent-7', Buffer.from('Q\0\0\0\x0bDROP ROLE x\0')), 'never other bytes');
  t.same(store.getApproval(rec.id), rec, 'the decision is saved');
  t.same(mgr.get(rec.id), rec);

  t.throws(() => mgr.approve(rec.id, security), { code: 'SLUICE_APPROVAL_NOT_PENDING' }, 'approving twice throws');
  t.throws(() => mgr.deny(rec.id, security), { code: 'SLUICE_APPROVAL_NOT_PENDING' });
  pending.cancel(); // a disconnect after the decision changes nothing
  await new Promise((r) => setImmediate(r));
  t.equal(resolved, 1, 'outcome resolved exactly once');
  t.equal(store.getApproval(rec.id)!.status, 'approved');

  mgr.markUsed(rec.id);
  t.equal(store.getApproval(rec.id)!.status, 'used');
  t.notOk(releases(store.getApproval(rec.id)!, 'sess-1', 'agent-7', r.heldBytes), 'a used approval releases nothing');
});

t.test('two held requests: each approval releases only its own', async (t) => {
  const { mgr } = setup(t);
  const a = mgr.request(req());
  const b = mgr.request(req({ sessionId: 'sess-2', text: 'DROP ROLE x', heldBytes: Buffer.from('DROP ROLE x') }));
  t.not(a.record.id, b.record.id);
  mgr.approve(b.record.id, security);
  t.equal((await b.outcome).status, 'approved');
  t.equal(mgr.get(a.record.id)!.status, 'pending', 'the other request still waits');
  mgr.deny(a.record.id, security, 'not today');
  const out = await a.outcome;
  t.match(out, { status: 'denied', record: { reason: 'not today', decidedBy: 'sec-lead' } });
});

t.test('deny', async (t) => {
  const { mgr, store } = setup(t);
  const p = mgr.request(req());
  const rec = mgr.deny(p.record.id, security);
  t.match(rec, { status: 'denied', decidedBy: 'sec-lead' });
  t.equal((await p.outcome).status, 'denied');
  t.equal(store.getApproval(p.record.id)!.status, 'denied');
  t.throws(() => mgr.approve(p.record.id, security), { code: 'SLUICE_APPROVAL_NOT_PENDING' });
});

t.test('unknown id', async (t) => {
  const { mgr } = setup(t);
  t.throws(() => mgr.approve('apr_nope', security), { code: 'SLUICE_APPROVAL_NOT_FOUND' });
  t.throws(() => mgr.deny('apr_nope', security), { code: 'SLUICE_APPROVAL_NOT_FOUND' });
  t.equal(mgr.get('apr_nope'), undefined);
});

t.test('self-approval is refused; self-denial is allowed', async (t) => {
  const { mgr } = setup(t);
  const p = mgr.request(req());
  t.throws(() => mgr.approve(p.record.id, { subject: 'agent-7' }), { code: 'SLUICE_APPROVAL_SELF' });
  t.equal(mgr.get(p.record.id)!.status, 'pending', 'still pending after the refused attempt');
  mgr.deny(p.record.id, { subject: 'agent-7' }, 'changed my mind');
  t.equal((await p.outcome).status, 'denied');
});

t.test('one subject name from two issuers is two principals: approval and windows compare the pair', async (t) => {
  const { mgr, store } = setup(t);
  const p = mgr.request({ ...req(), issuer: 'https://token.actions.githubusercontent.com' });
  t.equal(store.getApproval(p.record.id)!.issuer, 'https://token.actions.githubusercontent.com', 'the issuer is kept with the request');
  t.throws(
    () => mgr.approve(p.record.id, { subject: 'agent-7', issuer: 'https://token.actions.githubusercontent.com' }),
    { code: 'SLUICE_APPROVAL_SELF' },
    'the same pair may not approve',
  );
  t.throws(() => mgr.approve(p.record.id, { subject: 'agent-7' }), { code: 'SLUICE_APPROVAL_SELF' }, 'nor the name with no issuer given');
  const rec = mgr.approve(p.record.id, { subject: 'agent-7', issuer: 'https://sluice.invalid/dev-issuer' }, { windowSeconds: 600 });
  t.equal(rec.status, 'approved', "another issuer's agent-7 is another principal");
  const fp = rec.fingerprint;
  t.equal(mgr.windowAllows('agent-7', 'app-db', fp, 'https://token.actions.githubusercontent.com')?.id, rec.id, 'the window is the requester\'s');
  t.equal(mgr.windowAllows('agent-7', 'app-db', fp, 'https://sluice.invalid/dev-issuer'), undefined, "not the same name's from another issuer");
  t.equal(mgr.windowAllows('agent-7', 'app-db', fp), undefined, 'nor one with no issuer');
});

t.test('expiry with a short timeout; approving after it throws', async (t) => {
  const { mgr, store } = setup(t, { timeoutMs: 30 });
  const p = mgr.request(req());
  t.equal(Date.parse(p.record.expiresAt) - Date.parse(p.record.createdAt), 30);
  const out = await p.outcome;
  t.equal(out.status, 'expired');
  t.equal(store.getApproval(p.record.id)!.status, 'expired');
  t.throws(() => mgr.approve(p.record.id, security), { code: 'SLUICE_APPROVAL_NOT_PENDING' });
});

t.test('a decision past expiresAt fails even if the timer has not fired yet', async (t) => {
  let now = Date.parse('2025-01-01T00:00:00Z');
  const { mgr } = setup(t, { timeoutMs: 60_000, now: () => now });
  const p = mgr.request(req());
  now += 60_000;
  t.throws(() => mgr.approve(p.record.id, security), { code: 'SLUICE_APPROVAL_NOT_PENDING' });
  t.equal((await p.outcome).status, 'expired');
});

t.test('cancel (client disconnected); approving afterwards throws', async (t) => {
  const { mgr, store } = setup(t);
  const p = mgr.request(req());
  p.cancel();
  p.cancel();
  t.equal((await p.outcome).status, 'cancelled');
  t.equal(store.getApproval(p.record.id)!.status, 'cancelled');
  t.throws(() => mgr.approve(p.record.id, security), { code: 'SLUICE_APPROVAL_NOT_PENDING' });
});

t.test('requests ended without a decision are counted; a statement longer than an approver is shown is not held', async (t) => {
  const ended: string[] = [];
  const { mgr, store } = setup(t, { timeoutMs: 30, onUndecided: (status) => ended.push(status) });
  const text = `SELECT '${'x'.repeat(APPROVAL_TEXT_MAX + 10)}'`;
  t.throws(() => mgr.request(req({ text, heldBytes: Buffer.from(text) })), { code: 'SLUICE_APPROVAL_LIMIT', message: /cannot be held for approval/ });
  t.same(store.listApprovals({ limit: 10 }), [], 'nothing stored for it');
  const expired = mgr.request(req());
  const cancelled = mgr.request(req());
  cancelled.cancel();
  await expired.outcome;
  t.same(ended.sort(), ['cancelled', 'expired']);
  const approved = mgr.request(req());
  mgr.approve(approved.record.id, security);
  t.same(ended.sort(), ['cancelled', 'expired'], 'a decision is not counted here (the API counts it)');
});

t.test('a subject may have max_pending_per_subject requests pending; another is refused until one ends', async (t) => {
  const { mgr } = setup(t, { maxPendingPerSubject: 2 });
  const a = mgr.request(req());
  mgr.request(req());
  t.throws(() => mgr.request(req()), { code: 'SLUICE_APPROVAL_LIMIT', message: /2 approvals are already pending for this subject/ });
  t.ok(mgr.request(req({ subject: 'agent-8' })), 'another subject is not limited by it');
  t.ok(mgr.request(req({ issuer: 'https://other.example' })), 'nor the same name from another issuer');
  mgr.deny(a.record.id, security);
  t.ok(mgr.request(req()), 'once one is decided, the subject may ask again');
});

t.test('close cancels every pending request', async (t) => {
  const { mgr } = setup(t);
  const a = mgr.request(req());
  const b = mgr.request(req());
  mgr.close();
  t.equal((await a.outcome).status, 'cancelled');
  t.equal((await b.outcome).status, 'cancelled');
  t.throws(() => mgr.request(req()));
});

t.test('window grants bind subject + target + fingerprint, and close', async (t) => {
  let now = Date.parse('2025-01-01T00:00:00Z');
  const { mgr, store, logger } = setup(t, { now: () => now });
  const p = mgr.request(req());
  t.equal(mgr.windowAllows('agent-7', 'app-db', 'create role reporting login'), undefined, 'no window before a grant');
  const rec = mgr.approve(p.record.id, security, { windowSeconds: 900 });
  t.equal(rec.windowUntil, '2025-01-01T00:15:00.000Z');
  t.equal((await p.outcome).status, 'approved', 'the held request itself is released too');
  t.equal(mgr.windowAllows('agent-7', 'app-db', 'create role reporting login')?.id, rec.id);
  t.equal(mgr.windowAllows('agent-8', 'app-db', 'create role reporting login'), undefined, 'not another subject');
  t.equal(mgr.windowAllows('agent-7', 'app-db', 'drop role reporting'), undefined, 'not another fingerprint');
  t.equal(mgr.windowAllows('agent-7', 'other-db', 'create role reporting login'), undefined, 'not another target');

  // Windows survive a restart (reloaded from the store).
  const again = new ApprovalManager({ store, logger, now: () => now });
  t.equal(again.windowAllows('agent-7', 'app-db', 'create role reporting login')?.id, rec.id);
  again.close();

  now += 900_000;
  t.equal(mgr.windowAllows('agent-7', 'app-db', 'create role reporting login'), undefined, 'closed after the window');

  const q = mgr.request(req());
  t.throws(() => mgr.approve(q.record.id, security, { windowSeconds: 0 }), { code: 'SLUICE_APPROVAL_WINDOW_INVALID' });
  t.throws(() => mgr.approve(q.record.id, security, { windowSeconds: 10 * 86400 }), {
    code: 'SLUICE_APPROVAL_WINDOW_INVALID',
  });
  t.equal(mgr.get(q.record.id)!.status, 'pending');
  mgr.deny(q.record.id, security);
});

t.test('a restart cancels pending rows left by the previous run', async (t) => {
  const { store, mgr, logger } = setup(t);
  const p = mgr.request(req());
  // Simulate a crash: the manager never got to close.
  const next = new ApprovalManager({ store, logger });
  t.match(store.getApproval(p.record.id), { status: 'cancelled', reason: 'gateway restarted before a decision' });
  t.throws(() => next.approve(p.record.id, security), { code: 'SLUICE_APPROVAL_NOT_PENDING' });
  next.close();
});

t.test('list and get go through the store', async (t) => {
  const { mgr } = setup(t);
  const a = mgr.request(req());
  const b = mgr.request(req({ subject: 'agent-8' }));
  mgr.deny(a.record.id, security);
  t.same(mgr.list({ status: 'pending' }).map((r) => r.id), [b.record.id]);
  t.same(mgr.list({ subject: 'agent-7' }).map((r) => r.id), [a.record.id]);
  t.equal(mgr.list({}).length, 2);
});

t.test('a store that fails at request time throws (the caller refuses the statement)', async (t) => {
  const { store, logger } = setup(t);
  const broken: Store = {
    insertAuditEvents: (e) => store.insertAuditEvents(e),
    queryAuditEvents: (q) => store.queryAuditEvents(q),
    saveApproval: () => {
      throw new Error('disk full');
    },
    getApproval: (id) => store.getApproval(id),
    listApprovals: (q) => store.listApprovals(q),
    close: () => undefined,
  };
  const mgr = new ApprovalManager({ store: broken, logger });
  t.throws(() => mgr.request(req()), /disk full/);
  mgr.close();
});

function webhookServer(t: Test, status: number) {
  const received: { headers: IncomingMessage['headers']; body: unknown }[] = [];
  const server = createServer((rq: IncomingMessage, rs: ServerResponse) => {
    const chunks: Buffer[] = [];
    rq.on('data', (c: Buffer) => chunks.push(c));
    rq.on('end', () => {
      received.push({ headers: rq.headers, body: JSON.parse(Buffer.concat(chunks).toString('utf8')) });
      rs.statusCode = status;
      rs.end('ok');
    });
  });
  return new Promise<{ url: string; received: typeof received }>((resolve) => {
    server.listen(0, '127.0.0.1', () => {
      t.teardown(() => new Promise<void>((r) => server.close(() => r())));
      const { port } = server.address() as AddressInfo;
      resolve({ url: `http://127.0.0.1:${port}/hooks/secret-path`, received });
    });
  });
}

t.test('webhook: a local server receives the JSON, nothing secret in it', async (t) => {
  const hook = await webhookServer(t, 204);
  const { mgr, lines } = setup(t, { webhook: { url: hook.url } });
  const p = mgr.request(req());
  await mgr.webhooksSettled();
  t.equal(hook.received.length, 1);
  t.equal(hook.received[0]!.headers['content-type'], 'application/json');
  t.same(hook.received[0]!.body, {
    event: 'approval.requested',
    approval: {
      id: p.record.id,
      subject: 'agent-7',
      target: 'app-db',
      rule: 'roles-need-approval',
      text: 'CREATE ROLE reporting LOGIN',
      createdAt: p.record.createdAt,
      expiresAt: p.record.expiresAt,
    },
    approve_command: `sluice approvals approve ${p.record.id}`,
  });
  t.same(hook.received[0]!.body, approvalWebhookPayload(p.record));
  t.notOk(JSON.stringify(lines).includes('secret-path'), 'the webhook URL path is never logged');
});

t.test('webhook: a failing server is retried, then given up, without throwing', async (t) => {
  const hook = await webhookServer(t, 500);
  const { mgr, lines } = setup(t, { webhook: { url: hook.url, retries: 3, backoffMs: 5 } });
  const p = mgr.request(req());
  // request() returned at once: the caller never waits for the webhook.
  t.equal(mgr.get(p.record.id)!.status, 'pending');
  await mgr.webhooksSettled();
  t.equal(hook.received.length, 4, 'first attempt + 3 retries');
  t.equal(lines.filter((l) => l.msg === 'approval webhook failed; retrying').length, 3);
  t.match(lines.find((l) => l.msg === 'approval webhook failed; giving up'), { problem: 'HTTP 500', attempt: 4 });
  // The approval itself is unaffected.
  mgr.approve(p.record.id, security);
  t.equal((await p.outcome).status, 'approved');
});

t.test('webhook: a request that no longer waits stops its delivery', async (t) => {
  const hook = await webhookServer(t, 500);
  const { mgr } = setup(t, { webhook: { url: hook.url, retries: 3, backoffMs: 200 } });
  const p = mgr.request(req());
  // The first attempt fails; the client disconnects during the backoff before the second.
  for (let i = 0; i < 100 && hook.received.length === 0; i++) await new Promise((r) => setTimeout(r, 10));
  p.cancel();
  await mgr.webhooksSettled();
  t.equal(hook.received.length, 1, 'no retry for a cancelled request');
});

t.test('a subject may make max_requests_per_minute requests in any minute, whatever became of them', async (t) => {
  let now = Date.parse('2025-01-01T00:00:00Z');
  const { mgr, store } = setup(t, { maxRequestsPerMinute: 3, now: () => now });
  // Connect, ask, disconnect: each request is cancelled at once and frees its place among the pending.
  for (let i = 0; i < 3; i++) {
    mgr.request(req()).cancel();
    now += 1_000;
  }
  t.throws(() => mgr.request(req()), { code: 'SLUICE_APPROVAL_LIMIT', message: /asked for 3 approvals in the last minute \(approvals\.max_requests_per_minute\)/ });
  t.equal(store.listApprovals({ limit: 10 }).length, 3, 'the refused one left no row');
  t.ok(mgr.request(req({ subject: 'agent-8' })), 'another subject is not limited by it');
  t.ok(mgr.request(req({ issuer: 'https://other.example' })), 'nor the same name from another issuer');
  now += 57_500; // the first request is just over a minute old, the second not yet
  t.ok(mgr.request(req()), 'a minute after the first, one more');
  t.throws(() => mgr.request(req()), { code: 'SLUICE_APPROVAL_LIMIT' });
});

t.test('webhook: unreachable, timing out, invalid URL, aborted', async (t) => {
  const { logger, lines } = captureLogger();
  const { store } = setup(t);
  const mgr = new ApprovalManager({ store, logger });
  const rec = mgr.request(req()).record;
  mgr.close();
  // Nothing listens on port 9 of localhost (discard): connection refused.
  t.equal(await postApprovalWebhook({ url: 'http://127.0.0.1:9/x', retries: 1, backoffMs: 1 }, rec, logger), false);
  t.equal(await postApprovalWebhook({ url: 'not a url' }, rec, logger), false);

  // A server that never answers: the per-attempt timeout ends it.
  const sockets = new Set<import('node:net').Socket>();
  const silent = createServer(() => undefined);
  silent.on('connection', (s) => sockets.add(s));
  await new Promise<void>((r) => silent.listen(0, '127.0.0.1', () => r()));
  t.teardown(() => {
    for (const s of sockets) s.destroy();
    silent.close();
  });
  const url = `http://127.0.0.1:${(silent.address() as AddressInfo).port}/`;
  t.equal(await postApprovalWebhook({ url, timeoutMs: 50, retries: 0 }, rec, logger), false);
  t.ok(
    lines.some((l) => l.msg === 'approval webhook failed; giving up' && String(l.problem).startsWith('TimeoutError')),
    'the timeout is logged',
  );

  // A URL with a password (the config refuses one; fetch refuses it too, quoting it): neither its
  // password nor its path reaches the log.
  lines.length = 0;
  t.equal(await postApprovalWebhook({ url: 'http://hook:pw-7d1e@127.0.0.1:9/hooks/path-4b2a', retries: 0 }, rec, logger), false);
  t.ok(lines.some((l) => l.msg === 'approval webhook failed; giving up'), 'the failure is logged');
  t.notOk(JSON.stringify(lines).includes('pw-7d1e'), 'not the password');
  t.notOk(JSON.stringify(lines).includes('path-4b2a'), 'not the path');

  const ac = new AbortController();
  const sent = postApprovalWebhook({ url, timeoutMs: 10_000, retries: 5 }, rec, logger, ac.signal);
  ac.abort();
  t.equal(await sent, false, 'an aborted delivery stops at once');
});

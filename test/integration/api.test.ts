import { once } from 'node:events';
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { connect } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import t, { type Test } from 'tap';
import { exportJWK, generateKeyPair, SignJWT } from 'jose';
import { approvalsCommand, type CliIo } from '../../src/cli/approvals.js';
import { unpinnedRoles } from '../../src/api/auth.js';
import { Metrics } from '../../src/api/metrics.js';
import { startApi, type HealthReport } from '../../src/api/server.js';
import { parseConfig } from '../../src/config/load.js';
import type { ApiConfig, IdentityConfig } from '../../src/config/types.js';
import { DevIssuer } from '../../src/identity/dev-issuer.js';
import { createTokenVerifier } from '../../src/identity/verifier.js';
import { createLogger } from '../../src/log.js';
import { ApprovalManager, type ApprovalRequest } from '../../src/policy/approvals.js';
import { openSqliteStore } from '../../src/store/sqlite.js';
import type { ApprovalRecord, AuditEvent } from '../../src/store/types.js';
import { startGateway } from '../helpers/gateway.js';

/**
 * The real API over a real SQLite store, a real ApprovalManager and the
 * gateway's token verifier with the dev issuer, driven with fetch and with
 * the `sluice approvals` CLI function.
 */

const identity: IdentityConfig = { devIssuer: true, issuers: [], maxTokenBytes: 16384, clockToleranceSeconds: 30, maxTokenLifetimeSeconds: 86400 };

async function setup(t: Test, config: Partial<ApiConfig> = {}) {
  const dir = t.testdir();
  const logs: string[] = [];
  const logger = createLogger('debug', { write: (s: string) => void logs.push(s) });
  const store = openSqliteStore(join(dir, 'state'), { logger });
  const approvals = new ApprovalManager({ store, logger, timeoutMs: 60_000 });
  const metrics = new Metrics();
  const issuer = await DevIssuer.open(join(dir, 'state'));
  const verifier = createTokenVerifier(identity, { devIssuer: issuer, logger });
  let health: HealthReport = { ok: true, checks: { store: 'ok', 'app-db': 'listening' } };
  const api = await startApi({
    config: { listen: { host: '127.0.0.1', port: 0 }, roles: { approver: ['security'], auditor: ['security', 'audit'] }, ...config },
    verifier,
    store,
    approvals,
    metrics,
    logger,
    health: () => health,
  });
  t.teardown(async () => {
    await api.close();
    approvals.close();
    store.close();
  });
  const base = `http://127.0.0.1:${api.address.port}`;
  const tokens = {
    approver: await issuer.mint({ sub: 'alice', groups: ['security'] }),
    auditor: await issuer.mint({ sub: 'carol', groups: ['audit'] }),
    nobody: await issuer.mint({ sub: 'mallory', groups: ['dev'] }),
    // The requester itself, in the approver group: may not approve its own request.
    requester: await issuer.mint({ sub: 'agent-7', groups: ['security'] }),
  };
  const request = (over: Partial<ApprovalRequest> = {}) =>
    approvals.request({
      sessionId: 'sess-1',
      subject: 'agent-7',
      target: 'app-db',
      protocol: 'postgres',
      policy: 'agents',
      rule: 'roles-need-approval',
      text: 'CREATE ROLE reporting',
      heldBytes: Buffer.from('CREATE ROLE reporting'),
      fingerprint: 'create role reporting',
      ...over,
    });
  const call = async (method: string, path: string, token?: string, body?: unknown) => {
    const headers: Record<string, string> = {};
    if (token !== undefined) headers.authorization = `Bearer ${token}`;
    if (body !== undefined) headers['content-type'] = 'application/json';
    const res = await fetch(base + path, { method, headers, ...(body !== undefined ? { body: JSON.stringify(body) } : {}) });
    const text = await res.text();
    return { status: res.status, text, json: text ? (JSON.parse(text) as Record<string, unknown>) : {}, headers: res.headers };
  };
  return {
    base,
    api,
    store,
    approvals,
    metrics,
    tokens,
    logs,
    request,
    call,
    setHealth: (h: HealthReport) => void (health = h),
  };
}

function captureIo(env: NodeJS.ProcessEnv = {}): CliIo & { out: () => string; err: () => string } {
  let out = '';
  let err = '';
  return {
    stdout: { write: (s: string) => (out += s) },
    stderr: { write: (s: string) => (err += s) },
    env,
    out: () => out,
    err: () => err,
  };
}

t.test('authentication: 401 without or with a bad token, never echoing it', async (t) => {
  const s = await setup(t);
  const none = await s.call('GET', '/api/approvals');
  t.equal(none.status, 401);
  t.equal(none.json.code, 'SLUICE_TOKEN_MISSING');
  t.equal(none.json.error, 'Unauthorized');
  t.match(none.json.message, /Bearer/);
  t.match(none.headers.get('www-authenticate') ?? '', /^Bearer/);

  const garbage = 'not-a-jwt-SECRETSECRET';
  const bad = await s.call('GET', '/api/approvals', garbage);
  t.equal(bad.status, 401);
  t.equal(bad.json.code, 'SLUICE_TOKEN_MALFORMED');
  t.notMatch(bad.text, 'SECRETSECRET');

  // A well-formed token with a broken signature: the verifier says why, the token stays out.
  const forged = s.tokens.approver.slice(0, -6) + 'AAAAAA';
  const sig = await s.call('GET', '/api/approvals', forged);
  t.equal(sig.status, 401);
  t.equal(sig.json.code, 'SLUICE_TOKEN_BAD_SIGNATURE');
  t.notOk(sig.text.includes(forged), 'body does not contain the token');
  t.notOk(sig.text.includes(forged.split('.')[1]!), 'body does not contain the payload');

  // Another scheme.
  const basic = await fetch(`${s.base}/api/approvals`, { headers: { authorization: 'Basic dXNlcjpwYXNzd29yZA==' } });
  const basicText = await basic.text();
  t.equal(basic.status, 401);
  t.match(basicText, /Basic/);
  t.notMatch(basicText, 'dXNlcjpwYXNzd29yZA');

  const all = s.logs.join('\n');
  for (const tok of [garbage, forged, s.tokens.approver]) t.notOk(all.includes(tok), 'no token in the logs');
  t.notMatch(all, 'dXNlcjpwYXNzd29yZA');
});

t.test('authorization: 403 without the role', async (t) => {
  const s = await setup(t);
  const list = await s.call('GET', '/api/approvals', s.tokens.nobody);
  t.equal(list.status, 403);
  t.equal(list.json.code, 'SLUICE_NOT_AUTHORIZED');
  t.match(list.json.message, /mallory/);

  const p = s.request();
  const approve = await s.call('POST', `/api/approvals/${p.record.id}/approve`, s.tokens.nobody);
  t.equal(approve.status, 403);
  // An auditor reads but does not decide.
  const byAuditor = await s.call('POST', `/api/approvals/${p.record.id}/approve`, s.tokens.auditor);
  t.equal(byAuditor.status, 403);
  t.equal(s.approvals.get(p.record.id)?.status, 'pending', 'still pending');
  const auditorRead = await s.call('GET', `/api/approvals/${p.record.id}`, s.tokens.auditor);
  t.equal(auditorRead.status, 200);

  const audit = await s.call('GET', '/api/audit', s.tokens.nobody);
  t.equal(audit.status, 403);
  // The approver group here is not an auditor group... 'security' is both; 'audit' only audits.
  const auditOk = await s.call('GET', '/api/audit', s.tokens.auditor);
  t.equal(auditOk.status, 200);
  t.same(auditOk.json, { events: [] });
});

t.test('list, get, approve, deny', async (t) => {
  const s = await setup(t);
  const a = s.request();
  const b = s.request({ sessionId: 'sess-2', text: 'DROP ROLE old', heldBytes: Buffer.from('DROP ROLE old'), fingerprint: 'drop role old' });
  const c = s.request({ subject: 'ci-job', target: 'cache', protocol: 'redis', text: 'FLUSHALL', heldBytes: Buffer.from('FLUSHALL'), fingerprint: 'flushall' });

  const list = await s.call('GET', '/api/approvals?status=pending', s.tokens.approver);
  t.equal(list.status, 200);
  const ids = (list.json.approvals as ApprovalRecord[]).map((r) => r.id).sort();
  t.same(ids, [a.record.id, b.record.id, c.record.id].sort());
  const bySubject = await s.call('GET', '/api/approvals?subject=ci-job', s.tokens.approver);
  t.same((bySubject.json.approvals as ApprovalRecord[]).map((r) => r.id), [c.record.id]);
  const byTarget = await s.call('GET', '/api/approvals?target=app-db&status=pending', s.tokens.approver);
  t.equal((byTarget.json.approvals as ApprovalRecord[]).length, 2);
  const badStatus = await s.call('GET', '/api/approvals?status=bogus', s.tokens.approver);
  t.equal(badStatus.status, 400);
  t.equal(badStatus.json.code, 'SLUICE_API_BAD_REQUEST');

  const got = await s.call('GET', `/api/approvals/${a.record.id}`, s.tokens.approver);
  t.equal(got.status, 200);
  t.match(got.json, { id: a.record.id, status: 'pending', subject: 'agent-7', target: 'app-db', text: 'CREATE ROLE reporting', rule: 'roles-need-approval' });
  t.notOk(got.text.includes(s.tokens.approver), 'no token in a record');

  // Approve: the session waiting on the outcome is released.
  const approved = await s.call('POST', `/api/approvals/${a.record.id}/approve`, s.tokens.approver);
  t.equal(approved.status, 200);
  t.match(approved.json, { id: a.record.id, status: 'approved', decidedBy: 'alice' });
  t.notOk(approved.text.includes(s.tokens.approver));
  const outcome = await a.outcome;
  t.equal(outcome.status, 'approved');
  t.equal(outcome.record.decidedBy, 'alice');

  // Double approve: 409, and deny after approve too.
  const again = await s.call('POST', `/api/approvals/${a.record.id}/approve`, s.tokens.approver);
  t.equal(again.status, 409);
  t.equal(again.json.code, 'SLUICE_APPROVAL_NOT_PENDING');
  const denyAfter = await s.call('POST', `/api/approvals/${a.record.id}/deny`, s.tokens.approver);
  t.equal(denyAfter.status, 409);

  // Deny with a reason.
  const denied = await s.call('POST', `/api/approvals/${b.record.id}/deny`, s.tokens.approver, { reason: 'not during the freeze' });
  t.equal(denied.status, 200);
  t.match(denied.json, { status: 'denied', reason: 'not during the freeze', decidedBy: 'alice' });
  const bOutcome = await b.outcome;
  t.equal(bOutcome.status, 'denied');

  const badReason = await s.call('POST', `/api/approvals/${c.record.id}/deny`, s.tokens.approver, { reason: 42 });
  t.equal(badReason.status, 400);
  const badJson = await fetch(`${s.base}/api/approvals/${c.record.id}/deny`, {
    method: 'POST',
    headers: { authorization: `Bearer ${s.tokens.approver}`, 'content-type': 'application/json' },
    body: '{"reason": "secret-ish text',
  });
  const badJsonText = await badJson.text();
  t.equal(badJson.status, 400);
  t.notMatch(badJsonText, 'secret-ish', 'a malformed body is not echoed');
  t.equal(s.approvals.get(c.record.id)?.status, 'pending');

  // Unknown ids: 404 on get, approve and deny.
  for (const [method, path] of [
    ['GET', '/api/approvals/apr_doesnotexist'],
    ['POST', '/api/approvals/apr_doesnotexist/approve'],
    ['POST', '/api/approvals/apr_doesnotexist/deny'],
  ] as const) {
    const r = await s.call(method, path, s.tokens.approver);
    t.equal(r.status, 404, `${method} ${path}`);
    t.equal(r.json.code, 'SLUICE_APPROVAL_NOT_FOUND');
  }
  const noRoute = await s.call('GET', '/api/nothing', s.tokens.approver);
  t.equal(noRoute.status, 404);
  t.equal(noRoute.json.code, 'SLUICE_API_NOT_FOUND');

  // Decided records in the list, by status.
  const approvedList = await s.call('GET', '/api/approvals?status=approved', s.tokens.auditor);
  t.same((approvedList.json.approvals as ApprovalRecord[]).map((r) => r.id), [a.record.id]);

  // The decisions reached the metrics.
  t.equal(s.metrics.approvalLatencySeconds.observations, 2);
  t.equal(s.metrics.approvalsTotal.get('approved'), 1);
  t.equal(s.metrics.approvalsTotal.get('denied'), 1);
});

t.test('self-approval is refused; denying one\'s own request is allowed', async (t) => {
  const s = await setup(t);
  const p = s.request();
  const self = await s.call('POST', `/api/approvals/${p.record.id}/approve`, s.tokens.requester);
  t.equal(self.status, 403);
  t.equal(self.json.code, 'SLUICE_APPROVAL_SELF');
  t.equal(s.approvals.get(p.record.id)?.status, 'pending');
  const selfDeny = await s.call('POST', `/api/approvals/${p.record.id}/deny`, s.tokens.requester);
  t.equal(selfDeny.status, 200);
  t.equal((await p.outcome).status, 'denied');
});

t.test('a window grant via {for: "15m"}', async (t) => {
  const s = await setup(t);
  const p = s.request();
  t.notOk(s.approvals.windowAllows('agent-7', 'app-db', 'create role reporting'));
  const bad = await s.call('POST', `/api/approvals/${p.record.id}/approve`, s.tokens.approver, { for: 'forever' });
  t.equal(bad.status, 400);
  t.equal(s.approvals.get(p.record.id)?.status, 'pending');
  const tooLong = await s.call('POST', `/api/approvals/${p.record.id}/approve`, s.tokens.approver, { for: '30d' });
  t.equal(tooLong.status, 400);
  t.equal(tooLong.json.code, 'SLUICE_APPROVAL_WINDOW_INVALID');

  const before = Date.now();
  const r = await s.call('POST', `/api/approvals/${p.record.id}/approve`, s.tokens.approver, { for: '15m' });
  t.equal(r.status, 200);
  const until = Date.parse(r.json.windowUntil as string);
  t.ok(until >= before + 15 * 60_000 - 1000 && until <= Date.now() + 15 * 60_000 + 1000, 'window ends in 15 minutes');
  t.equal((await p.outcome).status, 'approved');
  t.ok(s.approvals.windowAllows('agent-7', 'app-db', 'create role reporting'), 'the window is open');
  t.notOk(s.approvals.windowAllows('someone-else', 'app-db', 'create role reporting'), 'only for that subject');
  t.notOk(s.approvals.windowAllows('agent-7', 'other-db', 'create role reporting'), 'only on that target');
});

t.test('audit query with filters', async (t) => {
  const s = await setup(t);
  const ev = (over: Partial<AuditEvent>): AuditEvent => ({
    time: '2025-01-01T00:00:00.000Z',
    sessionId: 's1',
    subject: 'agent-7',
    target: 'app-db',
    protocol: 'postgres',
    kind: 'select',
    text: 'SELECT 1',
    verdict: 'allowed',
    ...over,
  });
  s.store.insertAuditEvents([
    ev({ time: '2025-01-01T10:00:00.000Z', text: 'SELECT 1' }),
    ev({ time: '2025-01-01T11:00:00.000Z', kind: 'drop,drop:table', text: 'DROP TABLE t', verdict: 'denied', rule: 'no-destruction', policy: 'agents' }),
    ev({ time: '2025-01-01T12:00:00.000Z', sessionId: 's2', subject: 'ci-job', target: 'cache', protocol: 'redis', kind: 'get', text: 'GET k' }),
    ev({ time: '2025-01-02T09:00:00.000Z', sessionId: 's2', subject: 'ci-job', target: 'cache', protocol: 'redis', kind: 'flushall', text: 'FLUSHALL', verdict: 'denied' }),
  ]);
  const texts = async (qs: string): Promise<string[]> => {
    const r = await s.call('GET', `/api/audit${qs}`, s.tokens.auditor);
    t.equal(r.status, 200, qs);
    return (r.json.events as AuditEvent[]).map((e) => e.text);
  };
  t.same(await texts(''), ['FLUSHALL', 'GET k', 'DROP TABLE t', 'SELECT 1'], 'newest first');
  t.same(await texts('?verdict=denied'), ['FLUSHALL', 'DROP TABLE t']);
  t.same(await texts('?session=s1'), ['DROP TABLE t', 'SELECT 1']);
  t.same(await texts('?subject=ci-job&verdict=allowed'), ['GET k']);
  t.same(await texts('?target=app-db&verdict=denied'), ['DROP TABLE t']);
  t.same(await texts('?since=2025-01-01T10:30:00Z&until=2025-01-01T12:00:00Z'), ['GET k', 'DROP TABLE t']);
  t.same(await texts('?limit=1'), ['FLUSHALL']);
  const denied = await s.call('GET', '/api/audit?verdict=denied&target=app-db', s.tokens.approver);
  t.match((denied.json.events as AuditEvent[])[0], { rule: 'no-destruction', policy: 'agents', kind: 'drop,drop:table' });

  for (const bad of ['?since=yesterday', '?verdict=maybe', '?limit=0', '?limit=5000', '?limit=abc', '?session=a&session=b']) {
    const r = await s.call('GET', `/api/audit${bad}`, s.tokens.auditor);
    t.equal(r.status, 400, bad);
    t.equal(r.json.code, 'SLUICE_API_BAD_REQUEST');
  }
});

t.test('a request that does not arrive whole within api.request_timeout is cut off, before any token is read', async (t) => {
  const s = await setup(t, { requestTimeoutMs: 400 });
  const socket = connect(s.api.address.port, '127.0.0.1');
  await once(socket, 'connect');
  let answer = '';
  socket.on('data', (d: Buffer) => (answer += d.toString('latin1')));
  // Headers that announce a body, and one byte of it: then nothing, as a slow client would.
  socket.write('POST /api/approvals/x/deny HTTP/1.1\r\nHost: a\r\nContent-Type: application/json\r\nContent-Length: 100\r\n\r\n{');
  await once(socket, 'close');
  t.match(answer, /^HTTP\/1\.1 408 /, 'the server answers 408 Request Timeout and closes');
  t.equal((await s.call('GET', '/api/approvals', s.tokens.approver)).status, 200, 'the API serves others as before');
});

t.test('/healthz and /metrics need no token', async (t) => {
  const s = await setup(t);
  const ok = await s.call('GET', '/healthz');
  t.equal(ok.status, 200);
  t.same(ok.json, { status: 'ok', checks: { store: 'ok', 'app-db': 'listening' } });
  s.setHealth({ ok: false, checks: { store: 'ok', 'app-db': 'upstream unreachable' } });
  const down = await s.call('GET', '/healthz');
  t.equal(down.status, 503);
  t.same(down.json, { status: 'unavailable', checks: { store: 'ok', 'app-db': 'upstream unreachable' } });

  s.metrics.sessionStarted('app-db', 'postgres');
  s.metrics.sessionStarted('app-db', 'postgres');
  s.metrics.sessionEnded('app-db', 'postgres');
  s.metrics.statement('app-db', 'allowed');
  s.metrics.statement('app-db', 'denied');
  s.metrics.bytes('app-db', 'client_to_upstream', 1234);
  s.metrics.approvalDecided(42, 'approved');
  const res = await fetch(`${s.base}/metrics`);
  const text = await res.text();
  t.equal(res.status, 200);
  t.match(res.headers.get('content-type') ?? '', /^text\/plain; version=0\.0\.4/);
  for (const name of [
    'sluice_sessions_active',
    'sluice_sessions_total',
    'sluice_statements_total',
    'sluice_bytes_total',
    'sluice_approval_latency_seconds',
  ]) {
    t.match(text, new RegExp(`^# TYPE ${name} `, 'm'), name);
  }
  t.match(text, /^sluice_sessions_active\{target="app-db",protocol="postgres"\} 1$/m);
  t.match(text, /^sluice_sessions_total\{target="app-db",protocol="postgres"\} 2$/m);
  t.match(text, /^sluice_statements_total\{target="app-db",verdict="denied"\} 1$/m);
  t.match(text, /^sluice_bytes_total\{target="app-db",direction="client_to_upstream"\} 1234$/m);
  t.match(text, /^sluice_approval_latency_seconds_bucket\{le="30"\} 0$/m);
  t.match(text, /^sluice_approval_latency_seconds_bucket\{le="60"\} 1$/m);
  t.match(text, /^sluice_approval_latency_seconds_bucket\{le="\+Inf"\} 1$/m);
  t.match(text, /^sluice_approval_latency_seconds_sum 42$/m);
  t.match(text, /^sluice_approval_latency_seconds_count 1$/m);
  t.ok(text.endsWith('\n'));
  for (const tok of Object.values(s.tokens)) t.notOk(text.includes(tok));
});

t.test('metrics: label values are escaped', async (t) => {
  const m = new Metrics();
  m.statement('we"ird\\name\nx', 'allowed');
  t.match(m.render(), 'sluice_statements_total{target="we\\"ird\\\\name\\nx",verdict="allowed"} 1');
  m.bytes('t', 'upstream_to_client', -5);
  t.equal(m.bytesTotal.get('t', 'upstream_to_client'), 0, 'a counter never goes down');
});

t.test('the approvals CLI against the live API', async (t) => {
  const s = await setup(t);
  const a = s.request({ text: 'CREATE ROLE x\n\u001b[2Jhidden', heldBytes: Buffer.from('CREATE ROLE x') });
  const b = s.request({ sessionId: 'sess-9', text: 'ALTER ROLE y SUPERUSER', heldBytes: Buffer.from('ALTER ROLE y SUPERUSER'), fingerprint: 'alter role y superuser' });
  const env = { SLUICE_TOKEN: s.tokens.approver };

  const list = captureIo(env);
  t.equal(await approvalsCommand(['list', '--api', s.base], list), 0, list.err());
  const out = list.out();
  t.match(out, /^ID\s+STATUS\s+SUBJECT\s+TARGET\s+RULE/);
  t.match(out, a.record.id);
  t.match(out, b.record.id);
  t.match(out, 'ALTER ROLE y SUPERUSER');
  t.notOk(out.includes('\u001b'), 'control characters from statement text are escaped');
  t.match(out, '\\u001b[2J');

  const approve = captureIo(env);
  t.equal(await approvalsCommand(['approve', a.record.id, '--api', s.base, '--for', '15m'], approve), 0, approve.err());
  t.match(approve.out(), `approved ${a.record.id}`);
  t.match(approve.out(), /window: .* until /);
  t.equal((await a.outcome).status, 'approved');

  const deny = captureIo({});
  t.equal(await approvalsCommand(['deny', b.record.id, '--reason', 'no superusers', '--api', s.base, '--token', s.tokens.approver], deny), 0, deny.err());
  t.match(deny.out(), `denied ${b.record.id}`);
  t.match(deny.out(), 'reason: no superusers');
  t.equal((await b.outcome).status, 'denied');

  // The API's refusal is printed, exit 1.
  const again = captureIo(env);
  t.equal(await approvalsCommand(['approve', a.record.id, '--api', s.base], again), 1);
  t.match(again.err(), /no longer pending.*SLUICE_APPROVAL_NOT_PENDING/);
  const nobody = captureIo({ SLUICE_TOKEN: s.tokens.nobody });
  t.equal(await approvalsCommand(['list', '--api', s.base], nobody), 1);
  t.match(nobody.err(), /needs the approver or auditor role; nothing in api\.roles\.approver or api\.roles\.auditor in the gateway config grants it/);
  t.notOk(nobody.err().includes(s.tokens.nobody));

  const empty = captureIo(env);
  t.equal(await approvalsCommand(['list', '--api', s.base], empty), 0);
  t.equal(empty.out(), 'no approvals\n', 'default lists pending only');
  const any = captureIo(env);
  t.equal(await approvalsCommand(['list', '--status', 'any', '--api', s.base], any), 0);
  t.match(any.out(), a.record.id);

  // Usage errors: exit 2.
  for (const args of [[], ['frobnicate'], ['approve'], ['list', 'extra'], ['deny', 'x', '--for', '1h'], ['approve', 'x', '--for', 'soon'], ['list', '--bogus']]) {
    const io = captureIo(env);
    t.equal(await approvalsCommand([...args, '--api', s.base], io), 2, args.join(' '));
  }
  const noToken = captureIo({});
  t.equal(await approvalsCommand(['list', '--api', s.base], noToken), 2);
  t.match(noToken.err(), /SLUICE_TOKEN/);

  // The API is gone: exit 1 with a message.
  const dead = captureIo(env);
  const closed = `http://127.0.0.1:1`;
  t.equal(await approvalsCommand(['list', '--api', closed], dead), 1);
  t.match(dead.err(), /cannot reach the API/);
});

t.test('the CLI reads api.listen from the config', async (t) => {
  const s = await setup(t);
  const dir = mkdtempSync(join(tmpdir(), 'sluice-cli-'));
  t.teardown(() => rmSync(dir, { recursive: true, force: true }));
  const file = join(dir, 'sluice.yaml');
  writeFileSync(
    file,
    `state_dir: ${JSON.stringify(join(dir, 'state'))}\n` +
      'identity: { dev_issuer: true }\n' +
      'targets:\n  app-db:\n    protocol: postgres\n    listen: 127.0.0.1:6432\n    upstream: { host: 127.0.0.1, user: app }\n' +
      `api:\n  listen: 127.0.0.1:${s.api.address.port}\n  roles: { approver: [security], auditor: [security] }\n`,
  );
  const p = s.request();
  const io = captureIo({ SLUICE_TOKEN: s.tokens.approver });
  const code = await approvalsCommand(['list', '--config', file], io);
  t.equal(code, 0, io.err());
  t.match(io.out(), p.record.id);
});

t.test('roles pinned to an issuer: a group of the same name from another trusted issuer grants nothing', async (t) => {
  // Two trusted issuers, as when the dev issuer is left on next to the real IdP: anyone who can run
  // `sluice token` on the gateway host can mint a dev token in any group.
  const dir = t.testdir();
  const IDP = 'https://idp.example.test/realms/ops';
  const { privateKey, publicKey } = await generateKeyPair('ES256', { extractable: true });
  const jwksFile = join(dir, 'jwks.json');
  writeFileSync(jwksFile, JSON.stringify({ keys: [{ ...(await exportJWK(publicKey)), kid: 'ops-1', alg: 'ES256', use: 'sig' }] }));
  const idpToken = (sub: string, groups: string[]) =>
    new SignJWT({ groups }).setProtectedHeader({ alg: 'ES256', kid: 'ops-1' }).setIssuer(IDP).setAudience('sluice').setSubject(sub)
      .setIssuedAt().setExpirationTime('10m').sign(privateKey);
  const logger = createLogger('silent', { write: () => undefined });
  const store = openSqliteStore(join(dir, 'state'), { logger });
  const approvals = new ApprovalManager({ store, logger, timeoutMs: 60_000 });
  const dev = await DevIssuer.open(join(dir, 'state'));
  const verifier = createTokenVerifier(
    { ...identity, issuers: [{ issuer: IDP, audience: 'sluice', jwksFile, groupsClaim: 'groups', algorithms: ['ES256'] }] },
    { devIssuer: dev, logger },
  );
  // The config as written: `approver: [{ groups: [security], issuer: IDP }]`, `auditor: [audit]`.
  const config = parseConfig(`
identity:
  dev_issuer: true
  issuers: [{ issuer: ${IDP}, audience: sluice, jwks_file: ${jwksFile}, algorithms: [ES256] }]
targets: { db: { protocol: postgres, listen: 127.0.0.1:6432, upstream: { host: 127.0.0.1, user: app } } }
api:
  listen: 127.0.0.1:0
  roles:
    approver: [{ groups: [security], issuer: ${IDP} }]
    auditor: audit
`, { baseDir: dir, env: {} });
  t.strictSame(config.api?.roles, { approver: [{ groups: ['security'], issuer: [IDP] }], auditor: ['audit'] });
  t.strictSame(unpinnedRoles(config.api!.roles, 2), ['api.roles.auditor[0]'], 'the bare group is what the start-up warning names');
  t.strictSame(unpinnedRoles(config.api!.roles, 1), [], 'with one issuer trusted there is nothing to pin');
  t.strictSame(unpinnedRoles({ approver: [{ groups: ['security'], issuer: [IDP, 'https://sluice.invalid/dev-issuer'] }], auditor: [] }, 2),
    ['api.roles.approver[0]'], 'a match naming two issuers holds from either: named too');
  const api = await startApi({ config: config.api!, verifier, store, approvals, metrics: new Metrics(), logger, health: () => ({ ok: true, checks: {} }) });
  t.teardown(async () => {
    await api.close();
    approvals.close();
    store.close();
  });
  const get = async (token: string) =>
    (await fetch(`http://127.0.0.1:${api.address.port}/api/approvals`, { headers: { authorization: `Bearer ${token}` } })).status;

  t.equal(await get(await idpToken('alice', ['security'])), 200, "the IdP's security group is an approver");
  t.equal(await get(await dev.mint({ sub: 'alice', groups: ['security'] })), 403, "the dev issuer's security group is not");
  t.equal(await get(await dev.mint({ sub: 'carol', groups: ['audit'] })), 200, 'a bare group name holds from any trusted issuer');
  t.equal(await get(await idpToken('carol', ['audit'])), 200);
});

t.test('api.audience: API tokens carry their own audience; database tokens are refused there, and API tokens at the listeners', async (t) => {
  const dir = t.testdir();
  const logger = createLogger('silent', { write: () => undefined });
  const store = openSqliteStore(join(dir, 'state'), { logger });
  const approvals = new ApprovalManager({ store, logger, timeoutMs: 60_000 });
  const dev = await DevIssuer.open(join(dir, 'state'));
  const verifier = createTokenVerifier(identity, { devIssuer: dev, logger });
  const config = parseConfig(`
identity: { dev_issuer: true }
targets: { db: { protocol: postgres, listen: 127.0.0.1:6432, upstream: { host: 127.0.0.1, user: app } } }
api: { listen: 127.0.0.1:0, audience: sluice-api, roles: { auditor: [audit] } }
`, { baseDir: dir, env: {} });
  t.equal(config.api?.audience, 'sluice-api');
  const api = await startApi({ config: config.api!, verifier, store, approvals, metrics: new Metrics(), logger, health: () => ({ ok: true, checks: {} }) });
  t.teardown(async () => {
    await api.close();
    approvals.close();
    store.close();
  });
  const get = async (token: string) => {
    const res = await fetch(`http://127.0.0.1:${api.address.port}/api/approvals`, { headers: { authorization: `Bearer ${token}` } });
    return { status: res.status, body: (await res.json()) as { code?: string; message?: string } };
  };
  const apiToken = await dev.mint({ sub: 'carol', groups: ['audit'], audience: 'sluice-api' });
  t.equal((await get(apiToken)).status, 200, 'a token minted for the API');
  const dbToken = await dev.mint({ sub: 'carol', groups: ['audit'] });
  const refused = await get(dbToken);
  t.equal(refused.status, 401, "the same identity's database token is not an API credential");
  t.equal(refused.body.code, 'SLUICE_TOKEN_WRONG_AUDIENCE');
  t.match(refused.body.message, /the audience the API requires \(api\.audience\)/);
  await t.rejects(verifier.verify(apiToken), { code: 'SLUICE_TOKEN_WRONG_AUDIENCE' }, 'nor is the API token a database credential');
});

t.test('the gateway warns at start-up about a role any of several issuers can grant', async (t) => {
  const dir = t.testdir();
  const { publicKey } = await generateKeyPair('ES256', { extractable: true });
  const jwksFile = join(dir, 'jwks.json');
  writeFileSync(jwksFile, JSON.stringify({ keys: [{ ...(await exportJWK(publicKey)), kid: 'k', alg: 'ES256', use: 'sig' }] }));
  const gw = await startGateway(`identity:
  dev_issuer: true
  issuers: [{ issuer: https://idp.example.test, audience: sluice-idp, jwks_file: ${jwksFile}, algorithms: [ES256] }]
targets: { db: { protocol: postgres, listen: 127.0.0.1:0, upstream: { host: 127.0.0.1, user: app } } }
api:
  listen: 127.0.0.1:0
  roles: { approver: [{ groups: [security], issuer: https://idp.example.test }], auditor: [audit] }
`);
  t.teardown(() => gw.close());
  const warning = gw.logs.map((l) => JSON.parse(l) as { level?: number; msg?: string; entries?: string[] }).find((l) => l.msg?.startsWith('api.roles has entries more than one trusted issuer can satisfy'));
  t.ok(warning, 'logged');
  t.equal(warning?.level, 40, 'as a warning');
  t.strictSame(warning?.entries, ['api.roles.auditor[0]'], 'naming the bare group, not the pinned match');
});

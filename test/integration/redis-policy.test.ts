/**
 * Command policy on live Redis sessions: refusals in a pipeline and inside
 * MULTI (EXEC then aborts, as Redis does for a command rejected at queue
 * time), scripting and administration by ACL category, key rules, approvals,
 * and the audit trail.
 */
import t, { type Test } from 'tap';
import { Redis } from 'ioredis';
import { startRedis } from '../helpers/redis.js';
import { startGateway, redisTargetYaml } from '../helpers/gateway.js';
import { Raw } from '../helpers/raw-redis.js';
import { recordingFor } from '../helpers/recordings.js';
import { scrubRedisAuth } from '../../src/recording/scrub.js';
import type { AuditEvent } from '../../src/store/types.js';

const redis = await startRedis();
t.teardown(() => redis.stop());
const gw = await startGateway(
  `identity: { dev_issuer: true }
targets:${redisTargetYaml('cache', redis)}
policies:
  - name: agents
    subjects: { groups: [agent] }
    targets: [cache]
    default: allow
    rules:
      - { name: no-server-admin, action: deny, match: { commands: ['@dangerous', '@scripting', 'flushall'] } }
      - { name: sessions-are-private, action: deny, match: { keys: ['session:*'] } }
      - { name: bulk-delete-needs-approval, action: approve, match: { commands: [unlink] } }
      - { name: audit-channel-needs-approval, action: approve, match: { commands: [subscribe] } }
  - name: strict
    subjects: { groups: [strict] }
    targets: [cache]
    default: deny
    rules:
      - { name: data, action: allow, match: { commands: ['@read', '@write', auth, multi, ping] } }
      - { name: discard-needs-approval, action: approve, match: { commands: [discard] } }
api:
  listen: 127.0.0.1:0
  roles: { approver: [security], auditor: [security] }
approvals:
  timeout: 3s
  max_pending_per_subject: 2
`,
  { REDIS_PW: redis.aclPassword },
);
t.teardown(() => gw.close());

const port = gw.port('cache');
const agentToken = await gw.token('agent-9', ['agent']);
const approverToken = await gw.token('bob', ['security']);
const api = `http://127.0.0.1:${gw.gateway.api!.address.port}`;

function client(): Redis {
  const c = new Redis({ host: '127.0.0.1', port, password: agentToken, lazyConnect: true, maxRetriesPerRequest: 0, enableOfflineQueue: false });
  c.on('error', () => {});
  return c;
}

/** A raw client logged in with `login`, and its port (which names its recording). */
async function rawSession(t: Test, login: string[]): Promise<{ raw: Raw; clientPort: number }> {
  const raw = await Raw.open(port);
  t.teardown(() => raw.end());
  raw.send(login);
  t.same(await raw.replies(1), ['+OK\r\n'], 'logged in');
  return { raw, clientPort: raw.socket.localPort! };
}

/** The id of agent-9's pending approval whose text names `what`, once the API lists it (undefined after 2.5 s). */
async function pendingApproval(what: string): Promise<string | undefined> {
  for (let i = 0; i < 100; i++) {
    const list = (await (await fetch(`${api}/api/approvals?status=pending`, { headers: { authorization: `Bearer ${approverToken}` } })).json()) as {
      approvals: Array<{ id: string; text: string; subject: string }>;
    };
    const id = list.approvals.find((x) => x.subject === 'agent-9' && x.text.includes(what))?.id;
    if (id) return id;
    await new Promise((r) => setTimeout(r, 25));
  }
  return undefined;
}

t.test('a pipeline: refused commands get -NOPERM in place, the rest run in order', async (t) => {
  const c = client();
  await c.connect();
  t.teardown(() => c.disconnect());
  const results = await c
    .pipeline()
    .set('a', '1')
    .flushall()
    .get('a')
    .eval("return redis.call('flushall')", 0)
    .set('session:42', 'x')
    .incr('a')
    .exec();
  t.same(results![0], [null, 'OK']);
  t.match(String(results![1]![0]), /NOPERM sluice: denied by rule "no-server-admin": command flushall/);
  t.same(results![2], [null, '1']);
  t.match(String(results![3]![0]), /NOPERM sluice: denied by rule "no-server-admin": command eval \(@scripting\)/);
  t.match(String(results![4]![0]), /NOPERM sluice: denied by rule "sessions-are-private"/);
  t.same(results![5], [null, 2]);
  t.equal((await redis.cli(['GET', 'a'])).trim(), '2', 'FLUSHALL (directly or via EVAL) never reached the server');
  t.equal((await redis.cli(['EXISTS', 'session:42'])).trim(), '0');
});

t.test('inside MULTI a refused command aborts the EXEC, as Redis does', async (t) => {
  const c = client();
  await c.connect();
  t.teardown(() => c.disconnect());
  const tx = c.multi().set('tx', 'one').config('SET', 'maxmemory', '1').set('tx', 'two');
  await t.rejects(tx.exec(), /EXECABORT/);
  t.equal(await c.get('tx'), null, 'nothing of the transaction ran');
  const ok = await c.multi().set('tx', 'three').get('tx').exec();
  t.same(ok, [[null, 'OK'], [null, 'three']], 'the next transaction works');
});

t.test('commands that waited behind a held one are judged in order: a transaction among them with a refused command aborts', async (t) => {
  const a = await Raw.open(port);
  t.teardown(() => a.end());
  a.send(['AUTH', agentToken]);
  t.same(await a.replies(1), ['+OK\r\n']);
  // RESP2, never subscribed: the UNSUBSCRIBE's one confirmation answers it, and the relay is paired again.
  a.send(['UNSUBSCRIBE', 'none']);
  t.same(await a.replies(1), ['*3\r\n$11\r\nunsubscribe\r\n$4\r\nnone\r\n:0\r\n']);
  // Everything behind the held UNLINK waits for its decision, then is judged: the first EXEC is
  // replaced by a DISCARD, so the second finds no transaction.
  a.send(['UNLINK', 'held-k'], ['MULTI'], ['SET', 'backlog-tx', 'one'], ['FLUSHALL'], ['EXEC'], ['EXEC']);
  const id = await pendingApproval('held-k');
  t.ok(id, 'the UNLINK is held');
  const res = await fetch(`${api}/api/approvals/${id}/deny`, { method: 'POST', headers: { authorization: `Bearer ${approverToken}`, 'content-type': 'application/json' }, body: '{}' });
  t.equal(res.status, 200);
  const replies = await a.replies(6, 5_000);
  t.match(replies[0], /^-/, 'the UNLINK refused');
  t.same(replies.slice(1, 3), ['+OK\r\n', '+QUEUED\r\n']);
  t.match(replies[3], /^-NOPERM sluice: denied by rule "no-server-admin"/);
  t.equal(replies[4], '-EXECABORT Transaction discarded because of previous errors.\r\n');
  t.equal(replies[5], '-ERR EXEC without MULTI\r\n', 'the second EXEC finds no transaction');
  t.notOk(a.closed, 'the session goes on');
  const direct = new Redis({ port: redis.port, password: redis.password, lazyConnect: true });
  await direct.connect();
  t.teardown(() => direct.disconnect());
  t.equal(await direct.get('backlog-tx'), null, 'the transaction never ran');
});

t.test('a protocol violation behind a held command: approved afterwards, the command is not run', async (t) => {
  const direct = new Redis({ port: redis.port, password: redis.password, lazyConnect: true });
  await direct.connect();
  t.teardown(() => direct.disconnect());
  await direct.set('held-victim', 'v');
  const a = await Raw.open(port);
  t.teardown(() => a.end());
  a.send(['AUTH', agentToken]);
  t.same(await a.replies(1), ['+OK\r\n']);
  // In one write: a BLPOP that blocks for 2 s (so the violation's error waits behind its reply and
  // the session is still open when the approval comes), the held UNLINK, then an inline command
  // (a protocol violation).
  a.socket.write('*3\r\n$5\r\nBLPOP\r\n$10\r\nblock-none\r\n$1\r\n2\r\n*2\r\n$6\r\nUNLINK\r\n$11\r\nheld-victim\r\nGET x\r\n');
  const id = await pendingApproval('held-victim');
  t.ok(id, 'the UNLINK is held');
  const res = await fetch(`${api}/api/approvals/${id}/approve`, { method: 'POST', headers: { authorization: `Bearer ${approverToken}`, 'content-type': 'application/json' }, body: '{}' });
  t.equal(res.status, 200);
  const replies = await a.replies(2, 6_000);
  t.equal(replies[0], '*-1\r\n', "the BLPOP's reply");
  t.match(replies[1], /^-ERR Protocol error: inline commands are not accepted/, 'then the violation, in the place of the UNLINK');
  await new Promise((r) => setTimeout(r, 200));
  t.equal(await direct.exists('held-victim'), 1, 'the session was ending: the approved UNLINK never ran');
});

t.test('UNSUBSCRIBE without a subscription: refusals after it keep their places (RESP2), and arrive at all (RESP3)', async (t) => {
  // Redis confirms every channel named, subscribed or not: two replies for `UNSUBSCRIBE a b` in RESP2.
  const a = await Raw.open(port);
  t.teardown(() => a.end());
  a.send(['AUTH', agentToken]);
  t.same(await a.replies(1), ['+OK\r\n']);
  a.send(['UNSUBSCRIBE', 'a', 'b'], ['FLUSHALL'], ['SET', 'unsub-k', 'v']);
  const r = await a.replies(4, 3_000);
  t.same(r.slice(0, 2), ['*3\r\n$11\r\nunsubscribe\r\n$1\r\na\r\n:0\r\n', '*3\r\n$11\r\nunsubscribe\r\n$1\r\nb\r\n:0\r\n'], 'one confirmation per channel');
  t.match(r[2], /^-NOPERM sluice: denied by rule "no-server-admin"/, "the refusal in FLUSHALL's place, after both");
  t.equal(r[3], '+OK\r\n', "and the SET's reply last");

  // RESP3: the confirmation is a push, which paired counting never counted.
  const b = await Raw.open(port);
  t.teardown(() => b.end());
  b.send(['HELLO', '3', 'AUTH', 'agent-9', agentToken]);
  t.match((await b.replies(1))[0], /^%/);
  b.send(['PUNSUBSCRIBE', 'news.*'], ['FLUSHALL']);
  const [push, refused] = await b.replies(2, 3_000);
  t.equal(push, '>3\r\n$12\r\npunsubscribe\r\n$6\r\nnews.*\r\n:0\r\n');
  t.match(refused, /^-NOPERM sluice: denied by rule "no-server-admin"/, 'the refusal arrives');
});

t.test('a held command waits for approval; the pipeline behind it waits too', async (t) => {
  const c = client();
  await c.connect();
  t.teardown(() => c.disconnect());
  await c.set('old:1', 'x');
  const held = c.unlink('old:1');
  const after = c.get('old:1');
  const id = await pendingApproval('old:1');
  t.ok(id, 'the approval is listed with the command text');
  t.equal((await redis.cli(['EXISTS', 'old:1'])).trim(), '1', 'nothing ran while held');
  const res = await fetch(`${api}/api/approvals/${id}/approve`, { method: 'POST', headers: { authorization: `Bearer ${approverToken}`, 'content-type': 'application/json' }, body: '{}' });
  t.equal(res.status, 200);
  t.equal(await held, 1);
  t.equal(await after, null, 'the GET behind it ran after the approved UNLINK');

  await c.set('old:2', 'y');
  await t.rejects(c.unlink('old:2'), /NOPERM sluice: approval apr_[a-z2-7]+ expired/);
  t.equal(await c.get('old:2'), 'y', 'a timed-out command did not run, and the session goes on');
});

t.test('a subject with max_pending_per_subject commands held gets a refusal for the next, not a third hold', async (t) => {
  const clients = [client(), client(), client()];
  await Promise.all(clients.map((c) => c.connect()));
  t.teardown(() => clients.forEach((c) => c.disconnect()));
  const held = clients.slice(0, 2).map((c, i) => c.unlink(`limit:${i}`).then(() => undefined, (err: unknown) => err));
  t.ok(await pendingApproval('limit:0'));
  t.ok(await pendingApproval('limit:1'));
  await t.rejects(clients[2]!.unlink('limit:2'), /NOPERM sluice: denied by rule "bulk-delete-needs-approval": .*2 approvals are already pending for this subject/);
  t.equal(await pendingApproval('limit:2'), undefined, 'never held');
  t.equal(await clients[2]!.ping(), 'PONG', 'the session goes on');
  for (const e of await Promise.all(held)) t.match(String(e), /expired/, 'the held ones time out as usual');
});

t.test('AUTH\\0 logs in as AUTH does (Redis reads names up to a NUL), and its token reaches no recording', async (t) => {
  const { raw, clientPort } = await rawSession(t, ['AUTH\u0000', agentToken]);
  // After login: refused, by name or as a change of identity, and scrubbed either way.
  raw.send(['AUTH\u0000x', 'agent-9', agentToken], ['HELLO', '3', 'AUTH\u0000', 'agent-9', agentToken], ['PING'], ['QUIT']);
  const r = await raw.replies(4);
  t.equal(r[0], '-ERR sluice: a command name cannot contain a NUL byte\r\n');
  t.match(r[1], /^-ERR sluice: identity cannot change/);
  t.same(r.slice(2), ['+PONG\r\n', '+OK\r\n']);
  const rec = await recordingFor(gw.stateDir, clientPort);
  t.notOk(rec.client.includes(Buffer.from(agentToken)), 'the token is nowhere in the recording');
  t.ok(rec.client.includes(Buffer.from('[redacted]')), 'it was replaced where it was sent');
});

t.test('an AUTH pipelined behind a held command is refused, and scrubbed from the recording', async (t) => {
  const { raw, clientPort } = await rawSession(t, ['AUTH', agentToken]);
  // One write: the UNLINK is held for approval, and the AUTH waits behind it in the backlog
  // while the chunk that carried both is recorded.
  raw.send(['UNLINK', 'old:3'], ['AUTH', 'agent-9', agentToken], ['PING'], ['QUIT']);
  const r = await raw.replies(4, 10_000);
  t.match(r[0], /^-NOPERM sluice: approval apr_[a-z2-7]+ expired/);
  t.match(r[1], /^-ERR sluice: identity cannot change/);
  t.same(r.slice(2), ['+PONG\r\n', '+OK\r\n']);
  const rec = await recordingFor(gw.stateDir, clientPort);
  t.ok(rec.client.includes(scrubRedisAuth([Buffer.from('AUTH'), Buffer.from('agent-9'), Buffer.from(agentToken)])), 'the AUTH is recorded in its scrubbed form');
  t.notOk(rec.client.includes(Buffer.from(agentToken)), 'and the token is not');
});

t.test('a command Sluice does not know may touch any key: a key rule stops it', async (t) => {
  const c = client();
  t.teardown(() => c.disconnect());
  await c.connect();
  // A module's command (none is loaded here): its keys cannot be named, so "sessions-are-private" holds.
  await t.rejects(c.call('JSON.GET', 'session:1'), /NOPERM sluice: denied by rule "sessions-are-private": command json\.get/);
  await t.rejects(c.call('JSON.GET', 'cache:1'), /NOPERM sluice: denied by rule "sessions-are-private"/, 'whatever key it names');
  t.equal(await c.set('cache:1', 'x'), 'OK', 'known commands are judged by their keys');
});

t.test('a key named behind a NUL-suffixed option is judged by the key rules', async (t) => {
  const c = client();
  await c.connect();
  t.teardown(() => c.disconnect());
  await c.geoadd('geo:pts', 0, 0, 'origin');
  const stored = await c.call('GEORADIUS', 'geo:pts', '0', '0', '100', 'km', 'STORE\u0000', 'session:stolen').then(
    () => undefined,
    (err: unknown) => err,
  );
  t.match(String(stored), /NOPERM sluice: denied by rule "sessions-are-private"/);
  t.equal(await redis.cli(['EXISTS', 'session:stolen']), '0\n', 'nothing was written');
});

t.test('the commands Sluice follows itself (HELLO, MULTI, EXEC, DISCARD, RESET) are judged like any other', async (t) => {
  const strictToken = await gw.token('strict-1', ['strict']);
  const raw = await Raw.open(port);
  t.teardown(() => raw.end());
  raw.send(['AUTH', strictToken]);
  t.same(await raw.replies(1), ['+OK\r\n']);
  raw.send(['HELLO', '3', 'SETNAME', 'sneaky'], ['RESET'], ['SET', 'strict:a', '1']);
  const r = await raw.replies(3);
  t.match(r[0], /^-NOPERM sluice: denied by rule "default of policy strict"/, 'HELLO, and the name it would set, refused by the default');
  t.match(r[1], /^-NOPERM sluice: denied by rule "default of policy strict"/, 'RESET too');
  t.equal(r[2], '+OK\r\n');
  // EXEC refused inside MULTI: the transaction is discarded upstream, and the connection is out of MULTI.
  raw.send(['MULTI'], ['SET', 'strict:b', '1'], ['EXEC'], ['PING']);
  const m = await raw.replies(4);
  t.same(m.slice(0, 2), ['+OK\r\n', '+QUEUED\r\n']);
  t.match(m[2], /^-NOPERM sluice: denied by rule "default of policy strict"/);
  t.equal(m[3], '+PONG\r\n', 'no longer in MULTI');
  t.equal(await redis.cli(['EXISTS', 'strict:b']), '0\n', 'nothing of the transaction ran');
  // One that needs approval cannot be held (the relay follows it as it passes): refused, naming why.
  raw.send(['MULTI'], ['DISCARD']);
  const d = await raw.replies(2);
  t.equal(d[0], '+OK\r\n');
  t.match(d[1], /^-NOPERM sluice: denied by rule "discard-needs-approval": .*DISCARD cannot be held for one/);
  gw.gateway.services.audit.flush();
  const events = gw.gateway.services.store.queryAuditEvents({ subject: 'strict-1', limit: 100 });
  for (const kind of ['hello', 'reset', 'exec', 'discard']) {
    t.ok(events.some((e) => e.verdict === 'denied' && e.kind.startsWith(kind)), `${kind} refused in the audit trail`);
  }
});

t.test('audit rows: refusals one by one, allowed commands counted', async (t) => {
  await new Promise((r) => setTimeout(r, 1_200));
  gw.gateway.services.audit.flush();
  const events: AuditEvent[] = gw.gateway.services.store.queryAuditEvents({ subject: 'agent-9', limit: 1000 });
  t.match(events.find((e) => e.kind === 'flushall'), { verdict: 'denied', rule: 'no-server-admin', protocol: 'redis', target: 'cache' });
  t.match(events.find((e) => e.kind === 'eval'), { verdict: 'denied' });
  t.match(events.find((e) => e.verdict === 'approved'), { kind: 'unlink', rule: 'bulk-delete-needs-approval' });
  t.ok(events.some((e) => e.verdict === 'approval_expired'));
  // What Sluice refuses above any policy is audited too, credentials redacted (the token test below covers every row).
  t.match(events.find((e) => e.rule === 'sluice' && e.kind === 'hello'), {
    verdict: 'denied',
    text: 'HELLO [redacted] [redacted] [redacted] [redacted]',
    error: /^ERR sluice: identity cannot change/,
  });
  t.match(events.find((e) => e.rule === 'sluice' && e.error?.includes('NUL byte')), { verdict: 'denied', text: /^"AUTH\\u0000x" agent-9 \[redacted\]$/ });
  const sets = events.filter((e) => e.kind === 'set' && e.verdict === 'allowed');
  t.ok(sets.length > 0 && sets.every((e) => (e.rows ?? 0) > 0), 'allowed SETs are counted per second');
  for (const e of events) t.notMatch(e.text, agentToken);
});

t.test("Sluice's own refusals waiting behind a blocked command are bounded: the client is not read past them", async (t) => {
  const refusedLogged = (): number => gw.logs.filter((l) => (JSON.parse(l) as { msg?: string }).msg === 'command refused').length;
  const a = await Raw.open(port);
  t.teardown(() => a.end());
  a.send(['AUTH', agentToken]);
  t.same(await a.replies(1), ['+OK\r\n']);
  const before = refusedLogged();
  // Each refusal waits for the BLPOP's reply, in order: 20,000 of them are about 2 MB.
  const n = 20_000;
  a.send(['BLPOP', 'q:bounded', '0'], ...Array.from({ length: n }, () => ['MONITOR']));
  await new Promise((r) => setTimeout(r, 700));
  const read = refusedLogged() - before;
  t.ok(read > 0 && read < n / 2, `the client is not read once 64 KiB of refusals wait (${read} of ${n} read)`);
  const b = client();
  await b.connect();
  t.teardown(() => b.disconnect());
  await b.lpush('q:bounded', 'x');
  const replies = await a.replies(n + 1, 30_000);
  t.equal(replies[0], '*2\r\n$9\r\nq:bounded\r\n$1\r\nx\r\n', 'the BLPOP is answered first');
  t.equal(replies.slice(1).filter((r) => r.startsWith('-')).length, n, 'then every refusal, once reading resumes');
});

t.test('an approved SUBSCRIBE switches to pub/sub counting, as an unheld one does (RESP3)', async (t) => {
  const a = await Raw.open(port);
  t.teardown(() => a.end());
  a.send(['HELLO', '3', 'AUTH', 'agent-9', agentToken]);
  const [hello] = await a.replies(1);
  t.match(hello, /^%/, 'RESP3');
  a.send(['SUBSCRIBE', 'audit-feed']);
  const id = await pendingApproval('audit-feed');
  t.ok(id, 'the SUBSCRIBE is held');
  const res = await fetch(`${api}/api/approvals/${id}/approve`, { method: 'POST', headers: { authorization: `Bearer ${approverToken}`, 'content-type': 'application/json' }, body: '{}' });
  t.equal(res.status, 200);
  t.same(await a.replies(1), ['>3\r\n$9\r\nsubscribe\r\n$10\r\naudit-feed\r\n:1\r\n'], 'the confirmation, a push');
  // Counted as a paired reply, the SUBSCRIBE owed one that never came (its confirmation is a
  // push, which paired counting skips): every later refusal waited for it for ever.
  a.send(['FLUSHALL']);
  const [refused] = await a.replies(1, 3_000);
  t.match(refused, /^-NOPERM sluice: denied by rule "no-server-admin"/, 'a refusal after it arrives');
});

/**
 * Approval windows on a live PostgreSQL session, across a gateway restart.
 * A window covers a statement fingerprint, an HMAC under the state dir's
 * fingerprint key (src/policy/fingerprint-key.ts); windows are reloaded
 * from the store after a restart, so the key must be the same one.
 */
import { randomBytes } from 'node:crypto';
import { statSync, rmSync, mkdtempSync, readFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import t from 'tap';
import pg from 'pg';
import { startPostgres } from '../helpers/postgres.js';
import { startGateway, pgTargetYaml, type TestGateway } from '../helpers/gateway.js';
import { FINGERPRINT_KEY_FILE, useFingerprintKey } from '../../src/policy/fingerprint-key.js';
import { openSqliteStore } from '../../src/store/sqlite.js';

const pgServer = await startPostgres();
t.teardown(() => pgServer.stop());
await pgServer.psqlDirect(
  `create table ledger(id int primary key) ; alter table ledger owner to app_user;
   insert into ledger select generate_series(1, 10);`,
  'app',
);

const stateDir = mkdtempSync(join(tmpdir(), 'sluice-windows-'));
t.teardown(() => rmSync(stateDir, { recursive: true, force: true }));

const yaml = `identity: { dev_issuer: true }
targets:${pgTargetYaml('app-db', pgServer)}
policies:
  - name: agents
    subjects: { groups: [agent] }
    targets: [app-db]
    default: allow
    rules:
      - { name: ledger-deletes-need-approval, action: approve, match: { kinds: [delete], tables: [ledger] } }
api:
  listen: 127.0.0.1:0
  roles: { approver: [security] }
approvals:
  timeout: 2s
`;

async function start(): Promise<TestGateway> {
  return startGateway(yaml, { TEST_PG_PASSWORD: pgServer.password }, { stateDir });
}

async function connect(gw: TestGateway): Promise<pg.Client & { notices: string[] }> {
  const client = new pg.Client({ host: '127.0.0.1', port: gw.port('app-db'), user: 'agent-7', database: 'app', password: await gw.token('agent-7', ['agent']) }) as pg.Client & {
    notices: string[];
  };
  client.notices = [];
  client.on('notice', (n) => client.notices.push(n.message ?? ''));
  client.on('error', () => {});
  await client.connect();
  return client;
}

async function remaining(): Promise<string> {
  return (await pgServer.psqlDirect('select count(*) from ledger', 'app')).trim();
}

t.test('a window granted before a restart still covers its statements after it', async (t) => {
  let gw = await start();
  const api = (): string => `http://127.0.0.1:${gw.gateway.api!.address.port}`;
  let client = await connect(gw);
  const held = client.query('DELETE FROM ledger WHERE id = 1');
  let id: string | undefined;
  for (let i = 0; i < 200 && id === undefined; i++) {
    id = /(apr_[a-z2-7]+)/.exec(client.notices.join('\n'))?.[1];
    if (id === undefined) await new Promise((r) => setTimeout(r, 25));
  }
  t.ok(id, 'held for approval');
  const res = await fetch(`${api()}/api/approvals/${id}/approve`, {
    method: 'POST',
    headers: { authorization: `Bearer ${await gw.token('alice', ['security'])}`, 'content-type': 'application/json' },
    body: JSON.stringify({ for: '15m' }),
  });
  t.equal(res.status, 200);
  const approved = (await res.json()) as { fingerprint: string };
  t.match(approved.fingerprint, /^[0-9a-f]{64}$/);
  await held;
  t.equal(await remaining(), '9');
  await client.query('DELETE FROM ledger WHERE id = 2');
  t.equal(await remaining(), '8', 'the window covers the statement with another constant');
  await client.end();
  await gw.close();

  // Both gateways run in this test process: the key a new process would start with, until it reads the state dir's.
  useFingerprintKey(randomBytes(32));
  gw = await start();
  t.teardown(() => gw.close());
  client = await connect(gw);
  t.teardown(() => client.end());
  await client.query('DELETE FROM ledger WHERE id = 3');
  t.equal(await remaining(), '7', 'after the restart, the window still covers it: not held');
  t.same(client.notices, [], 'no approval was asked for');
  const keyFile = join(stateDir, FINGERPRINT_KEY_FILE);
  t.equal(statSync(keyFile).mode & 0o777, 0o600, "the fingerprint key is its owner's only");
  t.match(readFileSync(keyFile, 'utf8'), /^[0-9a-f]{64}\n$/);
});

t.test('audit.retention purges, from the first start, audit events and decided requests older than it; new ones stay', async (t) => {
  const dir = mkdtempSync(join(tmpdir(), 'sluice-retention-'));
  t.teardown(() => rmSync(dir, { recursive: true, force: true }));
  const longAgo = new Date(Date.now() - 90 * 24 * 3_600_000).toISOString();
  // What an earlier gateway left in the state dir, 90 days ago.
  const before = openSqliteStore(dir);
  before.insertAuditEvents([{ time: longAgo, sessionId: 'old-session', subject: 'agent-7', target: 'app-db', protocol: 'postgres', kind: 'select', text: 'SELECT 1', verdict: 'allowed' }]);
  before.saveApproval({
    id: 'apr_aaaaaaaaaaaaaaaa', status: 'denied', sessionId: 'old-session', subject: 'agent-7', target: 'app-db', protocol: 'postgres', policy: 'agents',
    rule: 'ledger-deletes-need-approval', text: 'DELETE FROM ledger', statementHash: 'x', fingerprint: 'y', createdAt: longAgo, expiresAt: longAgo, decidedAt: longAgo,
  });
  before.close();

  const gw = await startGateway(`${yaml}audit: { retention: 30d }\n`, { TEST_PG_PASSWORD: pgServer.password }, { stateDir: dir });
  t.teardown(() => gw.close());
  const client = await connect(gw);
  t.teardown(() => client.end());
  await client.query('SELECT count(*) FROM ledger');
  await gw.gateway.services.audit.flush();
  const store = gw.gateway.services.store;
  t.same(store.queryAuditEvents({ sessionId: 'old-session', limit: 10 }), [], 'the 90-day-old event is gone');
  t.equal(store.getApproval('apr_aaaaaaaaaaaaaaaa'), undefined, 'and the 90-day-old decided request');
  t.match(store.queryAuditEvents({ subject: 'agent-7', limit: 10 }), [{ text: 'SELECT count(*) FROM ledger', verdict: 'allowed' }], "this session's statement is kept");
});

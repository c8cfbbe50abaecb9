/**
 * A policy's default on its own: a policy with no rules and `default: deny`
 * refuses every statement and command, even with the audit trail off (the
 * one configuration in which Sluice skips judging: only when everything
 * would be allowed).
 */
import t from 'tap';
import { Redis } from 'ioredis';
import { startPostgres } from '../helpers/postgres.js';
import { startRedis } from '../helpers/redis.js';
import { startGateway, pgTargetYaml, redisTargetYaml } from '../helpers/gateway.js';
import { run } from '../helpers/process.js';

const pgServer = await startPostgres();
t.teardown(() => pgServer.stop());
const redis = await startRedis();
t.teardown(() => redis.stop());
const gw = await startGateway(
  `identity: { dev_issuer: true }
audit: { enabled: false }
targets:${pgTargetYaml('app-db', pgServer)}${redisTargetYaml('cache', redis)}
policies:
  - name: locked
    subjects: { groups: [locked] }
    targets: [app-db, cache]
    default: deny
  - name: open
    subjects: { groups: [open] }
    targets: [app-db, cache]
  - name: readers
    subjects: { groups: [reader] }
    targets: [app-db, cache]
    default: deny
    rules:
      - { name: reads, action: allow, match: { kinds: [select] } }
      - { name: cache-writes, action: allow, match: { commands: [mset, get], keys: ['cache:*'] } }
`,
  { TEST_PG_PASSWORD: pgServer.password, REDIS_PW: redis.aclPassword },
);
t.teardown(() => gw.close());

const locked = await gw.token('locked-1', ['locked']);
const open = await gw.token('open-1', ['open']);
const reader = await gw.token('reader-1', ['reader']);

function psql(token: string, sql: string) {
  return run('psql', ['-X', '-At', '-c', sql], {
    env: { PGHOST: '127.0.0.1', PGPORT: String(gw.port('app-db')), PGUSER: 'ci', PGDATABASE: 'app', PGPASSWORD: token, PGSSLMODE: 'disable' },
  });
}

async function redisClient(token: string): Promise<Redis> {
  const c = new Redis({ host: '127.0.0.1', port: gw.port('cache'), password: token, lazyConnect: true, maxRetriesPerRequest: 0, enableOfflineQueue: false });
  c.on('error', () => {});
  await c.connect();
  return c;
}

t.test('PostgreSQL: default deny with no rules refuses, default allow runs', async (t) => {
  const refused = await psql(locked, 'select 41 + 1');
  t.not(refused.code, 0);
  t.match(refused.stderr, /no rule of policy "locked" matched; its default is deny/);
  t.notMatch(refused.stdout, /42/);
  const allowed = await psql(open, 'select 41 + 1');
  t.equal(allowed.code, 0, allowed.stderr);
  t.equal(allowed.stdout.trim(), '42');
});

t.test('Redis: default deny with no rules refuses, default allow runs', async (t) => {
  const l = await redisClient(locked);
  t.teardown(() => l.disconnect());
  await t.rejects(l.set('k', 'v'), /NOPERM sluice: .*default is deny/);
  const o = await redisClient(open);
  t.teardown(() => o.disconnect());
  t.equal(await o.get('k'), null, 'the refused SET never reached the server');
  t.equal(await o.set('k', 'v'), 'OK');
  t.equal(await o.get('k'), 'v');
});

t.test('an allow rule covers a statement only when it covers all it does', async (t) => {
  await pgServer.psqlDirect('create table kept(id int); insert into kept values (1); alter table kept owner to app_user;', 'app');
  const read = await psql(reader, 'select count(*) from kept');
  t.equal(read.code, 0, read.stderr);
  t.equal(read.stdout.trim(), '1');
  // kinds select and delete: "allow kinds: [select]" does not cover it, and the default denies.
  const cte = await psql(reader, 'with d as (delete from kept returning *) select * from d');
  t.not(cte.code, 0);
  t.match(cte.stderr, /its default is deny/);
  t.equal((await pgServer.psqlDirect('select count(*) from kept', 'app')).trim(), '1', 'nothing was deleted');

  const r = await redisClient(reader);
  t.teardown(() => r.disconnect());
  t.equal(await r.mset('cache:a', '1', 'cache:b', '2'), 'OK');
  await t.rejects(r.mset('cache:c', '3', 'secret:d', '4'), /NOPERM sluice: .*default is deny/, 'one key outside cache:*');
  t.equal(await r.get('cache:c'), null, 'so none of it was written');
});


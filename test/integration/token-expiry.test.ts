/**
 * A session ends when the token it logged in with expires
 * (`limits.end_at_token_expiry`, on by default), with a native error where
 * the protocol has room for one; a target that turns it off keeps the
 * session. A token that lives longer than `identity.max_token_lifetime` is
 * refused at login, however much of it is left. Real PostgreSQL and Redis
 * servers, node-postgres and ioredis.
 */
import pg from 'pg';
import t from 'tap';
import { Redis } from 'ioredis';
import { startPostgres } from '../helpers/postgres.js';
import { startRedis } from '../helpers/redis.js';
import { startGateway, pgTargetYaml, redisTargetYaml } from '../helpers/gateway.js';
import { Raw } from '../helpers/raw-redis.js';

const pgServer = await startPostgres();
t.teardown(() => pgServer.stop());
const redis = await startRedis();
t.teardown(() => redis.stop());
// No clock tolerance: a token's session ends at its exp, not 30 s after.
const gw = await startGateway(
  `identity: { dev_issuer: true, clock_tolerance: 0s, max_token_lifetime: 1h }
targets:${pgTargetYaml('app-db', pgServer)}${pgTargetYaml('app-db-long', pgServer, { limits: '{ end_at_token_expiry: false }' })}${redisTargetYaml('cache', redis)}
policies:
  - name: ci
    subjects: { groups: [ci] }
    targets: [app-db, app-db-long, cache]
`,
  { TEST_PG_PASSWORD: pgServer.password, REDIS_PW: redis.aclPassword },
);
t.teardown(() => gw.close());

const TTL = 3;
const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

function pgClient(target: string, password: string): pg.Client {
  const c = new pg.Client({ host: '127.0.0.1', port: gw.port(target), user: 'ci', database: 'app', password });
  c.on('error', () => undefined);
  return c;
}

t.test('PostgreSQL: the session ends at the expiry with a FATAL the client can read', async (t) => {
  const c = pgClient('app-db', await gw.token('ci-pg', ['ci'], { ttlSeconds: TTL }));
  await c.connect();
  t.equal((await c.query('select 1 as one')).rows[0].one, 1, 'works while the token is valid');
  const ended = new Promise<Error>((resolve) => c.once('error', resolve));
  const err = await Promise.race([ended, sleep((TTL + 5) * 1000).then(() => undefined)]);
  t.ok(err, 'the connection ended');
  t.match(err?.message, /the token this session logged in with expired at \d{4}-\d\d-\d\dT[\d:.]+Z; connect again with a fresh token/);
  t.equal((err as { code?: string }).code, '28000');
  await c.end().catch(() => undefined);
  // Logged once both sockets have closed, a moment after the client saw the error.
  const logged = (): boolean =>
    gw.logs.some((l) => {
      const e = JSON.parse(l) as { msg?: string; reason?: string; subject?: string };
      return e.msg === 'session ended' && e.reason === 'token expired';
    });
  for (let i = 0; i < 100 && !logged(); i++) await sleep(50);
  t.ok(logged(), "logged with its reason");
});

t.test('PostgreSQL: a target with end_at_token_expiry off keeps the session', async (t) => {
  const c = pgClient('app-db-long', await gw.token('ci-pg-long', ['ci'], { ttlSeconds: TTL }));
  await c.connect();
  await sleep((TTL + 2) * 1000);
  t.equal((await c.query('select 2 as two')).rows[0].two, 2, 'still usable after the expiry');
  await c.end();
});

t.test('Redis: the session ends at the expiry; a command waiting for its reply gets the reason', async (t) => {
  const c = new Redis({ host: '127.0.0.1', port: gw.port('cache'), password: await gw.token('ci-redis', ['ci'], { ttlSeconds: TTL }), lazyConnect: true, maxRetriesPerRequest: 0, enableOfflineQueue: false, retryStrategy: () => null });
  c.on('error', () => undefined);
  await c.connect();
  t.equal(await c.set('k', 'v'), 'OK');
  // Held by the server past the expiry: the reply it is owed is the gateway's error.
  const blocked = c.blpop('never-filled', TTL + 10).then(
    () => undefined,
    (err: Error) => err,
  );
  const err = await blocked;
  t.match(err?.message, /sluice: terminating connection: the token this session logged in with expired at /);
  await sleep(200);
  t.equal(c.status, 'end', 'the connection is closed');
});

t.test('a token that lives longer than identity.max_token_lifetime is refused at login, on both protocols', async (t) => {
  const long = await gw.token('ci-long', ['ci'], { ttlSeconds: 2 * 3600 });
  const c = pgClient('app-db', long);
  const err = await c.connect().then(() => undefined, (e: Error & { code?: string }) => e);
  t.match(err?.message, /token lives 2h \(issued at \S+, expires at \S+\): longer than the 1h this gateway accepts \(identity\.max_token_lifetime\); mint a shorter-lived token/);
  t.equal(err?.code, '28P01', 'PostgreSQL: FATAL 28P01, as for every refused token');
  await c.end().catch(() => undefined);

  const r = await Raw.open(gw.port('cache'));
  r.send(['AUTH', long]);
  const [reply] = await r.replies(1);
  t.match(reply, /^-WRONGPASS sluice: token refused: token lives 2h \(issued at \S+, expires at \S+\): longer than the 1h this gateway accepts/, 'Redis: -WRONGPASS says why');
  r.end();

  const ok = pgClient('app-db', await gw.token('ci-hour', ['ci'], { ttlSeconds: 3600 }));
  await ok.connect();
  t.equal((await ok.query('select 3 as three')).rows[0].three, 3, 'an hour-long token is accepted');
  await ok.end();
  t.notOk(gw.logs.some((l) => l.includes(long)), 'the refused token is in no log line');
});

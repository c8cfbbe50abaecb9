/**
 * The gateway tracks every client connection so that shutdown can destroy
 * what is left, and forgets each one when it closes: PostgreSQL and Redis
 * sessions that reached the relay, and ones refused before it. (A session
 * used to drop every 'close' listener of its socket when the relay took
 * over, the gateway's included, so each relayed connection stayed tracked
 * for the life of the process.)
 */
import t from 'tap';
import pg from 'pg';
import { connect } from 'node:net';
import { startGateway, pgTargetYaml } from '../helpers/gateway.js';
import { startPostgres } from '../helpers/postgres.js';
import { startRedis } from '../helpers/redis.js';
import { command } from '../helpers/resp-bytes.js';

const redis = await startRedis();
t.teardown(() => redis.stop());
const postgres = await startPostgres();
t.teardown(() => postgres.stop());

const gw = await startGateway(
  `identity: { dev_issuer: true }
targets:${pgTargetYaml('app-db', postgres)}
  cache:
    protocol: redis
    listen: 127.0.0.1:0
    allow_insecure_loopback: true
    upstream: { host: 127.0.0.1, port: ${redis.port}, user: app, password_env: REDIS_APP_PASSWORD, db: 0 }
policies:
  - name: ci
    subjects: { groups: [ci] }
    targets: [app-db, cache]
`,
  { TEST_PG_PASSWORD: postgres.password, REDIS_APP_PASSWORD: redis.aclPassword },
);
t.teardown(() => gw.close());
const token = await gw.token('ci-job', ['ci']);

/** Waits until the gateway tracks `n` connections; returns the last count seen (bounded wait). */
async function settle(n: number): Promise<number> {
  for (let i = 0; i < 200 && gw.gateway.connectionCount !== n; i++) await new Promise((r) => setTimeout(r, 10));
  return gw.gateway.connectionCount;
}

/** One Redis session through the relay: AUTH, PING, QUIT. */
function redisSession(): Promise<string> {
  return new Promise((resolve, reject) => {
    const s = connect(gw.port('cache'), '127.0.0.1', () => s.write(Buffer.concat([command('AUTH', token), command('PING'), command('QUIT')])));
    let got = '';
    s.on('data', (d: Buffer) => (got += d.toString()));
    s.on('close', () => resolve(got));
    s.on('error', reject);
  });
}

t.test('relayed sessions are forgotten when they close', async (t) => {
  t.equal(await settle(0), 0, 'no connection before');
  const replies = await Promise.all([redisSession(), redisSession(), redisSession()]);
  for (const r of replies) t.match(r, /\+PONG\r\n/, 'the Redis session reached the relay');
  for (let i = 0; i < 3; i++) {
    const client = new pg.Client({ host: '127.0.0.1', port: gw.port('app-db'), user: postgres.user, database: postgres.database, password: token });
    await client.connect();
    const { rows } = await client.query('SELECT 1 AS one');
    t.same(rows, [{ one: 1 }], 'the PostgreSQL session reached the relay');
    await client.end();
  }
  t.equal(await settle(0), 0, 'every connection forgotten once closed');
});

t.test('refused connections are forgotten too', async (t) => {
  const refused = await new Promise<string>((resolve, reject) => {
    const s = connect(gw.port('cache'), '127.0.0.1', () => s.write(command('AUTH', 'not-a-token')));
    let got = '';
    s.on('data', (d: Buffer) => (got += d.toString()));
    s.on('close', () => resolve(got));
    s.on('error', reject);
  });
  t.match(refused, /^-WRONGPASS/);
  t.equal(await settle(0), 0);
});

/**
 * Data masking of Redis replies through Sluice against a real Redis:
 * canaries seeded in keys come back masked from GET, MGET, HGETALL, LRANGE,
 * XRANGE, SCAN and pub/sub, in RESP2 (ioredis) and RESP3 (node-redis); the
 * rest is identical to a direct connection; a relay that re-cuts the
 * server's bytes changes nothing.
 */
import t, { type Test } from 'tap';
import { Redis } from 'ioredis';
import { createClient } from 'redis';
import { startRedis } from '../helpers/redis.js';
import { startGateway } from '../helpers/gateway.js';
import { startFaultRelay, type FaultRelay } from '../helpers/fault-relay.js';

const CANARIES = {
  email: 'alice.canary@example.com',
  card: '4111 1111 1111 1111',
  aws: 'AKIAIOSFODNN7EXAMPLE',
  jwt: 'eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiJjYW5hcnkifQ.c2lnbmF0dXJlX2NhbmFyeQ',
  custom: 'CANARY-7F3A9B21',
};
const canaryList = Object.values(CANARIES);

const redis = await startRedis();
t.teardown(() => redis.stop());

const relays: Record<string, FaultRelay> = {
  byte: await startFaultRelay(redis.port, { mode: 'byte' }),
  random: await startFaultRelay(redis.port, { mode: 'random', maxChunk: 23 }),
  coalesce: await startFaultRelay(redis.port, { mode: 'coalesce', coalesceMs: 30 }),
};
t.teardown(async () => {
  for (const r of Object.values(relays)) await r.close();
});

function target(name: string, port: number): string {
  return `
  ${name}:
    protocol: redis
    listen: 127.0.0.1:0
    allow_insecure_loopback: true
    upstream: { host: 127.0.0.1, port: ${port}, user: app, password_env: REDIS_APP_PASSWORD }`;
}

const gw = await startGateway(
  `identity: { dev_issuer: true }
targets:${target('cache', redis.port)}${target('cache-byte', relays.byte!.port)}${target('cache-random', relays.random!.port)}${target('cache-coalesce', relays.coalesce!.port)}
masking:
  rules:
    - { name: emails, detector: email, strategy: partial }
    - { name: cards, detector: credit_card, strategy: redact }
    - { name: aws, detector: aws_access_key_id, strategy: redact }
    - { name: jwts, detector: jwt, strategy: redact }
    - { name: custom, pattern: 'CANARY-[0-9A-F]{8}', strategy: { kind: redact, token: '[gone]' } }
policies:
  - name: ci
    subjects: { groups: [ci] }
    targets: [cache, cache-byte, cache-random, cache-coalesce]
    masking: [emails, cards, aws, jwts, custom]
`,
  { REDIS_APP_PASSWORD: redis.aclPassword },
);
t.teardown(() => gw.close());
const token = await gw.token('ci-job', ['ci']);

const directOpts = { host: '127.0.0.1', port: redis.port, username: 'app', password: redis.aclPassword, lazyConnect: true, maxRetriesPerRequest: 0 };
const gwOpts = (name: string) => ({ host: '127.0.0.1', port: gw.port(name), username: 'ci-job', password: token, lazyConnect: true, maxRetriesPerRequest: 0 });

function noCanary(t: Test, what: string, value: unknown): void {
  const text = JSON.stringify(value);
  for (const c of canaryList) t.notOk(text.includes(c), `${what}: ${c} does not reach the client`);
}

// Seed directly.
const seed = new Redis(directOpts);
await seed.connect();
await seed.flushdb();
await seed.set('user:1:email', CANARIES.email);
await seed.set('user:1:card', `card ${CANARIES.card} on file`);
await seed.set('plain:1', 'nothing to see');
await seed.hset('user:1', { email: CANARIES.email, token: CANARIES.jwt, name: 'Alice' });
await seed.rpush('log', `key ${CANARIES.aws}`, 'ok', `ref ${CANARIES.custom}`);
await seed.xadd('events', '1-1', 'who', CANARIES.email, 'what', 'login');
await seed.set(`key-${CANARIES.custom}`, 'v');
for (let i = 0; i < 300; i++) await seed.set(`plain:bulk:${i}`, `value ${i} ${'x'.repeat(i)}`);
await seed.quit();

/** Runs the same reads on a client; returns their replies. */
async function reads(c: Redis): Promise<unknown[]> {
  return [
    await c.get('user:1:email'),
    await c.mget('user:1:email', 'user:1:card', 'plain:1', 'missing'),
    await c.hgetall('user:1'),
    await c.lrange('log', 0, -1),
    await c.xrange('events', '-', '+'),
    (await c.scan('0', 'MATCH', 'key-*', 'COUNT', 1000))[1],
    await c.get('plain:1'),
  ];
}

t.test('RESP2 (ioredis): every reply type masked', async (t) => {
  const c = new Redis(gwOpts('cache'));
  await c.connect();
  const [get, mget, hgetall, lrange, xrange, scan, plain] = await reads(c);
  t.equal(get, 'a***@example.com');
  t.same(mget, ['a***@example.com', 'card [redacted] on file', 'nothing to see', null]);
  t.same(hgetall, { email: 'a***@example.com', token: '[redacted]', name: 'Alice' });
  t.same(lrange, ['key [redacted]', 'ok', 'ref [gone]']);
  t.same(xrange, [['1-1', ['who', 'a***@example.com', 'what', 'login']]]);
  t.same(scan, ['key-[gone]'], 'key names in SCAN replies are masked too');
  t.equal(plain, 'nothing to see');
  // Errors are masked as well.
  const err = await c.call('NOSUCHCOMMAND', CANARIES.email).catch((e: Error) => e);
  noCanary(t, 'error', String(err));
  await c.quit();
});

t.test('pub/sub messages (RESP2) are masked', async (t) => {
  const sub = new Redis(gwOpts('cache'));
  const pub = new Redis(directOpts);
  await sub.connect();
  await pub.connect();
  const got: string[] = [];
  const done = new Promise<void>((resolve) =>
    sub.on('message', (_ch: string, msg: string) => {
      got.push(msg);
      if (got.length === 2) resolve();
    }),
  );
  await sub.subscribe('news');
  await pub.publish('news', `mail ${CANARIES.email}`);
  await pub.publish('news', 'plain');
  await done;
  t.same(got, ['mail a***@example.com', 'plain']);
  await sub.quit();
  await pub.quit();
});

t.test('RESP3 (node-redis): maps, sets, pushes masked', async (t) => {
  const c = createClient({ url: `redis://ci-job:${encodeURIComponent(token)}@127.0.0.1:${gw.port('cache')}`, RESP: 3 });
  c.on('error', () => {});
  await c.connect();
  t.equal(await c.get('user:1:email'), 'a***@example.com');
  const h = await c.hGetAll('user:1');
  noCanary(t, 'RESP3 map', h);
  t.equal((h as Record<string, string>).email, 'a***@example.com');
  t.same(await c.lRange('log', 0, -1), ['key [redacted]', 'ok', 'ref [gone]']);
  const sub = c.duplicate();
  sub.on('error', () => {});
  await sub.connect();
  const got = new Promise<string>((resolve) => void sub.subscribe('resp3', (m) => resolve(m)));
  await new Promise((r) => setTimeout(r, 50));
  await c.publish('resp3', `tok ${CANARIES.jwt}`);
  t.equal(await got, 'tok [redacted]', 'a RESP3 push is masked');
  await sub.quit();
  await c.quit();
});

t.test('unmasked replies equal a direct connection; re-cut upstream bytes change nothing', async (t) => {
  const keys = Array.from({ length: 300 }, (_, i) => `plain:bulk:${i}`);
  const d = new Redis(directOpts);
  await d.connect();
  const direct = await d.mget(...keys);
  await d.quit();
  const g = new Redis(gwOpts('cache'));
  await g.connect();
  const expected = await reads(g);
  // 300 values in one reply: more than one inline batch, so the pool masks them.
  t.same(await g.mget(...keys), direct, 'canary-free values identical to direct');
  await g.quit();
  for (const name of ['cache-random', 'cache-coalesce', 'cache-byte']) {
    const c = new Redis(gwOpts(name));
    await c.connect();
    t.same(await reads(c), expected, `${name}: same replies`);
    if (name !== 'cache-byte') t.same(await c.mget(...keys), direct, `${name}: bulk identical`);
    await c.quit();
  }
});

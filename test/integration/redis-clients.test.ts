/**
 * Real Redis clients through Sluice: redis-cli (piped commands, --pipe,
 * RESP3, TLS), redis-benchmark, ioredis and node-redis; upstream TLS in
 * require and verify-full modes; garbage on one connection while others
 * keep working; no secret in any log line.
 */
import t from 'tap';
import { connect } from 'node:net';
import { join } from 'node:path';
import { Redis } from 'ioredis';
import { createClient } from 'redis';
import { startRedis } from '../helpers/redis.js';
import { startGateway } from '../helpers/gateway.js';
import { run } from '../helpers/process.js';

const redis = await startRedis({ tls: true });
t.teardown(() => redis.stop());
const tlsPort = redis.tls!.port;
const caFile = redis.tls!.caFile;

const target = (name: string, upstream: string, extra = ''): string => `
  ${name}:
    protocol: redis
    listen: 127.0.0.1:0
    allow_insecure_loopback: true
    ${extra}
    upstream: { host: 127.0.0.1, user: app, password_env: REDIS_APP_PASSWORD, ${upstream} }`;

const gw = await startGateway(
  `identity: { dev_issuer: true }
targets:${target('cache', `port: ${redis.port}`)}${target('secure', `port: ${redis.port}`, 'tls: true')}${target(
    'up-require',
    `port: ${tlsPort}, tls: require`,
  )}${target('up-verify', `port: ${tlsPort}, tls: verify-full, ca_file: ${JSON.stringify(caFile)}`)}${target(
    'up-verify-wrong-name',
    `port: ${tlsPort}, tls: verify-full, ca_file: ${JSON.stringify(caFile)}, server_name: other.example`,
  )}
policies:
  - name: ci
    subjects: { groups: [ci] }
    targets: [cache, secure, up-require, up-verify, up-verify-wrong-name]
`,
  { REDIS_APP_PASSWORD: redis.aclPassword },
);
t.teardown(() => gw.close());
const token = await gw.token('ci-job', ['ci']);
const port = gw.port('cache');

const cli = (args: string[], input = '', p = port) =>
  run('redis-cli', ['-h', '127.0.0.1', '-p', String(p), '--no-auth-warning', ...args], { env: { REDISCLI_AUTH: token }, input, timeoutMs: 30_000 });

t.test('redis-cli: piped interactive commands, --user label, RESP3', async (t) => {
  let r = await cli([], 'SET greeting hello\nGET greeting\nACL WHOAMI\nSELECT 1\nINCR n\n');
  t.equal(r.code, 0);
  t.same(r.stdout.split('\n').filter(Boolean), ['OK', 'hello', 'app', 'ERR sluice: this target is bound to db 0', '1']);
  r = await cli(['--user', 'ci-label', 'GET', 'greeting']);
  t.equal(r.stdout.trim(), 'hello', 'AUTH <label> <token>');
  await cli(['HSET', 'h3', 'f', 'v']);
  r = await cli(['-3', 'HGETALL', 'h3']);
  t.equal(r.stdout, 'f v\n', 'RESP3 map: redis-cli prints a map entry per line');
  r = await cli(['-3', 'CLIENT', 'INFO']);
  t.match(r.stdout, /resp=3/, 'redis-cli -3 switched the upstream connection to RESP3');
});

t.test('redis-cli --pipe mass insertion', async (t) => {
  const n = 20_000;
  const parts: string[] = [];
  for (let i = 0; i < n; i++) parts.push(`*3\r\n$3\r\nSET\r\n$${`mass:${i}`.length}\r\nmass:${i}\r\n$${String(i).length}\r\n${i}\r\n`);
  const r = await cli(['--pipe'], parts.join(''));
  t.equal(r.code, 0, r.stderr);
  t.match(r.stdout, new RegExp(`errors: 0, replies: ${n}`));
  t.equal((await cli(['GET', 'mass:19999'])).stdout.trim(), '19999');
});

t.test('redis-cli --tls --cacert against a tls: true target', async (t) => {
  const r = await cli(['--tls', '--cacert', join(gw.stateDir, 'tls', 'ca.crt'), 'PING'], '', gw.port('secure'));
  t.equal(r.stdout.trim(), 'PONG', r.stderr);
});

t.test('redis-benchmark -P 16', async (t) => {
  const r = await run(
    'redis-benchmark',
    ['-h', '127.0.0.1', '-p', String(port), '--user', 'bench', '-a', token, '-t', 'set,get,lpush,lpop', '-n', '4000', '-c', '10', '-P', '16', '-q'],
    { timeoutMs: 60_000 },
  );
  t.equal(r.code, 0, r.stderr);
  t.match(r.stdout, /GET: [\d.]+ requests per second/);
  t.notMatch(r.stdout + r.stderr, /error/i);
});

t.test('ioredis: data types, pipelines, WATCH conflicts, blocking pops, pub/sub, binary, 64 MiB', async (t) => {
  const opts = { host: '127.0.0.1', port, password: token, lazyConnect: true, maxRetriesPerRequest: 0 };
  const a = new Redis(opts);
  const b = new Redis({ ...opts, username: 'second' });
  await a.connect();
  await b.connect();
  t.teardown(() => {
    a.disconnect();
    b.disconnect();
  });
  t.equal(await a.set('s', 'v'), 'OK');
  t.equal(await a.get('s'), 'v');
  await a.hset('hash', { x: '1', y: '2' });
  t.same(await a.hgetall('hash'), { x: '1', y: '2' });
  await a.del('list');
  await a.rpush('list', 'a', 'b', 'c');
  t.same(await a.lrange('list', 0, -1), ['a', 'b', 'c']);
  const id = await a.xadd('stream', '*', 'k', 'v');
  const entries = await a.xrange('stream', '-', '+');
  t.equal(entries.at(-1)![0], id);

  const p = await a.pipeline().set('p1', '1').incr('p1').get('p1').select(3).get('p1').exec();
  t.same(p!.map(([e, v]) => (e ? e.message : v)), ['OK', 2, '2', 'ERR sluice: this target is bound to db 0', '2']);

  await a.set('w', '0');
  await a.watch('w');
  await b.set('w', 'changed');
  const tx = await a.multi().set('w', 'mine').exec();
  t.equal(tx, null, 'WATCH conflict aborts EXEC');
  t.equal(await a.get('w'), 'changed');
  const ok = await a.multi().incr('tx').incr('tx').exec();
  t.same(ok!.map(([, v]) => v), [1, 2]);

  await a.del('queue');
  const popped = a.blpop('queue', 5);
  await new Promise((r) => setTimeout(r, 100));
  await b.rpush('queue', 'job');
  t.same(await popped, ['queue', 'job'], 'a blocking pop released by another client');

  const sub = new Redis(opts);
  await sub.connect();
  const got = new Promise<string>((resolve) => sub.on('message', (_ch, m: string) => resolve(m)));
  await sub.subscribe('news');
  await a.publish('news', 'extra');
  t.equal(await got, 'extra', 'pub/sub over RESP2');
  await sub.unsubscribe('news');
  t.equal(await sub.ping(), 'PONG', 'the connection works after unsubscribing');
  sub.disconnect();

  const binKey = Buffer.from([0, 1, 2, 0xff, 0x0d, 0x0a, 0x24]);
  const binVal = Buffer.from([0x2a, 0x0d, 0x0a, 0, 0xfe, 0x80]);
  await a.set(binKey, binVal);
  t.same(await a.getBuffer(binKey), binVal, 'binary-safe keys and values');

  const big = Buffer.alloc(64 * 1024 * 1024 - 1024, 0x61);
  big.write('start', 0);
  big.write('end', big.length - 3);
  t.equal(await a.set('big', big), 'OK');
  const back = await b.getBuffer('big');
  t.equal(back!.length, big.length);
  t.ok(back!.equals(big), '64 MiB value round trip');
  await a.del('big');
});

t.test('node-redis: RESP3 with HELLO 3 AUTH, pub/sub pushes, transactions', async (t) => {
  const url = `redis://node-label:${encodeURIComponent(token)}@127.0.0.1:${port}`;
  const c = createClient({ url, RESP: 3 });
  c.on('error', () => {});
  await c.connect();
  t.teardown(() => c.destroy());
  await c.set('nr', 'v');
  t.equal(await c.get('nr'), 'v');
  await c.hSet('nrh', { a: '1' });
  t.same({ ...(await c.hGetAll('nrh')) }, { a: '1' });
  const r = await c.multi().incr('nrc').incr('nrc').exec();
  t.equal(r.length, 2);

  const sub = c.duplicate();
  sub.on('error', () => {});
  await sub.connect();
  const got = new Promise<string>((resolve) => void sub.subscribe('nchan', (m) => resolve(m)));
  await new Promise((r) => setTimeout(r, 100));
  await c.publish('nchan', 'pushed');
  t.equal(await got, 'pushed', 'RESP3 push messages');
  t.equal(await sub.get('nr'), 'v', 'commands on a RESP3 connection that is subscribed');
  await sub.unsubscribe('nchan');
  sub.destroy();

  const c2 = createClient({ url });
  c2.on('error', () => {});
  await c2.connect();
  t.equal(await c2.get('nr'), 'v', 'RESP2 client with AUTH <label> <token>');
  c2.destroy();
});

t.test('upstream TLS: require and verify-full reach the TLS port; a name mismatch is refused', async (t) => {
  for (const name of ['up-require', 'up-verify']) {
    const r = await cli(['INFO', 'server'], '', gw.port(name));
    t.match(r.stdout, /redis_version/, `${name}: ${r.stderr}`);
  }
  const r = await cli(['PING'], '', gw.port('up-verify-wrong-name'));
  t.match(r.stdout + r.stderr, /could not connect to the upstream \(correlation id/);
  t.ok(gw.logs.some((l) => l.includes('SLUICE_UPSTREAM_TLS_FAILED')), 'the log says why');
});

t.test('fuzzed garbage closes that connection only', async (t) => {
  const steady = new Redis({ host: '127.0.0.1', port, password: token, maxRetriesPerRequest: 0 });
  t.teardown(() => steady.disconnect());
  let seed = 7;
  const rand = (): number => ((seed = (seed * 1103515245 + 12345) & 0x7fffffff) / 0x7fffffff);
  const attempts: Promise<boolean>[] = [];
  for (let i = 0; i < 30; i++) {
    const bytes = Buffer.alloc(1 + Math.floor(rand() * 300));
    for (let j = 0; j < bytes.length; j++) bytes[j] = Math.floor(rand() * 256);
    if (i % 3 === 0) bytes[0] = 0x2a; // starts like a command
    const authed = i % 2 === 0;
    attempts.push(
      new Promise((resolve) => {
        const s = connect(port, '127.0.0.1', () => {
          if (authed) s.write(`*2\r\n$4\r\nAUTH\r\n$${token.length}\r\n${token}\r\n`);
          s.write(bytes);
        });
        s.on('data', () => {});
        s.on('error', () => {});
        s.on('close', () => resolve(true));
        setTimeout(() => {
          s.destroy();
          resolve(false);
        }, 12_000).unref();
      }),
    );
    t.equal(await steady.ping(), 'PONG');
  }
  const closed = await Promise.all(attempts);
  t.ok(closed.filter(Boolean).length >= 20, `most garbage connections were closed by sluice (${closed.filter(Boolean).length}/30)`);
  t.equal(await steady.incr('still-alive'), 1);
});

t.test('no token or password in any log line', async (t) => {
  for (const line of gw.logs) {
    if (line.includes(token) || line.includes(redis.aclPassword) || line.includes(redis.password)) t.fail(`secret in log: ${line.slice(0, 200)}`);
  }
  t.pass('checked');
});

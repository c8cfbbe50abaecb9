/**
 * A session's recording file is created off the event loop, on libuv's
 * thread pool (files.ts), while the session's upstream login runs
 * (SessionRecording.admitAlongside). What must hold:
 *
 * - the client is admitted only once its file exists: with file creates
 *   held (as a disk that stops answering would hold them), the upstream
 *   login runs but the client gets no AuthenticationOk; released, the
 *   session goes on and is recorded whole;
 * - the create does not wait for the recording thread: with that thread
 *   held, a new session is admitted and runs, and its records are written
 *   once the thread goes on;
 * - fail closed: when the file cannot be created, the client gets the
 *   native refusal and the upstream login made alongside is closed unused
 *   (the relay, which carries the client's statements, never started);
 * - a session whose file is not created within the pre-auth timeout is
 *   refused, and its upstream login closed at once, not when the thread
 *   goes on;
 * - while the recorder is failing, a new session is refused before any
 *   upstream login, so a client retrying in a loop costs the upstream
 *   nothing; once the file system is usable again, sessions go through.
 *
 * Upstream logins are counted by a TCP relay between Sluice and each server.
 */
import t from 'tap';
import { connect, createServer, type Socket } from 'node:net';
import { renameSync, rmSync, writeFileSync, existsSync, mkdirSync } from 'node:fs';
import { join } from 'node:path';
import pg from 'pg';
import { startPostgres } from '../helpers/postgres.js';
import { startRedis } from '../helpers/redis.js';
import { startGateway } from '../helpers/gateway.js';
import { datePath } from '../../src/recording/format.js';
import { holdRecordingCreates } from '../../src/recording/files.js';
import { loadRecordingPublicKeys } from '../../src/recording/keys.js';
import { readRecording } from '../../src/recording/reader.js';
import { verifyRecording } from '../../src/recording/verify.js';
import { sealThread } from '../../src/recording/seal-thread.js';
import type { SessionStore } from '../../src/store/types.js';

interface CountingRelay {
  port: number;
  /** Connections made to the upstream through the relay so far. */
  opened: number;
  /** Of those, still open. */
  open: number;
  close(): Promise<void>;
}

async function countingRelay(upstreamPort: number): Promise<CountingRelay> {
  const sockets = new Set<Socket>();
  const server = createServer((client) => {
    const upstream = connect(upstreamPort, '127.0.0.1');
    relay.opened++;
    relay.open++;
    sockets.add(client).add(upstream);
    let closed = false;
    const done = (): void => {
      if (!closed) relay.open--;
      closed = true;
      client.destroy();
      upstream.destroy();
      sockets.delete(client);
      sockets.delete(upstream);
    };
    for (const s of [client, upstream]) {
      s.on('error', done);
      s.on('close', done);
    }
    client.pipe(upstream);
    upstream.pipe(client);
  });
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
  const relay: CountingRelay = {
    port: (server.address() as { port: number }).port,
    opened: 0,
    open: 0,
    close: async () => {
      for (const s of sockets) s.destroy();
      await new Promise((resolve) => server.close(resolve));
    },
  };
  return relay;
}

const postgres = await startPostgres();
t.teardown(() => postgres.stop());
const redis = await startRedis();
t.teardown(() => redis.stop());
const pgRelay = await countingRelay(postgres.port);
t.teardown(() => pgRelay.close());
const redisRelay = await countingRelay(redis.port);
t.teardown(() => redisRelay.close());

const gw = await startGateway(
  `identity: { dev_issuer: true }
targets:
  app-db:
    protocol: postgres
    listen: 127.0.0.1:0
    allow_insecure_loopback: true
    upstream: { host: 127.0.0.1, port: ${pgRelay.port}, database: ${postgres.database}, user: ${postgres.user}, password_env: TEST_PG_PASSWORD, tls: disable }
  slow-db:
    protocol: postgres
    listen: 127.0.0.1:0
    allow_insecure_loopback: true
    limits: { pre_auth_timeout: 1s }
    upstream: { host: 127.0.0.1, port: ${pgRelay.port}, database: ${postgres.database}, user: ${postgres.user}, password_env: TEST_PG_PASSWORD, tls: disable }
  cache:
    protocol: redis
    listen: 127.0.0.1:0
    allow_insecure_loopback: true
    upstream: { host: 127.0.0.1, port: ${redisRelay.port}, user: app, password_env: REDIS_PW, db: 0, tls: disable }
policies:
  - { name: ci, subjects: { groups: [ci] }, targets: [app-db, slow-db, cache] }
`,
  { TEST_PG_PASSWORD: postgres.password, REDIS_PW: redis.aclPassword },
);
t.teardown(() => gw.close());

const sleep = (ms: number): Promise<void> => new Promise((r) => setTimeout(r, ms));

async function until(what: string, ready: () => boolean | Promise<boolean>, timeoutMs = 10_000): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  while (!(await ready())) {
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}`);
    await sleep(20);
  }
}

async function pgClient(subject: string): Promise<pg.Client> {
  return new pg.Client({ host: '127.0.0.1', port: gw.port('app-db'), user: subject, database: 'app', password: await gw.token(subject, ['ci']) });
}

/** A PostgreSQL login through the gateway that must be refused: its error. */
async function pgRefused(subject: string): Promise<Error & { code?: string }> {
  const client = await pgClient(subject);
  client.on('error', () => undefined);
  try {
    await client.connect();
  } catch (err) {
    return err as Error & { code?: string };
  } finally {
    await client.end().catch(() => undefined);
  }
  throw new Error(`${subject} was admitted`);
}

/** AUTH with a token over a raw socket; the first reply line. */
async function redisLogin(subject: string): Promise<string> {
  const token = await gw.token(subject, ['ci']);
  const socket = connect(gw.port('cache'), '127.0.0.1');
  let received = '';
  socket.on('data', (c: Buffer) => (received += c.toString('latin1')));
  socket.on('error', () => undefined);
  socket.write(`*2\r\n$4\r\nAUTH\r\n$${Buffer.byteLength(token)}\r\n${token}\r\n`);
  await until(`${subject}'s AUTH reply`, () => received.includes('\r\n'));
  socket.destroy();
  return received.split('\r\n')[0]!;
}

const store = gw.gateway.services.store as unknown as SessionStore;

/**
 * Makes the recordings directories of today and tomorrow (a test may run
 * across midnight, UTC) unusable: a file where each directory goes, so a
 * create fails (ENOTDIR, or EEXIST from making the directory), as on a
 * disk that refuses it, for the duration of `fn`. The recordings root
 * stays writable, so the recorder's health probe succeeds and only the
 * create fails.
 */
async function withUnusableDayDir(fn: () => Promise<void>): Promise<void> {
  const days = [Date.now(), Date.now() + 86_400_000].map((ms) => join(gw.stateDir, 'recordings', ...datePath(new Date(ms).toISOString())));
  for (const day of days) {
    const aside = `${day}.aside`;
    if (existsSync(day)) renameSync(day, aside);
    else mkdirSync(aside, { recursive: true });
    writeFileSync(day, 'not a directory');
  }
  try {
    await fn();
  } finally {
    for (const day of days) {
      rmSync(day, { force: true });
      renameSync(`${day}.aside`, day);
    }
  }
}

t.test('a new session waits for its file, while its upstream login runs alongside', async (t) => {
  const client = await pgClient('held');
  const before = pgRelay.opened;
  const release = holdRecordingCreates();
  let released = false;
  t.teardown(() => {
    if (!released) release();
  });
  let admitted = false;
  const connecting = client.connect().then(() => (admitted = true));
  await until('the upstream login to start', () => pgRelay.opened > before);
  await sleep(300);
  t.equal(admitted, false, 'no AuthenticationOk while the file is not created');

  released = true;
  release();
  await connecting;
  t.equal((await client.query('SELECT 41 + 1 AS answer')).rows[0].answer, 42, 'the session goes on once it is');
  await client.end();
  t.equal(pgRelay.opened, before + 1, 'one upstream login, made while the file was being created');
  await until('the recording to complete', () => store.listSessions({ subject: 'held' })[0]?.complete === true);
});

t.test('a new session does not wait for the recording thread: held, its records wait instead', async (t) => {
  const release = sealThread().stall();
  let released = false;
  t.teardown(() => {
    if (!released) release();
  });
  const client = await pgClient('thread-held');
  await client.connect();
  t.equal((await client.query('SELECT 40 + 2 AS answer')).rows[0].answer, 42, 'admitted, and its statements run');
  await client.end();
  await sleep(300);
  t.notOk(store.listSessions({ subject: 'thread-held' })[0]?.complete, 'its recording is not finished while the thread is held');

  released = true;
  release();
  await until('the recording to complete', () => store.listSessions({ subject: 'thread-held' })[0]?.complete === true);
  const row = store.listSessions({ subject: 'thread-held' })[0]!;
  const v = await verifyRecording(row.recordingPath!, await loadRecordingPublicKeys(gw.stateDir));
  t.ok(v.ok && v.complete, 'and it verifies once the thread went on');
  const sent = (await readRecording(row.recordingPath!).bytesOf('client')).toString('latin1');
  t.match(sent, /SELECT 40 \+ 2 AS answer/, 'with the statement in it');
});

t.test('held past the pre-auth timeout: refused, and the upstream login made alongside is closed', async (t) => {
  const client = new pg.Client({ host: '127.0.0.1', port: gw.port('slow-db'), user: 'held-long', database: 'app', password: await gw.token('held-long', ['ci']) });
  client.on('error', () => undefined);
  const release = holdRecordingCreates();
  let released = false;
  t.teardown(() => {
    if (!released) release();
  });
  const before = pgRelay.opened;
  const err = await client.connect().then(
    () => undefined,
    (e: Error & { code?: string }) => e,
  );
  t.equal(err?.code, '57014', 'the pre-auth timeout (1 s) refuses the session');
  t.match(err?.message, /canceling authentication due to timeout/);
  t.equal(pgRelay.opened, before + 1, 'its upstream login ran alongside');
  // Closed with the session, not when the thread goes on: a hung disk must not hold upstream connections.
  await until('the upstream login to be closed while the create is still held', () => pgRelay.open === 0);
  released = true;
  release();
  // Its file was created once the create went on: the recording holds the refusal the client got.
  await until('the refused session\'s recording to complete', () => store.listSessions({ subject: 'held-long' })[0]?.complete === true);
  t.match(store.listSessions({ subject: 'held-long' })[0]?.closeReason, /SLUICE_PRE_AUTH_TIMEOUT/);
});

t.test('redis: the file cannot be created: refused natively, and the upstream login made alongside is closed', async (t) => {
  await withUnusableDayDir(async () => {
    const before = redisRelay.opened;
    const reply = await redisLogin('no-file-redis');
    t.equal(reply, '-ERR sluice: session recording is unavailable; new sessions are refused until it recovers');
    t.equal(redisRelay.opened, before + 1, 'the upstream login ran alongside the create');
    await until('the discarded upstream connection to close', () => redisRelay.open === 0);
    t.match(gw.gateway.health().checks.recording, /^failing, new sessions refused \((ENOTDIR|EEXIST)\)$/, '/healthz says why, by its errno code alone');

    // Failing now: the next session is refused before any upstream login.
    const pgBefore = pgRelay.opened;
    const err = await pgRefused('while-failing');
    t.equal(err.code, '57P03', 'cannot_connect_now');
    t.match(err.message, /session recording is unavailable/);
    t.equal(pgRelay.opened, pgBefore, 'no upstream login for a session refused while the recorder fails');
  });

  // The directory is usable again: sessions go through once the recorder's probe (every 3 s) passes.
  await until(
    'a session to be admitted again',
    async () => {
      const client = await pgClient('recovered');
      client.on('error', () => undefined);
      try {
        await client.connect();
        await client.end();
        return true;
      } catch {
        return false;
      }
    },
    15_000,
  );
  t.equal(gw.gateway.health().checks.recording, 'ok', 'healthy again');
});

t.test('postgres: the file cannot be created: 57P03, and the upstream login made alongside is closed', async (t) => {
  t.equal(gw.gateway.health().checks.recording, 'ok', 'the recorder is healthy when the session starts');
  await withUnusableDayDir(async () => {
    const before = pgRelay.opened;
    const err = await pgRefused('no-file-pg');
    t.equal(err.code, '57P03', 'cannot_connect_now');
    t.equal(err.message, 'sluice: session recording is unavailable; new sessions are refused until it recovers');
    t.equal(pgRelay.opened, before + 1, 'the upstream login ran alongside the create');
    await until('the discarded upstream connection to close', () => pgRelay.open === 0);
  });
  t.equal(store.listSessions({ subject: 'no-file-pg' }).length, 0, 'never admitted: no index row, no recording');
});

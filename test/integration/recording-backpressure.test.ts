/**
 * A recording that falls behind its session holds the session back: once
 * recording.max_backlog bytes are recorded and not yet written, the relay
 * stops reading from both sides until the seal thread has caught up. The
 * seal thread is stalled here on purpose (as a disk that stops answering
 * would stall it), so the bound is what stops the session, not timing.
 * Nothing is lost: once the thread is released, every command and row
 * arrives and the recording holds every byte.
 */
import t, { type Test } from 'tap';
import { connect } from 'node:net';
import pg from 'pg';
import { startRedis } from '../helpers/redis.js';
import { startPostgres } from '../helpers/postgres.js';
import { pgTargetYaml, startGateway } from '../helpers/gateway.js';
import { readRecording } from '../../src/recording/reader.js';
import { sealThread } from '../../src/recording/seal-thread.js';
import type { SessionStore } from '../../src/store/types.js';

const redis = await startRedis();
t.teardown(() => redis.stop());
const postgres = await startPostgres();
t.teardown(() => postgres.stop());
const gw = await startGateway(
  `identity: { dev_issuer: true }
recording: { max_backlog: 1MiB }
targets:
  cache:
    protocol: redis
    listen: 127.0.0.1:0
    allow_insecure_loopback: true
    upstream: { host: 127.0.0.1, port: ${redis.port}, user: app, password_env: REDIS_PW, db: 0, tls: disable }${pgTargetYaml('app-db', postgres)}
policies:
  - { name: ci, subjects: { groups: [ci] }, targets: [cache, app-db] }
`,
  { REDIS_PW: redis.aclPassword, TEST_PG_PASSWORD: postgres.password },
);
t.teardown(() => gw.close());

const sleep = (ms: number): Promise<void> => new Promise((r) => setTimeout(r, ms));

/** sluice_recording_backpressure_total for a target, from the gateway's /metrics text. */
function backpressure(target: string): number {
  const line = gw.gateway.services.metrics
    .render()
    .split('\n')
    .find((l) => l.startsWith(`sluice_recording_backpressure_total{target="${target}"}`));
  return line === undefined ? 0 : Number(line.split(' ').pop());
}

async function until(what: string, ready: () => boolean | Promise<boolean>, timeoutMs = 10_000): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  while (!(await ready())) {
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}`);
    await sleep(20);
  }
}

/** The completed recording of `subject`'s session. */
async function recordingOf(t: Test, subject: string): Promise<string> {
  const store = gw.gateway.services.store as unknown as SessionStore;
  await until(`${subject}'s recording to complete`, () => store.listSessions({ subject })[0]?.complete === true);
  const path = store.listSessions({ subject })[0]!.recordingPath!;
  t.ok(path, 'the session was recorded');
  return path;
}

function resp(...args: Array<string | Buffer>): Buffer {
  const parts: Buffer[] = [Buffer.from(`*${args.length}\r\n`)];
  for (const a of args) {
    const b = Buffer.isBuffer(a) ? a : Buffer.from(a);
    parts.push(Buffer.from(`$${b.length}\r\n`), b, Buffer.from('\r\n'));
  }
  return Buffer.concat(parts);
}

t.test('redis: a stalled recorder stops the session after max_backlog; released, every command goes through', async (t) => {
  const token = await gw.token('backlog-redis', ['ci']);
  const socket = connect(gw.port('cache'), '127.0.0.1');
  let received = '';
  socket.on('data', (c: Buffer) => (received += c.toString('latin1')));
  await new Promise((r) => socket.once('connect', r));
  const login = resp('AUTH', token);
  socket.write(login);
  await until('the login reply', () => received.includes('+OK'));
  received = '';

  const release = sealThread().stall();
  let released = false;
  t.teardown(() => {
    if (!released) release();
  });
  // 96 SETs of 64 KiB values: 6 MiB, six times the bound.
  const value = Buffer.alloc(64 * 1024, 'v');
  const commands: Buffer[] = [];
  for (let i = 0; i < 96; i++) commands.push(resp('SET', `backlog:${i}`, value));
  const sent = Buffer.concat(commands);
  socket.write(sent);

  await until('the session to stop reading', () => backpressure('cache') >= 1);
  // Well past a flush interval: nothing moves while the recorder is stalled.
  await sleep(400);
  const stalledKeys = Number((await redis.cli(['DBSIZE'])).trim());
  const stalledReplies = received.split('+OK').length - 1;
  t.ok(stalledKeys < 48, `the upstream got ${stalledKeys} of 96 SETs while the recording was stalled`);
  t.ok(stalledReplies < 48, `the client got ${stalledReplies} of 96 replies meanwhile`);
  t.ok(
    gw.logs.some((l) => l.includes('session recording fell behind')),
    'the session logged that it waits for its recording',
  );

  released = true;
  release();
  await until('every reply', () => received.split('+OK').length - 1 === 96);
  t.equal(Number((await redis.cli(['DBSIZE'])).trim()), 96, 'every SET reached the upstream');
  t.equal((await redis.cli(['STRLEN', 'backlog:95'])).trim(), String(value.length), 'the last value arrived whole');
  socket.end();
  await new Promise((r) => socket.once('close', r));

  const clientBytes = await readRecording(await recordingOf(t, 'backlog-redis')).bytesOf('client');
  t.ok(clientBytes.subarray(clientBytes.length - sent.length).equals(sent), 'the recording holds every byte the client sent after login');
  t.equal(received.length, 96 * '+OK\r\n'.length, 'the client got exactly the 96 replies');
});

t.test('postgres: a stalled recorder stops a large result after max_backlog; released, every row arrives', async (t) => {
  const token = await gw.token('backlog-pg', ['ci']);
  const client = new pg.Client({ host: '127.0.0.1', port: gw.port('app-db'), user: 'backlog-pg', database: 'app', password: token });
  await client.connect();
  t.teardown(() => client.end().catch(() => undefined));
  const before = backpressure('app-db');

  const release = sealThread().stall();
  let released = false;
  t.teardown(() => {
    if (!released) release();
  });
  // About 8 MiB of DataRows.
  let done = false;
  const query = client.query("SELECT i, repeat('x', 1000) AS filler FROM generate_series(1, 8000) AS i").then((r) => {
    done = true;
    return r;
  });

  await until('the session to stop reading', () => backpressure('app-db') > before);
  await sleep(400);
  t.equal(done, false, 'the result is held back while the recording is stalled');

  released = true;
  release();
  const result = await query;
  t.equal(result.rows.length, 8000, 'every row arrived');
  t.equal(result.rows[7999].i, 8000);
  t.equal(result.rows[7999].filler.length, 1000);
  await client.end();

  const serverBytes = await readRecording(await recordingOf(t, 'backlog-pg')).bytesOf('server');
  t.ok(serverBytes.length > 8000 * 1000, `the recording holds the whole result (${serverBytes.length} bytes to the client)`);
});

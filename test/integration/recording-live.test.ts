/**
 * Live sessions are recorded byte for byte at the client-facing edge.
 *
 * A tapping relay (a TCP proxy in this test, between each client and
 * Sluice) keeps exactly the bytes each way; the session's recording must
 * hold the same two streams, except the credential message, which must be
 * the exact scrubbed form. For TLS the proxy would see ciphertext, so the
 * TLS case uses a client written here that speaks the protocol over Node's
 * TLS and keeps the cleartext it sent and received: the same comparison,
 * one layer up, with nothing guessed.
 */
import t, { type Test } from 'tap';
import { connect, createServer, type Server, type Socket } from 'node:net';
import { connect as tlsConnect } from 'node:tls';
import { spawn, type ChildProcess } from 'node:child_process';
import { mkdtempSync, readFileSync, statSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import pg from 'pg';
import { Redis } from 'ioredis';
import { from as copyFrom, to as copyTo } from 'pg-copy-streams';
import { startPostgres } from '../helpers/postgres.js';
import { startRedis } from '../helpers/redis.js';
import { startGateway, pgTargetYaml, removeDir } from '../helpers/gateway.js';
import { run } from '../helpers/process.js';
import { RawPg, SSL_REQUEST, errorFields, rawLogin, startupPacket, typed } from '../helpers/raw-pg.js';
import { recordingFiles, recordingFor } from '../helpers/recordings.js';
import { Raw } from '../helpers/raw-redis.js';
import { readRecording } from '../../src/recording/reader.js';
import { verifyRecording } from '../../src/recording/verify.js';
import { loadRecordingPublicKeys } from '../../src/recording/keys.js';
import { encodeRespCommand, scrubPgPasswordMessage, scrubRedisAuth } from '../../src/recording/scrub.js';
import { openSqliteStore } from '../../src/store/sqlite.js';

const pgServer = await startPostgres();
t.teardown(() => pgServer.stop());
const redis = await startRedis();
t.teardown(() => redis.stop());

const gw = await startGateway(
  `identity: { dev_issuer: true }
recording: { flush_interval: 50ms, retention: 30d }
targets:${pgTargetYaml('app-db', pgServer)}
  cache:
    protocol: redis
    listen: 127.0.0.1:0
    allow_insecure_loopback: true
    upstream: { host: 127.0.0.1, port: ${redis.port}, user: app, password_env: REDIS_APP_PASSWORD }
policies:
  - name: ci-jobs
    subjects: { groups: [ci] }
    targets: [app-db, cache]
`,
  { TEST_PG_PASSWORD: pgServer.password, REDIS_APP_PASSWORD: redis.aclPassword },
);
let gwClosed = false;
t.teardown(async () => {
  if (!gwClosed) await gw.close();
});

const token = await gw.token('ci-job-7', ['ci']);
const secrets = [token, pgServer.password, redis.password, redis.aclPassword];

// --- the tapping relay ---------------------------------------------------------

interface Tapped {
  /** Local port of the relay's socket to Sluice: Sluice records it as the client address. */
  port: number;
  fromClient: Buffer[];
  toClient: Buffer[];
  closed: Promise<void>;
}

async function tappingRelay(target: number): Promise<{ server: Server; port: number; conns: Tapped[] }> {
  const conns: Tapped[] = [];
  const server = createServer((client: Socket) => {
    const upstream = connect(target, '127.0.0.1');
    let done!: () => void;
    const tap: Tapped = { port: 0, fromClient: [], toClient: [], closed: new Promise((r) => (done = r)) };
    upstream.on('connect', () => {
      tap.port = upstream.localPort!;
      conns.push(tap);
    });
    client.on('data', (c: Buffer) => {
      tap.fromClient.push(Buffer.from(c));
      upstream.write(c);
    });
    upstream.on('data', (c: Buffer) => {
      tap.toClient.push(Buffer.from(c));
      client.write(c);
    });
    client.on('end', () => upstream.end());
    upstream.on('end', () => client.end());
    let closes = 0;
    const closed = (): void => {
      if (++closes === 2) done();
    };
    client.on('close', closed);
    upstream.on('close', closed);
    client.on('error', () => upstream.destroy());
    upstream.on('error', () => client.destroy());
  });
  await new Promise<void>((r) => server.listen(0, '127.0.0.1', r));
  t.teardown(() => new Promise<void>((r) => server.close(() => r())));
  return { server, port: (server.address() as { port: number }).port, conns };
}

/** The client stream as the recording must hold it: the PasswordMessage carrying the token scrubbed. */
function pgExpected(fromClient: Buffer): Buffer {
  const at = fromClient.indexOf(Buffer.from(token, 'latin1'));
  if (at < 5 || fromClient[at - 5] !== 0x70) throw new Error('no PasswordMessage with the token in the client stream');
  const end = at + token.length + 1;
  return Buffer.concat([fromClient.subarray(0, at - 5), scrubPgPasswordMessage(fromClient.subarray(at - 5, end)), fromClient.subarray(end)]);
}

/** Same for Redis: the RESP array carrying the token (AUTH / HELLO ... AUTH), re-encoded scrubbed. */
function redisExpected(fromClient: Buffer): Buffer {
  const at = fromClient.indexOf(Buffer.from(token, 'latin1'));
  if (at < 0) throw new Error('no token in the client stream');
  const start = fromClient.lastIndexOf('*', at);
  const args = parseCommand(fromClient.subarray(start));
  return Buffer.concat([fromClient.subarray(0, start), scrubRedisAuth(args), fromClient.subarray(start + encodeRespCommand(args).length)]);
}

async function checkTapped(t: Test, conns: Tapped[], expected: (b: Buffer) => Buffer, what: string): Promise<void> {
  t.ok(conns.length > 0, `${what}: connections were tapped`);
  for (const c of conns) {
    await c.closed;
    const rec = await recordingFor(gw.stateDir, c.port);
    const fromClient = Buffer.concat(c.fromClient);
    const toClient = Buffer.concat(c.toClient);
    t.ok(rec.client.equals(expected(fromClient)), `${what}: client -> gateway bytes equal the tap's (${fromClient.length} bytes), token scrubbed`);
    t.ok(rec.server.equals(toClient), `${what}: gateway -> client bytes equal what the client received (${toClient.length} bytes)`);
    t.notOk(rec.client.includes(Buffer.from(token)), `${what}: no token in the recording`);
  }
}

const pgEnv = (port: number) => ({
  PGHOST: '127.0.0.1',
  PGPORT: String(port),
  PGUSER: 'ci-job-7',
  PGDATABASE: 'app',
  PGPASSWORD: token,
  PGSSLMODE: 'disable',
  PGCONNECT_TIMEOUT: '10',
});

t.test('psql', async (t) => {
  const relay = await tappingRelay(gw.port('app-db'));
  const r = await run('psql', ['-X', '-At', '-c', "select 'hello', 42", '-c', 'select generate_series(1, 500)'], { env: pgEnv(relay.port) });
  t.equal(r.code, 0, r.stderr);
  await checkTapped(t, relay.conns, pgExpected, 'psql');
  // psql sent Terminate and closed; the server's close follows from it and must not take the credit.
  const rec = await recordingFor(gw.stateDir, relay.conns[0]!.port);
  t.equal(rec.closeReason, 'client ended the connection', 'the footer names who ended the session');
});

t.test('pgbench', async (t) => {
  const relay = await tappingRelay(gw.port('app-db'));
  const dir = mkdtempSync(join(tmpdir(), 'sluice-pgbench-'));
  t.teardown(() => removeDir(dir));
  writeFileSync(join(dir, 'q.sql'), 'select 1;\nselect now();\n');
  const r = await run('pgbench', ['-n', '-c', '1', '-t', '5', '-f', join(dir, 'q.sql')], { env: pgEnv(relay.port) });
  t.equal(r.code, 0, r.stderr);
  await checkTapped(t, relay.conns, pgExpected, 'pgbench');
});

t.test('node-postgres: extended protocol and COPY', async (t) => {
  const relay = await tappingRelay(gw.port('app-db'));
  const client = new pg.Client({ host: '127.0.0.1', port: relay.port, user: 'ci-job-7', database: 'app', password: token });
  await client.connect();
  await client.query('create temp table rec_copy(a int, b text)');
  t.same((await client.query('select $1::int + 1 as n, $2::text as s', [41, 'x'])).rows, [{ n: 42, s: 'x' }]);
  await new Promise<void>((resolve, reject) => {
    const s = client.query(copyFrom('copy rec_copy from stdin'));
    s.on('finish', resolve);
    s.on('error', reject);
    s.end('1\tone\n2\ttwo\n');
  });
  const out: Buffer[] = [];
  await new Promise<void>((resolve, reject) => {
    const s = client.query(copyTo('copy rec_copy to stdout'));
    s.on('data', (c: Buffer) => out.push(c));
    s.on('end', resolve);
    s.on('error', reject);
  });
  t.equal(Buffer.concat(out).toString(), '1\tone\n2\ttwo\n');
  await client.end();
  await checkTapped(t, relay.conns, pgExpected, 'node-postgres');
});

t.test('TLS: the recording holds the cleartext the client sent and received', async (t) => {
  const sent: Buffer[] = [];
  const received: Buffer[] = [];
  const plain = connect(gw.port('app-db'), '127.0.0.1');
  await new Promise<void>((r) => plain.once('connect', () => r()));
  const clientPort = plain.localPort!;
  sent.push(SSL_REQUEST);
  plain.write(SSL_REQUEST);
  const answer = await new Promise<Buffer>((r) => plain.once('data', (c: Buffer) => r(Buffer.from(c))));
  received.push(answer);
  t.equal(answer.toString('latin1'), 'S');
  const tls = tlsConnect({ socket: plain, rejectUnauthorized: false });
  await new Promise<void>((r) => tls.once('secureConnect', () => r()));
  let buf = Buffer.alloc(0);
  let wake: (() => void) | undefined;
  tls.on('data', (c: Buffer) => {
    received.push(Buffer.from(c));
    buf = Buffer.concat([buf, c]);
    wake?.();
  });
  const closed = new Promise<void>((r) => tls.once('close', () => r()));
  const send = (b: Buffer): void => {
    sent.push(b);
    tls.write(b);
  };
  /** Waits for a message of `type` and consumes everything up to and including it. */
  const until = async (type: string): Promise<void> => {
    for (;;) {
      let pos = 0;
      while (pos + 5 <= buf.length && pos + 1 + buf.readInt32BE(pos + 1) <= buf.length) {
        const end = pos + 1 + buf.readInt32BE(pos + 1);
        if (String.fromCharCode(buf[pos]!) === type) {
          buf = buf.subarray(end);
          return;
        }
        pos = end;
      }
      await new Promise<void>((r) => (wake = r));
    }
  };
  send(startupPacket({ user: 'ci-job-7', database: 'app' }));
  await until('R');
  send(typed('p', Buffer.concat([Buffer.from(token), Buffer.from([0])])));
  await until('Z');
  send(typed('Q', "select 'over tls', repeat('y', 20000)\0"));
  await until('Z');
  send(typed('X', ''));
  await closed;
  const rec = await recordingFor(gw.stateDir, clientPort);
  t.ok(rec.client.equals(pgExpected(Buffer.concat(sent))), 'client -> gateway cleartext equal, token scrubbed');
  t.ok(rec.server.equals(Buffer.concat(received)), "gateway -> client: 'S', then the TLS cleartext, byte for byte");
});

/** Client ports of the sessions refused for a `p` message pipelined behind their token (not verified: no subject). */
const pipelinedPorts = new Set<string>();

t.test('PostgreSQL: a PasswordMessage after the token is refused, and its bytes reach neither the upstream nor the recording', async (t) => {
  /** A second `p` message, its body a stand-in for a credential. */
  const second = (secret: string): Buffer => typed('p', `${secret}\0`);
  /** What Sluice answers: its own 08P01, not PostgreSQL's "invalid frontend message type 112" (it never saw the message). */
  const refused = async (t: Test, raw: RawPg): Promise<void> => {
    const e = await raw.readUntil('E');
    t.ok(e, 'an ErrorResponse');
    const f = errorFields(e!.body);
    t.equal(f.C, '08P01');
    t.match(f.M, /^sluice: .*PasswordMessage after the one carrying the token \(message type 'p'\) is not allowed here/);
    await raw.waitClosed();
  };

  await t.test('after login, behind a query in the same write', async (t) => {
    const secret = 'second-credential-after-login-4c1d';
    secrets.push(secret);
    const raw = await rawLogin(gw.port('app-db'), token, { user: 'ci-job-7', database: 'app' });
    const port = raw.socket.localPort!;
    const query = typed('Q', 'select 1\0');
    raw.send(Buffer.concat([query, second(secret)]));
    await refused(t, raw);
    const rec = await recordingFor(gw.stateDir, port);
    t.notOk(rec.client.includes(Buffer.from(secret)), 'the secret is not recorded');
    t.ok(rec.client.subarray(rec.client.length - query.length).equals(query), 'the client side ends with the query before it');
    t.match(rec.closeReason ?? '', /protocol violation/);
  });

  await t.test('after login, the header split from its body', async (t) => {
    const secret = 'second-credential-split-9e27';
    secrets.push(secret);
    const raw = await rawLogin(gw.port('app-db'), token, { user: 'ci-job-7', database: 'app' });
    const port = raw.socket.localPort!;
    const message = second(secret);
    raw.send(message.subarray(0, 3));
    await new Promise((r) => setTimeout(r, 150));
    raw.send(message.subarray(3));
    await refused(t, raw);
    const rec = await recordingFor(gw.stateDir, port);
    t.notOk(rec.client.includes(Buffer.from(secret)), 'the secret is not recorded');
    t.ok(rec.client.subarray(rec.client.length - 3).equals(message.subarray(0, 3)), 'the part of the header in the first write is, as received');
  });

  await t.test('pipelined behind the token', async (t) => {
    const secret = 'second-credential-pipelined-77b0';
    secrets.push(secret);
    const raw = await RawPg.connect(gw.port('app-db'));
    const pipelinedPort = raw.socket.localPort!;
    pipelinedPorts.add(`127.0.0.1:${pipelinedPort}`);
    raw.send(startupPacket({ user: 'ci-job-7', database: 'app' }));
    t.equal((await raw.read())?.type, 'R');
    const first = typed('p', `${token}\0`);
    raw.send(Buffer.concat([first, second(secret)]));
    await refused(t, raw);
    // Refused before the token was checked: a recording with no subject, the token scrubbed.
    const rec = await recordingFor(gw.stateDir, pipelinedPort);
    t.ok(rec.client.equals(Buffer.concat([startupPacket({ user: 'ci-job-7', database: 'app' }), scrubPgPasswordMessage(first)])), 'the recording stops after the scrubbed token');
    for (const f of recordingFiles(gw.stateDir)) t.notOk(readFileSync(f).includes(secret), `not in ${f.slice(-30)}`);
  });
  await t.test('pipelined behind the token, its body not whole when the token is read', async (t) => {
    const secret = 'second-credential-partial-3a5f';
    secrets.push(secret);
    const raw = await RawPg.connect(gw.port('app-db'));
    pipelinedPorts.add(`127.0.0.1:${raw.socket.localPort!}`);
    raw.send(startupPacket({ user: 'ci-job-7', database: 'app' }));
    t.equal((await raw.read())?.type, 'R');
    const rest = second(secret);
    // The header and half the secret with the token; the rest never comes.
    raw.send(Buffer.concat([typed('p', `${token}\0`), rest.subarray(0, 5 + 14)]));
    await refused(t, raw);
    for (const f of recordingFiles(gw.stateDir)) t.notOk(readFileSync(f).includes(secret.slice(0, 14)), `not in ${f.slice(-30)}`);
  });
  for (const line of gw.logs) if (line.includes('second-credential')) t.fail(`a secret in a log line: ${line.slice(0, 80)}`);
});

t.test('redis-cli with pipelining', async (t) => {
  const relay = await tappingRelay(gw.port('cache'));
  // --pipe sends the whole input at once; Sluice takes RESP arrays only (no inline commands).
  const resp = (...a: string[]): Buffer => encodeRespCommand(a.map((x) => Buffer.from(x)));
  const input = Buffer.concat(Array.from({ length: 200 }, (_, i) => Buffer.concat([resp('SET', `rec:${i}`, `v${i}`), resp('GET', `rec:${i}`)])));
  const r = await run('redis-cli', ['-p', String(relay.port), '--no-auth-warning', '-a', token, '--pipe'], { input });
  t.equal(r.code, 0, r.stderr);
  t.match(r.stdout, /errors: 0, replies: 400/);
  await checkTapped(t, relay.conns, redisExpected, 'redis-cli --pipe');
});

t.test('ioredis pub/sub', async (t) => {
  const relay = await tappingRelay(gw.port('cache'));
  const sub = new Redis({ port: relay.port, host: '127.0.0.1', password: token, lazyConnect: true, maxRetriesPerRequest: 0, retryStrategy: () => null });
  const pubc = new Redis({ port: relay.port, host: '127.0.0.1', password: token, lazyConnect: true, maxRetriesPerRequest: 0, retryStrategy: () => null });
  await sub.connect();
  await pubc.connect();
  const got = new Promise<string>((r) => sub.on('message', (_ch: string, msg: string) => r(msg)));
  await sub.subscribe('rec-news');
  await pubc.publish('rec-news', 'hello subscribers');
  t.equal(await got, 'hello subscribers');
  await sub.quit();
  await pubc.quit();
  await checkTapped(t, relay.conns, redisExpected, 'ioredis');
});

t.test('Redis: a token in a refused, malformed or split login never reaches the recording', async (t) => {
  const cmd = (...a: string[]): Buffer => encodeRespCommand(a.map((x) => Buffer.from(x)));
  const [, claims, signature] = token.split('.') as [string, string, string];
  const check = async (clientPort: number, sent: Buffer[], what: string): Promise<void> => {
    const rec = await recordingFor(gw.stateDir, clientPort);
    const expected = Buffer.concat(sent.map((c) => (/^\*\d+\r\n\$\d+\r\n(AUTH|HELLO)\r\n/i.test(c.toString('latin1')) ? scrubRedisAuth(parseCommand(c)) : c)));
    t.ok(rec.client.equals(expected), `${what}: the client stream as sent, every AUTH and HELLO scrubbed`);
    for (const part of [token, claims, signature]) {
      t.notOk(rec.client.includes(Buffer.from(part)), `${what}: no part of the token in what the client sent`);
      t.notOk(rec.server.includes(Buffer.from(part.slice(0, 24))), `${what}: nor echoed in what it received`);
    }
  };

  // Logins Sluice refuses, each carrying the token; one that works, whose client name is
  // "auth"; after it, a HELLO ... AUTH with no version (refused).
  const a = await Raw.open(gw.port('cache'));
  const aPort = a.socket.localPort!;
  const aSent = [
    cmd('AUTH', 'u', token, 'x'),
    cmd('HELLO', '4', 'AUTH', 'u', token),
    cmd('HELLO', '3', token),
    cmd('HELLO', '3', 'SETNAME', 'auth', 'AUTH', 'lbl', token),
    cmd('HELLO', 'AUTH', 'u', token),
    cmd('PING'),
    cmd('QUIT'),
  ];
  a.socket.write(Buffer.concat(aSent.slice(0, 3)));
  const refused = await a.replies(3);
  t.match(refused[0], /^-ERR wrong number of arguments for 'auth' command/);
  t.match(refused[1], /^-NOPROTO/);
  t.equal(refused[2], '-ERR Syntax error in HELLO option\r\n', 'a misplaced token is not echoed');
  a.socket.write(Buffer.concat(aSent.slice(3)));
  const after = await a.replies(4);
  t.match(after[0], /^%/, 'HELLO 3 ... AUTH logs in (a RESP3 map)');
  t.match(after[1], /^-ERR sluice: identity cannot change/);
  t.same(after.slice(2), ['+PONG\r\n', '+OK\r\n']);
  t.ok(await a.closedWithin());
  await check(aPort, aSent, 'refused and odd logins');

  // Empty arrays before an AUTH split across two reads: the scrubbed range must still be the AUTH's.
  const b = await Raw.open(gw.port('cache'));
  const bPort = b.socket.localPort!;
  const auth = cmd('AUTH', token);
  const half = Math.floor(auth.length / 2);
  const bSent = [Buffer.from('*0\r\n'.repeat(50)), auth, cmd('PING'), cmd('QUIT')];
  b.socket.write(Buffer.concat([bSent[0]!, auth.subarray(0, half)]));
  await new Promise((r) => setTimeout(r, 100));
  b.socket.write(Buffer.concat([auth.subarray(half), bSent[2]!, bSent[3]!]));
  t.same(await b.replies(3), ['+OK\r\n', '+PONG\r\n', '+OK\r\n']);
  t.ok(await b.closedWithin());
  await check(bPort, bSent, 'an AUTH split after empty arrays');
});

/** The arguments of one RESP array of bulk strings. */
function parseCommand(c: Buffer): Buffer[] {
  const text = c.toString('latin1');
  const n = Number(/^\*(\d+)\r\n/.exec(text)![1]);
  let pos = text.indexOf('\r\n') + 2;
  const args: Buffer[] = [];
  for (let i = 0; i < n; i++) {
    const m = /^\$(\d+)\r\n/.exec(text.slice(pos))!;
    pos += m[0].length;
    args.push(c.subarray(pos, pos + Number(m[1])));
    pos += Number(m[1]) + 2;
  }
  return args;
}

t.test('a failed login is recorded without its token; the sessions index and CLI', async (t) => {
  const bad = await run('psql', ['-X', '-At', '-c', 'select 1'], { env: { ...pgEnv(gw.port('app-db')), PGPASSWORD: `${token}x` } });
  t.not(bad.code, 0);
  // Every recording gets its footer shortly after its connection closed (the failed login's included).
  let files: string[] = [];
  const keys = await loadRecordingPublicKeys(gw.stateDir);
  for (let i = 0; i < 100; i++) {
    files = recordingFiles(gw.stateDir);
    const states = await Promise.all(files.map((f) => verifyRecording(f, keys)));
    if (states.every((v) => v.complete) && states.some((v) => v.header?.subject === '')) break;
    await new Promise((r) => setTimeout(r, 50));
  }
  t.ok(files.length >= 8, `${files.length} recordings`);
  for (const f of files) {
    const raw = readFileSync(f);
    for (const s of secrets) t.notOk(raw.includes(Buffer.from(s)), `no secret in ${f.slice(-30)}`);
  }
  const failed = [];
  for (const f of files) {
    const r = readRecording(f);
    const client: Buffer[] = [];
    for await (const e of r) if (e.type === 'data' && e.direction === 'client') client.push(e.bytes);
    if (r.header?.subject === '' && !pipelinedPorts.has(r.header.clientAddress ?? '')) failed.push(Buffer.concat(client));
  }
  t.equal(failed.length, 1, 'the failed login has a recording (no subject: the token did not verify)');
  t.ok(failed[0]?.includes(scrubPgPasswordMessage(typed('p', 'x\0'))), 'holding the scrubbed PasswordMessage');
  for (const line of gw.logs) for (const s of secrets) if (line.includes(s)) t.fail(`a secret in a log line: ${line.slice(0, 80)}`);

  const dir = mkdtempSync(join(tmpdir(), 'sluice-cli-'));
  t.teardown(() => removeDir(dir));
  const configFile = join(dir, 'sluice.yaml');
  writeFileSync(configFile, `state_dir: ${JSON.stringify(gw.stateDir)}
identity: { dev_issuer: true }
targets:
  app-db:
    protocol: postgres
    listen: 127.0.0.1:1
    upstream: { host: 127.0.0.1, port: 1, database: app, user: app }
policies:
  - { name: p, subjects: { groups: [ci] }, targets: [app-db] }
`);
  const cli = join(process.cwd(), 'dist', 'src', 'cli', 'main.js');
  const verify = await run(process.execPath, [cli, 'verify', '--all', '--config', configFile]);
  t.equal(verify.code, 0, `sluice verify --all: ${verify.stdout}${verify.stderr}`);
  const list = await run(process.execPath, [cli, 'sessions', '--json', '--config', configFile]);
  t.equal(list.code, 0, list.stderr);
  for (const s of secrets) t.notOk(list.stdout.includes(s), 'no secret in the sessions index');
  const rows = list.stdout
    .trim()
    .split('\n')
    .map((l) => JSON.parse(l) as { subject: string; complete: boolean; recording_path: string | null; target: string; statements_allowed: number; ended_at: string | null; final_hash: string | null });
  const mine = rows.filter((r) => r.subject === 'ci-job-7');
  t.ok(mine.length >= 7, `${mine.length} sessions of ci-job-7 indexed`);
  // The gates' verdicts reach the index: sessions that ran statements / commands count them.
  t.ok(mine.some((r) => r.target === 'app-db' && r.statements_allowed > 0), 'a PostgreSQL session row counts its allowed statements');
  t.ok(mine.some((r) => r.target === 'cache' && r.statements_allowed > 0), 'a Redis session row counts its allowed commands');
  for (const r of mine) {
    t.equal(r.complete, true, `${r.target} session complete`);
    t.ok(r.recording_path && files.includes(r.recording_path), 'with its recording path');
    const footer = (await verifyRecording(r.recording_path!, keys)).footer;
    t.same([r.ended_at, r.final_hash], [footer?.endedAt, footer?.finalChain], 'its end time and final hash are the footer\'s');
  }
  const store = openSqliteStore(gw.stateDir);
  t.equal(store.listSessions({}).length, rows.length, 'the CLI lists every row of the index');
  store.close();
  gwClosed = true;
  await gw.close();
});

/** `sluice serve` as a child process (killed at teardown), its stdout and stderr kept. */
function serve(t: Test, cli: string, configFile: string, env: NodeJS.ProcessEnv): { child: ChildProcess; output(): string; exited: Promise<void> } {
  const child = spawn(process.execPath, [cli, 'serve', '--config', configFile], { env, stdio: ['ignore', 'pipe', 'pipe'] });
  const chunks: Buffer[] = [];
  child.stdout!.on('data', (c: Buffer) => chunks.push(c));
  child.stderr!.on('data', (c: Buffer) => chunks.push(c));
  const exited = new Promise<void>((r) => child.once('exit', () => r()));
  t.teardown(() => {
    child.kill('SIGKILL');
  });
  return { child, output: () => Buffer.concat(chunks).toString(), exited };
}

/** Waits (10 s at most) until something accepts connections on the port: a gateway started as a child process. */
async function untilListening(port: number): Promise<void> {
  for (let i = 0; i < 100; i++) {
    const up = await new Promise<boolean>((r) => {
      const s = connect(port, '127.0.0.1', () => {
        s.destroy();
        r(true);
      });
      s.on('error', () => r(false));
    });
    if (up) return;
    await new Promise((r) => setTimeout(r, 100));
  }
}

t.test('kill -9 during a 100 MB result leaves a verifiable, incomplete recording', { timeout: 60_000 }, async (t) => {
  const dir = mkdtempSync(join(tmpdir(), 'sluice-kill-'));
  t.teardown(() => removeDir(dir));
  const probe = createServer();
  await new Promise<void>((r) => probe.listen(0, '127.0.0.1', r));
  const port = (probe.address() as { port: number }).port;
  await new Promise<void>((r) => probe.close(() => r()));
  const configFile = join(dir, 'sluice.yaml');
  writeFileSync(
    configFile,
    `state_dir: ${JSON.stringify(join(dir, 'state'))}
identity: { dev_issuer: true }
log: { level: warn }
targets:
  app-db:
    protocol: postgres
    listen: 127.0.0.1:${port}
    allow_insecure_loopback: true
    upstream: { host: 127.0.0.1, port: ${pgServer.port}, database: app, user: ${pgServer.user}, password_env: TEST_PG_PASSWORD, tls: disable }
policies:
  - name: ci-jobs
    subjects: { groups: [ci] }
    targets: [app-db]
`,
  );
  const cli = join(process.cwd(), 'dist', 'src', 'cli', 'main.js');
  const env = { ...process.env, TEST_PG_PASSWORD: pgServer.password };
  const { child, output, exited } = serve(t, cli, configFile, env);
  await untilListening(port);
  const tok = (await run(process.execPath, [cli, 'token', '--sub', 'ci-big', '--group', 'ci', '--config', configFile], { env })).stdout.trim();
  t.ok(tok.length > 20, 'a token from the dev issuer');
  const psql = spawn('psql', ['-X', '-At', '-c', "select repeat('x', 1000) from generate_series(1, 100000)"], {
    env: { ...process.env, ...pgEnv(port), PGPASSWORD: tok },
    stdio: ['ignore', 'ignore', 'ignore'],
  });
  const psqlDone = new Promise<void>((r) => psql.once('exit', () => r()));
  // Wait until the recording is well under way and the session's index row
  // is written (rows wait up to 100 ms, docs/configuration.md: a crash
  // before then loses the row, not the recording), then kill the gateway outright.
  let path: string | undefined;
  const index = openSqliteStore(join(dir, 'state'));
  for (let i = 0; i < 400; i++) {
    path = recordingFiles(join(dir, 'state'))[0];
    if (path && statSync(path).size > 8 * 1024 * 1024 && index.listSessions({ subject: 'ci-big' }).length > 0) break;
    await new Promise((r) => setTimeout(r, 25));
  }
  index.close();
  t.ok(path, 'a recording exists');
  child.kill('SIGKILL');
  await exited;
  await psqlDone;
  const size = statSync(path!).size;
  t.ok(size > 8 * 1024 * 1024 && size < 100 * 1024 * 1024, `the recording stopped mid-result (${size} bytes)`);
  const v = await verifyRecording(path!, await loadRecordingPublicKeys(join(dir, 'state')));
  t.equal(v.complete, false, 'incomplete');
  t.equal(v.firstBad, undefined, 'but not tampered: the prefix verifies');
  // Checkpoints come every 1000 records or 10 s; before the first, the prefix is held by CRCs and sequence numbers.
  t.ok(v.records > 10, `${v.records} records read intact`);
  const list = await run(process.execPath, [cli, 'sessions', '--json', '--config', configFile], { env });
  t.equal(list.code, 0, list.stderr);
  const rows = list.stdout.trim().split('\n').map((l) => JSON.parse(l) as { subject: string; complete: boolean; recording_path: string });
  const row = rows.find((r) => r.subject === 'ci-big');
  t.equal(row?.complete, false, 'sessions --json shows it as not complete');
  t.equal(row?.recording_path, path);
  const raw = readFileSync(path!);
  t.notOk(raw.includes(Buffer.from(tok)), 'the token is not in the recording');
  t.notOk(raw.includes(Buffer.from(pgServer.password)), 'the upstream password is not in the recording');
  const logText = output();
  t.notOk(logText.includes(tok) || logText.includes(pgServer.password), 'nor in the gateway output');

  // The next start finishes the index: the interrupted session is closed, as of its recording's last write.
  const again = serve(t, cli, configFile, env);
  // Listeners open after the index is finished: once the port answers, it is.
  await untilListening(port);
  again.child.kill('SIGTERM');
  await again.exited;
  t.match(again.output(), /sessions index finished after an abrupt stop/, 'the restart says what it finished');
  const after = await run(process.execPath, [cli, 'sessions', '--json', '--config', configFile], { env });
  const recovered = after.stdout.trim().split('\n').map((l) => JSON.parse(l) as { subject: string; complete: boolean; ended_at: string | null; close_reason: string | null }).find((r) => r.subject === 'ci-big');
  t.match(recovered, { complete: false, close_reason: 'gateway stopped before the session ended' }, 'closed as interrupted, still incomplete');
  t.ok(recovered?.ended_at, 'with the time its recording was last written');
});

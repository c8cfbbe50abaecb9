/**
 * The forensic tools over recordings: `sluice replay` transcripts, `--raw`
 * and `--serve`.
 *
 * The recordings are made here, independently of the gateway's taps: real
 * psql, node-postgres and redis-cli talk to a real PostgreSQL / Redis
 * through a small capture proxy that does what the taps do (record both
 * directions with a RecordingWriter, credentials scrubbed with scrub.ts) and
 * also keeps the exact server bytes it relayed, to compare with `--raw`.
 */
import { createServer, connect, type Socket } from 'node:net';
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import pg from 'pg';
import t from 'tap';
import { PgFramer } from '../../protocols/postgres/framer.js';
import { RespRequestFramer } from '../../protocols/redis/resp.js';
import { replayCommand, type ReplayIo } from '../../src/cli/replay.js';
import { loadRecordingPublicKeys, openRecordingKey, type RecordingKey } from '../../src/recording/keys.js';
import { verifyRecording } from '../../src/recording/verify.js';
import { readRecording } from '../../src/recording/reader.js';
import { buildReplayScript, startReplayServer } from '../../src/recording/replay-server.js';
import { scrubPgPasswordMessage, scrubRedisAuth } from '../../src/recording/scrub.js';
import { transcriptJson, transcriptText } from '../../src/recording/transcript.js';
import { RecordingWriter } from '../../src/recording/writer.js';
import { startPostgres } from '../helpers/postgres.js';
import { run } from '../helpers/process.js';
import { startRedis } from '../helpers/redis.js';

const stateDir = mkdtempSync(join(tmpdir(), 'sluice-replay-'));
t.teardown(() => rmSync(stateDir, { recursive: true, force: true }));
const key = await openRecordingKey(stateDir);

interface Captured {
  path: string;
  /** Exactly what the proxy relayed to the client. */
  server: Buffer;
}

/**
 * client <-> proxy <-> upstream; each connection becomes one recording
 * (session ids `${prefix}-1`, `-2`, ...). `next()` resolves when the next
 * connection has closed and its recording is written.
 */
async function captureProxy(upstreamPort: number, protocol: 'postgres' | 'redis', prefix: string) {
  const done: Captured[] = [];
  const waiters: ((c: Captured) => void)[] = [];
  let n = 0;
  const server = createServer((client: Socket) => {
    const sessionId = `${prefix}-${++n}`;
    const upstream = connect(upstreamPort, '127.0.0.1');
    const serverBytes: Buffer[] = [];
    const writerP = RecordingWriter.open({
      stateDir,
      key: key as RecordingKey,
      onFailure: (err) => t.fail(`recording failed: ${err.message}`),
      meta: { sessionId, target: 'capture', protocol, subject: 'tester', groups: ['ci'], issuer: 'test', startedAt: new Date().toISOString() },
    });
    client.pause();
    void writerP.then((w) => {
      // Client -> upstream: framed like the taps do, the credential scrubbed in the recording only.
      const pgFramer = new PgFramer({ maxMessageBytes: 1 << 30, startup: true, inspect: [0x70] });
      const respFramer = new RespRequestFramer();
      client.on('data', (chunk: Buffer) => {
        if (protocol === 'postgres') {
          pgFramer.push(chunk, {
            passthrough: (b) => {
              w.record('client', b);
              upstream.write(Buffer.from(b));
            },
            message: (type, m) => {
              w.record('client', type === 0x70 ? scrubPgPasswordMessage(m) : m);
              upstream.write(Buffer.from(m));
            },
          });
        } else {
          respFramer.push(chunk, {
            command: (raw, args) => {
              const name = args[0]!.toString('latin1').toUpperCase();
              w.record('client', name === 'AUTH' || name === 'HELLO' ? scrubRedisAuth(args) : raw);
              upstream.write(Buffer.from(raw));
            },
          });
        }
      });
      upstream.on('data', (chunk: Buffer) => {
        w.record('server', chunk);
        serverBytes.push(Buffer.from(chunk));
        client.write(chunk);
      });
      let closed = false;
      const end = (): void => {
        if (closed) return;
        closed = true;
        client.end();
        upstream.end();
        void w.close({ closeReason: 'client closed' }).then((r) => {
          const c = { path: r.path, server: Buffer.concat(serverBytes) };
          const waiter = waiters.shift();
          if (waiter) waiter(c);
          else done.push(c);
        });
      };
      client.on('end', end);
      upstream.on('end', end);
      client.on('error', end);
      upstream.on('error', end);
      client.resume();
    });
  });
  await new Promise<void>((r) => server.listen(0, '127.0.0.1', r));
  const addr = server.address();
  return {
    port: typeof addr === 'object' && addr ? addr.port : 0,
    next: (): Promise<Captured> => {
      const c = done.shift();
      return c ? Promise.resolve(c) : new Promise((r) => waiters.push(r));
    },
    close: () => new Promise<void>((r) => server.close(() => r())),
  };
}

function captureIo(): ReplayIo & { out: () => Buffer; err: () => string; controller: AbortController } {
  const out: Buffer[] = [];
  const err: string[] = [];
  const controller = new AbortController();
  return {
    stdout: { write: (s: string | Uint8Array) => out.push(typeof s === 'string' ? Buffer.from(s) : Buffer.from(s)) },
    stderr: { write: (s: string) => err.push(s), isTTY: false },
    env: {},
    signal: controller.signal,
    controller,
    out: () => Buffer.concat(out),
    err: () => err.join(''),
  };
}

/** Starts `sluice replay --file P --serve 0 --once` and returns its port and exit. */
async function serveReplay(path: string) {
  const io = captureIo();
  const exit = replayCommand(['--file', path, '--serve', '0', '--once'], io);
  for (let i = 0; i < 200; i++) {
    const m = /on 127\.0\.0\.1:(\d+)\n  password: (\S+)\n/.exec(io.out().toString());
    if (m) return { port: Number(m[1]), password: m[2]!, exit, io };
    await new Promise((r) => setTimeout(r, 10));
  }
  throw new Error(`replay server did not start: ${io.err()}`);
}

/** The same recording with every data record cut into pieces of `size` bytes (messages split across records). */
async function resplit(path: string, sessionId: string, size: number): Promise<string> {
  const reader = readRecording(path);
  let w: RecordingWriter | undefined;
  for await (const rec of reader) {
    w ??= await RecordingWriter.open({ stateDir, key, onFailure: () => undefined, meta: { ...reader.header!, sessionId } });
    if (rec.type !== 'data') continue;
    for (let i = 0; i < rec.bytes.length; i += size) w.record(rec.direction, rec.bytes.subarray(i, i + size));
  }
  return (await w!.close({ closeReason: 'client closed' })).path;
}

const eventTexts = async (path: string) => (await transcriptJson(path)).events.map((e) => `${e.dir} ${e.kind} ${e.text}`);

t.test('PostgreSQL: transcript, --raw, and --serve to the same psql', async (t) => {
  const server = await startPostgres({ auth: 'password' });
  t.teardown(() => server.stop());
  const proxy = await captureProxy(server.port, 'postgres', 'pg');
  t.teardown(() => proxy.close());
  const env = { PGPASSWORD: server.password, PGSSLMODE: 'prefer', PGCONNECT_TIMEOUT: '10' };
  const psqlArgs = (port: number) => [
    '-X', '-At', '-h', '127.0.0.1', '-p', String(port), '-U', server.user, '-d', server.database,
    '-c', "CREATE TEMP TABLE t (id int, name text); INSERT INTO t VALUES (1, 'ada'), (2, 'bob'), (3, NULL), (4, 'dan'); SELECT * FROM t ORDER BY id",
    '-c', 'SELECT 1/0',
    '-c', "DO $$ BEGIN RAISE NOTICE 'statement held for approval apr_test'; END $$",
    '-c', "SELECT 'after the error' AS note, count(*) FROM t",
  ];

  const original = await run('psql', psqlArgs(proxy.port), { env });
  t.equal(original.code, 0, `psql ran (without ON_ERROR_STOP it goes on after the error): ${original.stderr}`);
  t.match(original.stdout, /1\|ada\n2\|bob\n3\|\n4\|dan\nDO\nafter the error\|4/);
  t.match(original.stderr, /division by zero/);
  const rec = await proxy.next();

  await t.test('transcript', async (t) => {
    const text = await transcriptText(rec.path);
    t.match(text, /session pg-1 \(postgres\)/);
    t.match(text, /->  SSLRequest/);
    t.match(text, /<-  answer to SSL\/GSSENC request: 'N'/);
    t.match(text, /->  StartupMessage protocol 3\.0 .*user=app_user.*database=app/);
    t.match(text, /<-  AuthenticationCleartextPassword/);
    t.match(text, /->  PasswordMessage\/SASL response \[redacted\]/);
    t.notMatch(text, server.password, 'the password is in no transcript');
    t.match(text, /<-  AuthenticationOk/);
    t.match(text, /<-  ParameterStatus .*server_version=/);
    t.match(text, /->  Query CREATE TEMP TABLE t/);
    t.match(text, /<-  CommandComplete CREATE TABLE/);
    t.match(text, /<-  CommandComplete INSERT 0 4/);
    t.match(text, /<-  columns \(id int4, name text\); 4 rows: \[1 \| ada\] \[2 \| bob\] \[3 \| NULL\] \.\.\.; CommandComplete SELECT 4/);
    t.match(text, /<-  ErrorResponse ERROR 22012 division by zero/);
    t.match(text, /<-  NoticeResponse NOTICE 00000 statement held for approval apr_test/);
    t.match(text, /<-  ReadyForQuery idle/);
    t.match(text, /->  Terminate/);
    t.match(text, /end: .*\(client closed\)/);
    t.notMatch(text, /INCOMPLETE/);
    const verified = await verifyRecording(rec.path, await loadRecordingPublicKeys(stateDir));
    t.match(text, new RegExp(`; ${verified.records} records\n`), 'the transcript counts records as sluice verify does');
    // Timestamps: ms since start, non-decreasing.
    const times = [...text.matchAll(/^\s+(\d+\.\d{3})  (?:->|<-)/gm)].map((m) => Number(m[1]));
    t.ok(times.length > 10);
    t.same(times, [...times].sort((a, b) => a - b), 'in record order, times non-decreasing');

    const json = await transcriptJson(rec.path);
    const denied = json.events.find((e) => e.kind === 'error');
    t.equal(denied?.data?.sqlstate, '22012');
    t.equal(json.events.find((e) => e.kind === 'approval')?.dir, 'server', 'a held-for-approval notice is its own kind');
  });

  await t.test('the CLI: transcript, --json, --raw server is byte-exact', async (t) => {
    const io = captureIo();
    t.equal(await replayCommand(['--file', rec.path], io), 0, io.err());
    t.match(io.out().toString(), /Query SELECT 1\/0/);

    const js = captureIo();
    t.equal(await replayCommand(['--file', rec.path, '--json'], js), 0, js.err());
    const lines = js.out().toString().trim().split('\n').map((l) => JSON.parse(l) as Record<string, unknown>);
    t.equal((lines[0]!.session as { sessionId: string }).sessionId, 'pg-1');
    t.ok(lines.some((l) => l.kind === 'query'));
    t.equal((lines.at(-1)!.summary as { complete: boolean }).complete, true);

    const raw = captureIo();
    t.equal(await replayCommand(['--file', rec.path, '--raw', 'server'], raw), 0, raw.err());
    t.ok(raw.out().equals(rec.server), `--raw server equals the ${rec.server.length} bytes the client received`);

    const usage = captureIo();
    t.equal(await replayCommand(['--file', rec.path, '--raw', 'sideways'], usage), 2);
    t.equal(await replayCommand(['--file', rec.path, '--json', '--serve', '1'], captureIo()), 2);
  });

  await t.test('messages split across records decode the same', async (t) => {
    const split1 = await resplit(rec.path, 'pg-split-1', 1);
    const split7 = await resplit(rec.path, 'pg-split-7', 7);
    const whole = await eventTexts(rec.path);
    t.same(await eventTexts(split1), whole, 'one byte per record');
    t.same(await eventTexts(split7), whole, 'seven bytes per record');
  });

  await t.test('--serve: the same psql gets the same output', async (t) => {
    const r = await serveReplay(rec.path);
    const replayed = await run('psql', psqlArgs(r.port), { env: { ...env, PGPASSWORD: r.password } });
    t.equal(await r.exit, 0, r.io.err());
    t.equal(replayed.stdout, original.stdout, 'stdout identical');
    t.equal(replayed.stderr, original.stderr, 'stderr identical');
    t.equal(replayed.code, original.code, 'exit code identical');
    t.match(r.io.err(), /replay complete|the client closed/);
    t.notMatch(r.io.err(), /warning/, 'the same client sends the same message types');
  });

  await t.test('--serve: a client without the replay\'s password gets the login refusal and nothing recorded', async (t) => {
    const r = await serveReplay(rec.path);
    const other = await run('psql', psqlArgs(r.port), { env: { ...env, PGPASSWORD: server.password } });
    t.equal(await r.exit, 0, r.io.err());
    t.not(other.code, 0);
    t.match(other.stderr, /FATAL: {2}password authentication failed: log in with the password sluice replay printed/);
    t.equal(other.stdout, '', 'no recorded row reaches it');
    t.match(r.io.err(), /wrong password; refused, closing/);
  });

  await t.test('extended protocol (node-postgres): Parse, Bind with parameters, Execute, Sync', async (t) => {
    const client = new pg.Client({ host: '127.0.0.1', port: proxy.port, user: server.user, password: server.password, database: server.database, ssl: false });
    await client.connect();
    const res = await client.query('SELECT $1::int + 1 AS n, $2::text AS who', [41, 'eve']);
    t.same(res.rows, [{ n: 42, who: 'eve' }]);
    await client.query({ name: 'named-stmt', text: 'SELECT $1::bytea AS b', values: [Buffer.from([0, 1, 2])] });
    await client.query('COPY (SELECT g FROM generate_series(1, 1000) g) TO STDOUT').catch(() => undefined);
    await client.end();
    const text = await transcriptText((await proxy.next()).path);
    t.match(text, /->  Parse unnamed statement: SELECT \$1::int \+ 1 AS n, \$2::text AS who/);
    t.match(text, /->  Bind unnamed portal to unnamed statement params \["41", "eve"\]/);
    t.match(text, /->  Execute unnamed portal/);
    t.match(text, /->  Sync/);
    t.match(text, /<-  ParseComplete/);
    t.match(text, /<-  columns \(n int4, who text\); 1 row: \[42 \| eve\]; CommandComplete SELECT 1/);
    t.match(text, /->  Parse statement "named-stmt": SELECT \$1::bytea AS b/);
    t.match(text, /->  Bind unnamed portal to statement "named-stmt" params \[\\x000102\]/);
    t.match(text, /<-  CopyOutResponse text, 1 columns/);
    t.match(text, /<-  CopyData x1000, \d+ bytes/);
    t.match(text, /COPY 1000/);
  });
});

t.test('Redis: transcript, --raw, and --serve to the same redis-cli', async (t) => {
  const redis = await startRedis();
  t.teardown(() => redis.stop());
  const proxy = await captureProxy(redis.port, 'redis', 'redis');
  t.teardown(() => proxy.close());
  const big = 'x'.repeat(200_000);
  const input = ['SET greeting hello', 'GET greeting', 'INCR counter', 'RPUSH list a b c d', 'LRANGE list 0 -1', 'GET missing', 'NOSUCHCOMMAND 1', `SET big ${big}`, 'STRLEN big', 'GETRANGE big 0 9', 'HSET h f1 v1 f2 v2', 'HGETALL h', ''].join('\n');
  const cli = (port: number, password: string) => run('redis-cli', ['-h', '127.0.0.1', '-p', String(port), '-a', password, '--no-auth-warning'], { input });

  const original = await cli(proxy.port, redis.password);
  t.equal(original.code, 0, original.stderr);
  t.match(original.stdout, /OK\nhello\n1\n4\na\nb\nc\nd\n\n/);
  t.match(original.stdout, /unknown command/);
  const rec = await proxy.next();

  await t.test('transcript', async (t) => {
    const text = await transcriptText(rec.path);
    t.match(text, /session redis-1 \(redis\)/);
    t.match(text, /->  AUTH \[redacted\]/);
    t.notMatch(text, redis.password, 'the password is in no transcript');
    t.match(text, /->  SET "greeting" "hello"/);
    t.match(text, /<-  \+OK/);
    t.match(text, /<-  \$5 "hello"/);
    t.match(text, /<-  :1/);
    t.match(text, /->  RPUSH "list" "a" "b" "c" "d"/);
    t.match(text, /<-  \*4 \["a", "b", "c", \.\.\.\]/);
    t.match(text, /<-  \(nil\)/);
    t.match(text, /<-  -ERR unknown command 'NOSUCHCOMMAND'/);
    t.match(text, /->  SET "big" "x{64}"\.\.\. \(200000 bytes\)/, 'a long value is cut short with its size');
    t.match(text, /<-  :200000/);
    t.match(text, /<-  \*4 \["f1", "v1", "f2", \.\.\.\]|<-  %2 \{"f1": "v1", "f2": "v2"\}/);
    const json = await transcriptJson(rec.path);
    t.equal(json.events.filter((e) => e.dir === 'client' && e.kind === 'command').length, 14, 'AUTH, COMMAND DOCS (redis-cli asks) and 12 commands');
    t.equal(json.events.find((e) => e.kind === 'error')?.dir, 'server');
    t.same(await eventTexts(await resplit(rec.path, 'redis-split-3', 3)), await eventTexts(rec.path), 'split records decode the same');
  });

  await t.test('--raw server is byte-exact', async (t) => {
    const raw = captureIo();
    t.equal(await replayCommand(['--file', rec.path, '--raw', 'server'], raw), 0, raw.err());
    t.ok(raw.out().equals(rec.server), `--raw server equals the ${rec.server.length} bytes the client received`);
  });

  await t.test("--serve: the same redis-cli gets the same output, logging in with the replay's password", async (t) => {
    const r = await serveReplay(rec.path);
    const replayed = await cli(r.port, r.password);
    t.equal(await r.exit, 0, r.io.err());
    t.equal(replayed.stdout, original.stdout, 'stdout identical');
    t.equal(replayed.stderr, original.stderr, 'stderr identical');
    t.equal(replayed.code, original.code);
    t.notMatch(r.io.err(), /warning/);
  });

  await t.test('--serve and --raw say so when a damaged recording ends early', async (t) => {
    const damaged = join(stateDir, 'redis-damaged.sluicerec');
    const bytes = readFileSync(rec.path);
    bytes[Math.floor(bytes.length * 0.7)]! ^= 0x01; // inside the 200 kB SET: its CRC fails
    writeFileSync(damaged, bytes);
    const r = await serveReplay(damaged);
    t.match(r.io.err(), /warning: the recording is incomplete or damaged \(reading stopped at offset \d+: CRC mismatch in record \d+; run sluice verify/);
    await cli(r.port, r.password);
    await r.exit;
    const raw = captureIo();
    t.equal(await replayCommand(['--file', damaged, '--raw', 'server'], raw), 0);
    t.match(raw.err(), /warning: the recording is incomplete or damaged \(reading stopped at offset \d+: CRC mismatch/);
  });

  await t.test('--serve: a wrong password, or none where the recording logs in, is refused', async (t) => {
    for (const [args, why] of [
      [['-a', 'not-the-replay-password'], /message 1 \(AUTH\): wrong password; refused, closing/],
      // Without -a, redis-cli's first command is COMMAND DOCS, where the recording has its AUTH.
      [[], /message 1 \(COMMAND\): the recording logs in here, the client did not; refused, closing/],
    ] as const) {
      const r = await serveReplay(rec.path);
      const other = await run('redis-cli', ['-h', '127.0.0.1', '-p', String(r.port), ...args, '--no-auth-warning'], { input });
      t.equal(await r.exit, 0, r.io.err());
      if (args.length > 0) t.match(other.stdout + other.stderr, /WRONGPASS password authentication failed: log in with the password sluice replay printed/);
      t.notMatch(other.stdout, /hello/, 'no recorded reply reaches it');
      t.match(r.io.err(), why);
    }
  });

  await t.test('--serve limits: connections at once, and bytes and time before the login', async (t) => {
    const events: string[] = [];
    const script = await buildReplayScript(rec.path);
    const server = await startReplayServer({ script, password: 'the-replay-password', port: 0, maxConnections: 2, loginTimeoutMs: 300, onEvent: (line) => events.push(line) });
    t.teardown(() => server.close());
    /** A raw connection and everything it is sent until the replay closes it. */
    const open = async (port = server.port) => {
      const s = await new Promise<Socket>((resolve) => {
        const c = connect(port, '127.0.0.1', () => resolve(c));
        c.on('error', () => undefined);
      });
      let got = '';
      s.on('data', (d: Buffer) => (got += d.toString('latin1')));
      return { s, closed: new Promise<string>((resolve) => s.on('close', () => resolve(got))) };
    };
    const a = await open();
    const b = await open();
    const third = await open();
    t.equal(await third.closed, '-ERR too many connections: this replay serves 2 at once\r\n', 'a third at once is refused');
    // Neither logs in: each is closed when its time is up.
    t.equal(await a.closed, '-ERR canceling authentication: no login within 0.3s; closing\r\n');
    t.equal(await b.closed, '-ERR canceling authentication: no login within 0.3s; closing\r\n');
    t.ok(events.some((l) => /refused, 2 already open/.test(l)), 'the refusal is reported');
    // Another replay (the first's sockets may not have closed on its side yet): a connection with no login sends too much.
    const other = await startReplayServer({ script, password: 'the-replay-password', port: 0 });
    t.teardown(() => other.close());
    const flood = await open(other.port);
    flood.s.write(`*2\r\n$4\r\nECHO\r\n$100000\r\n${'x'.repeat(70_000)}`);
    t.equal(await flood.closed, '-ERR more than 64 KiB sent before logging in; closing\r\n', 'unauthenticated input is bounded');

    // A peer that never closes its side keeps no slot: the replay destroys the socket after a grace.
    const single = await startReplayServer({ script, password: 'the-replay-password', port: 0, maxConnections: 1, loginTimeoutMs: 100, closeGraceMs: 300 });
    t.teardown(() => single.close());
    const halfOpen = await new Promise<Socket>((resolve) => {
      const c = connect({ port: single.port, host: '127.0.0.1', allowHalfOpen: true }, () => resolve(c));
      c.on('error', () => undefined);
    });
    halfOpen.resume();
    await new Promise<void>((resolve) => halfOpen.on('end', () => resolve()));
    // The replay has ended its side; the peer never will. Until the replay gives up on it (idle for
    // closeGraceMs), a new connection is refused; after, it is served. Polled, with a deadline well past that.
    let served = '';
    for (let i = 0; i < 40 && !served.includes('canceling authentication'); i++) {
      const next = await open(single.port);
      served = await next.closed;
      if (!served.includes('canceling authentication')) await new Promise((r) => setTimeout(r, 250));
    }
    t.equal(served, '-ERR canceling authentication: no login within 0.1s; closing\r\n', 'the slot is free again: a new connection is served, not refused');
    halfOpen.destroy();
    // The recorded session itself sent 200 KB after its login (SET big): the --serve test above replays it in full.
  });

  await t.test('--serve warns when the client diverges', async (t) => {
    const r = await serveReplay(rec.path);
    const other = await run('redis-cli', ['-h', '127.0.0.1', '-p', String(r.port), '-a', r.password, '--no-auth-warning'], { input: 'PING\n' });
    t.equal(other.code, 0);
    r.io.controller.abort();
    t.equal(await r.exit, 0);
    t.match(r.io.err(), /warning: message 3: the recording has SET, the client sent PING/);
  });
});

t.test('replay by session id through the config and the index; missing ids', async (t) => {
  const dir = t.testdir({
    'sluice.yaml': `state_dir: ${JSON.stringify(stateDir)}
identity: { dev_issuer: true }
targets:
  app-db:
    protocol: postgres
    listen: 127.0.0.1:0
    allow_insecure_loopback: true
    upstream: { host: 127.0.0.1, port: 5432, database: app, user: app_ci, password_env: APP_DB_PASSWORD, tls: disable }
policies:
  - name: ci
    subjects: { groups: [ci] }
    targets: [app-db]
`,
  });
  const config = join(dir, 'sluice.yaml');
  const io = captureIo();
  io.env.APP_DB_PASSWORD = 'unused';
  t.equal(await replayCommand(['pg-1', '--config', config], io), 0, io.err());
  t.match(io.out().toString(), /session pg-1 \(postgres\)/, 'found by file name under the state dir');
  const missing = captureIo();
  missing.env.APP_DB_PASSWORD = 'unused';
  t.equal(await replayCommand(['no-such-session', '--config', config], missing), 1);
  t.match(missing.err(), /no recording found for session no-such-session/);
  t.equal(await replayCommand(['../etc/passwd', '--config', config], captureIo()), 2, 'not a session id');
});

/**
 * What recording costs per session, apart from the traffic it relays: the
 * fixed work of opening, indexing and closing a recording, by thread, with
 * no PostgreSQL, TLS or token check in the way. Under connection churn
 * (`pgbench -C`, a CI suite's connections) this is what recording adds to
 * every connection; in bench:pg it is one part in several of a -C
 * connection's CPU, and that bench's rounds move by more than the part.
 *
 *   npm run bench:recording   (or, after a build: node dist/bench/recording-session.js)
 *
 * Each session is a loopback TCP connection, its accepted socket handled as
 * a gateway session handles a client's: the tap attached at accept, a
 * handshake chunk each way held, the credential redacted, admission (the
 * file is created, the index row is queued), a query and its
 * reply recorded live, then the end (footer, fsync, the final index row),
 * which the next session does not wait for, as in the gateway.
 * Eight sessions run at a time. Each round runs SESSIONS sessions three
 * ways, one after the other: `plain` (the same sockets, nothing recorded),
 * `sluice` (this build) and, with BENCH_BASELINE set, `baseline` (that
 * checkout's build, loaded into the same process: its own seal thread and
 * store).
 *
 * Printed: CPU per session from /proc/self/task, by thread: the event loop,
 * the recording thread (the nice 19 one) and the rest (libuv's pool, which
 * creates and closes the files, the sessions index's commit thread, V8's
 * garbage collector and compiler threads); and what
 * recording adds over `plain`. The medians of ROUNDS rounds.
 *
 * The state directories are made under TMPDIR: on a tmpfs
 * (TMPDIR=/dev/shm) the numbers are Sluice's own code; on a disk they
 * include the file system's create, write and fsync (on ext4 without a
 * journal, a create right after many deletions scans past each deleted
 * inode: let the disk settle, bench/README.md).
 *
 * Env: BENCH_SESSIONS (2000), BENCH_ROUNDS (5), BENCH_BASELINE.
 */
import { once } from 'node:events';
import { existsSync, mkdtempSync, rmSync } from 'node:fs';
import { connect, createServer, type Socket } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { DEFAULT_RECORDING } from '../src/config/defaults.js';
import type { Identity } from '../src/identity/types.js';
import { createLogger } from '../src/log.js';
import { openRecordingKey } from '../src/recording/keys.js';
import { SessionRecorder } from '../src/recording/tap.js';
import { openSqliteStore } from '../src/store/sqlite.js';
import { readThreads, threadCpuBetween } from './lib/cpu.js';
import { backgroundBusy, envInt } from './lib/harness.js';
import { describeMachine, machineText } from './lib/machine.js';
import { median, renderMarkdown, renderText, type Table } from './lib/table.js';

const SESSIONS = envInt('BENCH_SESSIONS', 2000);
const ROUNDS = envInt('BENCH_ROUNDS', 5);
const CONCURRENCY = 8;

interface Recorder {
  begin: SessionRecorder['begin'];
}

interface Contender {
  name: string;
  recorder: Recorder | undefined;
  stateDir?: string;
  close(): void;
}

/** A build's recorder with the default settings, its key and store in a fresh state directory. */
async function recorderOf(name: string, modules: {
  SessionRecorder: typeof SessionRecorder;
  openRecordingKey: typeof openRecordingKey;
  openSqliteStore: typeof openSqliteStore;
  DEFAULT_RECORDING: typeof DEFAULT_RECORDING;
  createLogger: typeof createLogger;
}): Promise<Contender> {
  const stateDir = mkdtempSync(join(tmpdir(), `sluice-bench-recording-${name}-`));
  const key = await modules.openRecordingKey(stateDir);
  const store = modules.openSqliteStore(stateDir);
  const logger = modules.createLogger('warn');
  const recorder = new modules.SessionRecorder({ stateDir, settings: { ...modules.DEFAULT_RECORDING }, key, store, logger });
  return {
    name,
    recorder,
    stateDir,
    close: () => {
      store.close();
      rmSync(stateDir, { recursive: true, force: true });
    },
  };
}

/** BENCH_BASELINE's build (`npx tsc` run there), its modules loaded beside this build's. */
async function baseline(): Promise<Contender | undefined> {
  const dir = process.env.BENCH_BASELINE;
  if (!dir) return undefined;
  const dist = join(dir, 'dist', 'src');
  if (!existsSync(join(dist, 'recording', 'tap.js'))) throw new Error(`BENCH_BASELINE=${dir}: no ${dist}/recording/tap.js (build that checkout first)`);
  const load = (path: string): Promise<Record<string, unknown>> => import(join(dist, path));
  return recorderOf('baseline', {
    SessionRecorder: (await load('recording/tap.js')).SessionRecorder as typeof SessionRecorder,
    openRecordingKey: (await load('recording/keys.js')).openRecordingKey as typeof openRecordingKey,
    openSqliteStore: (await load('store/sqlite.js')).openSqliteStore as typeof openSqliteStore,
    DEFAULT_RECORDING: (await load('config/defaults.js')).DEFAULT_RECORDING as typeof DEFAULT_RECORDING,
    createLogger: (await load('log.js')).createLogger as typeof createLogger,
  });
}

const identity: Identity = {
  subject: 'bench',
  issuer: 'https://issuer.example',
  groups: ['bench'],
  claims: {},
  tokenId: 'b'.repeat(32),
  expiresAt: new Date(Date.now() + 3_600_000),
};

/** Loopback connections: the accepted side is the "client socket" a session records. */
class Sockets {
  readonly #server = createServer();
  readonly #accepts: Array<(s: Socket) => void> = [];
  #port = 0;

  async listen(): Promise<void> {
    this.#server.on('connection', (s) => this.#accepts.shift()?.(s));
    this.#server.listen(0, '127.0.0.1');
    await once(this.#server, 'listening');
    this.#port = (this.#server.address() as { port: number }).port;
  }

  async pair(): Promise<{ ours: Socket; theirs: Socket }> {
    const accepted = new Promise<Socket>((resolve) => this.#accepts.push(resolve));
    const theirs = connect(this.#port, '127.0.0.1');
    await once(theirs, 'connect');
    return { ours: await accepted, theirs };
  }

  close(): void {
    this.#server.close();
  }
}

let sessionNumber = 0;

/**
 * One session, shaped like a PostgreSQL login and one query (sizes of
 * pgbench -S's messages). Resolves when the client has gone, with the
 * recording's end still running, as in the gateway: a client's next
 * connection does not wait for the last one's footer (which waits up to
 * 100 ms for other sessions' footers, seal-thread.ts). Its end goes into
 * `ending`.
 */
async function session(sockets: Sockets, recorder: Recorder | undefined, ending: Array<Promise<unknown>>): Promise<void> {
  const { ours, theirs } = await sockets.pair();
  const sessionId = `bench${process.pid}s${String(sessionNumber++).padStart(10, '0')}`;
  const rec = recorder?.begin(ours, { sessionId, target: 'bench', protocol: 'postgres', clientAddress: '127.0.0.1:5432' });
  const startup = once(ours, 'data');
  theirs.write(Buffer.alloc(80, 1)); // StartupMessage + PasswordMessage with the token
  await startup;
  rec?.redact(0, 80, Buffer.alloc(24, 2));
  ours.write(Buffer.alloc(40, 3)); // the authentication request
  await rec?.admit(identity);
  const query = once(ours, 'data');
  theirs.write(Buffer.alloc(60, 4)); // a Query
  await query;
  const reply = once(theirs, 'data');
  ours.write(Buffer.alloc(300, 5)); // AuthenticationOk .. ReadyForQuery, a row
  await reply;
  theirs.end();
  ours.destroy();
  theirs.destroy();
  if (rec) ending.push(rec.end('client closed'));
}

interface PerSession {
  eventLoop: number;
  recordingThread: number;
  other: number;
}

async function run(sockets: Sockets, c: Contender, count: number): Promise<PerSession> {
  const a = readThreads(process.pid);
  let started = 0;
  const ending: Array<Promise<unknown>> = [];
  await Promise.all(
    Array.from({ length: CONCURRENCY }, async () => {
      while (started++ < count) await session(sockets, c.recorder, ending);
    }),
  );
  await Promise.all(ending);
  const cpu = threadCpuBetween(process.pid, a, readThreads(process.pid));
  const us = (seconds: number): number => (seconds * 1e6) / count;
  return { eventLoop: us(cpu.eventLoop), recordingThread: us(cpu.lowPriority), other: us(cpu.other) };
}

async function main(): Promise<void> {
  const machine = await describeMachine({});
  const idle = await backgroundBusy();
  process.stdout.write(`bench:recording\n${machineText(machine)}\n`);
  process.stdout.write(`settings: ${SESSIONS} sessions per contender and round, ${ROUNDS} rounds, ${CONCURRENCY} at a time; state under ${tmpdir()}\n`);
  process.stdout.write(`background: machine ${Math.round(idle * 100)}% busy before the bench started (other processes)\n\n`);

  const sockets = new Sockets();
  await sockets.listen();
  const contenders: Contender[] = [
    { name: 'plain', recorder: undefined, close: () => undefined },
    await recorderOf('sluice', { SessionRecorder, openRecordingKey, openSqliteStore, DEFAULT_RECORDING, createLogger }),
  ];
  const base = await baseline();
  if (base) contenders.push(base);
  try {
    // Warm-up: every contender's code compiled (the event loop's share still fell over the first
    // few thousand sessions), its seal thread and commit thread started.
    for (let i = 0; i < 2; i++) for (const c of contenders) await run(sockets, c, Math.min(1000, SESSIONS));
    const results = new Map<string, PerSession[]>(contenders.map((c) => [c.name, []]));
    for (let r = 0; r < ROUNDS; r++) {
      for (const c of contenders) results.get(c.name)!.push(await run(sockets, c, SESSIONS));
      process.stderr.write(`round ${r + 1}/${ROUNDS} done\n`);
    }
    const med = (name: string, k: keyof PerSession): number => median(results.get(name)!.map((x) => x[k])) ?? NaN;
    const total = (name: string): number => med(name, 'eventLoop') + med(name, 'recordingThread') + med(name, 'other');
    const table: Table = {
      title: `CPU per session, µs (median of ${ROUNDS} rounds of ${SESSIONS} sessions)`,
      header: ['contender', 'event loop', 'recording thread', 'other threads', 'total', 'recording adds'],
      rows: contenders.map((c) => [
        c.name,
        Math.round(med(c.name, 'eventLoop')),
        Math.round(med(c.name, 'recordingThread')),
        Math.round(med(c.name, 'other')),
        Math.round(total(c.name)),
        c.name === 'plain' ? undefined : Math.round(total(c.name) - total('plain')),
      ]),
      notes: [
        'plain: the same sockets and writes, nothing recorded; "recording adds" = total - plain\'s total.',
        'each round: ' + contenders.map((c) => c.name).join(', ') + ', one after the other; rounds: ' +
          contenders.map((c) => `${c.name} event loop ${results.get(c.name)!.map((x) => Math.round(x.eventLoop)).join('/')}`).join('; '),
      ],
    };
    process.stdout.write(`${renderText(table)}\n${renderMarkdown(table)}\n`);
  } finally {
    sockets.close();
    for (const c of contenders) c.close();
  }
}

await main();

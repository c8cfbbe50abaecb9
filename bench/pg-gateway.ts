/**
 * bench:pg: pgbench against one PostgreSQL through four doors, in one run.
 *
 *   direct     pgbench -> PostgreSQL
 *   relay      pgbench -> zero-parse Node relay (bench/lib/relay.ts) -> PostgreSQL
 *   pgbouncer  pgbench -> PgBouncer, session mode            -> PostgreSQL  (skipped when not installed)
 *   sluice     pgbench -> `sluice serve` (token as password)  -> PostgreSQL
 *
 * Sluice runs three times, one feature per process, so each feature's cost
 * is its own column: `sluice` (recording off, no rules), `sluice+policy`
 * (the example policy, recording off) and `sluice+recording` (recording on,
 * no rules). Named in BENCH_CONTENDERS, `sluice+recording-nofsync` adds
 * recording with `recording.fsync: off`: what the fsync at each close costs.
 *
 * Workloads: `pgbench -S` (one indexed SELECT per transaction) in the simple
 * and prepared query modes, and the same with -C (a new connection per
 * transaction: startup, authentication and for Sluice token verification and
 * the upstream login). Contenders alternate within every round; every
 * gateway runs in its own process and its CPU is read from /proc.
 *
 * Env: BENCH_SECONDS (10), BENCH_ROUNDS (2), BENCH_WARMUP_SECONDS (3: an
 * unmeasured run of each workload through each contender before the
 * rounds; 0 for none), BENCH_PG_SCALE (10),
 * BENCH_PG_CLIENTS (8), BENCH_PG_JOBS (2), BENCH_CONTENDERS (comma list to
 * run a subset, e.g. "relay,sluice"; direct is always included),
 * BENCH_PG_WORKLOADS (comma list of workload names, e.g. `connect -C simple`).
 */
import { chown, mkdtemp, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { postgresAvailable, startPostgres, type PgServer } from '../test/helpers/postgres.js';
import { PG_BIN } from '../test/helpers/process.js';
import { backgroundBusy, envCount, envInt, envWorkloads, runRounds, timestamp, writeWorkFile, type Absent, type Contender } from './lib/harness.js';
import { describeMachine, machineText } from './lib/machine.js';
import { PGBENCH, PG_WORKLOADS, initPgbench, pgbench, preflight } from './lib/pgbench.js';
import { buildTables, tablesMarkdown, tablesText, type ReportInput } from './lib/report.js';
import { baselineCandidates, startSluice } from './lib/sluice.js';
import { freePort, startDaemon, startRelay, userIds, which, type Daemon } from './lib/spawn.js';

const SECONDS = envInt('BENCH_SECONDS', 10);
const ROUNDS = envInt('BENCH_ROUNDS', 2);
const WARMUP_SECONDS = envCount('BENCH_WARMUP_SECONDS', 3);
const SCALE = envInt('BENCH_PG_SCALE', 10);
const CLIENTS = envInt('BENCH_PG_CLIENTS', 8);
const JOBS = envInt('BENCH_PG_JOBS', 2);
const ONLY = process.env.BENCH_CONTENDERS ? new Set(process.env.BENCH_CONTENDERS.split(',').map((s) => s.trim())) : undefined;

/** Run only when BENCH_CONTENDERS names them: variants for a question of their own, not every run's. */
const OPT_IN = new Set(['sluice+recording-nofsync']);

function wanted(name: string): boolean {
  return name === 'direct' || (ONLY === undefined ? !OPT_IN.has(name) : ONLY.has(name));
}

/** A pgbench run of the configured size against `c`. */
function pgbenchRun(workload: string, c: Contender, seconds = SECONDS): Promise<{ rate: number; ops: number }> {
  return pgbench(c, { workload, seconds, clients: CLIENTS, jobs: JOBS });
}

/**
 * PgBouncer in session mode, the C pooler users know. It refuses to run as
 * root, so its directory is owned by `postgres` and it runs as that user.
 * The userlist holds the plain password so it can answer SCRAM on both sides.
 */
async function startPgbouncer(pg: PgServer): Promise<{ daemon: Daemon; cleanup: () => Promise<void> }> {
  const bin = which('pgbouncer');
  if (!bin) throw Object.assign(new Error('pgbouncer not installed (Debian package pgbouncer)'), { skip: true });
  const ids = await userIds('postgres');
  const dir = await mkdtemp(join(tmpdir(), 'sluice-bench-pgbouncer-'));
  await chown(dir, ids.uid, ids.gid);
  const port = await freePort();
  const ini = join(dir, 'pgbouncer.ini');
  const userlist = join(dir, 'userlist.txt');
  await writeFile(userlist, `"${pg.user}" "${pg.password}"\n`, { mode: 0o600 });
  await writeFile(
    ini,
    [
      '[databases]',
      `${pg.database} = host=127.0.0.1 port=${pg.port} dbname=${pg.database}`,
      '[pgbouncer]',
      'listen_addr = 127.0.0.1',
      `listen_port = ${port}`,
      'unix_socket_dir =',
      'auth_type = scram-sha-256',
      `auth_file = ${userlist}`,
      'pool_mode = session',
      'max_client_conn = 500',
      'default_pool_size = 50',
      'server_tls_sslmode = disable',
      // One log line per connection would put the logger into the -C numbers.
      'log_connections = 0',
      'log_disconnections = 0',
      'stats_period = 3600',
      '',
    ].join('\n'),
  );
  await chown(ini, ids.uid, ids.gid);
  await chown(userlist, ids.uid, ids.gid);
  const daemon = await startDaemon('pgbouncer', bin, [ini], port, { uid: ids.uid, gid: ids.gid, cwd: dir });
  return {
    daemon,
    cleanup: async () => {
      await daemon.stop();
      await rm(dir, { recursive: true, force: true });
    },
  };
}

async function main(): Promise<void> {
  if (!postgresAvailable()) {
    process.stderr.write(`bench:pg: PostgreSQL server binaries not found under ${PG_BIN}; nothing to measure\n`);
    process.exitCode = 1;
    return;
  }
  const workloads = envWorkloads('BENCH_PG_WORKLOADS', Object.keys(PG_WORKLOADS));
  const machine = await describeMachine({
    postgresql: [`${PG_BIN}/postgres`],
    pgbench: [PGBENCH],
    pgbouncer: ['pgbouncer', ['--version']],
  });
  const idleBefore = await backgroundBusy();
  process.stdout.write(`bench:pg\n${machineText(machine)}\n`);
  process.stdout.write(`settings: ${SECONDS}s per run, ${ROUNDS} rounds after a ${WARMUP_SECONDS}s warm-up, scale ${SCALE}, ${CLIENTS} clients, ${JOBS} threads\n`);
  process.stdout.write(`background: machine ${Math.round(idleBefore * 100)}% busy before the bench started (other processes)\n\n`);

  const cleanups: Array<() => Promise<void>> = [];
  const contenders: Contender[] = [];
  const absent: Absent[] = [];
  try {
    const pg = await startPostgres({ auth: 'scram-sha-256' });
    cleanups.push(() => pg.stop());
    process.stderr.write(`postgres on 127.0.0.1:${pg.port}; pgbench -i -s ${SCALE} ...\n`);
    await initPgbench(pg, SCALE);

    const direct: Contender = { name: 'direct', port: pg.port, pid: undefined, secret: pg.password, user: pg.user };
    // Each contender is started independently: one that fails is reported, not fatal.
    const candidates: Array<[string, () => Promise<Contender>]> = [
      ['direct', async () => direct],
      ['relay', async () => {
        const relay = await startRelay('127.0.0.1', pg.port);
        cleanups.push(() => relay.stop());
        return { ...direct, name: 'relay', port: relay.port, pid: relay.pid };
      }],
      ['pgbouncer', async () => {
        const { daemon, cleanup } = await startPgbouncer(pg);
        cleanups.push(cleanup);
        return { ...direct, name: 'pgbouncer', port: daemon.port, pid: daemon.pid };
      }],
      ['sluice', async () => {
        const s = await startSluice({ protocol: 'postgres', upstreamPort: pg.port, database: pg.database, user: pg.user, password: pg.password });
        cleanups.push(() => s.stop());
        // The startup `user` is only a label for Sluice; identity comes from the token.
        return { name: 'sluice', port: s.daemon.port, pid: s.daemon.pid, secret: s.token, user: 'bench' };
      }],
      ['sluice+policy', async () => {
        const s = await startSluice({ protocol: 'postgres', upstreamPort: pg.port, database: pg.database, user: pg.user, password: pg.password }, { policy: true });
        cleanups.push(() => s.stop());
        // The startup `user` is only a label for Sluice; identity comes from the token.
        return { name: 'sluice+policy', port: s.daemon.port, pid: s.daemon.pid, secret: s.token, user: 'bench' };
      }],
      ['sluice+recording', async () => {
        const s = await startSluice({ protocol: 'postgres', upstreamPort: pg.port, database: pg.database, user: pg.user, password: pg.password }, { recording: true });
        cleanups.push(() => s.stop());
        return { name: 'sluice+recording', port: s.daemon.port, pid: s.daemon.pid, secret: s.token, user: 'bench' };
      }],
      // What the fsync at each recording's close costs (recording.fsync: off), mostly under -C.
      ['sluice+recording-nofsync', async () => {
        const s = await startSluice({ protocol: 'postgres', upstreamPort: pg.port, database: pg.database, user: pg.user, password: pg.password }, { recording: true, recordingFsync: 'off' });
        cleanups.push(() => s.stop());
        return { name: 'sluice+recording-nofsync', port: s.daemon.port, pid: s.daemon.pid, secret: s.token, user: 'bench' };
      }],
      ...baselineCandidates({ protocol: 'postgres', upstreamPort: pg.port, database: pg.database, user: pg.user, password: pg.password }, cleanups),
    ];
    for (const [name, start] of candidates) {
      if (!wanted(name)) continue;
      try {
        const c = await start();
        await preflight(c, SCALE);
        contenders.push(c);
      } catch (err) {
        const skip = (err as { skip?: boolean }).skip === true;
        absent.push({ name, state: skip ? 'skipped' : 'failed', reason: (err as Error).message.split('\n')[0] ?? String(err) });
        process.stderr.write(`${name}: ${skip ? 'skipped' : 'FAILED'}: ${(err as Error).message}\n`);
      }
    }

    const warmUp = WARMUP_SECONDS > 0 ? (w: string, c: Contender) => pgbenchRun(w, c, WARMUP_SECONDS) : undefined;
    const cells = await runRounds(workloads, contenders, ROUNDS, pgbenchRun, warmUp);
    const report: ReportInput = {
      title: `pgbench -S, ${CLIENTS} clients`,
      rateUnit: 'TPS',
      opName: 'transaction',
      workloads,
      contenders: contenders.map((c) => c.name),
      absent,
      cells,
      ratios: [['sluice', 'relay'], ['sluice+policy', 'relay'], ['sluice+recording', 'relay'], ['sluice+policy', 'sluice'], ['sluice+recording', 'sluice'], ['sluice+recording-nofsync', 'sluice'], ['sluice', 'baseline'], ['sluice+recording', 'baseline+recording'], ['sluice+policy', 'baseline+policy'], ['sluice', 'direct'], ['sluice', 'pgbouncer'], ['relay', 'direct'], ['pgbouncer', 'direct']],
      rounds: ROUNDS,
    };
    const tables = buildTables(report);
    const idleAfter = await backgroundBusy();
    process.stdout.write(`\n${tablesText(tables)}`);
    process.stdout.write(`background: machine ${Math.round(idleAfter * 100)}% busy after the bench (contenders idle)\n`);
    const stamp = timestamp();
    const settings = { seconds: SECONDS, rounds: ROUNDS, warmUpSeconds: WARMUP_SECONDS, scale: SCALE, clients: CLIENTS, jobs: JOBS };
    const background = { before: idleBefore, after: idleAfter };
    const json = writeWorkFile('pg', 'json', stamp, `${JSON.stringify({ machine, settings, background, report }, null, 2)}\n`);
    const md = writeWorkFile('pg', 'md', stamp, `${machineText(machine)}\n\n${tablesMarkdown(tables)}`);
    process.stdout.write(`\nraw results: ${json}\nmarkdown:    ${md}\n`);
  } finally {
    for (const c of cleanups.reverse()) await c().catch(() => {});
  }
}

main().catch((err: unknown) => {
  process.stderr.write(`bench:pg failed: ${(err as Error).stack ?? String(err)}\n`);
  process.exitCode = 1;
});

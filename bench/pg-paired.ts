/**
 * bench:pg-paired: two gateways in front of one PostgreSQL, measured over
 * the same seconds, by CPU per transaction.
 *
 * bench:pg runs contenders one after another, and on the shared 2-core
 * hosts of bench/RESULTS.md its rounds move by more than the 5% recording
 * may cost (issue 6): recording came out anywhere from 0.70x to 1.20x of
 * plain Sluice in single rounds. Here, as in bench:redis-paired, a pair
 * of gateways runs at once, each behind its own pgbench, and each
 * gateway's CPU (its threads in /proc) is divided by the transactions its
 * pgbench counted over the same run: drift of the host moves both alike.
 *
 * Unlike redis-server, PostgreSQL does not pace the two sides alike: each
 * pgbench client waits for its own gateway, and unthrottled the two sides
 * of a pair came out up to 1.6x apart in transactions, in either
 * direction, and a gateway doing more per second spends less per
 * transaction (fewer wake-ups each), which two identical gateways showed
 * as 0.94x. So each window starts with both sides unthrottled (not
 * measured), and the measured run throttles both pgbench to the same
 * rate (`pgbench -R`), a share (BENCH_PG_RATE_SHARE, 0.85) of the slower
 * side's: both gateways then carry the same load, and their CPU per
 * transaction is compared at it.
 *
 * Pairs: `sluice+recording` against `sluice`, and `sluice (twin)` against
 * `sluice` (A/A: the bench's resolution). With BENCH_BASELINE, the
 * baseline pairs of bench:redis-paired too. The rounds and tables:
 * bench/lib/paired.ts.
 *
 * Env: BENCH_ROUNDS (6), BENCH_PAIRED_SECONDS (pgbench -T of the measured
 * run, 10), BENCH_PAIRED_WARMUP_SECONDS (the unthrottled run of both just
 * before it, 3), BENCH_PG_RATE_SHARE (0.85), BENCH_PG_SCALE (10), BENCH_PG_CLIENTS (8 per pgbench),
 * BENCH_PG_JOBS (2), BENCH_PG_WORKLOADS (`select simple,select
 * prepared,connect -C simple`), BENCH_BASELINE, BENCH_PAIRS.
 */
import { postgresAvailable, startPostgres } from '../test/helpers/postgres.js';
import { PG_BIN } from '../test/helpers/process.js';
import { envInt, envWorkloads, type Contender } from './lib/harness.js';
import { describeMachine } from './lib/machine.js';
import { setTimeout as sleep } from 'node:timers/promises';
import { cpuSince, markCpu, pairedGateways, runPaired, type Side, type WindowResult } from './lib/paired.js';
import { PGBENCH, PG_WORKLOADS, initPgbench, pgbench, preflight } from './lib/pgbench.js';

const ROUNDS = envInt('BENCH_ROUNDS', 6);
const WINDOW_SECONDS = envInt('BENCH_PAIRED_SECONDS', 10);
const WARMUP_SECONDS = envInt('BENCH_PAIRED_WARMUP_SECONDS', 3);
const SCALE = envInt('BENCH_PG_SCALE', 10);
const CLIENTS = envInt('BENCH_PG_CLIENTS', 8);
const JOBS = envInt('BENCH_PG_JOBS', 2);
const RATE_SHARE = process.env.BENCH_PG_RATE_SHARE ? Number(process.env.BENCH_PG_RATE_SHARE) : 0.85;
/**
 * Before each CPU reading: the sessions of the pgbench that just ended
 * close (their recordings' last batches included), so that neither side is
 * charged with the other run's teardown, or spared its own.
 */
const SETTLE_MS = 300;

/**
 * Both gateways under the workload at once: an unthrottled run that finds
 * the rate the slower side manages, then the measured run, both sides
 * throttled to a share of it; work = transactions.
 */
async function window(pair: [Contender, Contender], workload: string): Promise<WindowResult> {
  const run = (g: Contender, seconds: number, rate?: number) => pgbench(g, { workload, seconds, clients: CLIENTS, jobs: JOBS, rate });
  const free = await Promise.all(pair.map((g) => run(g, WARMUP_SECONDS)));
  const rate = Math.max(1, Math.floor(RATE_SHARE * Math.min(...free.map((f) => f.rate))));
  await sleep(SETTLE_MS);
  const marks = pair.map(markCpu);
  const done = await Promise.all(pair.map((g) => run(g, WINDOW_SECONDS, rate)));
  // Read once both have finished and settled: the one that finished first was idle since, which costs it nothing.
  await sleep(SETTLE_MS);
  const sides = pair.map((g, i) => ({ work: done[i]!.ops, ...cpuSince(g, marks[i]!) })) as [Side, Side];
  return { sides, detail: `both at ${rate} tx/s (unthrottled ${free.map((f) => Math.round(f.rate)).join(' and ')}); ${done.map((d) => d.ops).join(' and ')} transactions` };
}

async function main(): Promise<void> {
  if (!(RATE_SHARE >= 0.1 && RATE_SHARE <= 1)) throw new Error('BENCH_PG_RATE_SHARE must be a number from 0.1 to 1');
  if (!postgresAvailable()) {
    process.stderr.write(`bench:pg-paired: PostgreSQL server binaries not found under ${PG_BIN}; nothing to measure\n`);
    process.exitCode = 1;
    return;
  }
  const cleanups: Array<() => Promise<void>> = [];
  try {
    const pg = await startPostgres({ auth: 'scram-sha-256' });
    cleanups.push(() => pg.stop());
    process.stderr.write(`postgres on 127.0.0.1:${pg.port}; pgbench -i -s ${SCALE} ...\n`);
    await initPgbench(pg, SCALE);
    const target = { protocol: 'postgres' as const, upstreamPort: pg.port, database: pg.database, user: pg.user, password: pg.password };
    const checked = (start: () => Promise<Contender>) => async (): Promise<Contender> => {
      const c = await start();
      await preflight(c, SCALE);
      return c;
    };
    await runPaired({
      name: 'bench:pg-paired',
      machine: await describeMachine({ postgresql: [`${PG_BIN}/postgres`], pgbench: [PGBENCH] }),
      settings: { rounds: ROUNDS, 'pgbench -T (s)': WINDOW_SECONDS, 'unthrottled run before it (s)': WARMUP_SECONDS, 'measured rate, share of the slower side': RATE_SHARE, scale: SCALE, 'clients per pgbench': CLIENTS, 'threads per pgbench': JOBS },
      workloads: envWorkloads('BENCH_PG_WORKLOADS', Object.keys(PG_WORKLOADS)),
      rounds: ROUNDS,
      starters: new Map(pairedGateways(target, cleanups).map(([n, start]) => [n, checked(start)])),
      window,
      workName: 'transactions',
      workNote: 'as each pgbench counted them, both throttled to one rate (pgbench -R)',
    });
  } finally {
    for (const c of cleanups.reverse()) await c().catch(() => {});
  }
}

main().catch((err: unknown) => {
  process.stderr.write(`bench:pg-paired failed: ${(err as Error).stack ?? String(err)}\n`);
  process.exitCode = 1;
});

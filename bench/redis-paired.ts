/**
 * bench:redis-paired: two gateways measured over the same seconds, by CPU.
 *
 * bench:redis runs contenders one after another, so whatever else the
 * host does moves one contender's run and not the other's: on the shared
 * 2-core hosts of bench/RESULTS.md, two identical gateways came out up to
 * 1.10x apart that way, twice the 5% that recording may cost (issue 6).
 * Here a pair of gateways runs at once, each behind its own
 * redis-benchmark, in front of one redis-server, and both are read over
 * one window: drift of the host moves both alike.
 *
 * What is compared is each gateway's CPU per request over the window
 * (its threads' CPU in /proc, as in bench:redis), the first of the pair
 * over the second. The requests are counted by the bytes each
 * redis-benchmark wrote (`wchar` in /proc/<pid>/io; every request of a
 * workload has the same size). Throughputs are not compared: the one
 * redis-server serves every connection that is ready once per turn of its
 * loop, so the two sides of a pair run at the same pace (measured: equal
 * to 0.3% in every window), and the gateway that costs more shows it as CPU. Where the
 * gateway's event loop is what limits throughput, as in bench:redis
 * (0.8-0.9 of a core there), its event-loop CPU per request is the
 * throughput's cost; the recording thread runs on the other core.
 *
 * Pairs: `sluice+recording` against `sluice`, and `sluice (twin)` against
 * `sluice`, two identical gateways (A/A): how far they come out apart is
 * the bench's resolution, printed beside the ratios that matter. With
 * BENCH_BASELINE, also `sluice` against `baseline` and `sluice+recording`
 * against `baseline+recording` (that build, same configuration), and
 * `baseline+recording` against `sluice` (what that build's recording costs).
 *
 * The rounds, the pairs and the tables: bench/lib/paired.ts.
 *
 * Env: BENCH_ROUNDS (6; even rounds take the pairs in the other order),
 * BENCH_PAIRED_SECONDS (window, 10), BENCH_PAIRED_WARMUP_SECONDS (load
 * before each window, 3), BENCH_REDIS_CLIENTS (50 per redis-benchmark),
 * BENCH_REDIS_WORKLOADS (`SET -P 1,GET -P 1,SET -P 16,GET -P 16`),
 * BENCH_BASELINE, BENCH_PAIRS (e.g. `sluice/baseline,sluice (twin)/sluice`).
 */
import { spawn, type ChildProcess } from 'node:child_process';
import { readFileSync } from 'node:fs';
import { setTimeout as sleep } from 'node:timers/promises';
import { startRedis } from '../test/helpers/redis.js';
import { envInt, envWorkloads, type Contender } from './lib/harness.js';
import { describeMachine } from './lib/machine.js';
import { cpuSince, markCpu, pairedGateways, runPaired, type Side } from './lib/paired.js';
import { which } from './lib/spawn.js';

const ROUNDS = envInt('BENCH_ROUNDS', 6);
const WINDOW_SECONDS = envInt('BENCH_PAIRED_SECONDS', 10);
const WARMUP_SECONDS = envInt('BENCH_PAIRED_WARMUP_SECONDS', 3);
const CLIENTS = envInt('BENCH_REDIS_CLIENTS', 50);

const WORKLOADS: Record<string, { command: 'set' | 'get'; pipeline: number }> = {
  'SET -P 1': { command: 'set', pipeline: 1 },
  'GET -P 1': { command: 'get', pipeline: 1 },
  'SET -P 16': { command: 'set', pipeline: 16 },
  'GET -P 16': { command: 'get', pipeline: 16 },
};

/** Bytes `pid` has handed to write(2) and its kin so far. */
function bytesWritten(pid: number): number {
  const m = /^wchar: (\d+)$/m.exec(readFileSync(`/proc/${pid}/io`, 'utf8'));
  if (!m) throw new Error(`process ${pid}: no wchar in /proc/${pid}/io`);
  return Number(m[1]);
}

/** redis-benchmark against `g` for far longer than any window; stopped once the window is read. */
function loadOn(g: Contender, workload: string): ChildProcess {
  const w = WORKLOADS[workload];
  if (!w) throw new Error(`unknown workload ${workload}`);
  const args = ['-h', '127.0.0.1', '-p', String(g.port), '-a', g.secret, '-c', String(CLIENTS),
    '-n', '2000000000', '-P', String(w.pipeline), '-t', w.command, '-q'];
  return spawn('redis-benchmark', args, { stdio: ['ignore', 'ignore', 'pipe'] });
}

/** One window: both gateways under load at once; work = the bytes each redis-benchmark wrote. */
async function window(pair: [Contender, Contender], workload: string): Promise<[Side, Side]> {
  const loads = pair.map((g) => loadOn(g, workload));
  let failed: Error | undefined;
  for (const l of loads) {
    let err = '';
    l.stderr!.on('data', (d: Buffer) => (err += d.toString()));
    l.on('exit', (code, signal) => {
      if (signal !== 'SIGTERM') failed ??= new Error(`redis-benchmark ended early (${code ?? signal}): ${err.trim().slice(0, 200)}`);
    });
  }
  try {
    await sleep(WARMUP_SECONDS * 1000);
    const a = pair.map((g, i) => ({ bytes: bytesWritten(loads[i]!.pid!), cpu: markCpu(g) }));
    await sleep(WINDOW_SECONDS * 1000);
    const sides = pair.map((g, i) => ({ work: bytesWritten(loads[i]!.pid!) - a[i]!.bytes, ...cpuSince(g, a[i]!.cpu) }));
    if (failed) throw failed;
    return sides as [Side, Side];
  } finally {
    for (const l of loads) l.kill('SIGTERM');
    await Promise.all(loads.map((l) => (l.exitCode !== null || l.signalCode !== null ? undefined : new Promise((r) => l.once('exit', r)))));
  }
}

async function main(): Promise<void> {
  if (!which('redis-server') || !which('redis-benchmark')) {
    process.stderr.write('bench:redis-paired: redis-server or redis-benchmark not on PATH; nothing to measure\n');
    process.exitCode = 1;
    return;
  }
  const cleanups: Array<() => Promise<void>> = [];
  try {
    const redis = await startRedis();
    cleanups.push(() => redis.stop());
    const target = { protocol: 'redis' as const, upstreamPort: redis.port, user: 'default', password: redis.password };
    await runPaired({
      name: 'bench:redis-paired',
      machine: await describeMachine({ 'redis-server': ['redis-server', ['--version']], 'redis-benchmark': ['redis-benchmark', ['--version']] }),
      settings: { rounds: ROUNDS, 'window (s)': WINDOW_SECONDS, 'load before it (s)': WARMUP_SECONDS, 'clients per redis-benchmark': CLIENTS },
      workloads: envWorkloads('BENCH_REDIS_WORKLOADS', Object.keys(WORKLOADS)),
      rounds: ROUNDS,
      starters: new Map(pairedGateways(target, cleanups)),
      window,
      workName: 'requests',
      workNote: 'bytes each redis-benchmark wrote (/proc/<pid>/io wchar); one redis-server paces both sides alike',
    });
  } finally {
    for (const c of cleanups.reverse()) await c().catch(() => {});
  }
}

main().catch((err: unknown) => {
  process.stderr.write(`bench:redis-paired failed: ${(err as Error).stack ?? String(err)}\n`);
  process.exitCode = 1;
});

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
 * to 0.1%), and the gateway that costs more shows it as CPU. Where the
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
import { readThreads, threadCpuBetween, type ThreadReading } from './lib/cpu.js';
import { envInt, envWorkloads, timestamp, writeWorkFile, type Contender } from './lib/harness.js';
import { describeMachine, machineText } from './lib/machine.js';
import { baselineCandidates, startSluice } from './lib/sluice.js';
import { which } from './lib/spawn.js';
import { fmtFixed, median, renderMarkdown, renderText, type Table } from './lib/table.js';

const ROUNDS = envInt('BENCH_ROUNDS', 6);
const WINDOW_SECONDS = envInt('BENCH_PAIRED_SECONDS', 10);
const WARMUP_SECONDS = envInt('BENCH_PAIRED_WARMUP_SECONDS', 3);
const CLIENTS = envInt('BENCH_REDIS_CLIENTS', 50);
/** BENCH_PAIRS: a comma list of pairs to run, each `first/second` as in PAIRS (all by default). */
const ONLY = process.env.BENCH_PAIRS ? new Set(process.env.BENCH_PAIRS.split(',').map((p) => p.trim())) : undefined;

const WORKLOADS: Record<string, { command: 'set' | 'get'; pipeline: number }> = {
  'SET -P 1': { command: 'set', pipeline: 1 },
  'GET -P 1': { command: 'get', pipeline: 1 },
  'SET -P 16': { command: 'set', pipeline: 16 },
  'GET -P 16': { command: 'get', pipeline: 16 },
};

/** The first gateway of a pair is measured against the second. */
const PAIRS: Array<[string, string]> = [
  ['sluice+recording', 'sluice'],
  ['sluice (twin)', 'sluice'],
  ['sluice', 'baseline'],
  ['sluice+recording', 'baseline+recording'],
  // That build recording, against this one plain: what a change to the record path leaves of its cost.
  ['baseline+recording', 'sluice'],
];

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

/** What one side of a pair did during a window. */
interface Side {
  /** Bytes of requests its redis-benchmark wrote. */
  bytes: number;
  /** CPU seconds: the main thread, and the threads below its priority (the recording thread). */
  eventLoop: number;
  recordingThread: number;
}

/** One window: both gateways under load at once. */
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
    const read = (): Array<{ bytes: number; cpu: ThreadReading }> =>
      pair.map((g, i) => ({ bytes: bytesWritten(loads[i]!.pid!), cpu: readThreads(g.pid!) }));
    const a = read();
    await sleep(WINDOW_SECONDS * 1000);
    const b = read();
    if (failed) throw failed;
    return pair.map((g, i) => {
      const t = threadCpuBetween(g.pid!, a[i]!.cpu, b[i]!.cpu);
      return { bytes: b[i]!.bytes - a[i]!.bytes, eventLoop: t.eventLoop, recordingThread: t.lowPriority };
    }) as [Side, Side];
  } finally {
    for (const l of loads) l.kill('SIGTERM');
    await Promise.all(loads.map((l) => (l.exitCode !== null || l.signalCode !== null ? undefined : new Promise((r) => l.once('exit', r)))));
  }
}

/** Per pair and workload, the rounds' ratios. */
interface PairResult {
  label: string;
  workload: string;
  /** Requests done, first over second (about 1: see the top of this file). */
  requests: number[];
  /** Event-loop CPU per request, first over second. */
  eventLoop: number[];
  /** Event loop and recording thread together, per request, first over second. */
  total: number[];
}

async function main(): Promise<void> {
  if (!which('redis-server') || !which('redis-benchmark')) {
    process.stderr.write('bench:redis-paired: redis-server or redis-benchmark not on PATH; nothing to measure\n');
    process.exitCode = 1;
    return;
  }
  const workloads = envWorkloads('BENCH_REDIS_WORKLOADS', Object.keys(WORKLOADS));
  const machine = await describeMachine({ 'redis-server': ['redis-server', ['--version']], 'redis-benchmark': ['redis-benchmark', ['--version']] });
  process.stdout.write(`bench:redis-paired\n${machineText(machine)}\n`);
  process.stdout.write(`settings: ${ROUNDS} rounds, windows of ${WINDOW_SECONDS} s after ${WARMUP_SECONDS} s of load, ${CLIENTS} clients per redis-benchmark\n\n`);

  const cleanups: Array<() => Promise<void>> = [];
  try {
    const redis = await startRedis();
    cleanups.push(() => redis.stop());
    const target = { protocol: 'redis' as const, upstreamPort: redis.port, user: 'default', password: redis.password };
    const own = (name: string, recording: boolean) => async (): Promise<Contender> => {
      const s = await startSluice(target, { recording });
      cleanups.push(() => s.stop());
      return { name, port: s.daemon.port, pid: s.daemon.pid, secret: s.token, user: 'bench' };
    };
    const starters = new Map<string, () => Promise<Contender>>([
      ['sluice', own('sluice', false)],
      ['sluice (twin)', own('sluice (twin)', false)],
      ['sluice+recording', own('sluice+recording', true)],
      ...baselineCandidates(target, cleanups),
    ]);
    const gateways = new Map<string, Contender>();
    const pairs: Array<[Contender, Contender]> = [];
    for (const names of PAIRS) {
      if (!names.every((n) => starters.has(n)) || (ONLY !== undefined && !ONLY.has(`${names[0]}/${names[1]}`))) continue;
      for (const n of names) if (!gateways.has(n)) gateways.set(n, await starters.get(n)!());
      pairs.push([gateways.get(names[0])!, gateways.get(names[1])!]);
    }

    const results: PairResult[] = [];
    for (const workload of workloads) {
      for (const [a, b] of pairs) results.push({ label: `${a.name} / ${b.name}`, workload, requests: [], eventLoop: [], total: [] });
    }
    for (let round = 1; round <= ROUNDS; round++) {
      for (const [w, workload] of workloads.entries()) {
        const order = pairs.map((_, i) => (round % 2 === 1 ? i : pairs.length - 1 - i));
        for (const p of order) {
          const pair = pairs[p]!;
          const [a, b] = await window(pair, workload);
          const r = results[w * pairs.length + p]!;
          const perByte = (s: Side, cpu: number): number => cpu / s.bytes;
          r.requests.push(a.bytes / b.bytes);
          r.eventLoop.push(perByte(a, a.eventLoop) / perByte(b, b.eventLoop));
          r.total.push(perByte(a, a.eventLoop + a.recordingThread) / perByte(b, b.eventLoop + b.recordingThread));
          process.stdout.write(
            `  round ${round}/${ROUNDS}  ${workload.padEnd(10)} ${r.label.padEnd(40)} CPU per request: event loop ${r.eventLoop.at(-1)!.toFixed(3)}x, ` +
              `with the recording thread ${r.total.at(-1)!.toFixed(3)}x; requests ${r.requests.at(-1)!.toFixed(3)}x\n`,
          );
        }
      }
    }

    const cell = (xs: number[]): string => `${fmtFixed(median(xs), 3)}x (${Math.min(...xs).toFixed(2)}-${Math.max(...xs).toFixed(2)})`;
    const labels = [...new Set(results.map((r) => r.label))];
    const table = (title: string, pick: (r: PairResult) => number[], notes: string[]): Table => ({
      title,
      header: ['pair', ...workloads],
      rows: labels.map((l) => [l, ...workloads.map((w) => cell(pick(results.find((r) => r.label === l && r.workload === w)!)))]),
      notes,
    });
    const tables = [
      table(`gateway event-loop CPU per request, ratio (median of ${ROUNDS} rounds; lowest-highest round)`, (r) => r.eventLoop, [
        'the main thread, over the same window as the other gateway of the pair; A/A is the resolution',
      ]),
      table(`gateway CPU per request with the recording thread, ratio (median of ${ROUNDS} rounds; lowest-highest round)`, (r) => r.total, [
        'the main thread and the threads below its priority (the recording thread)',
      ]),
      table(`requests done in the same window, ratio (median of ${ROUNDS} rounds; lowest-highest round)`, (r) => r.requests, [
        'bytes each redis-benchmark wrote (/proc/<pid>/io wchar); one redis-server paces both sides alike',
      ]),
    ];
    process.stdout.write(`\n${tables.map(renderText).join('\n')}`);
    const stamp = timestamp();
    const settings = { rounds: ROUNDS, windowSeconds: WINDOW_SECONDS, warmUpSeconds: WARMUP_SECONDS, clients: CLIENTS };
    const json = writeWorkFile('redis-paired', 'json', stamp, `${JSON.stringify({ machine, settings, results }, null, 2)}\n`);
    const md = writeWorkFile('redis-paired', 'md', stamp, `${machineText(machine)}\n\n${tables.map(renderMarkdown).join('\n')}`);
    process.stdout.write(`\nraw results: ${json}\nmarkdown:    ${md}\n`);
  } finally {
    for (const c of cleanups.reverse()) await c().catch(() => {});
  }
}

main().catch((err: unknown) => {
  process.stderr.write(`bench:redis-paired failed: ${(err as Error).stack ?? String(err)}\n`);
  process.exitCode = 1;
});

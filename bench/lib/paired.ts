/**
 * The measuring loop shared by bench:redis-paired and bench:pg-paired: two
 * gateways under load at the same time, compared by CPU per operation
 * over the same window, so that whatever else the host does moves both
 * alike (bench/README.md).
 *
 * A bench supplies the gateways (by name), the pairs it can make of them,
 * and `window`: one run of a workload against both gateways of a pair at
 * once, returning what each did. This module picks the pairs
 * (BENCH_PAIRS), runs the rounds (even rounds take the pairs in the other
 * order), prints every window's ratios as it goes, and prints and saves
 * the tables: per pair, the medians of the rounds' ratios with the lowest
 * and highest round.
 */
import { readThreads, threadCpuBetween, type ThreadReading } from './cpu.js';
import { timestamp, writeWorkFile, type Contender } from './harness.js';
import { machineText, type Machine } from './machine.js';
import { baselineCandidates, startSluice, type SluiceTarget } from './sluice.js';
import { fmtFixed, median, renderMarkdown, renderText, type Table } from './table.js';

/** What one gateway of a pair did during a window. */
export interface Side {
  /** Operations done, or a count proportional to them (the same unit on both sides). */
  work: number;
  /** CPU seconds: the main thread, and the threads below its priority (the recording thread). */
  eventLoop: number;
  recordingThread: number;
}

/** What `window` returns: both sides, and what else the round line should say (the rate pgbench was held to, say). */
export type WindowResult = [Side, Side] | { sides: [Side, Side]; detail: string };

/** The pairs both benches make; the first gateway of each is measured against the second. */
export const GATEWAY_PAIRS: Array<[string, string]> = [
  ['sluice+recording', 'sluice'],
  // A/A: two identical gateways; how far apart they come out is the bench's resolution.
  ['sluice (twin)', 'sluice'],
  // With BENCH_BASELINE: this build against that one, plain and recording.
  ['sluice', 'baseline'],
  ['sluice+recording', 'baseline+recording'],
  // That build recording, against this one plain: what a change to the record path leaves of its cost.
  ['baseline+recording', 'sluice'],
];

/** How to start each gateway GATEWAY_PAIRS names (the baseline ones only with BENCH_BASELINE). */
export function pairedGateways(target: SluiceTarget, cleanups: Array<() => Promise<void>>): Array<[string, () => Promise<Contender>]> {
  const own = (name: string, recording: boolean) => async (): Promise<Contender> => {
    const s = await startSluice(target, { recording });
    cleanups.push(() => s.stop());
    // The user name the client sends is only a label for Sluice; identity comes from the token.
    return { name, port: s.daemon.port, pid: s.daemon.pid, secret: s.token, user: 'bench' };
  };
  return [
    ['sluice', own('sluice', false)],
    ['sluice (twin)', own('sluice (twin)', false)],
    ['sluice+recording', own('sluice+recording', true)],
    ...baselineCandidates(target, cleanups),
  ];
}

/** A gateway's CPU reading at the start of a window. */
export type CpuMark = ThreadReading;

export function markCpu(g: Contender): CpuMark {
  return readThreads(g.pid!);
}

/** The gateway's CPU since `mark`, by thread group. */
export function cpuSince(g: Contender, mark: CpuMark): { eventLoop: number; recordingThread: number } {
  const t = threadCpuBetween(g.pid!, mark, readThreads(g.pid!));
  return { eventLoop: t.eventLoop, recordingThread: t.lowPriority };
}

/** Per pair and workload, the rounds' ratios, first over second. */
export interface PairResult {
  label: string;
  workload: string;
  /** Operations done (see each bench for how close to 1 this is by construction). */
  work: number[];
  /** Event-loop CPU per operation. */
  eventLoop: number[];
  /** Event loop and recording thread together, per operation. */
  total: number[];
}

export interface PairedBench {
  /** `bench:redis-paired`, for the printout and the work files' names. */
  name: string;
  machine: Machine;
  /** Printed under the machine: the run's settings. */
  settings: Record<string, number | string>;
  workloads: string[];
  rounds: number;
  /** Starts a gateway by name (pairedGateways); a pair with one missing is left out (no BENCH_BASELINE, say). */
  starters: Map<string, () => Promise<Contender>>;
  /** One window: both gateways of the pair under the workload at once. */
  window(pair: [Contender, Contender], workload: string): Promise<WindowResult>;
  /** What `work` counts, for the third table: e.g. `requests`. */
  workName: string;
  /** How `work` was counted, printed under its table. */
  workNote: string;
}

/** BENCH_PAIRS: a comma list of pairs to run, each `first/second` as in GATEWAY_PAIRS (all by default). */
function chosen(): Set<string> | undefined {
  const v = process.env.BENCH_PAIRS;
  if (!v) return undefined;
  const names = new Set(v.split(',').map((p) => p.trim()));
  const known = new Set(GATEWAY_PAIRS.map((p) => p.join('/')));
  const unknown = [...names].filter((n) => !known.has(n));
  if (unknown.length > 0) throw new Error(`BENCH_PAIRS: no such pair ${unknown.map((n) => JSON.stringify(n)).join(', ')} (the pairs: ${[...known].join(', ')})`);
  return names;
}

/** One window of a round as measured: for the raw results. */
interface WindowRecord {
  round: number;
  workload: string;
  pair: string;
  first: Side;
  second: Side;
  detail?: string;
}

export async function runPaired(b: PairedBench): Promise<PairResult[]> {
  process.stdout.write(`${b.name}\n${machineText(b.machine)}\n`);
  process.stdout.write(`settings: ${Object.entries(b.settings).map(([k, v]) => `${k} ${v}`).join(', ')}\n\n`);
  const only = chosen();
  const gateways = new Map<string, Contender>();
  const pairs: Array<[Contender, Contender]> = [];
  for (const names of GATEWAY_PAIRS) {
    const name = `${names[0]}/${names[1]}`;
    if (only !== undefined && !only.has(name)) continue;
    if (!names.every((n) => b.starters.has(n))) {
      // Named, but this run has no such gateway (the baseline ones without BENCH_BASELINE).
      if (only !== undefined) process.stderr.write(`${b.name}: pair ${name} left out: it needs BENCH_BASELINE\n`);
      continue;
    }
    for (const n of names) if (!gateways.has(n)) gateways.set(n, await b.starters.get(n)!());
    pairs.push([gateways.get(names[0])!, gateways.get(names[1])!]);
  }
  if (pairs.length === 0) throw new Error('no pair to run (see above)');

  const results: PairResult[] = [];
  for (const workload of b.workloads) {
    for (const [x, y] of pairs) results.push({ label: `${x.name} / ${y.name}`, workload, work: [], eventLoop: [], total: [] });
  }
  const windows: WindowRecord[] = [];
  for (let round = 1; round <= b.rounds; round++) {
    for (const [w, workload] of b.workloads.entries()) {
      const order = pairs.map((_, i) => (round % 2 === 1 ? i : pairs.length - 1 - i));
      for (const p of order) {
        const r = results[w * pairs.length + p]!;
        let measured: WindowResult;
        try {
          measured = await b.window(pairs[p]!, workload);
        } catch (err) {
          throw new Error(`round ${round}, ${workload}, ${r.label}: ${(err as Error).message}`, { cause: err });
        }
        const [x, y] = Array.isArray(measured) ? measured : measured.sides;
        const detail = Array.isArray(measured) ? undefined : measured.detail;
        windows.push({ round, workload, pair: r.label, first: x, second: y, ...(detail !== undefined ? { detail } : {}) });
        r.work.push(x.work / y.work);
        r.eventLoop.push(x.eventLoop / x.work / (y.eventLoop / y.work));
        r.total.push((x.eventLoop + x.recordingThread) / x.work / ((y.eventLoop + y.recordingThread) / y.work));
        process.stdout.write(
          `  round ${round}/${b.rounds}  ${workload.padEnd(16)} ${r.label.padEnd(40)} CPU per operation: event loop ${r.eventLoop.at(-1)!.toFixed(3)}x, ` +
            `with the recording thread ${r.total.at(-1)!.toFixed(3)}x; ${b.workName} ${r.work.at(-1)!.toFixed(3)}x${detail !== undefined ? `; ${detail}` : ''}\n`,
        );
      }
    }
  }

  const cell = (xs: number[]): string => `${fmtFixed(median(xs), 3)}x (${Math.min(...xs).toFixed(2)}-${Math.max(...xs).toFixed(2)})`;
  const labels = [...new Set(results.map((r) => r.label))];
  const table = (title: string, pick: (r: PairResult) => number[], notes: string[]): Table => ({
    title,
    header: ['pair', ...b.workloads],
    rows: labels.map((l) => [l, ...b.workloads.map((w) => cell(pick(results.find((r) => r.label === l && r.workload === w)!)))]),
    notes,
  });
  const of = `median of ${b.rounds} rounds; lowest-highest round`;
  const tables = [
    table(`gateway event-loop CPU per operation, ratio (${of})`, (r) => r.eventLoop, [
      'the main thread, over the same window as the other gateway of the pair; A/A is the resolution',
    ]),
    table(`gateway CPU per operation with the recording thread, ratio (${of})`, (r) => r.total, [
      'the main thread and the threads below its priority (the recording thread)',
    ]),
    table(`${b.workName} done in the same window, ratio (${of})`, (r) => r.work, [b.workNote]),
  ];
  process.stdout.write(`\n${tables.map(renderText).join('\n')}`);
  const stamp = timestamp();
  const file = b.name.replace(/^bench:/, '');
  const json = writeWorkFile(file, 'json', stamp, `${JSON.stringify({ machine: b.machine, settings: b.settings, results, windows }, null, 2)}\n`);
  const md = writeWorkFile(file, 'md', stamp, `${machineText(b.machine)}\n\n${tables.map(renderMarkdown).join('\n')}`);
  process.stdout.write(`\nraw results: ${json}\nmarkdown:    ${md}\n`);
  return results;
}

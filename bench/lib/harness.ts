/**
 * The measuring loop shared by bench:pg and bench:redis.
 *
 * Numbers on this kind of machine drift from minute to minute
 * (PERFORMANCE.md), so contenders are never measured in blocks: every round
 * runs every workload against every contender, and odd rounds reverse the
 * contender order so no one always runs first (on a cold cache) or last.
 * All contenders stay up for the whole run and share one database server.
 */
import { mkdirSync, writeFileSync } from 'node:fs';
import { fileURLToPath } from 'node:url';
import { machineCpu, measureCpu, type ThreadCpu } from './cpu.js';
import { mean, median } from './table.js';

/** A contender that started and answered a real request. */
export interface Contender {
  /** direct, relay, pgbouncer, twemproxy, sluice */
  name: string;
  port: number;
  /** The gateway process whose CPU is charged to the contender; undefined for direct. */
  pid: number | undefined;
  /** What the client presents: the database password, or a Sluice token. */
  secret: string;
  /** The user name the client sends (a label for Sluice). */
  user: string;
}

/** A contender that could not take part, and why (printed, not thrown). */
export interface Absent {
  name: string;
  state: 'skipped' | 'failed';
  reason: string;
}

/** One client run against one contender. */
export interface Measurement {
  /** Transactions or requests per second, as the client reported it. */
  rate: number;
  /** Operations the rate counts over the run (used for CPU per operation). */
  ops: number;
  wallSeconds: number;
  /** Gateway CPU seconds during the run; undefined for direct. */
  gatewayCpuSeconds: number | undefined;
  /** The same by thread group (bench/lib/cpu.ts); undefined for direct. */
  gatewayThreads: ThreadCpu | undefined;
  /** Fraction of all cores busy during the run. */
  machineBusy: number;
}

export interface CellResult {
  workload: string;
  contender: string;
  rounds: Measurement[];
  errors: string[];
}

export interface Summary {
  /** Median of the rounds' rates. */
  rate: number | undefined;
  /** Gateway CPU per operation in microseconds, over all rounds. */
  cpuMicrosPerOp: number | undefined;
  /** Gateway CPU as a share of one core, over all rounds. */
  gatewayCores: number | undefined;
  /** Gateway CPU per operation by thread group, microseconds, over all rounds. */
  threadMicrosPerOp: ThreadCpu | undefined;
  machineBusy: number | undefined;
}

export type RunOne = (workload: string, contender: Contender) => Promise<{ rate: number; ops: number }>;

export async function runRounds(
  workloads: string[],
  contenders: Contender[],
  rounds: number,
  runOne: RunOne,
  warmUp?: RunOne,
): Promise<CellResult[]> {
  const cells = new Map<string, CellResult>();
  for (const w of workloads) {
    for (const c of contenders) cells.set(`${w}\0${c.name}`, { workload: w, contender: c.name, rounds: [], errors: [] });
  }
  // A short unmeasured run of every workload through every contender first:
  // a gateway's first seconds include V8 compiling its hot paths (more code
  // for a contender with more features on), which a gateway that runs for
  // days pays once. Without it the first round and the CPU tables, which sum
  // all rounds, carry that start-up cost.
  if (warmUp) {
    for (const w of workloads) {
      for (const c of contenders) {
        try {
          await warmUp(w, c);
          process.stderr.write(`  warm-up      ${w.padEnd(18)} ${c.name}\n`);
        } catch (err) {
          // Not fatal: the measured rounds report a contender that cannot run.
          process.stderr.write(`  warm-up      ${w.padEnd(18)} ${c.name.padEnd(16)} FAILED: ${(err as Error).message.split('\n')[0]}\n`);
        }
      }
    }
  }
  for (let round = 0; round < rounds; round++) {
    const order = round % 2 === 0 ? contenders : [...contenders].reverse();
    for (const w of workloads) {
      for (const c of order) {
        const cell = cells.get(`${w}\0${c.name}`)!;
        const started = process.hrtime.bigint();
        try {
          const { result, cpu } = await measureCpu(c.pid, () => runOne(w, c));
          const wallSeconds = Number(process.hrtime.bigint() - started) / 1e9;
          cell.rounds.push({ ...result, wallSeconds, ...cpu });
          process.stderr.write(
            `  round ${round + 1}/${rounds}  ${w.padEnd(18)} ${c.name.padEnd(16)} ${Math.round(result.rate).toLocaleString('en-US').padStart(10)}/s` +
              (cpu.gatewayCpuSeconds === undefined ? '' : `  gateway ${((cpu.gatewayCpuSeconds / result.ops) * 1e6).toFixed(1)} µs/op`) +
              `  machine ${Math.round(cpu.machineBusy * 100)}% busy\n`,
          );
        } catch (err) {
          const reason = (err as Error).message.split('\n')[0] ?? String(err);
          cell.errors.push(reason);
          process.stderr.write(`  round ${round + 1}/${rounds}  ${w.padEnd(18)} ${c.name.padEnd(16)} FAILED: ${reason}\n`);
        }
      }
    }
  }
  return [...cells.values()];
}

export function summarize(cell: CellResult | undefined): Summary {
  const r = cell?.rounds ?? [];
  const withCpu = r.filter((m) => m.gatewayCpuSeconds !== undefined);
  const cpu = withCpu.reduce((a, m) => a + (m.gatewayCpuSeconds ?? 0), 0);
  const ops = withCpu.reduce((a, m) => a + m.ops, 0);
  const wall = withCpu.reduce((a, m) => a + m.wallSeconds, 0);
  const perOp = (pick: (t: ThreadCpu) => number): number => (withCpu.reduce((a, m) => a + (m.gatewayThreads ? pick(m.gatewayThreads) : 0), 0) / ops) * 1e6;
  return {
    rate: median(r.map((m) => m.rate)),
    cpuMicrosPerOp: withCpu.length && ops > 0 ? (cpu / ops) * 1e6 : undefined,
    threadMicrosPerOp:
      withCpu.length && ops > 0 && withCpu.every((m) => m.gatewayThreads !== undefined)
        ? { eventLoop: perOp((t) => t.eventLoop), lowPriority: perOp((t) => t.lowPriority), other: perOp((t) => t.other) }
        : undefined,
    gatewayCores: withCpu.length && wall > 0 ? cpu / wall : undefined,
    machineBusy: mean(r.map((m) => m.machineBusy)),
  };
}

export function findCell(cells: CellResult[], workload: string, contender: string): CellResult | undefined {
  return cells.find((c) => c.workload === workload && c.contender === contender);
}

/** Positive integer from the environment, or the default. */
export function envInt(name: string, fallback: number): number {
  return envInteger(name, fallback, 1);
}

/** Integer >= 0 from the environment (0 turns the thing off), or the default. */
export function envCount(name: string, fallback: number): number {
  return envInteger(name, fallback, 0);
}

function envInteger(name: string, fallback: number, min: number): number {
  const raw = process.env[name];
  if (raw === undefined || raw === '') return fallback;
  const n = Number(raw);
  if (!Number.isInteger(n) || n < min) throw new Error(`${name} must be an integer >= ${min}, got "${raw}"`);
  return n;
}

/**
 * The workloads named in the comma list of environment variable `name`
 * (all of them when it is unset), in the table's order. An unknown name is
 * an error, not a silently shorter run.
 */
export function envWorkloads(name: string, all: string[]): string[] {
  const list = process.env[name];
  if (list === undefined || list.trim() === '') return all;
  const names = list.split(',').map((s) => s.trim());
  const unknown = names.filter((n) => !all.includes(n));
  if (unknown.length > 0) throw new Error(`${name}: unknown workload ${unknown.join(', ')}; known: ${all.join(', ')}`);
  return all.filter((n) => names.includes(n));
}

/** A fresh path bench/.work/<name>-<timestamp>.<ext> (the directory is gitignored) for raw results. */
export function workFile(name: string, ext: string, stamp: string): string {
  // dist/bench/lib -> repository root
  const dir = fileURLToPath(new URL('../../../bench/.work/', import.meta.url));
  mkdirSync(dir, { recursive: true });
  return `${dir}${name}-${stamp}.${ext}`;
}

/** Writes `content` to bench/.work/<name>-<stamp>.<ext>; returns the path. */
export function writeWorkFile(name: string, ext: string, stamp: string, content: string): string {
  const file = workFile(name, ext, stamp);
  writeFileSync(file, content);
  return file;
}

export function timestamp(): string {
  return new Date().toISOString().replace(/[:.]/g, '-');
}

/**
 * How busy the machine is with nothing of ours running: other work on a
 * shared machine takes cores from every contender, so it is printed with
 * the results.
 */
export async function backgroundBusy(ms = 3000): Promise<number> {
  const a = machineCpu();
  await new Promise((r) => setTimeout(r, ms));
  const b = machineCpu();
  return b.total > a.total ? (b.busy - a.busy) / (b.total - a.total) : 0;
}

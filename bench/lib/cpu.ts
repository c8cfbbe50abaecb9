/**
 * CPU accounting from /proc, the number PERFORMANCE.md asks benchmarks to
 * print: on two cores shared by the database, the client and the gateway,
 * every microsecond the gateway spends is taken from the database.
 *
 * - Per process: utime + stime from /proc/<pid>/stat (fields 14 and 15, in
 *   clock ticks). Threads of the process (libuv's pool, worker threads) are
 *   included; the process's children are not.
 * - Per thread group, from /proc/<pid>/task/<tid>/stat: the event loop (the
 *   main thread, tid = pid), the threads running below the process's
 *   priority (Sluice's recording seal thread runs at nice 19; nothing else
 *   in it does), and the rest (libuv's pool, V8's GC and compiler threads,
 *   other workers, and threads that ended during the run). Throughput ratios on two shared cores move by ±15% from
 *   round to round; the CPU a feature's own thread spends per operation
 *   moves far less, and tells a change's effect apart from that noise.
 * - Whole machine: the aggregate `cpu` line of /proc/stat, giving how busy
 *   all cores were during a run (near 100% means the run was CPU-bound).
 */
import { execFileSync } from 'node:child_process';
import { readFileSync, readdirSync } from 'node:fs';

/** Clock ticks per second (USER_HZ); 100 on every common Linux build, asked rather than assumed. */
const CLK_TCK: number = (() => {
  try {
    const n = Number(execFileSync('getconf', ['CLK_TCK'], { encoding: 'utf8' }).trim());
    return Number.isFinite(n) && n > 0 ? n : 100;
  } catch {
    return 100;
  }
})();

/** Fields 3 onwards of a /proc stat line, as strings (field n is at index n - 3). */
function statFields(path: string): string[] {
  const stat = readFileSync(path, 'utf8');
  // Field 2 (comm) is in parentheses and may itself contain spaces or ')';
  // everything after the LAST ')' is space-separated, starting at field 3.
  return stat.slice(stat.lastIndexOf(')') + 2).split(' ');
}

/** utime + stime (fields 14 and 15), seconds. */
function cpuSecondsOf(fields: string[]): number {
  return (Number(fields[14 - 3]) + Number(fields[15 - 3])) / CLK_TCK;
}

/** CPU of a process's threads during an interval, by group (see the top of this file), seconds. */
export interface ThreadCpu {
  eventLoop: number;
  /** Threads at a nice value above the main thread's: the recording seal thread in Sluice. */
  lowPriority: number;
  /** The rest, with whatever threads that ended during the interval spent in it. */
  other: number;
}

/** One reading of a process: its total, and each live thread's CPU and nice value. */
export interface ThreadReading {
  total: number;
  mainNice: number;
  threads: Map<number, { cpu: number; nice: number }>;
}

/** Reads the process `pid` and every thread of it; throws when the process is gone (the round is then reported failed). */
export function readThreads(pid: number): ThreadReading {
  const main = statFields(`/proc/${pid}/stat`);
  const threads = new Map<number, { cpu: number; nice: number }>();
  for (const tid of readdirSync(`/proc/${pid}/task`)) {
    let f: string[];
    try {
      f = statFields(`/proc/${pid}/task/${tid}/stat`);
    } catch {
      continue; // ended between the listing and the read: counted in `other` (threadCpuBetween)
    }
    threads.set(Number(tid), { cpu: cpuSecondsOf(f), nice: Number(f[19 - 3]) });
  }
  if (!threads.has(pid)) throw new Error(`process ${pid}: its main thread could not be read`);
  return { total: cpuSecondsOf(main), mainNice: Number(main[19 - 3]), threads };
}

/**
 * What each group spent between two readings: per thread, its CPU at the
 * end less its CPU at the start (a thread started in between counts from
 * zero), grouped by its nice value at the end; `other` is the process's
 * total less the two named groups, so threads that ended in between are
 * in it too.
 */
export function threadCpuBetween(pid: number, a: ThreadReading, b: ThreadReading): ThreadCpu {
  let eventLoop = 0;
  let lowPriority = 0;
  for (const [tid, t] of b.threads) {
    const spent = t.cpu - (a.threads.get(tid)?.cpu ?? 0);
    if (tid === pid) eventLoop += spent;
    else if (t.nice > b.mainNice) lowPriority += spent;
  }
  return { eventLoop, lowPriority, other: Math.max(0, b.total - a.total - eventLoop - lowPriority) };
}

export interface MachineCpu {
  /** Ticks spent not idle (user, nice, system, irq, softirq, steal), all cores summed. */
  busy: number;
  /** All ticks, all cores summed. */
  total: number;
}

export function machineCpu(): MachineCpu {
  const line = readFileSync('/proc/stat', 'utf8').split('\n', 1)[0] ?? '';
  // cpu  user nice system idle iowait irq softirq steal guest guest_nice
  const f = line.trim().split(/\s+/).slice(1).map(Number);
  const [user = 0, nice = 0, system = 0, idle = 0, iowait = 0, irq = 0, softirq = 0, steal = 0] = f;
  const busy = user + nice + system + irq + softirq + steal;
  return { busy, total: busy + idle + iowait };
}

/** What a measured interval cost: the gateway's CPU and how busy the machine was. */
export interface CpuSample {
  /** CPU seconds of the gateway process during the interval; undefined when there is no gateway (direct). */
  gatewayCpuSeconds: number | undefined;
  /** The same by thread group; undefined when there is no gateway. */
  gatewayThreads: ThreadCpu | undefined;
  /** Fraction of all cores busy during the interval, 0..1. */
  machineBusy: number;
}

/**
 * Measures CPU around `work`. `pid` is the gateway process (or undefined for
 * a direct run). Sampling happens only at the edges, so it costs nothing
 * during the run.
 */
export async function measureCpu<T>(pid: number | undefined, work: () => Promise<T>): Promise<{ result: T; cpu: CpuSample }> {
  const t0 = pid === undefined ? undefined : readThreads(pid);
  const m0 = machineCpu();
  const result = await work();
  const t1 = pid === undefined ? undefined : readThreads(pid);
  const m1 = machineCpu();
  const total = m1.total - m0.total;
  return {
    result,
    cpu: {
      gatewayCpuSeconds: t0 === undefined || t1 === undefined ? undefined : t1.total - t0.total,
      gatewayThreads: t0 === undefined || t1 === undefined || pid === undefined ? undefined : threadCpuBetween(pid, t0, t1),
      machineBusy: total > 0 ? (m1.busy - m0.busy) / total : 0,
    },
  };
}

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
 *   other workers). Throughput ratios on two shared cores move by ±15% from
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

/** CPU seconds (user + system) a process has used so far. */
export function processCpuSeconds(pid: number): number {
  return cpuSecondsOf(statFields(`/proc/${pid}/stat`));
}

/** CPU seconds so far of a process's threads, by group (see the top of this file). */
export interface ThreadCpu {
  eventLoop: number;
  /** Threads at a nice value above the main thread's: the recording seal thread in Sluice. */
  lowPriority: number;
  other: number;
}

/**
 * A thread that ended between two readings takes its CPU out of the sums
 * (the process total keeps it): the groups are for threads that live
 * through a run, as the event loop and the seal thread do.
 */
export function threadCpuSeconds(pid: number): ThreadCpu {
  const out: ThreadCpu = { eventLoop: 0, lowPriority: 0, other: 0 };
  const mainNice = Number(statFields(`/proc/${pid}/stat`)[19 - 3]);
  let tids: string[] = [];
  try {
    tids = readdirSync(`/proc/${pid}/task`);
  } catch {
    return out;
  }
  for (const tid of tids) {
    let f: string[];
    try {
      f = statFields(`/proc/${pid}/task/${tid}/stat`);
    } catch {
      continue; // the thread ended
    }
    const s = cpuSecondsOf(f);
    if (Number(tid) === pid) out.eventLoop += s;
    else if (Number(f[19 - 3]) > mainNice) out.lowPriority += s;
    else out.other += s;
  }
  return out;
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
  const gw0 = pid === undefined ? 0 : processCpuSeconds(pid);
  const t0 = pid === undefined ? undefined : threadCpuSeconds(pid);
  const m0 = machineCpu();
  const result = await work();
  const gw1 = pid === undefined ? 0 : processCpuSeconds(pid);
  const t1 = pid === undefined ? undefined : threadCpuSeconds(pid);
  const m1 = machineCpu();
  const total = m1.total - m0.total;
  return {
    result,
    cpu: {
      gatewayCpuSeconds: pid === undefined ? undefined : gw1 - gw0,
      gatewayThreads:
        t0 === undefined || t1 === undefined
          ? undefined
          : { eventLoop: t1.eventLoop - t0.eventLoop, lowPriority: t1.lowPriority - t0.lowPriority, other: t1.other - t0.other },
      machineBusy: total > 0 ? (m1.busy - m0.busy) / total : 0,
    },
  };
}

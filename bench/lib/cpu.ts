/**
 * CPU accounting from /proc, the number PERFORMANCE.md asks benchmarks to
 * print: on two cores shared by the database, the client and the gateway,
 * every microsecond the gateway spends is taken from the database.
 *
 * - Per process: utime + stime from /proc/<pid>/stat (fields 14 and 15, in
 *   clock ticks). Threads of the process (libuv's pool, worker threads) are
 *   included; the process's children are not.
 * - Whole machine: the aggregate `cpu` line of /proc/stat, giving how busy
 *   all cores were during a run (near 100% means the run was CPU-bound).
 */
import { execFileSync } from 'node:child_process';
import { readFileSync } from 'node:fs';

/** Clock ticks per second (USER_HZ); 100 on every common Linux build, asked rather than assumed. */
const CLK_TCK: number = (() => {
  try {
    const n = Number(execFileSync('getconf', ['CLK_TCK'], { encoding: 'utf8' }).trim());
    return Number.isFinite(n) && n > 0 ? n : 100;
  } catch {
    return 100;
  }
})();

/** CPU seconds (user + system) a process has used so far. */
export function processCpuSeconds(pid: number): number {
  const stat = readFileSync(`/proc/${pid}/stat`, 'utf8');
  // Field 2 (comm) is in parentheses and may itself contain spaces or ')';
  // everything after the LAST ')' is space-separated, starting at field 3.
  const rest = stat.slice(stat.lastIndexOf(')') + 2).split(' ');
  const utime = Number(rest[14 - 3]);
  const stime = Number(rest[15 - 3]);
  return (utime + stime) / CLK_TCK;
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
  const m0 = machineCpu();
  const result = await work();
  const gw1 = pid === undefined ? 0 : processCpuSeconds(pid);
  const m1 = machineCpu();
  const total = m1.total - m0.total;
  return {
    result,
    cpu: {
      gatewayCpuSeconds: pid === undefined ? undefined : gw1 - gw0,
      machineBusy: total > 0 ? (m1.busy - m0.busy) / total : 0,
    },
  };
}

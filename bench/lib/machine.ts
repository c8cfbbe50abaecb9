/**
 * The machine a run happened on, printed with every result (STYLE.md point
 * 12: results are recorded with the machine they ran on).
 */
import { execFile } from 'node:child_process';
import { cpus, totalmem } from 'node:os';
import { promisify } from 'node:util';
import { versionOf } from './spawn.js';

const execFileP = promisify(execFile);

export interface Machine {
  date: string;
  cores: number;
  cpuModel: string;
  memoryGiB: number;
  kernel: string;
  node: string;
  /** Versions of the servers and peers this bench uses, as their binaries report them. */
  software: Record<string, string>;
}

async function firstLine(cmd: string, args: string[]): Promise<string> {
  try {
    return (await execFileP(cmd, args)).stdout.trim().split('\n')[0] ?? '';
  } catch {
    return '';
  }
}

export async function describeMachine(binaries: Record<string, [string, string[]?]>): Promise<Machine> {
  const software: Record<string, string> = {};
  for (const [name, [cmd, args]] of Object.entries(binaries)) software[name] = await versionOf(cmd, args);
  return {
    date: new Date().toISOString(),
    cores: cpus().length,
    cpuModel: cpus()[0]?.model ?? 'unknown',
    memoryGiB: Math.round((totalmem() / 2 ** 30) * 10) / 10,
    kernel: await firstLine('uname', ['-r']),
    node: process.version,
    software,
  };
}

export function machineText(m: Machine): string {
  return [
    `date: ${m.date}`,
    `cpu: ${m.cores} x ${m.cpuModel}; memory ${m.memoryGiB} GiB; kernel ${m.kernel}; node ${m.node}`,
    ...Object.entries(m.software).map(([k, v]) => `${k}: ${v}`),
  ].join('\n');
}

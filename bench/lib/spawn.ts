/**
 * Starting and stopping the processes a benchmark compares: the relay child,
 * C peers (pgbouncer, nutcracker) and the Sluice CLI. Every contender runs
 * as its own process, so /proc/<pid>/stat gives its CPU alone.
 */
import { execFile, fork, spawn, type ChildProcess, type SpawnOptions } from 'node:child_process';
import { accessSync, constants, existsSync } from 'node:fs';
import { connect } from 'node:net';
import { delimiter, join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { promisify } from 'node:util';

const execFileP = promisify(execFile);

/** Absolute path of an executable on PATH (or the path itself if it is one), undefined when absent. */
export function which(bin: string): string | undefined {
  const candidates = bin.includes('/') ? [bin] : (process.env.PATH ?? '').split(delimiter).concat(['/usr/sbin', '/sbin']).map((d) => join(d, bin));
  for (const c of candidates) {
    try {
      accessSync(c, constants.X_OK);
      return c;
    } catch {
      // next
    }
  }
  return undefined;
}

export { freePort } from '../../test/helpers/children.js';

/** Resolves once something accepts TCP connections on 127.0.0.1:port. */
export async function waitForPort(port: number, timeoutMs = 15_000, isDead: () => boolean = () => false): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  while (Date.now() < deadline) {
    if (isDead()) throw new Error('process exited before it listened');
    const ok = await new Promise<boolean>((resolve) => {
      const s = connect(port, '127.0.0.1');
      s.once('connect', () => {
        s.destroy();
        resolve(true);
      });
      s.once('error', () => resolve(false));
    });
    if (ok) return;
    await new Promise((r) => setTimeout(r, 50));
  }
  throw new Error(`nothing listened on 127.0.0.1:${port} within ${timeoutMs} ms`);
}

/** A long-running contender process. */
export interface Daemon {
  name: string;
  pid: number;
  port: number;
  /** The last 16 KiB the process wrote to stdout/stderr, for error reports. */
  output(): string;
  stop(): Promise<void>;
}

const live = new Set<ChildProcess>();
let handlersInstalled = false;

/** Contenders never outlive the harness, even when it crashes or is interrupted. */
function installHandlers(): void {
  if (handlersInstalled) return;
  handlersInstalled = true;
  process.on('exit', () => {
    for (const c of live) c.kill('SIGKILL');
  });
  for (const sig of ['SIGINT', 'SIGTERM'] as const) {
    process.once(sig, () => {
      for (const c of live) c.kill('SIGKILL');
      process.kill(process.pid, sig);
    });
  }
}

function track(name: string, child: ChildProcess, port: number): Daemon {
  installHandlers();
  live.add(child);
  let out = '';
  const keep = (d: Buffer): void => {
    out = (out + d.toString('utf8')).slice(-16 * 1024);
  };
  child.stdout?.on('data', keep);
  child.stderr?.on('data', keep);
  const exited = new Promise<void>((resolve) => child.once('exit', () => resolve()));
  child.once('exit', () => live.delete(child));
  if (child.pid === undefined) throw new Error(`${name}: spawn failed`);
  return {
    name,
    pid: child.pid,
    port,
    output: () => out,
    async stop() {
      if (child.exitCode !== null || child.signalCode !== null) return;
      child.kill('SIGTERM');
      const timer = setTimeout(() => child.kill('SIGKILL'), 5000);
      await exited;
      clearTimeout(timer);
    },
  };
}

/**
 * Spawns `command` and resolves once it listens on `port`. Rejects with the
 * process's output if it exits first.
 */
export async function startDaemon(name: string, command: string, args: string[], port: number, options: SpawnOptions = {}): Promise<Daemon> {
  const child = spawn(command, args, { ...options, stdio: ['ignore', 'pipe', 'pipe'] });
  const spawnError = new Promise<never>((_, reject) => child.once('error', reject));
  const daemon = track(name, child, port);
  let dead = false;
  child.once('exit', () => {
    dead = true;
  });
  try {
    await Promise.race([waitForPort(port, 20_000, () => dead), spawnError]);
  } catch (err) {
    await daemon.stop();
    throw new Error(`${name} did not start: ${(err as Error).message}\n${daemon.output()}`);
  }
  return daemon;
}

/** Forks the zero-parse relay (bench/lib/relay.ts) towards host:port and waits for its listening port over IPC. */
export async function startRelay(host: string, port: number): Promise<Daemon> {
  const entry = fileURLToPath(new URL('./relay.js', import.meta.url));
  const child = fork(entry, [host, String(port)], { stdio: ['ignore', 'pipe', 'pipe', 'ipc'] });
  const daemon = await new Promise<Daemon>((resolve, reject) => {
    child.once('message', (msg: unknown) => {
      const m = msg as { type?: string; port?: number };
      if (m.type === 'listening' && typeof m.port === 'number') resolve(track('relay', child, m.port));
      else reject(new Error(`relay: unexpected message ${JSON.stringify(msg)}`));
    });
    child.once('exit', (code) => reject(new Error(`relay exited early (${code})`)));
  });
  return daemon;
}

/** `id -u` / `id -g` of a system user, for spawning servers that refuse root (postgres, pgbouncer). */
export async function userIds(user: string): Promise<{ uid: number; gid: number }> {
  const uid = Number((await execFileP('id', ['-u', user])).stdout.trim());
  const gid = Number((await execFileP('id', ['-g', user])).stdout.trim());
  return { uid, gid };
}

/** First line of `command args` (a version banner), or a note that it is absent. */
export async function versionOf(command: string, args: string[] = ['--version']): Promise<string> {
  if (!existsSync(command) && !which(command)) return `${command}: not installed`;
  try {
    const { stdout, stderr } = await execFileP(command, args);
    return (stdout || stderr).trim().split('\n')[0] ?? '';
  } catch (err) {
    const e = err as { stdout?: string; stderr?: string };
    return (e.stdout || e.stderr || String(err)).trim().split('\n')[0] ?? '';
  }
}

/** The Sluice CLI, compiled: dist/src/cli/main.js relative to dist/bench/lib. */
export const SLUICE_CLI = fileURLToPath(new URL('../../src/cli/main.js', import.meta.url));

/**
 * What every server a test (or a benchmark) spawns needs: a free port, and a
 * guarantee that the child and its temp directory go away if the test process
 * dies. 'exit' covers normal exit and uncaught exceptions; a fatal signal skips
 * 'exit', so for those the cleanup runs and the signal is re-raised with its
 * default action (the `once` listener is gone by then).
 */
import type { ChildProcess } from 'node:child_process';
import { rmSync } from 'node:fs';
import { createServer } from 'node:net';

const live = new Map<ChildProcess, string>();
const extraDirs = new Set<string>();
let handlersInstalled = false;

function killAllSync(): void {
  for (const [child, dir] of live) {
    try {
      child.kill('SIGKILL');
    } catch {
      // already gone
    }
    rmSync(dir, { recursive: true, force: true });
  }
  live.clear();
  for (const dir of extraDirs) rmSync(dir, { recursive: true, force: true });
  extraDirs.clear();
}

function installHandlers(): void {
  if (handlersInstalled) return;
  handlersInstalled = true;
  process.on('exit', killAllSync);
  for (const sig of ['SIGTERM', 'SIGINT', 'SIGHUP'] as const) {
    process.once(sig, () => {
      killAllSync();
      process.kill(process.pid, sig);
    });
  }
}

/** Kill `child` and remove `dir` if this process dies before `release`. */
export function track(child: ChildProcess, dir: string): void {
  installHandlers();
  live.set(child, dir);
}

/** The child was stopped properly: forget it. Returns whether it was still tracked. */
export function release(child: ChildProcess): boolean {
  return live.delete(child);
}

/** A directory (not tied to a child) to remove if this process dies, until `forgetDir`. */
export function trackDir(dir: string): void {
  installHandlers();
  extraDirs.add(dir);
}

export function forgetDir(dir: string): void {
  extraDirs.delete(dir);
}

/** A port nothing listens on right now (bind port 0, read it, close). Callers retry on a bind race. */
export function freePort(): Promise<number> {
  return new Promise((resolve, reject) => {
    const srv = createServer();
    srv.once('error', reject);
    srv.listen(0, '127.0.0.1', () => {
      const addr = srv.address();
      const port = typeof addr === 'object' && addr ? addr.port : 0;
      srv.close(() => resolve(port));
    });
  });
}

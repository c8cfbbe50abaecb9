import { Worker } from 'node:worker_threads';
import type { EncodedBatch } from './audit-batches.js';
import type { SessionRecord } from './types.js';

/** How long a synchronous wait for the commit thread may take before it is given up as dead (busy_timeout is 5 s). */
const SYNC_WAIT_MS = 30_000;

export type CommitOutcome = { ok: true } | { ok: false; error: string };

/** What a commit thread commits: encoded audit batches, or rows of the sessions index. */
export interface CommitJobs {
  audit: EncodedBatch;
  sessions: { rows: SessionRecord[] };
}

/**
 * A worker thread that commits to the state database, so that SQLite's work
 * and its disk waits (WAL page writes, checkpoints and their fsync) never
 * stall the event loop that relays sessions. One per kind of job: the
 * audit writer's encoded batches (audit-writer.ts) and the sessions
 * index's rows (sqlite.ts, upsertSession). Measured through the gate with
 * pgbench-like traffic: an audit commit was 2 µs of CPU and 5-7 µs of
 * event-loop wall time per statement (a 500-event batch held the loop 1-2
 * ms, 10+ ms when the disk was busy); a session row about 15 µs.
 *
 * One job is in flight at a time, so jobs are committed in the order they
 * were taken (audit row ids order the audit trail). `wait()` blocks the
 * calling thread until the job in flight is answered: a synchronous flush
 * uses it before committing what is left itself.
 */
export class CommitThread<K extends keyof CommitJobs> {
  readonly #worker: Worker;
  readonly #words: Int32Array;
  #nextId = 1;
  #inFlight: { id: number; done: (outcome: CommitOutcome) => void } | undefined;
  #dead: string | undefined;

  constructor(
    file: string,
    readonly kind: K,
  ) {
    const status = new SharedArrayBuffer(8);
    this.#words = new Int32Array(status);
    this.#worker = new Worker(new URL('./commit-worker.js', import.meta.url), { workerData: { file, status, kind } });
    // A queued batch must not keep a finished process alive; a clean shutdown closes the writer first.
    this.#worker.unref();
    this.#worker.on('message', (m: { id: number; error?: string }) => {
      this.#answer(m.id, m.error === undefined ? { ok: true } : { ok: false, error: m.error });
    });
    this.#worker.on('error', (err) => this.#die(`${kind} commit thread failed: ${err.message}`));
    this.#worker.on('exit', (code) => this.#die(`${kind} commit thread exited (${code})`));
  }

  /** False once the thread failed: the writer commits on its own thread from then on. */
  get alive(): boolean {
    return this.#dead === undefined;
  }

  get busy(): boolean {
    return this.#inFlight !== undefined;
  }

  /** Sends a job; `done` is called once, on the event loop or inside `wait()`. Only when not busy. */
  commit(job: CommitJobs[K], done: (outcome: CommitOutcome) => void): void {
    const id = this.#nextId++;
    this.#inFlight = { id, done };
    this.#worker.postMessage({ ...job, id });
  }

  /**
   * Blocks until the job in flight is answered (its `done` runs here).
   * A thread that does not answer within SYNC_WAIT_MS is declared dead and
   * the job failed: it stays queued and is committed again, so an event or
   * a row is never lost (at worst, if the thread did commit an audit batch
   * after all, it is stored twice; a session row is an upsert).
   */
  wait(): void {
    const f = this.#inFlight;
    if (f === undefined) return;
    const deadline = Date.now() + SYNC_WAIT_MS;
    while (this.#inFlight === f && Atomics.load(this.#words, 0) !== f.id) {
      const left = deadline - Date.now();
      if (left <= 0 || this.#dead !== undefined) {
        this.#die(`${this.kind} commit thread did not answer`);
        return;
      }
      Atomics.wait(this.#words, 0, Atomics.load(this.#words, 0), Math.min(left, 100));
    }
    if (this.#inFlight === f) {
      this.#answer(f.id, Atomics.load(this.#words, 1) === 1 ? { ok: true } : { ok: false, error: `${this.kind} commit failed in the commit thread` });
    }
  }

  async close(): Promise<void> {
    this.wait();
    this.#dead ??= 'closed';
    await this.#worker.terminate();
  }

  #answer(id: number, outcome: CommitOutcome): void {
    const f = this.#inFlight;
    // An answer already taken by wait() arrives again as a message: ignored.
    if (f === undefined || f.id !== id) return;
    this.#inFlight = undefined;
    f.done(outcome);
  }

  #die(reason: string): void {
    if (this.#dead === undefined) this.#dead = reason;
    const f = this.#inFlight;
    if (f === undefined) return;
    this.#inFlight = undefined;
    f.done({ ok: false, error: reason });
    if (reason !== 'closed') void this.#worker.terminate();
  }
}

/**
 * The seal thread: one worker thread per process that finishes what the
 * recording writers stage on the event loop (seal-worker.ts does the work).
 *
 * A writer's record() only frames a chunk into its slab: the prefix and a
 * copy of the bytes, with the four bytes of the record's CRC left blank.
 * The rest of a record's cost is taken off the event loop that relays
 * every session:
 * - the CRC of every record,
 * - the running SHA-256 over the file,
 * - the Ed25519 signatures of the checkpoints and footers (one per batch:
 *   signed-records.ts),
 * - the append itself (writev), and the fsync at the close (recording.fsync).
 * Measured on the event loop before this thread existed (redis-benchmark
 * SET, 50 clients, one request per round trip, bench/RESULTS.md): these
 * were about a third of the ~1.5 µs that recording added per request,
 * while the event loop, not the machine, set the pace.
 *
 * Slabs are SharedArrayBuffers: the thread reads a batch and writes its
 * CRCs in place while the writer goes on staging after it in the same
 * slab, never inside it (a slab is reused only once its batches are
 * answered). A batch is described by offsets, so nothing is copied to
 * pass it.
 *
 * The thread works through batches one at a time, so a slow disk (or a
 * close's fsync) delays other recordings' appends, never the relay: their
 * records wait in their slabs, up to each writer's backlog bound, past
 * which its session stops reading until the thread catches up (writer.ts,
 * maxBacklogBytes). The thread runs at nice 19 (seal-worker.ts).
 *
 * Every writer's batch taken in one flush tick travels in one message, and
 * the answers come back in one message (two when footers went with it:
 * the live batches are answered before the footers' fsyncs), so the
 * messages cost the event loop a few microseconds per tick, not per
 * session.
 *
 * The thread does not create the files. The writer creates each file with
 * its header on libuv's thread pool (files.ts, createRecordingFile) and
 * closes it once the thread is done with it; the thread learns of it with
 * `register` (its descriptor, and the header that seeds its digest), which
 * rides in the next message, before the writer's first batch, and needs
 * no answer. A new session waits for its file while its upstream login
 * runs (tap.ts, SessionRecording.admitAlongside). When the thread made
 * the files, a create queued behind the batch being written and the
 * footers' fsyncs, and behind the nice-19 thread's turn for a core: under
 * `pgbench -C`, one session in six was still waiting for its file when its
 * login was done, 0.7-2.2 ms on average over all sessions (bench/RESULTS.md).
 *
 * Fail closed: if the thread dies, every batch in flight and every later
 * one is answered with an error, so each recording fails and its session is
 * ended (writer.ts); the next recording starts a new thread.
 */
import type { KeyObject } from 'node:crypto';
import { Worker } from 'node:worker_threads';

/** Whole staged records, buffer[start, end). */
export interface SealPiece {
  buffer: SharedArrayBuffer;
  start: number;
  end: number;
}

export interface SealFooter {
  recordCount: number;
  micros: number;
  endedAt: string;
  closeReason: string;
  bytesClientToGateway: number;
  bytesGatewayToClient: number;
  truncated: boolean;
}

/** One writer's batch: its staged records, then a checkpoint (seq reserved by the writer) or the footer. */
export interface SealJob {
  writer: number;
  pieces: SealPiece[];
  checkpoint?: { seq: number; micros: number };
  /** The last batch: footer and trailer are appended and the file is fsynced (SealRegistration.fsyncAtClose). */
  footer?: SealFooter;
}

/** A recording's file, created with its header (files.ts), for the thread to append to. */
export interface SealRegistration {
  /** Open (O_APPEND) until the writer is released; the writer closes it, never the thread. */
  fd: number;
  /** The header, the file's first bytes: it seeds the running digest. */
  header: Uint8Array;
  sessionId: string;
  /** The recording key's id (derived from its public key, so one id is one key). */
  keyId: string;
  /**
   * The key itself travels once per thread, with the first file signed by
   * it; later files name it by keyId. Cloning a KeyObject into the thread
   * re-parses the key (a few percent of the thread's work per session under
   * pgbench -C).
   */
  privateKey?: KeyObject;
  /** Fsync the file after its footer (recording.fsync: close). */
  fsyncAtClose: boolean;
}

/** A writer's file, for the thread to take up. */
export interface SealRegister {
  writer: number;
  file: SealRegistration;
}

export type SealRequest =
  | { op: 'drop'; writer: number }
  /** Files to take up, then batches to seal (a writer's registration always travels before its first batch). */
  | { op: 'seal'; registers: SealRegister[]; jobs: SealJob[] }
  /** Blocks the thread until gate[0] is set (see SealThread.stall). */
  | { op: 'stall'; gate: SharedArrayBuffer };

/** A failure as it crosses between the threads: the message, and the errno code when there is one. */
export interface SealError {
  message: string;
  code?: string;
}

/** The Error a SealError stands for, with its errno code (describe() in writer.ts reports it). */
export function errorFrom(e: SealError): Error {
  return Object.assign(new Error(e.message), e.code !== undefined ? { code: e.code } : {});
}

export interface SealOutcome {
  writer: number;
  /** Bytes appended to the file. */
  written: number;
  /** Of those, the bytes of the checkpoint, footer and trailer the thread added. */
  added: number;
  /**
   * The footer's batch: its finalChain (hex), the digest over the header
   * and every record. Not given for other batches: reading a running
   * SHA-256's value copies its state into a new Hash object, which cost the
   * recording thread about 7% of its time at one value per batch (redis
   * SET -P 16, 50 sessions; bench/RESULTS.md).
   */
  finalChain?: string;
  /** The footer's batch: the file was fsynced after it. */
  synced?: boolean;
  error?: SealError;
}

export interface SealAnswer {
  outcomes: SealOutcome[];
}

/**
 * How long a session's last batch (footer, fsync) waits for other
 * sessions' last batches, to travel in one message each way with them and
 * share one signature, unless a flush tick's message takes it sooner.
 * Under connection churn (a CI suite's connections, pgbench -C), each
 * closing session otherwise cost the event loop a message and an answer
 * of its own, and the recording thread an Ed25519 signature and the
 * wake-ups that go with a message. Nothing waits for a footer on the data
 * path: the client has gone. What it costs: a crash loses the last
 * records and footer of a session closed less than this long ago (the
 * file reads as incomplete), as it loses any session's records of the
 * last flush interval.
 *
 * When the thread still made the files, last batches swept along with
 * every new connection's create message were signed one or two at a time;
 * the signatures were a fifth of the recording thread's work in
 * bench:recording. At 25 ms, a `pgbench -C` with one client (about 30
 * connections a second) still had a signature per session; at 100 ms the
 * recording thread did 1,027 µs per connection against 1,456
 * (bench/RESULTS.md).
 */
const LAST_BATCH_DELAY_MS = 100;
/** Last batches that make a message of their own at once: a full signing tree (signed-records.ts). */
const LAST_BATCHES_AT_ONCE = 256;

export class SealThread {
  readonly #worker: Worker;
  /** Batches taken in this turn of the event loop, posted together. */
  #queued: SealJob[] = [];
  /** Last batches (footers) of the last LAST_BATCH_DELAY_MS: posted when the timer fires, or with the next message of other batches. */
  #lastBatches: SealJob[] = [];
  /** Files to take up, posted with the next message of batches (before them). */
  #registers: SealRegister[] = [];
  #postScheduled = false;
  #lastBatchTimer: NodeJS.Timeout | undefined;
  /** One batch in flight per writer (the writer waits for its answer before it takes the next). */
  readonly #waiting = new Map<number, (o: SealOutcome) => void>();
  /** Writers registered and not yet released: while any is, the thread keeps the process alive. */
  #users = 0;
  /** Key ids whose private key this thread has been sent. */
  readonly #keysSent = new Set<string>();
  #dead: string | undefined;
  /**
   * Settles once the thread has booted (its modules loaded, about 50 ms),
   * or rejects when it died first. A writer waits for it before its session
   * is admitted: no session is admitted before its recording's thread has
   * started, and a first session's records do not pile up behind the boot.
   */
  readonly ready: Promise<void>;
  #booted!: () => void;
  #bootFailed!: (err: Error) => void;

  constructor() {
    this.ready = new Promise<void>((resolve, reject) => {
      this.#booted = resolve;
      this.#bootFailed = reject;
    });
    // Rejected with no writer waiting, when the thread dies before any session: nobody is told but #die's callers.
    this.ready.catch(() => undefined);
    this.#worker = startWorker(new URL('./seal-worker.js', import.meta.url));
    this.#worker.on('message', (m: SealAnswer | 'ready') => {
      // 'ready': the worker has loaded its modules and listens (later than its 'online' event).
      if (m === 'ready') {
        // Kept alive while it boots (the messages posted meanwhile wait for it); after that only
        // while a recording is open. Unref'd here, after the listeners: adding a 'message' listener
        // refs the worker's port again, and a port left ref'd with no recording open kept
        // `sluice serve` from exiting after SIGTERM (it closed everything, then hung).
        if (this.#users === 0) this.#worker.unref();
        this.#booted();
      } else {
        for (const o of m.outcomes) this.#answer(o);
      }
    });
    this.#worker.on('error', (err) => this.#die(`the recording seal thread failed: ${err.message}`));
    this.#worker.on('exit', (code) => this.#die(`the recording seal thread exited (${code})`));
  }

  /**
   * Hands the thread a writer's file, created with its header; its batches
   * may follow at once. Travels with the next message of batches (the
   * writer's own first batch at the latest), so a short session costs one
   * message each way. Throws when the thread is gone: the session is
   * refused, as when its file cannot be created.
   */
  register(writer: number, file: SealRegistration & { privateKey: KeyObject }): void {
    if (this.#dead !== undefined) throw new Error(this.#dead);
    if (this.#users++ === 0) this.#worker.ref();
    this.#registers.push({ writer, file });
  }

  /** Seals and appends a batch; resolves with its outcome (an error outcome if the thread is gone). */
  seal(job: SealJob): Promise<SealOutcome> {
    return new Promise((resolve) => {
      if (this.#dead !== undefined) {
        resolve(failed(job.writer, this.#dead));
        return;
      }
      // One batch in flight per writer (writer.ts waits for each answer): answers are routed by writer.
      if (this.#waiting.has(job.writer)) {
        resolve(failed(job.writer, 'a batch was sealed while the previous one of its recording was in flight'));
        return;
      }
      this.#waiting.set(job.writer, resolve);
      if (job.footer === undefined) {
        this.#queued.push(job);
        this.#schedulePost();
      } else if (this.#lastBatches.push(job) >= LAST_BATCHES_AT_ONCE) {
        this.#postLast();
      } else {
        this.#lastBatchTimer ??= setTimeout(this.#postLast, LAST_BATCH_DELAY_MS);
      }
    });
  }

  #schedulePost(): void {
    if (this.#postScheduled) return;
    this.#postScheduled = true;
    // Every writer flushed by the same tick queues its batch before this runs.
    queueMicrotask(this.#post);
  }

  /**
   * The writer is done with the thread, with no batch in flight: after its
   * last batch was answered (the thread forgot it then), or after a failure
   * (`drop`: the thread forgets it now, appending nothing more). Either way
   * an answer came first, so its registration, which went with its first
   * batch, was sent and the `drop` follows it. The writer closes the file
   * after this.
   */
  release(writer: number, drop: boolean): void {
    if (drop && this.#dead === undefined) this.#worker.postMessage({ op: 'drop', writer });
    if (--this.#users === 0 && this.#dead === undefined) this.#worker.unref();
  }

  /**
   * Holds the thread, as a disk that stops answering would, until the
   * returned function is called: batches queue behind it and every
   * recording's backlog grows. For tests of what a stalled recorder does
   * to sessions (the backlog bound, writer.ts).
   */
  stall(): () => void {
    const gate = new SharedArrayBuffer(4);
    this.#worker.postMessage({ op: 'stall', gate } satisfies SealRequest);
    return () => {
      const flag = new Int32Array(gate);
      Atomics.store(flag, 0, 1);
      Atomics.notify(flag, 0);
    };
  }

  /** Stops the thread as a crash would: open recordings fail and their sessions end. For tests and shutdown. */
  async terminate(): Promise<void> {
    await this.#worker.terminate();
    this.#die('the recording seal thread was stopped');
  }

  /**
   * Posts the batches of this turn of the event loop, and takes the waiting
   * last batches along, to be signed with them. The thread answers the
   * other batches before it fsyncs the footers' files (seal-worker.ts).
   */
  readonly #post = (): void => {
    this.#postScheduled = false;
    let jobs = this.#queued;
    this.#queued = [];
    if (jobs.length > 0 && this.#lastBatches.length > 0) {
      jobs = jobs.concat(this.#takeLast());
    }
    this.#send(jobs);
  };

  /** Posts the last batches queued, in a message of their own. */
  readonly #postLast = (): void => {
    this.#send(this.#takeLast());
  };

  #takeLast(): SealJob[] {
    if (this.#lastBatchTimer !== undefined) {
      clearTimeout(this.#lastBatchTimer);
      this.#lastBatchTimer = undefined;
    }
    const jobs = this.#lastBatches;
    this.#lastBatches = [];
    return jobs;
  }

  /**
   * Posts batches, with every registration not yet sent: each goes before
   * its writer's first batch. The private key goes with the first file sent
   * that names it, and is left out of the rest.
   */
  #send(jobs: SealJob[]): void {
    // After a death the queued batches were answered already (#die answers everyone waiting).
    if (jobs.length === 0 || this.#dead !== undefined) return;
    const registers = this.#registers;
    // Most messages (every flush tick's) carry none: the empty list is posted and kept.
    if (registers.length > 0) this.#registers = [];
    for (const r of registers) {
      if (!this.#keysSent.has(r.file.keyId)) {
        this.#keysSent.add(r.file.keyId);
      } else if (r.file.privateKey !== undefined) {
        const { privateKey: _sent, ...rest } = r.file;
        r.file = rest;
      }
    }
    this.#worker.postMessage({ op: 'seal', registers, jobs } satisfies SealRequest);
  }

  #answer(o: SealOutcome): void {
    const resolve = this.#waiting.get(o.writer);
    if (resolve === undefined) return;
    this.#waiting.delete(o.writer);
    resolve(o);
  }

  #die(reason: string): void {
    if (this.#dead !== undefined) return;
    this.#dead = reason;
    this.#bootFailed(new Error(reason));
    if (current === this) current = undefined;
    if (this.#lastBatchTimer !== undefined) clearTimeout(this.#lastBatchTimer);
    this.#lastBatchTimer = undefined;
    const waiting = [...this.#waiting];
    this.#waiting.clear();
    for (const [writer, resolve] of waiting) resolve(failed(writer, reason));
    void this.#worker.terminate();
  }
}

/**
 * A worker inherits the process's node flags. Those of a script given on
 * the command line (`node --input-type=module -e SCRIPT`, how tests run
 * scripts) make it fail to start: they are left out. Flags given
 * explicitly are checked, and V8's own (`--log-ic`, say) are refused there:
 * then the worker starts with none.
 */
function startWorker(url: URL): Worker {
  const execArgv: string[] = [];
  const own = process.execArgv;
  for (let i = 0; i < own.length; i++) {
    const a = own[i]!;
    if (a === '-e' || a === '--eval' || a === '-p' || a === '--print') i++; // and the script after it
    else if (!a.startsWith('--input-type') && !a.startsWith('--eval=') && !a.startsWith('--print=')) execArgv.push(a);
  }
  if (execArgv.length === own.length) return new Worker(url);
  try {
    return new Worker(url, { execArgv });
  } catch {
    return new Worker(url, { execArgv: [] });
  }
}

function failed(writer: number, reason: string): SealOutcome {
  return { writer, written: 0, added: 0, error: { message: reason } };
}

let current: SealThread | undefined;

/** The process's seal thread, started on first use (and again after one died). */
export function sealThread(): SealThread {
  current ??= new SealThread();
  return current;
}

import type { Logger } from '../log.js';
import { encodeBatch, TimeParser, type EncodedBatch } from './audit-batches.js';
import { CommitThread, type CommitOutcome } from './commit-thread.js';
import type { AuditEvent, Store } from './types.js';

export interface AuditWriterStats {
  /** Events committed to the store. */
  written: number;
  /** Events refused because the queue was full (or the writer closed); counted, logged, never silent. */
  dropped: number;
  /** Events waiting to be written. */
  queued: number;
  /** Batches that failed to commit (they stay queued and are retried). */
  failedBatches: number;
  /** Slowest committed batch, ms of event-loop time: what one batch costs the relay. */
  maxBatchMs: number;
}

/**
 * Writes audit events to the store off the relay's hot path.
 *
 * `write()` only appends to an in-memory queue (O(1), no I/O, never throws,
 * never blocks). Batches of up to `maxBatch` events are committed in one
 * transaction each: after `flushIntervalMs`, or on the next turn of the
 * event loop (setImmediate) once a full batch is waiting, so a burst drains
 * one batch per turn, interleaved with socket I/O instead of in one long
 * stall.
 *
 * Where the commit runs: a store with an `auditFile` (the SQLite store)
 * gets its batches committed by a worker thread with its own connection
 * (commit-thread.ts): the event loop only encodes the batch (about
 * 1 µs an event) and hands over one string; SQLite's CPU and its disk waits
 * (WAL writes, checkpoints) happen beside the relay instead of stalling it
 * (1-2 ms a 500-event batch, 10+ ms on a busy disk, when it ran on the
 * loop). The events of a batch are released once it is encoded (only the
 * encoded batch is kept until the thread answers, for a retry), so they do
 * not outlive a commit's round trip in the young generation. One batch is
 * in flight at a time, so batches keep their order. If
 * the thread cannot start or dies, its batch fails like any other and
 * batches are committed on the event loop from then on. Any other store
 * gets `insertAuditEvents` on the event loop. `stats.maxBatchMs` reports
 * the event-loop time of the slowest batch.
 *
 * Overload: beyond `maxQueue` queued events, new events are dropped, counted
 * in `stats.dropped` and logged (at most every 10 s). Audit does not fail
 * closed: the decision to forward a statement was already made by the policy
 * engine (which does fail closed); refusing traffic because the audit disk is
 * slow would turn a storage hiccup into an outage. Dropping is loud instead.
 *
 * A batch that fails to commit (disk full, a locked file beyond
 * busy_timeout) stays at the head of the queue and is retried at the flush
 * interval; while the store keeps failing the queue fills and then drops.
 *
 * `close()` writes everything still queued: nothing is lost on a clean
 * shutdown.
 */
export class AuditWriter {
  private readonly flushIntervalMs: number;
  private readonly maxBatch: number;
  private readonly maxQueue: number;
  private readonly logger: Logger | undefined;

  // A queue as an array with a moving head: push is O(1), taking a batch is
  // O(batch); the consumed prefix is cut off now and then (amortised O(1)).
  private queue: AuditEvent[] = [];
  private head = 0;

  private timer: NodeJS.Timeout | undefined;
  private immediate: NodeJS.Immediate | undefined;
  private failing = false;
  private closed = false;

  /** Encodes batches for the commit thread (caches the second of the last time parsed). */
  private readonly times = new TimeParser();
  private thread: CommitThread<'audit'> | undefined;
  /**
   * A batch taken off the queue and encoded, not yet known to be committed
   * (in flight, or failed and waiting for a retry). Its events are released
   * as soon as it is encoded: they would otherwise stay alive for the
   * commit's round trip, and every live object costs the young-generation
   * collector a copy.
   */
  private pending: { batch: EncodedBatch; count: number } | undefined;
  private threadFailureLogged = false;

  private written = 0;
  private dropped = 0;
  private failedBatches = 0;
  private maxBatchMs = 0;
  private droppedUnlogged = 0;
  private lastDropLog = 0;

  constructor(
    private readonly store: Store,
    opts: { flushIntervalMs?: number; maxBatch?: number; maxQueue?: number; logger?: Logger } = {},
  ) {
    this.flushIntervalMs = opts.flushIntervalMs ?? 200;
    this.maxBatch = Math.max(1, opts.maxBatch ?? 500);
    this.maxQueue = Math.max(1, opts.maxQueue ?? 100_000);
    this.logger = opts.logger;
  }

  get stats(): AuditWriterStats {
    return {
      written: this.written,
      dropped: this.dropped,
      queued: this.queued,
      failedBatches: this.failedBatches,
      maxBatchMs: this.maxBatchMs,
    };
  }

  private get queued(): number {
    return this.queue.length - this.head + (this.pending?.count ?? 0);
  }

  /** Queue one event. O(1); never throws, never does I/O. */
  write(event: AuditEvent): void {
    if (this.closed || this.queued >= this.maxQueue) {
      this.dropped++;
      this.droppedUnlogged++;
      if (this.closed) this.logDrops();
      else this.schedule();
      return;
    }
    this.queue.push(event);
    this.schedule();
  }

  /** Write everything queued now, batch by batch. Stops at the first failing batch (it stays queued). */
  flush(): void {
    this.cancelScheduled();
    // The batch in flight is answered first (a blocking wait), so batches stay in order.
    this.thread?.wait();
    while (this.queued > 0 && (this.pending ? this.writePending() : this.writeBatch())) {
      /* next batch */
    }
    this.logDrops();
    if (this.queued > 0 && !this.closed) this.schedule();
  }

  /** Flush everything and stop accepting events. Later writes are counted as dropped. */
  async close(): Promise<void> {
    if (this.closed) return;
    this.flush();
    this.closed = true;
    this.cancelScheduled();
    await this.thread?.close();
    this.logDrops();
    if (this.queued > 0) {
      this.logger?.error(
        { lost: this.queued, written: this.written },
        'audit writer closed with events it could not write to the store',
      );
    }
  }

  private schedule(): void {
    // A batch in flight schedules the next one when it is answered.
    if (this.closed || this.thread?.busy) return;
    if (this.queued >= this.maxBatch && !this.failing) {
      if (!this.immediate) this.immediate = setImmediate(this.tick);
      return;
    }
    if (!this.timer && !this.immediate) {
      this.timer = setTimeout(this.tick, this.flushIntervalMs);
      // A queued event must not keep a finished process alive; a clean
      // shutdown calls close(), which writes it.
      this.timer.unref();
    }
  }

  private cancelScheduled(): void {
    if (this.timer) clearTimeout(this.timer);
    if (this.immediate) clearImmediate(this.immediate);
    this.timer = undefined;
    this.immediate = undefined;
  }

  private readonly tick = (): void => {
    // Whichever of the two fired, the other is now stale: a flush timer left
    // armed after a full batch went out on setImmediate would later send a
    // batch of the few events queued since, one more transaction for the
    // commit thread (under steady load, half the batches were such runts).
    this.cancelScheduled();
    if (this.queued > 0) {
      const thread = this.commitThread();
      if (thread !== undefined) {
        if (!thread.busy) this.sendBatch(thread);
      } else if (this.pending) this.writePending();
      else this.writeBatch();
    }
    this.logDrops();
    if (this.queued > 0) this.schedule();
  };

  /** The commit thread, started on the first batch; undefined for a store without a file, or once the thread failed. */
  private commitThread(): CommitThread<'audit'> | undefined {
    const file = this.store.auditFile;
    if (file === undefined || this.store.insertEncodedAuditBatch === undefined || this.closed) return undefined;
    this.thread ??= new CommitThread(file, 'audit');
    if (this.thread.alive) return this.thread;
    if (!this.threadFailureLogged) {
      this.threadFailureLogged = true;
      this.logger?.error({}, 'audit commit thread unavailable; committing audit batches on the event loop');
    }
    return undefined;
  }

  /** Hand the pending batch (or else one encoded from the head of the queue) to the commit thread. */
  private sendBatch(thread: CommitThread<'audit'>): void {
    const pending = this.pending ?? this.takePending();
    if (pending === undefined) return;
    thread.commit(pending.batch, (outcome) => this.answered(outcome));
  }

  /** Encodes the batch at the head of the queue into `pending` and releases its events. */
  private takePending(): { batch: EncodedBatch; count: number } | undefined {
    const count = Math.min(this.queue.length, this.head + this.maxBatch) - this.head;
    const started = performance.now();
    let batch: EncodedBatch;
    try {
      batch = encodeBatch(this.queue.slice(this.head, this.head + count), this.times);
    } catch (err) {
      this.batchFailed(err);
      return undefined;
    }
    this.noteBatchMs(performance.now() - started);
    this.pending = { batch, count };
    this.advance(count);
    return this.pending;
  }

  private answered(outcome: CommitOutcome): void {
    if (outcome.ok) this.pendingCommitted();
    else this.batchFailed(new Error(outcome.error));
    if (this.queued > 0 && !this.closed) this.schedule();
  }

  /** Commit the pending batch on this thread (the commit thread failed, or flush()); false if the store refused it. */
  private writePending(): boolean {
    const started = performance.now();
    try {
      this.store.insertEncodedAuditBatch!(this.pending!.batch);
    } catch (err) {
      this.batchFailed(err);
      return false;
    }
    this.noteBatchMs(performance.now() - started);
    this.pendingCommitted();
    return true;
  }

  private pendingCommitted(): void {
    const count = this.pending!.count;
    this.pending = undefined;
    this.storeWritable();
    this.written += count;
  }

  /** Commit one batch from the head of the queue on this thread; false if the store refused it. */
  private writeBatch(): boolean {
    const end = Math.min(this.queue.length, this.head + this.maxBatch);
    const batch = this.queue.slice(this.head, end);
    const started = performance.now();
    try {
      this.store.insertAuditEvents(batch);
    } catch (err) {
      this.batchFailed(err);
      return false;
    }
    this.noteBatchMs(performance.now() - started);
    this.storeWritable();
    this.written += batch.length;
    this.advance(batch.length);
    return true;
  }

  private noteBatchMs(ms: number): void {
    if (ms > this.maxBatchMs) this.maxBatchMs = ms;
  }

  private batchFailed(err: unknown): void {
    this.failedBatches++;
    if (!this.failing) {
      this.logger?.error({ err, queued: this.queued }, 'audit batch could not be written; retrying');
    }
    this.failing = true;
  }

  private storeWritable(): void {
    if (this.failing) this.logger?.info({ queued: this.queued }, 'audit store writable again');
    this.failing = false;
  }

  /** Drops the `count` events at the head of the queue (committed, or encoded into `pending`). */
  private advance(count: number): void {
    this.head += count;
    if (this.head === this.queue.length) {
      this.queue = [];
      this.head = 0;
    } else if (this.head > 4096 && this.head * 2 > this.queue.length) {
      this.queue = this.queue.slice(this.head);
      this.head = 0;
    }
  }

  private logDrops(): void {
    if (this.droppedUnlogged === 0) return;
    const now = Date.now();
    if (!this.closed && now - this.lastDropLog < 10_000) return;
    this.lastDropLog = now;
    this.logger?.warn(
      { dropped: this.droppedUnlogged, droppedTotal: this.dropped, maxQueue: this.maxQueue, closed: this.closed },
      'audit events dropped',
    );
    this.droppedUnlogged = 0;
  }
}

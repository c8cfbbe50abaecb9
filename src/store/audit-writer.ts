import type { Logger } from '../log.js';
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
 * Cost: better-sqlite3 is synchronous, so a batch runs on the event loop.
 * The store keeps a batch as one row (store/audit-batches.ts). Measured on
 * the dev container (2 cores, WAL, synchronous=NORMAL, pgbench-like events
 * from 8 sessions, on top of 200k events): about 2-2.5 µs of CPU per event,
 * so a full 500-event batch stalls the relay for roughly 1-1.5 ms, once per
 * 500 statements (a row per event cost 6-7 µs an event, 3-3.5 ms a batch).
 * If that is too much for a latency target, lower `maxBatch` (the per-batch
 * overhead is one row and a few key rows) or move the writer to a worker
 * thread. `stats.maxBatchMs` reports the real figure in production.
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
    return this.queue.length - this.head;
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
    while (this.queued > 0 && this.writeBatch()) {
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
    this.logDrops();
    if (this.queued > 0) {
      this.logger?.error(
        { lost: this.queued, written: this.written },
        'audit writer closed with events it could not write to the store',
      );
    }
  }

  private schedule(): void {
    if (this.closed) return;
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
    this.timer = undefined;
    this.immediate = undefined;
    if (this.queued > 0) this.writeBatch();
    this.logDrops();
    if (this.queued > 0) this.schedule();
  };

  /** Commit one batch from the head of the queue; false if the store refused it. */
  private writeBatch(): boolean {
    const end = Math.min(this.queue.length, this.head + this.maxBatch);
    const batch = this.queue.slice(this.head, end);
    const started = performance.now();
    try {
      this.store.insertAuditEvents(batch);
    } catch (err) {
      this.failedBatches++;
      if (!this.failing) {
        this.logger?.error({ err, queued: this.queued }, 'audit batch could not be written; retrying');
      }
      this.failing = true;
      return false;
    }
    const ms = performance.now() - started;
    if (ms > this.maxBatchMs) this.maxBatchMs = ms;
    if (this.failing) this.logger?.info({ queued: this.queued }, 'audit store writable again');
    this.failing = false;
    this.written += batch.length;
    this.head = end;
    if (this.head === this.queue.length) {
      this.queue = [];
      this.head = 0;
    } else if (this.head > 4096 && this.head * 2 > this.queue.length) {
      this.queue = this.queue.slice(this.head);
      this.head = 0;
    }
    return true;
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

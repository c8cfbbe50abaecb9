/**
 * Retention of the audit trail and of approval requests (`audit.retention`,
 * e.g. `365d`; 0, the default, keeps them forever): at start, then hourly,
 * deletes the audit batches whose every event is older than the cutoff,
 * and the approval requests decided, expired or cancelled before it whose
 * window, if any, closed before it too. Pending requests and open windows
 * are never touched.
 *
 * The audit trail is stored as batches of up to 500 events
 * (audit-batches.ts), and a batch goes whole: an event is kept until the
 * newest event of its batch is past the cutoff (a batch spans about a
 * second). A batch none of whose times parsed (from a migrated store) has
 * no time and is kept.
 *
 * On the event loop, as the sessions index's retention is, but in chunks of
 * CHUNK_BATCHES batches, each its own transaction of a few milliseconds,
 * with a turn of the loop between them: the first purge of a large trail
 * does not stall the sessions the gateway relays.
 */
import { RETENTION_INTERVAL_MS } from '../config/defaults.js';
import type { Logger } from '../log.js';
import type { Store } from './types.js';

/** Batches deleted per transaction: 200 batches are up to 100,000 events. */
const CHUNK_BATCHES = 200;

export interface AuditPurgeResult {
  batches: number;
  events: number;
  approvals: number;
}

export class AuditRetention {
  #timer: NodeJS.Timeout | undefined;
  #running: Promise<AuditPurgeResult> | undefined;
  #stopped = false;

  constructor(
    private readonly store: Store,
    private readonly retentionMs: number,
    private readonly logger: Logger,
  ) {}

  /** Purges now and every hour (unref'd); nothing when retention is 0 or the store cannot purge. */
  start(): void {
    if (this.retentionMs <= 0 || !this.store.purgeAuditBefore || this.#timer) return;
    const run = (): void => void this.runOnce();
    run();
    this.#timer = setInterval(run, RETENTION_INTERVAL_MS);
    this.#timer.unref();
  }

  /** One purge with the cutoff `now - retention` (a run already going is waited for instead). */
  runOnce(now: number = Date.now()): Promise<AuditPurgeResult> {
    this.#running ??= this.#purge(now).finally(() => (this.#running = undefined));
    return this.#running;
  }

  /** No more runs; a run in progress stops after its current chunk. Waits for it. */
  async stop(): Promise<void> {
    this.#stopped = true;
    if (this.#timer) clearInterval(this.#timer);
    this.#timer = undefined;
    await this.#running;
  }

  async #purge(now: number): Promise<AuditPurgeResult> {
    const result: AuditPurgeResult = { batches: 0, events: 0, approvals: 0 };
    const cutoff = now - this.retentionMs;
    try {
      for (;;) {
        if (this.#stopped) return result;
        const chunk = this.store.purgeAuditBefore!(cutoff, CHUNK_BATCHES);
        result.batches += chunk.batches;
        result.events += chunk.events;
        if (chunk.batches < CHUNK_BATCHES) break;
        await new Promise<void>((resolve) => setImmediate(resolve));
      }
      if (!this.#stopped && this.store.purgeApprovalsBefore) result.approvals = this.store.purgeApprovalsBefore(new Date(cutoff).toISOString());
      if (result.events > 0 || result.approvals > 0) {
        this.logger.info({ ...result, before: new Date(cutoff).toISOString() }, 'audit retention purged');
      }
    } catch (err) {
      // A locked or failing database: the next run tries again; nothing else depends on it.
      this.logger.warn({ err: err instanceof Error ? err.message : String(err) }, 'audit retention failed');
    }
    return result;
  }
}

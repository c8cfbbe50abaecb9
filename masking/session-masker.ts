/**
 * What the protocol maskers share: the compiled engine of one policy's rule
 * set, a worker pool for large batches, and per-rule hit counts.
 *
 * Engines are compiled once per policy when the gateway starts
 * (`compilePolicyMasking`), never per session. Pools are per distinct rule
 * set (a worker compiles exactly one rule set), started on the first batch
 * large enough to need one and closed with the gateway.
 */
import { MaskingEngine } from './engine.js';
import { MaskingPool } from './pool.js';
import type { MaskingRuleConfig } from './types.js';
import type { Config } from '../src/config/types.js';

export interface PolicyMasking {
  readonly policy: string;
  /** The policy's rule names, in config order. */
  readonly ruleNames: readonly string[];
  readonly engine: MaskingEngine;
  /** The pool for this rule set (started on first use). */
  pool(): MaskingPool;
}

/** Per-gateway masking state: one entry per policy that names masking rules. */
export class MaskingRegistry {
  readonly #byPolicy = new Map<string, PolicyMasking>();
  readonly #pools = new Map<string, MaskingPool>();
  #closed = false;

  constructor(config: Pick<Config, 'masking' | 'policies'>, opts: { threads?: number } = {}) {
    const all = config.masking?.rules ?? [];
    const hashKey = config.masking?.hashKey ? Buffer.from(config.masking.hashKey.reveal(), 'utf8') : Buffer.alloc(0);
    const engines = new Map<string, MaskingEngine>();
    for (const p of config.policies) {
      const names = p.masking ?? [];
      if (names.length === 0) continue;
      // Config order, not the policy's listing order: "the first rule in config order" decides a column.
      const rules: MaskingRuleConfig[] = all.filter((r) => names.includes(r.name));
      const key = rules.map((r) => r.name).join('\0');
      let engine = engines.get(key);
      if (!engine) {
        engine = MaskingEngine.compile(rules, { hashKey });
        engines.set(key, engine);
      }
      const pool = (): MaskingPool => {
        if (this.#closed) throw new Error('the gateway is closing');
        let existing = this.#pools.get(key);
        if (!existing) {
          existing = new MaskingPool({ rules, hashKey, ...(opts.threads !== undefined ? { threads: opts.threads } : {}) });
          this.#pools.set(key, existing);
        }
        return existing;
      };
      this.#byPolicy.set(p.name, { policy: p.name, ruleNames: rules.map((r) => r.name), engine, pool });
    }
  }

  /** The policy's masking, or undefined when it names no rules. */
  forPolicy(name: string): PolicyMasking | undefined {
    return this.#byPolicy.get(name);
  }

  get size(): number {
    return this.#byPolicy.size;
  }

  async close(): Promise<void> {
    this.#closed = true;
    const pools = [...this.#pools.values()];
    this.#pools.clear();
    await Promise.all(pools.map((p) => p.close()));
  }
}

/** Per-rule hit counts of one statement (PostgreSQL) or reply stream (Redis). */
export class MaskCounts {
  readonly map = new Map<string, number>();

  add(counts: Record<string, number> | Map<string, number>): void {
    const entries = counts instanceof Map ? counts.entries() : Object.entries(counts);
    for (const [k, v] of entries) this.map.set(k, (this.map.get(k) ?? 0) + v);
  }

  /** The counts so far, and reset. */
  take(): Record<string, number> {
    const out = Object.fromEntries(this.map);
    this.map.clear();
    return out;
  }

  snapshot(): Record<string, number> {
    return Object.fromEntries(this.map);
  }
}

/**
 * Runs a masker's per-chunk work strictly in order when some chunks go to
 * the worker pool: a chunk that arrives while an earlier one is still out
 * (the relay pauses the socket, but a chunk may already be on its way) waits
 * its turn. Synchronous work stays synchronous: no promise, no tick.
 */
export class ChunkSequencer {
  #tail: Promise<void> | undefined;

  run(step: () => void | Promise<void>): void | Promise<void> {
    if (this.#tail) return this.#track(this.#tail.then(step));
    const pending = step();
    return pending ? this.#track(pending) : undefined;
  }

  #track(pending: Promise<void>): Promise<void> {
    const tail: Promise<void> = pending.finally(() => {
      if (this.#tail === tail) this.#tail = undefined;
    });
    this.#tail = tail;
    return tail;
  }
}

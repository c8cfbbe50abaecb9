/**
 * A piscina pool of masking workers for large results. Each worker compiles
 * the same rule set once. Values go in by transfer (ArrayBuffer moved, not
 * copied): either the caller's own buffers (listed in `transferList`; they
 * are detached afterwards) or, by default, one fresh buffer the values are
 * packed into. Batches run concurrently; the caller keeps order by awaiting
 * them in order and bounds how many are in flight. A failed task or a dead
 * worker rejects with MaskingFailedError: the caller ends the session (fail
 * closed).
 */
import { availableParallelism } from 'node:os';
import { Piscina } from 'piscina';
import { MaskingEngine } from './engine.js';
import { MaskingFailedError, type MaskingRuleConfig } from './types.js';
import type { BatchResult, BatchTask, WorkerInit } from './worker.js';

export interface MaskingPoolOptions {
  rules: MaskingRuleConfig[];
  hashKey: Buffer;
  /** Worker threads; default max(1, cores - 1): 1 on a 2-core machine. */
  threads?: number;
  /** Batches waiting for a worker before maskBatch rejects; default 256. */
  maxQueue?: number;
}

export interface MaskedBatch {
  /** Per input value: the masked bytes, or undefined when unchanged. */
  values: Array<Buffer | undefined>;
  /** Hits per rule name. */
  counts: Record<string, number>;
}

export class MaskingPool {
  private readonly piscina: Piscina<BatchTask, BatchResult>;
  private closed = false;

  constructor(opts: MaskingPoolOptions) {
    // Compile here first: a bad rule set throws MaskingConfigError now, not inside a worker later.
    MaskingEngine.compile(opts.rules, { hashKey: opts.hashKey });
    const threads = opts.threads ?? Math.max(1, availableParallelism() - 1);
    const init: WorkerInit = { rules: opts.rules, hashKey: new Uint8Array(opts.hashKey) };
    this.piscina = new Piscina<BatchTask, BatchResult>({
      filename: new URL('./worker.js', import.meta.url).href,
      minThreads: threads,
      maxThreads: threads,
      maxQueue: opts.maxQueue ?? 256,
      idleTimeout: Number.MAX_SAFE_INTEGER, // keep compiled workers warm
      workerData: init,
    });
    // A worker that dies fails its in-flight task (which rejects below); the
    // pool-level event must have a listener or it would crash the process.
    this.piscina.on('error', () => {});
  }

  get threads(): number {
    return this.piscina.maxThreads;
  }

  /**
   * Masks a batch of UTF-8 values. With `transferList` the values' own
   * ArrayBuffers move to the worker (the caller must own them wholly: never a
   * Buffer from Node's shared allocation pool); without it they are copied
   * once into a fresh buffer that is moved.
   */
  async maskBatch(values: Buffer[], transferList?: ArrayBuffer[]): Promise<MaskedBatch> {
    if (this.closed) throw new MaskingFailedError('the masking pool is closed');
    if (values.length === 0) return { values: [], counts: {} };
    let task: BatchTask;
    let transfer: ArrayBuffer[];
    const where = new Int32Array(3 * values.length);
    if (transferList) {
      const buffers: ArrayBuffer[] = [];
      const index = new Map<ArrayBufferLike, number>();
      for (let i = 0; i < values.length; i++) {
        const v = values[i]!;
        let b = index.get(v.buffer);
        if (b === undefined) {
          b = buffers.push(v.buffer as ArrayBuffer) - 1;
          index.set(v.buffer, b);
        }
        where[3 * i] = b;
        where[3 * i + 1] = v.byteOffset;
        where[3 * i + 2] = v.length;
      }
      task = { buffers, where };
      transfer = [...new Set(transferList), where.buffer];
    } else {
      let total = 0;
      for (const v of values) total += v.length;
      const packed = new ArrayBuffer(total);
      const bytes = new Uint8Array(packed);
      let off = 0;
      for (let i = 0; i < values.length; i++) {
        const v = values[i]!;
        bytes.set(v, off);
        where[3 * i + 1] = off;
        where[3 * i + 2] = v.length;
        off += v.length;
      }
      task = { buffers: [packed], where };
      transfer = [packed, where.buffer];
    }
    let result: BatchResult;
    try {
      result = await this.piscina.run(task, { transferList: transfer });
    } catch (err) {
      throw new MaskingFailedError('masking failed in a worker; the result cannot be sent', { cause: err });
    }
    const out: Array<Buffer | undefined> = new Array<Buffer | undefined>(values.length).fill(undefined);
    let off = 0;
    for (let i = 0; i < values.length; i++) {
      const len = result.lengths[i]!;
      if (len < 0) continue;
      out[i] = Buffer.from(result.packed, off, len);
      off += len;
    }
    return { values: out, counts: result.counts };
  }

  async close(): Promise<void> {
    if (this.closed) return;
    this.closed = true;
    await this.piscina.destroy();
  }
}

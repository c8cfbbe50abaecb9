/**
 * A masking worker (one per pool thread). It compiles the pool's rule set
 * once, from workerData, then masks batches: values arrive as places in
 * transferred buffers (an Int32Array, not one typed-array view per value:
 * structured clone serialises each view, which cost more than masking the
 * batch) and results go back packed in one transferred ArrayBuffer.
 */
import { move, transferableSymbol, valueSymbol, workerData } from 'piscina';
import { MaskingEngine } from './engine.js';
import type { MaskingRuleConfig } from './types.js';

export interface WorkerInit {
  rules: MaskingRuleConfig[];
  hashKey: Uint8Array;
}

export interface BatchTask {
  /** The memory the values lie in (transferred, or copied when the caller did not list it). */
  buffers: ArrayBuffer[];
  /** Per value, three numbers: index into buffers, byte offset, byte length. */
  where: Int32Array;
}

export interface BatchResult {
  /** Masked values back to back; unchanged values take no room. */
  packed: ArrayBuffer;
  /** Per value: its length in `packed`, or -1 when unchanged. */
  lengths: Int32Array;
  counts: Record<string, number>;
}

const init = workerData as WorkerInit;
const engine = MaskingEngine.compile(init.rules, { hashKey: Buffer.from(init.hashKey) });

export default function maskBatch(task: BatchTask): unknown {
  const counts = new Map<string, number>();
  const { buffers, where } = task;
  const n = where.length / 3;
  const masked: Array<Buffer | undefined> = new Array(n);
  const lengths = new Int32Array(n);
  let total = 0;
  const values: Buffer[] = new Array(n);
  for (let i = 0; i < n; i++) values[i] = Buffer.from(buffers[where[3 * i]!]!, where[3 * i + 1]!, where[3 * i + 2]!);
  const results = engine.maskValues(values, counts);
  for (let i = 0; i < n; i++) {
    const out = results[i];
    masked[i] = out;
    lengths[i] = out ? out.length : -1;
    if (out) total += out.length;
  }
  const packed = new ArrayBuffer(total);
  const bytes = new Uint8Array(packed);
  let off = 0;
  for (const m of masked) {
    if (!m) continue;
    bytes.set(m, off);
    off += m.length;
  }
  const result: BatchResult = { packed, lengths, counts: Object.fromEntries(counts) };
  // Piscina's Transferable protocol: the value, and what to transfer rather than copy.
  return move({
    [transferableSymbol]: [packed, lengths.buffer],
    [valueSymbol]: result,
  } as Parameters<typeof move>[0]);
}

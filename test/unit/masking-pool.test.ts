/**
 * The worker pool: same results as the inline engine, order kept across many
 * concurrent batches, buffers transferred (not copied), and a dead worker
 * rejects the batch it was masking (the caller fails closed).
 */
import t from 'tap';
import type { Piscina } from 'piscina';
import { DETECTOR_NAMES } from '../../masking/detectors.js';
import { MaskingEngine } from '../../masking/engine.js';
import { MaskingPool } from '../../masking/pool.js';
import { MaskingFailedError, type MaskingRuleConfig } from '../../masking/types.js';

const hashKey = Buffer.alloc(32, 9);
const rules: MaskingRuleConfig[] = [
  ...DETECTOR_NAMES.map((d): MaskingRuleConfig => ({ name: d, detector: d, strategy: d === 'email' ? { kind: 'partial' } : { kind: 'redact' } })),
  { name: 'emp', pattern: 'EMP-\\d{6}', strategy: { kind: 'hash' } },
];

function corpus(n: number): Buffer[] {
  const out: Buffer[] = [];
  for (let i = 0; i < n; i++) {
    const kind = i % 7;
    const s =
      kind === 0
        ? `user${i}@example.com`
        : kind === 1
          ? `{"id":${i},"card":"4111 1111 1111 1111","name":"Zoë ${i}"}`
          : kind === 2
            ? `EMP-${String(100000 + i)} password=pw${i}`
            : kind === 3
              ? `row ${i}: nothing sensitive here, just text ✓`
              : kind === 4
                ? `token ghp_${'x'.repeat(36)} ip 10.0.${i % 256}.1`
                : kind === 5
                  ? ''
                  : `plain ${i}`;
    out.push(Buffer.from(s));
  }
  return out;
}

t.test('pool results equal the inline engine, order preserved across concurrent batches', async (t) => {
  const pool = new MaskingPool({ rules, hashKey, threads: 2 });
  t.teardown(() => pool.close());
  const engine = MaskingEngine.compile(rules, { hashKey });
  const batches = Array.from({ length: 40 }, (_, b) => corpus(50 + b));
  const results = await Promise.all(batches.map((vals) => pool.maskBatch(vals)));
  results.forEach((r, b) => {
    const inlineCounts = new Map<string, number>();
    const want = batches[b]!.map((v) => engine.maskBytes(v, inlineCounts));
    t.equal(r.values.length, want.length);
    const same = r.values.every((v, i) => (v === undefined ? want[i] === undefined : want[i] !== undefined && v.equals(want[i]!)));
    if (!same) t.fail(`batch ${b} differs`);
    t.same(r.counts, Object.fromEntries(inlineCounts), `batch ${b} counts`);
  });
  t.ok(results[0]!.values.some((v) => v === undefined), 'unchanged values come back as undefined');
  t.equal(results[0]!.values[0]?.toString(), 'u***@example.com');
});

t.test('the caller\'s buffers are transferred, not copied', async (t) => {
  const pool = new MaskingPool({ rules, hashKey, threads: 1 });
  t.teardown(() => pool.close());
  const ab = new ArrayBuffer(64);
  const owned = Buffer.from(ab);
  const n1 = owned.write('mail bob@example.com', 0);
  const n2 = owned.write('nothing', 32);
  const values = [owned.subarray(0, n1), owned.subarray(32, 32 + n2)];
  const r = await pool.maskBatch(values, [ab]);
  t.equal(ab.byteLength, 0, 'source ArrayBuffer is detached');
  t.equal(r.values[0]?.toString(), 'mail b***@example.com');
  t.equal(r.values[1], undefined);

  // Without a transfer list the pool packs the values into its own buffer: the caller's stay usable.
  const mine = Buffer.from('again carol@example.com');
  const r2 = await pool.maskBatch([mine]);
  t.equal(mine.toString(), 'again carol@example.com');
  t.equal(r2.values[0]?.toString(), 'again c***@example.com');
});

t.test('a worker that dies rejects its batch; the pool keeps serving', async (t) => {
  const pool = new MaskingPool({ rules, hashKey, threads: 1 });
  t.teardown(() => pool.close());
  await pool.maskBatch(corpus(3)); // worker up and idle
  const pending = pool.maskBatch(corpus(200));
  // Test-only reach into the pool: kill the thread that holds the task.
  const piscina = (pool as unknown as { piscina: Piscina }).piscina;
  await piscina.threads[0]!.terminate();
  await t.rejects(pending, MaskingFailedError);
  const after = await pool.maskBatch([Buffer.from('x@example.com')]);
  t.equal(after.values[0]?.toString(), 'x***@example.com');
});

t.test('a bad rule set is refused at construction, close is idempotent', async (t) => {
  t.throws(() => new MaskingPool({ rules: [{ name: 'x', pattern: '(a+)+', strategy: { kind: 'redact' } }], hashKey }), {
    code: 'SLUICE_MASKING_RULE_INVALID',
  });
  const pool = new MaskingPool({ rules, hashKey, threads: 1 });
  t.same(await pool.maskBatch([]), { values: [], counts: {} });
  await pool.close();
  await pool.close();
  await t.rejects(pool.maskBatch([Buffer.from('a@b.co')]), MaskingFailedError);
});

/**
 * What the recording thread spends per record to seal what the event loop
 * staged: the CRC of each record (format.ts, sealRecords), alone, over
 * runs of records shaped like the traffic the gateway benches relay. This
 * is the recording thread's share of a record that depends on the record's
 * size; the SHA-256 over the batch and the write cost the same per byte
 * whatever the records are.
 *
 *   npm run bench:recording-seal   (or, after a build: node dist/bench/recording-seal.js)
 *
 * Each shape is a 128 KiB run of records (a batch as the writer flushes it)
 * in a SharedArrayBuffer, alternating client and server records of the
 * shape's sizes. Contenders: `sluice` (this build) and, with BENCH_BASELINE
 * set, `baseline` (that checkout's build, loaded into the same process).
 * Each round times every contender on every shape, in an order reversed
 * in odd rounds; printed are the medians of ROUNDS rounds, in ns per
 * record, and sluice/baseline of the time (the ratio of the medians, and
 * the median of the per-round ratios). The payloads are varied bytes, so
 * the CRC tables are read as real traffic reads them. Every record's CRC
 * must be zlib's, and the contenders must seal a run to the same bytes,
 * or the bench fails.
 *
 * Env: BENCH_ROUNDS (7), BENCH_BASELINE.
 */
import { existsSync } from 'node:fs';
import { join, resolve } from 'node:path';
import { crc32 } from 'node:zlib';
import { RECORD_OVERHEAD, RECORD_PREFIX, RecordType, sealRecords, stageRecord } from '../src/recording/format.js';
import { envInt } from './lib/harness.js';
import { describeMachine, machineText } from './lib/machine.js';
import { fmtRatio, median, renderMarkdown, renderText, type Table } from './lib/table.js';

const ROUNDS = envInt('BENCH_ROUNDS', 7);
const RUN_BYTES = 128 * 1024;
/** Repetitions of a run per timing: about 20 ms each. */
const REPS = 40;

/** Client and server payload sizes, bytes: what one read from the client and one reply chunk hold. */
const SHAPES: Record<string, [client: number, server: number]> = {
  // redis-benchmark's 16 GETs (36 bytes each), 16 three-byte values.
  'redis GET -P 16': [576, 144],
  // 16 SETs (45 bytes each), 16 +OK.
  'redis SET -P 16': [720, 80],
  // One GET, its value.
  'redis GET -P 1': [36, 9],
  // pgbench -S, prepared: Bind/Execute/Sync, then BindComplete, one DataRow, CommandComplete, ReadyForQuery.
  'pgbench -S -M prepared': [63, 54],
  // A wide result streamed to psql: 8 KiB chunks of DataRows.
  'psql result, 8 KiB chunks': [64, 8192],
};

type Seal = (buf: Uint8Array, start: number, end: number) => number;

interface Contender {
  name: string;
  seal: Seal;
}

/** A run of staged records, their CRCs not yet filled in, and how many records it holds. */
function stagedRun(client: number, server: number): { run: Buffer; end: number; records: number } {
  const run = Buffer.from(new SharedArrayBuffer(RUN_BYTES));
  const payloads = [varied(client, 1), varied(server, 2)];
  let end = 0;
  let records = 0;
  for (;;) {
    const p = payloads[records % 2]!;
    if (end + RECORD_OVERHEAD + p.length > RUN_BYTES) break;
    end = stageRecord(run, end, RecordType.data, records % 2, records, records * 10, p);
    records++;
  }
  return { run, end, records };
}

/** Deterministic bytes that vary (Knuth's multiplicative hash of the index): every table entry gets used. */
function varied(length: number, seed: number): Buffer {
  const b = Buffer.alloc(length);
  for (let i = 0; i < length; i++) b[i] = Math.imul(i + seed * 7919, 2654435761) >>> 24;
  return b;
}

/** The first record in run[0, end) whose CRC is not zlib's CRC-32 of its prefix and payload, or -1. */
function firstWrongCrc(run: Buffer, end: number): number {
  for (let at = 0, n = 0; at < end; n++) {
    // The prefix: type (1), direction (1), seq (8), micros (4), then the payload's length (4) at 14.
    const crcAt = at + RECORD_PREFIX + run.readUInt32BE(at + 14);
    if (run.readUInt32BE(crcAt) !== crc32(run.subarray(at, crcAt))) return n;
    at = crcAt + RECORD_OVERHEAD - RECORD_PREFIX;
  }
  return -1;
}

function timeSeal(seal: Seal, run: Buffer, end: number): number {
  const t0 = process.hrtime.bigint();
  for (let i = 0; i < REPS; i++) seal(run, 0, end);
  return Number(process.hrtime.bigint() - t0);
}

async function baseline(): Promise<Contender | undefined> {
  const dir = process.env.BENCH_BASELINE;
  if (!dir) return undefined;
  const file = join(resolve(dir), 'dist', 'src', 'recording', 'format.js');
  if (!existsSync(file)) throw new Error(`BENCH_BASELINE=${dir}: no ${file} (build that checkout first)`);
  const mod = (await import(file)) as { sealRecords: Seal };
  return { name: 'baseline', seal: mod.sealRecords };
}

async function main(): Promise<void> {
  const machine = await describeMachine({});
  process.stdout.write(`bench:recording-seal\n${machineText(machine)}\nsettings: ${ROUNDS} rounds, runs of ${RUN_BYTES / 1024} KiB sealed ${REPS} times per timing\n\n`);
  const contenders: Contender[] = [{ name: 'sluice', seal: sealRecords }];
  const base = await baseline();
  if (base) contenders.push(base);
  const shapes = Object.keys(SHAPES);
  const runs = shapes.map((s) => stagedRun(...SHAPES[s]!));

  // zlib's CRCs, and the same bytes from every contender (and a warm-up for each).
  runs.forEach((r, i) => {
    const sealed = contenders.map((c) => {
      const copy = Buffer.from(new SharedArrayBuffer(RUN_BYTES));
      r.run.copy(copy);
      for (let k = 0; k < 50; k++) c.seal(copy, 0, r.end);
      const wrong = firstWrongCrc(copy, r.end);
      if (wrong >= 0) throw new Error(`${shapes[i]}: ${c.name} sealed record ${wrong} with a CRC that is not zlib's`);
      return copy.subarray(0, r.end);
    });
    if (sealed.some((b) => !b.equals(sealed[0]!))) throw new Error(`${shapes[i]}: the contenders sealed the run to different bytes`);
  });

  const ns = new Map<string, number[]>();
  for (let round = 0; round < ROUNDS; round++) {
    const order = round % 2 === 0 ? contenders : [...contenders].reverse();
    runs.forEach((r, i) => {
      for (const c of order) {
        const key = `${c.name}\u0000${shapes[i]}`;
        const perRecord = timeSeal(c.seal, r.run, r.end) / (REPS * r.records);
        ns.set(key, [...(ns.get(key) ?? []), perRecord]);
      }
    });
  }

  const at = (c: string, s: string): number | undefined => median(ns.get(`${c}\u0000${s}`) ?? []);
  /** The ratio of the medians, and in parentheses the median of the per-round ratios. */
  const ratio = (s: string): string | undefined => {
    const a = ns.get(`sluice\u0000${s}`) ?? [];
    const b = ns.get(`baseline\u0000${s}`) ?? [];
    const perRound = median(a.map((x, k) => x / b[k]!));
    return `${fmtRatio(at('sluice', s), at('baseline', s))} (${fmtRatio(perRound, 1)})`;
  };
  const table: Table = {
    title: `sealRecords over a ${RUN_BYTES / 1024} KiB run: ns per record (median of ${ROUNDS} rounds)`,
    header: ['shape (client / server payload bytes)', ...contenders.map((c) => c.name), ...(base ? ['sluice/baseline'] : [])],
    rows: shapes.map((s) => [
      `${s} (${SHAPES[s]![0]} / ${SHAPES[s]![1]})`,
      ...contenders.map((c) => at(c.name, s)?.toFixed(0)),
      ...(base ? [ratio(s)] : []),
    ]),
    notes: [
      'the CRC of each record, as the recording thread fills them in before it hashes and appends the batch',
      ...(base ? ['sluice/baseline: the ratio of the medians; in parentheses the median of the per-round ratios'] : []),
    ],
  };
  process.stdout.write(`${renderText(table)}\n\n${renderMarkdown(table)}\n`);
}

main().catch((err: unknown) => {
  process.stderr.write(`bench:recording-seal failed: ${(err as Error).stack ?? String(err)}\n`);
  process.exitCode = 1;
});

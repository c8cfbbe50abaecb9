/**
 * The audit store alone (no network): what writing an audit event costs the
 * gateway's event loop, per event, the way the audit writer calls it.
 *
 *   npm run bench:audit   (or, after a build: node dist/bench/audit-store.js)
 *
 * Events look like `pgbench -S` traffic (8 sessions, a short SELECT with an
 * integer literal, or a prepared statement's text with its bound
 * parameters apart, as the PostgreSQL gate writes them), committed in batches of 500 on top of 200k events already
 * in the database. Prints CPU (user + system of this process), disk bytes
 * and write() calls per event from /proc/self/io, and the time of two API
 * queries. Env: AUDIT_BENCH_EVENTS (100000), AUDIT_BENCH_PREFILL (200000),
 * AUDIT_BENCH_BATCH (500, the writer's default maxBatch).
 */
import { randomUUID } from 'node:crypto';
import { readFileSync } from 'node:fs';
import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { isoTime } from '../src/store/iso-time.js';
import { openSqliteStore } from '../src/store/sqlite.js';
import type { AuditEvent } from '../src/store/types.js';
import { envInt } from './lib/harness.js';

const EVENTS = envInt('AUDIT_BENCH_EVENTS', 100_000);
const PREFILL = envInt('AUDIT_BENCH_PREFILL', 200_000);
const BATCH = envInt('AUDIT_BENCH_BATCH', 500);

function io(): { writeBytes: number; writeCalls: number } {
  const text = readFileSync('/proc/self/io', 'utf8');
  const field = (name: string): number => Number(new RegExp(`^${name}: (\\d+)`, 'm').exec(text)?.[1] ?? 0);
  return { writeBytes: field('write_bytes'), writeCalls: field('syscw') };
}

async function run(extended: boolean): Promise<void> {
  const dir = await mkdtemp(join(tmpdir(), 'sluice-audit-bench-'));
  const store = openSqliteStore(dir);
  try {
    const sessions = Array.from({ length: 8 }, () => randomUUID());
    let ms = Date.now();
    let n = 0;
    const event = (): AuditEvent => {
      if (n % 3 === 0) ms++;
      const aid = (n * 7919) % 1_000_000;
      const e: AuditEvent = {
        time: isoTime(ms),
        sessionId: sessions[n % sessions.length]!,
        subject: 'bench',
        target: 'bench',
        protocol: 'postgres',
        kind: 'select',
        text: extended ? 'SELECT abalance FROM pgbench_accounts WHERE aid = $1;' : `SELECT abalance FROM pgbench_accounts WHERE aid = ${aid};`,
        ...(extended ? { params: JSON.stringify([String(aid)]) } : {}),
        verdict: 'allowed',
        policy: 'bench',
        durationMs: 1,
        rows: 1,
      };
      n++;
      return e;
    };
    const batches = (count: number): AuditEvent[][] =>
      Array.from({ length: Math.ceil(count / BATCH) }, () => Array.from({ length: BATCH }, event));

    for (const b of batches(PREFILL)) store.insertAuditEvents(b);
    const measured = batches(EVENTS);
    const io0 = io();
    const cpu0 = process.cpuUsage();
    const wall0 = performance.now();
    for (const b of measured) store.insertAuditEvents(b);
    const wall = performance.now() - wall0;
    const cpu = process.cpuUsage(cpu0);
    const io1 = io();
    const count = measured.length * BATCH;
    const per = (v: number): string => (v / count).toFixed(2);
    process.stdout.write(
      `${extended ? 'extended' : 'simple  '}  CPU ${per(cpu.user + cpu.system)} µs/event (user ${per(cpu.user)}, sys ${per(cpu.system)}), ` +
        `wall ${per(wall * 1000)} µs/event, disk ${per(io1.writeBytes - io0.writeBytes)} B/event, ` +
        `write() ${per(io1.writeCalls - io0.writeCalls)}/event\n`,
    );
    let t0 = performance.now();
    const one = store.queryAuditEvents({ sessionId: sessions[3]!, limit: 1000 });
    const sessionMs = performance.now() - t0;
    t0 = performance.now();
    store.queryAuditEvents({ limit: 100 });
    const newestMs = performance.now() - t0;
    process.stdout.write(
      `          query: one session's newest ${one.length} ${sessionMs.toFixed(1)} ms, newest 100 ${newestMs.toFixed(1)} ms\n`,
    );
  } finally {
    store.close();
    await rm(dir, { recursive: true, force: true });
  }
}

process.stdout.write(`audit store: ${EVENTS} events in batches of ${BATCH} on top of ${PREFILL}\n`);
await run(false);
await run(true);

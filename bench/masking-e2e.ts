/**
 * bench:masking-e2e: masking end to end (issue 5). One PostgreSQL, four doors:
 *
 *   direct          client -> PostgreSQL
 *   relay           client -> zero-parse Node relay (bench/lib/relay.ts) -> PostgreSQL
 *   sluice          client -> `sluice serve`, masking off, recording off
 *   sluice+masking  client -> `sluice serve`, policy masking [emails, cards], recording off
 *   sluice+recording client -> `sluice serve`, masking off, every byte recorded (issue 6)
 *   baseline, baseline+recording  with BENCH_BASELINE: another build's Sluice (bench/lib/sluice.ts)
 *
 * 1. Throughput: one simple Query whose result is 100 MB+ of DataRows
 *    (400k rows by default), streamed to a minimal wire client that only
 *    walks message lengths (so the client, which shares the 2 cores, costs
 *    as little as possible). Two results: "few hits" (an e-mail address in 1%
 *    of rows, a card number in 0.1%) and "every row" (an e-mail address in
 *    every row). Reported as MB/s of wire bytes received, with the gateway's
 *    CPU per MB. Target: sluice+masking >= 0.6x relay.
 * 2. Latency of a 1-row result: sequential `SELECT 1` through node-postgres,
 *    interleaved in blocks across contenders. Target: masking adds < 0.2 ms
 *    (sluice+masking minus sluice).
 *
 * Env: BENCH_ROUNDS (3), BENCH_E2E_ROWS (400000), BENCH_E2E_QUERIES (2000
 * `SELECT 1` per contender), BENCH_CONTENDERS (comma list; direct always runs).
 */
import { connect } from 'node:net';
import pg from 'pg';
import { postgresAvailable, startPostgres } from '../test/helpers/postgres.js';
import { PG_BIN } from '../test/helpers/process.js';
import { backgroundBusy, envInt, runRounds, timestamp, writeWorkFile, type Absent, type Contender } from './lib/harness.js';
import { describeMachine, machineText } from './lib/machine.js';
import { buildTables, tablesMarkdown, tablesText, type ReportInput } from './lib/report.js';
import { baselineCandidates, startSluice } from './lib/sluice.js';
import { startRelay } from './lib/spawn.js';
import { fmtFixed, renderMarkdown, renderText, type Table } from './lib/table.js';

const ROUNDS = envInt('BENCH_ROUNDS', 3);
const ROWS = envInt('BENCH_E2E_ROWS', 400_000);
const QUERIES = envInt('BENCH_E2E_QUERIES', 2000);
const ONLY = process.env.BENCH_CONTENDERS ? new Set(process.env.BENCH_CONTENDERS.split(',').map((s) => s.trim())) : undefined;
const MIB = 1024 * 1024;

/** Rows shaped like a users/tickets table: an id, a reference, a contact and a free-text note. */
const QUERIES_BY_WORKLOAD: Record<string, string> = {
  'few hits': `SELECT i, md5(i::text) AS ref,
      CASE WHEN i % 100 = 0 THEN 'user' || i || '@example.com' ELSE 'user ' || i END AS contact,
      CASE WHEN i % 1000 = 0 THEN 'paid with 4111 1111 1111 1111 on ' || now()::date ELSE repeat('lorem ipsum ', 17) END AS note
    FROM generate_series(1, ${ROWS}) i`,
  'every row': `SELECT md5(i::text) || ' user' || i || '@example.com' AS contact, repeat('x', 200) AS note
    FROM generate_series(1, ${ROWS}) i`,
};

function wanted(name: string): boolean {
  return name === 'direct' || ONLY === undefined || ONLY.has(name);
}

function startupPacket(params: Record<string, string>): Buffer {
  const body = Buffer.concat([
    Buffer.from([0, 3, 0, 0]),
    ...Object.entries(params).map(([k, v]) => Buffer.from(`${k}\0${v}\0`)),
    Buffer.from([0]),
  ]);
  const len = Buffer.alloc(4);
  len.writeUInt32BE(body.length + 4);
  return Buffer.concat([len, body]);
}

function typed(type: string, body: Buffer): Buffer {
  const head = Buffer.alloc(5);
  head.write(type, 0, 'latin1');
  head.writeUInt32BE(body.length + 4, 1);
  return Buffer.concat([head, body]);
}

/**
 * A minimal PostgreSQL client for one big result: startup, cleartext
 * password (the server runs with `password` auth; Sluice always asks for
 * the token in cleartext on a loopback listener), then one Query. It walks
 * message headers only, counting bytes and DataRows, and never copies.
 */
function streamResult(port: number, user: string, secret: string, sql: string): Promise<{ bytes: number; rows: number; seconds: number }> {
  return new Promise((resolve, reject) => {
    const sock = connect(port, '127.0.0.1');
    let phase: 'login' | 'query' = 'login';
    let header: Buffer = Buffer.alloc(0); // a message header cut across chunks (at most 4 bytes)
    let skip = 0; // bytes of the current message body still to come
    let bytes = 0;
    let rows = 0;
    let started = 0n;
    let error: string | undefined;
    const fail = (why: string): void => {
      sock.destroy();
      reject(new Error(why));
    };
    sock.setNoDelay(true);
    sock.on('error', (err) => fail(`socket error: ${err.message}`));
    sock.on('close', () => fail('connection closed before the result ended'));
    sock.on('connect', () => sock.write(startupPacket({ user, database: 'app', application_name: 'sluice-bench' })));
    // Small login messages are read whole; their bodies are only needed during login.
    let loginBuf: Buffer = Buffer.alloc(0);
    const onMessage = (type: number, body: Buffer | undefined): void => {
      if (type === 0x45 /* E */) error = body ? body.toString('utf8').replace(/\0/g, ' ').trim() : 'ErrorResponse';
      if (phase === 'login') {
        if (type === 0x52 /* R */ && body) {
          const code = body.readUInt32BE(0);
          if (code === 3) sock.write(typed('p', Buffer.from(`${secret}\0`)));
          else if (code !== 0) fail(`unsupported authentication request ${code}`);
        } else if (type === 0x5a /* Z */) {
          if (error) return fail(`login failed: ${error}`);
          phase = 'query';
          bytes = 0;
          started = process.hrtime.bigint();
          sock.write(typed('Q', Buffer.from(`${sql}\0`)));
        }
        return;
      }
      if (type === 0x44 /* D */) rows++;
      else if (type === 0x5a /* Z */) {
        const seconds = Number(process.hrtime.bigint() - started) / 1e9;
        sock.removeAllListeners('close');
        sock.end();
        if (error) reject(new Error(`query failed: ${error.slice(0, 200)}`));
        else resolve({ bytes, rows, seconds });
      }
    };
    sock.on('data', (chunk: Buffer) => {
      if (phase === 'login') {
        loginBuf = Buffer.concat([loginBuf, chunk]);
        while (phase === 'login' && loginBuf.length >= 5) {
          const len = loginBuf.readUInt32BE(1);
          if (loginBuf.length < 1 + len) break;
          const type = loginBuf[0]!;
          const body = loginBuf.subarray(5, 1 + len);
          loginBuf = loginBuf.subarray(1 + len);
          onMessage(type, body);
        }
        return;
      }
      bytes += chunk.length;
      let off = 0;
      while (off < chunk.length) {
        if (skip > 0) {
          const n = Math.min(skip, chunk.length - off);
          skip -= n;
          off += n;
          continue;
        }
        // A header: type byte + 4-byte length; may straddle chunks.
        const need = 5 - header.length;
        const take = chunk.subarray(off, off + need);
        off += take.length;
        header = header.length ? Buffer.concat([header, take]) : take;
        if (header.length < 5) break;
        const type = header[0]!;
        const bodyLen = header.readUInt32BE(1) - 4;
        header = Buffer.alloc(0);
        if (type === 0x45 /* E */) {
          // Rare: read the error body if it is in this chunk (good enough for a message).
          onMessage(type, chunk.subarray(off, off + bodyLen));
        } else onMessage(type, undefined);
        skip = bodyLen;
      }
    });
  });
}

/** Both sides of the masking check: what the client must (not) see for a known row. */
async function maskingPreflight(c: Contender, masked: boolean): Promise<void> {
  const client = new pg.Client({ host: '127.0.0.1', port: c.port, user: c.user, password: c.secret, database: 'app', ssl: false });
  await client.connect();
  try {
    const r = await client.query<{ e: string; card: string }>(`SELECT 'ada.lovelace@example.com' AS e, 'card 4111 1111 1111 1111' AS card`);
    const row = r.rows[0];
    if (!row) throw new Error('no row');
    const leaked = row.e.includes('ada.lovelace@') || row.card.includes('4111 1111 1111 1111');
    if (masked && leaked) throw new Error(`masking is on but the client received ${JSON.stringify(row)}`);
    if (!masked && leaked === false) throw new Error(`masking is off but the client received ${JSON.stringify(row)}`);
  } finally {
    await client.end();
  }
}

interface Latency {
  contender: string;
  micros: number[];
}

/**
 * Sequential `SELECT 1` round trips, one node-postgres connection per
 * contender, in blocks that alternate across contenders (and reverse order
 * every block) so drift hits all of them alike.
 */
async function latencies(contenders: Contender[]): Promise<Latency[]> {
  const clients = new Map<string, pg.Client>();
  const out = new Map<string, number[]>();
  for (const c of contenders) {
    const client = new pg.Client({ host: '127.0.0.1', port: c.port, user: c.user, password: c.secret, database: 'app', ssl: false });
    await client.connect();
    for (let i = 0; i < 200; i++) await client.query('SELECT 1'); // warm: JIT, caches, the first-statement paths
    clients.set(c.name, client);
    out.set(c.name, []);
  }
  const BLOCKS = 10;
  const perBlock = Math.ceil(QUERIES / BLOCKS);
  try {
    for (let b = 0; b < BLOCKS; b++) {
      const order = b % 2 === 0 ? contenders : [...contenders].reverse();
      for (const c of order) {
        const client = clients.get(c.name)!;
        const xs = out.get(c.name)!;
        for (let i = 0; i < perBlock; i++) {
          const t0 = process.hrtime.bigint();
          await client.query('SELECT 1');
          xs.push(Number(process.hrtime.bigint() - t0) / 1e3);
        }
      }
    }
  } finally {
    for (const client of clients.values()) await client.end().catch(() => {});
  }
  return contenders.map((c) => ({ contender: c.name, micros: out.get(c.name)! }));
}

function quantile(sorted: number[], q: number): number | undefined {
  if (sorted.length === 0) return undefined;
  return sorted[Math.min(sorted.length - 1, Math.floor(q * sorted.length))];
}

function latencyTable(ls: Latency[]): Table {
  const stats = new Map(
    ls.map((l) => {
      const s = [...l.micros].sort((a, b) => a - b);
      const mean = s.reduce((a, x) => a + x, 0) / (s.length || 1);
      return [l.contender, { median: quantile(s, 0.5), p90: quantile(s, 0.9), mean, n: s.length }] as const;
    }),
  );
  const rows: Table['rows'] = ls.map((l) => {
    const s = stats.get(l.contender)!;
    return [l.contender, String(s.n), fmtFixed(s.median), fmtFixed(s.p90), fmtFixed(s.mean)];
  });
  const diff = (a: string, b: string): void => {
    const x = stats.get(a);
    const y = stats.get(b);
    if (!x || !y || x.median === undefined || y.median === undefined) return;
    rows.push([`${a} minus ${b}`, '', fmtFixed(x.median - y.median), fmtFixed((x.p90 ?? 0) - (y.p90 ?? 0)), fmtFixed(x.mean - y.mean)]);
  };
  diff('sluice+masking', 'sluice');
  diff('sluice+masking', 'baseline+masking');
  diff('sluice', 'relay');
  diff('relay', 'direct');
  return {
    title: `A 1-row result: sequential SELECT 1 through node-postgres, µs per round trip`,
    header: ['contender', 'queries', 'median', 'p90', 'mean'],
    rows,
    notes: [`${QUERIES} queries per contender after 200 warm-up ones, in 10 blocks alternating across contenders; the masking target (issue 5) is "sluice+masking minus sluice" < 200 µs`],
  };
}

async function main(): Promise<void> {
  if (!postgresAvailable()) {
    process.stderr.write(`bench:masking-e2e: PostgreSQL server binaries not found under ${PG_BIN}; nothing to measure\n`);
    process.exitCode = 1;
    return;
  }
  const machine = await describeMachine({ postgresql: [`${PG_BIN}/postgres`] });
  const idleBefore = await backgroundBusy();
  process.stdout.write(`bench:masking-e2e\n${machineText(machine)}\n`);
  process.stdout.write(`settings: ${ROUNDS} rounds, ${ROWS} rows per result, ${QUERIES} SELECT 1 per contender\n`);
  process.stdout.write(`background: machine ${Math.round(idleBefore * 100)}% busy before the bench started (other processes)\n\n`);

  const cleanups: Array<() => Promise<void>> = [];
  const contenders: Contender[] = [];
  const absent: Absent[] = [];
  try {
    // `password` auth: the streaming client answers a cleartext request from
    // PostgreSQL (direct, relay) exactly as it answers Sluice's token request.
    const pgs = await startPostgres({ auth: 'password' });
    cleanups.push(() => pgs.stop());
    process.stderr.write(`postgres on 127.0.0.1:${pgs.port}\n`);
    const target = { protocol: 'postgres' as const, upstreamPort: pgs.port, database: pgs.database, user: pgs.user, password: pgs.password };
    const direct: Contender = { name: 'direct', port: pgs.port, pid: undefined, secret: pgs.password, user: pgs.user };
    const candidates: Array<[string, boolean, () => Promise<Contender>]> = [
      ['direct', false, async () => direct],
      ['relay', false, async () => {
        const relay = await startRelay('127.0.0.1', pgs.port);
        cleanups.push(() => relay.stop());
        return { ...direct, name: 'relay', port: relay.port, pid: relay.pid };
      }],
      ['sluice', false, async () => {
        const s = await startSluice(target);
        cleanups.push(() => s.stop());
        return { name: 'sluice', port: s.daemon.port, pid: s.daemon.pid, secret: s.token, user: 'bench' };
      }],
      ['sluice+masking', true, async () => {
        const s = await startSluice(target, { masking: true });
        cleanups.push(() => s.stop());
        return { name: 'sluice+masking', port: s.daemon.port, pid: s.daemon.pid, secret: s.token, user: 'bench' };
      }],
      // A large result is where recording moves the most bytes per unit of relay work: every
      // DataRow is staged, checksummed, hashed and written (docs/recording-format.md).
      ['sluice+recording', false, async () => {
        const s = await startSluice(target, { recording: true });
        cleanups.push(() => s.stop());
        return { name: 'sluice+recording', port: s.daemon.port, pid: s.daemon.pid, secret: s.token, user: 'bench' };
      }],
      ...baselineCandidates(target, cleanups, { masking: true }).map(([name, start]) => [name, name === 'baseline+masking', start] as [string, boolean, () => Promise<Contender>]),
    ];
    for (const [name, masked, start] of candidates) {
      if (!wanted(name)) continue;
      try {
        const c = await start();
        await maskingPreflight(c, masked);
        contenders.push(c);
      } catch (err) {
        absent.push({ name, state: 'failed', reason: (err as Error).message.split('\n')[0] ?? String(err) });
        process.stderr.write(`${name}: FAILED: ${(err as Error).message}\n`);
      }
    }

    const workloads = Object.keys(QUERIES_BY_WORKLOAD);
    const sizes = new Map<string, string>();
    const cells = await runRounds(workloads, contenders, ROUNDS, async (w, c) => {
      const r = await streamResult(c.port, c.user, c.secret, QUERIES_BY_WORKLOAD[w]!);
      if (r.rows !== ROWS) throw new Error(`expected ${ROWS} rows, got ${r.rows}`);
      if (c.name === 'direct') sizes.set(w, `${(r.bytes / MIB).toFixed(1)} MiB`);
      return { rate: r.bytes / MIB / r.seconds, ops: r.bytes / MIB };
    });
    const report: ReportInput = {
      title: `${ROWS}-row result streamed to one client`,
      rateUnit: 'MiB/s',
      opName: 'MiB',
      workloads,
      contenders: contenders.map((c) => c.name),
      absent,
      cells,
      ratios: [['sluice+masking', 'relay'], ['sluice', 'relay'], ['sluice+masking', 'sluice'], ['sluice+recording', 'sluice'], ['sluice', 'baseline'], ['sluice+recording', 'baseline+recording'], ['sluice+masking', 'baseline+masking'], ['relay', 'direct']],
      rounds: ROUNDS,
    };
    const tables = buildTables(report);
    const sizeNote = `result size on the wire: ${workloads.map((w) => `${w} ${sizes.get(w) ?? '?'}`).join(', ')}; wall time from Query sent to ReadyForQuery received`;
    tables[0]!.notes = [...(tables[0]!.notes ?? []), sizeNote];

    process.stderr.write(`latency: ${QUERIES} x SELECT 1 per contender ...\n`);
    const lat = latencyTable(await latencies(contenders));
    const idleAfter = await backgroundBusy();
    process.stdout.write(`\n${tablesText(tables)}\n${renderText(lat)}`);
    process.stdout.write(`background: machine ${Math.round(idleAfter * 100)}% busy after the bench (contenders idle)\n`);
    const stamp = timestamp();
    const settings = { rounds: ROUNDS, rows: ROWS, queries: QUERIES };
    const background = { before: idleBefore, after: idleAfter };
    const json = writeWorkFile('masking-e2e', 'json', stamp, `${JSON.stringify({ machine, settings, background, report, latency: lat }, null, 2)}\n`);
    const md = writeWorkFile('masking-e2e', 'md', stamp, `${machineText(machine)}\n\n${tablesMarkdown(tables)}\n${renderMarkdown(lat)}`);
    process.stdout.write(`\nraw results: ${json}\nmarkdown:    ${md}\n`);
  } finally {
    for (const c of cleanups.reverse()) await c().catch(() => {});
  }
}

main().catch((err: unknown) => {
  process.stderr.write(`bench:masking-e2e failed: ${(err as Error).stack ?? String(err)}\n`);
  process.exitCode = 1;
});

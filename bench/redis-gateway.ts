/**
 * bench:redis: redis-benchmark against one redis-server through four doors, in one run.
 *
 *   direct     redis-benchmark -> redis-server
 *   relay      redis-benchmark -> zero-parse Node relay (bench/lib/relay.ts) -> redis-server
 *   twemproxy  redis-benchmark -> nutcracker (redis: true, redis_auth)        -> redis-server  (skipped when not installed)
 *   sluice     redis-benchmark -> `sluice serve` (AUTH <token>)               -> redis-server
 *
 * Sluice runs three times, one feature per process, so each feature's cost
 * is its own column: `sluice` (recording off, no rules), `sluice+policy`
 * (the example policy, recording off) and `sluice+recording` (recording on,
 * no rules).
 *
 * Workloads: `redis-benchmark -t set` and `-t get`, 50 clients, unpipelined
 * (-P 1) and pipelined 16 deep (-P 16); each is its own client run so the
 * gateway CPU per request is per command and depth. Every contender must
 * first answer AUTH + SET + GET correctly (a gateway that answers every
 * request with an error would otherwise benchmark beautifully); one that
 * does not is reported as failed and the others still run.
 *
 * Env: BENCH_ROUNDS (2), BENCH_REDIS_N (requests per -P 1 run, 200000),
 * BENCH_REDIS_N_PIPELINED (requests per -P 16 run, 2000000),
 * BENCH_REDIS_WARMUP_PERCENT (10: an unmeasured run of that share of each
 * workload's requests through each contender before the rounds; 0 for none),
 * BENCH_REDIS_CLIENTS (50), BENCH_REDIS_TIMEOUT (seconds per client run, 300), BENCH_CONTENDERS (comma list to run a subset;
 * direct is always included), BENCH_REDIS_WORKLOADS (comma list of workload names, e.g. `SET -P 16,GET -P 16`).
 */
import { mkdtemp, rm, writeFile } from 'node:fs/promises';
import { connect } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { run } from '../test/helpers/process.js';
import { startRedis, type RedisServer } from '../test/helpers/redis.js';
import { backgroundBusy, envCount, envInt, envWorkloads, runRounds, timestamp, writeWorkFile, type Absent, type Contender } from './lib/harness.js';
import { describeMachine, machineText } from './lib/machine.js';
import { buildTables, tablesMarkdown, tablesText, type ReportInput } from './lib/report.js';
import { baselineCandidates, startSluice } from './lib/sluice.js';
import { freePort, startDaemon, startRelay, which, type Daemon } from './lib/spawn.js';

const ROUNDS = envInt('BENCH_ROUNDS', 2);
const N = envInt('BENCH_REDIS_N', 200_000);
const N_PIPELINED = envInt('BENCH_REDIS_N_PIPELINED', 2_000_000);
const WARMUP_PERCENT = envCount('BENCH_REDIS_WARMUP_PERCENT', 10);
const CLIENTS = envInt('BENCH_REDIS_CLIENTS', 50);
/** A client run that takes longer than this is killed and reported as failed (a stalled gateway must not stall the bench). */
const RUN_TIMEOUT_SECONDS = envInt('BENCH_REDIS_TIMEOUT', 300);
const ONLY = process.env.BENCH_CONTENDERS ? new Set(process.env.BENCH_CONTENDERS.split(',').map((s) => s.trim())) : undefined;

interface Workload {
  command: 'set' | 'get';
  pipeline: number;
  requests: number;
}

const WORKLOADS: Record<string, Workload> = {
  'SET -P 1': { command: 'set', pipeline: 1, requests: N },
  'GET -P 1': { command: 'get', pipeline: 1, requests: N },
  'SET -P 16': { command: 'set', pipeline: 16, requests: N_PIPELINED },
  'GET -P 16': { command: 'get', pipeline: 16, requests: N_PIPELINED },
};

function wanted(name: string): boolean {
  return name === 'direct' || ONLY === undefined || ONLY.has(name);
}

/**
 * AUTH, SET and GET over a raw socket, pipelined in one write; the replies
 * must be exactly +OK, +OK and the value. Error replies are quoted in the
 * failure reason (they never contain the secret we sent).
 */
function preflight(c: Contender): Promise<void> {
  const value = `preflight-${Date.now()}`;
  const resp = (...args: string[]): string => `*${args.length}\r\n${args.map((a) => `$${Buffer.byteLength(a)}\r\n${a}\r\n`).join('')}`;
  const expected = `+OK\r\n+OK\r\n$${value.length}\r\n${value}\r\n`;
  return new Promise((resolve, reject) => {
    const sock = connect(c.port, '127.0.0.1');
    let got = '';
    const fail = (why: string): void => {
      sock.destroy();
      reject(new Error(why));
    };
    sock.setTimeout(5000, () => fail(`no complete reply to AUTH/SET/GET within 5 s (got ${JSON.stringify(got.slice(0, 120))})`));
    sock.on('error', (err) => fail(`socket error: ${err.message}`));
    sock.on('connect', () => sock.write(resp('AUTH', c.secret) + resp('SET', 'bench:preflight', value) + resp('GET', 'bench:preflight')));
    sock.on('data', (d: Buffer) => {
      got += d.toString('utf8');
      const err = /^-(.*)\r\n/m.exec(got);
      if (err) return fail(`server replied -${err[1]}`);
      if (got.length >= expected.length) {
        if (got === expected) {
          sock.end();
          resolve();
        } else fail(`unexpected replies ${JSON.stringify(got.slice(0, 120))}`);
      }
    });
    sock.on('end', () => fail(`connection closed after ${JSON.stringify(got.slice(0, 120))}`));
  });
}

async function redisBenchmark(workload: string, c: Contender, percent = 100): Promise<{ rate: number; ops: number }> {
  const known = WORKLOADS[workload];
  if (!known) throw new Error(`unknown workload ${workload}`);
  const w = { ...known, requests: Math.max(CLIENTS, Math.round((known.requests * percent) / 100)) };
  // -a sends AUTH <secret> on every connection: the password for direct,
  // relay and twemproxy, the token for Sluice. --csv: one parsable line per test.
  const args = ['-h', '127.0.0.1', '-p', String(c.port), '-a', c.secret, '-c', String(CLIENTS), '-n', String(w.requests),
    '-P', String(w.pipeline), '-t', w.command, '--csv'];
  const r = await run('redis-benchmark', args, { timeoutMs: RUN_TIMEOUT_SECONDS * 1000 });
  const row = new RegExp(`^"${w.command.toUpperCase()}","([\\d.]+)"`, 'm').exec(r.stdout);
  // redis-benchmark prints server errors (e.g. NOAUTH, NOPERM) and keeps counting them as replies.
  const serverError = /Error from server: (.*)/.exec(r.stdout + r.stderr);
  if (serverError) throw new Error(`server error: ${serverError[1]}`);
  if (r.code !== 0 || !row) {
    throw new Error(`redis-benchmark exit ${r.code ?? r.signal}: ${(r.stderr || r.stdout).trim().split('\n')[0]?.slice(0, 300)}`);
  }
  return { rate: Number(row[1]), ops: w.requests };
}

/**
 * twemproxy (nutcracker), the C Redis proxy users know: one server, AUTH
 * checked at the proxy (redis_auth) and sent upstream on its own connection.
 */
async function startTwemproxy(redis: RedisServer): Promise<{ daemon: Daemon; cleanup: () => Promise<void> }> {
  const bin = which('nutcracker');
  if (!bin) throw Object.assign(new Error('nutcracker not installed (Debian package nutcracker)'), { skip: true });
  const dir = await mkdtemp(join(tmpdir(), 'sluice-bench-twemproxy-'));
  const port = await freePort();
  const statsPort = await freePort();
  const conf = join(dir, 'nutcracker.yml');
  await writeFile(
    conf,
    [
      'bench:',
      `  listen: 127.0.0.1:${port}`,
      '  hash: fnv1a_64',
      '  distribution: ketama',
      '  redis: true',
      `  redis_auth: ${redis.password}`,
      '  auto_eject_hosts: false',
      '  servers:',
      `    - 127.0.0.1:${redis.port}:1`,
      '',
    ].join('\n'),
    { mode: 0o600 },
  );
  const daemon = await startDaemon('twemproxy', bin, ['-c', conf, '-s', String(statsPort), '-a', '127.0.0.1', '-o', join(dir, 'nutcracker.log')], port);
  return {
    daemon,
    cleanup: async () => {
      await daemon.stop();
      await rm(dir, { recursive: true, force: true });
    },
  };
}

async function main(): Promise<void> {
  if (!which('redis-server') || !which('redis-benchmark')) {
    process.stderr.write('bench:redis: redis-server or redis-benchmark not on PATH; nothing to measure\n');
    process.exitCode = 1;
    return;
  }
  const workloads = envWorkloads('BENCH_REDIS_WORKLOADS', Object.keys(WORKLOADS));
  const machine = await describeMachine({
    'redis-server': ['redis-server', ['--version']],
    'redis-benchmark': ['redis-benchmark', ['--version']],
    nutcracker: ['nutcracker', ['--version']],
  });
  const idleBefore = await backgroundBusy();
  process.stdout.write(`bench:redis\n${machineText(machine)}\n`);
  process.stdout.write(`settings: ${ROUNDS} rounds after a ${WARMUP_PERCENT}% warm-up, ${CLIENTS} clients, ${N} requests per -P 1 run, ${N_PIPELINED} per -P 16 run\n`);
  process.stdout.write(`background: machine ${Math.round(idleBefore * 100)}% busy before the bench started (other processes)\n\n`);

  const cleanups: Array<() => Promise<void>> = [];
  const contenders: Contender[] = [];
  const absent: Absent[] = [];
  try {
    const redis = await startRedis();
    cleanups.push(() => redis.stop());
    process.stderr.write(`redis-server on 127.0.0.1:${redis.port}\n`);

    const direct: Contender = { name: 'direct', port: redis.port, pid: undefined, secret: redis.password, user: 'default' };
    const candidates: Array<[string, () => Promise<Contender>]> = [
      ['direct', async () => direct],
      ['relay', async () => {
        const relay = await startRelay('127.0.0.1', redis.port);
        cleanups.push(() => relay.stop());
        return { ...direct, name: 'relay', port: relay.port, pid: relay.pid };
      }],
      ['twemproxy', async () => {
        const { daemon, cleanup } = await startTwemproxy(redis);
        cleanups.push(cleanup);
        return { ...direct, name: 'twemproxy', port: daemon.port, pid: daemon.pid };
      }],
      ['sluice', async () => {
        const s = await startSluice({ protocol: 'redis', upstreamPort: redis.port, user: 'default', password: redis.password });
        cleanups.push(() => s.stop());
        return { name: 'sluice', port: s.daemon.port, pid: s.daemon.pid, secret: s.token, user: 'bench' };
      }],
      ['sluice+policy', async () => {
        const s = await startSluice({ protocol: 'redis', upstreamPort: redis.port, user: 'default', password: redis.password }, { policy: true });
        cleanups.push(() => s.stop());
        return { name: 'sluice+policy', port: s.daemon.port, pid: s.daemon.pid, secret: s.token, user: 'bench' };
      }],
      ['sluice+recording', async () => {
        const s = await startSluice({ protocol: 'redis', upstreamPort: redis.port, user: 'default', password: redis.password }, { recording: true });
        cleanups.push(() => s.stop());
        return { name: 'sluice+recording', port: s.daemon.port, pid: s.daemon.pid, secret: s.token, user: 'bench' };
      }],
      ...baselineCandidates({ protocol: 'redis', upstreamPort: redis.port, user: 'default', password: redis.password }, cleanups),
    ];
    for (const [name, start] of candidates) {
      if (!wanted(name)) continue;
      try {
        const c = await start();
        await preflight(c);
        contenders.push(c);
      } catch (err) {
        const skip = (err as { skip?: boolean }).skip === true;
        absent.push({ name, state: skip ? 'skipped' : 'failed', reason: (err as Error).message.split('\n')[0] ?? String(err) });
        process.stderr.write(`${name}: ${skip ? 'skipped' : 'FAILED'}: ${(err as Error).message}\n`);
      }
    }

    const warmUp = WARMUP_PERCENT > 0 ? (w: string, c: Contender) => redisBenchmark(w, c, WARMUP_PERCENT) : undefined;
    const cells = await runRounds(workloads, contenders, ROUNDS, redisBenchmark, warmUp);
    const report: ReportInput = {
      title: `redis-benchmark, ${CLIENTS} clients`,
      rateUnit: 'requests/s',
      opName: 'request',
      workloads,
      contenders: contenders.map((c) => c.name),
      absent,
      cells,
      ratios: [['sluice', 'relay'], ['sluice+policy', 'relay'], ['sluice+recording', 'relay'], ['sluice+policy', 'sluice'], ['sluice+recording', 'sluice'], ['sluice', 'baseline'], ['sluice+recording', 'baseline+recording'], ['sluice+policy', 'baseline+policy'], ['sluice', 'twemproxy'], ['sluice', 'direct'], ['relay', 'direct'], ['twemproxy', 'direct']],
      rounds: ROUNDS,
    };
    const tables = buildTables(report);
    const idleAfter = await backgroundBusy();
    process.stdout.write(`\n${tablesText(tables)}`);
    process.stdout.write(`background: machine ${Math.round(idleAfter * 100)}% busy after the bench (contenders idle)\n`);
    const stamp = timestamp();
    const settings = { rounds: ROUNDS, warmUpPercent: WARMUP_PERCENT, clients: CLIENTS, requests: N, requestsPipelined: N_PIPELINED };
    const background = { before: idleBefore, after: idleAfter };
    const json = writeWorkFile('redis', 'json', stamp, `${JSON.stringify({ machine, settings, background, report }, null, 2)}\n`);
    const md = writeWorkFile('redis', 'md', stamp, `${machineText(machine)}\n\n${tablesMarkdown(tables)}`);
    process.stdout.write(`\nraw results: ${json}\nmarkdown:    ${md}\n`);
  } finally {
    for (const c of cleanups.reverse()) await c().catch(() => {});
  }
}

main().catch((err: unknown) => {
  process.stderr.write(`bench:redis failed: ${(err as Error).stack ?? String(err)}\n`);
  process.exitCode = 1;
});

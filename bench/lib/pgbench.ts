/**
 * pgbench as bench:pg and bench:pg-paired drive it: the database it needs,
 * the workloads, one run against a contender, and the preflight query that
 * proves a contender works end to end before it is measured.
 */
import type { PgServer } from '../../test/helpers/postgres.js';
import { PG_BIN, run } from '../../test/helpers/process.js';
import type { Contender } from './harness.js';

export const PGBENCH = `${PG_BIN}/pgbench`;
export const PSQL = `${PG_BIN}/psql`;

/** Workload name -> the pgbench flags that make it. */
export const PG_WORKLOADS: Record<string, string[]> = {
  'select simple': ['-S', '-M', 'simple'],
  'select prepared': ['-S', '-M', 'prepared'],
  'connect -C simple': ['-S', '-C', '-M', 'simple'],
};

export function pgClientEnv(c: Contender): NodeJS.ProcessEnv {
  // The secret goes through the environment, never argv.
  return { PGPASSWORD: c.secret, PGSSLMODE: 'disable', PGCONNECT_TIMEOUT: '10', PGAPPNAME: 'sluice-bench' };
}

/** `pgbench -i` at `scale` into the server's database. */
export async function initPgbench(pg: PgServer, scale: number): Promise<void> {
  const init = await run(PGBENCH, ['-i', '-q', '-s', String(scale), '-h', '127.0.0.1', '-p', String(pg.port), '-U', pg.user, pg.database], {
    env: { PGPASSWORD: pg.password },
    timeoutMs: 600_000,
  });
  if (init.code !== 0) throw new Error(`pgbench -i failed: ${init.stderr}`);
}

/** One real query through the contender before it is measured: proves it works end to end. */
export async function preflight(c: Contender, scale: number): Promise<void> {
  const r = await run(PSQL, ['-X', '-At', '-h', '127.0.0.1', '-p', String(c.port), '-U', c.user, '-d', 'app', '-c', 'SELECT count(*) FROM pgbench_branches'], {
    env: pgClientEnv(c),
    timeoutMs: 20_000,
  });
  if (r.code !== 0 || r.stdout.trim() !== String(scale)) {
    throw new Error(`preflight query failed (exit ${r.code}): ${(r.stderr || r.stdout).trim().split('\n')[0]}`);
  }
}

export interface PgbenchRun {
  workload: string;
  seconds: number;
  clients: number;
  jobs: number;
  /** Throttle to this many transactions per second in all (`pgbench -R`); unthrottled when absent. */
  rate?: number;
}

/** One pgbench run against `c`: its TPS and the transactions it counted; throws on any failed transaction. */
export async function pgbench(c: Contender, o: PgbenchRun): Promise<{ rate: number; ops: number }> {
  const flags = PG_WORKLOADS[o.workload];
  if (!flags) throw new Error(`unknown workload ${o.workload}`);
  const throttle = o.rate !== undefined ? ['-R', String(o.rate)] : [];
  const args = ['-h', '127.0.0.1', '-p', String(c.port), '-U', c.user, '-n', ...flags, ...throttle, '-c', String(o.clients), '-j', String(o.jobs), '-T', String(o.seconds), 'app'];
  const r = await run(PGBENCH, args, { env: pgClientEnv(c), timeoutMs: (o.seconds + 120) * 1000 });
  const tps = /^tps = ([\d.]+)/m.exec(r.stdout);
  const processed = /number of transactions actually processed: (\d+)/.exec(r.stdout);
  const failed = /number of failed transactions: (\d+)/.exec(r.stdout);
  if (r.code !== 0 || !tps || !processed) {
    throw new Error(`pgbench exit ${r.code ?? r.signal}: ${(r.stderr.trim().split('\n').find((l) => /error|fatal/i.test(l)) ?? r.stderr.trim().split('\n')[0] ?? '').slice(0, 300)}`);
  }
  if (failed && Number(failed[1]) > 0) throw new Error(`pgbench reported ${failed[1]} failed transactions`);
  return { rate: Number(tps[1]), ops: Number(processed[1]) };
}

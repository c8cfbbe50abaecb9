import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { Writable } from 'node:stream';
import { parseConfig } from '../../src/config/load.js';
import type { Config } from '../../src/config/types.js';
import { Gateway } from '../../src/gateway/gateway.js';
import { DevIssuer } from '../../src/identity/dev-issuer.js';
import { createLogger } from '../../src/log.js';
import { startPostgres, type PgServer } from './postgres.js';

/**
 * Runs a real Sluice gateway in the test process, configured from YAML text
 * through the real loader, with every log line captured so tests can grep
 * them for tokens and passwords.
 */
export interface TestGateway {
  gateway: Gateway;
  config: Config;
  stateDir: string;
  issuer: DevIssuer;
  /** Every JSON log line written so far. */
  logs: string[];
  port(target: string): number;
  token(sub: string, groups?: string[], extra?: { ttlSeconds?: number; claims?: Record<string, unknown>; audience?: string }): Promise<string>;
  close(): Promise<void>;
}

/**
 * With `opts.stateDir`, the gateway runs on that state directory (a restart
 * on the state of a gateway before it) and `close` leaves it for the caller.
 */
export async function startGateway(yaml: string, env: NodeJS.ProcessEnv = {}, opts: { stateDir?: string } = {}): Promise<TestGateway> {
  const stateDir = opts.stateDir ?? mkdtempSync(join(tmpdir(), 'sluice-test-'));
  const text = `state_dir: ${JSON.stringify(stateDir)}\n${yaml}`;
  const config = parseConfig(text, { baseDir: stateDir, source: join(stateDir, 'sluice.yaml'), env });
  const logs: string[] = [];
  const sink = new Writable({
    write(chunk: Buffer, _enc, done) {
      for (const line of chunk.toString('utf8').split('\n')) if (line) logs.push(line);
      done();
    },
  });
  const logger = createLogger(process.env.SLUICE_TEST_LOG_LEVEL ?? 'debug', sink);
  const gateway = await Gateway.start(config, { logger });
  const issuer = gateway.devIssuer ?? (await DevIssuer.open(stateDir));
  return {
    gateway,
    config,
    stateDir,
    issuer,
    logs,
    port: (target) => gateway.address(target).port,
    token: (sub, groups = [], extra = {}) => issuer.mint({ sub, groups, ...extra }),
    close: async () => {
      await gateway.close();
      if (opts.stateDir === undefined) rmSync(stateDir, { recursive: true, force: true });
    },
  };
}

/** YAML for a PostgreSQL target reaching a test server as its app role, password from the env. */
export function pgTargetYaml(
  name: string,
  pg: { port: number; user: string; database: string },
  extra: { tls?: string; allowInsecureLoopback?: boolean; limits?: string } = {},
): string {
  return `
  ${name}:
    protocol: postgres
    listen: 127.0.0.1:0
    allow_insecure_loopback: ${extra.allowInsecureLoopback ?? true}
    ${extra.limits ? `limits: ${extra.limits}` : ''}
    upstream: { host: 127.0.0.1, port: ${pg.port}, database: ${pg.database}, user: ${pg.user}, password_env: TEST_PG_PASSWORD, tls: ${extra.tls ?? 'disable'} }`;
}

/**
 * A Redis target's YAML (under `targets:`), reaching the test server as its
 * ACL user `app`, whose password the gateway reads from `passwordEnv`.
 */
export function redisTargetYaml(name: string, redis: { port: number }, passwordEnv = 'REDIS_PW'): string {
  return `
  ${name}:
    protocol: redis
    listen: 127.0.0.1:0
    allow_insecure_loopback: true
    upstream: { host: 127.0.0.1, port: ${redis.port}, user: app, password_env: ${passwordEnv}, db: 0, tls: disable }`;
}

/** Deletes a directory made by a test, quietly. */
export function removeDir(dir: string): void {
  rmSync(dir, { recursive: true, force: true });
}

/**
 * The common fixture of the PostgreSQL client tests: a real PostgreSQL and a
 * gateway with one target `app-db` and one policy letting group `ci` in,
 * both torn down with the test.
 */
export async function startPgGateway(t: { teardown(fn: () => unknown): void }): Promise<{ pg: PgServer; gw: TestGateway }> {
  const pg = await startPostgres();
  t.teardown(() => pg.stop());
  const gw = await startGateway(
    `identity: { dev_issuer: true }
targets:${pgTargetYaml('app-db', pg)}
policies:
  - name: ci-jobs
    subjects: { groups: [ci] }
    targets: [app-db]
`,
    { TEST_PG_PASSWORD: pg.password },
  );
  t.teardown(() => gw.close());
  return { pg, gw };
}

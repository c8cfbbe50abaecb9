/**
 * The CLI as a user drives it: the built `dist/src/cli/main.js` run as a
 * child process, judged by exit codes and output. `serve` is started in a
 * fresh working directory, and the psql command it prints is run as printed
 * (PGPASSWORD read from the file it names, the conninfo string as is).
 */
import t from 'tap';
import { spawn } from 'node:child_process';
import { existsSync, mkdtempSync, readFileSync, realpathSync, statSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { startPostgres } from '../helpers/postgres.js';
import { removeDir } from '../helpers/gateway.js';
import { run } from '../helpers/process.js';

/** dist/test/integration/cli.test.js -> dist/src/cli/main.js */
const CLI = fileURLToPath(new URL('../../src/cli/main.js', import.meta.url));

function tempDir(): string {
  const dir = mkdtempSync(join(tmpdir(), 'sluice-cli-'));
  t.teardown(() => removeDir(dir));
  return dir;
}

/** Runs `sluice ...args` in `cwd` with no PG* variables leaking in from the test's own environment. */
function sluice(args: string[], cwd: string, env: NodeJS.ProcessEnv = {}): ReturnType<typeof run> {
  return run(process.execPath, [CLI, ...args], {
    cwd,
    // SLUICE_LOG_LEVEL: a developer's own would change what serve logs.
    env: { PGHOST: '', PGPORT: '', PGUSER: '', PGPASSWORD: '', PGDATABASE: '', SLUICE_LOG_LEVEL: '', APP_DB_PASSWORD: 'cli-test-secret', ...env },
    timeoutMs: 60_000,
  });
}

const VALID = `state_dir: .sluice
identity: { dev_issuer: true }
targets:
  app-db:
    protocol: postgres
    listen: 127.0.0.1:0
    allow_insecure_loopback: true
    upstream: { host: 127.0.0.1, port: 5432, database: app, user: app_ci, password_env: APP_DB_PASSWORD, tls: disable }
policies:
  - name: ci-jobs
    subjects: { groups: [ci] }
    targets: [app-db]
`;

t.test('serve: SLUICE_LOG_LEVEL overrides log.level, and an unknown level is a usage error', async (t) => {
  const dir = tempDir();
  writeFileSync(join(dir, 'good.yaml'), VALID);
  const r = await sluice(['serve', '--config', 'good.yaml'], dir, { SLUICE_LOG_LEVEL: 'loud' });
  t.equal(r.code, 2);
  t.match(r.stderr, /SLUICE_LOG_LEVEL must be one of fatal, error, warn, info, debug, trace, silent, not "loud"/);
  t.notOk(existsSync(join(dir, '.sluice', 'sluice.db')), 'refused before the gateway started');

  // At its default level (info) serve logs its start (the quickstart test below reads those lines); silent, nothing.
  const child = spawn(process.execPath, [CLI, 'serve', '--config', 'good.yaml'], {
    cwd: dir,
    env: { ...process.env, APP_DB_PASSWORD: 'cli-test-secret', SLUICE_LOG_LEVEL: 'silent' },
    stdio: ['ignore', 'pipe', 'pipe'],
  });
  t.teardown(() => {
    if (child.exitCode === null && child.signalCode === null) child.kill('SIGKILL');
  });
  let stdout = '';
  let stderr = '';
  child.stdout.on('data', (c: Buffer) => (stdout += c.toString('utf8')));
  const exited = new Promise<number | null>((resolve) => child.once('exit', (code) => resolve(code)));
  await new Promise<void>((resolve, reject) => {
    const timer = setTimeout(() => reject(new Error(`serve did not start within 20 s; stderr:\n${stderr}`)), 20_000);
    child.once('exit', () => reject(new Error(`serve exited early; stderr:\n${stderr}`)));
    child.stderr.on('data', (c: Buffer) => {
      stderr += c.toString('utf8');
      if (/psql "/.test(stderr)) {
        clearTimeout(timer);
        resolve();
      }
    });
  });
  child.kill('SIGTERM');
  t.equal(await exited, 0);
  t.equal(stdout, '', 'SLUICE_LOG_LEVEL=silent: not one log line');
});

t.test('check-config', async (t) => {
  const dir = tempDir();
  writeFileSync(join(dir, 'good.yaml'), VALID);
  let r = await sluice(['check-config', '--config', 'good.yaml'], dir);
  t.equal(r.code, 0, 'a valid file exits 0');
  t.match(r.stdout, /good\.yaml: ok/);

  writeFileSync(
    join(dir, 'bad.yaml'),
    `state_dir: .sluice
identity:
  dev_issuer: yes-please
  bogus_key: 1
targets:
  app-db:
    protocol: postgres
    listen: 127.0.0.1:99999
    upstream: { host: 127.0.0.1, port: 5432, database: app, user: app_ci, password: hunter2-not-echoed }
policies:
  - name: ci-jobs
    subjects: { groups: [ci] }
    targets: [nope]
`,
  );
  r = await sluice(['check-config', '--config', 'bad.yaml'], dir);
  t.equal(r.code, 2, 'a bad file exits 2');
  const problems = r.stderr.split('\n').filter((l) => l.startsWith('  - '));
  t.ok(problems.length >= 5, `one line per problem (${problems.length})`);
  for (const path of ['identity.bogus_key', 'identity.dev_issuer', 'targets.app-db.upstream.password', 'targets.app-db.listen', 'policies[0].targets[0]']) {
    t.ok(problems.some((l) => l.startsWith(`  - ${path}:`)), `a line names ${path}`);
  }
  t.notMatch(r.stderr + r.stdout, 'hunter2-not-echoed', 'an inlined password is not echoed');

  r = await sluice(['check-config', '--config', 'missing.yaml'], dir);
  t.equal(r.code, 2, 'a missing file exits 2');
  t.match(r.stderr, /missing\.yaml/);

  const empty = tempDir();
  r = await sluice(['check-config'], empty);
  t.equal(r.code, 0, 'no --config and no ./sluice.yaml: the embedded default');
  t.match(r.stdout, /embedded default config: ok \(1 target\(s\), 1 policy\)/);
});

t.test('token', async (t) => {
  const dir = tempDir();
  writeFileSync(join(dir, 'sluice.yaml'), VALID);
  const before = Math.floor(Date.now() / 1000);
  const r = await sluice(['token', '--sub', 'ci', '--group', 'ci', '--ttl', '10m', '--config', 'sluice.yaml'], dir);
  t.equal(r.code, 0, r.stderr);
  const jwt = r.stdout.trim();
  const parts = jwt.split('.');
  t.equal(parts.length, 3, 'a compact JWS');
  const header = JSON.parse(Buffer.from(parts[0]!, 'base64url').toString('utf8')) as Record<string, unknown>;
  const payload = JSON.parse(Buffer.from(parts[1]!, 'base64url').toString('utf8')) as Record<string, unknown>;
  t.not(header.alg, 'none');
  t.equal(payload.sub, 'ci');
  t.same(payload.groups, ['ci']);
  const exp = payload.exp as number;
  t.ok(exp >= before + 600 - 5 && exp <= Math.floor(Date.now() / 1000) + 600 + 5, `exp is about now + 600 s (${exp - before})`);

  const missing = await sluice(['token', '--group', 'ci', '--config', 'sluice.yaml'], dir);
  t.equal(missing.code, 2, 'token without --sub exits 2');
  t.match(missing.stderr, /--sub/);

  const tooLong = await sluice(['token', '--sub', 'ci', '--ttl', '2d', '--config', 'sluice.yaml'], dir);
  t.equal(tooLong.code, 2, 'a --ttl past identity.max_token_lifetime exits 2');
  t.equal(tooLong.stdout, '', 'and mints nothing');
  t.match(tooLong.stderr, /--ttl 2d is longer than identity\.max_token_lifetime \(86400s\); the gateway would refuse the token/);
});

t.test('usage errors and version', async (t) => {
  const dir = tempDir();
  const unknown = await sluice(['frobnicate'], dir);
  t.equal(unknown.code, 2, 'unknown command exits 2');
  t.match(unknown.stderr, /unknown command "frobnicate"/);
  const badFlag = await sluice(['check-config', '--no-such-flag'], dir);
  t.equal(badFlag.code, 2, 'an unknown option exits 2');
  const v = await sluice(['version'], dir);
  t.equal(v.code, 0);
  t.match(v.stdout.trim(), /^\d+\.\d+\.\d+/);
});

t.test('a reader that stops early (| head) ends a command quietly, not with an EPIPE trace', async (t) => {
  const dir = tempDir();
  // `head -c 0` exits at once, closing the pipe; sluice starts writing after it has.
  const script = `{ sleep 0.5; "$0" "$1" help 2>"$2/stderr.txt"; echo "exit=$?" >"$2/code.txt"; } | head -c 0`;
  const r = await run('bash', ['-c', script, process.execPath, CLI, dir], { cwd: dir, timeoutMs: 60_000 });
  t.equal(r.code, 0);
  t.equal(readFileSync(join(dir, 'code.txt'), 'utf8').trim(), 'exit=0', 'sluice exits 0');
  t.equal(readFileSync(join(dir, 'stderr.txt'), 'utf8'), '', 'and prints nothing on stderr');
});

t.test('serve prints a psql command that works as printed, never the token itself, and stops on SIGTERM', async (t) => {
  const pgServer = await startPostgres();
  t.teardown(() => pgServer.stop());
  const dir = tempDir();
  // The embedded default listens on the fixed 127.0.0.1:6432, which may be
  // taken on a test machine: a config file with port 0 in the working
  // directory (found as ./sluice.yaml, as a user would have it).
  writeFileSync(
    join(dir, 'sluice.yaml'),
    `state_dir: .sluice
identity: { dev_issuer: true }
targets:
  pg:
    protocol: postgres
    listen: 127.0.0.1:0
    allow_insecure_loopback: true
    upstream: { host: 127.0.0.1, port: ${pgServer.port}, database: app, user: app_user, password_env: PGPASSWORD, tls: disable }
policies:
  - name: dev
    subjects: { groups: [dev] }
    targets: [pg]
`,
  );
  const child = spawn(process.execPath, [CLI, 'serve'], {
    cwd: dir,
    env: { ...process.env, PGHOST: '127.0.0.1', PGUSER: pgServer.user, PGPASSWORD: pgServer.password, PGDATABASE: pgServer.database },
    stdio: ['ignore', 'pipe', 'pipe'],
  });
  const exited = new Promise<number | null>((resolve) => child.once('exit', (code) => resolve(code)));
  t.teardown(() => {
    if (child.exitCode === null && child.signalCode === null) child.kill('SIGKILL');
  });
  let stdout = '';
  let stderr = '';
  child.stdout.on('data', (c: Buffer) => (stdout += c.toString('utf8')));
  const command = await new Promise<RegExpMatchArray>((resolve, reject) => {
    const timer = setTimeout(() => reject(new Error(`no quickstart within 20 s; stderr:\n${stderr}`)), 20_000);
    child.stderr.on('data', (c: Buffer) => {
      stderr += c.toString('utf8');
      const m = /^ {4}(PGPASSWORD="\$\(cat ([^)]+)\)" psql "([^"]+)")$/m.exec(stderr);
      if (m) {
        clearTimeout(timer);
        resolve(m);
      }
    });
    child.once('exit', () => reject(new Error(`serve exited early; stderr:\n${stderr}`)));
  });
  const [, line, tokenFile, conninfo] = command as unknown as [string, string, string, string];
  t.equal(realpathSync(tokenFile), realpathSync(join(dir, '.sluice', 'dev-issuer', 'token')), 'the token is left in the state dir');
  t.equal(statSync(tokenFile).mode & 0o077, 0, 'in a file only its owner may read');
  const token = readFileSync(tokenFile, 'utf8').trim();
  t.match(token, /^[\w-]+\.[\w-]+\.[\w-]+$/, 'the file holds a JWT');
  const port = Number(/port=(\d+)/.exec(conninfo)?.[1]);
  t.ok(port > 0, `the printed command names the real port (${port}), not 0`);
  t.match(conninfo, /host=127\.0\.0\.1 /);

  // As a user would paste it: the shell reads the token from the file.
  const psql = await run('sh', ['-c', `${line} -X -At -c 'select 1'`], { env: { PGPASSWORD: '' }, timeoutMs: 30_000 });
  t.equal(psql.code, 0, `the printed line exits 0 (${psql.stderr.trim()})`);
  t.equal(psql.stdout.trim(), '1', 'psql prints 1');

  child.kill('SIGTERM');
  t.equal(await exited, 0, 'serve exits 0 on SIGTERM');
  t.notOk(existsSync(tokenFile), 'and removes the token it minted');
  const logLines = stdout.split('\n').filter((l) => l.length > 0);
  t.ok(logLines.length > 0, 'serve logged to stdout');
  for (const line of logLines) JSON.parse(line);
  t.pass('every stdout line is JSON');
  t.ok(logLines.some((l) => l.includes('session started')), 'the psql session was logged');
  t.notOk(stdout.includes(token), 'no log line carries the token');
  t.notOk(stderr.includes(token), 'nor does anything serve printed on stderr');
  t.notOk(stdout.includes(pgServer.password), 'no log line carries the upstream password');
});

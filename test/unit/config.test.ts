import t from 'tap';
import { join } from 'node:path';
import { ErrorCodes } from '../../src/errors.js';
import { ConfigError, loadConfig, parseConfig, validateConfigFile } from '../../src/config/load.js';
import { DEFAULT_LIMITS, DEV_AUDIENCE, DEV_ISSUER, embeddedDefaultConfig } from '../../src/config/defaults.js';
import { Secret } from '../../src/config/secret.js';
import type { Config, PostgresTarget, RedisTarget } from '../../src/config/types.js';

const FULL_EXAMPLE = `
state_dir: .sluice
log: { level: info }
identity:
  dev_issuer: true
  max_token_bytes: 16384
  clock_tolerance: 30s
  max_token_lifetime: 12h
  issuers:
    - issuer: https://token.actions.githubusercontent.com
      audience: sluice
      jwks_uri: https://token.actions.githubusercontent.com/.well-known/jwks
      groups_claim: groups
      algorithms: [RS256, ES256]
tls:
  cert_file: server.crt
  key_file: server.key
limits:
  pre_auth_timeout: 10s
  max_pre_auth_connections: 64
  idle_timeout: 0
  max_message_size: 64MiB
  upstream_connect_timeout: 10s
targets:
  app-db:
    protocol: postgres
    listen: 127.0.0.1:6432
    allow_insecure_loopback: true
    upstream: { host: 127.0.0.1, port: 5432, database: app, user: app_ci, password_env: APP_DB_PASSWORD, tls: disable }
  cache:
    protocol: redis
    listen: 127.0.0.1:6380
    allow_insecure_loopback: true
    tls: false
    upstream: { host: 127.0.0.1, port: 6379, user: default, password_env: REDIS_PASSWORD, db: 0, tls: disable }
policies:
  - name: ci-jobs
    subjects: { groups: [ci] }
    targets: [app-db]
`;

/** A valid config to break one piece of at a time. */
const MINIMAL = `
identity: { dev_issuer: true }
targets:
  app-db:
    protocol: postgres
    listen: 127.0.0.1:6432
    upstream: { host: 127.0.0.1, user: app }
`;

const limits = DEFAULT_LIMITS;

/** The problems parseConfig reports for `yaml`, or [] when it accepts it. */
function problemsOf(yaml: string, opts: { baseDir?: string; env?: NodeJS.ProcessEnv } = {}): string[] {
  try {
    parseConfig(yaml, { baseDir: opts.baseDir ?? '/nonexistent', env: opts.env ?? {} });
    return [];
  } catch (err) {
    if (err instanceof ConfigError) return err.problems;
    throw err;
  }
}

/** `targets:` with one postgres target `app-db` whose upstream mapping is `upstream`. */
function pgTarget(upstream: string, extra = ''): string {
  return `identity: { dev_issuer: true }
targets:
  app-db:
    protocol: postgres
    listen: 127.0.0.1:6432
    upstream: ${upstream}
${extra}`;
}

t.test('the full example parses to the normalised shape', async (t) => {
  const dir = t.testdir({ 'server.crt': 'cert', 'server.key': 'key', 'sluice.yaml': FULL_EXAMPLE });
  const env = { APP_DB_PASSWORD: 'pg-pass-1', REDIS_PASSWORD: 'redis-pass-2' };
  const config = await loadConfig(join(dir, 'sluice.yaml'), env);

  const pg = config.targets[0] as PostgresTarget;
  const redis = config.targets[1] as RedisTarget;
  t.ok(pg.upstream.password instanceof Secret);
  t.equal(pg.upstream.password?.reveal(), 'pg-pass-1');
  t.equal(pg.upstream.password?.origin, 'env APP_DB_PASSWORD');
  t.equal(redis.upstream.password?.reveal(), 'redis-pass-2');
  t.equal(redis.upstream.password?.origin, 'env REDIS_PASSWORD');
  t.notMatch(JSON.stringify(config), /pg-pass-1|redis-pass-2/, 'a config serialises without its secrets');
  delete pg.upstream.password;
  delete redis.upstream.password;

  const expected: Config = {
    source: join(dir, 'sluice.yaml'),
    stateDir: join(dir, '.sluice'),
    identity: {
      devIssuer: true,
      issuers: [{
        issuer: 'https://token.actions.githubusercontent.com',
        audience: 'sluice',
        jwksUri: 'https://token.actions.githubusercontent.com/.well-known/jwks',
        groupsClaim: 'groups',
        algorithms: ['RS256', 'ES256'],
      }],
      maxTokenBytes: 16384,
      clockToleranceSeconds: 30,
      maxTokenLifetimeSeconds: 12 * 3600,
    },
    tls: { certFile: join(dir, 'server.crt'), keyFile: join(dir, 'server.key') },
    targets: [
      {
        name: 'app-db',
        protocol: 'postgres',
        listen: { host: '127.0.0.1', port: 6432 },
        allowInsecureLoopback: true,
        limits: { preAuthTimeoutMs: 10_000, maxPreAuthConnections: 64, idleTimeoutMs: 0, maxMessageBytes: 64 * 1024 * 1024, upstreamConnectTimeoutMs: 10_000, endAtTokenExpiry: true },
        upstream: { host: '127.0.0.1', port: 5432, database: 'app', user: 'app_ci', tls: 'disable' },
      },
      {
        name: 'cache',
        protocol: 'redis',
        listen: { host: '127.0.0.1', port: 6380 },
        allowInsecureLoopback: true,
        tls: false,
        limits: { preAuthTimeoutMs: 10_000, maxPreAuthConnections: 64, idleTimeoutMs: 0, maxMessageBytes: 64 * 1024 * 1024, upstreamConnectTimeoutMs: 10_000, endAtTokenExpiry: true },
        upstream: { host: '127.0.0.1', port: 6379, user: 'default', db: 0, tls: 'disable' },
      },
    ],
    policies: [{ name: 'ci-jobs', subjects: { groups: ['ci'] }, targets: ['app-db'], default: 'allow', rules: [] }],
    approvals: { timeoutMs: 300_000, maxPendingPerSubject: 10, maxRequestsPerMinute: 30 },
    log: { level: 'info' },
  };
  t.strictSame(config, expected);
});

t.test('require_auth: one method or a list, postgres targets only', async (t) => {
  const config = parseConfig(`
identity: { dev_issuer: true }
targets:
  one: { protocol: postgres, listen: 127.0.0.1:6432, upstream: { host: db.example.com, user: app, tls: require, require_auth: scram-sha-256 } }
  two: { protocol: postgres, listen: 127.0.0.1:6433, upstream: { host: db.example.com, user: app, require_auth: [scram-sha-256, md5] } }
`, { baseDir: '/x', env: {} });
  t.strictSame((config.targets[0] as PostgresTarget).upstream.requireAuth, ['scram-sha-256']);
  t.strictSame((config.targets[1] as PostgresTarget).upstream.requireAuth, ['scram-sha-256', 'md5']);
  t.strictSame(problemsOf(`
identity: { dev_issuer: true }
targets:
  cache: { protocol: redis, listen: 127.0.0.1:6380, upstream: { host: 127.0.0.1, require_auth: none } }
`), ['targets.cache.upstream.require_auth: unknown key; expected one of host, port, user, password_env, password_file, tls, ca_file, server_name, db (require_auth is for postgres targets: a Redis server has one way to log in, AUTH)']);
});

t.test('omitted keys get their defaults', async (t) => {
  const config = parseConfig(`
identity:
  issuers:
    - { issuer: https://idp.example, audience: sluice, jwks_uri: https://idp.example/jwks }
targets:
  local:
    protocol: postgres
    listen: "[::1]:6432"
    upstream: { host: 127.0.0.1, user: app }
  remote:
    protocol: postgres
    listen: 0.0.0.0:6433
    upstream: { host: db.example.com, user: app, database: appdb }
  cache:
    protocol: redis
    listen: localhost:6380
    upstream: { host: 127.0.0.1 }
`, { baseDir: '/etc/sluice', env: {} });

  t.equal(config.source, undefined);
  t.equal(config.stateDir, '/etc/sluice/.sluice', 'state dir resolves against the config directory');
  t.equal(config.tls, undefined);
  t.strictSame(config.log, { level: 'info' });
  t.strictSame(config.policies, [], 'no policies is allowed');
  t.strictSame(config.identity, {
    devIssuer: false,
    issuers: [{ issuer: 'https://idp.example', audience: 'sluice', jwksUri: 'https://idp.example/jwks', groupsClaim: 'groups', algorithms: ['RS256', 'ES256'] }],
    maxTokenBytes: 16384,
    clockToleranceSeconds: 30,
    maxTokenLifetimeSeconds: 24 * 3600,
  });
  const [local, remote, cache] = config.targets as [PostgresTarget, PostgresTarget, RedisTarget];
  t.strictSame(local.listen, { host: '::1', port: 6432 }, 'IPv6 listen loses its brackets');
  t.equal(local.allowInsecureLoopback, false);
  t.strictSame(local.limits, { ...limits });
  t.strictSame(local.upstream, { host: '127.0.0.1', port: 5432, user: 'app', database: 'app', tls: 'disable' },
    'database defaults to the user; a loopback upstream defaults to tls: disable');
  t.strictSame(remote.upstream, { host: 'db.example.com', port: 5432, user: 'app', database: 'appdb', tls: 'verify-full' },
    'a remote upstream defaults to tls: verify-full');
  t.equal(cache.tls, false);
  t.strictSame(cache.upstream, { host: '127.0.0.1', port: 6379, user: 'default', db: 0, tls: 'disable' });
});

t.test('durations, sizes, and per-target limits over global ones', async (t) => {
  const config = parseConfig(`
identity: { dev_issuer: true, clock_tolerance: 1500, max_token_bytes: 8192 }
limits: { pre_auth_timeout: 5s, idle_timeout: 5m, max_message_size: 512KiB, upstream_connect_timeout: 250ms, max_pre_auth_connections: 8 }
targets:
  a:
    protocol: postgres
    listen: 127.0.0.1:6432
    upstream: { host: 127.0.0.1, user: app }
  b:
    protocol: redis
    listen: 127.0.0.1:6380
    limits: { idle_timeout: 1h, max_message_size: 1GiB, end_at_token_expiry: false }
    upstream: { host: 127.0.0.1, db: 3 }
`, { baseDir: '/x', env: {} });
  t.equal(config.identity.clockToleranceSeconds, 1.5, 'a bare number is milliseconds');
  t.equal(config.identity.maxTokenBytes, 8192);
  t.strictSame(config.targets[0]?.limits, {
    preAuthTimeoutMs: 5000, maxPreAuthConnections: 8, idleTimeoutMs: 300_000, maxMessageBytes: 512 * 1024, upstreamConnectTimeoutMs: 250,
    endAtTokenExpiry: true,
  });
  t.strictSame(config.targets[1]?.limits, {
    preAuthTimeoutMs: 5000, maxPreAuthConnections: 8, idleTimeoutMs: 3_600_000, maxMessageBytes: 1024 ** 3, upstreamConnectTimeoutMs: 250,
    endAtTokenExpiry: false,
  }, 'the target overrides only what it names');
});

t.test('subjects: strings become lists, claims keep their paths', async (t) => {
  const config = parseConfig(`${MINIMAL}
policies:
  - name: p
    subjects:
      sub: 'repo:acme/*'
      issuer: ${DEV_ISSUER}
      claims: { repository: acme/app, ref: ['refs/heads/main', 'refs/tags/*'], realm_access.roles: admin }
    targets: [app-db]
`, { baseDir: '/x', env: {} });
  t.strictSame(config.policies[0]?.subjects, {
    sub: ['repo:acme/*'],
    issuer: [DEV_ISSUER],
    claims: { repository: ['acme/app'], ref: ['refs/heads/main', 'refs/tags/*'], 'realm_access.roles': ['admin'] },
  });
});

t.test('secrets come from password_file and the environment', async (t) => {
  const dir = t.testdir({ 'pw': 'from-file\n' });
  const config = parseConfig(pgTarget('{ host: 127.0.0.1, user: app, password_file: pw }'), { baseDir: dir, env: {} });
  const pw = (config.targets[0] as PostgresTarget).upstream.password;
  t.equal(pw?.reveal(), 'from-file', 'the trailing newline is not part of the password');
  t.equal(pw?.origin, `file ${join(dir, 'pw')}`);
  const noPw = parseConfig(pgTarget('{ host: 127.0.0.1, user: app }'), { baseDir: dir, env: {} });
  t.equal((noPw.targets[0] as PostgresTarget).upstream.password, undefined, 'neither key = no password (trust)');
});

t.test('recording: max_backlog as a size, the others kept at their defaults', async (t) => {
  const config = parseConfig(`${MINIMAL}recording: { max_backlog: 32MiB }\n`, { baseDir: '/x', env: {} });
  t.strictSame(config.recording, { enabled: true, maxBytes: 1024 ** 3, flushIntervalMs: 200, maxBacklogBytes: 32 * 1024 * 1024, retentionMs: 30 * 24 * 3_600_000, fsync: 'close' });
});

t.test('audit.retention and recording.retention: days, 0 to keep forever, at most 100 years', async (t) => {
  const parse = (yaml: string) => parseConfig(`${MINIMAL}${yaml}\n`, { baseDir: '/x', env: {} });
  t.equal(parse('audit: { retention: 365d }').audit?.retentionMs, 365 * 24 * 3_600_000);
  t.equal(parse('audit: { retention: 12h }').audit?.retentionMs, 12 * 3_600_000);
  t.equal(parse('audit: { enabled: true }').audit?.retentionMs, 0, 'omitted: kept forever');
  t.equal(parse('audit: { retention: 0 }').audit?.retentionMs, 0);
  t.equal(parse('recording: { retention: 36500d }').recording?.retentionMs, 36_500 * 24 * 3_600_000);
  t.throws(() => parse('audit: { retention: 36501d }'), /audit\.retention: expected at most 36500d \(or 0 to keep forever\), found "36501d"/);
  t.throws(() => parse('recording: { retention: 99999999d }'), /recording\.retention: expected at most 36500d/);
  t.throws(() => parse('audit: { retention: forever }'), /audit\.retention: expected a duration such as 365d/);
});

t.test('recording: fsync close (the default) or off', async (t) => {
  t.equal(parseConfig(`${MINIMAL}recording: { enabled: true }\n`, { baseDir: '/x', env: {} }).recording?.fsync, 'close', 'omitted: close');
  t.equal(parseConfig(`${MINIMAL}recording: { fsync: off }\n`, { baseDir: '/x', env: {} }).recording?.fsync, 'off');
  t.equal(parseConfig(`${MINIMAL}recording: { fsync: close }\n`, { baseDir: '/x', env: {} }).recording?.fsync, 'close');
});

t.test('api.request_timeout and approvals.max_pending_per_subject', async (t) => {
  const config = parseConfig(`${MINIMAL}api: { listen: 127.0.0.1:8080, request_timeout: 2s }\napprovals: { max_pending_per_subject: 3 }\n`, { baseDir: '/x', env: {} });
  t.equal(config.api?.requestTimeoutMs, 2000);
  t.equal(config.approvals.maxPendingPerSubject, 3);
  t.equal(parseConfig(`${MINIMAL}api: { listen: 127.0.0.1:8080 }\n`, { baseDir: '/x', env: {} }).api?.requestTimeoutMs, undefined, 'omitted: the API default');
  t.throws(() => parseConfig(`${MINIMAL}approvals: { max_pending_per_subject: 0 }\n`, { baseDir: '/x', env: {} }), /approvals\.max_pending_per_subject/);
  // 0 would be "no timeout" to Node and fastify, or expire every approval at once: refused, as limits' timers are.
  t.throws(() => parseConfig(`${MINIMAL}api: { listen: 127.0.0.1:8080, request_timeout: 0 }\n`, { baseDir: '/x', env: {} }), /api\.request_timeout: expected a duration greater than 0, found 0/);
  t.throws(() => parseConfig(`${MINIMAL}approvals: { timeout: 0s }\n`, { baseDir: '/x', env: {} }), /approvals\.timeout: expected a duration greater than 0/);
  t.throws(() => parseConfig(`${MINIMAL}approvals: { timeout: 700h }\n`, { baseDir: '/x', env: {} }), /approvals\.timeout: expected at most 596h/);
  t.throws(() => parseConfig(`${MINIMAL}approvals: { webhook: { url: 'https://hooks.invalid/x', timeout: 0 } }\n`, { baseDir: '/x', env: {} }), /approvals\.webhook\.timeout: expected a duration greater than 0/);
  t.equal(parseConfig(`${MINIMAL}approvals: { timeout: 90s }\n`, { baseDir: '/x', env: {} }).approvals.timeoutMs, 90_000);
});

t.test('each problem is one line naming the key, what was expected and what was found', async (t) => {
  const dir = t.testdir({ 'empty-pw': '', 'ca.pem': 'x', 'bad.jwks': 'not json', 'ok.jwks': '{"keys": []}' });
  const cases: [string, string, string][] = [
    ['port not a number', pgTarget('{ host: 127.0.0.1, port: abc, user: app }'),
      'targets.app-db.upstream.port: expected an integer 1-65535, found "abc"'],
    ['port out of range', pgTarget('{ host: 127.0.0.1, port: 70000, user: app }'),
      'targets.app-db.upstream.port: expected an integer 1-65535, found 70000'],
    ['listen port out of range', MINIMAL.replace('127.0.0.1:6432', '127.0.0.1:99999'),
      'targets.app-db.listen: expected a port 0-65535, found "127.0.0.1:99999"'],
    ['listen not host:port', MINIMAL.replace('127.0.0.1:6432', '6432'),
      'targets.app-db.listen: expected host:port such as 127.0.0.1:6432 or [::1]:6432, found 6432'],
    ['required key missing', pgTarget('{ host: 127.0.0.1 }'),
      'targets.app-db.upstream.user: expected a non-empty string, found nothing (the key is required)'],
    ['unknown key', `${MINIMAL}colour: blue\n`,
      'colour: unknown key; expected one of state_dir, log, identity, tls, limits, targets, policies, masking, audit, recording, api, approvals'],
    ['unknown protocol', `${MINIMAL}  db2: { protocol: mysql, listen: 127.0.0.1:1 }\n`,
      'targets.db2.protocol: expected postgres or redis, found "mysql"'],
    ['protocol not a string', `${MINIMAL}  db2: { protocol: 5, listen: 127.0.0.1:1 }\n`,
      'targets.db2.protocol: expected postgres or redis, found 5'],
    ['protocol missing', `${MINIMAL}  db2: { listen: 127.0.0.1:1 }\n`,
      'targets.db2.protocol: expected postgres or redis, found nothing (the key is required)'],
    ['redis-only key in a postgres upstream', pgTarget('{ host: 127.0.0.1, user: app, db: 2 }'),
      'targets.app-db.upstream.db: unknown key; expected one of host, port, user, password_env, password_file, tls, ca_file, server_name, database, require_auth (db is for redis targets; PostgreSQL targets name a database)'],
    ['bad upstream tls mode', pgTarget('{ host: 127.0.0.1, user: app, tls: false }'),
      'targets.app-db.upstream.tls: expected one of disable, require, verify-full, found false'],
    ['inline password', pgTarget('{ host: 127.0.0.1, user: app, password: hunter2 }'),
      'targets.app-db.upstream.password: secrets are never written in the config file; use password_env: VARIABLE_NAME or password_file: /path/to/file'],
    ['password_env unset', pgTarget('{ host: 127.0.0.1, user: app, password_env: APP_DB_PASSWORD }'),
      'targets.app-db.upstream.password_env: expected the name of a set environment variable, found APP_DB_PASSWORD, which is not set'],
    ['password_file missing', pgTarget('{ host: 127.0.0.1, user: app, password_file: nope.txt }'),
      `targets.app-db.upstream.password_file: expected a readable file, found ${join(dir, 'nope.txt')} (ENOENT)`],
    ['password_file empty', pgTarget('{ host: 127.0.0.1, user: app, password_file: empty-pw }'),
      `targets.app-db.upstream.password_file: expected a file holding the password, found ${join(dir, 'empty-pw')}, which is empty`],
    ['both password sources', pgTarget('{ host: 127.0.0.1, user: app, password_file: x, password_env: Y }'),
      'targets.app-db.upstream: expected one of password_env or password_file, found both'],
    ['ca_file missing', pgTarget('{ host: db.example.com, user: app, tls: verify-full, ca_file: missing.pem }'),
      `targets.app-db.upstream.ca_file: expected a readable file, found ${join(dir, 'missing.pem')} (ENOENT)`],
    ['ca_file without verify-full', pgTarget('{ host: db.example.com, user: app, tls: require, ca_file: ca.pem }'),
      'targets.app-db.upstream.ca_file: expected only with tls: verify-full, found tls: require'],
    ['client tls files missing', `${MINIMAL}tls: { cert_file: server.crt, key_file: server.key }\n`,
      `tls.cert_file: expected a readable file, found ${join(dir, 'server.crt')} (ENOENT)`],
    ['redis-only key on postgres', MINIMAL.replace('    upstream:', '    tls: true\n    upstream:'),
      'targets.app-db.tls: unknown key; expected one of protocol, listen, allow_insecure_loopback, limits, upstream (tls: true is for redis targets; PostgreSQL clients ask for TLS themselves and get the top-level tls certificate)'],
    ['insecure flag on a public listener', MINIMAL.replace('127.0.0.1:6432', '0.0.0.0:6432').replace('    upstream:', '    allow_insecure_loopback: true\n    upstream:'),
      'targets.app-db.allow_insecure_loopback: expected only on a loopback listen address (127.0.0.0/8, ::1, localhost), found listen 0.0.0.0:6432'],
    ['duplicate listen', `${MINIMAL}  other:\n    protocol: redis\n    listen: 127.0.0.1:6432\n    upstream: { host: 127.0.0.1 }\n`,
      'targets.other.listen: expected an address no other target listens on, found 127.0.0.1:6432, which clashes with targets.app-db.listen'],
    ['wildcard listen clashes too', `${MINIMAL}  other:\n    protocol: redis\n    listen: 0.0.0.0:6432\n    upstream: { host: 127.0.0.1 }\n`,
      'targets.other.listen: expected an address no other target listens on, found 0.0.0.0:6432, which clashes with targets.app-db.listen'],
    ['bad target name', MINIMAL.replace('app-db:', '"app db":'),
      'targets.app db: expected a target name of letters, digits, _ and - (at most 63, starting with a letter or digit), found "app db"'],
    ['no targets', 'identity: { dev_issuer: true }\n',
      'targets: expected a mapping of target name to target (at least one), found nothing (the key is required)'],
    ['policy names an unknown target', `${MINIMAL}policies: [{ name: p, subjects: { groups: [ci] }, targets: [app-db, nope] }]\n`,
      'policies[0].targets[1]: expected a target defined under targets (app-db), found "nope"'],
    ['duplicate policy name', `${MINIMAL}policies:\n  - { name: p, subjects: { groups: [a] }, targets: [app-db] }\n  - { name: p, subjects: { groups: [b] }, targets: [app-db] }\n`,
      'policies[1].name: expected a name no other policy uses, found "p" (also policies[0])'],
    ['subjects with no criterion', `${MINIMAL}policies: [{ name: p, subjects: {}, targets: [app-db] }]\n`,
      'policies[0].subjects: expected at least one criterion, found none: would match every token; say which groups/sub/issuer/claims'],
    ['sub: * alone narrows nothing', `${MINIMAL}policies: [{ name: p, subjects: { sub: '*' }, targets: [app-db] }]\n`,
      'policies[0].subjects: expected at least one criterion, found none: would match every token; say which groups/sub/issuer/claims'],
    ['subject issuer not configured', `${MINIMAL}policies: [{ name: p, subjects: { issuer: [https://elsewhere] }, targets: [app-db] }]\n`,
      `policies[0].subjects.issuer[0]: expected a configured issuer (${DEV_ISSUER}), found "https://elsewhere"`],
    ['empty groups list', `${MINIMAL}policies: [{ name: p, subjects: { groups: [] }, targets: [app-db] }]\n`,
      'policies[0].subjects.groups: expected a string or a non-empty list of strings, found an empty list'],
    ['issuer with both jwks sources', 'identity:\n  issuers: [{ issuer: https://i, audience: a, jwks_uri: https://i/jwks, jwks_file: ok.jwks }]\n' + MINIMAL.replace('identity: { dev_issuer: true }\n', ''),
      'identity.issuers[0]: expected exactly one of jwks_uri or jwks_file, found both'],
    ['issuer with no jwks source', 'identity:\n  issuers: [{ issuer: https://i, audience: a }]\n' + MINIMAL.replace('identity: { dev_issuer: true }\n', ''),
      'identity.issuers[0]: expected exactly one of jwks_uri or jwks_file, found neither'],
    ['jwks_file not JSON', 'identity:\n  issuers: [{ issuer: https://i, audience: a, jwks_file: bad.jwks }]\n' + MINIMAL.replace('identity: { dev_issuer: true }\n', ''),
      `identity.issuers[0].jwks_file: expected a JWKS file ({"keys": [...]}), found ${join(dir, 'bad.jwks')}, which is not JSON`],
    ['cleartext jwks_uri', 'identity:\n  issuers: [{ issuer: https://i, audience: a, jwks_uri: "http://idp.example/jwks" }]\n' + MINIMAL.replace('identity: { dev_issuer: true }\n', ''),
      'identity.issuers[0].jwks_uri: expected an https:// URL (http:// only on a loopback host), found "http://idp.example/jwks"'],
    ['alg none', 'identity:\n  issuers: [{ issuer: https://i, audience: a, jwks_uri: https://i/j, algorithms: [RS256, none] }]\n' + MINIMAL.replace('identity: { dev_issuer: true }\n', ''),
      'identity.issuers[0].algorithms[1]: expected one of RS256, RS384, RS512, PS256, PS384, PS512, ES256, ES384, ES512, EdDSA, found "none", which is refused: an unsigned token could be written by anyone'],
    ['alg HS256', 'identity:\n  issuers: [{ issuer: https://i, audience: a, jwks_uri: https://i/j, algorithms: [HS256] }]\n' + MINIMAL.replace('identity: { dev_issuer: true }\n', ''),
      'identity.issuers[0].algorithms[0]: expected one of RS256, RS384, RS512, PS256, PS384, PS512, ES256, ES384, ES512, EdDSA, found "HS256", which is refused: HMAC needs the shared secret on the gateway, and whoever holds it can mint tokens'],
    ['duplicate issuer', 'identity:\n  issuers:\n    - { issuer: https://i, audience: a, jwks_uri: https://i/j }\n    - { issuer: https://i, audience: b, jwks_uri: https://i/j }\n' + MINIMAL.replace('identity: { dev_issuer: true }\n', ''),
      'identity.issuers[1].issuer: expected each issuer once, found "https://i" again (also identity.issuers[0])'],
    ['no issuer trusted', MINIMAL.replace('identity: { dev_issuer: true }\n', ''),
      'identity: expected dev_issuer: true or at least one entry in issuers, found neither (no token could ever be accepted)'],
    ['clock tolerance over 60s', MINIMAL.replace('dev_issuer: true', 'dev_issuer: true, clock_tolerance: 2m'),
      'identity.clock_tolerance: expected at most 60s, found "2m"'],
    ['max_token_lifetime over 30 days', MINIMAL.replace('dev_issuer: true', 'dev_issuer: true, max_token_lifetime: 721h'),
      'identity.max_token_lifetime: expected 1s to 720h, found "721h"'],
    ['max_token_lifetime of 0', MINIMAL.replace('dev_issuer: true', 'dev_issuer: true, max_token_lifetime: 0'),
      'identity.max_token_lifetime: expected 1s to 720h, found 0'],
    ['max_token_bytes over 64 KiB', MINIMAL.replace('dev_issuer: true', 'dev_issuer: true, max_token_bytes: 100000'),
      'identity.max_token_bytes: expected an integer 256-65536, found 100000'],
    ['bad duration', `${MINIMAL}limits: { idle_timeout: 5 minutes }\n`,
      'limits.idle_timeout: expected a duration such as 10s, 5m, 1h, 250ms or a number of milliseconds, found "5 minutes"'],
    ['zero pre-auth timeout', `${MINIMAL}limits: { pre_auth_timeout: 0 }\n`,
      'limits.pre_auth_timeout: expected a duration greater than 0, found 0'],
    ['timer too long for Node', `${MINIMAL}limits: { idle_timeout: 1000h }\n`,
      'limits.idle_timeout: expected at most 596h (the longest timer Node.js can set), found "1000h"'],
    ['bad size', `${MINIMAL}limits: { max_message_size: 64MB }\n`,
      'limits.max_message_size: expected a size such as 65536, 512KiB, 64MiB or 1GiB, found "64MB"'],
    ['per-target limit', MINIMAL.replace('    upstream:', '    limits: { max_message_size: 2GiB }\n    upstream:'),
      'targets.app-db.limits.max_message_size: expected a size from 1KiB to 1GiB, found "2GiB"'],
    ['recording backlog below its floor', `${MINIMAL}recording: { max_backlog: 64KiB }\n`,
      'recording.max_backlog: expected at least 1MiB, found "64KiB"'],
    ['recording fsync neither close nor off', `${MINIMAL}recording: { fsync: always }\n`,
      'recording.fsync: expected close or off, found "always"'],
    ['api role pinned to an issuer not trusted', `${MINIMAL}api: { listen: 127.0.0.1:8080, roles: { approver: [{ groups: [security], issuer: https://nope.example }] } }\n`,
      'api.roles.approver[0].issuer: expected a configured issuer (https://sluice.invalid/dev-issuer), found "https://nope.example"'],
    ['api audience the same as an issuer\'s', `${MINIMAL}api: { listen: 127.0.0.1:8080, audience: sluice }\n`,
      'api.audience: expected an audience other than the issuers\' own, found "sluice", the audience of https://sluice.invalid/dev-issuer\'s database tokens (they would be API tokens too)'],
    ['api role match with an unknown key', `${MINIMAL}api: { listen: 127.0.0.1:8080, roles: { auditor: [audit, { group: [x] }] } }\n`,
      'api.roles.auditor[1].group: unknown key; expected one of groups, sub, issuer, claims'],
    ['api role match with no criterion', `${MINIMAL}api: { listen: 127.0.0.1:8080, roles: { auditor: [{}] } }\n`,
      'api.roles.auditor[0]: expected at least one criterion, found none: would match every token; say which groups/sub/issuer/claims'],
    ['require_auth not a method', MINIMAL.replace('upstream: { host: 127.0.0.1, user: app }', 'upstream: { host: 127.0.0.1, user: app, require_auth: kerberos }'),
      'targets.app-db.upstream.require_auth: expected one of scram-sha-256, md5, password, none, or a list of them, found "kerberos"'],
    ['require_auth with a name not a method', MINIMAL.replace('upstream: { host: 127.0.0.1, user: app }', 'upstream: { host: 127.0.0.1, user: app, require_auth: [scram-sha-256, gss] }'),
      'targets.app-db.upstream.require_auth[1]: expected one of scram-sha-256, md5, password, none, found "gss"'],
    ['log level', `${MINIMAL}log: { level: loud }\n`,
      'log.level: expected one of fatal, error, warn, info, debug, trace, silent, found "loud"'],
    ['top level not a mapping', '- a\n- b\n',
      '(top level): expected a mapping with targets (and identity, policies, ...), found a list'],
    ['empty file', '',
      '(top level): expected a mapping with targets (and identity, policies, ...), found an empty document'],
  ];
  for (const [name, yaml, line] of cases) {
    const problems = problemsOf(yaml, { baseDir: dir });
    // On failure the message shows what was reported instead.
    t.ok(problems.includes(line), problems.includes(line) ? name : `${name}: got ${JSON.stringify(problems)}`);
  }
});

t.test('YAML syntax errors name the line and column', async (t) => {
  const problems = problemsOf('identity: { dev_issuer: true }\ntargets:\n  a: {protocol: postgres\n');
  t.equal(problems.length, 1);
  t.match(problems[0], /^line \d+, column \d+: YAML syntax error: /);
  const dup = problemsOf('targets: {}\ntargets: {}\n');
  t.equal(dup[0], 'line 2, column 1: YAML syntax error: Map keys must be unique');
});

t.test('every problem is reported, not just the first', async (t) => {
  const problems = problemsOf(`
identity: { dev_issuer: true }
colour: blue
targets:
  app-db:
    protocol: postgres
    listen: 127.0.0.1:6432
    upstream: { host: 127.0.0.1, port: abc, user: app, password_env: NOT_SET }
  cache:
    protocol: redis
    listen: 127.0.0.1:6432
    upstream: { host: 127.0.0.1, db: -1 }
policies:
  - { name: p, subjects: {}, targets: [nope] }
`);
  t.strictSame(new Set(problems), new Set([
    'colour: unknown key; expected one of state_dir, log, identity, tls, limits, targets, policies, masking, audit, recording, api, approvals',
    'targets.app-db.upstream.port: expected an integer 1-65535, found "abc"',
    'targets.cache.upstream.db: expected a database number (integer of at least 0), found -1',
    'targets.app-db.upstream.password_env: expected the name of a set environment variable, found NOT_SET, which is not set',
    'targets.cache.listen: expected an address no other target listens on, found 127.0.0.1:6432, which clashes with targets.app-db.listen',
    'policies[0].targets[0]: expected a target defined under targets (app-db, cache), found "nope"',
    'policies[0].subjects: expected at least one criterion, found none: would match every token; say which groups/sub/issuer/claims',
  ]));
  try {
    parseConfig(`${MINIMAL}colour: blue\nlog: { level: loud }\n`, { baseDir: '/x', env: {} });
    t.fail('should throw');
  } catch (err) {
    t.ok(err instanceof ConfigError);
    const e = err as ConfigError;
    t.equal(e.code, ErrorCodes.CONFIG_INVALID);
    t.equal(e.message, e.problems.join('\n'), 'the message is the problems, one a line');
    t.equal(e.problems.length, 2);
  }
});

t.test('a password value never appears in a problem', async (t) => {
  const dir = t.testdir({ 'pw': 'file-secret-3\n' });
  const env = { DB_PASSWORD: 'env-secret-2' };
  const secrets = ['inline-secret-1', 'env-secret-2', 'file-secret-3', 'misplaced-secret-4'];
  const yamls = [
    // an inline password, next to other problems
    pgTarget('{ host: 127.0.0.1, port: 0, user: app, password: inline-secret-1 }'),
    pgTarget('{ host: 127.0.0.1, user: app, password: { value: inline-secret-1 } }'),
    // valid secret sources in a config that fails for other reasons
    pgTarget('{ host: 127.0.0.1, port: x, user: app, password_env: DB_PASSWORD }', 'colour: red\n'),
    pgTarget('{ host: 127.0.0.1, port: x, user: app, password_file: pw }', 'colour: red\n'),
    // both sources set
    pgTarget('{ host: 127.0.0.1, user: app, password_file: pw, password_env: DB_PASSWORD }'),
    // the password pasted where a variable name goes
    pgTarget('{ host: 127.0.0.1, user: app, password_env: misplaced-secret-4 }'),
    pgTarget('{ host: 127.0.0.1, user: app, password_env: misplaced_secret_4x }'),
    // a webhook URL with a user and password (fetch would quote it whole in its error)
    `${MINIMAL}approvals: { webhook: { url: 'https://hook:inline-secret-1@hooks.example.com/notify' } }\n`,
    // the password pasted where a file path goes, and a webhook URL (its path is the secret) without its scheme
    pgTarget('{ host: 127.0.0.1, user: app, password_file: misplaced_secret_4x }'),
    `${MINIMAL}approvals: { webhook: { url: 'hooks.example.com/services/T0/misplaced_secret_4x' } }\n`,
  ];
  for (const yaml of yamls) {
    const problems = problemsOf(yaml, { baseDir: dir, env });
    t.ok(problems.length > 0, 'the config is refused');
    const leaked = [...secrets, 'misplaced_secret_4x'].filter((s) => problems.some((line) => line.includes(s)));
    t.strictSame(leaked, [], `no secret in: ${problems.join(' | ')}`);
  }
});

t.test('approvals.webhook.url: a URL with a user name or password is refused', async (t) => {
  t.strictSame(problemsOf(`${MINIMAL}approvals: { webhook: { url: 'https://hooks.example.com/T0/B0/secret-path' } }\n`), []);
  for (const url of ['https://hook:pw@hooks.example.com/notify', 'https://hook@hooks.example.com/notify']) {
    t.strictSame(problemsOf(`${MINIMAL}approvals: { webhook: { url: '${url}' } }\n`), [
      'approvals.webhook.url: expected a URL without a user name or password (user:password@); a secret belongs in the path, which is never logged',
    ]);
  }
});

t.test('identity jwks_uri: a URL with a user name or password is refused, and not echoed', async (t) => {
  const yaml = `identity:\n  issuers: [{ issuer: https://idp.example, audience: sluice, jwks_uri: 'https://keys:pw-4x9@idp.example/jwks' }]\n${MINIMAL.replace('identity: { dev_issuer: true }\n', '')}`;
  t.strictSame(problemsOf(yaml), ['identity.issuers[0].jwks_uri: expected a URL without a user name or password (user:password@); serve the keys without them']);
});

t.test('loadConfig: file, default file, embedded default, missing file', async (t) => {
  const dir = t.testdir({ 'sluice.yaml': MINIMAL, 'empty': {} });
  const cwd = process.cwd();
  t.teardown(() => process.chdir(cwd));

  process.chdir(dir);
  const fromCwd = await loadConfig(undefined, {});
  t.equal(fromCwd.source, join(dir, 'sluice.yaml'), './sluice.yaml is used when it exists');

  process.chdir(join(dir, 'empty'));
  const embedded = await loadConfig(undefined, { PGUSER: 'alice' });
  t.equal(embedded.source, undefined, 'no file: the embedded default');
  t.equal(embedded.stateDir, join(dir, 'empty', '.sluice'));
  t.equal((embedded.targets[0] as PostgresTarget).upstream.user, 'alice');
  process.chdir(cwd);

  const missing = join(dir, 'nope.yaml');
  await t.rejects(loadConfig(missing, {}), { code: ErrorCodes.CONFIG_NOT_FOUND, problems: [`${missing}: expected a config file, found no such file`] });

  t.strictSame(await validateConfigFile(missing, {}), { ok: false, problems: [`${missing}: expected a config file, found no such file`] });
  const ok = await validateConfigFile(join(dir, 'sluice.yaml'), {});
  t.equal(ok.ok, true);
  t.equal(ok.ok && ok.config.targets[0]?.name, 'app-db');
});

t.test('the embedded default', async (t) => {
  const bare = embeddedDefaultConfig({}, '/work/here');
  t.strictSame(bare, {
    stateDir: '/work/here/.sluice',
    identity: { devIssuer: true, issuers: [], maxTokenBytes: 16384, clockToleranceSeconds: 30, maxTokenLifetimeSeconds: 86400 },
    targets: [{
      name: 'pg',
      protocol: 'postgres',
      listen: { host: '127.0.0.1', port: 6432 },
      allowInsecureLoopback: true,
      limits: { ...limits },
      upstream: { host: '127.0.0.1', port: 5432, database: 'postgres', user: 'postgres', tls: 'disable' },
    }],
    policies: [{ name: 'dev', subjects: { issuer: [DEV_ISSUER] }, targets: ['pg'], default: 'allow', rules: [] }],
    approvals: { timeoutMs: 300_000, maxPendingPerSubject: 10, maxRequestsPerMinute: 30 },
    log: { level: 'info' },
  });

  const fromEnv = embeddedDefaultConfig({ PGUSER: 'ci', PGPASSWORD: 'pg-env-secret', PGDATABASE: 'appdb' }, '/w');
  const up = (fromEnv.targets[0] as PostgresTarget).upstream;
  t.equal(up.user, 'ci');
  t.equal(up.database, 'appdb');
  t.equal(up.password?.reveal(), 'pg-env-secret');
  t.equal(up.password?.origin, 'env PGPASSWORD');
  t.equal(embeddedDefaultConfig({ PGUSER: 'ci' }).targets[0]?.name, 'pg');
  t.equal((embeddedDefaultConfig({ PGUSER: 'ci' }).targets[0] as PostgresTarget).upstream.database, 'ci', 'database defaults to the user');
  t.equal(DEV_AUDIENCE, 'sluice');
  t.equal(DEV_ISSUER, 'https://sluice.invalid/dev-issuer');
});

/**
 * Who gets in, over what, and what they are told when they don't: TLS,
 * every family of bad token, unauthorized subjects, refused startup
 * parameters, upstream failures. Each refusal must carry the right SQLSTATE,
 * open no upstream backend, and leave no token or password in any log line.
 */
import t from 'tap';
import { createHmac, createPublicKey, generateKeyPairSync } from 'node:crypto';
import { once } from 'node:events';
import { readFileSync } from 'node:fs';
import { connect } from 'node:net';
import { connect as tlsConnect } from 'node:tls';
import { join } from 'node:path';
import pg from 'pg';
import { SignJWT, importJWK, type JWK } from 'jose';
import { startPostgres } from '../helpers/postgres.js';
import { startGateway, pgTargetYaml } from '../helpers/gateway.js';
import { run } from '../helpers/process.js';
import { RawPg, SSL_REQUEST, errorFields, rawLogin, startupPacket, typed } from '../helpers/raw-pg.js';
import { DEV_AUDIENCE, DEV_ISSUER } from '../../src/identity/dev-issuer.js';

const pgServer = await startPostgres();
t.teardown(() => pgServer.stop());
const gw = await startGateway(
  `identity: { dev_issuer: true }
targets:${pgTargetYaml('app-db', pgServer)}${pgTargetYaml('tls-only', pgServer, { allowInsecureLoopback: false })}${pgTargetYaml(
    'quick',
    pgServer,
    { limits: '{ pre_auth_timeout: 400ms, max_pre_auth_connections: 2, idle_timeout: 600ms }' },
  )}
  broken-upstream:
    protocol: postgres
    listen: 127.0.0.1:0
    allow_insecure_loopback: true
    upstream: { host: 127.0.0.1, port: ${pgServer.port}, database: app, user: app_user, password_env: WRONG_PASSWORD }
policies:
  - name: ci-jobs
    subjects: { groups: [ci] }
    targets: [app-db, tls-only, quick, broken-upstream]
  - name: release-workflow
    subjects: { claims: { repository: acme/app, ref: 'refs/heads/release/*' } }
    targets: [app-db]
`,
  { TEST_PG_PASSWORD: pgServer.password, WRONG_PASSWORD: 'not-the-password-7f3a' },
);
t.teardown(() => gw.close());

const port = gw.port('app-db');
const goodToken = await gw.token('ci-job', ['ci']);
/** Every token and secret this file uses, to grep the logs for at the end. */
const secrets = new Set<string>([goodToken, pgServer.password, 'not-the-password-7f3a']);

function connectWith(password: string, extra: Partial<pg.ClientConfig> = {}, targetPort = port): Promise<pg.Client> {
  secrets.add(password);
  const client = new pg.Client({ host: '127.0.0.1', port: targetPort, user: 'someone', database: 'app', password, ...extra });
  client.on('error', () => {});
  return client.connect().then(() => client);
}

async function refusal(password: string, extra: Partial<pg.ClientConfig> = {}, targetPort = port): Promise<{ code: string; message: string; hint?: string }> {
  try {
    const c = await connectWith(password, extra, targetPort);
    await c.end();
  } catch (err) {
    const e = err as { code: string; message: string; hint?: string };
    return { code: e.code, message: e.message, ...(e.hint ? { hint: e.hint } : {}) };
  }
  throw new Error('connection was accepted');
}

/** Sessions PostgreSQL has seen in database app: must not move when Sluice refuses someone. */
async function upstreamSessions(): Promise<number> {
  return Number((await pgServer.psqlDirect("select sessions from pg_stat_database where datname = 'app'")).trim());
}

async function devKey(): Promise<{ key: Awaited<ReturnType<typeof importJWK>>; kid: string }> {
  const jwk = JSON.parse(readFileSync(join(gw.stateDir, 'dev-issuer', 'private.jwk'), 'utf8')) as JWK;
  return { key: await importJWK(jwk, 'ES256'), kid: gw.issuer.kid };
}

t.test('a good token gets in, and a session is counted upstream', async (t) => {
  const before = await upstreamSessions();
  const c = await connectWith(goodToken);
  const r = await c.query('select current_user as u');
  t.equal(r.rows[0].u, 'app_user');
  await c.end();
  let after = before;
  for (let i = 0; i < 100 && after === before; i++) {
    await new Promise((r) => setTimeout(r, 50));
    after = await upstreamSessions();
  }
  t.equal(after, before + 1, 'the positive control: a real session shows up in pg_stat_database');
});

t.test('claims-based subjects (GitHub Actions style tokens without groups)', async (t) => {
  const release = await gw.token('repo:acme/app:ref:refs/heads/release/1.2', [], { claims: { repository: 'acme/app', ref: 'refs/heads/release/1.2' } });
  const c = await connectWith(release);
  await c.end();
  const feature = await gw.token('repo:acme/app:ref:refs/heads/feature', [], { claims: { repository: 'acme/app', ref: 'refs/heads/feature' } });
  const r = await refusal(feature);
  t.equal(r.code, '28000');
});

t.test('bad tokens are refused with 28P01 and open no upstream backend', async (t) => {
  const before = await upstreamSessions();
  const { key, kid } = await devKey();
  const now = Math.floor(Date.now() / 1000);
  const sign = (claims: Record<string, unknown>, header: Record<string, unknown> = {}) =>
    new SignJWT(claims).setProtectedHeader({ alg: 'ES256', kid, ...header }).sign(key);
  const b64 = (o: unknown) => Buffer.from(JSON.stringify(o)).toString('base64url');

  const publicPem = createPublicKey({ key: gw.issuer.jwks().keys[0] as JWK & { kty: string }, format: 'jwk' }).export({ type: 'spki', format: 'pem' });
  const hsHeader = b64({ alg: 'HS256', typ: 'JWT', kid });
  const hsBody = b64({ iss: DEV_ISSUER, aud: DEV_AUDIENCE, sub: 'attacker', groups: ['ci'], exp: now + 600 });
  const hsSig = createHmac('sha256', publicPem).update(`${hsHeader}.${hsBody}`).digest('base64url');

  const otherKey = generateKeyPairSync('ec', { namedCurve: 'P-256' }).privateKey;

  const cases: Array<[string, string, RegExp]> = [
    ['expired', await sign({ iss: DEV_ISSUER, aud: DEV_AUDIENCE, sub: 'ci-job', groups: ['ci'], iat: now - 900, exp: now - 300 }), /expired/],
    ['missing exp', await sign({ iss: DEV_ISSUER, aud: DEV_AUDIENCE, sub: 'ci-job', groups: ['ci'], iat: now }), /exp/],
    ['missing iat', await sign({ iss: DEV_ISSUER, aud: DEV_AUDIENCE, sub: 'ci-job', groups: ['ci'], exp: now + 600 }), /no iat claim; Sluice needs it to check the token's lifetime/],
    ['wrong audience', await gw.token('ci-job', ['ci'], { audience: 'someone-else' }), /audience/],
    ['wrong issuer', await sign({ iss: 'https://evil.example', aud: DEV_AUDIENCE, sub: 'ci-job', groups: ['ci'], exp: now + 600 }), /issuer/],
    ['alg none', `${b64({ alg: 'none', typ: 'JWT' })}.${b64({ iss: DEV_ISSUER, aud: DEV_AUDIENCE, sub: 'x', groups: ['ci'], exp: now + 600 })}.`, /alg|algorithm/i],
    ['HS256 signed with the public key', `${hsHeader}.${hsBody}.${hsSig}`, /alg|algorithm/i],
    ['unknown kid', await new SignJWT({ iss: DEV_ISSUER, aud: DEV_AUDIENCE, sub: 'ci-job', groups: ['ci'], exp: now + 600 }).setProtectedHeader({ alg: 'ES256', kid: 'not-a-known-key' }).sign(otherKey), /key/],
    ['oversized', await sign({ iss: DEV_ISSUER, aud: DEV_AUDIENCE, sub: 'ci-job', groups: ['ci'], exp: now + 600, pad: 'x'.repeat(20_000) }), /large|size|bytes/i],
    ['garbage', 'this is not a jwt', /malformed|JWT|token/i],
  ];
  for (const [name, token, reason] of cases) {
    const r = await refusal(token);
    t.equal(r.code, '28P01', `${name}: SQLSTATE`);
    t.match(r.message, reason, `${name}: the message says why (${r.message})`);
    t.notMatch(r.message, token.slice(0, 40), `${name}: the token is not echoed`);
  }
  await new Promise((r) => setTimeout(r, 300));
  t.equal(await upstreamSessions(), before, 'no upstream session was opened for any refused token');
});

t.test('a subject with no policy for the target gets 28000', async (t) => {
  const r = await refusal(await gw.token('intruder', ['contractors', 'ci-admins']));
  t.equal(r.code, '28000');
  t.match(r.message, 'not authorized for target "app-db"');
});

t.test('startup parameters', async (t) => {
  let r = await refusal(goodToken, { options: '-c role=postgres' });
  t.equal(r.code, '42501');
  t.match(r.message, '"role"');
  r = await refusal(goodToken, { options: '-c session_authorization=postgres' });
  t.match(r.message, 'session_authorization');
  r = await refusal(goodToken, { options: '-c standard_conforming_strings=off' });
  t.match(r.message, 'standard_conforming_strings');
  r = await refusal(goodToken, { options: '-P' } as Partial<pg.ClientConfig>);
  t.match(r.message, 'options');

  const allowed = await connectWith(goodToken, { options: '-c statement_timeout=1234 -c search_path=public' });
  const timeout = await allowed.query('show statement_timeout');
  t.equal(timeout.rows[0].statement_timeout, '1234ms', 'harmless settings in options reach the server');
  await allowed.end();

  const raw = await RawPg.connect(port);
  raw.send(startupPacket({ user: 'x', database: 'app', replication: 'database' }));
  let m = await raw.read();
  t.equal(m?.type, 'E');
  t.match(errorFields(m!.body).M, 'replication');
  raw.close();

  const unknown = await RawPg.connect(port);
  unknown.send(startupPacket({ user: 'x', wal_level: 'minimal' }));
  m = await unknown.read();
  t.equal(m?.type, 'E');
  t.match(errorFields(m!.body).M, '"wal_level"');
  unknown.close();

  const sjis = await run('psql', ['-X', '-c', 'select 1'], {
    env: { PGHOST: '127.0.0.1', PGPORT: String(port), PGUSER: 'x', PGDATABASE: 'app', PGPASSWORD: goodToken, PGSSLMODE: 'disable', PGCLIENTENCODING: 'SJIS' },
  });
  t.not(sjis.code, 0);
  t.match(sjis.stderr, /SJIS.*quote or backslash|client_encoding/);
  const latin = await run('psql', ['-X', '-At', '-c', 'show client_encoding'], {
    env: { PGHOST: '127.0.0.1', PGPORT: String(port), PGUSER: 'x', PGDATABASE: 'app', PGPASSWORD: goodToken, PGSSLMODE: 'disable', PGCLIENTENCODING: 'LATIN1' },
  });
  t.equal(latin.code, 0, latin.stderr);
  t.equal(latin.stdout.trim(), 'LATIN1');
});

t.test('a newer protocol minor version gets NegotiateProtocolVersion', async (t) => {
  const raw = await RawPg.connect(port);
  raw.send(startupPacket({ user: 'x', database: 'app', '_pq_.compression': 'on' }, 3, 2));
  const v = await raw.read();
  t.equal(v?.type, 'v');
  t.equal(v!.body.readInt32BE(0), 0, 'newest minor version supported: 3.0');
  t.equal(v!.body.readInt32BE(4), 1, 'one unrecognized option');
  t.equal(v!.body.subarray(8, v!.body.length - 1).toString(), '_pq_.compression');
  const auth = await raw.read();
  t.equal(auth?.type, 'R');
  t.equal(auth!.body.readInt32BE(0), 3, 'then the cleartext password request');
  raw.close();
});

t.test('TLS', async (t) => {
  const env = { PGHOST: '127.0.0.1', PGUSER: 'x', PGDATABASE: 'app', PGPASSWORD: goodToken, PGCONNECT_TIMEOUT: '10' };
  const tlsPort = String(gw.port('tls-only'));
  const cleartext = await run('psql', ['-X', '-c', 'select 1'], { env: { ...env, PGPORT: tlsPort, PGSSLMODE: 'disable' } });
  t.not(cleartext.code, 0, 'cleartext is refused where the target does not allow it');
  t.match(cleartext.stderr, /requires TLS/);
  const require = await run('psql', ['-X', '-At', '-c', 'select 1'], { env: { ...env, PGPORT: tlsPort, PGSSLMODE: 'require' } });
  t.equal(require.code, 0, require.stderr);
  t.equal(require.stdout.trim(), '1');
  const caFile = join(gw.stateDir, 'tls', 'ca.crt');
  const verify = await run('psql', ['-X', '-At', '-c', 'select 1'], {
    env: { ...env, PGHOST: 'localhost', PGPORT: tlsPort, PGSSLMODE: 'verify-full', PGSSLROOTCERT: caFile },
  });
  t.equal(verify.code, 0, verify.stderr);
  const nodeTls = await connectWith(goodToken, { ssl: { ca: readFileSync(caFile, 'utf8'), servername: 'localhost' } }, gw.port('tls-only'));
  const r = await nodeTls.query('select 1 as one');
  t.equal(r.rows[0].one, 1);
  await nodeTls.end();
  const wrongCa = await run('psql', ['-X', '-c', 'select 1'], {
    env: { ...env, PGHOST: 'localhost', PGPORT: tlsPort, PGSSLMODE: 'verify-full', PGSSLROOTCERT: '/etc/ssl/certs/ca-certificates.crt' },
  });
  t.not(wrongCa.code, 0, 'verify-full against another CA fails');
});

t.test('a TLS client that resets the connection as it is refused ends that connection only', async (t) => {
  // The refusal is written on the TLS socket after the handshake reader has let go of it. A reset
  // that arrived with the refused StartupMessage makes that write fail: an 'error' on a socket with
  // no listener is an uncaught exception, which would end the gateway (this test process) and every
  // session in it.
  for (let i = 0; i < 10; i++) {
    const raw = await RawPg.connect(gw.port('tls-only'));
    raw.send(SSL_REQUEST);
    t.equal(await raw.readByte(), 'S');
    const secure = tlsConnect({ socket: raw.socket, rejectUnauthorized: false });
    secure.on('error', () => {});
    await once(secure, 'secureConnect');
    // Protocol 4.0: refused as soon as the StartupMessage is read.
    secure.write(startupPacket({ user: 'x', database: 'app' }, 4, 0));
    raw.socket.resetAndDestroy();
    await once(secure, 'close');
  }
  await new Promise((r) => setTimeout(r, 200));
  const c = await connectWith(goodToken);
  t.equal((await c.query('select 1 as one')).rows[0].one, 1, 'the gateway still serves');
  await c.end();
});

t.test('a TLS 1.2 client that asks to renegotiate loses its connection', async (t) => {
  const raw = await RawPg.connect(gw.port('tls-only'));
  raw.send(SSL_REQUEST);
  t.equal(await raw.readByte(), 'S');
  const secure = tlsConnect({ socket: raw.socket, rejectUnauthorized: false, maxVersion: 'TLSv1.2' });
  secure.on('error', () => {});
  await once(secure, 'secureConnect');
  const closed = once(secure, 'close');
  // Each renegotiation would cost the gateway a handshake: the connection is closed instead.
  secure.renegotiate({ rejectUnauthorized: false }, () => undefined);
  await closed;
  t.pass('the connection was closed');
});

t.test('bytes pipelined after SSLRequest are refused (CVE-2021-23214 class)', async (t) => {
  const raw = await RawPg.connect(port);
  raw.send(Buffer.concat([SSL_REQUEST, startupPacket({ user: 'x', database: 'app' })]));
  const m = await raw.read();
  t.equal(m?.type, 'E');
  t.equal(errorFields(m!.body).C, '08P01');
  await raw.waitClosed();
});

t.test('upstream authentication failure: generic error for the client, detail in the log', async (t) => {
  const r = await refusal(goodToken, {}, gw.port('broken-upstream'));
  t.equal(r.code, '08006');
  t.match(r.message, /correlation id [A-Za-z0-9_-]+/);
  t.notMatch(r.message, 'app_user', 'the service account is not named to the client');
  const id = /correlation id ([A-Za-z0-9_-]+)/.exec(r.message)![1]!;
  const logged = gw.logs.filter((l) => l.includes(id) && l.includes('upstream connection failed'));
  t.equal(logged.length, 1, 'the log has the detail under the correlation id');
  t.match(logged[0]!, /28P01|password authentication failed/);
});

t.test('pre-auth deadline and the cap on unauthenticated connections', async (t) => {
  const quick = gw.port('quick');
  const silent = await RawPg.connect(quick);
  const m = await silent.read(5_000);
  t.equal(m?.type, 'E');
  t.equal(errorFields(m!.body).C, '57014');
  t.match(errorFields(m!.body).M, /timeout/);
  await silent.waitClosed();

  const a = await RawPg.connect(quick);
  const b = await RawPg.connect(quick);
  await new Promise((r) => setTimeout(r, 50));
  const c = await RawPg.connect(quick);
  const busy = await c.read();
  t.equal(busy?.type, 'E');
  t.equal(errorFields(busy!.body).C, '53300');
  t.ok(gw.logs.some((l) => l.includes('"code":"SLUICE_TOO_MANY_UNAUTHENTICATED"')), 'the log names the catalogue code');
  a.close();
  b.close();
  await new Promise((r) => setTimeout(r, 100));
  const ok = await rawLogin(quick, goodToken);
  t.pass('a slot frees up once the idle sockets leave');
  const idle = await ok.readUntil('E', 5_000);
  t.equal(idle && errorFields(idle.body).C, '57P05', 'an idle session is ended with idle-session timeout');
  await ok.waitClosed();
  t.ok(gw.logs.some((l) => l.includes('"code":"SLUICE_IDLE_TIMEOUT"')), 'the log names the catalogue code');
});

t.test('a CancelRequest connection is closed for good, whatever the client sends after it', async (t) => {
  // A client that never sends its FIN: a half-open socket the gateway only end()ed stayed open,
  // read on, and queued what came, outside the pre-auth limits.
  const s = connect({ port, host: '127.0.0.1', allowHalfOpen: true });
  s.on('error', () => {});
  await once(s, 'connect');
  const cancel = Buffer.alloc(16);
  cancel.writeInt32BE(16, 0);
  cancel.writeInt32BE(80877102, 4);
  cancel.writeInt32BE(12345, 8);
  cancel.writeInt32BE(67890, 12);
  s.write(cancel);
  // Keep sending: once the gateway has closed its end, a write is answered with a reset.
  const closed = new Promise((r) => s.once('close', () => r('closed')));
  let outcome: unknown = 'still open';
  for (let i = 0; i < 30 && outcome === 'still open'; i++) {
    if (!s.destroyed) s.write(typed('Q', 'SELECT 1\0'));
    outcome = await Promise.race([closed, new Promise((r) => setTimeout(() => r('still open'), 100))]);
  }
  t.equal(outcome, 'closed', 'the gateway closed the connection itself');
  s.destroy();
});

t.test('garbage as the first packet ends that connection with 08P01', async (t) => {
  const raw = await RawPg.connect(port);
  raw.send(Buffer.from([0, 0, 0, 2, 1, 2, 3, 4]));
  const m = await raw.read();
  t.equal(m?.type, 'E');
  t.equal(errorFields(m!.body).C, '08P01');
  await raw.waitClosed();
  const after = await rawLogin(port, goodToken);
  after.send(typed('X', Buffer.alloc(0)));
  await after.waitClosed();
});

t.test('no token or password appears in any log line', async (t) => {
  t.ok(gw.logs.length > 20, 'there are logs to check');
  for (const secret of secrets) {
    const hit = gw.logs.find((l) => l.includes(secret));
    t.equal(hit, undefined, `secret ${secret.slice(0, 12)}... is absent from the logs`);
  }
});

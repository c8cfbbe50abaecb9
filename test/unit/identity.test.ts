import t, { type Test } from 'tap';
import { createHash, createHmac, createPublicKey } from 'node:crypto';
import { execFile } from 'node:child_process';
import { mkdtemp, readFile, rm, stat, utimes, writeFile, chmod } from 'node:fs/promises';
import { createServer, type Server } from 'node:http';
import type { AddressInfo } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { promisify } from 'node:util';
import { exportJWK, generateKeyPair, SignJWT, type CryptoKey, type JWK, type JWTPayload } from 'jose';
import type { IdentityConfig, IssuerConfig } from '../../src/config/types.js';
import { ErrorCodes, isSluiceError, type ErrorCode } from '../../src/errors.js';
import { DEV_AUDIENCE, DEV_ISSUER, DevIssuer, parseDuration } from '../../src/identity/dev-issuer.js';
import { createTokenVerifier } from '../../src/identity/verifier.js';
import type { TokenVerifier } from '../../src/identity/types.js';

const run = promisify(execFile);

interface TestKey {
  kid: string;
  alg: 'RS256' | 'ES256';
  privateKey: CryptoKey;
  publicJwk: JWK;
}

async function makeKey(alg: 'RS256' | 'ES256', kid: string): Promise<TestKey> {
  const { privateKey, publicKey } = await generateKeyPair(alg, { extractable: true });
  const publicJwk = { ...(await exportJWK(publicKey)), kid, alg, use: 'sig' };
  return { kid, alg, privateKey, publicJwk };
}

const now = () => Math.floor(Date.now() / 1000);

async function sign(key: TestKey, payload: JWTPayload, header: Record<string, unknown> = {}): Promise<string> {
  return new SignJWT(payload).setProtectedHeader({ alg: key.alg, kid: key.kid, typ: 'JWT', ...header }).sign(key.privateKey);
}

function b64url(value: unknown): string {
  return Buffer.from(typeof value === 'string' ? value : JSON.stringify(value)).toString('base64url');
}

/** A JWKS endpoint on 127.0.0.1:0 whose key set the test can change, stop, or make hang. */
async function jwksServer(keys: JWK[], behaviour: 'answer' | 'hang' = 'answer') {
  const state = { keys, requests: 0 };
  const server: Server = createServer((_req, res) => {
    state.requests++;
    if (behaviour === 'hang') return; // accept and never answer
    res.writeHead(200, { 'content-type': 'application/json' });
    res.end(JSON.stringify({ keys: state.keys }));
  });
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
  const { port } = server.address() as AddressInfo;
  const stop = () =>
    new Promise<void>((resolve) => {
      server.close(() => resolve());
      server.closeAllConnections();
    });
  return { url: `http://127.0.0.1:${port}/jwks.json`, state, stop };
}

function identityConfig(issuers: IssuerConfig[], devIssuer = false): IdentityConfig {
  return { devIssuer, issuers, maxTokenBytes: 4096, clockToleranceSeconds: 5, maxTokenLifetimeSeconds: 3600 };
}

function issuer(iss: string, source: { jwksUri: string } | { jwksFile: string }, extra: Partial<IssuerConfig> = {}): IssuerConfig {
  return { issuer: iss, audience: 'sluice-test', groupsClaim: 'groups', algorithms: ['RS256', 'ES256'], ...source, ...extra };
}

/** Asserts a refusal with `code` whose message does not echo the token. */
async function refuses(t: Test, verifier: TokenVerifier, token: string, code: ErrorCode, messageRe?: RegExp): Promise<string> {
  try {
    await verifier.verify(token);
  } catch (err) {
    t.ok(isSluiceError(err), 'a SluiceError');
    const e = err as Error & { code: string };
    t.equal(e.code, code, `refused with ${code}: ${e.message}`);
    if (token.length > 20) {
      t.notOk(e.message.includes(token), 'message does not contain the token');
      const sig = token.split('.')[2];
      if (sig && sig.length > 10) t.notOk(e.message.includes(sig), 'message does not contain the signature');
    }
    if (messageRe) t.match(e.message, messageRe);
    return e.message;
  }
  t.fail(`expected ${code}, token was accepted`);
  return '';
}

const ISS_REMOTE = 'https://idp.example.test/realms/ci';

t.test('remote JWKS issuer', async (t) => {
  const rsa = await makeKey('RS256', 'rsa-1');
  const ec = await makeKey('ES256', 'ec-1');
  const server = await jwksServer([rsa.publicJwk, ec.publicJwk]);
  t.teardown(server.stop);
  const verifier = createTokenVerifier(identityConfig([issuer(ISS_REMOTE, { jwksUri: server.url })]));
  const base = { iss: ISS_REMOTE, aud: 'sluice-test', sub: 'svc-deploy', iat: now(), exp: now() + 300 };

  t.test('valid token accepted, with groups', async (t) => {
    const token = await sign(rsa, { ...base, groups: ['ci', 'deployers'], jti: 'abc-123' });
    const id = await verifier.verify(token);
    t.equal(id.subject, 'svc-deploy');
    t.equal(id.issuer, ISS_REMOTE);
    t.same(id.groups, ['ci', 'deployers']);
    t.equal(id.tokenId, createHash('sha256').update('abc-123').digest('hex').slice(0, 32));
    t.equal(id.expiresAt.getTime(), (base.exp + 5) * 1000, 'exp plus the clock tolerance');
    t.equal(id.claims.sub, 'svc-deploy');
    const ecToken = await sign(ec, { ...base });
    const id2 = await verifier.verify(ecToken);
    t.same(id2.groups, [], 'no groups claim -> no groups');
    t.equal(id2.tokenId, createHash('sha256').update(ecToken).digest('hex').slice(0, 32), 'tokenId from the token without jti');
  });

  t.test('expired', async (t) => {
    const token = await sign(rsa, { ...base, iat: now() - 600, exp: now() - 120 });
    await refuses(t, verifier, token, ErrorCodes.TOKEN_EXPIRED, /expired at \d{4}-\d\d-\d\dT.*\(\d+s ago\); mint a fresh one/);
  });

  t.test('within clock tolerance is still valid', async (t) => {
    const token = await sign(rsa, { ...base, exp: now() - 2 });
    t.equal((await verifier.verify(token)).subject, 'svc-deploy');
  });

  t.test('missing exp', async (t) => {
    const { exp: _exp, ...noExp } = base;
    await refuses(t, verifier, await sign(rsa, noExp), ErrorCodes.TOKEN_MISSING_EXP);
    const { iat: _iat, ...neither } = noExp;
    await refuses(t, verifier, await sign(rsa, neither), ErrorCodes.TOKEN_MISSING_EXP, /no exp claim/);
  });

  t.test('nbf in the future', async (t) => {
    await refuses(t, verifier, await sign(rsa, { ...base, nbf: now() + 120 }), ErrorCodes.TOKEN_NOT_YET_VALID);
  });

  t.test('iat in the future, beyond the clock tolerance', async (t) => {
    await refuses(t, verifier, await sign(rsa, { ...base, iat: now() + 120, exp: now() + 600 }), ErrorCodes.TOKEN_NOT_YET_VALID, /token was issued at \S+ \(1[12]\ds from now\)/);
    t.equal((await verifier.verify(await sign(rsa, { ...base, iat: now() + 2 }))).subject, 'svc-deploy', 'within the tolerance it is accepted');
  });

  t.test('a lifetime longer than max_token_lifetime (1h here) is refused, however much of it is left', async (t) => {
    const iat = now();
    t.equal((await verifier.verify(await sign(rsa, { ...base, iat, exp: iat + 3600 }))).subject, 'svc-deploy', 'exactly the limit is accepted');
    await refuses(t, verifier, await sign(rsa, { ...base, iat, exp: iat + 3601 }), ErrorCodes.TOKEN_LIFETIME_TOO_LONG,
      /^token lives 1h 0m 1s \(issued at \S+, expires at \S+\): longer than the 1h this gateway accepts \(identity\.max_token_lifetime\); mint a shorter-lived token$/);
    // Issued 2 days ago for 3 days: one day left, still refused (a week-long token leaked on day 6 is as bad).
    await refuses(t, verifier, await sign(rsa, { ...base, iat: iat - 2 * 86400, exp: iat + 86400 }), ErrorCodes.TOKEN_LIFETIME_TOO_LONG, /^token lives 72h /);
    // Without iat the lifetime is unknown: measured from now, a week-long token would pass on its last day.
    const { iat: _iat, ...noIat } = base;
    await refuses(t, verifier, await sign(rsa, { ...noIat, exp: now() + 60 }), ErrorCodes.TOKEN_BAD_CLAIMS,
      /^token has no iat claim; Sluice needs it to check the token's lifetime against identity\.max_token_lifetime/);
  });


  t.test('wrong audience', async (t) => {
    const msg = await refuses(t, verifier, await sign(rsa, { ...base, aud: 'someone-else' }), ErrorCodes.TOKEN_WRONG_AUDIENCE);
    t.match(msg, /"sluice-test"/, 'names the expected audience');
  });

  t.test("the API's own audience replaces the issuer's when asked for", async (t) => {
    const apiToken = await sign(rsa, { ...base, aud: 'sluice-api' });
    t.equal((await verifier.verify(apiToken, { audience: 'sluice-api' })).subject, 'svc-deploy', 'an API token at the API');
    await refuses(t, verifier, apiToken, ErrorCodes.TOKEN_WRONG_AUDIENCE, /does not include "sluice-test", the audience issuer/);
    const dbToken = await sign(rsa, { ...base });
    try {
      await verifier.verify(dbToken, { audience: 'sluice-api' });
      t.fail('a database token was accepted at the API');
    } catch (err) {
      t.equal((err as { code?: string }).code, ErrorCodes.TOKEN_WRONG_AUDIENCE);
      t.match((err as Error).message, /token audience "sluice-test" does not include "sluice-api", the audience the API requires \(api\.audience\); mint the token for it/);
    }
  });

  t.test('missing or empty sub', async (t) => {
    const { sub: _sub, ...noSub } = base;
    await refuses(t, verifier, await sign(rsa, noSub), ErrorCodes.TOKEN_BAD_CLAIMS, /sub/);
    await refuses(t, verifier, await sign(rsa, { ...base, sub: '' }), ErrorCodes.TOKEN_BAD_CLAIMS, /sub/);
  });

  t.test('unknown issuer', async (t) => {
    const msg = await refuses(t, verifier, await sign(rsa, { ...base, iss: 'https://evil.example' }), ErrorCodes.TOKEN_UNKNOWN_ISSUER);
    t.match(msg, /https:\/\/evil\.example/);
    t.notMatch(msg, ISS_REMOTE, 'does not list the issuers this gateway trusts');
    const long = 'https://x.example/' + 'a'.repeat(1000);
    const msg2 = await refuses(t, verifier, await sign(rsa, { ...base, iss: long }), ErrorCodes.TOKEN_UNKNOWN_ISSUER);
    t.ok(msg2.length < 500, 'iss is truncated in the message');
    const { iss: _iss, ...noIss } = base;
    await refuses(t, verifier, await sign(rsa, noIss), ErrorCodes.TOKEN_UNKNOWN_ISSUER, /no iss/);
    // prototype names are not issuers
    await refuses(t, verifier, await sign(rsa, { ...base, iss: '__proto__' }), ErrorCodes.TOKEN_UNKNOWN_ISSUER);
  });

  t.test('alg none refused', async (t) => {
    const token = `${b64url({ alg: 'none', typ: 'JWT' })}.${b64url({ ...base })}.`;
    await refuses(t, verifier, token, ErrorCodes.TOKEN_ALG_NOT_ALLOWED);
    const token2 = `${b64url({ alg: 'NONE', kid: 'rsa-1' })}.${b64url({ ...base })}.`;
    await refuses(t, verifier, token2, ErrorCodes.TOKEN_ALG_NOT_ALLOWED);
  });

  t.test('HS256 keyed with the RSA public key (key confusion) refused', async (t) => {
    const pem = createPublicKey({ key: rsa.publicJwk as import('node:crypto').JsonWebKey, format: 'jwk' })
      .export({ type: 'spki', format: 'pem' })
      .toString();
    for (const secret of [pem, JSON.stringify(rsa.publicJwk)]) {
      const input = `${b64url({ alg: 'HS256', typ: 'JWT', kid: 'rsa-1' })}.${b64url(base)}`;
      const token = `${input}.${createHmac('sha256', secret).update(input).digest('base64url')}`;
      await refuses(t, verifier, token, ErrorCodes.TOKEN_ALG_NOT_ALLOWED);
    }
  });

  t.test('alg outside the issuer allowlist refused', async (t) => {
    const rsOnly = createTokenVerifier(identityConfig([issuer(ISS_REMOTE, { jwksUri: server.url }, { algorithms: ['RS256'] })]));
    await refuses(t, rsOnly, await sign(ec, base), ErrorCodes.TOKEN_ALG_NOT_ALLOWED, /allowed: RS256/);
  });

  t.test('none/HS* in the configured allowlist are ignored', async (t) => {
    const lax = createTokenVerifier(
      identityConfig([issuer(ISS_REMOTE, { jwksUri: server.url }, { algorithms: ['RS256', 'none', 'HS256'] })]),
    );
    await refuses(t, lax, `${b64url({ alg: 'none' })}.${b64url(base)}.`, ErrorCodes.TOKEN_ALG_NOT_ALLOWED);
    const input = `${b64url({ alg: 'HS256', kid: 'rsa-1' })}.${b64url(base)}`;
    await refuses(t, lax, `${input}.${createHmac('sha256', 'k').update(input).digest('base64url')}`, ErrorCodes.TOKEN_ALG_NOT_ALLOWED);
    t.equal((await lax.verify(await sign(rsa, base))).subject, 'svc-deploy');
    t.throws(
      () => createTokenVerifier(identityConfig([issuer(ISS_REMOTE, { jwksUri: server.url }, { algorithms: ['none', 'HS512'] })])),
      { code: ErrorCodes.CONFIG_INVALID },
    );
  });

  t.test('unknown kid', async (t) => {
    const stranger = await makeKey('RS256', 'not-published');
    const msg = await refuses(t, verifier, await sign(stranger, base), ErrorCodes.TOKEN_UNKNOWN_KEY);
    t.match(msg, /"not-published"/, 'names the kid');
  });

  t.test('bad signature', async (t) => {
    const impostor = await makeKey('RS256', 'rsa-1'); // same kid, different key
    await refuses(t, verifier, await sign(impostor, base), ErrorCodes.TOKEN_BAD_SIGNATURE);
    const good = await sign(rsa, base);
    const [h, , s] = good.split('.');
    const tampered = `${h}.${b64url({ ...base, sub: 'root' })}.${s}`;
    await refuses(t, verifier, tampered, ErrorCodes.TOKEN_BAD_SIGNATURE);
  });

  t.test('oversized token refused before decoding', async (t) => {
    // Not even a JWT: a size refusal (not MALFORMED) shows nothing was decoded.
    await refuses(t, verifier, '!'.repeat(4097), ErrorCodes.TOKEN_TOO_LARGE);
    // 2000 characters but 6000 bytes of UTF-8.
    await refuses(t, verifier, '€'.repeat(2000), ErrorCodes.TOKEN_TOO_LARGE);
    const big = await sign(rsa, { ...base, pad: 'x'.repeat(4096) });
    await refuses(t, verifier, big, ErrorCodes.TOKEN_TOO_LARGE);
  });

  t.test('missing and malformed tokens', async (t) => {
    await refuses(t, verifier, '', ErrorCodes.TOKEN_MISSING);
    for (const bad of [
      'not-a-jwt',
      'a.b',
      'a.b.c.d',
      `${b64url({ alg: 'RS256' })}.${b64url(base)}.sig.extra`,
      `!!!.${b64url(base)}.abc`,
      `${b64url('not json')}.${b64url(base)}.abc`,
      `${b64url({ alg: 'RS256' })}.${b64url('[1,2]')}.abc`,
      `${b64url({ alg: 'RS256' })}.${b64url(base)}.a+b/c=`,
      `.${b64url(base)}.abc`,
      `${Buffer.from([0x7b, 0xff, 0x7d]).toString('base64url')}.${b64url(base)}.abc`,
      `${b64url({ alg: 'RS256' })} .${b64url(base)}.abc`,
    ]) {
      await refuses(t, verifier, bad, ErrorCodes.TOKEN_MALFORMED);
    }
  });

  t.test('groups claim must be an array of strings', async (t) => {
    await refuses(t, verifier, await sign(rsa, { ...base, groups: 'ci' }), ErrorCodes.TOKEN_BAD_CLAIMS, /groups/);
    await refuses(t, verifier, await sign(rsa, { ...base, groups: ['ci', 7] }), ErrorCodes.TOKEN_BAD_CLAIMS);
    await refuses(t, verifier, await sign(rsa, { ...base, groups: { ci: true } }), ErrorCodes.TOKEN_BAD_CLAIMS);
    await refuses(t, verifier, await sign(rsa, { ...base, groups: null }), ErrorCodes.TOKEN_BAD_CLAIMS);
  });

  t.test('dotted and namespaced groups claims', async (t) => {
    const keycloak = createTokenVerifier(
      identityConfig([issuer(ISS_REMOTE, { jwksUri: server.url }, { groupsClaim: 'realm_access.roles' })]),
    );
    const id = await keycloak.verify(await sign(rsa, { ...base, realm_access: { roles: ['db-readers'] }, groups: 'ignored' }));
    t.same(id.groups, ['db-readers']);
    t.same((await keycloak.verify(await sign(rsa, { ...base, realm_access: {} }))).groups, []);
    await refuses(t, keycloak, await sign(rsa, { ...base, realm_access: { roles: 'db-readers' } }), ErrorCodes.TOKEN_BAD_CLAIMS);

    const ns = createTokenVerifier(
      identityConfig([issuer(ISS_REMOTE, { jwksUri: server.url }, { groupsClaim: 'https://example.test/groups' })]),
    );
    t.same((await ns.verify(await sign(rsa, { ...base, 'https://example.test/groups': ['a'] }))).groups, ['a']);

    // Prototype names as a path find nothing rather than Object.prototype members.
    for (const path of ['__proto__', 'constructor', 'toString', 'groups.constructor', '__proto__.toString', 'realm_access.__proto__']) {
      const v = createTokenVerifier(identityConfig([issuer(ISS_REMOTE, { jwksUri: server.url }, { groupsClaim: path })]));
      t.same((await v.verify(await sign(rsa, { ...base, groups: ['x'], realm_access: { roles: ['y'] } }))).groups, [], path);
    }
  });
});

t.test('JWKS server down: cached keys still verify, unknown keys fail closed', async (t) => {
  const k1 = await makeKey('ES256', 'k1');
  const k2 = await makeKey('ES256', 'k2');
  const server = await jwksServer([k1.publicJwk]);
  // cooldown 0 so the unknown kid triggers a refetch now rather than in 30 s.
  const verifier = createTokenVerifier(identityConfig([issuer(ISS_REMOTE, { jwksUri: server.url })]), {
    jwksCooldownMs: 0,
    fetchTimeoutMs: 2000,
  });
  const base = { iss: ISS_REMOTE, aud: 'sluice-test', sub: 'job', iat: now(), exp: now() + 300 };
  t.equal((await verifier.verify(await sign(k1, base))).subject, 'job');
  t.equal(server.state.requests, 1);
  await server.stop();

  t.equal((await verifier.verify(await sign(k1, base))).subject, 'job', 'cached key still verifies');
  const msg = await refuses(t, verifier, await sign(k2, base), ErrorCodes.JWKS_UNAVAILABLE);
  t.match(msg, /127\.0\.0\.1/, 'names the endpoint');
  t.equal((await verifier.verify(await sign(k1, base))).subject, 'job', 'and the cached key keeps verifying after the failed fetch');
});

t.test('a JWKS endpoint that never answers does not stall another issuer', async (t) => {
  const slowKey = await makeKey('RS256', 'slow');
  const fastKey = await makeKey('RS256', 'fast');
  const slow = await jwksServer([slowKey.publicJwk], 'hang');
  const fast = await jwksServer([fastKey.publicJwk]);
  t.teardown(slow.stop);
  t.teardown(fast.stop);
  const verifier = createTokenVerifier(
    identityConfig([
      issuer('https://slow.example', { jwksUri: slow.url }),
      issuer('https://fast.example', { jwksUri: fast.url }),
    ]),
    { fetchTimeoutMs: 3000 },
  );
  const base = { aud: 'sluice-test', sub: 'job', iat: now(), exp: now() + 300 };
  let slowSettled = false;
  const pending = verifier.verify(await sign(slowKey, { ...base, iss: 'https://slow.example' })).finally(() => {
    slowSettled = true;
  });
  pending.catch(() => undefined);
  // Wait until the slow endpoint has the request, so the two really overlap.
  while (slow.state.requests === 0) await new Promise((r) => setTimeout(r, 10));

  const id = await verifier.verify(await sign(fastKey, { ...base, iss: 'https://fast.example' }));
  t.equal(id.issuer, 'https://fast.example');
  t.equal(slowSettled, false, 'the other issuer resolved while the slow fetch was still pending');

  try {
    await pending;
    t.fail('slow issuer token accepted');
  } catch (err) {
    t.equal((err as { code?: string }).code, ErrorCodes.JWKS_UNAVAILABLE, 'the slow one fails closed after the timeout');
    t.match((err as Error).message, /no answer within 3000 ms/);
  }
});

t.test('JWKS file issuer', async (t) => {
  const dir = await mkdtemp(join(tmpdir(), 'sluice-jwks-'));
  t.teardown(() => rm(dir, { recursive: true, force: true }));
  const a = await makeKey('ES256', 'a');
  const b = await makeKey('RS256', 'b');
  const file = join(dir, 'jwks.json');
  await writeFile(file, JSON.stringify({ keys: [a.publicJwk] }));
  const verifier = createTokenVerifier(identityConfig([issuer('https://file.example', { jwksFile: file })]), {
    jwksFileCheckMs: 0,
  });
  const base = { iss: 'https://file.example', aud: 'sluice-test', sub: 'batch', iat: now(), exp: now() + 300, groups: ['g'] };

  t.same((await verifier.verify(await sign(a, base))).groups, ['g']);
  await refuses(t, verifier, await sign(b, base), ErrorCodes.TOKEN_UNKNOWN_KEY, /"b"/);

  // Rotation: the file changes, the new key is picked up, the removed one refused.
  await writeFile(file, JSON.stringify({ keys: [b.publicJwk] }));
  const later = new Date(Date.now() + 5000);
  await utimes(file, later, later);
  t.equal((await verifier.verify(await sign(b, base))).subject, 'batch', 'new key after reload');
  await refuses(t, verifier, await sign(a, base), ErrorCodes.TOKEN_UNKNOWN_KEY);

  // A broken rewrite keeps the previous keys.
  await writeFile(file, '{"keys": [');
  const later2 = new Date(Date.now() + 10000);
  await utimes(file, later2, later2);
  t.equal((await verifier.verify(await sign(b, base))).subject, 'batch', 'broken file keeps the last good set');

  t.test('several keys and no kid: each candidate is tried', async (t) => {
    const r1 = await makeKey('RS256', 'r1');
    const r2 = await makeKey('RS256', 'r2');
    const f2 = join(dir, 'nokid.json');
    const strip = (k: TestKey) => {
      const { kid: _kid, ...rest } = k.publicJwk;
      return rest;
    };
    await writeFile(f2, JSON.stringify({ keys: [strip(r1), strip(r2)] }));
    const v = createTokenVerifier(identityConfig([issuer('https://file.example', { jwksFile: f2 })]));
    const token = await new SignJWT(base).setProtectedHeader({ alg: 'RS256' }).sign(r2.privateKey);
    t.equal((await v.verify(token)).subject, 'batch');
    const other = await makeKey('RS256', 'x');
    const bad = await new SignJWT(base).setProtectedHeader({ alg: 'RS256' }).sign(other.privateKey);
    await refuses(t, v, bad, ErrorCodes.TOKEN_BAD_SIGNATURE);
  });

  t.test('configuration errors stop startup', async (t) => {
    t.throws(() => createTokenVerifier(identityConfig([issuer('https://f.example', { jwksFile: join(dir, 'missing.json') })])), {
      code: ErrorCodes.CONFIG_INVALID,
    });
    const notJwks = join(dir, 'not.json');
    await writeFile(notJwks, '{"hello": 1}');
    t.throws(() => createTokenVerifier(identityConfig([issuer('https://f.example', { jwksFile: notJwks })])), {
      code: ErrorCodes.CONFIG_INVALID,
    });
    t.throws(
      () =>
        createTokenVerifier(
          identityConfig([issuer('https://f.example', { jwksFile: file }), issuer('https://f.example', { jwksFile: file })]),
        ),
      { code: ErrorCodes.CONFIG_INVALID },
      'duplicate issuer',
    );
    t.throws(
      () => createTokenVerifier(identityConfig([{ ...issuer('https://f.example', { jwksFile: file }), jwksUri: 'http://127.0.0.1:1/' }])),
      { code: ErrorCodes.CONFIG_INVALID },
      'both jwks_uri and jwks_file',
    );
    t.throws(() => createTokenVerifier(identityConfig([issuer('https://f.example', { jwksUri: 'not a url' })])), {
      code: ErrorCodes.CONFIG_INVALID,
    });
  });
});

t.test('DevIssuer', async (t) => {
  const stateDir = await mkdtemp(join(tmpdir(), 'sluice-state-'));
  t.teardown(() => rm(stateDir, { recursive: true, force: true }));

  const dev = await DevIssuer.open(stateDir);
  const privatePath = join(stateDir, 'dev-issuer', 'private.jwk');
  t.equal((await stat(privatePath)).mode & 0o777, 0o600, 'private key is 0600');
  t.equal((await stat(join(stateDir, 'dev-issuer'))).mode & 0o777, 0o700, 'its directory is 0700');
  const published = JSON.parse(await readFile(join(stateDir, 'dev-issuer', 'public.jwks.json'), 'utf8')) as { keys: JWK[] };
  t.equal(published.keys.length, 1);
  t.equal(published.keys[0]?.kid, dev.kid);
  t.notOk('d' in (published.keys[0] ?? {}), 'public file has no private part');
  t.notOk('d' in (dev.jwks().keys[0] ?? {}), 'jwks() has no private part');

  const again = await DevIssuer.open(stateDir);
  t.equal(again.kid, dev.kid, 'same key on reopen');

  const token = await dev.mint({ sub: 'alice', groups: ['dev'], claims: { iss: 'https://forged.example', team: 'core' } });
  const trusting = createTokenVerifier(identityConfig([], true), { devIssuer: again });
  const id = await trusting.verify(token);
  t.equal(id.subject, 'alice');
  t.equal(id.issuer, DEV_ISSUER, 'claims cannot override iss');
  t.same(id.groups, ['dev']);
  t.equal(id.claims.team, 'core');
  t.equal(id.claims.aud, DEV_AUDIENCE);
  t.equal((id.claims.exp as number) - (id.claims.iat as number), 900, 'default ttl 15 minutes');
  t.type(id.claims.jti, 'string');

  const short = await trusting.verify(await dev.mint({ sub: 'bob', ttlSeconds: 60 }));
  t.same(short.groups, []);
  t.equal((short.claims.exp as number) - (short.claims.iat as number), 60);

  await refuses(t, createTokenVerifier(identityConfig([], false), { devIssuer: dev }), token, ErrorCodes.TOKEN_UNKNOWN_ISSUER);
  await refuses(t, createTokenVerifier(identityConfig([], true)), token, ErrorCodes.TOKEN_UNKNOWN_ISSUER);
  await refuses(t, trusting, await dev.mint({ sub: 'alice', audience: 'elsewhere' }), ErrorCodes.TOKEN_WRONG_AUDIENCE);
  await t.rejects(dev.mint({ sub: '' }), { code: ErrorCodes.CONFIG_INVALID });
  await t.rejects(dev.mint({ sub: 'x', ttlSeconds: 0 }), { code: ErrorCodes.CONFIG_INVALID });

  t.test('a key from another state dir does not verify', async (t) => {
    const otherDir = await mkdtemp(join(tmpdir(), 'sluice-state-'));
    t.teardown(() => rm(otherDir, { recursive: true, force: true }));
    const other = await DevIssuer.open(otherDir);
    t.not(other.kid, dev.kid);
    await refuses(t, trusting, await other.mint({ sub: 'mallory' }), ErrorCodes.TOKEN_UNKNOWN_KEY);
  });

  t.test('concurrent first use agrees on one key', async (t) => {
    const fresh = await mkdtemp(join(tmpdir(), 'sluice-state-'));
    t.teardown(() => rm(fresh, { recursive: true, force: true }));
    const inProcess = await Promise.all([DevIssuer.open(fresh), DevIssuer.open(fresh), DevIssuer.open(fresh)]);
    t.same(new Set(inProcess.map((d) => d.kid)).size, 1, 'same process');

    const fresh2 = await mkdtemp(join(tmpdir(), 'sluice-state-'));
    t.teardown(() => rm(fresh2, { recursive: true, force: true }));
    const moduleUrl = new URL('../../src/identity/dev-issuer.js', import.meta.url).href;
    const script = `const { DevIssuer } = await import(${JSON.stringify(moduleUrl)}); console.log((await DevIssuer.open(process.argv[1])).kid);`;
    const outs = await Promise.all(
      [1, 2, 3].map(() => run(process.execPath, ['--input-type=module', '-e', script, fresh2])),
    );
    const kids = new Set(outs.map((o) => o.stdout.trim()));
    t.equal(kids.size, 1, 'separate processes');
    t.equal((await DevIssuer.open(fresh2)).kid, [...kids][0]);
    t.equal((await stat(join(fresh2, 'dev-issuer', 'private.jwk'))).mode & 0o777, 0o600);
  });

  t.test('a private key readable by others is refused', async (t) => {
    const loose = await mkdtemp(join(tmpdir(), 'sluice-state-'));
    t.teardown(() => rm(loose, { recursive: true, force: true }));
    await DevIssuer.open(loose);
    await chmod(join(loose, 'dev-issuer', 'private.jwk'), 0o644);
    await t.rejects(DevIssuer.open(loose), { code: ErrorCodes.CONFIG_INVALID, message: /chmod 600/ });
  });
});

t.test('parseDuration', async (t) => {
  t.equal(parseDuration('30s'), 30);
  t.equal(parseDuration('15m'), 900);
  t.equal(parseDuration('1h'), 3600);
  t.equal(parseDuration('2d'), 172800);
  t.equal(parseDuration('900'), 900);
  for (const bad of ['', 'abc', '15x', '-5m', '1.5h', '0', '0s', 'm', '1h30m', '99999999999999']) {
    t.throws(() => parseDuration(bad), { code: ErrorCodes.CONFIG_INVALID }, JSON.stringify(bad));
  }
});

/**
 * Token verification: a presented JWT becomes an Identity or a refusal with a
 * code from the catalogue. Fails closed at every step.
 *
 * Order matters: the size cap comes before any decoding; the issuer is chosen
 * by the unverified `iss` only to pick which keys and rules apply, and the
 * `alg` is checked against that issuer's allowlist before any key is looked
 * up, so a token can never pick its own verification method (`none`, or HMAC
 * keyed with a public key).
 */
import { createHash } from 'node:crypto';
import { errors, jwtVerify, type JWTPayload, type JWTVerifyGetKey, type JWTVerifyOptions } from 'jose';
import type { IdentityConfig } from '../config/types.js';
import { ErrorCodes, SluiceError } from '../errors.js';
import type { Logger } from '../log.js';
import { DEV_AUDIENCE, DEV_ISSUER, type DevIssuer } from './dev-issuer.js';
import { fileKeySet, JwksUnavailableError, redactUrl, remoteKeySet, staticKeySet } from './jwks.js';
import type { Identity, TokenVerifier, VerifyOptions } from './types.js';

export interface TokenVerifierOptions {
  devIssuer?: DevIssuer;
  logger?: Logger;
  /** Timeout for one JWKS fetch. Default 5000 ms. */
  fetchTimeoutMs?: number;
  /** Minimum time between refetches of a remote JWKS for an unknown kid. Default 30 000 ms (tests shorten it). */
  jwksCooldownMs?: number;
  /** How often, at most, a JWKS file's mtime is checked. Default 1000 ms. */
  jwksFileCheckMs?: number;
}

interface TrustedIssuer {
  issuer: string;
  audience: string;
  algorithms: string[];
  groupsClaim: string;
  getKey: JWTVerifyGetKey;
  /** For messages: where the keys come from. */
  keySource: string;
}

const MAX_ECHO = 200;

/** A value from the token, quoted and cut short, safe to put in a message. */
function echo(value: unknown): string {
  const s = typeof value === 'string' ? value : JSON.stringify(value) ?? String(value);
  const cut = s.length > MAX_ECHO ? `${s.slice(0, MAX_ECHO)}...` : s;
  return JSON.stringify(cut);
}

/** `none` and every HMAC algorithm: a verifier holding only public keys must never accept them. */
function isForbiddenAlg(alg: string): boolean {
  return alg.toLowerCase() === 'none' || /^hs\d+$/i.test(alg);
}

const BASE64URL = /^[A-Za-z0-9_-]*$/;
// Invalid UTF-8 is an error, as it is for jose, rather than U+FFFD.
const strictUtf8 = new TextDecoder('utf-8', { fatal: true });
const UNSAFE_SEGMENTS = new Set(['__proto__', 'constructor', 'prototype']);

/**
 * Look up a claim by name or dotted path (`realm_access.roles`), own
 * properties only. A claim whose whole name matches wins over a path, so
 * namespaced names like `https://example.com/groups` work as they are.
 * `__proto__`, `constructor` and `prototype` never resolve.
 */
export function claimAtPath(claims: unknown, path: string): unknown {
  if (typeof claims !== 'object' || claims === null) return undefined;
  if (!UNSAFE_SEGMENTS.has(path) && Object.hasOwn(claims, path)) {
    return Object.getOwnPropertyDescriptor(claims, path)?.value;
  }
  let current: unknown = claims;
  for (const segment of path.split('.')) {
    if (UNSAFE_SEGMENTS.has(segment)) return undefined;
    if (typeof current !== 'object' || current === null || Array.isArray(current)) return undefined;
    if (!Object.hasOwn(current, segment)) return undefined;
    current = Object.getOwnPropertyDescriptor(current, segment)?.value;
  }
  return current;
}

function refuse(code: (typeof ErrorCodes)[keyof typeof ErrorCodes], message: string, cause?: unknown): SluiceError {
  return new SluiceError(code, message, cause === undefined ? undefined : { cause });
}

function decodeSegment(segment: string, what: string): Record<string, unknown> {
  // Compact JWS segments are unpadded base64url; length % 4 == 1 is impossible.
  if (segment.length === 0 || !BASE64URL.test(segment) || segment.length % 4 === 1) {
    throw refuse(ErrorCodes.TOKEN_MALFORMED, `token ${what} is not base64url`);
  }
  let value: unknown;
  try {
    value = JSON.parse(strictUtf8.decode(Buffer.from(segment, 'base64url')));
  } catch {
    throw refuse(ErrorCodes.TOKEN_MALFORMED, `token ${what} is not JSON`);
  }
  if (typeof value !== 'object' || value === null || Array.isArray(value)) {
    throw refuse(ErrorCodes.TOKEN_MALFORMED, `token ${what} is not a JSON object`);
  }
  return value as Record<string, unknown>;
}

/** A span of seconds as a person reads it, exactly: `90s` is `1m 30s`, then `45m`, `25h`, `1h 0m 1s`. */
function spanOf(seconds: number): string {
  const s = Math.max(0, Math.round(seconds));
  const h = Math.floor(s / 3600);
  const m = Math.floor((s % 3600) / 60);
  const r = s % 60;
  if (s === 0) return '0s';
  if (r !== 0) return h > 0 ? `${h}h ${m}m ${r}s` : m > 0 ? `${m}m ${r}s` : `${r}s`;
  if (m !== 0) return h > 0 ? `${h}h ${m}m` : `${m}m`;
  return `${h}h`;
}

function isoOf(seconds: unknown): string {
  if (typeof seconds !== 'number' || !Number.isFinite(seconds)) return 'an invalid time';
  const d = new Date(seconds * 1000);
  return Number.isNaN(d.getTime()) ? 'an invalid time' : d.toISOString();
}

/** Translate a jose error into a refusal a person can act on; `audience` is the one the token was checked for. */
function mapJoseError(err: unknown, iss: TrustedIssuer, audience: string, kid: unknown, alg: string): SluiceError {
  if (err instanceof SluiceError) return err;
  if (err instanceof JwksUnavailableError) {
    return refuse(
      ErrorCodes.JWKS_UNAVAILABLE,
      `cannot verify tokens from issuer ${echo(iss.issuer)} with a key not already cached: ${err.message}`,
      err,
    );
  }
  if (err instanceof errors.JWTExpired) {
    const exp = err.payload.exp;
    const ago = typeof exp === 'number' ? Math.max(0, Math.round(Date.now() / 1000 - exp)) : 0;
    return refuse(ErrorCodes.TOKEN_EXPIRED, `token expired at ${isoOf(exp)} (${ago}s ago); mint a fresh one`);
  }
  if (err instanceof errors.JWTClaimValidationFailed) {
    const { claim, reason, payload } = err;
    if (claim === 'exp' && reason === 'missing') {
      return refuse(ErrorCodes.TOKEN_MISSING_EXP, 'token has no exp claim; Sluice accepts only tokens that expire');
    }

    if (claim === 'nbf' && reason === 'check_failed') {
      const nbf = payload.nbf;
      const inS = typeof nbf === 'number' ? Math.max(0, Math.round(nbf - Date.now() / 1000)) : 0;
      return refuse(
        ErrorCodes.TOKEN_NOT_YET_VALID,
        `token is not valid before ${isoOf(nbf)} (${inS}s from now); check the clock where it was minted`,
      );
    }
    if (claim === 'aud') {
      return refuse(
        ErrorCodes.TOKEN_WRONG_AUDIENCE,
        audience === iss.audience
          ? `token audience ${echo(payload.aud ?? null)} does not include ${echo(audience)}, the audience issuer ${echo(iss.issuer)} must mint for`
          : `token audience ${echo(payload.aud ?? null)} does not include ${echo(audience)}, the audience the API requires (api.audience); mint the token for it`,
      );
    }
    if (reason === 'missing') {
      return refuse(ErrorCodes.TOKEN_BAD_CLAIMS, `token has no ${claim} claim`);
    }
    return refuse(ErrorCodes.TOKEN_BAD_CLAIMS, `token claim ${claim} is invalid: ${err.message}`);
  }
  if (err instanceof errors.JWKSNoMatchingKey) {
    const which = typeof kid === 'string' ? `key id (kid) ${echo(kid)}` : 'a key without a kid';
    return refuse(
      ErrorCodes.TOKEN_UNKNOWN_KEY,
      `token is signed with ${which} for ${alg} that issuer ${echo(iss.issuer)} does not publish in ${iss.keySource}`,
    );
  }
  if (err instanceof errors.JWKSMultipleMatchingKeys) {
    return refuse(ErrorCodes.TOKEN_UNKNOWN_KEY, `token has no kid and several keys of issuer ${echo(iss.issuer)} could match`);
  }
  if (err instanceof errors.JWSSignatureVerificationFailed) {
    return refuse(ErrorCodes.TOKEN_BAD_SIGNATURE, `token signature does not verify with issuer ${echo(iss.issuer)}'s key`);
  }
  if (err instanceof errors.JOSEAlgNotAllowed || err instanceof errors.JOSENotSupported) {
    return refuse(ErrorCodes.TOKEN_ALG_NOT_ALLOWED, `token algorithm ${echo(alg)} cannot be used with issuer ${echo(iss.issuer)}'s keys`);
  }
  if (err instanceof errors.JWSInvalid || err instanceof errors.JWTInvalid) {
    return refuse(ErrorCodes.TOKEN_MALFORMED, `token is not a valid JWT: ${err.message}`);
  }
  if (err instanceof errors.JWKInvalid || err instanceof errors.JWKSInvalid) {
    return refuse(ErrorCodes.JWKS_UNAVAILABLE, `issuer ${echo(iss.issuer)}'s key set is unusable: ${err.message}`, err);
  }
  // Anything unforeseen refuses the token; the cause stays in the logs.
  return refuse(ErrorCodes.TOKEN_BAD_CLAIMS, 'token could not be verified', err);
}

function buildIssuers(config: IdentityConfig, opts: TokenVerifierOptions): Map<string, TrustedIssuer> {
  const trusted = new Map<string, TrustedIssuer>();
  const cooldownMs = opts.jwksCooldownMs ?? 30_000;
  const timeoutMs = opts.fetchTimeoutMs ?? 5000;

  for (const ic of config.issuers) {
    if (trusted.has(ic.issuer)) {
      throw refuse(ErrorCodes.CONFIG_INVALID, `issuer ${echo(ic.issuer)} is configured twice`);
    }
    if (ic.issuer === DEV_ISSUER) {
      throw refuse(ErrorCodes.CONFIG_INVALID, `issuer ${echo(DEV_ISSUER)} is reserved for the dev issuer; set dev_issuer: true instead`);
    }
    const algorithms = ic.algorithms.filter((a) => !isForbiddenAlg(a));
    if (algorithms.length !== ic.algorithms.length) {
      opts.logger?.warn({ issuer: ic.issuer }, 'ignoring none/HMAC algorithms in the issuer allowlist');
    }
    if (algorithms.length === 0) {
      throw refuse(ErrorCodes.CONFIG_INVALID, `issuer ${echo(ic.issuer)} allows no usable algorithm (none and HS* are never accepted)`);
    }
    let getKey: JWTVerifyGetKey;
    let keySource: string;
    if (ic.jwksUri !== undefined && ic.jwksFile === undefined) {
      if (!URL.canParse(ic.jwksUri)) {
        throw refuse(ErrorCodes.CONFIG_INVALID, `issuer ${echo(ic.issuer)} has an invalid jwks_uri`);
      }
      getKey = remoteKeySet(ic.jwksUri, { timeoutMs, cooldownMs, cacheMaxAgeMs: 10 * 60_000 });
      keySource = redactUrl(ic.jwksUri);
    } else if (ic.jwksFile !== undefined && ic.jwksUri === undefined) {
      getKey = fileKeySet(ic.jwksFile, {
        ...(opts.logger ? { logger: opts.logger } : {}),
        ...(opts.jwksFileCheckMs !== undefined ? { checkIntervalMs: opts.jwksFileCheckMs } : {}),
      });
      // A file's path is the operator's (the log names it); a client is told there is a key file.
      keySource = 'its jwks_file';
    } else {
      throw refuse(ErrorCodes.CONFIG_INVALID, `issuer ${echo(ic.issuer)} needs exactly one of jwks_uri and jwks_file`);
    }
    trusted.set(ic.issuer, {
      issuer: ic.issuer,
      audience: ic.audience,
      algorithms,
      groupsClaim: ic.groupsClaim,
      getKey,
      keySource,
    });
  }

  if (config.devIssuer && opts.devIssuer) {
    trusted.set(DEV_ISSUER, {
      issuer: DEV_ISSUER,
      audience: DEV_AUDIENCE,
      algorithms: ['ES256'],
      groupsClaim: 'groups',
      getKey: staticKeySet(opts.devIssuer.jwks()),
      keySource: 'the dev issuer key set',
    });
  } else if (config.devIssuer) {
    opts.logger?.warn('dev_issuer is on but no dev issuer key was loaded; its tokens will be refused');
  }
  return trusted;
}

export function createTokenVerifier(config: IdentityConfig, opts: TokenVerifierOptions = {}): TokenVerifier {
  const issuers = buildIssuers(config, opts);
  const maxBytes = config.maxTokenBytes;

  async function verify(token: string, vopts: VerifyOptions = {}): Promise<Identity> {
    if (typeof token !== 'string' || token.length === 0) {
      throw refuse(ErrorCodes.TOKEN_MISSING, 'no token presented; send the JWT as the password');
    }
    // A string's UTF-8 size is at least its length: check the cheap bound
    // first so a huge string is never even walked.
    if (token.length > maxBytes || Buffer.byteLength(token, 'utf8') > maxBytes) {
      throw refuse(ErrorCodes.TOKEN_TOO_LARGE, `token is larger than the ${maxBytes}-byte limit`);
    }
    const segments = token.split('.');
    if (segments.length !== 3) {
      const hint = /\s/.test(token) ? ' (it contains whitespace; check how it was pasted)' : '';
      throw refuse(ErrorCodes.TOKEN_MALFORMED, `token is not a compact JWT (three base64url parts separated by dots)${hint}`);
    }
    const [h, p, s] = segments as [string, string, string];
    const header = decodeSegment(h, 'header');
    const payload = decodeSegment(p, 'payload');
    if (!BASE64URL.test(s)) throw refuse(ErrorCodes.TOKEN_MALFORMED, 'token signature is not base64url');

    const issValue = Object.hasOwn(payload, 'iss') ? payload.iss : undefined;
    const iss = typeof issValue === 'string' ? issuers.get(issValue) : undefined;
    if (!iss) {
      const which = issValue === undefined ? 'has no iss claim' : `issuer ${echo(issValue)} is not trusted`;
      // The issuers this gateway trusts are its operator's business, not every caller's.
      throw refuse(ErrorCodes.TOKEN_UNKNOWN_ISSUER, `token ${which} by this gateway; check the issuer the token was minted by`);
    }

    const alg = Object.hasOwn(header, 'alg') ? header.alg : undefined;
    if (typeof alg !== 'string' || isForbiddenAlg(alg) || !iss.algorithms.includes(alg)) {
      throw refuse(
        ErrorCodes.TOKEN_ALG_NOT_ALLOWED,
        `token algorithm ${echo(alg ?? null)} is not allowed for issuer ${echo(iss.issuer)}; allowed: ${iss.algorithms.join(', ')}`,
      );
    }
    const kid = Object.hasOwn(header, 'kid') ? header.kid : undefined;

    const audience = vopts.audience ?? iss.audience;
    const options: JWTVerifyOptions = {
      issuer: iss.issuer,
      audience,
      algorithms: iss.algorithms,
      clockTolerance: config.clockToleranceSeconds,
      requiredClaims: ['exp', 'sub'],
    };
    let claims: JWTPayload;
    try {
      claims = await verifyWithKeys(token, iss.getKey, options);
    } catch (err) {
      const refusal = mapJoseError(err, iss, audience, kid, alg);
      if (refusal.code === ErrorCodes.JWKS_UNAVAILABLE) {
        opts.logger?.warn({ issuer: iss.issuer, reason: refusal.message }, 'JWKS unavailable');
      } else if (!(err instanceof errors.JOSEError) && !(err instanceof SluiceError)) {
        opts.logger?.error({ issuer: iss.issuer, err }, 'unexpected error verifying a token');
      }
      throw refusal;
    }

    // jose checks iat only against a maximum token age, which Sluice does not set: a token minted
    // in the future (a clock ahead at the issuer, or a token made to outlive a lifetime rule) is refused here.
    const iat = claims.iat;
    // Checked here, not by jose's requiredClaims, which would report it before a missing exp (jose
    // checks its list last to first). Without iat a token's lifetime is unknown, and
    // identity.max_token_lifetime could not hold; jose has checked it is a number when present.
    if (typeof iat !== 'number') {
      throw refuse(
        ErrorCodes.TOKEN_BAD_CLAIMS,
        "token has no iat claim; Sluice needs it to check the token's lifetime against identity.max_token_lifetime (OIDC ID tokens and RFC 9068 access tokens always carry it)",
      );
    }
    if (iat > Date.now() / 1000 + config.clockToleranceSeconds) {
      const inS = Math.max(0, Math.round(iat - Date.now() / 1000));
      throw refuse(ErrorCodes.TOKEN_NOT_YET_VALID, `token was issued at ${isoOf(iat)} (${inS}s from now); check the clock where it was minted`);
    }
    // How long a leaked token is worth anything is its lifetime, whatever is left of it when it is
    // shown: past the operator's limit it is refused outright, on its first day as on its last.
    // Measured as its issuer did (exp - iat: one clock, no skew); jose made sure both are numbers.
    const exp = claims.exp as number;
    const lifetime = exp - iat;
    if (lifetime > config.maxTokenLifetimeSeconds) {
      throw refuse(
        ErrorCodes.TOKEN_LIFETIME_TOO_LONG,
        `token lives ${spanOf(lifetime)} (issued at ${isoOf(iat)}, expires at ${isoOf(exp)}): longer than the ${spanOf(config.maxTokenLifetimeSeconds)} this gateway accepts (identity.max_token_lifetime); mint a shorter-lived token`,
      );
    }
    if (typeof claims.sub !== 'string' || claims.sub.length === 0) {
      throw refuse(ErrorCodes.TOKEN_BAD_CLAIMS, 'token sub claim must be a non-empty string');
    }
    const groupsValue = claimAtPath(claims, iss.groupsClaim);
    let groups: string[];
    if (groupsValue === undefined) {
      groups = [];
    } else if (Array.isArray(groupsValue) && groupsValue.every((g) => typeof g === 'string')) {
      groups = [...(groupsValue as string[])];
    } else {
      throw refuse(
        ErrorCodes.TOKEN_BAD_CLAIMS,
        `token claim ${echo(iss.groupsClaim)} must be a list of strings (issuer ${echo(iss.issuer)}'s groups claim)`,
      );
    }
    const jti = claims.jti;
    const tokenId = createHash('sha256')
      .update(typeof jti === 'string' && jti.length > 0 ? jti : token)
      .digest('hex')
      .slice(0, 32);

    return {
      subject: claims.sub,
      issuer: iss.issuer,
      groups,
      claims: Object.freeze({ ...claims }),
      tokenId,
      // The moment a new login with this token would be refused (jose allows the tolerance past exp).
      expiresAt: new Date(((claims.exp as number) + config.clockToleranceSeconds) * 1000),
    };
  }

  return { verify };
}

/**
 * jwtVerify, plus the case of a token without a kid when the issuer publishes
 * several keys for its alg: try each candidate in turn (jose leaves that to
 * the caller). A claim error from one candidate means its signature held, so
 * it is final.
 */
async function verifyWithKeys(token: string, getKey: JWTVerifyGetKey, options: JWTVerifyOptions): Promise<JWTPayload> {
  try {
    return (await jwtVerify(token, getKey, options)).payload;
  } catch (err) {
    if (!(err instanceof errors.JWKSMultipleMatchingKeys)) throw err;
    let lastError: unknown = err;
    for await (const key of err) {
      try {
        return (await jwtVerify(token, key, options)).payload;
      } catch (inner) {
        if (!(inner instanceof errors.JWSSignatureVerificationFailed)) throw inner;
        lastError = inner;
      }
    }
    throw lastError;
  }
}

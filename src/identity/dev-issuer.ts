/**
 * The gateway's own token issuer, for development and demos: an ES256 key pair
 * kept in the state directory, and a `mint` that signs short-lived tokens with
 * it. The verifier trusts it only when the config says `dev_issuer: true`.
 *
 *   <stateDir>/dev-issuer/private.jwk        mode 0600, the signing key
 *   <stateDir>/dev-issuer/public.jwks.json   the public half, for other tools
 *   <stateDir>/dev-issuer/token              mode 0600, the token `sluice serve` minted at start
 *
 * private.jwk is the one source of truth; the public set is derived from it.
 */
import { randomBytes } from 'node:crypto';
import { chmod, mkdir, readFile, rename, unlink, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import {
  calculateJwkThumbprint,
  exportJWK,
  generateKeyPair,
  importJWK,
  SignJWT,
  type CryptoKey,
  type JWK,
} from 'jose';
import { ErrorCodes, SluiceError } from '../errors.js';
import { createOnce, sharedMode } from '../secret-file.js';

export const DEV_ISSUER = 'https://sluice.invalid/dev-issuer';
export const DEV_AUDIENCE = 'sluice';

const ALG = 'ES256';
/** Where `sluice serve` leaves the dev token it mints at start (saveDevToken). */
export const DEV_TOKEN_FILE = 'token';
const DEFAULT_TTL_SECONDS = 900;

export interface MintOptions {
  sub: string;
  groups?: string[];
  /** Default 900 (15 minutes). */
  ttlSeconds?: number;
  /** Extra claims; they cannot override iss, aud, sub, iat, exp or jti. */
  claims?: Record<string, unknown>;
  /** Default DEV_AUDIENCE. */
  audience?: string;
}

function isEnoent(err: unknown): boolean {
  return (err as NodeJS.ErrnoException | undefined)?.code === 'ENOENT';
}

function parsePrivateJwk(text: string, path: string): JWK {
  let jwk: unknown;
  try {
    jwk = JSON.parse(text);
  } catch (cause) {
    throw new SluiceError(ErrorCodes.CONFIG_INVALID, `dev issuer key ${path} is not valid JSON; delete it to create a new key`, { cause });
  }
  const k = jwk as Partial<Record<string, unknown>>;
  if (
    typeof jwk !== 'object' || jwk === null ||
    k.kty !== 'EC' || k.crv !== 'P-256' ||
    typeof k.x !== 'string' || typeof k.y !== 'string' || typeof k.d !== 'string'
  ) {
    throw new SluiceError(ErrorCodes.CONFIG_INVALID, `dev issuer key ${path} is not a P-256 private JWK; delete it to create a new key`);
  }
  return jwk as JWK;
}

export class DevIssuer {
  readonly kid: string;
  readonly #privateKey: CryptoKey;
  readonly #publicJwk: JWK;

  private constructor(kid: string, privateKey: CryptoKey, publicJwk: JWK) {
    this.kid = kid;
    this.#privateKey = privateKey;
    this.#publicJwk = publicJwk;
  }

  /** Load the key pair, creating it on first use (two processes doing this at once end up with the same key: createOnce). */
  static async open(stateDir: string): Promise<DevIssuer> {
    const dir = join(stateDir, 'dev-issuer');
    await mkdir(dir, { recursive: true, mode: 0o700 });
    // mkdir's mode applies only to directories it creates; this one is ours.
    await chmod(dir, 0o700);
    const privatePath = join(dir, 'private.jwk');

    let text: string;
    try {
      text = await readFile(privatePath, 'utf8');
    } catch (err) {
      if (!isEnoent(err)) throw err;
      await DevIssuer.#create(privatePath);
      text = await readFile(privatePath, 'utf8');
    }

    const shared = await sharedMode(privatePath);
    if (shared !== undefined) {
      throw new SluiceError(ErrorCodes.CONFIG_INVALID, `dev issuer key ${privatePath} is accessible by other users (mode ${shared}); run chmod 600 on it`);
    }

    const jwk = parsePrivateJwk(text, privatePath);
    const kid = await calculateJwkThumbprint({ kty: 'EC', crv: jwk.crv, x: jwk.x, y: jwk.y });
    const privateKey = (await importJWK({ ...jwk, alg: ALG }, ALG)) as CryptoKey;
    const publicJwk: JWK = { kty: 'EC', crv: 'P-256', x: jwk.x, y: jwk.y, kid, alg: ALG, use: 'sig' };

    // Written every time (atomically) so it always matches private.jwk.
    const publicPath = join(dir, 'public.jwks.json');
    const tmp = `${publicPath}.${process.pid}.${randomBytes(6).toString('hex')}.tmp`;
    await writeFile(tmp, JSON.stringify({ keys: [publicJwk] }, null, 2) + '\n', { mode: 0o644 });
    await rename(tmp, publicPath);

    return new DevIssuer(kid, privateKey, publicJwk);
  }

  static async #create(privatePath: string): Promise<void> {
    const { privateKey } = await generateKeyPair(ALG, { extractable: true });
    await createOnce(privatePath, JSON.stringify(await exportJWK(privateKey)) + '\n');
  }

  /** The public key set (no private material). */
  jwks(): { keys: JWK[] } {
    return { keys: [{ ...this.#publicJwk }] };
  }

  async mint(opts: MintOptions): Promise<string> {
    if (typeof opts.sub !== 'string' || opts.sub.length === 0) {
      throw new SluiceError(ErrorCodes.CONFIG_INVALID, 'a token needs a non-empty subject (sub)');
    }
    const ttl = opts.ttlSeconds ?? DEFAULT_TTL_SECONDS;
    if (!Number.isInteger(ttl) || ttl <= 0) {
      throw new SluiceError(ErrorCodes.CONFIG_INVALID, `token lifetime must be a positive whole number of seconds, not ${ttl}`);
    }
    if (opts.groups !== undefined && !(Array.isArray(opts.groups) && opts.groups.every((g) => typeof g === 'string'))) {
      throw new SluiceError(ErrorCodes.CONFIG_INVALID, 'groups must be a list of strings');
    }
    const payload: Record<string, unknown> = { ...(opts.claims ?? {}) };
    if (opts.groups !== undefined || !Object.hasOwn(payload, 'groups')) payload.groups = opts.groups ?? [];
    const now = Math.floor(Date.now() / 1000);
    return new SignJWT(payload)
      .setProtectedHeader({ alg: ALG, kid: this.kid, typ: 'JWT' })
      .setIssuer(DEV_ISSUER)
      .setAudience(opts.audience ?? DEV_AUDIENCE)
      .setSubject(opts.sub)
      .setIssuedAt(now)
      .setExpirationTime(now + ttl)
      .setJti(randomBytes(16).toString('base64url'))
      .sign(this.#privateKey);
  }
}

const UNIT_SECONDS: Readonly<Record<string, number>> = { s: 1, m: 60, h: 3600, d: 86400 };

/**
 * '30s' '15m' '1h' '1d' or a bare number of seconds ('900') -> seconds.
 * Used for the CLI's --ttl; anything else is refused rather than guessed at.
 */
export function parseDuration(text: string): number {
  const m = /^\s*(\d{1,9})\s*([smhd]?)\s*$/.exec(text);
  const unit = m?.[2] ?? '';
  const seconds = m ? Number(m[1]) * (unit === '' ? 1 : (UNIT_SECONDS[unit] ?? NaN)) : NaN;
  if (!Number.isSafeInteger(seconds) || seconds <= 0) {
    throw new SluiceError(
      ErrorCodes.CONFIG_INVALID,
      `cannot read ${JSON.stringify(String(text).slice(0, 40))} as a duration; use e.g. 30s, 15m, 1h or a number of seconds`,
    );
  }
  return seconds;
}

/**
 * Leaves `token` in `<stateDir>/dev-issuer/token` (mode 0600, replaced
 * atomically) and returns the path. `sluice serve` prints commands that
 * read the token from there, not the token itself: what serve writes to
 * stderr often ends up in a log (a container's, a CI job's), and a token in
 * a log is a credential anyone reading it may use until it expires. The
 * directory already holds the key that signs such tokens.
 */
export async function saveDevToken(stateDir: string, token: string): Promise<string> {
  const dir = join(stateDir, 'dev-issuer');
  const path = join(dir, DEV_TOKEN_FILE);
  const tmp = join(dir, `${DEV_TOKEN_FILE}.${process.pid}.${randomBytes(6).toString('hex')}.tmp`);
  try {
    await writeFile(tmp, `${token}\n`, { mode: 0o600, flag: 'wx' });
    await rename(tmp, path);
  } catch (err) {
    // Not a token left behind under another name.
    await unlink(tmp).catch(() => undefined);
    throw err;
  }
  return path;
}

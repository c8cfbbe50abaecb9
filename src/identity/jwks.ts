/**
 * Where an issuer's public keys come from: a remote JWKS endpoint, a JWKS
 * file on disk, or a set held in memory (the dev issuer).
 *
 * Each issuer gets its own key set, so one slow or broken endpoint only
 * affects tokens from that issuer. A key set reports "could not get the keys"
 * as JwksUnavailableError, distinct from "the keys have no match for this
 * token" (jose's JWKSNoMatchingKey), so the verifier can tell an outage from
 * a token signed by a key nobody published.
 */
import { readFileSync, statSync } from 'node:fs';
import { readFile, stat } from 'node:fs/promises';
import {
  createLocalJWKSet,
  createRemoteJWKSet,
  errors,
  type JSONWebKeySet,
  type JWTVerifyGetKey,
} from 'jose';
import { ErrorCodes, SluiceError } from '../errors.js';
import type { Logger } from '../log.js';

/** The key set could not be obtained (fetch failed, timed out, not a JWKS). */
export class JwksUnavailableError extends Error {
  constructor(message: string, options?: { cause?: unknown }) {
    super(message, options);
    this.name = 'JwksUnavailableError';
  }
}

/** Errors that describe the lookup of a key in a set we do have; everything else a key set throws means we have no usable set. */
function isLookupError(err: unknown): boolean {
  return (
    err instanceof errors.JWKSNoMatchingKey ||
    err instanceof errors.JWKSMultipleMatchingKeys ||
    err instanceof errors.JOSENotSupported
  );
}

/** A short reason for a failed fetch: fetch() hides the socket error in `cause`. */
export function describeFetchFailure(err: unknown, timeoutMs: number): string {
  if (err instanceof errors.JWKSTimeout) return `no answer within ${timeoutMs} ms`;
  if (err instanceof errors.JWKSInvalid) return 'the response is not a JSON Web Key Set';
  if (err instanceof Error) {
    const cause = (err as { cause?: unknown }).cause;
    if (cause && typeof cause === 'object') {
      const code = (cause as { code?: unknown }).code;
      if (typeof code === 'string') return `${err.message} (${code})`;
      if (cause instanceof Error && cause.message) return `${err.message} (${cause.message})`;
    }
    return err.message;
  }
  return String(err);
}

/** The endpoint without credentials or query, safe for messages and logs. */
export function redactUrl(uri: string): string {
  try {
    const u = new URL(uri);
    return `${u.origin}${u.pathname}`;
  } catch {
    return '<invalid URL>';
  }
}

export interface RemoteKeySetOptions {
  timeoutMs: number;
  /** Minimum time between refetches triggered by an unknown kid. */
  cooldownMs: number;
  /** How long a fetched set is used before it is fetched again. */
  cacheMaxAgeMs: number;
}

/**
 * A remote JWKS. jose caches the fetched set, refetches on an unknown kid at
 * most once per cooldown, and coalesces concurrent fetches; a fetch that fails
 * leaves the previously fetched set in place until it ages out.
 */
export function remoteKeySet(jwksUri: string, opts: RemoteKeySetOptions): JWTVerifyGetKey {
  const remote = createRemoteJWKSet(new URL(jwksUri), {
    cooldownDuration: opts.cooldownMs,
    cacheMaxAge: opts.cacheMaxAgeMs,
    timeoutDuration: opts.timeoutMs,
  });
  const where = redactUrl(jwksUri);
  return async (header, token) => {
    try {
      return await remote(header, token);
    } catch (err) {
      if (isLookupError(err)) throw err;
      throw new JwksUnavailableError(
        `could not fetch the key set from ${where}: ${describeFetchFailure(err, opts.timeoutMs)}`,
        { cause: err },
      );
    }
  };
}

/** A key set held in memory. */
export function staticKeySet(jwks: JSONWebKeySet): JWTVerifyGetKey {
  const local = createLocalJWKSet(jwks);
  return async (header, token) => {
    try {
      return await local(header, token);
    } catch (err) {
      if (isLookupError(err)) throw err;
      throw new JwksUnavailableError(`the key set is unusable: ${describeFetchFailure(err, 0)}`, {
        cause: err,
      });
    }
  };
}

function parseJwksText(text: string, path: string): JSONWebKeySet {
  let json: unknown;
  try {
    json = JSON.parse(text);
  } catch (cause) {
    throw new SluiceError(ErrorCodes.CONFIG_INVALID, `JWKS file ${path} is not valid JSON`, { cause });
  }
  try {
    // createLocalJWKSet validates the shape; we keep its result only to check.
    createLocalJWKSet(json as JSONWebKeySet);
  } catch (cause) {
    throw new SluiceError(
      ErrorCodes.CONFIG_INVALID,
      `JWKS file ${path} is not a JSON Web Key Set (expected {"keys": [...]})`,
      { cause },
    );
  }
  return json as JSONWebKeySet;
}

export interface FileKeySetOptions {
  logger?: Logger;
  /** How often, at most, the file's mtime is checked. Default 1000 ms; 0 = on every verification. */
  checkIntervalMs?: number;
}

/**
 * A JWKS file. Read once now, so a missing or broken file stops startup;
 * afterwards re-read when its mtime or size changes. A re-read that fails
 * (say the file is caught half-written) keeps the previous set and is retried
 * on the next check.
 */
export function fileKeySet(path: string, opts: FileKeySetOptions = {}): JWTVerifyGetKey {
  const checkIntervalMs = opts.checkIntervalMs ?? 1000;
  let text: string;
  let stamp: string;
  try {
    const s = statSync(path);
    stamp = `${s.mtimeMs}:${s.size}`;
    text = readFileSync(path, 'utf8');
  } catch (cause) {
    throw new SluiceError(ErrorCodes.CONFIG_INVALID, `cannot read JWKS file ${path}`, { cause });
  }
  let current = staticKeySet(parseJwksText(text, path));
  let lastCheck = Date.now();
  let pending: Promise<void> | undefined;

  const refresh = async (): Promise<void> => {
    let s;
    try {
      s = await stat(path);
    } catch (err) {
      opts.logger?.warn({ jwksFile: path, err }, 'cannot stat JWKS file; keeping the keys already loaded');
      return;
    }
    const next = `${s.mtimeMs}:${s.size}`;
    if (next === stamp) return;
    try {
      const jwks = parseJwksText(await readFile(path, 'utf8'), path);
      current = staticKeySet(jwks);
      stamp = next;
      opts.logger?.info({ jwksFile: path, keys: jwks.keys.length }, 'JWKS file reloaded');
    } catch (err) {
      opts.logger?.warn({ jwksFile: path, err }, 'JWKS file changed but cannot be loaded; keeping the previous keys');
    }
  };

  return async (header, token) => {
    const now = Date.now();
    if (now - lastCheck >= checkIntervalMs) {
      lastCheck = now;
      pending ??= refresh().finally(() => {
        pending = undefined;
      });
    }
    if (pending) await pending;
    return current(header, token);
  };
}

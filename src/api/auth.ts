/**
 * Authentication and roles for the HTTP API.
 *
 * The caller presents `Authorization: Bearer <token>` (RFC 6750); the token is
 * checked by the same TokenVerifier the gateway uses on its listeners, so one
 * issuer configuration covers both. Roles come from `api.roles` in the
 * config: an identity is an approver when any entry under `approver` grants
 * it (a group name among its groups, or a subject match it satisfies, as a
 * policy's subjects are matched), an auditor likewise. A bare group name
 * holds from any trusted issuer; a subject match with `issuer` pins the role
 * to that issuer.
 *
 * Refusals never echo the token: the messages are ours, or the verifier's,
 * which name what was wrong (issuer, audience, expiry) and not the token text.
 */
import { ErrorCodes, isSluiceError, SluiceError, type ErrorCode } from '../errors.js';
import type { ApiConfig, RoleGrant } from '../config/types.js';
import type { Identity, TokenVerifier } from '../identity/types.js';
import { subjectMatches } from '../policy/subjects.js';

export type ApiRole = 'approver' | 'auditor';

export interface Principal {
  identity: Identity;
  roles: ReadonlySet<ApiRole>;
}

/**
 * Codes not yet in src/errors.ts (listed in the task report). Once added
 * there, use ErrorCodes.*; the cast only widens the type.
 */
export const ApiErrorCodes = {
  API_BAD_REQUEST: ErrorCodes.API_BAD_REQUEST,
  API_NOT_FOUND: ErrorCodes.API_NOT_FOUND,
  API_INTERNAL: ErrorCodes.API_INTERNAL,
  API_BUSY: ErrorCodes.API_BUSY,
  API_TOO_LARGE: ErrorCodes.API_TOO_LARGE,
} as const;

/** A refusal with the HTTP status it is answered with. */
export class ApiError extends SluiceError {
  readonly status: number;

  constructor(status: number, code: ErrorCode, message: string, options?: { cause?: unknown }) {
    super(code, message, options);
    this.name = 'ApiError';
    this.status = status;
  }
}

function grants(identity: Identity, grant: RoleGrant): boolean {
  return typeof grant === 'string' ? identity.groups.includes(grant) : subjectMatches(identity, grant);
}

/**
 * The `api.roles` entries that more than one trusted issuer can satisfy (a
 * bare group name, a match without `issuer`, or one naming several), when
 * more than one issuer is trusted: for a warning at start-up. Empty with a
 * single issuer.
 */
export function unpinnedRoles(roles: ApiConfig['roles'], trustedIssuers: number): string[] {
  if (trustedIssuers < 2) return [];
  const out: string[] = [];
  for (const role of ['approver', 'auditor'] as const) {
    roles[role].forEach((g, i) => {
      if (typeof g === 'string' || g.issuer === undefined || g.issuer.length > 1) out.push(`api.roles.${role}[${i}]`);
    });
  }
  return out;
}

export function rolesFor(identity: Identity, roles: ApiConfig['roles']): Set<ApiRole> {
  const out = new Set<ApiRole>();
  if (roles.approver.some((g) => grants(identity, g))) out.add('approver');
  if (roles.auditor.some((g) => grants(identity, g))) out.add('auditor');
  return out;
}

/** Other schemes a client might send by mistake: named in the refusal, since they are not secret. Anything else is not repeated. */
const KNOWN_SCHEMES: ReadonlySet<string> = new Set(['basic', 'digest', 'negotiate', 'ntlm', 'token', 'dpop', 'apikey', 'hoba', 'mutual']);

/** `Bearer <token>`: scheme case-insensitive (RFC 7235), one token68 after it. */
const BEARER = /^Bearer[ \t]+([^\s]+)[ \t]*$/i;

/**
 * The token from an Authorization header, or a 401 saying what is wrong
 * with the header (without repeating it).
 */
export function bearerToken(header: string | string[] | undefined): string {
  if (header === undefined || header === '') {
    throw new ApiError(401, ErrorCodes.TOKEN_MISSING, 'no token presented; send "Authorization: Bearer <token>"');
  }
  if (Array.isArray(header)) {
    throw new ApiError(401, ErrorCodes.TOKEN_MALFORMED, 'more than one Authorization header; send exactly one');
  }
  const m = BEARER.exec(header);
  if (!m) {
    // Name the scheme when it is a short word (Basic, Token, ...), never what follows it.
    const first = header.trim().split(/\s+/, 1)[0] ?? '';
    let why = '';
    if (first.toLowerCase() === 'bearer') why = ' (no token after "Bearer")';
    else if (KNOWN_SCHEMES.has(first.toLowerCase())) why = ` (found scheme "${first}")`;
    throw new ApiError(401, ErrorCodes.TOKEN_MALFORMED, `the Authorization header must be "Bearer <token>"${why}`);
  }
  return m[1]!;
}

/**
 * Verify the header's token and work out the caller's roles. 401 for a
 * missing or refused token, 503 when the issuer's keys cannot be fetched
 * (the caller's token may be fine).
 */
export async function authenticate(
  header: string | string[] | undefined,
  verifier: TokenVerifier,
  roles: ApiConfig['roles'],
  audience?: string,
): Promise<Principal> {
  const token = bearerToken(header);
  let identity: Identity;
  try {
    // api.audience, when set, in place of each issuer's: database tokens are not API credentials.
    identity = await verifier.verify(token, audience !== undefined ? { audience } : {});
  } catch (err) {
    if (isSluiceError(err)) {
      const status = err.code === ErrorCodes.JWKS_UNAVAILABLE ? 503 : 401;
      throw new ApiError(status, err.code, err.message.split(token).join('[token]'));
    }
    throw err;
  }
  return { identity, roles: rolesFor(identity, roles) };
}

/** 403 unless the principal holds at least one of `needed`. */
export function requireRole(principal: Principal, needed: readonly ApiRole[]): void {
  if (needed.some((r) => principal.roles.has(r))) return;
  const want = needed.length === 1 ? `the ${needed[0]} role` : `the ${needed.join(' or ')} role`;
  const where = needed.map((r) => `api.roles.${r}`).join(' or ');
  throw new ApiError(
    403,
    ErrorCodes.NOT_AUTHORIZED,
    `subject ${JSON.stringify(principal.identity.subject)} needs ${want}; nothing in ${where} in the gateway config grants it (a group name among its groups, or a subject match)`,
  );
}

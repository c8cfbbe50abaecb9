/**
 * Default values, and the configuration Sluice runs with when no file is
 * given: a development setup that lets anyone holding a dev-issuer token
 * reach a local PostgreSQL. The loader fills omitted keys from the same
 * constants, so docs/configuration.md, the loader and this file agree.
 */
import { resolve } from 'node:path';
import { Secret } from './secret.js';
import type { Config, RecordingConfig, SessionLimits } from './types.js';

/** `iss` of tokens minted by the gateway's own dev issuer. `.invalid` (RFC 2606) can never resolve, so it cannot collide with a real issuer. */
export const DEV_ISSUER = 'https://sluice.invalid/dev-issuer';
/** `aud` of tokens minted by the dev issuer. */
export const DEV_AUDIENCE = 'sluice';

export const DEFAULT_STATE_DIR = '.sluice';
export const DEFAULT_MAX_TOKEN_BYTES = 16 * 1024;
export const MAX_MAX_TOKEN_BYTES = 64 * 1024;
/** Below this no real JWT fits; a smaller limit is a typo, not a policy. */
export const MIN_MAX_TOKEN_BYTES = 256;
export const DEFAULT_CLOCK_TOLERANCE_SECONDS = 30;
export const MAX_CLOCK_TOLERANCE_SECONDS = 60;
/**
 * Tokens that live longer are refused (`identity.max_token_lifetime`): a
 * token is a bearer credential, and one minted for a week is the long-lived
 * password Sluice exists to replace. A day covers every OIDC issuer's
 * defaults (GitHub Actions: minutes; Kubernetes projected tokens: 1 h by
 * default, at most 48 h where an operator raises it: then so can the
 * gateway's). Thirty days is the most the setting takes.
 */
export const DEFAULT_MAX_TOKEN_LIFETIME_SECONDS = 24 * 3600;
export const MAX_MAX_TOKEN_LIFETIME_SECONDS = 30 * 24 * 3600;
export const DEFAULT_GROUPS_CLAIM = 'groups';
export const DEFAULT_ALGORITHMS: readonly string[] = ['RS256', 'ES256'];
export const DEFAULT_POSTGRES_PORT = 5432;
export const DEFAULT_REDIS_PORT = 6379;
export const DEFAULT_REDIS_USER = 'default';

/** Smallest and largest accepted `max_message_size`. PostgreSQL's own limit on a message is 1 GiB. */
export const MIN_MESSAGE_BYTES = 1024;
export const MAX_MESSAGE_BYTES = 1024 * 1024 * 1024;

/** How long a statement held for approval waits for a decision. */
export const DEFAULT_APPROVAL_TIMEOUT_MS = 5 * 60_000;
/** Approval requests one subject may have pending at once (approvals.max_pending_per_subject). */
export const DEFAULT_MAX_PENDING_APPROVALS = 10;
/** How often a retention (recording.retention, audit.retention) purges, after its run at start. */
export const RETENTION_INTERVAL_MS = 60 * 60_000;
/** Approval requests one subject may make in a minute (approvals.max_requests_per_minute). */
export const DEFAULT_MAX_APPROVAL_REQUESTS_PER_MINUTE = 30;

/** `recording:` defaults: on, 1 GiB per session, 200 ms flush, 8 MiB backlog, 30 days retention, fsync at close. */
export const DEFAULT_RECORDING: Readonly<RecordingConfig> = Object.freeze({
  enabled: true,
  maxBytes: 1024 * 1024 * 1024,
  flushIntervalMs: 200,
  maxBacklogBytes: 8 * 1024 * 1024,
  retentionMs: 30 * 24 * 3_600_000,
  fsync: 'close',
});

export const DEFAULT_LIMITS: Readonly<SessionLimits> = Object.freeze({
  preAuthTimeoutMs: 10_000,
  maxPreAuthConnections: 64,
  idleTimeoutMs: 0,
  maxMessageBytes: 64 * 1024 * 1024,
  upstreamConnectTimeoutMs: 10_000,
  endAtTokenExpiry: true,
});

/**
 * The configuration used when no file is given and ./sluice.yaml does not
 * exist: dev issuer on, one PostgreSQL target `pg` on 127.0.0.1:6432 in
 * front of 127.0.0.1:5432, reached as PGUSER / PGPASSWORD / PGDATABASE
 * (libpq's own variables, so a developer's existing shell setup works).
 */
export function embeddedDefaultConfig(env: NodeJS.ProcessEnv, cwd: string = process.cwd()): Config {
  const user = nonEmpty(env.PGUSER) ?? 'postgres';
  const database = nonEmpty(env.PGDATABASE) ?? user;
  const password = nonEmpty(env.PGPASSWORD);
  return {
    stateDir: resolve(cwd, DEFAULT_STATE_DIR),
    identity: {
      devIssuer: true,
      issuers: [],
      maxTokenBytes: DEFAULT_MAX_TOKEN_BYTES,
      clockToleranceSeconds: DEFAULT_CLOCK_TOLERANCE_SECONDS,
      maxTokenLifetimeSeconds: DEFAULT_MAX_TOKEN_LIFETIME_SECONDS,
    },
    targets: [
      {
        name: 'pg',
        protocol: 'postgres',
        listen: { host: '127.0.0.1', port: 6432 },
        allowInsecureLoopback: true,
        limits: { ...DEFAULT_LIMITS },
        upstream: {
          host: '127.0.0.1',
          port: DEFAULT_POSTGRES_PORT,
          database,
          user,
          ...(password !== undefined ? { password: new Secret(password, 'env PGPASSWORD') } : {}),
          tls: 'disable',
        },
      },
    ],
    policies: [{ name: 'dev', subjects: { issuer: [DEV_ISSUER] }, targets: ['pg'], default: 'allow', rules: [] }],
    approvals: {
      timeoutMs: DEFAULT_APPROVAL_TIMEOUT_MS,
      maxPendingPerSubject: DEFAULT_MAX_PENDING_APPROVALS,
      maxRequestsPerMinute: DEFAULT_MAX_APPROVAL_REQUESTS_PER_MINUTE,
    },
    log: { level: 'info' },
  };
}

function nonEmpty(value: string | undefined): string | undefined {
  return value === undefined || value === '' ? undefined : value;
}

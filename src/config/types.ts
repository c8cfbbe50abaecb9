/**
 * The validated, normalised configuration every other module receives.
 *
 * The YAML file uses snake_case keys (see docs/configuration.md); the loader
 * turns them into these camelCase shapes, resolves relative paths against the
 * config file's directory and fills every default, so nothing downstream has
 * to guess.
 */
import type { Secret } from './secret.js';
import type { RuleConfig } from '../policy/types.js';
import type { MaskingRuleConfig } from '../../masking/types.js';

export type UpstreamTlsMode = 'disable' | 'require' | 'verify-full';

export interface ListenAddress {
  host: string;
  port: number;
}

export interface IssuerConfig {
  /** Exact `iss` value. */
  issuer: string;
  /** Exact `aud` value the token must carry. */
  audience: string;
  /** Remote JWKS (fetched with caching and a refetch cooldown) ... */
  jwksUri?: string;
  /** ... or a local JWKS file (absolute path). Exactly one of the two is set. */
  jwksFile?: string;
  /** A claim name or a dotted path (`realm_access.roles`). Default `groups`. */
  groupsClaim: string;
  /** Allowed JWS algorithms; never `none`, never an HMAC algorithm. */
  algorithms: string[];
}

export interface IdentityConfig {
  /** Trust the gateway's own dev issuer (key pair in the state dir). */
  devIssuer: boolean;
  issuers: IssuerConfig[];
  /** Largest accepted token, checked before any decoding. Default 16 KiB. */
  maxTokenBytes: number;
  /** Clock skew tolerated on exp/nbf/iat, in seconds. At most 60. */
  clockToleranceSeconds: number;
  /**
   * Longest lifetime accepted, `exp` minus `iat` (a token without `iat` is
   * refused), in seconds. Default 24 h, at most 30 days.
   */
  maxTokenLifetimeSeconds: number;
}

export interface TlsFiles {
  certFile: string;
  keyFile: string;
}

/** Limits and timers shared by both protocols; each target may override. */
export interface SessionLimits {
  /** Time from accept to a verified identity, ms. Default 10 000. */
  preAuthTimeoutMs: number;
  /** Connections at once that have not finished authenticating. Default 64. */
  maxPreAuthConnections: number;
  /** Close a session with no traffic in either direction for this long, ms. 0 = never. */
  idleTimeoutMs: number;
  /** Largest protocol message accepted in either direction, bytes. */
  maxMessageBytes: number;
  /** Time allowed to connect and authenticate upstream, ms. */
  upstreamConnectTimeoutMs: number;
  /** End a session when the token it logged in with expires (src/gateway/token-expiry.ts). Default true. */
  endAtTokenExpiry: boolean;
}

interface TargetBase {
  name: string;
  listen: ListenAddress;
  /** Accept a cleartext token on a loopback listener that has no TLS. */
  allowInsecureLoopback: boolean;
  limits: SessionLimits;
}

/** How a PostgreSQL server may have Sluice log in, by libpq's `require_auth` names. */
export type UpstreamAuthMethod = 'scram-sha-256' | 'md5' | 'password' | 'none';

export interface PostgresUpstream {
  host: string;
  port: number;
  database: string;
  user: string;
  password?: Secret;
  /**
   * The methods the server may ask for (libpq's `require_auth`); any other
   * request ends the login before anything is sent. Undefined: any.
   */
  requireAuth?: UpstreamAuthMethod[];
  tls: UpstreamTlsMode;
  caFile?: string;
  /** Name checked against the certificate with verify-full; defaults to host. */
  serverName?: string;
}

export interface PostgresTarget extends TargetBase {
  protocol: 'postgres';
  upstream: PostgresUpstream;
}

export interface RedisUpstream {
  host: string;
  port: number;
  user: string;
  password?: Secret;
  db: number;
  tls: UpstreamTlsMode;
  caFile?: string;
  serverName?: string;
}

export interface RedisTarget extends TargetBase {
  protocol: 'redis';
  /** The listener speaks TLS (redis-cli --tls) with the configured or dev cert. */
  tls: boolean;
  upstream: RedisUpstream;
}

export type TargetConfig = PostgresTarget | RedisTarget;

/**
 * Who a policy applies to. Every criterion that is present must match (AND);
 * inside one criterion any listed value may match (OR).
 */
export interface SubjectMatch {
  /** The token's groups must contain at least one of these, exactly. */
  groups?: string[];
  /** Globs over `sub` (`*` any run of characters, `?` one character). */
  sub?: string[];
  /** Exact issuer URLs. */
  issuer?: string[];
  /** Claim name (or dotted path) -> accepted values, each exact or a glob. */
  claims?: Record<string, string[]>;
}

export interface PolicyConfig {
  name: string;
  subjects: SubjectMatch;
  targets: string[];
  /** What happens when no rule matches. `allow` when the policy has no rules, else required. */
  default: 'allow' | 'deny';
  /** Ordered; the first rule whose match holds decides. */
  rules: RuleConfig[];
  /** Names of `masking.rules` applied to what the upstream sends back; absent or empty = no masking. */
  masking?: string[];
}

/** Top-level `masking:`: named rules (bound to policies by name) and the key of the `hash` strategy. */
export interface MaskingConfig {
  /** Validated with MaskingEngine.compile at load (strategy names normalised to `{ kind }`). */
  rules: MaskingRuleConfig[];
  /** From `hash_key_env` / `hash_key_file`; needed only by `hash` rules. */
  hashKey?: Secret;
}

/**
 * Who holds an API role: a group name (a token from any trusted issuer whose
 * groups contain it), or a subject match as in a policy (`{ groups, sub,
 * issuer, claims }`, every criterion present must match), which can pin the
 * role to one issuer.
 */
export type RoleGrant = string | SubjectMatch;

export interface ApiConfig {
  listen: ListenAddress;
  /**
   * The `aud` API tokens must carry, instead of each issuer's `audience`
   * (which the database listeners keep requiring). Unset: the same tokens
   * serve both.
   */
  audience?: string;
  /** Who may decide approvals / read the audit trail. */
  roles: { approver: RoleGrant[]; auditor: RoleGrant[] };
  /** A request must arrive whole (headers and body) within this, ms (`api.request_timeout`); absent: 30 s. */
  requestTimeoutMs?: number;
}

export interface ApprovalsConfig {
  /** A held statement waits at most this long for a decision, ms. Default 5 minutes. */
  timeoutMs: number;
  /** Requests one subject (issuer and subject) may have pending at once; another is refused. Default 10. */
  maxPendingPerSubject: number;
  /** Requests one subject may make in a minute, whatever became of them. Default 30. */
  maxRequestsPerMinute: number;
  webhook?: { url: string; timeoutMs: number };
}

/** `recording:` (docs/recording-format.md). Absent from Config = the defaults (DEFAULT_RECORDING). */
export interface RecordingConfig {
  /** Record every session (default true). */
  enabled: boolean;
  /** Per-session recording cap, bytes (default 1 GiB); a session that reaches it is ended. */
  maxBytes: number;
  /** Records are appended at least this often, ms (default 200): bounds what a crash loses. */
  flushIntervalMs: number;
  /** Bytes a session may have recorded and not yet written before its reads pause (default 8 MiB). */
  maxBacklogBytes: number;
  /** Recordings and their index rows are purged after this long, ms (default 30 days); 0 = keep forever. */
  retentionMs: number;
  /**
   * `close` (default): each recording is fsynced once its footer is written,
   * so a finished session's recording survives a power loss. `off`: the
   * operating system writes it back in its own time (Linux: within about
   * 30 s); a process crash loses nothing more either way.
   */
  fsync: 'close' | 'off';
}

/** `audit:`. Absent from Config = enabled, Redis allowed commands counted per second. */
export interface AuditConfig {
  /** Write an audit event per statement/command to the store (default true). */
  enabled: boolean;
  /** Redis allowed commands: one event each, or counts per command name per second (default). */
  redisAllowed: 'each' | 'per_second';
  /** Audit events and decided approval requests older than this are purged, ms; 0 (default) keeps them forever. */
  retentionMs: number;
}

export interface LogConfig {
  level: 'fatal' | 'error' | 'warn' | 'info' | 'debug' | 'trace' | 'silent';
}

export interface Config {
  /** Absolute path of the file this came from, or undefined for the embedded default. */
  source?: string;
  stateDir: string;
  identity: IdentityConfig;
  tls?: TlsFiles;
  targets: TargetConfig[];
  policies: PolicyConfig[];
  /** The HTTP API (approvals, audit, health, metrics); absent = not served. */
  api?: ApiConfig;
  approvals: ApprovalsConfig;
  /** Session recording; absent = DEFAULT_RECORDING (config/defaults.ts). */
  recording?: RecordingConfig;
  /** The audit trail; absent = enabled with the defaults. */
  audit?: AuditConfig;
  log: LogConfig;
  /** Data masking rules; absent = none configured. */
  masking?: MaskingConfig;
}

/**
 * Reads sluice.yaml, validates it and turns it into the normalised Config.
 *
 * Two passes, and every problem from both is reported, one line each, as
 * `key.path: expected X, found Y`:
 *  1. structure, by ajv against schema.ts (types, ranges, unknown keys);
 *  2. meaning, here: things one value cannot say on its own (duplicate
 *     listen addresses, a policy naming an unknown target, files that must
 *     exist, environment variables that must be set).
 * A problem never quotes a credential: inline `password:` values are not
 * echoed, and password_env / password_file are reported by name, never by
 * what they hold.
 */
import { readFileSync } from 'node:fs';
import { readFile } from 'node:fs/promises';
import { isIP } from 'node:net';
import { dirname, resolve } from 'node:path';
import { Ajv, type ErrorObject, type ValidateFunction } from 'ajv';
import { parseDocument } from 'yaml';
import { ErrorCodes, SluiceError } from '../errors.js';
import {
  DEFAULT_ALGORITHMS,
  DEFAULT_APPROVAL_TIMEOUT_MS,
  DEFAULT_MAX_PENDING_APPROVALS,
  DEFAULT_MAX_APPROVAL_REQUESTS_PER_MINUTE,
  DEFAULT_CLOCK_TOLERANCE_SECONDS,
  DEFAULT_GROUPS_CLAIM,
  DEFAULT_LIMITS,
  DEFAULT_MAX_TOKEN_BYTES,
  DEFAULT_MAX_TOKEN_LIFETIME_SECONDS,
  DEFAULT_POSTGRES_PORT,
  DEFAULT_RECORDING,
  DEFAULT_REDIS_PORT,
  DEFAULT_REDIS_USER,
  DEFAULT_STATE_DIR,
  DEV_AUDIENCE,
  DEV_ISSUER,
  MAX_CLOCK_TOLERANCE_SECONDS,
  MAX_MAX_TOKEN_LIFETIME_SECONDS,
  MAX_MESSAGE_BYTES,
  MIN_MESSAGE_BYTES,
  embeddedDefaultConfig,
} from './defaults.js';
import { ALLOWED_ALGORITHMS, configSchema, parseDuration, parseSize } from './schema.js';
import { Secret } from './secret.js';
import type { Action, RuleConfig, RuleMatch } from '../policy/types.js';
import { MaskingEngine } from '../../masking/engine.js';
import { MaskingConfigError, type MaskingRuleConfig, type Strategy } from '../../masking/types.js';
import { DANGEROUS_FUNCTIONS_SET, REDIS_CATEGORIES, isKnownRedisCategory, isKnownSqlKind } from '../policy/kinds.js';
import type {
  ApiConfig,
  ApprovalsConfig,
  Config,
  IdentityConfig,
  IssuerConfig,
  ListenAddress,
  LogConfig,
  MaskingConfig,
  PolicyConfig,
  RecordingConfig,
  RoleGrant,
  SessionLimits,
  SubjectMatch,
  TargetConfig,
  TlsFiles,
  UpstreamAuthMethod,
  UpstreamTlsMode,
} from './types.js';

/** Smallest `recording.max_bytes`: room for a header, a footer and some records. */
const MIN_RECORDING_BYTES = 64 * 1024;
/**
 * Smallest `recording.max_backlog`: several batches (a batch is flushed at
 * 128 KiB), so reads do not pause while the seal thread keeps up.
 */
const MIN_RECORDING_BACKLOG = 1024 * 1024;
/** The longest retention: 100 years (36500d). */
const MAX_RETENTION_MS = 36_500 * 24 * 3_600_000;

/** The file `loadConfig(undefined)` looks for in the working directory. */
export const DEFAULT_CONFIG_FILE = 'sluice.yaml';

export class ConfigError extends SluiceError {
  /** One line per problem, each `key.path: expected X, found Y`. */
  readonly problems: string[];

  constructor(problems: string[], code: typeof ErrorCodes.CONFIG_INVALID | typeof ErrorCodes.CONFIG_NOT_FOUND = ErrorCodes.CONFIG_INVALID) {
    super(code, problems.join('\n'));
    this.name = 'ConfigError';
    this.problems = problems;
  }
}

/**
 * Load the configuration from `path`; with no path, from ./sluice.yaml when
 * it exists, else the embedded development default.
 */
export async function loadConfig(path: string | undefined, env: NodeJS.ProcessEnv = process.env): Promise<Config> {
  let file: string;
  let text: string;
  if (path === undefined) {
    file = resolve(DEFAULT_CONFIG_FILE);
    try {
      text = await readFile(file, 'utf8');
    } catch (err) {
      if (errno(err) === 'ENOENT') return embeddedDefaultConfig(env);
      throw new ConfigError([`${file}: expected a readable config file, found ${errno(err) ?? 'an unreadable file'}`]);
    }
  } else {
    file = resolve(path);
    try {
      text = await readFile(file, 'utf8');
    } catch (err) {
      const code = errno(err);
      if (code === 'ENOENT') {
        throw new ConfigError([`${file}: expected a config file, found no such file`], ErrorCodes.CONFIG_NOT_FOUND);
      }
      throw new ConfigError([`${file}: expected a readable config file, found ${code ?? 'an unreadable file'}`]);
    }
  }
  return parseConfig(text, { baseDir: dirname(file), source: file, env });
}

/** For `sluice check-config`: the problems as a value instead of a throw. */
export async function validateConfigFile(
  path: string,
  env: NodeJS.ProcessEnv = process.env,
): Promise<{ ok: true; config: Config } | { ok: false; problems: string[] }> {
  try {
    return { ok: true, config: await loadConfig(path, env) };
  } catch (err) {
    if (err instanceof ConfigError) return { ok: false, problems: err.problems };
    throw err;
  }
}

/**
 * Parse and validate YAML text. Relative paths resolve against `baseDir`.
 * Reads the files the config names (password_file, ca_file, jwks_file, TLS
 * files) to check them, so "pure" means: no state kept, nothing written.
 */
export function parseConfig(
  yamlText: string,
  opts: { baseDir: string; source?: string; env?: NodeJS.ProcessEnv },
): Config {
  const doc = parseDocument(yamlText, { prettyErrors: true, uniqueKeys: true });
  if (doc.errors.length > 0) {
    throw new ConfigError(doc.errors.map((e) => {
      // The first line only: the rest is a snippet of the file, which may hold anything.
      const first = (e.message.split('\n')[0] ?? '').replace(/ at line \d+, column \d+:?$/, '');
      const pos = e.linePos?.[0];
      return pos ? `line ${pos.line}, column ${pos.col}: YAML syntax error: ${first}` : `YAML syntax error: ${first}`;
    }));
  }
  const raw: unknown = doc.toJS({ maxAliasCount: 100 });
  if (!isObject(raw)) {
    const found = raw === null || raw === undefined ? 'an empty document' : render(raw);
    throw new ConfigError([`(top level): expected a mapping with targets (and identity, policies, ...), found ${found}`]);
  }
  const structural = structuralProblems(raw);
  const n = new Normaliser(raw, resolve(opts.baseDir), opts.env ?? process.env);
  const config = n.config(opts.source === undefined ? undefined : resolve(opts.source));
  // A value ajv already refused gets no second, derived complaint.
  const semantic = n.problems.filter((p) => !structural.some((q) =>
    p.path === q.path || p.path.startsWith(`${q.path}.`) || p.path.startsWith(`${q.path}[`)));
  const problems = [...structural, ...semantic];
  if (problems.length > 0) {
    const lines = [...new Set(problems.map((p) => (p.path === '' ? p.text : `${p.path}: ${p.text}`)))];
    throw new ConfigError(lines);
  }
  return config;
}

// --- pass 1: structure ------------------------------------------------------

interface Problem {
  /** Key path as written in the YAML: `targets.app-db.upstream.port`, `policies[0].name`. */
  path: string;
  text: string;
}

interface AnnotatedSchema {
  expected?: string;
  properties?: Record<string, AnnotatedSchema>;
}

let validator: ValidateFunction | undefined;

function getValidator(): ValidateFunction {
  if (validator === undefined) {
    const ajv = new Ajv({ allErrors: true, verbose: true, discriminator: true, allowUnionTypes: true });
    // `expected` is our own annotation: the wording of the problem for that node.
    ajv.addKeyword({ keyword: 'expected', schemaType: 'string' });
    validator = ajv.compile(configSchema);
  }
  return validator;
}

/** Keys whose value is a credential, or may be one pasted in the wrong place: never echo what they hold. */
const SECRET_KEY = /(^|\.)(password|password_env|password_file|passwd|pass|secret|token|url|hash_key_file)$/i;

/** Keys that exist for the other protocol only: say so instead of just "unknown". */
const OTHER_PROTOCOL_HINT: Record<string, string> = {
  tls: ' (tls: true is for redis targets; PostgreSQL clients ask for TLS themselves and get the top-level tls certificate)',
  db: ' (db is for redis targets; PostgreSQL targets name a database)',
  database: ' (redis targets select a database by number: use db)',
  require_auth: ' (require_auth is for postgres targets: a Redis server has one way to log in, AUTH)',
};

function structuralProblems(raw: Record<string, unknown>): Problem[] {
  const validate = getValidator();
  if (validate(raw)) return [];
  const out: Problem[] = [];
  const seen = new Set<string>();
  const add = (path: string, text: string): void => {
    // One problem per key: `found 1` needs saying once, not once per violated keyword.
    if (seen.has(path)) return;
    seen.add(path);
    out.push({ path, text });
  };
  for (const e of validate.errors ?? []) {
    // propertyNames reports each inner failure and then a summary; the summary carries the name.
    if (e.propertyName !== undefined) continue;
    const segs = pointerSegments(e.instancePath);
    const here = keyPath(raw, segs);
    const schema = (e.parentSchema ?? {}) as AnnotatedSchema;
    switch (e.keyword) {
      case 'required': {
        const missing = String((e.params as { missingProperty: string }).missingProperty);
        const expected = schema.properties?.[missing]?.expected ?? 'a value';
        add(join(here, missing), `expected ${expected}, found nothing (the key is required)`);
        break;
      }
      case 'additionalProperties': {
        const key = String((e.params as { additionalProperty: string }).additionalProperty);
        const allowed = Object.keys(schema.properties ?? {});
        if (/^(password|passwd|pass)$/i.test(key)) {
          add(join(here, key), 'secrets are never written in the config file; use password_env: VARIABLE_NAME or password_file: /path/to/file');
        } else {
          const atTarget = segs.length === 2 && segs[0] === 'targets' && key === 'tls';
          const atUpstream = segs.length === 3 && segs[0] === 'targets' && segs[2] === 'upstream' && key !== 'tls';
          const hint = atTarget || atUpstream ? (OTHER_PROTOCOL_HINT[key] ?? '') : '';
          add(join(here, key), `unknown key; expected one of ${allowed.join(', ')}${hint}`);
        }
        break;
      }
      case 'propertyNames': {
        const name = String((e.params as { propertyName: string }).propertyName);
        const what = segs[segs.length - 1] === 'targets'
          ? 'a target name of letters, digits, _ and - (at most 63, starting with a letter or digit)'
          : 'a claim name or a dotted path';
        add(join(here, name), `expected ${what}, found ${JSON.stringify(name)}`);
        break;
      }
      case 'discriminator': {
        const p = e.params as { error: string; tagValue?: unknown };
        const found = p.error === 'mapping' ? p.tagValue : obj(e.data)?.protocol;
        add(join(here, 'protocol'), `expected postgres or redis, found ${render(found)}`);
        break;
      }
      case 'uniqueItems':
        add(here, `expected ${schema.expected ?? 'distinct values'}, found a repeated value`);
        break;
      default:
        add(here, `expected ${schema.expected ?? ajvFallback(e)}, found ${SECRET_KEY.test(here) ? 'a value (not shown)' : render(e.data)}`);
    }
  }
  return out;
}

function ajvFallback(e: ErrorObject): string {
  // Every node in schema.ts is annotated; this only shows if one is missed.
  return `a value that ${e.message ?? 'is valid'}`;
}

function pointerSegments(pointer: string): string[] {
  if (pointer === '') return [];
  return pointer.slice(1).split('/').map((s) => s.replace(/~1/g, '/').replace(/~0/g, '~'));
}

/** Render JSON-pointer segments as the YAML key path, `[n]` where the value is a list. */
function keyPath(root: unknown, segs: string[]): string {
  let out = '';
  let node: unknown = root;
  for (const s of segs) {
    if (Array.isArray(node)) {
      out += `[${s}]`;
      node = node[Number(s)];
    } else {
      out = join(out, s);
      node = isObject(node) ? node[s] : undefined;
    }
  }
  return out;
}

function join(path: string, key: string): string {
  return path === '' ? key : `${path}.${key}`;
}

/** How a found value is shown: short, quoted if a string, and never a whole structure. */
function render(v: unknown): string {
  if (v === undefined) return 'nothing';
  if (v === null) return 'nothing (null)';
  if (typeof v === 'string') return JSON.stringify(v.length > 60 ? `${v.slice(0, 57)}...` : v);
  if (Array.isArray(v)) return v.length === 0 ? 'an empty list' : 'a list';
  if (typeof v === 'object') return Object.keys(v).length === 0 ? 'an empty mapping' : 'a mapping';
  return String(v);
}

function isObject(v: unknown): v is Record<string, unknown> {
  return typeof v === 'object' && v !== null && !Array.isArray(v);
}

function errno(err: unknown): string | undefined {
  const code = (err as { code?: unknown } | null)?.code;
  return typeof code === 'string' ? code : undefined;
}

// --- pass 2: meaning, and the normalised shape -----------------------------

/** Node's timers hold at most 2^31-1 ms; a longer one fires at once. */
const MAX_TIMER_MS = 2 ** 31 - 1;

function isLoopbackHost(host: string): boolean {
  const h = host.toLowerCase();
  if (h === 'localhost' || h === '::1' || h === '0:0:0:0:0:0:0:1') return true;
  const v4 = h.startsWith('::ffff:') ? h.slice(7) : h;
  return isIP(v4) === 4 && v4.startsWith('127.');
}

function isWildcardHost(host: string): boolean {
  return host === '0.0.0.0' || host === '::' || host === '';
}

/** `[::1]` as written in YAML means the IPv6 address ::1. */
function unbracket(host: string): string {
  return host.startsWith('[') && host.endsWith(']') ? host.slice(1, -1) : host;
}

/**
 * Builds the Config from the raw YAML value and records what is wrong with
 * it. It reads values defensively: a value of the wrong type was already
 * reported by ajv and is skipped here (its default stands in).
 */
class Normaliser {
  readonly problems: Problem[] = [];
  readonly #raw: Record<string, unknown>;
  readonly #baseDir: string;
  readonly #env: NodeJS.ProcessEnv;

  constructor(raw: Record<string, unknown>, baseDir: string, env: NodeJS.ProcessEnv) {
    this.#raw = raw;
    this.#baseDir = baseDir;
    this.#env = env;
  }

  config(source: string | undefined): Config {
    const raw = this.#raw;
    const identity = this.#identity(obj(raw.identity));
    const tls = this.#tls(obj(raw.tls));
    const globalLimits = this.#limits(obj(raw.limits), 'limits', DEFAULT_LIMITS);
    const targets = this.#targets(obj(raw.targets), globalLimits);
    const knownIssuers = [...(identity.devIssuer ? [DEV_ISSUER] : []), ...identity.issuers.map((i) => i.issuer)];
    const masking = this.#masking(obj(raw.masking));
    const policies = this.#policies(raw.policies, targets.map((t) => t.name), knownIssuers, masking);
    const level = str(obj(raw.log)?.level) as LogConfig['level'] | undefined;
    const api = this.#api(obj(raw.api), knownIssuers, identity);
    const config: Config = {
      ...(source !== undefined ? { source } : {}),
      stateDir: this.#path(str(raw.state_dir) ?? DEFAULT_STATE_DIR),
      identity,
      ...(tls !== undefined ? { tls } : {}),
      targets,
      policies,
      ...(api ? { api } : {}),
      approvals: this.#approvals(obj(raw.approvals)),
      ...(raw.recording !== undefined ? { recording: this.#recording(obj(raw.recording)) } : {}),
      ...(raw.audit !== undefined
        ? {
            audit: {
              enabled: obj(raw.audit)?.enabled !== false,
              redisAllowed: obj(raw.audit)?.redis_allowed === 'each' ? ('each' as const) : ('per_second' as const),
              retentionMs: this.#retention(obj(raw.audit)?.retention, 'audit.retention') ?? 0,
            },
          }
        : {}),
      log: { level: level ?? 'info' },
      ...(masking ? { masking } : {}),
    };
    return config;
  }

  #problem(path: string, text: string): void {
    this.problems.push({ path, text });
  }

  #path(p: string): string {
    return resolve(this.#baseDir, p);
  }

  /** The file must be readable; returns its absolute path. */
  #readableFile(p: string, at: string): string {
    const abs = this.#path(p);
    try {
      readFileSync(abs);
    } catch (err) {
      this.#problem(at, `expected a readable file, found ${abs} (${errno(err) ?? 'unreadable'})`);
    }
    return abs;
  }

  #identity(raw: Record<string, unknown> | undefined): IdentityConfig {
    const devIssuer = bool(raw?.dev_issuer) ?? false;
    const maxTokenBytes = int(raw?.max_token_bytes) ?? DEFAULT_MAX_TOKEN_BYTES;
    /** A duration key in seconds, its default when absent; out of [minS, maxS] it is a problem, saying `range`. */
    const seconds = (key: string, fallback: number, minS: number, maxS: number, range: string): number => {
      const v = raw?.[key];
      if (typeof v !== 'number' && typeof v !== 'string') return fallback;
      const ms = parseDuration(v);
      if (ms === undefined) return fallback; // the schema's pattern already said so
      if (ms < minS * 1000 || ms > maxS * 1000) this.#problem(`identity.${key}`, `expected ${range}, found ${render(v)}`);
      return ms / 1000;
    };
    const clockToleranceSeconds = seconds('clock_tolerance', DEFAULT_CLOCK_TOLERANCE_SECONDS, 0, MAX_CLOCK_TOLERANCE_SECONDS, `at most ${MAX_CLOCK_TOLERANCE_SECONDS}s`);
    const maxTokenLifetimeSeconds = seconds('max_token_lifetime', DEFAULT_MAX_TOKEN_LIFETIME_SECONDS, 1, MAX_MAX_TOKEN_LIFETIME_SECONDS, `1s to ${MAX_MAX_TOKEN_LIFETIME_SECONDS / 3600}h`);
    const issuers: IssuerConfig[] = [];
    const rawIssuers = Array.isArray(raw?.issuers) ? (raw.issuers as unknown[]) : [];
    const firstIndex = new Map<string, number>();
    rawIssuers.forEach((ri, i) => {
      const at = `identity.issuers[${i}]`;
      const o = obj(ri);
      if (o === undefined) return;
      const issuer = this.#issuer(o, at);
      if (issuer === undefined) return;
      if (devIssuer && issuer.issuer === DEV_ISSUER) {
        this.#problem(`${at}.issuer`, `expected an issuer other than the dev issuer, found ${JSON.stringify(DEV_ISSUER)} (dev_issuer: true already trusts it)`);
      }
      const prev = firstIndex.get(issuer.issuer);
      if (prev !== undefined) {
        this.#problem(`${at}.issuer`, `expected each issuer once, found ${render(issuer.issuer)} again (also identity.issuers[${prev}])`);
      } else {
        firstIndex.set(issuer.issuer, i);
      }
      issuers.push(issuer);
    });
    const devIssuerWellFormed = raw?.dev_issuer === undefined || typeof raw.dev_issuer === 'boolean';
    const issuersWellFormed = raw?.issuers === undefined || Array.isArray(raw.issuers);
    if (!devIssuer && rawIssuers.length === 0 && devIssuerWellFormed && issuersWellFormed) {
      this.#problem('identity', 'expected dev_issuer: true or at least one entry in issuers, found neither (no token could ever be accepted)');
    }
    return { devIssuer, issuers, maxTokenBytes, clockToleranceSeconds, maxTokenLifetimeSeconds };
  }

  #issuer(o: Record<string, unknown>, at: string): IssuerConfig | undefined {
    const issuer = str(o.issuer);
    const audience = str(o.audience);
    const jwksUri = str(o.jwks_uri);
    const jwksFileRaw = str(o.jwks_file);
    if (o.jwks_uri !== undefined && o.jwks_file !== undefined) {
      this.#problem(at, 'expected exactly one of jwks_uri or jwks_file, found both');
    } else if (o.jwks_uri === undefined && o.jwks_file === undefined) {
      this.#problem(at, 'expected exactly one of jwks_uri or jwks_file, found neither');
    }
    if (jwksUri !== undefined) this.#checkJwksUri(jwksUri, `${at}.jwks_uri`);
    let jwksFile: string | undefined;
    if (jwksFileRaw !== undefined) jwksFile = this.#checkJwksFile(jwksFileRaw, `${at}.jwks_file`);

    let algorithms = [...DEFAULT_ALGORITHMS];
    if (Array.isArray(o.algorithms)) {
      algorithms = [];
      (o.algorithms as unknown[]).forEach((a, j) => {
        if (typeof a !== 'string') return;
        const why = refusedAlgorithm(a);
        if (why !== undefined) this.#problem(`${at}.algorithms[${j}]`, why);
        else algorithms.push(a);
      });
    }
    if (issuer === undefined || audience === undefined) return undefined;
    return {
      issuer,
      audience,
      ...(jwksUri !== undefined ? { jwksUri } : {}),
      ...(jwksFile !== undefined ? { jwksFile } : {}),
      groupsClaim: str(o.groups_claim) ?? DEFAULT_GROUPS_CLAIM,
      algorithms,
    };
  }

  #checkJwksUri(uri: string, at: string): void {
    let url: URL;
    try {
      url = new URL(uri);
    } catch {
      this.#problem(at, `expected an https:// URL, found ${render(uri)}`);
      return;
    }
    if (hasUserInfo(uri)) {
      // fetch refuses such a URL with an error that quotes it whole, and that error reaches the
      // client's refusal, the API and the log: the password with it. Not echoed here either.
      this.#problem(at, 'expected a URL without a user name or password (user:password@); serve the keys without them');
      return;
    }
    // Keys fetched over cleartext could be swapped by anyone on the path; a loopback http JWKS is for tests.
    const ok = url.protocol === 'https:' || (url.protocol === 'http:' && isLoopbackHost(unbracket(url.hostname)));
    if (!ok) this.#problem(at, `expected an https:// URL (http:// only on a loopback host), found ${render(uri)}`);
  }

  #checkJwksFile(p: string, at: string): string {
    const abs = this.#path(p);
    let text: string;
    try {
      text = readFileSync(abs, 'utf8');
    } catch (err) {
      this.#problem(at, `expected a readable JWKS file, found ${abs} (${errno(err) ?? 'unreadable'})`);
      return abs;
    }
    let parsed: unknown;
    try {
      parsed = JSON.parse(text);
    } catch {
      this.#problem(at, `expected a JWKS file ({"keys": [...]}), found ${abs}, which is not JSON`);
      return abs;
    }
    if (!isObject(parsed) || !Array.isArray(parsed.keys)) {
      this.#problem(at, `expected a JWKS file ({"keys": [...]}), found ${abs}, which has no "keys" list`);
    }
    return abs;
  }

  #tls(raw: Record<string, unknown> | undefined): TlsFiles | undefined {
    if (raw === undefined) return undefined;
    const cert = str(raw.cert_file);
    const key = str(raw.key_file);
    const certFile = cert !== undefined ? this.#readableFile(cert, 'tls.cert_file') : '';
    const keyFile = key !== undefined ? this.#readableFile(key, 'tls.key_file') : '';
    return { certFile, keyFile };
  }

  /**
   * A timer's duration, in ms: undefined when absent or not a duration
   * (the schema reports that), or out of range (reported here). 0 only
   * where it means "never" (`zero`); at most what Node.js can set.
   */
  #timer(v: unknown, at: string, zero: boolean): number | undefined {
    if (typeof v !== 'number' && typeof v !== 'string') return undefined;
    const ms = parseDuration(v);
    if (ms === undefined) return undefined;
    if (!zero && ms === 0) {
      this.#problem(at, `expected a duration greater than 0, found ${render(v)}`);
      return undefined;
    }
    if (ms > MAX_TIMER_MS) {
      this.#problem(at, `expected at most 596h (the longest timer Node.js can set), found ${render(v)}`);
      return undefined;
    }
    return ms;
  }

  #limits(raw: Record<string, unknown> | undefined, at: string, base: Readonly<SessionLimits>): SessionLimits {
    const out: SessionLimits = { ...base };
    if (raw === undefined) return out;
    const timer = (key: string, field: 'preAuthTimeoutMs' | 'idleTimeoutMs' | 'upstreamConnectTimeoutMs', zero: boolean): void => {
      const ms = this.#timer(raw[key], `${at}.${key}`, zero);
      if (ms !== undefined) out[field] = ms;
    };
    timer('pre_auth_timeout', 'preAuthTimeoutMs', false);
    timer('idle_timeout', 'idleTimeoutMs', true);
    timer('upstream_connect_timeout', 'upstreamConnectTimeoutMs', false);
    if (typeof raw.end_at_token_expiry === 'boolean') out.endAtTokenExpiry = raw.end_at_token_expiry;
    const maxPre = int(raw.max_pre_auth_connections);
    if (maxPre !== undefined) out.maxPreAuthConnections = maxPre;
    const size = raw.max_message_size;
    if (typeof size === 'number' || typeof size === 'string') {
      const bytes = parseSize(size);
      if (bytes !== undefined) {
        if (bytes < MIN_MESSAGE_BYTES || bytes > MAX_MESSAGE_BYTES) {
          this.#problem(`${at}.max_message_size`, `expected a size from 1KiB to 1GiB, found ${render(size)}`);
        } else {
          out.maxMessageBytes = bytes;
        }
      }
    }
    return out;
  }

  #targets(raw: Record<string, unknown> | undefined, globalLimits: SessionLimits): TargetConfig[] {
    const out: TargetConfig[] = [];
    const listeners: { name: string; listen: ListenAddress }[] = [];
    for (const [name, value] of Object.entries(raw ?? {})) {
      const t = obj(value);
      if (t === undefined) continue;
      const at = `targets.${name}`;
      const listen = this.#listen(t.listen, `${at}.listen`);
      if (listen !== undefined) {
        const clash = listeners.find((l) =>
          l.listen.port === listen.port && listen.port !== 0 &&
          (l.listen.host === listen.host || isWildcardHost(l.listen.host) || isWildcardHost(listen.host)));
        if (clash) {
          this.#problem(`${at}.listen`, `expected an address no other target listens on, found ${str(t.listen)}, which clashes with targets.${clash.name}.listen`);
        }
        listeners.push({ name, listen });
      }
      const allowInsecureLoopback = bool(t.allow_insecure_loopback) ?? false;
      if (allowInsecureLoopback && listen !== undefined && !isLoopbackHost(listen.host)) {
        this.#problem(`${at}.allow_insecure_loopback`, `expected only on a loopback listen address (127.0.0.0/8, ::1, localhost), found listen ${str(t.listen)}`);
      }
      const limits = this.#limits(obj(t.limits), `${at}.limits`, globalLimits);
      const base = { name, listen: listen ?? { host: '', port: 0 }, allowInsecureLoopback, limits };
      const u = obj(t.upstream) ?? {};
      const uAt = `${at}.upstream`;
      if (t.protocol === 'redis') {
        const common = this.#upstreamCommon(u, uAt, DEFAULT_REDIS_PORT);
        out.push({
          ...base,
          protocol: 'redis',
          tls: bool(t.tls) ?? false,
          upstream: { ...common, user: str(u.user) ?? DEFAULT_REDIS_USER, db: int(u.db) ?? 0 },
        });
      } else if (t.protocol === 'postgres') {
        const common = this.#upstreamCommon(u, uAt, DEFAULT_POSTGRES_PORT);
        const user = str(u.user) ?? '';
        // The schema checked each name; what is left here is one name or a list of them.
        const requireAuth = list(u.require_auth) as UpstreamAuthMethod[] | undefined;
        out.push({
          ...base,
          protocol: 'postgres',
          upstream: { ...common, user, database: str(u.database) ?? user, ...(requireAuth ? { requireAuth } : {}) },
        });
      }
    }
    return out;
  }

  #listen(v: unknown, at: string): ListenAddress | undefined {
    if (typeof v !== 'string') return undefined;
    const m = /^(\[[^\]]+\]|[^:[\]]+):([0-9]+)$/.exec(v);
    if (!m) return undefined; // the schema's pattern already said so
    const host = unbracket(m[1] as string);
    const port = Number(m[2]);
    if (m[1]?.startsWith('[') && isIP(host) !== 6) {
      this.#problem(at, `expected an IPv6 address inside [ ], found ${render(v)}`);
      return undefined;
    }
    if (port > 65535) {
      this.#problem(at, `expected a port 0-65535, found ${render(v)}`);
      return undefined;
    }
    return { host, port };
  }

  #upstreamCommon(u: Record<string, unknown>, at: string, defaultPort: number): {
    host: string; port: number; password?: Secret; tls: UpstreamTlsMode; caFile?: string; serverName?: string;
  } {
    const host = unbracket(str(u.host) ?? '');
    const port = int(u.port) ?? defaultPort;
    // Traffic to a loopback upstream never leaves the machine; anything else is verified unless the file says otherwise.
    const tls = (str(u.tls) as UpstreamTlsMode | undefined) ?? (isLoopbackHost(host) ? 'disable' : 'verify-full');
    let caFile: string | undefined;
    const ca = str(u.ca_file);
    if (ca !== undefined) {
      caFile = this.#readableFile(ca, `${at}.ca_file`);
      if (tls !== 'verify-full') this.#problem(`${at}.ca_file`, `expected only with tls: verify-full, found tls: ${tls}`);
    }
    const serverName = str(u.server_name);
    if (serverName !== undefined && tls !== 'verify-full') {
      this.#problem(`${at}.server_name`, `expected only with tls: verify-full, found tls: ${tls}`);
    }
    const password = this.#password(u, at);
    return {
      host,
      port,
      ...(password !== undefined ? { password } : {}),
      tls,
      ...(caFile !== undefined ? { caFile } : {}),
      ...(serverName !== undefined ? { serverName } : {}),
    };
  }

  /** The upstream credential. Nothing read here is ever put in a problem. */
  #password(u: Record<string, unknown>, at: string): Secret | undefined {
    const envName = str(u.password_env);
    const file = str(u.password_file);
    if (u.password_env !== undefined && u.password_file !== undefined) {
      this.#problem(at, 'expected one of password_env or password_file, found both');
      return undefined;
    }
    if (envName !== undefined) {
      // A value that does not look like a variable name may be the password itself, pasted in the wrong place.
      const shown = /^[A-Z_][A-Z0-9_]*$/.test(envName) ? envName : 'a variable (name not shown: is it the password itself?)';
      const value = this.#env[envName];
      if (value === undefined) {
        this.#problem(`${at}.password_env`, `expected the name of a set environment variable, found ${shown}, which is not set`);
        return undefined;
      }
      if (value === '') {
        this.#problem(`${at}.password_env`, `expected the name of a set environment variable, found ${shown}, which is set but empty`);
        return undefined;
      }
      return new Secret(value, `env ${envName}`);
    }
    if (file !== undefined) {
      const abs = this.#path(file);
      let text: string;
      try {
        text = readFileSync(abs, 'utf8');
      } catch (err) {
        this.#problem(`${at}.password_file`, `expected a readable file, found ${shownPath(file, abs)} (${errno(err) ?? 'unreadable'})`);
        return undefined;
      }
      // Files written by `echo` or secret managers end in a newline that is not part of the password.
      const value = text.replace(/\r?\n$/, '');
      if (value === '') {
        this.#problem(`${at}.password_file`, `expected a file holding the password, found ${abs}, which is empty`);
        return undefined;
      }
      return new Secret(value, `file ${abs}`);
    }
    return undefined;
  }

  /**
   * `masking:`: rules as written (a strategy may be a bare name, and its
   * options snake_case or camelCase) normalised to MaskingRuleConfig, then
   * compiled once here so a bad detector, an unsafe pattern or a hash rule
   * without a key is a load error with its key path, not a session failure.
   */
  #masking(raw: Record<string, unknown> | undefined): MaskingConfig | undefined {
    if (raw === undefined) return undefined;
    const at = 'masking';
    const hashKey = this.#hashKey(raw, at);
    const rules: MaskingRuleConfig[] = [];
    const index = new Map<string, number>();
    const rawRules = Array.isArray(raw.rules) ? (raw.rules as unknown[]) : [];
    rawRules.forEach((rr, i) => {
      const r = obj(rr);
      if (r === undefined) return;
      const rule: MaskingRuleConfig = { name: str(r.name) ?? '', strategy: normaliseStrategy(r.strategy) };
      if (r.detector !== undefined) rule.detector = r.detector as MaskingRuleConfig['detector'];
      if (r.pattern !== undefined) rule.pattern = r.pattern as string;
      if (r.columns !== undefined) rule.columns = r.columns as string[];
      index.set(rule.name, i);
      rules.push(rule);
    });
    try {
      MaskingEngine.compile(rules, { hashKey: hashKey ? Buffer.from(hashKey.reveal(), 'utf8') : Buffer.alloc(0) });
    } catch (err) {
      if (!(err instanceof MaskingConfigError)) throw err;
      for (const problem of err.problems) {
        // The engine says `rule "name": why` (or `rule #n: why`): point at the rule's key path.
        const m = /^rule (?:"((?:[^"\\]|\\.)*)"|#(\d+)): (.*)$/s.exec(problem);
        const i = m ? (m[2] !== undefined ? Number(m[2]) - 1 : index.get(JSON.parse(`"${m[1]}"`) as string)) : undefined;
        this.#problem(i !== undefined ? `${at}.rules[${i}]` : `${at}.rules`, m ? m[3]! : problem);
      }
    }
    return { rules, ...(hashKey ? { hashKey } : {}) };
  }

  /** The hash strategy's key: from the environment or a file, never inline (like an upstream password). */
  #hashKey(raw: Record<string, unknown>, at: string): Secret | undefined {
    const envName = str(raw.hash_key_env);
    const file = str(raw.hash_key_file);
    if (envName !== undefined && file !== undefined) {
      this.#problem(at, 'expected one of hash_key_env or hash_key_file, found both');
      return undefined;
    }
    if (envName !== undefined) {
      const shown = /^[A-Z_][A-Z0-9_]*$/.test(envName) ? envName : 'a variable (name not shown: is it the key itself?)';
      const value = this.#env[envName];
      if (!value) {
        this.#problem(`${at}.hash_key_env`, `expected the name of a set, non-empty environment variable, found ${shown}, which is ${value === undefined ? 'not set' : 'empty'}`);
        return undefined;
      }
      return new Secret(value, `env ${envName}`);
    }
    if (file !== undefined) {
      const abs = this.#path(file);
      let text: string;
      try {
        text = readFileSync(abs, 'utf8').replace(/\r?\n$/, '');
      } catch (err) {
        this.#problem(`${at}.hash_key_file`, `expected a readable file, found ${shownPath(file, abs)} (${errno(err) ?? 'unreadable'})`);
        return undefined;
      }
      if (text === '') {
        this.#problem(`${at}.hash_key_file`, `expected a file holding the key, found ${abs}, which is empty`);
        return undefined;
      }
      return new Secret(text, `file ${abs}`);
    }
    return undefined;
  }

  #policies(raw: unknown, targetNames: string[], knownIssuers: string[], masking: MaskingConfig | undefined): PolicyConfig[] {
    if (!Array.isArray(raw)) return [];
    const out: PolicyConfig[] = [];
    const firstIndex = new Map<string, number>();
    (raw as unknown[]).forEach((rp, i) => {
      const at = `policies[${i}]`;
      const p = obj(rp);
      if (p === undefined) return;
      const name = str(p.name);
      if (name !== undefined) {
        const prev = firstIndex.get(name);
        if (prev !== undefined) {
          this.#problem(`${at}.name`, `expected a name no other policy uses, found ${render(name)} (also policies[${prev}])`);
        } else {
          firstIndex.set(name, i);
        }
      }
      const targets: string[] = [];
      if (Array.isArray(p.targets)) {
        (p.targets as unknown[]).forEach((t, j) => {
          if (typeof t !== 'string') return;
          if (!targetNames.includes(t)) {
            this.#problem(`${at}.targets[${j}]`, `expected a target defined under targets (${targetNames.join(', ') || 'none defined'}), found ${render(t)}`);
          }
          targets.push(t);
        });
      }
      const subjects = this.#subjects(obj(p.subjects), `${at}.subjects`, knownIssuers);
      const rules = this.#rules(p.rules, at);
      const stated = str(p.default) as PolicyConfig['default'] | undefined;
      if (stated === undefined && rules.length > 0) {
        this.#problem(`${at}.default`, 'expected allow or deny, found nothing: a policy with rules must say what happens when none matches');
      }
      const maskingRules = list(p.masking);
      maskingRules?.forEach((m, j) => {
        if (!masking?.rules.some((r) => r.name === m)) {
          const known = masking?.rules.map((r) => r.name).join(', ') || 'none defined';
          this.#problem(`${at}.masking[${j}]`, `expected a rule defined under masking.rules (${known}), found ${render(m)}`);
        }
      });
      out.push({ name: name ?? '', subjects, targets, default: stated ?? 'allow', rules, ...(maskingRules ? { masking: maskingRules } : {}) });
    });
    return out;
  }

  #rules(raw: unknown, at: string): RuleConfig[] {
    if (!Array.isArray(raw)) return [];
    const out: RuleConfig[] = [];
    const seen = new Map<string, number>();
    (raw as unknown[]).forEach((rr, i) => {
      const r = obj(rr);
      const m = obj(r?.match);
      const rat = `${at}.rules[${i}]`;
      if (r === undefined || m === undefined) return;
      const name = str(r.name) ?? '';
      const prev = seen.get(name);
      if (prev !== undefined) this.#problem(`${rat}.name`, `expected a name no other rule of this policy uses, found ${render(name)} (also rules[${prev}])`);
      else seen.set(name, i);
      const match: RuleMatch = {};
      const kinds = list(m.kinds);
      kinds?.forEach((k, j) => {
        if (!isKnownSqlKind(k)) this.#problem(`${rat}.match.kinds[${j}]`, `expected a statement kind (see docs/policy.md), found ${render(k)}`);
      });
      const functions = list(m.functions);
      functions?.forEach((f, j) => {
        if (f.startsWith('@') && f !== DANGEROUS_FUNCTIONS_SET) {
          this.#problem(`${rat}.match.functions[${j}]`, `expected a function name or ${DANGEROUS_FUNCTIONS_SET}, found ${render(f)}`);
        }
      });
      const commands = list(m.commands);
      commands?.forEach((c, j) => {
        if (c.startsWith('@') && !isKnownRedisCategory(c.toLowerCase())) {
          this.#problem(`${rat}.match.commands[${j}]`, `expected a command, command|subcommand or ACL category (${REDIS_CATEGORIES.join(' ')}), found ${render(c)}`);
        }
      });
      if (kinds) match.kinds = kinds;
      const tables = list(m.tables);
      if (tables) {
        match.tables = tables.map((g, j) => {
          const glob = tableGlob(g);
          if (glob === undefined) this.#problem(`${rat}.match.tables[${j}]`, `expected a table glob such as public.users, app.* or "MixedCase", found ${render(g)}`);
          return glob ?? g;
        });
      }
      if (functions) match.functions = functions.map((f) => f.toLowerCase());
      if (typeof m.without_where === 'boolean') match.withoutWhere = m.without_where;
      if (commands) match.commands = commands.map((c) => c.toLowerCase());
      const keys = list(m.keys);
      if (keys) match.keys = keys;
      out.push({ name, action: str(r.action) as Action, match });
    });
    return out;
  }

  #api(raw: Record<string, unknown> | undefined, knownIssuers: string[], identity: IdentityConfig): ApiConfig | undefined {
    if (raw === undefined) return undefined;
    const listen = this.#listen(raw.listen, 'api.listen');
    if (!listen) return undefined;
    const roles = obj(raw.roles);
    const audience = str(raw.audience);
    if (audience !== undefined) {
      // The same audience as an issuer's would separate nothing: that issuer's database tokens would pass.
      const same = [...(identity.devIssuer ? [{ issuer: DEV_ISSUER, audience: DEV_AUDIENCE }] : []), ...identity.issuers].find((i) => i.audience === audience);
      if (same !== undefined) {
        this.#problem('api.audience', `expected an audience other than the issuers' own, found ${render(audience)}, the audience of ${same.issuer}'s database tokens (they would be API tokens too)`);
      }
    }
    // 0 would be Node's "no timeout": a slow client could hold a connection (and one of api's 256) forever.
    const requestTimeoutMs = this.#timer(raw.request_timeout, 'api.request_timeout', false);
    return {
      listen,
      ...(audience !== undefined ? { audience } : {}),
      roles: { approver: this.#roleGrants(roles?.approver, 'api.roles.approver', knownIssuers), auditor: this.#roleGrants(roles?.auditor, 'api.roles.auditor', knownIssuers) },
      ...(requestTimeoutMs !== undefined ? { requestTimeoutMs } : {}),
    };
  }

  /** A group name or a list of group names and subject matches (checked as a policy's subjects are). */
  #roleGrants(raw: unknown, at: string, knownIssuers: string[]): RoleGrant[] {
    if (typeof raw === 'string') return raw.length > 0 ? [raw] : [];
    if (!Array.isArray(raw)) return [];
    const out: RoleGrant[] = [];
    raw.forEach((g, i) => {
      if (typeof g === 'string') {
        if (g.length > 0) out.push(g);
        return;
      }
      const o = obj(g);
      if (o !== undefined) out.push(this.#subjects(o, `${at}[${i}]`, knownIssuers));
    });
    return out;
  }

  /** `recording:`; every omitted key takes DEFAULT_RECORDING's value. */
  #recording(raw: Record<string, unknown> | undefined): RecordingConfig {
    const out: RecordingConfig = { ...DEFAULT_RECORDING };
    if (!raw) return out;
    if (typeof raw.enabled === 'boolean') out.enabled = raw.enabled;
    if (raw.max_bytes !== undefined) {
      const n = parseSize(raw.max_bytes as string | number);
      if (n !== undefined && n < MIN_RECORDING_BYTES) this.#problem('recording.max_bytes', `expected at least 64KiB (a header and footer must fit), found ${render(raw.max_bytes)}`);
      else if (n !== undefined) out.maxBytes = n;
    }
    if (raw.flush_interval !== undefined) {
      const ms = parseDuration(raw.flush_interval as string | number);
      if (ms === 0) this.#problem('recording.flush_interval', 'expected a duration above 0 such as 200ms, found 0');
      else if (ms !== undefined) out.flushIntervalMs = ms;
    }
    if (raw.max_backlog !== undefined) {
      const n = parseSize(raw.max_backlog as string | number);
      if (n !== undefined && n < MIN_RECORDING_BACKLOG) this.#problem('recording.max_backlog', `expected at least 1MiB, found ${render(raw.max_backlog)}`);
      else if (n !== undefined) out.maxBacklogBytes = n;
    }
    const retentionMs = this.#retention(raw.retention, 'recording.retention');
    if (retentionMs !== undefined) out.retentionMs = retentionMs;
    if (raw.fsync === 'close' || raw.fsync === 'off') out.fsync = raw.fsync;
    return out;
  }

  /**
   * A retention (`30d`, `12h`, 0 = keep forever), ms; undefined when absent or
   * not one (the schema names that). At most 100 years: a longer one puts the
   * cutoff before the first date a time can be written for.
   */
  #retention(raw: unknown, at: string): number | undefined {
    if (typeof raw !== 'string' && typeof raw !== 'number') return undefined;
    const days = typeof raw === 'string' ? /^([0-9]+)d$/.exec(raw) : null;
    const ms = days ? Number(days[1]) * 24 * 3_600_000 : parseDuration(raw);
    if (ms !== undefined && ms > MAX_RETENTION_MS) {
      this.#problem(at, `expected at most 36500d (or 0 to keep forever), found ${render(raw)}`);
      return undefined;
    }
    return ms;
  }

  #approvals(raw: Record<string, unknown> | undefined): ApprovalsConfig {
    const timeoutMs = this.#timer(raw?.timeout, 'approvals.timeout', false);
    const hook = obj(raw?.webhook);
    const url = str(hook?.url);
    if (url !== undefined && hasUserInfo(url)) {
      // fetch refuses such a URL, and its error quotes it whole: the password would reach the log.
      this.#problem('approvals.webhook.url', 'expected a URL without a user name or password (user:password@); a secret belongs in the path, which is never logged');
    }
    const hookTimeout = this.#timer(hook?.timeout, 'approvals.webhook.timeout', false);
    return {
      timeoutMs: timeoutMs ?? DEFAULT_APPROVAL_TIMEOUT_MS,
      maxPendingPerSubject: int(raw?.max_pending_per_subject) ?? DEFAULT_MAX_PENDING_APPROVALS,
      maxRequestsPerMinute: int(raw?.max_requests_per_minute) ?? DEFAULT_MAX_APPROVAL_REQUESTS_PER_MINUTE,
      ...(url ? { webhook: { url, timeoutMs: hookTimeout ?? 5_000 } } : {}),
    };
  }

  #subjects(raw: Record<string, unknown> | undefined, at: string, knownIssuers: string[]): SubjectMatch {
    const out: SubjectMatch = {};
    if (raw === undefined) return out;
    const groups = list(raw.groups);
    const sub = list(raw.sub);
    const issuer = list(raw.issuer);
    if (groups) out.groups = groups;
    if (sub) out.sub = sub;
    if (issuer) {
      out.issuer = issuer;
      issuer.forEach((iss, j) => {
        if (!knownIssuers.includes(iss)) {
          const where = Array.isArray(raw.issuer) ? `${at}.issuer[${j}]` : `${at}.issuer`;
          this.#problem(where, `expected a configured issuer (${knownIssuers.join(', ') || 'none configured'}), found ${render(iss)}`);
        }
      });
    }
    const rawClaims = obj(raw.claims);
    if (rawClaims) {
      const claims: Record<string, string[]> = {};
      for (const [k, v] of Object.entries(rawClaims)) {
        const l = list(v);
        if (l) claims[k] = l;
      }
      out.claims = claims;
    }
    // `sub: '*'` matches every subject, so on its own it narrows nothing.
    const subNarrows = sub !== undefined && !sub.some((s) => /^\*+$/.test(s));
    const criteria = (groups ? 1 : 0) + (subNarrows ? 1 : 0) + (issuer ? 1 : 0) + (rawClaims && Object.keys(rawClaims).length > 0 ? 1 : 0);
    // A criterion of the wrong type was reported by ajv; do not also call it missing.
    const wellFormed = Object.entries(raw).every(([k, v]) =>
      k === 'claims' ? obj(v) !== undefined : ['groups', 'sub', 'issuer'].includes(k) && list(v) !== undefined);
    if (criteria === 0 && wellFormed) {
      this.#problem(at, 'expected at least one criterion, found none: would match every token; say which groups/sub/issuer/claims');
    }
    return out;
  }
}

const HMAC = /^HS(256|384|512)$/i;

/** Why an algorithm is not allowed, or undefined if it is. */
function refusedAlgorithm(a: string): string | undefined {
  if ((ALLOWED_ALGORITHMS as readonly string[]).includes(a)) return undefined;
  const allowed = ALLOWED_ALGORITHMS.join(', ');
  if (a.toLowerCase() === 'none') {
    return `expected one of ${allowed}, found "none", which is refused: an unsigned token could be written by anyone`;
  }
  if (HMAC.test(a)) {
    return `expected one of ${allowed}, found ${JSON.stringify(a)}, which is refused: HMAC needs the shared secret on the gateway, and whoever holds it can mint tokens`;
  }
  return `expected one of ${allowed}, found ${render(a)}`;
}

/** `partial` -> `{ kind: 'partial' }`; `{ kind, keep_suffix }` -> `{ kind, keepSuffix }`. Anything else goes to the engine as is, which says what is wrong. */
function normaliseStrategy(v: unknown): Strategy {
  if (typeof v === 'string') return { kind: v } as Strategy;
  const o = obj(v);
  if (o === undefined) return v as Strategy;
  const out: Record<string, unknown> = {};
  for (const [k, val] of Object.entries(o)) out[k.replace(/_([a-z])/g, (_m, c: string) => c.toUpperCase())] = val;
  return out as unknown as Strategy;
}

function obj(v: unknown): Record<string, unknown> | undefined {
  return isObject(v) ? v : undefined;
}

function str(v: unknown): string | undefined {
  return typeof v === 'string' ? v : undefined;
}

function int(v: unknown): number | undefined {
  return typeof v === 'number' && Number.isInteger(v) ? v : undefined;
}

function bool(v: unknown): boolean | undefined {
  return typeof v === 'boolean' ? v : undefined;
}

/** A string or a list of strings, as a list; undefined when absent or malformed. */
function list(v: unknown): string[] | undefined {
  if (typeof v === 'string') return [v];
  if (Array.isArray(v)) return v.filter((x): x is string => typeof x === 'string');
  return undefined;
}

/**
 * A `tables` glob as SQL reads the same name: unquoted parts are folded to
 * lower case, as PostgreSQL folds unquoted identifiers (`public.Users` is
 * the table `SELECT * FROM public.Users` reads, public.users), and a part in
 * double quotes is kept exactly (`'"Users"'`, `'app."Orders"'`), with `""`
 * for a quote inside; a leading database part (`app.public.users`) is
 * dropped, as it is from statements. Undefined for a glob with an unclosed
 * quote.
 */
export function tableGlob(raw: string): string | undefined {
  const parts: string[] = [];
  let i = 0;
  for (;;) {
    let part = '';
    if (raw[i] === '"') {
      i++;
      for (;;) {
        if (i >= raw.length) return undefined;
        if (raw[i] === '"') {
          if (raw[i + 1] !== '"') break;
          i++;
        }
        part += raw[i++];
      }
      i++;
      if (i < raw.length && raw[i] !== '.') return undefined;
    } else {
      const dot = raw.indexOf('.', i);
      const end = dot < 0 ? raw.length : dot;
      part = raw.slice(i, end);
      if (part.includes('"')) return undefined;
      // As PostgreSQL folds an unquoted name in UTF-8: A-Z only (downcase_identifier).
      part = part.replace(/[A-Z]+/g, (m) => m.toLowerCase());
      i = end;
    }
    parts.push(part);
    // db.schema.table: statements are named without the database part (classify.ts), so is the glob.
    if (i >= raw.length) return (parts.length === 3 ? parts.slice(1) : parts).join('.');
    i++; // the dot
  }
}

/** The URL parses and carries a user name or password (`https://user:secret@host/`). */
/**
 * A secret's file path as a problem line shows it: a value with no `/` and
 * no `.` looks more like the secret itself, pasted into the wrong key, than
 * like a file name, and is not shown (as password_env does for names).
 */
function shownPath(given: string, abs: string): string {
  return /[/.]/.test(given) ? abs : 'a path (not shown: is it the secret itself?)';
}

function hasUserInfo(url: string): boolean {
  try {
    const u = new URL(url);
    return u.username !== '' || u.password !== '';
  } catch {
    return false;
  }
}

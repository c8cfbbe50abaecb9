/**
 * The JSON schema of sluice.yaml (snake_case, as written by people), and the
 * small grammars for durations and sizes it refers to.
 *
 * Every node that can fail carries an `expected` annotation: the loader
 * turns an ajv error into `key.path: expected <that>, found <value>`, so the
 * wording of each problem lives here beside the rule it explains. Checks
 * that need more than one value or the outside world (files, environment,
 * duplicates, cross references) are in load.ts.
 */

/** `10s`, `5m`, `1h`, `250ms`; a bare number is milliseconds. */
export const DURATION_PATTERN = '^[0-9]+(ms|s|m|h)$';
/** `recording.retention`, `audit.retention`: a duration that may also be in days (`30d`); 0 = keep forever. */
export const RETENTION_PATTERN = '^[0-9]+(ms|s|m|h|d)$';
/** `65536`, `512KiB`, `64MiB`, `1GiB`, `100B`. Binary units only: `MB` is ambiguous. */
export const SIZE_PATTERN = '^[0-9]+(B|KiB|MiB|GiB)$';

/** The levels `log.level` and SLUICE_LOG_LEVEL take (pino's, and `silent`). */
export const LOG_LEVELS: readonly string[] = ['fatal', 'error', 'warn', 'info', 'debug', 'trace', 'silent'];

/** JWS algorithms a token may be signed with. Only asymmetric ones: see load.ts for why `none` and HS* are refused. */
export const ALLOWED_ALGORITHMS = [
  'RS256', 'RS384', 'RS512',
  'PS256', 'PS384', 'PS512',
  'ES256', 'ES384', 'ES512',
  'EdDSA',
] as const;

/** Target and policy names: they appear in key paths and logs, so no dots or spaces. */
export const NAME_PATTERN = '^[A-Za-z0-9][A-Za-z0-9_-]{0,62}$';

export function parseDuration(value: number | string): number | undefined {
  if (typeof value === 'number') return Number.isInteger(value) && value >= 0 ? value : undefined;
  const m = /^([0-9]+)(ms|s|m|h)$/.exec(value);
  if (!m) return undefined;
  const n = Number(m[1]);
  const unit = m[2] === 'ms' ? 1 : m[2] === 's' ? 1000 : m[2] === 'm' ? 60_000 : 3_600_000;
  return n * unit;
}

export function parseSize(value: number | string): number | undefined {
  if (typeof value === 'number') return Number.isInteger(value) && value >= 0 ? value : undefined;
  const m = /^([0-9]+)(B|KiB|MiB|GiB)$/.exec(value);
  if (!m) return undefined;
  const unit = m[2] === 'B' ? 1 : m[2] === 'KiB' ? 1024 : m[2] === 'MiB' ? 1024 ** 2 : 1024 ** 3;
  return Number(m[1]) * unit;
}

// --- building blocks ---------------------------------------------------------

const duration = {
  type: ['integer', 'string'],
  minimum: 0,
  pattern: DURATION_PATTERN,
  expected: 'a duration such as 10s, 5m, 1h, 250ms or a number of milliseconds',
};

const size = {
  type: ['integer', 'string'],
  minimum: 0,
  pattern: SIZE_PATTERN,
  expected: 'a size such as 65536, 512KiB, 64MiB or 1GiB',
};

const bool = { type: 'boolean', expected: 'true or false' };
const nonEmptyString = { type: 'string', minLength: 1, expected: 'a non-empty string' };
const path = { type: 'string', minLength: 1, expected: 'a file path' };
const port = { type: 'integer', minimum: 1, maximum: 65535, expected: 'an integer 1-65535' };
const host = {
  type: 'string',
  pattern: '^(\\[[0-9A-Fa-f:.]+\\]|[0-9A-Fa-f:.]*:[0-9A-Fa-f:.]*|[A-Za-z0-9_.-]+)$',
  expected: 'a host name or IP address',
};

const stringOrList = {
  type: ['string', 'array'],
  minLength: 1,
  minItems: 1,
  items: nonEmptyString,
  expected: 'a string or a non-empty list of strings',
};

const limits = {
  type: 'object',
  additionalProperties: false,
  expected: 'a mapping of limits',
  properties: {
    pre_auth_timeout: duration,
    max_pre_auth_connections: { type: 'integer', minimum: 1, expected: 'an integer of at least 1' },
    idle_timeout: duration,
    max_message_size: size,
    upstream_connect_timeout: duration,
    end_at_token_expiry: bool,
  },
};

const upstreamTls = {
  enum: ['disable', 'require', 'verify-full'],
  expected: 'one of disable, require, verify-full',
};

const upstreamCommon = {
  host,
  port,
  user: nonEmptyString,
  password_env: {
    type: 'string',
    pattern: '^[A-Za-z_][A-Za-z0-9_]*$',
    expected: 'the name of an environment variable',
  },
  password_file: path,
  tls: upstreamTls,
  ca_file: path,
  server_name: { ...nonEmptyString, expected: 'a host name' },
};

/** `require_auth`'s names, libpq's (UpstreamAuthMethod). */
const AUTH_METHODS = ['scram-sha-256', 'md5', 'password', 'none'];
const authMethod = { enum: AUTH_METHODS, expected: `one of ${AUTH_METHODS.join(', ')}` };

const postgresUpstream = {
  type: 'object',
  additionalProperties: false,
  required: ['host', 'user'],
  expected: 'a mapping with host, port, user, database',
  properties: {
    ...upstreamCommon,
    database: nonEmptyString,
    require_auth: {
      type: ['string', 'array'],
      pattern: `^(${AUTH_METHODS.join('|')})$`,
      minItems: 1,
      uniqueItems: true,
      items: authMethod,
      expected: `${authMethod.expected}, or a list of them`,
    },
  },
};

const redisUpstream = {
  type: 'object',
  additionalProperties: false,
  required: ['host'],
  expected: 'a mapping with host, port, user, db',
  properties: {
    ...upstreamCommon,
    db: { type: 'integer', minimum: 0, expected: 'a database number (integer of at least 0)' },
  },
};

const listen = {
  type: 'string',
  pattern: '^(\\[[0-9A-Fa-f:.]+\\]|[A-Za-z0-9_.-]+):[0-9]+$',
  expected: 'host:port such as 127.0.0.1:6432 or [::1]:6432',
};

const targetCommon = {
  listen,
  allow_insecure_loopback: bool,
  limits,
};

const postgresTarget = {
  type: 'object',
  additionalProperties: false,
  required: ['protocol', 'listen', 'upstream'],
  properties: {
    protocol: { const: 'postgres', expected: 'postgres or redis' },
    ...targetCommon,
    upstream: postgresUpstream,
  },
};

const redisTarget = {
  type: 'object',
  additionalProperties: false,
  required: ['protocol', 'listen', 'upstream'],
  properties: {
    protocol: { const: 'redis', expected: 'postgres or redis' },
    ...targetCommon,
    tls: bool,
    upstream: redisUpstream,
  },
};

const issuer = {
  type: 'object',
  additionalProperties: false,
  required: ['issuer', 'audience'],
  expected: 'a mapping with issuer, audience and jwks_uri or jwks_file',
  properties: {
    issuer: { ...nonEmptyString, expected: 'the exact iss value, such as https://token.actions.githubusercontent.com' },
    audience: { ...nonEmptyString, expected: 'the exact aud value tokens must carry' },
    jwks_uri: { ...nonEmptyString, expected: 'an https:// URL of a JWKS' },
    jwks_file: path,
    groups_claim: {
      type: 'string',
      pattern: '^[^.\\s]+(\\.[^.\\s]+)*$',
      expected: 'a claim name or a dotted path such as realm_access.roles',
    },
    algorithms: {
      type: 'array',
      minItems: 1,
      uniqueItems: true,
      // Membership is checked in load.ts so `none` and HS* get a message saying why.
      items: { type: 'string', expected: 'an algorithm name such as RS256' },
      expected: 'a non-empty list of distinct algorithm names',
    },
  },
};

const nameList = {
  type: 'array',
  minItems: 1,
  items: { ...nonEmptyString, expected: 'a non-empty string' },
  expected: 'a non-empty list of strings',
};

/** A policy rule: the first rule whose match holds decides. */
const rule = {
  type: 'object',
  additionalProperties: false,
  required: ['name', 'action', 'match'],
  expected: 'a mapping with name, action and match',
  properties: {
    name: { type: 'string', pattern: NAME_PATTERN, expected: 'a name of letters, digits, _ and - (at most 63)' },
    action: { enum: ['allow', 'deny', 'approve'], expected: 'allow, deny or approve' },
    match: {
      type: 'object',
      additionalProperties: false,
      minProperties: 1,
      expected: 'a mapping with kinds, tables, functions, without_where, commands and/or keys',
      properties: {
        kinds: nameList,
        tables: nameList,
        functions: nameList,
        without_where: { type: 'boolean', expected: 'true or false' },
        commands: nameList,
        keys: nameList,
      },
    },
  },
};

const subjects = {
  type: 'object',
  additionalProperties: false,
  expected: 'a mapping with groups, sub, issuer and/or claims',
  properties: {
    groups: stringOrList,
    sub: stringOrList,
    issuer: stringOrList,
    claims: {
      type: 'object',
      expected: 'a mapping of claim name to accepted value(s)',
      propertyNames: { minLength: 1, pattern: '^[^.\\s]+(\\.[^.\\s]+)*$' },
      additionalProperties: stringOrList,
    },
  },
};

/** An `api.roles` entry: a group name, or a subject match like a policy's (roles pinned to an issuer). */
const roleGrant = {
  type: ['string', 'object'],
  minLength: 1,
  additionalProperties: false,
  properties: subjects.properties,
  expected: 'a group name, or a mapping with groups, sub, issuer and/or claims',
};

/** A string or a list, as stringOrList, whose items may also be subject matches. */
const roleGrants = {
  ...stringOrList,
  items: roleGrant,
  expected: 'a group name or a non-empty list of group names and subject matches',
};

export const configSchema = {
  type: 'object',
  additionalProperties: false,
  required: ['targets'],
  expected: 'a mapping',
  properties: {
    state_dir: path,
    log: {
      type: 'object',
      additionalProperties: false,
      expected: 'a mapping with level',
      properties: {
        level: {
          enum: [...LOG_LEVELS],
          expected: `one of ${LOG_LEVELS.join(', ')}`,
        },
      },
    },
    identity: {
      type: 'object',
      additionalProperties: false,
      expected: 'a mapping',
      properties: {
        dev_issuer: bool,
        max_token_bytes: {
          type: 'integer',
          minimum: 256,
          maximum: 65536,
          expected: 'an integer 256-65536',
        },
        clock_tolerance: duration,
        max_token_lifetime: duration,
        issuers: { type: 'array', items: issuer, expected: 'a list of issuers' },
      },
    },
    tls: {
      type: 'object',
      additionalProperties: false,
      required: ['cert_file', 'key_file'],
      expected: 'a mapping with cert_file and key_file',
      properties: { cert_file: path, key_file: path },
    },
    limits,
    targets: {
      type: 'object',
      minProperties: 1,
      expected: 'a mapping of target name to target (at least one)',
      propertyNames: { pattern: NAME_PATTERN },
      additionalProperties: {
        type: 'object',
        required: ['protocol'],
        expected: 'a mapping with protocol, listen and upstream',
        // Annotation only: the wording when protocol is missing. The branches check the value.
        properties: { protocol: { expected: 'postgres or redis' } },
        discriminator: { propertyName: 'protocol' },
        oneOf: [postgresTarget, redisTarget],
      },
    },
    policies: {
      type: 'array',
      expected: 'a list of policies',
      items: {
        type: 'object',
        additionalProperties: false,
        required: ['name', 'subjects', 'targets'],
        expected: 'a mapping with name, subjects and targets',
        properties: {
          name: { type: 'string', pattern: NAME_PATTERN, expected: 'a name of letters, digits, _ and - (at most 63)' },
          subjects,
          targets: {
            type: 'array',
            minItems: 1,
            items: { ...nonEmptyString, expected: 'a target name' },
            expected: 'a non-empty list of target names',
          },
          default: { enum: ['allow', 'deny'], expected: 'allow or deny' },
          rules: { type: 'array', items: rule, expected: 'a list of rules' },
          masking: {
            type: 'array',
            items: { ...nonEmptyString, expected: 'a masking rule name' },
            expected: 'a list of masking rule names',
          },
        },
      },
    },
    masking: {
      type: 'object',
      additionalProperties: false,
      expected: 'a mapping with rules (and hash_key_env or hash_key_file)',
      properties: {
        // Each rule's fields are checked by MaskingEngine.compile (load.ts), which knows detectors and strategies.
        rules: {
          type: 'array',
          items: {
            type: 'object',
            additionalProperties: false,
            required: ['name', 'strategy'],
            expected: 'a mapping with name, strategy and detector, pattern and/or columns',
            properties: {
              name: { type: 'string', pattern: NAME_PATTERN, expected: 'a name of letters, digits, _ and - (at most 63)' },
              detector: nonEmptyString,
              pattern: nonEmptyString,
              columns: { type: 'array', minItems: 1, items: nonEmptyString, expected: 'a non-empty list of column selectors' },
              strategy: { type: ['string', 'object'], expected: 'a strategy name or a mapping with kind' },
            },
          },
          expected: 'a list of masking rules',
        },
        hash_key_env: { ...nonEmptyString, expected: 'the name of an environment variable' },
        hash_key_file: path,
      },
    },
    audit: {
      type: 'object',
      additionalProperties: false,
      expected: 'a mapping with enabled, redis_allowed and/or retention',
      properties: {
        enabled: { type: 'boolean', expected: 'true or false' },
        redis_allowed: { enum: ['each', 'per_second'], expected: 'each or per_second' },
        retention: {
          type: ['integer', 'string'],
          minimum: 0,
          pattern: RETENTION_PATTERN,
          expected: 'a duration such as 365d, 12h or 0 (keep forever)',
        },
      },
    },
    recording: {
      type: 'object',
      additionalProperties: false,
      expected: 'a mapping with enabled, max_bytes, flush_interval, max_backlog, retention and/or fsync',
      properties: {
        enabled: { type: 'boolean', expected: 'true or false' },
        max_bytes: size,
        flush_interval: duration,
        max_backlog: size,
        retention: {
          type: ['integer', 'string'],
          minimum: 0,
          pattern: RETENTION_PATTERN,
          expected: 'a duration such as 30d, 12h or 0 (keep forever)',
        },
        fsync: { enum: ['close', 'off'], expected: 'close or off' },
      },
    },
    api: {
      type: 'object',
      additionalProperties: false,
      required: ['listen'],
      expected: 'a mapping with listen and roles',
      properties: {
        request_timeout: duration,
        listen: { type: 'string', pattern: '^(\\[[^\\]]+\\]|[^:\\[\\]]+):[0-9]+$', expected: 'host:port such as 127.0.0.1:8080' },
        audience: nonEmptyString,
        roles: {
          type: 'object',
          additionalProperties: false,
          expected: 'a mapping with approver and/or auditor lists',
          properties: { approver: roleGrants, auditor: roleGrants },
        },
      },
    },
    approvals: {
      type: 'object',
      additionalProperties: false,
      expected: 'a mapping with timeout, max_pending_per_subject, max_requests_per_minute and/or webhook',
      properties: {
        timeout: duration,
        max_pending_per_subject: { type: 'integer', minimum: 1, expected: 'an integer of at least 1' },
        max_requests_per_minute: { type: 'integer', minimum: 1, expected: 'an integer of at least 1' },
        webhook: {
          type: 'object',
          additionalProperties: false,
          required: ['url'],
          expected: 'a mapping with url (and timeout)',
          properties: {
            url: { type: 'string', pattern: '^https?://', expected: 'an http:// or https:// URL' },
            timeout: duration,
          },
        },
      },
    },
  },
} as const;

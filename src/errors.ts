/**
 * The one catalogue of Sluice's own errors. Every error Sluice raises carries
 * a stable `code` from this table; docs/errors.md documents each of them and
 * test/unit/errors.test.ts checks that nothing here is undocumented.
 *
 * `message` is written for the person reading a log or a client error: what
 * happened and what to do. It never contains a token, a password or SCRAM
 * material. Internal details (stack, cause) stay in logs, never on the wire.
 */
export const ErrorCodes = {
  // configuration
  CONFIG_INVALID: 'SLUICE_CONFIG_INVALID',
  CONFIG_NOT_FOUND: 'SLUICE_CONFIG_NOT_FOUND',
  // identity: each a reason a token is refused
  TOKEN_MISSING: 'SLUICE_TOKEN_MISSING',
  TOKEN_TOO_LARGE: 'SLUICE_TOKEN_TOO_LARGE',
  TOKEN_MALFORMED: 'SLUICE_TOKEN_MALFORMED',
  TOKEN_UNKNOWN_ISSUER: 'SLUICE_TOKEN_UNKNOWN_ISSUER',
  TOKEN_ALG_NOT_ALLOWED: 'SLUICE_TOKEN_ALG_NOT_ALLOWED',
  TOKEN_UNKNOWN_KEY: 'SLUICE_TOKEN_UNKNOWN_KEY',
  TOKEN_BAD_SIGNATURE: 'SLUICE_TOKEN_BAD_SIGNATURE',
  TOKEN_EXPIRED: 'SLUICE_TOKEN_EXPIRED',
  TOKEN_NOT_YET_VALID: 'SLUICE_TOKEN_NOT_YET_VALID',
  TOKEN_MISSING_EXP: 'SLUICE_TOKEN_MISSING_EXP',
  TOKEN_WRONG_AUDIENCE: 'SLUICE_TOKEN_WRONG_AUDIENCE',
  TOKEN_BAD_CLAIMS: 'SLUICE_TOKEN_BAD_CLAIMS',
  JWKS_UNAVAILABLE: 'SLUICE_JWKS_UNAVAILABLE',
  // admission
  NOT_AUTHORIZED: 'SLUICE_NOT_AUTHORIZED',
  INSECURE_TRANSPORT: 'SLUICE_INSECURE_TRANSPORT',
  TOO_MANY_UNAUTHENTICATED: 'SLUICE_TOO_MANY_UNAUTHENTICATED',
  PRE_AUTH_TIMEOUT: 'SLUICE_PRE_AUTH_TIMEOUT',
  STARTUP_PARAMETER_REFUSED: 'SLUICE_STARTUP_PARAMETER_REFUSED',
  // upstream
  UPSTREAM_CONNECT_FAILED: 'SLUICE_UPSTREAM_CONNECT_FAILED',
  UPSTREAM_AUTH_FAILED: 'SLUICE_UPSTREAM_AUTH_FAILED',
  UPSTREAM_TLS_FAILED: 'SLUICE_UPSTREAM_TLS_FAILED',
  UPSTREAM_PROTOCOL: 'SLUICE_UPSTREAM_PROTOCOL',
  // the wire
  PROTOCOL_VIOLATION: 'SLUICE_PROTOCOL_VIOLATION',
  MESSAGE_TOO_LARGE: 'SLUICE_MESSAGE_TOO_LARGE',
  IDLE_TIMEOUT: 'SLUICE_IDLE_TIMEOUT',
  // TLS material
  TLS_SETUP_FAILED: 'SLUICE_TLS_SETUP_FAILED',
  // policy
  SQL_UNPARSEABLE: 'SLUICE_SQL_UNPARSEABLE',
  // approvals
  APPROVAL_NOT_FOUND: 'SLUICE_APPROVAL_NOT_FOUND',
  APPROVAL_NOT_PENDING: 'SLUICE_APPROVAL_NOT_PENDING',
  APPROVAL_SELF: 'SLUICE_APPROVAL_SELF',
  APPROVAL_WINDOW_INVALID: 'SLUICE_APPROVAL_WINDOW_INVALID',
  // store
  STORE_SCHEMA_TOO_NEW: 'SLUICE_STORE_SCHEMA_TOO_NEW',
  // HTTP API
  API_BAD_REQUEST: 'SLUICE_API_BAD_REQUEST',
  API_NOT_FOUND: 'SLUICE_API_NOT_FOUND',
  API_INTERNAL: 'SLUICE_API_INTERNAL',
  API_BUSY: 'SLUICE_API_BUSY',
  API_TOO_LARGE: 'SLUICE_API_TOO_LARGE',
  // session recording
  RECORDING_WRITE_FAILED: 'SLUICE_RECORDING_WRITE_FAILED',
  RECORDING_SIZE_LIMIT: 'SLUICE_RECORDING_SIZE_LIMIT',
  RECORDING_UNREADABLE: 'SLUICE_RECORDING_UNREADABLE',
  RECORDING_KEY_FAILED: 'SLUICE_RECORDING_KEY_FAILED',
  // masking
  MASKING_RULE_INVALID: 'SLUICE_MASKING_RULE_INVALID',
  MASKING_FAILED: 'SLUICE_MASKING_FAILED',
} as const;

export type ErrorCode = (typeof ErrorCodes)[keyof typeof ErrorCodes];

export class SluiceError extends Error {
  readonly code: ErrorCode;

  constructor(code: ErrorCode, message: string, options?: { cause?: unknown }) {
    super(message, options);
    this.name = 'SluiceError';
    this.code = code;
  }
}

export function isSluiceError(err: unknown, code?: ErrorCode): err is SluiceError {
  return err instanceof SluiceError && (code === undefined || err.code === code);
}

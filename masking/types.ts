/**
 * Masking rules as configured, and the errors masking raises. Masking knows
 * values and strategies, not protocols: a protocol adapter hands it values
 * (UTF-8 text) and gets back replacements.
 */
import { ErrorCodes, SluiceError } from '../src/errors.js';

export type DetectorName =
  | 'email'
  | 'credit_card'
  | 'iban'
  | 'us_ssn'
  | 'phone'
  | 'ipv4'
  | 'ipv6'
  | 'aws_access_key_id'
  | 'aws_secret_access_key'
  | 'github_token'
  | 'gitlab_token'
  | 'slack_token'
  | 'stripe_key'
  | 'google_api_key'
  | 'jwt'
  | 'pem_private_key'
  | 'password_assignment';

export type Strategy =
  | { kind: 'redact'; /** default '[redacted]' */ token?: string }
  | { kind: 'partial'; keepPrefix?: number; keepSuffix?: number; maskChar?: string }
  | { kind: 'hash'; /** hex characters of HMAC-SHA-256 kept, default 16 */ length?: number }
  | { kind: 'null' /* PostgreSQL only: the protocol adapter sends SQL NULL; column rules only */ };

export interface MaskingRuleConfig {
  name: string;
  detector?: DetectorName;
  /** A custom JavaScript regular expression (no flags), checked for catastrophic backtracking at compile. */
  pattern?: string;
  /** Column selectors: 'users.password_hash', '*.ssn', 'public.users.email', 'ssn'. */
  columns?: string[];
  strategy: Strategy;
}

/**
 * Codes the lead adds to ErrorCodes in src/errors.ts (and docs/errors.md).
 * Until they are in the catalogue the literal is cast: the value is the final one.
 */
export const MaskingErrorCodes = {
  RULE_INVALID: ErrorCodes.MASKING_RULE_INVALID,
  FAILED: ErrorCodes.MASKING_FAILED,
};

/** A rule set refused at compile; `problems` holds one message per bad rule. */
export class MaskingConfigError extends SluiceError {
  readonly problems: string[];
  constructor(problems: string[]) {
    super(MaskingErrorCodes.RULE_INVALID, `invalid masking rules: ${problems.join('; ')}`);
    this.name = 'MaskingConfigError';
    this.problems = problems;
  }
}

/** Masking could not complete (a worker died, a task failed): the caller fails closed. */
export class MaskingFailedError extends SluiceError {
  constructor(message: string, options?: { cause?: unknown }) {
    super(MaskingErrorCodes.FAILED, message, options);
    this.name = 'MaskingFailedError';
  }
}

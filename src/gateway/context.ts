import type { SecureContext } from 'node:tls';
import type { Logger } from '../log.js';
import type { Identity, TokenVerifier } from '../identity/types.js';
import type { PolicyConfig, TargetConfig } from '../config/types.js';
import type { CancelRegistry } from './cancel-registry.js';
import type { PostgresUpstream } from '../config/types.js';

/**
 * What the gateway hands each protocol front end: everything a session needs
 * that is not protocol-specific. Protocol modules decide nothing about who
 * may do what; they ask `admit` and obey.
 */
export interface GatewayContext {
  logger: Logger;
  verifier: TokenVerifier;
  /** Policies that let this identity reach this target; empty means refused. */
  admit(identity: Identity, target: string): PolicyConfig[];
  /** Client-facing TLS (configured cert or the dev cert). */
  secureContext: SecureContext;
  /** PostgreSQL cancel keys: gateway key -> the session's upstream and its real key. */
  pgCancels: CancelRegistry<PgCancelTarget>;
  /** Every live session, for shutdown and the session count. */
  sessions: Set<SessionHandle>;
}

export interface PgCancelTarget {
  upstream: PostgresUpstream;
  key: { processId: number; secretKey: number };
  connectTimeoutMs: number;
}

/** The part of a session the gateway itself needs: a way to end it. */
export interface SessionHandle {
  readonly id: string;
  readonly target: TargetConfig;
  /** Ends the session: the client gets `reason` in its protocol's terms where the protocol allows. */
  shutdown(reason: string): void;
}

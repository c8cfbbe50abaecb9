import type { SecureContext } from 'node:tls';
import type { Logger } from '../log.js';
import type { Identity, TokenVerifier } from '../identity/types.js';
import type { TargetConfig } from '../config/types.js';
import type { CancelRegistry } from './cancel-registry.js';
import type { PostgresUpstream } from '../config/types.js';
import type { SessionPolicy } from '../policy/engine.js';
import type { ApprovalManager } from '../policy/approvals.js';
import type { AuditEvent, AuditVerdict } from '../store/types.js';
import type { SessionRecorder } from '../recording/tap.js';
import type { MaskingRegistry } from '../../masking/session-masker.js';

/**
 * What the gateway hands each protocol front end: everything a session needs
 * that is not protocol-specific. Protocol modules decide nothing about who
 * may do what; they ask `admit` and obey.
 */
export interface GatewayContext {
  logger: Logger;
  verifier: TokenVerifier;
  /** The policy this identity's session on this target is bound to; undefined means refused. */
  admit(identity: Identity, target: string): SessionPolicy | undefined;
  /** Where audit events go (batched into the store off the hot path); absent in tests that need none. */
  audit?: { write(event: AuditEvent): void };
  /** Redis: one audit event per allowed command instead of per-second counts. */
  auditEachAllowed?: boolean;
  /** The just-in-time approval flow; absent means an `approve` rule fails closed (denies). */
  approvals?: ApprovalManager;
  /** Counters for /metrics; absent in tests that need none. */
  metrics?: GatewayMetrics;
  /** Client-facing TLS (configured cert or the dev cert). */
  secureContext: SecureContext;
  /** PostgreSQL cancel keys: gateway key -> the session's upstream and its real key. */
  pgCancels: CancelRegistry<PgCancelTarget>;
  /** Every live session, for shutdown and the session count. */
  sessions: Set<SessionHandle>;
  /** Masking engines compiled per policy at start (and their worker pools); absent = no masking. */
  masking?: MaskingRegistry;
  /** Session recording (src/recording/tap.ts); absent = not recorded (`recording.enabled: false`, unit tests). */
  recording?: SessionRecorder;
}

export interface PgCancelTarget {
  upstream: PostgresUpstream;
  key: { processId: number; secretKey: number };
  connectTimeoutMs: number;
}

/** The counters sessions feed. Implemented by src/api/metrics.ts. */
export interface GatewayMetrics {
  sessionStarted(target: string, protocol: string): void;
  sessionEnded(target: string, protocol: string): void;
  statement(target: string, verdict: AuditVerdict): void;
  bytes(target: string, direction: 'client_to_upstream' | 'upstream_to_client', n: number): void;
}

/** The part of a session the gateway itself needs: a way to end it. */
export interface SessionHandle {
  readonly id: string;
  readonly target: TargetConfig;
  /** Ends the session: the client gets `reason` in its protocol's terms where the protocol allows. */
  shutdown(reason: string): void;
}

import { createServer, type Server, type Socket, type AddressInfo } from 'node:net';
import type { Config, TargetConfig } from '../config/types.js';
import type { Logger } from '../log.js';
import type { TokenVerifier } from '../identity/types.js';
import { DevIssuer } from '../identity/dev-issuer.js';
import { createTokenVerifier } from '../identity/verifier.js';
import { bindPolicy } from '../policy/engine.js';
import { ApprovalManager } from '../policy/approvals.js';
import { openSqliteStore } from '../store/sqlite.js';
import { AuditWriter } from '../store/audit-writer.js';
import { AuditRetention } from '../store/audit-retention.js';
import type { Store } from '../store/types.js';
import { unpinnedRoles } from '../api/auth.js';
import { Metrics } from '../api/metrics.js';
import { startApi, type RunningApi } from '../api/server.js';
import { loadRecordingPublicKeys } from '../recording/keys.js';
import { initClassifier } from '../../protocols/postgres/classify.js';
import { CancelRegistry } from './cancel-registry.js';
import type { GatewayContext, PgCancelTarget, SessionHandle } from './context.js';
import { adoptWithDirectReads } from './direct-reads.js';
import { createServerSecureContext, loadServerTls, type ServerTlsMaterial } from './tls.js';
import { PostgresSession } from '../../protocols/postgres/session.js';
import { RedisSession } from '../../protocols/redis/session.js';
import { errorResponse, sqlstate } from '../../protocols/postgres/messages.js';
import { DEFAULT_RECORDING } from '../config/defaults.js';
import { openRecordingKey } from '../recording/keys.js';
import { SessionRecorder, DEFAULT_MAX_HELD_BYTES } from '../recording/tap.js';
import { markCleanStop, recoverAfterAbruptStop } from '../recording/recover.js';
import { MaskingRegistry } from '../../masking/session-masker.js';
import { pinTickObjectShape } from './tick-shape.js';
import { openFingerprintKey, useFingerprintKey } from '../policy/fingerprint-key.js';
import { ErrorCodes } from '../errors.js';

export interface GatewayOptions {
  logger: Logger;
  /** Replaces the verifier built from config (tests use this to count verifications). */
  verifier?: TokenVerifier;
}

export interface GatewayServices {
  store: Store;
  audit: AuditWriter;
  /** audit.retention's purges (nothing runs when it is 0). */
  auditRetention: AuditRetention;
  approvals: ApprovalManager;
  metrics: Metrics;
}

interface Listener {
  target: TargetConfig;
  server: Server;
  /** Connections accepted that have not yet authenticated. */
  unauthenticated: number;
}

/**
 * The running gateway: one TCP listener per target, each connection handed
 * to its protocol's session, and the shared state sessions need (verifier,
 * policies, TLS, cancel keys). A session is the unit of failure: nothing a
 * connection does reaches past its own session object.
 */
export class Gateway {
  readonly #listeners = new Map<string, Listener>();
  /** Every accepted socket until it closes, so shutdown can end stragglers that never finished a handshake. */
  readonly #sockets = new Set<Socket>();
  readonly #ctx: GatewayContext;
  readonly tls: ServerTlsMaterial;
  readonly devIssuer: DevIssuer | undefined;
  /** identity.maxTokenBytes: Redis sessions size their pre-auth limits to fit a token. */
  readonly #maxTokenBytes: number;
  /** Set once this gateway has marked the state directory as in use (recover.ts); a clean close unmarks it. */
  #markedStateDir: string | undefined;

  /** The audit and approval machinery, shared with the HTTP API. */
  readonly services: GatewayServices;

  private constructor(
    ctx: GatewayContext,
    tls: ServerTlsMaterial,
    devIssuer: DevIssuer | undefined,
    maxTokenBytes: number,
    services: GatewayServices,
  ) {
    this.#ctx = ctx;
    this.#maxTokenBytes = maxTokenBytes;
    this.tls = tls;
    this.devIssuer = devIssuer;
    this.services = services;
  }

  /** The HTTP API, when `api.listen` is configured. */
  api: RunningApi | undefined;

  get context(): GatewayContext {
    return this.#ctx;
  }

  /** What /healthz reports: listeners up, and the audit trail reaching the store. */
  health(): { ok: boolean; checks: Record<string, string> } {
    const listening = [...this.#listeners.values()].every((l) => l.server.listening);
    const audit = this.services.audit.stats;
    const recorder = this.#ctx.recording?.health();
    const checks = {
      listeners: listening ? 'ok' : 'not listening',
      audit: audit.failedBatches > 0 && audit.queued > 0 ? `failing (${audit.queued} events queued)` : 'ok',
      // Unhealthy = new sessions are refused until a recording write succeeds again.
      // The errno code only (ENOSPC, EACCES): the message names paths under the state dir, and
      // /healthz answers anyone. The gateway log has the whole error.
      recording: !recorder ? 'disabled' : recorder.ok ? 'ok' : `failing, new sessions refused (${/^E[A-Z0-9]+\b/.exec(recorder.lastError ?? '')?.[0] ?? 'write failed'})`,
      sessions: String(this.#ctx.sessions.size),
    };
    return { ok: listening && checks.audit === 'ok' && recorder?.ok !== false, checks };
  }

  static async start(config: Config, options: GatewayOptions): Promise<Gateway> {
    const logger = options.logger;
    // Before any traffic: keeps process.nextTick on V8's fast path (tick-shape.ts).
    if (!pinTickObjectShape()) logger.debug('nextTick object shape not recognised; not pinned');
    const devIssuer = config.identity.devIssuer ? await DevIssuer.open(config.stateDir) : undefined;
    const tls = await loadServerTls(config);
    // The SQL parser is WASM: load it before the first statement arrives.
    await initClassifier();
    // Approval windows outlive the process (the store keeps them): so must the key of their fingerprints.
    // Before the store opens: a key refused here leaves nothing open behind.
    useFingerprintKey(await openFingerprintKey(config.stateDir));
    const store = openSqliteStore(config.stateDir, { logger });
    const audit = new AuditWriter(store, { logger });
    const auditRetention = new AuditRetention(store, config.audit?.retentionMs ?? 0, logger);
    const metrics = new Metrics();
    const approvals = new ApprovalManager({
      store,
      timeoutMs: config.approvals.timeoutMs,
      maxPendingPerSubject: config.approvals.maxPendingPerSubject,
      maxRequestsPerMinute: config.approvals.maxRequestsPerMinute,
      logger,
      ...(config.approvals.webhook ? { webhook: config.approvals.webhook } : {}),
      onUndecided: (status) => metrics.approvalEnded(status),
    });
    const ctx: GatewayContext = {
      logger,
      metrics,
      verifier: options.verifier ?? createTokenVerifier(config.identity, { devIssuer, logger }),
      admit: (identity, target) => bindPolicy(identity, target, config.policies),
      secureContext: createServerSecureContext(tls),
      pgCancels: new CancelRegistry<PgCancelTarget>(),
      sessions: new Set<SessionHandle>(),
      // audit.enabled: false leaves the writer idle; sessions then get no audit sink.
      ...(config.audit?.enabled === false ? {} : { audit }),
      auditEachAllowed: config.audit?.redisAllowed === 'each',
      approvals,
    };
    // Compiled once per policy here, not per session (the loader already refused bad rules).
    const masking = new MaskingRegistry(config);
    if (masking.size > 0) ctx.masking = masking;
    const gateway = new Gateway(ctx, tls, devIssuer, config.identity.maxTokenBytes, { store, audit, auditRetention, approvals, metrics });
    auditRetention.start();
    try {
      const recording = config.recording ?? DEFAULT_RECORDING;
      if (recording.enabled) {
        // Recording from the first accepted byte: the key must exist before any listener does.
        const key = await openRecordingKey(config.stateDir);
        ctx.recording = new SessionRecorder({
          stateDir: config.stateDir,
          settings: { ...recording },
          key,
          store,
          logger,
          // The PostgreSQL handshake cap (64 KiB) + the largest token + pipelined chunks.
          maxHeldBytes: DEFAULT_MAX_HELD_BYTES + config.identity.maxTokenBytes,
          metrics,
        });
        ctx.recording.startRetention();
      }
      // Before any listener opens, so no session is live: rows a crash left unwritten or unended.
      try {
        await recoverAfterAbruptStop(config.stateDir, store, await loadRecordingPublicKeys(config.stateDir), logger);
        gateway.#markedStateDir = config.stateDir;
      } catch (err) {
        logger.error({ reason: err instanceof Error ? err.message : String(err) }, 'sessions index could not be finished after an abrupt stop');
      }
      for (const target of config.targets) await gateway.#listen(target);
      if (config.api) {
        const unpinned = unpinnedRoles(config.api.roles, (config.identity.devIssuer ? 1 : 0) + config.identity.issuers.length);
        if (unpinned.length > 0) {
          logger.warn(
            { entries: unpinned },
            'api.roles has entries more than one trusted issuer can satisfy (a bare group name, or a match without a single issuer): a token from any of them holds the role; pin each with { groups: [...], issuer: <one issuer> } (docs/api.md)',
          );
        }
        gateway.api = await startApi({
          config: config.api,
          verifier: ctx.verifier,
          store,
          approvals,
          metrics,
          logger,
          health: () => gateway.health(),
          sessions: store,
          stateDir: config.stateDir,
          recordingFsync: config.recording?.fsync ?? 'close',
          recordingKeys: () => loadRecordingPublicKeys(config.stateDir),
        });
      }
    } catch (err) {
      await gateway.close();
      throw err;
    }
    return gateway;
  }

  /** The address a target's listener is bound to (the real port when the config said 0). */
  address(target: string): { host: string; port: number } {
    const listener = this.#listeners.get(target);
    if (!listener) throw new Error(`no listener for target ${target}`);
    const address = listener.server.address() as AddressInfo;
    return { host: address.address, port: address.port };
  }

  get sessionCount(): number {
    return this.#ctx.sessions.size;
  }

  /** Client connections still open, in a session or not (destroyed at shutdown). */
  get connectionCount(): number {
    return this.#sockets.size;
  }

  /**
   * Stops accepting, ends every session with a native "shutting down" error,
   * and gives connections `graceMs` to finish before destroying them.
   */
  async close(reason = 'the gateway is shutting down', graceMs = 5_000): Promise<void> {
    const closing = Promise.all(
      [...this.#listeners.values()].map((l) => new Promise<void>((resolve) => l.server.close(() => resolve()))),
    );
    for (const session of [...this.#ctx.sessions]) session.shutdown(reason);
    this.#listeners.clear();
    let timer: NodeJS.Timeout | undefined;
    const grace = new Promise<void>((resolve) => (timer = setTimeout(resolve, graceMs)));
    await Promise.race([closing, grace]);
    clearTimeout(timer);
    for (const socket of this.#sockets) socket.destroy();
    await closing;
    // Every recording gets its footer and its index row before the store closes.
    await this.#ctx.recording?.close(reason);
    await this.api?.close();
    // Pending approvals end as cancelled; every queued audit event reaches the store.
    this.services.approvals.close();
    await this.#ctx.masking?.close();
    await this.services.audit.close();
    await this.services.auditRetention.stop();
    this.services.store.close();
    // Everything is down: the next start has nothing to finish.
    if (this.#markedStateDir !== undefined) await markCleanStop(this.#markedStateDir);
  }

  async #listen(target: TargetConfig): Promise<void> {
    const listener: Listener = {
      target,
      server: createServer({ allowHalfOpen: true, pauseOnConnect: true }, (socket) => this.#accept(listener, socket)),
      unauthenticated: 0,
    };
    await new Promise<void>((resolve, reject) => {
      listener.server.once('error', reject);
      listener.server.listen(target.listen.port, target.listen.host, () => {
        listener.server.off('error', reject);
        resolve();
      });
    });
    listener.server.on('error', (err) => this.#ctx.logger.error({ target: target.name, err: err.message }, 'listener error'));
    this.#listeners.set(target.name, listener);
    const { port } = this.address(target.name);
    this.#ctx.logger.info({ target: target.name, protocol: target.protocol, listen: `${target.listen.host}:${port}` }, 'listening');
  }

  #accept(listener: Listener, accepted: Socket): void {
    // Reads go to the session without the stream machinery (direct-reads.ts).
    const socket = adoptWithDirectReads(accepted);
    // A socket error before a session owns the socket must not become an uncaught exception.
    socket.on('error', () => socket.destroy());
    this.#sockets.add(socket);
    socket.once('close', () => this.#sockets.delete(socket));
    const { target } = listener;
    if (listener.unauthenticated >= target.limits.maxPreAuthConnections) {
      this.#ctx.logger.warn({ code: ErrorCodes.TOO_MANY_UNAUTHENTICATED, target: target.name, client: socket.remoteAddress }, 'too many unauthenticated connections; refusing');
      this.#refuseBusy(target, socket);
      return;
    }
    listener.unauthenticated++;
    let released = false;
    const preAuth = {
      release: () => {
        if (!released) {
          released = true;
          listener.unauthenticated--;
        }
      },
    };
    switch (target.protocol) {
      case 'postgres':
        void new PostgresSession(socket, target, this.#ctx, preAuth).run();
        break;
      case 'redis':
        // A `tls: true` target speaks TLS from the first byte; the session wraps the socket.
        void new RedisSession(socket, target, this.#ctx, preAuth, { maxTokenBytes: this.#maxTokenBytes }).run();
        break;
    }
  }

  #refuseBusy(target: TargetConfig, socket: Socket): void {
    setTimeout(() => socket.destroy(), 2_000).unref();
    const message = `sluice: too many connections are authenticating on target "${target.name}"; try again shortly`;
    if (target.protocol === 'postgres') {
      socket.end(errorResponse({ severity: 'FATAL', code: sqlstate.TOO_MANY_CONNECTIONS, message }));
    } else {
      socket.end(`-ERR ${message}\r\n`);
    }
  }
}

import { TLSSocket } from 'node:tls';
import type { Socket } from 'node:net';
import type { PostgresTarget } from '../../src/config/types.js';
import type { GatewayContext, SessionHandle } from '../../src/gateway/context.js';
import type { Identity } from '../../src/identity/types.js';
import { ErrorCodes, SluiceError, isSluiceError } from '../../src/errors.js';
import { isLoopbackConnection, newSessionId } from '../../src/gateway/net.js';
import { endAtTokenExpiry, tokenExpiredMessage } from '../../src/gateway/token-expiry.js';
import { serverTlsSocket } from '../../src/gateway/tls.js';
import type { Logger } from '../../src/log.js';
import { PgFramer, PgProtocolError } from './framer.js';
import { HandshakeReader, PeerClosed, type WireMessage } from './handshake-reader.js';
import { loginRecorded, type SessionRecording } from '../../src/recording/tap.js';
import { scrubPgPasswordMessage } from '../../src/recording/scrub.js';
import {
  Frontend,
  authenticationCleartextPassword,
  authenticationOk,
  backendKeyData,
  errorResponse,
  negotiateProtocolVersion,
  parsePasswordMessage,
  parseStartupPacket,
  readyForQuery,
  sqlstate,
  type TransactionStatus,
} from './messages.js';
import { PgRelay } from './relay.js';
import { PgResultMasker } from './result-masker.js';
import { PgStatementGate } from './statement-gate.js';
import { parameterStatusValue, sqlDecoder } from './encoding.js';
import type { SessionPolicy } from '../../src/policy/engine.js';
import type { AuditVerdict } from '../../src/store/types.js';
import { StartupParameterRefused, vetStartupParameters, type VettedStartup } from './startup-params.js';
import { connectUpstream, queryUpstream, sendCancelRequest, type UpstreamSession } from './upstream.js';
import { ColumnOrigins, catalogQuery } from './column-origins.js';
import type { MaskingEngine } from '../../masking/engine.js';
import type { PolicyMasking } from '../../masking/session-masker.js';

/**
 * The client side of one PostgreSQL connection, from accept to relay.
 *
 *   SSLRequest      -> 'S' + TLS handshake   (GSSENCRequest -> 'N')
 *   CancelRequest   -> mapped through the cancel registry, then close
 *   StartupMessage  -> parameters vetted, transport checked
 *                   <- AuthenticationCleartextPassword
 *   PasswordMessage -> the token: verified, subject admitted to this target
 *                      (no upstream connection is opened before both pass)
 *   upstream connect + auth with the stored credential
 *                   <- AuthenticationOk, ParameterStatus*, BackendKeyData
 *                      (the gateway's key, not the server's), ReadyForQuery
 *   relay
 *
 * Every refusal is a FATAL ErrorResponse with a SQLSTATE a driver
 * understands and a message a person can act on.
 * https://www.postgresql.org/docs/current/protocol-flow.html#PROTOCOL-FLOW-START-UP
 */

/** Largest message accepted before authentication: the startup phase is tiny, and a token is capped well below this (an oversized token still gets a 28P01 from the verifier). */
const HANDSHAKE_MAX_MESSAGE = 64 * 1024;

export interface PreAuthGate {
  /** Called exactly once when the session leaves the unauthenticated state (admitted or closed). */
  release(): void;
}

export class PostgresSession implements SessionHandle {
  readonly id = newSessionId();
  readonly #log: Logger;
  #socket: Socket;
  #reader: HandshakeReader;
  #relay: PgRelay | undefined;
  /** Cancels the end at the token's expiry (limits.end_at_token_expiry). */
  #expiry: (() => void) | undefined;
  #upstream: UpstreamSession | undefined;
  #identity: Identity | undefined;
  #cancelKey: { processId: number; secretKey: number } | undefined;
  #closed = false;
  #preAuthTimer: NodeJS.Timeout | undefined;
  #preAuthReleased = false;
  /** The client-edge recording (src/recording/tap.ts); absent when recording is off. */
  #recording: SessionRecording | undefined;
  /** Client bytes of every handshake message read so far: the next message's absolute offset. */
  #consumed = 0;

  constructor(
    socket: Socket,
    readonly target: PostgresTarget,
    private readonly ctx: GatewayContext,
    private readonly preAuth: PreAuthGate,
  ) {
    this.#socket = socket;
    this.#log = ctx.logger.child({ session: this.id, target: target.name, client: `${socket.remoteAddress}:${socket.remotePort}` });
    this.#reader = new HandshakeReader(new PgFramer({ maxMessageBytes: HANDSHAKE_MAX_MESSAGE, startup: true, inspect: () => true }));
  }

  /** Runs the session to its end; never rejects. */
  async run(): Promise<void> {
    this.ctx.sessions.add(this);
    this.#preAuthTimer = setTimeout(() => {
      this.#refuse(
        new SluiceError(ErrorCodes.PRE_AUTH_TIMEOUT, `authentication not completed within ${this.target.limits.preAuthTimeoutMs} ms`),
      );
    }, this.target.limits.preAuthTimeoutMs);
    this.#preAuthTimer.unref();
    this.#socket.setNoDelay(true);
    this.#socket.on('close', () => this.#closedBeforeRelay());
    this.#recording = this.ctx.recording?.begin(this.#socket, {
      sessionId: this.id,
      target: this.target.name,
      protocol: 'postgres',
      clientAddress: `${this.#socket.remoteAddress}:${this.#socket.remotePort}`,
    });
    this.#recording?.onFailure((err) => this.#recordingFailed(err));
    this.#recording?.onBacklog((behind) => this.#relay?.holdForRecording(behind));
    this.#reader.attach(this.#socket);
    try {
      await this.#handshake();
    } catch (err) {
      this.#refuse(err);
    }
  }

  shutdown(reason: string): void {
    const error = errorResponse({ severity: 'FATAL', code: sqlstate.ADMIN_SHUTDOWN, message: `sluice: ${reason}` });
    if (this.#relay) this.#relay.shutdown(reason, error);
    else this.#refuse(new SluiceError(ErrorCodes.PROTOCOL_VIOLATION, reason), error);
  }

  async #handshake(): Promise<void> {
    const startup = await this.#readStartup();
    if (!startup) return;
    const vetted = vetStartupParameters(startup.params);
    const preamble: Buffer[] = [];
    if (startup.minorVersion > 0 || vetted.unrecognizedProtocolOptions.length > 0) {
      // We speak 3.0; tell a newer client so, as PostgreSQL itself does.
      preamble.push(negotiateProtocolVersion(0, vetted.unrecognizedProtocolOptions));
    }
    this.#requireSafeTransport();

    // Ask for the token. Cleartext is safe here: the transport is TLS or loopback.
    preamble.push(authenticationCleartextPassword());
    this.#socket.write(preamble.length === 1 ? preamble[0]! : Buffer.concat(preamble));
    this.#reader.expectNextType(Frontend.PasswordMessage, 'a PasswordMessage carrying the token');
    const password = await this.#next();
    if (password.type !== Frontend.PasswordMessage) {
      throw new PgProtocolError(ErrorCodes.PROTOCOL_VIOLATION, `expected a PasswordMessage carrying the token, got message type ${describeType(password.type)}`, 0);
    }
    // No client sends another `p` message after the one carrying the token (the protocol has no
    // place for one); PostgreSQL ends a session for it. Its body may be a credential all the same:
    // refused on its header, neither sent upstream nor recorded (the recording stops before it).
    this.#reader.onRefused = (err) => this.#recording?.tap.cutClient(err.offset);
    this.#reader.refuse(Frontend.PasswordMessage, 'a PasswordMessage after the one carrying the token', this.#consumed);
    // One pipelined behind it: refused now, before the token is even checked.
    if (this.#reader.failure) throw this.#reader.failure;
    const token = parsePasswordMessage(password.bytes);
    const identity = await this.ctx.verifier.verify(token);
    // A refused message that came while the token was checked: no upstream login for it.
    if (this.#reader.failure) throw this.#reader.failure;
    // Closed while the token was checked (the client gone, the pre-auth deadline): no upstream login either.
    if (this.#closed) return;
    this.#identity = identity;
    this.#recording?.identified(identity);
    const log = this.#log.child({ subject: identity.subject, tokenId: identity.tokenId });
    const policy = this.ctx.admit(identity, this.target.name);
    if (!policy) {
      throw new SluiceError(ErrorCodes.NOT_AUTHORIZED, `not authorized for target "${this.target.name}"`);
    }
    const login = async (): Promise<UpstreamSession> => {
      const u = await connectUpstream(this.target.upstream, vetted.forward, {
        connectTimeoutMs: this.target.limits.upstreamConnectTimeoutMs,
        logger: log,
      });
      // Logged in, the socket has no 'error' listener of its own until the relay attaches one, and
      // the login may finish before the recording's file exists (loginRecorded waits for both):
      // an error then (a reset, a TLS alert) must not be an unhandled 'error' event, which ends
      // the process. The socket is found destroyed below.
      u.socket.on('error', () => undefined);
      return u;
    };
    // No recording, no session: refused (57P03) if its file cannot be created, or while the
    // recorder is unhealthy. The file is created while the upstream login runs.
    const upstream = await loginRecorded(this.#recording, identity, () => this.#clearPreAuth(), login, (u) => u.socket.destroy());
    if (this.#closed) {
      upstream.socket.destroy();
      return;
    }
    this.#upstream = upstream;
    if (upstream.socket.destroyed) {
      throw new SluiceError(ErrorCodes.UPSTREAM_CONNECT_FAILED, 'the upstream closed the connection while the session was being admitted');
    }
    // Sluice parses SQL as PostgreSQL does by default; a server that reads
    // backslashes in '...' as escapes would see different statements.
    if (parameterStatusValue(upstream.startupReply, 'standard_conforming_strings') === 'off') {
      upstream.socket.destroy();
      throw new SluiceError(
        ErrorCodes.UPSTREAM_PROTOCOL,
        'the upstream runs with standard_conforming_strings=off; sluice requires it on (the default) to read SQL as the server does',
      );
    }
    // Column rules judge columns by their table of origin: read the catalogue
    // snapshot now, on this connection, before the client's first byte.
    const masking = this.ctx.masking?.forPolicy(policy.name);
    const origins = masking?.engine.hasColumnRules ? await this.#columnOrigins(upstream, masking.engine, log) : undefined;
    if (this.#closed) return;
    this.#startRelay(upstream, vetted, log, policy, masking, origins);
  }

  /**
   * The column-origin snapshot. A server that refuses the catalogue query
   * refuses the session: matching by name alone would let an alias
   * (`SELECT password_hash AS p`) escape every column rule. Fail closed.
   */
  async #columnOrigins(upstream: UpstreamSession, engine: MaskingEngine, log: Logger): Promise<ColumnOrigins> {
    // Names come back in the client's encoding: read in any other, a non-ASCII one would match no rule.
    const decode = sqlDecoder(parameterStatusValue(upstream.startupReply, 'client_encoding'));
    const result = await queryUpstream(upstream, this.target.upstream, catalogQuery(engine), { timeoutMs: this.target.limits.upstreamConnectTimeoutMs, decode });
    if (result.error !== undefined) {
      throw new SluiceError(
        ErrorCodes.MASKING_FAILED,
        `the upstream refused the catalogue query that column masking rules need (${result.error}); grant the target's user SELECT on pg_catalog.pg_class, pg_namespace and pg_attribute`,
      );
    }
    const origins = ColumnOrigins.fromRows(result);
    log.debug({ tables: origins.size }, 'column origins read for masking');
    return origins;
  }

  /** Reads startup-phase packets until a StartupMessage; answers SSLRequest, GSSENCRequest and CancelRequest on the way. Returns undefined when the connection was a cancel. */
  async #readStartup(): Promise<{ minorVersion: number; params: Map<string, string> } | undefined> {
    for (;;) {
      const message = await this.#next();
      const packet = parseStartupPacket(message.bytes);
      switch (packet.kind) {
        case 'ssl':
          await this.#startTls();
          continue;
        case 'gssenc':
          this.#requireNothingPipelined('GSSENCRequest');
          this.#socket.write('N');
          this.#reader.framer.expectStartup();
          continue;
        case 'cancel':
          await this.#cancel(packet);
          return undefined;
        case 'startup':
          if (packet.majorVersion !== 3) {
            throw new SluiceError(
              ErrorCodes.PROTOCOL_VIOLATION,
              `unsupported frontend protocol ${packet.majorVersion}.${packet.minorVersion}: sluice supports 3.0`,
            );
          }
          return { minorVersion: packet.minorVersion, params: packet.params };
      }
    }
  }

  async #startTls(): Promise<void> {
    if (this.#socket instanceof TLSSocket) {
      throw new PgProtocolError(ErrorCodes.PROTOCOL_VIOLATION, 'SSLRequest received on a connection that already uses TLS', 0);
    }
    this.#requireNothingPipelined('SSLRequest');
    this.#reader.detach();
    this.#socket.write('S');
    // The recording keeps the cleartext: the plain socket up to 'S', then the TLS socket's plaintext.
    this.#recording?.tap.detach(this.#socket);
    // With an 'error' listener for its whole life: the handshake reader listens only while it
    // reads, and a write after it let go (a refusal, as the client resets the connection) fails.
    const tlsSocket = serverTlsSocket(this.#socket, this.ctx.secureContext);
    let settle!: (err?: Error) => void;
    const handshake = new Promise<void>((resolve, reject) => {
      settle = (err) => (err === undefined ? resolve() : reject(err));
    });
    const onSecure = (): void => settle();
    const onError = (err: Error): void => settle(err);
    const onClose = (): void => settle(new PeerClosed());
    tlsSocket.once('secure', onSecure);
    tlsSocket.once('error', onError);
    tlsSocket.once('close', onClose);
    try {
      await handshake;
    } finally {
      // Only ours: Node's own listeners on the socket (its TLS error and close handling) stay.
      tlsSocket.off('secure', onSecure);
      tlsSocket.off('error', onError);
      tlsSocket.off('close', onClose);
    }
    if (this.#closed) {
      // Refused while the handshake ran (the pre-auth deadline, a shutdown): the refusal went out
      // on the plain socket; nothing more is read or answered.
      tlsSocket.destroy();
      throw new PeerClosed();
    }
    tlsSocket.on('close', () => this.#closedBeforeRelay());
    this.#socket = tlsSocket;
    this.#recording?.tap.attach(tlsSocket);
    this.#reader.framer.expectStartup();
    this.#reader.attach(tlsSocket);
  }

  /**
   * After SSLRequest or GSSENCRequest the client must wait for our one-byte
   * answer. Bytes already sent after it would be read as cleartext and then
   * treated as if they came through TLS (CVE-2021-23214 in PostgreSQL,
   * CVE-2021-3935 in PgBouncer): refuse the connection instead.
   */
  #requireNothingPipelined(what: string): void {
    if (this.#reader.queued > 0 || !this.#reader.framer.atMessageBoundary || this.#reader.framer.bufferedBytes > 0) {
      throw new PgProtocolError(ErrorCodes.PROTOCOL_VIOLATION, `data received after ${what} before the server answered`, 0);
    }
  }

  #requireSafeTransport(): void {
    if (this.#socket instanceof TLSSocket) return;
    if (this.target.allowInsecureLoopback && isLoopbackConnection(this.#socket)) return;
    throw new SluiceError(
      ErrorCodes.INSECURE_TRANSPORT,
      `target "${this.target.name}" requires TLS: connect with sslmode=require (or sslmode=verify-full and the gateway CA)`,
    );
  }

  async #cancel(packet: { processId: number; secretKey: number }): Promise<void> {
    const entry = this.ctx.pgCancels.lookup(this.target.name, packet);
    // An unknown or stale key is dropped silently, as PostgreSQL does: the
    // protocol gives a cancel no answer, and a wrong guess learns nothing.
    if (entry) {
      this.#log.info({ gatewayPid: packet.processId }, 'forwarding cancel request');
      await sendCancelRequest(entry.upstream, entry.key, { connectTimeoutMs: entry.connectTimeoutMs }).catch((err: unknown) =>
        this.#log.warn({ err: errorText(err) }, 'cancel request could not be forwarded'),
      );
    } else {
      this.#log.info({ gatewayPid: packet.processId }, 'cancel request with an unknown key dropped');
    }
    this.#closed = true;
    this.#clearPreAuth();
    // Closed for good, as PostgreSQL closes a cancel connection: it no longer counts against the
    // pre-auth limits, so nothing it sends after may be read, held or wait for its FIN.
    this.#reader.detach();
    this.#socket.destroy();
    this.ctx.sessions.delete(this);
    void this.#recording?.end('cancel request');
  }

  #startRelay(
    upstream: UpstreamSession,
    vetted: VettedStartup,
    log: Logger,
    policy: SessionPolicy,
    masking: PolicyMasking | undefined,
    origins: ColumnOrigins | undefined,
  ): void {
    // The reader stopped (its queue's cap, a violation) while the login ran: what it queued is not
    // the whole stream, so no relay may start on it.
    if (this.#reader.failure) throw this.#reader.failure;
    const key = this.ctx.pgCancels.register(this.target.name, {
      upstream: this.target.upstream,
      key: upstream.backendKey,
      connectTimeoutMs: this.target.limits.upstreamConnectTimeoutMs,
    });
    this.#cancelKey = key;
    let relay: PgRelay | undefined;
    const identity = this.#identity!;
    const metrics = this.ctx.metrics;
    const recording = this.#recording;
    const clientEncoding = parameterStatusValue(upstream.startupReply, 'client_encoding');
    // SQL text, and the column names of the server's RowDescriptions, are in the client's encoding.
    const decode = sqlDecoder(clientEncoding);
    // Statements are judged (and the gate is in front) unless the policy allows everything and nothing is audited.
    const judging = policy.judges || Boolean(this.ctx.audit);
    const gate = new PgStatementGate({
      sessionId: this.id,
      subject: identity.subject,
      issuer: identity.issuer,
      target: this.target.name,
      policy,
      logger: log,
      decode,
      ...(clientEncoding !== undefined ? { clientEncoding } : {}),
      // The result masker pairs the server's replies with the Describe and Execute they answer.
      ...(masking ? { onForward: (type: number, bytes: Buffer) => masker!.forwarded(type, bytes) } : {}),
      ...(this.ctx.audit ? { audit: this.ctx.audit } : {}),
      ...(this.ctx.approvals ? { approvals: this.ctx.approvals } : {}),
      // Each verdict feeds the metrics and the session's row in the sessions index.
      onVerdict: (verdict: AuditVerdict) => {
        metrics?.statement(this.target.name, verdict);
        recording?.countVerdict(verdict);
      },
    });
    // Masking (policies[].masking): everything the upstream sends back goes
    // through the masker, the startup reply included. Built after the gate:
    // each statement's per-rule counts go into its audit event.
    const masker = masking
      ? new PgResultMasker({
          masking,
          maxMessageBytes: this.target.limits.maxMessageBytes,
          onRefuse: (reason, error) => relay?.shutdown(reason, error),
          onStatementCounts: (counts) => gate.noteMasked(counts),
          decode,
          ...(origins ? { origins } : {}),
        })
      : undefined;
    const toClient = [
      authenticationOk(),
      masker ? masker.maskSync(upstream.startupReply) : upstream.startupReply,
      backendKeyData(key.processId, key.secretKey),
      readyForQuery(String.fromCharCode(upstream.transactionStatus) as TransactionStatus),
    ];
    if (upstream.leftover.length > 0) toClient.push(masker ? masker.maskSync(upstream.leftover) : upstream.leftover);
    this.#reader.detach();
    const clientFramer = this.#reader.framer;
    clientFramer.setMaxMessageBytes(this.target.limits.maxMessageBytes);
    metrics?.sessionStarted(this.target.name, 'postgres');
    const tap = this.#recording?.tap;
    relay = new PgRelay(
      this.#socket,
      upstream.socket,
      clientFramer,
      new PgFramer({ maxMessageBytes: UPSTREAM_MAX_MESSAGE, inspect: () => false }),
      {
        logger: log,
        idleTimeoutMs: this.target.limits.idleTimeoutMs,
        onClose: (reason) => this.#ended(reason),
        // When the policy allows everything and no audit trail is written,
        // statements need no inspecting: the relay frames and forwards.
        ...(judging ? { gate } : {}),
        // With no gate, the relay tells the masker what goes upstream instead.
        ...(masker && !judging ? { clientMessages: (type: number, bytes: Buffer) => masker.forwarded(type, bytes) } : {}),
        ...(masker ? { serverTransform: masker } : {}),
        // The relay hands the recording every client chunk it reads: no read observer on the socket.
        ...(tap ? { recordClient: tap } : {}),
      },
    );
    if (tap) tap.handOverReads();
    this.#relay = relay;
    if (this.#recording?.behind) relay.holdForRecording(true);
    log.info(
      {
        groups: this.#identity?.groups,
        issuer: this.#identity?.issuer,
        policy: policy.name,
        user: vetted.labels.user,
        database: vetted.labels.database,
        application: vetted.labels.applicationName,
        tls: this.#socket instanceof TLSSocket,
      },
      'session started',
    );
    relay.start(this.#reader.takeQueued(), [Buffer.concat(toClient)]);
    const expiresAt = this.#identity?.expiresAt;
    if (this.target.limits.endAtTokenExpiry && expiresAt !== undefined) {
      this.#expiry = endAtTokenExpiry(expiresAt, () =>
        relay.shutdown(
          'token expired',
          errorResponse({ severity: 'FATAL', code: sqlstate.INVALID_AUTHORIZATION_SPECIFICATION, message: `sluice: ${tokenExpiredMessage(expiresAt)}` }),
        ),
      );
    }
  }

  #ended(reason: string): void {
    this.#expiry?.();
    if (this.#cancelKey) this.ctx.pgCancels.unregister(this.#cancelKey);
    this.ctx.sessions.delete(this);
    const stats = this.#relay?.stats;
    const metrics = this.ctx.metrics;
    if (metrics) {
      metrics.sessionEnded(this.target.name, 'postgres');
      metrics.bytes(this.target.name, 'client_to_upstream', stats?.bytesFromClient ?? 0);
      metrics.bytes(this.target.name, 'upstream_to_client', stats?.bytesFromUpstream ?? 0);
    }
    this.#log.info({ reason, bytesFromClient: stats?.bytesFromClient, bytesFromUpstream: stats?.bytesFromUpstream }, 'session ended');
    void this.#recording?.end(reason);
  }

  /** The client went away before the relay started. */
  #closedBeforeRelay(): void {
    if (this.#relay) return;
    if (!this.#closed) this.#log.debug('client closed the connection during the handshake');
    this.#closed = true;
    this.#clearPreAuth();
    this.#upstream?.socket.destroy();
    this.ctx.sessions.delete(this);
    void this.#recording?.end('client closed the connection during the handshake');
  }

  /** Ends a session that never reached the relay, telling the client why in PostgreSQL's terms. */
  #refuse(err: unknown, override?: Buffer): void {
    if (this.#closed || this.#relay) return;
    this.#closed = true;
    this.#clearPreAuth();
    this.#upstream?.socket.destroy();
    this.ctx.sessions.delete(this);
    if (err instanceof PeerClosed) {
      this.#socket.destroy();
      void this.#recording?.end('client closed the connection during the handshake');
      return;
    }
    const refusal = override ?? this.#errorFor(err);
    // Nothing more is read: the slot is free already, and bytes the client streams in the grace
    // period before the destroy would otherwise queue up unbounded.
    this.#reader.detach();
    if (this.#socket.writable) this.#socket.end(refusal);
    // After the refusal was written, so the recording ends with it. The code, not the message: messages may name upstream details.
    void this.#recording?.end(`refused (${isSluiceError(err) ? err.code : err instanceof PgProtocolError ? 'protocol violation' : 'internal error'})`);
    setTimeout(() => this.#socket.destroy(), 2_000).unref();
  }

  #errorFor(err: unknown): Buffer {
    const fatal = (code: string, message: string, hint?: string): Buffer =>
      errorResponse({ severity: 'FATAL', code, message, ...(hint ? { hint } : {}) });
    if (err instanceof StartupParameterRefused) {
      this.#log.info({ parameter: err.parameter }, 'startup parameter refused');
      return fatal(sqlstate.INSUFFICIENT_PRIVILEGE, `sluice: ${err.message}`);
    }
    if (err instanceof PgProtocolError) {
      this.#log.warn({ reason: err.message }, 'protocol violation during the handshake');
      return fatal(sqlstate.PROTOCOL_VIOLATION, `sluice: protocol violation: ${err.message}`);
    }
    if (!isSluiceError(err)) {
      this.#log.error({ err }, 'unexpected failure during the handshake');
      return fatal(sqlstate.INTERNAL_ERROR, `sluice: internal error (correlation id ${this.id})`);
    }
    const code = err.code;
    if (code.startsWith('SLUICE_TOKEN_')) {
      this.#log.info({ code, reason: err.message }, 'token refused');
      return fatal(sqlstate.INVALID_PASSWORD, `sluice: token refused: ${err.message}`, 'present a fresh token from a trusted issuer as the password');
    }
    switch (code) {
      case ErrorCodes.JWKS_UNAVAILABLE:
        this.#log.warn({ reason: err.message }, 'token could not be checked');
        return fatal(sqlstate.CANNOT_CONNECT_NOW, `sluice: token could not be checked: ${err.message}`, 'try again shortly');
      case ErrorCodes.NOT_AUTHORIZED:
        this.#log.info({ subject: this.#identity?.subject, groups: this.#identity?.groups }, 'subject not authorized for target');
        return fatal(
          sqlstate.INVALID_AUTHORIZATION_SPECIFICATION,
          `sluice: ${err.message}`,
          `subject "${this.#identity?.subject ?? ''}" matches no policy for this target; ask an administrator to add one`,
        );
      case ErrorCodes.RECORDING_WRITE_FAILED:
      case ErrorCodes.RECORDING_SIZE_LIMIT:
        this.#log.error({ code, reason: err.message }, 'session refused: recording unavailable');
        return fatal(sqlstate.CANNOT_CONNECT_NOW, 'sluice: session recording is unavailable; new sessions are refused until it recovers');
      case ErrorCodes.INSECURE_TRANSPORT:
        this.#log.info('cleartext connection refused');
        return fatal(sqlstate.INVALID_AUTHORIZATION_SPECIFICATION, `sluice: ${err.message}`);
      case ErrorCodes.PRE_AUTH_TIMEOUT:
        this.#log.info('authentication timed out');
        return fatal(sqlstate.QUERY_CANCELED, `sluice: canceling authentication due to timeout (${err.message})`);
      case ErrorCodes.PROTOCOL_VIOLATION:
        this.#log.warn({ reason: err.message }, 'protocol violation during the handshake');
        return fatal(sqlstate.FEATURE_NOT_SUPPORTED, `sluice: ${err.message}`);
      case ErrorCodes.UPSTREAM_CONNECT_FAILED:
      case ErrorCodes.UPSTREAM_AUTH_FAILED:
      case ErrorCodes.UPSTREAM_TLS_FAILED:
      case ErrorCodes.UPSTREAM_PROTOCOL:
        // The detail names the service account and the server: log only.
        this.#log.error({ code, reason: err.message }, 'upstream connection failed');
        return fatal(
          sqlstate.CONNECTION_FAILURE,
          `sluice: could not connect to the upstream database (correlation id ${this.id})`,
          'the gateway log has the details under this correlation id',
        );
      case ErrorCodes.MASKING_FAILED:
        this.#log.error({ code, reason: err.message }, 'session refused: masking could not be prepared');
        return fatal(
          sqlstate.INTERNAL_ERROR,
          `sluice: masking could not be prepared for this session (correlation id ${this.id})`,
          'the gateway log has the details under this correlation id',
        );
      default:
        this.#log.error({ code, reason: err.message }, 'session refused');
        return fatal(sqlstate.INTERNAL_ERROR, `sluice: internal error (correlation id ${this.id})`);
    }
  }

  /**
   * The next handshake message. Messages are contiguous on the wire, so
   * their absolute client offsets (cleartext, across a TLS upgrade, as the
   * framer's streamOffset counts) are the running sum of their lengths: the
   * recording replaces a 'p' message (the token) with its scrubbed form and
   * may record everything else it has been told was parsed.
   */
  async #next(): Promise<WireMessage> {
    const message = await this.#reader.next();
    const start = this.#consumed;
    this.#consumed += message.bytes.length;
    if (message.type === Frontend.PasswordMessage) this.#recording?.redact(start, this.#consumed, scrubPgPasswordMessage(message.bytes));
    else this.#recording?.commit(this.#consumed);
    return message;
  }

  /** The recording cannot follow the session (write failure, size cap, pre-auth flood): end it, fail closed. */
  #recordingFailed(err: SluiceError): void {
    if (!this.#relay) {
      this.#refuse(err);
      return;
    }
    this.#log.error({ code: err.code, reason: err.message }, 'session recording failed; ending the session');
    const message =
      err.code === ErrorCodes.RECORDING_SIZE_LIMIT
        ? 'sluice: the session reached its recording size limit and is ended'
        : 'sluice: session recording failed; the session is ended';
    this.#relay.shutdown('session recording failed', errorResponse({ severity: 'FATAL', code: sqlstate.ADMIN_SHUTDOWN, message }));
  }

  #clearPreAuth(): void {
    if (this.#preAuthTimer) clearTimeout(this.#preAuthTimer);
    this.#preAuthTimer = undefined;
    if (!this.#preAuthReleased) {
      this.#preAuthReleased = true;
      this.preAuth.release();
    }
  }
}

/** Server-to-client messages can legitimately be large (a wide DataRow); PostgreSQL itself caps a message at 1 GiB. */
const UPSTREAM_MAX_MESSAGE = 1024 * 1024 * 1024 + 1024;

function describeType(type: number): string {
  return type > 32 && type < 127 ? `'${String.fromCharCode(type)}'` : String(type);
}

function errorText(err: unknown): string {
  return err instanceof Error ? err.message : String(err);
}

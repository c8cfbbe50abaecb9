import { TLSSocket } from 'node:tls';
import type { Socket } from 'node:net';
import type { RedisTarget } from '../../src/config/types.js';
import type { GatewayContext, SessionHandle } from '../../src/gateway/context.js';
import type { Identity } from '../../src/identity/types.js';
import { ErrorCodes, SluiceError, isSluiceError } from '../../src/errors.js';
import { isLoopbackConnection, newSessionId } from '../../src/gateway/net.js';
import { endAtTokenExpiry, tokenExpiredMessage } from '../../src/gateway/token-expiry.js';
import { serverTlsSocket } from '../../src/gateway/tls.js';
import type { Logger } from '../../src/log.js';
import { NOAUTH, parsePreAuth, tokenIs, type PreAuthCommand } from './commands.js';
import { OK, error, type RespVersion } from './replies.js';
import { RedisCommandGate } from './command-gate.js';
import type { AuditVerdict } from '../../src/store/types.js';
import { RedisRelay, type RelayRecording } from './relay.js';
import { RedisReplyMasker } from './reply-masker.js';
import { RespProtocolError, RespRequestFramer, UNAUTHENTICATED_REQUEST_LIMITS, type RequestSink } from './resp.js';
import { loginRecorded, type SessionRecording } from '../../src/recording/tap.js';
import { redisCredentialArgs, scrubRedisAuth } from '../../src/recording/scrub.js';
import { connectRedisUpstream, reauthCommands, type RedisUpstreamSession } from './upstream.js';

/**
 * The client side of one Redis connection, from accept to relay.
 *
 *   (TLS handshake when the target has `tls: true`)
 *   AUTH <token> | AUTH <label> <token> | HELLO 2|3 AUTH <label> <token> [SETNAME n]
 *        -> token verified, subject admitted to this target (no upstream
 *           connection before both pass), then the upstream is opened with
 *           the stored credential (upstream.ts)
 *        <- +OK, or the upstream's own HELLO reply
 *   anything else before that          <- -NOAUTH Authentication required.
 *   relay (relay.ts)
 *
 * Until authenticated, Redis' own pre-auth limits apply (10 arguments, short
 * bulks), with the bulk limit raised to fit the largest token the verifier
 * accepts, so an oversized token gets a WRONGPASS reason, not a protocol error.
 * A failed AUTH leaves the connection unauthenticated, as Redis does; the
 * third failure closes it.
 */

export interface PreAuthGate {
  /** Called exactly once when the session leaves the unauthenticated state (admitted or closed). */
  release(): void;
}

export interface RedisSessionOptions {
  /** identity.maxTokenBytes: the pre-auth bulk limit is raised to fit it. */
  maxTokenBytes: number;
}

/** Pre-auth bulk limit floor: Redis' 16 KiB is below what a verbose JWT can reach; 64 KiB is the largest max_token_bytes allowed. */
const PRE_AUTH_MIN_BULK = 64 * 1024 + 64;

/** Failed AUTH attempts before the connection is closed. */
const MAX_AUTH_FAILURES = 3;

type Login = Extract<PreAuthCommand, { kind: 'auth' } | { kind: 'hello' }>;

/** Bytes of replies to unauthenticated commands that may wait in the write queue before reading stops (see #holdWhileRepliesPile). */
const PRE_AUTH_WRITE_MAX = 64 * 1024;

export class RedisSession implements SessionHandle {
  readonly id = newSessionId();
  #log: Logger;
  #socket: Socket;
  #framer: RespRequestFramer;
  readonly #preAuthLimits;
  /** Bytes received after a login command, not framed yet (framed again with the right limits once the login is decided). */
  #stash: Buffer[] = [];
  #busy = false;
  #failures = 0;
  #relay: RedisRelay | undefined;
  /** Cancels the end at the token's expiry (limits.end_at_token_expiry). */
  #expiry: (() => void) | undefined;
  #identity: Identity | undefined;
  #closed = false;
  #preAuthTimer: NodeJS.Timeout | undefined;
  #preAuthReleased = false;
  /** Absolute end of the last command the pre-auth framer delivered. */
  #lastEnd = 0;
  /** Absolute client offset (cleartext) where the current pre-auth framer started: a failed login starts a new framer after it. */
  #framerBase = 0;
  /** The client-edge recording (src/recording/tap.ts); absent when recording is off. */
  #recording: SessionRecording | undefined;
  readonly #onData = (chunk: Buffer): void => this.#receive(chunk);

  constructor(
    socket: Socket,
    readonly target: RedisTarget,
    private readonly ctx: GatewayContext,
    private readonly preAuth: PreAuthGate,
    options: RedisSessionOptions,
  ) {
    this.#socket = socket;
    this.#log = ctx.logger.child({ session: this.id, target: target.name, client: `${socket.remoteAddress}:${socket.remotePort}` });
    // Room for a token well past the verifier's cap, so a somewhat oversized
    // token is refused with its reason rather than with a protocol error.
    const bulk = Math.max(PRE_AUTH_MIN_BULK, options.maxTokenBytes + 64);
    this.#preAuthLimits = { ...UNAUTHENTICATED_REQUEST_LIMITS, maxBulkBytes: bulk, maxCommandBytes: 10 * (bulk + 32) + 32 };
    this.#framer = new RespRequestFramer(this.#preAuthLimits);
  }

  /** Runs the session to its end; never rejects. */
  async run(): Promise<void> {
    this.ctx.sessions.add(this);
    this.#preAuthTimer = setTimeout(() => {
      this.#close(error(`sluice: authentication not completed within ${this.target.limits.preAuthTimeoutMs} ms`), 'authentication timed out');
    }, this.target.limits.preAuthTimeoutMs);
    this.#preAuthTimer.unref();
    this.#socket.setNoDelay(true);
    this.#socket.on('close', () => this.#closedBeforeRelay());
    try {
      if (this.target.tls) await this.#startTls();
      else if (!(this.target.allowInsecureLoopback && isLoopbackConnection(this.#socket))) {
        this.#close(
          error(`sluice: target "${this.target.name}" requires TLS: connect with --tls (redis-cli) or a TLS client`),
          'cleartext connection refused',
        );
        return;
      }
    } catch {
      this.#log.debug('TLS handshake failed');
      this.#closedBeforeRelay();
      this.#socket.destroy();
      return;
    }
    if (this.#closed) return;
    // Tapped from here: the TLS socket's cleartext when the target uses TLS.
    this.#recording = this.ctx.recording?.begin(this.#socket, {
      sessionId: this.id,
      target: this.target.name,
      protocol: 'redis',
      clientAddress: `${this.#socket.remoteAddress}:${this.#socket.remotePort}`,
    });
    this.#recording?.onFailure((err) => this.#recordingFailed(err));
    this.#recording?.onBacklog((behind) => this.#relay?.holdForRecording(behind));
    // Bytes after the login command are recorded once the relay has framed them (a credential among them is scrubbed).
    const maxBytes = this.target.limits.maxMessageBytes;
    this.#recording?.tap.framesClientAfterLogin((unframed) => scrubUnframed(unframed, maxBytes));
    this.#socket.on('data', this.#onData);
    this.#socket.resume();
  }

  shutdown(reason: string): void {
    if (this.#relay) this.#relay.shutdown(reason);
    else this.#close(error(`sluice: ${reason}`), reason);
  }

  async #startTls(): Promise<void> {
    const tlsSocket = serverTlsSocket(this.#socket, this.ctx.secureContext);
    this.#socket.resume();
    await new Promise<void>((resolve, reject) => {
      tlsSocket.once('secure', resolve);
      tlsSocket.once('close', () => reject(new Error('closed during the TLS handshake')));
    });
    tlsSocket.removeAllListeners('close');
    tlsSocket.on('close', () => this.#closedBeforeRelay());
    this.#socket = tlsSocket;
  }

  // --- before authentication -------------------------------------------------

  #receive(chunk: Buffer): void {
    if (this.#busy) {
      this.#stash.push(chunk);
      return;
    }
    let login: Login | undefined;
    let cut = -1;
    const base = this.#framer.offset;
    const sink: RequestSink = {
      command: (raw, args) => {
        if (login || this.#closed) return; // framed again after the login is decided
        const end = this.#framer.commandStart + raw.length;
        this.#lastEnd = end;
        const cmd = parsePreAuth(args);
        // The recording gets every AUTH and HELLO with its credentials replaced, refused ones too (a
        // malformed login may still carry the token); everything else framed so far may be recorded.
        if (tokenIs(args[0]!, 'auth') || tokenIs(args[0]!, 'hello')) {
          this.#recording?.redact(this.#framerBase + end - raw.length, this.#framerBase + end, scrubRedisAuth(args));
        } else this.#recording?.commit(this.#framerBase + end);
        switch (cmd.kind) {
          case 'auth':
          case 'hello':
            login = cmd;
            cut = end - base;
            return;
          case 'quit':
            this.#close(OK, 'client quit');
            return;
          case 'error':
            this.#socket.write(cmd.reply);
            return;
          case 'noauth':
            this.#socket.write(NOAUTH);
            return;
        }
      },
    };
    try {
      this.#framer.push(chunk, sink);
    } catch (err) {
      // Bytes after a login command are framed again later, with the limits that then apply.
      if (!login) {
        this.#protocolError(err);
        return;
      }
    }
    if (!login || this.#closed) {
      if (!this.#closed) this.#holdWhileRepliesPile();
      return;
    }
    if (cut < chunk.length) this.#stash.unshift(chunk.subarray(cut));
    this.#busy = true;
    this.#socket.pause();
    void this.#login(login);
  }

  /**
   * Before login every command gets a reply from Sluice (-NOAUTH, a syntax
   * error): a client that sends and never reads would grow what waits in the
   * socket's write queue, each reply longer than its command, for the whole
   * pre-auth timeout. Past PRE_AUTH_WRITE_MAX, reading stops until the
   * client has read its replies.
   */
  #holdWhileRepliesPile(): void {
    const socket = this.#socket;
    if (socket.writableLength <= PRE_AUTH_WRITE_MAX) return;
    socket.pause();
    socket.once('drain', () => {
      if (!this.#busy && !this.#closed && !this.#relay) socket.resume();
    });
  }

  #protocolError(err: unknown): void {
    const message = err instanceof RespProtocolError ? err.message : 'Protocol error: internal error';
    this.#log.warn({ offset: err instanceof RespProtocolError ? err.offset : undefined, reason: message }, 'protocol violation before authentication');
    this.#close(error(message), 'client protocol violation');
  }

  async #login(login: Login): Promise<void> {
    const token = login.kind === 'auth' ? login.token : login.auth!.token;
    const label = login.kind === 'auth' ? login.label : login.auth!.label;
    let identity: Identity;
    try {
      identity = await this.ctx.verifier.verify(token);
      this.#identity = identity;
      this.#recording?.identified(identity);
      // ctx.admit now returns the SessionPolicy the session is bound to (src/policy/engine.ts).
      if (!this.ctx.admit(identity, this.target.name)) {
        throw new SluiceError(ErrorCodes.NOT_AUTHORIZED, `not authorized for target "${this.target.name}"`);
      }
    } catch (err) {
      this.#loginFailed(err);
      return;
    }
    if (this.#closed) return;
    const policies = [this.ctx.admit(identity, this.target.name)!.name];
    const log = this.#log.child({ subject: identity.subject, tokenId: identity.tokenId });
    const proto: RespVersion = login.kind === 'hello' ? login.proto : 2;
    const upstreamLogin = (): Promise<RedisUpstreamSession> =>
      connectRedisUpstream(this.target.upstream, {
        connectTimeoutMs: this.target.limits.upstreamConnectTimeoutMs,
        ...(login.kind === 'hello' ? { hello: login.proto, ...(login.setName ? { setName: login.setName } : {}) } : {}),
      }).then((u) => {
        // Logged in, the socket has no 'error' listener of its own until the relay attaches one, and
        // the login may finish before the recording's file exists (loginRecorded waits for both):
        // an error then must not be an unhandled 'error' event, which ends the process.
        u.socket.on('error', () => undefined);
        return u;
      });
    let upstream: RedisUpstreamSession;
    try {
      // No recording, no session: refused if its file cannot be created, or while the recorder
      // is unhealthy. The file is created while the upstream login runs.
      upstream = await loginRecorded(this.#recording, identity, () => this.#clearPreAuth(), upstreamLogin, (u) => u.socket.destroy());
    } catch (err) {
      // Closed meanwhile (the pre-auth timeout, the client gone): the login was discarded.
      if (this.#closed) return;
      if (isSluiceError(err, ErrorCodes.RECORDING_WRITE_FAILED)) {
        this.#close(error('sluice: session recording is unavailable; new sessions are refused until it recovers'), 'session recording unavailable');
        return;
      }
      const code = isSluiceError(err) ? err.code : undefined;
      // The detail names the service account and the server: log only.
      log.error({ code, reason: err instanceof Error ? err.message : String(err) }, 'upstream connection failed');
      this.#close(error(`sluice: could not connect to the upstream (correlation id ${this.id})`), 'upstream connection failed');
      return;
    }
    if (this.#closed) {
      upstream.socket.destroy();
      return;
    }
    if (upstream.socket.destroyed) {
      log.error({ reason: 'the upstream closed the connection while the session was being admitted' }, 'upstream connection failed');
      this.#close(error(`sluice: could not connect to the upstream (correlation id ${this.id})`), 'upstream connection failed');
      return;
    }
    try {
      this.#startRelay(upstream.socket, login.kind === 'auth' ? OK : upstream.helloReply!, upstream.leftover, proto, log, policies, label);
    } catch (err) {
      // This runs in a promise nobody awaits (#receive starts the login): a throw here must end
      // this session, not go unhandled and end the process.
      upstream.socket.destroy();
      log.error({ err }, 'the session could not start');
      this.#close(error(`sluice: internal error (correlation id ${this.id})`), 'internal error');
    }
  }

  #loginFailed(err: unknown): void {
    if (this.#closed) return;
    this.#failures++;
    let reply: Buffer;
    if (isSluiceError(err) && err.code.startsWith('SLUICE_TOKEN_')) {
      this.#log.info({ code: err.code, reason: err.message }, 'token refused');
      reply = error(`sluice: token refused: ${err.message}`, 'WRONGPASS');
    } else if (isSluiceError(err, ErrorCodes.NOT_AUTHORIZED)) {
      this.#log.info({ subject: this.#identity?.subject, groups: this.#identity?.groups }, 'subject not authorized for target');
      reply = error(
        `sluice: not authorized for target "${this.target.name}": subject "${this.#identity?.subject ?? ''}" matches no policy for it; ask an administrator to add one`,
        'NOPERM',
      );
    } else if (isSluiceError(err, ErrorCodes.JWKS_UNAVAILABLE)) {
      this.#log.warn({ reason: err.message }, 'token could not be checked');
      reply = error(`sluice: token could not be checked: ${err.message}; try again shortly`);
    } else {
      this.#log.error({ err }, 'unexpected failure during authentication');
      reply = error(`sluice: internal error (correlation id ${this.id})`);
    }
    this.#identity = undefined;
    if (this.#failures >= MAX_AUTH_FAILURES) {
      this.#socket.write(reply);
      this.#close(error('sluice: too many failed authentication attempts'), 'too many failed authentication attempts');
      return;
    }
    this.#socket.write(reply);
    // Still unauthenticated: frame what came after the failed login with the pre-auth limits.
    this.#framer = new RespRequestFramer(this.#preAuthLimits);
    this.#framerBase += this.#lastEnd;
    this.#lastEnd = 0;
    this.#busy = false;
    const stash = this.#stash;
    this.#stash = [];
    for (const b of stash) {
      if (this.#busy || this.#closed) {
        if (!this.#closed) this.#stash.push(b);
        continue;
      }
      this.#receive(b);
    }
    if (!this.#busy && !this.#closed) this.#socket.resume();
  }

  #startRelay(upstream: Socket, reply: Buffer, leftover: Buffer, proto: RespVersion, log: Logger, policies: string[], label: string | undefined): void {
    this.#socket.off('data', this.#onData);
    const limits = this.target.limits;
    const identity = this.#identity!;
    const metrics = this.ctx.metrics;
    const recording = this.#recording;
    const policy = this.ctx.admit(identity, this.target.name)!;
    const gate = new RedisCommandGate({
      sessionId: this.id,
      subject: identity.subject,
      issuer: identity.issuer,
      target: this.target.name,
      policy,
      logger: log,
      auditEachAllowed: this.ctx.auditEachAllowed === true,
      ...(this.ctx.audit ? { audit: this.ctx.audit } : {}),
      ...(this.ctx.approvals ? { approvals: this.ctx.approvals } : {}),
      // Each verdict feeds the metrics and the session's row in the sessions index.
      onVerdict: (verdict: AuditVerdict) => {
        metrics?.statement(this.target.name, verdict);
        recording?.countVerdict(verdict);
      },
    });
    // Masking (policies[].masking): every reply string, the login reply and bytes read with it included.
    const masking = this.ctx.masking?.forPolicy(policies[0]!);
    const masker = masking ? new RedisReplyMasker({ masking, maxStringBytes: limits.maxMessageBytes }) : undefined;
    if (masker) {
      reply = masker.maskSync(reply);
      leftover = masker.maskSync(leftover);
    }
    metrics?.sessionStarted(this.target.name, 'redis');
    // Client bytes after the login command reach the recording once the relay
    // has framed them (framesClientAfterLogin), so a credential sent again can
    // be scrubbed first; from here the relay hands the tap each chunk it reads.
    const tap = recording?.tap;
    let recordClient: RelayRecording | undefined;
    if (tap) {
      const stashed = this.#stash.reduce((n, b) => n + b.length, 0);
      tap.recordClientAfterFraming();
      recordClient = {
        base: tap.clientOffset - stashed,
        received: (chunk) => tap.received(chunk),
        scrub: (raw, args) => tap.scrubPending(raw, scrubRedisAuth(args)),
        framed: (upTo, midChunk) => tap.framed(upTo, midChunk),
      };
    }
    const relay = new RedisRelay(this.#socket, upstream, {
        ...(recordClient ? { recordClient } : {}),
        // When the policy allows everything and no audit trail is written, commands need no judging.
        ...(policy.judges || this.ctx.audit ? { gate } : {}),
        ...(masker ? { serverTransform: masker } : {}),
        requestLimits: { maxBulkBytes: limits.maxMessageBytes, maxCommandBytes: limits.maxMessageBytes + 64 * 1024 },
        logger: log,
        idleTimeoutMs: limits.idleTimeoutMs,
        db: this.target.upstream.db,
        reauth: reauthCommands(this.target.upstream),
        proto,
        onClose: (reason) => this.#ended(reason),
    });
    this.#relay = relay;
    if (this.#recording?.behind) relay.holdForRecording(true);
    log.info(
      {
        groups: this.#identity?.groups,
        issuer: this.#identity?.issuer,
        policies,
        label,
        resp: proto,
        tls: this.#socket instanceof TLSSocket,
      },
      'session started',
    );
    const stash = this.#stash;
    this.#stash = [];
    relay.start([reply], stash, leftover);
    this.#log = log;
    const expiresAt = identity.expiresAt;
    if (limits.endAtTokenExpiry) this.#expiry = endAtTokenExpiry(expiresAt, () => relay.shutdown(tokenExpiredMessage(expiresAt)));
  }

  #ended(reason: string): void {
    this.#expiry?.();
    this.ctx.sessions.delete(this);
    const stats = this.#relay?.stats;
    const metrics = this.ctx.metrics;
    if (metrics && this.#relay) {
      metrics.sessionEnded(this.target.name, 'redis');
      metrics.bytes(this.target.name, 'client_to_upstream', stats?.bytesFromClient ?? 0);
      metrics.bytes(this.target.name, 'upstream_to_client', stats?.bytesFromUpstream ?? 0);
    }
    this.#log.info(
      { reason, bytesFromClient: stats?.bytesFromClient, bytesFromUpstream: stats?.bytesFromUpstream, commands: stats?.commands, refused: stats?.refused },
      'session ended',
    );
    void this.#recording?.end(reason);
  }

  /** The client went away before the relay started. */
  #closedBeforeRelay(): void {
    if (this.#relay) return;
    if (!this.#closed) this.#log.debug('client closed the connection before authenticating');
    this.#closed = true;
    this.#clearPreAuth();
    this.ctx.sessions.delete(this);
    void this.#recording?.end('client closed the connection before authenticating');
  }

  /** Ends a session that never reached the relay with a last reply. */
  #close(reply: Buffer, reason: string): void {
    if (this.#closed || this.#relay) return;
    this.#closed = true;
    this.#clearPreAuth();
    this.ctx.sessions.delete(this);
    this.#log.info({ reason }, 'connection closed before the session started');
    this.#socket.off('data', this.#onData);
    if (this.#socket.writable) this.#socket.end(reply);
    setTimeout(() => this.#socket.destroy(), 2_000).unref();
    // After the last reply was written, so the recording ends with it.
    void this.#recording?.end(reason);
  }

  /** The recording cannot follow the session (write failure, size cap, pre-auth flood): end it, fail closed. */
  #recordingFailed(err: SluiceError): void {
    if (!this.#relay) {
      // A protocol violation (a flood before AUTH) is the client's doing: the log says so, not that recording failed.
      const client = err.code === ErrorCodes.PROTOCOL_VIOLATION;
      const message = client ? `sluice: ${err.message}` : 'sluice: session recording is unavailable; new sessions are refused until it recovers';
      this.#close(error(message), client ? err.message : 'session recording failed');
      return;
    }
    this.#log.error({ code: err.code, reason: err.message }, 'session recording failed; ending the session');
    this.#relay.shutdown(
      err.code === ErrorCodes.RECORDING_SIZE_LIMIT ? 'the session reached its recording size limit and is ended' : 'session recording failed; the session is ended',
    );
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

/**
 * What a recording keeps of client bytes the relay never framed (the
 * session ended before its relay started, or in the middle of a command):
 * the complete commands among them, AUTH and HELLO scrubbed; not the
 * incomplete one at the end, which may be a credential cut short, nor
 * anything after bytes that are not RESP. None of these bytes reached the
 * upstream: the relay forwards only complete commands.
 */
export function scrubUnframed(bytes: Buffer, maxMessageBytes: number): Buffer {
  const kept: Buffer[] = [];
  const framer = new RespRequestFramer({ maxBulkBytes: maxMessageBytes, maxCommandBytes: maxMessageBytes + 64 * 1024 });
  try {
    framer.push(bytes, {
      command: (raw, args) => {
        kept.push(redisCredentialArgs(args).length > 0 ? scrubRedisAuth(args) : raw);
      },
    });
  } catch {
    // Not RESP from here on: what was framed before is kept.
  }
  return Buffer.concat(kept);
}

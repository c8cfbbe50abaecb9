/**
 * The server-facing side of the PostgreSQL gateway: open a connection to the
 * real server, optionally upgrade it to TLS, run the startup and the
 * authentication exchange with the stored credential, and hand the socket
 * over for relaying once ReadyForQuery arrives.
 *
 * Wire reference: PostgreSQL docs, "Frontend/Backend Protocol", sections
 * "Message Flow: Start-up", "SSL Session Encryption", "Canceling Requests".
 * Backend messages are framed here (type byte + int32 length including
 * itself) so we know exactly where ReadyForQuery ends; each frame is then
 * decoded with pg-protocol's Parser. Not the hot path.
 */
import { createHash } from 'node:crypto';
import { readFile } from 'node:fs/promises';
import net from 'node:net';
import tls from 'node:tls';
import { serialize } from 'pg-protocol';
import { Parser } from 'pg-protocol/dist/parser.js';
import type {
  AuthenticationMD5Password,
  BackendKeyDataMessage,
  BackendMessage,
  DatabaseError,
} from 'pg-protocol/dist/messages.js';
import type { PostgresUpstream, UpstreamAuthMethod } from '../../src/config/types.js';
import { SluiceError, ErrorCodes, type ErrorCode } from '../../src/errors.js';
import type { Logger } from '../../src/log.js';
import { withDirectReadOption } from '../../src/gateway/direct-reads.js';
import { ScramClient } from './scram.js';
import type { SqlDecoder } from './encoding.js';

export interface UpstreamSession {
  /** Ready for relay: startup done, ReadyForQuery received, no 'data' listener, paused. The caller attaches 'error' at once. */
  socket: net.Socket | tls.TLSSocket;
  /** The server's real BackendKeyData (signed int32s, as on the wire). */
  backendKey: { processId: number; secretKey: number };
  /** Every ParameterStatus message of the startup, byte for byte, in order: forwarded to the client. */
  startupReply: Buffer;
  /** The ReadyForQuery status byte ('I' after a startup). */
  transactionStatus: number;
  /** Bytes that arrived after ReadyForQuery (normally none); the relay forwards them first. */
  leftover: Buffer;
}

export interface ConnectUpstreamOptions {
  /** Covers TCP connect, TLS handshake and authentication, up to ReadyForQuery. */
  connectTimeoutMs: number;
  logger?: Logger;
}

// Backend message type bytes used during startup.
const AUTHENTICATION = 0x52; // 'R'
const PARAMETER_STATUS = 0x53; // 'S'
const BACKEND_KEY_DATA = 0x4b; // 'K'
const READY_FOR_QUERY = 0x5a; // 'Z'
const ERROR_RESPONSE = 0x45; // 'E'
const NOTICE_RESPONSE = 0x4e; // 'N'
const NEGOTIATE_PROTOCOL_VERSION = 0x76; // 'v'

// Authentication request codes (the int32 after the length of an 'R').
const AUTH_OK = 0;
const AUTH_KERBEROS_V5 = 2;
const AUTH_CLEARTEXT_PASSWORD = 3;
const AUTH_MD5_PASSWORD = 5;
const AUTH_GSS = 7;
const AUTH_SSPI = 9;
const AUTH_SASL = 10;
const AUTH_SASL_CONTINUE = 11;
const AUTH_SASL_FINAL = 12;

/** No startup-phase message is anywhere near this; a larger length is a broken or hostile server. */
const MAX_STARTUP_MESSAGE = 1 << 20;

const SCRAM_SHA_256 = 'SCRAM-SHA-256';

type Phase = 'connect' | 'ssl-request' | 'tls' | 'startup' | 'cancel' | 'catalog query';

/** Where we are, so socket errors and timeouts are reported with the right code. */
interface Context {
  where: string; // "host:port"
  user: string;
  phase: Phase;
}

function phaseCode(phase: Phase): ErrorCode {
  return phase === 'tls' ? ErrorCodes.UPSTREAM_TLS_FAILED : ErrorCodes.UPSTREAM_CONNECT_FAILED;
}

function describe(err: unknown): string {
  if (err instanceof Error) {
    const code = (err as NodeJS.ErrnoException).code;
    return code && !err.message.includes(code) ? `${code}: ${err.message}` : err.message;
  }
  return String(err);
}

/**
 * Buffers a socket's bytes and hands them out as whole backend messages.
 * Any socket error or close rejects the pending read with an error for the
 * current phase.
 */
class FrameReader {
  readonly #socket: net.Socket;
  readonly #ctx: Context;
  #buf: Buffer = Buffer.alloc(0);
  #failure: SluiceError | undefined;
  #wake: (() => void) | undefined;

  readonly #onData = (chunk: Buffer): void => {
    this.#buf = this.#buf.length === 0 ? chunk : Buffer.concat([this.#buf, chunk]);
    this.#notify();
  };
  readonly #onError = (err: Error): void => {
    this.#failure ??= new SluiceError(
      phaseCode(this.#ctx.phase),
      `PostgreSQL upstream ${this.#ctx.where}: ${this.#ctx.phase} failed: ${describe(err)}`,
      { cause: err },
    );
    this.#notify();
  };
  readonly #onClose = (): void => {
    this.#failure ??= new SluiceError(
      phaseCode(this.#ctx.phase),
      `PostgreSQL upstream ${this.#ctx.where} closed the connection during ${this.#ctx.phase}`,
    );
    this.#notify();
  };

  /** `initial`: bytes of this socket already read by an earlier reader (a session's leftover). */
  constructor(socket: net.Socket, ctx: Context, initial?: Buffer) {
    this.#socket = socket;
    this.#ctx = ctx;
    if (initial) this.#buf = initial;
    socket.on('data', this.#onData);
    socket.on('error', this.#onError);
    socket.on('end', this.#onClose);
    socket.on('close', this.#onClose);
  }

  #notify(): void {
    const wake = this.#wake;
    this.#wake = undefined;
    wake?.();
  }

  async #fill(n: number): Promise<void> {
    while (this.#buf.length < n) {
      if (this.#failure) throw this.#failure;
      await new Promise<void>((resolve) => (this.#wake = resolve));
    }
  }

  /** Abandons any pending read (used when the caller gives up: timeout). */
  abort(err: SluiceError): void {
    this.#failure ??= err;
    this.#notify();
  }

  async readByte(): Promise<number> {
    await this.#fill(1);
    const b = this.#buf[0]!;
    this.#buf = this.#buf.subarray(1);
    return b;
  }

  /** Bytes already received and not yet consumed. */
  get buffered(): number {
    return this.#buf.length;
  }

  /** One complete backend message: type byte, int32 length, body. */
  async readMessage(): Promise<Buffer> {
    await this.#fill(5);
    const length = this.#buf.readInt32BE(1);
    if (length < 4 || length > MAX_STARTUP_MESSAGE) {
      throw new SluiceError(
        ErrorCodes.UPSTREAM_PROTOCOL,
        `PostgreSQL upstream ${this.#ctx.where} sent a message of invalid length ${length} (type 0x${this.#buf[0]!.toString(16)}) during ${this.#ctx.phase}`,
      );
    }
    await this.#fill(1 + length);
    const frame = this.#buf.subarray(0, 1 + length);
    this.#buf = this.#buf.subarray(1 + length);
    return frame;
  }

  /** Stops reading: removes our listeners, pauses the socket, returns unconsumed bytes. */
  detach(): Buffer {
    this.#socket.pause();
    this.#socket.off('data', this.#onData);
    this.#socket.off('error', this.#onError);
    this.#socket.off('end', this.#onClose);
    this.#socket.off('close', this.#onClose);
    const rest = this.#buf;
    this.#buf = Buffer.alloc(0);
    return rest;
  }
}

/** Decodes one whole frame with pg-protocol's Parser. */
function decode(frame: Buffer): BackendMessage {
  let out: BackendMessage | undefined;
  new Parser().parse(frame, (msg) => {
    out = msg;
  });
  if (!out) throw new Error('pg-protocol parser produced no message');
  return out;
}

function write(socket: net.Socket, data: Buffer): void {
  socket.write(data);
}

function tcpConnect(upstream: PostgresUpstream, ctx: Context): { socket: net.Socket; ready: Promise<void> } {
  const socket = net.connect(withDirectReadOption({ host: upstream.host, port: upstream.port }));
  socket.setNoDelay(true);
  const ready = new Promise<void>((resolve, reject) => {
    const onError = (err: Error): void => {
      socket.off('connect', onConnect);
      reject(
        new SluiceError(
          ErrorCodes.UPSTREAM_CONNECT_FAILED,
          `could not connect to PostgreSQL upstream ${ctx.where}: ${describe(err)}`,
          { cause: err },
        ),
      );
    };
    const onConnect = (): void => {
      socket.off('error', onError);
      resolve();
    };
    socket.once('error', onError);
    socket.once('connect', onConnect);
  });
  return { socket, ready };
}

/**
 * SSLRequest, then the TLS handshake over the same TCP connection. The
 * server answers one byte; anything it sends after an 'S' and before our
 * ClientHello would be read as if it came through TLS, which is the
 * CVE-2021-23222 buffering bug, so it is refused.
 */
async function startTls(
  upstream: PostgresUpstream,
  socket: net.Socket,
  ctx: Context,
  onReader: (r: FrameReader) => void,
): Promise<tls.TLSSocket> {
  // Read the CA before touching the wire, so a config problem is reported as such.
  let ca: Buffer | undefined;
  if (upstream.tls === 'verify-full' && upstream.caFile) {
    try {
      ca = await readFile(upstream.caFile);
    } catch (err) {
      throw new SluiceError(
        ErrorCodes.UPSTREAM_TLS_FAILED,
        `could not read ca_file ${upstream.caFile} for PostgreSQL upstream ${ctx.where}: ${describe(err)}`,
        { cause: err },
      );
    }
  }

  ctx.phase = 'ssl-request';
  const reader = new FrameReader(socket, ctx);
  onReader(reader);
  write(socket, serialize.requestSsl());
  const answer = await reader.readByte();
  if (answer === 0x4e /* 'N' */) {
    reader.detach();
    throw new SluiceError(
      ErrorCodes.UPSTREAM_TLS_FAILED,
      `PostgreSQL upstream ${ctx.where} does not accept TLS, but tls is '${upstream.tls}'`,
    );
  }
  if (answer !== 0x53 /* 'S' */ || reader.buffered > 0) {
    reader.detach();
    throw new SluiceError(
      ErrorCodes.UPSTREAM_PROTOCOL,
      answer === 0x53
        ? `PostgreSQL upstream ${ctx.where} sent unencrypted data after accepting SSLRequest`
        : `PostgreSQL upstream ${ctx.where} answered SSLRequest with 0x${answer.toString(16)}`,
    );
  }
  reader.detach();

  ctx.phase = 'tls';
  const expectedName = upstream.serverName ?? upstream.host;
  const options: tls.ConnectionOptions = { socket };
  // SNI carries host names only, never an IP literal (RFC 6066 section 3).
  if (!net.isIP(expectedName)) options.servername = expectedName;
  if (upstream.tls === 'verify-full') {
    options.rejectUnauthorized = true;
    if (ca) options.ca = ca;
    options.checkServerIdentity = (_host, cert) => tls.checkServerIdentity(expectedName, cert);
  } else {
    // 'require': encrypt, verify nothing (libpq sslmode=require without a root cert).
    options.rejectUnauthorized = false;
    options.checkServerIdentity = () => undefined;
  }
  const secure = tls.connect(options);
  await new Promise<void>((resolve, reject) => {
    const onError = (err: Error): void => {
      secure.off('secureConnect', onSecure);
      reject(
        new SluiceError(
          ErrorCodes.UPSTREAM_TLS_FAILED,
          `TLS with PostgreSQL upstream ${ctx.where} failed (tls '${upstream.tls}', expected name '${expectedName}'): ${describe(err)}`,
          { cause: err },
        ),
      );
    };
    const onSecure = (): void => {
      secure.off('error', onError);
      resolve();
    };
    secure.once('error', onError);
    secure.once('secureConnect', onSecure);
  });
  return secure;
}

/** StartupMessage, protocol 3.0. */
function startupMessage(upstream: PostgresUpstream, params: Record<string, string>): Buffer {
  // pg-protocol's serialize.startup always appends client_encoding=UTF8
  // after our parameters, and the server keeps the last value of a
  // duplicate, so it would override the client's own client_encoding.
  // Hence: pass client_encoding through only if the client chose one, and
  // rebuild the message with pg-protocol's output minus that forced pair.
  const fields: Record<string, string> = {};
  for (const [key, value] of Object.entries(params)) {
    // The user and database are the target's, never the client's.
    if (key === 'user' || key === 'database') continue;
    // A NUL would end the string early and smuggle in another parameter.
    if (key.length === 0 || key.includes('\0') || value.includes('\0')) {
      throw new SluiceError(ErrorCodes.STARTUP_PARAMETER_REFUSED, `startup parameter ${JSON.stringify(key)} contains a NUL byte`);
    }
    fields[key] = value;
  }
  const clientEncoding = fields.client_encoding;
  delete fields.client_encoding;
  const ordered: Record<string, string> = { user: upstream.user, database: upstream.database, ...fields };
  if (clientEncoding === undefined) return serialize.startup(ordered);
  // Build with pg-protocol (it adds client_encoding=UTF8 last), then swap that value.
  const built = serialize.startup(ordered);
  const forced = Buffer.from('client_encoding\0UTF8\0\0');
  const head = built.subarray(4, built.length - forced.length);
  const tail = Buffer.from(`client_encoding\0${clientEncoding}\0\0`);
  const length = Buffer.alloc(4);
  length.writeInt32BE(4 + head.length + tail.length);
  return Buffer.concat([length, head, tail]);
}

function md5Hex(data: Buffer | string): string {
  return createHash('md5').update(data).digest('hex');
}

/** 'md5' + md5(md5(password + user) + salt), the AuthenticationMD5Password answer. */
function md5Password(user: string, password: string, salt: Buffer): string {
  const inner = md5Hex(password + user);
  return 'md5' + md5Hex(Buffer.concat([Buffer.from(inner), salt]));
}

/**
 * Connects and authenticates to the upstream PostgreSQL as the target's
 * stored user. Every failure rejects with a SluiceError whose message is for
 * the log (never the password); the socket is destroyed.
 */
export async function connectUpstream(
  upstream: PostgresUpstream,
  params: Record<string, string>,
  opts: ConnectUpstreamOptions,
): Promise<UpstreamSession> {
  const ctx: Context = { where: `${upstream.host}:${upstream.port}`, user: upstream.user, phase: 'connect' };
  const sockets: net.Socket[] = [];
  let reader: FrameReader | undefined;
  let timer: NodeJS.Timeout | undefined;
  let settled = false;

  const timeout = new Promise<never>((_, reject) => {
    timer = setTimeout(() => {
      const err = new SluiceError(
        phaseCode(ctx.phase),
        `PostgreSQL upstream ${ctx.where} (user "${ctx.user}"): timed out after ${opts.connectTimeoutMs} ms during ${ctx.phase}`,
      );
      reader?.abort(err);
      reject(err);
    }, opts.connectTimeoutMs);
  });

  const run = async (): Promise<UpstreamSession> => {
    const { socket: tcp, ready } = tcpConnect(upstream, ctx);
    sockets.push(tcp);
    await ready;

    let socket: net.Socket | tls.TLSSocket = tcp;
    if (upstream.tls !== 'disable') {
      socket = await startTls(upstream, tcp, ctx, (r) => (reader = r));
      sockets.push(socket);
    }
    if (settled) throw new SluiceError(ErrorCodes.UPSTREAM_CONNECT_FAILED, 'aborted');

    ctx.phase = 'startup';
    reader = new FrameReader(socket, ctx);
    write(socket, startupMessage(upstream, params));
    return await handshake(upstream, socket, reader, ctx, opts.logger);
  };

  try {
    return await Promise.race([run(), timeout]);
  } catch (err) {
    for (const s of sockets) s.destroy();
    if (err instanceof SluiceError) throw err;
    throw new SluiceError(
      ErrorCodes.UPSTREAM_PROTOCOL,
      `PostgreSQL upstream ${ctx.where}: unexpected failure during ${ctx.phase}: ${describe(err)}`,
      { cause: err },
    );
  } finally {
    settled = true;
    clearTimeout(timer);
  }
}

/** The message loop from StartupMessage to ReadyForQuery. */
async function handshake(
  upstream: PostgresUpstream,
  socket: net.Socket,
  reader: FrameReader,
  ctx: Context,
  logger: Logger | undefined,
): Promise<UpstreamSession> {
  const who = `PostgreSQL upstream ${ctx.where} (user "${ctx.user}")`;
  const parameterStatus: Buffer[] = [];
  let backendKey: { processId: number; secretKey: number } | undefined;
  let scram: ScramClient | undefined;
  let authenticated = false;

  const needPassword = (method: string): string => {
    if (!upstream.password) {
      throw new SluiceError(
        ErrorCodes.UPSTREAM_AUTH_FAILED,
        `${who} requested ${method} authentication but the target has no password configured`,
      );
    }
    return upstream.password.reveal();
  };
  const protocol = (detail: string): SluiceError => new SluiceError(ErrorCodes.UPSTREAM_PROTOCOL, `${who}: ${detail}`);
  /**
   * upstream.require_auth, as libpq's: a server that asks for a method not
   * listed is refused before anything is sent. Over `tls: require` (no
   * certificate check) a man in the middle can ask for the password in
   * cleartext; `require_auth: scram-sha-256` leaves it nothing to learn.
   */
  const allowed = upstream.requireAuth;
  const mayUse = (method: UpstreamAuthMethod, asked: string): void => {
    if (allowed !== undefined && !allowed.includes(method)) {
      throw new SluiceError(
        ErrorCodes.UPSTREAM_AUTH_FAILED,
        `${who} ${asked}, which upstream.require_auth (${allowed.join(', ')}) does not allow; nothing was sent`,
      );
    }
  };
  /** A cleartext or MD5 password was sent: the AuthenticationOk that follows is that method's. */
  let passwordSent = false;

  for (;;) {
    const frame = await reader.readMessage();
    const type = frame[0]!;

    switch (type) {
      case AUTHENTICATION: {
        if (authenticated) throw protocol('authentication request after AuthenticationOk');
        if (frame.length < 9) throw protocol('truncated authentication request');
        const code = frame.readInt32BE(5);
        switch (code) {
          case AUTH_OK:
            // Once SCRAM has started, the server must prove itself with
            // SASLFinal before it may say OK; skipping that step is how an
            // impostor that does not know the verifier would get through.
            if (scram && !scram.serverVerified) throw protocol('AuthenticationOk without a verified SCRAM server signature');
            if (!scram && !passwordSent) mayUse('none', 'let the login in without authentication (trust)');
            authenticated = true;
            break;
          case AUTH_CLEARTEXT_PASSWORD:
            // A server that started SCRAM never asks again another way: what does is an impostor
            // (a man in the middle) after the stored password itself.
            if (scram) throw protocol('cleartext password requested after SCRAM started');
            mayUse('password', 'asked for the password in cleartext');
            write(socket, serialize.password(needPassword('cleartext password')));
            passwordSent = true;
            break;
          case AUTH_MD5_PASSWORD: {
            if (scram) throw protocol('MD5 password requested after SCRAM started');
            mayUse('md5', 'asked for an MD5 password');
            const msg = decode(frame) as AuthenticationMD5Password;
            if (msg.name !== 'authenticationMD5Password') throw protocol('malformed AuthenticationMD5Password');
            write(socket, serialize.password(md5Password(upstream.user, needPassword('MD5'), msg.salt)));
            passwordSent = true;
            break;
          }
          case AUTH_SASL: {
            if (scram) throw protocol('second AuthenticationSASL');
            mayUse('scram-sha-256', 'asked for SASL (SCRAM-SHA-256)');
            const msg = decode(frame) as BackendMessage & { mechanisms: string[] };
            if (!msg.mechanisms.includes(SCRAM_SHA_256)) {
              const offered = msg.mechanisms.join(', ') || 'none';
              throw new SluiceError(
                ErrorCodes.UPSTREAM_AUTH_FAILED,
                msg.mechanisms.includes('SCRAM-SHA-256-PLUS')
                  ? `${who} offers only SCRAM-SHA-256-PLUS (channel binding), which Sluice does not support`
                  : `${who} offers SASL mechanisms Sluice does not support: ${offered}`,
              );
            }
            scram = new ScramClient(needPassword(SCRAM_SHA_256));
            write(socket, serialize.sendSASLInitialResponseMessage(SCRAM_SHA_256, scram.clientFirstMessage()));
            break;
          }
          case AUTH_SASL_CONTINUE: {
            if (!scram) throw protocol('AuthenticationSASLContinue without SASL');
            const msg = decode(frame) as BackendMessage & { data: string };
            write(socket, serialize.sendSCRAMClientFinalMessage(await scram.handleServerFirst(msg.data)));
            break;
          }
          case AUTH_SASL_FINAL: {
            if (!scram) throw protocol('AuthenticationSASLFinal without SASL');
            const msg = decode(frame) as BackendMessage & { data: string };
            try {
              scram.verifyServerFinal(msg.data);
            } catch (err) {
              if (err instanceof SluiceError) throw new SluiceError(err.code, `${who}: ${err.message}`);
              throw err;
            }
            break;
          }
          case AUTH_KERBEROS_V5:
          case AUTH_GSS:
          case AUTH_SSPI:
            throw new SluiceError(
              ErrorCodes.UPSTREAM_AUTH_FAILED,
              `${who} requested ${code === AUTH_SSPI ? 'SSPI' : code === AUTH_GSS ? 'GSSAPI' : 'Kerberos V5'} authentication, which Sluice does not support`,
            );
          default:
            throw new SluiceError(ErrorCodes.UPSTREAM_AUTH_FAILED, `${who} requested unsupported authentication method ${code}`);
        }
        break;
      }

      case PARAMETER_STATUS:
        if (!authenticated) throw protocol('ParameterStatus before AuthenticationOk');
        // Kept verbatim: the client must see exactly what the server said.
        parameterStatus.push(frame);
        break;

      case BACKEND_KEY_DATA: {
        if (!authenticated) throw protocol('BackendKeyData before AuthenticationOk');
        const msg = decode(frame) as BackendKeyDataMessage;
        if (msg.name !== 'backendKeyData' || frame.length !== 13) throw protocol('malformed BackendKeyData');
        backendKey = { processId: msg.processID, secretKey: msg.secretKey };
        break;
      }

      case NEGOTIATE_PROTOCOL_VERSION: {
        // The server supports an older minor version or did not recognise
        // some `_pq_.` options. We asked for 3.0, which every server speaks,
        // so there is nothing to downgrade: note it and carry on.
        const newestMinor = frame.length >= 9 ? frame.readInt32BE(5) : -1;
        logger?.debug({ upstream: ctx.where, newestMinor }, 'upstream sent NegotiateProtocolVersion');
        break;
      }

      case NOTICE_RESPONSE: {
        const msg = decode(frame) as BackendMessage & { message?: string; code?: string };
        logger?.debug({ upstream: ctx.where, sqlstate: msg.code, notice: msg.message }, 'upstream notice during startup');
        break;
      }

      case ERROR_RESPONSE: {
        const msg = decode(frame) as DatabaseError;
        const sqlstate = msg.code ?? '?????';
        const detail = `${sqlstate} ${msg.message ?? ''}`.trim();
        // Class 28: invalid authorization specification (bad password, no pg_hba entry, ...).
        if (sqlstate.startsWith('28')) {
          throw new SluiceError(ErrorCodes.UPSTREAM_AUTH_FAILED, `${who} refused authentication: ${detail}`);
        }
        throw new SluiceError(ErrorCodes.UPSTREAM_CONNECT_FAILED, `${who} refused the connection: ${detail}`);
      }

      case READY_FOR_QUERY: {
        if (!authenticated) throw protocol('ReadyForQuery before AuthenticationOk');
        if (frame.length !== 6) throw protocol('malformed ReadyForQuery');
        if (!backendKey) {
          // Legal (some poolers omit it); cancel requests then cannot be forwarded.
          logger?.debug({ upstream: ctx.where }, 'upstream sent no BackendKeyData');
          backendKey = { processId: 0, secretKey: 0 };
        }
        const leftover = reader.detach();
        return {
          socket,
          backendKey,
          startupReply: Buffer.concat(parameterStatus),
          transactionStatus: frame[5]!,
          leftover,
        };
      }

      default:
        throw protocol(`unexpected message type 0x${type.toString(16)} during startup`);
    }
  }
}

/**
 * Forwards a cancel: a new connection (with SSLRequest first when the
 * target uses TLS), a 16-byte CancelRequest, then close. The server never
 * answers a CancelRequest; we resolve once it closes the connection.
 */
export async function sendCancelRequest(
  upstream: PostgresUpstream,
  key: { processId: number; secretKey: number },
  opts: { connectTimeoutMs: number },
): Promise<void> {
  const ctx: Context = { where: `${upstream.host}:${upstream.port}`, user: upstream.user, phase: 'connect' };
  const sockets: net.Socket[] = [];
  let reader: FrameReader | undefined;
  let timer: NodeJS.Timeout | undefined;

  const timeout = new Promise<never>((_, reject) => {
    timer = setTimeout(() => {
      const err = new SluiceError(
        phaseCode(ctx.phase),
        `cancel request to PostgreSQL upstream ${ctx.where} timed out after ${opts.connectTimeoutMs} ms during ${ctx.phase}`,
      );
      reader?.abort(err);
      reject(err);
    }, opts.connectTimeoutMs);
  });

  const run = async (): Promise<void> => {
    const { socket: tcp, ready } = tcpConnect(upstream, ctx);
    sockets.push(tcp);
    await ready;
    let socket: net.Socket = tcp;
    if (upstream.tls !== 'disable') {
      socket = await startTls(upstream, tcp, ctx, (r) => (reader = r));
      sockets.push(socket);
    }
    ctx.phase = 'cancel';
    await new Promise<void>((resolve, reject) => {
      socket.once('error', (err) =>
        reject(
          new SluiceError(
            ErrorCodes.UPSTREAM_CONNECT_FAILED,
            `cancel request to PostgreSQL upstream ${ctx.where} failed: ${describe(err)}`,
            { cause: err },
          ),
        ),
      );
      socket.once('close', () => resolve());
      socket.resume(); // drain (the server sends nothing) so 'end' and 'close' fire
      // `| 0`: accept the key as signed or unsigned; on the wire it is 32 bits either way.
      socket.end(serialize.cancel(key.processId | 0, key.secretKey | 0));
    });
  };

  try {
    await Promise.race([run(), timeout]);
  } catch (err) {
    for (const s of sockets) s.destroy();
    if (err instanceof SluiceError) throw err;
    throw new SluiceError(ErrorCodes.UPSTREAM_CONNECT_FAILED, `cancel request to PostgreSQL upstream ${ctx.where} failed: ${describe(err)}`, {
      cause: err,
    });
  } finally {
    clearTimeout(timer);
  }
}

/** One simple Query's rows, as text (null = SQL NULL). */
export interface CatalogRows {
  rows: Array<Array<string | null>>;
  /** The ErrorResponse's SQLSTATE and message when the server refused the query (rows is then empty). */
  error?: string;
}

/**
 * Runs one read-only simple Query of Sluice's own on a freshly logged-in
 * session, before the client's first byte is relayed (the column-origin
 * catalogue of column masking rules). The session must be idle ('I'); it
 * is idle again afterwards. Messages the server sends that are not part of
 * the answer (an asynchronous ParameterStatus or NoticeResponse) are kept
 * for the client: they are prepended to `session.leftover`, which is
 * updated in place with whatever arrived after the final ReadyForQuery.
 * A server error is returned, not thrown: the caller decides how to fail.
 */
export async function queryUpstream(
  session: UpstreamSession,
  where: { host: string; port: number; user: string },
  sql: string,
  /** `decode`: how to read the rows' text (they come in the session's client_encoding; default UTF-8). */
  opts: { timeoutMs: number; decode?: SqlDecoder },
): Promise<CatalogRows> {
  const ctx: Context = { where: `${where.host}:${where.port}`, user: where.user, phase: 'catalog query' };
  const socket = session.socket;
  const reader = new FrameReader(socket, ctx, session.leftover);
  session.leftover = Buffer.alloc(0);
  const forward: Buffer[] = [];
  const rows: Array<Array<string | null>> = [];
  let error: string | undefined;
  const timer = setTimeout(
    () => reader.abort(new SluiceError(ErrorCodes.UPSTREAM_PROTOCOL, `PostgreSQL upstream ${ctx.where}: timed out after ${opts.timeoutMs} ms during the catalog query`)),
    opts.timeoutMs,
  );
  try {
    write(socket, serialize.query(sql));
    socket.resume();
    for (;;) {
      const frame = await reader.readMessage();
      switch (frame[0]) {
        case 0x54: // RowDescription: the caller knows its own columns
        case 0x43: // CommandComplete
          break;
        case 0x44: // DataRow
          rows.push(dataRowText(frame, ctx, opts.decode));
          break;
        case 0x45: {
          // ErrorResponse
          const msg = decode(frame) as DatabaseError;
          error = `${msg.code ?? '?????'} ${msg.message ?? ''}`.trim();
          break;
        }
        case 0x53: // ParameterStatus, NoticeResponse: not ours to drop
        case 0x4e:
          forward.push(frame);
          break;
        case 0x5a: // ReadyForQuery
          session.transactionStatus = frame[5]!;
          session.leftover = Buffer.concat([...forward, reader.detach()]);
          return error === undefined ? { rows } : { rows: [], error };
        default:
          throw new SluiceError(ErrorCodes.UPSTREAM_PROTOCOL, `PostgreSQL upstream ${ctx.where} sent message type 0x${frame[0]!.toString(16)} during the catalog query`);
      }
    }
  } catch (err) {
    reader.detach();
    throw err;
  } finally {
    clearTimeout(timer);
  }
}

function dataRowText(frame: Buffer, ctx: Context, decode: SqlDecoder | undefined): Array<string | null> {
  const bad = (): SluiceError => new SluiceError(ErrorCodes.UPSTREAM_PROTOCOL, `PostgreSQL upstream ${ctx.where} sent a malformed DataRow during the catalog query`);
  if (frame.length < 7) throw bad();
  const n = frame.readInt16BE(5);
  const out: Array<string | null> = [];
  let pos = 7;
  for (let i = 0; i < n; i++) {
    if (pos + 4 > frame.length) throw bad();
    const len = frame.readInt32BE(pos);
    pos += 4;
    if (len < 0) {
      out.push(null);
      continue;
    }
    if (pos + len > frame.length) throw bad();
    out.push(decode === undefined ? frame.toString('utf8', pos, pos + len) : decode(frame, pos, pos + len));
    pos += len;
  }
  return out;
}

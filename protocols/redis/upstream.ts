/**
 * The server-facing side of the Redis gateway: connect to the real Redis
 * (TLS from the first byte when `tls` is require or verify-full, as Redis'
 * `tls-port` expects), authenticate with the stored ACL credential, select
 * the target's db, and hand the socket over for relaying.
 *
 *   client said AUTH <token>          ->  AUTH <user> <pass>, SELECT <db>
 *   client said HELLO <v> AUTH ...    ->  HELLO <v> AUTH <user> <pass> [SETNAME n], SELECT <db>
 *                                         (the HELLO reply map is what the client gets back)
 *
 * The commands go out pipelined in one write; the replies are framed with
 * the reply framer. Not the hot path.
 * https://redis.io/docs/latest/commands/hello/  https://redis.io/docs/latest/commands/auth/
 */
import { readFile } from 'node:fs/promises';
import net from 'node:net';
import tls from 'node:tls';
import type { RedisUpstream } from '../../src/config/types.js';
import { ErrorCodes, SluiceError, type ErrorCode } from '../../src/errors.js';
import { withDirectReadOption } from '../../src/gateway/direct-reads.js';
import { RespReplyFramer } from './resp.js';
import type { RespVersion } from './replies.js';

/** Where Redis starts quoting a command's arguments in an error (unknown command, and its kin). */
const ARGS_QUOTED = ', with args beginning with:';

/**
 * An upstream's error reply (`-...` or `!...`) as Sluice may log it. Redis
 * quotes the first arguments of a command it does not know (`-ERR unknown
 * command 'HELLO', with args beginning with: '3' 'AUTH' 'app' '<password>'`,
 * from a server where HELLO is renamed or missing), and the commands Sluice
 * sends upstream carry the stored password: the text stops where the
 * quoting starts, and any `secrets` left in it are replaced. At most `max`
 * bytes of the reply are read.
 */
export function upstreamErrorText(reply: Buffer, max: number, secrets: readonly string[] = []): string {
  let text = reply.toString('utf8', 1, Math.min(reply.length, max)).trim();
  const quoted = text.indexOf(ARGS_QUOTED);
  if (quoted >= 0) text = `${text.slice(0, quoted)}, with its arguments (not shown)`;
  for (const secret of secrets) if (secret.length > 0) text = text.split(secret).join('[redacted]');
  return text;
}

export interface RedisUpstreamSession {
  /** Authenticated, db selected, paused, no 'data' listener. The caller attaches 'error' at once. */
  socket: net.Socket | tls.TLSSocket;
  /** The upstream's reply to HELLO (when the client used HELLO), byte for byte. */
  helloReply?: Buffer;
  /** Bytes that arrived after the setup replies (normally none). */
  leftover: Buffer;
}

export interface ConnectRedisOptions {
  /** Covers TCP connect, TLS handshake, AUTH/HELLO and SELECT. */
  connectTimeoutMs: number;
  /** Open with HELLO <hello> (the client's HELLO), or with AUTH when undefined. */
  hello?: RespVersion;
  setName?: Buffer;
}

/** One RESP command as an array of bulk strings. */
export function encodeCommand(args: ReadonlyArray<string | Buffer>): Buffer {
  const parts: Buffer[] = [Buffer.from(`*${args.length}\r\n`)];
  for (const a of args) {
    const b = typeof a === 'string' ? Buffer.from(a) : a;
    parts.push(Buffer.from(`$${b.length}\r\n`), b, Buffer.from('\r\n'));
  }
  return Buffer.concat(parts);
}

/**
 * The commands that put a fresh (or RESET) connection in the target's
 * identity and db, each answered by +OK: AUTH (when a password is
 * configured) and SELECT (when the db is not 0).
 */
export function reauthCommands(upstream: RedisUpstream): Buffer[] {
  const out: Buffer[] = [];
  if (upstream.password) out.push(encodeCommand(['AUTH', upstream.user, upstream.password.reveal()]));
  if (upstream.db !== 0) out.push(encodeCommand(['SELECT', String(upstream.db)]));
  return out;
}

function describe(err: unknown): string {
  if (err instanceof Error) {
    const code = (err as NodeJS.ErrnoException).code;
    return code && !err.message.includes(code) ? `${code}: ${err.message}` : err.message;
  }
  return String(err);
}

export async function connectRedisUpstream(upstream: RedisUpstream, options: ConnectRedisOptions): Promise<RedisUpstreamSession> {
  const where = `${upstream.host}:${upstream.port}`;
  let ca: Buffer | undefined;
  if (upstream.tls === 'verify-full' && upstream.caFile) {
    try {
      ca = await readFile(upstream.caFile);
    } catch (err) {
      throw new SluiceError(ErrorCodes.UPSTREAM_TLS_FAILED, `could not read ca_file ${upstream.caFile} for Redis upstream ${where}: ${describe(err)}`);
    }
  }
  let phase: 'connect' | 'tls' | 'auth' = 'connect';
  const code = (): ErrorCode =>
    phase === 'tls' ? ErrorCodes.UPSTREAM_TLS_FAILED : phase === 'auth' ? ErrorCodes.UPSTREAM_AUTH_FAILED : ErrorCodes.UPSTREAM_CONNECT_FAILED;

  const setup: Buffer[] = [];
  if (options.hello !== undefined) {
    const hello: Array<string | Buffer> = ['HELLO', String(options.hello)];
    if (upstream.password) hello.push('AUTH', upstream.user, upstream.password.reveal());
    if (options.setName) hello.push('SETNAME', options.setName);
    setup.push(encodeCommand(hello));
    if (upstream.db !== 0) setup.push(encodeCommand(['SELECT', String(upstream.db)]));
  } else {
    setup.push(...reauthCommands(upstream));
  }

  return new Promise<RedisUpstreamSession>((resolve, reject) => {
    let socket: net.Socket | tls.TLSSocket;
    let settled = false;
    const timer = setTimeout(
      () => fail(new SluiceError(code(), `Redis upstream ${where}: ${phase} did not complete within ${options.connectTimeoutMs} ms`)),
      options.connectTimeoutMs,
    );
    const fail = (err: SluiceError): void => {
      if (settled) return;
      settled = true;
      clearTimeout(timer);
      socket.destroy();
      reject(err);
    };
    const onError = (err: Error): void => fail(new SluiceError(code(), `Redis upstream ${where}: ${phase} failed: ${describe(err)}`, { cause: err }));
    const onClose = (): void => fail(new SluiceError(code(), `Redis upstream ${where} closed the connection during ${phase}`));

    const authenticate = (): void => {
      phase = 'auth';
      if (setup.length === 0) return done([], Buffer.alloc(0));
      const framer = new RespReplyFramer({ maxBulkBytes: 1024 * 1024, maxLineBytes: 64 * 1024 });
      const replies: Buffer[] = [];
      let pending: Buffer[] = [];
      let start = 0; // absolute offset where the current reply starts
      let consumed = 0; // absolute offset of the start of `pending[0]`
      const onData = (chunk: Buffer): void => {
        pending.push(chunk);
        const ends: number[] = [];
        try {
          framer.push(chunk, { passthrough: () => {}, replyEnd: (info) => ends.push(info.end) });
        } catch (err) {
          fail(new SluiceError(ErrorCodes.UPSTREAM_PROTOCOL, `Redis upstream ${where} sent a malformed reply during setup: ${describe(err)}`));
          return;
        }
        if (ends.length === 0) return;
        const all = pending.length === 1 ? pending[0]! : Buffer.concat(pending);
        for (const end of ends) {
          if (replies.length === setup.length) break;
          replies.push(Buffer.from(all.subarray(start - consumed, end - consumed)));
          start = end;
        }
        pending = [all.subarray(start - consumed)];
        consumed = start;
        if (replies.length < setup.length) return;
        socket.off('data', onData);
        done(replies, pending[0]!);
      };
      socket.on('data', onData);
      socket.write(setup.length === 1 ? setup[0]! : Buffer.concat(setup));
    };

    const done = (replies: Buffer[], leftover: Buffer): void => {
      if (settled) return;
      for (let i = 0; i < replies.length; i++) {
        const r = replies[i]!;
        if (r[0] === 0x2d /* '-' */ || r[0] === 0x21 /* '!' */) {
          const what = i === setup.length - 1 && upstream.db !== 0 ? `SELECT ${upstream.db}` : options.hello !== undefined ? 'HELLO AUTH' : 'AUTH';
          // Logged by the session (never sent to the client): the error as upstreamErrorText gives it,
          // since an upstream that does not know HELLO quotes its arguments, the password among them.
          const secrets = upstream.password ? [upstream.password.reveal()] : [];
          fail(
            new SluiceError(
              ErrorCodes.UPSTREAM_AUTH_FAILED,
              `Redis upstream ${where} refused ${what} as user "${upstream.user}": ${upstreamErrorText(r, 300, secrets)}`,
            ),
          );
          return;
        }
      }
      settled = true;
      clearTimeout(timer);
      socket.pause();
      socket.off('error', onError);
      socket.off('close', onClose);
      resolve({ socket, leftover, ...(options.hello !== undefined ? { helloReply: replies[0]! } : {}) });
    };

    const tcp = net.connect(withDirectReadOption({ host: upstream.host, port: upstream.port }));
    socket = tcp;
    tcp.setNoDelay(true);
    tcp.on('error', onError);
    tcp.on('close', onClose);
    tcp.once('connect', () => {
      if (upstream.tls === 'disable') return authenticate();
      phase = 'tls';
      const expectedName = upstream.serverName ?? upstream.host;
      const opts: tls.ConnectionOptions = { socket: tcp };
      // SNI carries host names only, never an IP literal (RFC 6066 section 3).
      if (!net.isIP(expectedName)) opts.servername = expectedName;
      if (upstream.tls === 'verify-full') {
        opts.rejectUnauthorized = true;
        if (ca) opts.ca = ca;
        opts.checkServerIdentity = (_host, cert) => tls.checkServerIdentity(expectedName, cert);
      } else {
        // 'require': encrypt, verify nothing.
        opts.rejectUnauthorized = false;
        opts.checkServerIdentity = () => undefined;
      }
      tcp.off('close', onClose);
      const secure = tls.connect(opts);
      socket = secure;
      secure.on('error', onError);
      secure.on('close', onClose);
      secure.once('secureConnect', authenticate);
    });
  });
}


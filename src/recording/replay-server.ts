/**
 * A stand-in server that replays the recorded server side of a session, so
 * the same client (psql, redis-cli, a CI suite's driver) pointed at it
 * receives exactly the bytes the original client received.
 *
 * The recording is cut into steps: "after the client has sent these
 * messages, send these bytes". A step starts at each client record that
 * completes at least one protocol message (PostgreSQL message, Redis
 * command) and holds every server record up to the next such client record.
 * Replaying, the server waits until the new client has sent as many whole
 * messages as the step expects, then writes the step's server bytes.
 * Messages are counted, not compared byte for byte: a new psql sends a
 * different startup packet and password, and the recorded password is
 * redacted anyway. Their types (PostgreSQL) or command names (Redis) are
 * compared, and a divergence is reported as a warning, not enforced.
 *
 * TLS: the recording holds the cleartext. The replay server answers every
 * SSLRequest/GSSENCRequest with 'N' and drops the recorded request and its
 * one-byte answer from the script, so a client with sslmode=prefer (or
 * disable) continues in cleartext; sslmode=require cannot be replayed.
 *
 * Authentication: a replay serves recorded data (what a session received,
 * after masking) that its file keeps owner-only, so the stand-in has a
 * password of its own, made for each run (the CLI prints it). Where the
 * recording has the client's login (the PasswordMessage; AUTH, or HELLO
 * with AUTH), the new client must send one with that password, and any
 * login it sends must carry it: else it gets the protocol's own refusal
 * (FATAL 28P01, -WRONGPASS) and the connection closes before any recorded
 * byte past the login is sent. A recording with no login (a session
 * refused before it) replays to anyone: it holds nothing past the refusal.
 * A SCRAM exchange recorded straight from a server cannot be replayed to a
 * client that checks the server's signature; sessions through Sluice use
 * a cleartext password exchange (the token) and replay fine.
 *
 * When the script is exhausted (the last step's bytes are written and the
 * client has sent what the last step expects), the connection is closed.
 * Every connection gets its own replay from the start; `once` stops the
 * server after the first.
 *
 * Limits, so that whoever can reach the port but has not the password
 * cannot tie the replay up: at most `maxConnections` (8) at once; until a
 * connection has logged in, at most 64 KiB from it and `loginTimeoutMs`
 * (30 s) to do it in. Each is refused the protocol's way (FATAL 53300, or
 * 08P01, or 57014 on the timeout as PostgreSQL's own; -ERR) and the
 * connection closed. A recording without a login has no password to pass,
 * so those two limits hold for the whole of its replay.
 */
import { timingSafeEqual } from 'node:crypto';
import { createServer, type Server, type Socket } from 'node:net';
import { errorResponse, sqlstate as sqlstates } from '../../protocols/postgres/messages.js';
import { error } from '../../protocols/redis/replies.js';
import type { Direction } from './format.js';
import { readRecording } from './reader.js';
import { PG_REQUEST_CODES, PgClientMessages, pgMessageName } from './transcript-postgres.js';
import { RespRequestFramer } from '../../protocols/redis/resp.js';
import { redisCredentialArgs } from './scrub.js';
import { printable } from './transcript.js';

export interface ReplayStep {
  /** Names of the client messages that precede the server bytes ('Q', StartupMessage, SET, ...). */
  expect: string[];
  /** For each of them: the recorded message is a login (its credential scrubbed), where the replay's password is due. */
  login: boolean[];
  server: Buffer[];
}

export interface ReplayScript {
  sessionId: string;
  protocol: 'postgres' | 'redis';
  steps: ReplayStep[];
  /** Server bytes in the script (the recorded SSL answer excluded). */
  serverBytes: number;
  /** A footer closes the recording: the script is the whole session. */
  complete: boolean;
  /** Where and why reading stopped early (a crash tail, a bad CRC): the script ends there. */
  stopped?: { offset: number; reason: string };
}

/**
 * Splits a client stream into named messages; SSL/GSSENC requests and
 * CancelRequests are flagged, and a login carries its `credential` (the
 * password it presents; empty when it is malformed).
 */
interface ClientSplitter {
  push(bytes: Buffer): { name: string; tls?: boolean; cancel?: boolean; credential?: Buffer }[];
}

function splitterFor(protocol: string): ClientSplitter {
  if (protocol === 'postgres') {
    const s = new PgClientMessages();
    return {
      push: (bytes) =>
        s.push(bytes).map((m) => ({
          name: pgMessageName(m),
          ...(m.type === 0 && (m.code === PG_REQUEST_CODES.ssl || m.code === PG_REQUEST_CODES.gssenc) ? { tls: true } : {}),
          ...(m.type === 0 && m.code === PG_REQUEST_CODES.cancel ? { cancel: true } : {}),
          ...(m.password !== undefined ? { credential: m.password } : {}),
        })),
    };
  }
  // The gateway's own request framer: incremental, so a command spread over many records is read
  // once (re-parsing the reassembled bytes from the start at each record took time quadratic in
  // their number: hours for a crafted 9 MB file).
  const framer = new RespRequestFramer();
  return {
    push: (bytes) => {
      const out: { name: string; credential?: Buffer }[] = [];
      framer.push(bytes, {
        command: (_raw, args) => {
          const secret = redisCredentialArgs(args);
          // AUTH pw, AUTH user pw, HELLO 3 AUTH user pw: one password; anything else is malformed.
          const credential = secret.length === 0 ? undefined : secret.length === 1 ? args[secret[0]!]! : Buffer.alloc(0);
          out.push({ name: (args[0]?.toString('utf8') ?? '?').toUpperCase(), ...(credential !== undefined ? { credential } : {}) });
        },
      });
      return out;
    },
  };
}

/** Reads a recording into a replay script. */
export async function buildReplayScript(path: string, opts: { onProgress?: (done: number, total: number) => void; size?: number } = {}): Promise<ReplayScript> {
  const reader = readRecording(path);
  const steps: ReplayStep[] = [{ expect: [], login: [], server: [] }];
  let split: ClientSplitter | undefined;
  /** Bytes of recorded SSL/GSSENC answers still to drop from the server side. */
  let dropServer = 0;
  let serverBytes = 0;
  let lastProgress = 0;
  for await (const rec of reader) {
    split ??= splitterFor(reader.header!.protocol);
    if (opts.onProgress && opts.size && rec.offset - lastProgress >= 4 * 1024 * 1024) {
      lastProgress = rec.offset;
      opts.onProgress(rec.offset, opts.size);
    }
    if (rec.type !== 'data') continue;
    const dir: Direction = rec.direction;
    if (dir === 'client') {
      const names: string[] = [];
      const login: boolean[] = [];
      let messages: ReturnType<ClientSplitter['push']>;
      try {
        messages = split.push(rec.bytes);
      } catch (err) {
        // The client's stream does not parse from here: the replay could not follow it.
        throw new Error(`record ${rec.seq} (client, at byte ${rec.offset}) cannot be replayed: ${err instanceof Error ? err.message : String(err)}`);
      }
      for (const m of messages) {
        if (m.tls) dropServer++;
        else {
          names.push(m.name);
          login.push(m.credential !== undefined);
        }
      }
      if (names.length) steps.push({ expect: names, login, server: [] });
    } else {
      let bytes = rec.bytes;
      if (dropServer > 0) {
        const k = Math.min(dropServer, bytes.length);
        dropServer -= k;
        bytes = bytes.subarray(k);
      }
      if (bytes.length) {
        steps[steps.length - 1]!.server.push(bytes);
        serverBytes += bytes.length;
      }
    }
  }
  const header = reader.header!;
  if (header.protocol !== 'postgres' && header.protocol !== 'redis') {
    throw new RangeError(`protocol ${printable(String(header.protocol))} cannot be replayed`);
  }
  return {
    sessionId: header.sessionId,
    protocol: header.protocol,
    steps,
    serverBytes,
    complete: reader.complete,
    ...(reader.stopped ? { stopped: reader.stopped } : {}),
  };
}

export interface ReplayServerOptions {
  script: ReplayScript;
  /** The password a client must log in with (the CLI makes one per run and prints it). */
  password: string;
  /** Default 127.0.0.1: a replay serves recorded data and has no authentication of its own. */
  host?: string;
  port: number;
  /** Stop listening after the first connection has been replayed. */
  once?: boolean;
  /** Connections replayed at once; more are refused (default 8). */
  maxConnections?: number;
  /** Time a connection has to log in with the password (default 30 000 ms). */
  loginTimeoutMs?: number;
  /** Once a connection is ended, how long it may stay idle before it is destroyed (default 30 000 ms). */
  closeGraceMs?: number;
  /** What happens, for a person (connections, divergences, the end). */
  onEvent?: (line: string) => void;
}

export interface RunningReplay {
  host: string;
  port: number;
  /** Resolves when the server has closed (with `once`: after the first connection). */
  done: Promise<void>;
  close(): Promise<void>;
}

export async function startReplayServer(opts: ReplayServerOptions): Promise<RunningReplay> {
  const { script } = opts;
  const say = opts.onEvent ?? (() => undefined);
  const host = opts.host ?? '127.0.0.1';
  const sockets = new Set<Socket>();
  /** Connections refused (too many at once) whose peer has not closed yet. */
  const refused = new Set<Socket>();
  let connections = 0;
  let resolveDone!: () => void;
  const done = new Promise<void>((r) => (resolveDone = r));
  const maxConnections = opts.maxConnections ?? DEFAULT_MAX_CONNECTIONS;
  const limits: ConnectionLimits = {
    loginTimeoutMs: opts.loginTimeoutMs ?? DEFAULT_LOGIN_TIMEOUT_MS,
    closeGraceMs: opts.closeGraceMs ?? DEFAULT_CLOSE_GRACE_MS,
  };
  const server: Server = createServer((socket) => {
    const n = ++connections;
    if (opts.once && n > 1) {
      socket.destroy();
      return;
    }
    if (sockets.size >= maxConnections) {
      socket.on('error', () => undefined);
      // Tracked apart, not counted: destroyed if the peer does not close, and by close().
      refused.add(socket);
      socket.on('close', () => refused.delete(socket));
      socket.end(refusal(script.protocol, sqlstates.TOO_MANY_CONNECTIONS, `too many connections: this replay serves ${maxConnections} at once`));
      destroyWhenIdle(socket, limits.closeGraceMs);
      say(`connection ${n} from ${socket.remoteAddress}:${socket.remotePort}: refused, ${maxConnections} already open`);
      return;
    }
    sockets.add(socket);
    say(`connection ${n} from ${socket.remoteAddress}:${socket.remotePort}`);
    socket.on('close', () => {
      sockets.delete(socket);
      if (opts.once) void close();
    });
    replayConnection(socket, script, Buffer.from(opts.password, 'utf8'), limits, (line) => say(`connection ${n}: ${line}`));
  });
  let closing: Promise<void> | undefined;
  const close = (): Promise<void> => {
    closing ??= new Promise<void>((resolve) => {
      server.close(() => resolve());
      for (const s of sockets) s.destroy();
      for (const s of refused) s.destroy();
    }).then(resolveDone);
    return closing;
  };
  await new Promise<void>((resolve, reject) => {
    server.once('error', reject);
    server.listen(opts.port, host, () => {
      server.off('error', reject);
      resolve();
    });
  });
  const addr = server.address();
  const port = addr && typeof addr === 'object' ? addr.port : opts.port;
  return { host, port, done, close };
}

const DEFAULT_MAX_CONNECTIONS = 8;
const DEFAULT_LOGIN_TIMEOUT_MS = 30_000;
/** Once a connection is ended, how long it may go with nothing read or written before it is destroyed (its slot freed). */
const DEFAULT_CLOSE_GRACE_MS = 30_000;
/** What a connection may send before it has logged in: a startup packet and a password need a few hundred bytes. */
const MAX_BYTES_BEFORE_LOGIN = 64 * 1024;

/**
 * A socket ended by the replay (or by its peer) is destroyed once nothing has
 * moved on it for `graceMs`: a peer that never closes, or stops reading
 * what is still queued for it, keeps no slot, while one still reading the
 * last step's bytes gets all of them (writes count as activity).
 */
function destroyWhenIdle(socket: Socket, graceMs: number): void {
  socket.setTimeout(graceMs, () => socket.destroy());
}

/**
 * The protocol's own refusal, as a client shows it: a FATAL ErrorResponse
 * with `sqlstate`, or a Redis error (`-WRONGPASS` for a login, else `-ERR`).
 */
function refusal(protocol: ReplayScript['protocol'], sqlstate: string, text: string): Buffer {
  if (protocol === 'redis') return error(text, sqlstate === sqlstates.INVALID_PASSWORD ? 'WRONGPASS' : 'ERR');
  return errorResponse({ severity: 'FATAL', code: sqlstate, message: text });
}

function loginRefusal(protocol: ReplayScript['protocol']): Buffer {
  return refusal(protocol, sqlstates.INVALID_PASSWORD, 'password authentication failed: log in with the password sluice replay printed');
}

function samePassword(given: Buffer, password: Buffer): boolean {
  return given.length === password.length && timingSafeEqual(given, password);
}

interface ConnectionLimits {
  loginTimeoutMs: number;
  closeGraceMs: number;
}

function replayConnection(socket: Socket, script: ReplayScript, password: Buffer, limits: ConnectionLimits, say: (line: string) => void): void {
  const split = splitterFor(script.protocol);
  let step = 0;
  let got = 0;
  let received = 0;
  let finished = false;
  /** The client has sent the replay's password; until then its input and time are bounded. */
  let loggedIn = false;
  let bytesBeforeLogin = 0;
  const loginTimer = setTimeout(() => {
    if (loggedIn || finished) return;
    socket.write(refusal(script.protocol, sqlstates.QUERY_CANCELED, `canceling authentication: no login within ${limits.loginTimeoutMs / 1000}s; closing`));
    finish(`no login within ${limits.loginTimeoutMs / 1000}s; closing`);
  }, limits.loginTimeoutMs);
  loginTimer.unref();
  socket.on('close', () => clearTimeout(loginTimer));
  const warned = { count: 0 };
  const warn = (line: string): void => {
    // A client that diverged early diverges on every later message: a few lines say it.
    if (++warned.count <= 10) say(`warning: ${line}`);
    else if (warned.count === 11) say('warning: more divergences not shown');
  };
  const finish = (why: string): void => {
    if (finished) return;
    finished = true;
    say(why);
    socket.end();
    destroyWhenIdle(socket, limits.closeGraceMs);
  };
  /** Writes every step that expects nothing more; ends when the script is done. */
  const advance = (): void => {
    while (step < script.steps.length && got >= script.steps[step]!.expect.length) {
      const s = script.steps[step]!;
      if (s.server.length) socket.write(Buffer.concat(s.server));
      step++;
      got = 0;
    }
    if (step >= script.steps.length) finish(`replay complete (${script.steps.length} steps, ${script.serverBytes} bytes sent); closing`);
  };
  socket.on('error', () => undefined);
  socket.on('data', (chunk: Buffer) => {
    if (finished) return;
    if (!loggedIn) bytesBeforeLogin += chunk.length;
    let msgs;
    try {
      msgs = split.push(chunk);
    } catch (err) {
      warn(`cannot frame what the client sent: ${err instanceof Error ? err.message : String(err)}`);
      finish('closing');
      return;
    }
    for (const m of msgs) {
      if (finished) return;
      if (m.tls) {
        // The recording holds cleartext: refuse TLS, the client goes on without it.
        socket.write(Buffer.from('N', 'latin1'));
        continue;
      }
      if (m.cancel) {
        finish('a CancelRequest: nothing to cancel in a replay; closing');
        return;
      }
      received++;
      const s = script.steps[step];
      if (!s) {
        finish(`the client sent message ${received} (${printable(m.name)}) after the end of the recording; closing`);
        return;
      }
      // The replay's own login: where the recording has one, and wherever the client sends one.
      if ((s.login[got] || m.credential !== undefined) && !(m.credential !== undefined && samePassword(m.credential, password))) {
        socket.write(loginRefusal(script.protocol));
        finish(`message ${received} (${printable(m.name)}): ${m.credential === undefined ? 'the recording logs in here, the client did not' : 'wrong password'}; refused, closing`);
        return;
      }
      if (m.credential !== undefined) loggedIn = true;
      const want = s.expect[got]!;
      if (want !== m.name) warn(`message ${received}: the recording has ${printable(want)}, the client sent ${printable(m.name)}`);
      got++;
      advance();
    }
    // Checked once the chunk's messages are handled, so that a login in this same chunk counts: what
    // follows a login is the logged-in client's. Unframed bytes held meanwhile are at most this plus one read.
    if (!loggedIn && !finished && bytesBeforeLogin > MAX_BYTES_BEFORE_LOGIN) {
      socket.write(refusal(script.protocol, sqlstates.PROTOCOL_VIOLATION, `more than ${MAX_BYTES_BEFORE_LOGIN / 1024} KiB sent before logging in; closing`));
      finish(`more than ${MAX_BYTES_BEFORE_LOGIN / 1024} KiB before a login; refused, closing`);
    }
  });
  socket.on('end', () => {
    if (!finished) {
      finished = true;
      say(`the client closed after ${received} messages (step ${step} of ${script.steps.length})`);
      socket.end();
      destroyWhenIdle(socket, limits.closeGraceMs);
    }
  });
  advance();
}

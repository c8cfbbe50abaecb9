/**
 * Records a live session at the client-facing edge, byte for byte.
 *
 * RecordingTap sits on the client socket itself, not inside a relay:
 *
 * - client -> gateway: a read observer on a socket that reads directly
 *   (src/gateway/direct-reads.ts), else a `data` listener prepended to the
 *   socket's, so it sees every chunk before the session or the relay does
 *   (live chunks read directly are recorded once the relay has handled
 *   them, see #deferred);
 * - gateway -> client: everything handed to `write` and `end(data)`: a
 *   write observer on a socket adopted by direct-reads (part of its class,
 *   so recording adds no own property to the socket), else the two methods
 *   wrapped on that socket instance. Whatever any code hands the socket
 *   (handshake replies, relayed rows after masking, Sluice's own errors) is
 *   recorded exactly as handed over. A string chunk is encoded as Node
 *   encodes it (utf8 unless an encoding is given).
 *
 * Byte exactness is therefore by construction, not by each relay remembering
 * to call the recorder. The one exception is the client's reads once a
 * relay runs (`handOverReads`): the relay hands the tap each chunk it reads
 * (`received`), which saves an observer on every read, and the Redis relay
 * also says what it has framed (`recordClientAfterFraming`).
 *
 * What "received" means: handed to the socket; bytes lost to a reset after
 * that are still in the recording.
 *
 * TLS: the plain socket is tapped for the SSLRequest and the one-byte 'S'
 * answer, then detached; the TLSSocket is attached after the handshake, so
 * the recording holds the cleartext (ciphertext is neither available nor
 * useful). Client offsets count cleartext bytes continuously across the
 * upgrade, like the PostgreSQL handshake framer's `streamOffset`.
 *
 * Credentials: until the session is admitted the tap HOLDS both directions
 * in memory (so the record order is exact) instead of recording them. The
 * session reports the credential message with `redact(start, end,
 * replacement)` (absolute client offsets) and, for everything it has parsed,
 * `commit(offset)`. `release(writer)` then records the held bytes with each
 * replacement spliced in, and the tap records live from then on. A session
 * that ends before admission releases only up to the committed offset, so a
 * half-received credential is never recorded.
 */
import { Buffer } from 'node:buffer';
import type { Socket } from 'node:net';
import {
  endObserved,
  observeReads,
  observeWrites,
  unobserveReads,
  unobserveWrites,
  writeObserved,
  type PlainEnd,
  type PlainWrite,
} from '../gateway/direct-reads.js';
import type { Logger } from '../log.js';
import { ErrorCodes, SluiceError } from '../errors.js';
import type { Identity } from '../identity/types.js';
import type { AuditVerdict, SessionRecord, SessionStore } from '../store/types.js';
import type { Direction, RecordingMeta } from './format.js';
import { indexRow } from './index-row.js';
import type { RecordingKey } from './keys.js';
import { RETENTION_INTERVAL_MS } from '../config/defaults.js';
import { purgeRecordings } from './retention.js';
import { sealThread } from './seal-thread.js';
import { RecordingWriter, createsFailing, recorderHealth, type RecordingResult, type RecordingWriterOptions } from './writer.js';

/** Pre-auth bytes held by default: the handshake cap (64 KiB) + the largest token (64 KiB) + room for pipelined chunks. */
export const DEFAULT_MAX_HELD_BYTES = 512 * 1024;

interface Redaction {
  start: number;
  end: number;
  replacement: Buffer;
}

interface Held {
  direction: Direction;
  bytes: Buffer;
  /** Absolute client offset of bytes[0] (client chunks only). */
  start: number;
}

interface Attached {
  onData: (chunk: Buffer | string) => void;
  write: Socket['write'];
  end: Socket['end'];
}

/** Bytes of a write/end chunk as the socket will send them. */
function chunkBytes(chunk: unknown, encoding: unknown): Buffer | undefined {
  if (chunk === undefined || chunk === null) return undefined;
  if (typeof chunk === 'string') return Buffer.from(chunk, typeof encoding === 'string' ? (encoding as BufferEncoding) : 'utf8');
  if (Buffer.isBuffer(chunk)) return chunk;
  if (chunk instanceof Uint8Array) return Buffer.from(chunk.buffer, chunk.byteOffset, chunk.byteLength);
  return undefined;
}

export class RecordingTap {
  readonly #maxHeldBytes: number;
  readonly #onOverflow: () => void;
  /** Tapped sockets: undefined for one observed through direct-reads, else what detach restores. */
  readonly #sockets = new Map<Socket, Attached | undefined>();
  #writer: RecordingWriter | undefined;
  #holding = true;
  #finished = false;
  #held: Held[] = [];
  #heldBytes = 0;
  #overflowed = false;
  #clientOffset = 0;
  #committed = 0;
  readonly #redactions: Redaction[] = [];
  /**
   * After login, Redis sessions record client bytes only once the relay has
   * framed them (see `recordClientAfterFraming`): bytes received but not yet
   * framed wait here, so a credential the relay finds (an AUTH sent again
   * after login) can still be scrubbed.
   */
  #afterFraming = false;
  #pendingClient: Buffer[] = [];
  #pendingStart = 0;
  /**
   * Set by `framesClientAfterLogin`: at admission, client bytes past what
   * the session parsed wait for the relay's framing too (see release), and
   * this says what of the never-framed ones may be recorded when the
   * session ends (see finish). Without it, nothing of them is.
   */
  #scrubUnframed: ((bytes: Buffer) => Buffer) | undefined;
  /** After `handOverReads`, the relay hands over each client chunk (`received`): no read observer. */
  #readsHandedOver = false;

  constructor(opts: { maxHeldBytes?: number; onOverflow?: () => void } = {}) {
    this.#maxHeldBytes = opts.maxHeldBytes ?? DEFAULT_MAX_HELD_BYTES;
    this.#onOverflow = opts.onOverflow ?? (() => undefined);
  }

  /** Cleartext client bytes seen so far (across a TLS upgrade). */
  get clientOffset(): number {
    return this.#clientOffset;
  }

  /** Client bytes the session has parsed (see commit). */
  get committedOffset(): number {
    return this.#committed;
  }

  get holding(): boolean {
    return this.#holding;
  }

  attach(socket: Socket): void {
    if (this.#sockets.has(socket) || this.#finished) return;
    const onData = (chunk: Buffer | string): void => {
      const bytes = typeof chunk === 'string' ? Buffer.from(chunk, 'utf8') : chunk;
      const start = this.#clientOffset;
      this.#clientOffset += bytes.length;
      // Recorded once the session's own listeners have read it, as on a socket that reads directly
      // (there, the read observer's `after`): a message they refuse is cut out first (cutClient).
      this.#take('client', bytes, start, true);
      if (this.#deferred !== undefined) queueMicrotask(this.#recordDeferred);
    };
    // Everything handed to write / end(data): the bytes as the socket sends them.
    const onWrite = (chunk: unknown, encoding: BufferEncoding | undefined): void => {
      const bytes = chunkBytes(chunk, encoding);
      if (bytes && bytes.length > 0) this.#take('server', bytes, 0);
    };
    // On a socket that reads directly, a live client chunk is recorded once the relay has handled it (see #deferred).
    const onDirectData = (chunk: Buffer): void => {
      const start = this.#clientOffset;
      this.#clientOffset += chunk.length;
      this.#take('client', chunk, start, true);
    };
    // A session socket adopted by direct-reads takes observers in its own fields (its hidden class stays
    // what it is without a recording); any other socket (a TLSSocket) gets a prepended 'data' listener and
    // write / end wrapped as own properties of the instance, which detach deletes.
    if (observeWrites(socket, onWrite)) {
      // The same sockets take both; once the relay hands over its chunks (`received`), reads are not observed.
      if (!this.#readsHandedOver) observeReads(socket, onDirectData, this.#recordDeferred);
      this.#sockets.set(socket, undefined);
      return;
    }
    const origWrite = socket.write;
    const origEnd = socket.end;
    socket.write = function (this: Socket, chunk: unknown, encoding?: unknown, cb?: unknown): boolean {
      return writeObserved(this, origWrite as PlainWrite, onWrite, chunk, encoding, cb);
    } as Socket['write'];
    socket.end = function (this: Socket, chunk?: unknown, encoding?: unknown, cb?: unknown): Socket {
      return endObserved(this, origEnd as PlainEnd, onWrite, chunk, encoding, cb);
    } as Socket['end'];
    if (!this.#readsHandedOver) socket.prependListener('data', onData);
    this.#sockets.set(socket, { onData, write: origWrite, end: origEnd });
  }

  /** Restores the socket's methods and stops listening (the plain socket before a TLS upgrade; every socket at the end). */
  detach(socket: Socket): void {
    if (!this.#sockets.has(socket)) return;
    const a = this.#sockets.get(socket);
    this.#recordDeferred();
    this.#sockets.delete(socket);
    if (a === undefined) {
      unobserveReads(socket);
      unobserveWrites(socket);
      return;
    }
    socket.off('data', a.onData);
    // The wrappers are own properties; deleting them uncovers the prototype's methods again.
    const own = socket as unknown as Record<string, unknown>;
    if (own.write !== a.write) delete own.write;
    if (own.end !== a.end) delete own.end;
    if (socket.write !== a.write) socket.write = a.write;
    if (socket.end !== a.end) socket.end = a.end;
  }

  /** Client bytes [start, end) (absolute offsets) are a credential message: record `replacement` in their place. */
  redact(start: number, end: number, replacement: Buffer): void {
    if (!this.#holding) throw new Error('RecordingTap.redact after release: the bytes are already recorded');
    if (!(start >= 0 && end >= start)) throw new RangeError(`bad redaction range ${start}..${end}`);
    this.#redactions.push({ start, end, replacement: Buffer.from(replacement) });
    this.#redactions.sort((a, b) => a.start - b.start);
  }

  /** Client bytes before `offset` are parsed: any credential in them has been redacted. */
  commit(offset: number): void {
    if (offset > this.#committed) this.#committed = offset;
  }

  /**
   * Records what is held, redactions spliced in, then records live. With
   * `upTo` (a session ending before admission), client bytes at or past it
   * are dropped: they were never parsed and may be part of a credential.
   */
  release(writer: RecordingWriter, opts: { upTo?: number } = {}): void {
    if (!this.#holding || this.#finished) return;
    this.#holding = false;
    this.#writer = writer;
    // A Redis session admitted: bytes past the login command have not been parsed yet. They wait for
    // the relay's framing like every later byte, so a credential among them is scrubbed first.
    const framing = this.#scrubUnframed !== undefined && opts.upTo === undefined;
    const limit = Math.min(framing ? this.#committed : (opts.upTo ?? Infinity), this.#clientCut);
    if (framing) {
      this.#afterFraming = true;
      this.#pendingStart = limit;
    }
    let skipTo = 0;
    let r = 0;
    const redactions = this.#redactions;
    for (const h of this.#held) {
      if (h.direction === 'server') {
        writer.record('server', h.bytes);
        continue;
      }
      const start = h.start;
      const end = Math.min(start + h.bytes.length, limit);
      const parts: Buffer[] = [];
      let pos = Math.max(start, skipTo);
      while (r < redactions.length && redactions[r]!.start < end) {
        const red = redactions[r]!;
        if (red.start >= pos) {
          if (red.start > pos) parts.push(h.bytes.subarray(pos - start, red.start - start));
          parts.push(red.replacement);
        }
        pos = Math.max(pos, red.end);
        skipTo = Math.max(skipTo, red.end);
        r++;
      }
      if (pos < end) parts.push(h.bytes.subarray(pos - start, end - start));
      const out = parts.length === 1 ? parts[0]! : Buffer.concat(parts);
      if (out.length > 0) writer.record('client', out);
      // Held bytes are copies already: what is past the limit can wait as it is.
      if (framing && start + h.bytes.length > limit) this.#pendingClient.push(h.bytes.subarray(Math.max(0, limit - start)));
    }
    this.#held = [];
    this.#heldBytes = 0;
  }

  /** Stops recording and restores every socket; held bytes are dropped. */
  finish(): void {
    this.#recordDeferred();
    // Bytes the relay never framed (the session ended mid-command, or before its relay started) were
    // never parsed: they may hold a credential. Only what the session's scrubber makes of them is recorded.
    if (this.#afterFraming && this.#pendingClient.length > 0) {
      const pending = Buffer.concat(this.#pendingClient);
      const kept = this.#scrubUnframed?.(pending);
      if (kept !== undefined && kept.length > 0) this.#writer?.record('client', kept);
      this.#pendingClient = [];
    }
    this.#finished = true;
    this.#holding = false;
    this.#writer = undefined;
    this.#held = [];
    this.#heldBytes = 0;
    for (const s of [...this.#sockets.keys()]) this.detach(s);
  }

  /** True when the client sent more than the hold allows before admission. */
  get overflowed(): boolean {
    return this.#overflowed;
  }

  /**
   * From now on client bytes are recorded when `framed(upTo)` says the
   * relay has parsed them, with `scrubPending` replacements applied; server
   * bytes are still recorded as they are written.
   */
  recordClientAfterFraming(): void {
    this.#recordDeferred();
    if (!this.#afterFraming) {
      this.#afterFraming = true;
      this.#pendingStart = this.#clientOffset;
    }
    this.handOverReads();
  }

  /**
   * From now on the relay hands over every chunk it reads from the client
   * (`received`, then `handled` once it has dealt with it), so the tap stops
   * observing the reads: a read observer keeps Node from inlining the
   * socket's read callback, about 0.5 µs per read (bench/RESULTS.md). Only
   * live chunks are handed over; bytes read before this were seen already.
   */
  handOverReads(): void {
    this.#readsHandedOver = true;
    for (const [socket, a] of this.#sockets) {
      if (a === undefined) unobserveReads(socket);
      else socket.off('data', a.onData);
    }
  }

  /**
   * A session that will call `recordClientAfterFraming` (Redis) says so
   * before admission: `release` then records the client bytes only up to
   * what the session parsed (the login command), and the rest waits for the
   * relay's framing. `scrubUnframed` gets the client bytes still unframed
   * when the session ends and returns what may be recorded of them.
   */
  framesClientAfterLogin(scrubUnframed: (bytes: Buffer) => Buffer): void {
    this.#scrubUnframed = scrubUnframed;
  }

  /**
   * After `handOverReads`: a chunk the relay read from the client, before
   * it handles it. After framing (Redis) it waits for `framed`; otherwise
   * it is recorded at `handled` (or before anything else is recorded).
   */
  received(chunk: Buffer): void {
    if (!this.#readsHandedOver || this.#finished) return;
    if (!this.#afterFraming) {
      const start = this.#clientOffset;
      this.#clientOffset += chunk.length;
      this.#take('client', chunk, start, true);
      return;
    }
    this.#clientOffset += chunk.length;
    // As #take does for a client chunk after framing, without its checks for the other modes (per chunk).
    if (this.#deferred !== undefined) this.#recordDeferred();
    if (this.#borrowed) this.#keepPending();
    this.#pendingClient.push(chunk);
    this.#borrowed = true;
  }

  /**
   * The session refused a client message that starts at absolute client
   * offset `offset` (a PostgreSQL `p` message after authentication: its body
   * may be a credential): no client byte from there on is recorded. Called
   * while the chunk that holds it waits to be recorded (after the relay or
   * the handshake reader has handled it), or is still held.
   */
  cutClient(offset: number): void {
    if (offset < 0 || offset >= this.#clientCut) return;
    this.#clientCut = offset;
    const d = this.#deferred;
    if (d !== undefined) {
      const keep = offset - this.#deferredStart;
      this.#deferred = keep <= 0 ? undefined : keep < d.length ? d.subarray(0, keep) : d;
    }
  }

  /** The relay has handled the chunk last `received`: record it now if it still waits. */
  handled(): void {
    if (this.#deferred !== undefined) this.#recordDeferred();
  }

  /** The relay found a credential command among the client bytes not yet recorded: record `replacement` instead of it. */
  scrubPending(raw: Buffer, replacement: Buffer): void {
    if (!this.#afterFraming || this.#pendingClient.length === 0) return;
    const pending = this.#pendingClient.length === 1 ? this.#pendingClient[0]! : Buffer.concat(this.#pendingClient);
    const at = pending.indexOf(raw);
    if (at < 0) return;
    // A fresh buffer: nothing pending is borrowed from the socket any more.
    this.#pendingClient = [Buffer.concat([pending.subarray(0, at), replacement, pending.subarray(at + raw.length)])];
    this.#borrowed = false;
    // What is pending is now longer or shorter than the stream it stands for.
    this.#scrubShift += replacement.length - raw.length;
  }

  /**
   * Client bytes before absolute offset `upTo` are framed: record them.
   *
   * The relay calls this from its own `data` listener, right after the tap
   * (its read observer or prepended listener) saw the same chunk, so the chunk is still the socket's
   * and can be recorded straight from it: the writer copies it into its
   * slab. Whatever stays pending (a command that straddles chunks) is copied
   * here, before the chunk goes back to the socket's reader; with `midChunk`
   * (the relay records the bytes up to a command it is about to answer, and
   * goes on framing the chunk) it is not copied yet: the call at the end of
   * the chunk records or copies it.
   */
  framed(upTo: number, midChunk = false): void {
    if (!this.#afterFraming || this.#finished) return;
    const take = upTo - this.#pendingStart + this.#scrubShift;
    const pieces = this.#pendingClient;
    if (take <= 0 || pieces.length === 0) {
      if (!midChunk) this.#keepPending();
      return;
    }
    const pending = pieces.length === 1 ? pieces[0]! : Buffer.concat(pieces);
    if (take >= pending.length) {
      // The common case: everything received is framed, recorded as it came.
      this.#writer?.record('client', pending);
      // pop, not `length = 0`: that frees the array's backing store, which the next push then
      // allocates again (78 ns against 4 a chunk in a micro-benchmark; in the relay's profile).
      if (pieces.length === 1) pieces.pop();
      else pieces.length = 0;
      this.#borrowed = false;
    } else {
      this.#writer?.record('client', pending.subarray(0, take));
      this.#pendingClient = [pending.subarray(take)];
      // A concat made a copy already; a lone piece may still be the socket's chunk.
      if (pieces.length > 1) this.#borrowed = false;
      if (!midChunk) this.#keepPending();
    }
    this.#pendingStart = upTo;
    this.#scrubShift = 0;
  }

  /** Recorded length minus original length of the pending client bytes (after scrubs). */
  #scrubShift = 0;
  /** The last pending piece is the socket's own chunk, not a copy (see framed). */
  #borrowed = false;

  /** Pending bytes outlive the chunk they came in: copy the piece still borrowed from the socket. */
  #keepPending(): void {
    if (!this.#borrowed) return;
    this.#borrowed = false;
    const pieces = this.#pendingClient;
    const last = pieces.length - 1;
    if (last >= 0) pieces[last] = Buffer.from(pieces[last]!);
  }

  /**
   * A live client chunk read directly, not yet recorded: the read observer
   * holds it until the socket's 'data' listeners (the relay) have handled
   * it, so recording does not delay the bytes on their way upstream. It is
   * recorded before anything else is (a reply written while the relay
   * handled the chunk is recorded after it), so the order is as received.
   */
  #deferred: Buffer | undefined;
  /** Absolute client offset of #deferred[0]. */
  #deferredStart = 0;
  /** Client bytes at or past this absolute offset are not recorded (cutClient). */
  #clientCut = Infinity;

  readonly #recordDeferred = (): void => {
    const bytes = this.#deferred;
    if (bytes === undefined) return;
    this.#deferred = undefined;
    this.#writer?.record('client', bytes);
  };

  #take(direction: Direction, bytes: Buffer, start: number, deferrable = false): void {
    if (this.#finished) return;
    if (this.#deferred !== undefined) this.#recordDeferred();
    if (direction === 'client' && start + bytes.length > this.#clientCut) {
      // After a refused message: only what came before it.
      if (start >= this.#clientCut) return;
      bytes = bytes.subarray(0, this.#clientCut - start);
    }
    if (!this.#holding) {
      if (direction === 'client' && deferrable && !this.#afterFraming && this.#writer !== undefined) {
        this.#deferred = bytes;
        this.#deferredStart = start;
        return;
      }
      if (direction === 'client' && this.#afterFraming) {
        // Borrowed until the relay's framed() for this chunk, which records it or copies what it leaves pending.
        this.#keepPending();
        this.#pendingClient.push(bytes);
        this.#borrowed = true;
        return;
      }
      this.#writer?.record(direction, bytes);
      return;
    }
    if (this.#overflowed) return;
    if (this.#heldBytes + bytes.length > this.#maxHeldBytes) {
      // Nothing more can be held faithfully: the session must end (fail closed).
      this.#overflowed = true;
      this.#held = [];
      this.#heldBytes = 0;
      process.nextTick(this.#onOverflow);
      return;
    }
    // Copy: the socket's buffer may be pooled and the holder keeps it past this tick.
    this.#held.push({ direction, bytes: Buffer.from(bytes), start });
    this.#heldBytes += bytes.length;
  }
}

// --- the gateway's recorder --------------------------------------------------

export interface RecordingSettings {
  enabled: boolean;
  /** Per-session file cap, bytes. */
  maxBytes: number;
  flushIntervalMs: number;
  /** Recordings and index rows older than this are purged; 0 = keep forever. */
  retentionMs: number;
  /** Unwritten bytes per session before its reads pause (RecordingWriterOptions.maxBacklogBytes). */
  maxBacklogBytes?: number;
  /** `off`: a recording is not fsynced at its close (RecordingWriterOptions.fsyncAtClose). Default `close`. */
  fsync?: 'close' | 'off';
}

/** What a session's writer takes from the recorder's settings. */
export function writerSettings(s: RecordingSettings): Pick<RecordingWriterOptions, 'maxBytes' | 'flushIntervalMs' | 'maxBacklogBytes' | 'fsyncAtClose'> {
  // maxBacklogBytes undefined: the writer's default.
  return { maxBytes: s.maxBytes, flushIntervalMs: s.flushIntervalMs, maxBacklogBytes: s.maxBacklogBytes, fsyncAtClose: s.fsync !== 'off' };
}

/**
 * A session's upstream login; when the session is recorded, with its
 * recording's admission alongside (SessionRecording.admitAlongside).
 * `admitted` is called once the session may leave the pre-auth state:
 * right away when it is not recorded.
 */
export function loginRecorded<T>(
  recording: SessionRecording | undefined,
  identity: Identity,
  admitted: () => void,
  login: () => Promise<T>,
  discard: (upstream: T) => void,
): Promise<T> {
  if (recording) return recording.admitAlongside(identity, admitted, login, discard);
  admitted();
  return login();
}

/** What #endRequested resolves to: no value a login or an admission resolves with. */
const ENDED: unique symbol = Symbol('session ended');

/** What admitAlongside throws when the session ended before it was admitted; the session is closed already. */
function sessionEnded(): SluiceError {
  return new SluiceError(ErrorCodes.PROTOCOL_VIOLATION, 'the session ended before it was admitted');
}

/** While unhealthy, a probe write is tried at most this often. */
const PROBE_INTERVAL_MS = 3_000;

/** What the recorder counts in the gateway's metrics. */
export interface RecordingMetrics {
  /** A session paused for its recording (sluice_recording_backpressure_total). */
  recordingBackpressure(target: string): void;
}

export interface SessionInfo {
  sessionId: string;
  target: string;
  protocol: 'postgres' | 'redis';
  clientAddress?: string;
}

/**
 * Process-wide: the recording key, the session index, recorder health and
 * retention. One SessionRecording per accepted connection.
 */
export class SessionRecorder {
  readonly stateDir: string;
  readonly settings: RecordingSettings;
  readonly key: RecordingKey;
  readonly store: SessionStore | undefined;
  readonly logger: Logger;
  readonly maxHeldBytes: number;
  readonly metrics: RecordingMetrics | undefined;
  readonly #live = new Set<SessionRecording>();
  #lastProbe = 0;
  #probe: Promise<boolean> | undefined;
  #retentionTimer: NodeJS.Timeout | undefined;

  constructor(opts: {
    stateDir: string;
    settings: RecordingSettings;
    key: RecordingKey;
    store?: SessionStore;
    logger: Logger;
    maxHeldBytes?: number;
    metrics?: RecordingMetrics;
  }) {
    this.stateDir = opts.stateDir;
    this.settings = opts.settings;
    this.key = opts.key;
    this.store = opts.store;
    this.logger = opts.logger;
    this.maxHeldBytes = opts.maxHeldBytes ?? DEFAULT_MAX_HELD_BYTES;
    this.metrics = opts.metrics;
    // Started now, not by the first session: a worker thread takes some 50 ms to boot.
    // Should it fail to start, the first recorded session tries again and is refused with the reason.
    if (this.settings.enabled) {
      try {
        sealThread();
      } catch {
        // see above
      }
    }
  }

  health(): { ok: boolean; lastError?: string } {
    return recorderHealth();
  }

  /** True when sessions may be recorded; while unhealthy, retries a probe write at most every few seconds. */
  async available(): Promise<boolean> {
    if (recorderHealth().ok) return true;
    if (!this.#probe && Date.now() - this.#lastProbe >= PROBE_INTERVAL_MS) {
      this.#lastProbe = Date.now();
      this.#probe = RecordingWriter.probe(this.stateDir).finally(() => (this.#probe = undefined));
    }
    if (this.#probe) await this.#probe;
    return recorderHealth().ok;
  }

  /** Starts tapping an accepted connection (holding until admission). */
  begin(socket: Socket, info: SessionInfo): SessionRecording {
    const rec = new SessionRecording(this, info, () => this.#live.delete(rec));
    this.#live.add(rec);
    rec.tap.attach(socket);
    return rec;
  }

  /** Purges now and every hour (unref'd); no-op when retention is 0. */
  startRetention(): void {
    if (this.settings.retentionMs <= 0 || !this.store || this.#retentionTimer) return;
    const run = (): void => {
      // The files of live sessions are kept whatever their age: an idle session writes nothing.
      const live = new Set<string>();
      for (const r of this.#live) if (r.path !== undefined) live.add(r.path);
      purgeRecordings(this.stateDir, this.store!, this.settings.retentionMs, Date.now(), live)
        .then((r) => {
          if (r.files || r.rows || r.errors.length) this.logger.info({ files: r.files, bytes: r.bytes, rows: r.rows, errors: r.errors.length }, 'recordings purged');
        })
        .catch((err: unknown) => this.logger.warn({ err: err instanceof Error ? err.message : String(err) }, 'recording retention failed'));
    };
    run();
    this.#retentionTimer = setInterval(run, RETENTION_INTERVAL_MS);
    this.#retentionTimer.unref();
  }

  /** Ends every recording still open (after the gateway closed its sockets) and stops retention. */
  async close(reason: string): Promise<void> {
    if (this.#retentionTimer) clearInterval(this.#retentionTimer);
    this.#retentionTimer = undefined;
    // Socket 'close' events of just-destroyed sockets arrive on the next turn: let sessions end themselves first.
    await new Promise<void>((resolve) => setImmediate(resolve));
    await Promise.all([...this.#live].map((r) => r.end(reason)));
  }
}

/**
 * One connection's recording: the tap, and from admission the writer and
 * the index row. The session calls redact/commit while parsing the
 * handshake, admit() once the subject is verified and bound to a policy
 * (throws to refuse when the recorder is unavailable), and end() when the
 * connection is over.
 */
export class SessionRecording {
  readonly tap: RecordingTap;
  readonly #recorder: SessionRecorder;
  readonly #info: SessionInfo;
  readonly #startedAt = new Date().toISOString();
  readonly #done: () => void;
  #writer: RecordingWriter | undefined;
  #identity: Identity | undefined;

  /** The recording's file once admitted (retention keeps it while the session lives). */
  get path(): string | undefined {
    return this.#writer?.path;
  }
  #credentialSeen = false;
  #admitting: Promise<void> | undefined;
  #ending: Promise<void> | undefined;
  #failure: ((err: SluiceError) => void) | undefined;
  #pendingFailure: SluiceError | undefined;
  #backlog: ((behind: boolean) => void) | undefined;
  #backlogPauses = 0;
  #behind = false;
  readonly #verdicts = { allowed: 0, denied: 0, approvals: 0 };
  /** Resolves to ENDED when end() is first called (see admitAlongside). */
  readonly #endRequested: Promise<typeof ENDED>;
  #requestEnd!: () => void;
  /** #meta's last answer: asked for at the open and for each index row, always with the same identity. */
  #metaOf: { identity: Identity | undefined; meta: RecordingMeta } | undefined;

  constructor(recorder: SessionRecorder, info: SessionInfo, done: () => void) {
    this.#recorder = recorder;
    this.#info = info;
    this.#done = done;
    this.#endRequested = new Promise((resolve) => (this.#requestEnd = () => resolve(ENDED)));
    this.tap = new RecordingTap({
      maxHeldBytes: recorder.maxHeldBytes,
      onOverflow: () =>
        this.#fail(new SluiceError(ErrorCodes.PROTOCOL_VIOLATION, 'too much data received before authentication completed')),
    });
  }

  /** Where a recording failure (write error, size cap, pre-auth overflow) goes: the session ends itself. */
  onFailure(handler: (err: SluiceError) => void): void {
    this.#failure = handler;
    const pending = this.#pendingFailure;
    this.#pendingFailure = undefined;
    if (pending) handler(pending);
  }

  /**
   * Where the recording's backlog signal goes (see RecordingWriter,
   * onBacklog): the session stops reading from both sides while `behind`.
   * Each pause is counted (sluice_recording_backpressure_total); the first
   * of a session is logged, as a slow disk may cause one at every batch.
   */
  onBacklog(handler: (behind: boolean) => void): void {
    this.#backlog = handler;
  }

  /** The recording is behind now: a relay started meanwhile must start held. */
  get behind(): boolean {
    return this.#behind;
  }

  #backlogChanged(behind: boolean): void {
    this.#behind = behind;
    if (behind) {
      this.#recorder.metrics?.recordingBackpressure(this.#info.target);
      if (this.#backlogPauses++ === 0) {
        this.#recorder.logger.warn({ session: this.#info.sessionId, target: this.#info.target }, 'session recording fell behind; reads pause until it catches up');
      }
    }
    this.#backlog?.(behind);
  }

  #fail(err: SluiceError): void {
    if (this.#ending) return;
    if (this.#failure) this.#failure(err);
    else this.#pendingFailure = err;
  }

  /** The credential message occupied client bytes [start, end): record `replacement` instead. */
  redact(start: number, end: number, replacement: Buffer): void {
    this.#credentialSeen = true;
    this.tap.redact(start, end, replacement);
    this.tap.commit(end);
  }

  commit(offset: number): void {
    this.tap.commit(offset);
  }

  /** The token was verified (admitted or not): the session gets an index row. */
  identified(identity: Identity): void {
    this.#identity = identity;
  }

  countVerdict(verdict: AuditVerdict): void {
    if (verdict === 'allowed' || verdict === 'approved') this.#verdicts.allowed++;
    else this.#verdicts.denied++;
    if (verdict === 'approved') this.#verdicts.approvals++;
  }

  /**
   * Admission: opens the recording and releases what the tap held. Throws a
   * SluiceError (SLUICE_RECORDING_WRITE_FAILED) when the recorder is
   * unhealthy or the file cannot be created: the session must be refused.
   */
  admit(identity: Identity): Promise<void> {
    this.#identity = identity;
    this.#admitting ??= this.#admit(identity);
    return this.#admitting;
  }

  /**
   * Admission (see admit) while the session's upstream login runs: the file
   * is created meanwhile (files.ts), so a new session waits for the
   * slower of the two, not for both in turn. `admitted` is called once the
   * recording is open. Resolves with the login's result once both are
   * done, and the session's relay starts only then: no statement or
   * command of the client's reaches the upstream before its recording
   * exists. The login itself carries only what any login carries: the
   * client's vetted startup parameters (PostgreSQL) or the name given with
   * its HELLO (Redis).
   *
   * Throws, and closes the login (`discard`) whenever it completes, as soon
   * as admission fails or the session ends (end(): the pre-auth timeout, the
   * client gone): a create held by a hung disk must not hold upstream
   * connections too. While the recorder is failing, or its last create
   * failed, admission (a probe, then most likely a refusal) runs first, so a
   * session about to be refused costs the upstream no login.
   */
  async admitAlongside<T>(identity: Identity, admitted: () => void, login: () => Promise<T>, discard: (upstream: T) => void): Promise<T> {
    const admission = this.admit(identity).then(admitted);
    if (!recorderHealth().ok || createsFailing()) {
      await this.#orEnded(admission);
      if (this.#ending !== undefined) throw sessionEnded();
      return login();
    }
    let abandoned = false;
    let upstream: T | undefined;
    const loggedIn = Promise.resolve()
      .then(login)
      .then((u) => {
        if (abandoned) discard(u);
        else upstream = u;
        return u;
      });
    // Its failure is thrown below, or, once abandoned, of no interest.
    loggedIn.catch(() => undefined);
    try {
      await this.#orEnded(admission);
      return await this.#orEnded(loggedIn);
    } catch (err) {
      abandoned = true;
      if (upstream !== undefined) discard(upstream);
      throw err;
    }
  }

  /** `p`, or a rejection as soon as the session ends (end() is called), whichever comes first. */
  async #orEnded<V>(p: Promise<V>): Promise<V> {
    // The error is made only when the end comes first. Every session ends, most long after
    // admission: made for every race, the two errors with their stack traces were about 50 µs
    // of the event loop per `pgbench -C` connection (perf).
    const first = await Promise.race([p, this.#endRequested]);
    if (first === ENDED) throw sessionEnded();
    return first as V;
  }

  async #admit(identity: Identity): Promise<void> {
    const recorder = this.#recorder;
    if (!(await recorder.available())) {
      throw new SluiceError(ErrorCodes.RECORDING_WRITE_FAILED, 'session recording is unavailable; new sessions are refused until it recovers');
    }
    if (this.#ending) return;
    const writer = await this.#open(identity);
    this.#writer = writer;
    if (this.tap.overflowed) return; // the session is being ended; #end closes the writer
    this.tap.release(writer);
    this.#upsert(undefined);
  }

  async #open(identity: Identity | undefined): Promise<RecordingWriter> {
    const recorder = this.#recorder;
    const info = this.#info;
    try {
      return await RecordingWriter.open({
        stateDir: recorder.stateDir,
        key: recorder.key,
        ...writerSettings(recorder.settings),
        onBacklog: (behind) => this.#backlogChanged(behind),
        meta: this.#meta(identity),
        onFailure: (err) => this.#fail(err),
      });
    } catch (err) {
      recorder.logger.error({ session: info.sessionId, reason: err instanceof Error ? err.message : String(err) }, 'session recording could not be opened');
      throw new SluiceError(ErrorCodes.RECORDING_WRITE_FAILED, 'session recording is unavailable; new sessions are refused until it recovers', { cause: err });
    }
  }

  /** What the recording's header says of the session; a failed login's recording has no subject. */
  #meta(identity: Identity | undefined): RecordingMeta {
    const known = this.#metaOf;
    if (known !== undefined && known.identity === identity) return known.meta;
    const info = this.#info;
    const meta: RecordingMeta = {
      sessionId: info.sessionId,
      target: info.target,
      protocol: info.protocol,
      subject: identity?.subject ?? '',
      groups: identity?.groups ?? [],
      issuer: identity?.issuer ?? '',
      tokenIdHash: identity?.tokenId,
      clientAddress: info.clientAddress,
      startedAt: this.#startedAt,
    };
    this.#metaOf = { identity, meta };
    return meta;
  }

  /** Closes the recording (footer, fsync) and completes the index row. Idempotent; never rejects. */
  end(closeReason: string): Promise<void> {
    this.#requestEnd();
    this.#ending ??= this.#end(closeReason).catch((err: unknown) => {
      this.#recorder.logger.error({ session: this.#info.sessionId, reason: err instanceof Error ? err.message : String(err) }, 'session recording could not be finished');
    }).finally(this.#done);
    return this.#ending;
  }

  async #end(closeReason: string): Promise<void> {
    await this.#admitting?.catch(() => undefined);
    const tap = this.tap;
    if (!this.#writer) {
      // Never admitted. A connection that presented a credential (a failed
      // login) is recorded up to what the session parsed; port probes,
      // cancel requests and clients that gave up earlier are not.
      if (!this.#credentialSeen || tap.overflowed || !recorderHealth().ok) {
        tap.finish();
        return;
      }
      this.#writer = await this.#open(this.#identity).catch(() => undefined);
      if (!this.#writer) {
        tap.finish();
        return;
      }
      tap.release(this.#writer, { upTo: tap.committedOffset });
    }
    tap.finish();
    // One end time for the footer and the index row (the footer is written up to 100 ms later).
    const endedAt = new Date().toISOString();
    const result = await this.#writer.close({ closeReason, endedAt });
    this.#upsert({ closeReason, endedAt, result });
  }

  #upsert(end: { closeReason: string; endedAt: string; result: RecordingResult } | undefined): void {
    const store = this.#recorder.store;
    const identity = this.#identity;
    if (!store || !identity) return;
    const result = end?.result;
    const row: SessionRecord = indexRow(this.#meta(identity));
    row.endedAt = end?.endedAt;
    row.closeReason = end?.closeReason;
    row.bytesIn = result?.bytesClientToGateway ?? 0;
    row.bytesOut = result?.bytesGatewayToClient ?? 0;
    row.statementsAllowed = this.#verdicts.allowed;
    row.statementsDenied = this.#verdicts.denied;
    row.approvals = this.#verdicts.approvals;
    row.recordingPath = this.#writer?.path;
    row.recordingSize = result?.size;
    row.finalHash = result?.finalHash;
    row.complete = result?.complete ?? false;
    try {
      store.upsertSession(row);
    } catch (err) {
      this.#recorder.logger.error({ session: this.#info.sessionId, reason: err instanceof Error ? err.message : String(err) }, 'session index row could not be written');
    }
  }
}

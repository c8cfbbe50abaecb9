import type { Socket } from 'node:net';
import type { Logger } from '../../src/log.js';
import { ReadHold, RelayReads } from '../../src/gateway/socket-reads.js';
import { endSocket } from '../../src/gateway/net.js';
import { PgFramer, PgProtocolError, RefusedMessage, type FramerSink } from './framer.js';
import { Frontend, errorResponse, sqlstate, terminate } from './messages.js';
import { ErrorCodes } from '../../src/errors.js';

/**
 * The steady state of a PostgreSQL session: bytes flow between the client
 * and the upstream through one framer per direction.
 *
 * Each chunk read is framed (so message boundaries and sizes are known, and
 * the statements policy inspects are whole) and what comes out is written to
 * the other side in ONE write: the chunk itself when every byte passes
 * through, otherwise a corked burst. A write that reports a full buffer
 * pauses the reading side until 'drain', so a slow client slows its own
 * upstream and never the gateway's memory, and the reverse.
 *
 * With a gate (policy, audit), the message types the gate names are handed
 * to it whole, and it decides what each side receives; without one, every
 * byte passes through.
 */
export interface RelayOptions {
  logger: Logger;
  /** Close the session after this long without a byte in either direction; 0 = never. */
  idleTimeoutMs: number;
  /** Called once, when both sockets are closed. */
  onClose(reason: string): void;
  gate?: RelayGate;
  /**
   * Rewrites the server's bytes before they are framed for the client (data
   * masking). `push` hands out what may go on through `emit`, in order; when
   * it returns a promise (work sent to a worker), reading from the upstream
   * pauses until it settles, so the transformer never holds more than it
   * chose to. A rejection ends the session (fail closed: nothing unmasked
   * is sent).
   */
  serverTransform?: ServerTransform;
  /**
   * The session recording (src/recording/tap.ts): handed each chunk read
   * from the client before the relay handles it, and told when it has
   * (the chunk is recorded then, ahead of any reply written meanwhile).
   */
  recordClient?: { received(chunk: Buffer): void; handled(): void; cutClient(offset: number): void };
  /**
   * Without a gate: told each client message the result masker pairs the
   * server's replies with (Query, Parse, Bind, Describe, Execute, Close,
   * Sync, FunctionCall), whole and in the order it goes upstream. With a gate, the gate
   * tells it (GateContext.onForward).
   */
  clientMessages?(type: number, bytes: Buffer): void;
}

/** The client messages `clientMessages` is told of. */
const PAIRED_CLIENT_TYPES = [Frontend.Query, Frontend.Parse, Frontend.Bind, Frontend.Describe, Frontend.Execute, Frontend.Close, Frontend.Sync, Frontend.FunctionCall];

export interface ServerTransform {
  push(chunk: Buffer, emit: (bytes: Buffer) => void): void | Promise<void>;
  close(): void;
}

/** What a gate can do to the streams. Calls made while a chunk is being framed are written when that chunk is done. */
export interface RelayIO {
  toUpstream(bytes: Buffer): void;
  toClient(bytes: Buffer): void;
  /** Writes whatever toUpstream/toClient collected outside a chunk's framing (after an async decision). */
  flush(): void;
  /** Stop / restart reading from the client (a statement is held for approval). */
  holdClient(): void;
  releaseClient(): void;
  /** True when the bytes sent to the client so far end at a message boundary: only then may the gate inject a message of its own. */
  clientAtBoundary(): boolean;
  /** Ends the session (the gate hit something it cannot recover from). */
  shutdown(reason: string, error?: Buffer): void;
}

export interface RelayGate {
  /** Client message types the gate wants whole. */
  readonly clientTypes: readonly number[];
  /** Server message types the gate wants whole. */
  readonly serverTypes: readonly number[];
  attach(io: RelayIO): void;
  /** `type` is -1 for pass-through bytes (not whole messages). */
  fromClient(type: number, bytes: Buffer): void;
  fromServer(type: number, bytes: Buffer): void;
  /** Called after each server chunk has been framed: a chance to emit what waited for a boundary. */
  serverChunkDone(): void;
  /**
   * Called once what a chunk (either side's) produced has been handed to the
   * sockets: for bookkeeping (the audit trail) that must not delay the bytes.
   */
  afterWrite(): void;
  close(): void;
}

export interface RelayStats {
  bytesFromClient: number;
  bytesFromUpstream: number;
}

/** How long a half-closed session may linger for the other side to finish. */
const HALF_CLOSE_GRACE_MS = 10_000;

const TERMINATE = terminate();

/** Below this many bytes, a burst of buffers is joined into one write instead of a writev. */
const SMALL_BURST = 16 * 1024;

/**
 * Bytes waiting for the next write to one side. Adjacent views of the same
 * chunk (the gate handing back, one by one, the messages it only looked at)
 * are merged into one run by arithmetic on offsets, and the run is cut out
 * only when the outbox is written: a chunk the gate only looked at leaves
 * as the chunk object it arrived as, with no buffer allocated per message.
 */
class Outbox {
  readonly #buffers: Buffer[] = [];
  /** First view of the run not yet cut out, and the offset (in its ArrayBuffer) just past the run. */
  #run: Buffer | undefined;
  #runEnd = 0;
  /** The chunk being framed for this side, if any: a run that covers it exactly is written as this object. */
  chunk: Buffer | undefined;

  add(b: Buffer): void {
    const run = this.#run;
    if (run !== undefined && run.buffer === b.buffer && this.#runEnd === b.byteOffset) {
      this.#runEnd += b.length;
      return;
    }
    if (run !== undefined) this.#buffers.push(this.#cut(run));
    this.#run = b;
    this.#runEnd = b.byteOffset + b.length;
  }

  /** Queues `b` as it is, never merged: the relay without a gate, where every buffer is a whole chunk already. */
  push(b: Buffer): void {
    if (this.#run !== undefined) this.#buffers.push(this.#cut(this.#run));
    this.#buffers.push(b);
  }

  get empty(): boolean {
    return this.#run === undefined && this.#buffers.length === 0;
  }

  /** Everything queued, in order; the outbox is empty afterwards. The array is reused: use it before the next `add`. */
  take(): Buffer[] {
    if (this.#run !== undefined) this.#buffers.push(this.#cut(this.#run));
    this.chunk = undefined;
    return this.#buffers;
  }

  clear(): void {
    this.#buffers.length = 0;
    this.#run = undefined;
    this.chunk = undefined;
  }

  #cut(run: Buffer): Buffer {
    this.#run = undefined;
    const length = this.#runEnd - run.byteOffset;
    if (length === run.length) return run;
    const c = this.chunk;
    if (c !== undefined && c.buffer === run.buffer && c.byteOffset === run.byteOffset && c.length === length) return c;
    return Buffer.from(run.buffer, run.byteOffset, length);
  }
}

export class PgRelay {
  readonly stats: RelayStats = { bytesFromClient: 0, bytesFromUpstream: 0 };
  #closed = false;
  #closeReason = 'closed';
  #lastActivity = Date.now();
  #idleTimer: NodeJS.Timeout | undefined;
  #open = 2;
  /** Bytes waiting for the next write to each side. */
  readonly #toUpstream = new Outbox();
  readonly #toClient = new Outbox();
  /** Why each socket is not being read (backpressure, a held statement, masking, the recording). */
  readonly #reads: RelayReads;
  /**
   * The client sent Terminate: the session ends because the client asked,
   * whichever socket reports its end first (the server closes as soon as it
   * reads Terminate, and its FIN can reach the gateway before the client's).
   */
  #clientTerminated = false;

  constructor(
    private readonly client: Socket,
    private readonly upstream: Socket,
    private readonly clientFramer: PgFramer,
    private readonly upstreamFramer: PgFramer,
    private readonly options: RelayOptions,
  ) {
    this.#reads = new RelayReads(client, upstream);
    const gate = options.gate;
    if (gate) {
      clientFramer.setInspect([...gate.clientTypes, Frontend.Terminate]);
      upstreamFramer.setInspect(gate.serverTypes);
      gate.attach({
        toUpstream: (b) => this.#toUpstream.add(b),
        toClient: (b) => this.#toClient.add(b),
        flush: () => this.#flush(),
        holdClient: () => this.#reads.client.hold(ReadHold.approval),
        releaseClient: () => {
          if (!this.#closed) this.#reads.client.release(ReadHold.approval);
        },
        clientAtBoundary: () => this.upstreamFramer.atMessageBoundary,
        shutdown: (reason, error) => this.shutdown(reason, error),
      });
    } else {
      // Terminate (one tiny message per session: see #clientTerminated), and what a masker pairs.
      clientFramer.setInspect(options.clientMessages ? [...PAIRED_CLIENT_TYPES, Frontend.Terminate] : [Frontend.Terminate]);
      upstreamFramer.setInspect(undefined);
    }
  }

  /** Starts relaying. `toUpstream` / `toClient` are bytes already read or prepared that must go first. */
  start(toUpstream: Buffer[], toClient: Buffer[]): void {
    for (const b of toClient) this.#toClient.add(b);
    this.#flush();
    const gate = this.options.gate;
    // Messages the client pipelined behind its password go through the gate like any others
    // (or are told to the masker, as any others are). They are whole messages, framed already by
    // the handshake's reader, whose framer (this one) may hold the start of a later message: they
    // go to the sink as they are, not through the framer again.
    const sink = gate ? this.#clientSink() : this.options.clientMessages ? this.#directClientSink() : undefined;
    try {
      for (const b of toUpstream) {
        if (sink) sink.message(b[0]!, b);
        else this.#toUpstream.add(b);
      }
    } catch (err) {
      this.#violation(err, 'client');
    }
    this.#flush();
    this.#pump(this.client, this.upstream, this.clientFramer, 'client');
    if (this.options.serverTransform) this.#pumpTransformed(this.options.serverTransform, this.upstreamFramer);
    else this.#pump(this.upstream, this.client, this.upstreamFramer, 'upstream');
    for (const socket of [this.client, this.upstream]) {
      socket.once('close', () => {
        if (--this.#open === 0) this.#finish();
        else endSocket(this.#peer(socket));
      });
    }
    if (this.options.idleTimeoutMs > 0) {
      const every = Math.max(250, Math.floor(this.options.idleTimeoutMs / 4));
      this.#idleTimer = setInterval(() => this.#checkIdle(), every);
      this.#idleTimer.unref();
    }
    this.#reads.start();
  }

  /**
   * The session's recording has fallen behind, or caught up
   * (RelayReads.recording). Not once the session is shutting down: then the
   * sockets must be read to see their ends (see shutdown).
   */
  holdForRecording(behind: boolean): void {
    if (!this.#closed) this.#reads.recording(behind);
  }

  /**
   * Ends the session from the gateway's side. The client gets `error` (an
   * ErrorResponse) only when the server-to-client stream is at a message
   * boundary: injecting it mid-DataRow would corrupt what the client reads.
   * The upstream gets Terminate when the client-to-server stream is at a
   * boundary, so the server logs a clean disconnect.
   */
  shutdown(reason: string, error?: Buffer): void {
    if (this.#closed) return;
    this.#closeReason = reason;
    this.#closed = true;
    // A session held for its recording is read again, as any other is while it closes: a socket
    // never read would not see its peer's end, and would wait for the grace timer to be destroyed.
    this.#reads.recording(false);
    if (error && this.upstreamFramer.atMessageBoundary && this.client.writable) this.client.end(error);
    else this.client.end();
    if (this.clientFramer.atMessageBoundary && this.upstream.writable) this.upstream.end(TERMINATE);
    else this.upstream.end();
    for (const socket of [this.client, this.upstream]) {
      setTimeout(() => socket.destroy(), HALF_CLOSE_GRACE_MS).unref();
    }
  }

  #clientSink(): FramerSink {
    const gate = this.options.gate!;
    return {
      passthrough: (b) => gate.fromClient(-1, b),
      message: (t, m) => {
        if (t !== Frontend.Terminate) return gate.fromClient(t, m);
        this.#clientTerminated = true;
        gate.fromClient(-1, m); // not a statement: forwarded in order, like any message the gate does not judge
      },
    };
  }

  /** The client's bytes straight to the upstream's queue (no gate), the masker told of the messages it pairs. */
  #directClientSink(): FramerSink {
    const direct = this.#toUpstream;
    const told = this.options.clientMessages;
    return {
      passthrough: (b) => direct.push(b),
      message: (t, m) => {
        if (t === Frontend.Terminate) this.#clientTerminated = true;
        else told?.(t, m);
        direct.push(m);
      },
    };
  }

  /** Upstream chunks go through the transformer first; its output is framed like any chunk. */
  #pumpTransformed(transform: ServerTransform, framer: PgFramer): void {
    const from = this.upstream;
    const to = this.client;
    const gate = this.options.gate;
    const sink: FramerSink = gate
      ? { passthrough: (b) => gate.fromServer(-1, b), message: (t, m) => gate.fromServer(t, m) }
      : { passthrough: (b) => this.#toClient.push(b), message: (_t, m) => this.#toClient.push(m) };
    const emit = (bytes: Buffer): void => {
      if (this.#closed) return;
      try {
        this.#toClient.chunk = bytes;
        framer.push(bytes, sink);
        if (gate) gate.serverChunkDone();
      } catch (err) {
        this.#violation(err, 'upstream');
      }
    };
    const reads = this.#reads.upstream;
    const afterChunk = (): void => {
      if (!this.#flush('client') && !this.#closed) reads.holdUntilDrained(to);
      gate?.afterWrite();
    };
    from.on('data', (chunk: Buffer) => {
      this.#lastActivity = Date.now();
      this.stats.bytesFromUpstream += chunk.length;
      let pending: void | Promise<void>;
      try {
        pending = transform.push(chunk, emit);
      } catch (err) {
        this.#transformFailed(err);
        return;
      }
      if (!pending) {
        afterChunk();
        return;
      }
      reads.hold(ReadHold.transform);
      pending.then(
        () => {
          afterChunk();
          if (!this.#closed) reads.release(ReadHold.transform);
        },
        (err: unknown) => this.#transformFailed(err),
      );
    });
    this.#wireEnds(from, to, 'upstream');
  }

  #transformFailed(err: unknown): void {
    this.#toClient.clear();
    this.options.logger.error({ err: err instanceof Error ? err.message : String(err) }, 'server data could not be masked; closing session');
    this.shutdown(
      'masking failed',
      errorResponse({ severity: 'FATAL', code: sqlstate.INTERNAL_ERROR, message: 'sluice: the result could not be masked; the session is closed and nothing unmasked was sent' }),
    );
  }

  #pump(from: Socket, to: Socket, framer: PgFramer, side: 'client' | 'upstream'): void {
    const gate = this.options.gate;
    // Without a gate, bytes go straight to the other side's queue.
    const direct = side === 'client' ? this.#toUpstream : this.#toClient;
    const reads = side === 'client' ? this.#reads.client : this.#reads.upstream;
    const sink: FramerSink = gate
      ? side === 'client'
        ? this.#clientSink()
        : { passthrough: (b) => gate.fromServer(-1, b), message: (t, m) => gate.fromServer(t, m) }
      : side === 'client'
        ? this.#directClientSink()
        : { passthrough: (b) => direct.push(b), message: (_t, m) => direct.push(m) };
    const onData = (chunk: Buffer): void => {
      this.#lastActivity = Date.now();
      if (side === 'client') this.stats.bytesFromClient += chunk.length;
      else this.stats.bytesFromUpstream += chunk.length;
      try {
        if (gate) direct.chunk = chunk;
        framer.push(chunk, sink);
        if (gate && side === 'upstream') gate.serverChunkDone();
      } catch (err) {
        this.#violation(err, side);
        return;
      }
      const flowing = this.#flush(side === 'client' ? 'upstream' : 'client');
      gate?.afterWrite();
      if (!flowing && !this.#closed) reads.holdUntilDrained(to);
    };
    const rec = side === 'client' ? this.options.recordClient : undefined;
    from.on('data', rec ? (chunk: Buffer) => (rec.received(chunk), onData(chunk), rec.handled()) : onData);
    this.#wireEnds(from, to, side);
  }

  #wireEnds(from: Socket, to: Socket, side: 'client' | 'upstream'): void {
    from.on('end', () => {
      // Half-close: the other side may still be sending; pass the FIN along.
      // The first side to end (or fail) is why the session ended; the other's end follows from it.
      if (!this.#closed && this.#closeReason === 'closed') {
        this.#closeReason = this.#clientTerminated ? 'client ended the connection' : `${side} ended the connection`;
      }
      this.#flush();
      endSocket(to);
    });
    from.on('error', (err) => {
      this.options.logger.debug({ side, err: err.message }, 'socket error');
      if (!this.#closed && this.#closeReason === 'closed') this.#closeReason = `${side} socket error: ${err.message}`;
      from.destroy();
      endSocket(to);
    });
  }

  /** Writes both queues; returns whether `watch`'s socket can take more. */
  #flush(watch?: 'client' | 'upstream'): boolean {
    const up = this.#writeAll(this.upstream, this.#toUpstream);
    const down = this.#writeAll(this.client, this.#toClient);
    return watch === 'client' ? down : watch === 'upstream' ? up : up && down;
  }

  #writeAll(to: Socket, outbox: Outbox): boolean {
    if (outbox.empty) {
      outbox.chunk = undefined;
      return true;
    }
    if (this.#closed || !to.writable) {
      outbox.clear();
      return true;
    }
    const buffers = outbox.take();
    let flowing: boolean;
    if (buffers.length === 1) {
      flowing = to.write(buffers[0]!);
    } else {
      let total = 0;
      for (const b of buffers) total += b.length;
      if (total <= SMALL_BURST) {
        // A few small messages (a ReadyForQuery after a CommandComplete Sluice
        // looked at): one copy is cheaper than a writev of many tiny buffers.
        flowing = to.write(Buffer.concat(buffers, total));
      } else {
        to.cork();
        flowing = true;
        for (const b of buffers) flowing = to.write(b);
        to.uncork();
      }
    }
    buffers.length = 0;
    return flowing;
  }

  #violation(err: unknown, side: 'client' | 'upstream'): void {
    this.#toUpstream.clear();
    this.#toClient.clear();
    // A refused message (a `p` after login) may carry a credential: the recording keeps the
    // client's bytes only up to its first byte (the chunk is recorded once this read is handled).
    if (side === 'client' && err instanceof RefusedMessage) this.options.recordClient?.cutClient(err.offset);
    const message = err instanceof PgProtocolError ? err.message : 'internal error while relaying';
    if (!(err instanceof PgProtocolError)) this.options.logger.error({ err }, 'unexpected relay failure');
    this.options.logger.warn({ side, offset: err instanceof PgProtocolError ? err.offset : undefined, reason: message }, 'protocol violation; closing session');
    const clientMessage =
      side === 'client'
        ? err instanceof PgProtocolError
          ? `sluice: protocol violation: ${message}`
          : 'sluice: internal error; the session is closed'
        : 'sluice: the upstream server sent a malformed message; the session is closed';
    const code = err instanceof PgProtocolError ? sqlstate.PROTOCOL_VIOLATION : sqlstate.INTERNAL_ERROR;
    this.shutdown(`${side} protocol violation`, errorResponse({ severity: 'FATAL', code, message: clientMessage }));
  }

  #checkIdle(): void {
    // Closing already (its timer runs until the sockets are gone): told once.
    if (this.#closed || Date.now() - this.#lastActivity < this.options.idleTimeoutMs) return;
    this.options.logger.info({ code: ErrorCodes.IDLE_TIMEOUT, idleTimeoutMs: this.options.idleTimeoutMs }, 'idle timeout; closing session');
    this.shutdown(
      'idle timeout',
      errorResponse({
        severity: 'FATAL',
        code: sqlstate.IDLE_SESSION_TIMEOUT,
        message: `sluice: terminating connection after ${this.options.idleTimeoutMs} ms without traffic (idle_timeout)`,
      }),
    );
  }

  #peer(socket: Socket): Socket {
    return socket === this.client ? this.upstream : this.client;
  }

  #finish(): void {
    if (this.#idleTimer) clearInterval(this.#idleTimer);
    this.#closed = true;
    this.options.gate?.close();
    this.options.serverTransform?.close();
    this.options.onClose(this.#closeReason);
  }
}

import type { Socket } from 'node:net';
import { ErrorCodes } from '../../src/errors.js';
import { PgFramer, PgProtocolError, RefusedMessage } from './framer.js';

/**
 * Bytes a client may have sent and Sluice not yet consumed during the
 * handshake: the StartupMessage and the password (the token) are capped at
 * 64 KiB each by the framer; a client that pipelines more before its login
 * has finished is refused.
 */
export const MAX_QUEUED_BYTES = 256 * 1024;

/** One whole message read during a handshake: its type byte (0 for startup-phase messages) and its complete wire bytes. */
export interface WireMessage {
  type: number;
  bytes: Buffer;
}

/**
 * Turns a socket into "await the next message" for the handshake phases,
 * where each step waits on the peer anyway and clarity beats speed. The
 * framer inspects every type here, so nothing is passed through; messages
 * that arrive ahead of need (a client pipelining after its password) stay
 * queued and are handed to the relay in order by `takeQueued()`.
 */
export class HandshakeReader {
  readonly framer: PgFramer;
  #socket: Socket | undefined;
  readonly #queue: WireMessage[] = [];
  /** Bytes in #queue: bounded (MAX_QUEUED_BYTES), so a client streaming during the login cannot grow it. */
  #queuedBytes = 0;
  #failure: Error | undefined;
  #ended = false;
  #wake: (() => void) | undefined;
  /** The type the next message must have: checked on its first byte, as PostgreSQL does, instead of awaiting a body whose length a hostile client chose. */
  #expect: { type: number; what: string } | undefined;

  readonly #onData = (chunk: Buffer): void => {
    const expect = this.#expect;
    if (expect && chunk.length > 0) {
      this.#expect = undefined;
      if (chunk[0] !== expect.type) {
        const got = chunk[0]! > 32 && chunk[0]! < 127 ? `'${String.fromCharCode(chunk[0]!)}'` : String(chunk[0]);
        this.#stop(new PgProtocolError(ErrorCodes.PROTOCOL_VIOLATION, `expected ${expect.what}, got message type ${got}`, this.framer.streamOffset));
        return;
      }
    }
    try {
      this.framer.push(chunk, {
        passthrough: (bytes) => this.#enqueue(-1, bytes),
        message: (type, bytes) => this.#enqueue(type, bytes),
      });
    } catch (err) {
      this.#stop(err as Error);
      return;
    }
    this.#notify();
  };

  /** Reading ends with `err` (a violation, a refused message): nothing more is read; next() rejects with it. */
  #stop(err: Error): void {
    this.#failure ??= err;
    this.#socket?.pause();
    if (err instanceof RefusedMessage) this.onRefused?.(err);
    this.#notify();
  }

  /**
   * Told at once, inside the read, when a refused message type arrives
   * (`refuse`): the session recording must not keep its bytes, and records
   * the chunk only after this read's listeners have returned.
   */
  onRefused: ((err: RefusedMessage) => void) | undefined;

  readonly #onEnd = (): void => {
    this.#ended = true;
    this.#notify();
  };

  readonly #onError = (err: Error): void => {
    this.#failure ??= err;
    this.#notify();
  };

  constructor(framer: PgFramer) {
    this.framer = framer;
  }

  #enqueue(type: number, bytes: Buffer): void {
    this.#queue.push({ type, bytes });
    this.#queuedBytes += bytes.length;
    if (this.#queuedBytes > MAX_QUEUED_BYTES) {
      // Each message is capped by the framer; this caps them together while the session waits
      // (for the token's check, the upstream login): a client has nothing to send that long.
      throw new PgProtocolError(
        ErrorCodes.PROTOCOL_VIOLATION,
        `more than ${MAX_QUEUED_BYTES} bytes sent before the login finished`,
        this.framer.streamOffset,
      );
    }
  }

  attach(socket: Socket): void {
    this.#socket = socket;
    socket.on('data', this.#onData);
    socket.on('end', this.#onEnd);
    socket.on('close', this.#onEnd);
    socket.on('error', this.#onError);
    socket.resume();
  }

  /** Stops reading from the socket (before a TLS upgrade or the hand-over to the relay). */
  detach(): void {
    const socket = this.#socket;
    if (!socket) return;
    socket.pause();
    socket.off('data', this.#onData);
    socket.off('end', this.#onEnd);
    socket.off('close', this.#onEnd);
    socket.off('error', this.#onError);
    this.#socket = undefined;
  }

  /**
   * Requires the next message to be of `type`, refusing it on its type byte.
   * Only when nothing is queued or half-read: otherwise the caller's check
   * of the whole message applies.
   */
  expectNextType(type: number, what: string): void {
    if (this.#queue.length === 0 && this.framer.atMessageBoundary && !this.framer.expectingStartup) this.#expect = { type, what };
  }

  /** What ended the reading (a protocol violation, the queue's cap, a socket error), whether or not next() has reached it. */
  get failure(): Error | undefined {
    return this.#failure;
  }

  /** Messages received but not yet consumed: nonzero right after an SSLRequest means bytes were injected before the TLS handshake. */
  get queued(): number {
    return this.#queue.length;
  }

  /** Resolves with the next whole message; rejects on a protocol violation, a socket error, or EOF. */
  async next(): Promise<WireMessage> {
    for (;;) {
      const message = this.#queue.shift();
      if (message) {
        this.#queuedBytes -= message.bytes.length;
        return message;
      }
      if (this.#failure) throw this.#failure;
      if (this.#ended) throw new PeerClosed();
      await new Promise<void>((resolve) => (this.#wake = resolve));
    }
  }

  /**
   * From now on a message of `type` ends the reading (RefusedMessage) as
   * soon as its header arrives; one already queued does too. `queueStart`
   * is the stream offset of the first queued message (messages are
   * contiguous on the wire), so the failure says where it began.
   */
  refuse(type: number, what: string, queueStart: number): void {
    this.framer.refuse(type, what);
    let offset = queueStart;
    let at: number | undefined;
    for (const m of this.#queue) {
      if (m.type === type) {
        at = offset;
        break;
      }
      offset += m.bytes.length;
    }
    // One whose header came already, its body not yet whole: the framer's table no longer sees it.
    const partial = this.framer.partialMessage;
    if (at === undefined && partial?.type === type) at = partial.offset;
    if (at !== undefined) this.#stop(new RefusedMessage(what, type, at));
  }

  /** Everything queued, in wire order, as owned bytes (the relay sends them first). */
  takeQueued(): Buffer[] {
    const out = this.#queue.map((m) => m.bytes);
    this.#queue.length = 0;
    this.#queuedBytes = 0;
    return out;
  }

  #notify(): void {
    const wake = this.#wake;
    this.#wake = undefined;
    wake?.();
  }
}

/** The peer went away mid-handshake: nothing to answer, nothing to log loudly. */
export class PeerClosed extends Error {
  constructor() {
    super('peer closed the connection during the handshake');
    this.name = 'PeerClosed';
  }
}

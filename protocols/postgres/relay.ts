import type { Socket } from 'node:net';
import type { Logger } from '../../src/log.js';
import { PgFramer, PgProtocolError, type FramerSink } from './framer.js';
import { errorResponse, sqlstate, terminate } from './messages.js';

/**
 * The steady state of a PostgreSQL session: bytes flow between the client
 * and the upstream through one framer per direction.
 *
 * Each chunk read is framed (so message boundaries, sizes and, later, the
 * statements that policy inspects are known) and what comes out is written
 * to the other side in ONE write: the chunk itself when every byte passes
 * through, otherwise a corked burst. A write that reports a full buffer
 * pauses the reading side until 'drain', so a slow client slows its own
 * upstream and never the gateway's memory, and the reverse.
 */
export interface RelayOptions {
  logger: Logger;
  /** Close the session after this long without a byte in either direction; 0 = never. */
  idleTimeoutMs: number;
  /** Called once, when both sockets are closed. */
  onClose(reason: string): void;
}

export interface RelayStats {
  bytesFromClient: number;
  bytesFromUpstream: number;
}

/** How long a half-closed session may linger for the other side to finish. */
const HALF_CLOSE_GRACE_MS = 10_000;

const TERMINATE = terminate();

export class PgRelay {
  readonly stats: RelayStats = { bytesFromClient: 0, bytesFromUpstream: 0 };
  #closed = false;
  #closeReason = 'closed';
  #lastActivity = Date.now();
  #idleTimer: NodeJS.Timeout | undefined;
  #open = 2;

  constructor(
    private readonly client: Socket,
    private readonly upstream: Socket,
    private readonly clientFramer: PgFramer,
    private readonly upstreamFramer: PgFramer,
    private readonly options: RelayOptions,
  ) {}

  /** Starts relaying. `toUpstream` / `toClient` are bytes already read or prepared that must go first. */
  start(toUpstream: Buffer[], toClient: Buffer[]): void {
    if (toClient.length > 0) this.#writeAll(this.client, toClient);
    if (toUpstream.length > 0) this.#writeAll(this.upstream, toUpstream);
    this.#pump(this.client, this.upstream, this.clientFramer, 'client');
    this.#pump(this.upstream, this.client, this.upstreamFramer, 'upstream');
    for (const socket of [this.client, this.upstream]) {
      socket.once('close', () => {
        if (--this.#open === 0) this.#finish();
        else this.#peer(socket).end();
      });
    }
    if (this.options.idleTimeoutMs > 0) {
      const every = Math.max(250, Math.floor(this.options.idleTimeoutMs / 4));
      this.#idleTimer = setInterval(() => this.#checkIdle(), every);
      this.#idleTimer.unref();
    }
    this.client.resume();
    this.upstream.resume();
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
    if (error && this.upstreamFramer.atMessageBoundary && this.client.writable) this.client.end(error);
    else this.client.end();
    if (this.clientFramer.atMessageBoundary && this.upstream.writable) this.upstream.end(TERMINATE);
    else this.upstream.end();
    for (const socket of [this.client, this.upstream]) {
      setTimeout(() => socket.destroy(), HALF_CLOSE_GRACE_MS).unref();
    }
  }

  #pump(from: Socket, to: Socket, framer: PgFramer, side: 'client' | 'upstream'): void {
    const out: Buffer[] = [];
    const sink: FramerSink = {
      passthrough: (bytes) => out.push(bytes),
      message: (_type, message) => out.push(message),
    };
    from.on('data', (chunk: Buffer) => {
      this.#lastActivity = Date.now();
      if (side === 'client') this.stats.bytesFromClient += chunk.length;
      else this.stats.bytesFromUpstream += chunk.length;
      try {
        framer.push(chunk, sink);
      } catch (err) {
        out.length = 0;
        this.#violation(err, side);
        return;
      }
      if (out.length === 0) return;
      const flowing = this.#writeAll(to, out);
      out.length = 0;
      if (!flowing) {
        from.pause();
        to.once('drain', () => from.resume());
      }
    });
    from.on('end', () => {
      // Half-close: the other side may still be sending; pass the FIN along.
      if (!this.#closed) this.#closeReason = `${side} ended the connection`;
      to.end();
    });
    from.on('error', (err) => {
      this.options.logger.debug({ side, err: err.message }, 'socket error');
      if (!this.#closed) this.#closeReason = `${side} socket error: ${err.message}`;
      from.destroy();
      to.end();
    });
  }

  #writeAll(to: Socket, buffers: Buffer[]): boolean {
    if (buffers.length === 1) return to.write(buffers[0]!);
    to.cork();
    let flowing = true;
    for (const b of buffers) flowing = to.write(b);
    to.uncork();
    return flowing;
  }

  #violation(err: unknown, side: 'client' | 'upstream'): void {
    const message = err instanceof PgProtocolError ? err.message : 'internal error while framing';
    if (!(err instanceof PgProtocolError)) this.options.logger.error({ err }, 'unexpected framing failure');
    this.options.logger.warn({ side, offset: err instanceof PgProtocolError ? err.offset : undefined, reason: message }, 'protocol violation; closing session');
    const clientMessage =
      side === 'client'
        ? `sluice: protocol violation: ${message}`
        : 'sluice: the upstream server sent a malformed message; the session is closed';
    this.shutdown(`${side} protocol violation`, errorResponse({ severity: 'FATAL', code: sqlstate.PROTOCOL_VIOLATION, message: clientMessage }));
  }

  #checkIdle(): void {
    if (Date.now() - this.#lastActivity < this.options.idleTimeoutMs) return;
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
    this.options.onClose(this.#closeReason);
  }
}

/**
 * Who holds a relayed socket's reads. A relay stops reading from a socket
 * for several independent reasons, and each ends on its own event:
 *
 * - `start`: the relay has not started yet (sockets come to it paused);
 * - `drain`: the other side's socket buffers too much (until its 'drain');
 * - `transform`: the masking workers are busy with an upstream chunk;
 * - `approval`: a statement or command waits for a human's decision;
 * - `recording`: the session's recording has fallen behind (see
 *   RecordingWriter, backlog), until the seal thread catches up;
 * - `failed`: the client broke the protocol; nothing more is read.
 *
 * Reads resume only when the last reason lets go. Before this, each resume
 * checked the other reasons it knew of by hand, and each new reason would
 * have had to be added at every one of them.
 */
import type { Socket } from 'node:net';

export const ReadHold = {
  start: 1,
  drain: 2,
  transform: 4,
  approval: 8,
  recording: 16,
  failed: 32,
  /** Sluice's own replies (refusals) wait in too great a number behind a reply still due (Redis relay). */
  replies: 64,
} as const;

export class SocketReads {
  #holds: number = ReadHold.start;
  /** releaseAll was called: the socket is read to its end, and no reason holds it again. */
  #closing = false;

  /** The socket is paused when given (as a relay receives it), held for `start`. */
  constructor(private readonly socket: Socket) {}

  /** Stops reading for `reason` (a ReadHold value); a no-op if that reason holds already. */
  hold(reason: number): void {
    if (this.#closing) return;
    if (this.#holds === 0) this.socket.pause();
    this.#holds |= reason;
  }

  /** `reason` lets go; reads resume when no other reason holds. */
  release(reason: number): void {
    if ((this.#holds & reason) === 0) return;
    this.#holds &= ~reason;
    if (this.#holds === 0) this.socket.resume();
  }

  /** Every reason lets go, for good: the socket is read to its end (see RelayReads.closing). */
  releaseAll(): void {
    this.#closing = true;
    if (this.#holds === 0) return;
    this.#holds = 0;
    this.socket.resume();
  }

  /** True while `reason` holds the reads. */
  holds(reason: number): boolean {
    return (this.#holds & reason) !== 0;
  }

  /**
   * `other`, which this socket's bytes are written to, buffers too much:
   * hold for `drain` until it drains. One 'drain' listener however often
   * the relay asks before then.
   */
  holdUntilDrained(other: Socket): void {
    if (this.holds(ReadHold.drain)) return;
    this.hold(ReadHold.drain);
    other.once('drain', this.#drained);
  }

  readonly #drained = (): void => this.release(ReadHold.drain);
}

/** A relay's two sockets' reads, with what the relay does to both at once. */
export class RelayReads {
  readonly client: SocketReads;
  readonly upstream: SocketReads;

  constructor(client: Socket, upstream: Socket) {
    this.client = new SocketReads(client);
    this.upstream = new SocketReads(upstream);
  }

  /** The relay has started: both sides may be read (unless another reason holds one). */
  start(): void {
    this.client.release(ReadHold.start);
    this.upstream.release(ReadHold.start);
  }

  /**
   * The relay is closing after the client broke the protocol: both sides
   * are read whatever held them (a full socket buffer, the masking workers,
   * an approval, the recording), and none holds them again, so that each
   * side's end is seen and the session ends when its peers hang up, not at
   * a grace timer. The relay drops what either side sends from then on.
   */
  closing(): void {
    this.client.releaseAll();
    this.upstream.releaseAll();
  }

  /**
   * The session's recording has fallen behind (`behind`), or caught up:
   * nothing is read from either side meanwhile, so the bytes the recording
   * has yet to write stay bounded (src/recording/writer.ts, backlog).
   */
  recording(behind: boolean): void {
    if (behind) {
      this.client.hold(ReadHold.recording);
      this.upstream.hold(ReadHold.recording);
    } else {
      this.client.release(ReadHold.recording);
      this.upstream.release(ReadHold.recording);
    }
  }
}

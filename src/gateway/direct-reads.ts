/**
 * Socket reads without the Readable stream machinery, for the TCP sockets
 * of a session: the client's as accepted, the upstream's as connected. A
 * TLS session wraps such a socket (TLSSocket reads the TCP handle itself);
 * the TLSSocket's own reads take Node's usual path.
 *
 * A net.Socket normally hands each read to Readable.push: libuv reads into a
 * fresh 64 KiB ArrayBuffer, Node shrinks it to the bytes read, and the chunk
 * travels through addChunk, emit('data') and a nextTick of maybeReadMore per
 * read. Those functions are shared by every stream in the process; in a
 * gateway that also runs TLS sockets, log destinations and pipes their
 * property caches go megamorphic, and a Redis GET through Sluice paid about
 * 3 µs of CPU more per request than the same relay code in a bare process
 * (bench/RESULTS.md).
 *
 * Node's documented `onread` option (net.Socket, net.connect) skips all of
 * that: libuv reads into one buffer we own and calls us back with the byte
 * count. Every socket here shares ONE scratch buffer: reads are handled one
 * at a time on the event loop thread, and the callback copies the bytes out
 * (Buffer.allocUnsafe: small reads come from Node's shared 8 KiB pool) before
 * any other socket can read, so a chunk handed on is never overwritten and
 * may be kept or forwarded as is. The callback then emits 'data' with that
 * copy, so every consumer (the recording tap, the handshake readers, the
 * relays) reads the socket exactly as before. pause() and resume() stop and
 * restart the handle's reads (net.Socket implements them for `onread`), so
 * backpressure works as with a flowing stream; EOF and errors still take
 * Node's own path ('end', 'error', 'close').
 *
 * Sockets from net.Server cannot be given `onread` (the server builds them),
 * so `adoptWithDirectReads` moves the accepted TCP handle into a new Socket
 * constructed with it: an undocumented constructor option (`handle`) that
 * Node's own net.Server uses the same way. It is checked and, where the
 * running Node does not have it, the socket is left as it is.
 */
// Imported: the global `Buffer` is a getter (Node's deprecation path for ES modules), called on every read.
import { Buffer } from 'node:buffer';
import { Socket, type NetConnectOpts } from 'node:net';

/** The one buffer libuv reads into; each read is copied out before the next can happen. */
const scratch = Buffer.allocUnsafe(64 * 1024);

interface ReadObserver {
  before(chunk: Buffer): void;
  after: (() => void) | undefined;
}

/** Sees a chunk handed to `write` or `end`, with the encoding given for a string. */
export type WriteObserver = (chunk: unknown, encoding: BufferEncoding | undefined) => void;

/**
 * An accepted socket that reads directly. Its observers (the session
 * recording's tap) are fields of the socket, not own properties added when a
 * session is recorded: every session socket has the same hidden class
 * whether it is recorded or not, so Node's stream code, shared by all of
 * them, keeps its property caches as they are without a recording.
 */
class DirectSocket extends Socket {
  readObserver: ReadObserver | undefined = undefined;
  writeObserver: WriteObserver | undefined = undefined;
}

/** Socket.prototype.write / end with their overloads flattened, as the wrappers call them. */
export type PlainWrite = (this: Socket, chunk: unknown, encoding?: unknown, cb?: unknown) => boolean;
export type PlainEnd = (this: Socket, chunk?: unknown, encoding?: unknown, cb?: unknown) => Socket;

const socketWrite = Socket.prototype.write as PlainWrite;
const socketEnd = Socket.prototype.end as PlainEnd;

/**
 * `write` with an observer: the chunk is handed on first (its bytes reach
 * the kernel now) and shown to the observer right after, in the same
 * synchronous call: nothing can be written in between, so the order is the
 * same. Used by DirectSocket and by the tap's wrapper on other sockets.
 */
export function writeObserved(socket: Socket, write: PlainWrite, observe: WriteObserver, chunk: unknown, encoding?: unknown, cb?: unknown): boolean {
  const writable = socket.writable;
  const flowing = write.call(socket, chunk, encoding, cb);
  if (writable) observe(chunk, typeof encoding === 'string' ? (encoding as BufferEncoding) : undefined);
  return flowing;
}

/** `end(data)` with an observer: the observer sees the data first (ending may close the socket and its session at once). */
export function endObserved(socket: Socket, end: PlainEnd, observe: WriteObserver, chunk?: unknown, encoding?: unknown, cb?: unknown): Socket {
  if (typeof chunk !== 'function' && socket.writable) observe(chunk, typeof encoding === 'string' ? (encoding as BufferEncoding) : undefined);
  return end.call(socket, chunk, encoding, cb);
}

DirectSocket.prototype.write = function (this: DirectSocket, chunk: unknown, encoding?: unknown, cb?: unknown): boolean {
  const observe = this.writeObserver;
  return observe === undefined ? socketWrite.call(this, chunk, encoding, cb) : writeObserved(this, socketWrite, observe, chunk, encoding, cb);
} as Socket['write'];

DirectSocket.prototype.end = function (this: DirectSocket, chunk?: unknown, encoding?: unknown, cb?: unknown): DirectSocket {
  const observe = this.writeObserver;
  return (observe === undefined ? socketEnd.call(this, chunk, encoding, cb) : endObserved(this, socketEnd, observe, chunk, encoding, cb)) as DirectSocket;
} as DirectSocket['end'];

/**
 * The onread callback: `this` is the socket (Node calls it as a method of
 * the socket). Returning nothing keeps the handle reading.
 */
function onDirectRead(this: Socket, nread: number): void {
  const chunk = Buffer.allocUnsafe(nread);
  scratch.copy(chunk, 0, 0, nread);
  // Upstream sockets read directly too, but are plain Sockets: no observer field.
  const observer = this instanceof DirectSocket ? this.readObserver : undefined;
  if (observer !== undefined) observer.before(chunk);
  this.emit('data', chunk);
  if (observer !== undefined && observer.after !== undefined) observer.after();
}

/**
 * Has `observe` see every chunk `socket` reads before any 'data' listener
 * does, as a prepended listener would, without making every read an emit
 * to two listeners; and `afterward`, when given, called once the 'data'
 * listeners have returned (the relay has handled and forwarded the chunk).
 * False when the socket does not read directly (a TLSSocket): the caller
 * then prepends a 'data' listener instead.
 */
export function observeReads(socket: Socket, observe: (chunk: Buffer) => void, afterward?: () => void): boolean {
  if (!(socket instanceof DirectSocket)) return false;
  socket.readObserver = { before: observe, after: afterward };
  return true;
}

/** Removes the socket's read observer; false when it had none. */
export function unobserveReads(socket: Socket): boolean {
  if (!(socket instanceof DirectSocket) || socket.readObserver === undefined) return false;
  socket.readObserver = undefined;
  return true;
}

/**
 * Has `observe` see every chunk handed to `socket.write` (right after the
 * socket took it) and `socket.end(data)` (before). False when the socket
 * is not one adopted here (a TLSSocket): the caller then wraps the
 * socket's methods itself.
 */
export function observeWrites(socket: Socket, observe: WriteObserver): boolean {
  if (!(socket instanceof DirectSocket)) return false;
  socket.writeObserver = observe;
  return true;
}

/** Removes the socket's write observer; false when it had none. */
export function unobserveWrites(socket: Socket): boolean {
  if (!(socket instanceof DirectSocket) || socket.writeObserver === undefined) return false;
  socket.writeObserver = undefined;
  return true;
}

const ONREAD = { buffer: scratch, callback: onDirectRead };

/** `net.connect` options with direct reads added (a plain TCP connection only: TLS wraps the socket's reads itself). */
export function withDirectReadOption<T extends NetConnectOpts>(options: T): T {
  return { ...options, onread: ONREAD };
}

/** The private parts of net.Socket this module relies on. */
interface SocketInternals {
  _handle?: { useUserBuffer?: unknown; readStop?: unknown } | null;
}

/**
 * A socket reading `accepted`'s connection directly, or `accepted` itself
 * when its handle cannot be moved. The server must have been created with
 * `pauseOnConnect: true`, so that no read has happened yet; the returned
 * socket is paused too, until the first `resume()` or 'data' listener.
 * Call it before anything else holds or listens to the accepted socket.
 */
export function adoptWithDirectReads(accepted: Socket): Socket {
  const internals = accepted as unknown as SocketInternals;
  const handle = internals._handle;
  if (
    handle === null ||
    handle === undefined ||
    typeof handle.useUserBuffer !== 'function' ||
    typeof handle.readStop !== 'function' ||
    accepted.readableFlowing === true
  ) {
    return accepted;
  }
  internals._handle = null;
  // The empty shell closes at once: the server counts it out of its connections.
  accepted.destroy();
  const socket = new DirectSocket({
    handle,
    // As the server made the accepted socket.
    allowHalfOpen: accepted.allowHalfOpen,
    readable: true,
    writable: true,
    pauseOnCreate: true,
    onread: ONREAD,
  } as unknown as ConstructorParameters<typeof Socket>[0]);
  return socket;
}

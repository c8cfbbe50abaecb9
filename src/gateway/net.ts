import { randomBytes } from 'node:crypto';
import { isIP } from 'node:net';
import type { Socket } from 'node:net';

/** True for 127.0.0.0/8, ::1 and IPv4-mapped loopback. */
export function isLoopbackAddress(address: string | undefined): boolean {
  if (!address) return false;
  const a = address.startsWith('::ffff:') ? address.slice(7) : address;
  if (isIP(a) === 4) return a.startsWith('127.');
  return a === '::1';
}

/** Both ends of the connection are on this host: nothing on the wire can be sniffed. */
export function isLoopbackConnection(socket: Socket): boolean {
  return isLoopbackAddress(socket.localAddress) && isLoopbackAddress(socket.remoteAddress);
}

/**
 * A short random session id (72 bits, 12 base64url characters), also used
 * as the correlation id in client-facing errors. Never one that starts with
 * '-': an operator passes it to `sluice replay ID` and `sluice verify ID`,
 * and there a leading '-' read as an option (1 id in 64). Such a draw is
 * drawn again, so every id allowed stays equally likely.
 */
export function newSessionId(): string {
  for (;;) {
    const id = randomBytes(9).toString('base64url');
    if (id[0] !== '-') return id;
  }
}

/**
 * Ends our side of `socket` unless that was asked already or the socket is
 * destroyed. A second end() changes nothing, but it is not free: Node's
 * Writable builds an error for it (ERR_STREAM_ALREADY_FINISHED or
 * ERR_STREAM_DESTROYED, stack trace included) that nobody sees. A relay
 * ends each socket when its peer ends and again when its peer closes, so
 * under connection churn (pgbench -C) that was about 20 µs of the event
 * loop per connection.
 */
export function endSocket(socket: Socket): void {
  if (!socket.writableEnded && !socket.destroyed) socket.end();
}

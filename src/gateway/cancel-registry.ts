import { randomInt, randomBytes, timingSafeEqual } from 'node:crypto';

/**
 * Maps the BackendKeyData Sluice hands to each PostgreSQL client onto that
 * session's real upstream key.
 *
 * A client never sees the upstream process id or secret: it could otherwise
 * cancel queries of sessions it does not own by talking to the server
 * directly, and it would learn the server's pid. Instead each session gets a
 * random gateway key; a CancelRequest arriving at Sluice is looked up here
 * and, only on an exact match of both halves for the same target, forwarded
 * to the one upstream backend it belongs to. Entries are removed when the
 * session ends, so a stale key matches nothing.
 */
export interface CancelKey {
  processId: number;
  secretKey: number;
}

interface Entry<T> {
  target: string;
  secret: Buffer;
  value: T;
}

export class CancelRegistry<T> {
  readonly #entries = new Map<number, Entry<T>>();

  /** Issues a fresh gateway key for a session; `value` is what a cancel needs (the upstream key and address). */
  register(target: string, value: T): CancelKey {
    let processId: number;
    // Positive 31-bit like a real pid, unique among live sessions.
    do processId = randomInt(1, 0x7fffffff);
    while (this.#entries.has(processId));
    const secretKey = randomBytes(4).readInt32BE(0);
    this.#entries.set(processId, { target, secret: int32(secretKey), value });
    return { processId, secretKey };
  }

  unregister(key: CancelKey): void {
    const entry = this.#entries.get(key.processId);
    if (entry && timingSafeEqual(entry.secret, int32(key.secretKey))) this.#entries.delete(key.processId);
  }

  /** The session's value when both halves match and the request came to that session's target; otherwise undefined. */
  lookup(target: string, key: CancelKey): T | undefined {
    const entry = this.#entries.get(key.processId);
    if (!entry || entry.target !== target) return undefined;
    return timingSafeEqual(entry.secret, int32(key.secretKey)) ? entry.value : undefined;
  }

  get size(): number {
    return this.#entries.size;
  }
}

function int32(n: number): Buffer {
  const b = Buffer.allocUnsafe(4);
  b.writeInt32BE(n | 0, 0);
  return b;
}

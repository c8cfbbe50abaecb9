/**
 * A raw RESP connection for tests that must send exactly the bytes they
 * mean (split commands, malformed logins, pipelines in one write) and read
 * the replies as they came.
 */
import { connect, type Socket } from 'node:net';
import { encodeRespCommand } from '../../src/recording/scrub.js';

/** A raw RESP connection: write commands, read until a predicate on the accumulated bytes holds. */
export class Raw {
  readonly socket: Socket;
  buf = '';
  closed = false;
  #waiters: Array<() => void> = [];

  private constructor(socket: Socket) {
    this.socket = socket;
    socket.on('data', (d: Buffer) => {
      this.buf += d.toString('latin1');
      this.#wake();
    });
    socket.on('close', () => {
      this.closed = true;
      this.#wake();
    });
    socket.on('error', () => {});
  }

  static open(port: number): Promise<Raw> {
    return new Promise((resolve, reject) => {
      const s = connect(port, '127.0.0.1', () => resolve(new Raw(s)));
      s.once('error', reject);
    });
  }

  #wake(): void {
    const w = this.#waiters;
    this.#waiters = [];
    for (const f of w) f();
  }

  send(...commands: Array<Array<string | Buffer>>): void {
    this.socket.write(Buffer.concat(commands.map(encode)));
  }

  /** Waits until `n` top-level replies (counted by a tiny parser) are buffered, or the socket closed; returns and consumes them. */
  async replies(n: number, timeoutMs = 5000): Promise<string[]> {
    const deadline = Date.now() + timeoutMs;
    for (;;) {
      const parsed = splitReplies(this.buf);
      if (parsed.length >= n || this.closed) {
        const taken = parsed.slice(0, n);
        this.buf = this.buf.slice(taken.join('').length);
        return taken;
      }
      if (Date.now() > deadline) throw new Error(`timed out waiting for ${n} replies; have ${JSON.stringify(this.buf.slice(0, 300))}`);
      await new Promise<void>((r) => {
        this.#waiters.push(r);
        setTimeout(r, 100);
      });
    }
  }

  async closedWithin(ms = 3000): Promise<boolean> {
    const deadline = Date.now() + ms;
    while (!this.closed && Date.now() < deadline) await new Promise((r) => setTimeout(r, 20));
    return this.closed;
  }

  end(): void {
    this.socket.destroy();
  }
}

/** A command as a RESP array of bulk strings, as client libraries send it. */
export function encode(args: Array<string | Buffer>): Buffer {
  return encodeRespCommand(args.map((a) => (typeof a === 'string' ? Buffer.from(a) : a)));
}

/** Splits latin1 text into complete top-level RESP2/RESP3 replies (test helper, not the framer under test). */
export function splitReplies(s: string): string[] {
  const out: string[] = [];
  let pos = 0;
  const element = (): boolean => {
    const cr = s.indexOf('\r\n', pos);
    if (cr < 0) return false;
    const type = s[pos]!;
    const head = s.slice(pos + 1, cr);
    pos = cr + 2;
    if ('$!='.includes(type)) {
      const n = Number(head);
      if (n < 0) return true;
      if (s.length < pos + n + 2) return false;
      pos += n + 2;
      return true;
    }
    if ('*%~>|'.includes(type)) {
      const n = Number(head);
      const count = type === '%' || type === '|' ? 2 * n : n;
      for (let i = 0; i < count; i++) if (!element()) return false;
      if (type === '|') return element();
      return true;
    }
    return true;
  };
  for (;;) {
    const start = pos;
    if (pos >= s.length || !element()) break;
    out.push(s.slice(start, pos));
  }
  return out;
}

import { connect, type Socket } from 'node:net';

/**
 * A deliberately dumb PostgreSQL wire client for tests that must send what
 * no real driver would (garbage, absurd lengths, pipelined handshakes) and
 * see exactly what the gateway answers. Its reader is independent of the
 * gateway's framer, so a bug there cannot hide itself.
 */
export interface RawMessage {
  type: string;
  body: Buffer;
}

export class RawPg {
  readonly socket: Socket;
  #buffer = Buffer.alloc(0);
  #waiters: Array<() => void> = [];
  closed = false;

  private constructor(socket: Socket) {
    this.socket = socket;
    socket.on('data', (chunk: Buffer) => {
      this.#buffer = Buffer.concat([this.#buffer, chunk]);
      this.#wake();
    });
    socket.on('close', () => {
      this.closed = true;
      this.#wake();
    });
    socket.on('error', () => {});
  }

  static connect(port: number, host = '127.0.0.1'): Promise<RawPg> {
    return new Promise((resolve, reject) => {
      const socket = connect(port, host, () => resolve(new RawPg(socket)));
      socket.once('error', reject);
    });
  }

  send(bytes: Buffer | string): void {
    this.socket.write(bytes);
  }

  /** Reads one byte (the answer to SSLRequest/GSSENCRequest). */
  async readByte(timeoutMs = 10_000): Promise<string> {
    await this.#until(() => this.#buffer.length >= 1, timeoutMs);
    const b = this.#buffer.subarray(0, 1).toString('latin1');
    this.#buffer = this.#buffer.subarray(1);
    return b;
  }

  /** Reads one typed message, or undefined when the server closed the connection first. */
  async read(timeoutMs = 10_000): Promise<RawMessage | undefined> {
    await this.#until(() => this.#complete() || this.closed, timeoutMs);
    if (!this.#complete()) return undefined;
    const type = String.fromCharCode(this.#buffer[0]!);
    const length = this.#buffer.readInt32BE(1);
    const body = this.#buffer.subarray(5, 1 + length);
    this.#buffer = this.#buffer.subarray(1 + length);
    return { type, body };
  }

  /** Reads messages until one of `type` (returned) or the end of the connection (undefined). */
  async readUntil(type: string, timeoutMs = 10_000): Promise<RawMessage | undefined> {
    for (;;) {
      const m = await this.read(timeoutMs);
      if (!m || m.type === type) return m;
    }
  }

  /** Resolves when the server has closed the connection. */
  async waitClosed(timeoutMs = 10_000): Promise<void> {
    await this.#until(() => this.closed, timeoutMs);
  }

  close(): void {
    this.socket.destroy();
  }

  #complete(): boolean {
    return this.#buffer.length >= 5 && this.#buffer.length >= 1 + this.#buffer.readInt32BE(1);
  }

  async #until(ready: () => boolean, timeoutMs: number): Promise<void> {
    const deadline = Date.now() + timeoutMs;
    while (!ready()) {
      const left = deadline - Date.now();
      if (left <= 0) throw new Error('timed out waiting for the server');
      await new Promise<void>((resolve) => {
        const timer = setTimeout(resolve, left);
        this.#waiters.push(() => {
          clearTimeout(timer);
          resolve();
        });
      });
    }
  }

  #wake(): void {
    const waiters = this.#waiters;
    this.#waiters = [];
    for (const w of waiters) w();
  }
}

/** ErrorResponse/NoticeResponse fields by their one-letter codes (C = SQLSTATE, M = message, H = hint). */
export function errorFields(body: Buffer): Record<string, string> {
  const fields: Record<string, string> = {};
  let i = 0;
  while (i < body.length && body[i] !== 0) {
    const code = String.fromCharCode(body[i]!);
    const end = body.indexOf(0, i + 1);
    fields[code] = body.subarray(i + 1, end).toString('utf8');
    i = end + 1;
  }
  return fields;
}

/** Builds an untyped startup-phase packet: Int32 length, Int32 code or version, then payload. */
export function startupPacket(params: Record<string, string>, major = 3, minor = 0): Buffer {
  const parts: Buffer[] = [];
  for (const [k, v] of Object.entries(params)) parts.push(Buffer.from(`${k}\0${v}\0`, 'utf8'));
  parts.push(Buffer.from([0]));
  const payload = Buffer.concat(parts);
  const head = Buffer.alloc(8);
  head.writeInt32BE(8 + payload.length, 0);
  head.writeInt16BE(major, 4);
  head.writeInt16BE(minor, 6);
  return Buffer.concat([head, payload]);
}

export function typed(type: string, body: Buffer | string): Buffer {
  const b = typeof body === 'string' ? Buffer.from(body, 'utf8') : body;
  const head = Buffer.alloc(5);
  head.write(type, 0, 'latin1');
  head.writeInt32BE(4 + b.length, 1);
  return Buffer.concat([head, b]);
}

export const SSL_REQUEST = Buffer.from([0, 0, 0, 8, 0x04, 0xd2, 0x16, 0x2f]);

/** Connects, sends a StartupMessage and the token, and returns once ReadyForQuery arrives (or throws with the error). */
export async function rawLogin(port: number, token: string, params: Record<string, string> = { user: 'raw', database: 'app' }): Promise<RawPg> {
  const c = await RawPg.connect(port);
  c.send(startupPacket(params));
  const auth = await c.read();
  if (auth?.type !== 'R') throw new Error(`expected an authentication request, got ${auth?.type}`);
  c.send(typed('p', `${token}\0`));
  for (;;) {
    const m = await c.read();
    if (!m) throw new Error('closed during login');
    if (m.type === 'E') throw new Error(`login refused: ${JSON.stringify(errorFields(m.body))}`);
    if (m.type === 'Z') return c;
  }
}

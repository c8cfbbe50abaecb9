/**
 * SCRAM-SHA-256 client (RFC 5802, RFC 7677) as PostgreSQL uses it inside
 * SASL authentication, without channel binding: the GS2 header is `n,,`
 * ("client does not support channel binding"), so the c= attribute of the
 * client-final-message is base64("n,,") = "biws".
 *
 * PostgreSQL ignores the SCRAM user name (it already has the startup
 * packet's `user`), so the client-first-message carries `n=` empty.
 */
import { createHash, createHmac, pbkdf2, randomBytes, timingSafeEqual } from 'node:crypto';
import { SluiceError, ErrorCodes } from '../../src/errors.js';

const GS2_HEADER = 'n,,';

/**
 * Upper bound on the iteration count we will compute. The count comes from
 * the server and pbkdf2 runs synchronously on the event loop, so an absurd
 * value from a broken or hostile upstream would stall every session. 4096 is
 * PostgreSQL's default; PG 16's scram_iterations rarely goes past 100k.
 */
const MAX_ITERATIONS = 1_000_000;

const BASE64 = /^(?:[A-Za-z0-9+/]{4})*(?:[A-Za-z0-9+/]{2}==|[A-Za-z0-9+/]{3}=)?$/;
/** RFC 5802 `printable`: %x21-2B / %x2D-7E (no comma). */
const PRINTABLE = /^[\x21-\x2b\x2d-\x7e]+$/;

export interface ScramClientOptions {
  /** Test hook: a fixed client nonce (RFC 7677 vector). Production uses 18 random bytes. */
  nonce?: string;
  /** Test hook: the SCRAM user name; PostgreSQL ignores it, so the default is empty. */
  username?: string;
}

function protocolError(detail: string): SluiceError {
  return new SluiceError(ErrorCodes.UPSTREAM_PROTOCOL, `SCRAM-SHA-256 exchange with the upstream failed: ${detail}`);
}

function hmac(key: Buffer, data: string | Buffer): Buffer {
  return createHmac('sha256', key).update(data).digest();
}

function sha256(data: Buffer): Buffer {
  return createHash('sha256').update(data).digest();
}

function xor(a: Buffer, b: Buffer): Buffer {
  const out = Buffer.alloc(a.length);
  for (let i = 0; i < a.length; i++) out[i] = a[i]! ^ b[i]!;
  return out;
}

/**
 * SASLprep (RFC 4013), approximated by NFKC normalisation. The gap: the
 * full profile also maps non-ASCII spaces to U+0020, deletes "commonly
 * mapped to nothing" characters (soft hyphen, zero-width joiners, ...) and
 * rejects prohibited and unassigned code points and bad bidi. For ASCII
 * passwords (the common case) NFKC is exact. Where the profile would reject
 * a password PostgreSQL itself falls back to the raw bytes, so only
 * passwords containing those mapped characters could disagree with the server.
 */
function saslPrep(password: string): string {
  return password.normalize('NFKC');
}

/** `saslname` escaping of RFC 5802 section 5.1. */
function saslName(name: string): string {
  return name.replace(/=/g, '=3D').replace(/,/g, '=2C');
}

/** Splits `a=x,b=y` into attributes; values may themselves contain '='. */
function parseAttributes(msg: string): Map<string, string> {
  const attrs = new Map<string, string>();
  for (const part of msg.split(',')) {
    if (part.length < 2 || part[1] !== '=') throw protocolError('malformed server message');
    attrs.set(part[0]!, part.slice(2));
  }
  return attrs;
}

export class ScramClient {
  readonly #password: string;
  readonly #clientNonce: string;
  readonly #clientFirstBare: string;
  #serverSignature: Buffer | undefined;
  #state: 'initial' | 'first-sent' | 'final-sent' | 'done' = 'initial';

  constructor(password: string, options: ScramClientOptions = {}) {
    this.#password = saslPrep(password);
    this.#clientNonce = options.nonce ?? randomBytes(18).toString('base64');
    if (!PRINTABLE.test(this.#clientNonce)) throw new TypeError('SCRAM client nonce must be printable and contain no comma');
    this.#clientFirstBare = `n=${saslName(options.username ?? '')},r=${this.#clientNonce}`;
  }

  /** client-first-message: the initial response of SASLInitialResponse. */
  clientFirstMessage(): string {
    this.#state = 'first-sent';
    return GS2_HEADER + this.#clientFirstBare;
  }

  /**
   * Takes the server-first-message (AuthenticationSASLContinue), returns the
   * client-final-message. Async: PBKDF2 runs on libuv's pool, not on the
   * event loop, which every other session shares (up to MAX_ITERATIONS, a
   * server's count could hold it for most of a second).
   */
  async handleServerFirst(msg: string): Promise<string> {
    if (this.#state !== 'first-sent') throw protocolError('server-first-message out of order');
    const attrs = parseAttributes(msg);
    if (attrs.has('m')) throw protocolError('server requires an unsupported SCRAM extension');
    const nonce = attrs.get('r');
    const saltB64 = attrs.get('s');
    const iterText = attrs.get('i');
    if (nonce === undefined || saltB64 === undefined || iterText === undefined) {
      throw protocolError('server-first-message lacks r, s or i');
    }
    // The server appends its own part to our nonce; anything else is a
    // replay or a man in the middle.
    if (!nonce.startsWith(this.#clientNonce) || nonce.length <= this.#clientNonce.length || !PRINTABLE.test(nonce)) {
      throw protocolError('server nonce does not extend the client nonce');
    }
    if (saltB64.length === 0 || !BASE64.test(saltB64)) throw protocolError('salt is not base64');
    if (!/^[1-9][0-9]{0,9}$/.test(iterText)) throw protocolError('iteration count is not a positive integer');
    const iterations = Number(iterText);
    if (iterations > MAX_ITERATIONS) throw protocolError(`iteration count ${iterations} exceeds ${MAX_ITERATIONS}`);

    const salt = Buffer.from(saltB64, 'base64');
    // SaltedPassword := Hi(Normalize(password), salt, i); Hi is PBKDF2 with HMAC-SHA-256.
    const saltedPassword = await saltedPasswordFor(this.#password, salt, iterations);
    const clientKey = hmac(saltedPassword, 'Client Key');
    const storedKey = sha256(clientKey);
    const clientFinalWithoutProof = `c=${Buffer.from(GS2_HEADER).toString('base64')},r=${nonce}`;
    const authMessage = `${this.#clientFirstBare},${msg},${clientFinalWithoutProof}`;
    const clientSignature = hmac(storedKey, authMessage);
    const clientProof = xor(clientKey, clientSignature);
    const serverKey = hmac(saltedPassword, 'Server Key');
    this.#serverSignature = hmac(serverKey, authMessage);
    this.#state = 'final-sent';
    return `${clientFinalWithoutProof},p=${clientProof.toString('base64')}`;
  }

  /**
   * Checks the server-final-message (AuthenticationSASLFinal): the server
   * proves it knows the verifier. Throws on `e=` or a wrong signature.
   */
  verifyServerFinal(msg: string): void {
    if (this.#state !== 'final-sent' || !this.#serverSignature) throw protocolError('server-final-message out of order');
    const attrs = parseAttributes(msg);
    const e = attrs.get('e');
    if (e !== undefined) {
      throw new SluiceError(ErrorCodes.UPSTREAM_AUTH_FAILED, `upstream rejected SCRAM authentication: ${e}`);
    }
    const v = attrs.get('v');
    if (v === undefined || !BASE64.test(v)) throw protocolError('server-final-message lacks a verifier');
    const received = Buffer.from(v, 'base64');
    const expected = this.#serverSignature;
    if (received.length !== expected.length || !timingSafeEqual(received, expected)) {
      throw new SluiceError(
        ErrorCodes.UPSTREAM_AUTH_FAILED,
        'upstream server signature does not match: the server does not know the password (possible impersonation)',
      );
    }
    this.#state = 'done';
  }

  /** True once verifyServerFinal succeeded: the server is authenticated. */
  get serverVerified(): boolean {
    return this.#state === 'done';
  }
}

/**
 * SaltedPassword for (password, salt, iterations), remembered.
 *
 * PBKDF2 with 4096 rounds costs about 5 ms of CPU, synchronously, on every
 * upstream login; with pgbench -C that was most of the gateway's CPU. The
 * server's salt and iteration count for a role only change when its password
 * does, so the result is the same login after login. The cache is keyed by
 * a hash of all three (the password itself is not a key), holds a handful
 * of entries, and a password change simply misses it.
 */
const SALTED_CACHE_MAX = 32;
const saltedCache = new Map<string, Buffer>();

async function saltedPasswordFor(password: string, salt: Buffer, iterations: number): Promise<Buffer> {
  const key = createHash('sha256').update(password).update('\0').update(salt).update(`\0${iterations}`).digest('base64');
  const known = saltedCache.get(key);
  if (known) return known;
  const derived = await new Promise<Buffer>((resolve, reject) =>
    pbkdf2(password, salt, iterations, 32, 'sha256', (err, out) => (err ? reject(err) : resolve(out))),
  );
  if (saltedCache.size >= SALTED_CACHE_MAX) saltedCache.delete(saltedCache.keys().next().value as string);
  saltedCache.set(key, derived);
  return derived;
}

/**
 * Credential scrubbers for the recording taps. The writer knows no protocol;
 * the taps pass these helpers' output instead of the credential-bearing
 * message, so a recording keeps the protocol's shape (a replay still sees a
 * PasswordMessage or an AUTH command) but never the token or password.
 */

export const REDACTED = '[redacted]';
const REDACTED_BYTES = Buffer.from(REDACTED, 'latin1');

/**
 * A PostgreSQL 'p' message (type byte, int32 length, content) with its
 * content replaced, length rewritten:
 *
 * - PasswordMessage (content = password NUL): `[redacted]` NUL.
 * - SASLInitialResponse (mechanism NUL, int32 n, n bytes): the mechanism is
 *   kept, the data becomes `[redacted]` with n rewritten.
 * - SASLResponse / GSS data (anything else): the content becomes `[redacted]`.
 *
 * Anything that is not a 'p' message is returned unchanged (copied).
 */
export function scrubPgPasswordMessage(msg: Buffer): Buffer {
  if (msg.length < 5 || msg[0] !== 0x70 /* 'p' */) return Buffer.from(msg);
  const content = msg.subarray(5, Math.min(msg.length, 1 + msg.readUInt32BE(1)));
  let body: Buffer;
  const nul = content.indexOf(0);
  if (nul === content.length - 1) {
    body = Buffer.concat([REDACTED_BYTES, Buffer.from([0])]);
  } else if (nul > 0 && content.length >= nul + 5 && isMechanism(content.subarray(0, nul))) {
    const n = content.readInt32BE(nul + 1);
    if (n === -1 || n === content.length - nul - 5) {
      const len = Buffer.allocUnsafe(4);
      len.writeInt32BE(REDACTED_BYTES.length, 0);
      body = Buffer.concat([content.subarray(0, nul + 1), len, REDACTED_BYTES]);
    } else {
      body = REDACTED_BYTES;
    }
  } else {
    body = REDACTED_BYTES;
  }
  const out = Buffer.allocUnsafe(5 + body.length);
  out[0] = 0x70;
  out.writeUInt32BE(4 + body.length, 1);
  body.copy(out, 5);
  return out;
}

/** SASL mechanism names: upper-case letters, digits, '-' and '_' (RFC 4422). */
function isMechanism(b: Buffer): boolean {
  return b.length <= 64 && /^[A-Z0-9_-]+$/.test(b.toString('latin1'));
}

/** A RESP array of bulk strings. */
export function encodeRespCommand(args: readonly Buffer[]): Buffer {
  const parts: Buffer[] = [Buffer.from(`*${args.length}\r\n`, 'latin1')];
  for (const a of args) parts.push(Buffer.from(`$${a.length}\r\n`, 'latin1'), a, Buffer.from('\r\n', 'latin1'));
  return Buffer.concat(parts);
}

/**
 * Which arguments of a Redis command may hold a credential, by index:
 *
 * - `AUTH password`: the password; `AUTH username password`: the password;
 *   AUTH with any other count (refused, but still recorded): every argument.
 * - `HELLO [protover [AUTH username password] [SETNAME name]]`: walked as
 *   Redis reads it, so a client name that happens to be "auth" is not taken
 *   for the keyword; the password, and from the first argument that does
 *   not fit the grammar (a refused HELLO) every argument to the end.
 *
 * The AUTH username and the SETNAME name are kept: they say who, not the
 * secret. Other commands have none. The recording taps and the transcript
 * both go by this, whatever verdict the command got.
 */
export function redisCredentialArgs(args: readonly Buffer[]): number[] {
  const name = args[0] === undefined ? undefined : redisKeyword(args[0]);
  const secret: number[] = [];
  if (name === 'AUTH') {
    for (let i = args.length === 3 ? 2 : 1; i < args.length; i++) secret.push(i);
  } else if (name === 'HELLO') {
    // The protocol version comes first; a HELLO without a number there is refused whole.
    let i = args.length > 1 && /^\d+$/.test(args[1]!.toString('latin1')) ? 2 : 1;
    while (i < args.length) {
      const option = redisKeyword(args[i]!);
      const more = args.length - i - 1;
      if (option === 'AUTH' && more >= 2) {
        secret.push(i + 2);
        i += 3;
      } else if (option === 'SETNAME' && more >= 1) {
        i += 2;
      } else {
        break;
      }
    }
    for (; i < args.length; i++) secret.push(i);
  }
  return secret;
}

/**
 * A command name or option as Redis compares it (strcasecmp): up to a NUL
 * byte, in upper case. `AUTH\0x <token>` logs in as AUTH does, so its token
 * is scrubbed as AUTH's is.
 */
export function redisKeyword(arg: Buffer): string {
  const nul = arg.indexOf(0);
  return arg.toString('latin1', 0, nul < 0 ? arg.length : nul).toUpperCase();
}

/** A Redis command's arguments with its credentials (redisCredentialArgs) replaced by `[redacted]`; the same array when it has none. */
export function withoutRedisCredentials(args: readonly Buffer[]): readonly Buffer[] {
  const secret = redisCredentialArgs(args);
  if (secret.length === 0) return args;
  const out = args.slice();
  for (const i of secret) out[i] = REDACTED_BYTES;
  return out;
}

/**
 * A Redis command re-encoded as a RESP array with its credentials
 * (redisCredentialArgs) replaced by `[redacted]`. Other commands are
 * re-encoded unchanged.
 */
export function scrubRedisAuth(args: readonly Buffer[]): Buffer {
  return encodeRespCommand(withoutRedisCredentials(args));
}

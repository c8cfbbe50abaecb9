/**
 * The key of approval fingerprints: `<stateDir>/approval-fingerprint.key`,
 * 32 random bytes (hex), mode 0600, created on first use.
 *
 * A fingerprint names what an approval window covers (the parse tree of a
 * PostgreSQL statement without its constants, a Redis command's kind, keys
 * and, for scripting and administration, its other arguments). The
 * approvals API and `sluice approvals` show it, so it is an HMAC, not a
 * plain hash: a plain SHA-256 of a tree whose every other part the reader
 * knows lets them test guesses at what is left out of the text they see
 * (a password in a user mapping's OPTIONS, a dblink connection string, a
 * DO block). The key persists because windows do: the gateway reloads them
 * from the store after a restart, and a new key would make every open
 * window miss (fail closed: the statement is held again).
 *
 * Until `useFingerprintKey` is called (tools and unit tests that never
 * start a gateway), fingerprints are keyed with a random key of the
 * process: they compare within that process only. The key is the
 * process's, as the gateway is: a second gateway started in the same
 * process (tests) on another state dir keys both with its own.
 */
import { createHmac, randomBytes, type Hmac } from 'node:crypto';
import { mkdir, readFile } from 'node:fs/promises';
import { join } from 'node:path';
import { ErrorCodes, SluiceError } from '../errors.js';
import { createOnce, sharedMode } from '../secret-file.js';

export const FINGERPRINT_KEY_FILE = 'approval-fingerprint.key';
const KEY_BYTES = 32;

let key: Buffer = randomBytes(KEY_BYTES);
let generation = 0;

/** A new HMAC-SHA256 under the fingerprint key, for a fingerprint to be fed into. */
export function fingerprintHmac(): Hmac {
  return createHmac('sha256', key);
}

/** Bumped whenever the key changes: a cache of fingerprints keeps this with its entries. */
export function fingerprintKeyGeneration(): number {
  return generation;
}

/** From now on, fingerprints are keyed with `k` (openFingerprintKey's). */
export function useFingerprintKey(k: Buffer): void {
  if (k.length < KEY_BYTES) throw new RangeError(`a fingerprint key needs ${KEY_BYTES} bytes`);
  key = Buffer.from(k);
  generation++;
}

function keyError(message: string, err?: unknown): SluiceError {
  const why = err === undefined ? '' : ` (${(err as NodeJS.ErrnoException)?.code ?? (err instanceof Error ? err.message : String(err))})`;
  return new SluiceError(ErrorCodes.CONFIG_INVALID, `approval fingerprint key: ${message}${why}`, err === undefined ? undefined : { cause: err });
}

/** The state dir's fingerprint key, created on first use; refused when others may read it or it is not 32 bytes of hex. */
export async function openFingerprintKey(stateDir: string): Promise<Buffer> {
  const path = join(stateDir, FINGERPRINT_KEY_FILE);
  let text: string;
  try {
    await mkdir(stateDir, { recursive: true, mode: 0o700 });
    text = await readFile(path, 'utf8').catch(async (err: NodeJS.ErrnoException) => {
      if (err.code !== 'ENOENT') throw err;
      await createOnce(path, `${randomBytes(KEY_BYTES).toString('hex')}\n`);
      return readFile(path, 'utf8');
    });
  } catch (err) {
    throw keyError(`cannot read or create ${path}`, err);
  }
  const shared = await sharedMode(path);
  if (shared !== undefined) throw keyError(`${path} is accessible by other users (mode ${shared}); run chmod 600 on it`);
  const hex = text.trim();
  if (!new RegExp(`^[0-9a-f]{${KEY_BYTES * 2}}$`).test(hex)) throw keyError(`${path} does not hold ${KEY_BYTES} bytes of hex; delete it to create a new key (open approval windows then close)`);
  return Buffer.from(hex, 'hex');
}

/**
 * The gateway's recording key: Ed25519, in `<stateDir>/recording-key/`.
 *
 *   private.pem          PKCS#8, mode 0600: signs checkpoints and footers
 *   public.pem           SPKI: what `sluice verify` checks against
 *   public-<keyid>.pem   older public keys kept after a rotation (optional)
 *
 * Key id: the first 16 hex digits of SHA-256 of the public key's SPKI DER.
 * It goes into every recording's header and footer, so a verifier picks the
 * right public key and a recording signed by another key is told apart from
 * a tampered one.
 */
import { createHash, createPrivateKey, createPublicKey, generateKeyPairSync, randomBytes, type KeyObject } from 'node:crypto';
import { chmod, mkdir, readFile, readdir, rename, unlink, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { ErrorCodes, SluiceError } from '../errors.js';
import { createOnce, sharedMode } from '../secret-file.js';

export interface RecordingKey {
  keyId: string;
  privateKey: KeyObject;
  publicKey: KeyObject;
}

export const RECORDING_KEY_DIR = 'recording-key';

export function keyIdOf(publicKey: KeyObject): string {
  const der = publicKey.export({ type: 'spki', format: 'der' });
  return createHash('sha256').update(der).digest('hex').slice(0, 16);
}

function fail(what: string, err: unknown): SluiceError {
  const why = (err as NodeJS.ErrnoException)?.code ?? (err instanceof Error ? err.message : String(err));
  return new SluiceError(ErrorCodes.RECORDING_KEY_FAILED, `recording key: ${what} (${why})`, { cause: err });
}

function fromPrivatePem(pem: string): RecordingKey {
  const privateKey = createPrivateKey(pem);
  if (privateKey.asymmetricKeyType !== 'ed25519') throw new Error(`not an Ed25519 key (${privateKey.asymmetricKeyType})`);
  const publicKey = createPublicKey(privateKey);
  return { keyId: keyIdOf(publicKey), privateKey, publicKey };
}

/** The key, created on first use; every process opening it at once ends up with the same key (createOnce). */
export async function openRecordingKey(stateDir: string): Promise<RecordingKey> {
  const dir = join(stateDir, RECORDING_KEY_DIR);
  const privPath = join(dir, 'private.pem');
  let key: RecordingKey | undefined;
  try {
    await mkdir(dir, { recursive: true, mode: 0o700 });
    // mkdir's mode applies only to directories it creates; this one is ours whoever made it.
    await chmod(dir, 0o700);
  } catch (err) {
    throw fail(`cannot create ${dir}`, err);
  }
  try {
    key = fromPrivatePem(await readFile(privPath, 'utf8'));
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code !== 'ENOENT') throw fail(`cannot read ${privPath}`, err);
  }
  if (!key) {
    const { privateKey } = generateKeyPairSync('ed25519');
    try {
      await createOnce(privPath, privateKey.export({ type: 'pkcs8', format: 'pem' }) as string);
    } catch (err) {
      throw fail(`cannot create ${privPath}`, err);
    }
    try {
      key = fromPrivatePem(await readFile(privPath, 'utf8'));
    } catch (err) {
      throw fail(`cannot read ${privPath}`, err);
    }
  }
  // A key others can read signs anything as this gateway: refused, as the dev issuer's is.
  const shared = await sharedMode(privPath);
  if (shared !== undefined) {
    throw new SluiceError(ErrorCodes.RECORDING_KEY_FAILED, `recording key: ${privPath} is accessible by other users (mode ${shared}); run chmod 600 on it`);
  }
  // The public half is derived, so rewriting it is idempotent: temp + rename.
  const pubPem = key.publicKey.export({ type: 'spki', format: 'pem' }) as string;
  const pubPath = join(dir, 'public.pem');
  const current = await readFile(pubPath, 'utf8').catch(() => undefined);
  if (current !== pubPem) {
    const tmp = join(dir, `.public.${process.pid}.${randomBytes(6).toString('hex')}.tmp`);
    try {
      await writeFile(tmp, pubPem, { mode: 0o644 });
      await rename(tmp, pubPath);
    } catch (err) {
      await unlink(tmp).catch(() => undefined);
      throw fail(`cannot write ${pubPath}`, err);
    }
  }
  return key;
}

/**
 * Every public key a verifier should accept, by key id: `public*.pem` in the
 * key directory, plus the public half of `private.pem` when readable. A
 * missing directory gives an empty map (verify then reports "unknown key").
 */
export async function loadRecordingPublicKeys(stateDir: string): Promise<Map<string, KeyObject>> {
  const dir = join(stateDir, RECORDING_KEY_DIR);
  const keys = new Map<string, KeyObject>();
  let names: string[] = [];
  try {
    names = await readdir(dir);
  } catch {
    return keys;
  }
  for (const name of names.sort()) {
    try {
      if (/^public.*\.pem$/.test(name)) {
        const k = createPublicKey(await readFile(join(dir, name), 'utf8'));
        if (k.asymmetricKeyType === 'ed25519') keys.set(keyIdOf(k), k);
      } else if (name === 'private.pem') {
        const k = fromPrivatePem(await readFile(join(dir, name), 'utf8'));
        keys.set(k.keyId, k.publicKey);
      }
    } catch {
      // An unreadable or foreign file is not a key we accept; verify names the key id it lacks.
    }
  }
  return keys;
}

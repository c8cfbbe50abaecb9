/**
 * Client-facing TLS material. Either the operator's files from the `tls:`
 * section, or, when there is none, a development CA and a server certificate
 * signed by it, kept in `<stateDir>/tls/` so that clients can verify Sluice:
 *
 *   psql "sslmode=verify-full sslrootcert=<stateDir>/tls/ca.crt host=localhost ..."
 *   redis-cli --tls --cacert <stateDir>/tls/ca.crt
 *
 * The dev CA is created once and reused, so a client configured to trust it
 * keeps working across restarts; only the server certificate is renewed.
 */
import { X509Certificate, createPrivateKey, randomBytes, type KeyObject } from 'node:crypto';
import { chmod, mkdir, open, readFile, rename, rm, stat, writeFile } from 'node:fs/promises';
import { isIP, type Socket } from 'node:net';
import { join } from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';
import tls from 'node:tls';
import { ErrorCodes, SluiceError } from '../errors.js';
import { createCertificate, generateEcKeyPair, readSubjectName, type DistinguishedName } from './x509.js';

export interface ServerTlsMaterial {
  /** PEM certificate (chain) presented to clients. */
  cert: string;
  /** PEM private key. */
  key: string;
  /** Path of the dev CA certificate clients should trust, when source is 'dev'. */
  caFile?: string;
  source: 'configured' | 'dev';
}

export interface DevTlsFiles {
  caFile: string;
  certFile: string;
  keyFile: string;
}

const DAY_MS = 24 * 60 * 60 * 1000;
const CA_LIFETIME_MS = 3652 * DAY_MS; // 10 years
const LEAF_LIFETIME_MS = 365 * DAY_MS;
/** Renew a certificate that expires sooner than this. */
const RENEW_WITHIN_MS = 7 * DAY_MS;
/** notBefore is backdated so a client whose clock lags slightly still accepts a fresh cert. */
const BACKDATE_MS = 60 * 60 * 1000;

/** Names every dev server certificate carries. */
const DEFAULT_DNS = ['localhost'];
const DEFAULT_IP = ['127.0.0.1', '::1'];

const CA_NAME: DistinguishedName = { organizationName: 'Sluice dev', commonName: 'Sluice dev CA' };
const LEAF_NAME: DistinguishedName = { organizationName: 'Sluice dev', commonName: 'localhost' };

/** Generation takes milliseconds; a lock this old was left by a crashed process. */
const LOCK_STALE_MS = 10_000;
const LOCK_WAIT_MS = 30_000;

function devPaths(stateDir: string) {
  const dir = join(stateDir, 'tls');
  return {
    dir,
    caCert: join(dir, 'ca.crt'),
    caKey: join(dir, 'ca.key'),
    serverCert: join(dir, 'server.crt'),
    serverKey: join(dir, 'server.key'),
    lock: join(dir, '.lock'),
  };
}
type DevPaths = ReturnType<typeof devPaths>;

interface RequiredNames {
  dns: string[];
  ip: string[];
}

function requiredNames(extraNames: readonly string[]): RequiredNames {
  const dns = new Set(DEFAULT_DNS);
  const ip = new Set(DEFAULT_IP);
  for (const raw of extraNames) {
    const name = raw.trim();
    if (isIP(name)) {
      ip.add(name);
    } else if (/^(\*\.)?[A-Za-z0-9_-]+(\.[A-Za-z0-9_-]+)*\.?$/.test(name)) {
      dns.add(name.toLowerCase().replace(/\.$/, ''));
    } else {
      throw new SluiceError(
        ErrorCodes.TLS_SETUP_FAILED,
        `"${raw}" is neither a DNS name nor an IP address; it cannot go in the dev TLS certificate`,
      );
    }
  }
  return { dns: [...dns], ip: [...ip] };
}

/**
 * Create (first use) or reuse the dev CA and server certificate under
 * `<stateDir>/tls/`. The server certificate is regenerated when it expires
 * within 7 days, no longer chains to the CA, or lacks one of `extraNames`.
 * Safe against concurrent callers, in this process or others.
 */
export async function ensureDevTls(stateDir: string, extraNames: string[] = []): Promise<DevTlsFiles> {
  const paths = devPaths(stateDir);
  const names = requiredNames(extraNames);
  const result: DevTlsFiles = { caFile: paths.caCert, certFile: paths.serverCert, keyFile: paths.serverKey };

  // Fast path without the lock: everything present and good. A reader that
  // catches a writer between two renames sees a mismatched pair, takes the
  // slow path and waits for the writer.
  if ((await inspect(paths, names, Date.now())).ok) return result;

  try {
    await mkdir(paths.dir, { recursive: true, mode: 0o700 });
    await chmod(paths.dir, 0o700);
  } catch (err) {
    throw fsError(`cannot create the dev TLS directory ${paths.dir}`, err);
  }

  await withLock(paths.lock, async () => {
    const now = Date.now();
    const state = await inspect(paths, names, now);
    if (state.ok) return;
    let ca = state.ca;
    if (!ca) {
      ca = createCa(now);
      // key first: a cert on disk whose key is missing reads as "no CA" and is redone
      await writeAtomic(paths.caKey, ca.keyPem, 0o600);
      await writeAtomic(paths.caCert, ca.certPem, 0o644);
    }
    const leaf = createLeaf(ca, names, now);
    await writeAtomic(paths.serverKey, leaf.keyPem, 0o600);
    await writeAtomic(paths.serverCert, leaf.certPem, 0o644);
  });
  return result;
}

interface CaMaterial {
  cert: X509Certificate;
  certPem: string;
  keyPem: string;
  privateKey: KeyObject;
}

type Inspection = { ok: true } | { ok: false; ca?: CaMaterial };

/** What on disk is usable: a valid CA (with its key), and whether the leaf is too. */
async function inspect(paths: DevPaths, names: RequiredNames, now: number): Promise<Inspection> {
  const [caCertPem, caKeyPem, leafPem, leafKeyPem] = await Promise.all([
    readIfPresent(paths.caCert),
    readIfPresent(paths.caKey),
    readIfPresent(paths.serverCert),
    readIfPresent(paths.serverKey),
  ]);
  const ca = caCertPem && caKeyPem ? parseCa(caCertPem, caKeyPem, now) : undefined;
  if (!ca) return { ok: false };
  if (!leafPem || !leafKeyPem || !leafUsable(leafPem, leafKeyPem, ca, names, now)) return { ok: false, ca };
  return { ok: true };
}

function parseCa(certPem: string, keyPem: string, now: number): CaMaterial | undefined {
  try {
    const cert = new X509Certificate(certPem);
    const privateKey = createPrivateKey(keyPem);
    if (!cert.ca || !cert.checkPrivateKey(privateKey)) return undefined;
    if (Date.parse(cert.validTo) - now < RENEW_WITHIN_MS) return undefined;
    return { cert, certPem, keyPem, privateKey };
  } catch {
    return undefined; // unparseable: treated as absent and regenerated
  }
}

function leafUsable(certPem: string, keyPem: string, ca: CaMaterial, names: RequiredNames, now: number): boolean {
  try {
    const leaf = new X509Certificate(certPem);
    if (!leaf.checkIssued(ca.cert) || !leaf.verify(ca.cert.publicKey)) return false;
    if (!leaf.checkPrivateKey(createPrivateKey(keyPem))) return false;
    if (Date.parse(leaf.validTo) - now < RENEW_WITHIN_MS) return false;
    // node renders SANs as "DNS:a, IP Address:b"; IPs are compared through checkIP
    // since their textual form (IPv6 especially) is not ours to predict
    const dnsSans = new Set(
      (leaf.subjectAltName ?? '')
        .split(', ')
        .filter((s) => s.startsWith('DNS:'))
        .map((s) => s.slice(4).toLowerCase()),
    );
    return names.dns.every((d) => dnsSans.has(d)) && names.ip.every((ip) => leaf.checkIP(ip) !== undefined);
  } catch {
    return false;
  }
}

function createCa(now: number): CaMaterial {
  const { publicKey, privateKey } = generateEcKeyPair();
  const certPem = createCertificate({
    subject: CA_NAME,
    issuer: CA_NAME,
    subjectPublicKey: publicKey,
    issuerPublicKey: publicKey,
    issuerPrivateKey: privateKey,
    notBefore: new Date(now - BACKDATE_MS),
    notAfter: new Date(now + CA_LIFETIME_MS),
    ca: true,
  });
  const keyPem = privateKey.export({ type: 'pkcs8', format: 'pem' }).toString();
  return { cert: new X509Certificate(certPem), certPem, keyPem, privateKey };
}

function createLeaf(ca: CaMaterial, names: RequiredNames, now: number): { certPem: string; keyPem: string } {
  const { publicKey, privateKey } = generateEcKeyPair();
  // never outlive the issuer: a chain is only valid while every link is
  const notAfter = Math.min(now + LEAF_LIFETIME_MS, Date.parse(ca.cert.validTo));
  const certPem = createCertificate({
    subject: LEAF_NAME,
    // the issuer's subject bytes verbatim, so name chaining cannot drift
    issuer: readSubjectName(ca.certPem),
    subjectPublicKey: publicKey,
    issuerPublicKey: ca.cert.publicKey,
    issuerPrivateKey: ca.privateKey,
    notBefore: new Date(now - BACKDATE_MS),
    notAfter: new Date(notAfter),
    ca: false,
    altNames: names,
  });
  return { certPem, keyPem: privateKey.export({ type: 'pkcs8', format: 'pem' }).toString() };
}

async function readIfPresent(path: string): Promise<string | undefined> {
  try {
    return await readFile(path, 'utf8');
  } catch (err) {
    if (errnoCode(err) === 'ENOENT') return undefined;
    throw fsError(`cannot read ${path}`, err);
  }
}

/** Write to a unique temp file beside the target, then rename over it (atomic on POSIX). */
async function writeAtomic(path: string, data: string, mode: number): Promise<void> {
  const tmp = `${path}.${process.pid}.${randomBytes(6).toString('hex')}.tmp`;
  try {
    await writeFile(tmp, data, { mode, flag: 'wx' });
    await chmod(tmp, mode); // writeFile's mode is filtered by the umask
    await rename(tmp, path);
  } catch (err) {
    await rm(tmp, { force: true }).catch(() => undefined);
    throw fsError(`cannot write ${path}`, err);
  }
}

/**
 * Exclusive-create lock file around generation so that two processes starting
 * together do not each write half of a CA/key pair.
 */
async function withLock(lockPath: string, fn: () => Promise<void>): Promise<void> {
  const deadline = Date.now() + LOCK_WAIT_MS;
  for (;;) {
    try {
      const handle = await open(lockPath, 'wx', 0o600);
      await handle.writeFile(String(process.pid)).finally(() => handle.close());
      break;
    } catch (err) {
      if (errnoCode(err) !== 'EEXIST') throw fsError(`cannot create lock file ${lockPath}`, err);
    }
    const held = await stat(lockPath).catch(() => undefined);
    if (held && Date.now() - held.mtimeMs > LOCK_STALE_MS) {
      await rm(lockPath, { force: true });
      continue;
    }
    if (Date.now() > deadline) {
      throw new SluiceError(
        ErrorCodes.TLS_SETUP_FAILED,
        `timed out waiting for ${lockPath}; remove it if no other Sluice process is starting`,
      );
    }
    await sleep(20 + Math.floor(Math.random() * 30));
  }
  try {
    await fn();
  } finally {
    await rm(lockPath, { force: true });
  }
}

function errnoCode(err: unknown): string | undefined {
  return err instanceof Error && 'code' in err && typeof err.code === 'string' ? err.code : undefined;
}

function fsError(what: string, err: unknown): SluiceError {
  const code = errnoCode(err);
  return new SluiceError(ErrorCodes.TLS_SETUP_FAILED, code ? `${what}: ${code}` : what, { cause: err });
}

/**
 * The material client-facing listeners present: the configured files when
 * the config has a `tls:` section, otherwise the dev CA-signed certificate.
 * `devNames` are extra DNS names / IPs put in the dev certificate.
 */
export async function loadServerTls(
  config: { stateDir: string; tls?: { certFile: string; keyFile: string } },
  devNames: string[] = [],
): Promise<ServerTlsMaterial> {
  if (!config.tls) {
    const dev = await ensureDevTls(config.stateDir, devNames);
    const [cert, key] = await Promise.all([readTlsFile(dev.certFile), readTlsFile(dev.keyFile)]);
    return { cert, key, caFile: dev.caFile, source: 'dev' };
  }

  const { certFile, keyFile } = config.tls;
  const [cert, key] = await Promise.all([readTlsFile(certFile), readTlsFile(keyFile)]);
  let x509: X509Certificate;
  try {
    x509 = new X509Certificate(cert);
  } catch (err) {
    throw new SluiceError(
      ErrorCodes.TLS_SETUP_FAILED,
      `TLS certificate file ${certFile} does not contain a PEM certificate`,
      { cause: err },
    );
  }
  let privateKey: KeyObject;
  try {
    privateKey = createPrivateKey(key);
  } catch (err) {
    // the key's own text never goes into the message
    throw new SluiceError(
      ErrorCodes.TLS_SETUP_FAILED,
      `TLS key file ${keyFile} does not contain an unencrypted PEM private key`,
      { cause: err },
    );
  }
  if (!x509.checkPrivateKey(privateKey)) {
    throw new SluiceError(
      ErrorCodes.TLS_SETUP_FAILED,
      `TLS key file ${keyFile} does not match the certificate in ${certFile}`,
    );
  }
  return { cert, key, source: 'configured' };
}

async function readTlsFile(path: string): Promise<string> {
  try {
    return await readFile(path, 'utf8');
  } catch (err) {
    throw fsError(`cannot read TLS file ${path}`, err);
  }
}

/**
 * Options for `tls.createServer` (which builds its own context from options
 * and ignores a `secureContext`); same floor as createServerSecureContext.
 */
export function serverTlsOptions(material: ServerTlsMaterial): tls.TlsOptions {
  return { cert: material.cert, key: material.key, minVersion: 'TLSv1.2' };
}

/**
 * The server side of a TLS upgrade in place (PostgreSQL's SSLRequest, a
 * Redis listener with TLS): a TLSSocket over the accepted socket.
 *
 * - It has an 'error' listener for its whole life, which destroys it: an
 *   error with none (a write as the client resets the connection) is an
 *   uncaught exception that ends the process and every session in it.
 * - Renegotiation (TLS 1.2) is refused by destroying the socket. Node's own
 *   guards against it (disableRenegotiation, and its limit of 3 in 10
 *   minutes) report through '_tlsError', which a TLSSocket built by hand,
 *   not by a tls.Server, never turns into an 'error': unheard, a client
 *   could have the gateway run handshake after handshake on one connection.
 *   '_tlsError' is internal to Node, and the tests would see it change.
 */
export function serverTlsSocket(socket: Socket, secureContext: tls.SecureContext): tls.TLSSocket {
  const tlsSocket = new tls.TLSSocket(socket, { isServer: true, secureContext });
  tlsSocket.on('error', () => tlsSocket.destroy());
  tlsSocket.on('_tlsError', () => tlsSocket.destroy());
  tlsSocket.disableRenegotiation();
  return tlsSocket;
}

/**
 * A server SecureContext for listeners that upgrade a plain socket in place
 * (PostgreSQL SSLRequest: `new tls.TLSSocket(socket, { isServer: true,
 * secureContext })`). TLS 1.2 is the floor.
 */
export function createServerSecureContext(material: ServerTlsMaterial): tls.SecureContext {
  try {
    return tls.createSecureContext(serverTlsOptions(material));
  } catch (err) {
    throw new SluiceError(
      ErrorCodes.TLS_SETUP_FAILED,
      `the ${material.source} TLS certificate and key cannot be used: ${errnoCode(err) ?? 'invalid'}`,
      { cause: err },
    );
  }
}

import t from 'tap';
import { execFile } from 'node:child_process';
import { X509Certificate, createPrivateKey } from 'node:crypto';
import { existsSync } from 'node:fs';
import { readFile, stat, writeFile } from 'node:fs/promises';
import net, { type AddressInfo } from 'node:net';
import { join } from 'node:path';
import tls from 'node:tls';
import { promisify } from 'node:util';
import { ErrorCodes, isSluiceError } from '../../src/errors.js';
import {
  createServerSecureContext,
  ensureDevTls,
  loadServerTls,
  serverTlsOptions,
  type ServerTlsMaterial,
} from '../../src/gateway/tls.js';
import {
  createCertificate,
  generateEcKeyPair,
  ipAddressOctets,
  oid,
  readSubjectName,
  time,
  tlv,
  unsignedInteger,
} from '../../src/gateway/x509.js';

const execFileP = promisify(execFile);
const OPENSSL = '/usr/bin/openssl';

interface HandshakeResult {
  authorized: boolean;
  protocol: string | null;
  greeting: string;
}

/**
 * Serve `material` on 127.0.0.1:0 and connect once with `client` options.
 * 'upgrade' accepts plain TCP and wraps it in a server TLSSocket with the
 * SecureContext, as the PostgreSQL listener does after SSLRequest;
 * 'tls-server' uses tls.createServer, as a TLS-from-the-first-byte listener does.
 */
async function handshake(
  material: ServerTlsMaterial,
  client: Omit<tls.ConnectionOptions, 'port'>,
  mode: 'upgrade' | 'tls-server' = 'upgrade',
): Promise<HandshakeResult> {
  const greet = (socket: tls.TLSSocket): void => {
    socket.on('error', () => undefined); // the client aborts a handshake it refuses
    socket.end('hello');
  };
  let server: net.Server;
  if (mode === 'upgrade') {
    const secureContext = createServerSecureContext(material);
    server = net.createServer((raw) => {
      const socket = new tls.TLSSocket(raw, { isServer: true, secureContext });
      socket.on('secure', () => greet(socket));
      socket.on('error', () => undefined);
    });
  } else {
    const tlsServer = tls.createServer(serverTlsOptions(material), greet);
    tlsServer.on('tlsClientError', () => undefined);
    server = tlsServer;
  }
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
  const { port } = server.address() as AddressInfo;
  try {
    return await new Promise<HandshakeResult>((resolve, reject) => {
      const socket = tls.connect({ host: '127.0.0.1', rejectUnauthorized: true, ...client, port });
      let greeting = '';
      socket.setEncoding('utf8');
      socket.on('data', (chunk: string) => (greeting += chunk));
      socket.on('error', reject);
      socket.on('end', () => {
        resolve({ authorized: socket.authorized, protocol: socket.getProtocol(), greeting });
        socket.destroy();
      });
    });
  } finally {
    await new Promise<void>((resolve) => server.close(() => resolve()));
  }
}

/** The rejection of `promise`, or undefined if it resolved. */
async function rejection(promise: Promise<unknown>): Promise<unknown> {
  return promise.then(
    () => undefined,
    (err: unknown) => err,
  );
}

function errCode(err: unknown): string | undefined {
  return err instanceof Error && 'code' in err && typeof err.code === 'string' ? err.code : undefined;
}

t.test('dev CA and server certificate are well-formed and chain', async (t) => {
  const stateDir = t.testdir();
  const files = await ensureDevTls(stateDir);
  t.equal(files.caFile, join(stateDir, 'tls', 'ca.crt'));
  t.equal(files.certFile, join(stateDir, 'tls', 'server.crt'));
  t.equal(files.keyFile, join(stateDir, 'tls', 'server.key'));

  const ca = new X509Certificate(await readFile(files.caFile));
  const leaf = new X509Certificate(await readFile(files.certFile));

  t.equal(ca.subject, 'O=Sluice dev\nCN=Sluice dev CA');
  t.equal(ca.issuer, ca.subject, 'CA is self-issued');
  t.equal(ca.ca, true, 'CA has basicConstraints CA:TRUE');
  t.ok(ca.verify(ca.publicKey), 'CA is self-signed');
  t.equal(ca.publicKey.asymmetricKeyType, 'ec');
  t.equal(ca.publicKey.asymmetricKeyDetails?.namedCurve, 'prime256v1');
  const caYears = (Date.parse(ca.validTo) - Date.parse(ca.validFrom)) / (365.25 * 86400_000);
  t.ok(caYears > 9.9 && caYears < 10.1, `CA valid about 10 years (${caYears.toFixed(2)})`);

  t.equal(leaf.subject, 'O=Sluice dev\nCN=localhost');
  t.equal(leaf.issuer, ca.subject);
  t.equal(leaf.ca, false, 'leaf is not a CA');
  t.ok(leaf.verify(ca.publicKey), 'leaf signature verifies with the CA key');
  t.ok(leaf.checkIssued(ca), 'leaf names the CA as issuer');
  t.same(leaf.keyUsage, ['1.3.6.1.5.5.7.3.1'], 'extendedKeyUsage serverAuth');
  t.equal(leaf.checkHost('localhost'), 'localhost');
  t.equal(leaf.checkIP('127.0.0.1'), '127.0.0.1');
  t.equal(leaf.checkIP('::1'), '::1');
  t.match(leaf.subjectAltName, /DNS:localhost/);
  const leafDays = (Date.parse(leaf.validTo) - Date.parse(leaf.validFrom)) / 86400_000;
  t.ok(leafDays > 364 && leafDays < 367, `leaf valid about a year (${leafDays.toFixed(2)} days)`);
  t.ok(Date.parse(leaf.validFrom) <= Date.now(), 'leaf already valid');

  // serial: 16 octets, positive (top bit clear)
  t.match(leaf.serialNumber, /^[0-9A-F]{32}$/);
  t.ok(Number.parseInt(leaf.serialNumber.slice(0, 2), 16) < 0x80, 'serial is positive');
  t.not(leaf.serialNumber, ca.serialNumber);

  const key = createPrivateKey(await readFile(files.keyFile));
  t.ok(leaf.checkPrivateKey(key), 'server.key belongs to server.crt');
  t.ok(ca.checkPrivateKey(createPrivateKey(await readFile(join(stateDir, 'tls', 'ca.key')))));
});

t.test('openssl accepts the chain', async (t) => {
  const stateDir = t.testdir();
  const files = await ensureDevTls(stateDir, ['db.internal.test', '10.9.8.7']);
  if (!existsSync(OPENSSL)) {
    t.comment(`${OPENSSL} is absent: openssl verify not run`);
    t.pass('chain generated');
    return;
  }
  const { stdout } = await execFileP(OPENSSL, ['verify', '-x509_strict', '-CAfile', files.caFile, files.certFile]);
  t.equal(stdout.trim(), `${files.certFile}: OK`);
  const text = (await execFileP(OPENSSL, ['x509', '-in', files.certFile, '-noout', '-text'])).stdout;
  t.match(text, /Basic Constraints: critical\s+CA:FALSE/);
  t.match(text, /Key Usage: critical\s+Digital Signature/);
  t.match(text, /TLS Web Server Authentication/);
  t.match(text, /DNS:localhost, DNS:db\.internal\.test, IP Address:127\.0\.0\.1, IP Address:0:0:0:0:0:0:0:1, IP Address:10\.9\.8\.7/);
  const caText = (await execFileP(OPENSSL, ['x509', '-in', files.caFile, '-noout', '-text'])).stdout;
  t.match(caText, /Basic Constraints: critical\s+CA:TRUE/);
  t.match(caText, /Key Usage: critical\s+Certificate Sign, CRL Sign/);
  // the leaf's authorityKeyIdentifier is the CA's subjectKeyIdentifier
  const ski = /Subject Key Identifier:\s+([0-9A-F:]+)/.exec(caText)?.[1];
  t.ok(ski);
  t.match(text, new RegExp(`Authority Key Identifier:\\s+(keyid:)?${ski}`));
});

t.test('TLS handshake verifies against the dev CA', async (t) => {
  const stateDir = t.testdir();
  const material = await loadServerTls({ stateDir });
  t.equal(material.source, 'dev');
  t.equal(material.caFile, join(stateDir, 'tls', 'ca.crt'));
  const ca = await readFile(material.caFile!, 'utf8');

  const byName = await handshake(material, { ca, servername: 'localhost' });
  t.equal(byName.authorized, true, 'servername localhost verifies');
  t.equal(byName.greeting, 'hello');
  t.ok(byName.protocol === 'TLSv1.2' || byName.protocol === 'TLSv1.3', `protocol ${byName.protocol}`);

  const byIp = await handshake(material, { ca, host: '127.0.0.1' });
  t.equal(byIp.authorized, true, 'IP 127.0.0.1 verifies through the SAN iPAddress');

  const tls12 = await handshake(material, { ca, servername: 'localhost', maxVersion: 'TLSv1.2' });
  t.equal(tls12.protocol, 'TLSv1.2', 'TLS 1.2 clients are served');

  const viaTlsServer = await handshake(material, { ca, servername: 'localhost' }, 'tls-server');
  t.equal(viaTlsServer.authorized, true, 'tls.createServer with serverTlsOptions verifies too');

  t.equal(
    errCode(await rejection(handshake(material, { ca, servername: 'not-localhost.test' }))),
    'ERR_TLS_CERT_ALTNAME_INVALID',
    'a name outside the SANs is refused',
  );
  t.equal(
    errCode(await rejection(handshake(material, { ca, maxVersion: 'TLSv1.1', minVersion: 'TLSv1' }))),
    'ERR_SSL_TLSV1_ALERT_PROTOCOL_VERSION',
    'TLS 1.1 is refused',
  );

  const otherCa = await readFile((await ensureDevTls(join(stateDir, 'other'))).caFile, 'utf8');
  t.not(otherCa, ca);
  t.equal(
    errCode(await rejection(handshake(material, { ca: otherCa, servername: 'localhost' }))),
    'UNABLE_TO_VERIFY_LEAF_SIGNATURE',
    'a different CA does not verify',
  );
  t.equal(
    errCode(await rejection(handshake(material, { servername: 'localhost' }))),
    'UNABLE_TO_VERIFY_LEAF_SIGNATURE',
    'the default trust store does not know the dev CA',
  );
});

t.test('files are reused, private keys are 0600 and the directory 0700', async (t) => {
  const stateDir = t.testdir();
  const first = await ensureDevTls(stateDir);
  const dir = join(stateDir, 'tls');
  const names = ['ca.crt', 'ca.key', 'server.crt', 'server.key'];
  const before = await Promise.all(names.map((n) => readFile(join(dir, n), 'utf8')));
  const mtimes = await Promise.all(names.map(async (n) => (await stat(join(dir, n))).mtimeMs));

  const second = await ensureDevTls(stateDir);
  t.same(second, first);
  const after = await Promise.all(names.map((n) => readFile(join(dir, n), 'utf8')));
  t.same(after, before, 'second call reuses every file');
  t.same(await Promise.all(names.map(async (n) => (await stat(join(dir, n))).mtimeMs)), mtimes, 'nothing rewritten');

  t.equal((await stat(join(dir, 'ca.key'))).mode & 0o777, 0o600);
  t.equal((await stat(join(dir, 'server.key'))).mode & 0o777, 0o600);
  t.equal((await stat(dir)).mode & 0o777, 0o700);
  t.equal((await stat(join(dir, 'ca.crt'))).mode & 0o777, 0o644);
  t.notOk(existsSync(join(dir, '.lock')), 'lock released');
});

t.test('leaf is regenerated for new names, keeping the CA', async (t) => {
  const stateDir = t.testdir();
  const files = await ensureDevTls(stateDir);
  const caBefore = await readFile(files.caFile, 'utf8');
  const leafBefore = await readFile(files.certFile, 'utf8');

  await ensureDevTls(stateDir, ['db.internal.test', '10.0.0.7', 'fd00::7']);
  t.equal(await readFile(files.caFile, 'utf8'), caBefore, 'CA kept');
  const leafPem = await readFile(files.certFile, 'utf8');
  t.not(leafPem, leafBefore, 'leaf replaced');
  const leaf = new X509Certificate(leafPem);
  t.equal(leaf.checkHost('db.internal.test'), 'db.internal.test');
  t.equal(leaf.checkIP('10.0.0.7'), '10.0.0.7');
  t.equal(leaf.checkIP('fd00::7'), 'fd00::7');
  t.equal(leaf.checkHost('localhost'), 'localhost', 'defaults kept');
  t.ok(leaf.checkIssued(new X509Certificate(caBefore)));
  t.ok(leaf.checkPrivateKey(createPrivateKey(await readFile(files.keyFile))), 'new key written with new cert');

  // names already present (in any letter case) do not trigger another one
  await ensureDevTls(stateDir, ['DB.internal.test', '10.0.0.7']);
  t.equal(await readFile(files.certFile, 'utf8'), leafPem, 'leaf reused when the names are present');

  t.ok(
    isSluiceError(await rejection(ensureDevTls(stateDir, ['not a name'])), ErrorCodes.TLS_SETUP_FAILED),
    'a name that is neither DNS nor IP is refused',
  );
});

t.test('leaf expiring within 7 days, or not matching its key, is regenerated', async (t) => {
  const stateDir = t.testdir();
  const files = await ensureDevTls(stateDir);
  const caPem = await readFile(files.caFile, 'utf8');
  const ca = new X509Certificate(caPem);
  const caKey = createPrivateKey(await readFile(join(stateDir, 'tls', 'ca.key')));

  // a correctly signed leaf that ends in 3 days
  const { publicKey, privateKey } = generateEcKeyPair();
  const shortLived = createCertificate({
    subject: { organizationName: 'Sluice dev', commonName: 'localhost' },
    issuer: readSubjectName(caPem),
    subjectPublicKey: publicKey,
    issuerPublicKey: ca.publicKey,
    issuerPrivateKey: caKey,
    notBefore: new Date(Date.now() - 86400_000),
    notAfter: new Date(Date.now() + 3 * 86400_000),
    ca: false,
    altNames: { dns: ['localhost'], ip: ['127.0.0.1', '::1'] },
  });
  t.ok(new X509Certificate(shortLived).checkIssued(ca), 'test leaf chains');
  await writeFile(files.certFile, shortLived);
  await writeFile(files.keyFile, privateKey.export({ type: 'pkcs8', format: 'pem' }));

  await ensureDevTls(stateDir);
  const renewed = new X509Certificate(await readFile(files.certFile));
  t.ok(Date.parse(renewed.validTo) > Date.now() + 300 * 86400_000, 'renewed for a year');
  t.equal(await readFile(files.caFile, 'utf8'), caPem, 'CA kept');

  // a key that does not belong to the cert
  await writeFile(files.keyFile, generateEcKeyPair().privateKey.export({ type: 'pkcs8', format: 'pem' }));
  await ensureDevTls(stateDir);
  const leaf = new X509Certificate(await readFile(files.certFile));
  t.ok(leaf.checkPrivateKey(createPrivateKey(await readFile(files.keyFile))), 'pair consistent again');
  t.ok(leaf.checkIssued(ca));
});

t.test('concurrent creation yields one consistent set', async (t) => {
  const base = t.testdir();
  const stateDir = join(base, 'in-process');
  const results = await Promise.all([1, 2, 3, 4].map(() => ensureDevTls(stateDir)));
  t.equal(new Set(results.map((r) => r.caFile)).size, 1);

  const childDir = join(base, 'processes');
  const moduleUrl = new URL('../../src/gateway/tls.js', import.meta.url).href;
  const script =
    `const { ensureDevTls } = await import(${JSON.stringify(moduleUrl)});` +
    `const { readFileSync } = await import('node:fs');` +
    `const r = await ensureDevTls(${JSON.stringify(childDir)});` +
    `process.stdout.write(readFileSync(r.caFile, 'utf8'));`;
  const outputs = await Promise.all(
    [1, 2, 3].map(() => execFileP(process.execPath, ['--input-type=module', '-e', script])),
  );

  for (const dir of [stateDir, childDir]) {
    const caPem = await readFile(join(dir, 'tls', 'ca.crt'), 'utf8');
    const ca = new X509Certificate(caPem);
    const leaf = new X509Certificate(await readFile(join(dir, 'tls', 'server.crt')));
    t.ok(ca.checkPrivateKey(createPrivateKey(await readFile(join(dir, 'tls', 'ca.key')))), 'CA pair matches');
    t.ok(leaf.checkIssued(ca) && leaf.verify(ca.publicKey), 'leaf signed by the CA on disk');
    t.ok(leaf.checkPrivateKey(createPrivateKey(await readFile(join(dir, 'tls', 'server.key')))), 'leaf pair matches');
    if (dir === childDir) {
      t.same(
        outputs.map((o) => o.stdout),
        [caPem, caPem, caPem],
        'every process ended with the same CA',
      );
    }
  }
});

t.test('configured certificate files', async (t) => {
  // use a dev set as "operator" files, at other paths
  const dir = t.testdir({ 'garbage.pem': 'not a certificate\n' });
  const dev = await ensureDevTls(join(dir, 'dev'));
  const material = await loadServerTls({
    stateDir: join(dir, 'state'),
    tls: { certFile: dev.certFile, keyFile: dev.keyFile },
  });
  t.equal(material.source, 'configured');
  t.equal(material.caFile, undefined);
  t.equal(material.cert, await readFile(dev.certFile, 'utf8'));
  const ca = await readFile(dev.caFile, 'utf8');
  t.equal((await handshake(material, { ca, servername: 'localhost' })).authorized, true);

  t.notOk(existsSync(join(dir, 'state', 'tls')), 'no dev material made when files are configured');
  await writeFile(
    join(dir, 'encrypted.key'),
    createPrivateKey(await readFile(dev.keyFile)).export({
      type: 'pkcs8',
      format: 'pem',
      cipher: 'aes-256-cbc',
      passphrase: 'x',
    }),
  );
  await writeFile(join(dir, 'other.key'), generateEcKeyPair().privateKey.export({ type: 'pkcs8', format: 'pem' }));
  const refused = async (certFile: string, keyFile: string, pattern: RegExp, what: string) => {
    const err = await rejection(loadServerTls({ stateDir: dir, tls: { certFile, keyFile } }));
    t.ok(isSluiceError(err, ErrorCodes.TLS_SETUP_FAILED), `${what}: TLS_SETUP_FAILED`);
    t.match((err as Error).message, pattern, `${what}: names the file`);
  };
  const missing = join(dir, 'missing.crt');
  await refused(missing, dev.keyFile, new RegExp(`${missing}.*ENOENT`), 'missing cert');
  await refused(dev.certFile, join(dir, 'missing.key'), /missing\.key/, 'missing key');
  await refused(join(dir, 'garbage.pem'), dev.keyFile, /garbage\.pem does not contain a PEM certificate/, 'garbage cert');
  await refused(dev.certFile, dev.certFile, /server\.crt does not contain an unencrypted PEM private key/, 'cert as key');
  await refused(dev.certFile, join(dir, 'encrypted.key'), /encrypted\.key/, 'encrypted key');
  await refused(dev.certFile, join(dir, 'other.key'), /other\.key does not match/, 'mismatched key');

  let thrown: unknown;
  try {
    createServerSecureContext({ cert: 'nope', key: 'nope', source: 'configured' });
  } catch (err) {
    thrown = err;
  }
  t.ok(isSluiceError(thrown, ErrorCodes.TLS_SETUP_FAILED), 'unusable material is TLS_SETUP_FAILED');
});

t.test('DER building blocks', async (t) => {
  t.equal(oid('1.2.840.10045.4.3.2').toString('hex'), '06082a8648ce3d040302', 'ecdsa-with-SHA256');
  t.equal(oid('2.5.29.19').toString('hex'), '0603551d13', 'basicConstraints');
  t.equal(unsignedInteger(2).toString('hex'), '020102');
  t.equal(unsignedInteger(0).toString('hex'), '020100');
  t.equal(unsignedInteger(Buffer.from([0x80])).toString('hex'), '02020080', 'sign octet added');
  t.equal(unsignedInteger(Buffer.from([0, 0, 0x7f])).toString('hex'), '02017f', 'leading zeros dropped');
  t.equal(tlv(0x04, Buffer.alloc(127)).subarray(0, 2).toString('hex'), '047f', 'short form length');
  t.equal(tlv(0x04, Buffer.alloc(200)).subarray(0, 3).toString('hex'), '0481c8', 'long form, one octet');
  t.equal(tlv(0x04, Buffer.alloc(300)).subarray(0, 4).toString('hex'), '0482012c', 'long form, two octets');

  t.equal(time(new Date('2049-12-31T23:59:59.999Z')).toString('latin1'), '\x17\x0d491231235959Z', 'UTCTime');
  t.equal(time(new Date('2050-01-01T00:00:00Z')).toString('latin1'), '\x18\x0f20500101000000Z', 'GeneralizedTime');

  t.equal(ipAddressOctets('127.0.0.1').toString('hex'), '7f000001');
  t.equal(ipAddressOctets('::1').toString('hex'), '00000000000000000000000000000001');
  t.equal(ipAddressOctets('::').toString('hex'), '0'.repeat(32));
  t.equal(ipAddressOctets('fe80::1:2').toString('hex'), 'fe800000000000000000000000010002');
  t.equal(ipAddressOctets('::ffff:10.1.2.3').toString('hex'), '00000000000000000000ffff0a010203');
  t.equal(ipAddressOctets('2001:db8:0:0:1:0:0:1').toString('hex'), '20010db8000000000001000000000001');

  // a certificate spanning the UTCTime/GeneralizedTime switch parses both ways
  const { publicKey, privateKey } = generateEcKeyPair();
  const pem = createCertificate({
    subject: { commonName: 'long-lived' },
    issuer: { commonName: 'long-lived' },
    subjectPublicKey: publicKey,
    issuerPublicKey: publicKey,
    issuerPrivateKey: privateKey,
    notBefore: new Date('2049-06-01T00:00:00Z'),
    notAfter: new Date('2061-03-04T05:06:07Z'),
    ca: true,
  });
  const cert = new X509Certificate(pem);
  t.equal(new Date(cert.validFrom).toISOString(), '2049-06-01T00:00:00.000Z');
  t.equal(new Date(cert.validTo).toISOString(), '2061-03-04T05:06:07.000Z');
  t.equal(cert.subject, 'CN=long-lived');
  t.ok(cert.verify(publicKey));
});

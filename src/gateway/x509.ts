/**
 * Just enough DER (X.690) and X.509 (RFC 5280) to mint the development CA and
 * server certificate Sluice uses when no `tls:` section is configured. Node can
 * parse and verify certificates but cannot create them; this avoids both a
 * dependency and shelling out to openssl (absent from the runtime image).
 *
 * Scope is deliberately narrow: EC P-256 keys, ecdsa-with-SHA256 signatures,
 * UTF8String names, and the handful of extensions a TLS server cert needs.
 * The reader half only walks the structure far enough to pull out a subject
 * Name and the bits of a SubjectPublicKeyInfo.
 */
import { createHash, generateKeyPairSync, randomBytes, sign, type KeyObject } from 'node:crypto';
import { isIP } from 'node:net';

// ---------------------------------------------------------------- DER writer

/** Universal tags, X.690 8.1.2 / X.680 8.6. */
const TAG = {
  BOOLEAN: 0x01,
  INTEGER: 0x02,
  BIT_STRING: 0x03,
  OCTET_STRING: 0x04,
  OBJECT_IDENTIFIER: 0x06,
  UTF8String: 0x0c,
  UTCTime: 0x17,
  GeneralizedTime: 0x18,
  SEQUENCE: 0x30, // constructed bit set
  SET: 0x31,
} as const;

/** Definite length: short form below 128, else 0x80|n followed by n big-endian octets. */
function encodeLength(length: number): Buffer {
  if (length < 0x80) return Buffer.from([length]);
  const octets: number[] = [];
  for (let n = length; n > 0; n = Math.floor(n / 256)) octets.unshift(n & 0xff);
  return Buffer.from([0x80 | octets.length, ...octets]);
}

export function tlv(tag: number, content: Buffer): Buffer {
  return Buffer.concat([Buffer.from([tag]), encodeLength(content.length), content]);
}

export function sequence(...items: Buffer[]): Buffer {
  return tlv(TAG.SEQUENCE, Buffer.concat(items));
}

/** SET OF must be sorted by encoding in DER (X.690 11.6). */
function setOf(...items: Buffer[]): Buffer {
  return tlv(TAG.SET, Buffer.concat([...items].sort(Buffer.compare)));
}

/** [n] EXPLICIT: constructed context-specific tag wrapping a whole TLV. */
function explicit(n: number, inner: Buffer): Buffer {
  return tlv(0xa0 | n, inner);
}

/** [n] IMPLICIT on a primitive type: the context tag replaces the universal one. */
function implicitPrimitive(n: number, content: Buffer): Buffer {
  return tlv(0x80 | n, content);
}

function boolean(value: boolean): Buffer {
  return tlv(TAG.BOOLEAN, Buffer.from([value ? 0xff : 0x00]));
}

/**
 * INTEGER from unsigned big-endian magnitude: minimal octets (no redundant
 * leading zeros) and a 0x00 prefix when the top bit would read as negative.
 */
export function unsignedInteger(magnitude: Buffer | number): Buffer {
  let bytes = typeof magnitude === 'number' ? numberToBytes(magnitude) : Buffer.from(magnitude);
  let start = 0;
  while (start < bytes.length - 1 && bytes[start] === 0) start++;
  bytes = bytes.subarray(start);
  if (bytes.length === 0) bytes = Buffer.from([0]);
  if (bytes[0]! & 0x80) bytes = Buffer.concat([Buffer.from([0]), bytes]);
  return tlv(TAG.INTEGER, bytes);
}

function numberToBytes(n: number): Buffer {
  if (!Number.isSafeInteger(n) || n < 0) throw new RangeError(`not a non-negative integer: ${n}`);
  const out: number[] = [];
  do {
    out.unshift(n & 0xff);
    n = Math.floor(n / 256);
  } while (n > 0);
  return Buffer.from(out);
}

/** OBJECT IDENTIFIER: first two arcs fold into 40*a+b, each arc base-128 with continuation bits. */
export function oid(dotted: string): Buffer {
  const arcs = dotted.split('.').map((s) => Number.parseInt(s, 10));
  if (arcs.length < 2 || arcs.some((a) => !Number.isSafeInteger(a) || a < 0)) {
    throw new RangeError(`bad object identifier: ${dotted}`);
  }
  const [first, second, ...rest] = arcs as [number, number, ...number[]];
  const out: number[] = [];
  for (const arc of [first * 40 + second, ...rest]) {
    const groups: number[] = [];
    let n = arc;
    do {
      groups.unshift(n % 128);
      n = Math.floor(n / 128);
    } while (n > 0);
    groups.forEach((g, i) => out.push(i < groups.length - 1 ? g | 0x80 : g));
  }
  return tlv(TAG.OBJECT_IDENTIFIER, Buffer.from(out));
}

function octetString(content: Buffer): Buffer {
  return tlv(TAG.OCTET_STRING, content);
}

/** BIT STRING whose content is whole octets: leading "unused bits" octet is 0. */
function bitString(content: Buffer): Buffer {
  return tlv(TAG.BIT_STRING, Buffer.concat([Buffer.from([0]), content]));
}

/**
 * Named-bit BIT STRING (X.690 11.2.2): trailing zero bits are dropped, so the
 * unused-bits count is set by the highest bit asserted. Bit 0 is the MSB of
 * the first octet.
 */
function namedBits(bits: number[]): Buffer {
  if (bits.length === 0) return tlv(TAG.BIT_STRING, Buffer.from([0]));
  const highest = Math.max(...bits);
  const bytes = Buffer.alloc(Math.floor(highest / 8) + 1);
  for (const bit of bits) bytes[bit >> 3]! |= 0x80 >> (bit & 7);
  const unused = 7 - (highest & 7);
  return tlv(TAG.BIT_STRING, Buffer.concat([Buffer.from([unused]), bytes]));
}

/**
 * Time (RFC 5280 4.1.2.5): UTCTime YYMMDDHHMMSSZ through 2049, GeneralizedTime
 * YYYYMMDDHHMMSSZ from 2050. Always UTC, seconds present, no fractions.
 */
export function time(date: Date): Buffer {
  const year = date.getUTCFullYear();
  if (year < 1950 || year > 9999) throw new RangeError(`date out of X.509 range: ${date.toISOString()}`);
  const p2 = (n: number): string => String(n).padStart(2, '0');
  const rest =
    p2(date.getUTCMonth() + 1) +
    p2(date.getUTCDate()) +
    p2(date.getUTCHours()) +
    p2(date.getUTCMinutes()) +
    p2(date.getUTCSeconds()) +
    'Z';
  return year < 2050
    ? tlv(TAG.UTCTime, Buffer.from(p2(year % 100) + rest, 'ascii'))
    : tlv(TAG.GeneralizedTime, Buffer.from(String(year) + rest, 'ascii'));
}

// ---------------------------------------------------------------- DER reader

interface DerElement {
  tag: number;
  /** The content octets. */
  content: Buffer;
  /** The whole element, header included. */
  raw: Buffer;
}

/** Read one TLV at `offset`; definite lengths only (DER never uses indefinite). */
function readElement(buf: Buffer, offset = 0): DerElement {
  const fail = (): never => {
    throw new RangeError('malformed DER');
  };
  if (offset + 2 > buf.length) fail();
  const tag = buf[offset]!;
  if ((tag & 0x1f) === 0x1f) fail(); // high tag numbers: never used in what we read
  const lengthByte = buf[offset + 1]!;
  let header = 2;
  let length = lengthByte;
  if (lengthByte & 0x80) {
    const n = lengthByte & 0x7f;
    if (n === 0 || n > 4 || offset + 2 + n > buf.length) fail();
    length = 0;
    for (let i = 0; i < n; i++) length = length * 256 + buf[offset + 2 + i]!;
    header += n;
  }
  const end = offset + header + length;
  if (end > buf.length) fail();
  return { tag, content: buf.subarray(offset + header, end), raw: buf.subarray(offset, end) };
}

function readChildren(content: Buffer): DerElement[] {
  const out: DerElement[] = [];
  for (let offset = 0; offset < content.length; ) {
    const el = readElement(content, offset);
    out.push(el);
    offset += el.raw.length;
  }
  return out;
}

/** The DER of the subject Name of a certificate (PEM or DER), byte for byte. */
export function readSubjectName(cert: string | Buffer): Buffer {
  const der = typeof cert === 'string' ? pemToDer(cert) : cert;
  const certificate = readElement(der);
  const tbs = readElement(certificate.content);
  const fields = readChildren(tbs.content);
  // version [0] is optional (absent for v1); then serial, signature, issuer, validity, subject
  const base = fields[0]?.tag === 0xa0 ? 1 : 0;
  const subject = fields[base + 4];
  if (!subject || subject.tag !== TAG.SEQUENCE) throw new RangeError('malformed certificate');
  return Buffer.from(subject.raw);
}

/** subjectPublicKey bits from a DER SubjectPublicKeyInfo (for key identifiers). */
function subjectPublicKeyBits(spki: Buffer): Buffer {
  const [, bits] = readChildren(readElement(spki).content);
  if (!bits || bits.tag !== TAG.BIT_STRING || bits.content[0] !== 0) {
    throw new RangeError('malformed SubjectPublicKeyInfo');
  }
  return bits.content.subarray(1);
}

// ---------------------------------------------------------------- X.509

/** Object identifiers, named as their defining documents name them. */
const OID = {
  commonName: '2.5.4.3',
  organizationName: '2.5.4.10',
  ecdsaWithSHA256: '1.2.840.10045.4.3.2',
  subjectKeyIdentifier: '2.5.29.14',
  keyUsage: '2.5.29.15',
  subjectAltName: '2.5.29.17',
  basicConstraints: '2.5.29.19',
  authorityKeyIdentifier: '2.5.29.35',
  extKeyUsage: '2.5.29.37',
  serverAuth: '1.3.6.1.5.5.7.3.1',
} as const;

/** KeyUsage bit positions, RFC 5280 4.2.1.3. */
const KeyUsage = { digitalSignature: 0, keyCertSign: 5, cRLSign: 6 } as const;

export interface DistinguishedName {
  commonName: string;
  organizationName?: string;
}

/** Name ::= RDNSequence, most significant first (O, then CN), one attribute per RDN. */
export function encodeName(name: DistinguishedName): Buffer {
  const rdn = (type: string, value: string): Buffer =>
    setOf(sequence(oid(type), tlv(TAG.UTF8String, Buffer.from(value, 'utf8'))));
  const rdns: Buffer[] = [];
  if (name.organizationName !== undefined) rdns.push(rdn(OID.organizationName, name.organizationName));
  rdns.push(rdn(OID.commonName, name.commonName));
  return sequence(...rdns);
}

/** keyIdentifier per RFC 5280 4.2.1.2 method (1): SHA-1 of the subjectPublicKey bits. */
export function keyIdentifier(publicKey: KeyObject): Buffer {
  const spki = publicKey.export({ type: 'spki', format: 'der' });
  return createHash('sha1').update(subjectPublicKeyBits(spki)).digest();
}

/** iPAddress octets: 4 for IPv4, 16 for IPv6 (RFC 5280 4.2.1.6). */
export function ipAddressOctets(ip: string): Buffer {
  const family = isIP(ip);
  if (family === 4) return Buffer.from(ip.split('.').map((s) => Number.parseInt(s, 10)));
  if (family !== 6) throw new RangeError(`not an IP address: ${ip}`);
  let text = ip.split('%')[0]!; // drop a zone id, it has no meaning in a certificate
  // a trailing dotted quad (::ffff:1.2.3.4) becomes two hex groups
  const dotted = /(\d+\.\d+\.\d+\.\d+)$/.exec(text);
  if (dotted) {
    const v4 = ipAddressOctets(dotted[1]!);
    text =
      text.slice(0, dotted.index) +
      v4.readUInt16BE(0).toString(16) +
      ':' +
      v4.readUInt16BE(2).toString(16);
  }
  const [head, tail] = text.split('::') as [string, string | undefined];
  const groups = (s: string): string[] => (s === '' ? [] : s.split(':'));
  const left = groups(head);
  const right = tail === undefined ? [] : groups(tail);
  const fill = tail === undefined ? [] : new Array<string>(8 - left.length - right.length).fill('0');
  const all = [...left, ...fill, ...right];
  const out = Buffer.alloc(16);
  all.forEach((g, i) => out.writeUInt16BE(Number.parseInt(g, 16), i * 2));
  return out;
}

export interface AltNames {
  dns?: string[];
  ip?: string[];
}

/** GeneralNames: dNSName [2] IA5String, iPAddress [7] OCTET STRING, both IMPLICIT. */
function encodeGeneralNames(names: AltNames): Buffer {
  const out: Buffer[] = [];
  for (const dns of names.dns ?? []) {
    // IA5String is 7-bit ASCII; internationalised names must arrive as A-labels
    if (!/^[\x21-\x7e]+$/.test(dns)) throw new RangeError(`DNS name is not ASCII: ${JSON.stringify(dns)}`);
    out.push(implicitPrimitive(2, Buffer.from(dns, 'ascii')));
  }
  for (const ip of names.ip ?? []) out.push(implicitPrimitive(7, ipAddressOctets(ip)));
  return sequence(...out);
}

/** Extension ::= SEQUENCE { extnID, critical BOOLEAN DEFAULT FALSE, extnValue OCTET STRING } */
function extension(id: string, critical: boolean, value: Buffer): Buffer {
  // DER omits a value equal to its DEFAULT, so critical appears only when TRUE
  return critical ? sequence(oid(id), boolean(true), octetString(value)) : sequence(oid(id), octetString(value));
}

export interface CertificateRequest {
  subject: DistinguishedName;
  /** The issuer's subject Name as DER (readSubjectName), or a Name to encode. */
  issuer: DistinguishedName | Buffer;
  subjectPublicKey: KeyObject;
  /** Used for authorityKeyIdentifier; equals subjectPublicKey when self-signed. */
  issuerPublicKey: KeyObject;
  /** Signs the certificate; must be an EC P-256 key for ecdsa-with-SHA256. */
  issuerPrivateKey: KeyObject;
  notBefore: Date;
  notAfter: Date;
  /** basicConstraints cA; a CA gets keyCertSign+cRLSign, a leaf digitalSignature+serverAuth. */
  ca: boolean;
  altNames?: AltNames;
  /** Positive serial magnitude; defaults to 16 random octets. */
  serialNumber?: Buffer;
}

/** 16 random octets, top bit clear (positive) and next bit set (minimal, non-zero). */
export function randomSerialNumber(): Buffer {
  const serial = randomBytes(16);
  serial[0] = (serial[0]! & 0x7f) | 0x40;
  return serial;
}

/** Build and sign an X.509 v3 certificate; returns the DER. */
export function createCertificateDer(req: CertificateRequest): Buffer {
  if (req.notAfter.getTime() <= req.notBefore.getTime()) throw new RangeError('notAfter must follow notBefore');
  // AlgorithmIdentifier for ECDSA omits parameters entirely (RFC 5758 3.2)
  const signatureAlgorithm = sequence(oid(OID.ecdsaWithSHA256));
  const issuer = Buffer.isBuffer(req.issuer) ? req.issuer : encodeName(req.issuer);

  const extensions: Buffer[] = [
    // cA TRUE for the CA; for a leaf cA is FALSE, i.e. the DEFAULT, so the SEQUENCE is empty
    extension(OID.basicConstraints, true, req.ca ? sequence(boolean(true)) : sequence()),
    extension(
      OID.keyUsage,
      true,
      namedBits(req.ca ? [KeyUsage.keyCertSign, KeyUsage.cRLSign] : [KeyUsage.digitalSignature]),
    ),
  ];
  if (!req.ca) extensions.push(extension(OID.extKeyUsage, false, sequence(oid(OID.serverAuth))));
  if (req.altNames && ((req.altNames.dns?.length ?? 0) > 0 || (req.altNames.ip?.length ?? 0) > 0)) {
    extensions.push(extension(OID.subjectAltName, false, encodeGeneralNames(req.altNames)));
  }
  extensions.push(extension(OID.subjectKeyIdentifier, false, octetString(keyIdentifier(req.subjectPublicKey))));
  // AuthorityKeyIdentifier ::= SEQUENCE { keyIdentifier [0] IMPLICIT OCTET STRING, ... }
  extensions.push(
    extension(OID.authorityKeyIdentifier, false, sequence(implicitPrimitive(0, keyIdentifier(req.issuerPublicKey)))),
  );

  const tbsCertificate = sequence(
    explicit(0, unsignedInteger(2)), // version v3
    unsignedInteger(req.serialNumber ?? randomSerialNumber()),
    signatureAlgorithm,
    issuer,
    sequence(time(req.notBefore), time(req.notAfter)),
    encodeName(req.subject),
    req.subjectPublicKey.export({ type: 'spki', format: 'der' }),
    explicit(3, sequence(...extensions)),
  );
  // node signs EC keys as a DER Ecdsa-Sig-Value by default, which is what X.509 carries
  const signature = sign('sha256', tbsCertificate, req.issuerPrivateKey);
  return sequence(tbsCertificate, signatureAlgorithm, bitString(signature));
}

/** Build and sign an X.509 v3 certificate; returns PEM. */
export function createCertificate(req: CertificateRequest): string {
  return derToPem(createCertificateDer(req), 'CERTIFICATE');
}

/** A fresh EC P-256 key pair, the only kind this module signs with. */
export function generateEcKeyPair(): { publicKey: KeyObject; privateKey: KeyObject } {
  return generateKeyPairSync('ec', { namedCurve: 'P-256' });
}

export function derToPem(der: Buffer, label: string): string {
  const b64 = der.toString('base64').replace(/.{64}/g, '$&\n').replace(/\n$/, '');
  return `-----BEGIN ${label}-----\n${b64}\n-----END ${label}-----\n`;
}

/** First PEM block's DER (any label). */
export function pemToDer(pem: string): Buffer {
  const m = /-----BEGIN [^-]+-----([\s\S]*?)-----END [^-]+-----/.exec(pem);
  if (!m) throw new RangeError('no PEM block found');
  return Buffer.from(m[1]!.replace(/\s+/g, ''), 'base64');
}

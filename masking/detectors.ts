/**
 * Built-in detectors. Each declares:
 * - `gates`: cheap checks, any one of which must hold for the regex to run at
 *   all (literals are `indexOf`, a memory scan; a few classes such as "four
 *   digits in a row" are tiny regexes shared between detectors);
 * - `regex`: global, linear on any input (no nested ambiguous quantifiers;
 *   lookbehinds are single characters so a match cannot start inside a run);
 * - `refine`: validation where a checksum or a registry exists (Luhn, mod 97,
 *   SSN area/group/serial), returning how much of the candidate to mask
 *   (0 = not a hit), so that "card number followed by more digits" still masks
 *   the card;
 * - `valueGroups`: for assignments, the capture groups holding the secret
 *   itself, so `password=hunter2` becomes `password=[redacted]`.
 *
 * The regexes are ASCII-only: they never match inside a multi-byte character.
 */
import { isIPv6 } from 'node:net';
import type { DetectorName } from './types.js';

export interface Detector {
  name: string;
  /** Any one must hold for `regex` to run on a value. Empty = always run. */
  gates: Array<string | RegExp>;
  regex: RegExp;
  valueGroups?: number[];
  /** Length of the candidate to mask, from its start; 0 rejects it. */
  refine?: (text: string) => number;
  /** A strategy hint: 'email' makes `partial` keep the first local character and the domain. */
  shape?: 'email';
  /** Must run on each value alone (anchors or lookarounds could see a neighbouring value in a batch). */
  perValue?: boolean;
  /**
   * Where the regex can start, for a detector whose every match holds one
   * `char` (not in `run`), preceded by 1 to `before` characters of `run`
   * that start the match (it cannot start inside such a run): the match
   * holding a given `char` starts where the run of `run` characters before
   * it begins, so the exact path starts the regex there instead of trying
   * every position before it. `run` lists the run's ASCII characters; a
   * non-ASCII character may or may not belong to the run.
   */
  pivot?: { char: string; before: number; run: Uint8Array };
}

function asciiSet(chars: string): Uint8Array {
  const set = new Uint8Array(128);
  for (const c of chars) set[c.charCodeAt(0)] = 1;
  return set;
}

// Shared gates: one object per class so the matcher evaluates each once per value.
const CARD_GATE = /\d{4}[ -]?\d{4}/;
const SSN_GATE = /\d{3}-\d\d-\d{4}/;
const DOTTED_DIGITS = /\d\.\d{1,3}\.\d/;
const IBAN_HEAD = /[A-Z]{2}\d\d/;
const NANP_TAIL = /\d{3}[-.]\d{4}/;
const IPV6_GATE = /[0-9A-Fa-f]:[0-9A-Fa-f]{1,4}:[0-9A-Fa-f]/;

function luhn(digits: string): boolean {
  let sum = 0;
  let double = false;
  for (let i = digits.length - 1; i >= 0; i--) {
    let d = digits.charCodeAt(i) - 48;
    if (double) {
      d *= 2;
      if (d > 9) d -= 9;
    }
    sum += d;
    double = !double;
  }
  return sum % 10 === 0;
}

/** Issuer prefixes of payment cards (Visa, Mastercard, Amex, Diners, Discover, JCB, UnionPay). */
function cardIssuer(digits: string): boolean {
  const two = Number(digits.slice(0, 2));
  const four = Number(digits.slice(0, 4));
  const first = digits.charCodeAt(0) - 48;
  if (first === 4) return true; // Visa
  if (two >= 51 && two <= 55) return true; // Mastercard
  if (four >= 2221 && four <= 2720) return true; // Mastercard 2-series
  if (two === 34 || two === 37) return true; // Amex
  if (two === 36 || two === 38 || two === 30 || two === 35) return true; // Diners, JCB
  if (two === 62 || two === 65 || four === 6011 || (two === 64 && four >= 6440)) return true; // UnionPay, Discover
  return false;
}

/**
 * Longest prefix of the candidate that is a valid card: 13 to 19 digits, one
 * kind of separator at most, a known issuer prefix and a valid Luhn sum. Cuts
 * are tried where a digit is followed by a separator or the end.
 */
function refineCard(text: string): number {
  const cuts = [text.length];
  for (let i = text.length - 1; i > 0; i--) if (text[i] === ' ' || text[i] === '-') cuts.push(i);
  for (const end of cuts) {
    const candidate = text.slice(0, end);
    const digits = candidate.replace(/\D/g, '');
    if (digits.length < 13) return 0;
    // Mixed separators: not a card as printed. Per cut: `4111-1111-1111-1111 123` is a card and a CVC.
    if (new Set(candidate.replace(/\d/g, '')).size > 1) continue;
    if (digits.length <= 19 && cardIssuer(digits) && luhn(digits)) return end;
  }
  return 0;
}

function mod97(iban: string): number {
  const rearranged = iban.slice(4) + iban.slice(0, 4);
  let rem = 0;
  for (let i = 0; i < rearranged.length; i++) {
    const c = rearranged.charCodeAt(i);
    const v = c >= 65 ? c - 55 : c - 48; // A=10 .. Z=35
    rem = v >= 10 ? (rem * 100 + v) % 97 : (rem * 10 + v) % 97;
  }
  return rem;
}

/** Longest prefix, cut at a group boundary, that is a 15-34 character IBAN with check digits valid under mod 97. */
function refineIban(text: string): number {
  for (let end = text.length; end >= 15; end--) {
    if (end < text.length && text[end] !== ' ') continue;
    const compact = text.slice(0, end).replace(/ /g, '');
    if (compact.length < 15) return 0;
    if (compact.length > 34) continue;
    if (mod97(compact) === 1) return end;
  }
  return 0;
}

function refineSsn(text: string): number {
  const area = Number(text.slice(0, 3));
  const group = Number(text.slice(4, 6));
  const serial = Number(text.slice(7, 11));
  if (area === 0 || area === 666 || area >= 900) return 0;
  if (group === 0 || serial === 0) return 0;
  return text.length;
}

function refinePhone(text: string): number {
  const digits = text.replace(/\D/g, '');
  if (text.startsWith('+')) return digits.length >= 8 && digits.length <= 15 ? text.length : 0;
  return text.length; // national (NANP) form is fully constrained by the regex
}

function refineIpv6(text: string): number {
  if (!isIPv6(text)) return 0;
  // Require real content: at least two hex groups, or a compressed form with one ('::1').
  const groups = text.split(':').filter((g) => g.length > 0);
  return groups.length >= 2 || (groups.length === 1 && text.startsWith('::')) ? text.length : 0;
}

function refineJwt(text: string): number {
  const header = text.slice(0, text.indexOf('.'));
  try {
    const parsed: unknown = JSON.parse(Buffer.from(header, 'base64url').toString('utf8'));
    return parsed !== null && typeof parsed === 'object' && 'alg' in parsed ? text.length : 0;
  } catch {
    return 0;
  }
}

const PASSWORD_KEYWORDS =
  'password|passwd|passphrase|pass|pwd|secret|client[_-]?secret|api[_-]?key|apikey|access[_-]?key|private[_-]?key|access[_-]?token|auth[_-]?token|token';

export const BUILTIN_DETECTORS: Record<DetectorName, Detector> = {
  email: {
    name: 'email',
    gates: ['@'],
    // Local part bounded (RFC 5321: 64) and started only at a run boundary, so failing runs cost one pass.
    // Letters and digits of any script (RFC 6531 addresses, IDN domains): 'zoë@exämple.de'.
    regex:
      /(?<![\p{L}\p{N}._%+-])[\p{L}\p{N}._%+-]{1,64}@(?:[\p{L}\p{N}](?:[\p{L}\p{N}-]{0,61}[\p{L}\p{N}])?\.)+\p{L}{2,24}(?![\p{L}\p{N}-])/gu,
    shape: 'email',
    pivot: { char: '@', before: 64, run: asciiSet('ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789._%+-') },
  },
  credit_card: {
    name: 'credit_card',
    gates: [CARD_GATE],
    regex: /(?<![\d.-])[2-6]\d{3}(?:[ -]?\d){9,15}(?!\d)/g,
    refine: refineCard,
  },
  iban: {
    name: 'iban',
    gates: [IBAN_HEAD],
    regex: /(?<!(?<!\\)[A-Za-z0-9])[A-Z]{2}\d{2}(?: ?[A-Z0-9]){11,30}(?![A-Za-z0-9])/g,
    refine: refineIban,
  },
  us_ssn: {
    name: 'us_ssn',
    gates: [SSN_GATE],
    regex: /(?<![\d-])\d{3}-\d{2}-\d{4}(?![\d-])/g,
    refine: refineSsn,
  },
  phone: {
    name: 'phone',
    gates: ['+', NANP_TAIL],
    // E.164 with optional separators, or a North American number written with separators
    // (a bare 10-digit run is an id far more often than a phone number).
    regex:
      /(?<![\w+])\+[1-9](?:[ .()-]{0,2}\d){6,14}(?!\d)|(?<![\w.+-])(?:\([2-9]\d{2}\) ?|[2-9]\d{2}[-.])[2-9]\d{2}[-.]\d{4}(?![\d-])/g,
    refine: refinePhone,
  },
  ipv4: {
    name: 'ipv4',
    gates: [DOTTED_DIGITS],
    regex: /(?<![\d.])(?:(?:25[0-5]|2[0-4]\d|1\d\d|[1-9]?\d)\.){3}(?:25[0-5]|2[0-4]\d|1\d\d|[1-9]?\d)(?!\.?\d)/g,
  },
  ipv6: {
    name: 'ipv6',
    gates: ['::', IPV6_GATE],
    regex: /(?<![\w:.])(?:[0-9A-Fa-f]{1,4}:|:){2,8}(?:[0-9A-Fa-f]{1,4}|(?:\d{1,3}\.){3}\d{1,3})?(?![\w:])/g,
    refine: refineIpv6,
  },
  aws_access_key_id: {
    name: 'aws_access_key_id',
    gates: ['AKIA', 'ASIA', 'ABIA', 'ACCA'],
    regex: /(?<!(?<!\\)[A-Za-z0-9])(?:AKIA|ASIA|ABIA|ACCA)[A-Z0-9]{16}(?![A-Za-z0-9])/g,
  },
  aws_secret_access_key: {
    name: 'aws_secret_access_key',
    // Heuristic: 40 base64 characters assigned to a name that mentions aws or secret
    // (aws_secret_access_key = ..., "SecretAccessKey": "...").
    gates: [/aws|secret/i],
    regex: /(?:aws|secret)[A-Za-z0-9_.-]{0,30}["']?\s{0,5}(?:=>|=|:)\s{0,5}["']?([A-Za-z0-9/+]{40})(?![A-Za-z0-9/+=])/dgi,
    valueGroups: [1],
  },
  github_token: {
    name: 'github_token',
    gates: ['ghp_', 'gho_', 'ghu_', 'ghs_', 'ghr_', 'github_pat_'],
    regex: /(?<!(?<!\\)[A-Za-z0-9_])(?:gh[pousr]_[A-Za-z0-9]{36,}|github_pat_[A-Za-z0-9_]{22,})(?![A-Za-z0-9_])/g,
  },
  gitlab_token: {
    name: 'gitlab_token',
    gates: ['glpat-'],
    regex: /(?<!(?<!\\)[A-Za-z0-9_-])glpat-[A-Za-z0-9_-]{20,}/g,
  },
  slack_token: {
    name: 'slack_token',
    gates: ['xox'],
    regex: /(?<!(?<!\\)[A-Za-z0-9])xox[abposr]-[A-Za-z0-9-]{10,}/g,
  },
  stripe_key: {
    name: 'stripe_key',
    gates: ['sk_live_', 'sk_test_', 'rk_live_', 'rk_test_'],
    regex: /(?<!(?<!\\)[A-Za-z0-9_])[sr]k_(?:live|test)_[0-9A-Za-z]{10,}(?![0-9A-Za-z])/g,
  },
  google_api_key: {
    name: 'google_api_key',
    gates: ['AIza'],
    regex: /(?<!(?<!\\)[A-Za-z0-9_-])AIza[0-9A-Za-z_-]{35}(?![0-9A-Za-z_-])/g,
  },
  jwt: {
    name: 'jwt',
    gates: ['eyJ'],
    regex: /(?<!(?<!\\)[A-Za-z0-9_-])eyJ[A-Za-z0-9_-]{2,}\.[A-Za-z0-9_-]{2,}\.[A-Za-z0-9_-]*(?![A-Za-z0-9_-])/g,
    refine: refineJwt,
  },
  pem_private_key: {
    name: 'pem_private_key',
    gates: ['-----BEGIN'],
    // Through the END line; a block cut short (no END in this value) is masked to the end of the value.
    regex:
      /-----BEGIN (?:[A-Z0-9]+ )*PRIVATE KEY(?: BLOCK)?-----[\s\S]*?(?:-----END (?:[A-Z0-9]+ )*PRIVATE KEY(?: BLOCK)?-----|$)/g,
  },
  password_assignment: {
    name: 'password_assignment',
    // A keyword, then = or :, then the value (quoted or bare); or the password of a URL's userinfo.
    gates: [/pass|pwd|secret|key|token|:\/\//i],
    regex: new RegExp(
      `(?<!(?<!\\\\)[A-Za-z0-9])(?:${PASSWORD_KEYWORDS})["']?\\s{0,5}[:=]\\s{0,5}(?:"((?:[^"\\\\\\r\\n]|\\\\.){1,1024})"|"([^"\\r\\n]{1,1024})"|'((?:[^'\\\\\\r\\n]|\\\\.){1,1024})'|'([^'\\r\\n]{1,1024})'|([^\\s"',;&}]{1,1024}))` +
        `|://[^/\\s:@]{1,256}:([^/\\s@]{1,256})@`,
      'dgi',
    ),
    // Quoted values: escape-aware first (`"hun\\"ter2"`), then to the next quote (a value ending in a backslash).
    valueGroups: [1, 2, 3, 4, 5, 6],
  },
};

export const DETECTOR_NAMES = Object.keys(BUILTIN_DETECTORS) as DetectorName[];

/** A built-in detector's bit in the scan's hints (see CandidateScanner.scan): its index in DETECTOR_NAMES. */
export function detectorBit(name: DetectorName): number {
  return 1 << DETECTOR_NAMES.indexOf(name);
}
const B_EMAIL = detectorBit('email');
const B_CARD = detectorBit('credit_card');
const B_IBAN = detectorBit('iban');
const B_SSN = detectorBit('us_ssn');
const B_PHONE = detectorBit('phone');
const B_IPV4 = detectorBit('ipv4');
const B_IPV6 = detectorBit('ipv6');
const B_AWS_ID = detectorBit('aws_access_key_id');
const B_AWS_SECRET = detectorBit('aws_secret_access_key');
const B_GITHUB = detectorBit('github_token');
const B_GITLAB = detectorBit('gitlab_token');
const B_SLACK = detectorBit('slack_token');
const B_STRIPE = detectorBit('stripe_key');
const B_GOOGLE = detectorBit('google_api_key');
const B_JWT = detectorBit('jwt');
const B_PEM = detectorBit('pem_private_key');
const B_PW = detectorBit('password_assignment');

export function isDetectorName(name: string): name is DetectorName {
  return Object.prototype.hasOwnProperty.call(BUILTIN_DETECTORS, name);
}

// --- byte-level candidate scan ------------------------------------------------
//
// The regexes above are exact but slow to run over whole values: their gates
// ('@', "hex:hex:hex", "4 digits") hold on almost every batch of realistic
// rows (timestamps, JSON, uuids), and V8 then tries a match at every position.
// The scan below finds the few places where a built-in detector could match,
// on the raw UTF-8 bytes, in one pass dispatching on a 256-entry table of
// trigger bytes, each followed by a bounded local check. It is conservative:
// a value it does not flag has no match of any enabled detector (the regexes
// are ASCII-only around their triggers; a non-ASCII byte where a check cannot
// decide, such as a possible Unicode space, flags the value). Flagged values
// then go through the exact regex path, so results are unchanged.

/** The scan's fast pass: per byte, a digit (when digits trigger), a separator a digit shape may end at, a capital, another trigger. */
const F_DIGIT = 1;
const F_SEP = 2;
const F_UPPER = 4;
const F_TRIGGER = 8;
/** '-' when a dash detector is on: a trigger only after a byte with F_DASH_PREV (F_DASH_PREV >> 1 === F_DASH). */
const F_DASH = 16;
const F_DASH_PREV = 32;
/** A lower-case letter: the branch-free stage goes on over it (hex ids mix letters and digits). */
const F_LOWER = 64;

const T_DIGIT = 1;
const T_COLON = 2;
const T_EQUALS = 3;
const T_AT = 4;
const T_PLUS = 5;
const T_DASH = 6;
const T_UNDERSCORE = 7;
const T_A = 8;
const T_J = 9;

/** Character classes by byte (ASCII only; bytes >= 0x80 have none). */
const C_DIGIT = 1;
const C_UPPER = 2;
const C_LOWER = 4;
const C_HEX = 8;
const C_WORD = 16; // JS \w without the u flag: [A-Za-z0-9_]
const C_B64 = 32; // [A-Za-z0-9/+]
const C_SPACE = 64; // ASCII \s
const CLASS = new Uint8Array(256);
for (let b = 0; b < 128; b++) {
  const c = String.fromCharCode(b);
  let k = 0;
  if (c >= '0' && c <= '9') k |= C_DIGIT | C_HEX | C_WORD | C_B64;
  if (c >= 'A' && c <= 'Z') k |= C_UPPER | C_WORD | C_B64;
  if (c >= 'a' && c <= 'z') k |= C_LOWER | C_WORD | C_B64;
  if ((c >= 'a' && c <= 'f') || (c >= 'A' && c <= 'F')) k |= C_HEX;
  if (c === '_') k |= C_WORD;
  if (c === '/' || c === '+') k |= C_B64;
  if (' \t\n\v\f\r'.includes(c)) k |= C_SPACE;
  CLASS[b] = k;
}

function isDigit(buf: Uint8Array, i: number): boolean {
  return i >= 0 && i < buf.length && buf[i]! >= 0x30 && buf[i]! <= 0x39;
}
function is(buf: Uint8Array, i: number, cls: number): boolean {
  return i >= 0 && i < buf.length && (CLASS[buf[i]!]! & cls) !== 0;
}
/** buf[i..] starts with the ASCII literal. */
function at(buf: Uint8Array, i: number, lit: string): boolean {
  if (i < 0 || i + lit.length > buf.length) return false;
  for (let k = 0; k < lit.length; k++) if (buf[i + k] !== lit.charCodeAt(k)) return false;
  return true;
}
/** End of the digit run starting at i. */
function digitRunEnd(buf: Uint8Array, i: number): number {
  while (i < buf.length && buf[i]! >= 0x30 && buf[i]! <= 0x39) i++;
  return i;
}

/**
 * After a run of n digits ending at i, a separator (fast-pass classes f)
 * where a digit shape may go on: '.' after 1 to 3 digits (IPv4, a North
 * American number), '-' after 3 (SSN, North American number), '-' or ' '
 * after the 4 or more digits of a card's first group (starting with 2-6,
 * not after '.' or '-'; longer runs are flagged at their 13th digit,
 * and a later group is checked from the first). Digits(), which
 * runs at a flagged run, finds nothing at any other separator (an IBAN's
 * run follows capitals, flagged on its own), so the run needs no check
 * there: "2024-01-05", "12 Main Street", uuids.
 */
function sepGoesOn(buf: Uint8Array, i: number, f: number, n: number): boolean {
  if ((f & F_SEP) === 0) return false;
  const b = buf[i]!;
  if (b === 0x2e) return n <= 3;
  if (b === 0x2d && n === 3) return true;
  // A card's first group: what digits() asks of the run before cardShape.
  const s = i - n;
  const c = buf[s]!;
  const before = s > 0 ? buf[s - 1]! : 0;
  return n >= 4 && c >= 0x32 && c <= 0x36 && before !== 0x2e && before !== 0x2d;
}

const CARD_DIGITS = new Uint8Array(20);

/**
 * Card shape from the digit run [s, e): digit runs joined by single ' ' or
 * '-', cut after some run at 13 to 19 digits where the digits have a known
 * issuer prefix and a valid Luhn sum. Every card the regex and refineCard
 * accept is such a cut.
 */
export function cardShape(buf: Uint8Array, s: number, e: number): boolean {
  const d = CARD_DIGITS;
  let n = 0;
  let j = s;
  let runEnd = e;
  for (;;) {
    for (; j < runEnd && n < 20; j++) d[n++] = buf[j]! - 0x30;
    if (j < runEnd) return false; // more than 19 digits before any cut
    if (n >= 13 && cardIssuerDigits(d) && luhnDigits(d, n)) return true;
    if (!((buf[j] === 0x20 || buf[j] === 0x2d) && isDigit(buf, j + 1))) return false;
    j++;
    runEnd = digitRunEnd(buf, j);
  }
}

function luhnDigits(d: Uint8Array, n: number): boolean {
  let sum = 0;
  let double = false;
  for (let i = n - 1; i >= 0; i--) {
    let x = d[i]!;
    if (double) {
      x *= 2;
      if (x > 9) x -= 9;
    }
    sum += x;
    double = !double;
  }
  return sum % 10 === 0;
}

function cardIssuerDigits(d: Uint8Array): boolean {
  return cardIssuer(String.fromCharCode(d[0]! + 48, d[1]! + 48, d[2]! + 48, d[3]! + 48));
}

/** Area digit: [2-9]. */
function isAreaDigit(b: number | undefined): boolean {
  return b !== undefined && b >= 0x32 && b <= 0x39;
}

/**
 * North American number written with separators, from its exchange (the
 * 3-digit run [s, e) followed by '-' or '.'): `[2-9]\d\d[-.]` or
 * `([2-9]\d\d) ?` before it, and exactly 4 digits after it.
 */
export function nanpShape(buf: Uint8Array, s: number, e: number): boolean {
  if (!isAreaDigit(buf[s]) || digitRunEnd(buf, e + 1) - (e + 1) !== 4 || buf[e + 5] === 0x2d) return false;
  let q = s - 1;
  if (buf[q] === 0x2d || buf[q] === 0x2e) return q >= 3 && isAreaDigit(buf[q - 3]) && isDigit(buf, q - 2) && isDigit(buf, q - 1);
  if (buf[q] === 0x20) q--;
  return buf[q] === 0x29 && buf[q - 4] === 0x28 && isAreaDigit(buf[q - 3]) && isDigit(buf, q - 2) && isDigit(buf, q - 1);
}

/** Dotted quad shape at the digit run [s, e): runs of 1-3 digits separated by '.', not after a '.'. */
export function ipv4Shape(buf: Uint8Array, s: number, e: number): boolean {
  if (e - s > 3 || buf[s - 1] === 0x2e) return false;
  let j = e;
  for (let part = 0; part < 3; part++) {
    if (buf[j] !== 0x2e || !isDigit(buf, j + 1)) return false;
    const end = digitRunEnd(buf, j + 1);
    if (part < 2 && end - j - 1 > 3) return false;
    j = end;
  }
  return true;
}

/** IBAN shape: the digit run at s preceded by two capitals, then at least 15 [A-Z0-9] with single spaces. */
export function ibanShape(buf: Uint8Array, s: number, e: number): boolean {
  if (e - s < 2 || !is(buf, s - 1, C_UPPER) || !is(buf, s - 2, C_UPPER)) return false;
  let n = 2;
  let j = s;
  while (j < buf.length && n < 15) {
    if (is(buf, j, C_UPPER | C_DIGIT)) n++, j++;
    else if (buf[j] === 0x20 && is(buf, j + 1, C_UPPER | C_DIGIT)) j++;
    else break;
  }
  return n >= 15;
}

/**
 * Which built-in detectors could match in a value, from its bytes. Built per
 * rule set with the enabled detectors; `scan` marks values of a batch, `any`
 * answers for one value.
 */
export class CandidateScanner {
  private readonly table = new Uint8Array(256);
  /**
   * Word skipping: every trigger byte lies in [lo, hi] (all are ASCII
   * punctuation, digits or capitals, 0x2b..0x5f), so a 4-byte word with no
   * byte in that range holds no trigger and is stepped over whole. The test
   * is the "has a byte between m and n" bit trick (Sean Anderson, Bit
   * Twiddling Hacks) on the word: per byte b < 0x80, (127 + n - b) and
   * (b + 127 - m) both have their top bit set exactly when m < b < n; bytes
   * >= 0x80 are masked out by ~x. wordHigh = 0x01010101 * (127 + hi + 1),
   * wordLow = 0x01010101 * (127 - (lo - 1)); wordsOn is false when no byte
   * triggers.
   */
  private wordsOn = false;
  /** The fast pass's classes by byte (F_*). */
  private readonly fast = new Uint8Array(256);
  private wordHigh = 0;
  /** wordsOver's kept view and the buffer it is over. */
  private ownBuffer: ArrayBufferLike | undefined;
  private ownWords: Int32Array | undefined;
  private wordLow = 0;
  private readonly on: Set<DetectorName>;
  private readonly ipv6: boolean;
  private readonly card: boolean;
  private readonly iban: boolean;
  private readonly ssn: boolean;
  private readonly phone: boolean;
  private readonly ipv4: boolean;
  private readonly pw: boolean;
  private readonly awsSecret: boolean;
  private readonly awsId: boolean;
  private readonly google: boolean;
  private readonly github: boolean;
  private readonly stripe: boolean;
  private readonly gitlab: boolean;
  private readonly slack: boolean;
  private readonly pem: boolean;
  private readonly jwt: boolean;
  private readonly email: boolean;
  /** The bits of every enabled detector. */
  private readonly allBits: number;

  constructor(enabled: Iterable<DetectorName>) {
    this.on = new Set(enabled);
    const on = this.on;
    this.ipv6 = on.has('ipv6');
    this.card = on.has('credit_card');
    this.iban = on.has('iban');
    this.ssn = on.has('us_ssn');
    this.phone = on.has('phone');
    this.ipv4 = on.has('ipv4');
    this.pw = on.has('password_assignment');
    this.awsSecret = on.has('aws_secret_access_key');
    this.awsId = on.has('aws_access_key_id');
    this.google = on.has('google_api_key');
    this.github = on.has('github_token');
    this.stripe = on.has('stripe_key');
    this.gitlab = on.has('gitlab_token');
    this.slack = on.has('slack_token');
    this.pem = on.has('pem_private_key');
    this.jwt = on.has('jwt');
    this.email = on.has('email');
    this.allBits = 0;
    for (const d of on) this.allBits |= detectorBit(d);
    const set = (chars: string, k: number): void => {
      for (const c of chars) this.table[c.charCodeAt(0)] = k;
    };
    if (this.card || this.iban || this.ssn || this.phone || this.ipv4) set('0123456789', T_DIGIT);
    if (on.has('ipv6') || this.pw || this.awsSecret) set(':', T_COLON);
    if (this.pw || this.awsSecret) set('=', T_EQUALS);
    if (this.email || this.pw) set('@', T_AT); // the URL userinfo form needs an '@'
    if (this.phone) set('+', T_PLUS);
    if (this.gitlab || this.slack || this.pem) set('-', T_DASH);
    if (this.github || this.stripe) set('_', T_UNDERSCORE);
    if (this.awsId || this.google) set('A', T_A);
    if (this.jwt) set('J', T_J);
    for (let b = 0; b < 256; b++) {
      const k = this.table[b]!;
      this.fast[b] =
        (k === T_DIGIT ? F_DIGIT : 0) |
        (b === 0x20 || b === 0x2d || b === 0x2e ? F_SEP : 0) |
        (b >= 0x41 && b <= 0x5a ? F_UPPER : 0) |
        (b >= 0x61 && b <= 0x7a ? F_LOWER : 0) |
        (k === T_DASH ? F_DASH : 0) |
        (DASH_PREV[b] === 1 ? F_DASH_PREV : 0) |
        (k !== 0 && k !== T_DIGIT && k !== T_DASH ? F_TRIGGER : 0);
    }
    let lo = 256;
    let hi = -1;
    for (let b = 0; b < 256; b++) {
      if (this.table[b] === 0) continue;
      lo = Math.min(lo, b);
      hi = Math.max(hi, b);
    }
    if (hi >= 0 && hi < 0x80 && lo >= 1) {
      this.wordsOn = true;
      this.wordHigh = (0x01010101 * (127 + hi + 1)) | 0;
      this.wordLow = (0x01010101 * (127 - (lo - 1))) | 0;
    }
  }

  /**
   * Marks (marks[v] = 1) every value that may hold a match. `buf` holds the
   * values back to back, value v starting at starts[v] and ending where the
   * next starts (a separator byte such as NUL between them is allowed and
   * stops every check).
   *
   * With `hints`, also records which detectors may match in each marked
   * value: hints[v] gets the bit (detectorBit) of every enabled detector
   * whose local check passed somewhere in the value; a detector whose bit is
   * not set has no match in it (each check is the same conservative one as
   * for the whole value, judged per detector), so the exact path need run
   * only the detectors set. A marked value is then scanned to its end (or
   * until every enabled detector is set); without `hints` the scan moves on
   * at the first hit.
   */
  scan(buf: Uint8Array, starts: Int32Array, marks: Uint8Array, hints?: Int32Array): void {
    const table = this.table;
    const len = buf.length;
    const last = starts.length - 1;
    const all = hints ? this.allBits : 0;
    let v = 0;
    let next = last > 0 ? starts[1]! : len;
    let ipv6Until = 0;
    let bits = 0; // hints of value v so far
    // Whole 4-byte words, 4-aligned in memory, are tested at once: word w of
    // `words` holds buf's bytes [4w - off, 4w - off + 4); the words below
    // nWords lie wholly inside buf.
    const words = this.wordsOn && len >= 64 ? this.wordsOver(buf) : undefined;
    const off = words !== undefined && words === this.ownWords ? buf.byteOffset : 0;
    const nWords = words !== undefined ? (off + len) >> 2 : 0;
    const high = this.wordHigh;
    const low = this.wordLow;
    const fast = this.fast;
    let i = 0;
    while (i < len) {
      // Fast pass, in two stages. A skips, one test per byte, what cannot
      // begin a check: any byte but a digit or a trigger (text, spaces,
      // lower-case words; in a long stretch, whole 4-byte words). B runs
      // from a digit or trigger over the letters and digits that follow,
      // without a branch per byte that depends on the data (hex ids mix
      // digits and letters at random: a branch per byte mispredicts half the
      // time), and returns to A at the first other byte. It stops only at a byte where the checks below have something
      // to do (a trigger other than a digit, a digit run that the fast reject
      // below would not reject), and the checks then run from the start of
      // that digit run to the byte. A digit run they handled ends before
      // where the fast pass resumes; a separator is flagged only after a
      // digit B saw, a digit after a capital only where B started or saw it.
      let from = -1;
      let to = -1;
      pass: while (i < len) {
        // A: 8 bytes one by one, then, in a longer stretch, whole words.
        const lim = i + 8 < len ? i + 8 : len;
        while (i < lim && (fast[buf[i]!]! & (F_DIGIT | F_TRIGGER | F_DASH)) === 0) i++;
        if (i === lim && words !== undefined) {
          while (i < len && ((off + i) & 3) !== 0 && (fast[buf[i]!]! & (F_DIGIT | F_TRIGGER | F_DASH)) === 0) i++;
          let w = (off + i) >> 2;
          if (((off + i) & 3) === 0) {
            while (w < nWords) {
              const x = words[w]!;
              const y = x & 0x7f7f7f7f;
              if (((high - y) & ~x & (y + low) & 0x80808080) !== 0) break;
              w++;
            }
            i = (w << 2) - off;
          }
        }
        while (i < len && (fast[buf[i]!]! & (F_DIGIT | F_TRIGGER | F_DASH)) === 0) i++;
        let prev = i > 0 ? fast[buf[i - 1]!]! & (F_UPPER | F_DASH_PREV) : 0;
        let run = 0;
        for (; i < len; i++) {
          const f = fast[buf[i]!]!;
          const before = run;
          run = (run + 1) * (f & F_DIGIT);
          // A trigger; a dash after a letter a token ends in or another dash; a digit after a capital; a 13th digit in a row.
          const flag = (f & F_TRIGGER) | ((prev >> 1) & f & F_DASH) | ((prev >> 2) & f & F_DIGIT) | ((12 - run) >>> 31);
          if (flag !== 0 || ((f & F_SEP) !== 0 && before > 0 && sepGoesOn(buf, i, f, before))) {
            from = i - before;
            to = i;
            break pass;
          }
          if ((f & (F_DIGIT | F_UPPER | F_LOWER)) === 0) break;
          prev = f;
        }
        i++;
      }
      if (to < 0) break;
      for (i = from; i <= to && i < len; i++) {
      const k = table[buf[i]!]!;
      if (k === 0) continue;
      if (i >= next) {
        if (hints && bits !== 0) hints[v] = bits;
        bits = 0;
        while (v < last && starts[v + 1]! <= i) v++;
        next = v < last ? starts[v + 1]! : len;
      }
      let hit: number;
      if (k === T_DIGIT) {
        let e = i + 1;
        while (e < len && buf[e]! >= 0x30 && buf[e]! <= 0x39) e++;
        // Fast reject, the common case (ids, prices, dates, uuids): every
        // shape needs a separator after the run, 13+ digits, or a capital before it.
        const after = e < len ? buf[e]! : 0;
        if (e - i < 13 && after !== 0x20 && after !== 0x2d && after !== 0x2e && (i === 0 || (CLASS[buf[i - 1]!]! & C_UPPER) === 0)) {
          i = e - 1;
          continue;
        }
        hit = this.digits(buf, i, e);
        i = e - 1;
      } else if (k === T_DASH && buf[i + 1] !== 0x2d && (i === 0 || DASH_PREV[buf[i - 1]!] === 0)) {
        continue; // not '--' (a PEM line) nor after the last letter of 'glpat' or 'xox?'
      } else if (k === T_COLON) {
        hit = this.assignment(buf, i);
        if (this.ipv6 && i >= ipv6Until && (bits & B_IPV6) === 0) {
          // One decision for the whole run of hex digits and colons around it.
          // A lone colon (the common case: JSON, "key: value") holds no address: the run is the colon alone.
          const r = HEX_OR_COLON[buf[i - 1]!] === 1 || HEX_OR_COLON[buf[i + 1]!] === 1 ? this.colonRun(buf, i) : i + 1;
          if (r < 0) hit |= B_IPV6;
          else ipv6Until = r;
        }
      } else {
        hit = this.trigger(buf, i, k);
      }
      if (hit !== 0) {
        marks[v] = 1;
        bits |= hit;
        // The value goes through the exact path: skip to the next one (when the hints are complete).
        if ((bits & all) === all) i = next - 1;
      }
      }
    }
    if (hints && bits !== 0) hints[v] = bits;
  }

  /**
   * 32-bit words over buf's memory: a view of its whole ArrayBuffer, kept
   * for the next value (ownWords: values are mostly views of one buffer, a
   * socket read, a batch or Node's 8 KiB allocation pool, and making a view
   * costs about what scanning a short value does); a view of buf alone,
   * when 4-aligned, if its buffer is large (not to keep it alive) or
   * resizable (a kept view could fall out of bounds: its reads would be
   * undefined, taken for no trigger); else undefined (byte by byte).
   */
  private wordsOver(buf: Uint8Array): Int32Array | undefined {
    const ab = buf.buffer;
    if (ab === this.ownBuffer) return this.ownWords;
    if (ab.byteLength <= WORDS_KEEP_MAX && (ab as { resizable?: boolean }).resizable !== true) {
      this.ownBuffer = ab;
      this.ownWords = new Int32Array(ab, 0, ab.byteLength >> 2);
      return this.ownWords;
    }
    return (buf.byteOffset & 3) === 0 ? new Int32Array(ab, buf.byteOffset, buf.length >> 2) : undefined;
  }

  /** True when the value may hold a match of an enabled detector. */
  any(buf: Uint8Array): boolean {
    ONE_MARK[0] = 0;
    this.scan(buf, ONE_START, ONE_MARK);
    return ONE_MARK[0] === 1;
  }

  /** The hints (see scan) of one value: 0 when no enabled detector can match in it. */
  bits(buf: Uint8Array): number {
    ONE_MARK[0] = 0;
    ONE_HINT[0] = 0;
    this.scan(buf, ONE_START, ONE_MARK, ONE_HINT);
    return ONE_HINT[0]!;
  }

  private trigger(buf: Uint8Array, i: number, k: number): number {
    switch (k) {
      case T_COLON:
      case T_EQUALS:
        return this.assignment(buf, i);
      case T_AT:
        // An e-mail address, or the userinfo of a URL (password_assignment).
        return (this.email ? B_EMAIL : 0) | (this.pw ? B_PW : 0);
      case T_PLUS:
        return buf[i + 1]! >= 0x31 && buf[i + 1]! <= 0x39 ? B_PHONE : 0; // E.164: '+' then [1-9]
      case T_DASH:
        return (
          (this.gitlab && at(buf, i - 5, 'glpat') ? B_GITLAB : 0) |
          (this.slack && at(buf, i - 4, 'xox') && SLACK_KIND[buf[i - 1]!] === 1 ? B_SLACK : 0) |
          // The fast pass flags a dash after a dash: the second one of '-----BEGIN'.
          (this.pem && (at(buf, i, '-----BEGIN') || at(buf, i - 1, '-----BEGIN')) ? B_PEM : 0)
        );
      case T_UNDERSCORE:
        return (
          (this.github && ((at(buf, i - 3, 'gh') && GITHUB_KIND[buf[i - 1]!] === 1) || at(buf, i - 6, 'github')) ? B_GITHUB : 0) |
          (this.stripe &&
          buf[i - 1] === 0x6b /* k */ &&
          (buf[i - 2] === 0x73 || buf[i - 2] === 0x72) /* s, r */ &&
          (at(buf, i + 1, 'live_') || at(buf, i + 1, 'test_'))
            ? B_STRIPE
            : 0)
        );
      case T_A:
        return (
          (this.awsId && (at(buf, i, 'AKIA') || at(buf, i, 'ASIA') || at(buf, i, 'ABIA') || at(buf, i, 'ACCA')) ? B_AWS_ID : 0) |
          (this.google && at(buf, i, 'AIza') ? B_GOOGLE : 0)
        );
      case T_J:
        return this.jwt && at(buf, i - 2, 'eyJ') ? B_JWT : 0;
    }
    return 0;
  }

  /** Digit run [s, e): card, IBAN, SSN, North American phone, IPv4 shapes; the bits of those that fit. */
  private digits(buf: Uint8Array, s: number, e: number): number {
    const n = e - s;
    const prev = s > 0 ? buf[s - 1]! : 0;
    const after = e < buf.length ? buf[e]! : 0;
    // Fast reject, the common case (ids, prices, dates, uuids): every shape
    // needs a separator after the run, 13+ digits, or a capital before it.
    if (n < 13 && after !== 0x20 && after !== 0x2d && after !== 0x2e && (CLASS[prev]! & C_UPPER) === 0) return 0;
    let bits = 0;
    if (this.card && n >= 4 && buf[s]! >= 0x32 && buf[s]! <= 0x36 && prev !== 0x2e && prev !== 0x2d && cardShape(buf, s, e))
      bits |= B_CARD;
    if (this.iban && ibanShape(buf, s, e)) bits |= B_IBAN;
    if (this.ssn && n === 3 && prev !== 0x2d && after === 0x2d && isDigit(buf, e + 1) && isDigit(buf, e + 2) && buf[e + 3] === 0x2d &&
      digitRunEnd(buf, e + 4) - (e + 4) >= 4)
      bits |= B_SSN;
    if (this.phone && n === 3 && (after === 0x2d || after === 0x2e) && nanpShape(buf, s, e)) bits |= B_PHONE;
    if (this.ipv4 && ipv4Shape(buf, s, e)) bits |= B_IPV4;
    return bits;
  }

  /**
   * The run of hex digits and colons around the colon at i: returns -1 when
   * an IPv6 address could start there (the run is not preceded by a word
   * character, a colon or a dot, and holds at least two colons), else the
   * run's end.
   */
  private colonRun(buf: Uint8Array, i: number): number {
    let s = i;
    while (s > 0 && HEX_OR_COLON[buf[s - 1]!] === 1) s--;
    const len = buf.length;
    let e = i + 1;
    let colons = 1;
    for (; e < len; e++) {
      const b = buf[e]!;
      if (HEX_OR_COLON[b] === 0) break;
      colons += b === 0x3a ? 1 : 0;
    }
    if (colons >= 2 && !is(buf, s - 1, C_WORD) && buf[s - 1] !== 0x2e) return -1;
    return e;
  }

  /** ':' or '=' at i: a password keyword before it, or 40 base64 characters (an AWS secret) after it; the bits of those that fit. */
  private assignment(buf: Uint8Array, i: number): number {
    let bits = 0;
    if (this.pw) bits |= this.keywordBefore(buf, i) ? B_PW : 0;
    if (this.awsSecret) bits |= this.secretAfter(buf, i) ? B_AWS_SECRET : 0;
    return bits;
  }

  private keywordBefore(buf: Uint8Array, i: number): boolean {
    let j = i - 1;
    for (let n = 0; n < 5 && j >= 0; n++, j--) {
      const b = buf[j]!;
      if (b >= 0x80) return true; // possibly a Unicode space (\s): let the regex decide
      if ((CLASS[b]! & C_SPACE) === 0) break;
    }
    if (j >= 0 && (buf[j] === 0x22 || buf[j] === 0x27)) j--;
    // Every keyword ends in one of the tails below, hence in one of these letters.
    if (j >= 2 && TAIL_END[buf[j]!] === 1) {
      // Every keyword ends in one of these (case-insensitive): pASS, passWD, passwORD, passphrASE, PWD, secRET, KEY, toKEN.
      const tail = ((buf[j - 2]! | 0x20) << 16) | ((buf[j - 1]! | 0x20) << 8) | (buf[j]! | 0x20);
      for (let t = 0; t < KEYWORD_TAILS.length; t++) if (KEYWORD_TAILS[t] === tail) return true;
    }
    return false;
  }

  private secretAfter(buf: Uint8Array, i: number): boolean {
    const len = buf.length;
    let j = i + 1;
    if (j < len && buf[i] === 0x3d && buf[j] === 0x3e) j++; // '=>'
    for (let n = 0; n < 5 && j < len; n++, j++) {
      const b = buf[j]!;
      if (b >= 0x80) return true; // possibly a Unicode space (\s): let the regex decide
      if ((CLASS[b]! & C_SPACE) === 0) break;
    }
    if (j < len && (buf[j] === 0x22 || buf[j] === 0x27)) j++;
    // 40 base64 characters from j: the last one first (a cheap no for most colons).
    if (j + 40 > len || (CLASS[buf[j + 39]!]! & C_B64) === 0) return false;
    for (let n = 0; n < 39; n++) if ((CLASS[buf[j + n]!]! & C_B64) === 0) return false;
    return true;
  }
}

/** wordsOver keeps a view (hence its buffer) only over buffers up to this size. */
const WORDS_KEEP_MAX = 1024 * 1024;
const KEYWORD_TAILS = Int32Array.from(['ass', 'swd', 'ord', 'ase', 'pwd', 'ret', 'key', 'ken'], (w) => (w.charCodeAt(0) << 16) | (w.charCodeAt(1) << 8) | w.charCodeAt(2));
/** The last letters of KEYWORD_TAILS, either case. */
const TAIL_END = new Uint8Array(256);
for (const c of 'sdetynSDETYN') TAIL_END[c.charCodeAt(0)] = 1;
/** [0-9A-Fa-f:] by byte (undefined, past either end, reads as 0). */
const HEX_OR_COLON = new Uint8Array(256);
for (const c of '0123456789abcdefABCDEF:') HEX_OR_COLON[c.charCodeAt(0)] = 1;
const ONE_START = new Int32Array(1);
const ONE_MARK = new Uint8Array(1); // scratch: the scan is synchronous
const ONE_HINT = new Int32Array(1);
const SLACK_KIND = new Uint8Array(256);
for (const c of 'abposr') SLACK_KIND[c.charCodeAt(0)] = 1;
const GITHUB_KIND = new Uint8Array(256);
for (const c of 'pousr') GITHUB_KIND[c.charCodeAt(0)] = 1;
/** Bytes after which a '-' may be a token's (gitlab 'glpat-', slack 'xox?-') or in a PEM line's '-----'. */
const DASH_PREV = new Uint8Array(256);
for (const c of 'tabposr-') DASH_PREV[c.charCodeAt(0)] = 1;

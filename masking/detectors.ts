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
  if (new Set(text.replace(/\d/g, '')).size > 1) return 0; // mixed separators: not a card as printed
  const cuts = [text.length];
  for (let i = text.length - 1; i > 0; i--) if (text[i] === ' ' || text[i] === '-') cuts.push(i);
  for (const end of cuts) {
    const digits = text.slice(0, end).replace(/\D/g, '');
    if (digits.length < 13) return 0;
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
    regex: /(?<![A-Za-z0-9])[A-Z]{2}\d{2}(?: ?[A-Z0-9]){11,30}(?![A-Za-z0-9])/g,
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
    regex: /(?<![A-Za-z0-9])(?:AKIA|ASIA|ABIA|ACCA)[A-Z0-9]{16}(?![A-Za-z0-9])/g,
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
    regex: /(?<![A-Za-z0-9_])(?:gh[pousr]_[A-Za-z0-9]{36,}|github_pat_[A-Za-z0-9_]{22,})(?![A-Za-z0-9_])/g,
  },
  gitlab_token: {
    name: 'gitlab_token',
    gates: ['glpat-'],
    regex: /(?<![A-Za-z0-9_-])glpat-[A-Za-z0-9_-]{20,}/g,
  },
  slack_token: {
    name: 'slack_token',
    gates: ['xox'],
    regex: /(?<![A-Za-z0-9])xox[abposr]-[A-Za-z0-9-]{10,}/g,
  },
  stripe_key: {
    name: 'stripe_key',
    gates: ['sk_live_', 'sk_test_', 'rk_live_', 'rk_test_'],
    regex: /(?<![A-Za-z0-9_])[sr]k_(?:live|test)_[0-9A-Za-z]{10,}(?![0-9A-Za-z])/g,
  },
  google_api_key: {
    name: 'google_api_key',
    gates: ['AIza'],
    regex: /(?<![A-Za-z0-9_-])AIza[0-9A-Za-z_-]{35}(?![0-9A-Za-z_-])/g,
  },
  jwt: {
    name: 'jwt',
    gates: ['eyJ'],
    regex: /(?<![A-Za-z0-9_-])eyJ[A-Za-z0-9_-]{2,}\.[A-Za-z0-9_-]{2,}\.[A-Za-z0-9_-]*(?![A-Za-z0-9_-])/g,
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
      `(?<![A-Za-z0-9])(?:${PASSWORD_KEYWORDS})["']?\\s{0,5}[:=]\\s{0,5}(?:"([^"\\r\\n]{1,1024})"|'([^'\\r\\n]{1,1024})'|([^\\s"',;&}]{1,1024}))` +
        `|://[^/\\s:@]{1,256}:([^/\\s@]{1,256})@`,
      'dgi',
    ),
    valueGroups: [1, 2, 3, 4],
  },
};

export const DETECTOR_NAMES = Object.keys(BUILTIN_DETECTORS) as DetectorName[];

export function isDetectorName(name: string): name is DetectorName {
  return Object.prototype.hasOwnProperty.call(BUILTIN_DETECTORS, name);
}

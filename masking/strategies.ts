/**
 * Strategies: what a detected value (or a whole column value) becomes.
 * - redact: a fixed token;
 * - partial: keep a prefix and a suffix, mask the middle with one mask
 *   character per character (code point) hidden; never reveals more than half;
 *   an e-mail address keeps the first character of the local part and the
 *   domain: `u***@example.com`;
 * - hash: HMAC-SHA-256 under the configured key, hex, truncated: equal inputs
 *   mask equally within one key, and differ across keys;
 * - null: SQL NULL, for PostgreSQL column rules only (the adapter sends it).
 */
import { createHmac } from 'node:crypto';
import type { ByteSink } from './byte-sink.js';
import type { Strategy } from './types.js';

export const DEFAULT_REDACT_TOKEN = '[redacted]';

/** A whole column value that is one e-mail address gets the e-mail form of `partial`. */
const WHOLE_EMAIL = /^[^@\s]{1,64}@[^@\s]+\.[^@\s]+$/;

export interface CompiledStrategy {
  kind: Strategy['kind'];
  /** Replacement for a matched piece of text; `shape` is the detector's hint. */
  text(value: string, shape?: 'email'): string;
  /** Replacement for a whole value's bytes; null = SQL NULL. */
  bytes(value: Buffer): Buffer | null;
  /**
   * `text` on bytes, for a piece of text that is all ASCII, `src[start, end)`:
   * appends the UTF-8 of `text(piece, shape)` to `sink`, byte for byte the
   * same, without making strings. Absent when the replacement could hold a
   * lone surrogate (a token or mask character so configured): encoded
   * alone it could differ from the encoding of the whole masked value.
   */
  writeAscii?(src: Uint8Array, start: number, end: number, shape: 'email' | undefined, sink: ByteSink): void;
}

/** No lone surrogate: the string encodes to the same UTF-8 alone as next to any other text. */
function wellFormed(s: string): boolean {
  return !/[\uD800-\uDBFF](?![\uDC00-\uDFFF])|(?<![\uD800-\uDBFF])[\uDC00-\uDFFF]/.test(s);
}

const STARS = Buffer.from('***', 'latin1');

/** partialText over ASCII bytes (one character per byte). */
function partialAscii(src: Uint8Array, start: number, end: number, keepPrefix: number, keepSuffix: number, maskChar: Uint8Array, shape: 'email' | undefined, sink: ByteSink): void {
  const n = end - start;
  if (shape === 'email') {
    let at = end - 1;
    while (at >= start && src[at] !== 0x40) at--;
    if (at > start) {
      sink.byte(src[start]!);
      sink.put(STARS);
      sink.copy(src, at, end);
      return;
    }
  }
  if (keepPrefix + keepSuffix > n / 2) {
    sink.repeat(maskChar, n);
    return;
  }
  sink.copy(src, start, start + keepPrefix);
  sink.repeat(maskChar, n - keepPrefix - keepSuffix);
  sink.copy(src, end - keepSuffix, end);
}

/** Returns the problem with a strategy, or undefined when it is valid. */
export function strategyProblem(s: Strategy | undefined): string | undefined {
  if (!s || typeof s !== 'object') return 'strategy is required (redact, partial, hash or null)';
  switch (s.kind) {
    case 'redact':
      if (s.token !== undefined && (typeof s.token !== 'string' || s.token.length > 256)) return 'redact token must be a string of at most 256 characters';
      return undefined;
    case 'partial': {
      for (const k of ['keepPrefix', 'keepSuffix'] as const) {
        const v = s[k];
        if (v !== undefined && (!Number.isInteger(v) || v < 0 || v > 64)) return `partial ${k} must be an integer from 0 to 64`;
      }
      if (s.maskChar !== undefined && (typeof s.maskChar !== 'string' || [...s.maskChar].length !== 1)) return 'partial maskChar must be one character';
      return undefined;
    }
    case 'hash':
      if (s.length !== undefined && (!Number.isInteger(s.length) || s.length < 8 || s.length > 64)) return 'hash length must be an integer from 8 to 64 (hex characters)';
      return undefined;
    case 'null':
      return undefined;
    default:
      return `unknown strategy kind ${JSON.stringify((s as { kind?: unknown }).kind)}`;
  }
}

function partialText(value: string, keepPrefix: number, keepSuffix: number, maskChar: string, shape?: 'email'): string {
  if (shape === 'email') {
    const at = value.lastIndexOf('@');
    if (at > 0) return `${String.fromCodePoint(value.codePointAt(0)!)}***${value.slice(at)}`;
  }
  const chars = Array.from(value); // code points: never split a character
  if (keepPrefix + keepSuffix > chars.length / 2) return maskChar.repeat(chars.length);
  return (
    chars.slice(0, keepPrefix).join('') +
    maskChar.repeat(chars.length - keepPrefix - keepSuffix) +
    chars.slice(chars.length - keepSuffix).join('')
  );
}

export function compileStrategy(s: Strategy, hashKey: Buffer): CompiledStrategy {
  switch (s.kind) {
    case 'redact': {
      const token = s.token ?? DEFAULT_REDACT_TOKEN;
      const tokenBytes = Buffer.from(token, 'utf8');
      return {
        kind: 'redact',
        text: () => token,
        bytes: () => Buffer.from(tokenBytes),
        ...(wellFormed(token) ? { writeAscii: (_s, _a, _b, _shape, sink) => sink.put(tokenBytes) } : {}),
      } satisfies CompiledStrategy;
    }
    case 'partial': {
      const pre = s.keepPrefix ?? 0;
      const suf = s.keepSuffix ?? 4;
      const ch = s.maskChar ?? '*';
      const chBytes = Buffer.from(ch, 'utf8');
      return {
        kind: 'partial',
        ...(wellFormed(ch)
          ? { writeAscii: (src, a, b, shape, sink) => partialAscii(src, a, b, pre, suf, chBytes, shape, sink) }
          : {}),
        text: (v, shape) => partialText(v, pre, suf, ch, shape),
        bytes: (b) => {
          const v = b.toString('utf8');
          return Buffer.from(partialText(v, pre, suf, ch, WHOLE_EMAIL.test(v) ? 'email' : undefined), 'utf8');
        },
      };
    }
    case 'hash': {
      const len = s.length ?? 16;
      const hex = (v: string | Buffer): string => createHmac('sha256', hashKey).update(v).digest('hex').slice(0, len);
      return {
        kind: 'hash',
        text: (v) => hex(Buffer.from(v, 'utf8')),
        bytes: (b) => Buffer.from(hex(b), 'latin1'),
        // ASCII text is its own UTF-8: the HMAC of the bytes is the HMAC of the text's encoding.
        writeAscii: (src, a, b, _shape, sink) => sink.string(hex(Buffer.from(src.buffer, src.byteOffset + a, b - a))),
      };
    }
    case 'null':
      return {
        kind: 'null',
        // Content matches cannot become NULL (compile refuses that); a whole value can.
        text: () => DEFAULT_REDACT_TOKEN,
        bytes: () => null,
        writeAscii: (_s, _a, _b, _shape, sink) => sink.string(DEFAULT_REDACT_TOKEN),
      };
  }
}

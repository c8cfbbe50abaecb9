/**
 * The error catalogue and its documentation agree (STYLE.md point 7): every
 * code in ErrorCodes is documented in docs/errors.md, and the document names
 * no code that does not exist.
 */
import t from 'tap';
import { readFileSync } from 'node:fs';
import { fileURLToPath } from 'node:url';
import { ErrorCodes, SluiceError, isSluiceError, type ErrorCode } from '../../src/errors.js';

/** dist/test/unit/errors.test.js -> docs/errors.md at the repository root. */
const doc = readFileSync(fileURLToPath(new URL('../../../docs/errors.md', import.meta.url)), 'utf8');
const codes = Object.values(ErrorCodes) as ErrorCode[];

t.test('every code in the catalogue is documented', async (t) => {
  for (const code of codes) {
    const asHeading = new RegExp(`^#{2,4} \`?${code}\`?\\s*$`, 'm').test(doc);
    const asCode = doc.includes(`\`${code}\``);
    t.ok(asHeading || asCode, `${code} appears in docs/errors.md as a heading or backticked code`);
  }
});

t.test('every code has its own section', async (t) => {
  for (const code of codes) {
    t.match(doc, new RegExp(`^#{2,4} \`${code}\`\\s*$`, 'm'), `${code} has a heading`);
  }
});

t.test('docs/errors.md names no code that does not exist', async (t) => {
  const known = new Set<string>(codes);
  // SLUICE_TOKEN_* is the family, not a code.
  const mentioned = new Set((doc.match(/SLUICE_[A-Z0-9_]+\*?/g) ?? []).filter((m) => !m.endsWith('*')));
  t.ok(mentioned.size >= codes.length, 'the document mentions codes at all');
  for (const name of mentioned) t.ok(known.has(name), `${name} exists in ErrorCodes`);
});

t.test('codes are unique, stable-looking strings', async (t) => {
  t.equal(new Set(codes).size, codes.length, 'no two keys share a code');
  for (const [key, code] of Object.entries(ErrorCodes)) {
    t.equal(code, `SLUICE_${key}`, `${key} maps to SLUICE_${key}`);
  }
});

t.test('SluiceError carries its code; isSluiceError recognises it', async (t) => {
  const cause = new Error('socket hang up');
  const err = new SluiceError(ErrorCodes.TOKEN_EXPIRED, 'token expired 5 minutes ago', { cause });
  t.ok(err instanceof Error);
  t.equal(err.code, 'SLUICE_TOKEN_EXPIRED');
  t.equal(err.name, 'SluiceError');
  t.equal(err.message, 'token expired 5 minutes ago');
  t.equal(err.cause, cause, 'the cause is kept for the log');

  t.ok(isSluiceError(err));
  t.ok(isSluiceError(err, ErrorCodes.TOKEN_EXPIRED));
  t.notOk(isSluiceError(err, ErrorCodes.TOKEN_MALFORMED), 'a different code does not match');
  t.notOk(isSluiceError(new Error('plain')));
  t.notOk(isSluiceError({ code: ErrorCodes.TOKEN_EXPIRED, message: 'look-alike' }), 'a look-alike object is not one');
  t.notOk(isSluiceError(undefined));
  t.notOk(isSluiceError('SLUICE_TOKEN_EXPIRED'));

  class Sub extends SluiceError {}
  t.ok(isSluiceError(new Sub(ErrorCodes.PROTOCOL_VIOLATION, 'x'), ErrorCodes.PROTOCOL_VIOLATION), 'subclasses count');
});

/**
 * Pattern safety: classic ReDoS shapes are refused with a reason, ordinary
 * patterns are accepted, and a refused pattern is never executed.
 */
import t from 'tap';
import { MaskingEngine } from '../../masking/engine.js';
import { checkPattern } from '../../masking/safety.js';
import { MaskingConfigError } from '../../masking/types.js';

const refused: Array<[string, RegExp]> = [
  ['(a+)+$', /repeat nested inside another repeat/],
  ['(a|a)*$', /alternation inside a repeat/],
  ['(a|ab)*c', /alternation inside a repeat/],
  ['(.*)*x', /can match empty text|nested/],
  ['(a*)*b', /can match empty text/],
  ['(\\w+\\s?)+$', /repeat nested inside another repeat/],
  ['^(([a-z])+.)+[A-Z]([a-z])+$', /repeat nested/],
  ['(x+x+)+y', /nested|unbounded repeats/],
  ['^(\\d+)*$', /nested/],
  ['([a-zA-Z0-9]+\\.?)+@x', /nested/],
  ['(a{1,10}){1,10}b', /nested/],
  ['\\d+\\d+x', /two unbounded repeats/],
  ['\\s*\\s*$', /two unbounded repeats/],
  ['(a)\\1', /backreferences/],
  ['(?<q>a)\\k<q>', /backreferences/],
  ['(?<=a+)b', /lookbehind/],
  ['a*', /empty text/],
  ['(', /not a valid regular expression/],
  ['[z-a]', /not a valid regular expression/],
  ['', /empty/],
];

const accepted: Array<[string, string[]]> = [
  ['sk_(live|test)_[0-9A-Za-z]{16,}', ['sk_']],
  ['\\bEMP-\\d{6}\\b', ['EMP-']],
  ['(?:[A-Z]+ )*PRIVATE', ['PRIVATE']],
  ['(\\w+\\s)+end', ['end']],
  ['(-\\d+)+', []],
  ['[a-z0-9._%+-]{1,64}@corp\\.example', ['@corp.example']],
  ['internal-[0-9a-f]{8}|secret-[0-9a-f]{8}', ['internal-', 'secret-']],
  ['(?:live|test)_key', ['_key']],
  ['\\u00e9t\\u00e9', ['t']],
];

for (const [p, why] of refused) {
  t.test(`refused: ${p}`, async (t) => {
    const v = checkPattern(p);
    t.equal(v.ok, false);
    if (!v.ok) t.match(v.reason, why);
  });
}

for (const [p, literals] of accepted) {
  t.test(`accepted: ${p}`, async (t) => {
    const v = checkPattern(p);
    t.same(v, { ok: true, literals });
  });
}

t.test('a refused pattern never runs: compile throws before any engine exists', async (t) => {
  // If the pattern ran on this input it would take longer than the test timeout.
  const evil = `${'a'.repeat(40)}!`;
  let engine: MaskingEngine | undefined;
  t.throws(() => {
    engine = MaskingEngine.compile([{ name: 'evil', pattern: '^(a+)+$', strategy: { kind: 'redact' } }], { hashKey: Buffer.alloc(32) });
  }, MaskingConfigError);
  t.equal(engine, undefined);
  // A rule set with one refused pattern is refused whole: no partial engine with the other rules.
  t.throws(() =>
    MaskingEngine.compile(
      [
        { name: 'ok', detector: 'email', strategy: { kind: 'redact' } },
        { name: 'evil', pattern: '(x+x+)+y', strategy: { kind: 'redact' } },
      ],
      { hashKey: Buffer.alloc(32) },
    ),
  );
  t.equal(evil.length, 41);
});

t.test('accepted custom patterns mask, using their literal as a prefilter', async (t) => {
  const e = MaskingEngine.compile([{ name: 'emp', pattern: '\\bEMP-\\d{6}\\b', strategy: { kind: 'redact' } }], { hashKey: Buffer.alloc(32) });
  t.equal(e.maskText('badge EMP-123456, EMP-12'), 'badge [redacted], EMP-12');
  t.equal(e.maskText('nothing to see'), undefined);
});

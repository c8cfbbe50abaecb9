/**
 * The engine as a whole: strategies, column rules, purity (inputs untouched),
 * the no-trigger fast path, UTF-8 safety and compile errors.
 */
import t from 'tap';
import { BUILTIN_DETECTORS } from '../../masking/detectors.js';
import { MaskingEngine } from '../../masking/engine.js';
import { MaskingConfigError, MaskingErrorCodes, type MaskingRuleConfig } from '../../masking/types.js';

const key = Buffer.alloc(32, 1);
const otherKey = Buffer.alloc(32, 2);

t.test('strategies', async (t) => {
  t.test('partial e-mail keeps the first character and the domain', async (t) => {
    const e = MaskingEngine.compile([{ name: 'emails', detector: 'email', strategy: { kind: 'partial' } }], { hashKey: key });
    t.equal(e.maskText('to: user@example.com, zoë@exämple.org'), 'to: u***@example.com, z***@exämple.org');
  });
  t.test('generic partial keeps prefix and suffix, never more than half', async (t) => {
    const e = MaskingEngine.compile(
      [{ name: 'cards', detector: 'credit_card', strategy: { kind: 'partial', keepPrefix: 0, keepSuffix: 4, maskChar: '#' } }],
      { hashKey: key },
    );
    t.equal(e.maskText('card 4111111111111111'), 'card ############1111');
    const c = MaskingEngine.compile([{ name: 'k', pattern: 'tok_[a-z]{4}', strategy: { kind: 'partial', keepPrefix: 4, keepSuffix: 2 } }], { hashKey: key });
    t.equal(c.maskText('x tok_abcd y'), 'x ******** y', 'prefix + suffix over half: all masked');
  });
  t.test('redact default and custom token', async (t) => {
    const e = MaskingEngine.compile(
      [
        { name: 'a', detector: 'aws_access_key_id', strategy: { kind: 'redact' } },
        { name: 'b', detector: 'us_ssn', strategy: { kind: 'redact', token: '***-**-****' } },
      ],
      { hashKey: key },
    );
    t.equal(e.maskText('AKIAIOSFODNN7EXAMPLE 123-45-6789'), '[redacted] ***-**-****');
  });
  t.test('hash: stable within a key, different across keys, truncated', async (t) => {
    const rules: MaskingRuleConfig[] = [{ name: 'h', detector: 'email', strategy: { kind: 'hash', length: 12 } }];
    const e1 = MaskingEngine.compile(rules, { hashKey: key });
    const e2 = MaskingEngine.compile(rules, { hashKey: otherKey });
    const a = e1.maskText('a@example.com')!;
    t.match(a, /^[0-9a-f]{12}$/);
    t.equal(e1.maskText('x a@example.com y'), `x ${a} y`, 'equal inputs mask equally');
    t.not(e1.maskText('b@example.com'), a);
    t.not(e2.maskText('a@example.com'), a, 'another key gives another hash');
  });
  t.test('null is for whole column values', async (t) => {
    const e = MaskingEngine.compile([{ name: 'n', columns: ['users.ssn'], strategy: { kind: 'null' } }], { hashKey: key });
    const rule = e.columnRule('public.users', 'ssn');
    t.ok(rule);
    t.equal(e.maskWhole(rule!, Buffer.from('123-45-6789')), null);
  });
});

t.test('column rules', async (t) => {
  const e = MaskingEngine.compile(
    [
      { name: 'user-secrets', columns: ['users.password_hash', '*.ssn'], strategy: { kind: 'hash' } },
      { name: 'schema', columns: ['billing.accounts.iban'], strategy: { kind: 'redact' } },
      { name: 'notes', columns: ['tickets.body'], detector: 'email', strategy: { kind: 'partial' } },
      { name: 'all-of-vault', columns: ['vault.*'], strategy: { kind: 'redact' } },
    ],
    { hashKey: key },
  );
  t.equal(e.hasColumnRules, true);
  t.equal(e.hasContentRules, false);
  t.equal(e.columnRule('users', 'password_hash')?.name, 'user-secrets');
  t.equal(e.columnRule('public.users', 'PASSWORD_HASH')?.name, 'user-secrets', 'schema-qualified table, folded case');
  t.equal(e.columnRule('users', 'email'), undefined);
  t.equal(e.columnRule('people', 'ssn')?.name, 'user-secrets');
  t.equal(e.columnRule(undefined, 'ssn')?.name, 'user-secrets');
  t.equal(e.columnRule('billing.accounts', 'iban')?.name, 'schema');
  t.equal(e.columnRule('accounts', 'iban')?.name, 'schema', 'an unqualified table matches a qualified selector');
  t.equal(e.columnRule('other.accounts', 'iban'), undefined);
  t.equal(e.columnRule(undefined, 'iban')?.name, 'schema', 'unknown table: when in doubt, mask');
  t.equal(e.columnRule('vault', 'anything')?.name, 'all-of-vault');

  const h1 = e.maskWhole(e.columnRule('users', 'password_hash')!, Buffer.from('secret-1'));
  const h2 = e.maskWhole(e.columnRule('users', 'ssn')!, Buffer.from('secret-1'));
  t.same(h1, h2, 'keyed hash: equal inputs mask equally');
  t.match(h1!.toString(), /^[0-9a-f]{16}$/);

  const notes = e.columnRule('tickets', 'body')!;
  const counts = new Map<string, number>();
  const plain = Buffer.from('no addresses here');
  t.equal(e.maskWhole(notes, plain, counts), plain, 'a scoped rule without hits returns the value itself');
  t.equal(e.maskWhole(notes, Buffer.from('from ann@example.com'), counts)?.toString(), 'from a***@example.com');
  t.same(Object.fromEntries(counts), { notes: 1 });
});

t.test('pure: inputs are never mutated', async (t) => {
  const e = MaskingEngine.compile(
    [
      { name: 'emails', detector: 'email', strategy: { kind: 'partial' } },
      { name: 'pw', columns: ['users.pw'], strategy: { kind: 'partial', keepSuffix: 1 } },
    ],
    { hashKey: key },
  );
  const text = 'contact bob@example.com';
  const bytes = Buffer.from(text);
  const copy = Buffer.from(bytes);
  const out = e.maskBytes(bytes)!;
  t.equal(out.toString(), 'contact b***@example.com');
  t.same(bytes, copy, 'caller bytes untouched');
  out.fill(0x21);
  t.same(bytes, copy, 'result does not share memory with the input');
  t.equal(e.maskText(text), 'contact b***@example.com');
  t.equal(text, 'contact bob@example.com');
  const pw = Buffer.from('hunter22');
  const pwCopy = Buffer.from(pw);
  t.equal(e.maskWhole(e.columnRule('users', 'pw')!, pw)?.toString(), '*******2');
  t.same(pw, pwCopy);
});

t.test('no trigger: undefined, no regex, no allocation', async (t) => {
  const e = MaskingEngine.compile([{ name: 'emails', detector: 'email', strategy: { kind: 'redact' } }], { hashKey: key });
  t.equal(e.maskText('plain text without the at sign'), undefined);
  t.equal(e.maskBytes(Buffer.from('plain text without the at sign')), undefined);
  t.equal(e.maskText(''), undefined);
  const none = MaskingEngine.compile([], { hashKey: key });
  t.equal(none.hasContentRules, false);
  t.equal(none.maskText('bob@example.com'), undefined);
});

t.test('UTF-8: characters around and inside hits survive, invalid bytes are copied exactly', async (t) => {
  const e = MaskingEngine.compile(
    [
      { name: 'emails', detector: 'email', strategy: { kind: 'redact' } },
      { name: 'pw', detector: 'password_assignment', strategy: { kind: 'partial', keepPrefix: 1, keepSuffix: 1 } },
    ],
    { hashKey: key },
  );
  const input = Buffer.from('日本語 a@example.jp 😀 password=ü😀😀😀é end');
  const out = e.maskBytes(input)!;
  t.equal(out.toString('utf8'), '日本語 [redacted] 😀 password=ü***é end');
  t.ok(Buffer.from(out.toString('utf8'), 'utf8').equals(out), 'valid UTF-8');
  const invalid = Buffer.concat([Buffer.from([0xff, 0xfe]), Buffer.from(' x@example.com '), Buffer.from([0xc3])]);
  const masked = e.maskBytes(invalid)!;
  t.same(masked, Buffer.concat([Buffer.from([0xff, 0xfe]), Buffer.from(' [redacted] '), Buffer.from([0xc3])]));
  // A real U+FFFD in valid text, and one next to an invalid byte: both come back byte for byte.
  const realFffd = Buffer.from('\uFFFD x@example.com \uFFFD');
  t.same(e.maskBytes(realFffd), Buffer.from('\uFFFD [redacted] \uFFFD'));
  const mixed = Buffer.concat([Buffer.from('\uFFFD'), Buffer.from([0xff]), Buffer.from(' x@example.com')]);
  t.same(e.maskBytes(mixed), Buffer.concat([Buffer.from('\uFFFD'), Buffer.from([0xff]), Buffer.from(' [redacted]')]));
});

t.test('not UTF-8 (a LATIN1 session): a hit next to a non-ASCII byte is found, and what is kept comes back as the same bytes', async (t) => {
  const e = MaskingEngine.compile(
    [
      { name: 'emails', detector: 'email', strategy: { kind: 'partial' } },
      { name: 'pw', detector: 'password_assignment', strategy: { kind: 'redact' } },
    ],
    { hashKey: key },
  );
  // é and ü are one byte each in LATIN1 (0xe9, 0xfc): invalid UTF-8 right before the @ and in the domain.
  const latin1 = Buffer.from('contact: josé@müller.de', 'latin1');
  const out = e.maskBytes(latin1);
  t.ok(out, 'masked');
  t.notOk(out!.includes(Buffer.from('josé', 'latin1')), 'the local part is gone');
  t.equal(out!.toString('latin1'), 'contact: j***@müller.de', 'the kept domain is the original LATIN1 bytes');
  t.equal(e.maskBytes(Buffer.from('clé password=secret', 'latin1'))?.toString('latin1'), 'clé password=[redacted]', 'a hit away from the non-ASCII byte too');
});

t.test('a value reassembled from chunks masks like the whole value', async (t) => {
  // Splitting is the adapters' job: they hand the engine whole values. This
  // checks the engine side of that contract: masking the concatenation of
  // every split of a value gives the same result as masking the value.
  const e = MaskingEngine.compile(
    [
      { name: 'cards', detector: 'credit_card', strategy: { kind: 'redact' } },
      { name: 'emails', detector: 'email', strategy: { kind: 'partial' } },
    ],
    { hashKey: key },
  );
  const value = Buffer.from('paid with 4111 1111 1111 1111 by zoë@example.com ✓');
  const whole = e.maskBytes(value)!;
  for (let cut = 0; cut <= value.length; cut++) {
    const reassembled = Buffer.concat([value.subarray(0, cut), value.subarray(cut)]);
    if (!e.maskBytes(reassembled)!.equals(whole)) t.fail(`differs at cut ${cut}`);
  }
  t.equal(whole.toString(), 'paid with [redacted] by z***@example.com ✓');
});

t.test('overlaps: leftmost, then longest', async (t) => {
  const e = MaskingEngine.compile(
    [
      { name: 'short', pattern: 'abc', strategy: { kind: 'redact', token: 'S' } },
      { name: 'long', pattern: 'abcdef', strategy: { kind: 'redact', token: 'L' } },
      { name: 'late', pattern: 'def[0-9]', strategy: { kind: 'redact', token: 'D' } },
    ],
    { hashKey: key },
  );
  const counts = new Map<string, number>();
  t.equal(e.maskText('xabcdef1 abc def2', counts), 'xL1 S D');
  t.same(Object.fromEntries(counts), { long: 1, short: 1, late: 1 });
});

t.test('compile errors name each bad rule', async (t) => {
  const bad = [
    { name: 'a', detector: 'nope', strategy: { kind: 'redact' } },
    { name: 'b', pattern: '(a+)+$', strategy: { kind: 'redact' } },
    { name: 'c', detector: 'email', strategy: { kind: 'null' } },
    { name: 'd', strategy: { kind: 'redact' } },
    { name: 'a', detector: 'email', strategy: { kind: 'redact' } },
    { name: 'e', detector: 'email', strategy: { kind: 'hash', length: 2 } },
    { name: 'f', columns: ['a.b.c.d'], strategy: { kind: 'redact' } },
    { name: 'g', detector: 'email', strategy: { kind: 'shuffle' } },
  ] as unknown as MaskingRuleConfig[];
  const err = (() => {
    try {
      MaskingEngine.compile(bad, { hashKey: key });
    } catch (e) {
      return e;
    }
    return undefined;
  })();
  t.ok(err instanceof MaskingConfigError);
  const e = err as MaskingConfigError;
  t.equal(e.code, MaskingErrorCodes.RULE_INVALID);
  t.equal(e.code, 'SLUICE_MASKING_RULE_INVALID');
  t.equal(e.problems.length, 8);
  t.match(e.problems[0], /rule "a": unknown detector "nope"/);
  t.match(e.problems[1], /rule "b": pattern .* refused: a repeat nested inside another repeat/);
  t.match(e.problems[2], /rule "c": the null strategy replaces whole column values/);
  t.match(e.problems[3], /rule "d": needs a detector, a pattern or columns/);
  t.match(e.problems[4], /rule "a": duplicate rule name/);
  t.match(e.problems[5], /rule "e": hash length/);
  t.match(e.problems[6], /column selector/);
  t.match(e.problems[7], /unknown strategy kind "shuffle"/);
  t.throws(() => MaskingEngine.compile([{ name: 'h', detector: 'email', strategy: { kind: 'hash' } }], { hashKey: Buffer.alloc(4) }), {
    message: /hash key of at least 16 bytes/,
  });
});

t.test('without the prefilter the results are the same', async (t) => {
  const rules: MaskingRuleConfig[] = [
    { name: 'emails', detector: 'email', strategy: { kind: 'partial' } },
    { name: 'cards', detector: 'credit_card', strategy: { kind: 'redact' } },
    { name: 'pw', detector: 'password_assignment', strategy: { kind: 'redact' } },
    { name: 'stripe', pattern: 'sk_(live|test)_[0-9A-Za-z]{16,}', strategy: { kind: 'redact' } },
  ];
  const a = MaskingEngine.compile(rules, { hashKey: key });
  const b = MaskingEngine.compile(rules, { hashKey: key, prefilter: false });
  for (const s of ['x@y.com 4111111111111111 password=1 sk_live_abcdefghijklmnop1234', 'nothing here', 'sk_test_0123456789abcdefXYZ']) {
    t.equal(a.maskText(s), b.maskText(s), s);
  }
});

t.test('maskValues over a batch equals maskBytes on each value', async (t) => {
  const rules: MaskingRuleConfig[] = [
    { name: 'emails', detector: 'email', strategy: { kind: 'partial' } },
    { name: 'cards', detector: 'credit_card', strategy: { kind: 'redact' } },
    { name: 'pem', detector: 'pem_private_key', strategy: { kind: 'redact' } },
    { name: 'pw', detector: 'password_assignment', strategy: { kind: 'redact' } },
    { name: 'anchored', pattern: '^EMP-\\d{4}$', strategy: { kind: 'hash' } },
  ];
  const e = MaskingEngine.compile(rules, { hashKey: key });
  const e2 = MaskingEngine.compile(rules.slice(0, 4), { hashKey: key });
  const values = [
    'plain', 'zoë@exämple.org', '4111 1111', '1111 1111 1111', '-----BEGIN PRIVATE KEY-----\nabc', 'tail', 'password=', 'x',
    'EMP-1234', 'a EMP-1234', '', '😀 4111111111111111 😀', 'ü',
  ].map((s) => Buffer.from(s));
  values.push(Buffer.from([0xff, 0x40, 0x61, 0x40, 0x62, 0x2e, 0x63, 0x6f]));
  for (const engine of [e, e2]) {
    const c1 = new Map<string, number>();
    const c2 = new Map<string, number>();
    const batch = engine.maskValues(values, c1);
    const each = values.map((v) => engine.maskBytes(v, c2));
    t.same(batch, each);
    t.same(c1, c2);
    const ascii = values.slice(0, 11).filter((_, i) => i !== 1);
    t.same(engine.maskValues(ascii), ascii.map((v) => engine.maskBytes(v)), 'ASCII fast path');
  }
  t.same(e.maskValues([]), []);
});

t.test('the e-mail regex started at its pivot finds what a scan from every position finds', async (t) => {
  const e = MaskingEngine.compile([{ name: 'emails', detector: 'email', strategy: { kind: 'redact', token: '#' } }], { hashKey: key });
  // Reference: the detector's regex run from position 0 over the whole text, every match replaced.
  const reference = (s: string): string | undefined => {
    const re = new RegExp(BUILTIN_DETECTORS.email.regex.source, BUILTIN_DETECTORS.email.regex.flags);
    const out = s.replace(re, '#');
    return out === s ? undefined : out;
  };
  const run = (n: number): string => 'a'.repeat(n);
  const cases = [
    'user@example.com', '@example.com', 'user@', 'a@b', '@', '@@', 'x@@example.com', 'x@y@example.com',
    `${run(64)}@example.com`, `${run(65)}@example.com`, `${run(63)} ${run(64)}@example.com`, `${run(200)}@x.org ok@x.org`,
    'c4ca4238a0b923820dcc509a6f75849b user1@example.com', 'a@b.c d@e.fg', 'one@x.org,two@y.org;three@z.org',
    'no@tld. then real@ok.com', 'bad@-x.com good@x.com', 'zoë@exämple.org', 'ïzoë@exämple.org', 'é.ü@x.org', '😀a@x.org',
    'a😀b@x.org', '名前@例え.jp', 'x.org@ then@x.org', 'user@example.com1', 'user@example.com-', 'a@b.co@c.de',
    `${'é'.repeat(70)}@x.org`, `${'a.'.repeat(40)}@x.org`, 'mail: <a+b%c@d-e.f.gh>', 'tail user@example.c',
  ];
  for (const s of cases) {
    t.equal(e.maskText(s), reference(s), JSON.stringify(s));
    const masked = reference(s);
    t.same(e.maskBytes(Buffer.from(s)), masked === undefined ? undefined : Buffer.from(masked), `bytes ${JSON.stringify(s)}`);
  }
});

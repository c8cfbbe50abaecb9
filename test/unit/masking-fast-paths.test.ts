/**
 * The exact path's fast paths against the general path, on many generated
 * inputs (ASCII and not, invalid UTF-8, hits at value edges, adjacent hits):
 *
 * - findEmailsAscii (the e-mail regex on bytes) finds what the regex finds;
 * - the scan's detector hints never drop a hit: find under the hints equals
 *   find with every detector;
 * - maskCandidateInto (ASCII values written straight into a sink, strategies'
 *   writeAscii) writes the bytes maskCandidate returns, for every strategy,
 *   including tokens and mask characters that are not ASCII or not well formed;
 * - PgResultMasker, which uses them, still masks every field as the engine
 *   masks it alone, with a hit in every row, column rules mixed in, whatever
 *   the chunk cuts.
 */
import t from 'tap';
import { ByteSink } from '../../masking/byte-sink.js';
import { BUILTIN_DETECTORS, DETECTOR_NAMES } from '../../masking/detectors.js';
import { NOT_ASCII, findEmailsAscii } from '../../masking/email-ascii.js';
import { MaskingEngine } from '../../masking/engine.js';
import type { PolicyMasking } from '../../masking/session-masker.js';
import type { MaskingRuleConfig } from '../../masking/types.js';
import { PgResultMasker } from '../../protocols/postgres/result-masker.js';
import { PgBytes, prng, queried, randomChunks, dataRow, transformAll } from '../helpers/pg-bytes.js';

const hashKey = Buffer.alloc(32, 9);

function generator(seed: number): (n: number) => number {
  const random = prng(seed);
  return (n) => Math.floor(random() * n);
}

/** Text built from pieces that hit, nearly hit, or sit at the limits of the e-mail regex. */
function emailish(rand: (n: number) => number): string {
  const pieces = [
    'a', 'Z', '0', '9', '.', '-', '_', '%', '+', '@', ' ', ',', ';', '<', '>', 'x.org', 'example', '.com', 'com', 'co', 'c', 'a@b.cc',
    'user1@example.com', 'x@y@z.org', '@@', 'a'.repeat(63), 'a'.repeat(64), 'b'.repeat(23), 'b'.repeat(24), 'b'.repeat(25), 'l'.repeat(62),
    'l'.repeat(63), 'l'.repeat(64), '-x.', 'x-.', '.x.', '1.', 'ab1', 'c4ca4238a0b923820dcc509a6f75849b', '\t', '\n',
  ];
  let s = '';
  const n = 1 + rand(12);
  for (let i = 0; i < n; i++) s += pieces[rand(pieces.length)]!;
  return s;
}

t.test('findEmailsAscii finds what the e-mail regex finds', async (t) => {
  const rand = generator(11);
  const re = new RegExp(BUILTIN_DETECTORS.email.regex.source, BUILTIN_DETECTORS.email.regex.flags);
  const hits = new Int32Array(4096);
  let wrong = 0;
  for (let n = 0; n < 30000; n++) {
    const s = emailish(rand);
    const want: number[] = [];
    re.lastIndex = 0;
    for (let m = re.exec(s); m !== null; m = re.exec(s)) want.push(m.index, m.index + m[0].length);
    // At an offset inside a larger buffer, with letters around it that must not be seen.
    const pad = rand(3);
    const buf = Buffer.from(`${'q'.repeat(pad)}${s}${'q'.repeat(pad)}`, 'latin1');
    const k = findEmailsAscii(buf, pad, pad + s.length, hits);
    const got = Array.from(hits.subarray(0, 2 * k), (x) => x - pad);
    if (JSON.stringify(got) !== JSON.stringify(want) && wrong++ < 5) t.fail(`${JSON.stringify(s)}: ${JSON.stringify(got)}, regex ${JSON.stringify(want)}`);
  }
  t.equal(wrong, 0, 'the same hits on 30000 generated strings');
  t.equal(findEmailsAscii(Buffer.from('a@b.cc d@e.ff'), 0, 13, new Int32Array(2)), -1, 'too small a hit array is said so');
  for (const text of ['éa@b.co', 'a@b.coé', 'a@exämple.de', 'a@b.co x\u00a0', '\u00ffa@b.co']) {
    const buf = Buffer.from(text, text.includes('\u00ff') ? 'latin1' : 'utf8');
    t.equal(findEmailsAscii(buf, 0, buf.length, hits), NOT_ASCII, `${JSON.stringify(text)}: not ASCII, whatever the hits`);
  }
});

/** Values for the engine: e-mail-ish text, the detectors' pieces, non-ASCII and invalid UTF-8 around them. */
function value(rand: (n: number) => number): Buffer {
  const pieces = [
    '4111 1111 1111 1111', '4111111111111111', '5555555555554444', 'DE89 3704 0044 0532 0130 00', '078-05-1120', '+14155552671',
    '(212) 555-0143', '192.168.1.10', 'fe80::1', '2001:db8::8a2e:370:7334', 'AKIAIOSFODNN7EXAMPLE', 'password=hunter2',
    'postgres://app:Sup3rS3cret@db', `ghp_${'A1b2C3d4E5'.repeat(4)}`, 'EMP-123456', 'zoë@exämple.org', 'é', '😀', '\u00a0',
  ];
  const parts: Buffer[] = [];
  const n = 1 + rand(4);
  for (let i = 0; i < n; i++) {
    const r = rand(10);
    if (r < 5) parts.push(Buffer.from(emailish(rand), 'latin1'));
    else if (r < 9) parts.push(Buffer.from(pieces[rand(pieces.length)]!));
    else parts.push(Buffer.from([[0xff], [0xc3], [0xe2, 0x82], [0x80]][rand(4)]!)); // invalid UTF-8
  }
  return Buffer.concat(parts);
}

const RULE_SETS: Array<[string, MaskingRuleConfig[]]> = [
  ['e-mail partial, cards redact (bench:masking-e2e)', [
    { name: 'emails', detector: 'email', strategy: { kind: 'partial' } },
    { name: 'cards', detector: 'credit_card', strategy: { kind: 'redact' } },
  ]],
  ['every detector', DETECTOR_NAMES.map((d, i) => ({
    name: d,
    detector: d,
    strategy: i % 3 === 0 ? { kind: 'partial' as const, keepPrefix: 1, keepSuffix: 2 } : i % 3 === 1 ? { kind: 'hash' as const } : { kind: 'redact' as const },
  }))],
  ['e-mail alone, redact to a non-ASCII token', [{ name: 'e', detector: 'email', strategy: { kind: 'redact', token: '«masqué»' } }]],
  ['e-mail alone, hash', [{ name: 'e', detector: 'email', strategy: { kind: 'hash', length: 12 } }]],
  ['tokens and mask characters that are lone surrogates', [
    { name: 'e', detector: 'email', strategy: { kind: 'partial', maskChar: '\uD800' } },
    { name: 'c', detector: 'credit_card', strategy: { kind: 'redact', token: '\uDC00x\uD800' } },
    { name: 'p', detector: 'password_assignment', strategy: { kind: 'redact', token: '\uDC00' } },
  ]],
  ['partial with a non-ASCII mask character, a custom pattern', [
    { name: 'e', detector: 'email', strategy: { kind: 'partial', maskChar: '•', keepSuffix: 3 } },
    { name: 'emp', pattern: 'EMP-\\d{6}', strategy: { kind: 'partial', keepPrefix: 2, keepSuffix: 0, maskChar: '😀' } },
  ]],
  ['two e-mail rules', [
    { name: 'e1', detector: 'email', strategy: { kind: 'redact', token: '<1>' } },
    { name: 'e2', detector: 'email', strategy: { kind: 'redact', token: '<2>' } },
  ]],
];

t.test('maskCandidateInto and the scan\'s hints give the bytes of the general path', async (t) => {
  for (const [name, rules] of RULE_SETS) {
    const engine = MaskingEngine.compile(rules, { hashKey });
    // The reference: no scan, hence no hints; every detector's regex on every value.
    const general = MaskingEngine.compile(rules, { hashKey, prefilter: false });
    const rand = generator(name.length);
    const values = Array.from({ length: 3000 }, () => value(rand));
    // The chunk-wide scan: all values in one buffer, a length word between them.
    const gap = Buffer.from([0, 0, 0, 9]);
    const packed = Buffer.concat(values.flatMap((v) => [gap, v]));
    const starts = new Int32Array(values.length);
    const ends = new Int32Array(values.length);
    let off = 0;
    values.forEach((v, i) => {
      starts[i] = off + 4;
      ends[i] = off + 4 + v.length;
      off += 4 + v.length;
    });
    const nonEmpty = values.map((_, i) => i).filter((i) => values[i]!.length > 0);
    const marks = new Uint8Array(nonEmpty.length);
    const hints = new Int32Array(nonEmpty.length);
    engine.markRanges(packed, Int32Array.from(nonEmpty, (i) => starts[i]!), Int32Array.from(nonEmpty, (i) => ends[i]!), nonEmpty.length, marks, hints);
    const sink = new ByteSink(16, 64);
    let wrong = 0;
    let masked = 0;
    nonEmpty.forEach((i, j) => {
      const v = values[i]!;
      const countsAll = new Map<string, number>();
      const want = general.maskBytes(v, countsAll);
      if (want) masked++;
      if (marks[j] === 0) {
        if (want && wrong++ < 5) t.fail(`${name}: not marked but masked: ${JSON.stringify(v.toString('latin1'))}`);
        return;
      }
      const countsHint = new Map<string, number>();
      const hinted = engine.maskCandidate(v, countsHint, hints[j]);
      const countsInto = new Map<string, number>();
      const before = sink.len;
      sink.copy(Buffer.from('prefix'), 0, 6); // the sink keeps what it held
      const changed = engine.maskCandidateInto(packed, starts[i]!, ends[i]!, hints[j]!, sink, countsInto);
      const into = changed ? sink.buf.subarray(before + 6, sink.len) : undefined;
      const same = (a: Buffer | undefined, b: Buffer | undefined): boolean => (a === undefined ? b === undefined : b !== undefined && a.equals(b));
      if (!same(want, hinted) || !same(want, into) || !sink.buf.subarray(before, before + 6).equals(Buffer.from('prefix'))) {
        if (wrong++ < 5)
          t.fail(`${name}: ${JSON.stringify(v.toString('latin1'))}: ${want?.toString('latin1')} / hints ${hinted?.toString('latin1')} / into ${into?.toString('latin1')}`);
      } else if (JSON.stringify([...countsAll]) !== JSON.stringify([...countsHint]) || JSON.stringify([...countsAll]) !== JSON.stringify([...countsInto])) {
        if (wrong++ < 5) t.fail(`${name}: counts differ on ${JSON.stringify(v.toString('latin1'))}`);
      }
      if (sink.len > 4096) sink.reset();
    });
    t.equal(wrong, 0, `${name}: ${values.length} values, ${masked} masked, the same bytes and counts`);
    t.ok(packed.equals(Buffer.concat(values.flatMap((v) => [gap, v]))), `${name}: the input is not modified`);
  }
});

t.test('ByteSink grows keeping its bytes and drops a big buffer at reset', async (t) => {
  const sink = new ByteSink(4, 8);
  sink.put(Buffer.from('abc'));
  sink.repeat(Buffer.from('é'), 3);
  sink.string('😀');
  sink.copy(Buffer.from('x'.repeat(100)), 0, 100);
  t.equal(sink.buf.subarray(0, sink.len).toString(), `abcééé😀${'x'.repeat(100)}`);
  sink.reset();
  t.equal(sink.len, 0);
  t.ok(sink.buf.length <= 8, 'memory bounded between chunks');
});

function rowDescription(names: string[]): Buffer {
  const b = new PgBytes().int16(names.length);
  for (const n of names) b.cstring(n).int32(0).int16(0).int32(25).int16(-1).int32(-1).int16(0);
  return b.typed('T');
}

t.test('PgResultMasker: a hit in every row, column rules mixed in, whatever the cuts', async (t) => {
  const rules: MaskingRuleConfig[] = [
    { name: 'emails', detector: 'email', strategy: { kind: 'partial' } },
    { name: 'cards', detector: 'credit_card', strategy: { kind: 'redact' } },
    { name: 'ssn', columns: ['ssn'], strategy: { kind: 'null' } },
    { name: 'notes', columns: ['note'], detector: 'us_ssn', strategy: { kind: 'redact', token: '[ssn]' } },
  ];
  const engine = MaskingEngine.compile(rules, { hashKey });
  const general = MaskingEngine.compile(rules, { hashKey, prefilter: false });
  const masking: PolicyMasking = { policy: 'p', ruleNames: rules.map((r) => r.name), engine, pool: () => { throw new Error('no pool expected'); } };
  const rand = generator(5);
  const names = ['contact', 'ssn', 'note', 'other'];
  const wire: Buffer[] = [rowDescription(names)];
  const expected: Buffer[] = [wire[0]!];
  for (let r = 0; r < 3000; r++) {
    const contact = rand(4) === 0 ? value(rand) : Buffer.from(`${'c4ca4238a0b923820dcc509a6f75849b'.slice(rand(32))} user${r}@example.com`);
    const fields = [contact, Buffer.from('078-05-1120'), rand(2) ? Buffer.from(`note ${r} 078-05-1120 ${emailish(rand)}`) : null, value(rand)];
    wire.push(dataRow(fields));
    const want = fields.map((f, i) => {
      if (f === null) return null;
      const rule = general.columnRule(undefined, names[i]!);
      if (rule) {
        const whole = general.maskWhole(rule, f);
        if (whole !== f) return whole;
      }
      return general.maskBytes(f) ?? f;
    });
    expected.push(dataRow(want));
  }
  const tail = [new PgBytes().cstring('SELECT 3000').typed('C'), new PgBytes().char('I').typed('Z')];
  const all = Buffer.concat([...wire, ...tail]);
  const want = Buffer.concat([...expected, ...tail]);
  for (const [how, chunks] of [
    ['one chunk', [all]],
    ['64 KiB chunks', randomChunks(all, prng(1), 65536)],
    ['random small chunks', randomChunks(all, prng(2), 300)],
    ['tiny chunks', randomChunks(all, prng(3), 7)],
  ] as Array<[string, Iterable<Buffer>]>) {
    // Inline whatever the chunk size: the fast paths are what this checks.
    const masker = queried(new PgResultMasker({ masking, maxMessageBytes: 1 << 20, batchRows: 1e9, batchBytes: 1e12 }));
    t.ok((await transformAll(masker, chunks)).equals(want), `${how}: every field as the engine masks it alone`);
  }
});

t.test('a value with more e-mails than maskCandidateInto has room for: the same bytes, now and once it has grown', async (t) => {
  const rules: MaskingRuleConfig[] = [{ name: 'emails', detector: 'email', strategy: { kind: 'partial' } }];
  const engine = MaskingEngine.compile(rules, { hashKey });
  const general = MaskingEngine.compile(rules, { hashKey, prefilter: false });
  for (const n of [31, 32, 33, 100, 1000, 40000]) {
    const v = Buffer.from(Array.from({ length: n }, (_, i) => `u${i}@example.com`).join(' '));
    const want = general.maskBytes(v)!;
    for (const round of [1, 2]) {
      const sink = new ByteSink();
      t.ok(engine.maskCandidateInto(v, 0, v.length, -1, sink), `${n} e-mails, round ${round}: changed`);
      t.ok(sink.buf.subarray(0, sink.len).equals(want), `${n} e-mails, round ${round}: the same bytes`);
    }
  }
});

t.test('PgResultMasker: COPY TO STDOUT rows with a hit in every row, whatever the cuts', async (t) => {
  const rules: MaskingRuleConfig[] = [
    { name: 'emails', detector: 'email', strategy: { kind: 'partial' } },
    { name: 'cards', detector: 'credit_card', strategy: { kind: 'redact' } },
  ];
  const engine = MaskingEngine.compile(rules, { hashKey });
  const general = MaskingEngine.compile(rules, { hashKey, prefilter: false });
  const masking: PolicyMasking = { policy: 'p', ruleNames: rules.map((r) => r.name), engine, pool: () => { throw new Error('no pool expected'); } };
  const rand = generator(8);
  const copyOut = new PgBytes().byte(0).int16(1).int16(0).typed('H');
  const wire: Buffer[] = [copyOut];
  const expected: Buffer[] = [copyOut];
  for (let r = 0; r < 2000; r++) {
    const body = Buffer.concat([Buffer.from(`${r}\t`), rand(3) ? Buffer.from(`user${r}@example.com`) : value(rand), Buffer.from('\n')]);
    wire.push(new PgBytes().bytes(body).typed('d'));
    expected.push(new PgBytes().bytes(general.maskBytes(body) ?? body).typed('d'));
  }
  const tail = [new PgBytes().typed('c'), new PgBytes().cstring('COPY 2000').typed('C'), new PgBytes().char('I').typed('Z')];
  const all = Buffer.concat([...wire, ...tail]);
  const want = Buffer.concat([...expected, ...tail]);
  for (const [how, chunks] of [
    ['one chunk', [all]],
    ['64 KiB chunks', randomChunks(all, prng(4), 65536)],
    ['random small chunks', randomChunks(all, prng(5), 500)],
  ] as Array<[string, Iterable<Buffer>]>) {
    const masker = queried(new PgResultMasker({ masking, maxMessageBytes: 1 << 20, batchRows: 1e9, batchBytes: 1e12 }));
    t.ok((await transformAll(masker, chunks)).equals(want), `${how}: every row as the engine masks it alone`);
  }
});

/**
 * PgResultMasker on wire bytes, without a server: every DataRow field is
 * masked exactly as the engine masks that value alone (the chunk-wide
 * candidate scan must not change a result), whatever the chunk cuts, inline
 * or through the pool; rows without a hit go out as the input's own bytes;
 * the input is never modified; length words follow the replacements; counts
 * per rule are reported.
 */
import t from 'tap';
import { MaskingEngine } from '../../masking/engine.js';
import { MaskingPool } from '../../masking/pool.js';
import type { PolicyMasking } from '../../masking/session-masker.js';
import type { MaskingRuleConfig } from '../../masking/types.js';
import { PgResultMasker } from '../../protocols/postgres/result-masker.js';
import { PgBytes, prng, queried, randomChunks, dataRow, transformAll } from '../helpers/pg-bytes.js';

const hashKey = Buffer.alloc(32, 5);
const rules: MaskingRuleConfig[] = [
  { name: 'emails', detector: 'email', strategy: { kind: 'partial' } },
  { name: 'cards', detector: 'credit_card', strategy: { kind: 'redact' } },
  { name: 'aws', detector: 'aws_access_key_id', strategy: { kind: 'redact' } },
  { name: 'ipv6', detector: 'ipv6', strategy: { kind: 'redact' } },
  { name: 'passwords', detector: 'password_assignment', strategy: { kind: 'redact' } },
  { name: 'emp', pattern: 'EMP-\\d{6}', strategy: { kind: 'hash' } },
];
const engine = MaskingEngine.compile(rules, { hashKey });
let pool: MaskingPool | undefined;
t.teardown(() => pool?.close());
const masking: PolicyMasking = {
  policy: 'p',
  ruleNames: rules.map((r) => r.name),
  engine,
  pool: () => (pool ??= new MaskingPool({ rules, hashKey, threads: 1 })),
};

/** Values that hit, nearly hit (a check looks one byte too far), or carry nothing; with non-ASCII and invalid UTF-8. */
function value(random: () => number, i: number): Buffer | null {
  const pick = Math.floor(random() * 16);
  switch (pick) {
    case 0:
      return null;
    case 1:
      return Buffer.alloc(0);
    case 2:
      return Buffer.from(`user${i}@example.com`);
    case 3:
      return Buffer.from(`4111 1111 1111 1111`);
    case 4:
      return Buffer.from(`4111 1111 1111 111${i % 10}`); // mostly a bad Luhn sum
    case 5:
      return Buffer.from(`key AKIAIOSFODNN7EXAMPL${String.fromCharCode(65 + (i % 26))} end`);
    case 6:
      return Buffer.from(`fe80::${(i % 255).toString(16)}:1`);
    case 7:
      return Buffer.from(`2024-01-0${1 + (i % 9)}T10:00:00`);
    case 8:
      return Buffer.from(`password=${i}x`);
    case 9:
      return Buffer.from(`EMP-${100000 + i} and EMP-12`);
    case 10:
      return Buffer.from(`Zoë ${i} zoë@exämple.de`);
    case 11:
      return Buffer.from([0x41, 0xff, 0x40, 0x61, 0x2e, 0x62, 0x63, 0xfe]); // invalid UTF-8 around an '@'
    case 12:
      return Buffer.from(`${i}`.repeat(1 + (i % 7))); // digits next to a length word
    case 13:
      return Buffer.from('@'); // a trigger at a value's edge
    default:
      return Buffer.from(`lorem ipsum ${i} dolor`);
  }
}

function rowDescription(names: string[]): Buffer {
  const b = new PgBytes().int16(names.length);
  for (const n of names) b.cstring(n).int32(0).int16(0).int32(25).int16(-1).int32(-1).int16(0);
  return b.typed('T');
}

/** A result and what the client must receive: each field masked alone by the engine. */
function result(seed: number, rows: number, width: number): { wire: Buffer; expected: Buffer; counts: Map<string, number> } {
  const random = prng(seed);
  const names = Array.from({ length: width }, (_, i) => `c${i}`);
  const wire: Buffer[] = [rowDescription(names)];
  const expected: Buffer[] = [wire[0]!];
  const counts = new Map<string, number>();
  for (let r = 0; r < rows; r++) {
    const fields = names.map((_, c) => value(random, r * width + c));
    wire.push(dataRow(fields));
    expected.push(dataRow(fields.map((f) => (f === null ? null : (engine.maskBytes(f, counts) ?? f)))));
  }
  const tail = [new PgBytes().cstring(`SELECT ${rows}`).typed('C'), new PgBytes().char('I').typed('Z')];
  return { wire: Buffer.concat([...wire, ...tail]), expected: Buffer.concat([...expected, ...tail]), counts };
}

t.test('every field is masked as the engine masks it alone, whatever the cuts', async (t) => {
  for (const seed of [1, 2, 3]) {
    const { wire, expected, counts } = result(seed, 400, 1 + seed * 2);
    const copy = Buffer.from(wire);
    const cuts: Array<[string, Iterable<Buffer>]> = [
      ['one chunk', [wire]],
      ['64 KiB chunks', randomChunks(wire, prng(seed), 65536)],
      ['random small chunks', randomChunks(wire, prng(seed + 10), 97)],
    ];
    for (const [how, chunks] of cuts) {
      const statements: Array<Record<string, number>> = [];
      const masker = queried(new PgResultMasker({ masking, maxMessageBytes: 1 << 20, onStatementCounts: (c) => statements.push(c) }));
      const got = await transformAll(masker, chunks);
      t.ok(got.equals(expected), `seed ${seed}, ${how}: output equals per-value masking`);
      t.same(masker.counts(), Object.fromEntries(counts), `seed ${seed}, ${how}: counts per rule`);
      t.same(statements, [Object.fromEntries(counts)], `seed ${seed}, ${how}: one statement's counts at its CommandComplete`);
    }
    t.ok(wire.equals(copy), 'the input bytes are not modified');
  }
  const bytewise = result(4, 30, 3);
  const masker = queried(new PgResultMasker({ masking, maxMessageBytes: 1 << 20 }));
  t.ok((await transformAll(masker, [...bytewise.wire].map((b) => Buffer.from([b])))).equals(bytewise.expected), 'one byte per chunk');
});

t.test('through the worker pool: the same bytes', async (t) => {
  const { wire, expected } = result(7, 600, 4);
  const masker = queried(new PgResultMasker({ masking, maxMessageBytes: 1 << 20, batchRows: 0 }));
  let pending = 0;
  const out: Buffer[] = [];
  for (const c of randomChunks(wire, prng(7), 65536)) {
    const p = masker.push(c, (b) => out.push(Buffer.from(b)));
    if (p) {
      pending++;
      await p;
    }
  }
  t.ok(pending > 0, 'chunks went to the pool');
  t.ok(Buffer.concat(out).equals(expected));
});

t.test('rows without a hit go out as the chunk itself, not a copy', async (t) => {
  const rows = Array.from({ length: 50 }, (_, i) => dataRow([Buffer.from(String(i)), Buffer.from(`plain text ${i}`), null]));
  const chunk = Buffer.concat([rowDescription(['a', 'b', 'c']), ...rows]);
  const masker = queried(new PgResultMasker({ masking, maxMessageBytes: 1 << 20 }));
  const emitted: Buffer[] = [];
  t.equal(masker.push(chunk, (b) => emitted.push(b)), undefined, 'synchronous');
  t.equal(emitted.length, 1);
  t.equal(emitted[0]!.buffer, chunk.buffer, 'a view of the input');
  t.equal(emitted[0]!.byteOffset, chunk.byteOffset);
  t.equal(emitted[0]!.length, chunk.length);
});

t.test('a malformed DataRow is a protocol error, not a pass', async (t) => {
  const masker = new PgResultMasker({ masking, maxMessageBytes: 1 << 20 });
  // Field count 2, one field present: the message ends where the second length word should be.
  const short = new PgBytes().int16(2).int32(3).string('abc').typed('D');
  t.throws(() => masker.push(Buffer.concat([short, new PgBytes().char('I').typed('Z')]), () => {}), /do not add up/);
  const masker2 = new PgResultMasker({ masking, maxMessageBytes: 1 << 20 });
  const long = new PgBytes().int16(1).int32(10).string('abc').typed('D');
  t.throws(() => masker2.push(long, () => {}), /do not add up/);
});

t.test('markRanges judges each value as if alone', async (t) => {
  // Bytes around the values would complete a match if the scan looked past a value's edge.
  const text = 'xx4111 1111 1111 1111xx user@example.com yy 4111zz';
  const buf = Buffer.from(text);
  const card = text.indexOf('4111');
  const email = text.indexOf('user@');
  const last = text.lastIndexOf('4111');
  const starts = Int32Array.from([card, email, last]);
  const ends = Int32Array.from([card + 6, email + 'user@example.com'.length, last + 4]);
  const marks = new Uint8Array(3).fill(7);
  engine.markRanges(buf, starts, ends, 3, marks);
  t.same([...marks], [0, 1, 0], 'only the value holding a whole candidate is marked ("4111 1" is not a card)');
  t.equal(buf.toString(), text, 'buf untouched');
  marks.fill(0);
  engine.markRanges(buf, Int32Array.from([card]), Int32Array.from([card + 19]), 1, marks);
  t.equal(marks[0], 1, 'the whole card is a candidate');
  // Above 1 MiB the values are scanned one by one in place (not copied into the scratch): the same answers.
  const big = Buffer.concat([Buffer.alloc(1_200_000, 0x78), Buffer.from(' ada@example.com xx 4111 1111 1111 1111')]);
  const bigCard = big.indexOf('4111');
  const bigMarks = new Uint8Array(2);
  engine.markRanges(big, Int32Array.from([0, bigCard]), Int32Array.from([bigCard - 4, bigCard + 6]), 2, bigMarks);
  t.same([...bigMarks], [1, 0], 'a huge value with a hit, then a cut card');
  t.throws(() => engine.markRanges(buf, Int32Array.from([0, 5]), Int32Array.from([5, 9]), 2, marks), /a byte between them/);
});

/** A RowDescription of one column of this type OID and format (no table: matched by content only). */
function typedDescription(typeOid: number, format: number): Buffer {
  return new PgBytes().int16(1).cstring('c').int32(0).int16(0).int32(typeOid).int16(-1).int32(-1).int16(format).typed('T');
}

/** Pushes `wire` through a fresh masker; what the client got, and the refusal's message if any. */
async function through(wire: Buffer): Promise<{ out: Buffer; refused?: string }> {
  let refused: string | undefined;
  const masker = queried(new PgResultMasker({ masking, maxMessageBytes: 1 << 20, onRefuse: (_reason, error) => (refused = error.toString('latin1')) }));
  const out = await transformAll(masker, [wire]);
  return { out, ...(refused !== undefined ? { refused } : {}) };
}

const BIND_COMPLETE = new PgBytes().typed('2');
const NUMERIC = 1700;
const INT4 = 23;
const TEXT_ARRAY = 1009;
const RECORD = 2249;

t.test('binary fields: fixed sizes are checked, and text inside other types is found or refused', async (t) => {
  // A binary int4 column whose field is not 4 bytes: these are other rows than described.
  let r = await through(Buffer.concat([typedDescription(INT4, 1), dataRow([Buffer.from('alice@example.com')])]));
  t.match(r.refused, /these rows are not the ones described/);
  t.notOk(r.out.includes(Buffer.from('alice@example.com')));
  r = await through(Buffer.concat([typedDescription(INT4, 1), dataRow([Buffer.from([0, 0, 0, 42])])]));
  t.equal(r.refused, undefined, 'a 4-byte int4 passes');
  // A binary text[] holds its elements' text inside its own framing: scanned, and a hit refused
  // (rewriting it would break the array's length words).
  // ndim 1, no NULLs, element type text, one element, lower bound 1, then the element.
  const array = (s: string): Buffer =>
    new PgBytes().int32(1).int32(0).int32(25).int32(1).int32(1).int32(Buffer.byteLength(s)).string(s).raw();
  r = await through(Buffer.concat([typedDescription(TEXT_ARRAY, 1), dataRow([array('alice@example.com')])]));
  t.match(r.refused, /binary form sluice cannot rewrite/);
  t.notOk(r.out.includes(Buffer.from('alice@example.com')), 'nothing of the row went out');
  r = await through(Buffer.concat([typedDescription(TEXT_ARRAY, 1), dataRow([array('no secrets here')])]));
  t.equal(r.refused, undefined, 'an array without a hit passes');
  t.ok(r.out.includes(array('no secrets here')));
  // An element of 97 bytes: the last byte of its length word is 'a', right before 'password='.
  const long = `password=hunter2;${'x'.repeat(80)}`;
  t.equal(Buffer.byteLength(long), 97);
  r = await through(Buffer.concat([typedDescription(TEXT_ARRAY, 1), dataRow([array(long)])]));
  t.match(r.refused, /binary form sluice cannot rewrite/, 'the length word does not join the text');
  t.notOk(r.out.includes(Buffer.from('hunter2')));
  // A card number after a length word whose last byte is a digit (52 is '4'): its digits are not lengthened.
  const card = `4111111111111111 ${'y'.repeat(35)}`;
  t.equal(Buffer.byteLength(card), 52);
  r = await through(Buffer.concat([typedDescription(TEXT_ARRAY, 1), dataRow([array(card)])]));
  t.match(r.refused, /binary form sluice cannot rewrite/);
  // A record (ROW(...)) in binary: field count, then each field's type OID, length and bytes.
  const record = new PgBytes().int32(1).int32(25).int32(Buffer.byteLength(long)).string(long).raw();
  r = await through(Buffer.concat([typedDescription(RECORD, 1), dataRow([record])]));
  t.match(r.refused, /binary form sluice cannot rewrite/, 'inside a record too');
});

t.test('tracking what was sent: rows get the description of the portal their Execute names', async (t) => {
  const email = Buffer.from('alice@example.com');
  const bind = (portal: string, statement: string) => new PgBytes().cstring(portal).cstring(statement).int16(0).int16(0).int16(0).typed('B');
  const describe = (portal: string) => new PgBytes().char('P').cstring(portal).typed('D');
  const execute = (portal: string) => new PgBytes().cstring(portal).int32(0).typed('E');
  const sync = new PgBytes().typed('S');
  const commandComplete = new PgBytes().cstring('SELECT 1').typed('C');
  const ready = new PgBytes().char('T').typed('Z');
  const run = async (sent: Buffer[], replies: Buffer[]): Promise<{ out: Buffer; refused?: string }> => {
    let refused: string | undefined;
    const masker = new PgResultMasker({ masking, maxMessageBytes: 1 << 20, onRefuse: (_r, e) => (refused = e.toString('latin1')) });
    for (const m of sent) masker.forwarded(m[0]!, m);
    const out = await transformAll(masker, [Buffer.concat(replies)]);
    return { out, ...(refused !== undefined ? { refused } : {}) };
  };
  // Bind B, Bind A, Describe A, Execute B: the one description is A's (binary numerics), the rows are B's.
  let r = await run(
    [bind('b', 'sb'), bind('a', 'sa'), describe('a'), execute('b'), sync],
    [BIND_COMPLETE, BIND_COMPLETE, typedDescription(NUMERIC, 1), dataRow([email]), commandComplete, ready],
  );
  t.notOk(r.out.includes(email), "B's rows are not read by A's description");
  // Bind P, Describe P, Execute P: the usual order; the description applies.
  const numeric = Buffer.from([0, 1, 0, 0, 0, 0, 0, 7]);
  r = await run([bind('', 's'), describe(''), execute(''), sync], [BIND_COMPLETE, typedDescription(NUMERIC, 1), dataRow([numeric]), commandComplete, ready]);
  t.equal(r.refused, undefined);
  t.ok(r.out.includes(numeric), 'a binary numeric of the described portal passes as it is');
  // A portal described in an earlier batch, executed alone in a later one.
  const masker = new PgResultMasker({ masking, maxMessageBytes: 1 << 20 });
  for (const m of [bind('p', 's'), describe('p'), sync]) masker.forwarded(m[0]!, m);
  await transformAll(masker, [Buffer.concat([BIND_COMPLETE, typedDescription(INT4, 1), ready])]);
  for (const m of [execute('p'), sync]) masker.forwarded(m[0]!, m);
  const later = await transformAll(masker, [Buffer.concat([dataRow([Buffer.from([0, 0, 0, 9])]), commandComplete, ready])]);
  t.ok(later.includes(Buffer.from([0, 0, 0, 9])), 'its rows are read by its own description');
  // An error skips the rest of the batch: what the server skipped is not waited for.
  const error = new PgBytes().char('S').cstring('ERROR').char('C').cstring('42P01').char('M').cstring('no such table').byte(0).typed('E');
  const m2 = new PgResultMasker({ masking, maxMessageBytes: 1 << 20 });
  for (const m of [bind('', 's'), describe(''), execute(''), sync, bind('', 's2'), execute(''), sync]) m2.forwarded(m[0]!, m);
  const out = await transformAll(m2, [Buffer.concat([error, ready, BIND_COMPLETE, dataRow([email]), commandComplete, ready])]);
  t.notOk(out.includes(email), 'the next batch is paired as sent (no description: scanned as text)');
});

t.test('rows of a portal never described: a column its Bind asked for in binary is scanned raw, and a hit refused', async (t) => {
  // Bind with one result format code (all columns), no parameters; Execute; Sync. No Describe, as
  // drivers send once a statement is known (asyncpg asks for binary results).
  const bind = (format: number) => new PgBytes().cstring('').cstring('s').int16(0).int16(0).int16(1).int16(format).typed('B');
  const execute = new PgBytes().cstring('').int32(0).typed('E');
  const sync = new PgBytes().typed('S');
  const commandComplete = new PgBytes().cstring('SELECT 1').typed('C');
  const ready = new PgBytes().char('I').typed('Z');
  const array = (s: string): Buffer =>
    new PgBytes().int32(1).int32(0).int32(25).int32(1).int32(1).int32(Buffer.byteLength(s)).string(s).raw();
  const run = async (format: number, field: Buffer): Promise<{ out: Buffer; refused?: string }> => {
    let refused: string | undefined;
    const masker = new PgResultMasker({ masking, maxMessageBytes: 1 << 20, onRefuse: (_r, e) => (refused = e.toString('latin1')) });
    for (const m of [bind(format), execute, sync]) masker.forwarded(m[0]!, m);
    const out = await transformAll(masker, [Buffer.concat([BIND_COMPLETE, dataRow([field]), commandComplete, ready])]);
    return { out, ...(refused !== undefined ? { refused } : {}) };
  };
  let r = await run(1, array('alice@example.com'));
  t.match(r.refused, /binary form sluice cannot rewrite/, 'a binary array with a hit: refused, not rewritten inside its length words');
  t.notOk(r.out.includes(Buffer.from('alice@example.com')));
  r = await run(1, array('nothing here'));
  t.equal(r.refused, undefined, 'without a hit it passes');
  t.ok(r.out.includes(array('nothing here')));
  r = await run(0, Buffer.from('alice@example.com'));
  t.equal(r.refused, undefined, 'text results are masked in place as before');
  t.notOk(r.out.includes(Buffer.from('alice@example.com')));
});

t.test('tracking what was sent: errors, ended portals, odd names and COPY do not pair rows with a stale description', async (t) => {
  const email = Buffer.from('alice@example.com');
  const m = (type: string, body: PgBytes) => body.typed(type);
  const name = (n: Buffer | string): Buffer => Buffer.concat([typeof n === 'string' ? Buffer.from(n, 'latin1') : n, Buffer.from([0])]);
  const parse = (name: string) => m('P', new PgBytes().cstring(name).cstring('select 1').int16(0));
  const bind = (portal: Buffer | string, statement: string) => m('B', new PgBytes().bytes(name(portal)).cstring(statement).int16(0).int16(0).int16(0));
  const describe = (portal: Buffer | string) => m('D', new PgBytes().char('P').bytes(name(portal)));
  const execute = (portal: Buffer | string) => m('E', new PgBytes().bytes(name(portal)).int32(0));
  const query = (sql: string) => m('Q', new PgBytes().cstring(sql));
  const sync = new PgBytes().typed('S');
  const parseComplete = new PgBytes().typed('1');
  const cc = new PgBytes().cstring('SELECT 1').typed('C');
  const ready = (status: string) => new PgBytes().char(status).typed('Z');
  const error = new PgBytes().char('S').cstring('ERROR').char('C').cstring('42P01').char('M').cstring('no such table').byte(0).typed('E');
  const masker = () => new PgResultMasker({ masking, maxMessageBytes: 1 << 20, onRefuse: () => undefined });
  const send = (mk: PgResultMasker, ...msgs: Buffer[]) => msgs.forEach((b) => mk.forwarded(b[0]!, b));

  // An error on a Parse: the server skips the rest of the batch, the Query in it included.
  let mk = masker();
  send(mk, parse('sa'), bind('a', 'sa'), describe('a'), sync);
  await transformAll(mk, [Buffer.concat([parseComplete, BIND_COMPLETE, typedDescription(NUMERIC, 1), ready('T')])]);
  send(mk, parse(''), query('select 1'), bind('p', 'sa'), execute('a'), sync);
  await transformAll(mk, [Buffer.concat([error, ready('T')])]);
  send(mk, parse('sb'), bind('', 'sb'), execute(''), sync);
  let out = await transformAll(mk, [Buffer.concat([parseComplete, BIND_COMPLETE, dataRow([email]), cc, ready('T')])]);
  t.notOk(out.includes(email), "after the error the next batch's rows are not read as portal a's");

  // A portal's description ends with its transaction; SQL may make a portal of the same name.
  mk = masker();
  send(mk, bind('c', 's'), describe('c'), sync);
  await transformAll(mk, [Buffer.concat([BIND_COMPLETE, typedDescription(NUMERIC, 1), ready('I')])]);
  send(mk, query('BEGIN; DECLARE c CURSOR FOR SELECT email FROM users'));
  await transformAll(mk, [Buffer.concat([new PgBytes().cstring('BEGIN').typed('C'), new PgBytes().cstring('DECLARE CURSOR').typed('C'), ready('T')])]);
  send(mk, execute('c'), sync);
  out = await transformAll(mk, [Buffer.concat([dataRow([email]), cc, ready('T')])]);
  t.notOk(out.includes(email), 'the cursor made by SQL is not read by the old portal c description');

  // Names that are not UTF-8 stay apart.
  mk = masker();
  send(mk, bind(Buffer.from([0xff]), 'sb'), bind(Buffer.from([0xfe]), 'sa'), describe(Buffer.from([0xfe])), execute(Buffer.from([0xff])), sync);
  out = await transformAll(mk, [Buffer.concat([BIND_COMPLETE, BIND_COMPLETE, typedDescription(NUMERIC, 1), dataRow([email]), cc, ready('T')])]);
  t.notOk(out.includes(email), 'portal \\xff is not portal \\xfe');

  // COPY FROM STDIN through Execute: the server swallows Syncs; no description is trusted after it.
  mk = masker();
  send(mk, bind('', 's'), execute(''), sync);
  await transformAll(mk, [Buffer.concat([BIND_COMPLETE, new PgBytes().byte(0).int16(0).typed('G')])]);
  send(mk, new PgBytes().typed('c'), sync, bind('', 's'), describe(''), execute(''), sync);
  out = await transformAll(mk, [Buffer.concat([new PgBytes().cstring('COPY 0').typed('C'), ready('T'), BIND_COMPLETE, typedDescription(NUMERIC, 1), dataRow([email]), cc, ready('T')])]);
  t.notOk(out.includes(email), 'lost after an extended COPY FROM STDIN: rows are scanned as text');
});

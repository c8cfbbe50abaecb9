import t from 'tap';
import { serialize } from 'pg-protocol';
import { PgFramer, PgProtocolError, RefusedMessage, type FramerSink, type InspectSpec } from '../../protocols/postgres/framer.js';
import {
  Backend,
  Frontend,
  PROTOCOL_3_0,
  SSL_REQUEST_CODE,
  GSSENC_REQUEST_CODE,
  cancelRequest,
  sslRequest,
  errorResponse,
  readyForQuery,
  sqlstate,
} from '../../protocols/postgres/messages.js';
import { ErrorCodes } from '../../src/errors.js';
import { PgBytes, splitEverywhere, splitAt, bytewise, prng, randomChunks } from '../helpers/pg-bytes.js';

// ---------------------------------------------------------------------------
// Fixtures

const ch = (c: string): number => c.charCodeAt(0);

const startupPacket = serialize.startup({ user: 'alice', database: 'app' });
const gssencRequest = new PgBytes().int32(GSSENC_REQUEST_CODE).startup();
const dataRow = (value: string): Buffer => new PgBytes().int16(1).int32(Buffer.byteLength(value)).string(value).typed('D');
const rowDescription = new PgBytes()
  .int16(1)
  .cstring('n')
  .int32(0)
  .int16(0)
  .int32(23)
  .int16(4)
  .int32(-1)
  .int16(0)
  .typed('T');
const commandComplete = (tag: string): Buffer => new PgBytes().cstring(tag).typed('C');
const empty = (type: string): Buffer => new PgBytes().typed(type);

interface Part {
  bytes: Buffer;
  /** An untyped startup-phase packet (always delivered as a message). */
  startup?: boolean;
}

interface Stream {
  name: string;
  startup?: boolean;
  inspect?: string[];
  maxMessageBytes?: number;
  parts: Part[];
}

const msg = (bytes: Buffer): Part => ({ bytes });
const startupPart = (bytes: Buffer): Part => ({ bytes, startup: true });

const bigInspected = dataRow('x'.repeat(70_000));
const bigPassThrough = new PgBytes().fill(70_000, 0x62).typed('d');

const coalesced: Part[] = [];
for (let i = 0; i < 400; i++) {
  coalesced.push(msg(i % 3 === 0 ? dataRow(`row ${i}`) : i % 3 === 1 ? empty('n') : commandComplete(`SELECT ${i}`)));
}

const streams: Stream[] = [
  {
    name: 'StartupMessage then extended-protocol pipeline (client)',
    startup: true,
    inspect: ['Q', 'P'],
    parts: [
      startupPart(startupPacket),
      msg(serialize.query('SELECT 1')),
      msg(serialize.parse({ name: 's1', text: 'SELECT $1::int', types: [23] })),
      msg(serialize.bind({ statement: 's1', values: ['42'] })),
      msg(serialize.describe({ type: 'P', name: '' })),
      msg(serialize.execute({ portal: '', rows: 0 })),
      msg(serialize.sync()),
    ],
  },
  {
    name: 'SSLRequest, StartupMessage, PasswordMessage, Query',
    startup: true,
    inspect: ['p', 'Q'],
    parts: [
      startupPart(sslRequest()),
      startupPart(startupPacket),
      msg(serialize.password('eyJhbGciOiJSUzI1NiJ9.token.signature')),
      msg(serialize.query('SELECT now()')),
      msg(serialize.end()),
    ],
  },
  {
    name: 'GSSENCRequest then StartupMessage',
    startup: true,
    inspect: [],
    parts: [startupPart(gssencRequest), startupPart(startupPacket), msg(serialize.sync())],
  },
  {
    name: 'CancelRequest alone',
    startup: true,
    parts: [startupPart(cancelRequest(1234, -5678))],
  },
  {
    name: 'result set, all pass-through (server)',
    parts: [
      msg(rowDescription),
      msg(dataRow('1')),
      msg(dataRow('two')),
      msg(commandComplete('SELECT 2')),
      msg(readyForQuery('I')),
    ],
  },
  {
    name: 'result set with inspected ErrorResponse and ReadyForQuery',
    inspect: ['E', 'Z'],
    parts: [
      msg(rowDescription),
      msg(dataRow('1')),
      msg(errorResponse({ severity: 'ERROR', code: sqlstate.QUERY_CANCELED, message: 'canceled' })),
      msg(readyForQuery('E')),
      msg(dataRow('after')),
    ],
  },
  {
    name: 'empty bodies: Sync, Flush, ParseComplete, NoData, inspected and not',
    inspect: ['S', '1'],
    parts: ['S', 'H', '1', 'n', 'S', 'S', 'H', '1'].map((type) => msg(empty(type))),
  },
  {
    name: 'large bodies, inspected and pass-through',
    inspect: ['D'],
    maxMessageBytes: 1 << 20,
    parts: [msg(empty('S')), msg(bigInspected), msg(bigPassThrough), msg(dataRow('small')), msg(bigPassThrough), msg(bigInspected)],
  },
  {
    name: '400 small messages coalesced',
    inspect: ['D'],
    parts: coalesced,
  },
];

// ---------------------------------------------------------------------------
// Runner

/** A tap subtest, as handed to a `t.test` callback. */
type Test = Parameters<Parameters<typeof t.test>[0]>[0];

interface Run {
  /** Every buffer given to the sink, in call order. */
  out: Buffer[];
  passthroughCalls: number;
  messages: { type: number; bytes: Buffer }[];
}

function recorder(): { sink: FramerSink; run: Run } {
  const run: Run = { out: [], passthroughCalls: 0, messages: [] };
  const sink: FramerSink = {
    passthrough(bytes) {
      run.out.push(bytes);
      run.passthroughCalls++;
    },
    message(type, bytes) {
      run.out.push(bytes);
      run.messages.push({ type, bytes: Buffer.from(bytes) });
    },
  };
  return { sink, run };
}

function framerFor(s: Stream, inspect?: InspectSpec): PgFramer {
  return new PgFramer({
    maxMessageBytes: s.maxMessageBytes ?? 64 * 1024,
    startup: s.startup === true,
    inspect: inspect ?? (s.inspect ?? []).map(ch),
  });
}

function feed(s: Stream, chunks: Iterable<Buffer>): Run {
  const framer = framerFor(s);
  const { sink, run } = recorder();
  for (const c of chunks) framer.push(c, sink);
  if (!framer.atMessageBoundary || framer.bufferedBytes !== 0) throw new Error('framer not at a boundary after the whole stream');
  return run;
}

function expected(s: Stream): { type: number; hex: string }[] {
  const inspected = new Set((s.inspect ?? []).map(ch));
  return s.parts
    .filter((p) => p.startup === true || inspected.has(p.bytes[0]!))
    .map((p) => ({ type: p.startup === true ? 0 : p.bytes[0]!, hex: p.bytes.toString('hex') }));
}

/** Split points: all of them for small streams; around every message boundary plus a sample for large ones. */
function splitPoints(s: Stream, input: Buffer): Iterable<number> {
  if (input.length <= 8192) return Array.from({ length: input.length - 1 }, (_, i) => i + 1);
  const points = new Set<number>();
  let boundary = 0;
  for (const p of s.parts) {
    for (let d = -6; d <= 6; d++) points.add(boundary + d);
    boundary += p.bytes.length;
  }
  const random = prng(input.length);
  for (let i = 0; i < 64; i++) points.add(1 + Math.floor(random() * (input.length - 1)));
  return [...points].sort((a, b) => a - b);
}

function check(t: Test, s: Stream, input: Buffer, mode: string, run: Run): boolean {
  const joined = Buffer.concat(run.out);
  const want = expected(s);
  const got = run.messages.map((m) => ({ type: m.type, hex: m.bytes.toString('hex') }));
  const okBytes = joined.equals(input);
  const okMessages = got.length === want.length && got.every((g, i) => g.type === want[i]!.type && g.hex === want[i]!.hex);
  if (!okBytes) t.fail(`${mode}: sink output differs from the input`);
  if (!okMessages) t.same(got, want, `${mode}: inspected messages`);
  return okBytes && okMessages;
}

for (const s of streams) {
  t.test(s.name, async (t) => {
    const input = Buffer.concat(s.parts.map((p) => p.bytes));

    const whole = feed(s, [input]);
    t.ok(check(t, s, input, 'whole', whole), 'whole: bytes and messages');
    // One chunk: pass-through runs between inspected messages come as one call each.
    t.ok(whole.passthroughCalls <= whole.messages.length + 1, 'whole: one pass-through call per run');
    for (const m of whole.messages) t.ok(m.bytes.length > 0);

    t.ok(check(t, s, input, 'bytewise', feed(s, bytewise(input))), 'one byte at a time');

    let allSplits = true;
    let count = 0;
    for (const [a, b] of splitAt(input, splitPoints(s, input))) {
      count++;
      if (!check(t, s, input, `split at ${a.length}`, feed(s, [a, b]))) {
        allSplits = false;
        break;
      }
    }
    t.ok(allSplits, `split into two at ${count} points`);

    let allRandom = true;
    for (let seed = 1; seed <= 20 && allRandom; seed++) {
      allRandom = check(t, s, input, `random chunks seed ${seed}`, feed(s, randomChunks(input, prng(seed), 1 + (seed % 7) * 11)));
    }
    t.ok(allRandom, 'random chunkings');
  });
}

t.test('splitEverywhere yields every two-chunk cut', async (t) => {
  const cuts = [...splitEverywhere(Buffer.from('abcd'))].map(([a, b]) => `${a}|${b}`);
  t.same(cuts, ['a|bcd', 'ab|cd', 'abc|d']);
});

// ---------------------------------------------------------------------------
// Violations

function expectError(t: Test, fn: () => void, code: string, offset: number, what: string): void {
  try {
    fn();
    t.fail(`${what}: no error`);
  } catch (err) {
    t.ok(err instanceof PgProtocolError, `${what}: PgProtocolError`);
    const e = err as PgProtocolError;
    t.equal(e.code, code, `${what}: code`);
    t.equal(e.offset, offset, `${what}: offset`);
  }
}

t.test('length < 4 is a protocol violation at the right offset; earlier messages are delivered', async (t) => {
  const sync = empty('S');
  const query = serialize.query('SELECT 1');
  for (const badLength of [3, 0, -1, -0x80000000]) {
    const bad = new PgBytes().int32(0).typed('Q', badLength);
    const input = Buffer.concat([sync, query, bad]);
    const offset = sync.length + query.length;
    const modes: [string, Buffer[]][] = [
      ['whole', [input]],
      ['bytewise', [...bytewise(input)]],
      ...[...splitEverywhere(input)].map(([a, b]): [string, Buffer[]] => [`split at ${a.length}`, [a, b]]),
    ];
    for (const [mode, chunks] of modes) {
      const framer = new PgFramer({ maxMessageBytes: 1024, inspect: [ch('Q')] });
      const { sink, run } = recorder();
      expectError(t, () => { for (const c of chunks) framer.push(c, sink); }, ErrorCodes.PROTOCOL_VIOLATION, offset, `length ${badLength}, ${mode}`);
      // Sync passed through, Query delivered; not one byte of the bad message went out.
      t.equal(Buffer.concat(run.out).toString('hex'), Buffer.concat([sync, query]).toString('hex'), `length ${badLength}, ${mode}: output before the error`);
      t.equal(run.messages.length, 1);
    }
  }
});

t.test('a message over maxMessageBytes is refused from its header, before the body', async (t) => {
  for (const inspect of [[], [ch('D')]]) {
    const max = 100;
    // Exactly max wire bytes is accepted.
    const fits = new PgBytes().fill(max - 5).typed('D');
    const framer = new PgFramer({ maxMessageBytes: max, inspect });
    const { sink, run } = recorder();
    framer.push(fits, sink);
    t.equal(Buffer.concat(run.out).length, max);

    const header = new PgBytes().typed('D', max - 1 + 1); // wire size max + 1
    t.equal(header.length, 5);
    expectError(t, () => framer.push(header, sink), ErrorCodes.MESSAGE_TOO_LARGE, max, `inspect ${inspect.length}: header alone`);
    t.equal(Buffer.concat(run.out).length, max, 'no byte of the refused header went out');

    // A header split across chunks is checked as soon as it completes.
    const f2 = new PgFramer({ maxMessageBytes: max, inspect });
    const r2 = recorder();
    const huge = new PgBytes().typed('d', 0x7fffffff);
    f2.push(huge.subarray(0, 2), r2.sink);
    t.equal(r2.run.out.length, 0, 'partial header is held, not forwarded');
    t.equal(f2.bufferedBytes, 2);
    expectError(t, () => f2.push(huge.subarray(2), r2.sink), ErrorCodes.MESSAGE_TOO_LARGE, 0, 'split header');
    t.equal(r2.run.out.length, 0);
    // The framer stays failed.
    expectError(t, () => f2.push(empty('S'), r2.sink), ErrorCodes.MESSAGE_TOO_LARGE, 0, 'push after failure');
  }
});

t.test('a refused type fails on its header, whatever its length, with nothing of it passed on', async (t) => {
  for (const inspect of [[], [ch('Q')]]) {
    const framer = new PgFramer({ maxMessageBytes: 1000, inspect });
    framer.refuse(ch('p'), 'a second PasswordMessage');
    // setInspect keeps the refusal.
    framer.setInspect(inspect);
    const { sink, run } = recorder();
    const query = new PgBytes().cstring('select 1').typed('Q');
    const password = new PgBytes().cstring('secret').typed('p');
    let err: unknown;
    try {
      framer.push(Buffer.concat([query, password]), sink);
    } catch (e) {
      err = e;
    }
    t.type(err, RefusedMessage, `inspect ${inspect.length}`);
    t.equal((err as RefusedMessage).offset, query.length, 'offset of its type byte');
    t.match((err as Error).message, /a second PasswordMessage \(message type 'p'\) is not allowed here/);
    t.equal(Buffer.concat(run.out).toString('latin1'), query.toString('latin1'), 'only the message before it went on');

    // An absurd length is not looked at first, and a split header is refused once whole.
    const f2 = new PgFramer({ maxMessageBytes: 1000, inspect });
    f2.refuse(ch('p'), 'a second PasswordMessage');
    const r2 = recorder();
    const huge = new PgBytes().typed('p', 0x7fffffff);
    f2.push(huge.subarray(0, 3), r2.sink);
    t.equal(r2.run.out.length, 0, 'partial header held');
    t.throws(() => f2.push(huge.subarray(3), r2.sink), RefusedMessage);
  }
});

t.test('startup packet bounds: 8..10000 bytes', async (t) => {
  const cases: [string, Buffer, string | null][] = [
    ['7 bytes', new PgBytes().fill(3).startup(), ErrorCodes.PROTOCOL_VIOLATION],
    ['length word 0', new PgBytes().int32(PROTOCOL_3_0).startup(0), ErrorCodes.PROTOCOL_VIOLATION],
    ['negative length', new PgBytes().int32(PROTOCOL_3_0).startup(-8), ErrorCodes.PROTOCOL_VIOLATION],
    ['10001 bytes', new PgBytes().int32(PROTOCOL_3_0).fill(10001 - 8).startup(), ErrorCodes.MESSAGE_TOO_LARGE],
    ['TLS ClientHello sent without SSLRequest', Buffer.from([0x16, 0x03, 0x01, 0x02, 0x00, 0x01]), ErrorCodes.MESSAGE_TOO_LARGE],
    ['8 bytes', sslRequest(), null],
    ['10000 bytes', new PgBytes().int32(PROTOCOL_3_0).fill(10000 - 9).byte(0).startup(), null],
  ];
  for (const [name, packet, code] of cases) {
    const framer = new PgFramer({ maxMessageBytes: 1 << 20, startup: true });
    const { sink, run } = recorder();
    if (code === null) {
      framer.push(packet, sink);
      t.equal(run.messages.length, 1, `${name}: delivered`);
      t.equal(run.messages[0]!.type, 0);
    } else {
      // Refused from the 4-byte header alone.
      expectError(t, () => framer.push(packet.subarray(0, 4), sink), code, 0, name);
      t.equal(run.out.length, 0);
    }
  }
  // The startup limit also yields to a smaller maxMessageBytes.
  const framer = new PgFramer({ maxMessageBytes: 32, startup: true });
  t.ok(startupPacket.length > 32);
  expectError(t, () => framer.push(startupPacket.subarray(0, 4), recorder().sink), ErrorCodes.MESSAGE_TOO_LARGE, 0, 'startup over maxMessageBytes');
});

t.test('constructor refuses a nonsensical limit', async (t) => {
  t.throws(() => new PgFramer({ maxMessageBytes: 4 }), RangeError);
  t.throws(() => new PgFramer({ maxMessageBytes: 1.5 }), RangeError);
  t.throws(() => new PgFramer({ maxMessageBytes: 100, inspect: new Uint8Array(10) }), RangeError);
});

// ---------------------------------------------------------------------------
// Zero copy and memory

t.test('pass-through chunks are forwarded as the same Buffer', async (t) => {
  const framer = new PgFramer({ maxMessageBytes: 1 << 20 });
  const seen: Buffer[] = [];
  const sink: FramerSink = { passthrough: (b) => seen.push(b), message: () => t.fail('nothing is inspected') };
  const chunk = Buffer.concat([rowDescription, dataRow('1'), commandComplete('SELECT 1'), readyForQuery('I')]);
  framer.push(chunk, sink);
  t.equal(seen.length, 1);
  t.equal(seen[0], chunk, 'the chunk itself');

  // A body continuing over later chunks: each later chunk is forwarded as itself.
  const header = new PgBytes().typed('D', 4 + 3000).subarray(0, 5);
  const body1 = Buffer.alloc(1000, 1);
  const body2 = Buffer.alloc(2000, 2);
  seen.length = 0;
  framer.push(header, sink);
  t.equal(framer.atMessageBoundary, false);
  t.equal(framer.bufferedBytes, 0, 'a pass-through body is not buffered');
  framer.push(body1, sink);
  framer.push(body2, sink);
  t.equal(seen[0], header);
  t.equal(seen[1], body1);
  t.equal(seen[2], body2);
  t.equal(framer.atMessageBoundary, true);
});

t.test('an inspected message inside one chunk is a view of the chunk', async (t) => {
  const framer = new PgFramer({ maxMessageBytes: 1 << 20, inspect: [ch('Z')] });
  const before = dataRow('abc');
  const rfq = readyForQuery('T');
  const chunk = Buffer.concat([before, rfq, before]);
  const views: Buffer[] = [];
  const passed: Buffer[] = [];
  framer.push(chunk, { passthrough: (b) => passed.push(b), message: (_type, m) => views.push(m) });
  t.equal(views.length, 1);
  t.equal(views[0]!.buffer, chunk.buffer, 'same ArrayBuffer');
  t.equal(views[0]!.byteOffset, chunk.byteOffset + before.length, 'at the message offset');
  t.equal(passed.length, 2);
  t.equal(passed[0]!.buffer, chunk.buffer);
});

t.test('a straddling inspected message is a fresh copy the sink owns', async (t) => {
  const framer = new PgFramer({ maxMessageBytes: 1 << 20, inspect: [ch('Q')] });
  const query = serialize.query('SELECT 1');
  const chunk1 = Buffer.from(query.subarray(0, 7));
  const chunk2 = Buffer.from(query.subarray(7));
  let got: Buffer | undefined;
  framer.push(chunk1, { passthrough: () => t.fail(), message: () => t.fail() });
  t.equal(framer.bufferedBytes, 7);
  framer.push(chunk2, { passthrough: () => t.fail(), message: (_t, m) => (got = m) });
  t.ok(got !== undefined && got.equals(query));
  chunk2.fill(0);
  t.ok(got!.equals(query), 'unaffected by the caller reusing its chunk');
  t.equal(framer.bufferCapacity, 0, 'the framer kept no reference');
});

t.test('a pass-through header split across chunks goes out as the original bytes, after validation', async (t) => {
  const framer = new PgFramer({ maxMessageBytes: 1 << 20 });
  const row = dataRow('hello');
  const out: Buffer[] = [];
  const sink: FramerSink = { passthrough: (b) => out.push(b), message: () => t.fail() };
  framer.push(row.subarray(0, 1), sink);
  framer.push(row.subarray(1, 3), sink);
  t.equal(out.length, 0, 'held until the header is whole');
  t.equal(framer.bufferedBytes, 3);
  const rest = row.subarray(3);
  framer.push(rest, sink);
  t.equal(out.length, 2);
  t.same([...out[0]!], [...row.subarray(0, 3)], 'held bytes first');
  t.equal(out[1], rest, 'then the chunk itself');
  t.equal(framer.bufferedBytes, 0);
  t.equal(framer.atMessageBoundary, true);
});

t.test('a 1 GB pass-through DataRow costs no memory', async (t) => {
  const size = 1 << 30;
  const framer = new PgFramer({ maxMessageBytes: size + 16, inspect: [ch('Z')] });
  const block = Buffer.alloc(64 * 1024, 0x78);
  let sameObject = true;
  let forwarded = 0;
  const sink: FramerSink = {
    passthrough(b) {
      forwarded += b.length;
      if (b.length === block.length && b !== block) sameObject = false;
    },
    message: () => t.fail('nothing inspected yet'),
  };
  framer.push(new PgBytes().typed('D', 4 + size).subarray(0, 5), sink);
  let maxHeld = 0;
  for (let sent = 0; sent < size; sent += block.length) {
    framer.push(block, sink);
    maxHeld = Math.max(maxHeld, framer.bufferCapacity, framer.bufferedBytes);
  }
  t.ok(sameObject, 'each body chunk forwarded as itself');
  t.equal(maxHeld, 0, 'nothing held');
  t.equal(forwarded, 5 + size);
  t.equal(framer.atMessageBoundary, true);
  let rfq: Buffer | undefined;
  framer.push(readyForQuery('I'), { passthrough: () => t.fail(), message: (_type, m) => (rfq = m) });
  t.ok(rfq?.equals(readyForQuery('I')), 'framing continues after it');
  t.equal(framer.streamOffset, 5 + size + 6);
});

// ---------------------------------------------------------------------------
// Startup phase, CVE-2021-23214, and changing modes mid-chunk

t.test('SSLRequest: bufferedBytes and atMessageBoundary with and without injected bytes', async (t) => {
  // Alone: nothing follows it, in the callback or after.
  {
    const framer = new PgFramer({ maxMessageBytes: 1 << 20, startup: true });
    let inCallback = -1;
    framer.push(sslRequest(), {
      passthrough: () => t.fail(),
      message: (type, m) => {
        t.equal(type, 0);
        t.equal(m.readInt32BE(4), SSL_REQUEST_CODE);
        inCallback = framer.bufferedBytes;
      },
    });
    t.equal(inCallback, 0, 'nothing after SSLRequest in the callback');
    t.equal(framer.bufferedBytes, 0);
    t.equal(framer.atMessageBoundary, true);
    t.equal(framer.expectingStartup, true, 'the next packet is startup-phase again');
  }
  // A whole message injected after it in the same chunk: seen in the callback, refused there.
  {
    const framer = new PgFramer({ maxMessageBytes: 1 << 20, startup: true });
    const injected = serialize.query('SELECT injected()');
    let inCallback = -1;
    t.throws(
      () =>
        framer.push(Buffer.concat([sslRequest(), injected]), {
          passthrough: () => t.fail('injected bytes must not be forwarded'),
          message: () => {
            inCallback = framer.bufferedBytes;
            if (framer.bufferedBytes !== 0) throw new Error('bytes after SSLRequest');
          },
        }),
      /bytes after SSLRequest/,
    );
    t.equal(inCallback, injected.length);
    t.throws(() => framer.push(sslRequest(), recorder().sink), 'dead after its sink threw');
  }
  // A fragment injected after it: still visible after push returns.
  {
    const framer = new PgFramer({ maxMessageBytes: 1 << 20, startup: true });
    const { sink, run } = recorder();
    framer.push(Buffer.concat([sslRequest(), Buffer.from([0, 0, 0])]), sink);
    t.equal(run.messages.length, 1);
    t.equal(framer.bufferedBytes, 3);
    t.equal(framer.atMessageBoundary, false);
  }
  // SSLRequest split across chunks, injected bytes in the second.
  {
    const framer = new PgFramer({ maxMessageBytes: 1 << 20, startup: true });
    let inCallback = -1;
    const sink: FramerSink = { passthrough: () => t.fail(), message: () => (inCallback = framer.bufferedBytes) };
    const bytes = Buffer.concat([sslRequest(), startupPacket]);
    framer.push(bytes.subarray(0, 5), sink);
    t.equal(framer.bufferedBytes, 5);
    t.throws(() => framer.push(bytes.subarray(5), { ...sink, message: (ty, m) => { sink.message(ty, m); throw new Error('stop'); } }));
    t.equal(inCallback, startupPacket.length);
  }
});

t.test('expectStartup, setInspect and streamOffset from inside a callback apply to the rest of the chunk', async (t) => {
  const password = serialize.password('secret-token');
  const query = serialize.query('SELECT 1');
  const input = Buffer.concat([startupPacket, password, query, query]);
  const framer = new PgFramer({ maxMessageBytes: 1 << 20, startup: true, inspect: () => true });
  const { sink, run } = recorder();
  const offsets: number[] = [];
  framer.push(input, {
    passthrough: sink.passthrough,
    message(type, m) {
      offsets.push(framer.streamOffset - m.length);
      sink.message(type, m);
      if (type === Frontend.PasswordMessage) framer.setInspect(undefined); // relay from here on
    },
  });
  t.same(run.messages.map((m) => m.type), [0, Frontend.PasswordMessage]);
  t.same(offsets, [0, startupPacket.length]);
  t.equal(run.passthroughCalls, 1, 'both queries in one pass-through run');
  t.ok(Buffer.concat(run.out).equals(input));

  // expectStartup: a second StartupMessage after a refused request the framer did not recognise.
  const f2 = new PgFramer({ maxMessageBytes: 1 << 20, startup: true });
  const r2 = recorder();
  f2.push(Buffer.concat([startupPacket, startupPacket]), {
    passthrough: r2.sink.passthrough,
    message(type, m) {
      r2.sink.message(type, m);
      f2.expectStartup();
    },
  });
  t.same(r2.run.messages.map((m) => m.type), [0, 0]);
});

t.test('inspect accepts a table, a list or a predicate', async (t) => {
  const input = Buffer.concat([empty('S'), readyForQuery('I'), empty('S')]);
  const table = new Uint8Array(256);
  table[Backend.ReadyForQuery] = 1;
  for (const spec of [table, [Backend.ReadyForQuery], (ty: number) => ty === Backend.ReadyForQuery] as InspectSpec[]) {
    const framer = new PgFramer({ maxMessageBytes: 100, inspect: spec });
    const { sink, run } = recorder();
    framer.push(input, sink);
    t.same(run.messages.map((m) => m.type), [Backend.ReadyForQuery]);
    t.equal(run.passthroughCalls, 2);
  }
});

t.test('a typed message whose type byte is 0 is not taken for a startup packet', async (t) => {
  // Found by the fuzzer: with type 0 inspected, a short typed message was
  // read as an SSLRequest candidate and the framer threw a RangeError.
  for (const split of [false, true]) {
    const framer = new PgFramer({ maxMessageBytes: 1024, inspect: [0, 0x51] });
    const msg = Buffer.from([0x00, 0, 0, 0, 5, 0x41, 0x51, 0, 0, 0, 4]);
    const seen: number[] = [];
    const sink = { passthrough: () => {}, message: (type: number) => seen.push(type) };
    if (split) {
      framer.push(msg.subarray(0, 3), sink);
      framer.push(msg.subarray(3), sink);
    } else {
      framer.push(msg, sink);
    }
    t.same(seen, [0, 0x51], `split=${split}`);
    t.notOk(framer.expectingStartup);
  }
});

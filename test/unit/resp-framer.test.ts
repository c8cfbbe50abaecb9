/**
 * RESP framers against real Redis 7 replies and real client requests, each
 * fed whole, byte by byte and split into two chunks at every boundary.
 */
import t, { type Test } from 'tap';
import { createRequire } from 'node:module';
import { connect, createServer, type Socket } from 'node:net';
import { execFile } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { promisify } from 'node:util';
import {
  RespProtocolError,
  RespReplyFramer,
  RespRequestFramer,
  UNAUTHENTICATED_REQUEST_LIMITS,
  DEFAULT_REQUEST_LIMITS,
  type ReplyEndInfo,
  type RespReplyLimits,
  type RespRequestLimits,
} from '../../protocols/redis/resp.js';
import * as replies from '../../protocols/redis/replies.js';
import { ErrorCodes } from '../../src/errors.js';
import { startRedis, type RedisServer } from '../helpers/redis.js';
import {
  byteByByte,
  command,
  r,
  sampledSplitPoints,
  splits,
  whole,
  type Arg,
  type Chunking,
} from '../helpers/resp-bytes.js';

const execFileP = promisify(execFile);

// redis-parser ships no types; this is the part of its API we use.
interface RedisParser {
  execute(buf: Buffer): void;
}
type RedisParserCtor = new (opts: {
  returnReply: (reply: unknown) => void;
  returnError: (err: Error) => void;
  returnFatalError?: (err: Error) => void;
  returnBuffers?: boolean;
}) => RedisParser;
const RedisParser = createRequire(import.meta.url)('redis-parser') as RedisParserCtor;

// --- running the framers -------------------------------------------------------------

interface ReplyRun {
  ends: ReplyEndInfo[];
  out: Buffer;
  passthroughCalls: number;
  error?: RespProtocolError;
  maxBuffered: number;
}

function runReplies(chunks: Buffer[], opts?: Partial<RespReplyLimits>): ReplyRun {
  const framer = new RespReplyFramer(opts);
  const ends: ReplyEndInfo[] = [];
  const outs: Buffer[] = [];
  let maxBuffered = 0;
  const sink = {
    passthrough: (b: Buffer) => void outs.push(b),
    replyEnd: (info: ReplyEndInfo) => void ends.push(info),
  };
  try {
    for (const c of chunks) {
      framer.push(c, sink);
      maxBuffered = Math.max(maxBuffered, framer.bufferedBytes);
    }
  } catch (err) {
    if (!(err instanceof RespProtocolError)) throw err;
    return { ends, out: Buffer.concat(outs), passthroughCalls: outs.length, error: err, maxBuffered };
  }
  return { ends, out: Buffer.concat(outs), passthroughCalls: outs.length, maxBuffered };
}

interface Delivered {
  raw: Buffer;
  args: Buffer[];
}

function runRequests(
  chunks: Buffer[],
  limits?: Partial<RespRequestLimits>,
): { commands: Delivered[]; error?: RespProtocolError } {
  const framer = new RespRequestFramer(limits);
  const commands: Delivered[] = [];
  try {
    for (const c of chunks) framer.push(c, { command: (raw, args) => void commands.push({ raw, args }) });
  } catch (err) {
    if (!(err instanceof RespProtocolError)) throw err;
    return { commands, error: err };
  }
  return { commands };
}

function chunkings(buf: Buffer): Iterable<Chunking> {
  const all: Chunking[] = [whole(buf), byteByByte(buf)];
  const points = buf.length > 16 * 1024 ? sampledSplitPoints(buf.length) : undefined;
  return (function* () {
    yield* all;
    yield* splits(buf, points);
  })();
}

function countWithRedisParser(chunks: Buffer[]): number {
  let n = 0;
  const parser = new RedisParser({
    returnReply: () => void n++,
    returnError: () => void n++,
    returnFatalError: (err) => {
      throw err;
    },
    returnBuffers: true,
  });
  for (const c of chunks) parser.execute(c);
  return n;
}

// --- a corpus of real replies --------------------------------------------------------

/** A raw RESP session; `exchange` returns exactly the bytes Redis answered to `cmds`. */
class Session {
  private buf = Buffer.alloc(0);
  private waiter: (() => void) | null = null;

  private constructor(private readonly sock: Socket) {
    sock.on('data', (d: Buffer) => {
      this.buf = Buffer.concat([this.buf, d]);
      this.waiter?.();
    });
  }

  static async open(port: number): Promise<Session> {
    const sock = connect(port, '127.0.0.1');
    await new Promise<void>((resolve, reject) => {
      sock.once('connect', resolve);
      sock.once('error', reject);
    });
    return new Session(sock);
  }

  /**
   * Sends `cmds` then `ECHO <marker>`; Redis answers in order, so the bytes
   * before the marker's reply are the answers (and pushes) for `cmds`.
   */
  async exchange(cmds: Arg[][]): Promise<Buffer> {
    const marker = `marker-${randomBytes(8).toString('hex')}`;
    const tail = r.bulk(marker);
    this.sock.write(Buffer.concat([...cmds.map((c) => command(...c)), command('ECHO', marker)]));
    const deadline = Date.now() + 10_000;
    while (!(this.buf.length >= tail.length && this.buf.subarray(this.buf.length - tail.length).equals(tail))) {
      if (Date.now() > deadline) throw new Error(`no reply to ${cmds.map((c) => String(c[0])).join(',')}`);
      await new Promise<void>((resolve) => {
        this.waiter = resolve;
        setTimeout(resolve, 100);
      });
    }
    const out = this.buf.subarray(0, this.buf.length - tail.length);
    this.buf = Buffer.alloc(0);
    return Buffer.from(out);
  }

  close(): void {
    this.sock.destroy();
  }
}

interface CorpusEntry {
  name: string;
  bytes: Buffer;
  /** RESP3 expectations from the commands sent. */
  replies: number;
  pushes: number;
  attributes: number;
}

const BIG = randomBytes(1024 * 1024);

async function corpus(server: RedisServer, proto: 2 | 3): Promise<CorpusEntry[]> {
  const s = await Session.open(server.port);
  const out: CorpusEntry[] = [];
  const add = async (name: string, cmds: Arg[][], pushes = 0, attributes = 0, extraReplies = 0): Promise<void> => {
    const bytes = await s.exchange(cmds);
    out.push({ name, bytes, replies: cmds.length + pushes + extraReplies, pushes, attributes });
  };
  const k = `k${proto}`;
  await add('HELLO', [['HELLO', String(proto), 'AUTH', 'default', server.password]]);
  await add('SET/GET', [['SET', k, 'v'], ['GET', k]]);
  await add('GET nil', [['GET', `${k}:missing`]]);
  await add('binary value with CRLF', [['SET', `${k}:bin`, Buffer.from('a\r\nb\r\n$3\r\n*1\r\n')], ['GET', `${k}:bin`]]);
  await add('MGET', [['MSET', `${k}a`, '1', `${k}b`, '2'], ['MGET', `${k}a`, `${k}b`, `${k}:missing`]]);
  await add('HGETALL', [['HSET', `${k}h`, 'f1', 'v1', 'f2', 'v2'], ['HGETALL', `${k}h`]]);
  await add('SMEMBERS', [['SADD', `${k}s`, 'a', 'b', 'c'], ['SMEMBERS', `${k}s`]]);
  await add('INCRBYFLOAT', [['INCRBYFLOAT', `${k}f`, '1.5']]);
  await add('ZSCORE', [['ZADD', `${k}z`, '1.5', 'm', '2', 'n'], ['ZSCORE', `${k}z`, 'm'], ['ZRANGE', `${k}z`, '0', '-1', 'WITHSCORES']]);
  await add('INCRBY near int64 max', [['INCRBY', `${k}n`, '9223372036854775806'], ['DECRBY', `${k}m`, '9223372036854775807']]);
  await add('errors', [['NOSUCHCOMMAND'], ['INCR', `${k}`], ['GET', `${k}h`], ['SET']]);
  await add('XRANGE', [['XADD', `${k}x`, '*', 'a', '1', 'b', '2'], ['XADD', `${k}x`, '*', 'c', '3'], ['XRANGE', `${k}x`, '-', '+']]);
  await add('empty array', [['LRANGE', `${k}:nolist`, '0', '-1']]);
  await add('MULTI/EXEC', [['MULTI'], ['SET', `${k}t`, '1'], ['INCR', `${k}t`], ['EXEC']]);
  await add('CONFIG GET', [['CONFIG', 'GET', 'maxmemory*']]);
  await add('1 MiB value', [['SET', `${k}big`, BIG], ['GET', `${k}big`]]);
  await add('verbatim', [['LATENCY', 'DOCTOR'], ['CLIENT', 'INFO']]);
  for (const type of ['string', 'integer', 'double', 'bignum', 'null', 'array', 'set', 'map', 'true', 'false', 'verbatim']) {
    await add(`DEBUG PROTOCOL ${type}`, [['DEBUG', 'PROTOCOL', type]]);
  }
  if (proto === 3) {
    // An attribute, then the reply it annotates: one reply.
    await add('DEBUG PROTOCOL attrib', [['DEBUG', 'PROTOCOL', 'attrib']], 0, 1);
    // A push, then the reply: two top-level frames.
    await add('DEBUG PROTOCOL push', [['DEBUG', 'PROTOCOL', 'push']], 1);
    await add('CLIENT TRACKING invalidation', [['CLIENT', 'TRACKING', 'ON'], ['GET', k], ['SET', k, 'v2']], 1);
    // RESP3 subscribe confirmations are pushes, not replies.
    await add('SUBSCRIBE', [['SUBSCRIBE', `${k}ch`]], 1, 0, -1);
    await add('PUBLISH to self', [['PUBLISH', `${k}ch`, 'hello']], 1);
    await add('UNSUBSCRIBE', [['UNSUBSCRIBE', `${k}ch`]], 1, 0, -1);
  } else {
    await add('DEBUG PROTOCOL attrib', [['DEBUG', 'PROTOCOL', 'attrib']]);
  }
  s.close();
  return out;
}

// --- the tests -----------------------------------------------------------------------

t.test('reply framer on real Redis replies', async (t) => {
  const server = await startRedis();
  t.teardown(() => server.stop());
  const resp2 = await corpus(server, 2);
  const resp3 = await corpus(server, 3);

  t.ok(resp3.some((e) => e.bytes.includes('|1\r\n')), 'RESP3 corpus has an attribute');
  t.ok(resp3.some((e) => e.bytes.includes('%')), 'RESP3 corpus has a map');
  t.ok(resp3.some((e) => e.bytes[0] === 0x3d /* '=' */), 'RESP3 corpus has a verbatim string');
  t.ok(resp3.some((e) => e.bytes[0] === 0x28 /* '(' */), 'RESP3 corpus has a big number');
  t.ok(resp3.some((e) => e.bytes.includes('>2\r\n$10\r\ninvalidate\r\n')), 'RESP3 corpus has a tracking invalidation push');

  const check = (t: Test, entries: CorpusEntry[], compareRedisParser: boolean): void => {
    const failures: string[] = [];
    for (const e of entries) {
      for (const c of chunkings(e.bytes)) {
        const run = runReplies(c.chunks);
        const where = `${e.name} (${c.name})`;
        if (run.error) failures.push(`${where}: ${run.error.message}`);
        else if (!run.out.equals(e.bytes)) failures.push(`${where}: passthrough differs`);
        else if (run.passthroughCalls !== c.chunks.length) failures.push(`${where}: ${run.passthroughCalls} passthrough calls`);
        else if (run.ends.length !== e.replies) failures.push(`${where}: ${run.ends.length} replies, want ${e.replies}`);
        else if (run.ends.filter((x) => x.push).length !== e.pushes) failures.push(`${where}: push count`);
        else if (run.ends.filter((x) => x.attribute).length !== e.attributes) failures.push(`${where}: attribute count`);
        else if (run.ends.at(-1)!.end !== e.bytes.length) failures.push(`${where}: last reply does not end at the end`);
        if (compareRedisParser) {
          const want = countWithRedisParser(c.chunks);
          if (want !== run.ends.length) failures.push(`${where}: redis-parser counts ${want}, we count ${run.ends.length}`);
        }
        if (failures.length > 20) break;
      }
    }
    t.same(failures, [], 'every chunking frames every entry');
  };

  t.test('RESP2 corpus, counts equal redis-parser', async (t) => check(t, resp2, true));
  t.test('RESP3 corpus, counts equal the commands sent', async (t) => check(t, resp3, false));

  t.test('whole session concatenated', async (t) => {
    for (const [name, entries, compare] of [
      ['RESP2', resp2, true],
      ['RESP3', resp3, false],
    ] as const) {
      const all = Buffer.concat(entries.map((e) => e.bytes));
      const small = Buffer.concat(entries.filter((e) => e.bytes.length < 16 * 1024).map((e) => e.bytes));
      const want = entries.reduce((n, e) => n + e.replies, 0);
      const wantSmall = entries.filter((e) => e.bytes.length < 16 * 1024).reduce((n, e) => n + e.replies, 0);
      const failures: string[] = [];
      for (const c of [whole(all), byteByByte(all)]) {
        const run = runReplies(c.chunks);
        if (run.error || !run.out.equals(all) || run.ends.length !== want) failures.push(`${name} ${c.name}`);
        if (compare && countWithRedisParser(c.chunks) !== want) failures.push(`${name} ${c.name}: redis-parser`);
      }
      for (const c of splits(small)) {
        const run = runReplies(c.chunks);
        if (run.error || !run.out.equals(small) || run.ends.length !== wantSmall) failures.push(`${name} ${c.name}`);
        if (failures.length > 20) break;
      }
      t.same(failures, [], `${name}: ${want} replies in ${all.length} bytes`);
    }
  });
});

t.test('reply framer: zero copy and attributes', async (t) => {
  const bytes = Buffer.concat([r.simple('OK'), r.bulk('v'), r.int(1)]);
  const calls: Buffer[] = [];
  const framer = new RespReplyFramer();
  framer.push(bytes, { passthrough: (b) => void calls.push(b), replyEnd: () => {} });
  t.equal(calls.length, 1);
  t.equal(calls[0], bytes, 'a chunk forwarded whole is the chunk itself');

  // Attributes nested in an aggregate do not count as its elements.
  const nested = Buffer.concat([Buffer.from('*2\r\n'), r.attr(r.simple('ttl'), r.int(3)), r.bulk('a'), r.bulk('b')]);
  const run = runReplies([nested]);
  t.equal(run.ends.length, 1);
  t.notOk(run.error);
  t.same(run.ends[0], { push: false, attribute: false, end: nested.length });

  // Top-level attribute: no replyEnd of its own; flagged on the reply it annotates.
  const attributed = Buffer.concat([r.attr(r.simple('a'), r.map(r.simple('b'), r.int(1))), r.push(r.bulk('x')), r.simple('OK')]);
  const run2 = runReplies([attributed]);
  t.same(
    run2.ends.map((e) => [e.push, e.attribute]),
    [
      [true, true],
      [false, false],
    ],
  );
  // Empty attribute and empty aggregates.
  const empties = Buffer.concat([r.attr(), r.array(), r.map(), r.set(), r.push(), r.nullArray(), r.nullBulk(), r.null()]);
  const run3 = runReplies([empties]);
  t.notOk(run3.error);
  t.same(run3.ends.map((e) => e.attribute), [true, false, false, false, false, false, false]);
  t.same(run3.ends.map((e) => e.push), [false, false, false, true, false, false, false]);

  const framer2 = new RespReplyFramer();
  t.ok(framer2.atReplyBoundary);
  framer2.push(Buffer.from('*2\r\n:1\r\n'), { passthrough: () => {}, replyEnd: () => {} });
  t.notOk(framer2.atReplyBoundary);
  t.equal(framer2.offset, 8);
});

t.test('reply framer: counting gives the replies and ends that replyEnd reports, in every chunking', async (t) => {
  // Bulk strings whole and cut (the one-step path and the state machine), nulls, pushes, attributes, aggregates.
  const stream = Buffer.concat([
    r.bulk('xxx'),
    r.nullBulk(),
    r.push(r.bulk('message'), r.bulk('ch'), r.bulk('hello')),
    r.simple('OK'),
    r.attr(r.simple('ttl'), r.int(3)),
    r.bulk(randomBytes(300)),
    r.array(r.bulk('a'), r.nullBulk(), r.int(-2)),
    r.bulk(''),
    r.err('ERR no'),
    r.push(r.bulk('invalidate')),
    r.map(r.bulk('k'), r.bulk('v')),
  ]);
  const reference = runReplies([stream]);
  t.notOk(reference.error);
  const expectedReplies = reference.ends.filter((e) => !e.push).length;
  for (const c of [whole(stream), byteByByte(stream), ...splits(stream, sampledSplitPoints(stream.length))]) {
    const framer = new RespReplyFramer();
    const forwarded: Buffer[] = [];
    const sink = { passthrough: (b: Buffer) => void forwarded.push(b), replyEnd: () => t.fail('no replyEnd while counting') };
    let counted = 0;
    const endsSeen: number[] = [];
    for (const chunk of c.chunks) {
      const before = framer.lastEnd;
      counted += framer.pushCounting(chunk, sink);
      if (framer.lastEnd !== before) endsSeen.push(framer.lastEnd);
    }
    if (counted !== expectedReplies || !Buffer.concat(forwarded).equals(stream)) {
      t.fail(`${c.name}: counted ${counted} of ${expectedReplies}`);
      continue;
    }
    // Where replies end, as far as chunk boundaries let it show: each seen end is one replyEnd reported.
    const reportedEnds = new Set(reference.ends.map((e) => e.end));
    if (!endsSeen.every((e) => reportedEnds.has(e))) t.fail(`${c.name}: an end not reported by replyEnd`);
  }
  t.equal(new RespReplyFramer().lastEnd, 0);
  const last = new RespReplyFramer();
  last.pushCounting(stream, { passthrough: () => {}, replyEnd: () => {} });
  t.equal(last.lastEnd, stream.length, 'lastEnd is past the final reply');
  t.pass('counting agrees with replyEnd for every chunking');
});

t.test('reply framer: 64 MiB bulk in 64 KiB chunks holds a few KiB at most', async (t) => {
  const size = 64 * 1024 * 1024;
  const piece = Buffer.alloc(64 * 1024, 0x61);
  const framer = new RespReplyFramer();
  let forwarded = 0;
  const ends: ReplyEndInfo[] = [];
  let maxBuffered = 0;
  const sink = { passthrough: (b: Buffer) => void (forwarded += b.length), replyEnd: (i: ReplyEndInfo) => void ends.push(i) };
  const feed = (b: Buffer): void => {
    framer.push(b, sink);
    maxBuffered = Math.max(maxBuffered, framer.bufferedBytes);
  };
  // The header itself split across chunks.
  feed(Buffer.from(`$${size}`.slice(0, 4)));
  feed(Buffer.from(`$${size}\r`.slice(4)));
  feed(Buffer.from('\n'));
  for (let sent = 0; sent < size; sent += piece.length) {
    feed(piece);
    t.equal(ends.length, 0);
  }
  feed(Buffer.from('\r'));
  feed(Buffer.from('\n+OK\r\n'));
  t.equal(ends.length, 2);
  t.equal(forwarded, size + String(size).length + 3 + 2 + 5);
  t.ok(maxBuffered <= 4096, `framer held at most ${maxBuffered} bytes`);
  t.equal(framer.bufferedBytes <= 4096, true);
});

t.test('reply framer refuses malformed replies with Redis-style messages', async (t) => {
  const cases: Array<[string, Buffer, string, Partial<RespReplyLimits>?]> = [
    ['unknown type byte', Buffer.from('@foo\r\n'), "unknown reply type byte '@'"],
    ['control type byte', Buffer.from('\x00\r\n'), "unknown reply type byte '\\x00'"],
    ['negative bulk length', Buffer.from('$-2\r\n'), 'invalid bulk length'],
    ['non-digit bulk length', Buffer.from('$1a\r\nx\r\n'), 'invalid bulk length'],
    ['plus sign', Buffer.from('$+1\r\nx\r\n'), 'invalid bulk length'],
    ['leading zero', Buffer.from('$01\r\nx\r\n'), 'invalid bulk length'],
    ['space', Buffer.from('$ 1\r\nx\r\n'), 'invalid bulk length'],
    ['empty length', Buffer.from('$\r\n'), 'invalid bulk length'],
    ['huge length', Buffer.from(`$${'9'.repeat(20)}\r\n`), 'invalid bulk length'],
    ['bulk over max', Buffer.from('$11\r\nhello world\r\n'), 'invalid bulk length', { maxBulkBytes: 10 }],
    ['streamed bulk $?', Buffer.from('$?\r\n;4\r\nHell\r\n;0\r\n'), 'invalid bulk length'],
    ['streamed array *?', Buffer.from('*?\r\n:1\r\n.\r\n'), 'invalid multibulk length'],
    ['missing CRLF after bulk', Buffer.from('$3\r\nfooXY+OK\r\n'), 'expected CRLF after bulk string'],
    ['CR without LF', Buffer.from('+OK\rX\r\n'), 'expected LF after CR'],
    ['LF in simple string', Buffer.from('+O\nK\r\n'), 'unexpected LF in a simple string'],
    ['negative array', Buffer.from('*-2\r\n'), 'invalid multibulk length'],
    ['null map', Buffer.from('%-1\r\n'), 'invalid map length'],
    ['aggregate over max', Buffer.from('*3\r\n:1\r\n:2\r\n:3\r\n'), 'invalid multibulk length', { maxAggregate: 2 }],
    ['bad integer', Buffer.from(':12a\r\n'), 'invalid integer'],
    ['integer leading zero', Buffer.from(':012\r\n'), 'invalid integer'],
    ['integer overflow', Buffer.from(':9223372036854775808\r\n'), 'invalid integer'],
    ['minus zero', Buffer.from(':-0\r\n'), 'invalid integer'],
    ['bad boolean', Buffer.from('#x\r\n'), 'invalid boolean'],
    ['bad null', Buffer.from('_x\r\n'), 'invalid null'],
    ['bad double', Buffer.from(',1.2.3\r\n'), 'invalid double'],
    ['bad big number', Buffer.from('(12x\r\n'), 'invalid big number'],
    ['short verbatim', Buffer.from('=3\r\ntxt\r\n'), 'invalid verbatim string'],
    ['verbatim without colon', Buffer.from('=5\r\ntxt-a\r\n'), 'invalid verbatim string'],
    ['a line that never ends', Buffer.from(`+${'a'.repeat(70 * 1024)}`), 'too big inline string'],
    ['too deep', Buffer.from('*1\r\n'.repeat(200)), 'too deep nesting'],
  ];
  for (const [name, bytes, message, limits] of cases) {
    for (const c of [whole(bytes), byteByByte(bytes), ...splits(bytes, bytes.length > 64 ? [1, 5, 64] : undefined)]) {
      const run = runReplies(c.chunks, limits);
      if (!run.error) {
        t.fail(`${name} (${c.name}): no error`);
        continue;
      }
      if (run.error.message !== `Protocol error: ${message}`) {
        t.equal(run.error.message, `Protocol error: ${message}`, `${name} (${c.name})`);
      }
      if (run.error.code !== ErrorCodes.PROTOCOL_VIOLATION || run.error.offset < 0 || run.error.offset > bytes.length) {
        t.fail(`${name} (${c.name}): code ${run.error.code} offset ${run.error.offset}`);
      }
    }
    t.pass(name);
  }

  // Nothing after the bad byte is passed through; complete replies before it are.
  const good = Buffer.concat([r.simple('OK'), r.bulk('v')]);
  const run = runReplies([Buffer.concat([good, Buffer.from('@bad\r\n+OK\r\n')])]);
  t.equal(run.ends.length, 2);
  t.same(run.out, good);
  t.equal(run.error?.offset, good.length);

  // A failed framer stays failed.
  const framer = new RespReplyFramer();
  const sink = { passthrough: () => {}, replyEnd: () => {} };
  t.throws(() => framer.push(Buffer.from('@'), sink), RespProtocolError);
  t.throws(() => framer.push(Buffer.from('+OK\r\n'), sink), RespProtocolError);
});

// --- requests ------------------------------------------------------------------------

const REQUESTS: Arg[][] = [
  ['PING'],
  ['SET', 'key', 'value'],
  ['GET', 'key'],
  ['SET', 'bin', Buffer.from('a\r\nb\r\n*2\r\n$3\r\nfoo\r\n')],
  ['SET', 'empty', ''],
  ['HSET', 'h', 'f1', 'v1', 'f2', Buffer.from([0, 1, 2, 13, 10, 255])],
  ['SET', 'unicode', 'héllo wörld ✓'],
  ['HELLO', '3', 'AUTH', 'default', 'secret'],
  ['SET', 'large', randomBytes(20_000)],
];

function sameCommand(d: Delivered, want: Arg[]): boolean {
  const raw = command(...want);
  if (!d.raw.equals(raw) || d.args.length !== want.length) return false;
  return d.args.every((a, i) => {
    const w = typeof want[i] === 'string' ? Buffer.from(want[i] as string) : (want[i] as Buffer);
    // Each argument is a view into raw, not a copy.
    return a.equals(w) && a.buffer === d.raw.buffer && a.byteOffset >= d.raw.byteOffset && a.byteOffset + a.length <= d.raw.byteOffset + d.raw.length;
  });
}

t.test('request framer frames commands whole, byte by byte and split everywhere', async (t) => {
  for (const cmd of REQUESTS) {
    const bytes = command(...cmd);
    const failures: string[] = [];
    for (const c of chunkings(bytes)) {
      const run = runRequests(c.chunks);
      if (run.error) failures.push(`${c.name}: ${run.error.message}`);
      else if (run.commands.length !== 1 || !sameCommand(run.commands[0]!, cmd)) failures.push(`${c.name}: wrong command`);
    }
    t.same(failures, [], String(cmd[0]) + ' ' + String(cmd[1] ?? '').slice(0, 10));
  }

  // A pipeline, with `*0` (skipped like Redis does) in the middle.
  const pipeline = Buffer.concat([...REQUESTS.slice(0, 5).map((c) => command(...c)), Buffer.from('*0\r\n'), command('GET', 'x')]);
  const want = [...REQUESTS.slice(0, 5), ['GET', 'x']];
  const failures: string[] = [];
  for (const c of chunkings(pipeline)) {
    const run = runRequests(c.chunks);
    if (run.error) failures.push(`${c.name}: ${run.error.message}`);
    else if (run.commands.length !== want.length || !run.commands.every((d, i) => sameCommand(d, want[i]!))) {
      failures.push(`${c.name}: wrong commands`);
    }
  }
  t.same(failures, [], 'pipeline');
});

t.test('request framer: zero copy in one chunk, owned copy across chunks', async (t) => {
  const a = command('SET', 'k', 'v');
  const chunk = Buffer.concat([a, a]);
  const run = runRequests([chunk]);
  t.equal(run.commands.length, 2);
  t.equal(run.commands[0]!.raw.buffer, chunk.buffer, 'sliced from the chunk');

  // A straddling command gets a buffer of its own, untouched by what follows.
  const framer = new RespRequestFramer();
  const got: Delivered[] = [];
  const sink = { command: (raw: Buffer, args: Buffer[]) => void got.push({ raw, args }) };
  const big = command('SET', 'k', Buffer.alloc(1000, 0x78));
  const second = command('SET', 'k2', Buffer.alloc(1000, 0x79));
  framer.push(big.subarray(0, 500), sink);
  t.equal(framer.bufferedBytes, 500);
  framer.push(Buffer.concat([big.subarray(500), second.subarray(0, 600)]), sink);
  framer.push(second.subarray(600), sink);
  t.equal(got.length, 2);
  t.ok(got[0]!.raw.equals(big), 'first command intact after the second was framed');
  t.ok(got[1]!.raw.equals(second));
  t.equal(framer.bufferedBytes, 0);
  t.equal(framer.offset, big.length + second.length);
});

t.test('request framer refuses bad requests with Redis-style messages', async (t) => {
  const tooBigLine = 'too big mbulk count string';
  const cases: Array<[string, Buffer, string, Partial<RespRequestLimits>?]> = [
    ['inline command', Buffer.from('PING\r\n'), 'inline commands are not accepted by sluice; send RESP arrays (every Redis client library and redis-cli do)'],
    ['a CR not followed by LF', Buffer.from('\rX'), 'inline commands are not accepted by sluice; send RESP arrays (every Redis client library and redis-cli do)'],
    ['a bulk string alone', Buffer.from('$4\r\nPING\r\n'), 'inline commands are not accepted by sluice; send RESP arrays (every Redis client library and redis-cli do)'],
    ['negative multibulk', Buffer.from('*-1\r\n'), 'invalid multibulk length'],
    ['plus sign', Buffer.from('*+1\r\n$4\r\nPING\r\n'), 'invalid multibulk length'],
    ['space', Buffer.from('* 1\r\n$4\r\nPING\r\n'), 'invalid multibulk length'],
    ['leading zero', Buffer.from('*01\r\n$4\r\nPING\r\n'), 'invalid multibulk length'],
    ['non-digit', Buffer.from('*1x\r\n$4\r\nPING\r\n'), 'invalid multibulk length'],
    ['empty count', Buffer.from('*\r\n'), 'invalid multibulk length'],
    ['LF alone', Buffer.from('*1\n$4\r\nPING\r\n'), 'invalid multibulk length'],
    ['CR without LF', Buffer.from('*1\r$4\r\nPING\r\n'), 'invalid multibulk length'],
    ['negative bulk', Buffer.from('*1\r\n$-1\r\n'), 'invalid bulk length'],
    ['non-digit bulk', Buffer.from('*1\r\n$4x\r\nPING\r\n'), 'invalid bulk length'],
    ['bulk leading zero', Buffer.from('*1\r\n$04\r\nPING\r\n'), 'invalid bulk length'],
    ['not a bulk string', Buffer.from('*1\r\n:4\r\n'), "expected '$', got ':'"],
    ['missing CRLF after argument', Buffer.from('*1\r\n$4\r\nPINGXY'), 'expected CRLF after bulk argument'],
    ['multibulk over max', Buffer.from('*5\r\n'), 'invalid multibulk length', { maxMultibulk: 4 }],
    ['default multibulk max', Buffer.from(`*${1024 * 1024 + 1}\r\n`), 'invalid multibulk length'],
    ['bulk over max', Buffer.from(`*1\r\n$${512 * 1024 * 1024 + 1}\r\n`), 'invalid bulk length'],
    ['unauthenticated multibulk', Buffer.from('*11\r\n'), 'unauthenticated multibulk length', UNAUTHENTICATED_REQUEST_LIMITS],
    ['unauthenticated bulk', Buffer.from('*2\r\n$4\r\nAUTH\r\n$16385\r\n'), 'unauthenticated bulk length', UNAUTHENTICATED_REQUEST_LIMITS],
    ['a count line that never ends', Buffer.from(`*${'1'.repeat(70 * 1024)}`), tooBigLine],
    ['a bulk line that never ends', Buffer.from(`*1\r\n$${'1'.repeat(70 * 1024)}`), 'too big bulk count string'],
    ['command over the query buffer limit', command('SET', 'k', Buffer.alloc(200)), 'command exceeds the query buffer limit', { maxCommandBytes: 100 }],
  ];
  for (const [name, bytes, message, limits] of cases) {
    for (const c of [whole(bytes), byteByByte(bytes), ...splits(bytes, bytes.length > 64 ? [1, 5, 64] : undefined)]) {
      const run = runRequests(c.chunks, limits);
      if (!run.error) {
        t.fail(`${name} (${c.name}): no error`);
        continue;
      }
      if (run.error.message !== `Protocol error: ${message}`) {
        t.equal(run.error.message, `Protocol error: ${message}`, `${name} (${c.name})`);
      }
      if (run.error.code !== ErrorCodes.PROTOCOL_VIOLATION) t.fail(`${name}: code ${run.error.code}`);
    }
    t.pass(name);
  }

  // Commands before the error in the same chunk were delivered.
  const run = runRequests([Buffer.concat([command('PING'), command('GET', 'a'), Buffer.from('GET a\r\n')])]);
  t.equal(run.commands.length, 2);
  t.equal(run.error?.offset, command('PING').length + command('GET', 'a').length);
  const framer = new RespRequestFramer();
  t.throws(() => framer.push(Buffer.from('x'), { command: () => {} }), RespProtocolError);
  t.throws(() => framer.push(command('PING'), { command: () => {} }), RespProtocolError, 'stays failed');
});

t.test('request framer: stricter limits before authentication, switched after', async (t) => {
  const framer = new RespRequestFramer(UNAUTHENTICATED_REQUEST_LIMITS);
  const got: Buffer[][] = [];
  const sink = { command: (_raw: Buffer, args: Buffer[]) => void got.push(args) };
  const token = 'eyJ' + 'a'.repeat(10_000);
  framer.push(command('HELLO', '3', 'AUTH', 'sluice', token), sink);
  t.equal(got.length, 1);
  framer.setLimits(DEFAULT_REQUEST_LIMITS);
  framer.push(command('SET', 'k', Buffer.alloc(100_000)), sink);
  framer.push(command('DEL', 'a', 'b', 'c', 'd', 'e', 'f', 'g', 'h', 'i', 'j', 'k'), sink);
  t.equal(got.length, 3);
});

/** A fake server that frames what real clients send and answers +OK per command. */
async function captureClient(run: (port: number) => Promise<void>): Promise<Delivered[]> {
  const commands: Delivered[] = [];
  const server = createServer((sock) => {
    const framer = new RespRequestFramer();
    sock.on('data', (d: Buffer) => {
      framer.push(d, {
        command: (raw, args) => {
          commands.push({ raw: Buffer.from(raw), args: args.map((a) => Buffer.from(a)) });
          sock.write(replies.OK);
        },
      });
    });
  });
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
  const addr = server.address();
  const port = typeof addr === 'object' && addr ? addr.port : 0;
  try {
    await run(port);
  } finally {
    server.close();
  }
  return commands;
}

t.test('request framer on what real clients send', async (t) => {
  const { Redis } = await import('ioredis');
  const value = Buffer.from('line1\r\nline2\r\n*1\r\n$1\r\nx\r\n');
  const fromIoredis = await captureClient(async (port) => {
    const client = new Redis({ port, host: '127.0.0.1', enableReadyCheck: false, lazyConnect: true, maxRetriesPerRequest: 0 });
    await client.connect();
    await client.set('k', value);
    await client.hset('h', { a: '1', b: Buffer.from([0, 13, 10]) });
    const pipe = client.pipeline();
    for (let i = 0; i < 50; i++) pipe.set(`k${i}`, 'x'.repeat(i * 100));
    await pipe.exec();
    client.disconnect();
  });
  const names = fromIoredis.map((c) => c.args[0]!.toString().toLowerCase());
  t.same(names.slice(-52), ['set', 'hset', ...Array<string>(50).fill('set')]);
  const set = fromIoredis[names.lastIndexOf('hset') - 1]!;
  t.ok(set.args[2]!.equals(value), 'binary value with CRLF arrives intact');

  const fromCli = await captureClient(async (port) => {
    await execFileP('redis-cli', ['-h', '127.0.0.1', '-p', String(port), 'SET', 'k', 'two words'], {
      env: { PATH: process.env.PATH ?? '' },
    });
  });
  t.same(
    fromCli.at(-1)!.args.map((a) => a.toString()),
    ['SET', 'k', 'two words'],
    'redis-cli sends RESP arrays',
  );
});

t.test('reply builders', async (t) => {
  t.equal(replies.simpleString('OK\r\nx').toString(), '+OK x\r\n');
  t.equal(replies.error('no\r\nway').toString(), '-ERR no way\r\n');
  t.equal(replies.error('not allowed', 'NOPERM').toString(), '-NOPERM not allowed\r\n');
  t.throws(() => replies.error('x', 'bad code'));
  t.equal(replies.integer(-42).toString(), ':-42\r\n');
  t.equal(replies.integer(9223372036854775807n).toString(), ':9223372036854775807\r\n');
  t.equal(replies.bulk('héllo', 2).toString(), '$6\r\nhéllo\r\n');
  t.equal(replies.bulk(null, 2).toString(), '$-1\r\n');
  t.equal(replies.bulk(null, 3).toString(), '_\r\n');
  t.equal(replies.nullReply(3).toString(), '_\r\n');
  t.equal(replies.array(null, 2).toString(), '*-1\r\n');
  t.equal(replies.array([replies.integer(1), replies.bulk('a', 3)], 3).toString(), '*2\r\n:1\r\n$1\r\na\r\n');
  const entries: Array<[Buffer, Buffer]> = [[replies.bulk('server', 3), replies.bulk('sluice', 3)]];
  t.equal(replies.map(entries, 3).toString(), '%1\r\n$6\r\nserver\r\n$6\r\nsluice\r\n');
  t.equal(replies.map(entries, 2).toString(), '*2\r\n$6\r\nserver\r\n$6\r\nsluice\r\n');
  t.equal(replies.OK.toString(), '+OK\r\n');
  t.equal(replies.QUEUED.toString(), '+QUEUED\r\n');

  // Everything the builders make is framed as one reply each, and redis-parser agrees on RESP2.
  const built = [
    replies.simpleString('x'),
    replies.error('e'),
    replies.integer(0),
    replies.bulk(Buffer.from('\r\n'), 2),
    replies.bulk(null, 3),
    replies.array([replies.bulk('a', 2), replies.array(null, 2)], 2),
    replies.map(entries, 3),
    replies.map(entries, 2),
  ];
  const all = Buffer.concat(built);
  const run = runReplies([all]);
  t.notOk(run.error);
  t.equal(run.ends.length, built.length);
  const resp2 = Buffer.concat(built.filter((_, i) => i !== 4 && i !== 6));
  t.equal(countWithRedisParser([resp2]), built.length - 2);
});

t.test('an empty line between commands is skipped, as Redis does (redis-cli --pipe sends one)', async (t) => {
  const input = Buffer.from('*1\r\n$4\r\nPING\r\n\r\n*2\r\n$4\r\nECHO\r\n$1\r\nx\r\n');
  for (let cut = 0; cut <= input.length; cut++) {
    const framer = new RespRequestFramer();
    const names: string[] = [];
    const sink = { command: (_raw: Buffer, args: Buffer[]) => names.push(args[0]!.toString()) };
    framer.push(input.subarray(0, cut), sink);
    framer.push(input.subarray(cut), sink);
    if (names.join(',') !== 'PING,ECHO') t.fail(`split at ${cut}: ${names.join(',')}`);
    if (framer.bufferedBytes !== 0) t.fail(`split at ${cut}: ${framer.bufferedBytes} bytes left`);
  }
  t.pass('every split point gives PING then ECHO');
});

t.test('request framer: at each limit a command passes, one past it fails, whole or in pieces', async (t) => {
  // A whole command in one chunk takes the one-pass path (frameWhole); in
  // pieces it takes the state machine: both must draw every line in the same place.
  const at = (bytes: Buffer, limits: Partial<RespRequestLimits>, expected: string | undefined, name: string): void => {
    for (const c of [whole(bytes), byteByByte(bytes), ...splits(bytes, bytes.length > 64 ? [1, 7, 40] : undefined)]) {
      const run = runRequests([...c.chunks, command('PING')], limits);
      if (expected === undefined) {
        if (run.error || run.commands.length !== 2) t.fail(`${name} (${c.name}): ${run.error?.message ?? `${run.commands.length} commands`}`);
      } else if (run.error?.message !== `Protocol error: ${expected}` || run.commands.length !== 0) {
        t.fail(`${name} (${c.name}): ${run.error?.message ?? 'no error'}, ${run.commands.length} commands`);
      }
    }
    t.pass(name);
  };
  const set = command('SET', 'k', Buffer.alloc(100, 0x61));
  at(set, { maxBulkBytes: 100 }, undefined, 'bulk exactly at maxBulkBytes');
  at(set, { maxBulkBytes: 99 }, 'invalid bulk length', 'bulk one byte past maxBulkBytes');
  at(set, { maxCommandBytes: set.length }, undefined, 'command exactly at maxCommandBytes');
  at(set, { maxCommandBytes: set.length - 1 }, 'command exceeds the query buffer limit', 'command one byte past maxCommandBytes');
  at(command('DEL', 'a', 'b', 'c'), { maxMultibulk: 4 }, undefined, 'count exactly at maxMultibulk');
  at(command('DEL', 'a', 'b', 'c', 'd'), { maxMultibulk: 4 }, 'invalid multibulk length', 'count one past maxMultibulk');
  at(command('GET', 'k'), { maxInlineBytes: 2 }, undefined, 'header lines exactly at maxInlineBytes');
  at(command('GET', Buffer.alloc(10, 0x61)), { maxInlineBytes: 2 }, 'too big bulk count string', 'a header line past maxInlineBytes');
  at(Buffer.from('*1\r\n$0000000000000001\r\nx\r\n'), {}, 'invalid bulk length', 'a 16-digit bulk length');
  at(Buffer.from('*1\r\n$0\r\n\r\n'), {}, undefined, 'an empty argument');
  at(Buffer.from('*1\r\n$1\r\nxy\r\n'), {}, 'expected CRLF after bulk argument', 'an argument longer than its length');
});

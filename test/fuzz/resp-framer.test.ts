/**
 * Fuzzes both RESP framers with random garbage and mutated valid traffic,
 * each input fed whole and in random chunks, for SLUICE_FUZZ_SECONDS
 * (default 3) per framer.
 *
 * Oracle: `push` either succeeds or throws RespProtocolError, never anything
 * else; the bytes passed through are a prefix of the input (all of it when
 * nothing was thrown); the framer holds a bounded number of bytes; and the
 * outcome (error or not, replies/commands delivered) does not depend on how
 * the input was chunked.
 */
import t from 'tap';
import { randomBytes } from 'node:crypto';
import { RespProtocolError, RespReplyFramer, RespRequestFramer } from '../../protocols/redis/resp.js';
import * as replies from '../../protocols/redis/replies.js';
import { command, r, randomChunks } from '../helpers/resp-bytes.js';

const SECONDS = Number(process.env.SLUICE_FUZZ_SECONDS ?? 3);
const SEED = Number(process.env.SLUICE_FUZZ_SEED ?? randomBytes(4).readUInt32LE(0));

/** mulberry32: small, seedable, good enough to pick mutations. */
function prng(seed: number): () => number {
  let a = seed >>> 0;
  return () => {
    a = (a + 0x6d2b79f5) >>> 0;
    let x = a;
    x = Math.imul(x ^ (x >>> 15), x | 1);
    x ^= x + Math.imul(x ^ (x >>> 7), x | 61);
    return ((x ^ (x >>> 14)) >>> 0) / 4294967296;
  };
}

const rand = prng(SEED);
const pick = <T>(xs: readonly T[]): T => xs[Math.floor(rand() * xs.length)]!;
const int = (n: number): number => Math.floor(rand() * n);

const REPLY_SEEDS: Buffer[] = [
  r.simple('OK'),
  r.err('ERR unknown command'),
  r.int(-9223372036854775808n),
  r.bulk(Buffer.from('a\r\nb')),
  r.nullBulk(),
  r.nullArray(),
  r.null(),
  r.double('3.141'),
  r.double('-inf'),
  r.double('1.5e+300'),
  r.bool(true),
  r.blobErr('SYNTAX invalid'),
  r.verbatim('txt', 'Some string\n'),
  r.big('1234567999999999999999999999999999999'),
  r.array(r.int(1), r.array(r.bulk('x'), r.null()), r.map(r.simple('k'), r.set(r.int(1), r.int(2)))),
  Buffer.concat([r.attr(r.simple('key-popularity'), r.array(r.bulk('key:123'), r.int(90))), r.bulk('reply')]),
  r.push(r.bulk('invalidate'), r.array(r.bulk('k'))),
  Buffer.concat([Buffer.from('*2\r\n'), r.attr(r.simple('a'), r.int(1)), r.int(2), r.int(3)]),
  r.array(),
  r.map(),
  replies.map([[replies.bulk('server', 3), replies.bulk('redis', 3)]], 2),
  r.bulk(randomBytes(3000)),
];

const REQUEST_SEEDS: Buffer[] = [
  command('PING'),
  command('SET', 'k', Buffer.from('v\r\n*1\r\n')),
  command('HELLO', '3', 'AUTH', 'default', 'pw'),
  command('MSET', 'a', '1', 'b', ''),
  Buffer.from('*0\r\n'),
  command('SET', 'big', randomBytes(2000)),
];

const ALPHABET = Buffer.from('+-:$*_,#!=(%~|>?.;\r\n\r\n0123456789-1tfinaxyz');

function garbage(): Buffer {
  const n = 1 + int(200);
  const out = Buffer.alloc(n);
  const resp = rand() < 0.8;
  for (let i = 0; i < n; i++) out[i] = resp ? pick([...ALPHABET]) : int(256);
  return out;
}

function mutate(seeds: readonly Buffer[]): Buffer {
  let buf = Buffer.concat(Array.from({ length: 1 + int(4) }, () => pick(seeds)));
  const edits = 1 + int(3);
  for (let e = 0; e < edits && buf.length > 0; e++) {
    const at = int(buf.length);
    switch (int(6)) {
      case 0: // flip a byte
        buf = Buffer.from(buf);
        buf[at] = int(256);
        break;
      case 1: // a RESP-ish byte
        buf = Buffer.from(buf);
        buf[at] = pick([...ALPHABET]);
        break;
      case 2: // delete a run
        buf = Buffer.concat([buf.subarray(0, at), buf.subarray(at + 1 + int(4))]);
        break;
      case 3: // insert RESP-ish bytes
        buf = Buffer.concat([buf.subarray(0, at), garbage().subarray(0, 1 + int(6)), buf.subarray(at)]);
        break;
      case 4: // duplicate a run
        buf = Buffer.concat([buf.subarray(0, at), buf.subarray(at, at + 1 + int(20)), buf.subarray(at)]);
        break;
      case 5: // truncate
        buf = buf.subarray(0, at);
        break;
    }
  }
  return buf;
}

interface Outcome {
  threw: boolean;
  delivered: number;
}

function outcomeKey(o: Outcome): string {
  return `${o.threw ? 'error' : 'ok'} after ${o.delivered}`;
}

function fuzzReplies(input: Buffer, chunks: Buffer[]): Outcome {
  const framer = new RespReplyFramer();
  const outs: Buffer[] = [];
  let delivered = 0;
  let lastEnd = 0;
  const sink = {
    passthrough: (b: Buffer) => void outs.push(b),
    replyEnd: (info: { end: number }) => {
      if (info.end <= lastEnd || info.end > input.length) throw new Error(`replyEnd at ${info.end} after ${lastEnd}`);
      lastEnd = info.end;
      delivered++;
    },
  };
  let threw = false;
  try {
    for (const c of chunks) {
      framer.push(c, sink);
      if (framer.bufferedBytes > 128 * 1024) throw new Error(`framer holds ${framer.bufferedBytes} bytes`);
    }
  } catch (err) {
    if (!(err instanceof RespProtocolError)) throw err;
    if (!err.message.startsWith('Protocol error: ') || err.offset < 0 || err.offset > input.length) {
      throw new Error(`bad RespProtocolError: ${err.message} at ${err.offset}`);
    }
    threw = true;
  }
  const out = Buffer.concat(outs);
  if (!input.subarray(0, out.length).equals(out)) throw new Error('passthrough is not a prefix of the input');
  if (!threw && out.length !== input.length) throw new Error('passthrough lost bytes');
  return { threw, delivered };
}

function fuzzRequests(input: Buffer, chunks: Buffer[]): Outcome {
  const framer = new RespRequestFramer({ maxCommandBytes: 64 * 1024, maxBulkBytes: 16 * 1024 });
  let delivered = 0;
  let consumed = 0;
  const sink = {
    command: (raw: Buffer, args: Buffer[]) => {
      if (raw[0] !== 0x2a || args.length === 0) throw new Error('delivered something that is not a command');
      if (!args.every((a) => a.buffer === raw.buffer)) throw new Error('argument outside raw');
      delivered++;
      consumed += raw.length;
    },
  };
  let threw = false;
  try {
    for (const c of chunks) {
      framer.push(c, sink);
      if (framer.bufferedBytes > 2 * 64 * 1024) throw new Error(`framer holds ${framer.bufferedBytes} bytes`);
    }
  } catch (err) {
    if (!(err instanceof RespProtocolError)) throw err;
    if (!err.message.startsWith('Protocol error: ')) throw new Error(`bad RespProtocolError: ${err.message}`);
    threw = true;
  }
  if (consumed > input.length) throw new Error('delivered more bytes than came in');
  return { threw, delivered };
}

function fuzz(
  name: string,
  seeds: readonly Buffer[],
  run: (input: Buffer, chunks: Buffer[]) => Outcome,
): { iterations: number; failures: string[] } {
  const failures: string[] = [];
  const deadline = Date.now() + SECONDS * 1000;
  let iterations = 0;
  while (Date.now() < deadline && failures.length < 5) {
    iterations++;
    const roll = rand();
    const input = roll < 0.2 ? garbage() : roll < 0.3 ? Buffer.concat([pick(seeds), pick(seeds)]) : mutate(seeds);
    try {
      const reference = run(input, [input]);
      for (const chunks of [randomChunks(input, rand, 1 + int(16)), randomChunks(input, rand, 1)]) {
        const o = run(input, chunks);
        if (outcomeKey(o) !== outcomeKey(reference)) {
          throw new Error(`chunked: ${outcomeKey(o)}, whole: ${outcomeKey(reference)}`);
        }
      }
    } catch (err) {
      failures.push(`${name} seed ${SEED} input ${input.toString('base64')}: ${(err as Error).stack ?? String(err)}`);
    }
  }
  return { iterations, failures };
}

t.test(`reply framer fuzz (${SECONDS}s, SLUICE_FUZZ_SEED=${SEED})`, async (t) => {
  // Unmutated seeds are valid: no error, one replyEnd per reply.
  for (const s of REPLY_SEEDS) t.notOk(fuzzReplies(s, [s]).threw);
  const { iterations, failures } = fuzz('reply', REPLY_SEEDS, fuzzReplies);
  t.same(failures, [], `${iterations} inputs`);
});

t.test(`request framer fuzz (${SECONDS}s, SLUICE_FUZZ_SEED=${SEED})`, async (t) => {
  for (const s of REQUEST_SEEDS) t.notOk(fuzzRequests(s, [s]).threw);
  const { iterations, failures } = fuzz('request', REQUEST_SEEDS, fuzzRequests);
  t.same(failures, [], `${iterations} inputs`);
});

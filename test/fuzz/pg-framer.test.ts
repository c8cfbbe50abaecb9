/**
 * Fuzz the PostgreSQL framer: random message streams (mostly well formed,
 * with absurd and negative lengths, garbage and startup packets mixed in),
 * random inspect sets, random limits, random chunkings.
 *
 * Oracle, for every input:
 *   - push either succeeds or throws PgProtocolError with one of our two
 *     codes; nothing else ever escapes;
 *   - what reached the sink is exactly the input up to the offending
 *     message's offset (when nothing was refused: the whole input but the
 *     bytes of a message the end of the input cut off, still held);
 *   - a random chunking gives the same output, messages and error as the
 *     input pushed whole;
 *   - memory stays bounded: the framer never holds more than
 *     maxMessageBytes (+ the chunk being framed).
 *
 * Time budget: SLUICE_FUZZ_SECONDS (default 3). Replay: SLUICE_FUZZ_SEED.
 */
import t from 'tap';
import { PgFramer, PgProtocolError, type FramerSink } from '../../protocols/postgres/framer.js';
import { ErrorCodes } from '../../src/errors.js';
import { PgBytes, prng, randomChunks } from '../helpers/pg-bytes.js';

const seconds = Number(process.env.SLUICE_FUZZ_SECONDS ?? 3);
const seed = Number(process.env.SLUICE_FUZZ_SEED ?? (Date.now() & 0x7fffffff));

interface Case {
  input: Buffer;
  maxMessageBytes: number;
  startup: boolean;
  inspect: number[];
}

interface Outcome {
  out: Buffer;
  messages: string[];
  error: { code: string; offset: number } | null;
  /** Bytes still held at the end of the input (a message cut off by the end of the input). */
  held: number;
  /** First violation of the oracle seen while feeding, if any. */
  problem: string | null;
}

const ABSURD_LENGTHS = [0x7fffffff, -1, -0x80000000, 0, 1, 3, 4, 0x10000, 0x40000000];

function generate(random: () => number): Case {
  const int = (n: number): number => Math.floor(random() * n);
  const maxMessageBytes = 5 + int(random() < 0.2 ? 20 : 4096);
  const startup = random() < 0.3;
  const inspect: number[] = [];
  const inspectCount = int(4);
  for (let i = 0; i < inspectCount; i++) inspect.push(random() < 0.5 ? int(256) : 0x41 + int(26));
  const parts: Buffer[] = [];
  const count = 1 + int(12);
  for (let i = 0; i < count; i++) {
    const r = random();
    if (i === 0 && startup) {
      // A startup-phase packet: usually plausible, sometimes not.
      const code = random() < 0.3 ? 80877103 : random() < 0.5 ? 196608 : int(2 ** 31);
      const body = new PgBytes().int32(code).fill(int(40), 0);
      parts.push(random() < 0.8 ? body.startup() : body.startup(ABSURD_LENGTHS[int(ABSURD_LENGTHS.length)]!));
    } else if (r < 0.9) {
      const type = random() < 0.5 ? 0x41 + int(26) : int(256);
      parts.push(new PgBytes().fill(int(random() < 0.9 ? 64 : 6000), int(256)).typed(type));
    } else if (r < 0.94) {
      // A header claiming an absurd or negative length, with some body after it.
      parts.push(new PgBytes().fill(int(32)).typed(int(256), ABSURD_LENGTHS[int(ABSURD_LENGTHS.length)]!));
    } else if (r < 0.97) {
      // Garbage.
      const junk = Buffer.allocUnsafe(int(24));
      for (let j = 0; j < junk.length; j++) junk[j] = int(256);
      parts.push(junk);
    } else {
      // An 8-byte SSLRequest where a typed message belongs, or an empty body.
      parts.push(random() < 0.5 ? new PgBytes().int32(80877103).startup() : new PgBytes().typed(int(256)));
    }
  }
  return { input: Buffer.concat(parts), maxMessageBytes, startup, inspect };
}

function feed(c: Case, chunks: Iterable<Buffer>): Outcome {
  const framer = new PgFramer({ maxMessageBytes: c.maxMessageBytes, startup: c.startup, inspect: c.inspect });
  const out: Buffer[] = [];
  const messages: string[] = [];
  let problem: string | null = null;
  const sink: FramerSink = {
    passthrough(bytes) {
      if (bytes.length === 0) problem ??= 'empty pass-through call';
      out.push(Buffer.from(bytes));
    },
    message(type, bytes) {
      if (bytes.length > c.maxMessageBytes) problem ??= `message of ${bytes.length} bytes over the limit`;
      if (type !== 0 && bytes[0] !== type) problem ??= 'message type does not match its first byte';
      out.push(Buffer.from(bytes));
      messages.push(`${type}:${bytes.toString('hex')}`);
    },
  };
  let error: Outcome['error'] = null;
  for (const chunk of chunks) {
    try {
      framer.push(chunk, sink);
    } catch (err) {
      if (!(err instanceof PgProtocolError)) {
        problem ??= `non-protocol error escaped: ${(err as Error)?.stack ?? String(err)}`;
        break;
      }
      if (err.code !== ErrorCodes.PROTOCOL_VIOLATION && err.code !== ErrorCodes.MESSAGE_TOO_LARGE) {
        problem ??= `unexpected code ${err.code}`;
      }
      error = { code: err.code, offset: err.offset };
      break;
    }
    // Between pushes the framer holds at most one partial message, which fits the limit.
    if (framer.bufferCapacity > c.maxMessageBytes) problem ??= `holds ${framer.bufferCapacity} bytes`;
    if (framer.bufferedBytes > c.maxMessageBytes) problem ??= `buffers ${framer.bufferedBytes} bytes`;
  }
  return { out: Buffer.concat(out), messages, error, held: error === null ? framer.bufferedBytes : 0, problem };
}

t.test(`fuzz the PostgreSQL framer for ${seconds}s (seed ${seed})`, async (t) => {
  const random = prng(seed);
  const deadline = Date.now() + seconds * 1000;
  let cases = 0;
  let refused = 0;
  let failures = 0;
  while (Date.now() < deadline && failures < 5) {
    cases++;
    const c = generate(random);
    const whole = feed(c, [c.input]);
    const chunked = feed(c, randomChunks(c.input, random, 1 + Math.floor(random() * 40)));
    const what = `case ${cases}: ${JSON.stringify({ ...c, input: c.input.toString('hex') })}`;
    const problems: string[] = [];
    for (const [mode, o] of [['whole', whole], ['chunked', chunked]] as const) {
      if (o.problem !== null) problems.push(`${mode}: ${o.problem}`);
      const expectedLength = o.error === null ? c.input.length - o.held : o.error.offset;
      if (o.error !== null && (o.error.offset < 0 || o.error.offset >= c.input.length)) problems.push(`${mode}: offset ${o.error.offset} outside the input`);
      else if (!o.out.equals(c.input.subarray(0, expectedLength))) problems.push(`${mode}: output is not the input up to ${expectedLength}`);
    }
    if (JSON.stringify(whole.error) !== JSON.stringify(chunked.error)) problems.push(`errors differ: ${JSON.stringify([whole.error, chunked.error])}`);
    if (whole.messages.join() !== chunked.messages.join()) problems.push('inspected messages differ between whole and chunked');
    if (whole.held !== chunked.held) problems.push(`held bytes differ: ${whole.held} vs ${chunked.held}`);
    if (whole.error !== null) refused++;
    if (problems.length > 0) {
      failures++;
      t.fail(`${problems.join('; ')} (${what})`);
    }
  }
  t.ok(cases > 0, `${cases} cases, ${refused} refused with PgProtocolError`);
  t.equal(failures, 0, 'no oracle violations');
});

t.test('pure random bytes: only PgProtocolError, bounded memory', async (t) => {
  const random = prng(seed ^ 0x5bd1e995);
  const deadline = Date.now() + Math.max(0.5, seconds / 3) * 1000;
  let cases = 0;
  let bad = 0;
  while (Date.now() < deadline && bad < 5) {
    cases++;
    const input = Buffer.allocUnsafe(1 + Math.floor(random() * 300));
    for (let i = 0; i < input.length; i++) input[i] = Math.floor(random() * 256);
    const c: Case = { input, maxMessageBytes: 5 + Math.floor(random() * 200), startup: random() < 0.5, inspect: [Math.floor(random() * 256)] };
    const o = feed(c, randomChunks(input, random, 16));
    if (o.problem !== null) {
      bad++;
      t.fail(`${o.problem} (input ${input.toString('hex')}, ${JSON.stringify({ ...c, input: undefined })})`);
    }
  }
  t.equal(bad, 0, `${cases} random inputs`);
});

/**
 * Session recording: writer -> reader round trip (byte-exact per direction),
 * the on-disk layout, the recording key, CRC-32, and the credential scrubbers.
 */
import { randomBytes } from 'node:crypto';
import { chmodSync, mkdirSync, mkdtempSync, readFileSync, rmSync, statSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import * as zlib from 'node:zlib';
import t, { type Test } from 'tap';
import { MAGIC, RECORD_OVERHEAD, RECORD_PREFIX, RecordType, crc32, crc32Table, encodeRecord, sealRecords, stageRecord, type RecordingMeta } from '../../src/recording/format.js';
import { keyIdOf, loadRecordingPublicKeys, openRecordingKey } from '../../src/recording/keys.js';
import { readRecording } from '../../src/recording/reader.js';
import { sealThread } from '../../src/recording/seal-thread.js';
import { unwritten } from '../../src/recording/append.js';
import { REDACTED, encodeRespCommand, scrubPgPasswordMessage, scrubRedisAuth } from '../../src/recording/scrub.js';
import { verifyRecording } from '../../src/recording/verify.js';
import { RecordingWriter } from '../../src/recording/writer.js';

function tempDir(t: Test): string {
  const d = mkdtempSync(join(tmpdir(), 'sluice-rec-'));
  t.teardown(() => rmSync(d, { recursive: true, force: true }));
  return d;
}

/** Waits until the file at `path` has grown: a flush reached the disk (the seal thread appends asynchronously). */
async function flushed(path: string): Promise<void> {
  const before = statSync(path).size;
  for (let waited = 0; statSync(path).size === before; waited += 5) {
    if (waited > 5000) throw new Error(`no flush reached ${path} within 5 s`);
    await new Promise((r) => setTimeout(r, 5));
  }
}

function meta(over: Partial<RecordingMeta> = {}): RecordingMeta {
  return {
    sessionId: 'sess_' + randomBytes(6).toString('hex'),
    target: 'app-db',
    protocol: 'postgres',
    subject: 'ci-job',
    groups: ['ci'],
    issuer: 'https://issuer.example',
    tokenIdHash: 'ab'.repeat(32),
    clientAddress: '127.0.0.1:5555',
    startedAt: '2025-03-04T05:06:07.000Z',
    ...over,
  };
}

t.test('CRC-32: the table fallback agrees with zlib', async (t) => {
  for (const len of [0, 1, 7, 100, 4096]) {
    const b = randomBytes(len);
    t.equal(crc32Table(b), crc32(b), `length ${len}`);
  }
  t.equal(crc32Table(Buffer.from('123456789')), 0xcbf43926, 'the standard check value');
  const [a, b] = [randomBytes(37), randomBytes(300)];
  t.equal(crc32Table(b, crc32Table(a)), crc32(Buffer.concat([a, b])), 'continued from an earlier value, as zlib continues');
  t.equal(typeof (zlib as { crc32?: unknown }).crc32, 'function', 'this Node has zlib.crc32 (the native path is used)');
});

t.test('CRC-32 of sealed records: zlib\'s value at every payload length around the table steps and the native cut-over', async (t) => {
  // Lengths 0 to 300 cover every remainder of the 16-byte table step and both sides of the
  // switch to zlib.crc32; the offsets put records at every alignment, as in a slab.
  let wrong = 0;
  let firstWrong = '';
  let checked = 0;
  for (let len = 0; len <= 300; len++) {
    const payload = randomBytes(len);
    for (const offset of [0, 1, 2, 3, 5]) {
      const buf = Buffer.alloc(offset + RECORD_OVERHEAD + len);
      const end = stageRecord(buf, offset, RecordType.data, 1, len, 1234567, payload);
      sealRecords(buf, offset, end);
      const crcAt = end - RECORD_OVERHEAD + RECORD_PREFIX;
      if (buf.readUInt32BE(crcAt) !== crc32(buf.subarray(offset, crcAt)) && wrong++ === 0) firstWrong = `payload ${len} at offset ${offset}`;
      checked++;
    }
  }
  t.equal(checked, 301 * 5);
  t.equal(wrong, 0, `every record's CRC is zlib's CRC-32 of its prefix and payload${firstWrong ? ` (first wrong: ${firstWrong})` : ''}`);
});

t.test('round trip: every chunk, in order, byte-exact per direction', async (t) => {
  const stateDir = tempDir(t);
  const key = await openRecordingKey(stateDir);
  const m = meta();
  const failures: Error[] = [];
  const w = await RecordingWriter.open({ stateDir, meta: m, key, flushIntervalMs: 5, checkpointEveryRecords: 7, onFailure: (e) => failures.push(e) });
  t.equal(w.path, join(stateDir, 'recordings', '2025', '03', '04', `${m.sessionId}.sluicerec`), 'YYYY/MM/DD/<id>.sluicerec from startedAt (UTC)');
  t.equal(statSync(w.path).mode & 0o777, 0o600, 'the file is owner-only');

  const sent: { dir: 'client' | 'server'; bytes: Buffer }[] = [];
  for (let i = 0; i < 200; i++) {
    const dir = i % 3 === 0 ? 'client' : 'server';
    // Sizes from 0 to beyond a slab's quarter, to cover both staging paths.
    const size = i === 50 ? 300 * 1024 : (i * 37) % 5000;
    const bytes = randomBytes(size);
    sent.push({ dir, bytes });
    const reused = Buffer.from(bytes);
    w.record(dir, reused);
    reused.fill(0); // the writer copied: the caller may reuse its buffer
    if (i % 50 === 0) await flushed(w.path); // let timer flushes happen mid-stream
  }
  const res = await w.close({ closeReason: 'client closed' });
  t.same(failures, []);
  t.equal(res.complete, true);
  t.equal(res.size, statSync(w.path).size, 'size is the file size');
  t.ok(res.recordCount > 200, 'data records plus checkpoints');

  const reader = readRecording(w.path);
  const data: { dir: string; bytes: Buffer }[] = [];
  const types = new Set<string>();
  let lastMicros = 0;
  let prevSeq = -1;
  for await (const e of reader) {
    types.add(e.type);
    t.equal(e.seq, prevSeq + 1, 'sequence numbers are consecutive');
    prevSeq = e.seq;
    if (e.micros < lastMicros) t.fail('micros are monotonic');
    lastMicros = e.micros;
    if (e.type === 'data') data.push({ dir: e.direction, bytes: e.bytes });
  }
  t.equal(reader.complete, true, 'the footer was read');
  t.equal(reader.header?.sessionId, m.sessionId);
  t.equal(reader.header?.keyId, key.keyId);
  t.equal(reader.header?.subject, 'ci-job');
  t.same([...types].sort(), ['checkpoint', 'data', 'footer']);
  t.equal(data.length, sent.length, 'every chunk is a record');
  t.ok(data.every((d, i) => d.dir === sent[i]!.dir && d.bytes.equals(sent[i]!.bytes)), 'chunks equal, in order, with their direction');
  for (const dir of ['client', 'server'] as const) {
    const expected = Buffer.concat(sent.filter((s) => s.dir === dir).map((s) => s.bytes));
    t.ok((await readRecording(w.path).bytesOf(dir)).equals(expected), `${dir} stream byte-exact`);
  }
  t.equal(res.bytesClientToGateway, Buffer.concat(sent.filter((s) => s.dir === 'client').map((s) => s.bytes)).length);

  const v = await verifyRecording(w.path, await loadRecordingPublicKeys(stateDir));
  t.same({ ok: v.ok, complete: v.complete, records: v.records }, { ok: true, complete: true, records: res.recordCount });
  t.equal(v.footer?.finalChain, res.finalHash, 'the footer signs the final hash close() returned');
  t.equal(v.footer?.closeReason, 'client closed');

  const raw = readFileSync(w.path);
  t.ok(raw.subarray(0, MAGIC.length).equals(MAGIC), 'starts with the magic');
  t.equal(raw.subarray(raw.length - 12, raw.length - 4).toString('latin1'), 'SLUICEND', 'ends with the trailer');
});

t.test('the recording key: its directory is made private, and a key others can read is refused', async (t) => {
  const stateDir = mkdtempSync(join(tmpdir(), 'sluice-key-'));
  t.teardown(() => rmSync(stateDir, { recursive: true, force: true }));
  const dir = join(stateDir, 'recording-key');
  mkdirSync(dir, { mode: 0o755 });
  chmodSync(dir, 0o755);
  await openRecordingKey(stateDir);
  t.equal(statSync(dir).mode & 0o777, 0o700, 'a directory made by someone else is closed to others');
  t.equal(statSync(join(dir, 'private.pem')).mode & 0o777, 0o600);
  chmodSync(join(dir, 'private.pem'), 0o644);
  await t.rejects(openRecordingKey(stateDir), { code: 'SLUICE_RECORDING_KEY_FAILED', message: /accessible by other users \(mode 644\); run chmod 600/ });
});

t.test('an empty session records a header, a footer and nothing else', async (t) => {
  const stateDir = tempDir(t);
  const key = await openRecordingKey(stateDir);
  const w = await RecordingWriter.open({ stateDir, meta: meta(), key, onFailure: () => t.fail('no failure') });
  const res = await w.close({ closeReason: 'idle' });
  t.equal(res.recordCount, 0);
  const v = await verifyRecording(w.path, await loadRecordingPublicKeys(stateDir));
  t.same({ ok: v.ok, complete: v.complete, records: v.records }, { ok: true, complete: true, records: 0 });
});

t.test('a session id that is not a file name is refused', async (t) => {
  const stateDir = tempDir(t);
  const key = await openRecordingKey(stateDir);
  await t.rejects(RecordingWriter.open({ stateDir, meta: meta({ sessionId: '../../etc/x' }), key, onFailure: () => undefined }), {
    code: 'SLUICE_RECORDING_WRITE_FAILED',
  });
});

t.test('recording key: created once, 0600, stable id, race-safe', async (t) => {
  const stateDir = tempDir(t);
  const keys = await Promise.all(Array.from({ length: 8 }, () => openRecordingKey(stateDir)));
  t.equal(new Set(keys.map((k) => k.keyId)).size, 1, 'concurrent first uses agree on one key');
  t.match(keys[0]!.keyId, /^[0-9a-f]{16}$/);
  t.equal(keyIdOf(keys[0]!.publicKey), keys[0]!.keyId);
  t.equal(statSync(join(stateDir, 'recording-key', 'private.pem')).mode & 0o777, 0o600);
  const again = await openRecordingKey(stateDir);
  t.equal(again.keyId, keys[0]!.keyId, 'reopening reads the same key');
  const pub = await loadRecordingPublicKeys(stateDir);
  t.same([...pub.keys()], [again.keyId]);
});

t.test('scrubPgPasswordMessage: same shape, no secret', async (t) => {
  const msg = (content: Buffer): Buffer => {
    const b = Buffer.alloc(5 + content.length);
    b[0] = 0x70;
    b.writeUInt32BE(4 + content.length, 1);
    content.copy(b, 5);
    return b;
  };
  const token = 'eyJhbGciOiJFZERTQSJ9.secret-token.sig';
  const pw = scrubPgPasswordMessage(msg(Buffer.from(token + '\0')));
  t.same(pw, msg(Buffer.from(REDACTED + '\0')), 'PasswordMessage: [redacted] NUL, length rewritten');

  const data = Buffer.from('n,,n=,r=clientnonce-secretish');
  const len = Buffer.alloc(4);
  len.writeInt32BE(data.length);
  const init = scrubPgPasswordMessage(msg(Buffer.concat([Buffer.from('SCRAM-SHA-256\0'), len, data])));
  const rlen = Buffer.alloc(4);
  rlen.writeInt32BE(REDACTED.length);
  t.same(init, msg(Buffer.concat([Buffer.from('SCRAM-SHA-256\0'), rlen, Buffer.from(REDACTED)])), 'SASLInitialResponse keeps its mechanism');

  const resp = scrubPgPasswordMessage(msg(Buffer.from('c=biws,r=nonce,p=proof-secret')));
  t.same(resp, msg(Buffer.from(REDACTED)), 'SASLResponse: content replaced');
  for (const out of [pw, init, resp]) {
    t.equal(out.readUInt32BE(1), out.length - 1, 'length field matches');
    t.notOk(out.includes('secret'), 'no secret left');
  }
  const q = Buffer.from('Q\0\0\0\x0dSELECT 1\0', 'latin1');
  t.same(scrubPgPasswordMessage(q), q, 'not a p message: unchanged');
});

t.test('scrubRedisAuth: the password becomes [redacted], the shape stays', async (t) => {
  const b = (s: string) => Buffer.from(s);
  t.equal(scrubRedisAuth([b('AUTH'), b('tok-secret')]).toString(), '*2\r\n$4\r\nAUTH\r\n$10\r\n[redacted]\r\n');
  t.equal(scrubRedisAuth([b('auth'), b('alice'), b('tok-secret')]).toString(), '*3\r\n$4\r\nauth\r\n$5\r\nalice\r\n$10\r\n[redacted]\r\n');
  t.equal(
    scrubRedisAuth([b('HELLO'), b('3'), b('AUTH'), b('alice'), b('tok-secret'), b('SETNAME'), b('ci')]).toString(),
    encodeRespCommand([b('HELLO'), b('3'), b('AUTH'), b('alice'), b(REDACTED), b('SETNAME'), b('ci')]).toString(),
  );
  t.equal(scrubRedisAuth([b('GET'), b('k')]).toString(), '*2\r\n$3\r\nGET\r\n$1\r\nk\r\n', 'other commands unchanged');
});

t.test('scrubRedisAuth: HELLO walked as Redis reads it, refused forms scrubbed whole', async (t) => {
  const b = (s: string) => Buffer.from(s);
  const scrubbed = (...args: string[]) => scrubRedisAuth(args.map(b));
  const expect = (...args: string[]) => encodeRespCommand(args.map(b));
  const cases: Array<[string[], string[], string]> = [
    [['HELLO', '3', 'SETNAME', 'auth', 'AUTH', 'lbl', 'tok-secret'], ['HELLO', '3', 'SETNAME', 'auth', 'AUTH', 'lbl', REDACTED], 'a client named "auth" is not the keyword'],
    [['HELLO', '3', 'SETNAME', 'AUTH', 'AUTH', 'lbl', 'tok-secret'], ['HELLO', '3', 'SETNAME', 'AUTH', 'AUTH', 'lbl', REDACTED], 'nor one named "AUTH"'],
    [['HELLO', '4', 'AUTH', 'u', 'tok-secret'], ['HELLO', '4', 'AUTH', 'u', REDACTED], 'an unsupported version (refused)'],
    [['HELLO', 'AUTH', 'u', 'tok-secret'], ['HELLO', 'AUTH', 'u', REDACTED], 'no version (refused)'],
    [['HELLO', '3', 'AUTH', 'u', 'tok-secret', 'SETNAME'], ['HELLO', '3', 'AUTH', 'u', REDACTED, REDACTED], 'a trailing option without its value'],
    [['HELLO', '3', 'tok-secret'], ['HELLO', '3', REDACTED], 'an argument that is no option'],
    [['HELLO', '3', 'AUTH', 'tok-secret'], ['HELLO', '3', REDACTED, REDACTED], 'AUTH short of its password'],
    [['AUTH', 'u', 'tok-secret', 'x'], ['AUTH', REDACTED, REDACTED, REDACTED], 'AUTH with too many arguments (refused)'],
    [['HELLO', '3'], ['HELLO', '3'], 'nothing to scrub'],
  ];
  for (const [args, want, what] of cases) t.equal(scrubbed(...args).toString(), expect(...want).toString(), what);
});

t.test('record overhead is what the format says', async (t) => {
  t.equal(RECORD_OVERHEAD, 22, 'u8 type, u8 dir, u32 seq, u64 micros, u32 length, u32 crc');
});

t.test('records staged without their CRC and sealed later are the records encodeRecord makes', async (t) => {
  // Both CRC paths: the table loop (payloads up to 128 bytes) and zlib beyond; both copy paths
  // (TypedArray#set below 192 bytes, Buffer#fill from there), into ordinary memory and into a
  // SharedArrayBuffer as the writer's slabs are.
  const payloads = [0, 1, 5, 127, 128, 129, 191, 192, 193, 5000, 70_000].map((n) => randomBytes(n));
  const size = payloads.reduce((sum, p) => sum + RECORD_OVERHEAD + p.length, 0);
  const direct = Buffer.concat(payloads.map((p, i) => encodeRecord(RecordType.data, i % 2, i, 1000 * i, p)));
  for (const [memory, staged] of [
    ['ordinary memory', Buffer.alloc(size + 8, 0xaa)],
    ['a SharedArrayBuffer', Buffer.from(new SharedArrayBuffer(size + 8)).fill(0xaa)],
  ] as const) {
    let b = 4; // not at the start of its buffer, like a run in the middle of a slab
    payloads.forEach((p, i) => {
      b = stageRecord(staged, b, RecordType.data, i % 2, i, 1000 * i, p);
    });
    t.equal(b - 4, direct.length, `${memory}: the same length`);
    t.not(staged.subarray(4, b).toString('hex'), direct.toString('hex'), `${memory}: the CRCs are not there before sealing`);
    let at = 4;
    const copied = payloads.every((p) => {
      const ok = staged.subarray(at + RECORD_PREFIX, at + RECORD_PREFIX + p.length).equals(p);
      at += RECORD_OVERHEAD + p.length;
      return ok;
    });
    t.ok(copied, `${memory}: every payload copied as it was`);
    t.equal(sealRecords(staged, 4, b), payloads.length, `${memory}: every record sealed`);
    t.equal(staged.subarray(4, b).toString('hex'), direct.toString('hex'), `${memory}: byte for byte the same records`);
    t.equal(staged.readUInt32BE(0), 0xaaaaaaaa, `${memory}: nothing before the run is touched`);
    t.equal(staged.readUInt32BE(b), 0xaaaaaaaa, `${memory}: nothing after the run is touched`);
    t.throws(() => sealRecords(staged, 4, b - 1), RangeError, `${memory}: a run that ends inside a record is refused`);
  }
});

t.test('after a short writev, what is left to append is exactly the unwritten bytes', async (t) => {
  const bufs = [Buffer.from('abc'), Buffer.from('defg'), Buffer.from('h')];
  const left = (n: number) => Buffer.concat(unwritten(bufs, n)).toString();
  t.equal(left(0), 'abcdefgh');
  t.equal(left(2), 'cdefgh', 'inside the first buffer');
  t.equal(left(3), 'defgh', 'at a buffer boundary');
  t.equal(left(5), 'fgh', 'inside the second');
  t.equal(left(8), '', 'all written');
  t.equal(unwritten(bufs, 3)[0], bufs[1], 'a buffer not begun is passed on as it is, not copied');
});

t.test('a second batch of one recording while its first is in flight is refused, and the first answered as usual', async (t) => {
  const stateDir = tempDir(t);
  const key = await openRecordingKey(stateDir);
  // An open writer keeps the thread, and this process, alive while the batches below are answered.
  const w = await RecordingWriter.open({ stateDir, meta: meta(), key, onFailure: () => t.fail('no failure') });
  const seal = sealThread();
  const writer = 2_000_000_000; // no writer has this id: the thread answers the first batch with its own error
  const [first, second] = await Promise.all([seal.seal({ writer, pieces: [] }), seal.seal({ writer, pieces: [] })]);
  t.match(first.error?.message, /no such recording open/, 'the first batch gets its own answer');
  t.match(second.error?.message, /while the previous one of its recording was in flight/, 'the second is refused at once');
  t.equal((await w.close({ closeReason: 'done' })).complete, true, 'other recordings are not disturbed');
});

t.test('the seal thread dies mid-session: the recording fails closed, and the next one starts a new thread', async (t) => {
  const stateDir = tempDir(t);
  const key = await openRecordingKey(stateDir);
  const failures: Error[] = [];
  const w = await RecordingWriter.open({ stateDir, meta: meta(), key, flushIntervalMs: 5, onFailure: (e) => failures.push(e) });
  w.record('client', Buffer.from('before the thread died'));
  await flushed(w.path);
  await sealThread().terminate();
  w.record('server', Buffer.from('after the thread died'));
  for (let i = 0; i < 200 && failures.length === 0; i++) await new Promise((r) => setTimeout(r, 5));
  t.equal(failures.length, 1, 'the session is told to end');
  t.match(String((failures[0] as { code?: string }).code), 'SLUICE_RECORDING_WRITE_FAILED');
  t.match(failures[0]!.message, /seal thread/);
  t.equal(w.failed, true);
  const res = await w.close({ closeReason: 'ended' });
  t.equal(res.complete, false, 'no footer: the recording is incomplete');
  const v = await verifyRecording(w.path, await loadRecordingPublicKeys(stateDir));
  t.equal(v.ok, true, 'what was written before still verifies');
  t.equal(v.complete, false);
  t.equal((await readRecording(w.path).bytesOf('client')).toString(), 'before the thread died');

  const next = await RecordingWriter.open({ stateDir, meta: meta(), key, onFailure: () => t.fail('no failure') });
  next.record('client', Buffer.from('a new session'));
  const res2 = await next.close({ closeReason: 'done' });
  t.equal(res2.complete, true, 'a new thread serves the next recording');
  t.equal((await verifyRecording(next.path, await loadRecordingPublicKeys(stateDir))).ok, true);
});

t.test('writers share one flush tick per interval: each is flushed, and closing one leaves the others flushing', async (t) => {
  const stateDir = tempDir(t);
  const key = await openRecordingKey(stateDir);
  const open = () => RecordingWriter.open({ stateDir, meta: meta(), key, flushIntervalMs: 20, onFailure: () => t.fail('no failure') });
  const [a, b] = [await open(), await open()];
  const sizeA = statSync(a.path).size;
  const sizeB = statSync(b.path).size;
  /** Resolves once the file holds more than `size` bytes, without close() (the tick flushed it). */
  const flushed = async (w: RecordingWriter, size: number) => {
    for (let i = 0; i < 200 && statSync(w.path).size <= size; i++) await new Promise((r) => setTimeout(r, 10));
    return statSync(w.path).size > size;
  };
  a.record('client', Buffer.from('to a'));
  b.record('client', Buffer.from('to b'));
  t.ok(await flushed(a, sizeA), 'the first writer was flushed by the tick');
  t.ok(await flushed(b, sizeB), 'the second writer was flushed by the tick');
  await a.close({ closeReason: 'done' });
  const before = statSync(b.path).size;
  b.record('server', Buffer.from('after a closed'));
  t.ok(await flushed(b, before), 'still flushed after the other writer closed');
  await b.close({ closeReason: 'done' });
  t.equal((await readRecording(b.path).bytesOf('server')).toString(), 'after a closed');
});

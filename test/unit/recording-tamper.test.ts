/**
 * verify detects every kind of tampering and names where: a flipped byte
 * anywhere, a deleted, reordered or duplicated record, a truncated tail, two
 * sessions spliced, a swapped header, a record altered with its CRC
 * recomputed (its content, or the time of a signed record), and a
 * recording signed by a key the gateway does not know.
 */
import { generateKeyPairSync, randomBytes } from 'node:crypto';
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import t from 'tap';
import { RECORD_PREFIX, crc32, type RecordingMeta } from '../../src/recording/format.js';
import { keyIdOf, loadRecordingPublicKeys, openRecordingKey, type RecordingKey } from '../../src/recording/keys.js';
import { readRecording } from '../../src/recording/reader.js';
import { describeVerify, verifyRecording, type PublicKeys } from '../../src/recording/verify.js';
import { RecordingWriter } from '../../src/recording/writer.js';

const stateDir = mkdtempSync(join(tmpdir(), 'sluice-tamper-'));
t.teardown(() => rmSync(stateDir, { recursive: true, force: true }));

interface Made {
  path: string;
  bytes: Buffer;
  /** [offset, end) of each record, footer included; header is [0, headerEnd). */
  spans: { seq: number; type: string; start: number; end: number }[];
  headerEnd: number;
}

async function make(sessionId: string, key: RecordingKey, records = 12, seed = 1): Promise<Made> {
  const meta: RecordingMeta = {
    sessionId,
    target: 'app-db',
    protocol: 'redis',
    subject: 'agent-7',
    groups: [],
    issuer: 'https://issuer.example',
    startedAt: '2025-06-01T00:00:00.000Z',
  };
  const w = await RecordingWriter.open({ stateDir, meta, key, checkpointEveryRecords: 4, flushIntervalMs: 1, onFailure: () => undefined });
  for (let i = 0; i < records; i++) {
    w.record(i % 2 ? 'server' : 'client', Buffer.from(`${seed}:record ${i} ${'x'.repeat(i)}`));
    // One flush per record, so checkpoints fall every 4 records: on a loaded machine a 3 ms wait
    // alone let records share a flush, and the fixture came out with fewer checkpoints.
    do await new Promise((r) => setTimeout(r, 3));
    while (w.backlogBytes > 0);
  }
  await w.close({ closeReason: 'done' });
  const bytes = readFileSync(w.path);
  const spans: Made['spans'] = [];
  for await (const e of readRecording(w.path)) spans.push({ seq: e.seq, type: e.type, start: e.offset, end: e.offset + 22 + e.bytes.length });
  return { path: w.path, bytes, spans, headerEnd: spans[0]!.start };
}

async function check(bytes: Buffer, keys: PublicKeys, sessionId?: string) {
  const p = join(stateDir, `t-${randomBytes(6).toString('hex')}.sluicerec`);
  writeFileSync(p, bytes);
  try {
    return await verifyRecording(p, keys, sessionId === undefined ? {} : { sessionId });
  } finally {
    rmSync(p);
  }
}

/** Reframes a record after its payload was edited: a valid CRC, as a careful forger would. */
function recrc(buf: Buffer, start: number, end: number): void {
  buf.writeUInt32BE(crc32(buf.subarray(start, end - 4)), end - 4);
}

t.test('tampering', async (t) => {
  const key = await openRecordingKey(stateDir);
  const keys = await loadRecordingPublicKeys(stateDir);
  const a = await make('sessA', key, 12, 1);
  const b = await make('sessB', key, 12, 2);
  const dataSpans = a.spans.filter((s) => s.type === 'data');
  t.ok(a.spans.filter((s) => s.type === 'checkpoint').length >= 2, 'the fixture has checkpoints');

  t.test('the untouched recording verifies', async (t) => {
    const v = await check(a.bytes, keys);
    t.same({ ok: v.ok, complete: v.complete }, { ok: true, complete: true });
  });

  t.test('one flipped byte anywhere is detected, at the record that holds it', async (t) => {
    let wrongPlace = 0;
    let undetected = 0;
    for (let i = 0; i < a.bytes.length; i++) {
      const copy = Buffer.from(a.bytes);
      copy[i]! ^= 0x01;
      const v = await check(copy, keys);
      if (v.ok && v.complete) {
        undetected++;
        continue;
      }
      if (v.ok) {
        undetected++;
        t.fail(`byte ${i}: reported as merely incomplete`);
        continue;
      }
      const span = a.spans.find((s) => i >= s.start && i < s.end);
      if (i < a.headerEnd) {
        if (v.firstBad!.offset >= a.headerEnd) wrongPlace++;
      } else if (span) {
        if (v.firstBad!.offset !== span.start || v.firstBad!.seq !== span.seq) wrongPlace++;
      } else if (v.firstBad!.offset !== a.spans[a.spans.length - 1]!.end) {
        wrongPlace++; // the trailer
      }
    }
    t.equal(undetected, 0, `all ${a.bytes.length} single-byte flips detected`);
    t.equal(wrongPlace, 0, 'each named at the header, its record (seq and offset), or the trailer');
  });

  t.test('a deleted record', async (t) => {
    const d = dataSpans[5]!;
    const v = await check(Buffer.concat([a.bytes.subarray(0, d.start), a.bytes.subarray(d.end)]), keys);
    t.equal(v.ok, false);
    t.equal(v.firstBad?.seq, d.seq, 'named by the missing seq');
    t.equal(v.firstBad?.offset, d.start);
    t.match(v.firstBad?.reason, /missing/);
  });

  t.test('reordered records', async (t) => {
    const [x, y] = [dataSpans[2]!, dataSpans[3]!];
    t.equal(y.start, x.end, 'adjacent');
    const v = await check(
      Buffer.concat([a.bytes.subarray(0, x.start), a.bytes.subarray(y.start, y.end), a.bytes.subarray(x.start, x.end), a.bytes.subarray(y.end)]),
      keys,
    );
    t.equal(v.ok, false);
    t.equal(v.firstBad?.seq, x.seq);
    t.equal(v.firstBad?.offset, x.start);
    t.match(v.firstBad?.reason, /out of order/);
  });

  t.test('reordered records with sequence numbers and CRCs rewritten: the chain catches it', async (t) => {
    const [x, y] = [dataSpans[2]!, dataSpans[3]!];
    const rx = Buffer.from(a.bytes.subarray(x.start, x.end));
    const ry = Buffer.from(a.bytes.subarray(y.start, y.end));
    ry.writeUInt32BE(x.seq, 2);
    recrc(ry, 0, ry.length);
    rx.writeUInt32BE(y.seq, 2);
    recrc(rx, 0, rx.length);
    const v = await check(Buffer.concat([a.bytes.subarray(0, x.start), ry, rx, a.bytes.subarray(y.end)]), keys);
    t.equal(v.ok, false);
    const cp = a.spans.find((s) => s.type === 'checkpoint' && s.seq > y.seq)!;
    t.equal(v.firstBad?.seq, cp.seq, 'named at the next signed checkpoint');
    t.match(v.firstBad?.reason, /chain mismatch/);
  });

  t.test('a duplicated record', async (t) => {
    const d = dataSpans[4]!;
    const v = await check(Buffer.concat([a.bytes.subarray(0, d.end), a.bytes.subarray(d.start, d.end), a.bytes.subarray(d.end)]), keys);
    t.equal(v.ok, false);
    t.equal(v.firstBad?.seq, d.seq + 1);
    t.equal(v.firstBad?.offset, d.end);
    t.match(v.firstBad?.reason, /duplicated/);
  });

  t.test('a truncated tail: at a record boundary, incomplete', async (t) => {
    const d = dataSpans[7]!;
    const v = await check(a.bytes.subarray(0, d.end), keys);
    t.same({ ok: v.ok, complete: v.complete, records: v.records }, { ok: true, complete: false, records: d.seq + 1 });
    t.notOk(v.partialTail);
    const cps = a.spans.filter((s) => s.type === 'checkpoint' && s.end <= d.end);
    t.equal(v.verifiedThroughSeq, cps[cps.length - 1]!.seq, 'signed through the last checkpoint');
  });

  t.test('a truncated tail: mid-record, the partial record is reported', async (t) => {
    const d = dataSpans[7]!;
    const v = await check(a.bytes.subarray(0, d.start + 10), keys);
    t.same({ ok: v.ok, complete: v.complete, records: v.records }, { ok: true, complete: false, records: d.seq });
    t.same(v.partialTail, { offset: d.start, bytes: 10 });
  });

  t.test('the footer and trailer cut off: incomplete, not tampered', async (t) => {
    const footer = a.spans[a.spans.length - 1]!;
    const v = await check(a.bytes.subarray(0, footer.start), keys);
    t.same({ ok: v.ok, complete: v.complete }, { ok: true, complete: false });
  });

  t.test('a close cut short after the footer (the trailer missing or cut): incomplete, not tampered', async (t) => {
    const footer = a.spans[a.spans.length - 1]!;
    for (let keep = 0; keep < 12; keep++) {
      const v = await check(a.bytes.subarray(0, footer.end + keep), keys);
      t.same({ ok: v.ok, complete: v.complete, records: v.records }, { ok: true, complete: false, records: footer.seq }, `${keep} trailer bytes`);
      t.same(v.partialTail, { offset: footer.end, bytes: keep });
      t.match(describeVerify(v), /^INCOMPLETE: the signed footer verifies .* the close was cut short/);
    }
    // Not a piece of the trailer: something was written after the footer.
    const forged = Buffer.concat([a.bytes.subarray(0, footer.end), Buffer.from('SLUICEXX')]);
    t.match(await check(forged, keys), { ok: false, firstBad: { offset: footer.end, reason: 'bytes after the footer' } });
  });

  t.test('bytes after the trailer are named as such', async (t) => {
    const v = await check(Buffer.concat([a.bytes, Buffer.from('x')]), keys);
    t.match(v, { ok: false, firstBad: { offset: a.bytes.length, reason: 'bytes after the trailer' } });
  });

  t.test('two sessions spliced', async (t) => {
    // A's header and first records, then B's records from the same seq on: CRCs and seqs all valid.
    const cut = 5;
    const aCut = a.spans.find((s) => s.seq === cut)!.start;
    const bCut = b.spans.find((s) => s.seq === cut)!.start;
    const v = await check(Buffer.concat([a.bytes.subarray(0, aCut), b.bytes.subarray(bCut)]), keys);
    t.equal(v.ok, false);
    const firstSigned = b.spans.find((s) => (s.type === 'checkpoint' || s.type === 'footer') && s.seq >= cut)!;
    t.equal(v.firstBad?.seq, firstSigned.seq, 'named at the first signed record after the splice');
    t.match(v.firstBad?.reason, /spliced|chain mismatch/);
  });

  t.test('a swapped header', async (t) => {
    const v = await check(Buffer.concat([b.bytes.subarray(0, b.headerEnd), a.bytes.subarray(a.headerEnd)]), keys);
    t.equal(v.ok, false);
    const firstCp = a.spans.find((s) => s.type === 'checkpoint')!;
    t.equal(v.firstBad?.seq, firstCp.seq);
    t.match(v.firstBad?.reason, /belongs to session sessA, the header to sessB/);
  });

  t.test('a data byte changed with the CRC recomputed: the chain catches it at the next checkpoint', async (t) => {
    const d = dataSpans[9]!;
    const copy = Buffer.from(a.bytes);
    copy[d.start + RECORD_PREFIX]! ^= 0x20;
    recrc(copy, d.start, d.end);
    const v = await check(copy, keys);
    t.equal(v.ok, false);
    const next = a.spans.find((s) => (s.type === 'checkpoint' || s.type === 'footer') && s.seq > d.seq)!;
    t.equal(v.firstBad?.seq, next.seq);
    const prev = a.spans.filter((s) => s.type === 'checkpoint' && s.seq < d.seq).pop()!;
    t.match(v.firstBad?.reason, new RegExp(`after seq ${prev.seq} was altered`), 'names the range: after the last good checkpoint');
  });

  t.test('the footer record count changed with the CRC recomputed: the signature fails', async (t) => {
    const f = a.spans[a.spans.length - 1]!;
    const copy = Buffer.from(a.bytes);
    const s = copy.subarray(f.start, f.end).toString('latin1');
    const at = s.indexOf('"recordCount":') + '"recordCount":'.length;
    copy[f.start + at] = copy[f.start + at] === 0x39 ? 0x38 : copy[f.start + at]! + 1;
    recrc(copy, f.start, f.end);
    const v = await check(copy, keys);
    t.equal(v.ok, false);
    t.equal(v.firstBad?.seq, f.seq);
    t.match(v.firstBad?.reason, /footer signature does not verify/);
  });

  t.test('the time of the footer or of a checkpoint changed with the CRC recomputed', async (t) => {
    const cp = a.spans.find((s) => s.type === 'checkpoint')!;
    const f = a.spans[a.spans.length - 1]!;
    for (const [span, what] of [[f, 'footer'], [cp, 'checkpoint']] as const) {
      const copy = Buffer.from(a.bytes);
      // micros is the u64 at bytes 6-13 of a record; its low word at 10.
      copy.writeUInt32BE(copy.readUInt32BE(span.start + 10) + 1, span.start + 10);
      recrc(copy, span.start, span.end);
      const v = await check(copy, keys);
      t.equal(v.ok, false, `${what}: caught`);
      t.equal(v.firstBad?.seq, span.seq);
      t.match(v.firstBad?.reason, new RegExp(`${what} claims \\d+ µs, its record \\d+`));
    }
  });

  t.test('the direction byte of the footer or of a checkpoint changed with the CRC recomputed', async (t) => {
    const cp = a.spans.find((s) => s.type === 'checkpoint')!;
    const f = a.spans[a.spans.length - 1]!;
    for (const [span, what] of [[f, 'footer'], [cp, 'checkpoint']] as const) {
      const copy = Buffer.from(a.bytes);
      copy[span.start + 1] = 1;
      recrc(copy, span.start, span.end);
      const v = await check(copy, keys);
      t.equal(v.firstBad?.seq, span.seq, `${what}: caught at its record`);
      t.match(v.firstBad?.reason, new RegExp(`${what} record has direction 1, control records 0`));
    }
  });

  t.test("another session's whole recording in this session's place: caught when verified as this session", async (t) => {
    const v = await check(b.bytes, keys, 'sessA');
    t.same({ ok: v.ok, complete: v.complete }, { ok: false, complete: false });
    t.match(v.firstBad?.reason, /the file is the recording of session sessB, not of sessA: swapped/);
    t.equal((await check(b.bytes, keys, 'sessB')).ok, true, 'and passes as its own session');
  });

  t.test('a made-up file with no signed record names its unknown key', async (t) => {
    const { privateKey, publicKey } = generateKeyPairSync('ed25519');
    const other: RecordingKey = { keyId: keyIdOf(publicKey), privateKey, publicKey };
    const c = await make('sessD', other, 3);
    const firstSigned = c.spans.find((s) => s.type !== 'data')!;
    const v = await check(c.bytes.subarray(0, firstSigned.start), keys);
    t.same({ ok: v.ok, complete: v.complete, unknownKey: v.unknownKey }, { ok: true, complete: false, unknownKey: other.keyId });
    t.match(describeVerify(v), new RegExp(`none signed, and its key ${other.keyId} is not among the known recording keys`));
  });

  t.test('a recording signed by an unknown key', async (t) => {
    const { privateKey, publicKey } = generateKeyPairSync('ed25519');
    const other: RecordingKey = { keyId: keyIdOf(publicKey), privateKey, publicKey };
    const c = await make('sessC', other, 3);
    const v = await check(c.bytes, keys);
    t.equal(v.ok, false);
    t.match(v.firstBad?.reason, /not among the known recording keys/);
    const withKey = await check(c.bytes, new Map([[other.keyId, publicKey]]));
    t.equal(withKey.ok, true, 'verifies with that key');
  });
});

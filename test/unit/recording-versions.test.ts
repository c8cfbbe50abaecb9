/**
 * Earlier format versions are still read and verified after the writer
 * moved on: version 1 (a SHA-256 chain, one link per record, one signature
 * per signed record), version 2 (one running digest, one signature per
 * signed record). The writer writes version 3 (one signature per batch of
 * signed records, each carrying its inclusion proof). Each fixture was
 * written by its version's writer; its public key is beside it.
 */
import { createPublicKey, type KeyObject } from 'node:crypto';
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import t from 'tap';
import { FORMAT_VERSION, HEADER_PREFIX, MAGIC, RECORD_PREFIX, crc32, type RecordingMeta } from '../../src/recording/format.js';
import { keyIdOf, loadRecordingPublicKeys, openRecordingKey } from '../../src/recording/keys.js';
import { readRecording } from '../../src/recording/reader.js';
import { verifyRecording } from '../../src/recording/verify.js';
import { RecordingWriter } from '../../src/recording/writer.js';

// Compiled to dist/test/unit/: the fixtures stay in the source tree.
function fixtureOf(version: 1 | 2): { bytes: Buffer; keys: Map<string, KeyObject> } {
  const fixtureDir = fileURLToPath(new URL(`../../../test/fixtures/recording-v${version}/`, import.meta.url));
  const publicKey = createPublicKey(readFileSync(join(fixtureDir, 'public.pem'), 'utf8'));
  return { bytes: readFileSync(join(fixtureDir, `v${version}-fixture.sluicerec`)), keys: new Map([[keyIdOf(publicKey), publicKey]]) };
}
const fixtures = { 1: fixtureOf(1), 2: fixtureOf(2) };
const fixture = fixtures[1].bytes;
const keys = fixtures[1].keys;

const dir = mkdtempSync(join(tmpdir(), 'sluice-v1-'));
t.teardown(() => rmSync(dir, { recursive: true, force: true }));
let n = 0;
function file(bytes: Buffer): string {
  const p = join(dir, `f${n++}.sluicerec`);
  writeFileSync(p, bytes);
  return p;
}

/** Rewrites the binary version field of a header and its CRC (what a forger can always do). */
function withVersion(bytes: Buffer, version: number): Buffer {
  const copy = Buffer.from(bytes);
  copy.writeUInt16BE(version, MAGIC.length);
  const jsonEnd = HEADER_PREFIX + copy.readUInt32BE(MAGIC.length + 2);
  copy.writeUInt32BE(crc32(copy.subarray(0, jsonEnd)), jsonEnd);
  return copy;
}

for (const version of [1, 2] as const) {
  const { bytes, keys } = fixtures[version];

  t.test(`a version ${version} recording verifies and reads byte for byte`, async (t) => {
    t.equal(bytes.readUInt16BE(MAGIC.length), version, `the fixture is version ${version}`);
    const v = await verifyRecording(file(bytes), keys);
    t.same({ ok: v.ok, complete: v.complete, records: v.records }, { ok: true, complete: true, records: 15 });
    t.equal(v.verifiedThroughSeq, 15, 'signed through the footer');
    const path = file(bytes);
    const client = (await readRecording(path).bytesOf('client')).toString('latin1');
    const server = (await readRecording(path).bytesOf('server')).toString('latin1');
    t.match(client, /^\*2\r\n\$4\r\nAUTH\r\n\$10\r\n\[redacted\]\r\n\*3\r\n\$3\r\nSET\r\n/);
    t.match(client, /\*1\r\n\$4\r\nQUIT\r\n$/);
    t.equal(server, '+OK\r\n+OK\r\n$5\r\nhello\r\n:1\r\n$-1\r\n+OK\r\n');
    let footer: { body?: unknown } | undefined;
    for await (const e of readRecording(path)) footer = e;
    t.match(footer?.body, { recordCount: 15, closeReason: 'client closed' }, 'the footer body is read');
  });

  t.test(`a version ${version} recording altered with its CRC recomputed: the chain catches it at the next checkpoint`, async (t) => {
    const spans: { seq: number; type: string; start: number; end: number }[] = [];
    for await (const e of readRecording(file(bytes))) spans.push({ seq: e.seq, type: e.type, start: e.offset, end: e.offset + 22 + e.bytes.length });
    const d = spans.filter((s) => s.type === 'data')[5]!;
    const copy = Buffer.from(bytes);
    copy[d.start + RECORD_PREFIX]! ^= 0x20;
    copy.writeUInt32BE(crc32(copy.subarray(d.start, d.end - 4)), d.end - 4);
    const v = await verifyRecording(file(copy), keys);
    const next = spans.find((s) => (s.type === 'checkpoint' || s.type === 'footer') && s.seq > d.seq)!;
    const prev = spans.filter((s) => s.type === 'checkpoint' && s.seq < d.seq).pop()!;
    t.equal(v.ok, false);
    t.equal(v.firstBad?.seq, next.seq, 'named at the next signed record');
    t.match(v.firstBad?.reason, new RegExp(`chain mismatch at checkpoint: the header or a record after seq ${prev.seq} was altered`));
  });
}

t.test('the writer writes version 3; relabelling a file as another version fails verification', async (t) => {
  t.equal(FORMAT_VERSION, 3);
  const key = await openRecordingKey(dir);
  const meta: RecordingMeta = { sessionId: 'v3', target: 'cache', protocol: 'redis', subject: 's', groups: [], issuer: 'i', startedAt: new Date().toISOString() };
  const w = await RecordingWriter.open({ stateDir: dir, meta, key, checkpointEveryRecords: 2, flushIntervalMs: 1, onFailure: () => t.fail('no failure') });
  // Each record written before the next (not only a few ms later: under load the timer may fire
  // late), so the batches, and the checkpoints every two records, are the same on every run.
  for (let i = 0; i < 6; i++) {
    w.record(i % 2 ? 'server' : 'client', Buffer.from(`chunk ${i}`));
    for (let k = 0; k < 1000 && w.backlogBytes > 0; k++) await new Promise((r) => setTimeout(r, 2));
  }
  await w.close({ closeReason: 'done' });
  const v3 = readFileSync(w.path);
  t.equal(v3.readUInt16BE(MAGIC.length), 3, 'version 3 on disk');
  const v3keys = await loadRecordingPublicKeys(dir);
  t.equal((await verifyRecording(w.path, v3keys)).ok, true);

  for (const older of [1, 2]) {
    const down = await verifyRecording(file(withVersion(v3, older)), v3keys);
    t.equal(down.ok, false, `a version 3 file read as version ${older} does not verify`);
    t.match(down.firstBad?.reason, /checkpoint payload is malformed|chain mismatch/);
  }
  const v2up = await verifyRecording(file(withVersion(fixtures[2].bytes, 3)), fixtures[2].keys);
  t.equal(v2up.ok, false, 'a version 2 file read as version 3 does not verify');
  t.match(v2up.firstBad?.reason, /checkpoint payload is malformed|signature does not verify/);
  const up = await verifyRecording(file(withVersion(fixture, 2)), keys);
  t.equal(up.ok, false, 'a version 1 file read as version 2 does not verify');
  t.match(up.firstBad?.reason, /chain mismatch/);
  const future = await verifyRecording(file(withVersion(fixture, 4)), keys);
  t.match(future.firstBad?.reason, /unknown format version 4/);
});

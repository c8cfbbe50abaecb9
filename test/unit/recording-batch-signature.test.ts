/**
 * Format version 3 signs the checkpoints and footers the seal thread makes
 * together with one signature over a Merkle tree (merkle.ts, RFC 9162),
 * each record carrying its inclusion proof (signed-records.ts). The tree
 * is checked against a direct transcription of RFC 9162's MTH; the proofs
 * against every leaf of trees of 1 to 40 leaves; and recordings closed
 * together are shown to share one signature, to verify each on its own,
 * and to refuse a proof or a footer taken from a sibling.
 */
import { createHash, generateKeyPairSync } from 'node:crypto';
import { closeSync, mkdtempSync, readFileSync, readdirSync, readlinkSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import t, { type Test } from 'tap';
import { RECORD_PREFIX, crc32, type RecordingMeta } from '../../src/recording/format.js';
import { loadRecordingPublicKeys, openRecordingKey } from '../../src/recording/keys.js';
import { leafHash, merkleTree, rootFromPath } from '../../src/recording/merkle.js';
import { readRecording } from '../../src/recording/reader.js';
import {
  CHECKPOINT_SIG_DOMAIN,
  FOOTER_SIG_DOMAIN,
  MAX_BATCH_LEAVES,
  MAX_SIGNED_JSON,
  batchSignedPayloads,
  parseSignedPayload,
  signedItem,
  verifySignedPayload,
} from '../../src/recording/signed-records.js';
import { verifyRecording } from '../../src/recording/verify.js';
import { RecordingWriter } from '../../src/recording/writer.js';

/** RFC 9162 section 2.1.1, as written there: MTH of a list of leaf hashes. */
function referenceRoot(leaves: Buffer[]): Buffer {
  if (leaves.length === 1) return leaves[0]!;
  let k = 1;
  while (k * 2 < leaves.length) k *= 2;
  return createHash('sha256')
    .update(Buffer.from([0x01]))
    .update(referenceRoot(leaves.slice(0, k)))
    .update(referenceRoot(leaves.slice(k)))
    .digest();
}

const leavesOf = (n: number): Buffer[] => Array.from({ length: n }, (_, i) => leafHash(Buffer.from(`leaf ${i}`)));

t.test('the tree: the root is RFC 9162 MTH, and every leaf of every size leads to it by its path', async (t) => {
  t.not(leafHash(Buffer.from('x')).toString('hex'), createHash('sha256').update('x').digest('hex'), 'a leaf hash is prefixed (0x00)');
  let checked = 0;
  for (let n = 1; n <= 40; n++) {
    const leaves = leavesOf(n);
    const tree = merkleTree(leaves);
    t.ok(tree.root.equals(referenceRoot(leaves)), `n=${n}: root`);
    for (let i = 0; i < n; i++) {
      const path = tree.paths[i]!;
      const root = rootFromPath(leaves[i]!, i, n, path);
      if (!root?.equals(tree.root)) t.fail(`n=${n} i=${i}: the path does not lead to the root`);
      else checked++;
      // The path has exactly the length the tree's shape gives: one hash shorter or longer is refused.
      if (path.length > 0) t.not(rootFromPath(leaves[i]!, i, n, path.slice(0, -1))?.toString('hex') ?? 'none', tree.root.toString('hex'));
      t.equal(rootFromPath(leaves[i]!, i, n, [...path, leaves[0]!]), undefined);
    }
  }
  t.equal(checked, (40 * 41) / 2, 'every leaf of every tree');
});

t.test('the tree: a proof for another index, another size or another leaf does not lead to the root', async (t) => {
  const leaves = leavesOf(11);
  const tree = merkleTree(leaves);
  const root = tree.root.toString('hex');
  const at = (leaf: Buffer, i: number, n: number, path: Buffer[]) => rootFromPath(leaf, i, n, path)?.toString('hex');
  t.not(at(leaves[5]!, 4, 11, tree.paths[5]!), root, 'the index of a sibling');
  t.not(at(leaves[10]!, 10, 12, tree.paths[10]!), root, 'a larger tree, where it changes the shape of the path');
  // Where it does not (leaf 5 sits in the full left half of any tree of 9 to 16 leaves), the
  // signature covers the size with the root, so a size edited in a payload still fails (below).
  t.equal(at(leaves[5]!, 5, 12, tree.paths[5]!), root);
  t.not(at(leaves[4]!, 5, 11, tree.paths[5]!), root, 'another leaf on the same path');
  t.equal(at(leaves[5]!, 11, 11, tree.paths[5]!), undefined, 'an index past the end');
  t.equal(at(leaves[5]!, -1, 11, tree.paths[5]!), undefined, 'a negative index');
  t.throws(() => merkleTree([]), /at least one leaf/);
});

t.test('batch payloads: one signature, each payload verifies alone, and only as what it is', async (t) => {
  const { privateKey, publicKey } = generateKeyPairSync('ed25519');
  const bodies = [{ sessionId: 'a', seq: 4, chain: '00', micros: 1 }, { sessionId: 'b', recordCount: 2 }, { sessionId: 'c', recordCount: 9 }];
  const items = [signedItem(CHECKPOINT_SIG_DOMAIN, bodies[0]!), signedItem(FOOTER_SIG_DOMAIN, bodies[1]!), signedItem(FOOTER_SIG_DOMAIN, bodies[2]!)];
  const payloads = batchSignedPayloads(items, privateKey);
  const parsed = payloads.map((p) => parseSignedPayload(3, p)!);
  t.same(parsed.map((p) => p.body), bodies, 'the bodies read back');
  t.same(parsed.map((p) => [p.proof?.index, p.proof?.size]), [[0, 3], [1, 3], [2, 3]]);
  t.ok(parsed.every((p) => p.signature.equals(parsed[0]!.signature)), 'one signature for the batch');
  parsed.forEach((p, i) => t.equal(verifySignedPayload(items[i]!.domain, p, publicKey), true, `payload ${i} verifies`));
  t.equal(verifySignedPayload(FOOTER_SIG_DOMAIN, parsed[0]!, publicKey), false, 'a checkpoint does not pass for a footer');
  t.equal(verifySignedPayload(CHECKPOINT_SIG_DOMAIN, parsed[1]!, publicKey), false, 'nor a footer for a checkpoint');
  t.equal(verifySignedPayload(FOOTER_SIG_DOMAIN, parsed[1]!, generateKeyPairSync('ed25519').publicKey), false, 'another key');
  const resized = Buffer.from(payloads[0]!);
  resized.writeUInt32BE(4, resized.readUInt32BE(0) + 8);
  const r = parseSignedPayload(3, resized)!;
  t.same([r.proof?.index, r.proof?.size], [0, 4]);
  t.equal(verifySignedPayload(CHECKPOINT_SIG_DOMAIN, r, publicKey), false, 'the tree size is signed with the root');
  t.equal(parseSignedPayload(2, payloads[1]!), undefined, 'a version 3 payload is malformed to a version 2 reader');
  t.equal(parseSignedPayload(3, payloads[1]!.subarray(0, payloads[1]!.length - 1)), undefined, 'a payload one byte short');
  // JSON is parsed before the signature is checked: a body longer than any the writer makes is not.
  const nested = { sessionId: 'a', pad: 'x'.repeat(MAX_SIGNED_JSON) };
  const oversized = batchSignedPayloads([signedItem(FOOTER_SIG_DOMAIN, nested)], privateKey)[0]!;
  t.equal(parseSignedPayload(3, oversized), undefined, `a body over ${MAX_SIGNED_JSON} bytes is malformed, not parsed`);
  t.equal(parseSignedPayload(2, Buffer.concat([oversized.subarray(0, 4 + oversized.readUInt32BE(0)), Buffer.alloc(64)])), undefined, 'in version 2 too');

  const many = Array.from({ length: MAX_BATCH_LEAVES + 3 }, (_, i) => signedItem(FOOTER_SIG_DOMAIN, { n: i }));
  const big = batchSignedPayloads(many, privateKey).map((p) => parseSignedPayload(3, p)!);
  t.equal(new Set(big.map((p) => p.signature.toString('hex'))).size, 2, `${many.length} items: two trees, two signatures`);
  t.same([big[MAX_BATCH_LEAVES - 1]!.proof?.size, big[MAX_BATCH_LEAVES]!.proof?.size], [MAX_BATCH_LEAVES, 3]);
  t.ok(big.every((p) => verifySignedPayload(FOOTER_SIG_DOMAIN, p, publicKey)), 'each verifies');
});

t.test('recordings that close together share a signature, verify alone, and refuse a sibling\'s proof or footer', async (t) => {
  const stateDir = mkdtempSync(join(tmpdir(), 'sluice-batchsig-'));
  t.teardown(() => rmSync(stateDir, { recursive: true, force: true }));
  const key = await openRecordingKey(stateDir);
  const keys = await loadRecordingPublicKeys(stateDir);
  const meta = (sessionId: string): RecordingMeta => ({
    sessionId, target: 'cache', protocol: 'redis', subject: 'ci', groups: [], issuer: 'i', startedAt: new Date().toISOString(),
  });
  const writers = await Promise.all(['s0', 's1', 's2'].map((id) => RecordingWriter.open({ stateDir, meta: meta(id), key, onFailure: () => t.fail('no failure') })));
  writers.forEach((w, i) => {
    w.record('client', Buffer.from(`*1\r\n$4\r\nPING\r\n${i}`));
    w.record('server', Buffer.from('+PONG\r\n'));
  });
  // Closed in one turn of the event loop: their last batches travel, and are signed, together.
  const results = await Promise.all(writers.map((w) => w.close({ closeReason: 'client closed' })));

  const footers: { bytes: Buffer; start: number; end: number; payload: Buffer }[] = [];
  for (const r of results) {
    const bytes = readFileSync(r.path);
    let last: { offset: number; bytes: Buffer } | undefined;
    for await (const e of readRecording(r.path)) last = e;
    footers.push({ bytes, start: last!.offset, end: last!.offset + 22 + last!.bytes.length, payload: last!.bytes });
  }
  const proofs = footers.map((f) => parseSignedPayload(3, f.payload)!);
  t.same(proofs.map((p) => p.proof?.size), [3, 3, 3], 'one tree of three footers');
  t.ok(proofs.every((p) => p.signature.equals(proofs[0]!.signature)), 'one signature');

  // Each file verifies with nothing but itself and the public key.
  for (const r of results) {
    const alone = join(stateDir, `alone-${r.recordCount}-${Math.random()}.sluicerec`);
    writeFileSync(alone, readFileSync(r.path));
    const v = await verifyRecording(alone, keys);
    t.same({ ok: v.ok, complete: v.complete }, { ok: true, complete: true }, `${r.path} verifies alone`);
  }

  const reframe = (buf: Buffer, start: number, end: number) => buf.writeUInt32BE(crc32(buf.subarray(start, end - 4)), end - 4);
  const check = async (bytes: Buffer) => {
    const p = join(stateDir, `t-${Math.random()}.sluicerec`);
    writeFileSync(p, bytes);
    return verifyRecording(p, keys);
  };

  // A path hash altered, the CRC recomputed: the proof leads to another root, which is not signed.
  const f0 = footers[0]!;
  const jsonLength = f0.payload.readUInt32BE(0);
  const pathAt = f0.start + RECORD_PREFIX + 4 + jsonLength + 9;
  const altered = Buffer.from(f0.bytes);
  altered[pathAt]! ^= 0x01;
  reframe(altered, f0.start, f0.end);
  const v1 = await check(altered);
  t.equal(v1.ok, false, 'an altered proof is caught');
  t.match(v1.firstBad?.reason, /footer signature does not verify/);

  // The leaf index changed to a sibling's: the same hashes, put together in another order.
  const moved = Buffer.from(f0.bytes);
  moved.writeUInt32BE(1, f0.start + RECORD_PREFIX + 4 + jsonLength);
  reframe(moved, f0.start, f0.end);
  t.match((await check(moved)).firstBad?.reason, /footer signature does not verify/, 'another leaf index is caught');

  // A sibling's whole footer (its own valid proof, the shared signature) put in place of this one.
  const f1 = footers[1]!;
  const spliced = Buffer.concat([f0.bytes.subarray(0, f0.start), f1.bytes.subarray(f1.start)]);
  const v3 = await check(spliced);
  t.equal(v3.ok, false, 'a sibling\'s footer is caught');
  t.match(v3.firstBad?.reason, /footer belongs to session s1, the header to s0: spliced or swapped/);
});

/** Opens writers in a fresh state directory (removed after the test); `footerTreeSize` reads a closed recording's footer proof. */
async function churn(t: Test, settings: { flushIntervalMs?: number; checkpointEveryRecords?: number } = {}) {
  const stateDir = mkdtempSync(join(tmpdir(), 'sluice-batchsig-'));
  t.teardown(() => rmSync(stateDir, { recursive: true, force: true }));
  const key = await openRecordingKey(stateDir);
  return {
    open: (sessionId: string) =>
      RecordingWriter.open({
        stateDir,
        meta: { sessionId, target: 'cache', protocol: 'redis', subject: 'ci', groups: [], issuer: 'i', startedAt: new Date().toISOString() },
        key,
        ...settings,
        onFailure: () => t.fail('no failure'),
      }),
    footerTreeSize: async (path: string) => {
      let last: { bytes: Buffer } | undefined;
      for await (const e of readRecording(path)) last = e;
      return parseSignedPayload(3, last!.bytes)?.proof?.size;
    },
  };
}

t.test('a new recording\'s create does not take the footers waiting for others along: they are still signed together', async (t) => {
  const { open, footerTreeSize } = await churn(t);
  const [w0, w1] = await Promise.all([open('c0'), open('c1')]);
  // Connection churn: a session ends, the next one's file is created, another session ends.
  // The create's message goes at once; the first footer keeps waiting for the second.
  const closed0 = w0.close({ closeReason: 'client closed' });
  const opening = open('c2');
  await new Promise((resolve) => setImmediate(resolve)); // the create's message has gone
  const closed1 = w1.close({ closeReason: 'client closed' });
  const w2 = await opening;
  const results = await Promise.all([closed0, closed1]);
  t.same(await Promise.all(results.map((r) => footerTreeSize(r.path))), [2, 2], 'the two footers share one tree');
  await w2.close({ closeReason: 'client closed' });
});

t.test('a footer waiting for others goes with the next flush tick, signed with that tick\'s checkpoints', async (t) => {
  // A tick every 50 ms, each with a checkpoint: before the footers' 100 ms, after the 25 ms
  // they waited before they went with ticks.
  const { open, footerTreeSize } = await churn(t, { flushIntervalMs: 50, checkpointEveryRecords: 1 });
  const [live, closing] = await Promise.all([open('live'), open('closing')]);
  const closed = closing.close({ closeReason: 'client closed' });
  live.record('client', Buffer.from('*1\r\n$4\r\nPING\r\n'));
  t.equal(await footerTreeSize((await closed).path), 2, 'the footer and the live recording\'s checkpoint share one tree');
  await live.close({ closeReason: 'client closed' });
});

t.test('one batch failing, and two keys in one message: each key gets its tree, the failure stays with its recording', async (t) => {
  const dirs = [mkdtempSync(join(tmpdir(), 'sluice-batchsig-a-')), mkdtempSync(join(tmpdir(), 'sluice-batchsig-b-'))];
  t.teardown(() => dirs.forEach((d) => rmSync(d, { recursive: true, force: true })));
  const [keyA, keyB] = await Promise.all(dirs.map((d) => openRecordingKey(d)));
  const keys = new Map([...(await loadRecordingPublicKeys(dirs[0]!)), ...(await loadRecordingPublicKeys(dirs[1]!))]);
  const specs = [['a0', 0], ['a1', 0], ['b0', 1], ['a2', 0], ['b1', 1]] as const;
  const failures: string[] = [];
  const writers = await Promise.all(
    specs.map(([id, k]) =>
      RecordingWriter.open({
        stateDir: dirs[k]!,
        key: k === 0 ? keyA : keyB,
        meta: { sessionId: id, target: 'cache', protocol: 'redis', subject: 'ci', groups: [], issuer: 'i', startedAt: new Date().toISOString() },
        onFailure: (e) => failures.push(`${id}: ${e.message}`),
      }),
    ),
  );
  writers.forEach((w) => {
    w.record('client', Buffer.from('*1\r\n$4\r\nPING\r\n'));
    w.record('server', Buffer.from('+PONG\r\n'));
  });
  // a1's file descriptor (found by its path) is closed under the seal thread: its append fails
  // (EBADF) in the message that signs the others. Nothing opens a file between here and a1's close
  // (the other files are open already, and the seal thread only writes), so the number is not taken
  // by another file meanwhile; the writer's own close of it, once released, fails (EBADF) unseen.
  const a1fd = readdirSync('/proc/self/fd').find((fd) => {
    try {
      return readlinkSync(`/proc/self/fd/${fd}`) === writers[1]!.path;
    } catch {
      return false;
    }
  });
  t.ok(a1fd, "a1's file is open");
  closeSync(Number(a1fd));
  const results = await Promise.all(writers.map((w) => w.close({ closeReason: 'client closed' })));
  // That second close of a1's number runs on libuv's pool: let it pass before the reads below open
  // files and take numbers, one of which it could otherwise close.
  await new Promise((r) => setTimeout(r, 50));

  t.same(results.map((r) => r.complete), [true, false, true, true, true], 'only a1 is incomplete');
  t.same(failures.map((f) => f.split(':')[0]), ['a1'], 'the failure is reported to a1 alone, not to the writers signed with it');
  t.match(failures[0], /EBADF/);
  const a1 = await verifyRecording(results[1]!.path, keys);
  t.same({ ok: a1.ok, complete: a1.complete }, { ok: true, complete: false }, 'a1: intact as far as it goes, incomplete');
  const trees = new Map<string, number>();
  for (const [i, r] of results.entries()) {
    if (i === 1) continue;
    const v = await verifyRecording(r.path, keys);
    t.same({ ok: v.ok, complete: v.complete }, { ok: true, complete: true }, `${specs[i]![0]} verifies`);
    let last: { bytes: Buffer } | undefined;
    for await (const e of readRecording(r.path)) last = e;
    const p = parseSignedPayload(3, last!.bytes)!;
    trees.set(p.signature.toString('hex'), p.proof!.size);
  }
  t.same([...trees.values()].sort(), [2, 3], 'one tree per key: three footers signed with A (a1 included), two with B');
});

/**
 * The seal thread (see seal-thread.ts): for every recording open in the
 * process, fills in the CRCs of the records the event loop staged, feeds
 * them to the recording's running digest, adds the signed checkpoints and
 * the footer, and appends each batch to the file with one writev. File
 * calls are synchronous here: this thread has nothing else to do while the
 * disk works, and nothing on the event loop waits for it.
 *
 * One message from the event loop carries the files registered since the
 * last one (created with their headers by the writers, files.ts) and every
 * batch taken in one flush tick. The files are taken up first (a writer's
 * first batch follows its registration). The batches are
 * sealed in three passes: every batch's records, with the body of the
 * checkpoint or footer that ends it; then those bodies signed together,
 * one signature per key over a Merkle tree of them (signed-records.ts,
 * format version 3); then each batch appended. The live recordings'
 * batches are appended and answered first, the last batches (footer,
 * fsync) after them, in a second answer.
 * The thread neither opens nor closes a file: the writer does both, and
 * closes it only once the thread has answered its last batch, or after a
 * failure, when it also tells the thread to drop it. So no descriptor is
 * closed under a write; a number reused by a later file is written for
 * that file's writer only, the released writer's entry never again.
 */
import type { KeyObject } from 'node:crypto';
import { fsyncSync } from 'node:fs';
import { setPriority } from 'node:os';
import { parentPort } from 'node:worker_threads';
import {
  FORMAT_VERSION,
  RecordType,
  encodeRecord,
  encodeTrailer,
  recordDigest,
  sealRecords,
  type CheckpointBody,
  type FooterBody,
  type RecordDigest,
} from './format.js';
import { appendAllSync } from './append.js';
import { CHECKPOINT_SIG_DOMAIN, FOOTER_SIG_DOMAIN, batchSignedPayloads, signedItem, type SignedItem } from './signed-records.js';
import type { SealJob, SealOutcome, SealRequest, SealAnswer, SealRegister, SealError } from './seal-thread.js';

interface Recording {
  fd: number;
  digest: RecordDigest;
  sessionId: string;
  keyId: string;
  privateKey: KeyObject;
  fsyncAtClose: boolean;
}

const recordings = new Map<number, Recording>();
/** Private keys by key id, as sent with the first file each signs. */
const keys = new Map<string, KeyObject>();

/**
 * The thread is done with a recording: after its footer, a failure, or the
 * event loop's `drop`. The writer closes the file once it has the answer.
 */
function forget(writer: number): void {
  recordings.delete(writer);
}

function register(r: SealRegister): void {
  const f = r.file;
  if (f.privateKey !== undefined) keys.set(f.keyId, f.privateKey);
  const privateKey = keys.get(f.keyId);
  // Not reached: SealThread sends each key with the first file that names it. Were it reached, the
  // writer's first batch would fail ("no such recording open") and its session end.
  if (privateKey === undefined) return;
  recordings.set(r.writer, { fd: f.fd, digest: recordDigest(FORMAT_VERSION, f.header), sessionId: f.sessionId, keyId: f.keyId, privateKey, fsyncAtClose: f.fsyncAtClose });
}

/** A batch sealed as far as it can be before the signature: its records, and the body of the signed record that ends it. */
interface Sealed {
  job: SealJob;
  r: Recording;
  views: Uint8Array[];
  signed?: { type: number; seq: number; micros: number; item: SignedItem };
  /** The signed record's payload, from the signing pass. */
  payload?: Buffer;
  finalChain?: string;
}

/** The outcome of a batch that failed: nothing more is appended to its file, and the event loop fails the session. */
function failure(job: SealJob, err: unknown, written = 0, added = 0): SealOutcome {
  forget(job.writer);
  return { writer: job.writer, written, added, error: sealError(err) };
}

/** An error as the event loop is told of it: its message and errno code. */
function sealError(err: unknown): SealError {
  const e = err as NodeJS.ErrnoException;
  return { message: e instanceof Error ? e.message : String(err), ...(typeof e?.code === 'string' ? { code: e.code } : {}) };
}

/**
 * First pass: the records' CRCs and digest, then the body of the checkpoint
 * or footer, which holds the digest so far. A batch ends in one of them at
 * most (the writer takes a checkpoint only in a batch that is not its last;
 * one with both fails here rather than be sealed out of order), and a
 * writer has one batch in a message (SealThread.seal refuses a second
 * while the first is in flight): the passes rely on both.
 */
function seal(job: SealJob): Sealed | SealOutcome {
  const r = recordings.get(job.writer);
  if (r === undefined) return { writer: job.writer, written: 0, added: 0, error: { message: 'the seal thread has no such recording open' } };
  if (job.checkpoint !== undefined && job.footer !== undefined) return failure(job, new Error('a batch with both a checkpoint and the footer'));
  try {
    const views: Uint8Array[] = [];
    for (const p of job.pieces) {
      const view = new Uint8Array(p.buffer, p.start, p.end - p.start);
      sealRecords(view, 0, view.length);
      r.digest.update(view);
      views.push(view);
    }
    const sealed: Sealed = { job, r, views };
    if (job.checkpoint !== undefined) {
      const body: CheckpointBody = { sessionId: r.sessionId, seq: job.checkpoint.seq, chain: r.digest.value(), micros: job.checkpoint.micros };
      sealed.signed = { type: RecordType.checkpoint, seq: body.seq, micros: body.micros, item: signedItem(CHECKPOINT_SIG_DOMAIN, body) };
    } else if (job.footer !== undefined) {
      const f = job.footer;
      const body: FooterBody = {
        sessionId: r.sessionId,
        keyId: r.keyId,
        recordCount: f.recordCount,
        micros: f.micros,
        finalChain: (sealed.finalChain = r.digest.value()),
        endedAt: f.endedAt,
        closeReason: f.closeReason,
        bytesClientToGateway: f.bytesClientToGateway,
        bytesGatewayToClient: f.bytesGatewayToClient,
        truncated: f.truncated,
      };
      sealed.signed = { type: RecordType.footer, seq: f.recordCount, micros: f.micros, item: signedItem(FOOTER_SIG_DOMAIN, body) };
    }
    return sealed;
  } catch (err) {
    return failure(job, err);
  }
}

/**
 * Second pass: one signature per key over every checkpoint and footer of
 * the message (their JSON was made in the first pass, per batch). If a
 * signature fails, the batches it was for fail (their recordings end);
 * the others go on.
 */
function signAll(sealed: Array<Sealed | SealOutcome>): void {
  const byKey = new Map<KeyObject, number[]>();
  sealed.forEach((s, i) => {
    if (!('job' in s) || s.signed === undefined) return;
    const group = byKey.get(s.r.privateKey);
    if (group) group.push(i);
    else byKey.set(s.r.privateKey, [i]);
  });
  for (const [key, group] of byKey) {
    const members = group.map((i) => sealed[i] as Sealed);
    try {
      const payloads = batchSignedPayloads(members.map((s) => s.signed!.item), key);
      members.forEach((s, k) => (s.payload = payloads[k]));
    } catch (err) {
      for (const i of group) sealed[i] = failure((sealed[i] as Sealed).job, err);
    }
  }
}

/** Third pass: the signed record (and a footer's trailer) after the records, one writev, and a close's fsync. */
function append(s: Sealed): SealOutcome {
  const { job, r, views } = s;
  let added = 0;
  let written = 0;
  try {
    if (s.signed !== undefined) {
      const rec = encodeRecord(s.signed.type, 0, s.signed.seq, s.signed.micros, s.payload!);
      views.push(rec);
      added += rec.length;
      if (s.signed.type === RecordType.checkpoint) {
        // A checkpoint is one of the file's records: the digest goes on over it.
        r.digest.update(rec);
      } else {
        const trailer = encodeTrailer(rec.length);
        views.push(trailer);
        added += trailer.length;
      }
    }
    written = appendAllSync(r.fd, views);
    const synced = job.footer !== undefined && r.fsyncAtClose;
    if (synced) fsyncSync(r.fd);
    return { writer: job.writer, written, added, ...(s.finalChain !== undefined ? { finalChain: s.finalChain } : {}), ...(synced ? { synced } : {}) };
  } catch (err) {
    return failure(job, err, written, added);
  }
}

parentPort!.on('message', (m: SealRequest) => {
  if (m.op === 'drop') {
    forget(m.writer);
    return;
  }
  if (m.op === 'stall') {
    Atomics.wait(new Int32Array(m.gate), 0, 0);
    return;
  }
  for (const r of m.registers) register(r);
  if (m.jobs.length === 0) return;
  const sealed = m.jobs.map(seal);
  signAll(sealed);
  // Live recordings' batches first, answered before the footers' appends and fsyncs: a flush
  // tick's message takes the footers waiting at that moment along (seal-thread.ts), and their
  // fsyncs, up to one per footer, take the disk's time while those writers wait for their answers.
  // A batch that failed in the first two passes is answered with the live ones (failure() has
  // forgotten its recording already).
  const live: SealOutcome[] = [];
  const last: Sealed[] = [];
  for (const s of sealed) {
    if (!('job' in s)) live.push(s);
    else if (s.job.footer === undefined) live.push(append(s));
    else last.push(s);
  }
  if (live.length > 0) parentPort!.postMessage({ outcomes: live } satisfies SealAnswer);
  if (last.length === 0) return;
  const outcomes = last.map(append);
  for (const s of last) forget(s.job.writer);
  parentPort!.postMessage({ outcomes } satisfies SealAnswer);
});
/**
 * On Linux this thread runs at the lowest CPU priority (nice 19). Nothing waits for
 * it on the data path: the event loop stages records and goes on, and only
 * the crash-loss bound and the staged memory depend on how soon a batch is
 * appended. At normal priority, its bursts (every writer's batch at each
 * flush tick) took a core from the event loop, the client and the
 * upstream when all three had work; at nice 19 it runs in the gaps they
 * leave. Measured with bench:redis SET -P 16 (50 sessions, 2 cores):
 * recording went from 0.88x of plain Sluice's throughput to 0.95x
 * (bench/RESULTS.md). Under a sustained CPU shortage it gets less than its
 * share and its backlog grows (docs/recording-format.md, Limits).
 *
 * Linux only: there the nice value is per thread, and who = 0 is this
 * thread alone. Elsewhere it is the process's (macOS) or its priority
 * class (Windows), which would lower the event loop too. Raising one's own
 * nice value needs no privilege; where the system refuses anyway (a
 * seccomp profile, say), the thread keeps the process's priority and works
 * as before.
 */
const SEAL_THREAD_NICE = 19;
if (process.platform === 'linux') {
  try {
    setPriority(SEAL_THREAD_NICE);
  } catch {
    // Kept at the process's priority: slower under contention, never wrong.
  }
}
parentPort!.postMessage('ready');

/**
 * The seal thread (see seal-thread.ts): for every recording open in the
 * process, fills in the CRCs of the records the event loop staged, feeds
 * them to the recording's running digest, adds the signed checkpoints and
 * the footer, and appends each batch to the file with one writev. Writes
 * are synchronous here: this thread has nothing else to do while the disk
 * works, and the event loop never waits for it.
 *
 * One message from the event loop carries every batch taken in one flush
 * tick; one answer carries every outcome, in the same order.
 */
import type { KeyObject } from 'node:crypto';
import { fsyncSync } from 'node:fs';
import { setPriority } from 'node:os';
import { parentPort } from 'node:worker_threads';
import {
  CHECKPOINT_SIG_DOMAIN,
  FOOTER_SIG_DOMAIN,
  FORMAT_VERSION,
  RecordType,
  encodeRecord,
  encodeTrailer,
  recordDigest,
  sealRecords,
  signedPayload,
  type CheckpointBody,
  type FooterBody,
  type RecordDigest,
} from './format.js';
import { appendAllSync } from './append.js';
import type { SealJob, SealOutcome, SealRequest, SealAnswer, SealOpen } from './seal-thread.js';

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

function register(writer: number, open: SealOpen): void {
  if (open.privateKey !== undefined) keys.set(open.keyId, open.privateKey);
  const privateKey = keys.get(open.keyId);
  // Not reached: SealThread sends each key before any file that names it.
  if (privateKey === undefined) return;
  recordings.set(writer, { fd: open.fd, digest: recordDigest(FORMAT_VERSION, open.header), sessionId: open.sessionId, keyId: open.keyId, privateKey, fsyncAtClose: open.fsyncAtClose });
}

function seal(job: SealJob): SealOutcome {
  if (job.open !== undefined) register(job.writer, job.open);
  const r = recordings.get(job.writer);
  if (r === undefined) return { writer: job.writer, written: 0, added: 0, chain: '', error: { message: 'the seal thread has no such recording open' } };
  const views: Uint8Array[] = [];
  let added = 0;
  let written = 0;
  try {
    for (const p of job.pieces) {
      const view = new Uint8Array(p.buffer, p.start, p.end - p.start);
      sealRecords(view, 0, view.length);
      r.digest.update(view);
      views.push(view);
    }
    if (job.checkpoint !== undefined) {
      const body: CheckpointBody = { sessionId: r.sessionId, seq: job.checkpoint.seq, chain: r.digest.value(), micros: job.checkpoint.micros };
      const cp = encodeRecord(RecordType.checkpoint, 0, body.seq, body.micros, signedPayload(CHECKPOINT_SIG_DOMAIN, body, r.privateKey));
      r.digest.update(cp);
      views.push(cp);
      added += cp.length;
    }
    let finalChain: string | undefined;
    if (job.footer !== undefined) {
      const f = job.footer;
      const body: FooterBody = {
        sessionId: r.sessionId,
        keyId: r.keyId,
        recordCount: f.recordCount,
        finalChain: (finalChain = r.digest.value()),
        endedAt: f.endedAt,
        closeReason: f.closeReason,
        bytesClientToGateway: f.bytesClientToGateway,
        bytesGatewayToClient: f.bytesGatewayToClient,
        truncated: f.truncated,
      };
      const footer = encodeRecord(RecordType.footer, 0, f.recordCount, f.micros, signedPayload(FOOTER_SIG_DOMAIN, body, r.privateKey));
      const trailer = encodeTrailer(footer.length);
      views.push(footer, trailer);
      added += footer.length + trailer.length;
    }
    written = appendAllSync(r.fd, views);
    const synced = job.footer !== undefined && r.fsyncAtClose;
    if (synced) fsyncSync(r.fd);
    return { writer: job.writer, written, added, chain: finalChain ?? r.digest.value(), ...(synced ? { synced } : {}) };
  } catch (err) {
    // Nothing more is appended to this file: the event loop fails the session.
    recordings.delete(job.writer);
    const e = err as NodeJS.ErrnoException;
    return {
      writer: job.writer,
      written,
      added,
      chain: '',
      error: { message: e instanceof Error ? e.message : String(err), ...(typeof e?.code === 'string' ? { code: e.code } : {}) },
    };
  }
}

parentPort!.on('message', (m: SealRequest) => {
  if (m.op === 'drop') {
    recordings.delete(m.writer);
    return;
  }
  if (m.op === 'stall') {
    Atomics.wait(new Int32Array(m.gate), 0, 0);
    return;
  }
  const outcomes: SealOutcome[] = [];
  for (const job of m.jobs) {
    outcomes.push(seal(job));
    if (job.footer !== undefined) recordings.delete(job.writer);
  }
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

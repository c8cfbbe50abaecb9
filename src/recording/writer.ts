/**
 * Writes one session's recording (format: format.ts, docs/recording-format.md).
 *
 * The relay calls record() for every chunk in both directions, so record()
 * does no I/O, no hashing and no allocation of its own: it frames the chunk
 * (seq, micros, length) into an in-memory slab, right after the record
 * before it, and returns. A process-wide tick (every flushIntervalMs,
 * default 200 ms, shared by every writer with that interval), or a
 * full staging area (128 KiB), flushes: the staged records, one contiguous
 * run of the slab in the common case, go to the seal thread as a batch
 * (seal-thread.ts), which fills in their CRCs, feeds them to the running
 * digest, adds a signed checkpoint when this writer says one is due, and
 * appends the batch with one write. One batch is in flight at a time; the
 * file is opened O_APPEND|O_EXCL and never rewritten.
 *
 * What a crash loses is bounded by the flush interval while the seal
 * thread keeps up (for a session that has just closed, its last batch
 * waits up to 100 ms for other sessions', seal-thread.ts), and by
 * maxBacklogBytes when it does not (the session
 * stops reading at that point, see onBacklog): the file always ends at a
 * record boundary of some earlier flush (or, after a power loss, a partial
 * record the reader reports and stops before).
 *
 * Fail closed: a write error or the size cap calls onFailure once with a
 * SluiceError; the gateway ends the session. A write error also marks the
 * recorder unhealthy (recorderHealth(), for /healthz and admission) until a
 * write by any writer, or RecordingWriter.probe(), succeeds again.
 */
import { Buffer } from 'node:buffer';
import { performance } from 'node:perf_hooks';
import { hrtime } from 'node:process';
import { mkdir, open, unlink, type FileHandle } from 'node:fs/promises';
import { join } from 'node:path';
import { ErrorCodes, SluiceError } from '../errors.js';
import {
  DIRECTION_CODE,
  FILE_EXTENSION,
  FORMAT_VERSION,
  RECORD_OVERHEAD,
  RecordType,
  SESSION_ID_PATTERN,
  datePath,
  encodeHeader,
  stageRecord,
  type Direction,
  type RecordingHeader,
  type RecordingMeta,
} from './format.js';
import { closeRecordingFile, createRecordingFile } from './files.js';
import type { RecordingKey } from './keys.js';
import { errorFrom, sealThread, type SealJob, type SealOutcome, type SealPiece, type SealThread } from './seal-thread.js';

export const DEFAULT_FLUSH_INTERVAL_MS = 200;
export const DEFAULT_MAX_BYTES = 1024 * 1024 * 1024;
export const DEFAULT_CHECKPOINT_RECORDS = 1000;
export const DEFAULT_CHECKPOINT_MS = 10_000;
/**
 * Bytes a session may have recorded but not yet written (staged, or in the
 * batch the seal thread is writing) before its relay stops reading; see
 * RecordingWriterOptions.maxBacklogBytes.
 */
export const DEFAULT_MAX_BACKLOG_BYTES = 8 * 1024 * 1024;
/**
 * Staged bytes that trigger a flush before the timer. Small on purpose: a
 * fast session's records are then hashed and handed to the kernel while
 * still in the CPU caches, instead of streaming megabytes per session
 * through memory three times (staged, hashed, copied). In interleaved A/B
 * runs of bench:redis SET -P 16 (50 sessions), 4 MiB / 1 MiB slabs cost
 * about 0.5 µs of gateway CPU per request over no recording, these about 0.3.
 */
const FLUSH_AT_BYTES = 128 * 1024;
const SLAB_SIZE = 256 * 1024;
const FIRST_SLAB_SIZE = 16 * 1024;
const EMPTY_SLAB = Buffer.alloc(0);
/** Room kept under the cap for the truncated marker, a checkpoint, the footer and the trailer. */
const CAP_RESERVE = 8 * 1024;
/**
 * What a checkpoint, and a footer with its trailer, are counted as until the
 * seal thread, which makes them, says their size (a few hundred bytes; the
 * JSON's numbers, the close reason and the batch's inclusion proof, up to
 * 265 bytes, vary). Only the size cap reads the count in between, and
 * CAP_RESERVE has room for either.
 */
const CHECKPOINT_ESTIMATE = 1024;
const FOOTER_ESTIMATE = 1536;

export interface RecordingWriterOptions {
  stateDir: string;
  meta: RecordingMeta;
  key: RecordingKey;
  flushIntervalMs?: number;
  /** Size cap of the file, bytes (default 1 GiB). */
  maxBytes?: number;
  /** A signed checkpoint after this many records (default 1000) ... */
  checkpointEveryRecords?: number;
  /** ... or when this long has passed since the last one, at a flush (default 10 s). */
  checkpointEveryMs?: number;
  /**
   * Backlog bound, bytes (default 8 MiB). The seal thread runs at the
   * lowest CPU priority and one slow disk delays every recording: when a
   * session's unwritten records reach this, `onBacklog(true)` tells the
   * session to stop reading from both sides, and `onBacklog(false)` once a
   * batch is written and less than a quarter of it is left. So a recording
   * never falls further behind its session than this, in memory or in
   * what a crash loses.
   */
  maxBacklogBytes?: number;
  /**
   * Fsync the file once its footer is written (default true): a finished
   * session's recording then survives a power loss. False leaves the
   * write-back to the operating system; a process crash loses nothing
   * more either way, the file being written at every flush.
   */
  fsyncAtClose?: boolean;
  onBacklog?(behind: boolean): void;
  /** Called once, when the recording can no longer follow the session: end the session. */
  onFailure(err: SluiceError): void;
}

export interface RecordingResult {
  path: string;
  size: number;
  /**
   * The footer's final chain (hex): the digest over the header and every
   * record before the footer. Undefined when no footer was written: the
   * seal thread computes the digest's value only where it is signed (a
   * checkpoint, the footer), not after every batch.
   */
  finalHash: string | undefined;
  /** Records before the footer. */
  recordCount: number;
  /** A signed footer was written. */
  complete: boolean;
  /** The file was fsynced after its footer (fsyncAtClose). */
  synced: boolean;
  truncated: boolean;
  bytesClientToGateway: number;
  bytesGatewayToClient: number;
}

// --- recorder health (process-wide) ------------------------------------------

let healthOk = true;
let healthError: string | undefined;

function markHealthy(): void {
  healthOk = true;
  healthError = undefined;
}

function markUnhealthy(err: unknown): void {
  healthOk = false;
  healthError = describe(err);
}

/**
 * The last file create failed (and none has succeeded since). Appends of
 * live sessions may still succeed and mark the recorder healthy meanwhile;
 * admission reads this too, to try the create before an upstream login.
 */
let createFailing = false;

export function createsFailing(): boolean {
  return createFailing;
}

/** For /healthz and admission: not ok after a recording write failed, until one succeeds again. */
export function recorderHealth(): { ok: boolean; lastError?: string } {
  return healthOk ? { ok: true } : { ok: false, lastError: healthError! };
}

/** A short, path-free-of-secrets description: errno code and message. */
function describe(err: unknown): string {
  const e = err as NodeJS.ErrnoException;
  if (e && typeof e === 'object' && typeof e.message === 'string') {
    return e.code && !e.message.startsWith(e.code) ? `${e.code}: ${e.message}` : e.message;
  }
  return String(err);
}

function writeFailed(what: string, err: unknown): SluiceError {
  return new SluiceError(ErrorCodes.RECORDING_WRITE_FAILED, `session recording: ${what}: ${describe(err)}`, { cause: err });
}

// --- flush ticks (process-wide) ------------------------------------------------

/**
 * One interval timer per flush interval for all writers, not one per
 * writer: with many sessions open, per-writer timers woke an otherwise idle
 * event loop once per session per interval. Each writer is still flushed
 * within one interval of its records, which is the crash-loss bound.
 */
const flushTicks = new Map<number, { timer: NodeJS.Timeout; flushes: Set<() => void> }>();

function onFlushTick(intervalMs: number, flush: () => void): () => void {
  let tick = flushTicks.get(intervalMs);
  if (!tick) {
    const flushes = new Set<() => void>();
    const timer = setInterval(() => {
      for (const f of flushes) f();
    }, intervalMs);
    timer.unref();
    tick = { timer, flushes };
    flushTicks.set(intervalMs, tick);
  }
  const t = tick;
  t.flushes.add(flush);
  return () => {
    t.flushes.delete(flush);
    if (t.flushes.size === 0 && flushTicks.get(intervalMs) === t) {
      clearInterval(t.timer);
      flushTicks.delete(intervalMs);
    }
  };
}

// --- slabs (process-wide) -----------------------------------------------------

/**
 * Full-size slabs whose records are on disk, for the next writer that needs
 * one. A fresh slab is fresh memory: the first write to each of its
 * pages faulted (a few percent of the recording's CPU in profiles), and
 * every new slab is external memory that brings the next full (mark-compact)
 * GC closer.
 *
 * How many are kept follows the number of open writers (one each, at least
 * 16, at most 256 = 64 MiB): busy sessions retire slabs at about the same
 * moments, so a fixed 16 overflowed and emptied in turns. Measured with 50
 * sessions recording redis-benchmark -P 16: 277 of 400 full slabs were
 * dropped and as many allocated anew, and a major GC ran every half second
 * (about 5% of the gateway's CPU); with one spare per writer, slabs are
 * reused.
 *
 * Spares outlive the writers that returned them by SPARE_KEEP_MS: the
 * limit follows the most writers open at once since the last trim, not
 * the writers open now. Sessions come and go in waves (a CI job's
 * connections, a benchmark's runs); when the spares were cut back to 16
 * as each wave closed, the next wave of 50 sessions allocated about 16 MiB
 * of slabs anew (fresh memory and external memory again, as above). A new
 * writer also takes a spare for its first slab, instead of growing from
 * 16 KiB: the slab is already allocated, held by the pool or by the
 * session.
 */
const spareSlabs: Buffer[] = [];
/**
 * First slabs (FIRST_SLAB_SIZE) whose records are on disk, whether their
 * writer closed or outgrew them, for the next writer when no full-size
 * spare is left: what short sessions use under connection churn (a CI
 * suite's connections, pgbench -C). A SharedArrayBuffer is zero-filled and registered with
 * V8's backing store table when made, and finalized by the GC: about 7 µs
 * for 16 KiB here, against a pop. Bounded like the full-size spares.
 */
const spareFirstSlabs: Buffer[] = [];
const MIN_SPARE_SLABS = 16;
const MAX_SPARE_SLABS = 256;
const SPARE_KEEP_MS = 30_000;
let openWriters = 0;
/** The most writers open at once since the last trim. */
let peakWriters = 0;
let spareTrim: NodeJS.Timeout | undefined;

function spareLimit(): number {
  return Math.min(MAX_SPARE_SLABS, Math.max(MIN_SPARE_SLABS, peakWriters));
}

function writerOpened(): void {
  openWriters++;
  if (openWriters > peakWriters) peakWriters = openWriters;
}

function writerClosed(): void {
  openWriters--;
  if (spareTrim === undefined) {
    spareTrim = setTimeout(trimSpareSlabs, SPARE_KEEP_MS);
    spareTrim.unref();
  }
}

/**
 * Keeps as many spares as writers are open now (at least 16); the rest is
 * left to the GC. Runs SPARE_KEEP_MS after a writer closed; exported so
 * tests need not wait for it.
 */
export function trimSpareSlabs(): void {
  if (spareTrim !== undefined) clearTimeout(spareTrim);
  spareTrim = undefined;
  peakWriters = openWriters;
  spareSlabs.length = Math.min(spareSlabs.length, spareLimit());
  spareFirstSlabs.length = Math.min(spareFirstSlabs.length, spareLimit());
}

/** Spare slabs held now (full-size, and first-size), and how many of each may be: for tests. */
export function spareSlabStats(): { spares: number; firstSpares: number; limit: number } {
  return { spares: spareSlabs.length, firstSpares: spareFirstSlabs.length, limit: spareLimit() };
}

/** Staging memory: shared, so the seal thread can read a batch and fill in its CRCs where it lies. */
function sharedBuffer(size: number): Buffer {
  return Buffer.from(new SharedArrayBuffer(size));
}

function takeSlab(size: number): Buffer {
  if (size <= SLAB_SIZE) {
    const spare = spareSlabs.pop();
    if (spare) return spare;
  }
  return sharedBuffer(size);
}

function piece(b: Buffer): SealPiece {
  return { buffer: b.buffer as SharedArrayBuffer, start: b.byteOffset, end: b.byteOffset + b.length };
}

let nextWriterId = 1;

function giveBackSlabs(slabs: Buffer[]): void {
  for (const slab of slabs) {
    if (slab.length === SLAB_SIZE) {
      if (spareSlabs.length < spareLimit()) spareSlabs.push(slab);
    } else if (slab.length === FIRST_SLAB_SIZE && spareFirstSlabs.length < spareLimit()) {
      spareFirstSlabs.push(slab);
    }
  }
}

// -----------------------------------------------------------------------------

export class RecordingWriter {
  readonly path: string;
  readonly sessionId: string;
  private readonly id: number;
  /** The file, open until release (the seal thread appends to it by this number). */
  private readonly fd: number;
  private readonly seal: SealThread;
  private released = false;
  private readonly maxBytes: number;
  private readonly checkpointRecords: number;
  private readonly checkpointMs: number;
  private readonly onFailure: (err: SluiceError) => void;
  private readonly maxBacklog: number;
  private readonly onBacklog: ((behind: boolean) => void) | undefined;
  /** onBacklog(true) was called, and onBacklog(false) not since. */
  private behind = false;
  /** Bytes of the batch taken last, while the seal thread writes it (0 when none is in flight). */
  private inFlightBytes = 0;
  /** hrtime() at the start: seconds and nanoseconds, as two numbers (see micros). */
  private readonly t0s: number;
  private readonly t0ns: number;
  private readonly unsubscribe: () => void;

  /** The footer's finalChain, once the seal thread has appended the footer. */
  private chain: string | undefined;
  private nextSeq = 0;
  /** Bytes on disk plus bytes staged: what the file will be after the next flush. */
  private accounted: number;
  private written: number;

  /**
   * Framed records not yet written, in order: closed pieces (runs of earlier
   * slabs, records too large for a slab), then the open run
   * slab[runStart, slabPos) that record() extends.
   */
  private staged: Buffer[] = [];
  private stagedBytes = 0;
  /** A spare when there is one; else starts small (most sessions are small) and doubles up to SLAB_SIZE. */
  private slab: Buffer = spareSlabs.pop() ?? spareFirstSlabs.pop() ?? sharedBuffer(FIRST_SLAB_SIZE);
  private slabPos = 0;
  private runStart = 0;
  /**
   * Slabs replaced since the last batch was taken. Their records are all
   * staged; once the batch that holds them is written (and, writes being
   * one at a time, every batch before it), they can serve another writer.
   */
  private retired: Buffer[] = [];

  /** Records numbered below this have been taken into a batch. */
  private takenSeq = 0;
  private recordsSinceCheckpoint = 0;
  private lastCheckpointAt: number;
  private bytesIn = 0;
  private bytesOut = 0;

  private writing: Promise<void> | undefined;
  private flushSoon = false;
  private stopped = false;
  private closing = false;
  private isFailed = false;
  private isTruncated = false;
  private failureReported = false;
  /** The seal thread fsynced the file after the footer. */
  private synced = false;

  private constructor(opts: RecordingWriterOptions, id: number, path: string, fd: number, header: Buffer, seal: SealThread) {
    this.id = id;
    this.path = path;
    this.fd = fd;
    this.sessionId = opts.meta.sessionId;
    this.seal = seal;
    this.maxBytes = opts.maxBytes ?? DEFAULT_MAX_BYTES;
    this.checkpointRecords = opts.checkpointEveryRecords ?? DEFAULT_CHECKPOINT_RECORDS;
    this.checkpointMs = opts.checkpointEveryMs ?? DEFAULT_CHECKPOINT_MS;
    this.onFailure = opts.onFailure;
    this.maxBacklog = opts.maxBacklogBytes ?? DEFAULT_MAX_BACKLOG_BYTES;
    this.onBacklog = opts.onBacklog;
    const [t0s, t0ns] = hrtime();
    this.t0s = t0s;
    this.t0ns = t0ns;
    this.lastCheckpointAt = performance.now();
    this.accounted = this.written = header.length;
    this.unsubscribe = onFlushTick(opts.flushIntervalMs ?? DEFAULT_FLUSH_INTERVAL_MS, () => this.flush());
    writerOpened();
  }

  /**
   * Creates `<stateDir>/recordings/YYYY/MM/DD/<sessionId>.sluicerec` (0600,
   * exclusive) with its header, off the event loop (files.ts), and hands it
   * to the seal thread; resolves once the header is written.
   */
  static async open(opts: RecordingWriterOptions): Promise<RecordingWriter> {
    const { meta } = opts;
    if (!SESSION_ID_PATTERN.test(meta.sessionId)) {
      throw new SluiceError(ErrorCodes.RECORDING_WRITE_FAILED, 'session recording: the session id is not usable as a file name');
    }
    const dir = join(opts.stateDir, 'recordings', ...datePath(meta.startedAt));
    const path = join(dir, `${meta.sessionId}${FILE_EXTENSION}`);
    const header: RecordingHeader = {
      version: FORMAT_VERSION,
      sessionId: meta.sessionId,
      target: meta.target,
      protocol: meta.protocol,
      subject: meta.subject,
      groups: meta.groups,
      issuer: meta.issuer,
      // Left out of the JSON when undefined, in the same place when not.
      tokenIdHash: meta.tokenIdHash,
      clientAddress: meta.clientAddress,
      startedAt: meta.startedAt,
      keyId: opts.key.keyId,
      monotonicStart: process.hrtime.bigint().toString(),
    };
    const headerBytes = encodeHeader(header);
    if (headerBytes.length + CAP_RESERVE > (opts.maxBytes ?? DEFAULT_MAX_BYTES)) {
      throw new SluiceError(ErrorCodes.RECORDING_SIZE_LIMIT, 'session recording: the size cap is smaller than a header and footer');
    }
    const id = nextWriterId++;
    let seal: SealThread;
    let fd: number | undefined;
    try {
      seal = sealThread();
      // The file is created while the thread boots (settled at once but for a process's first
      // sessions). Both are awaited together: a create failing during the boot is this session's
      // refusal, not an unhandled rejection that ends the process.
      const [file, boot] = await Promise.allSettled([createRecordingFile(dir, path, headerBytes), seal.ready]);
      if (boot.status === 'rejected') {
        if (file.status === 'fulfilled') closeRecordingFile(file.value);
        throw boot.reason;
      }
      if (file.status === 'rejected') throw file.reason;
      fd = file.value;
      seal.register(id, {
        fd,
        // A copy of its own: the header may sit in Node's 8 KiB buffer pool, and a posted
        // view carries its whole backing buffer.
        header: new Uint8Array(headerBytes),
        sessionId: meta.sessionId,
        keyId: opts.key.keyId,
        privateKey: opts.key.privateKey,
        fsyncAtClose: opts.fsyncAtClose ?? true,
      });
    } catch (err) {
      // The thread died during the create: the file, with its header alone, reads as incomplete.
      if (fd !== undefined) closeRecordingFile(fd);
      createFailing = true;
      markUnhealthy(err);
      throw writeFailed(`cannot create ${path}`, err);
    }
    createFailing = false;
    markHealthy();
    return new RecordingWriter(opts, id, path, fd, headerBytes, seal);
  }

  /** True while the recorder is healthy (no failed write since the last successful one). */
  static healthy(): boolean {
    return healthOk;
  }

  /**
   * Tries a small write (create, write, fsync, delete) under
   * `<stateDir>/recordings`; on success the recorder is healthy again. For the
   * gateway to call (rate-limited) while it refuses sessions.
   */
  static async probe(stateDir: string): Promise<boolean> {
    const dir = join(stateDir, 'recordings');
    const file = join(dir, `.probe-${process.pid}-${Date.now()}`);
    let fh: FileHandle | undefined;
    try {
      await mkdir(dir, { recursive: true, mode: 0o700 });
      fh = await open(file, 'wx', 0o600);
      await fh.writeFile(Buffer.alloc(4096));
      await fh.sync();
      markHealthy();
      return true;
    } catch (err) {
      markUnhealthy(err);
      return false;
    } finally {
      await fh?.close().catch(() => undefined);
      await unlink(file).catch(() => undefined);
    }
  }

  /** True once a write failed: nothing more is recorded and the session must end. */
  get failed(): boolean {
    return this.isFailed;
  }

  /**
   * Bytes recorded but not yet written: staged, or in the batch being
   * written. record() never waits for the disk or the seal thread, so
   * either being slower than the session grows this, up to maxBacklogBytes
   * (see onBacklog).
   */
  get backlogBytes(): number {
    return this.stagedBytes + this.inFlightBytes;
  }

  /** True once the size cap was reached. */
  get truncated(): boolean {
    return this.isTruncated;
  }

  /**
   * Appends one chunk as relayed, `client` = client -> gateway, `server` =
   * gateway -> client (after masking). The bytes are copied; the caller may
   * reuse its buffer. No I/O, no hashing; never throws.
   */
  record(direction: Direction, bytes: Uint8Array): void {
    if (this.stopped) return;
    const frame = RECORD_OVERHEAD + bytes.length;
    if (this.accounted + frame > this.maxBytes - CAP_RESERVE) {
      this.hitCap();
      return;
    }
    // A comparison, not DIRECTION_CODE[direction]: that keyed load went megamorphic in the relay
    // (19 ns against 2.5 in a micro-benchmark; about 0.3% of the relay's event loop at SET -P 1).
    if (direction === 'client') {
      this.stage(RecordType.data, DIRECTION_CODE.client, bytes);
      this.bytesIn += bytes.length;
    } else {
      this.stage(RecordType.data, DIRECTION_CODE.server, bytes);
      this.bytesOut += bytes.length;
    }
    if (this.stagedBytes >= FLUSH_AT_BYTES) this.staging();
  }

  /** Enough is staged for a batch: flush soon, and tell the session when the backlog reaches its bound. */
  private staging(): void {
    if (!this.flushSoon) {
      this.flushSoon = true;
      setImmediate(() => {
        this.flushSoon = false;
        this.flush();
      });
    }
    if (!this.behind && this.stagedBytes + this.inFlightBytes >= this.maxBacklog && this.onBacklog !== undefined) {
      this.behind = true;
      // Not from inside the relay's own record() call: the session pauses the relay's reads.
      process.nextTick(this.onBacklog, true);
    }
  }

  /** After a batch is written: the session may read again once most of the backlog is down. */
  private caughtUp(): void {
    if (this.behind && this.stagedBytes < this.maxBacklog / 4) {
      this.behind = false;
      // On the next tick like `true`, so the two always reach the session in the order they happened.
      process.nextTick(this.onBacklog!, false);
    }
  }

  private micros(): number {
    // Read for every record: hrtime(), not performance.now(), whose brand check (a symbol lookup on
    // the performance object) cost more than the clock read itself in profiles of the relay. Imported
    // from node:process, not read off the global `process`: that global is a getter (Node's deprecation
    // path for ES modules), called on every read; 44 ns against 73 a call in a micro-benchmark.
    const t = hrtime();
    return Math.max(0, (t[0] - this.t0s) * 1_000_000 + Math.floor((t[1] - this.t0ns) / 1000));
  }

  private stage(type: number, direction: number, payload: Uint8Array): void {
    const frame = RECORD_OVERHEAD + payload.length;
    if (frame > SLAB_SIZE / 4) {
      this.closeRun();
      const own = sharedBuffer(frame);
      stageRecord(own, 0, type, direction, this.nextSeq++, this.micros(), payload);
      this.staged.push(own);
    } else {
      if (this.slabPos + frame > this.slab.length) {
        this.closeRun();
        this.retired.push(this.slab);
        // A spare full-size slab when there is one, else the next size up.
        this.slab = spareSlabs.length > 0 ? takeSlab(SLAB_SIZE) : sharedBuffer(Math.max(frame, Math.min(SLAB_SIZE, this.slab.length * 2)));
        this.slabPos = this.runStart = 0;
      }
      this.slabPos = stageRecord(this.slab, this.slabPos, type, direction, this.nextSeq++, this.micros(), payload);
    }
    this.stagedBytes += frame;
    this.accounted += frame;
  }

  /** Ends the open run of the slab: it becomes a staged piece, and a new run starts where it ended. */
  private closeRun(): void {
    if (this.slabPos > this.runStart) this.staged.push(this.slab.subarray(this.runStart, this.slabPos));
    this.runStart = this.slabPos;
  }

  private hitCap(): void {
    if (this.isTruncated) return;
    this.isTruncated = true;
    this.stopped = true;
    const marker = Buffer.from(JSON.stringify({ reason: 'size cap', maxBytes: this.maxBytes }), 'utf8');
    this.stage(RecordType.truncated, 0, marker);
    this.reportFailure(
      new SluiceError(
        ErrorCodes.RECORDING_SIZE_LIMIT,
        `session recording reached its size cap of ${this.maxBytes} bytes; the session is ended`,
      ),
    );
    this.flush();
  }

  private reportFailure(err: SluiceError): void {
    if (this.failureReported) return;
    this.failureReported = true;
    // Never re-enter the relay from inside its own record() call.
    process.nextTick(() => this.onFailure(err));
  }

  /**
   * Takes the staged records into a batch for the seal thread, with a
   * checkpoint when due (its seq reserved here) or, when closing, the
   * footer. Synchronous, so no record() can interleave with the sequence
   * numbers it assigns.
   */
  private takeBatch(final: FooterInfo | undefined): SealJob {
    this.closeRun();
    const job: SealJob = { writer: this.id, pieces: this.staged.map(piece) };
    this.staged = [];
    this.inFlightBytes = this.stagedBytes;
    this.stagedBytes = 0;
    this.recordsSinceCheckpoint += this.nextSeq - this.takenSeq;
    this.takenSeq = this.nextSeq;
    const now = performance.now();
    // Nothing but the footer follows the truncated marker (verify refuses anything else): no
    // checkpoint once the cap is reached, even one due at that moment.
    if (
      !final &&
      !this.isTruncated &&
      this.recordsSinceCheckpoint > 0 &&
      (this.recordsSinceCheckpoint >= this.checkpointRecords || now - this.lastCheckpointAt >= this.checkpointMs)
    ) {
      job.checkpoint = { seq: this.nextSeq++, micros: this.micros() };
      this.takenSeq = this.nextSeq;
      this.accounted += CHECKPOINT_ESTIMATE;
      this.recordsSinceCheckpoint = 0;
      this.lastCheckpointAt = now;
    }
    if (final) {
      job.footer = {
        recordCount: this.nextSeq,
        micros: this.micros(),
        endedAt: final.endedAt,
        closeReason: final.closeReason,
        bytesClientToGateway: this.bytesIn,
        bytesGatewayToClient: this.bytesOut,
        truncated: this.isTruncated,
      };
      this.accounted += FOOTER_ESTIMATE;
    }
    // The slab is not reset: the batch holds offsets into its used part, new
    // records go after them, and a full slab is replaced, never overwritten.
    return job;
  }

  /** Starts a write of what is staged, unless one is in flight (it chains another when done). */
  private flush(): void {
    if (this.isFailed || this.writing || this.closing) return;
    if (this.stagedBytes === 0 && (this.isTruncated || !(this.recordsSinceCheckpoint > 0 && performance.now() - this.lastCheckpointAt >= this.checkpointMs))) return;
    const job = this.takeBatch(undefined);
    if (job.pieces.length === 0 && job.checkpoint === undefined) return;
    const done = this.retired;
    this.retired = [];
    this.writing = this.write(job, done).finally(() => {
      this.writing = undefined;
      if (!this.isFailed) this.caughtUp();
      if (this.stagedBytes >= FLUSH_AT_BYTES) this.flush();
    });
  }

  /** Has the seal thread append a batch; `done` = slabs with no record outside this batch or earlier ones, reusable once it is written. */
  private async write(job: SealJob, done: Buffer[]): Promise<void> {
    const estimated = (job.checkpoint ? CHECKPOINT_ESTIMATE : 0) + (job.footer ? FOOTER_ESTIMATE : 0);
    const o: SealOutcome = await this.seal.seal(job);
    this.inFlightBytes = 0;
    this.accounted += o.added - estimated;
    this.written += o.written;
    if (o.error !== undefined) {
      this.fail(errorFrom(o.error));
      return;
    }
    if (o.finalChain !== undefined) this.chain = o.finalChain;
    this.synced = o.synced === true;
    markHealthy();
    if (done.length > 0) giveBackSlabs(done);
  }

  /** Done with the seal thread (no batch in flight): the file is closed. */
  private release(drop: boolean): void {
    if (this.released) return;
    this.released = true;
    this.seal.release(this.id, drop);
    closeRecordingFile(this.fd);
  }

  private fail(err: unknown): void {
    if (this.isFailed) return;
    this.isFailed = true;
    this.stopped = true;
    this.staged = [];
    this.stagedBytes = 0;
    this.retired = [];
    this.runStart = this.slabPos;
    this.release(true);
    markUnhealthy(err);
    this.reportFailure(writeFailed(`cannot append to ${this.path}`, err));
  }

  /**
   * Writes what is staged, the signed footer and the trailer, fsyncs
   * (unless fsyncAtClose is false) and closes. After a failure it only
   * closes (the file stays incomplete).
   */
  async close(info: { closeReason: string; endedAt?: string }): Promise<RecordingResult> {
    if (!this.closing) writerClosed();
    this.stopped = true;
    this.closing = true;
    this.unsubscribe();
    while (this.writing) await this.writing;
    let complete = false;
    if (!this.isFailed) {
      const job = this.takeBatch({ closeReason: info.closeReason, endedAt: info.endedAt ?? new Date().toISOString() });
      // Nothing is recorded after the footer: the current slab goes back too.
      const done = [...this.retired, this.slab];
      this.retired = [];
      this.slab = EMPTY_SLAB;
      this.slabPos = this.runStart = 0;
      // The seal thread appends the footer and trailer and fsyncs the file (unless fsyncAtClose is false).
      await this.write(job, done);
      if (!this.isFailed) {
        complete = true;
        this.release(false);
      }
    }
    // After a failure: the seal thread forgets the recording, and the file is closed.
    this.release(true);
    return {
      path: this.path,
      size: this.written,
      finalHash: complete ? this.chain : undefined,
      recordCount: this.nextSeq,
      complete,
      synced: this.synced,
      truncated: this.isTruncated,
      bytesClientToGateway: this.bytesIn,
      bytesGatewayToClient: this.bytesOut,
    };
  }
}

interface FooterInfo {
  closeReason: string;
  endedAt: string;
}

/**
 * Transcripts of recorded sessions: the records of a recording, in order,
 * decoded per protocol (transcript-postgres.ts, transcript-redis.ts) into
 * events with a time (ms since the session started), a direction and a
 * line of text for a person; `--json` gives the same events as objects.
 *
 * The decoders run over the two directions of the recording record by
 * record, so each event carries the time of the record that completed it.
 * Nothing here trusts the recording's content: every string that came from
 * a client or server is shown with control characters escaped, and
 * credentials (already redacted by the taps) are never shown even when a
 * recording holds them.
 */
import { stat } from 'node:fs/promises';
import type { Direction, FooterBody, RecordingHeader } from './format.js';
import { readRecording } from './reader.js';

export interface Stamp {
  /** Milliseconds since the session started (the record's monotonic time). */
  t: number;
  /** The record that completed the event. */
  seq: number;
}

export interface TranscriptEvent extends Stamp {
  /** 'client': what the client sent; 'server': what the client received. */
  dir: Direction | 'control';
  /** A short machine-readable name: query, parse, bind, result, error, denied, approval, command, reply, ... */
  kind: string;
  text: string;
  data?: Record<string, unknown>;
}

export type EmitFn = (e: TranscriptEvent) => void;

export interface ProtocolDecoder {
  push(direction: Direction, bytes: Buffer, at: Stamp, emit: EmitFn): void;
  /** End of the recording: pending aggregates, unfinished messages. */
  finish(emit: EmitFn, at: Stamp): void;
}

// --- helpers shared by the decoders ------------------------------------------------

/** Control and bidi characters escaped, as in `sluice sessions`. */
export function printable(s: string): string {
  // eslint-disable-next-line no-control-regex
  return s.replace(/[\u0000-\u001f\u007f-\u009f\u202a-\u202e\u2066-\u2069]/g, (c) => `\\u${c.charCodeAt(0).toString(16).padStart(4, '0')}`);
}

const utf8 = new TextDecoder('utf-8', { fatal: true });

/**
 * Bytes for a person: quoted text when `text` and they are valid UTF-8,
 * else `\x` hex; cut at `max` characters with the full size noted.
 * `quote` false gives bare text (result cells).
 */
export function preview(bytes: Buffer, max: number, text: boolean, quote = true): string {
  let s: string | undefined;
  if (text) {
    try {
      s = utf8.decode(bytes.subarray(0, Math.min(bytes.length, max * 4 + 4)));
    } catch {
      // A multi-byte character cut at the end of the window is still text.
      try {
        s = utf8.decode(bytes.subarray(0, Math.min(bytes.length, max * 4)));
      } catch {
        s = undefined;
      }
    }
    if (s !== undefined && bytes.length > max * 4 + 4 && s.length > max) s = s.slice(0, max + 1);
  }
  const size = ` (${bytes.length} bytes)`;
  if (s !== undefined) {
    const cut = s.length > max;
    const shown = cut ? s.slice(0, max) : s;
    // JSON.stringify escapes C0 controls only: C1 controls (U+009B is a one-character CSI) and bidi overrides too.
    const q = quote ? printable(JSON.stringify(shown)) : printable(shown);
    return cut ? `${q}...${size}` : q;
  }
  const hex = bytes.subarray(0, max / 2).toString('hex');
  return bytes.length > max / 2 ? `\\x${hex}...${size}` : `\\x${hex}`;
}

/** A FIFO of chunks: peek/take whole messages that may span records, drop without copying. */
export class ByteQueue {
  private chunks: Buffer[] = [];
  /** Index of the first live chunk (consumed ones are compacted away now and then, never shifted one by one). */
  private first = 0;
  /** Offset of the first live byte in chunks[first]. */
  private head = 0;
  length = 0;

  push(b: Buffer): void {
    if (!b.length) return;
    this.chunks.push(b);
    this.length += b.length;
  }

  /** The first n bytes (copied only when they span chunks), or undefined. */
  peek(n: number): Buffer | undefined {
    if (this.length < n) return undefined;
    if (n === 0) return Buffer.alloc(0);
    const c0 = this.chunks[this.first]!;
    if (c0.length - this.head >= n) return c0.subarray(this.head, this.head + n);
    const out = Buffer.allocUnsafe(n);
    let got = 0;
    let i = this.first;
    let off = this.head;
    while (got < n) {
      const c = this.chunks[i++]!;
      const k = Math.min(n - got, c.length - off);
      c.copy(out, got, off, off + k);
      got += k;
      off = 0;
    }
    return out;
  }

  take(n: number): Buffer {
    const out = this.peek(n);
    if (!out) throw new RangeError('ByteQueue underflow');
    this.drop(n);
    return out;
  }

  /** Drops up to n bytes; returns how many. */
  drop(n: number): number {
    let left = Math.min(n, this.length);
    const dropped = left;
    while (left > 0) {
      const c = this.chunks[this.first]!;
      const avail = c.length - this.head;
      if (avail <= left) {
        left -= avail;
        this.first++;
        this.head = 0;
      } else {
        this.head += left;
        left = 0;
      }
    }
    this.length -= dropped;
    if (this.first === this.chunks.length) {
      this.chunks = [];
      this.first = 0;
    } else if (this.first >= 1024) {
      this.chunks = this.chunks.slice(this.first);
      this.first = 0;
    }
    return dropped;
  }
}

// --- dispatch --------------------------------------------------------------------

/**
 * The decoder for a protocol. Imported on demand: the decoders import the
 * helpers above, and a static import both ways would make a module cycle.
 */
export async function decoderFor(protocol: string): Promise<ProtocolDecoder | undefined> {
  if (protocol === 'postgres') {
    // The SQL parser, to withhold role passwords (transcript-postgres.ts).
    await (await import('../../protocols/postgres/classify.js')).initClassifier();
    return new (await import('./transcript-postgres.js')).PostgresDecoder();
  }
  if (protocol === 'redis') return new (await import('./transcript-redis.js')).RedisDecoder();
  return undefined;
}

export interface TranscriptSummary {
  header: RecordingHeader;
  /** A signed footer closed the recording. */
  complete: boolean;
  footer?: FooterBody;
  /** Where and why the reader stopped early (crash tail, bad CRC). */
  stopped?: { offset: number; reason: string };
  truncated: boolean;
  records: number;
  events: number;
}

export interface TranscriptOptions {
  /** Called now and then with bytes of the file read so far and its size. */
  onProgress?: (done: number, total: number) => void;
  /**
   * Stop decoding after this many events (one `cut` event says so; the
   * summary still covers the whole file). For transcripts built in memory
   * (the API): a small recording may hold millions of tiny replies.
   */
  maxEvents?: number;
}

/**
 * A record is handed to its decoder in slices of this size: a decoder's
 * work and memory per call stay bounded whatever size a (crafted) record
 * claims, and the event cap is checked between slices.
 */
const DECODE_SLICE = 1024 * 1024;

/**
 * Streams the transcript of the recording at `path`: `onHeader` once, then
 * `emit` for every event in record order. Returns the summary.
 */
export async function streamTranscript(
  path: string,
  onHeader: (h: RecordingHeader) => void,
  emit: EmitFn,
  opts: TranscriptOptions = {},
): Promise<TranscriptSummary> {
  const reader = readRecording(path);
  const size = opts.onProgress ? (await stat(path)).size : 0;
  let decoder: ProtocolDecoder | undefined;
  let header: RecordingHeader | undefined;
  let footer: FooterBody | undefined;
  let truncated = false;
  let records = 0;
  let events = 0;
  let last: Stamp = { t: 0, seq: 0 };
  let lastProgress = 0;
  const maxEvents = opts.maxEvents ?? Infinity;
  let cut = false;
  let dropped = false;
  /** After an event was dropped for the cap: one `cut` event, and no more decoding. */
  const cutIfDropped = (at: Stamp): void => {
    if (!dropped || cut) return;
    cut = true;
    decoder = undefined;
    events++;
    emit({ ...at, dir: 'control', kind: 'cut', text: `transcript cut after ${maxEvents} events; \`sluice replay --file\` on the downloaded recording shows all of it` });
  };
  const count: EmitFn = (e) => {
    // Past the cap: dropped (at most one slice's worth arrive before decoding stops).
    if (events >= maxEvents) {
      dropped = true;
      return;
    }
    events++;
    // The decoders escape what they quote; every event's text is escaped once more here, where all
    // pass, for the text and the JSON transcript alike: a value a decoder printed as it came (a status
    // word, an SQLSTATE, a SASL mechanism name, a C1 control or bidi override JSON.stringify leaves
    // as it is) must not move an investigator's cursor, write the clipboard, or reorder what is shown.
    e.text = printable(e.text);
    emit(e);
  };
  for await (const rec of reader) {
    if (!header) {
      header = reader.header!;
      onHeader(header);
      decoder = await decoderFor(header.protocol);
      if (!decoder) count({ t: 0, seq: 0, dir: 'control', kind: 'unknown-protocol', text: `protocol ${printable(String(header.protocol))} has no decoder; use --raw` });
    }
    // Counted as `sluice verify` and the footer count them: every record before the footer.
    if (rec.type !== 'footer') records++;
    const at: Stamp = { t: rec.micros / 1000, seq: rec.seq };
    last = at;
    if (opts.onProgress && rec.offset - lastProgress >= 4 * 1024 * 1024) {
      lastProgress = rec.offset;
      opts.onProgress(rec.offset, size);
    }
    if (rec.type === 'data') {
      for (let i = 0; decoder !== undefined && i < rec.bytes.length; i += DECODE_SLICE) {
        decoder.push(rec.direction, rec.bytes.length <= DECODE_SLICE ? rec.bytes : rec.bytes.subarray(i, i + DECODE_SLICE), at, count);
        cutIfDropped(at);
      }
    } else if (rec.type === 'truncated') {
      truncated = true;
      count({ ...at, dir: 'control', kind: 'truncated', text: 'recording truncated: the session reached the recording size cap and was ended' });
      cutIfDropped(at);
    } else if (rec.type === 'footer') {
      footer = rec.body as FooterBody | undefined;
    }
  }
  // A recording with no records at all still has its header.
  if (!header) {
    header = reader.header!;
    onHeader(header);
    decoder = await decoderFor(header.protocol);
  }
  decoder?.finish(count, last);
  cutIfDropped(last);
  if (opts.onProgress) opts.onProgress(size, size);
  return {
    header,
    complete: reader.complete,
    ...(footer ? { footer } : {}),
    ...(reader.stopped ? { stopped: reader.stopped } : {}),
    truncated,
    records,
    events,
  };
}

// --- rendering --------------------------------------------------------------------

const ARROW: Readonly<Record<TranscriptEvent['dir'], string>> = { client: '->', server: '<-', control: '==' };

/** One event's line (its text escaped by streamTranscript). */
export function renderEvent(e: TranscriptEvent): string {
  return `${e.t.toFixed(3).padStart(12)}  ${ARROW[e.dir]}  ${e.text}`;
}

/**
 * A value as one JSON line that is safe on a terminal: JSON.stringify leaves
 * C1 controls and bidi overrides as they are, and `printable` writes them as
 * \u escapes, which JSON reads back as the same characters.
 */
export function jsonLine(value: unknown): string {
  return `${printable(JSON.stringify(value))}\n`;
}

export function renderHeader(h: RecordingHeader): string {
  // The header as read from the file: any field may be of any JSON type in a crafted one.
  const text = (v: unknown): string => printable(String(v ?? ''));
  const groups = Array.isArray(h.groups) ? h.groups : [];
  const lines = [
    `session ${text(h.sessionId)} (${text(h.protocol)})`,
    `  subject  ${text(h.subject)}${groups.length ? ` groups ${groups.map(text).join(',')}` : ''} issuer ${text(h.issuer)}`,
    `  target   ${text(h.target)}${h.clientAddress ? ` from ${text(h.clientAddress)}` : ''}`,
    `  started  ${text(h.startedAt)}  recording key ${text(h.keyId)}`,
    `  time (ms since start)  -> client sent  <- client received`,
  ];
  return lines.join('\n') + '\n';
}

export function renderSummary(s: TranscriptSummary): string {
  const parts: string[] = [];
  if (s.footer) {
    // The footer as read, its signature unchecked (that is verify's work): every field is shown as text.
    parts.push(
      `end: ${printable(String(s.footer.endedAt))} (${printable(String(s.footer.closeReason))}); ${printable(String(s.footer.bytesClientToGateway))} bytes sent, ${printable(String(s.footer.bytesGatewayToClient))} bytes received; ${s.records} records`,
    );
  }
  if (s.truncated) parts.push('recording truncated at the size cap');
  if (!s.complete) {
    parts.push(
      `recording INCOMPLETE: no footer${s.stopped ? `; reading stopped at offset ${s.stopped.offset}: ${printable(s.stopped.reason)}` : ''} (run sluice verify for what is proven)`,
    );
  }
  return parts.map((p) => `${p}\n`).join('');
}

/** The whole transcript as text (for the API and tests; the CLI streams). */
export async function transcriptText(path: string, opts: TranscriptOptions = {}): Promise<string> {
  const out: string[] = [];
  const s = await streamTranscript(path, (h) => out.push(renderHeader(h)), (e) => out.push(`${renderEvent(e)}\n`), opts);
  out.push(renderSummary(s));
  return out.join('');
}

/** The whole transcript as one JSON-ready object. */
export async function transcriptJson(path: string, opts: TranscriptOptions = {}): Promise<{ session: RecordingHeader; events: TranscriptEvent[]; summary: Omit<TranscriptSummary, 'header'> }> {
  const events: TranscriptEvent[] = [];
  const s = await streamTranscript(path, () => undefined, (e) => events.push(e), opts);
  const { header, ...summary } = s;
  return { session: header, events, summary };
}

/** `\r`-redrawn progress on a terminal. */
export function progressPrinter(stderr: { write(s: string): unknown }, label: string): { update: (done: number, total: number) => void; clear: () => void } {
  let shown = false;
  return {
    update: (done, total) => {
      if (total <= 0) return;
      shown = true;
      const pct = Math.min(100, Math.floor((done / total) * 100));
      stderr.write(`\r${label} ${pct}% (${(done / 1048576).toFixed(1)} of ${(total / 1048576).toFixed(1)} MiB)`);
    },
    clear: () => {
      if (shown) stderr.write('\r\u001b[K');
      shown = false;
    },
  };
}

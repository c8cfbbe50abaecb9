import type { AuditEvent, AuditVerdict } from './types.js';
import { isoTime } from './iso-time.js';

/**
 * The audit trail's storage format: one SQLite row per batch the audit
 * writer commits, not one per event.
 *
 * Why: a row per event cost 7-9 µs of CPU per statement (measured, 17
 * columns and two index inserts per row, WAL), and about 1 KB of disk
 * writes per statement once WAL frames and checkpoints are counted: the
 * largest part of what the policy-on path cost over the plain relay. A
 * batch of up to 500 events encoded as one JSON text costs one row insert,
 * a handful of key rows and a fraction of the bytes (session, subject,
 * target, protocol and policy are written once per batch, not per event).
 *
 * Layout of `audit_batches.events` (JSON), version 2:
 *
 *   { "v": 2, "t0": <epoch ms>, "h": [[sessionId, subject, target, protocol, policy|null], ...],
 *     "s": [statement text, ...],
 *     "e": [[h, ms, time, kind, text, verdict, durationMs, rows, rule, approvalId, sqlstate, error, masking], ...] }
 *
 * - `h`: index into the batch's header list, or the header array itself
 *   (the migration from the row-per-event table writes it inline).
 * - `text`: the text itself; or, for an event with bound parameters (the
 *   extended protocol), `[s, params]`: `s` indexes the batch's `"s"` list,
 *   where each prepared statement's text is written once however many times
 *   it ran, and `params` is the JSON text of the parameters. Read back as
 *   `<text> -- params: <params>`. A pgbench -M prepared event takes about
 *   50 bytes instead of 115: less to encode, and half the pages SQLite
 *   writes to its WAL and copies back at checkpoints.
 * - `ms`: the instant, relative to `t0` (the batch's first instant, so
 *   it may be negative); null when `time` did not parse.
 * - `time`: the text as given, or null when it is exactly
 *   `isoTime(t0 + ms)` (what the gateways write), rebuilt on read.
 * - Trailing nulls are left off; `masking` is the counts object.
 *
 * Version 1 (before `"s"`: `text` always the text itself, parameters
 * included) is still read: stores written by earlier releases keep their
 * batches as they are.
 *
 * Filters: `audit_batch_keys` holds, per batch, every distinct session,
 * subject, target and verdict in it, and `audit_batches` the batch's time
 * range. A query picks the batches that can hold a match, decodes them and
 * filters the events exactly (see `AuditBatchReader`).
 */

export const FORMAT_VERSION = 2;

/** Fields of the key table, one row per distinct value per batch. */
export const KEY_FIELDS = ['session', 'subject', 'target', 'verdict'] as const;
export type KeyField = (typeof KEY_FIELDS)[number];

type Header = [sessionId: string, subject: string, target: string, protocol: string, policy: string | null];

export interface EncodedBatch {
  /** Earliest and latest instant of the batch's events; null when none parsed. */
  minMs: number | null;
  maxMs: number | null;
  count: number;
  json: string;
  /** Distinct values per key field. */
  keys: Array<[KeyField, string]>;
}

/**
 * Epoch ms of an audit time. The gateways write `isoTime()` text
 * (`YYYY-MM-DDTHH:MM:SS.mmmZ`); its second is parsed once and cached, so
 * most events cost a prefix compare instead of a Date.parse (0.5 µs).
 * `canonical` says the text is exactly `isoTime(ms)`.
 */
export class TimeParser {
  #prefix = '';
  #second = 0;
  /** Whether the text last parsed is exactly `isoTime()` of its instant. */
  canonical = false;

  /** Epoch ms, NaN when the text does not parse. No allocation on the common path. */
  parse(text: string): number {
    if (text.length === 24 && text.charCodeAt(23) === 0x5a /* Z */) {
      if (this.#prefix === '' || !text.startsWith(this.#prefix)) {
        const prefix = text.slice(0, 20);
        const second = Date.parse(`${prefix}000Z`);
        // Only a prefix that formats back to itself is canonical (no leap
        // seconds, no out-of-range fields that Date.parse would roll over).
        if (!Number.isNaN(second) && isoTime(second).startsWith(prefix)) {
          this.#prefix = prefix;
          this.#second = second;
        }
      }
      if (this.#prefix !== '' && text.startsWith(this.#prefix)) {
        const d0 = text.charCodeAt(20) - 0x30;
        const d1 = text.charCodeAt(21) - 0x30;
        const d2 = text.charCodeAt(22) - 0x30;
        if (d0 >= 0 && d0 <= 9 && d1 >= 0 && d1 <= 9 && d2 >= 0 && d2 <= 9) {
          this.canonical = true;
          return this.#second + d0 * 100 + d1 * 10 + d2;
        }
      }
    }
    this.canonical = false;
    return Date.parse(text);
  }
}

export function encodeBatch(events: readonly AuditEvent[], times: TimeParser): EncodedBatch {
  const n = events.length;
  let t0 = Number.NaN;
  let min = Infinity;
  let max = -Infinity;

  // Headers are found by session id first (one string, the same object for
  // every event of a session, so its hash is cached), then compared field
  // by field: cheaper than hashing a composite key per event.
  const headers: Header[] = [];
  const bySession = new Map<string, number[]>();
  const subjects = new Set<string>();
  const targets = new Set<string>();
  const verdicts = new Set<string>();
  // Texts of events with bound parameters: one entry per prepared statement.
  const texts: string[] = [];
  const textIndex = new Map<string, number>();
  const rows: unknown[][] = [];
  for (let i = 0; i < n; i++) {
    const e = events[i]!;
    const ms = times.parse(e.time);
    const canonical = times.canonical;
    let rel: number | null = null;
    if (!Number.isNaN(ms)) {
      // Instants are stored relative to the batch's first one (any base works; small numbers are short).
      if (Number.isNaN(t0)) t0 = ms;
      rel = ms - t0;
      if (ms < min) min = ms;
      if (ms > max) max = ms;
    }
    const policy = e.policy ?? null;
    let h = -1;
    const candidates = bySession.get(e.sessionId);
    if (candidates !== undefined) {
      for (let c = 0; c < candidates.length; c++) {
        const hd = headers[candidates[c]!]!;
        if (hd[1] === e.subject && hd[2] === e.target && hd[3] === e.protocol && hd[4] === policy) {
          h = candidates[c]!;
          break;
        }
      }
    }
    if (h < 0) {
      h = headers.length;
      headers.push([e.sessionId, e.subject, e.target, e.protocol, policy]);
      if (candidates === undefined) bySession.set(e.sessionId, [h]);
      else candidates.push(h);
      subjects.add(e.subject);
      targets.add(e.target);
    }
    verdicts.add(e.verdict);
    // Optional fields in a fixed order; trailing absent ones are left off.
    const masking = e.masking !== undefined && hasKeys(e.masking) ? e.masking : undefined;
    const width =
      masking !== undefined ? 13
      : e.error !== undefined ? 12
      : e.sqlstate !== undefined ? 11
      : e.approvalId !== undefined ? 10
      : e.rule !== undefined ? 9
      : e.rows !== undefined ? 8
      : e.durationMs !== undefined ? 7
      : 6;
    let text: unknown = e.text;
    if (e.params !== undefined) {
      let s = textIndex.get(e.text);
      if (s === undefined) {
        s = texts.length;
        texts.push(e.text);
        textIndex.set(e.text, s);
      }
      text = [s, e.params];
    }
    const row: unknown[] = [h, rel, canonical ? null : e.time, e.kind, text, e.verdict];
    if (width > 6) {
      row.push(e.durationMs ?? null);
      if (width > 7) row.push(e.rows ?? null);
      if (width > 8) row.push(e.rule ?? null);
      if (width > 9) row.push(e.approvalId ?? null);
      if (width > 10) row.push(e.sqlstate ?? null);
      if (width > 11) row.push(e.error ?? null);
      if (width > 12) row.push(masking);
    }
    rows.push(row);
  }
  const keys: Array<[KeyField, string]> = [];
  for (const v of bySession.keys()) keys.push(['session', v]);
  for (const v of subjects) keys.push(['subject', v]);
  for (const v of targets) keys.push(['target', v]);
  for (const v of verdicts) keys.push(['verdict', v]);
  return {
    minMs: min === Infinity ? null : min,
    maxMs: max === -Infinity ? null : max,
    count: n,
    json: JSON.stringify({ v: FORMAT_VERSION, t0: Number.isNaN(t0) ? 0 : t0, h: headers, s: texts, e: rows }),
    keys,
  };
}

/** The text slot of a stored event: the text, or `[statement index, params]` (version 2). */
function eventText(slot: unknown, texts: readonly string[]): string {
  if (typeof slot === 'string') return slot;
  const [s, params] = slot as [number, string];
  return `${texts[s]!} -- params: ${params}`;
}

function hasKeys(o: object): boolean {
  for (const _ in o) return true;
  return false;
}

/** One decoded event with what orders it: instant (null sorts last), then batch and position (insertion order). */
export interface StoredEvent {
  ms: number | null;
  batch: number;
  index: number;
  event: AuditEvent;
}

export interface EventFilter {
  sessionId?: string;
  subject?: string;
  target?: string;
  verdict?: AuditVerdict;
  sinceMs?: number;
  untilMs?: number;
}

/** Decodes a batch and keeps the events that match `filter` exactly. */
export function decodeBatch(batch: number, json: string, filter: EventFilter, out: StoredEvent[]): void {
  const doc = JSON.parse(json) as { v: number; t0: number; h: Header[]; s?: string[]; e: unknown[][] };
  if (doc.v !== FORMAT_VERSION && doc.v !== 1) throw new Error(`audit batch ${batch}: unknown format version ${String(doc.v)}`);
  const t0 = doc.t0;
  const texts = doc.s ?? [];
  for (let index = 0; index < doc.e.length; index++) {
    const r = doc.e[index]!;
    const h = (Array.isArray(r[0]) ? r[0] : doc.h[r[0] as number]) as Header;
    if (filter.sessionId !== undefined && h[0] !== filter.sessionId) continue;
    if (filter.subject !== undefined && h[1] !== filter.subject) continue;
    if (filter.target !== undefined && h[2] !== filter.target) continue;
    const verdict = r[5] as AuditVerdict;
    if (filter.verdict !== undefined && verdict !== filter.verdict) continue;
    const rel = r[1] as number | null;
    const ms = rel === null || rel === undefined ? null : t0 + rel;
    if (filter.sinceMs !== undefined && (ms === null || ms < filter.sinceMs)) continue;
    if (filter.untilMs !== undefined && (ms === null || ms > filter.untilMs)) continue;
    const time = (r[2] as string | null) ?? isoTime(ms!);
    const e: AuditEvent = {
      time,
      sessionId: h[0],
      subject: h[1],
      target: h[2],
      protocol: h[3] as AuditEvent['protocol'],
      kind: r[3] as string,
      text: eventText(r[4], texts),
      verdict,
    };
    if (h[4] !== null && h[4] !== undefined) e.policy = h[4];
    const at = (i: number): unknown => (i < r.length ? r[i] : null);
    if (at(8) !== null) e.rule = at(8) as string;
    if (at(9) !== null) e.approvalId = at(9) as string;
    if (at(6) !== null) e.durationMs = at(6) as number;
    if (at(7) !== null) e.rows = at(7) as number;
    if (at(10) !== null) e.sqlstate = at(10) as string;
    if (at(11) !== null) e.error = at(11) as string;
    if (at(12) !== null) e.masking = at(12) as Record<string, number>;
    out.push({ ms, batch, index, event: e });
  }
}

/** Newest first: instant descending (no instant last), then insertion order descending. */
export function newestFirst(a: StoredEvent, b: StoredEvent): number {
  const am = a.ms ?? -Infinity;
  const bm = b.ms ?? -Infinity;
  if (am !== bm) return bm - am;
  if (a.batch !== b.batch) return b.batch - a.batch;
  return b.index - a.index;
}

/**
 * One matcher per rule set. Two stages:
 *
 * 1. `bytesMayMatch`: a byte-level candidate scan (detectors.ts,
 *    CandidateScanner) over the raw UTF-8 value, one pass dispatching on a
 *    256-entry table of trigger bytes ('@', ':', '=', digit runs, '_', '-',
 *    'A', 'J', '+') with a bounded local check at each (Luhn and issuer for
 *    cards, the colon run for IPv6, the keyword before ':'/'='...), plus an
 *    `indexOf` of each custom pattern's required literal. It is conservative:
 *    a value it passes over has no hit. The regex gates alone held on almost
 *    every realistic batch (timestamps look like "hex:hex:hex", JSON has ':'),
 *    and V8 then tried the IPv6 and e-mail regexes at every position.
 * 2. `find`: the exact path, on the decoded value: every detector whose
 *    gates hold runs its regex and validation.
 *
 * Overlapping hits are resolved left to right, longest first. Offsets are in
 * UTF-16 code units of the JS string and are widened so that they never fall
 * between the two halves of a surrogate pair (one character).
 */
import { BUILTIN_DETECTORS, CandidateScanner, DETECTOR_NAMES, detectorBit, type Detector } from './detectors.js';
import type { DetectorName } from './types.js';
import type { CompiledStrategy } from './strategies.js';

export interface ContentRule {
  name: string;
  detector: Detector;
  strategy: CompiledStrategy;
}

export interface Match {
  start: number;
  end: number;
  rule: ContentRule;
}

interface Entry {
  rule: ContentRule;
  regex: RegExp;
  /** Indexes into the matcher's gate table; empty = always run. */
  gates: number[];
  /** A built-in detector's bit in the scan's hints; 0 for a custom pattern (run whatever the hints). */
  bit: number;
}

/** Hints that let every detector run (no scan said otherwise). */
export const ALL_HINTS = -1;
/** A hint bit no built-in detector uses: a custom pattern's literal was found. */
const NEEDLE = 1 << 30;

export class Matcher {
  private readonly entries: Entry[];
  private readonly gateTable: Array<string | RegExp> = [];
  /** Per value: 0 = not evaluated, 1 = holds, 2 = does not. Reset per call (the matcher is synchronous). */
  private readonly gateState: Uint8Array;
  /** Byte-level candidate scan for the built-in detectors of this rule set. */
  private readonly scanner: CandidateScanner;
  /** Custom patterns' required literals (UTF-8), any of which flags a value. */
  private readonly needles: Buffer[] = [];
  /** Every value is a candidate: prefilter off, or a custom pattern without a usable literal. */
  private readonly always: boolean;

  /** False when a rule must see each value alone (a custom pattern with anchors or lookarounds). */
  readonly batchSafe: boolean;
  /** soleEmail's answer for the hints it was last asked about. */
  #soleHints = 0;
  #sole: ContentRule | undefined;

  constructor(rules: ContentRule[], opts: { prefilter: boolean }) {
    this.batchSafe = rules.every((r) => !r.detector.perValue);
    const index = new Map<string | RegExp, number>();
    const builtins: DetectorName[] = [];
    let always = !opts.prefilter;
    this.entries = rules.map((rule) => {
      const gates: number[] = [];
      if (opts.prefilter) {
        for (const g of rule.detector.gates) {
          let i = index.get(g);
          if (i === undefined) {
            i = this.gateTable.push(g) - 1;
            index.set(g, i);
          }
          gates.push(i);
        }
      }
      const builtin = DETECTOR_NAMES.find((n) => BUILTIN_DETECTORS[n] === rule.detector);
      // Without the prefilter there is no scan, hence no hints: every detector runs.
      const bit = builtin && opts.prefilter ? detectorBit(builtin) : 0;
      if (builtin) builtins.push(builtin);
      else if (rule.detector.gates.length === 0) always = true;
      else
        for (const g of rule.detector.gates) {
          // A literal is found in the bytes as its UTF-8; U+FFFD may stand for invalid bytes, and a class gate cannot be searched.
          if (typeof g !== 'string' || g.length === 0 || g.includes('\uFFFD')) always = true;
          else this.needles.push(Buffer.from(g, 'utf8'));
        }
      // A private copy: lastIndex is per regex object.
      return { rule, regex: new RegExp(rule.detector.regex.source, rule.detector.regex.flags), gates, bit };
    });
    this.gateState = new Uint8Array(this.gateTable.length);
    this.always = always;
    this.scanner = new CandidateScanner(builtins);
  }

  /**
   * False when the value's bytes cannot hold a hit (no allocation); true
   * sends it through the exact path (`find`).
   */
  bytesMayMatch(buf: Buffer): boolean {
    if (this.always) return true;
    if (this.scanner.any(buf)) return true;
    for (const n of this.needles) if (buf.indexOf(n) !== -1) return true;
    return false;
  }

  /**
   * The candidate scan with hints: 0 when the value's bytes cannot hold a
   * hit, else the hints for `find` (which built-in detectors may match).
   */
  bytesHints(buf: Buffer): number {
    if (this.always) return ALL_HINTS;
    let hints = this.scanner.bits(buf);
    for (const n of this.needles) {
      if (buf.indexOf(n) !== -1) {
        hints |= NEEDLE;
        break;
      }
    }
    return hints;
  }

  /**
   * Batch prefilter over bytes: `buf` holds many values separated by one NUL,
   * value i starting at `starts[i]`. Marks (marks[i] = 1) every value that may
   * hold a hit; unmarked values cannot. Marked values then go through the
   * exact per-value path, so results equal per-value masking. With `hints`
   * (zeroed by the caller), hints[i] gets the hints of each marked value.
   */
  markBytes(buf: Buffer, starts: Int32Array, marks: Uint8Array, hints?: Int32Array): void {
    if (this.always) {
      marks.fill(1);
      hints?.fill(ALL_HINTS);
      return;
    }
    this.scanner.scan(buf, starts, marks, hints);
    for (const n of this.needles) {
      let p = buf.indexOf(n);
      while (p !== -1) {
        const v = valueAt(starts, p);
        marks[v] = 1;
        if (hints) hints[v] = hints[v]! | NEEDLE;
        const next = starts[v + 1];
        if (next === undefined) break;
        p = buf.indexOf(n, next);
      }
    }
  }

  /**
   * The rule when, under these hints, the only detector `find` would run is
   * the built-in e-mail detector (one rule, no custom pattern): its hits are
   * then those of findEmailsAscii on an ASCII value.
   */
  soleEmail(hints: number): ContentRule | undefined {
    if (hints === this.#soleHints) return this.#sole;
    let sole: ContentRule | undefined;
    let running = 0;
    for (const e of this.entries) {
      if ((e.bit & hints) !== e.bit) continue;
      running++;
      if (e.rule.detector === BUILTIN_DETECTORS.email && e.bit !== 0) sole = e.rule;
    }
    this.#soleHints = hints;
    this.#sole = running === 1 ? sole : undefined;
    return this.#sole;
  }

  private gateHolds(i: number, s: string): boolean {
    let st = this.gateState[i]!;
    if (st === 0) {
      const g = this.gateTable[i]!;
      st = (typeof g === 'string' ? s.indexOf(g) !== -1 : g.test(s)) ? 1 : 2;
      this.gateState[i] = st;
    }
    return st === 1;
  }

  /**
   * Non-overlapping hits in order, or undefined when there are none.
   * `hints` (from the candidate scan of the value's bytes) skips the
   * built-in detectors the scan ruled out: they have no match in the value.
   */
  find(s: string, hints: number = ALL_HINTS): Match[] | undefined {
    let hits: Match[] | undefined;
    this.gateState.fill(0);
    for (const e of this.entries) {
      if ((e.bit & hints) !== e.bit) continue;
      if (e.gates.length > 0) {
        let open = false;
        for (const g of e.gates) {
          if (this.gateHolds(g, s)) {
            open = true;
            break;
          }
        }
        if (!open) continue;
      }
      hits = this.run(e, s, hits);
    }
    if (!hits) return undefined;
    return hits.length > 1 ? resolveOverlaps(hits) : hits;
  }

  private run(e: Entry, s: string, hits: Match[] | undefined): Match[] | undefined {
    const re = e.regex;
    const d = e.rule.detector;
    re.lastIndex = 0;
    let m: RegExpExecArray | null;
    while ((d.pivot === undefined || pivotStart(re, s, d.pivot)) && (m = re.exec(s)) !== null) {
      let start = m.index;
      let end = start + m[0].length;
      if (end === start) {
        re.lastIndex = start + 1; // an empty match cannot be masked; step over it
        continue;
      }
      if (d.refine) {
        const keep = d.refine(m[0]);
        if (keep === 0) {
          re.lastIndex = start + 1; // a rejected candidate may hide a valid one starting inside it
          continue;
        }
        end = start + keep;
        re.lastIndex = end;
      }
      if (d.valueGroups && m.indices) {
        const g = d.valueGroups.find((k) => m!.indices![k] !== undefined);
        if (g === undefined) continue;
        [start, end] = m.indices[g]!;
      }
      // Never split a surrogate pair (one character in UTF-16, four bytes in UTF-8).
      if (start > 0 && isLow(s.charCodeAt(start)) && isHigh(s.charCodeAt(start - 1))) start--;
      if (end < s.length && isLow(s.charCodeAt(end)) && isHigh(s.charCodeAt(end - 1))) end++;
      (hits ??= []).push({ start, end, rule: e.rule });
    }
    return hits;
  }
}

/**
 * Moves re.lastIndex forward to where the next match can start (see
 * Detector.pivot); false when no match is left (no pivot character after
 * lastIndex). No match starts in between: it would hold the next pivot
 * character (the first one it can hold) with a character outside the run,
 * or more than `before` characters, before it.
 */
function pivotStart(re: RegExp, s: string, p: NonNullable<Detector['pivot']>): boolean {
  const from = re.lastIndex;
  const a = s.indexOf(p.char, from);
  if (a === -1) return false;
  const min = Math.max(from, a - p.before);
  let q = a;
  while (q > min) {
    const c = s.charCodeAt(q - 1);
    if (c >= 0x80) return true; // may be a letter of the run: the regex tries from lastIndex on
    if (p.run[c] === 0) break;
    q--;
  }
  re.lastIndex = q;
  return true;
}

/** Index of the value containing offset `off` (binary search over start offsets). */
function valueAt(starts: Int32Array, off: number): number {
  let lo = 0;
  let hi = starts.length - 1;
  while (lo < hi) {
    const mid = (lo + hi + 1) >> 1;
    if (starts[mid]! <= off) lo = mid;
    else hi = mid - 1;
  }
  return lo;
}

function isHigh(c: number): boolean {
  return c >= 0xd800 && c <= 0xdbff;
}
function isLow(c: number): boolean {
  return c >= 0xdc00 && c <= 0xdfff;
}

/** Leftmost first; at the same start the longest; later hits overlapping a kept one are dropped. */
export function resolveOverlaps(hits: Match[]): Match[] {
  hits.sort((a, b) => a.start - b.start || b.end - a.end);
  const out: Match[] = [];
  let until = -1;
  for (const h of hits) {
    if (h.start < until) continue;
    out.push(h);
    until = h.end;
  }
  return out;
}

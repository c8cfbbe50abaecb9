/**
 * One matcher per rule set: every content rule's gates are evaluated once per
 * value (a gate shared by several detectors, such as "four digits in a row",
 * is evaluated once), and a detector's regex runs only when one of its gates
 * holds. Data without candidate bytes costs a few `indexOf` scans.
 *
 * bench/masking-engine.ts compares this against one combined alternation of
 * every detector: per-detector regexes behind gates won on realistic rows,
 * and an alternation cannot validate a candidate (Luhn) and then try the
 * other branches at the same position without re-scanning. One alternation
 * of every gate (to reject a value in one scan) measured slower than the
 * separate `indexOf`s and was dropped. What pays most is scanning many values
 * at once (`markCandidates`): per-value calls on short values are dominated
 * by call overhead.
 *
 * Overlapping hits are resolved left to right, longest first. Offsets are in
 * UTF-16 code units of the JS string and are widened so that they never fall
 * between the two halves of a surrogate pair (one character).
 */
import type { Detector } from './detectors.js';
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
}

export class Matcher {
  private readonly entries: Entry[];
  private readonly gateTable: Array<string | RegExp> = [];
  /** Per value: 0 = not evaluated, 1 = holds, 2 = does not. Reset per call (the matcher is synchronous). */
  private readonly gateState: Uint8Array;
  /** Set when every rule is gated by literals only: then bytes can be checked before decoding. */
  readonly byteLiterals: Buffer[] | undefined;

  /** False when a rule must see each value alone (a custom pattern with anchors or lookarounds). */
  readonly batchSafe: boolean;

  constructor(rules: ContentRule[], opts: { prefilter: boolean }) {
    this.batchSafe = rules.every((r) => !r.detector.perValue);
    const index = new Map<string | RegExp, number>();
    let literalOnly = opts.prefilter;
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
          if (typeof g !== 'string') literalOnly = false;
        }
        if (gates.length === 0) literalOnly = false;
      }
      // A private copy: lastIndex is per regex object.
      return { rule, regex: new RegExp(rule.detector.regex.source, rule.detector.regex.flags), gates };
    });
    this.gateState = new Uint8Array(this.gateTable.length);
    this.byteLiterals =
      literalOnly && this.gateTable.length > 0 ? this.gateTable.map((g) => Buffer.from(g as string, 'latin1')) : undefined;
  }

  /** False when no literal gate occurs in the bytes (only meaningful when `byteLiterals` is set). */
  bytesMayMatch(buf: Buffer): boolean {
    if (!this.byteLiterals) return true;
    for (const lit of this.byteLiterals) if (buf.indexOf(lit) !== -1) return true;
    return false;
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
   * Batch prefilter: `s` holds many values joined by NUL, value i starting at
   * `starts[i]` (UTF-16 offsets). Runs each gated regex once over the whole
   * batch (scans of a large string run at hundreds of MB/s; per-value calls
   * are dominated by call overhead on short values) and marks every value a
   * raw candidate touches, including all values a candidate spans. Marked
   * values then go through the exact per-value path, so results equal
   * per-value masking; unmarked values cannot hold a hit.
   */
  markCandidates(s: string, starts: Int32Array, marks: Uint8Array): void {
    this.gateState.fill(0);
    for (const e of this.entries) {
      if (e.gates.length > 0 && !e.gates.some((g) => this.gateHolds(g, s))) continue;
      const re = e.regex;
      re.lastIndex = 0;
      let m: RegExpExecArray | null;
      while ((m = re.exec(s)) !== null) {
        const first = valueAt(starts, m.index);
        const last = valueAt(starts, m.index + Math.max(0, m[0].length - 1));
        for (let v = first; v <= last; v++) marks[v] = 1;
        re.lastIndex = m.index + 1; // as the per-value path does after a rejected candidate
        if (m[0].length > 1 && last === first) re.lastIndex = starts[first + 1] ?? s.length; // value marked: skip to the next one
      }
    }
  }

  /** Non-overlapping hits in order, or undefined when there are none. */
  find(s: string): Match[] | undefined {
    let hits: Match[] | undefined;
    this.gateState.fill(0);
    for (const e of this.entries) {
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
    while ((m = re.exec(s)) !== null) {
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

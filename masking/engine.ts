/**
 * The masking engine for one rule set: compiled once (per policy, per
 * worker), then asked, value by value, what the client may see.
 *
 * - Content rules (a detector or a custom pattern, no columns) apply to every
 *   value handed in: `maskText` / `maskBytes`.
 * - Column rules apply to the values of matching result columns:
 *   `columnRule` (once per RowDescription) then `maskWhole` per value. A
 *   column rule with a detector or pattern masks only the hits inside that
 *   column's values; one without masks the whole value.
 *
 * Pure: inputs are never mutated; "nothing to mask" returns undefined without
 * allocating.
 */
import { isUtf8 } from 'node:buffer';
import { BUILTIN_DETECTORS, isDetectorName, type Detector } from './detectors.js';
import type { ByteSink } from './byte-sink.js';
import { NOT_ASCII, findEmailsAscii } from './email-ascii.js';
import { ALL_HINTS, Matcher, type ContentRule, type Match } from './matcher.js';
import { checkPattern } from './safety.js';
import { compileStrategy, strategyProblem, type CompiledStrategy } from './strategies.js';
import { MaskingConfigError, type MaskingRuleConfig } from './types.js';

export interface CompiledRule {
  readonly name: string;
  readonly strategy: CompiledStrategy;
  /** Set for a column rule scoped to a detector or pattern: only hits inside the value are masked. */
  readonly content?: Matcher;
}

interface ColumnSelector {
  /** undefined = any schema */
  schema?: RegExp;
  /** undefined = any table */
  table?: RegExp;
  column: RegExp;
  /** The selector's column part as written; undefined for `*`. */
  columnGlob?: string;
  rule: CompiledRule;
}

export interface CompileOptions {
  /** Key of the `hash` strategy (HMAC-SHA-256); at least 16 bytes when a hash rule exists. */
  hashKey: Buffer;
  /** Gates before regexes (default true). Off only to measure what the prefilter buys. */
  prefilter?: boolean;
}

function globToRegExp(glob: string): RegExp {
  const body = glob
    .split('*')
    .map((p) => p.replace(/[.*+?^${}()|[\]\\]/g, '\\$&'))
    .join('[^.]*');
  // PostgreSQL folds unquoted identifiers to lower case; matching ignores case so a selector never misses.
  return new RegExp(`^${body}$`, 'i');
}

function parseSelector(sel: string, rule: CompiledRule): ColumnSelector | string {
  const parts = sel.split('.');
  if (parts.length > 3 || parts.some((p) => p.length === 0)) return `column selector ${JSON.stringify(sel)} must be column, table.column or schema.table.column`;
  const columnPart = parts[parts.length - 1]!;
  const columnGlob = columnPart === '*' ? undefined : columnPart;
  const [column, table, schema] = [...parts].reverse().map((p) => (p === '*' ? undefined : globToRegExp(p)));
  return { column: column ?? /^/, ...(columnGlob ? { columnGlob } : {}), ...(table ? { table } : {}), ...(schema ? { schema } : {}), rule };
}

function customDetector(name: string, pattern: string, literals: string[]): Detector {
  return { name, gates: literals, regex: new RegExp(pattern, 'g'), perValue: /[\^$]|\(\?<?[=!]/.test(pattern) };
}

export class MaskingEngine {
  readonly hasContentRules: boolean;
  readonly hasColumnRules: boolean;
  private readonly matcher: Matcher | undefined;
  private readonly selectors: ColumnSelector[];
  /** markRanges' scratch (the engine is used by one thread, synchronously). */
  private scratch = Buffer.alloc(0);
  private relStarts = new Int32Array(0);
  /** maskCandidateInto's e-mail hits (start, end pairs). */
  private emailHits = new Int32Array(64);

  private constructor(matcher: Matcher | undefined, selectors: ColumnSelector[]) {
    this.matcher = matcher;
    this.selectors = selectors;
    this.hasContentRules = matcher !== undefined;
    this.hasColumnRules = selectors.length > 0;
  }

  /** Compiles a rule set; throws MaskingConfigError listing every bad rule. No custom pattern runs before it is accepted. */
  static compile(rules: MaskingRuleConfig[], opts: CompileOptions): MaskingEngine {
    const prefilter = opts.prefilter ?? true;
    const problems: string[] = [];
    const names = new Set<string>();
    const content: ContentRule[] = [];
    const selectors: ColumnSelector[] = [];
    if (!Array.isArray(rules)) throw new MaskingConfigError(['masking rules must be a list']);
    rules.forEach((r, i) => {
      const where = typeof r?.name === 'string' && r.name.length > 0 ? `rule ${JSON.stringify(r.name)}` : `rule #${i + 1}`;
      const bad = (msg: string): void => void problems.push(`${where}: ${msg}`);
      if (!r || typeof r !== 'object') return bad('must be an object');
      if (typeof r.name !== 'string' || r.name.length === 0) return bad('name is required');
      if (names.has(r.name)) return bad('duplicate rule name');
      names.add(r.name);
      const sp = strategyProblem(r.strategy);
      if (sp) return bad(sp);
      const hasColumns = r.columns !== undefined;
      if (hasColumns && (!Array.isArray(r.columns) || r.columns.length === 0 || r.columns.some((c) => typeof c !== 'string')))
        return bad('columns must be a non-empty list of selectors');
      if (r.detector !== undefined && r.pattern !== undefined) return bad('use either detector or pattern, not both');
      if (r.detector === undefined && r.pattern === undefined && !hasColumns) return bad('needs a detector, a pattern or columns');
      if (r.strategy.kind === 'null' && (!hasColumns || r.detector !== undefined || r.pattern !== undefined))
        return bad('the null strategy replaces whole column values: use it with columns and without a detector or pattern');
      if (r.strategy.kind === 'hash' && (!Buffer.isBuffer(opts.hashKey) || opts.hashKey.length < 16))
        return bad('the hash strategy needs a hash key of at least 16 bytes');
      let detector: Detector | undefined;
      if (r.detector !== undefined) {
        if (!isDetectorName(r.detector)) return bad(`unknown detector ${JSON.stringify(r.detector)}`);
        detector = BUILTIN_DETECTORS[r.detector];
      } else if (r.pattern !== undefined) {
        if (typeof r.pattern !== 'string') return bad('pattern must be a string');
        const verdict = checkPattern(r.pattern);
        if (!verdict.ok) return bad(verdict.reason);
        detector = customDetector(r.name, r.pattern, verdict.literals);
      }
      const strategy = compileStrategy(r.strategy, opts.hashKey);
      if (!hasColumns) {
        content.push({ name: r.name, detector: detector!, strategy });
        return;
      }
      const rule: CompiledRule = detector
        ? { name: r.name, strategy, content: new Matcher([{ name: r.name, detector, strategy }], { prefilter }) }
        : { name: r.name, strategy };
      for (const sel of r.columns!) {
        const parsed = parseSelector(sel, rule);
        if (typeof parsed === 'string') return bad(parsed);
        selectors.push(parsed);
      }
    });
    if (problems.length > 0) throw new MaskingConfigError(problems);
    return new MaskingEngine(content.length > 0 ? new Matcher(content, { prefilter }) : undefined, selectors);
  }

  /**
   * The column parts of the column selectors (globs, `*` = any run of
   * characters), for narrowing a catalogue lookup; a selector whose column
   * part is `*` selects by table alone and adds nothing here.
   */
  get columnGlobs(): string[] {
    return [...new Set(this.selectors.flatMap((s) => (s.columnGlob === undefined ? [] : [s.columnGlob])))];
  }

  /**
   * The first rule (in config order) whose selector matches the column.
   * `table` is 'schema.table' or 'table' as the adapter resolved it; a
   * schema-qualified selector also matches an unqualified table of the same
   * name, and an unknown table (an expression, a subquery) matches any table
   * selector: when in doubt, mask.
   */
  columnRule(table: string | undefined, column: string): CompiledRule | undefined {
    let schemaName: string | undefined;
    let tableName = table;
    if (table !== undefined) {
      const dot = table.lastIndexOf('.');
      if (dot >= 0) (schemaName = table.slice(0, dot)), (tableName = table.slice(dot + 1));
    }
    for (const s of this.selectors) {
      if (!s.column.test(column)) continue;
      if (tableName === undefined) return s.rule;
      if (s.table && !s.table.test(tableName)) continue;
      if (s.schema && schemaName !== undefined && !s.schema.test(schemaName)) continue;
      return s.rule;
    }
    return undefined;
  }

  /** Content rules over one value. undefined = nothing matched (no allocation). Never mutates its input. */
  maskText(value: string, counts?: Map<string, number>): string | undefined {
    if (!this.matcher) return undefined;
    const hits = this.matcher.find(value);
    return hits ? applyText(value, hits, counts) : undefined;
  }

  /** maskText over UTF-8 bytes; returns new bytes or undefined. Bytes outside the hits are copied exactly. */
  maskBytes(value: Buffer, counts?: Map<string, number>): Buffer | undefined {
    if (!this.matcher) return undefined;
    return maskBytesWith(this.matcher, value, counts);
  }

  /**
   * Content rules over many values at once (a row, or a batch of rows): the
   * same results as maskBytes on each value. Each value's bytes go through
   * the candidate scan first; only values with a candidate are decoded and
   * matched exactly.
   */
  maskValues(values: Buffer[], counts?: Map<string, number>): Array<Buffer | undefined> {
    const out = new Array<Buffer | undefined>(values.length).fill(undefined);
    const matcher = this.matcher;
    if (!matcher || values.length === 0) return out;
    // The byte scan per value measured faster than joining the values and
    // scanning once (the join's copy costs more than the per-call overhead).
    for (let i = 0; i < values.length; i++) out[i] = maskBytesWith(matcher, values[i]!, counts);
    return out;
  }

  /**
   * The candidate scan over many values that lie in one buffer (the fields
   * of the DataRows of a chunk), without a view or a call per value: value i
   * is `buf[starts[i], ends[i])`, in ascending order, with at least one byte
   * between two values (a length word on the wire). Sets marks[i] = 1 when
   * value i may hold a hit of a content rule (it then goes to
   * `maskCandidate`, here or in a worker), 0 when it cannot. The values are
   * copied once, as one span, into a scratch buffer whose bytes between
   * values are zeroed: a NUL stops every check of the scan, so each value is
   * judged as if alone. `buf` is not modified.
   */
  markRanges(buf: Buffer, starts: Int32Array, ends: Int32Array, n: number, marks: Uint8Array, hints?: Int32Array): void {
    marks.fill(0, 0, n);
    hints?.fill(0, 0, n);
    const matcher = this.matcher;
    if (!matcher || n === 0) return;
    const base = starts[0]!;
    const span = ends[n - 1]! - base;
    if (span > SCRATCH_MAX) {
      // Huge values (a field of megabytes, assembled whole): scanned one by one in place, never copied.
      for (let i = 0; i < n; i++) {
        const h = matcher.bytesHints(buf.subarray(starts[i], ends[i]));
        marks[i] = h !== 0 ? 1 : 0;
        if (hints) hints[i] = h;
      }
      return;
    }
    // Its own memory at offset 0 (never a slice of the shared pool): 4-aligned for the scan's word test.
    if (this.scratch.length < span) this.scratch = Buffer.allocUnsafeSlow(Math.max(span, 2 * this.scratch.length));
    if (this.relStarts.length < n) this.relStarts = new Int32Array(Math.max(n, 2 * this.relStarts.length));
    const scratch = this.scratch;
    const rel = this.relStarts;
    buf.copy(scratch, 0, base, base + span);
    let prevEnd = 0;
    for (let i = 0; i < n; i++) {
      const s = starts[i]! - base;
      if (i > 0 && s <= prevEnd) throw new Error('markRanges: values must be ascending with a byte between them');
      if (s - prevEnd > 32) scratch.fill(0, prevEnd, s);
      else for (let p = prevEnd; p < s; p++) scratch[p] = 0;
      rel[i] = s;
      prevEnd = ends[i]! - base;
    }
    matcher.markBytes(scratch.subarray(0, span), rel.subarray(0, n), marks.subarray(0, n), hints?.subarray(0, n));
  }

  /**
   * maskBytes for a value `markRanges` marked: the exact path only (the scan
   * has already run). `hints`: what markRanges recorded for the value.
   */
  maskCandidate(value: Buffer, counts?: Map<string, number>, hints: number = ALL_HINTS): Buffer | undefined {
    if (!this.matcher) return undefined;
    return exactBytes(this.matcher, value, counts, hints);
  }

  /**
   * maskCandidate for the value `buf[start, end)`, writing the masked value
   * to `sink` instead of returning it: true when the value changed (its
   * masked bytes were appended to the sink), false when nothing matched
   * (the sink is untouched). The same bytes as maskCandidate.
   *
   * An ASCII value (the common case) is matched on its latin1 string (the
   * same string as its UTF-8 decoding, with string offsets = byte offsets),
   * and the bytes between hits and the replacements are written straight to
   * the sink: no decoding of the result, no concatenation, no encoding.
   */
  maskCandidateInto(buf: Buffer, start: number, end: number, hints: number, sink: ByteSink, counts?: Map<string, number>): boolean {
    const matcher = this.matcher;
    if (!matcher) return false;
    const email = matcher.soleEmail(hints);
    if (email?.strategy.writeAscii) {
      // Only the e-mail detector can match (the common case: the scan saw an '@'): found on the bytes.
      const n = findEmailsAscii(buf, start, end, this.emailHits);
      if (n === 0) return false;
      if (n > 0) {
        if (counts) counts.set(email.name, (counts.get(email.name) ?? 0) + n);
        const hits = this.emailHits;
        let pos = start;
        for (let h = 0; h < 2 * n; h += 2) {
          sink.copy(buf, pos, hits[h]!);
          email.strategy.writeAscii(buf, hits[h]!, hits[h + 1]!, 'email', sink);
          pos = hits[h + 1]!;
        }
        sink.copy(buf, pos, end);
        return true;
      }
      if (n === NOT_ASCII) return this.#general(matcher, buf, start, end, hints, sink, counts);
      // More hits than room: the regex this time, more room next time (bounded: 256 KiB).
      if (this.emailHits.length < EMAIL_HITS_MAX) this.emailHits = new Int32Array(2 * this.emailHits.length);
    }
    let or = 0;
    for (let i = start; i < end; i++) or |= buf[i]!;
    if (or >= 0x80) return this.#general(matcher, buf, start, end, hints, sink, counts);
    const s = (buf as Latin1Slicer).latin1Slice(start, end);
    const hits = matcher.find(s, hints);
    if (!hits) return false;
    for (const h of hits) {
      if (h.rule.strategy.writeAscii === undefined) {
        // A replacement that could hold a lone surrogate: encode the whole masked string at once, as maskCandidate does.
        sink.string(applyText(s, hits, counts));
        return true;
      }
    }
    count(counts, hits);
    let pos = start;
    for (const h of hits) {
      const hs = start + h.start;
      const he = start + h.end;
      sink.copy(buf, pos, hs);
      h.rule.strategy.writeAscii!(buf, hs, he, h.rule.detector.shape, sink);
      pos = he;
    }
    sink.copy(buf, pos, end);
    return true;
  }

  /** maskCandidateInto through exactBytes (a value with non-ASCII bytes). */
  #general(matcher: Matcher, buf: Buffer, start: number, end: number, hints: number, sink: ByteSink, counts: Map<string, number> | undefined): boolean {
    const out = exactBytes(matcher, buf.subarray(start, end), counts, hints);
    if (!out) return false;
    sink.put(out);
    return true;
  }

  /** A column rule over a whole value: the strategy's replacement, null for SQL NULL, or `value` itself when a scoped rule found nothing. */
  maskWhole(rule: CompiledRule, value: Buffer, counts?: Map<string, number>): Buffer | null {
    if (rule.content) return maskBytesWith(rule.content, value, counts) ?? value;
    if (counts) counts.set(rule.name, (counts.get(rule.name) ?? 0) + 1);
    return rule.strategy.bytes(value);
  }
}

/** Node's Buffer method behind toString('latin1', start, end), without its argument handling (not in the typings). */
type Latin1Slicer = Buffer & { latin1Slice(start: number, end: number): string };

/** Most e-mail hit offsets maskCandidateInto keeps room for (start and end of each). */
const EMAIL_HITS_MAX = 64 * 1024;

/** markRanges copies at most this much (the scratch is kept for the engine's life): a socket read is 64 KiB. */
const SCRATCH_MAX = 1024 * 1024;

function count(counts: Map<string, number> | undefined, hits: Match[]): void {
  if (!counts) return;
  for (const h of hits) counts.set(h.rule.name, (counts.get(h.rule.name) ?? 0) + 1);
}

function replacement(s: string, h: Match): string {
  return h.rule.strategy.text(s.slice(h.start, h.end), h.rule.detector.shape);
}

function applyText(s: string, hits: Match[], counts: Map<string, number> | undefined): string {
  count(counts, hits);
  let out = '';
  let pos = 0;
  for (const h of hits) {
    out += s.slice(pos, h.start) + replacement(s, h);
    pos = h.end;
  }
  return out + s.slice(pos);
}

function maskBytesWith(matcher: Matcher, buf: Buffer, counts: Map<string, number> | undefined): Buffer | undefined {
  const hints = matcher.bytesHints(buf);
  if (hints === 0) return undefined;
  return exactBytes(matcher, buf, counts, hints);
}

/** The exact path: decode, run the detectors' regexes (those the hints leave), splice the replacements into the bytes. */
function exactBytes(matcher: Matcher, buf: Buffer, counts: Map<string, number> | undefined, hints: number): Buffer | undefined {
  const s = buf.toString('utf8');
  // Valid UTF-8 decodes and encodes back to the same bytes: splice in the
  // string and encode once (cheaper than copying the pieces around each hit).
  // The decoder puts U+FFFD for every invalid sequence, so a string without
  // one came from valid UTF-8 (and V8 answers that at once for a string of
  // one-byte characters); a U+FFFD may also be a real one: check the bytes.
  if (s.indexOf('\uFFFD') === -1 || isUtf8(buf)) {
    const hits = matcher.find(s, hints);
    return hits ? Buffer.from(applyText(s, hits, counts), 'utf8') : undefined;
  }
  // Bytes that are not valid UTF-8 (a LATIN1 or WIN125x session, a SQL_ASCII
  // database, binary Redis values) decode to U+FFFD, which hides what is
  // next to them (josé@example.com: the local part ends in one) and would not
  // round-trip: match on latin1 instead, one char per byte, so string offsets
  // are byte offsets, untouched bytes are copied exactly, and a LATIN1 text
  // reads as itself (é is a letter there).
  const bin = buf.toString('latin1');
  const binHits = matcher.find(bin, hints);
  if (!binHits) return undefined;
  count(counts, binHits);
  const pieces: Buffer[] = [];
  let pos = 0;
  for (const h of binHits) {
    pieces.push(buf.subarray(pos, h.start), encodeLike(replacement(bin, h)));
    pos = h.end;
  }
  pieces.push(buf.subarray(pos));
  return Buffer.concat(pieces);
}

/**
 * A replacement for bytes matched as latin1: what it keeps of the value
 * (partial's prefix and suffix, an e-mail's domain) are latin1 characters
 * of the original, written back as the same bytes; a token with characters
 * past U+00FF (a configured one) goes out as UTF-8.
 */
function encodeLike(text: string): Buffer {
  return /[^\u0000-\u00ff]/.test(text) ? Buffer.from(text, 'utf8') : Buffer.from(text, 'latin1');
}

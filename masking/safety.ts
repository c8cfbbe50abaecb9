/**
 * Static safety check for custom `pattern:` rules, run at compile before a
 * pattern is ever executed. JavaScript's regex engine backtracks; a pattern
 * that can match the same text in many ways can take exponential (or high
 * polynomial) time on a crafted value and stall the relay. We parse the
 * pattern (the JavaScript syntax without flags, Annex B leniency included)
 * into a small AST and refuse:
 *
 * 1. backreferences (`\1`, `\k<name>`): matching with them is NP-hard;
 * 2. lookbehind containing a repeat: it is re-run backwards at every position;
 * 3. a pattern that can match empty text (it would "match" everywhere);
 * 4. under a repeat (`*`, `+`, `{n,}`, `{n,m}` with m > 1):
 *    a. a body that can match empty text (`(a*)*`, `(a?)+`);
 *    b. an inner repeat not followed, inside the repeated body (wrapping around
 *       to the body's start), by a required character that the inner repeat
 *       cannot match: `(a+)+`, `(.*)*`, `(\w+\s?)+` are refused, `(\w+\s)+`,
 *       `(-\d+)+` and `(?:[A-Z]+ )*` are accepted (each iteration has one split);
 *    c. an alternation whose branches can start with the same character
 *       (`(a|a)*`, `(a|ab)+`, `(\d|\w)*`);
 * 5. two unbounded repeats that can match the same characters with only
 *    optional items between them (`\d+\d+`, `.*.*`, `\s*-?\s*`): polynomial
 *    backtracking.
 *
 * Character sets are compared exactly for ASCII and over-approximated beyond
 * (any two sets that may match non-ASCII characters are assumed to overlap),
 * so the check errs towards refusing. Known limit: a single unbounded repeat
 * that fails late (`\w+@x` on a long run of letters) is still quadratic in the
 * value length, as in any backtracking engine; rule 5 does not look across a
 * required separator (`.*,.*`).
 */

/** ASCII bits 0-127 plus one bit for "may match some non-ASCII character". */
class CharSet {
  readonly bits = new Uint32Array(4);
  nonAscii = false;

  static of(...codes: number[]): CharSet {
    const s = new CharSet();
    for (const c of codes) s.add(c);
    return s;
  }
  static range(lo: number, hi: number): CharSet {
    const s = new CharSet();
    s.addRange(lo, hi);
    return s;
  }
  static any(): CharSet {
    const s = CharSet.range(0, 127);
    s.nonAscii = true;
    return s;
  }
  add(c: number): void {
    if (c < 128) this.bits[c >> 5]! |= 1 << (c & 31);
    else this.nonAscii = true;
  }
  addRange(lo: number, hi: number): void {
    for (let c = lo; c <= Math.min(hi, 127); c++) this.add(c);
    if (hi >= 128) this.nonAscii = true;
  }
  union(o: CharSet): CharSet {
    const s = new CharSet();
    for (let i = 0; i < 4; i++) s.bits[i] = this.bits[i]! | o.bits[i]!;
    s.nonAscii = this.nonAscii || o.nonAscii;
    return s;
  }
  complement(): CharSet {
    const s = new CharSet();
    for (let i = 0; i < 4; i++) s.bits[i] = ~this.bits[i]! >>> 0;
    s.nonAscii = true; // over-approximation: assume it may match non-ASCII
    return s;
  }
  overlaps(o: CharSet): boolean {
    for (let i = 0; i < 4; i++) if ((this.bits[i]! & o.bits[i]!) !== 0) return true;
    return this.nonAscii && o.nonAscii;
  }
  /** The one ASCII character this set matches, if exactly one. */
  single(): number | undefined {
    if (this.nonAscii) return undefined;
    let found: number | undefined;
    for (let c = 0; c < 128; c++) {
      if (this.bits[c >> 5]! & (1 << (c & 31))) {
        if (found !== undefined) return undefined;
        found = c;
      }
    }
    return found;
  }
}

type Node =
  | { t: 'char'; set: CharSet }
  | { t: 'seq'; items: Node[] }
  | { t: 'alt'; alts: Node[] }
  | { t: 'group'; body: Node }
  | { t: 'look'; body: Node; behind: boolean }
  | { t: 'quant'; body: Node; min: number; max: number }
  | { t: 'assert' }
  | { t: 'backref' };

const DIGIT = CharSet.range(48, 57);
const WORD = (() => {
  const s = CharSet.range(48, 57).union(CharSet.range(65, 90)).union(CharSet.range(97, 122));
  s.add(95);
  return s;
})();
const SPACE = (() => {
  const s = CharSet.of(9, 10, 11, 12, 13, 32);
  s.nonAscii = true;
  return s;
})();
const DOT = (() => {
  const s = CharSet.any();
  s.bits[0]! &= ~((1 << 10) | (1 << 13));
  return s;
})();

class ParseError extends Error {}

class Parser {
  private i = 0;
  constructor(private readonly src: string) {}

  parse(): Node {
    const n = this.alt();
    if (this.i < this.src.length) throw new ParseError(`unmatched ')' at offset ${this.i}`);
    return n;
  }

  private peek(): string | undefined {
    return this.src[this.i];
  }

  private alt(): Node {
    const alts = [this.seq()];
    while (this.peek() === '|') {
      this.i++;
      alts.push(this.seq());
    }
    return alts.length === 1 ? alts[0]! : { t: 'alt', alts };
  }

  private seq(): Node {
    const items: Node[] = [];
    while (this.i < this.src.length && this.peek() !== '|' && this.peek() !== ')') items.push(this.term());
    return items.length === 1 ? items[0]! : { t: 'seq', items };
  }

  private term(): Node {
    let atom = this.atom();
    for (;;) {
      const q = this.quantifier();
      if (!q) return atom;
      if (atom.t === 'assert') throw new ParseError('nothing to repeat');
      if (this.peek() === '?') this.i++; // lazy: same ambiguity as greedy
      atom = { t: 'quant', body: atom, min: q.min, max: q.max };
    }
  }

  private quantifier(): { min: number; max: number } | undefined {
    const c = this.peek();
    if (c === '*') return this.i++, { min: 0, max: Infinity };
    if (c === '+') return this.i++, { min: 1, max: Infinity };
    if (c === '?') return this.i++, { min: 0, max: 1 };
    if (c === '{') {
      const m = /^\{(\d+)(,(\d*))?\}/.exec(this.src.slice(this.i));
      if (!m) return undefined; // Annex B: a literal '{'
      this.i += m[0].length;
      const min = Number(m[1]);
      const max = m[2] === undefined ? min : m[3] === '' ? Infinity : Number(m[3]);
      if (max < min) throw new ParseError('numbers out of order in {} quantifier');
      return { min, max };
    }
    return undefined;
  }

  private atom(): Node {
    const c = this.src[this.i++]!;
    switch (c) {
      case '^':
      case '$':
        return { t: 'assert' };
      case '.':
        return { t: 'char', set: DOT };
      case '[':
        return { t: 'char', set: this.charClass() };
      case '\\':
        return this.escape();
      case '(':
        return this.group();
      case '*':
      case '+':
      case '?':
        throw new ParseError('nothing to repeat');
      default:
        return { t: 'char', set: CharSet.of(c.charCodeAt(0)) };
    }
  }

  private group(): Node {
    let kind: 'capture' | 'plain' | 'ahead' | 'behind' = 'capture';
    if (this.src.startsWith('?:', this.i)) (kind = 'plain'), (this.i += 2);
    else if (this.src.startsWith('?=', this.i) || this.src.startsWith('?!', this.i)) (kind = 'ahead'), (this.i += 2);
    else if (this.src.startsWith('?<=', this.i) || this.src.startsWith('?<!', this.i)) (kind = 'behind'), (this.i += 3);
    else if (this.src.startsWith('?<', this.i)) {
      const end = this.src.indexOf('>', this.i);
      if (end < 0) throw new ParseError('unterminated group name');
      this.i = end + 1;
    } else if (this.peek() === '?') throw new ParseError('invalid group');
    const body = this.alt();
    if (this.src[this.i++] !== ')') throw new ParseError('unterminated group');
    if (kind === 'ahead' || kind === 'behind') return { t: 'look', body, behind: kind === 'behind' };
    return { t: 'group', body };
  }

  /** An escape outside a class. */
  private escape(): Node {
    const c = this.src[this.i];
    if (c === undefined) throw new ParseError('\\ at end of pattern');
    if (c === 'b' || c === 'B') return this.i++, { t: 'assert' };
    if (/[1-9]/.test(c)) {
      this.i++;
      while (/\d/.test(this.peek() ?? '')) this.i++;
      return { t: 'backref' };
    }
    if (c === 'k' && this.src[this.i + 1] === '<') {
      const end = this.src.indexOf('>', this.i);
      this.i = end < 0 ? this.src.length : end + 1;
      return { t: 'backref' };
    }
    return { t: 'char', set: this.escapeSet() };
  }

  /** Character escapes shared by classes and atoms; consumes the escape body. */
  private escapeSet(): CharSet {
    const c = this.src[this.i++]!;
    switch (c) {
      case 'd':
        return DIGIT;
      case 'D':
        return DIGIT.complement();
      case 'w':
        return WORD;
      case 'W':
        return WORD.complement();
      case 's':
        return SPACE;
      case 'S':
        return SPACE.complement();
      case 'n':
        return CharSet.of(10);
      case 'r':
        return CharSet.of(13);
      case 't':
        return CharSet.of(9);
      case 'f':
        return CharSet.of(12);
      case 'v':
        return CharSet.of(11);
      case '0':
        return CharSet.of(0);
      case 'x': {
        const m = /^[0-9A-Fa-f]{2}/.exec(this.src.slice(this.i));
        if (!m) return CharSet.of(120);
        this.i += 2;
        return CharSet.of(parseInt(m[0], 16));
      }
      case 'u': {
        const m = /^[0-9A-Fa-f]{4}/.exec(this.src.slice(this.i));
        if (!m) return CharSet.of(117);
        this.i += 4;
        return CharSet.of(parseInt(m[0], 16));
      }
      case 'c': {
        const l = this.peek();
        if (l && /[A-Za-z]/.test(l)) return this.i++, CharSet.of(l.charCodeAt(0) % 32);
        return CharSet.of(92, 99);
      }
      default:
        return CharSet.of(c.charCodeAt(0)); // identity escape (\. \- \/ ...)
    }
  }

  private charClass(): CharSet {
    let negate = false;
    if (this.peek() === '^') (negate = true), this.i++;
    let set = new CharSet();
    let first = true;
    while (this.i < this.src.length && (this.peek() !== ']' || false)) {
      first = false;
      const lo = this.classAtom();
      if (this.peek() === '-' && this.src[this.i + 1] !== ']' && this.i + 1 < this.src.length) {
        this.i++;
        const hi = this.classAtom();
        const a = lo.single ?? -1;
        const b = hi.single ?? -1;
        if (a >= 0 && b >= 0) {
          if (b < a) throw new ParseError('range out of order in character class');
          set.addRange(a, b);
        } else {
          set = set.union(lo.set).union(hi.set).union(CharSet.of(45)); // Annex B: [\d-x]
        }
      } else set = set.union(lo.set);
    }
    if (this.src[this.i++] !== ']') throw new ParseError('unterminated character class');
    void first;
    return negate ? set.complement() : set;
  }

  private classAtom(): { set: CharSet; single?: number } {
    const c = this.src[this.i++]!;
    if (c !== '\\') {
      const code = c.charCodeAt(0);
      return { set: CharSet.of(code), single: code };
    }
    if (this.peek() === 'b') return this.i++, { set: CharSet.of(8), single: 8 };
    const set = this.escapeSet();
    const single = set.single();
    return single === undefined ? { set } : { set, single };
  }
}

// --- analysis ------------------------------------------------------------------

function nullable(n: Node): boolean {
  switch (n.t) {
    case 'char':
    case 'backref':
      return n.t === 'backref';
    case 'seq':
      return n.items.every(nullable);
    case 'alt':
      return n.alts.some(nullable);
    case 'group':
      return nullable(n.body);
    case 'quant':
      return n.min === 0 || nullable(n.body);
    case 'look':
    case 'assert':
      return true;
  }
}

/** Characters that can start a match of n (over-approximated). */
function firstSet(n: Node): CharSet {
  switch (n.t) {
    case 'char':
      return n.set;
    case 'seq': {
      let s = new CharSet();
      for (const it of n.items) {
        s = s.union(firstSet(it));
        if (!nullable(it)) break;
      }
      return s;
    }
    case 'alt':
      return n.alts.reduce((s, a) => s.union(firstSet(a)), new CharSet());
    case 'group':
    case 'quant':
      return firstSet(n.body);
    case 'look':
    case 'assert':
      return new CharSet();
    case 'backref':
      return CharSet.any();
  }
}

/** Every character n can consume. */
function allSet(n: Node): CharSet {
  switch (n.t) {
    case 'char':
      return n.set;
    case 'seq':
      return n.items.reduce((s, it) => s.union(allSet(it)), new CharSet());
    case 'alt':
      return n.alts.reduce((s, a) => s.union(allSet(a)), new CharSet());
    case 'group':
    case 'quant':
      return allSet(n.body);
    case 'look':
    case 'assert':
      return new CharSet();
    case 'backref':
      return CharSet.any();
  }
}

function repeats(n: Node): boolean {
  switch (n.t) {
    case 'quant':
      return n.max > 1 || repeats(n.body);
    case 'seq':
      return n.items.some(repeats);
    case 'alt':
      return n.alts.some(repeats);
    case 'group':
    case 'look':
      return repeats(n.body);
    default:
      return false;
  }
}

function seqItems(n: Node): Node[] {
  if (n.t === 'group') return seqItems(n.body);
  if (n.t === 'seq') return n.items;
  return [n];
}

function alternations(n: Node, out: Array<Extract<Node, { t: 'alt' }>>): void {
  if (n.t === 'alt') {
    out.push(n);
    n.alts.forEach((a) => alternations(a, out));
  } else if (n.t === 'seq') n.items.forEach((it) => alternations(it, out));
  else if (n.t === 'group' || n.t === 'quant' || n.t === 'look') alternations(n.body, out);
}

function show(src: string): string {
  return src.length > 40 ? `${src.slice(0, 37)}...` : src;
}

function check(n: Node, problems: string[]): void {
  switch (n.t) {
    case 'backref':
      problems.push('backreferences (\\1, \\k<name>) are refused: matching with them can take exponential time');
      return;
    case 'look':
      if (n.behind && repeats(n.body)) problems.push('a lookbehind containing a repeat is refused: it is re-run backwards at every position');
      check(n.body, problems);
      return;
    case 'seq':
      n.items.forEach((it) => check(it, problems));
      checkAdjacentRepeats(n.items, problems);
      return;
    case 'alt':
      n.alts.forEach((a) => check(a, problems));
      return;
    case 'group':
      check(n.body, problems);
      return;
    case 'quant':
      check(n.body, problems);
      if (n.max > 1) checkRepeatedBody(n, problems);
      return;
    default:
      return;
  }
}

/** Rule 4: the body of a repeat must split the text one way only. */
function checkRepeatedBody(q: Extract<Node, { t: 'quant' }>, problems: string[]): void {
  if (nullable(q.body)) {
    problems.push('a repeated group can match empty text (like (a*)* or (a?)+), so the engine can try exponentially many ways to split the input');
    return;
  }
  const items = seqItems(q.body);
  for (let k = 0; k < items.length; k++) {
    const it = items[k]!;
    if (!repeats(it)) continue;
    // The next required item inside the body, wrapping around to the next iteration's start.
    let sep: Node | undefined;
    for (let j = 1; j <= items.length; j++) {
      const cand = items[(k + j) % items.length]!;
      if (cand === it) break;
      if (!nullable(cand)) {
        sep = cand;
        break;
      }
    }
    if (!sep || firstSet(sep).overlaps(allSet(it))) {
      problems.push(
        'a repeat nested inside another repeat can match the same text in more than one way (like (a+)+, (.*)* or (\\w+\\s?)+): ' +
          'catastrophic backtracking; separate the inner repeat with a required character it cannot match, or bound the outer one',
      );
      return;
    }
  }
  const alts: Array<Extract<Node, { t: 'alt' }>> = [];
  alternations(q.body, alts);
  for (const a of alts) {
    for (let x = 0; x < a.alts.length; x++) {
      for (let y = x + 1; y < a.alts.length; y++) {
        if (nullable(a.alts[x]!) || nullable(a.alts[y]!) || firstSet(a.alts[x]!).overlaps(firstSet(a.alts[y]!))) {
          problems.push(
            'an alternation inside a repeat has branches that can match the same text (like (a|a)* or (a|ab)+): catastrophic backtracking; make the branches start with different characters',
          );
          return;
        }
      }
    }
  }
}

/** Rule 5: unbounded repeats over shared characters with only optional items between them. */
function checkAdjacentRepeats(items: Node[], problems: string[]): void {
  let open: CharSet | undefined;
  for (const it of items) {
    const unbounded = it.t === 'quant' && it.max === Infinity;
    if (unbounded) {
      const s = allSet(it);
      if (open && open.overlaps(s)) {
        problems.push(
          'two unbounded repeats can match the same characters with nothing required between them (like \\d+\\d+ or .*.*): polynomial backtracking; merge them or put a required separator between them',
        );
        return;
      }
      open = open ? open.union(s) : s;
    } else if (!nullable(it)) {
      open = undefined;
    } else if (open) {
      open = open.union(allSet(it));
    }
  }
}

export type SafetyVerdict = { ok: true; literals: string[] } | { ok: false; reason: string };

/**
 * Checks a custom pattern without running it. On success, `literals` are
 * required literal strings (one per top-level alternative) usable as a
 * prefilter, or empty when the pattern has none.
 */
export function checkPattern(src: string): SafetyVerdict {
  if (src.length === 0) return { ok: false, reason: 'the pattern is empty' };
  if (src.length > 2000) return { ok: false, reason: 'the pattern is longer than 2000 characters' };
  let ast: Node;
  try {
    ast = new Parser(src).parse();
    new RegExp(src); // compiles only; never executed here
  } catch (err) {
    return { ok: false, reason: `pattern ${JSON.stringify(show(src))} is not a valid regular expression: ${(err as Error).message}` };
  }
  const problems: string[] = [];
  check(ast, problems);
  if (problems.length === 0 && nullable(ast)) problems.push('the pattern can match empty text, so it would match everywhere');
  if (problems.length > 0) return { ok: false, reason: `pattern ${JSON.stringify(show(src))} refused: ${problems[0]}` };
  return { ok: true, literals: requiredLiterals(ast) };
}

/** Longest run of single-character items in a sequence. */
function longestLiteral(n: Node): string {
  let best = '';
  let cur = '';
  for (const it of seqItems(n)) {
    const c = it.t === 'char' ? it.set.single() : undefined;
    if (c !== undefined) {
      cur += String.fromCharCode(c);
      if (cur.length > best.length) best = cur;
    } else if (it.t === 'assert' || it.t === 'look') {
      // zero-width: does not break a literal run's adjacency
    } else cur = '';
  }
  return best;
}

function requiredLiterals(ast: Node): string[] {
  const branches = ast.t === 'alt' ? ast.alts : [ast];
  const lits = branches.map(longestLiteral);
  return lits.every((l) => l.length > 0) ? lits : [];
}

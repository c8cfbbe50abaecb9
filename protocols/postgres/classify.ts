/**
 * PostgreSQL statement classifier: SQL text in, SqlStatementFacts out, from the
 * real PostgreSQL parse tree (libpg-query, the server's own grammar compiled to
 * WASM). Nothing here matches text: comments, case, quoting and dollar quoting
 * are the parser's business, and the whole tree is walked (CTEs, subqueries,
 * EXPLAIN ANALYZE, PREPARE, rules, SQL-standard function bodies), so a write
 * hidden inside a SELECT is still a write.
 *
 * docs/policy-kinds.md is the reference for the kinds produced here.
 *
 * Parse trees as libpg-query emits them (pg_query JSON): a field typed `Node`
 * is wrapped as `{ "TypeName": { ...fields } }`; a field typed as a specific
 * struct (`RangeVar *relation`, `IntoClause *into`, `FuncCall *funccall`,
 * `VariableSetStmt *setstmt`, `WithClause *withClause`) is emitted bare. Zero,
 * false and empty fields are omitted.
 */

import { loadModule, parseSync } from 'libpg-query';
import { ErrorCodes, SluiceError } from '../../src/errors.js';
import { fingerprintHmac, fingerprintKeyGeneration } from '../../src/policy/fingerprint-key.js';
import { UNKNOWN_SETTING, type SqlStatementFacts } from '../../src/policy/types.js';
import { SECRET_OPTIONS } from './credentials.js';
import { DANGEROUS_SET_CONFIG_SETTINGS, isDangerousFunction } from './dangerous-functions.js';

export const SQL_UNPARSEABLE = ErrorCodes.SQL_UNPARSEABLE;

/** The statement could not be parsed (fail closed: it is refused, never forwarded). */
export class SqlParseError extends SluiceError {
  /** Error cursor as PostgreSQL's ErrorResponse 'P' field: 1-based, in characters, into the text classified. */
  readonly position?: number;
  /** syntax_error: what PostgreSQL itself answers for most parser errors. */
  readonly sqlState = '42601';

  constructor(message: string, position?: number) {
    super(ErrorCodes.SQL_UNPARSEABLE, message);
    this.name = 'SqlParseError';
    if (position !== undefined) this.position = position;
  }
}

// ---------------------------------------------------------------------------
// module loading

let loading: Promise<void> | undefined;
let loaded = false;

/** Loads the WASM parser once; idempotent, safe to call concurrently. */
export async function initClassifier(): Promise<void> {
  loading ??= loadModule().then(() => {
    loaded = true;
  });
  await loading;
}

// ---------------------------------------------------------------------------
// cache

type CacheEntry = FactsEntry | { error: SqlParseError };
interface FactsEntry {
  facts: readonly SqlStatementFacts[];
  /**
   * Where each statement's text starts in the cached (shape) text, found on
   * the first hit by a query with other literals and kept: the shape and
   * every query that maps to it have the same length and the same offsets.
   */
  offsets?: number[] | undefined;
}

export interface ClassifierCacheStats {
  hits: number;
  misses: number;
  size: number;
  /** Characters of statement text held. */
  chars: number;
}

/**
 * LRU of classification results by exact text (parse errors included, so a
 * client repeating a bad statement costs nothing either). Texts longer than
 * `maxTextLength` are never cached; `maxTotalChars` bounds the memory held.
 * Cached facts are frozen: callers share them.
 *
 * Recency is kept as the Map's insertion order, but a hit moves its entry to
 * the most recent end only when it may have drifted into the older half
 * (inserted longer ago than half the entries held): a hot statement is hit every
 * transaction, and re-inserting it each time (a delete and a set on the
 * Map) cost more than the lookup itself. An entry in use is still never the
 * one evicted.
 */
export class ClassifierCache {
  private readonly map = new Map<string, { entry: CacheEntry; stamp: number }>();
  /** Insertions so far; an entry's stamp is the value at its last insertion. */
  private stamps = 0;
  private chars = 0;
  private hitCount = 0;
  private missCount = 0;

  constructor(
    readonly maxEntries = 5000,
    readonly maxTextLength = 64 * 1024,
    readonly maxTotalChars = 16 * 1024 * 1024,
  ) {}

  get(text: string): CacheEntry | undefined {
    const slot = this.map.get(text);
    if (slot === undefined) {
      this.missCount++;
      return undefined;
    }
    this.hitCount++;
    // Already the most recent (the one hot statement of a workload, hit every
    // transaction): nothing to move. Otherwise, fewer insertions since its own
    // than half the entries held: it is in the newer half, which is evicted last.
    const age = this.stamps - slot.stamp;
    if (age > 1 && age > this.map.size / 2) {
      // Map iteration order is insertion order: re-inserting marks it most recent.
      this.map.delete(text);
      slot.stamp = this.stamps++;
      this.map.set(text, slot);
    }
    return slot.entry;
  }

  set(text: string, entry: CacheEntry): void {
    if (text.length > this.maxTextLength || this.map.has(text)) return;
    this.map.set(text, { entry, stamp: this.stamps++ });
    this.chars += text.length;
    while (this.map.size > this.maxEntries || this.chars > this.maxTotalChars) {
      const oldest = this.map.keys().next().value as string;
      this.map.delete(oldest);
      this.chars -= oldest.length;
    }
  }

  stats(): ClassifierCacheStats {
    return { hits: this.hitCount, misses: this.missCount, size: this.map.size, chars: this.chars };
  }

  clear(): void {
    this.map.clear();
    this.chars = 0;
    this.hitCount = 0;
    this.missCount = 0;
  }
}

/** The instance classifySql/classifyPrepared use. */
export const classifierCache = new ClassifierCache();

// ---------------------------------------------------------------------------
// public API

/**
 * Splits and classifies a simple-Query string: one facts object per statement,
 * in order. Empty or comment-only text gives []. Throws SqlParseError with the
 * parser's message when the text does not parse. The returned facts are frozen.
 */
export function classifySql(sql: string): SqlStatementFacts[] {
  return classifyQuery(sql).facts();
}

/**
 * A simple Query, classified: the cached facts of its literal shape, and the
 * real text of each of its statements.
 *
 * `shared` is what a verdict is computed from. It is the cache's own frozen
 * array, the same objects for every query of one shape (`... aid = 17` and
 * `... aid = 42`), and every field but `text` holds for this query: so a
 * policy can remember its verdict per facts object. `text` there is the
 * shape's; the query's own texts come from `text(i)`, and `facts()` builds
 * (once) facts carrying them, for what needs whole facts with the real text
 * (a refusal, a held statement, a fingerprint). An allowed query needs
 * neither copy: that is most of them.
 */
export class ClassifiedQuery {
  #facts: SqlStatementFacts[] | undefined;

  constructor(
    readonly sql: string,
    readonly shared: readonly SqlStatementFacts[],
    /** Where each statement starts in `sql`; undefined when `shared` came from `sql` itself. */
    private readonly offsets: readonly number[] | undefined,
  ) {}

  get length(): number {
    return this.shared.length;
  }

  /** The i-th statement's text as the client sent it. */
  text(i: number): string {
    const f = this.shared[i]!;
    if (this.offsets === undefined) return f.text;
    const at = this.offsets[i]!;
    const end = at + f.text.length;
    return at === 0 && end === this.sql.length ? this.sql : this.sql.slice(at, end);
  }

  /** The facts with this query's texts (frozen; built on first call). */
  facts(): SqlStatementFacts[] {
    if (this.#facts !== undefined) return this.#facts;
    const shared = this.shared;
    if (this.offsets === undefined) return (this.#facts = shared as SqlStatementFacts[]);
    const facts: SqlStatementFacts[] = new Array(shared.length);
    for (let i = 0; i < shared.length; i++) facts[i] = withText(shared[i]!, this.text(i));
    return (this.#facts = Object.freeze(facts) as SqlStatementFacts[]);
  }
}

/** Classifies a simple-Query string (see ClassifiedQuery); throws SqlParseError as classifySql does. */
export function classifyQuery(sql: string): ClassifiedQuery {
  const shape = literalShape(sql);
  const entry = lookupExact(shape);
  if ('error' in entry) throw entry.error;
  if (shape === sql) return new ClassifiedQuery(sql, entry.facts, undefined);
  // Same length, same characters but for the digits of bare numbers: each
  // statement's text is found at the same offsets in the real query.
  return new ClassifiedQuery(sql, entry.facts, (entry.offsets ??= statementOffsets(shape, entry.facts)));
}

/**
 * Classifies the single statement of a Parse message (extended protocol).
 * More than one statement is refused as PostgreSQL refuses it. An empty query
 * (legal in Parse; the server answers EmptyQueryResponse) has kind `empty`.
 */
export function classifyPrepared(sql: string): SqlStatementFacts {
  const query = classifyQuery(sql);
  if (query.length > 1) {
    throw new SqlParseError('cannot insert multiple commands into a prepared statement');
  }
  return query.facts()[0] ?? emptyFacts(sql);
}

/**
 * A normalised fingerprint for approval windows: an HMAC-SHA256 (hex, keyed
 * by src/policy/fingerprint-key.ts) of the parse tree with locations and
 * constants removed, so whitespace, case of keywords, comments and literal
 * values do not matter; identifiers (tables, columns, functions, settings)
 * do. Constants passed to dangerous functions and to set_config are kept:
 * a window granted for `pg_read_file('a')` must not release
 * `pg_read_file('b')`, nor `set_config('application_name', ...)` a
 * `set_config('role', ...)`. A password option (CREATE / ALTER ROLE
 * PASSWORD, a user mapping's `password`, SECRET_OPTIONS) is a marker in
 * the tree: a window covers the statement whatever its password, which the
 * approver never sees either (as for Redis, command-gate.ts). Other secrets
 * (a connection string's) stay in the tree, behind the key: the approvals
 * API shows fingerprints, and an unkeyed hash of a tree whose every other
 * part the reader knows would let them test guesses at what is left.
 */
export function fingerprint(facts: SqlStatementFacts): string {
  if (fingerprintsKeyedBy !== fingerprintKeyGeneration()) {
    fingerprints = new WeakMap();
    fingerprintsKeyedBy = fingerprintKeyGeneration();
  }
  const known = fingerprints.get(facts);
  if (known !== undefined) return known;
  ensureLoaded();
  let stmts: RawStmt[];
  try {
    stmts = (parseSync(facts.text) as ParseResult).stmts ?? [];
  } catch (err) {
    throw toParseError(err);
  }
  const tree = stmts.length === 0 ? null : normalise(stmts.length === 1 ? stmts[0]!.stmt : stmts.map((s) => s.stmt), false);
  const digest = fingerprintHmac().update(JSON.stringify(tree)).digest('hex');
  fingerprints.set(facts, digest);
  return digest;
}

// ---------------------------------------------------------------------------
// parsing

/** A parse-tree node or value as pg_query JSON gives it. */
type Json = null | boolean | number | string | Json[] | JsonObject;
interface JsonObject {
  [key: string]: Json;
}
interface RawStmt {
  stmt: JsonObject;
  stmt_location?: number;
  stmt_len?: number;
}
interface ParseResult {
  version: number;
  stmts?: RawStmt[];
}

/** Fingerprints under the key of generation fingerprintsKeyedBy (a new key empties it). */
let fingerprints = new WeakMap<SqlStatementFacts, string>();
let fingerprintsKeyedBy = -1;

function ensureLoaded(): void {
  if (!loaded) throw new Error('classifier used before initClassifier() resolved');
}

function statementOffsets(shape: string, facts: readonly SqlStatementFacts[]): number[] {
  const offsets: number[] = [];
  let from = 0;
  for (const f of facts) {
    const at = shape.indexOf(f.text, from);
    offsets.push(at);
    from = at + f.text.length;
  }
  return offsets;
}

/**
 * The fields withText copies one by one (an object spread of the frozen
 * cached facts took several times longer). Typed as every key of
 * SqlStatementFacts, optional ones included: a field added to the type
 * does not compile here until it is listed, and copied below.
 */
const COPIED_FIELDS: Record<keyof SqlStatementFacts, true> = {
  protocol: true,
  text: true,
  kinds: true,
  tables: true,
  functions: true,
  dangerousFunctions: true,
  withoutWhere: true,
  settings: true,
  statementName: true,
};
void COPIED_FIELDS;

/** `f` with another text, everything else shared (the arrays are frozen). */
function withText(f: SqlStatementFacts, text: string): SqlStatementFacts {
  return Object.freeze({
    protocol: f.protocol,
    text,
    kinds: f.kinds,
    tables: f.tables,
    functions: f.functions,
    dangerousFunctions: f.dangerousFunctions,
    withoutWhere: f.withoutWhere,
    settings: f.settings,
    statementName: f.statementName,
  });
}

function lookupExact(sql: string): CacheEntry {
  const cached = classifierCache.get(sql);
  if (cached !== undefined) return cached;
  ensureLoaded();
  let entry: CacheEntry;
  try {
    entry = { facts: Object.freeze(parseAndClassify(sql)), offsets: undefined };
  } catch (err) {
    entry = { error: toParseError(err) };
  }
  classifierCache.set(sql, entry);
  return entry;
}

/**
 * The cache key of a query: its text with every bare numeric literal
 * replaced by a number of the same length that is zero exactly when the
 * original is (`17` -> `10`, `42` -> `10`, `0` -> `0`), so
 * `... WHERE aid = 17` and `... WHERE aid = 42` share one parse (a parse
 * costs ~150 µs; simple-protocol clients such as pgbench -M simple send a
 * new literal every time).
 *
 * Why this is safe: no fact depends on the value of a number beyond whether
 * it is zero (EXPLAIN's ANALYZE 0/1; kinds, tables, functions, settings and
 * WHERE-less writes are the same for `LIMIT 1` and `LIMIT 2`), and the
 * replacement keeps every token's type and boundary, so the shape parses to
 * the same tree. Only digits in the plain
 * SQL text are touched: never inside a string, a quoted identifier, a
 * comment, an identifier (`t1`) or a parameter (`$1`). Where this small lexer
 * is not certain of its footing (dollar quotes, E'' and other prefixed
 * strings, backslashes, unterminated quotes) the text is its own key.
 * The fingerprint and every approval hash use the real text.
 */
export function literalShape(sql: string): string {
  let out = '';
  let copied = 0;
  const n = sql.length;
  let i = 0;
  while (i < n) {
    const c = sql.charCodeAt(i);
    if (c > 0x39) {
      // Letters, most punctuation, non-ASCII: the bulk of any statement, one
      // comparison each. Only a backslash up there needs a second look.
      if (c === 0x5c /* \\ */) return sql;
      i++;
    } else if (c === 0x27 /* ' */ || c === 0x22 /* " */) {
      // A prefix (E'', B'', X'', N'') changes the rules inside: no shaping.
      if (c === 0x27 && i > 0 && isIdentifierChar(sql.charCodeAt(i - 1))) return sql;
      i = skipQuoted(sql, i, c);
      if (i < 0) return sql;
    } else if (c === 0x24 /* $ */) {
      // $1 is a parameter; any other $ may open a dollar-quoted string.
      const next = sql.charCodeAt(i + 1);
      if (!(next >= 0x30 && next <= 0x39)) return sql;
      i += 2;
      while (i < n && isDigit(sql.charCodeAt(i))) i++;
    } else if (c === 0x2d /* - */ && sql.charCodeAt(i + 1) === 0x2d) {
      // PostgreSQL's lexer ends a -- comment at CR as well as LF (scan.l: non_newline is [^\n\r]).
      // Ended only at LF here, a CR would make the shaper read the server's quoted text as code,
      // and rewrite digits the server reads inside quotes (a U&"!0073..." table name, say).
      i += 2;
      while (i < n && sql.charCodeAt(i) !== 0x0a && sql.charCodeAt(i) !== 0x0d) i++;
    } else if (c === 0x2f /* / */ && sql.charCodeAt(i + 1) === 0x2a /* * */) {
      i = skipBlockComment(sql, i);
      if (i < 0) return sql;
    } else if (isDigit(c) && (i === 0 || !isIdentifierChar(sql.charCodeAt(i - 1)))) {
      let end = i + 1;
      while (end < n && isDigit(sql.charCodeAt(end))) end++;
      // Zero stays zero and anything else becomes 1000...: a boolean option
      // written as a number (EXPLAIN (ANALYZE 1)) keeps its meaning.
      let zero = true;
      for (let k = i; k < end && zero; k++) zero = sql.charCodeAt(k) === 0x30;
      out += sql.slice(copied, i) + numberShape(end - i, zero);
      copied = end;
      i = end;
    } else {
      i++;
    }
  }
  return copied === 0 ? sql : out + sql.slice(copied);
}

/** `1000...` / `000...` of each length up to 32 (any id or count a client sends), made once. */
const ONES = Array.from({ length: 33 }, (_, n) => (n === 0 ? '' : `1${'0'.repeat(n - 1)}`));
const ZEROS = Array.from({ length: 33 }, (_, n) => '0'.repeat(n));

function numberShape(length: number, zero: boolean): string {
  if (length < ONES.length) return zero ? ZEROS[length]! : ONES[length]!;
  return zero ? '0'.repeat(length) : `1${'0'.repeat(length - 1)}`;
}

function isDigit(c: number): boolean {
  return c >= 0x30 && c <= 0x39;
}

/** Letters, digits, _ and $ continue an identifier, as does any non-ASCII character. */
function isIdentifierChar(c: number): boolean {
  return (c >= 0x30 && c <= 0x39) || (c >= 0x41 && c <= 0x5a) || (c >= 0x61 && c <= 0x7a) || c === 0x5f || c === 0x24 || c >= 0x80;
}

/** Index just past a '...' or "..." (doubled quotes inside), or -1 when it never ends. */
function skipQuoted(sql: string, start: number, quote: number): number {
  let i = start + 1;
  for (;;) {
    const end = sql.indexOf(String.fromCharCode(quote), i);
    if (end < 0) return -1;
    if (sql.charCodeAt(end + 1) === quote) i = end + 2;
    else return end + 1;
  }
}

/** Index just past a (nested) block comment, or -1 when it never ends. */
function skipBlockComment(sql: string, start: number): number {
  let depth = 0;
  let i = start;
  while (i < sql.length) {
    if (sql.charCodeAt(i) === 0x2f && sql.charCodeAt(i + 1) === 0x2a) {
      depth++;
      i += 2;
    } else if (sql.charCodeAt(i) === 0x2a && sql.charCodeAt(i + 1) === 0x2f) {
      depth--;
      i += 2;
      if (depth === 0) return i;
    } else {
      i++;
    }
  }
  return -1;
}

function toParseError(err: unknown): SqlParseError {
  if (err instanceof SqlParseError) return err;
  const message = err instanceof Error ? err.message : String(err);
  const details = (err as { sqlDetails?: { cursorPosition?: number } }).sqlDetails;
  // libpg-query reports the cursor 0-based in characters; PostgreSQL's is 1-based.
  const position = typeof details?.cursorPosition === 'number' ? details.cursorPosition + 1 : undefined;
  return new SqlParseError(message, position);
}

function parseAndClassify(sql: string): SqlStatementFacts[] {
  // The wire string ends at its first zero byte; the server refuses one inside
  // the message, and the parser (a C string) would silently stop there.
  if (sql.includes('\0')) throw new SqlParseError('query string contains a zero byte');
  if (sql.trim() === '') return [];
  const stmts = (parseSync(sql) as ParseResult).stmts ?? [];
  if (stmts.length === 0) return [];
  // stmt_location/stmt_len are byte offsets into the UTF-8 text.
  const ascii = !/[^\x00-\x7f]/.test(sql);
  const bytes = ascii ? undefined : Buffer.from(sql, 'utf8');
  const total = ascii ? sql.length : bytes!.length;
  return stmts.map((raw) => {
    const start = raw.stmt_location ?? 0;
    const end = raw.stmt_len ? start + raw.stmt_len : total;
    const text = (ascii ? sql.slice(start, end) : bytes!.subarray(start, end).toString('utf8')).trim();
    return Object.freeze(classifyStmt(raw.stmt, text));
  });
}

function emptyFacts(text: string): SqlStatementFacts {
  return Object.freeze({
    protocol: 'postgres' as const,
    text,
    kinds: Object.freeze(['empty']) as string[],
    tables: Object.freeze([]) as unknown as string[],
    functions: Object.freeze([]) as unknown as string[],
    dangerousFunctions: Object.freeze([]) as unknown as string[],
    withoutWhere: false,
    settings: Object.freeze([]) as unknown as string[],
    statementName: '',
  });
}

// ---------------------------------------------------------------------------
// the walk

interface Acc {
  kinds: Set<string>;
  tables: Set<string>;
  functions: Set<string>;
  dangerous: Set<string>;
  settings: Set<string>;
  withoutWhere: boolean;
  /** See SqlStatementFacts.statementName. */
  statementName: string;
  /** The top statement node: a few nodes mean something else when nested. */
  top: JsonObject;
}

interface Ctx {
  /** Inside a plain EXPLAIN: planned, not run. Kinds, settings and withoutWhere are not recorded; tables and functions are. */
  planOnly: boolean;
  /** CTE names in scope, innermost last: an unqualified FROM reference to one is not a table. */
  ctes: readonly ReadonlySet<string>[];
}

function classifyStmt(stmt: JsonObject, text: string): SqlStatementFacts {
  const [, top] = onlyEntry(stmt);
  const acc: Acc = {
    kinds: new Set(),
    tables: new Set(),
    functions: new Set(),
    dangerous: new Set(),
    settings: new Set(),
    withoutWhere: false,
    statementName: '',
    top: top ?? stmt,
  };
  walk(stmt, acc, { planOnly: false, ctes: [] });
  if (acc.kinds.size === 0) acc.kinds.add('other');
  const list = (s: Set<string>): string[] => Object.freeze([...s]) as string[];
  return {
    protocol: 'postgres',
    text,
    kinds: list(acc.kinds),
    tables: list(acc.tables),
    functions: list(acc.functions),
    dangerousFunctions: list(acc.dangerous),
    withoutWhere: acc.withoutWhere,
    settings: list(acc.settings),
    statementName: acc.statementName,
  };
}

function isObject(v: Json | undefined): v is JsonObject {
  return typeof v === 'object' && v !== null && !Array.isArray(v);
}

/** `{ "TypeName": {...} }` -> [TypeName, body]; anything else -> [undefined, undefined]. */
function onlyEntry(o: JsonObject): [string | undefined, JsonObject | undefined] {
  let key: string | undefined;
  for (const k in o) {
    if (key !== undefined) return [undefined, undefined];
    key = k;
  }
  if (key === undefined || !/^[A-Z]/.test(key)) return [undefined, undefined];
  const body = o[key];
  return isObject(body) ? [key, body] : [undefined, undefined];
}

function walk(v: Json | undefined, acc: Acc, ctx: Ctx): void {
  if (Array.isArray(v)) {
    for (const item of v) walk(item, acc, ctx);
    return;
  }
  if (!isObject(v)) return;
  const [type, body] = onlyEntry(v);
  if (type !== undefined && body !== undefined) {
    visit(type, body, acc, ctx);
    return;
  }
  // A bare struct: recognise the two that matter wherever they appear.
  if (typeof v.relname === 'string' && 'relpersistence' in v) {
    visit('RangeVar', v, acc, ctx);
  } else if (Array.isArray(v.funcname) && typeof v.funcformat === 'string') {
    visit('FuncCall', v, acc, ctx);
  } else {
    walkChildren(v, acc, ctx);
  }
}

function walkChildren(body: JsonObject, acc: Acc, ctx: Ctx, skip?: string): void {
  const withClause = body.withClause;
  if (isObject(withClause) && skip !== 'withClause') {
    walkWith(body, withClause, acc, ctx);
    return;
  }
  for (const key in body) {
    if (key === skip) continue;
    const child = body[key];
    if (typeof child === 'object' && child !== null) walk(child, acc, ctx);
  }
}

/**
 * A statement with a WITH clause. Non-recursive: each CTE sees the ones before
 * it and the statement sees them all; a CTE's own name inside its body is the
 * real table (`WITH users AS (SELECT * FROM users) ...` reads table users).
 * WITH RECURSIVE: every CTE sees every name.
 */
function walkWith(body: JsonObject, withClause: JsonObject, acc: Acc, ctx: Ctx): void {
  const ctes = Array.isArray(withClause.ctes) ? withClause.ctes : [];
  const names: string[] = [];
  for (const c of ctes) {
    const cte = isObject(c) && isObject(c.CommonTableExpr) ? c.CommonTableExpr : undefined;
    names.push(typeof cte?.ctename === 'string' ? cte.ctename : '');
  }
  const recursive = withClause.recursive === true;
  ctes.forEach((c, i) => {
    const visible = new Set(recursive ? names : names.slice(0, i));
    walk(c, acc, { ...ctx, ctes: [...ctx.ctes, visible] });
  });
  walkChildren(body, acc, { ...ctx, ctes: [...ctx.ctes, new Set(names)] }, 'withClause');
}

function addKind(acc: Acc, ctx: Ctx, kind: string): void {
  if (ctx.planOnly) return;
  const colon = kind.indexOf(':');
  if (colon > 0) acc.kinds.add(kind.slice(0, colon));
  acc.kinds.add(kind);
}

/** `create`, `drop`, `alter` on an object type: `drop:table` and `drop`; role objects are `role` too. */
function addObjectKind(acc: Acc, ctx: Ctx, verb: string, objtype: Json | undefined): void {
  const object = objectName(objtype);
  addKind(acc, ctx, object ? `${verb}:${object}` : verb);
  if (object === 'role') addKind(acc, ctx, 'role');
}

const OBJECT_RENAMES: Record<string, string> = {
  MATVIEW: 'materialized_view',
  FDW: 'foreign_data_wrapper',
  FOREIGN_SERVER: 'server',
  STATISTIC_EXT: 'statistics',
  TSCONFIGURATION: 'text_search_configuration',
  TSDICTIONARY: 'text_search_dictionary',
  TSPARSER: 'text_search_parser',
  TSTEMPLATE: 'text_search_template',
  OPCLASS: 'operator_class',
  OPFAMILY: 'operator_family',
  AMOP: 'operator_family',
  AMPROC: 'operator_family',
  TABCONSTRAINT: 'constraint',
  DOMCONSTRAINT: 'domain_constraint',
  LARGEOBJECT: 'large_object',
  DEFACL: 'default_privileges',
  PUBLICATION_REL: 'publication',
  PUBLICATION_NAMESPACE: 'publication',
  PARAMETER_ACL: 'parameter',
};

/** OBJECT_MATVIEW -> materialized_view, OBJECT_TABLE -> table. */
function objectName(objtype: Json | undefined): string | undefined {
  if (typeof objtype !== 'string' || !objtype.startsWith('OBJECT_')) return undefined;
  const bare = objtype.slice('OBJECT_'.length);
  return OBJECT_RENAMES[bare] ?? bare.toLowerCase();
}

/** Object types whose names are relations: their DROP/COMMENT lists name tables. */
const RELATION_OBJECTS = new Set([
  'OBJECT_TABLE',
  'OBJECT_VIEW',
  'OBJECT_MATVIEW',
  'OBJECT_FOREIGN_TABLE',
  'OBJECT_SEQUENCE',
  'OBJECT_INDEX',
]);

function sval(v: Json | undefined): string | undefined {
  if (!isObject(v)) return undefined;
  const s = isObject(v.String) ? v.String.sval : undefined;
  return typeof s === 'string' ? s : undefined;
}

/**
 * A `List` of `String` (or a bare array of them) -> 'schema.name' or 'name'.
 * A third, leading part is the database: PostgreSQL accepts only the current
 * one there (anything else is "cross-database references are not
 * implemented"), so `app.public.secrets` is `public.secrets`, and is named so
 * for the rules.
 */
function dottedName(v: Json | undefined): string | undefined {
  const items = Array.isArray(v) ? v : isObject(v) && isObject(v.List) ? v.List.items : undefined;
  if (!Array.isArray(items)) return undefined;
  const parts = items.map(sval);
  return parts.every((p): p is string => p !== undefined) && parts.length > 0 ? withoutCatalog(parts).join('.') : undefined;
}

function withoutCatalog(parts: string[]): string[] {
  return parts.length === 3 ? parts.slice(1) : parts;
}

function addTable(acc: Acc, ctx: Ctx, rv: JsonObject): void {
  const relname = rv.relname;
  if (typeof relname !== 'string') return;
  const schema = typeof rv.schemaname === 'string' ? rv.schemaname : undefined;
  if (schema === undefined && ctx.ctes.some((scope) => scope.has(relname))) return;
  // catalogname, the database of db.schema.table, is left out as dottedName leaves it out.
  acc.tables.add(schema === undefined ? relname : `${schema}.${relname}`);
}

/** The target of INSERT/UPDATE/DELETE/MERGE is always a table, never a CTE of the same name. */
function addTarget(acc: Acc, body: JsonObject): void {
  if (isObject(body.relation)) addTable(acc, { planOnly: false, ctes: [] }, body.relation);
}

/** A constant string (possibly cast: 'role'::text), else undefined. */
function constString(v: Json | undefined): string | undefined {
  if (!isObject(v)) return undefined;
  if (isObject(v.TypeCast)) return constString(v.TypeCast.arg);
  if (isObject(v.A_Const) && isObject(v.A_Const.sval) && typeof v.A_Const.sval.sval === 'string') {
    return v.A_Const.sval.sval;
  }
  return undefined;
}

function visitFuncCall(body: JsonObject, acc: Acc, ctx: Ctx): void {
  const name = dottedName(body.funcname);
  if (name === undefined) return;
  acc.functions.add(name);
  const last = name.slice(name.lastIndexOf('.') + 1);
  if (isDangerousFunction(last)) acc.dangerous.add(name);
  if (last === 'pg_notify') addKind(acc, ctx, 'notify');
  if (last === 'set_config') {
    // set_config(setting_name, new_value, is_local); named notation may reorder it.
    const args = Array.isArray(body.args) ? body.args : [];
    let setting: Json | undefined = args[0];
    const named = args.find((a) => isObject(a) && isObject(a.NamedArgExpr) && a.NamedArgExpr.name === 'setting_name');
    if (named !== undefined) setting = (named as JsonObject & { NamedArgExpr: JsonObject }).NamedArgExpr.arg;
    else if (isObject(setting) && isObject(setting.NamedArgExpr)) setting = undefined;
    const constant = constString(setting);
    if (constant === undefined) {
      acc.dangerous.add(name);
      if (!ctx.planOnly) acc.settings.add(UNKNOWN_SETTING);
    } else {
      const lower = constant.toLowerCase();
      if (!ctx.planOnly) acc.settings.add(lower);
      if (DANGEROUS_SET_CONFIG_SETTINGS.has(lower)) acc.dangerous.add(name);
    }
  }
}

/** The settings a VariableSetStmt changes (lowercased; RESET ALL -> '*'). */
function settingsOf(stmt: JsonObject): string[] {
  if (stmt.kind === 'VAR_RESET_ALL') return ['*'];
  const name = typeof stmt.name === 'string' ? stmt.name : '';
  if (stmt.kind === 'VAR_SET_MULTI') {
    // SET TRANSACTION ... / SET SESSION CHARACTERISTICS AS TRANSACTION ...
    const prefix = name === 'SESSION CHARACTERISTICS' ? 'default_' : '';
    const args = Array.isArray(stmt.args) ? stmt.args : [];
    return args.flatMap((a) =>
      isObject(a) && isObject(a.DefElem) && typeof a.DefElem.defname === 'string' ? [prefix + a.DefElem.defname] : [],
    );
  }
  return name ? [name.toLowerCase()] : [];
}

function addSettings(acc: Acc, ctx: Ctx, setstmt: Json | undefined): void {
  if (ctx.planOnly || !isObject(setstmt)) return;
  for (const s of settingsOf(setstmt)) acc.settings.add(s);
}

/** EXPLAIN's ANALYZE option, read as PostgreSQL's defGetBoolean reads it. */
function explainAnalyzes(options: Json | undefined): boolean {
  if (!Array.isArray(options)) return false;
  let analyze = false;
  for (const o of options) {
    const def = isObject(o) && isObject(o.DefElem) ? o.DefElem : undefined;
    if (def === undefined || (def.defname !== 'analyze' && def.defname !== 'analyse')) continue;
    const arg = def.arg;
    if (!isObject(arg)) {
      analyze = true;
    } else if (isObject(arg.String)) {
      const s = String(arg.String.sval ?? '').toLowerCase();
      analyze = !(s === 'false' || s === 'off');
    } else if (isObject(arg.Integer)) {
      analyze = (arg.Integer.ival ?? 0) !== 0;
    } else if (isObject(arg.Boolean)) {
      analyze = arg.Boolean.boolval === true;
    } else {
      analyze = true; // fail closed: anything else counts as running it
    }
  }
  return analyze;
}

/** A SelectStmt that is only a VALUES list (INSERT ... VALUES): not a read. */
function isBareValues(body: JsonObject): boolean {
  return Array.isArray(body.valuesLists) && body.fromClause === undefined && body.op === 'SETOP_NONE';
}

function visit(type: string, body: JsonObject, acc: Acc, ctx: Ctx): void {
  const handler = HANDLERS[type];
  const childCtx = handler ? handler(body, acc, ctx) : undefined;
  if (childCtx !== false) walkChildren(body, acc, childCtx ?? ctx);
}

/** Records what a node says; returns a context for its children, or false to not walk them. */
type Handler = (body: JsonObject, acc: Acc, ctx: Ctx) => Ctx | false | void;

const kind =
  (k: string): Handler =>
  (_b, acc, ctx) =>
    addKind(acc, ctx, k);
const object =
  (verb: string, objtype: string): Handler =>
  (_b, acc, ctx) =>
    addObjectKind(acc, ctx, verb, `OBJECT_${objtype}`);
const objectFrom =
  (verb: string, field: string): Handler =>
  (b, acc, ctx) =>
    addObjectKind(acc, ctx, verb, b[field]);

const HANDLERS: Record<string, Handler> = {
  RangeVar: (b, acc, ctx) => {
    addTable(acc, ctx, b);
    return false;
  },
  FuncCall: (b, acc, ctx) => visitFuncCall(b, acc, ctx),

  // DML
  SelectStmt: (b, acc, ctx) => {
    if (b === acc.top || !isBareValues(b)) addKind(acc, ctx, 'select');
    if (isObject(b.intoClause)) addObjectKind(acc, ctx, 'create', 'OBJECT_TABLE'); // SELECT INTO
  },
  InsertStmt: (b, acc, ctx) => {
    addTarget(acc, b);
    addKind(acc, ctx, 'insert');
    if (isObject(b.onConflictClause) && b.onConflictClause.action === 'ONCONFLICT_UPDATE') addKind(acc, ctx, 'update');
  },
  UpdateStmt: (b, acc, ctx) => {
    addTarget(acc, b);
    addKind(acc, ctx, 'update');
    if (b.whereClause === undefined && !ctx.planOnly) acc.withoutWhere = true;
    // pg_settings' update rule calls set_config: UPDATE pg_settings is SET by another name.
    const rel = b.relation;
    if (isObject(rel) && rel.relname === 'pg_settings' && (rel.schemaname ?? 'pg_catalog') === 'pg_catalog') {
      acc.functions.add('set_config');
      acc.dangerous.add('set_config');
      // Which setting is for the WHERE clause to say, at run time.
      if (!ctx.planOnly) acc.settings.add(UNKNOWN_SETTING);
    }
  },
  DeleteStmt: (b, acc, ctx) => {
    addTarget(acc, b);
    addKind(acc, ctx, 'delete');
    if (b.whereClause === undefined && !ctx.planOnly) acc.withoutWhere = true;
  },
  MergeStmt: (b, acc, ctx) => {
    addTarget(acc, b);
    addKind(acc, ctx, 'merge');
  },
  MergeWhenClause: (b, acc, ctx) => {
    if (b.commandType === 'CMD_INSERT') addKind(acc, ctx, 'insert');
    if (b.commandType === 'CMD_UPDATE') addKind(acc, ctx, 'update');
    if (b.commandType === 'CMD_DELETE') addKind(acc, ctx, 'delete');
  },
  TruncateStmt: kind('truncate'),
  CopyStmt: (b, acc, ctx) => {
    addKind(acc, ctx, b.is_from === true ? 'copy_from' : 'copy_to');
    if (b.is_program === true) addKind(acc, ctx, 'copy_program');
    // A file on the database server (not STDIN/STDOUT, not a program): pg_read/write_server_files territory.
    else if (typeof b.filename === 'string') addKind(acc, ctx, 'copy_file');
  },

  // utility statements that carry another statement
  ExplainStmt: (b, acc, ctx) => {
    if (explainAnalyzes(b.options)) {
      addKind(acc, ctx, 'explain_analyze');
      return ctx;
    }
    addKind(acc, ctx, 'explain');
    return { ...ctx, planOnly: true };
  },
  PrepareStmt: (b, acc, ctx) => {
    addKind(acc, ctx, 'prepare');
    if (typeof b.name === 'string') acc.statementName = b.name;
  },
  ExecuteStmt: (b, acc, ctx) => {
    addKind(acc, ctx, 'execute');
    // Under a plain EXPLAIN it is planned, not run (as its kind is not recorded).
    if (typeof b.name === 'string' && !ctx.planOnly) acc.statementName = b.name;
  },
  DeallocateStmt: kind('deallocate'),
  DeclareCursorStmt: kind('cursor'),
  FetchStmt: kind('cursor'),
  ClosePortalStmt: kind('cursor'),
  DoStmt: (_b, acc, ctx) => {
    addKind(acc, ctx, 'do');
    return false; // the body is PL/pgSQL text: opaque here, policy decides on `do`
  },
  CallStmt: kind('call'),

  // session
  VariableSetStmt: (b, acc, ctx) => {
    // Nested (function SET clauses): only the settings count.
    if (b === acc.top) {
      const reset = b.kind === 'VAR_RESET' || b.kind === 'VAR_RESET_ALL';
      addKind(acc, ctx, 'set');
      if (reset) addKind(acc, ctx, 'reset');
      if (b.name === 'role') addKind(acc, ctx, 'set_role');
      if (b.name === 'session_authorization') addKind(acc, ctx, 'session_authorization');
      if (b.name === 'TRANSACTION') addKind(acc, ctx, 'transaction');
    }
    addSettings(acc, ctx, b);
  },
  VariableShowStmt: kind('show'),
  ConstraintsSetStmt: (_b, acc, ctx) => {
    addKind(acc, ctx, 'set');
    addKind(acc, ctx, 'transaction');
  },
  DiscardStmt: (b, acc, ctx) => {
    addKind(acc, ctx, 'discard');
    // DISCARD ALL includes RESET ALL.
    if (b.target === 'DISCARD_ALL' && !ctx.planOnly) acc.settings.add('*');
  },
  TransactionStmt: kind('transaction'),
  LockStmt: kind('lock'),
  ListenStmt: kind('listen'),
  UnlistenStmt: kind('unlisten'),
  NotifyStmt: kind('notify'),
  LoadStmt: kind('load'),

  // maintenance
  VacuumStmt: (b, acc, ctx) => {
    addKind(acc, ctx, b.is_vacuumcmd === true ? 'vacuum' : 'analyze');
    const options = Array.isArray(b.options) ? b.options : [];
    // VACUUM (ANALYZE) / VACUUM ANALYZE analyzes too.
    if (options.some((o) => isObject(o) && isObject(o.DefElem) && o.DefElem.defname === 'analyze')) addKind(acc, ctx, 'analyze');
  },
  ClusterStmt: kind('cluster'),
  ReindexStmt: kind('reindex'),
  RefreshMatViewStmt: kind('refresh'),
  CheckPointStmt: kind('checkpoint'),

  // privileges and roles
  GrantStmt: (b, acc, ctx) => addKind(acc, ctx, b.is_grant === true ? 'grant' : 'revoke'),
  GrantRoleStmt: (b, acc, ctx) => {
    addKind(acc, ctx, 'role');
    addKind(acc, ctx, b.is_grant === true ? 'grant' : 'revoke');
  },
  AlterDefaultPrivilegesStmt: (b, acc, ctx) => {
    addKind(acc, ctx, 'alter:default_privileges');
    const action = isObject(b.action) ? b.action : undefined;
    addKind(acc, ctx, action?.is_grant === true ? 'grant' : 'revoke');
  },
  CreateRoleStmt: object('create', 'ROLE'),
  AlterRoleStmt: object('alter', 'ROLE'),
  AlterRoleSetStmt: (b, acc, ctx) => {
    addObjectKind(acc, ctx, 'alter', 'OBJECT_ROLE');
    addSettings(acc, ctx, b.setstmt);
  },
  DropRoleStmt: object('drop', 'ROLE'),
  DropOwnedStmt: (_b, acc, ctx) => {
    addKind(acc, ctx, 'drop:owned');
    addKind(acc, ctx, 'role');
  },
  ReassignOwnedStmt: (_b, acc, ctx) => {
    addKind(acc, ctx, 'alter:owned');
    addKind(acc, ctx, 'role');
  },

  // DDL: create
  CreateStmt: object('create', 'TABLE'),
  CreateForeignTableStmt: object('create', 'FOREIGN_TABLE'),
  CreateTableAsStmt: objectFrom('create', 'objtype'),
  ViewStmt: object('create', 'VIEW'),
  IndexStmt: object('create', 'INDEX'),
  CreateSeqStmt: object('create', 'SEQUENCE'),
  CreateSchemaStmt: object('create', 'SCHEMA'),
  CreateFunctionStmt: (b, acc, ctx) =>
    addObjectKind(acc, ctx, 'create', b.is_procedure === true ? 'OBJECT_PROCEDURE' : 'OBJECT_FUNCTION'),
  CreateExtensionStmt: object('create', 'EXTENSION'),
  CreateTrigStmt: object('create', 'TRIGGER'),
  CreateEventTrigStmt: object('create', 'EVENT_TRIGGER'),
  CreatePLangStmt: object('create', 'LANGUAGE'),
  CreatedbStmt: object('create', 'DATABASE'),
  CreateTableSpaceStmt: object('create', 'TABLESPACE'),
  CreateDomainStmt: object('create', 'DOMAIN'),
  CompositeTypeStmt: object('create', 'TYPE'),
  CreateEnumStmt: object('create', 'TYPE'),
  CreateRangeStmt: object('create', 'TYPE'),
  DefineStmt: objectFrom('create', 'kind'),
  CreateCastStmt: object('create', 'CAST'),
  CreateConversionStmt: object('create', 'CONVERSION'),
  CreateOpClassStmt: object('create', 'OPCLASS'),
  CreateOpFamilyStmt: object('create', 'OPFAMILY'),
  CreateTransformStmt: object('create', 'TRANSFORM'),
  CreateAmStmt: object('create', 'ACCESS_METHOD'),
  CreateFdwStmt: object('create', 'FDW'),
  CreateForeignServerStmt: object('create', 'FOREIGN_SERVER'),
  CreateUserMappingStmt: object('create', 'USER_MAPPING'),
  ImportForeignSchemaStmt: object('create', 'FOREIGN_TABLE'),
  CreatePolicyStmt: object('create', 'POLICY'),
  CreatePublicationStmt: object('create', 'PUBLICATION'),
  CreateSubscriptionStmt: object('create', 'SUBSCRIPTION'),
  CreateStatsStmt: object('create', 'STATISTIC_EXT'),
  RuleStmt: object('create', 'RULE'),

  // DDL: alter
  AlterTableStmt: objectFrom('alter', 'objtype'),
  AlterTableMoveAllStmt: objectFrom('alter', 'objtype'),
  RenameStmt: (b, acc, ctx) => {
    const sub = b.renameType;
    const onRelation = sub === 'OBJECT_COLUMN' || sub === 'OBJECT_ATTRIBUTE' || sub === 'OBJECT_TABCONSTRAINT';
    addObjectKind(acc, ctx, 'alter', onRelation ? b.relationType : sub);
  },
  AlterObjectSchemaStmt: objectFrom('alter', 'objectType'),
  AlterOwnerStmt: objectFrom('alter', 'objectType'),
  AlterObjectDependsStmt: objectFrom('alter', 'objectType'),
  AlterFunctionStmt: objectFrom('alter', 'objtype'),
  AlterSeqStmt: object('alter', 'SEQUENCE'),
  AlterExtensionStmt: object('alter', 'EXTENSION'),
  AlterExtensionContentsStmt: object('alter', 'EXTENSION'),
  AlterEventTrigStmt: object('alter', 'EVENT_TRIGGER'),
  AlterDatabaseStmt: object('alter', 'DATABASE'),
  AlterDatabaseRefreshCollStmt: object('alter', 'DATABASE'),
  AlterDatabaseSetStmt: (b, acc, ctx) => {
    addObjectKind(acc, ctx, 'alter', 'OBJECT_DATABASE');
    addSettings(acc, ctx, b.setstmt);
  },
  AlterSystemStmt: (b, acc, ctx) => {
    addKind(acc, ctx, 'alter:system');
    addSettings(acc, ctx, b.setstmt);
  },
  AlterTableSpaceOptionsStmt: object('alter', 'TABLESPACE'),
  AlterDomainStmt: object('alter', 'DOMAIN'),
  AlterEnumStmt: object('alter', 'TYPE'),
  AlterTypeStmt: object('alter', 'TYPE'),
  AlterCollationStmt: object('alter', 'COLLATION'),
  AlterOperatorStmt: object('alter', 'OPERATOR'),
  AlterOpFamilyStmt: object('alter', 'OPFAMILY'),
  AlterFdwStmt: object('alter', 'FDW'),
  AlterForeignServerStmt: object('alter', 'FOREIGN_SERVER'),
  AlterUserMappingStmt: object('alter', 'USER_MAPPING'),
  AlterPolicyStmt: object('alter', 'POLICY'),
  AlterPublicationStmt: object('alter', 'PUBLICATION'),
  AlterSubscriptionStmt: object('alter', 'SUBSCRIPTION'),
  AlterStatsStmt: object('alter', 'STATISTIC_EXT'),
  AlterTSDictionaryStmt: object('alter', 'TSDICTIONARY'),
  AlterTSConfigurationStmt: object('alter', 'TSCONFIGURATION'),
  ReplicaIdentityStmt: object('alter', 'TABLE'),

  // DDL: drop
  DropStmt: (b, acc, ctx) => {
    addObjectKind(acc, ctx, 'drop', b.removeType);
    if (typeof b.removeType === 'string' && RELATION_OBJECTS.has(b.removeType) && Array.isArray(b.objects)) {
      for (const o of b.objects) {
        const name = dottedName(o);
        if (name !== undefined) acc.tables.add(name);
      }
    }
  },
  DropdbStmt: object('drop', 'DATABASE'),
  DropTableSpaceStmt: object('drop', 'TABLESPACE'),
  DropUserMappingStmt: object('drop', 'USER_MAPPING'),
  DropSubscriptionStmt: object('drop', 'SUBSCRIPTION'),

  // metadata
  CommentStmt: (b, acc, ctx) => {
    addKind(acc, ctx, 'comment');
    if (typeof b.objtype === 'string' && RELATION_OBJECTS.has(b.objtype)) {
      const name = dottedName(b.object);
      if (name !== undefined) acc.tables.add(name);
    }
  },
  SecLabelStmt: kind('security_label'),
};

// ---------------------------------------------------------------------------
// fingerprint normalisation

/**
 * Nodes whose constants say what the statement does, not which row it
 * touches: SET / RESET and ALTER ROLE|DATABASE ... SET (`SET ROLE
 * reporting` is not `SET ROLE postgres`), ALTER SYSTEM (`archive_command`
 * runs a shell command), and CREATE / ALTER ROLE options (VALID UNTIL,
 * CONNECTION LIMIT; a PASSWORD is a marker, see normalise).
 */
const CONSTANTS_KEPT = new Set(['VariableSetStmt', 'AlterSystemStmt', 'AlterRoleSetStmt', 'AlterDatabaseSetStmt', 'CreateRoleStmt', 'AlterRoleStmt']);

/** What a fingerprint holds in place of a password option's value. */
const PASSWORD_MARK = '[password]';

/** `PASSWORD 'x'` of a role, `password 'x'` in OPTIONS (...): a DefElem with a value (`PASSWORD NULL` has none to hide). */
function isPasswordOption(d: JsonObject): boolean {
  return typeof d.defname === 'string' && SECRET_OPTIONS.has(d.defname.toLowerCase()) && d.arg !== undefined && d.arg !== null;
}

/**
 * Copy of a parse tree without locations and, unless `keepConstants`, without
 * constant values. Arguments of dangerous functions and set_config keep
 * theirs, as do the nodes in CONSTANTS_KEPT.
 */
function normalise(v: Json | undefined, keepConstants: boolean): Json {
  if (Array.isArray(v)) return v.map((x) => normalise(x, keepConstants));
  if (!isObject(v)) return v ?? null;
  const out: JsonObject = {};
  for (const key in v) {
    if (key === 'location' || key === 'stmt_location' || key === 'stmt_len') continue;
    const child = v[key];
    if (key === 'A_Const' && !keepConstants) {
      out[key] = {};
    } else if (key === 'DefElem' && isObject(child) && isPasswordOption(child)) {
      out[key] = { ...(normalise({ ...child, arg: null }, keepConstants) as JsonObject), arg: PASSWORD_MARK };
    } else if (key === 'FuncCall' && isObject(child)) {
      const name = dottedName(child.funcname) ?? '';
      const last = name.slice(name.lastIndexOf('.') + 1);
      out[key] = normalise(child, keepConstants || last === 'set_config' || isDangerousFunction(last));
    } else if (CONSTANTS_KEPT.has(key)) {
      out[key] = normalise(child, true);
    } else {
      out[key] = normalise(child, keepConstants);
    }
  }
  return out;
}

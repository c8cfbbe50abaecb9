/**
 * Turns one Redis command (its argv as Buffers) into RedisCommandFacts for the
 * policy engine: lowercase name, subcommand of container commands, Redis' own
 * ACL categories and the key names, using the built-in Redis 7.0 table
 * (command-table.ts).
 *
 * - Names match case-insensitively (ASCII only, like Redis' strcasecmp).
 * - A command Redis 7.0 does not know (module commands, typos, newer commands)
 *   gets the single category `@unknown`, so a policy can deny what it cannot
 *   judge. A container command whose subcommand is missing or unknown
 *   (`CLIENT FOO`) gets the union of the categories of the container and of all
 *   its subcommands plus `@unknown`: it can never look more harmless than its
 *   most dangerous subcommand. A bare container that Redis accepts without a
 *   subcommand (`COMMAND`) keeps the container's own categories.
 * - Keys come from Redis' key-specs, evaluated exactly as Redis'
 *   getKeysUsingKeySpecs() does (keyword search, ranges with a limit,
 *   numkeys), so XREAD ... STREAMS k1 k2 0 0, ZUNIONSTORE dst 2 a b and
 *   EVAL script 2 k1 k2 a1 yield the keys Redis' ACL would check. Key-specs
 *   flagged `not_key` (shard channels of SPUBLISH/SSUBSCRIBE) are not keys.
 *   Redis marks a few key-specs `unknown`; for those this module follows Redis'
 *   own getkeys procedures, erring on the side of reporting more:
 *     SORT ... STORE dst          dst is a key (every STORE, not only the last)
 *     SORT/SORT_RO BY|GET pat     a pattern containing `*` is reported as a key
 *                                 (the literal pattern, e.g. `user:*->name`): the
 *                                 keys it reads derive from data, and a key glob
 *                                 is matched against the pattern instead
 *     MIGRATE ... KEYS k1 k2      the keys after KEYS, plus argv[3] when it is
 *                                 not empty (Redis would refuse that combination)
 * - Each key-spec is evaluated on its own (what Redis calls
 *   GET_KEYSPEC_RETURN_PARTIAL): where one key-spec does not fit the arguments,
 *   the keys of the others are still reported (PFMERGE dst without sources;
 *   ZUNIONSTORE dst with a malformed numkeys), where Redis' COMMAND GETKEYS
 *   reports none. More keys is the safe side for key rules.
 * - Key extraction is best effort and never throws: a short or malformed
 *   argument list yields the keys that can be found (often none); Redis will
 *   answer such a command with an arity or syntax error anyway.
 * - Keys are decoded as UTF-8 with invalid bytes replaced by U+FFFD: a binary
 *   key still matches globs on its valid parts, and the text is safe to log.
 *
 * This runs for every command on the hot path: the name is looked up from its
 * bytes (a hash of the lowercased bytes, then a byte comparison: no string is
 * built for a known name, whatever its case), categories are shared frozen
 * arrays, and key extraction allocates only the keys array and its strings.
 */
import type { RedisCommandFacts } from '../../src/policy/types.js';
import { REDIS_COMMANDS, type CommandSpec, type KeySpec } from './command-table.js';

/** Pushes the keys of `args` it finds; returns true when the command may touch keys it cannot name. */
type KeyFinder = (args: Buffer[], keys: string[]) => boolean | void;

/**
 * A command as the policy sees it before its keys: its name, subcommand and
 * categories. One frozen object per table entry, the same for every command
 * that has it, so what depends only on these may be cached by identity.
 */
export interface CommandKind {
  readonly command: string;
  readonly subcommand?: string;
  readonly categories: string[];
  /** `get`, or `client|kill` for a subcommand: the audit trail's kind. */
  readonly kind: string;
}

interface Compiled {
  /** Canonical lowercase name. */
  name: string;
  /** The same, as bytes, to confirm a hash hit without decoding the argument. */
  bytes: Buffer;
  arity: number;
  /** Frozen; shared by every facts object of this command. */
  categories: string[];
  keyFinders: KeyFinder[];
  /** A keyspace write that names no key: it may change any key (RedisCommandFacts.anyKey). */
  wholeKeyspace: boolean;
  /** Containers: subcommands by name. */
  subs?: NameMap;
  /** Containers: categories when the subcommand is missing or unknown. */
  unknownSub?: string[];
  /** Commands and subcommands (not containers): what `commandKind` returns for it. */
  kind?: CommandKind;
}

/**
 * Names looked up straight from the argument's bytes: a hash of the
 * ASCII-lowercased bytes, then a byte comparison. No string is built for a
 * known name, whatever its case.
 */
class NameMap {
  private readonly buckets = new Map<number, Compiled[]>();
  /** Longer arguments are no name of ours: not worth hashing (a client may send a huge one). */
  private maxLength = 0;

  set(c: Compiled): void {
    this.maxLength = Math.max(this.maxLength, c.bytes.length);
    const h = hashName(c.bytes);
    const bucket = this.buckets.get(h);
    if (bucket) bucket.push(c);
    else this.buckets.set(h, [c]);
  }

  get(arg: Buffer): Compiled | undefined {
    return this.at(arg, 0, arg.length);
  }

  /** `get` for the name at bytes [start, end) of `buf`. */
  at(buf: Buffer, start: number, end: number): Compiled | undefined {
    if (end - start > this.maxLength) return undefined;
    const bucket = this.buckets.get(hashName(buf, start, end));
    if (!bucket) return undefined;
    for (const c of bucket) if (equalsLower(buf, start, end, c.bytes)) return c;
    return undefined;
  }

  has(name: string): boolean {
    return this.get(Buffer.from(name, 'utf8')) !== undefined;
  }
}

function hashName(b: Buffer, start = 0, end = b.length): number {
  let h = end - start;
  for (let i = start; i < end; i++) {
    let c = b[i]!;
    if (c >= 0x41 && c <= 0x5a) c |= 0x20;
    h = (Math.imul(h, 31) + c) | 0;
  }
  return h;
}

/** ASCII case-insensitive: do bytes [start, end) of `arg` spell the lowercase name `lower`? */
function equalsLower(arg: Buffer, start: number, end: number, lower: Buffer): boolean {
  const n = lower.length;
  if (end - start !== n) return false;
  for (let i = 0; i < n; i++) {
    let c = arg[start + i]!;
    if (c >= 0x41 && c <= 0x5a) c |= 0x20;
    if (c !== lower[i]) return false;
  }
  return true;
}

const UNKNOWN: string[] = Object.freeze(['@unknown']) as string[];

// ---- key-specs, as Redis' getKeysUsingKeySpecs() evaluates them ---------------------

/** ASCII case-insensitive comparison of an argument with an uppercase keyword. */
function isKeyword(arg: Buffer, upper: Buffer): boolean {
  // As Redis compares keywords (strcasecmp): up to a NUL byte, so `STORE\0x` is STORE (tokenAt).
  const n = upper.length;
  if (arg.length < n || (arg.length > n && arg[n] !== 0)) return false;
  for (let i = 0; i < n; i++) {
    let c = arg[i]!;
    if (c >= 0x61 && c <= 0x7a) c -= 0x20;
    if (c !== upper[i]) return false;
  }
  return true;
}

/** A non-negative decimal integer (as Redis' string2ll would accept it), else -1. */
function parseCount(arg: Buffer): number {
  const n = arg.length;
  if (n === 0 || n > 10) return -1;
  let v = 0;
  for (let i = 0; i < n; i++) {
    const c = arg[i]!;
    if (c < 0x30 || c > 0x39) return -1;
    v = v * 10 + (c - 0x30);
  }
  return n > 1 && arg[0] === 0x30 ? -1 : v;
}

function push(args: Buffer[], first: number, last: number, step: number, keys: string[]): void {
  const argc = args.length;
  // Out of bounds means a syntax error Redis will report; no keys then.
  if (last >= argc || last < first || first >= argc || first < 1 || step < 1) return;
  for (let i = first; i <= last; i += step) keys.push(args[i]!.toString('utf8'));
}

function compileKeySpec(ks: KeySpec): KeyFinder | undefined {
  if (ks.flags.includes('not_key')) return undefined;
  const { bs, fk } = ks;
  if (bs.type === 'unknown' || fk.type === 'unknown') return undefined;

  let begin: (args: Buffer[]) => number;
  if (bs.type === 'index') {
    const index = bs.index;
    begin = () => index;
  } else {
    const keyword = Buffer.from(bs.keyword.toUpperCase(), 'latin1');
    const startfrom = bs.startfrom;
    // Forward from startfrom, or backward from argc + startfrom; the end index is
    // exclusive, exactly as in Redis (a keyword in the last argument has no key after it).
    begin = (args) => {
      const argc = args.length;
      const start = startfrom > 0 ? startfrom : argc + startfrom;
      const end = startfrom > 0 ? argc - 1 : 0;
      const dir = start <= end ? 1 : -1;
      for (let i = start; i !== end; i += dir) {
        if (i >= argc || i < 1) break;
        if (isKeyword(args[i]!, keyword)) return i + 1;
      }
      return 0;
    };
  }

  if (fk.type === 'range') {
    const { lastkey, keystep, limit } = fk;
    return (args, keys) => {
      const first = begin(args);
      if (first === 0) return;
      const argc = args.length;
      let last: number;
      if (lastkey >= 0) last = first + lastkey;
      else if (limit === 0) last = argc + lastkey;
      // Only 1/limit of what follows are keys (XREAD STREAMS k1 k2 id1 id2): C integer division.
      else last = first + Math.trunc((argc - first) / limit) + lastkey;
      push(args, first, last, keystep, keys);
    };
  }
  const { keynumidx, firstkey, keystep } = fk;
  return (args, keys) => {
    let first = begin(args);
    if (first === 0 || first + keynumidx >= args.length) return;
    const numkeys = parseCount(args[first + keynumidx]!);
    if (numkeys <= 0) return;
    first += firstkey;
    push(args, first, first + numkeys - 1, keystep, keys);
  };
}

// ---- the key-specs Redis marks "unknown": its getkeys procedures -------------------

const STORE = Buffer.from('STORE');
const LIMIT = Buffer.from('LIMIT');
const BY = Buffer.from('BY');
const GET = Buffer.from('GET');
const KEYS = Buffer.from('KEYS');
const AUTH = Buffer.from('AUTH');
const AUTH2 = Buffer.from('AUTH2');
const STREAMS = Buffer.from('STREAMS');
const BLOCK = Buffer.from('BLOCK');
const COUNT = Buffer.from('COUNT');
const GROUP = Buffer.from('GROUP');
const NOACK = Buffer.from('NOACK');
const STOREDIST = Buffer.from('STOREDIST');

/** SORT key [BY pattern] [LIMIT offset count] [GET pattern ...] [ASC|DESC] [ALPHA] [STORE destination] */
function sortKeys(withStore: boolean): KeyFinder {
  return (args, keys) => {
    let patterns = false;
    for (let i = 2; i < args.length; i++) {
      const a = args[i]!;
      if (isKeyword(a, LIMIT)) i += 2;
      else if ((isKeyword(a, BY) || isKeyword(a, GET)) && i + 1 < args.length) {
        const pattern = args[++i]!;
        // `#` is the element itself; a pattern without `*` reads no key (Redis' lookupKeyByPattern).
        // One with `*` reads the keys made by putting each element in its place: any key at all,
        // for a list the client filled (`SORT l BY nosort GET *`). Named for the audit; judged as any.
        if (pattern.includes(0x2a /* * */)) {
          keys.push(pattern.toString('utf8'));
          patterns = true;
        }
      } else if (withStore && isKeyword(a, STORE) && i + 1 < args.length) keys.push(args[++i]!.toString('utf8'));
    }
    return patterns;
  };
}

/** MIGRATE host port key|"" destination-db timeout [COPY] [REPLACE] [AUTH password | AUTH2 username password] [KEYS key ...] */
const migrateKeys: KeyFinder = (args, keys) => {
  if (args.length > 3 && args[3]!.length > 0) keys.push(args[3]!.toString('utf8'));
  for (let i = 6; i < args.length; i++) {
    const a = args[i]!;
    if (isKeyword(a, KEYS)) {
      for (let k = i + 1; k < args.length; k++) keys.push(args[k]!.toString('utf8'));
      return;
    }
    if (isKeyword(a, AUTH)) i += 1;
    else if (isKeyword(a, AUTH2)) i += 2;
  }
};

/**
 * XREAD / XREADGROUP: Redis's xreadCommand takes BLOCK n, COUNT n, GROUP g c
 * and NOACK in any order, then STREAMS key... id...; its key-spec only
 * searches for STREAMS from a fixed index, so a consumer named "STREAMS"
 * after an option (`XREADGROUP COUNT 1 GROUP g STREAMS STREAMS secret >`)
 * took the place of the keyword. Parsed here as Redis parses it; what
 * Redis would refuse as a syntax error counts as touching any key.
 */
const xreadKeys: KeyFinder = (args, keys) => {
  for (let i = 1; i < args.length; i++) {
    const a = args[i]!;
    const more = args.length - i - 1;
    if ((isKeyword(a, BLOCK) || isKeyword(a, COUNT)) && more >= 1) i += 1;
    else if (isKeyword(a, GROUP) && more >= 2) i += 2;
    else if (isKeyword(a, NOACK)) continue;
    else if (isKeyword(a, STREAMS) && more >= 1) {
      if (more % 2 !== 0) return true;
      for (let k = i + 1; k < i + 1 + more / 2; k++) keys.push(args[k]!.toString('utf8'));
      return;
    } else return true;
  }
  return true;
};

/**
 * GEORADIUS / GEORADIUSBYMEMBER: the source key, and the operand of every
 * STORE and STOREDIST. Redis keeps the last one it reads; the key-spec
 * finds the first, so `STORE tmp STORE secret` wrote a key no rule saw.
 * Every one is reported: one Redis ignores is still named (fails closed).
 */
const georadiusKeys: KeyFinder = (args, keys) => {
  if (args.length > 1) keys.push(args[1]!.toString('utf8'));
  for (let i = 2; i + 1 < args.length; i++) {
    if (isKeyword(args[i]!, STORE) || isKeyword(args[i]!, STOREDIST)) keys.push(args[++i]!.toString('utf8'));
  }
};

/** Replaces the key-specs of commands whose keys Redis finds with a getkeys procedure. */
const SPECIAL: Record<string, (spec: CommandSpec) => KeyFinder[]> = {
  // SORT's own key is a plain index-1 key-spec; BY/GET and STORE are "unknown".
  sort: (spec) => [...fromSpecs(spec), sortKeys(true)],
  sort_ro: (spec) => [...fromSpecs(spec), sortKeys(false)],
  // Its KEYS key-spec is flagged incomplete (a key may be named "keys"); Redis uses migrateGetKeys().
  migrate: () => [migrateKeys],
  // Key-specs that search from a fixed index where Redis's parser takes its options in any order.
  xread: () => [xreadKeys],
  xreadgroup: () => [xreadKeys],
  georadius: () => [georadiusKeys],
  georadiusbymember: () => [georadiusKeys],
};

function fromSpecs(spec: CommandSpec): KeyFinder[] {
  const out: KeyFinder[] = [];
  for (const ks of spec.keySpecs) {
    const f = compileKeySpec(ks);
    if (f) out.push(f);
  }
  return out;
}

// ---- the compiled table ----------------------------------------------------------------

function freeze(categories: Iterable<string>): string[] {
  return Object.freeze([...new Set(categories)]) as string[];
}

function compile(name: string, spec: CommandSpec, container?: string): Compiled {
  const special = SPECIAL[name];
  const c: Compiled = {
    name,
    bytes: Buffer.from(name, 'latin1'),
    arity: spec.arity,
    categories: freeze(spec.categories),
    keyFinders: special ? special(spec) : fromSpecs(spec),
    // FLUSHDB, FLUSHALL, SWAPDB: they name no key and change every one.
    wholeKeyspace: spec.keySpecs.length === 0 && spec.categories.includes('@keyspace') && spec.categories.includes('@write'),
  };
  if (spec.subcommands) {
    const subs = new NameMap();
    const all = [...spec.categories];
    for (const [sub, subSpec] of Object.entries(spec.subcommands)) {
      const compiled = compile(sub, subSpec, name);
      subs.set(compiled);
      all.push(...subSpec.categories);
    }
    all.push('@unknown');
    c.subs = subs;
    c.unknownSub = freeze(all);
  } else {
    const kind: CommandKind = container
      ? { command: container, subcommand: name, categories: c.categories, kind: `${container}|${name}` }
      : { command: name, categories: c.categories, kind: name };
    c.kind = Object.freeze(kind);
  }
  return c;
}

const TABLE = new NameMap();
const CATEGORIES = new Set<string>(['@unknown']);
for (const [name, spec] of Object.entries(REDIS_COMMANDS)) {
  const c = compile(name, spec);
  TABLE.set(c);
  for (const cat of spec.categories) CATEGORIES.add(cat);
  for (const sub of Object.values(spec.subcommands ?? {})) for (const cat of sub.categories) CATEGORIES.add(cat);
}

/** Lowercases ASCII letters only, like Redis' strcasecmp sees names. */
function asciiLower(s: string): string {
  return s.replace(/[A-Z]+/g, (m) => m.toLowerCase());
}

/** `arg` up to its first NUL byte (all of it when it has none). */
function beforeNul(arg: Buffer): Buffer {
  const nul = arg.indexOf(0);
  return nul < 0 ? arg : arg.subarray(0, nul);
}

/** The facts of a known command (or subcommand) `c`: its keys, and whether it may touch others. */
function known(c: Compiled, args: Buffer[], command: string, subcommand?: string): RedisCommandFacts {
  const keys: string[] = [];
  // A script (EVAL, FCALL) may reach keys it does not declare: a standalone server lets it.
  let anyKey = (c.categories.includes('@scripting') && (command.startsWith('eval') || command.startsWith('fcall'))) || c.wholeKeyspace;
  for (const f of c.keyFinders) if (f(args, keys) === true) anyKey = true;
  const facts: RedisCommandFacts = { protocol: 'redis', command, categories: c.categories, keys };
  if (subcommand !== undefined) facts.subcommand = subcommand;
  if (anyKey) facts.anyKey = true;
  return facts;
}

/** What a command does, from its argv (args[0] = command name, any case). Never throws. */
export function classifyCommand(args: Buffer[]): RedisCommandFacts {
  if (args.length === 0) return { protocol: 'redis', command: '', categories: UNKNOWN, keys: [] };
  const c = TABLE.get(args[0]!);
  // Unknown to Sluice (a module's command, a newer server's): which keys it touches is not known.
  if (!c) return { protocol: 'redis', command: asciiLower(args[0]!.toString('utf8')), categories: UNKNOWN, keys: [], anyKey: true };
  if (!c.subs) return known(c, args, c.name);

  if (args.length < 2) {
    // A bare container: valid only where the arity allows it (COMMAND), else an arity error.
    const bareOk = c.arity === 1 || c.arity === -1;
    return { protocol: 'redis', command: c.name, categories: bareOk ? c.categories : c.unknownSub!, keys: [] };
  }
  // A subcommand is looked up as Redis compares it: up to a NUL byte (`CONFIG set\0x` may run CONFIG SET).
  const sub = c.subs.get(beforeNul(args[1]!));
  if (!sub) {
    // As for an unknown command: a newer server's subcommand may take keys no key-spec here names.
    return {
      protocol: 'redis',
      command: c.name,
      subcommand: asciiLower(args[1]!.toString('utf8')),
      categories: c.unknownSub!,
      keys: [],
      anyKey: true,
    };
  }
  return known(sub, args, c.name, sub.name);
}

/**
 * The kind of a command from the bytes of its name, [nameStart, nameEnd) of
 * `buf`, and for a container of its subcommand, [subStart, subEnd) (subStart
 * -1: there is none). Undefined for what the table does not know (unknown
 * names, missing or unknown subcommands): `classifyCommand` judges those.
 * Allocates nothing.
 */
export function commandKind(buf: Buffer, nameStart: number, nameEnd: number, subStart: number, subEnd: number): CommandKind | undefined {
  const c = TABLE.at(buf, nameStart, nameEnd);
  if (c === undefined || c.subs === undefined) return c?.kind;
  return subStart < 0 ? undefined : c.subs.at(buf, subStart, subEnd)?.kind;
}

/** Whether Redis 7.0 has this command: `get`, `GET`, `client`, or `client|kill` (any case). */
export function isKnownCommand(name: string): boolean {
  const lower = asciiLower(name);
  const bar = lower.indexOf('|');
  if (bar < 0) return TABLE.has(lower);
  const c = TABLE.get(Buffer.from(lower.slice(0, bar), 'utf8'));
  return c?.subs?.has(lower.slice(bar + 1)) ?? false;
}

/** Whether `category` (with its `@`, any case) is an ACL category of Redis 7.0, or `@unknown`. */
export function isKnownCategory(category: string): boolean {
  return CATEGORIES.has(asciiLower(category));
}

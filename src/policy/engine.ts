import type { Identity } from '../identity/types.js';
import type { PolicyConfig } from '../config/types.js';
import { globMatch, subjectMatches } from './subjects.js';
import { DANGEROUS_FUNCTIONS_SET } from './kinds.js';
import { UNKNOWN_SETTING, type Action, type Facts, type RedisCommandFacts, type RuleConfig, type RuleMatch, type SqlStatementFacts, type Verdict } from './types.js';

/**
 * The one place where Sluice decides what a statement or command may do.
 *
 * A session is bound, at login, to the first policy (in file order) whose
 * subjects match the identity and whose targets include the target. Each
 * statement's facts are then judged against that policy's rules in order:
 * the first rule whose match holds decides; when none does, the policy's
 * default applies.
 *
 * A rule's criteria belong to one protocol or the other (`kinds`, `tables`,
 * `functions`, `without_where` to PostgreSQL; `commands`, `keys` to Redis).
 * A rule matches a statement when it has at least one criterion for that
 * statement's protocol and every such criterion holds; so one policy can
 * carry rules for a PostgreSQL and a Redis target side by side.
 */
export function bindPolicy(identity: Identity, target: string, policies: readonly PolicyConfig[]): SessionPolicy | undefined {
  const policy = policies.find((p) => p.targets.includes(target) && subjectMatches(identity, p.subjects));
  return policy ? new SessionPolicy(policy) : undefined;
}

/**
 * Settings that would make the server read SQL differently from how Sluice
 * parsed it. Changing them is refused whatever the policy says: after such a
 * change every later verdict could be wrong.
 */
const PARSER_SETTINGS = new Set(['client_encoding', 'standard_conforming_strings']);

const SEVERITY: Record<Action, number> = { allow: 0, approve: 1, deny: 2 };

export class SessionPolicy {
  /** The verdict when no rule matches: the same for every statement, so built once (frozen: callers share it). */
  readonly #defaultVerdict: Verdict;
  /** Verdicts of shared facts objects (see #sharedVerdict); weak: the classifier cache may drop a shape. */
  readonly #verdicts = new WeakMap<Facts, Verdict>();

  constructor(readonly config: PolicyConfig) {
    this.#defaultVerdict = Object.freeze({
      action: config.default,
      policy: config.name,
      reason: `no rule of policy "${config.name}" matched; its default is ${config.default}`,
    });
  }

  get name(): string {
    return this.config.name;
  }

  /**
   * Whether statements need judging at all: false only when every one is
   * allowed (no rules, default allow). A policy with no rules and `default:
   * deny` refuses everything, and must still be asked.
   */
  get judges(): boolean {
    return this.config.rules.length > 0 || this.config.default !== 'allow';
  }

  /** Names of the masking rules applied to this session's results (config `policies[].masking`). */
  get masking(): readonly string[] {
    return this.config.masking ?? [];
  }

  evaluate(facts: Facts): Verdict {
    if (facts.protocol === 'postgres') {
      const changed = facts.settings.find((s) => PARSER_SETTINGS.has(s) || s === UNKNOWN_SETTING);
      if (changed) {
        return {
          action: 'deny',
          policy: this.config.name,
          rule: 'sluice-parser-settings',
          reason:
            changed === UNKNOWN_SETTING
              ? 'a setting named at run time cannot be changed through sluice: it could be one that changes how the server reads SQL'
              : `${changed} cannot be changed through sluice: the gateway and the server must read SQL the same way`,
        };
      }
    }
    for (const rule of this.config.rules) {
      if (ruleMatches(rule.match, facts, rule.action === 'allow')) {
        return { action: rule.action, policy: this.config.name, rule: rule.name, reason: describe(rule, facts) };
      }
    }
    return this.#defaultVerdict;
  }

  /**
   * The verdict of a shared facts object, remembered for the session. With
   * `shared`, evaluateAll takes facts that are frozen and shared by every
   * statement of one shape (the classifier cache's, see ClassifiedQuery):
   * a verdict reads every field of the facts but `text` (rules match kinds,
   * tables, functions, settings and WHERE-less writes; the reasons name
   * them), so `... aid = 17` and `... aid = 42` get the same verdict, and a
   * pgbench -M simple session judges its statement once, not per query.
   */
  #sharedVerdict(facts: Facts): Verdict {
    let verdict = this.#verdicts.get(facts);
    if (verdict === undefined) {
      verdict = Object.freeze(this.evaluate(facts));
      this.#verdicts.set(facts, verdict);
    }
    return verdict;
  }

  /**
   * The verdict on several statements that travel together (a simple Query
   * with many statements): the most severe one, since nothing of the
   * message may run unless all of it may.
   */
  evaluateAll(facts: readonly Facts[], shared = false): Verdict {
    let worst: Verdict | undefined;
    for (const f of facts) {
      const v = shared ? this.#sharedVerdict(f) : this.evaluate(f);
      if (!worst || SEVERITY[v.action] > SEVERITY[worst.action]) worst = v;
      if (v.action === 'deny') break;
    }
    return worst ?? { action: 'allow', policy: this.config.name, reason: 'empty query' };
  }
}

/**
 * Whether a rule's criteria hold for a statement or command. A list
 * criterion (kinds, tables, functions, keys) holds for a `deny` or `approve`
 * rule when any one of the statement's kinds (tables, ...) is listed; for an
 * `allow` rule (`all`) only when every one of them is, and there is at
 * least one: `allow kinds: [select]` must not let through a SELECT whose CTE
 * deletes, nor `allow tables: [public.*]` a join with private.secrets, nor
 * a rule about tables a statement that touches none.
 */
export function ruleMatches(match: RuleMatch, facts: Facts, all = false): boolean {
  return facts.protocol === 'postgres' ? sqlRuleMatches(match, facts, all) : redisRuleMatches(match, facts, all);
}

/** `any` or, with `all`, every one (and at least one) of `items` satisfies `matches`. */
function holds<T>(items: readonly T[], matches: (item: T) => boolean, all: boolean): boolean {
  return all ? items.length > 0 && items.every(matches) : items.some(matches);
}

function sqlRuleMatches(m: RuleMatch, f: SqlStatementFacts, all: boolean): boolean {
  if (m.kinds === undefined && m.tables === undefined && m.functions === undefined && m.withoutWhere === undefined) return false;
  if (m.kinds && !holds(all ? specificKinds(f.kinds) : f.kinds, (k) => kindListed(m.kinds!, k, all), all)) return false;
  if (m.tables && !holds(f.tables, (table) => m.tables!.some((glob) => (all ? tableCovered(glob, table) : tableMatches(glob, table))), all)) return false;
  if (m.functions && !holds(f.functions, (called) => m.functions!.some((name) => functionMatches(name, called, f, all)), all)) return false;
  if (m.withoutWhere !== undefined && m.withoutWhere !== f.withoutWhere) return false;
  return true;
}

/** A statement's kinds without the bare form of a qualified one (`drop` beside `drop:table`). */
function specificKinds(kinds: readonly string[]): readonly string[] {
  // Most statements have one kind, or none qualified: nothing to drop.
  if (!kinds.some((k) => k.includes(':'))) return kinds;
  return kinds.filter((k) => k.includes(':') || !kinds.some((q) => q.length > k.length && q[k.length] === ':' && q.startsWith(k)));
}

/** Listed as such, or (for `allow`, which sees only specific kinds) `drop:table` by a listed `drop`. */
function kindListed(listed: readonly string[], kind: string, all: boolean): boolean {
  if (listed.includes(kind)) return true;
  const colon = kind.indexOf(':');
  return all && colon > 0 && listed.includes(kind.slice(0, colon));
}

function redisRuleMatches(m: RuleMatch, f: RedisCommandFacts, all: boolean): boolean {
  if (m.commands === undefined && m.keys === undefined) return false;
  if (m.commands && !m.commands.some((c) => commandMatches(c, f))) return false;
  // A command that may touch keys it does not name (RedisCommandFacts.anyKey) may touch a denied one, and
  // is not known to stay within an allowed glob.
  if (m.keys && !(f.anyKey === true ? !all : holds(f.keys, (key) => m.keys!.some((glob) => globMatch(glob, key)), all))) return false;
  return true;
}

/**
 * `schema.table` globs match qualified names exactly; an unqualified table in
 * the statement could resolve to any schema on the search_path, so it is
 * matched by its name part: a deny rule on `public.secrets` also stops
 * `SELECT * FROM secrets`.
 */
function tableMatches(glob: string, table: string): boolean {
  if (globMatch(glob, table)) return true;
  const dot = glob.lastIndexOf('.');
  if (dot >= 0 && !table.includes('.')) return globMatch(glob.slice(dot + 1), table);
  if (dot < 0 && table.includes('.')) return globMatch(glob, table.slice(table.lastIndexOf('.') + 1));
  return false;
}

/**
 * For an allow rule: an unqualified table in the statement resolves through
 * the search_path, which the client may set (at login, or by SET), so only
 * a glob without a schema part, or with `*` for it, covers it: `public.*`
 * does not cover `secrets`, which may be private.secrets.
 */
function tableCovered(glob: string, table: string): boolean {
  if (table.includes('.')) return globMatch(glob, table);
  const dot = glob.lastIndexOf('.');
  if (dot < 0) return globMatch(glob, table);
  return glob.slice(0, dot) === '*' && globMatch(glob.slice(dot + 1), table);
}

/**
 * Whether the listed `name` (or `@dangerous`) names the function `called`,
 * read as tables are (tableMatches, tableCovered). For a deny or approve
 * rule, a name and a call match when they are equal, or when one of them is
 * unqualified and equals the other's name part: an unqualified call may
 * resolve to the listed function through the search_path, so
 * `pg_catalog.pg_read_file` also stops `pg_read_file(...)`, and
 * `pg_read_file` stops the call in any schema. For an allow rule (`all`)
 * only an equal name covers a call: `lower` does not cover `evil.lower()`,
 * nor `pg_catalog.lower` a bare `lower()`, which resolves through a
 * search_path the client may set.
 */
function functionMatches(name: string, called: string, f: SqlStatementFacts, all: boolean): boolean {
  if (name === DANGEROUS_FUNCTIONS_SET) return f.dangerousFunctions.includes(called);
  if (called === name) return true;
  if (all) return false;
  const nameDot = name.lastIndexOf('.');
  const calledDot = called.lastIndexOf('.');
  if (nameDot >= 0 && calledDot < 0) return name.slice(nameDot + 1) === called;
  if (nameDot < 0 && calledDot >= 0) return called.slice(calledDot + 1) === name;
  return false;
}

function commandMatches(spec: string, f: RedisCommandFacts): boolean {
  if (spec.startsWith('@')) return spec === '@all' || f.categories.includes(spec);
  const bar = spec.indexOf('|');
  if (bar < 0) return f.command === spec;
  return f.command === spec.slice(0, bar) && f.subcommand === spec.slice(bar + 1);
}

/** The reason line a client sees: which facts the rule matched. */
function describe(rule: RuleConfig, facts: Facts): string {
  if (facts.protocol === 'postgres') {
    const parts: string[] = [];
    const kinds = rule.match.kinds?.filter((k) => facts.kinds.includes(k));
    if (kinds?.length) parts.push(`statement kind ${kinds.join(', ')}`);
    if (rule.match.tables) parts.push(`table ${facts.tables.filter((t) => rule.match.tables!.some((g) => tableMatches(g, t))).join(', ')}`);
    if (rule.match.functions) {
      const called = rule.match.functions.includes(DANGEROUS_FUNCTIONS_SET) ? facts.dangerousFunctions : facts.functions;
      parts.push(`function ${called.join(', ')}`);
    }
    if (rule.match.withoutWhere) parts.push('without a WHERE clause');
    return parts.join(', ') || 'matched';
  }
  const name = shortened(facts.subcommand ? `${facts.command}|${facts.subcommand}` : facts.command);
  const categories = rule.match.commands?.filter((c) => c.startsWith('@') && facts.categories.includes(c)) ?? [];
  return `command ${name}${categories.length ? ` (${categories.join(', ')})` : ''}${rule.match.keys ? ` on key ${shortened(facts.keys.join(', '))}` : ''}`;
}

/**
 * A client's name or keys as a reason shows them: the reason goes back to
 * the client and into the audit trail and the log, and a command name or key
 * may be megabytes long (an unknown command's name is the client's bytes).
 */
function shortened(text: string): string {
  return text.length <= REASON_PART_MAX ? text : `${text.slice(0, REASON_PART_MAX)}...(${text.length} characters)`;
}

const REASON_PART_MAX = 128;

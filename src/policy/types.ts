/**
 * The vocabulary shared by the protocol classifiers, the policy engine, the
 * approval flow and the audit trail.
 *
 * Protocol modules turn bytes into *facts* (what a statement or command
 * really does); the policy engine judges facts against rules and returns a
 * *verdict*. Neither side knows the other's internals: a classifier never
 * decides, the engine never parses.
 */

import type { Logger } from '../log.js';
import type { AuditEvent, AuditVerdict } from '../store/types.js';
import type { ApprovalManager } from './approvals.js';
import type { SessionPolicy } from './engine.js';

export type Action = 'allow' | 'deny' | 'approve';

/** What one SQL statement does, from the real PostgreSQL parse tree (the whole tree, not only the top node). */
export interface SqlStatementFacts {
  protocol: 'postgres';
  /** The statement's text, exactly as sent (one statement of a multi-statement Query). */
  text: string;
  /**
   * Every kind found anywhere in the tree, deduplicated, e.g. ['select'],
   * ['explain_analyze', 'delete'], ['drop', 'drop:table'], ['role', 'create:role'],
   * ['copy_program', 'copy_from'], ['set', 'set_role']. Object-typed kinds come
   * with their bare form too, so a rule for `drop` matches every DROP.
   */
  kinds: string[];
  /** Tables touched: `schema.name` when qualified, else `name`; unquoted identifiers lowercased, quoted ones kept exactly. */
  tables: string[];
  /** Functions called: lowercased (quoted kept), `schema.name` when qualified. */
  functions: string[];
  /** Names from `functions` that are in the built-in dangerous set (file/large-object access, dblink, role or session set_config, backend signalling). */
  dangerousFunctions: string[];
  /** An UPDATE or DELETE somewhere in the tree has no WHERE clause. */
  withoutWhere: boolean;
  /**
   * Settings changed anywhere: SET / RESET (`*` for RESET ALL) / set_config /
   * ALTER ROLE|DATABASE ... SET; lowercased names. `?` (UNKNOWN_SETTING) when
   * a statement changes a setting whose name it computes (set_config with a
   * non-constant name, UPDATE pg_settings): it may be any of them.
   */
  settings: string[];
  /**
   * The prepared statement a `PREPARE` creates or an `EXECUTE` runs (also
   * under EXPLAIN), '' for any other statement. SQL's prepared statements
   * and the extended protocol's named ones share one namespace: the gate
   * follows a statement released by an approval through it (an approval
   * releases one execution, statement-gate.ts).
   */
  statementName: string;
}

/** What one Redis command does. */
export interface RedisCommandFacts {
  protocol: 'redis';
  /** Lowercase command name. */
  command: string;
  /** Lowercase subcommand for container commands (CLIENT KILL -> 'kill'); matched as `client|kill`. */
  subcommand?: string;
  /** ACL categories with their `@`, lowercase: ['@write', '@string', '@slow']. */
  categories: string[];
  /** Key names the command touches (decoded as UTF-8, invalid bytes replaced). */
  keys: string[];
  /**
   * The command may touch keys `keys` does not name: a command Sluice does
   * not know (a module's, a newer server's), or SORT's BY / GET patterns,
   * which read keys made from the list's elements. A `keys` criterion holds
   * for it in a deny or approve rule, and never in an allow rule.
   */
  anyKey?: boolean;
}

export type Facts = SqlStatementFacts | RedisCommandFacts;

/** Match criteria of a rule; every present criterion must match (AND), any value within one (OR). */
export interface RuleMatch {
  /** PostgreSQL statement kinds; `drop` matches `drop:table` too. */
  kinds?: string[];
  /** Table globs (`public.*`, `users`). */
  tables?: string[];
  /** Function names, or `@dangerous` for the built-in set. */
  functions?: string[];
  /** Only UPDATE/DELETE without WHERE. */
  withoutWhere?: boolean;
  /** Redis: `flushall`, `client|kill`, or an ACL category `@dangerous`. */
  commands?: string[];
  /** Redis key globs. */
  keys?: string[];
}

export interface RuleConfig {
  name: string;
  action: Action;
  match: RuleMatch;
}

export interface Verdict {
  action: Action;
  /** The policy the session is bound to. */
  policy: string;
  /** The rule that matched; undefined when the policy default applied. */
  rule?: string;
  /** One line for the client and the audit trail: why. */
  reason: string;
}

/**
 * What a protocol's gate (the code that judges each statement or command on
 * a live session) is given. Each protocol adds what only it needs.
 */
export interface GateContextBase {
  sessionId: string;
  subject: string;
  /** The subject's issuer: approvals and their windows belong to the pair (approvals.ts). */
  issuer?: string;
  target: string;
  policy: SessionPolicy;
  logger: Logger;
  /** Where audit events go; absent when the audit trail is off. */
  audit?: { write(event: AuditEvent): void };
  /** The just-in-time approval flow; absent means `approve` rules deny. */
  approvals?: ApprovalManager;
  /** Each verdict, for metrics and the session's row in the sessions index. */
  onVerdict?(verdict: AuditVerdict): void;
}

/** In SqlStatementFacts.settings: a setting is changed whose name the statement computes. */
export const UNKNOWN_SETTING = '?';

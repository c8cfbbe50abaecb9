/**
 * The names rules may use, so that a typo in a policy (`dorp`, `@dangerus`)
 * is a config error at load time instead of a rule that silently never
 * matches. docs/policy.md explains each; protocols/postgres/classify.ts and
 * protocols/redis/classify.ts produce them.
 */

/** PostgreSQL statement kinds. `create`, `alter` and `drop` also come typed: `drop:table`, `create:role`. */
export const SQL_KINDS = [
  'select', 'insert', 'update', 'delete', 'merge', 'truncate',
  'create', 'alter', 'drop', 'grant', 'revoke', 'role',
  'copy_to', 'copy_from', 'copy_program',
  'do', 'call', 'set', 'set_role', 'session_authorization',
  'prepare', 'execute', 'deallocate',
  'listen', 'unlisten', 'notify',
  'explain', 'explain_analyze',
  'transaction', 'vacuum', 'analyze', 'lock', 'show', 'discard', 'reset', 'load',
  'comment', 'security_label', 'refresh', 'reindex', 'cluster', 'checkpoint', 'cursor', 'other',
] as const;

const TYPED_KIND = /^(create|alter|drop):[a-z_]+$/;

export function isKnownSqlKind(kind: string): boolean {
  return (SQL_KINDS as readonly string[]).includes(kind) || TYPED_KIND.test(kind);
}

/** Redis 7 ACL categories (ACL CAT), plus `@unknown` for commands Sluice has no table entry for. */
export const REDIS_CATEGORIES = [
  '@keyspace', '@read', '@write', '@set', '@sortedset', '@list', '@hash', '@string', '@bitmap',
  '@hyperloglog', '@geo', '@stream', '@pubsub', '@admin', '@fast', '@slow', '@blocking',
  '@dangerous', '@connection', '@transaction', '@scripting', '@all', '@unknown',
] as const;

export function isKnownRedisCategory(category: string): boolean {
  return (REDIS_CATEGORIES as readonly string[]).includes(category);
}

/** The built-in function set a rule names with `functions: ['@dangerous']`. */
export const DANGEROUS_FUNCTIONS_SET = '@dangerous';

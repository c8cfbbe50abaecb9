/**
 * Passwords inside SQL text: which statements may carry one, and how their
 * text is cut before the audit trail, the logs, approvers or a transcript
 * see it. A statement is shown as far as its first password and no
 * further: showing too little is safe, showing a credential is not.
 *
 * The cut is also made where a password could be spelled so that no
 * pattern sees it: at a literal written with escapes or assembled by
 * concatenation, and at the arguments of a dblink call.
 *
 * Where PostgreSQL SQL carries a password:
 * - CREATE / ALTER ROLE | USER ... PASSWORD 'x' (psql's \password sends one);
 * - CREATE / ALTER USER MAPPING ... OPTIONS (user 'u', password 'x'), the
 *   remote database's password that postgres_fdw keeps (and the OPTIONS of
 *   a foreign server, for wrappers that take one there);
 * - a libpq connection string: CREATE / ALTER SUBSCRIPTION ... CONNECTION
 *   'host=h password=x', ALTER SYSTEM SET primary_conninfo, the arguments
 *   of dblink functions; in the keyword form (`password=x`,
 *   `sslpassword=x`) or as a URI (`postgresql://user:x@host`, or a
 *   percent-encoded query keyword, which libpq decodes);
 * - a URI with a password in any ALTER SYSTEM value (archive_command) or
 *   COPY ... PROGRAM command;
 * - the opaque bodies of DO blocks and functions, which may do any of the
 *   above;
 * - the arguments of an SQL EXECUTE of a statement prepared from one of
 *   these (PreparedCredentials).
 */
import type { SqlStatementFacts } from '../../src/policy/types.js';

/** Option and connection keywords whose value is a secret (DefElem names, libpq keywords). */
export const SECRET_OPTIONS: ReadonlySet<string> = new Set(['password', 'sslpassword', 'oauth_client_secret']);

/** CREATE / ALTER of objects whose options or connection string may hold a password. */
const CREDENTIAL_OBJECT_KINDS = new Set([
  'create:user_mapping',
  'alter:user_mapping',
  'create:server',
  'alter:server',
  'create:subscription',
  'alter:subscription',
  // ALTER SYSTEM: primary_conninfo, and URIs with a password in archive_command / restore_command.
  'alter:system',
  // COPY ... PROGRAM 'curl https://user:password@host/...'.
  'copy_program',
]);

/** Statements whose body the classifier does not see into: a credential only when their text hints at one. */
const OPAQUE_BODY_KINDS = new Set(['do', 'create:function', 'create:procedure']);
const SECRET_HINT = /password|oauth_client_secret|:\/\//i;

/**
 * Whether a statement's text may hold a password (see above). Its text is
 * then cut by withoutPassword, and the parameters bound to it are never
 * shown (`SELECT dblink_connect($1)`).
 */
export function namesCredential(facts: Pick<SqlStatementFacts, 'kinds' | 'dangerousFunctions' | 'text'>): boolean {
  for (const k of facts.kinds) {
    if (k === 'role' || CREDENTIAL_OBJECT_KINDS.has(k)) return true;
    if (OPAQUE_BODY_KINDS.has(k) && SECRET_HINT.test(facts.text)) return true;
  }
  for (const f of facts.dangerousFunctions) {
    if (f.startsWith('dblink', f.lastIndexOf('.') + 1)) return true;
  }
  return false;
}

/** `password`, `sslpassword`, `oauth_client_secret` as words (`PASSWORD 'x'`, `password=x`). */
const SECRET_WORD = /\b(?:ssl)?password\b|\boauth_client_secret\b/i;
/**
 * `://user:` when a password and `@` follow (postgresql://user:x@host).
 * libpq reads the password up to the first `@`, so it may hold `?`, `#`,
 * spaces and quotes: the lookahead only stops at `/` and `@`.
 */
const URI_USER = /:\/\/[^\s/@:']*:(?=[^/@]*@)/;
/** A URI's query with a percent-encoded character (`?p%61ssword=x`): libpq decodes keywords, so none can be read as safe. */
const URI_ENCODED_QUERY = /:\/\/[^\s'?]*\?(?=[^\s']*%)/;

/**
 * A literal written with escapes (`U&"p\0061ssword"`, `E'p\x61ssword=x'`)
 * or built by concatenation (`'pass' || 'word=x'`, or two literals with a
 * line break between them, which SQL joins): the keywords above may be
 * spelled in it without appearing in the text, so nothing after it can be
 * read as safe.
 */
const SPELLED_OTHERWISE = /\bU&['"]|(?<![\w$])E'|\|\||'\s*\n\s*'/i;
/**
 * A dblink call: its arguments are expressions (format(), concat(),
 * chr(), a subquery) that can assemble a connection string's password
 * from pieces no pattern recognises. Cut at the first `(` after the name,
 * however it is written (quoted, a comment before its `(`).
 */
const DBLINK_CALL = /dblink[^(]*\(/i;

/** Where a statement's text is cut: just after its first password keyword, URI user, escaped literal, concatenation or dblink call, or -1. */
function secretAt(text: string): number {
  let at = Infinity;
  for (const re of [SECRET_WORD, URI_USER, URI_ENCODED_QUERY, SPELLED_OTHERWISE, DBLINK_CALL]) {
    const m = re.exec(text);
    if (m !== null) at = Math.min(at, m.index + m[0].length);
  }
  return at === Infinity ? -1 : at;
}

/** A credential statement's text cut at its password, the rest replaced by `[redacted]`; unchanged when it names none. */
export function withoutPassword(text: string): string {
  const at = secretAt(text);
  return at < 0 ? text : `${text.slice(0, at)} [redacted]`;
}

/**
 * An SQL EXECUTE of a statement prepared from a credential statement
 * (`PREPARE c(text) AS SELECT dblink_connect($1)`, then `EXECUTE c('...')`):
 * its arguments are the prepared statement's parameters, so they are cut
 * whatever they say: everything after the first `(` (under `EXPLAIN (...)`
 * that is its options, which only hides more). Nothing comes before it
 * that could hold a password: the statement's name, EXECUTE, EXPLAIN.
 */
export function withoutArguments(text: string): string {
  const at = text.indexOf('(');
  return at < 0 ? text : `${text.slice(0, at + 1)} [redacted]`;
}

/** Names a session remembers before it stops telling them apart (PreparedCredentials). */
const MAX_REMEMBERED = 1024;
const EXECUTE_WORD = /\bexecute\b/i;

/**
 * One session's statements prepared from a statement that may carry a
 * password, by name: a Parse of `SELECT dblink_connect($1)` or an SQL
 * `PREPARE c(text) AS ...` (PostgreSQL keeps both kinds under one set of
 * names). An SQL EXECUTE of one (`EXECUTE c('host=h password=x')`) passes
 * the password as an argument, and a Bind as a parameter: neither is shown.
 * A name is remembered when the statement is seen, whatever the server
 * made of it, and forgotten only when the client closes it (a Parse of a
 * name in use is refused by the server, so it replaces nothing): a name
 * kept too long only hides more. Past MAX_REMEMBERED names (a client
 * preparing without end), every EXECUTE is taken for one (fail closed).
 * The statement gate and the transcript each keep one.
 */
export class PreparedCredentials {
  readonly #names = new Set<string>();
  #overflowed = false;

  /** Whether any name is remembered (a cheap test before the others, per statement). */
  get any(): boolean {
    return this.#overflowed || this.#names.size > 0;
  }

  /** A statement prepared as `name` (not the unnamed one, which no EXECUTE names) that may carry a password. */
  remember(name: string): void {
    if (name === '' || this.#overflowed) return;
    if (this.#names.size >= MAX_REMEMBERED) {
      this.#overflowed = true;
      this.#names.clear();
    } else {
      this.#names.add(name);
    }
  }

  /** The client closed statement `name` (Close): a later Parse of the name is another statement. */
  forget(name: string): void {
    this.#names.delete(name);
  }

  /** The SQL PREPAREs among a message's statements. */
  notePrepares(facts: readonly SqlStatementFacts[]): void {
    for (const f of facts) {
      if (f.statementName !== '' && f.kinds.includes('prepare') && namesCredential(f)) this.remember(f.statementName);
    }
  }

  /** A Bind of statement `name` (or an EXECUTE of it) may carry a password. */
  has(name: string): boolean {
    return this.#overflowed || this.#names.has(name);
  }

  /**
   * The statement runs one of them: an SQL EXECUTE (also under EXPLAIN
   * ANALYZE), or a plain EXPLAIN whose text says EXECUTE (the classifier
   * names nothing under a plan-only EXPLAIN, and its arguments are still
   * there). Its text is shown without them (withoutArguments).
   */
  executes(facts: Pick<SqlStatementFacts, 'kinds' | 'statementName' | 'text'>): boolean {
    if (!this.any) return false;
    if (facts.statementName !== '' && facts.kinds.includes('execute')) return this.has(facts.statementName);
    return facts.kinds.includes('explain') && EXECUTE_WORD.test(facts.text);
  }
}

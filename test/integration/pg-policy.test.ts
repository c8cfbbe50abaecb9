/**
 * Statement policy on live PostgreSQL sessions: decisions on what the parse
 * tree says (not on text), in the simple and the extended protocol, with
 * transaction semantics kept, approvals end to end, and the audit trail.
 */
import t, { type Test } from 'tap';
import pg from 'pg';
import { startPostgres } from '../helpers/postgres.js';
import { startGateway, pgTargetYaml } from '../helpers/gateway.js';
import { run } from '../helpers/process.js';
import { errorFields, rawLogin, typed, type RawMessage, type RawPg } from '../helpers/raw-pg.js';
import type { AuditEvent } from '../../src/store/types.js';

/** What node-postgres hands a 'notice' listener (its types do not export the shape). */
interface Notice {
  message?: string;
  hint?: string;
}

const pgServer = await startPostgres();
t.teardown(() => pgServer.stop());
const gw = await startGateway(
  `identity: { dev_issuer: true }
targets:${pgTargetYaml('app-db', pgServer)}
policies:
  - name: agents
    subjects: { groups: [agent] }
    targets: [app-db]
    default: allow
    rules:
      - { name: no-destruction, action: deny, match: { kinds: [drop, truncate] } }
      - { name: roles-need-approval, action: approve, match: { kinds: [role] } }
      - { name: ledger-deletes-need-approval, action: approve, match: { kinds: [delete], tables: [ledger] } }
      - { name: no-file-access, action: deny, match: { functions: ['@dangerous'] } }
      - { name: careful-writes, action: deny, match: { kinds: [update, delete], without_where: true } }
      - { name: no-secrets, action: deny, match: { tables: [public.secrets] } }
api:
  listen: 127.0.0.1:0
  roles: { approver: [security], auditor: [security] }
approvals:
  timeout: 3s
  max_pending_per_subject: 2
  # This file asks for more approvals a minute than the default allows one subject.
  max_requests_per_minute: 200
`,
  { TEST_PG_PASSWORD: pgServer.password },
);
t.teardown(() => gw.close());

const port = gw.port('app-db');
const agentToken = await gw.token('agent-7', ['agent']);
const approverToken = await gw.token('alice', ['security']);
const api = `http://127.0.0.1:${gw.gateway.api!.address.port}`;
const env = { PGHOST: '127.0.0.1', PGPORT: String(port), PGUSER: 'agent-7', PGDATABASE: 'app', PGPASSWORD: agentToken, PGSSLMODE: 'disable' };

await pgServer.psqlDirect(
  `create table items(id int primary key, name text) ; alter table items owner to app_user;
   create table secrets(id int, v text) ; alter table secrets owner to app_user;
   create table victim(id int) ; alter table victim owner to app_user;
   create table ledger(id int primary key) ; alter table ledger owner to app_user;
   insert into ledger select generate_series(1, 6);
   insert into items values (1, 'one'), (2, 'two');
   alter role app_user createrole;`,
  'app',
);

async function connect(token = agentToken): Promise<pg.Client & { notices: Notice[] }> {
  const client = new pg.Client({ host: '127.0.0.1', port, user: 'agent-7', database: 'app', password: token }) as pg.Client & { notices: Notice[] };
  client.notices = [];
  client.on('notice', (n) => client.notices.push(n));
  client.on('error', () => {});
  await client.connect();
  return client;
}

/** The messages read up to and including the first of `type` (ReadyForQuery unless told), or up to the connection's end. */
async function readUntil(raw: RawPg, type = 'Z'): Promise<RawMessage[]> {
  const got: RawMessage[] = [];
  for (let m = await raw.read(); m; m = await raw.read()) {
    got.push(m);
    if (m.type === type) return got;
  }
  return got;
}

/** Extended-protocol pieces on the unnamed statement and portal, for raw batches. */
const parseUnnamed = (sql: string): Buffer => typed('P', `\0${sql}\0\0\0`);
const bindExecute = Buffer.concat([typed('B', '\0\0\0\0\0\0\0\0'), typed('E', '\0\0\0\0\0')]);
const syncMessage = typed('S', '');
const flushMessage = typed('H', '');

async function rows(sql: string): Promise<string> {
  return (await pgServer.psqlDirect(sql, 'app')).trim();
}

t.test('simple protocol: decisions follow the parse tree, not the text', async (t) => {
  const denied: Array<[string, string]> = [
    ['DROP TABLE victim', 'no-destruction'],
    ['/* harmless */ dRoP /**/ TaBlE victim', 'no-destruction'],
    ['-- just a comment\nTRUNCATE victim', 'no-destruction'],
    ['WITH d AS (DELETE FROM items RETURNING *) SELECT * FROM d', 'careful-writes'],
    ['EXPLAIN ANALYZE DELETE FROM items', 'careful-writes'],
    ['UPDATE items SET name = $$x$$', 'careful-writes'],
    ["SELECT pg_catalog.pg_read_file('/etc/passwd')", 'no-file-access'],
    ["SELECT set_config('role', 'postgres', false)", 'no-file-access'],
    ['SELECT * FROM "secrets"', 'no-secrets'],
    // The database part of a three-part name is the current database: the table is public.secrets.
    ['SELECT * FROM app.public.secrets', 'no-secrets'],
    ['DROP TABLE app.public.victim', 'no-destruction'],
    // A -- comment the server ends at CR: what follows is code, and the table is secrets.
    ['SELECT 1 --\r, \'\n"\' AS a FROM U&"!0073ecrets" UESCAPE \'!\' -- "', 'no-secrets'],
  ];
  for (const [sql, rule] of denied) {
    const r = await run('psql', ['-X', '-At', '-c', sql], { env });
    t.not(r.code, 0, sql);
    t.match(r.stderr, `sluice: denied by rule "${rule}"`, `${sql} -> ${rule}`);
  }
  const allowed = [
    "SELECT 'DROP TABLE victim'",
    'EXPLAIN DELETE FROM items',
    'UPDATE items SET name = name WHERE id = 1',
    "SELECT $tag$ DROP TABLE victim $tag$",
    'SELECT count(*) FROM items',
  ];
  for (const sql of allowed) {
    const r = await run('psql', ['-X', '-At', '-c', sql], { env });
    t.equal(r.code, 0, `${sql}: ${r.stderr}`);
  }
  t.equal(await rows("select count(*) from pg_tables where tablename = 'victim'"), '1', 'victim survived every attempt');
  t.equal(await rows('select count(*) from items'), '2', 'items were not deleted');
});

t.test('a multi-statement message with one denied statement runs none of it', async (t) => {
  const r = await run('psql', ['-X', '-c', "INSERT INTO items VALUES (3, 'three'); DROP TABLE victim"], { env });
  t.not(r.code, 0);
  t.match(r.stderr, 'denied by rule "no-destruction"');
  t.equal(await rows('select count(*) from items where id = 3'), '0', 'the INSERT before the DROP did not run');
});

t.test('parser settings cannot be changed, and unparseable SQL is refused', async (t) => {
  const client = await connect();
  t.teardown(() => client.end());
  await t.rejects(client.query("SET client_encoding = 'SJIS'"), { code: '42501', message: /client_encoding cannot be changed/ });
  await t.rejects(client.query('SET standard_conforming_strings = off'), { code: '42501' });
  // A setting named at run time could be either of them: refused whatever the rules say.
  for (const sql of [
    "SELECT set_config(n, 'off', false) FROM (VALUES ('standard_conforming_strings')) v(n)",
    "UPDATE pg_settings SET setting = 'off' WHERE name = 'standard_conforming_strings'",
  ]) {
    await t.rejects(client.query(sql), { code: '42501', message: /a setting named at run time cannot be changed/ }, sql);
  }
  await t.rejects(client.query('SELEC 1'), { code: '42601', message: /sluice: statement refused: it does not parse/ });
  // The parser quotes where it stopped: past a PASSWORD that is the password, kept out of the error, log and audit trail.
  await t.rejects(client.query('CREATE ROLE typo PASSWORD hunter2secret'), { code: '42601', message: /it does not parse \(the parser's message is withheld/ });
  gw.gateway.services.audit.flush();
  const refusal = gw.gateway.services.store.queryAuditEvents({ subject: 'agent-7', limit: 1000 }).find((e) => e.kind === 'unparseable' && e.text.startsWith('CREATE ROLE typo'));
  t.ok(refusal && !JSON.stringify(refusal).includes('hunter2secret'), 'the audit event holds no part of it');
  t.notOk(gw.logs.some((line) => line.includes('hunter2secret')), 'nor does the log');
  const ok = await client.query('select 1 as one');
  t.equal(ok.rows[0].one, 1, 'the session stays usable');
});

t.test('a DO block that changes how the server reads SQL ends the session', async (t) => {
  const client = await connect();
  client.on('error', () => {});
  const pid = (await client.query('select pg_backend_pid() as pid')).rows[0].pid as number;
  await t.rejects(client.query("DO $$ BEGIN PERFORM set_config('standard_conforming_strings', 'off', false); END $$"), {
    code: '42501',
    message: /sluice: the session changed standard_conforming_strings/,
  });
  await t.rejects(client.query('select 1'), 'the session is closed');
  for (let i = 0; i < 100 && (await rows(`select count(*) from pg_stat_activity where pid = ${pid}`)) !== '0'; i++) {
    await new Promise((r) => setTimeout(r, 50));
  }
  t.equal(await rows(`select count(*) from pg_stat_activity where pid = ${pid}`), '0', 'and its server connection with it');
  await client.end().catch(() => undefined);
});

t.test('extended protocol: a denied Parse is answered like a failed Parse, and the session stays in sync', async (t) => {
  const client = await connect();
  t.teardown(() => client.end());
  await t.rejects(client.query({ name: 'wipe', text: 'DELETE FROM items' }), { code: '42501', message: /careful-writes/ });
  await t.rejects(client.query('TRUNCATE items'), { code: '42501' });
  const p = await client.query({ name: 'by-id', text: 'select name from items where id = $1', values: [2] });
  t.equal(p.rows[0].name, 'two');
  const again = await client.query({ name: 'by-id', text: 'select name from items where id = $1', values: [1] });
  t.equal(again.rows[0].name, 'one', 'prepared statements keep working after a denial');
  await t.rejects(client.query('select * from secrets where id = $1', [1]), { code: '42501', message: /no-secrets/ });
});

t.test('a denial inside a transaction aborts it, as a server error would', async (t) => {
  const client = await connect();
  t.teardown(() => client.end());
  await client.query('BEGIN');
  await client.query("INSERT INTO items VALUES (10, 'ten')");
  await t.rejects(client.query('DROP TABLE victim'), { code: '42501' });
  await t.rejects(client.query('select 1'), { code: '25P02' }, 'later statements are ignored until the transaction ends');
  // Judged whole, as every Query is: a ROLLBACK does not carry other statements past the policy.
  await t.rejects(client.query('ROLLBACK; DROP TABLE victim'), { code: '42501' }, 'a ROLLBACK does not carry other statements past the policy');
  await t.rejects(client.query('COMMIT; DROP TABLE victim'), { code: '42501' });
  t.equal(await rows("select count(*) from pg_tables where tablename = 'victim'"), '1', 'the table is still there');
  const commit = await client.query('COMMIT');
  t.equal(commit.command, 'ROLLBACK', 'COMMIT of a failed transaction rolls back, as in PostgreSQL');
  t.equal(await rows('select count(*) from items where id = 10'), '0', 'the insert before the denial was not committed');

  // The same with the extended protocol.
  await client.query('BEGIN');
  await client.query('INSERT INTO items VALUES ($1, $2)', [11, 'eleven']);
  await t.rejects(client.query('DELETE FROM items', []), { code: '42501' });
  await t.rejects(client.query('select $1::int', [1]), { code: '25P02' });
  // ROLLBACK through the extended protocol (a named statement: Parse, Bind, Execute, Sync).
  await client.query({ name: 'end-it', text: 'ROLLBACK' });
  const next = await client.query('select 1 as one');
  t.equal(next.rows[0].one, 1, 'the session works again after it');
  const after = await client.query('select count(*)::int as n from items');
  t.equal(after.rows[0].n, 2, 'nothing of either transaction remains');
});

t.test('pipelined: a COMMIT sent behind a refusal, before its answer, does not commit what came before it', async (t) => {
  const raw = await rawLogin(port, agentToken);
  t.teardown(() => raw.socket.destroy());
  const query = (sql: string) => typed('Q', `${sql}\0`);
  // One write, as libpq's pipeline mode or a driver that does not wait sends it.
  raw.send(Buffer.concat([query('BEGIN'), query("INSERT INTO items VALUES (30, 'thirty')"), query('DROP TABLE victim'), query('COMMIT'), query('SELECT 1')]));
  const replies: RawMessage[][] = [];
  for (let i = 0; i < 5; i++) replies.push(await readUntil(raw));
  t.equal(errorFields(replies[2]!.find((m) => m.type === 'E')!.body).C, '42501', 'the DROP is refused');
  t.equal(replies[2]!.at(-1)!.body.toString('latin1'), 'E', 'and the transaction aborted');
  t.equal(replies[3]!.find((m) => m.type === 'C')?.body.toString('latin1'), 'ROLLBACK\0', 'the COMMIT rolls back, as in PostgreSQL');
  t.equal(replies[4]!.at(-1)!.body.toString('latin1'), 'I', 'and the session goes on outside a transaction');
  t.equal(await rows('select count(*) from items where id = 30'), '0', 'the insert before the refusal was not committed');
  t.equal(await rows("select count(*) from pg_tables where tablename = 'victim'"), '1');

  // The same with extended-protocol batches, each with its own Sync.
  const run = (sql: string) => Buffer.concat([parseUnnamed(sql), bindExecute, syncMessage]);
  raw.send(Buffer.concat([run('BEGIN'), run("INSERT INTO items VALUES (31, 'thirty-one')"), run('DROP TABLE victim'), run('COMMIT')]));
  const batches: RawMessage[][] = [];
  for (let i = 0; i < 4; i++) batches.push(await readUntil(raw));
  t.equal(errorFields(batches[2]!.find((m) => m.type === 'E')!.body).C, '42501');
  t.equal(batches[3]!.find((m) => m.type === 'C')?.body.toString('latin1'), 'ROLLBACK\0');
  t.equal(await rows('select count(*) from items where id = 31'), '0', 'nor through the extended protocol');
});

t.test('ROLLBACK TO SAVEPOINT through the extended protocol ends the abort, as pgjdbc autosave sends it', async (t) => {
  const client = await connect();
  t.teardown(() => client.end());
  await client.query('BEGIN');
  await client.query("INSERT INTO items VALUES (27, 'twenty-seven')");
  await client.query('SAVEPOINT s');
  await t.rejects(client.query('DROP TABLE victim', []), { code: '42501' });
  await t.rejects(client.query('select $1::int', [1]), { code: '25P02' }, 'aborted');
  // Parse, Bind, Execute, Sync of the rollback to the savepoint (node-postgres sends a named query so).
  await client.query({ name: 'back-to-s', text: 'ROLLBACK TO SAVEPOINT s' });
  const one = await client.query('select $1::int as one', [1]);
  t.equal(one.rows[0].one, 1, 'the transaction goes on after it');
  await client.query('COMMIT');
  t.equal(await rows('select count(*) from items where id = 27'), '1', 'what came before the savepoint is committed');
});

/** A raw session with client_encoding LATIN1, in a transaction that has inserted item `id`. */
async function latin1Transaction(t: Test, id: number): Promise<{ raw: RawPg; latin1: (s: string) => Buffer; query: (sql: string) => Buffer }> {
  const raw = await rawLogin(port, agentToken, { user: 'raw', database: 'app', client_encoding: 'LATIN1' });
  t.teardown(() => raw.socket.destroy());
  const latin1 = (s: string) => Buffer.from(s, 'latin1');
  const query = (sql: string) => typed('Q', `${sql}\0`);
  raw.send(query('BEGIN'));
  await readUntil(raw);
  raw.send(query(`INSERT INTO items VALUES (${id}, 'item ${id}')`));
  await readUntil(raw);
  return { raw, latin1, query };
}

t.test('LATIN1: after a refusal, a COMMIT parsed again under a name UTF-8 cannot read commits nothing', async (t) => {
  const { raw, latin1, query } = await latin1Transaction(t, 29);
  raw.send(Buffer.concat([typed('P', latin1('\xe9\0COMMIT\0\0\0')), typed('S', '')]));
  t.same((await readUntil(raw)).map((m) => m.type), ['1', 'Z']);
  raw.send(query('DROP TABLE victim'));
  t.equal((await readUntil(raw)).at(-1)!.body.toString('latin1'), 'E');
  // Parsed again: the server refuses it (the name exists), and the rest of the batch with it.
  raw.send(Buffer.concat([typed('P', latin1('\xe9\0COMMIT\0\0\0')), typed('B', latin1('\0\xe9\0\0\0\0\0\0\0')), typed('E', '\0\0\0\0\0'), typed('S', '')]));
  const replies = await readUntil(raw);
  t.ok(replies.some((m) => m.type === 'E'), 'refused');
  t.notOk(replies.some((m) => m.type === 'C'), 'nothing ran');
  raw.send(query('ROLLBACK'));
  await readUntil(raw);
  t.equal(await rows('select count(*) from items where id = 29'), '0', 'nothing was committed');
});

t.test('a held statement denied while an earlier one still runs: its refusal comes after, and the session reads again', async (t) => {
  const raw = await rawLogin(port, agentToken);
  t.teardown(() => raw.socket.destroy());
  const query = (sql: string) => typed('Q', `${sql}\0`);
  raw.send(Buffer.concat([query('SELECT pg_sleep(1.5)'), query('DELETE FROM ledger WHERE id = 901')]));
  let id: string | undefined;
  for (let i = 0; i < 100 && id === undefined; i++) {
    const list = (await (await fetch(`${api}/api/approvals?status=pending`, { headers: { authorization: `Bearer ${approverToken}` } })).json()) as { approvals: Array<{ id: string; text: string }> };
    id = list.approvals.find((a) => a.text.includes('id = 901'))?.id;
    if (id === undefined) await new Promise((r) => setTimeout(r, 20));
  }
  t.ok(id, 'held while the sleep runs');
  await decide(id!, 'deny');
  t.equal((await readUntil(raw)).at(-1)?.type, 'Z', 'the sleep answered');
  const denied = await readUntil(raw);
  t.equal(errorFields(denied.find((m) => m.type === 'E')!.body).C, '42501', 'then the denial');
  raw.send(query('SELECT 1'));
  t.ok((await readUntil(raw)).some((m) => m.type === 'D'), 'and the next statement is read and answered');
});

t.test('LATIN1: after a refusal, a COMMIT portal bound before it, named in bytes UTF-8 cannot read, commits nothing', async (t) => {
  const { raw, latin1, query } = await latin1Transaction(t, 28);
  // Portal "\xe8" holds a COMMIT, bound while the transaction is healthy.
  raw.send(Buffer.concat([typed('P', latin1('fin3\0COMMIT\0\0\0')), typed('B', latin1('\xe8\0fin3\0\0\0\0\0\0\0')), typed('S', '')]));
  t.same((await readUntil(raw)).map((m) => m.type), ['1', '2', 'Z']);
  raw.send(query('DROP TABLE victim'));
  t.equal((await readUntil(raw)).at(-1)!.body.toString('latin1'), 'E', 'the refusal aborts the transaction');
  // A ROLLBACK bound to portal "\xe9", then an Execute of portal "\xe8": the COMMIT, in the transaction the server aborted.
  raw.send(Buffer.concat([typed('P', latin1('\0ROLLBACK\0\0\0')), typed('B', latin1('\xe9\0\0\0\0\0\0\0\0')), typed('E', latin1('\xe8\0\0\0\0\0')), typed('S', '')]));
  const replies = await readUntil(raw);
  t.equal(errorFields(replies.find((m) => m.type === 'E')!.body).C, '25P02', 'the COMMIT portal is not the ROLLBACK one');
  raw.send(query('ROLLBACK'));
  await readUntil(raw);
  t.equal(await rows('select count(*) from items where id = 28'), '0', 'nothing was committed');
});

t.test('in an aborted transaction, a statement prepared earlier cannot commit it', async (t) => {
  const raw = await rawLogin(port, agentToken);
  const query = (sql: string) => typed('Q', `${sql}\0`);
  raw.send(query('BEGIN'));
  await readUntil(raw);
  // A named COMMIT, parsed (not run) while the transaction is healthy.
  raw.send(Buffer.concat([typed('P', 'fin\0COMMIT\0\0\0'), typed('S', '')]));
  t.same((await readUntil(raw)).map((m) => m.type), ['1', 'Z']);
  await preparedCommitRefused(t, raw, 'fin', 20);
});

/**
 * In the open transaction of `raw`: an INSERT of item `id`, then a refused
 * statement (the server's transaction is aborted with it), then a Bind and
 * Execute of the prepared COMMIT `name`: it rolls back, as a COMMIT of a
 * failed transaction does, and nothing is committed. Ends the session.
 */
async function preparedCommitRefused(t: Test, raw: RawPg, name: string, id: number): Promise<void> {
  const query = (sql: string) => typed('Q', `${sql}\0`);
  raw.send(query(`INSERT INTO items VALUES (${id}, 'item ${id}')`));
  await readUntil(raw);
  raw.send(query('DROP TABLE victim'));
  const denied = await readUntil(raw);
  t.equal(errorFields(denied.find((m) => m.type === 'E')!.body).C, '42501');
  t.equal(denied.at(-1)!.body.toString('latin1'), 'E', 'the transaction is aborted');
  raw.send(Buffer.concat([typed('B', `\0${name}\0\0\0\0\0\0\0`), typed('E', '\0\0\0\0\0'), typed('S', '')]));
  const ended = await readUntil(raw);
  // The server's transaction is aborted by the refusal: its COMMIT rolls back, as in PostgreSQL.
  t.equal(ended.find((m) => m.type === 'C')?.body.toString('latin1'), 'ROLLBACK\0', 'the prepared COMMIT rolls back');
  t.equal(ended.at(-1)!.body.toString('latin1'), 'I');
  t.equal(await rows(`select count(*) from items where id = ${id}`), '0', 'the insert before the refusal was not committed');
  raw.send(typed('X', Buffer.alloc(0)));
  await raw.waitClosed();
}

t.test('a Parse the server refuses changes nothing: a prepared COMMIT stays a COMMIT in an aborted transaction', async (t) => {
  const raw = await rawLogin(port, agentToken);
  const query = (sql: string) => typed('Q', `${sql}\0`);
  raw.send(Buffer.concat([typed('P', 'fin2\0COMMIT\0\0\0'), typed('S', '')]));
  t.same((await readUntil(raw)).map((m) => m.type), ['1', 'Z']);
  // The name exists: the server refuses this Parse (42P05) and fin2 stays a COMMIT.
  raw.send(Buffer.concat([typed('P', 'fin2\0ROLLBACK\0\0\0'), typed('S', '')]));
  const dup = await readUntil(raw);
  t.equal(errorFields(dup.find((m) => m.type === 'E')!.body).C, '42P05');
  raw.send(query('BEGIN'));
  await readUntil(raw);
  await preparedCommitRefused(t, raw, 'fin2', 21);
});

t.test('COPY FROM STDIN: as a simple query it works; through Parse/Bind/Execute the session ends with a clear error', async (t) => {
  const raw = await rawLogin(port, agentToken);
  raw.send(typed('Q', 'COPY items FROM STDIN\0'));
  t.equal((await raw.read())?.type, 'G', 'CopyInResponse');
  raw.send(Buffer.concat([typed('d', '30\tthirty\n'), typed('c', '')]));
  t.same((await readUntil(raw)).map((m) => m.type), ['C', 'Z']);
  t.equal(await rows('select name from items where id = 30'), 'thirty');

  // As libpq's PQexecParams sends it: the server ignores that Sync until CopyDone, so replies
  // would no longer pair with what Sluice owes the client.
  raw.send(Buffer.concat([typed('P', '\0COPY items FROM STDIN\0\0\0'), typed('B', '\0\0\0\0\0\0\0\0'), typed('E', '\0\0\0\0\0'), typed('S', '')]));
  const got = await readUntil(raw);
  const fatal = got.find((m) => m.type === 'E');
  t.match(errorFields(fatal!.body), { S: 'FATAL', C: '0A000', M: /COPY FROM STDIN through the extended protocol .* send it as a simple query/ });
  await raw.waitClosed();
  t.equal(await rows('select count(*) from items where id >= 30'), '1', 'nothing more was copied');
});

t.test('messages whose replies could not be paired end the session: a Sync inside COPY FROM STDIN, a Query inside an extended batch', async (t) => {
  // A COPY that never starts (no such table): answered, and the session goes on as usual.
  let raw = await rawLogin(port, agentToken);
  raw.send(typed('Q', 'COPY no_such_table FROM STDIN\0'));
  t.same((await readUntil(raw, 'Z')).map((m) => m.type), ['E', 'Z']);
  raw.send(typed('Q', 'SELECT 1\0'));
  t.ok((await readUntil(raw, 'Z')).some((m) => m.type === 'D'), 'a refused COPY leaves nothing pending');
  // The server ignores a Sync inside COPY IN: it owes no ReadyForQuery for it.
  raw.send(typed('Q', 'COPY items FROM STDIN\0'));
  t.equal((await raw.read())?.type, 'G');
  raw.send(typed('S', ''));
  let fatal = (await readUntil(raw, 'E')).at(-1)!;
  t.match(errorFields(fatal.body), { S: 'FATAL', C: '08P01', M: /a Sync inside COPY FROM STDIN .* is not supported/ });
  await raw.waitClosed();
  // The second COPY of a Query is a COPY too, after the first one's CopyDone.
  raw = await rawLogin(port, agentToken);
  raw.send(typed('Q', 'COPY items FROM STDIN; COPY items FROM STDIN\0'));
  t.equal((await raw.read())?.type, 'G');
  raw.send(typed('c', ''));
  t.same([(await raw.read())?.type, (await raw.read())?.type], ['C', 'G'], 'the first COPY done, the second started');
  raw.send(typed('S', ''));
  fatal = (await readUntil(raw, 'E')).at(-1)!;
  t.match(errorFields(fatal.body), { S: 'FATAL', C: '08P01', M: /a Sync inside COPY FROM STDIN/ });
  await raw.waitClosed();
  // A Parse the policy refuses is not discarded until a Sync there: the server would take the Sync.
  raw = await rawLogin(port, agentToken);
  raw.send(typed('Q', 'COPY items FROM STDIN\0'));
  t.equal((await raw.read())?.type, 'G');
  raw.send(Buffer.concat([typed('P', '\0DROP TABLE victim\0\0\0'), typed('S', '')]));
  fatal = (await readUntil(raw, 'E')).at(-1)!;
  t.match(errorFields(fatal.body), { S: 'FATAL', C: '08P01', M: /a Parse inside COPY FROM STDIN/ });
  await raw.waitClosed();
  // After an error in an extended batch the server skips a Query until Sync.
  raw = await rawLogin(port, agentToken);
  raw.send(Buffer.concat([typed('P', '\0SELECT 1\0\0\0'), typed('B', '\0\0\0\0\0\0\0\0'), typed('E', '\0\0\0\0\0'), typed('Q', 'SELECT 2\0')]));
  fatal = (await readUntil(raw, 'E')).at(-1)!;
  t.match(errorFields(fatal.body), { S: 'FATAL', C: '08P01', M: /a Query inside an extended-protocol batch .* is not supported/ });
  await raw.waitClosed();
});

t.test('FunctionCall is refused, and inside an extended batch ends the session', async (t) => {
  const raw = await rawLogin(port, agentToken);
  // FunctionCall: oid, 0 arg formats, 0 args, result format 0.
  const body = Buffer.alloc(4 + 2 + 2 + 2);
  body.writeInt32BE(2619 /* any oid */, 0);
  raw.send(typed('F', body));
  const e = await raw.read();
  t.equal(e?.type, 'E');
  t.equal(errorFields(e!.body).C, '0A000');
  const z = await raw.read();
  t.equal(z?.type, 'Z');
  raw.send(typed('X', Buffer.alloc(0)));
  await raw.waitClosed();
  // Inside an extended batch its refusal, a Query's, could not be paired with its reply: the session ends.
  const inBatch = await rawLogin(port, agentToken);
  inBatch.send(Buffer.concat([typed('P', '\0SELECT 1\0\0\0'), typed('F', body)]));
  const fatal = (await readUntil(inBatch, 'E')).at(-1)!;
  t.match(errorFields(fatal.body), { S: 'FATAL', C: '08P01', M: /a FunctionCall inside an extended-protocol batch/ });
  await inBatch.waitClosed();
});

async function approve(id: string, token = approverToken, body: unknown = {}): Promise<Response> {
  return fetch(`${api}/api/approvals/${id}/approve`, {
    method: 'POST',
    headers: { authorization: `Bearer ${token}`, 'content-type': 'application/json' },
    body: JSON.stringify(body),
  });
}

async function noticeId(client: { notices: Notice[] }): Promise<string> {
  for (let i = 0; i < 200; i++) {
    const n = client.notices.find((x) => /held for approval/.test(x.message ?? ''));
    if (n) return /(apr_[a-z2-7]+)/.exec(n.message!)![1]!;
    await new Promise((r) => setTimeout(r, 25));
  }
  throw new Error('no approval notice arrived');
}

t.test('just-in-time approval: held, told, approved through the API, completed', async (t) => {
  const client = await connect();
  t.teardown(() => client.end());
  const pending = client.query("CREATE ROLE reporting_ro PASSWORD 'not-in-any-log-7'");
  const id = await noticeId(client);
  const notice = client.notices.find((n) => n.message?.includes(id))!;
  t.match(notice.hint, `sluice approvals approve ${id}`, 'the client is told what an approver runs');
  t.equal((await approve(id, agentToken)).status, 403, 'the agent cannot approve its own statement');
  const res = await approve(id);
  t.equal(res.status, 200);
  await pending;
  t.equal(await rows("select count(*) from pg_roles where rolname = 'reporting_ro'"), '1', 'the held statement ran after approval');
  t.equal((await approve(id)).status, 409, 'an approval is single-use');
  const ok = await client.query('select 2 as two');
  t.equal(ok.rows[0].two, 2, 'the session is usable afterwards');
});

t.test('a denied approval errors, a timeout errors, and one approval never releases another statement', async (t) => {
  const a = await connect();
  const b = await connect();
  t.teardown(async () => {
    await a.end();
    await b.end();
  });
  const heldA = a.query('CREATE ROLE role_a');
  // Settle handlers first: B's refusal may arrive while A is being approved.
  const heldB = b.query('CREATE ROLE role_a').then(() => undefined, (err: unknown) => err);
  const idA = await noticeId(a);
  const idB = await noticeId(b);
  t.not(idA, idB, 'each held statement has its own approval');
  t.equal((await approve(idA)).status, 200);
  await heldA;
  const deny = await fetch(`${api}/api/approvals/${idB}/deny`, {
    method: 'POST',
    headers: { authorization: `Bearer ${approverToken}`, 'content-type': 'application/json' },
    body: JSON.stringify({ reason: 'not today' }),
  });
  t.equal(deny.status, 200);
  t.match(await heldB, { code: '42501', message: new RegExp(`approval ${idB} was denied`) }, 'approving A did not release B');
  t.equal((await b.query('select 1 as one')).rows[0].one, 1);

  b.notices.length = 0;
  const timed = b.query('ALTER ROLE role_a CONNECTION LIMIT 3').then(() => undefined, (err: unknown) => err);
  const idT = await noticeId(b);
  t.match(await timed, { code: '42501', message: new RegExp(`approval ${idT} expired`) });
  t.equal((await b.query('select 3 as three')).rows[0].three, 3, 'usable after a timeout');
});

t.test('a subject with max_pending_per_subject statements held gets a refusal for the next, not a third hold', async (t) => {
  const clients = [await connect(), await connect(), await connect()];
  t.teardown(() => Promise.all(clients.map((c) => c.end())));
  const held = clients.slice(0, 2).map((c) => c.query('CREATE ROLE limit_a').then(() => undefined, (err: unknown) => err));
  await Promise.all(clients.slice(0, 2).map((c) => noticeId(c)));
  const third = await clients[2]!.query('CREATE ROLE limit_b').then(() => undefined, (err: unknown) => err);
  t.match(third, { code: '42501', message: /2 approvals are already pending for this subject \(approvals\.max_pending_per_subject\)/ });
  t.equal(clients[2]!.notices.length, 0, 'it was never held');
  t.equal((await clients[2]!.query('select 1 as one')).rows[0].one, 1, 'the session goes on');
  for (const e of await Promise.all(held)) t.match(e, { code: '42501', message: /expired/ }, 'the held ones time out as usual');
});

t.test('the audit trail records what happened, without passwords', async (t) => {
  // A user mapping's OPTIONS hold the remote database's password. The server refuses this one
  // (there is no server "nowhere"), after the gateway allowed and audited it.
  const client = await connect();
  t.teardown(() => client.end());
  const mapping = await client
    .query("CREATE USER MAPPING FOR CURRENT_USER SERVER nowhere OPTIONS (user 'remote', password 'not-in-any-log-8')")
    .then(() => undefined, (err: unknown) => err);
  t.match(mapping, { code: '42704' }, 'PostgreSQL refused it: no such server');
  // A subscription's connection string: PostgreSQL refuses it (only a superuser subscribes).
  const subscription = await client
    .query("CREATE SUBSCRIPTION s CONNECTION 'host=127.0.0.1 password=not-in-any-log-9' PUBLICATION p")
    .then(() => undefined, (err: unknown) => err);
  t.match(subscription, { code: '42501', message: /superuser/ }, "PostgreSQL's refusal, not Sluice's");
  // dblink is @dangerous: Sluice denies it, and audits the denial.
  const link = await client.query("SELECT dblink_connect('postgresql://app:not-in-any-log-10@db.internal/app')").then(() => undefined, (err: unknown) => err);
  t.match(link, { code: '42501', message: /no-file-access/ });
  // Its password as an argument of an SQL EXECUTE (the PREPARE is denied, so the server knows no "c").
  t.match(await client.query('PREPARE c(text) AS SELECT dblink_connect($1)').then(() => undefined, (err: unknown) => err), { code: '42501' });
  t.match(await client.query("EXECUTE c('host=h password=not-in-any-log-11')").then(() => undefined, (err: unknown) => err), { code: '26000' });
  t.match(await client.query("EXPLAIN EXECUTE c('not-in-any-log-12')").then(() => undefined, (err: unknown) => err), { code: '26000' });
  // A Parse's name is an SQL EXECUTE's too: node-postgres sends this one as Parse "link" (refused: dblink is @dangerous).
  t.match(await client.query({ name: 'link', text: 'SELECT dblink_connect($1)', values: ['x'] }).then(() => undefined, (err: unknown) => err), { code: '42501' });
  t.match(await client.query("EXECUTE link('not-in-any-log-13')").then(() => undefined, (err: unknown) => err), { code: '26000' });
  gw.gateway.services.audit.flush();
  const store = gw.gateway.services.store;
  const events: AuditEvent[] = store.queryAuditEvents({ subject: 'agent-7', limit: 1000 });
  const denied = events.find((e) => e.verdict === 'denied' && e.text.includes('DROP TABLE victim'));
  t.match(denied, { rule: 'no-destruction', policy: 'agents', target: 'app-db', sqlstate: '42501', protocol: 'postgres' });
  const select = events.find((e) => e.verdict === 'allowed' && e.text === 'SELECT count(*) FROM items');
  t.match(select, { rows: 1, kind: 'select' });
  t.ok(select!.durationMs !== undefined && select!.durationMs >= 0);
  const bound = events.find((e) => e.text.startsWith('select name from items where id = $1'));
  t.match(bound?.text, /-- params: \["[12]"\]/, 'extended-protocol rows carry their parameters');
  const approved = events.find((e) => e.verdict === 'approved');
  t.match(approved, { rule: 'roles-need-approval' });
  t.match(approved?.approvalId, /^apr_/);
  t.ok(events.some((e) => e.verdict === 'approval_denied'));
  t.ok(events.some((e) => e.verdict === 'approval_expired'));
  t.match(events.find((e) => e.text.startsWith('CREATE USER MAPPING')), { text: /password \[redacted\]$/, sqlstate: '42704' });
  t.match(events.find((e) => e.text.startsWith('EXECUTE c')), { text: 'EXECUTE c( [redacted]', sqlstate: '26000' });
  t.match(events.find((e) => e.text.startsWith('EXECUTE link')), { text: 'EXECUTE link( [redacted]', sqlstate: '26000' });
  t.match(events.find((e) => e.text.startsWith('EXPLAIN EXECUTE c')), { text: 'EXPLAIN EXECUTE c( [redacted]', sqlstate: '26000' });
  for (const e of events) {
    t.notMatch(e.text, 'not-in-any-log-7', 'no password in the audit trail');
    t.notMatch(e.text, /not-in-any-log-(8|9|10|11|12|13)/, "nor a user mapping's, a subscription's or a dblink connection string's");
  }
  const fromApi = await fetch(`${api}/api/audit?subject=agent-7&verdict=denied`, { headers: { authorization: `Bearer ${approverToken}` } });
  t.equal(fromApi.status, 200);
  const body = (await fromApi.json()) as { events: AuditEvent[] };
  t.ok(body.events.length >= 9, `the API returns the denials (${body.events.length})`);
  t.ok(body.events.every((e) => e.verdict === 'denied'), 'and only denials');
  for (const line of gw.logs) {
    t.notOk(line.includes('not-in-any-log-') || line.includes(agentToken) || line.includes(approverToken), 'no secret in the logs');
  }
});

async function decide(id: string, verb: 'approve' | 'deny'): Promise<void> {
  const res = await fetch(`${api}/api/approvals/${id}/${verb}`, {
    method: 'POST',
    headers: { authorization: `Bearer ${approverToken}`, 'content-type': 'application/json' },
    body: '{}',
  });
  if (res.status !== 200) throw new Error(`${verb} ${id}: ${res.status}`);
}

async function approvalText(id: string): Promise<string> {
  const res = await fetch(`${api}/api/approvals/${id}`, { headers: { authorization: `Bearer ${approverToken}` } });
  return ((await res.json()) as { text: string }).text;
}

t.test('an approval releases one execution: a prepared statement run again is held again', async (t) => {
  const client = await connect();
  t.teardown(() => client.end());
  const remaining = async (): Promise<string> => rows('select string_agg(id::text, \',\' order by id) from ledger');

  // node-postgres parses a named query once per connection; later runs send only Bind and Execute.
  const named = { name: 'drop-entry', text: 'DELETE FROM ledger WHERE id = $1' };
  const first = client.query({ ...named, values: [1] });
  const id1 = await noticeId(client);
  await decide(id1, 'approve');
  t.equal((await first).rowCount, 1, 'the approved statement ran');
  client.notices.length = 0;
  const second = client.query({ ...named, values: [2] }).then(() => undefined, (err: unknown) => err);
  const id2 = await noticeId(client);
  t.not(id2, id1, 'running it again needs an approval of its own');
  t.equal(await approvalText(id2), 'DELETE FROM ledger WHERE id = $1 -- params: ["2"]', 'the approver sees the parameters');
  await decide(id2, 'deny');
  t.match(await second, { code: '42501', message: new RegExp(`approval ${id2} was denied`) });
  client.notices.length = 0;
  const third = client.query({ ...named, values: [3] });
  await decide(await noticeId(client), 'approve');
  t.equal((await third).rowCount, 1);
  t.equal(await remaining(), '2,4,5,6', 'only the approved runs deleted anything');

  // The same for SQL's PREPARE and EXECUTE: the approval of the PREPARE runs nothing.
  client.notices.length = 0;
  const prepare = client.query('PREPARE wipe AS DELETE FROM ledger WHERE id = $1');
  await decide(await noticeId(client), 'approve');
  await prepare;
  client.notices.length = 0;
  const run = client.query('EXECUTE wipe(4)');
  const id4 = await noticeId(client);
  t.equal(await approvalText(id4), 'EXECUTE wipe(4) -- wipe: PREPARE wipe AS DELETE FROM ledger WHERE id = $1', 'the approver sees what EXECUTE runs');
  await decide(id4, 'approve');
  t.equal((await run).rowCount, 1);
  client.notices.length = 0;
  const again = client.query('EXECUTE wipe(5)').then(() => undefined, (err: unknown) => err);
  await decide(await noticeId(client), 'deny');
  t.match(await again, { code: '42501' }, 'each EXECUTE needs its own approval');
  t.equal(await remaining(), '2,5,6');
  t.equal((await client.query('select 1 as one')).rows[0].one, 1, 'the session is usable afterwards');
});

t.test('a released statement stays bound to its approvals: a skipped Close, an EXECUTE prepared by Parse, a PREPARE sent by Parse', async (t) => {
  await pgServer.psqlDirect('insert into ledger values (10), (11), (12), (13), (14), (15)', 'app');
  const raw = await rawLogin(port, agentToken);
  t.teardown(() => raw.socket.destroy());
  const cstr = (v: string) => `${v}\0`;
  const parse = (name: string, sql: string) => typed('P', `${cstr(name)}${cstr(sql)}\0\0`);
  const bind = (statement: string) => typed('B', `\0${cstr(statement)}\0\0\0\0\0\0`);
  const execute = (portal = '') => typed('E', `${cstr(portal)}\0\0\0\0`);
  const sync = typed('S', '');
  const heldId = async (): Promise<string> => /(apr_[a-z2-7]+)/.exec(errorFields((await readUntil(raw, 'N')).at(-1)!.body).M!)![1]!;
  const count = async (): Promise<string> => rows('select count(*) from ledger where id >= 10');
  const oldest = 'DELETE FROM ledger WHERE id = (SELECT min(id) FROM ledger WHERE id >= 10)';

  // 1. Approved, run once; a Close of it that the server skips (an error before it in its batch) ends nothing.
  raw.send(Buffer.concat([parse('x', oldest), bind('x'), execute(), sync]));
  await decide(await heldId(), 'approve');
  t.ok((await readUntil(raw, 'Z')).some((m) => m.type === 'C'), 'the approved run ran');
  raw.send(Buffer.concat([execute('no-such-portal'), typed('C', `S${cstr('x')}`), sync]));
  t.ok((await readUntil(raw, 'Z')).some((m) => m.type === 'E'), 'the batch failed, its Close skipped');
  raw.send(Buffer.concat([bind('x'), execute(), sync]));
  await decide(await heldId(), 'deny');
  t.equal(errorFields((await readUntil(raw, 'Z')).find((m) => m.type === 'E')!.body).C, '42501', 'running x again needed an approval of its own');
  t.equal(await count(), '5');

  // 2. A statement that EXECUTEs a released one, approved once, is held at its next Bind.
  raw.send(typed('Q', cstr('PREPARE wipe2 AS DELETE FROM ledger WHERE id = (SELECT min(id) FROM ledger WHERE id >= 10)')));
  await decide(await heldId(), 'approve');
  await readUntil(raw, 'Z');
  raw.send(Buffer.concat([parse('y', 'EXECUTE wipe2'), bind('y'), execute(), sync]));
  await decide(await heldId(), 'approve');
  t.ok((await readUntil(raw, 'Z')).some((m) => m.type === 'C'));
  t.equal(await count(), '4');
  raw.send(Buffer.concat([bind('y'), execute(), sync]));
  await decide(await heldId(), 'deny');
  t.equal(errorFields((await readUntil(raw, 'Z')).find((m) => m.type === 'E')!.body).C, '42501', 'y runs wipe2 again: judged as wipe2');

  // 3. A PREPARE sent by Parse, approved: what it prepares is bound too.
  raw.send(Buffer.concat([parse('', 'PREPARE wipe3 AS DELETE FROM ledger WHERE id = (SELECT min(id) FROM ledger WHERE id >= 10)'), bind(''), execute(), sync]));
  await decide(await heldId(), 'approve');
  await readUntil(raw, 'Z');
  raw.send(typed('Q', cstr('EXECUTE wipe3')));
  await decide(await heldId(), 'deny');
  t.equal(errorFields((await readUntil(raw, 'Z')).find((m) => m.type === 'E')!.body).C, '42501', 'each EXECUTE of wipe3 needs an approval');
  t.equal(await count(), '4', 'nothing ran without one');

  // 4. A statement that EXECUTEs a name parsed before that name was released: each Bind of it is judged as the released one.
  raw.send(Buffer.concat([parse('z', 'EXECUTE wipe4'), sync]));
  t.ok((await readUntil(raw, 'Z')).some((m) => m.type === '1'), 'PostgreSQL parses an EXECUTE of a name not yet prepared');
  raw.send(typed('Q', cstr('PREPARE wipe4 AS DELETE FROM ledger WHERE id = (SELECT min(id) FROM ledger WHERE id >= 10)')));
  await decide(await heldId(), 'approve');
  await readUntil(raw, 'Z');
  raw.send(Buffer.concat([bind('z'), execute(), sync]));
  await decide(await heldId(), 'deny');
  t.equal(errorFields((await readUntil(raw, 'Z')).find((m) => m.type === 'E')!.body).C, '42501', 'z runs wipe4: held, and refused when denied');
  t.equal(await count(), '4', 'the approved PREPARE ran nothing through z');

  // 5. A Parse of that name the server refuses (it exists) leaves it what it was: still an EXECUTE of wipe5.
  raw.send(Buffer.concat([parse('w', 'EXECUTE wipe5'), sync]));
  await readUntil(raw, 'Z');
  raw.send(Buffer.concat([parse('w', 'SELECT 1'), sync]));
  t.equal(errorFields((await readUntil(raw, 'Z')).find((m) => m.type === 'E')!.body).C, '42P05', 'the server keeps the first w');
  raw.send(typed('Q', cstr('PREPARE wipe5 AS DELETE FROM ledger WHERE id = (SELECT min(id) FROM ledger WHERE id >= 10)')));
  await decide(await heldId(), 'approve');
  await readUntil(raw, 'Z');
  raw.send(Buffer.concat([bind('w'), execute(), sync]));
  await decide(await heldId(), 'deny');
  t.equal(errorFields((await readUntil(raw, 'Z')).find((m) => m.type === 'E')!.body).C, '42501', 'w still runs wipe5: held');
  t.equal(await count(), '4');

  // 6. An approved Parse the server refuses (the name exists) releases nothing: x is still the DELETE
  //    approved and run in 1, and a Bind of it needs an approval of its own, not the refused Parse's.
  raw.send(Buffer.concat([parse('x', 'DELETE FROM ledger WHERE id = -1'), sync]));
  await decide(await heldId(), 'approve');
  t.equal(errorFields((await readUntil(raw, 'Z')).find((m) => m.type === 'E')!.body).C, '42P05', 'the server keeps the first x');
  raw.send(Buffer.concat([bind('x'), execute(), sync]));
  await decide(await heldId(), 'deny');
  t.equal(errorFields((await readUntil(raw, 'Z')).find((m) => m.type === 'E')!.body).C, '42501', 'the DELETE is held again');
  t.equal(await count(), '4', 'and did not run');

  // 6b. The same, pipelined: a Bind of x in the batch after the approved Parse, sent before the server
  //     answered it, is not the Bind the approval covers (the server may refuse the Parse, as here).
  raw.send(Buffer.concat([parse('x', 'DELETE FROM ledger WHERE id = -2'), sync, bind('x'), execute(), sync]));
  await decide(await heldId(), 'approve');
  t.equal(errorFields((await readUntil(raw, 'Z')).find((m) => m.type === 'E')!.body).C, '42P05');
  await decide(await heldId(), 'deny');
  t.equal(errorFields((await readUntil(raw, 'Z')).find((m) => m.type === 'E')!.body).C, '42501', 'the Bind is held on its own');
  t.equal(await count(), '4', 'and x, the DELETE, did not run');

  // 7. A Query that opens a block and then EXECUTEs a released statement, denied: the block is left open
  //    and aborted, as the EXECUTE's failure would have left it (its COMMIT never ran).
  raw.send(typed('Q', cstr('BEGIN; EXECUTE wipe3; COMMIT')));
  await decide(await heldId(), 'deny');
  const refusedInBlock = await readUntil(raw, 'Z');
  t.equal(errorFields(refusedInBlock.find((m) => m.type === 'E')!.body).C, '42501');
  t.equal(refusedInBlock.at(-1)!.body.toString('latin1'), 'E', 'in an aborted transaction block');
  raw.send(typed('Q', cstr('ROLLBACK')));
  await readUntil(raw, 'Z');
  t.equal(await count(), '4');

  // 8. A SQL PREPARE of a released name, under a window, that the server refuses (the name is taken):
  //    EXECUTE runs what the name still is, so it is judged as that too, not as the refused PREPARE.
  raw.send(typed('Q', cstr('PREPARE wipe8 AS DELETE FROM ledger WHERE id = (SELECT min(id) FROM ledger WHERE id >= 10)')));
  await decide(await heldId(), 'approve');
  await readUntil(raw, 'Z');
  raw.send(typed('Q', cstr('PREPARE wipe8 AS DELETE FROM ledger WHERE id = -8')));
  const windowed = await fetch(`${api}/api/approvals/${await heldId()}/approve`, {
    method: 'POST',
    headers: { authorization: `Bearer ${approverToken}`, 'content-type': 'application/json' },
    body: JSON.stringify({ for: '10m' }),
  });
  t.equal(windowed.status, 200, 'approved with a window');
  t.equal(errorFields((await readUntil(raw, 'Z')).find((m) => m.type === 'E')!.body).C, '42P05', 'the server keeps the first wipe8');
  raw.send(typed('Q', cstr('EXECUTE wipe8')));
  const held = await heldId();
  t.match(await approvalText(held), /id = -8.*or, should the server have refused that PREPARE: .*SELECT min\(id\)/, 'the approver is shown what wipe8 may be');
  await decide(held, 'deny');
  t.equal(errorFields((await readUntil(raw, 'Z')).find((m) => m.type === 'E')!.body).C, '42501', 'held, not run under the window');
  t.equal(await count(), '4', 'the first wipe8 did not run');
});

t.test('a refusal inside an extended batch fails the whole batch, as a server error does', async (t) => {
  const raw = await rawLogin(port, agentToken);
  t.teardown(() => raw.socket.destroy());
  // No BEGIN: the batch up to Sync is one implicit transaction, which an error in it rolls back (JDBC's
  // executeBatch relies on it). The INSERT ran on the server before the refused DROP: it must not commit.
  raw.send(Buffer.concat([parseUnnamed("INSERT INTO items VALUES (40, 'forty')"), bindExecute, parseUnnamed('DROP TABLE victim'), bindExecute, syncMessage]));
  const replies = await readUntil(raw);
  t.same(replies.map((m) => m.type), ['1', '2', 'C', 'E', 'Z'], 'the INSERT answered, then the refusal');
  t.equal(errorFields(replies[3]!.body).C, '42501');
  t.equal(replies[4]!.body.toString('latin1'), 'I');
  t.equal(await rows('select count(*) from items where id = 40'), '0', 'the INSERT was rolled back with the batch');

  // Inside a transaction block, the server's own transaction is aborted by the refusal.
  raw.send(typed('Q', 'BEGIN\0'));
  await readUntil(raw);
  raw.send(Buffer.concat([parseUnnamed("INSERT INTO items VALUES (41, 'forty-one')"), bindExecute, parseUnnamed('DROP TABLE victim'), syncMessage]));
  const inBlock = await readUntil(raw);
  t.equal(errorFields(inBlock.find((m) => m.type === 'E')!.body).C, '42501');
  t.equal(inBlock.at(-1)!.body.toString('latin1'), 'E', 'the transaction is aborted');
  raw.send(Buffer.concat([parseUnnamed('SELECT 1'), bindExecute, syncMessage]));
  t.equal(errorFields((await readUntil(raw)).find((m) => m.type === 'E')!.body).C, '25P02', 'and stays so');
  raw.send(typed('Q', 'COMMIT\0'));
  const commit = await readUntil(raw);
  t.equal(commit.at(-1)!.body.toString('latin1'), 'I');
  t.equal(await rows('select count(*) from items where id = 41'), '0', 'a COMMIT commits nothing');
});

t.test('a client that sends Flush behind a refused statement gets the refusal without a Sync', async (t) => {
  const raw = await rawLogin(port, agentToken);
  t.teardown(() => raw.socket.destroy());
  // psycopg's pipeline mode, and libpq's PQsendFlushRequest: results are read before the Sync is sent.
  raw.send(Buffer.concat([parseUnnamed('SELECT 1'), bindExecute, parseUnnamed('DROP TABLE victim'), flushMessage]));
  const replies = await readUntil(raw, 'E');
  t.same(replies.map((m) => m.type), ['1', '2', 'D', 'C', 'E'], 'the SELECT answered, then the refusal, before any Sync');
  t.equal(errorFields(replies.at(-1)!.body).C, '42501');
  t.match(errorFields(replies.at(-1)!.body).M, /denied by rule "no-destruction"/);
  raw.send(syncMessage);
  t.same((await readUntil(raw)).map((m) => m.type), ['Z'], 'the Sync gets its ReadyForQuery alone');
  raw.send(typed('Q', 'SELECT 2\0'));
  t.ok((await readUntil(raw)).some((m) => m.type === 'D'), 'the session goes on');
});

t.test('a refusal in a batch the server has already failed: the server\'s error is the answer, and the session goes on', async (t) => {
  const raw = await rawLogin(port, agentToken);
  t.teardown(() => raw.socket.destroy());
  // The server sends its error as it happens: read it before the rest of the batch is sent.
  raw.send(Buffer.concat([parseUnnamed('SELECT 1/0'), bindExecute, flushMessage]));
  const failed = await readUntil(raw, 'E');
  t.equal(errorFields(failed.at(-1)!.body).C, '22012');
  raw.send(Buffer.concat([parseUnnamed('DROP TABLE victim'), syncMessage]));
  t.same((await readUntil(raw)).map((m) => m.type), ['Z'], 'the batch ends; nothing more is said of it');
  raw.send(typed('Q', 'SELECT 2\0'));
  t.ok((await readUntil(raw)).some((m) => m.type === 'D'), 'the session goes on');

  // The same where the refusal is a held statement's, denied after the server failed its batch.
  raw.send(Buffer.concat([parseUnnamed("INSERT INTO items VALUES (1, 'taken')"), bindExecute, parseUnnamed('CREATE ROLE never_made'), syncMessage]));
  // The hold's notice, and the server's error, which it sends as it happens: both before the decision.
  const before: RawMessage[] = [];
  while (!before.some((m) => m.type === 'N') || !before.some((m) => m.type === 'E')) before.push((await raw.read())!);
  const id = /(apr_[a-z2-7]+)/.exec(errorFields(before.find((m) => m.type === 'N')!.body).M!)![1]!;
  t.equal(errorFields(before.find((m) => m.type === 'E')!.body).C, '23505', 'the server\'s own error');
  await decide(id, 'deny');
  t.same((await readUntil(raw)).map((m) => m.type), ['Z'], 'then the batch\'s ReadyForQuery, and no second error');
  raw.send(typed('Q', 'SELECT 3\0'));
  t.ok((await readUntil(raw)).some((m) => m.type === 'D'), 'and the session goes on');
  t.equal(await rows("select count(*) from pg_roles where rolname = 'never_made'"), '0');
});

t.test('pipelined batches that each hold a refusal are each answered with it', async (t) => {
  const raw = await rawLogin(port, agentToken);
  t.teardown(() => raw.socket.destroy());
  raw.send(
    Buffer.concat([
      parseUnnamed("INSERT INTO items VALUES (43, 'a')"), bindExecute, parseUnnamed('DROP TABLE victim'), syncMessage,
      parseUnnamed('TRUNCATE victim'), syncMessage,
      parseUnnamed("INSERT INTO items VALUES (44, 'b')"), bindExecute, syncMessage,
      typed('Q', 'DROP TABLE victim\0'),
      typed('Q', 'SELECT 4\0'),
    ]),
  );
  const answers: RawMessage[][] = [];
  for (let i = 0; i < 5; i++) answers.push(await readUntil(raw));
  t.same(answers.map((a) => a.map((m) => m.type)), [['1', '2', 'C', 'E', 'Z'], ['E', 'Z'], ['1', '2', 'C', 'Z'], ['E', 'Z'], ['T', 'D', 'C', 'Z']]);
  for (const i of [0, 1, 3]) t.equal(errorFields(answers[i]!.find((m) => m.type === 'E')!.body).C, '42501', `answer ${i} is its refusal`);
  t.equal(await rows('select string_agg(id::text, \',\') from items where id in (43, 44)'), '44', 'only the batch with nothing refused committed');
});

t.test('a refused Query that opens a transaction block leaves it open and aborted, as its failure would', async (t) => {
  const raw = await rawLogin(port, agentToken);
  t.teardown(() => raw.socket.destroy());
  const query = (sql: string) => typed('Q', `${sql}\0`);
  raw.send(query("/* a script */ begin; INSERT INTO items VALUES (45, 'x'); DROP TABLE victim"));
  const refused = await readUntil(raw);
  t.same(refused.map((m) => m.type), ['E', 'Z'], 'the refusal alone: no reply to a BEGIN the client did not see run');
  t.equal(errorFields(refused[0]!.body).C, '42501');
  t.equal(refused[1]!.body.toString('latin1'), 'E', 'in a failed transaction block');
  raw.send(query("INSERT INTO items VALUES (46, 'y')"));
  t.equal(errorFields((await readUntil(raw)).find((m) => m.type === 'E')!.body).C, '25P02', 'what follows does not run on its own');
  raw.send(query('COMMIT'));
  const commit = await readUntil(raw);
  t.equal(commit.find((m) => m.type === 'C')?.body.toString('latin1'), 'ROLLBACK\0');
  t.equal(await rows('select count(*) from items where id in (45, 46)'), '0');

  // One that opens and ends a block before the refused statement leaves none open.
  raw.send(query('BEGIN; SELECT 1; COMMIT; DROP TABLE victim'));
  t.equal((await readUntil(raw)).at(-1)!.body.toString('latin1'), 'I');
  // Read as the server reads them: comments between the words, a chained COMMIT, a ROLLBACK to a savepoint.
  for (const [sql, status] of [
    ['START/* a */TRANSACTION --b\n READ ONLY; SELECT 1; DROP TABLE victim', 'E'],
    ['BEGIN; COMMIT AND CHAIN; DROP TABLE victim', 'E'],
    ['BEGIN; COMMIT AND NO CHAIN; DROP TABLE victim', 'I'],
    ['BEGIN; SAVEPOINT s; ROLLBACK WORK TO s; DROP TABLE victim', 'E'],
  ] as const) {
    raw.send(query(sql));
    const replies = await readUntil(raw);
    t.equal(errorFields(replies.find((m) => m.type === 'E')!.body).C, '42501', sql);
    t.equal(replies.at(-1)!.body.toString('latin1'), status, `${sql}: ${status}`);
    if (status === 'E') {
      raw.send(query('ROLLBACK'));
      await readUntil(raw);
    }
  }
});

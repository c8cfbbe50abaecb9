/**
 * Column masking rules select by a column's table of origin (RowDescription's
 * table OID and attribute number, resolved against the session's catalogue
 * snapshot), so an alias does not escape them and a same-named column of
 * another table is not masked; where the origin is unknown (expressions,
 * views, partitions, tables newer than the session) the column's name
 * decides, with any table. Real PostgreSQL, node-postgres through Sluice.
 */
import t from 'tap';
import pg from 'pg';
import { startPostgres } from '../helpers/postgres.js';
import { startGateway, pgTargetYaml } from '../helpers/gateway.js';
import { RawPg, errorFields, rawLogin, startupPacket, typed } from '../helpers/raw-pg.js';

const SECRET = 'pbkdf2$column-origin-canary';
const TOKEN = 'vault-token-canary';
const SSN = '078-05-1120';

const pgServer = await startPostgres();
t.teardown(() => pgServer.stop());

const fixture = `
create table users (id int primary key, password_hash text, bio text);
create table orders (id int primary key, password_hash text);
insert into users values (1, '${SECRET}', 'likes tea');
insert into orders values (1, 'order-pw-visible');
create schema vault;
create table vault.secrets (token text);
create table public.secrets (token text);
insert into vault.secrets values ('${TOKEN}');
insert into public.secrets values ('public-token-visible');
create table people (id int, ssn text) partition by range (id);
create table people_a partition of people for values from (0) to (100);
insert into people values (1, '${SSN}');
create table staff (ssn text);
insert into staff values ('staff-ssn-visible');
create table cards (id int, number text);
insert into cards values (1, '4000-canary');
create view v_users as select password_hash from users;
create table cyr (id int, "пароль" text);
insert into cyr values (1, 'cyrillic-canary');
create view cyr_v as select "пароль" from cyr;
grant all on all tables in schema public, vault to app_user;
grant usage on schema vault to app_user;
grant create on schema public to app_user;
`;
await pgServer.psqlDirect(fixture, 'app');
// A second database where the gateway's user cannot read the catalogue.
await pgServer.psqlDirect('create database locked owner app_user', 'postgres');
await pgServer.psqlDirect(`${fixture} revoke select on pg_catalog.pg_class from public;`, 'locked');

const gw = await startGateway(
  `identity: { dev_issuer: true }
targets:${pgTargetYaml('db', pgServer)}${pgTargetYaml('locked', { ...pgServer, database: 'locked' })}
masking:
  rules:
    - { name: pw, columns: ['users.password_hash'], strategy: redact }
    - { name: vault-tokens, columns: ['vault.secrets.token'], strategy: redact }
    - { name: people-ssn, columns: ['people.ssn'], strategy: redact }
    - { name: all-of-cards, columns: ['cards.*'], strategy: redact }
    - { name: cyrillic, columns: ['cyr.пароль'], strategy: redact }
policies:
  - name: by-column
    subjects: { groups: [ci] }
    targets: [db, locked]
    masking: [pw, vault-tokens, people-ssn, cyrillic]
  - name: by-table
    subjects: { groups: [tables] }
    targets: [db]
    masking: [all-of-cards]
`,
  { TEST_PG_PASSWORD: pgServer.password },
);
t.teardown(() => gw.close());

/** Values as the server's text (a redacted int column arrives as text too), from the last of `sqls`, all run in one session. */
async function query(target: string, group: string, ...sqls: Array<string | pg.QueryConfig>): Promise<Array<Record<string, unknown>>> {
  const token = await gw.token(`${group}-job`, [group]);
  const c = new pg.Client({ host: '127.0.0.1', port: gw.port(target), user: 'job', database: 'app', password: token, types: { getTypeParser: () => (v: string) => v } });
  await c.connect();
  try {
    let rows: unknown[] = [];
    for (const sql of sqls) rows = (await c.query(sql)).rows;
    return rows as Array<Record<string, unknown>>;
  } finally {
    await c.end();
  }
}
const one = async (target: string, sql: string | pg.QueryConfig, group = 'ci'): Promise<Record<string, unknown>> => (await query(target, group, sql))[0]!;

t.test('a table column is masked whatever the query calls it', async (t) => {
  t.same(await one('db', 'select password_hash from users'), { password_hash: '[redacted]' });
  t.same(await one('db', 'select password_hash as p from users'), { p: '[redacted]' }, 'an alias does not escape the rule');
  t.same(await one('db', 'select u.password_hash as "ID", u.bio from users u'), { ID: '[redacted]', bio: 'likes tea' });
  t.same(await one('db', { text: 'select password_hash as x from users where id = $1', values: [1] }), { x: '[redacted]' }, 'extended protocol');
  const binary = await one('db', { text: 'select password_hash as x from users', values: [], binary: true } as pg.QueryConfig);
  t.equal(String(binary.x), '[redacted]', 'binary format');
});

t.test('a non-ASCII column name matches its rule in any client_encoding the server converts to', async (t) => {
  const token = await gw.token('ci-job', ['ci']);
  for (const encoding of ['UTF8', 'WIN1251', 'KOI8R']) {
    // The server sends column names, and the catalogue's rows, in the client's encoding: Sluice reads them in it.
    const raw = await rawLogin(gw.port('db'), token, { user: 'raw', database: 'app', client_encoding: encoding });
    const values = async (sql: string): Promise<string[]> => {
      raw.send(typed('Q', `${sql}\0`));
      const out: string[] = [];
      for (let m = await raw.read(); m; m = await raw.read()) {
        if (m.type === 'D') out.push(m.body.toString('latin1'));
        if (m.type === 'Z') break;
      }
      return out;
    };
    const byOrigin = await values('select * from cyr');
    t.ok(byOrigin.length === 1 && byOrigin[0]!.includes('[redacted]') && !byOrigin[0]!.includes('cyrillic-canary'), `${encoding}: masked by the column's table of origin`);
    const byName = await values('select * from cyr_v');
    t.ok(byName.length === 1 && byName[0]!.includes('[redacted]') && !byName[0]!.includes('cyrillic-canary'), `${encoding}: masked by its name, where the origin is a view`);
    raw.send(typed('X', ''));
  }
});

t.test('a column of the same name in another table is not masked', async (t) => {
  t.same(await one('db', 'select password_hash from orders'), { password_hash: 'order-pw-visible' });
  t.same(await one('db', 'select u.password_hash, o.password_hash as opw from users u join orders o using (id)'), {
    password_hash: '[redacted]',
    opw: 'order-pw-visible',
  });
  t.same(await one('db', 'select token from vault.secrets'), { token: '[redacted]' }, 'schema-qualified selector');
  t.same(await one('db', 'select token from public.secrets'), { token: 'public-token-visible' }, 'same table name, other schema');
  t.same(await one('db', 'select ssn from staff'), { ssn: 'staff-ssn-visible' });
});

t.test('where the origin is unknown, the column name decides (when in doubt, mask)', async (t) => {
  t.same(await one('db', "select password_hash || '' as password_hash from orders"), { password_hash: '[redacted]' }, 'a computed column named like a selector');
  t.same(await one('db', 'select password_hash from v_users'), { password_hash: '[redacted]' }, 'a view');
  t.same(await one('db', 'select ssn from people'), { ssn: '[redacted]' }, 'a partitioned table');
  t.same(await one('db', 'select ssn from people_a'), { ssn: '[redacted]' }, 'one of its partitions, queried directly');
  const rows = await query('db', 'ci', 'create table users_copy as select id, password_hash from orders', 'select password_hash from users_copy');
  t.same(rows, [{ password_hash: '[redacted]' }], 'a table created after the session started');
  await pgServer.psqlDirect('drop table users_copy', 'app');
});

t.test('a table-wide selector masks that table only, and computed columns', async (t) => {
  t.same(await one('db', 'select * from cards', 'tables'), { id: '[redacted]', number: '[redacted]' });
  t.same(await one('db', 'select id, password_hash from orders', 'tables'), { id: '1', password_hash: 'order-pw-visible' });
  t.same(await one('db', 'select 40 + 2 as answer', 'tables'), { answer: '[redacted]' }, 'no origin: it could be computed from cards');
});

t.test('a catalogue the gateway cannot read: the session is refused, not matched by name alone', async (t) => {
  const token = await gw.token('ci-job', ['ci']);
  const c = new pg.Client({ host: '127.0.0.1', port: gw.port('locked'), user: 'job', database: 'app', password: token });
  const err = (await c.connect().then(
    () => undefined,
    (e: unknown) => e,
  )) as (Error & { code?: string; hint?: string }) | undefined;
  await c.end().catch(() => {});
  t.ok(err, 'connect fails');
  t.equal(err?.code, 'XX000');
  t.match(err?.message, /masking could not be prepared for this session \(correlation id [^)]+\)/);
  t.ok(
    gw.logs.some((l) => l.includes('SLUICE_MASKING_FAILED') && l.includes('42501') && l.includes('pg_catalog.pg_class')),
    'the log says what the server refused and what to grant',
  );
});

// The same masking with the audit trail off and no rules: no statement gate in front, the relay
// itself tells the masker what goes upstream.
const ungated = await startGateway(
  `identity: { dev_issuer: true }
audit: { enabled: false }
targets:${pgTargetYaml('db', pgServer)}
masking:
  rules:
    - { name: pw, columns: ['users.password_hash'], strategy: redact }
policies:
  - name: by-column
    subjects: { groups: [ci] }
    targets: [db]
    masking: [pw]
`,
  { TEST_PG_PASSWORD: pgServer.password },
);
t.teardown(() => ungated.close());

for (const [label, gateway] of [['with the statement gate', gw], ['without a gate (audit off, no rules)', ungated]] as const) {
t.test(`rows are masked by their own portal's description, however the client orders Bind and Describe (${label})`, async (t) => {
  const raw = await rawLogin(gateway.port('db'), await gateway.token('ci-job', ['ci']));
  const cstr = (s: string) => `${s}\0`;
  const parse = (name: string, sql: string) => typed('P', `${cstr(name)}${cstr(sql)}\0\0`);
  const bind = (portal: string, statement: string) => typed('B', `${cstr(portal)}${cstr(statement)}\0\0\0\0\0\0`);
  // Bind B (the password hash), Bind A (two harmless texts), Describe A, Execute B: the server
  // describes A and sends B's rows. Read by A's description they would pass unmasked.
  raw.send(
    Buffer.concat([
      parse('sb', 'select password_hash from users where id = 1'),
      parse('sa', "select 'x'::text as harmless"),
      bind('b', 'sb'),
      bind('a', 'sa'),
      typed('D', `P${cstr('a')}`),
      typed('E', `${cstr('b')}\0\0\0\0`),
      typed('S', ''),
    ]),
  );
  const got: Buffer[] = [];
  let fatal: Record<string, string> | undefined;
  for (let m = await raw.read(); m; m = await raw.read()) {
    got.push(m.body);
    if (m.type === 'E') fatal = errorFields(m.body);
    if (m.type === 'Z') break;
  }
  raw.socket.destroy();
  t.notOk(Buffer.concat(got).includes(Buffer.from(SECRET)), 'the hash never reaches the client');
  t.equal(fatal?.C, '0A000', 'rows with no description of their own, under column rules: refused');
  t.match(fatal?.M, /without a matching RowDescription/);
});
}

for (const [label, gateway] of [['with the statement gate', gw], ['without a gate', ungated]] as const) {
  t.test(`queries pipelined behind the password, the last split across writes, are all answered (${label})`, async (t) => {
    const raw = await RawPg.connect(gateway.port('db'));
    raw.send(startupPacket({ user: 'job', database: 'app' }));
    t.equal((await raw.read())?.type, 'R');
    const q1 = typed('Q', 'select password_hash from users where id = 1\0');
    const q2 = typed('Q', "select 'second' as s\0");
    raw.send(Buffer.concat([typed('p', `${await gateway.token('ci-job', ['ci'])}\0`), q1, q2.subarray(0, 3)]));
    await new Promise((r) => setTimeout(r, 300));
    raw.send(q2.subarray(3));
    const seen: string[] = [];
    let ready = 0;
    for (let m = await raw.read(); m && ready < 3; m = await raw.read()) {
      if (m.type === 'D') seen.push(m.body.subarray(6).toString('utf8'));
      if (m.type === 'E') t.fail(`error: ${JSON.stringify(errorFields(m.body))}`);
      if (m.type === 'Z' && ++ready === 3) break;
    }
    t.same(seen, ['[redacted]', 'second'], 'both answered, the hash masked');
    raw.socket.destroy();
  });
}

for (const [label, gateway] of [['with the statement gate', gw], ['without a gate', ungated]] as const) {
  t.test(`a batch that fails before the client has sent all of it keeps the session's descriptions (${label})`, async (t) => {
    const raw = await rawLogin(gateway.port('db'), await gateway.token('ci-job', ['ci']));
    t.teardown(() => raw.socket.destroy());
    const bindExecute = Buffer.concat([typed('B', '\0\0\0\0\0\0\0\0'), typed('E', '\0\0\0\0\0')]);
    // A pipelining client (libpq's pipeline mode, psycopg): the error comes back on a Flush, and the
    // rest of the batch, which the server skips, is sent after it.
    raw.send(Buffer.concat([typed('P', '\0SELECT 1/0\0\0\0'), bindExecute, typed('H', '')]));
    let m = await raw.read();
    while (m && m.type !== 'E') m = await raw.read();
    t.equal(errorFields(m!.body).C, '22012');
    raw.send(Buffer.concat([typed('P', '\0SELECT 2\0\0\0'), bindExecute, typed('S', '')]));
    for (m = await raw.read(); m && m.type !== 'Z'; m = await raw.read()) t.not(m.type, 'E', 'the rest is skipped, not refused');
    raw.send(typed('Q', 'select password_hash from users where id = 1\0'));
    const rows: string[] = [];
    for (m = await raw.read(); m && m.type !== 'Z'; m = await raw.read()) {
      if (m.type === 'E') t.fail(`error: ${JSON.stringify(errorFields(m.body))}`);
      if (m.type === 'D') rows.push(m.body.subarray(6).toString('utf8'));
    }
    t.same(rows, ['[redacted]'], 'the next query is read by its own description, and masked');
  });
}

t.test('without a gate, a FunctionCall does not cost the session its descriptions', async (t) => {
  const raw = await rawLogin(ungated.port('db'), await ungated.token('ci-job', ['ci']));
  // FunctionCall of pg_backend_pid() (OID 2026): no argument formats, no arguments, text result.
  raw.send(typed('F', Buffer.from([0, 0, 0x07, 0xea, 0, 0, 0, 0, 0, 0])));
  const reply: string[] = [];
  for (let m = await raw.read(); m; m = await raw.read()) {
    reply.push(m.type);
    if (m.type === 'Z') break;
  }
  t.same(reply, ['V', 'Z']);
  raw.send(typed('Q', 'select password_hash from users where id = 1\0'));
  const rows: string[] = [];
  for (let m = await raw.read(); m; m = await raw.read()) {
    if (m.type === 'D') rows.push(m.body.subarray(6).toString('utf8'));
    if (m.type === 'E') t.fail(`error: ${JSON.stringify(errorFields(m.body))}`);
    if (m.type === 'Z') break;
  }
  t.same(rows, ['[redacted]'], 'the next query is masked by its own description, not refused');
  raw.socket.destroy();
});

t.test('without a gate, the usual extended-protocol flow is masked by its description', async (t) => {
  const token = await ungated.token('ci-job', ['ci']);
  const c = new pg.Client({ host: '127.0.0.1', port: ungated.port('db'), user: 'job', database: 'app', password: token });
  await c.connect();
  try {
    const r = await c.query({ text: 'select password_hash, bio from users where id = $1', values: [1] });
    t.same(r.rows, [{ password_hash: '[redacted]', bio: 'likes tea' }]);
  } finally {
    await c.end();
  }
});


/**
 * Real PostgreSQL clients through Sluice against a real PostgreSQL:
 * psql, pgbench and node-postgres, with the token as the password and the
 * stored credential upstream.
 */
import t from 'tap';
import { connect } from 'node:net';
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { pipeline } from 'node:stream/promises';
import { Readable } from 'node:stream';
import pg from 'pg';
import { from as copyFrom, to as copyTo } from 'pg-copy-streams';
import { startPgGateway } from '../helpers/gateway.js';
import { run } from '../helpers/process.js';
import { cancelRequest } from '../../protocols/postgres/messages.js';

const { pg: pgServer, gw } = await startPgGateway(t);

const token = await gw.token('ci-job-42', ['ci']);
const port = gw.port('app-db');
const env = {
  PGHOST: '127.0.0.1',
  PGPORT: String(port),
  PGUSER: 'ci-job-42',
  PGDATABASE: 'app',
  PGPASSWORD: token,
  PGSSLMODE: 'disable',
  PGCONNECT_TIMEOUT: '10',
  PGAPPNAME: 'sluice-tests',
};
const psql = (args: string[], input?: string) => run('psql', ['-X', '-v', 'ON_ERROR_STOP=0', ...args], { env, ...(input !== undefined ? { input } : {}) });
const newClient = () =>
  new pg.Client({ host: '127.0.0.1', port, user: 'ci-job-42', database: 'app', password: token, application_name: 'node-pg' });

t.test('psql', async (t) => {
  t.test('runs as the stored upstream role, not the startup user', async (t) => {
    const r = await psql(['-At', '-c', 'select current_user, current_database(), current_setting($$application_name$$)']);
    t.equal(r.code, 0, r.stderr);
    t.equal(r.stdout.trim(), `${pgServer.user}|app|sluice-tests`);
  });

  t.test('multi-statement query message', async (t) => {
    const r = await psql(['-At', '-c', "create table multi(a int, b text); insert into multi values (1,'x'),(2,'y'); select count(*) from multi"]);
    t.equal(r.code, 0, r.stderr);
    // psql 15 prints the result of every statement of a multi-statement -c.
    t.equal(r.stdout.trim(), 'CREATE TABLE\nINSERT 0 2\n2');
  });

  t.test('errors mid-transaction keep the session usable', async (t) => {
    const script = [
      'begin;',
      'create table txn(a int);',
      'insert into txn values (1);',
      'select 1/0;',
      'select 42;',
      'rollback;',
      "select 'after-rollback', count(*) from pg_tables where tablename = 'txn';",
    ].join('\n');
    const r = await psql(['-At'], script);
    t.equal(r.code, 0);
    t.match(r.stderr, /division by zero/);
    t.match(r.stderr, /current transaction is aborted/);
    t.match(r.stdout, /after-rollback\|0/);
  });

  t.test('\\copy both ways', async (t) => {
    const dir = mkdtempSync(join(tmpdir(), 'sluice-copy-'));
    t.teardown(() => rmSync(dir, { recursive: true, force: true }));
    const rows = Array.from({ length: 5000 }, (_, i) => `${i},"name ${i}, with comma",${i % 7 === 0 ? '' : `note ${i}`}`);
    writeFileSync(join(dir, 'in.csv'), rows.join('\n') + '\n');
    let r = await psql(['-c', 'create table copied(id int primary key, name text, note text)']);
    t.equal(r.code, 0, r.stderr);
    r = await psql(['-c', `\\copy copied from '${join(dir, 'in.csv')}' csv`]);
    t.equal(r.code, 0, r.stderr);
    t.match(r.stdout, /COPY 5000/);
    r = await psql(['-c', `\\copy (select * from copied order by id) to '${join(dir, 'out.csv')}' csv`]);
    t.equal(r.code, 0, r.stderr);
    t.equal(readFileSync(join(dir, 'out.csv'), 'utf8'), readFileSync(join(dir, 'in.csv'), 'utf8'));
  });

  t.test('SIGINT cancels a running statement through the gateway', async (t) => {
    const { spawn } = await import('node:child_process');
    const child = spawn('psql', ['-X', '-c', 'select pg_sleep(30)'], { env: { ...process.env, ...env } });
    let stderr = '';
    child.stderr.on('data', (c: Buffer) => (stderr += c.toString()));
    await waitFor(async () => (await activeQueries('pg_sleep(30)')) > 0);
    const started = Date.now();
    child.kill('SIGINT');
    const code = await new Promise<number | null>((resolve) => child.on('close', resolve));
    t.not(code, 0);
    t.match(stderr, /canceling statement due to user request/);
    t.ok(Date.now() - started < 25_000, 'the statement ended well before its 30 s sleep');
  });
});

t.test('pgbench', async (t) => {
  const base = ['-h', '127.0.0.1', '-p', String(port), '-U', 'ci-job-42'];
  const init = await run('pgbench', [...base, '-i', '-s', '1', '-q', 'app'], { env });
  t.equal(init.code, 0, init.stderr);
  for (const mode of ['simple', 'extended', 'prepared']) {
    t.test(`-M ${mode}`, async (t) => {
      const r = await run('pgbench', [...base, '-n', '-M', mode, '-c', '4', '-j', '2', '-t', '200', 'app'], { env });
      t.equal(r.code, 0, r.stderr);
      t.match(r.stdout, /number of transactions actually processed: 800\/800/);
      t.match(r.stdout, /number of failed transactions: 0/);
    });
  }
  t.test('-C reconnects for every transaction', async (t) => {
    const r = await run('pgbench', [...base, '-n', '-S', '-C', '-c', '2', '-j', '2', '-t', '50', 'app'], { env });
    t.equal(r.code, 0, r.stderr);
    t.match(r.stdout, /number of transactions actually processed: 100\/100/);
  });
});

t.test('node-postgres', async (t) => {
  t.test('queries, parameters and prepared statements', async (t) => {
    const client = newClient();
    await client.connect();
    t.teardown(() => client.end());
    const simple = await client.query('select 1 as one, $$text$$ as two');
    t.same(simple.rows, [{ one: 1, two: 'text' }]);
    const param = await client.query('select $1::int + $2::int as sum', [40, 2]);
    t.equal(param.rows[0].sum, 42);
    await client.query('create table people(id serial primary key, name text not null)');
    for (const name of ['ada', 'grace', 'edsger']) {
      await client.query({ name: 'insert-person', text: 'insert into people(name) values ($1) returning id', values: [name] });
    }
    const prepared = await client.query({ name: 'count-people', text: 'select count(*)::int as n from people where name <> $1', values: ['nobody'] });
    t.equal(prepared.rows[0].n, 3);
    await t.rejects(client.query('insert into people(name) values (null)'), { code: '23502' });
    const after = await client.query({ name: 'count-people', text: 'select count(*)::int as n from people where name <> $1', values: ['ada'] });
    t.equal(after.rows[0].n, 2, 'the prepared statement survives an error');
  });

  t.test('transactions commit and roll back', async (t) => {
    const client = newClient();
    await client.connect();
    t.teardown(() => client.end());
    await client.query('create table ledger(v int)');
    await client.query('begin');
    await client.query('insert into ledger values (1)');
    await client.query('rollback');
    await client.query('begin');
    await client.query('insert into ledger values (2)');
    await client.query('commit');
    const r = await client.query('select array_agg(v) as vs from ledger');
    t.same(r.rows[0].vs, [2]);
  });

  t.test('COPY FROM STDIN and COPY TO STDOUT', async (t) => {
    const client = newClient();
    await client.connect();
    t.teardown(() => client.end());
    await client.query('create table bulk(id int, payload text)');
    const lines = Array.from({ length: 20_000 }, (_, i) => `${i}\tpayload-${'x'.repeat(i % 50)}\n`);
    await pipeline(Readable.from(lines), client.query(copyFrom('copy bulk from stdin')));
    const count = await client.query('select count(*)::int as n from bulk');
    t.equal(count.rows[0].n, 20_000);
    const chunks: Buffer[] = [];
    const out = client.query(copyTo('copy (select * from bulk order by id) to stdout'));
    for await (const chunk of out) chunks.push(chunk as Buffer);
    t.equal(Buffer.concat(chunks).toString('utf8'), lines.join(''));
  });

  t.test('LISTEN/NOTIFY across two sessions', async (t) => {
    const listener = newClient();
    const notifier = newClient();
    await listener.connect();
    await notifier.connect();
    t.teardown(async () => {
      await listener.end();
      await notifier.end();
    });
    await listener.query('listen jobs');
    const got = new Promise<pg.Notification>((resolve) => listener.on('notification', resolve));
    await notifier.query("select pg_notify('jobs', 'build 7 done')");
    const n = await got;
    t.equal(n.channel, 'jobs');
    t.equal(n.payload, 'build 7 done');
  });

  t.test('CancelRequest with the key the client received', async (t) => {
    const client = newClient();
    await client.connect();
    t.teardown(() => client.end());
    const { processID, secretKey } = client as unknown as { processID: number; secretKey: number };
    const upstreamPid = (await client.query('select pg_backend_pid() as pid')).rows[0].pid as number;
    t.not(processID, upstreamPid, 'the client sees the gateway key, not the server pid');

    // A wrong secret is dropped: the statement finishes normally.
    const short = client.query('select pg_sleep(1.5) as slept');
    await waitFor(async () => (await activeQueries('pg_sleep(1.5)')) > 0);
    await sendCancel(port, processID, secretKey ^ 1);
    await t.resolves(short, 'a cancel with a wrong key does nothing');

    // Attach the expectation before the cancel: the rejection may arrive
    // before sendCancel's socket has even closed.
    const long = t.rejects(client.query('select pg_sleep(30)'), { code: '57014' });
    await waitFor(async () => (await activeQueries('pg_sleep(30)')) > 0);
    await sendCancel(port, processID, secretKey);
    await long;
    const after = await client.query('select 7 as n');
    t.equal(after.rows[0].n, 7, 'the session is usable after the cancel');
  });
});

async function activeQueries(fragment: string): Promise<number> {
  const out = await pgServer.psqlDirect(`select count(*) from pg_stat_activity where state = 'active' and query like '%${fragment.replace(/'/g, "''")}%' and pid <> pg_backend_pid()`);
  return Number(out.trim());
}

async function waitFor(check: () => Promise<boolean>, timeoutMs = 15_000): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  while (!(await check())) {
    if (Date.now() > deadline) throw new Error('condition not reached in time');
    await new Promise((r) => setTimeout(r, 50));
  }
}

function sendCancel(port: number, processId: number, secretKey: number): Promise<void> {
  return new Promise((resolve, reject) => {
    const socket = connect(port, '127.0.0.1', () => socket.end(cancelRequest(processId, secretKey)));
    socket.on('error', reject);
    socket.on('close', () => resolve());
    socket.resume();
  });
}

/**
 * Data masking through Sluice against a real PostgreSQL: canary values
 * seeded in tables come back masked on every channel (simple and extended
 * protocol, text and binary results, cursors, RETURNING, COPY, constraint
 * error details, RAISE NOTICE, NOTIFY), the rest is identical to a direct
 * connection, the same holds behind a relay that re-cuts the server's bytes,
 * and a huge field / large result to a slow reader keeps memory bounded.
 */
import t, { type Test } from 'tap';
import pg from 'pg';
import { to as copyTo } from 'pg-copy-streams';
import { startPostgres } from '../helpers/postgres.js';
import { startGateway, pgTargetYaml } from '../helpers/gateway.js';
import { startFaultRelay, type FaultRelay } from '../helpers/fault-relay.js';
import { rawLogin, typed } from '../helpers/raw-pg.js';

const CANARIES = {
  email: 'alice.canary@example.com',
  card: '4111 1111 1111 1111',
  aws: 'AKIAIOSFODNN7EXAMPLE',
  jwt: 'eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiJjYW5hcnkifQ.c2lnbmF0dXJlX2NhbmFyeQ',
  custom: 'CANARY-7F3A9B21',
  hashed: 'pbkdf2$canary-password-hash',
  ssn: '123-45-6789',
};
const canaryList = Object.values(CANARIES);

const pgServer = await startPostgres();
t.teardown(() => pgServer.stop());

await pgServer.psqlDirect(`
create table users (id int primary key, email text unique, card varchar(40), note text, password_hash text, ssn text, doc jsonb, blob bytea, n int);
insert into users values
  (1, '${CANARIES.email}', '${CANARIES.card}', 'key ${CANARIES.aws} and token ${CANARIES.jwt}', '${CANARIES.hashed}', '${CANARIES.ssn}',
   '{"contact": "${CANARIES.email}", "ref": "${CANARIES.custom}"}', convert_to('blob ${CANARIES.custom}', 'UTF8'), 42),
  (2, 'nobody', 'no card', 'plain note', '${CANARIES.hashed}', '000', '{"k": 1}', '\\x0001', 7);
create table plain (id int, label text, amount numeric, at timestamptz, flags bool[]);
insert into plain select i, 'label ' || i, i * 1.5, '2024-01-01'::timestamptz + i * interval '1 hour', array[i % 2 = 0] from generate_series(1, 500) i;
grant all on users, plain to app_user;
grant create on schema public to app_user;
`, 'app');

const relays: Record<string, FaultRelay> = {
  byte: await startFaultRelay(pgServer.port, { mode: 'byte' }),
  random: await startFaultRelay(pgServer.port, { mode: 'random', maxChunk: 61 }),
  coalesce: await startFaultRelay(pgServer.port, { mode: 'coalesce', coalesceMs: 30 }),
};
t.teardown(async () => {
  for (const r of Object.values(relays)) await r.close();
});

const viaRelay = (name: string, r: FaultRelay): string => pgTargetYaml(name, { ...pgServer, port: r.port });
const gw = await startGateway(
  // Recording off: the 2 GB result below would hit the 1 GiB recording cap (and fill the disk).
  `identity: { dev_issuer: true }
recording: { enabled: false }
targets:${pgTargetYaml('db', pgServer)}${viaRelay('db-byte', relays.byte!)}${viaRelay('db-random', relays.random!)}${viaRelay('db-coalesce', relays.coalesce!)}${pgTargetYaml('db-big', pgServer, { limits: '{ max_message_size: 256MiB }' })}
masking:
  hash_key_env: MASK_KEY
  rules:
    - { name: emails, detector: email, strategy: partial }
    - { name: cards, detector: credit_card, strategy: redact }
    - { name: aws, detector: aws_access_key_id, strategy: redact }
    - { name: jwts, detector: jwt, strategy: redact }
    - { name: custom, pattern: 'CANARY-[0-9A-F]{8}', strategy: redact }
    - { name: user-secrets, columns: ['users.password_hash', '*.ssn'], strategy: hash }
policies:
  - name: columns
    subjects: { groups: [ci] }
    targets: [db, db-byte, db-random, db-coalesce, db-big]
    masking: [emails, cards, aws, jwts, custom, user-secrets]
  - name: content-only
    subjects: { groups: [copy] }
    targets: [db, db-big]
    masking: [emails, cards, aws, jwts, custom]
`,
  { TEST_PG_PASSWORD: pgServer.password, MASK_KEY: 'a-test-hash-key-of-some-length-0123' },
);
t.teardown(() => gw.close());

const ciToken = await gw.token('ci-job', ['ci']);
const copyToken = await gw.token('copy-job', ['copy']);

function client(target: string, token = ciToken, extra: Partial<pg.ClientConfig> = {}): pg.Client {
  return new pg.Client({ host: '127.0.0.1', port: gw.port(target), user: 'ci-job', database: 'app', password: token, ...extra });
}
function direct(extra: Partial<pg.ClientConfig> = {}): pg.Client {
  return new pg.Client({ host: '127.0.0.1', port: pgServer.port, user: pgServer.user, database: 'app', password: pgServer.password, ...extra });
}
async function withClient<T>(c: pg.Client, f: (c: pg.Client) => Promise<T>): Promise<T> {
  await c.connect();
  try {
    return await f(c);
  } finally {
    await c.end().catch(() => {});
  }
}

function noCanary(t: Test, what: string, value: unknown): void {
  const text = typeof value === 'string' ? value : JSON.stringify(value, (_k, v: unknown) => (Buffer.isBuffer(v) ? v.toString('latin1') : v));
  for (const c of canaryList) t.notOk(text.includes(c), `${what}: ${c} does not reach the client`);
}

const USERS = 'select id, email, card, note, password_hash, ssn, doc, blob, n from users order by id';

t.test('simple protocol, text format', async (t) => {
  const r = await withClient(client('db'), (c) => c.query(USERS));
  noCanary(t, 'rows', r.rows);
  const [u1, u2] = r.rows as Array<Record<string, unknown>>;
  t.equal(u1!.email, 'a***@example.com', 'email partially masked');
  t.equal(u1!.card, '[redacted]');
  t.equal(u1!.note, 'key [redacted] and token [redacted]');
  t.match(u1!.password_hash, /^[0-9a-f]{16}$/, 'column rule: keyed hash');
  t.equal(u1!.password_hash, u2!.password_hash, 'equal inputs hash equally');
  t.same(u1!.doc, { contact: 'a***@example.com', ref: '[redacted]' }, 'json still parses');
  t.equal(u1!.n, 42, 'unmasked fields untouched');
  t.equal(u2!.email, 'nobody');
});

t.test('the audit event of a masked statement carries its counts per rule', async (t) => {
  const marker = 'select id, email, password_hash from users where id = 1 /* audit-masking */';
  const clean = 'select n from users where id = 1 /* audit-masking-clean */';
  await withClient(client('db'), async (c) => {
    await c.query(marker);
    await c.query(clean);
  });
  gw.gateway.services.audit.flush();
  const events = gw.gateway.services.store.queryAuditEvents({ subject: 'ci-job', limit: 1000 });
  const masked = events.find((e) => e.text.includes('/* audit-masking */'));
  t.ok(masked, 'the masked SELECT is audited');
  t.equal(masked?.masking?.emails, 1, 'one email masked by the emails rule');
  t.equal(masked?.masking?.['user-secrets'], 1, 'one value hashed by the column rule');
  t.notOk(masked?.masking && 'cards' in masked.masking, 'rules that did not fire are not listed');
  const plain = events.find((e) => e.text.includes('/* audit-masking-clean */'));
  t.ok(plain, 'the unmasked SELECT is audited');
  t.equal(plain?.masking, undefined, 'a statement with nothing masked carries no counts (none leak from the one before)');
});

t.test('extended protocol, text and binary formats', async (t) => {
  const text = await withClient(client('db'), (c) => c.query({ text: `${USERS.replace('order', 'where id > $1 order')}`, values: [0] }));
  noCanary(t, 'extended text rows', text.rows);
  const simple = await withClient(client('db'), (c) => c.query(USERS));
  t.same(text.rows, simple.rows, 'extended = simple');
  const bin = await withClient(client('db', ciToken, { binary: true } as Partial<pg.ClientConfig>), (c) =>
    c.query({ text: 'select email, card, note, password_hash, doc, blob from users where id = $1', values: [1] }),
  );
  noCanary(t, 'binary rows', bin.rows);
  const row = bin.rows[0] as Record<string, unknown>;
  t.ok(Buffer.isBuffer(row.email) || typeof row.email === 'string');
  t.ok(String(row.email).includes('a***@example.com'), 'binary text field masked');
  t.ok(String(row.blob).includes('[redacted]'), 'binary bytea masked');
  // A column rule on a column that arrives in a binary format sluice cannot read: refused, naming the column.
  const err = await withClient(client('db', ciToken, { binary: true } as Partial<pg.ClientConfig>), (c) =>
    c.query({ text: 'select $1::int as ssn', values: [7] }).then(
      () => undefined,
      (e: Error) => e,
    ),
  );
  t.match(err?.message, /column "ssn" is masked but was requested in binary format/);
  // An array in binary holds its elements' text inside its own framing: a hit there cannot be
  // rewritten in place, so the session ends rather than pass it (before, it passed unscanned).
  const arrayErr = await withClient(client('db', ciToken, { binary: true } as Partial<pg.ClientConfig>), (c) =>
    c.query({ text: 'select array_agg(email) as emails from users where id > $1', values: [0] }).then(
      (r) => (noCanary(t, 'binary array', r.rows), undefined),
      (e: Error) => e,
    ),
  );
  t.match(arrayErr?.message, /a value to mask was found in a binary field .* request text format/);
});

t.test('cursors and RETURNING', async (t) => {
  const rows = await withClient(client('db'), async (c) => {
    await c.query('begin');
    await c.query(`declare cur cursor for ${USERS}`);
    const a = await c.query('fetch 1 from cur');
    const b = await c.query('fetch 1 from cur');
    await c.query('commit');
    return [...a.rows, ...b.rows];
  });
  t.equal(rows.length, 2);
  noCanary(t, 'fetched rows', rows);
  const ret = await withClient(client('db'), async (c) => {
    const r = await c.query(`insert into users (id, email, note) values (10, 'bob.canary@example.org', '${CANARIES.aws}') returning email, note`);
    await c.query('delete from users where id = 10');
    return r.rows;
  });
  t.same(ret, [{ email: 'b***@example.org', note: '[redacted]' }]);
});

t.test('error details, notices and notifications', async (t) => {
  await withClient(client('db'), async (c) => {
    const err = (await c.query(`insert into users (id, email) values (99, '${CANARIES.email}')`).catch((e: unknown) => e)) as pg.DatabaseError;
    t.equal(err.code, '23505', 'the SQLSTATE is never masked');
    t.match(err.detail, /Key \(email\)=\(a\*\*\*@example\.com\) already exists/);
    noCanary(t, 'error', { m: err.message, d: err.detail });
    const notices: string[] = [];
    c.on('notice', (n) => notices.push(`${n.message} ${n.detail ?? ''}`));
    await c.query(`do $$ begin raise notice 'found % and %', '${CANARIES.email}', '${CANARIES.custom}' using detail = '${CANARIES.aws}'; end $$`);
    t.equal(notices.length, 1);
    t.equal(notices[0], 'found a***@example.com and [redacted] [redacted]');
    const payloads: string[] = [];
    c.on('notification', (n) => payloads.push(n.payload ?? ''));
    await c.query('listen ch');
    await c.query(`notify ch, 'card ${CANARIES.card}'`);
    await new Promise((r) => setTimeout(r, 50));
    t.same(payloads, ['card [redacted]']);
  });
});

t.test('COPY TO STDOUT', async (t) => {
  for (const format of ['text', 'csv']) {
    const out = await withClient(client('db', copyToken), async (c) => {
      const stream = c.query(copyTo(`copy (select email, note, doc from users order by id) to stdout with (format ${format})`));
      const chunks: Buffer[] = [];
      for await (const chunk of stream) chunks.push(chunk as Buffer);
      return Buffer.concat(chunks).toString('utf8');
    });
    noCanary(t, `COPY ${format}`, out);
    t.match(out, /a\*\*\*@example\.com/, `COPY ${format} masked`);
    t.match(out, /nobody/);
  }
  // Column rules cannot be applied to COPY data (no column names): refused.
  const err = await withClient(client('db'), async (c) => {
    const stream = c.query(copyTo('copy users to stdout'));
    try {
      for await (const _ of stream) void _;
      return undefined;
    } catch (e) {
      return e as Error;
    }
  });
  t.match(err?.message, /COPY TO STDOUT is refused/);
  const bin = await withClient(client('db', copyToken), async (c) => {
    const stream = c.query(copyTo('copy users to stdout with (format binary)'));
    try {
      for await (const _ of stream) void _;
      return undefined;
    } catch (e) {
      return e as Error;
    }
  });
  t.match(bin?.message, /binary COPY TO STDOUT cannot be masked/);
});

t.test('unmasked data is identical to a direct connection', async (t) => {
  const q = 'select * from plain order by id';
  const d = await withClient(direct(), (c) => c.query(q));
  const g = await withClient(client('db'), (c) => c.query(q));
  t.same(g.rows, d.rows);
  t.same(g.fields.map((f) => [f.name, f.dataTypeID, f.format]), d.fields.map((f) => [f.name, f.dataTypeID, f.format]));
  const db = await withClient(direct({ binary: true } as Partial<pg.ClientConfig>), (c) => c.query({ text: q, values: [] }));
  const gb = await withClient(client('db', ciToken, { binary: true } as Partial<pg.ClientConfig>), (c) => c.query({ text: q, values: [] }));
  t.same(gb.rows, db.rows, 'binary results too');
});

t.test('a relay that re-cuts the server bytes changes nothing', async (t) => {
  const queries = [USERS, 'select * from plain order by id', `select '${CANARIES.email} ' || repeat('x', 5000) as big, '${CANARIES.card}' as c`];
  const expected = await withClient(client('db'), async (c) => Promise.all(queries.map((q) => c.query(q).then((r) => r.rows))));
  for (const name of ['db-random', 'db-coalesce', 'db-byte']) {
    const got = await withClient(client(name), async (c) => {
      const out = [];
      for (const q of queries) out.push((await c.query(q)).rows);
      return out;
    });
    t.same(got, expected, `${name}: same rows`);
    noCanary(t, name, got);
  }
  // Many rows in one chunk: the coalescing relay delivers the whole result at once, which goes to the worker pool.
  const many = `select i, 'user' || i || '@example.com' as email, 'k ${CANARIES.aws}' as k from generate_series(1, 3000) i`;
  const a = await withClient(client('db-coalesce'), (c) => c.query(many));
  const b = await withClient(client('db'), (c) => c.query(many));
  t.same(a.rows, b.rows, 'pool-masked batch equals inline masking');
  t.equal((a.rows[4] as { email: string }).email, 'u***@example.com');
  noCanary(t, 'batch', a.rows);
});

/**
 * Sends a simple query on a raw connection and reads the whole answer
 * slowly (pausing the socket), keeping no more than a small tail: returns
 * bytes read, whether a canary was seen, and the gateway process's peak RSS.
 */
async function slowRead(port: number, token: string, sql: string, canary: string): Promise<{ bytes: number; sawCanary: boolean; sawMask: boolean; peakRss: number; error?: string }> {
  const raw = await rawLogin(port, token);
  const socket = raw.socket;
  socket.removeAllListeners('data');
  let bytes = 0;
  let tail = '';
  let sawCanary = false;
  let sawMask = false;
  let peakRss = process.memoryUsage().rss;
  let sinceCheck = 0;
  return new Promise((resolve, reject) => {
    const timer = setInterval(() => (peakRss = Math.max(peakRss, process.memoryUsage().rss)), 20);
    socket.on('data', (chunk: Buffer) => {
      bytes += chunk.length;
      sinceCheck += chunk.length;
      const text = tail + chunk.toString('latin1');
      if (text.includes(canary)) sawCanary = true;
      if (text.includes('a***@example.com')) sawMask = true;
      tail = text.slice(-64);
      if (sinceCheck > 8 * 1024 * 1024) {
        // A slow reader: stop reading for a while, so the gateway's writes back up.
        sinceCheck = 0;
        socket.pause();
        setTimeout(() => socket.resume(), 25);
      }
      // ReadyForQuery ('Z', length 5, status) ends the answer.
      if (/Z\0\0\0\x05[ITE]$/.test(tail)) {
        clearInterval(timer);
        socket.destroy();
        const err = /\0M([^\0]*)\0/.exec(tail);
        resolve({ bytes, sawCanary, sawMask, peakRss, ...(tail.includes('E\0') && err ? { error: err[1] } : {}) });
      }
    });
    socket.on('close', () => {
      clearInterval(timer);
      reject(new Error(`closed after ${bytes} bytes`));
    });
    socket.write(typed('Q', `${sql}\0`));
  });
}

t.test('a 200 MB field and a 2 GB result to a slow reader: bounded memory', async (t) => {
  global.gc?.();
  const base2 = process.memoryUsage().rss;
  const result = await slowRead(
    gw.port('db'),
    copyToken,
    `select i, repeat('lorem ipsum dolor ', 55) || case when i % 10000 = 0 then ' ${CANARIES.email}' else '' end as v from generate_series(1, 2000000) i`,
    CANARIES.email,
  );
  t.ok(result.bytes > 2_000_000_000, `read ${result.bytes} bytes`);
  t.notOk(result.sawCanary, 'no canary in 2 GB of rows');
  t.ok(result.sawMask);
  const growth = result.peakRss - base2;
  t.comment(`2 GB result: peak RSS ${(result.peakRss / 2 ** 20).toFixed(0)} MiB (+${(growth / 2 ** 20).toFixed(0)} MiB)`);
  t.ok(growth < 256 * 2 ** 20, 'result: memory growth under 256 MiB whatever the result size');
  global.gc?.();
  const base = process.memoryUsage().rss;
  const field = await slowRead(
    gw.port('db-big'),
    copyToken,
    `select repeat('lorem ipsum ', 17000000) || ' ${CANARIES.email} ' || repeat('dolor ', 10) as big`,
    CANARIES.email,
  );
  t.ok(field.bytes > 200_000_000, `read ${field.bytes} bytes`);
  t.notOk(field.sawCanary, 'the canary in the 200 MB field is masked');
  t.ok(field.sawMask, 'its masked form arrived');
  const fieldGrowth = field.peakRss - base;
  t.comment(`200 MB field: peak RSS ${(field.peakRss / 2 ** 20).toFixed(0)} MiB (+${(fieldGrowth / 2 ** 20).toFixed(0)} MiB over ${(base / 2 ** 20).toFixed(0)} MiB)`);
  // Stated bound: at most 6 x max_message_size (256 MiB) above the baseline for one huge field
  // (the assembled row, its copy to the worker, the worker's string and output, the result).
  t.ok(fieldGrowth < 6 * 256 * 2 ** 20, 'field: memory under 6 x max_message_size');

});

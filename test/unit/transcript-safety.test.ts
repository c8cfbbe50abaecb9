/**
 * What a transcript may show. It goes to an investigator's terminal:
 * nothing a client or a server put in a recording may reach it as a
 * control character. C1 controls (U+009B is a one-character CSI), bidi
 * overrides and ESC are shown escaped wherever they come from: a command
 * argument, a server's error, a PostgreSQL ErrorResponse's severity and
 * SQLSTATE fields, a footer's fields as read from a crafted file. And the
 * credentials a session sets after its login (a role's password, Redis's
 * requirepass, an ACL user's password) are withheld, as the audit trail
 * and approvers see them.
 */
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import t from 'tap';
import type { FooterBody } from '../../src/recording/format.js';
import { jsonLine, renderSummary, transcriptJson, transcriptText } from '../../src/recording/transcript.js';
import { writeRecording } from '../helpers/recordings.js';

const stateDir = mkdtempSync(join(tmpdir(), 'sluice-transcript-escapes-'));
t.teardown(() => rmSync(stateDir, { recursive: true, force: true }));

/** Any control character but the newline that ends each line, C1 controls, bidi overrides and isolates. */
// eslint-disable-next-line no-control-regex
const UNSAFE = /[\u0000-\u0009\u000b-\u001f\u007f-\u009f\u202a-\u202e\u2066-\u2069]/u;
const HOSTILE = '\u009b31m\u001b]52;c;ZXZpbA==\u0007\u202eevil';

const record = (protocol: 'redis' | 'postgres', chunks: ['client' | 'server', Buffer][]): Promise<string> => writeRecording(stateDir, protocol, chunks);

/** Wire fields of PostgreSQL messages: a NUL-terminated string, big-endian integers. */
const cstr = (s: string): Buffer => Buffer.from(`${s}\0`, 'utf8');
const int16 = (v: number): Buffer => Buffer.from([v >> 8, v & 255]);
const int32 = (v: number): Buffer => {
  const b = Buffer.alloc(4);
  b.writeInt32BE(v);
  return b;
};

/** An ErrorResponse with severity, SQLSTATE and message. */
function pgError(severity: string, code: string, message: string): Buffer {
  const field = (k: string, v: string): Buffer => Buffer.from(`${k}${v}\0`, 'utf8');
  return pgMessage('E', Buffer.concat([field('S', severity), field('V', severity), field('C', code), field('M', message), Buffer.alloc(1)]));
}

function pgMessage(type: string, body: Buffer): Buffer {
  const head = Buffer.alloc(5);
  head.write(type, 0, 'latin1');
  head.writeInt32BE(body.length + 4, 1);
  return Buffer.concat([head, body]);
}

t.test('Redis: a hostile argument and a hostile error reply', async (t) => {
  const arg = Buffer.from(HOSTILE, 'utf8');
  const cmd = Buffer.concat([Buffer.from(`*3\r\n$3\r\nSET\r\n$1\r\nk\r\n$${arg.length}\r\n`), arg, Buffer.from('\r\n')]);
  const path = await record('redis', [
    ['client', cmd],
    ['server', Buffer.concat([Buffer.from('-ERR '), arg, Buffer.from('\r\n')])],
  ]);
  const text = await transcriptText(path);
  t.match(text, /SET/, 'the command is in the transcript');
  t.match(text, /\\u009b31m/, 'the CSI is shown escaped');
  t.match(text, /\\u202eevil/, 'the bidi override is shown escaped');
  t.notMatch(text, UNSAFE, 'no control character reaches the terminal');
  const json = await transcriptJson(path);
  for (const e of json.events) t.notMatch(e.text, UNSAFE, `JSON event ${e.kind}: its text is escaped too`);
  const line = jsonLine({ value: HOSTILE });
  t.notMatch(line.slice(0, -1), UNSAFE, 'a --json line is safe on a terminal');
  t.same(JSON.parse(line), { value: HOSTILE }, 'and reads back as the same value');
});

t.test('Redis: a reply nested deeper than the display parser goes is shown as undecodable, and the stream goes on', async (t) => {
  const deep = Buffer.from(`${'*1\r\n'.repeat(65)}:1\r\n+OK\r\n`);
  const path = await record('redis', [
    ['client', Buffer.from('*1\r\n$4\r\nPING\r\n*1\r\n$4\r\nPING\r\n')],
    ['server', deep],
  ]);
  const { events } = await transcriptJson(path);
  const replies = events.filter((e) => e.dir === 'server');
  t.match(replies[0], { kind: 'undecodable', text: /not shown: RESP nesting deeper than 64/ });
  t.match(replies[1], { kind: 'reply', text: /OK/ }, 'the next reply is decoded');
});

t.test('a transcript can be capped in events; a huge record is decoded in slices', async (t) => {
  // 3 MiB of RESP3 nulls in one record: a million replies.
  const nulls = Buffer.from('_\r\n'.repeat(1024 * 1024));
  const path = await record('redis', [['server', nulls], ['server', Buffer.from('+OK\r\n')]]);
  const capped = await transcriptJson(path, { maxEvents: 10 });
  t.equal(capped.events.length, 11);
  t.match(capped.events[10], { dir: 'control', kind: 'cut', text: /transcript cut after 10 events/ });
  t.equal(capped.summary.records, 2, 'every record counted');
  t.equal(capped.summary.complete, true);
  const all = await transcriptJson(path);
  t.equal(all.events.length, 1024 * 1024 + 1, 'uncapped (the CLI streams): every reply');
});

t.test('PostgreSQL: an ErrorResponse whose severity and code are hostile', async (t) => {
  const field = (code: string, value: string): Buffer => Buffer.concat([Buffer.from(code), Buffer.from(value, 'utf8'), Buffer.alloc(1)]);
  const error = pgMessage('E', Buffer.concat([field('S', HOSTILE), field('V', 'ERROR'), field('C', `\u001b[2J${HOSTILE}`), field('M', HOSTILE), Buffer.alloc(1)]));
  const query = pgMessage('Q', Buffer.from(`SELECT '${HOSTILE}'\0`, 'utf8'));
  const path = await record('postgres', [
    ['client', query],
    ['server', error],
  ]);
  const text = await transcriptText(path);
  t.match(text, /ErrorResponse/, 'the error is in the transcript');
  t.notMatch(text, UNSAFE, 'no control character reaches the terminal');
});

t.test("a crafted footer's fields are shown as text", async (t) => {
  const footer = {
    endedAt: HOSTILE,
    closeReason: HOSTILE,
    bytesClientToGateway: HOSTILE,
    bytesGatewayToClient: { toString: () => HOSTILE },
  } as unknown as FooterBody;
  const text = renderSummary({ header: {} as never, footer, complete: true, truncated: false, records: 1, events: 0 });
  t.match(text, /^end: /);
  t.notMatch(text, UNSAFE);
});

function redisCommand(...args: string[]): Buffer {
  return Buffer.concat([Buffer.from(`*${args.length}\r\n`), ...args.map((a) => Buffer.from(`$${Buffer.byteLength(a)}\r\n${a}\r\n`))]);
}

t.test('Redis: credentials set after login are withheld; other arguments shown', async (t) => {
  const path = await record('redis', [
    ['client', redisCommand('CONFIG', 'SET', 'requirepass', 'hunter-config')],
    ['client', redisCommand('CONFIG', 'SET', 'maxmemory', '1gb', 'tls-key-file-pass', 'hunter-tls')],
    ['client', redisCommand('ACL', 'SETUSER', 'ci', 'on', '>hunter-acl', '~*')],
    ['client', redisCommand('MIGRATE', 'h', '6379', '', '0', '5000', 'AUTH', 'hunter-migrate', 'KEYS', 'k')],
    ['client', redisCommand('SET', 'password', 'shown-value')],
  ]);
  const text = await transcriptText(path);
  t.notMatch(text, /hunter-/, 'no credential is shown');
  t.match(text, /CONFIG "SET" "requirepass" \[withheld\]/);
  t.match(text, /CONFIG "SET" "maxmemory" "1gb" "tls-key-file-pass" \[withheld\]/, 'a TLS key passphrase too');
  t.match(text, /"on" \[withheld\] "~\*"/);
  t.match(text, /"AUTH" \[withheld\] "KEYS"/);
  t.match(text, /"password" "shown-value"/, 'a key named password is just a key');
});

t.test('PostgreSQL: a role or user mapping password is withheld, in a Query and as a bound parameter', async (t) => {
  const param = Buffer.from('hunter-bound');
  const path = await record('postgres', [
    ['client', pgMessage('Q', cstr("ALTER ROLE app PASSWORD 'hunter-query'"))],
    ['client', pgMessage('Q', cstr("CREATE USER MAPPING FOR app SERVER remote OPTIONS (user 'app', password 'hunter-mapping')"))],
    ['client', pgMessage('Q', cstr("ALTER SUBSCRIPTION s CONNECTION 'postgresql://app:hunter-uri@db.internal/app'"))],
    ['client', pgMessage('P', Buffer.concat([cstr('link'), cstr('SELECT dblink_connect($1)'), int16(0)]))],
    ['client', pgMessage('B', Buffer.concat([cstr(''), cstr('link'), int16(0), int16(1), int32(27), Buffer.from('host=h password=hunter-link'), int16(0)]))],
    ['client', pgMessage('Q', cstr('PREPARE c(text) AS SELECT dblink_connect($1)'))],
    ['client', pgMessage('Q', cstr("SELECT 1; EXECUTE c('hunter-execute')"))],
    ['client', pgMessage('Q', cstr("EXPLAIN EXECUTE c('hunter-explain')"))],
    // PostgreSQL keeps Parse's and PREPARE's names together: an SQL EXECUTE of a Parse, a Bind of a PREPARE.
    ['client', pgMessage('P', Buffer.concat([cstr('link2'), cstr('SELECT dblink_connect($1)'), int16(0)]))],
    ['client', pgMessage('Q', cstr("EXECUTE link2('hunter-parse-exec')"))],
    ['client', pgMessage('Q', cstr('PREPARE sqlc(text) AS SELECT dblink_connect($1)'))],
    ['client', pgMessage('B', Buffer.concat([cstr(''), cstr('sqlc'), int16(0), int16(1), int32(15), Buffer.from('hunter-sql-bind'), int16(0)]))],
    // A Parse the parser cannot read (the gate refused it); the client sends its Bind all the same.
    ['client', pgMessage('P', Buffer.concat([cstr('bad'), cstr('SELECT dblink_connect($1) oops'), int16(0)]))],
    ['client', pgMessage('B', Buffer.concat([cstr(''), cstr('bad'), int16(0), int16(1), int32(15), Buffer.from('hunter-unparsed'), int16(0)]))],
    ['client', pgMessage('Q', cstr('SELECT password FROM users'))],
    ['client', pgMessage('P', Buffer.concat([cstr('setpw'), cstr('ALTER ROLE app PASSWORD $1'), int16(0)]))],
    ['client', pgMessage('B', Buffer.concat([cstr(''), cstr('setpw'), int16(0), int16(1), int32(param.length), param, int16(0)]))],
    ['client', pgMessage('C', Buffer.concat([Buffer.from('S'), cstr('setpw')]))],
    ['client', pgMessage('P', Buffer.concat([cstr('setpw'), cstr('SELECT $1::text'), int16(0)]))],
    ['client', pgMessage('B', Buffer.concat([cstr(''), cstr('setpw'), int16(0), int16(1), int32(5), Buffer.from('plain'), int16(0)]))],
  ]);
  const text = await transcriptText(path);
  t.notMatch(text, /hunter-/, 'no password is shown');
  t.match(text, /Query ALTER ROLE app PASSWORD \[redacted\]/);
  t.match(text, /Query ALTER SUBSCRIPTION s CONNECTION 'postgresql:\/\/app: \[redacted\]/, 'a connection URI is cut at its password');
  t.match(text, /Parse statement "link": SELECT dblink_connect\( \[redacted\]/, "a dblink call's arguments are never shown");
  t.match(text, /Query SELECT 1; EXECUTE c\( \[redacted\]/, 'an SQL EXECUTE of a prepared dblink call loses its arguments');
  t.match(text, /Query CREATE USER MAPPING FOR app SERVER remote OPTIONS \(user 'app', password \[redacted\]/, "a user mapping's password too");
  t.match(text, /Query SELECT password FROM users/, 'a query that reads a password column is shown whole');
  t.equal(text.match(/params \[\[redacted\]\]/g)?.length, 4, "the role statement's parameter, the dblink connection string's, a PREPAREd one's and an unparsed one's");
  t.match(text, /Query EXPLAIN EXECUTE c\( \[redacted\]/, 'a plain EXPLAIN of such an EXECUTE too');
  t.match(text, /Query EXECUTE link2\( \[redacted\]/, 'an SQL EXECUTE of a statement prepared by Parse');
  t.match(text, /params \["plain"\]/, 'a statement of that name closed and parsed again is shown again');
});

t.test("PostgreSQL: the server's words about such a statement are withheld up to the ReadyForQuery of its batch", async (t) => {
  const query = (sql: string): Buffer => pgMessage('Q', cstr(sql));
  const parse = (name: string, sql: string): Buffer => pgMessage('P', Buffer.concat([cstr(name), cstr(sql), int16(0)]));
  const bind = (stmt: string, param: string): Buffer =>
    pgMessage('B', Buffer.concat([cstr(''), cstr(stmt), int16(0), int16(1), int32(Buffer.byteLength(param)), Buffer.from(param), int16(0)]));
  const execute = pgMessage('E', Buffer.concat([cstr(''), int32(0)]));
  const sync = pgMessage('S', Buffer.alloc(0));
  const ready = pgMessage('Z', Buffer.from('I'));
  const path = await record('postgres', [
    ['server', ready], // the login's
    ['client', query("CREATE SUBSCRIPTION s CONNECTION 'host=h password=hunter x' PUBLICATION p")],
    ['server', pgError('ERROR', '42601', 'invalid connection string syntax: missing "=" after "hunter-echo" in connection info string')],
    ['server', ready],
    ['client', query('SELECT nope')],
    ['server', pgError('ERROR', '42703', 'column "nope" does not exist')],
    ['server', ready],
    // Pipelined: two batches before any answer; the second one's statement is a dblink call.
    ['client', Buffer.concat([parse('', 'SELECT 1'), bind('', ''), execute, sync])],
    ['client', Buffer.concat([parse('link3', 'SELECT dblink_connect($1)'), bind('link3', 'hunter-pipe-param'), execute, sync])],
    ['server', ready],
    ['server', pgError('ERROR', '08001', 'could not establish connection: missing "=" after "hunter-pipe"')],
    ['server', ready],
    // A Bind of it in a later batch: its answer is withheld too.
    ['client', Buffer.concat([bind('link3', 'hunter-late'), execute, sync])],
    ['server', pgError('ERROR', '08001', 'could not establish connection: missing "=" after "hunter-late"')],
    ['server', ready],
    // Parsed again without a Close: the server refuses that Parse, and the name still runs the dblink call.
    ['client', Buffer.concat([parse('link3', 'SELECT $1::text'), sync])],
    ['server', pgError('ERROR', '42P05', 'prepared statement "link3" already exists')],
    ['server', ready],
    ['client', query("EXECUTE link3('hunter-reparse')")],
  ]);
  const text = await transcriptText(path);
  t.notMatch(text, /hunter/, 'no password, and no part of one, is shown');
  t.equal(text.match(/\[withheld: the statement it answers may carry a password\]/g)?.length, 3, "the server's words about the subscription, the pipelined call and the later Bind");
  t.match(text, /ErrorResponse ERROR 42601 \[withheld/, 'their SQLSTATE stays');
  t.match(text, /ErrorResponse ERROR 42703 column "nope" does not exist/, 'after its ReadyForQuery, errors are shown again');
  t.match(text, /ErrorResponse ERROR 42P05 prepared statement "link3" already exists/);
  t.match(text, /Query EXECUTE link3\( \[redacted\]/, 'a name parsed again without a Close still runs the first statement');
});

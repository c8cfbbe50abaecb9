import t, { type Test } from 'tap';
import net from 'node:net';
import { serialize } from 'pg-protocol';
import { Parser } from 'pg-protocol/dist/parser.js';
import type { BackendMessage, DataRowMessage, DatabaseError } from 'pg-protocol/dist/messages.js';
import { connectUpstream, sendCancelRequest, type UpstreamSession } from '../../protocols/postgres/upstream.js';
import type { PostgresUpstream, UpstreamTlsMode } from '../../src/config/types.js';
import { Secret } from '../../src/config/secret.js';
import { ErrorCodes, isSluiceError, type ErrorCode } from '../../src/errors.js';
import { startPostgres, type PgAuth, type PgServer } from '../helpers/postgres.js';

const TIMEOUT = { connectTimeoutMs: 5000 };

function target(pg: PgServer, over: Partial<PostgresUpstream> = {}): PostgresUpstream {
  return {
    host: pg.host,
    port: pg.port,
    database: pg.database,
    user: pg.user,
    password: new Secret(pg.password, 'test'),
    tls: 'disable',
    ...over,
  };
}

interface QueryResult {
  rows: string[][];
  error?: DatabaseError;
  status: string;
}

/** Sends a simple Query on a relay-ready session and collects the reply up to ReadyForQuery. */
function query(session: UpstreamSession, sql: string): Promise<QueryResult> {
  const { socket } = session;
  const parser = new Parser();
  const result: QueryResult = { rows: [], status: '' };
  return new Promise((resolve, reject) => {
    const onMessage = (msg: BackendMessage): void => {
      if (msg.name === 'dataRow') result.rows.push((msg as DataRowMessage).fields.map(String));
      else if (msg.name === 'error') result.error = msg as DatabaseError;
      else if (msg.name === 'readyForQuery') {
        result.status = (msg as BackendMessage & { status: string }).status;
        socket.off('data', onData);
        socket.off('error', reject);
        socket.pause();
        resolve(result);
      }
    };
    const onData = (chunk: Buffer): void => parser.parse(chunk, onMessage);
    socket.on('error', reject);
    if (session.leftover.length > 0) parser.parse(session.leftover, onMessage);
    session.leftover = Buffer.alloc(0);
    socket.on('data', onData);
    socket.resume();
    socket.write(serialize.query(sql));
  });
}

async function rejectsWith(t: Test, p: Promise<unknown>, code: ErrorCode): Promise<Error> {
  try {
    await p;
  } catch (err) {
    t.ok(isSluiceError(err, code), `rejects with ${code} (got ${(err as { code?: string }).code}: ${(err as Error).message})`);
    return err as Error;
  }
  t.fail(`expected rejection with ${code}`);
  return new Error('resolved');
}

/** Parses ParameterStatus frames back into a map (checks startupReply is well formed). */
function parameterStatuses(buf: Buffer): Map<string, string> {
  const out = new Map<string, string>();
  let off = 0;
  while (off < buf.length) {
    if (buf[off] !== 0x53) throw new Error(`startupReply holds a 0x${buf[off]!.toString(16)} message`);
    const len = buf.readInt32BE(off + 1);
    const [name, value] = buf.subarray(off + 5, off + 1 + len - 1).toString('utf8').split('\0');
    out.set(name!, value!);
    off += 1 + len;
  }
  return out;
}

const servers = new Map<string, PgServer>();
t.teardown(async () => {
  await Promise.all([...servers.values()].map((s) => s.stop()));
});

async function server(auth: PgAuth, ssl = false): Promise<PgServer> {
  const key = `${auth}/${ssl}`;
  let s = servers.get(key);
  if (!s) {
    s = await startPostgres({ auth, ssl });
    servers.set(key, s);
  }
  return s;
}

for (const auth of ['scram-sha-256', 'md5', 'password', 'trust'] as const) {
  t.test(`${auth}: authenticates and reaches ReadyForQuery`, async (t) => {
    // The TLS server uses scram-sha-256, so that mode shares it.
    const pg = await server(auth, auth === 'scram-sha-256');
    const session = await connectUpstream(
      target(pg),
      { application_name: 'sluice-test', client_encoding: 'LATIN1' },
      TIMEOUT,
    );
    t.teardown(() => session.socket.destroy());
    t.equal(session.transactionStatus, 'I'.charCodeAt(0));
    t.ok(session.backendKey.processId > 0, 'real backend pid');
    t.equal(session.socket.listenerCount('data'), 0, 'no data listener left');
    t.equal(session.socket.isPaused(), true, 'socket paused');
    const params = parameterStatuses(session.startupReply);
    t.equal(params.get('application_name'), 'sluice-test');
    t.equal(params.get('client_encoding'), 'LATIN1', "the client's encoding, not pg-protocol's UTF8");
    t.ok(params.has('server_version'));

    const res = await query(session, 'SELECT current_user, pg_backend_pid()');
    t.equal(res.error, undefined);
    t.same(res.rows, [['app_user', String(session.backendKey.processId)]]);
    t.equal(res.status, 'I');
  });
}

t.test('require_auth: a server asking for a method not listed is refused before anything is sent', async (t) => {
  const asked: Record<string, RegExp> = {
    md5: /asked for an MD5 password, which upstream\.require_auth \(scram-sha-256\) does not allow; nothing was sent/,
    password: /asked for the password in cleartext, which upstream\.require_auth \(scram-sha-256\) does not allow; nothing was sent/,
    trust: /let the login in without authentication \(trust\), which upstream\.require_auth \(scram-sha-256\) does not allow/,
  };
  for (const auth of ['scram-sha-256', 'md5', 'password', 'trust'] as const) {
    const pg = await server(auth, auth === 'scram-sha-256');
    const attempt = connectUpstream(target(pg, { requireAuth: ['scram-sha-256'] }), {}, TIMEOUT);
    if (auth === 'scram-sha-256') {
      const session = await attempt;
      t.ok(session.backendKey.processId > 0, 'scram-sha-256: logged in');
      session.socket.destroy();
      continue;
    }
    const err = await rejectsWith(t, attempt, ErrorCodes.UPSTREAM_AUTH_FAILED);
    t.match(err.message, asked[auth]!, `${auth}: refused`);
    t.notOk(err.message.includes(pg.password), 'the message has no password');
  }
  const scram = await server('scram-sha-256', true);
  const err = await rejectsWith(t, connectUpstream(target(scram, { requireAuth: ['md5', 'password'] }), {}, TIMEOUT), ErrorCodes.UPSTREAM_AUTH_FAILED);
  t.match(err.message, /asked for SASL \(SCRAM-SHA-256\), which upstream\.require_auth \(md5, password\) does not allow/);
  const md5 = await server('md5');
  const session = await connectUpstream(target(md5, { requireAuth: ['scram-sha-256', 'md5'] }), {}, TIMEOUT);
  t.ok(session.backendKey.processId > 0, 'md5, listed: logged in');
  session.socket.destroy();
});

t.test('wrong password: UPSTREAM_AUTH_FAILED without the password in the message', async (t) => {
  for (const auth of ['scram-sha-256', 'md5', 'password'] as const) {
    const pg = await server(auth, auth === 'scram-sha-256');
    const bad = 'not-the-right-password-x9';
    const err = await rejectsWith(
      t,
      connectUpstream(target(pg, { password: new Secret(bad, 'test') }), {}, TIMEOUT),
      ErrorCodes.UPSTREAM_AUTH_FAILED,
    );
    t.notMatch(err.message, bad, `${auth}: message does not carry the password`);
    t.notMatch(err.message, pg.password);
    t.match(err.message, /28P01/, `${auth}: message carries the SQLSTATE`);
    t.match(err.message, 'app_user');
  }
});

t.test('no password configured but one requested', async (t) => {
  const pg = await server('md5');
  const { password: _unused, ...noPassword } = target(pg);
  await rejectsWith(t, connectUpstream(noPassword, {}, TIMEOUT), ErrorCodes.UPSTREAM_AUTH_FAILED);
});

t.test('unknown database: UPSTREAM_CONNECT_FAILED with SQLSTATE 3D000', async (t) => {
  const pg = await server('trust');
  const err = await rejectsWith(t, connectUpstream(target(pg, { database: 'nope' }), {}, TIMEOUT), ErrorCodes.UPSTREAM_CONNECT_FAILED);
  t.match(err.message, /3D000/);
});

t.test('unreachable port: UPSTREAM_CONNECT_FAILED', async (t) => {
  const pg = await server('trust');
  // A port nobody listens on: a server's port after it stopped would race; use 1.
  await rejectsWith(t, connectUpstream(target(pg, { port: 1 }), {}, TIMEOUT), ErrorCodes.UPSTREAM_CONNECT_FAILED);
});

t.test('tls', async (t) => {
  const pg = await server('scram-sha-256', true);

  for (const tls of ['require', 'verify-full'] as const satisfies readonly UpstreamTlsMode[]) {
    t.test(`${tls} connects over TLS`, async (t) => {
      const session = await connectUpstream(target(pg, { tls, caFile: pg.caFile!, serverName: 'localhost' }), {}, TIMEOUT);
      t.teardown(() => session.socket.destroy());
      t.equal((session.socket as import('node:tls').TLSSocket).encrypted, true);
      const res = await query(session, 'SELECT current_user, ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()');
      t.same(res.rows, [['app_user', 't']]);
    });
  }

  t.test('verify-full checks the IP SAN when serverName is not set', async (t) => {
    const session = await connectUpstream(target(pg, { tls: 'verify-full', caFile: pg.caFile! }), {}, TIMEOUT);
    session.socket.destroy();
    t.pass();
  });

  t.test('verify-full with the wrong server name: UPSTREAM_TLS_FAILED', async (t) => {
    const err = await rejectsWith(
      t,
      connectUpstream(target(pg, { tls: 'verify-full', caFile: pg.caFile!, serverName: 'db.example.com' }), {}, TIMEOUT),
      ErrorCodes.UPSTREAM_TLS_FAILED,
    );
    t.match(err.message, 'db.example.com');
  });

  t.test('verify-full without the CA (system roots only): UPSTREAM_TLS_FAILED', async (t) => {
    await rejectsWith(
      t,
      connectUpstream(target(pg, { tls: 'verify-full', serverName: 'localhost' }), {}, TIMEOUT),
      ErrorCodes.UPSTREAM_TLS_FAILED,
    );
  });

  t.test('require against a server without TLS: UPSTREAM_TLS_FAILED', async (t) => {
    const plain = await server('trust');
    await rejectsWith(t, connectUpstream(target(plain, { tls: 'require' }), {}, TIMEOUT), ErrorCodes.UPSTREAM_TLS_FAILED);
  });
});

for (const tls of ['disable', 'require'] as const) {
  t.test(`sendCancelRequest cancels a running query (tls ${tls})`, async (t) => {
    const pg = await server('scram-sha-256', true);
    const up = target(pg, { tls });
    const session = await connectUpstream(up, {}, TIMEOUT);
    t.teardown(() => session.socket.destroy());
    const running = query(session, 'SELECT pg_sleep(30)');
    // Cancel only once the backend is really running the sleep, or the cancel could land before it.
    for (let i = 0; i < 200; i++) {
      const state = await pg.psqlDirect(
        `SELECT count(*) FROM pg_stat_activity WHERE pid = ${session.backendKey.processId} AND state = 'active' AND query LIKE '%pg_sleep%'`,
      );
      if (state.trim() === '1') break;
      await new Promise((r) => setTimeout(r, 25));
    }
    await sendCancelRequest(up, session.backendKey, TIMEOUT);
    const res = await running;
    t.equal(res.error?.code, '57014', 'query_canceled');
    t.equal(res.status, 'I');
  });
}

/**
 * Misbehaving servers, scripted: each answers the n-th chunk it receives
 * with `replies[n]`, keeps every chunk after them in `after`, and keeps the
 * connection open.
 */
async function scriptedServer(t: Test, replies: Buffer[]): Promise<{ port: number; after: Buffer[] }> {
  const after: Buffer[] = [];
  const sockets = new Set<net.Socket>();
  const srv = net.createServer((s) => {
    sockets.add(s);
    s.on('error', () => {});
    let n = 0;
    s.on('data', (chunk: Buffer) => {
      if (n < replies.length) s.write(replies[n]!);
      else after.push(chunk);
      n++;
    });
  });
  await new Promise<void>((resolve) => srv.listen(0, '127.0.0.1', resolve));
  t.teardown(() => {
    for (const s of sockets) s.destroy();
    srv.close();
  });
  return { port: (srv.address() as net.AddressInfo).port, after };
}

function fakeTarget(port: number, tls: UpstreamTlsMode): PostgresUpstream {
  return { host: '127.0.0.1', port, database: 'app', user: 'app_user', password: new Secret('pw', 'test'), tls };
}

t.test('hostile or broken servers', async (t) => {
  t.test('bytes after SSLRequest S are a protocol violation (CVE-2021-23222)', async (t) => {
    const { port } = await scriptedServer(t, [Buffer.from('SZ\0\0\0\x05I')]);
    await rejectsWith(t, connectUpstream(fakeTarget(port, 'require'), {}, TIMEOUT), ErrorCodes.UPSTREAM_PROTOCOL);
  });

  t.test('silent server: the connect timeout fires', async (t) => {
    const { port } = await scriptedServer(t, []);
    const err = await rejectsWith(t, connectUpstream(fakeTarget(port, 'disable'), {}, { connectTimeoutMs: 200 }), ErrorCodes.UPSTREAM_CONNECT_FAILED);
    t.match(err.message, /timed out/);
  });

  t.test('SCRAM-SHA-256-PLUS only: refused with a clear error', async (t) => {
    const body = Buffer.from('\0\0\0\x0aSCRAM-SHA-256-PLUS\0\0', 'latin1');
    const head = Buffer.alloc(5);
    head.write('R', 0, 'latin1');
    head.writeInt32BE(4 + body.length, 1);
    const { port } = await scriptedServer(t, [Buffer.concat([head, body])]);
    const err = await rejectsWith(t, connectUpstream(fakeTarget(port, 'disable'), {}, TIMEOUT), ErrorCodes.UPSTREAM_AUTH_FAILED);
    t.match(err.message, /SCRAM-SHA-256-PLUS/);
  });

  t.test('AuthenticationOk straight after SCRAM started is refused', async (t) => {
    // Server offers SCRAM, then on our SASLInitialResponse says OK without proving itself.
    const sasl = Buffer.from('R\0\0\0\x17\0\0\0\x0aSCRAM-SHA-256\0\0', 'latin1');
    const ok = Buffer.from('R\0\0\0\x08\0\0\0\0', 'latin1');
    const { port } = await scriptedServer(t, [sasl, ok]);
    await rejectsWith(t, connectUpstream(fakeTarget(port, 'disable'), {}, TIMEOUT), ErrorCodes.UPSTREAM_PROTOCOL);
  });

  t.test('a cleartext or MD5 request after SCRAM started is refused, and the password never sent', async (t) => {
    const sasl = Buffer.from('R\0\0\0\x17\0\0\0\x0aSCRAM-SHA-256\0\0', 'latin1');
    for (const [what, request] of [
      ['cleartext', Buffer.from('R\0\0\0\x08\0\0\0\x03', 'latin1')],
      ['md5', Buffer.from('R\0\0\0\x0c\0\0\0\x05salt', 'latin1')],
    ] as const) {
      const { port, after } = await scriptedServer(t, [sasl, request]);
      const err = await rejectsWith(t, connectUpstream(fakeTarget(port, 'disable'), {}, TIMEOUT), ErrorCodes.UPSTREAM_PROTOCOL);
      t.match(err.message, new RegExp(`${what === 'md5' ? 'MD5' : 'cleartext'} password requested after SCRAM started`));
      await new Promise((r) => setTimeout(r, 50));
      t.notOk(Buffer.concat(after).includes(Buffer.from('pw')), `${what}: nothing carrying the password was sent`);
    }
  });

  t.test('require_auth: scram-sha-256 and an impostor asking for the password in cleartext: it never gets it', async (t) => {
    const { port, after } = await scriptedServer(t, [Buffer.from('R\0\0\0\x08\0\0\0\x03', 'latin1')]);
    const err = await rejectsWith(t, connectUpstream({ ...fakeTarget(port, 'disable'), requireAuth: ['scram-sha-256'] }, {}, TIMEOUT), ErrorCodes.UPSTREAM_AUTH_FAILED);
    t.match(err.message, /asked for the password in cleartext, which upstream\.require_auth \(scram-sha-256\) does not allow; nothing was sent/);
    await new Promise((r) => setTimeout(r, 50));
    t.notOk(Buffer.concat(after).includes(Buffer.from('pw')), 'nothing carrying the password was sent');
  });

  t.test('a NUL in a startup parameter cannot smuggle another parameter', async (t) => {
    const { port } = await scriptedServer(t, []);
    await rejectsWith(
      t,
      connectUpstream(fakeTarget(port, 'disable'), { application_name: 'x\0user\0postgres' }, TIMEOUT),
      ErrorCodes.STARTUP_PARAMETER_REFUSED,
    );
  });
});

/**
 * A hostile or broken connection ends that connection alone. Twenty real
 * node-postgres sessions run query loops through the gateway while other
 * connections send garbage before and after authentication; every hostile
 * connection must be closed (with a FATAL 08P01 where the protocol leaves
 * room for one), and every honest session must finish without an error.
 * Then: a client that stops reading does not make the gateway buffer the
 * server's output, and a client's Terminate ends its upstream backend.
 */
import t from 'tap';
import { randomBytes } from 'node:crypto';
import { createServer, type AddressInfo, type Socket } from 'node:net';
import { connect as tlsConnect } from 'node:tls';
import pg from 'pg';
import { startPgGateway } from '../helpers/gateway.js';
import { RawPg, errorFields, rawLogin, startupPacket, typed } from '../helpers/raw-pg.js';

const { pg: pgServer, gw } = await startPgGateway(t);

const port = gw.port('app-db');
const token = await gw.token('robust-ci', ['ci']);

/** One short query through the gateway, as app_user in database app. */
async function viaGateway(sql: string): Promise<pg.QueryResult> {
  const c = new pg.Client({ host: '127.0.0.1', port, user: 'setup', database: 'app', password: token });
  await c.connect();
  try {
    return await c.query(sql);
  } finally {
    await c.end();
  }
}

await viaGateway('create table public.loop_log (client int, n int)');

// --- helpers ------------------------------------------------------------------

/** What a hostile connection got back: the first ErrorResponse's fields (if any) and whether the gateway closed it. */
interface Outcome {
  error: Record<string, string> | undefined;
  closed: boolean;
}

/** Reads until an ErrorResponse or the end of the connection, then waits for the close. */
async function outcome(c: RawPg): Promise<Outcome> {
  let error: Record<string, string> | undefined;
  try {
    const m = await c.readUntil('E', 15_000);
    if (m) error = errorFields(m.body);
    await c.waitClosed(15_000);
  } catch {
    // timed out: reported as not closed
  }
  const result = { error, closed: c.closed };
  c.close();
  return result;
}

/** A connection that has been asked for its password (the token), not yet sent. */
async function atPasswordRequest(): Promise<RawPg> {
  const c = await RawPg.connect(port);
  c.send(startupPacket({ user: 'hostile', database: 'app' }));
  const auth = await c.read();
  if (auth?.type !== 'R' || auth.body.readInt32BE(0) !== 3) throw new Error(`expected AuthenticationCleartextPassword, got ${auth?.type}`);
  return c;
}

function int32(n: number): Buffer {
  const b = Buffer.alloc(4);
  b.writeInt32BE(n | 0, 0);
  return b;
}

/** A typed header with an arbitrary (possibly absurd) length word and no body. */
function header(type: string, length: number): Buffer {
  return Buffer.concat([Buffer.from(type, 'latin1'), int32(length)]);
}

/** Random bytes whose first length word is negative, so any reading of them is a violation at once. */
function randomWithNegativeLength(n: number, lengthAt: number): Buffer {
  const b = randomBytes(n);
  b[lengthAt] = b[lengthAt]! | 0x80;
  return b;
}

/** The first flight of a real TLS client: a ClientHello, captured from node's TLS stack. */
async function captureClientHello(): Promise<Buffer> {
  return new Promise((resolve, reject) => {
    const srv = createServer((s: Socket) => {
      s.once('data', (chunk: Buffer) => {
        resolve(chunk);
        s.destroy();
        srv.close();
      });
    });
    srv.listen(0, '127.0.0.1', () => {
      const socket = tlsConnect({ host: '127.0.0.1', port: (srv.address() as AddressInfo).port, rejectUnauthorized: false });
      socket.on('error', () => {});
    });
    srv.on('error', reject);
  });
}

// --- the honest workload ---------------------------------------------------------

const SESSIONS = 20;
let stopLoops = false;
interface LoopResult {
  loops: number;
  errors: string[];
}

async function honestSession(id: number): Promise<LoopResult> {
  const result: LoopResult = { loops: 0, errors: [] };
  const client = new pg.Client({ host: '127.0.0.1', port, user: `honest-${id}`, database: 'app', password: token });
  client.on('error', (err) => result.errors.push(`client error: ${err.message}`));
  try {
    await client.connect();
    // At least a few loops each, and keep going while the hostile traffic lasts.
    while (!stopLoops || result.loops < 3) {
      const r = await client.query('select $1::int + 1 as n', [id]);
      if (r.rows[0].n !== id + 1) throw new Error(`wrong answer ${String(r.rows[0].n)}`);
      const rows = await client.query('select g, md5(g::text) from generate_series(1, 1000) g');
      if (rows.rowCount !== 1000) throw new Error(`expected 1000 rows, got ${rows.rowCount}`);
      await client.query('begin');
      await client.query('insert into public.loop_log values ($1, $2)', [id, result.loops]);
      const c = await client.query('select count(*)::int as c from public.loop_log where client = $1', [id]);
      if (c.rows[0].c !== result.loops + 1) throw new Error(`transaction saw ${String(c.rows[0].c)} rows`);
      await client.query('commit');
      result.loops++;
    }
  } catch (err) {
    result.errors.push(err instanceof Error ? err.message : String(err));
  } finally {
    await client.end().catch(() => {});
  }
  return result;
}

// --- the test ----------------------------------------------------------------------

t.test('random bytes and absurd lengths close that connection only while 20 other sessions keep working', async (t) => {
  const honest = Array.from({ length: SESSIONS }, (_, i) => honestSession(i));
  const clientHello = await captureClientHello();

  /** name -> [what to do, expected SQLSTATE or undefined when only a close is expected] */
  const preAuth: Array<[string, () => Promise<RawPg>, string | undefined]> = [
    ['random bytes (negative length word)', async () => {
      const c = await RawPg.connect(port);
      c.send(randomWithNegativeLength(512, 0));
      return c;
    }, '08P01'],
    ['random bytes then FIN', async () => {
      const c = await RawPg.connect(port);
      c.send(randomBytes(300));
      c.socket.end();
      return c;
    }, undefined],
    ['startup length 0x7fffffff', async () => {
      const c = await RawPg.connect(port);
      c.send(Buffer.concat([int32(0x7fffffff), int32(196608)]));
      return c;
    }, '08P01'],
    ['startup length 3', async () => {
      const c = await RawPg.connect(port);
      c.send(Buffer.concat([int32(3), int32(196608)]));
      return c;
    }, '08P01'],
    ['startup length -1', async () => {
      const c = await RawPg.connect(port);
      c.send(Buffer.concat([int32(-1), int32(196608)]));
      return c;
    }, '08P01'],
    ['TLS ClientHello without SSLRequest', async () => {
      const c = await RawPg.connect(port);
      c.send(clientHello);
      return c;
    }, '08P01'],
    ['a second StartupMessage after the password request', async () => {
      const c = await atPasswordRequest();
      c.send(startupPacket({ user: 'again', database: 'app' }));
      return c;
    }, '08P01'],
    ['a 60 KiB PasswordMessage (under the handshake cap: an oversized token)', async () => {
      const c = await atPasswordRequest();
      c.send(typed('p', `${'a'.repeat(60 * 1024)}\0`));
      return c;
    }, '28P01'],
    ['a 100 KiB PasswordMessage (over the handshake cap)', async () => {
      const c = await atPasswordRequest();
      c.send(typed('p', `${'a'.repeat(100 * 1024)}\0`));
      return c;
    }, '08P01'],
    ['a truncated StartupMessage then FIN', async () => {
      const c = await RawPg.connect(port);
      c.send(startupPacket({ user: 'truncated', database: 'app' }).subarray(0, 12));
      c.socket.end();
      return c;
    }, undefined],
    ['a truncated PasswordMessage then FIN', async () => {
      const c = await atPasswordRequest();
      c.send(typed('p', `${token}\0`).subarray(0, 40));
      c.socket.end();
      return c;
    }, undefined],
  ];

  const postAuth: Array<[string, (c: RawPg) => void, string | undefined]> = [
    ["'Q' with length 0x7fffffff", (c) => c.send(header('Q', 0x7fffffff)), '08P01'],
    ['a typed message with length 2', (c) => c.send(header('Q', 2)), '08P01'],
    ['random bytes (negative length word)', (c) => c.send(randomWithNegativeLength(256, 1)), '08P01'],
    ['random bytes then FIN', (c) => {
      c.send(randomBytes(256));
      c.socket.end();
    }, undefined],
    // Passed through by the gateway; PostgreSQL itself answers 08P01.
    ['an unknown message type', (c) => c.send(typed('\u00ee', 'whatever\0')), '08P01'],
    ['half a message then FIN', (c) => {
      c.send(typed('Q', 'select 1 from generate_series(1, 10)\0').subarray(0, 12));
      c.socket.end();
    }, undefined],
  ];

  // Several rounds, so the hostile traffic overlaps the honest loops throughout.
  for (let round = 0; round < 8; round++) {
    const pre = preAuth.map(async ([name, act, code]) => [name, code, await outcome(await act())] as const);
    const post = postAuth.map(async ([name, act, code]) => {
      const c = await rawLogin(port, token, { user: 'hostile', database: 'app' });
      act(c);
      return [`after login: ${name}`, code, await outcome(c)] as const;
    });
    for (const [name, code, got] of await Promise.all([...pre, ...post])) {
      t.ok(got.closed, `round ${round}, ${name}: connection closed`);
      if (code !== undefined) {
        t.equal(got.error?.C, code, `round ${round}, ${name}: SQLSTATE ${code} (${got.error?.M ?? 'no error'})`);
        t.equal(got.error?.S, 'FATAL', `round ${round}, ${name}: FATAL`);
      } else if (got.error) {
        // Nothing is required, but whatever was sent must be a protocol error, not an internal one.
        t.match(got.error.C, /^08/, `round ${round}, ${name}: a connection-class SQLSTATE if any (${got.error.M})`);
      }
      if (got.error) t.notMatch(got.error.M, token.slice(0, 30), `round ${round}, ${name}: no token in the message`);
    }
  }

  stopLoops = true;
  const results = await Promise.all(honest);
  for (const [i, r] of results.entries()) {
    t.same(r.errors, [], `honest session ${i}: no errors`);
    t.ok(r.loops >= 3, `honest session ${i}: completed ${r.loops} loops`);
  }
  const rows = (await viaGateway('select count(*)::int as c from public.loop_log')).rows[0].c as number;
  t.equal(rows, results.reduce((n, r) => n + r.loops, 0), 'every committed loop is in the table');

  const after = await rawLogin(port, token);
  after.send(typed('Q', 'select 41 + 1\0'));
  const row = await after.readUntil('D');
  t.ok(row, 'the gateway still admits and serves a new session');
  after.send(typed('X', ''));
  await after.waitClosed();
  t.ok(!gw.logs.some((l) => l.includes(token)), 'no log line carries the token');
});

t.test('a client that stops reading does not make the gateway buffer the result', async (t) => {
  const c = await rawLogin(port, token);
  const socket = c.socket;
  // Count messages with a streaming scanner instead of RawPg's buffer: 200 MB must not pile up on our side either.
  socket.removeAllListeners('data');
  let received = 0;
  let dataRows = 0;
  let headerBytes: number[] = [];
  let remaining = 0;
  let currentType = 0;
  let done: () => void = () => {};
  const finished = new Promise<void>((resolve) => (done = resolve));
  let error: Record<string, string> | undefined;
  let errorBody: Buffer[] = [];
  socket.on('data', (chunk: Buffer) => {
    received += chunk.length;
    let i = 0;
    while (i < chunk.length) {
      if (remaining === 0) {
        headerBytes.push(chunk[i++]!);
        if (headerBytes.length === 5) {
          currentType = headerBytes[0]!;
          remaining = Buffer.from(headerBytes).readInt32BE(1) - 4;
          headerBytes = [];
          if (currentType === 0x44) dataRows++;
          if (remaining === 0 && currentType === 0x5a) done();
        }
        continue;
      }
      const take = Math.min(remaining, chunk.length - i);
      if (currentType === 0x45) errorBody.push(chunk.subarray(i, i + take));
      i += take;
      remaining -= take;
      if (remaining === 0 && currentType === 0x45) {
        error = errorFields(Buffer.concat(errorBody));
        errorBody = [];
      }
      if (remaining === 0 && currentType === 0x5a) done();
    }
  });
  socket.pause();

  global.gc?.();
  const before = process.memoryUsage();
  socket.write(typed('Q', "select repeat('x', 1000) from generate_series(1, 200000)\0"));
  let peakRss = before.rss;
  let peakExternal = before.external + before.arrayBuffers;
  // Sample while the server pushes: the gateway must stop reading upstream once the client's buffers are full.
  for (let i = 0; i < 20; i++) {
    await new Promise((r) => setTimeout(r, 100));
    const m = process.memoryUsage();
    peakRss = Math.max(peakRss, m.rss);
    peakExternal = Math.max(peakExternal, m.external + m.arrayBuffers);
  }
  const MiB = 1024 * 1024;
  t.ok(peakRss - before.rss < 64 * MiB, `rss grew by ${((peakRss - before.rss) / MiB).toFixed(1)} MiB while the client was not reading`);
  t.ok(
    peakExternal - (before.external + before.arrayBuffers) < 64 * MiB,
    `buffer memory grew by ${((peakExternal - before.external - before.arrayBuffers) / MiB).toFixed(1)} MiB while the client was not reading`,
  );
  t.equal(dataRows, 0, 'nothing was read while paused');

  socket.resume();
  await finished;
  t.equal(error, undefined, 'no error in the stream');
  t.equal(dataRows, 200_000, 'every row arrived once the client read again');
  t.ok(received > 200 * 1000 * 1000, `about 200 MB arrived (${received} bytes)`);
  socket.write(typed('X', ''));
  await c.waitClosed();
});

t.test("a client's Terminate ends its upstream backend and the connection", async (t) => {
  const app = `terminate-${randomBytes(4).toString('hex')}`;
  const count = async (): Promise<number> =>
    Number((await pgServer.psqlDirect(`select count(*) from pg_stat_activity where application_name = '${app}'`)).trim());
  const c = await rawLogin(port, token, { user: 'raw', database: 'app', application_name: app });
  t.equal(await count(), 1, 'the session has a backend upstream');
  c.send(typed('X', ''));
  await c.waitClosed();
  t.ok(c.closed, 'the gateway closed the client connection');
  let left = await count();
  for (let i = 0; i < 100 && left > 0; i++) {
    await new Promise((r) => setTimeout(r, 50));
    left = await count();
  }
  t.equal(left, 0, 'the upstream backend is gone');
});

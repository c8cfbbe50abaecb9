/**
 * The Redis gateway end to end with raw RESP: who gets in (AUTH and HELLO
 * forms, bad tokens, unauthorized subjects, upstream failures), what Sluice
 * answers itself (AUTH after login, SELECT, MONITOR, CLIENT REPLY, RESET,
 * refusals inside MULTI), ordering of its own replies in a pipeline,
 * protocol errors, and no secret in any log line.
 */
import { once } from 'node:events';
import { connect } from 'node:net';
import t from 'tap';
import { startRedis } from '../helpers/redis.js';
import { startGateway } from '../helpers/gateway.js';
import { Raw, encode, splitReplies } from '../helpers/raw-redis.js';

const redis = await startRedis();
t.teardown(() => redis.stop());

function redisTarget(name: string, extra: { user?: string; passwordEnv?: string; db?: number; limits?: string; insecure?: boolean; port?: number } = {}): string {
  return `
  ${name}:
    protocol: redis
    listen: 127.0.0.1:0
    allow_insecure_loopback: ${extra.insecure ?? true}
    ${extra.limits ? `limits: ${extra.limits}` : ''}
    upstream: { host: 127.0.0.1, port: ${extra.port ?? redis.port}, user: ${extra.user ?? 'app'}, password_env: ${extra.passwordEnv ?? 'REDIS_APP_PASSWORD'}, db: ${extra.db ?? 0} }`;
}

const gw = await startGateway(
  `identity: { dev_issuer: true }
targets:${redisTarget('cache')}${redisTarget('cache3', { db: 3 })}${redisTarget('wrongpass', { passwordEnv: 'WRONG' })}${redisTarget('quick', {
    limits: '{ pre_auth_timeout: 400ms, idle_timeout: 600ms }',
  })}${redisTarget('tls-only', { insecure: false })}
  nowhere:
    protocol: redis
    listen: 127.0.0.1:0
    allow_insecure_loopback: true
    upstream: { host: 127.0.0.1, port: 1, user: app, password_env: REDIS_APP_PASSWORD }
policies:
  - name: ci
    subjects: { groups: [ci] }
    targets: [cache, cache3, wrongpass, quick, tls-only, nowhere]
`,
  { REDIS_APP_PASSWORD: redis.aclPassword, WRONG: 'not-the-password-9c1e' },
);
t.teardown(() => gw.close());

const token = await gw.token('ci-job', ['ci']);
const secrets = new Set<string>([token, redis.aclPassword, redis.password, 'not-the-password-9c1e']);

async function loggedIn(port = gw.port('cache')): Promise<Raw> {
  const c = await Raw.open(port);
  c.send(['AUTH', token]);
  const [r] = await c.replies(1);
  if (r !== '+OK\r\n') throw new Error(`login failed: ${r}`);
  return c;
}

async function clientsOnUpstream(): Promise<number> {
  const list = await redis.cli(['CLIENT', 'LIST']);
  return list.split('\n').filter((l) => l.includes('user=app')).length;
}

t.test('AUTH <token> and AUTH <label> <token> log in as the ACL user', async (t) => {
  const c = await loggedIn();
  c.send(['ACL', 'WHOAMI'], ['SET', 'k1', 'v1'], ['GET', 'k1']);
  t.same(await c.replies(3), ['$3\r\napp\r\n', '+OK\r\n', '$2\r\nv1\r\n']);
  c.end();
  const d = await Raw.open(gw.port('cache'));
  d.send(['AUTH', 'my-label', token], ['ACL', 'WHOAMI']);
  t.same(await d.replies(2), ['+OK\r\n', '$3\r\napp\r\n']);
  d.end();
});

t.test('HELLO 3 AUTH returns the upstream HELLO map and switches to RESP3', async (t) => {
  const c = await Raw.open(gw.port('cache'));
  c.send(['HELLO', '3', 'AUTH', 'ci', token, 'SETNAME', 'worker-1'], ['CLIENT', 'GETNAME'], ['HGETALL', 'nope']);
  const [hello, name, empty] = await c.replies(3);
  t.match(hello, /^%7\r\n/);
  t.match(hello, /\$6\r\nserver\r\n\$5\r\nredis\r\n/);
  t.match(hello, /\$5\r\nproto\r\n:3\r\n/);
  t.equal(name, '$8\r\nworker-1\r\n');
  t.equal(empty, '%0\r\n', 'RESP3 map for an empty hash');
  c.end();
  const d = await Raw.open(gw.port('cache'));
  d.send(['HELLO', '2', 'AUTH', 'ci', token]);
  const [h2] = await d.replies(1);
  t.match(h2, /^\*14\r\n/, 'HELLO 2 gets the flat array');
  d.end();
});

t.test('before AUTH: NOAUTH, and HELLO without AUTH is refused as Redis does', async (t) => {
  const c = await Raw.open(gw.port('cache'));
  c.send(['GET', 'x'], ['HELLO', '3'], ['PING']);
  const r = await c.replies(3);
  t.equal(r[0], '-NOAUTH Authentication required.\r\n');
  t.match(r[1], /^-NOAUTH HELLO must be called/);
  t.equal(r[2], '-NOAUTH Authentication required.\r\n');
  c.send(['QUIT']);
  t.same(await c.replies(1), ['+OK\r\n']);
  t.ok(await c.closedWithin(), 'QUIT closes');
});

t.test('bad tokens: WRONGPASS with a reason, no upstream connection, retry allowed, third failure closes', async (t) => {
  const before = await clientsOnUpstream();
  const c = await Raw.open(gw.port('cache'));
  const expired = await gw.token('ci-job', ['ci'], { audience: 'someone-else' });
  secrets.add(expired);
  c.send(['AUTH', 'not-a-jwt']);
  const [r1] = await c.replies(1);
  t.match(r1, /^-WRONGPASS sluice: token refused: /);
  c.send(['AUTH', expired]);
  const [r2] = await c.replies(1);
  t.match(r2, /^-WRONGPASS sluice: token refused: .*audience/);
  t.notMatch(r2, expired.slice(0, 30));
  const oversized = 'x'.repeat(20_000);
  c.send(['AUTH', oversized]);
  const [r3] = await c.replies(1);
  t.match(r3, /^-WRONGPASS sluice: token refused: .*(large|bytes|size)/i, 'an oversized token gets a reason, not a protocol error');
  t.ok(await c.closedWithin(), 'the third failure closes the connection');
  t.equal(await clientsOnUpstream(), before, 'no upstream connection was opened');

  const d = await Raw.open(gw.port('cache'));
  d.send(['AUTH', 'garbage'], ['AUTH', token], ['PING']);
  const r = await d.replies(3);
  t.match(r[0], /^-WRONGPASS/);
  t.same(r.slice(1), ['+OK\r\n', '+PONG\r\n'], 'a retry after a failure logs in');
  d.end();
});

t.test('a subject without a policy gets NOPERM', async (t) => {
  const intruder = await gw.token('intruder', ['contractors']);
  secrets.add(intruder);
  const c = await Raw.open(gw.port('cache'));
  c.send(['AUTH', intruder]);
  const [r] = await c.replies(1);
  t.match(r, /^-NOPERM sluice: not authorized for target "cache"/);
  c.end();
});

t.test('upstream failures: generic error with a correlation id, details only in the log', async (t) => {
  for (const target of ['wrongpass', 'nowhere']) {
    const c = await Raw.open(gw.port(target));
    c.send(['AUTH', token]);
    const [r] = await c.replies(1);
    const m = /^-ERR sluice: could not connect to the upstream \(correlation id ([\w-]+)\)\r\n$/.exec(r);
    t.ok(m, `${target}: ${r}`);
    t.ok(await c.closedWithin(), `${target}: closed`);
    const line = gw.logs.find((l) => l.includes(m![1]!) && l.includes('upstream connection failed'));
    t.ok(line, `${target}: the log has the detail under the correlation id`);
  }
});

t.test('a cleartext connection to a TLS-only target is refused', async (t) => {
  const c = await Raw.open(gw.port('tls-only'));
  const [r] = await c.replies(1);
  t.match(r, /^-ERR sluice: target "tls-only" requires TLS/);
  t.ok(await c.closedWithin());
});

t.test('commands Sluice handles itself, in pipeline order', async (t) => {
  const c = await loggedIn();
  c.send(
    ['SET', 'a', '1'],
    ['AUTH', token],
    ['GET', 'a'],
    ['HELLO', '3', 'AUTH', 'x', token],
    ['SELECT', '5'],
    ['SELECT', '0'],
    ['MONITOR'],
    ['CLIENT', 'REPLY', 'OFF'],
    ['CLIENT', 'REPLY', 'SKIP'],
    ['CLIENT', 'REPLY', 'ON'],
    ['SWAPDB', '0', '1'],
    ['SYNC'],
    ['BLPOP', 'emptylist', '0.2'],
    ['SELECT', '2'],
    ['PING'],
  );
  const r = await c.replies(15);
  t.equal(r[0], '+OK\r\n');
  t.equal(r[1], '-ERR sluice: identity cannot change within a session; open a new connection with another token\r\n');
  t.equal(r[2], '$1\r\n1\r\n');
  t.match(r[3], /^-ERR sluice: identity cannot change/);
  t.equal(r[4], '-ERR sluice: this target is bound to db 0\r\n');
  t.equal(r[5], '+OK\r\n');
  t.match(r[6], /^-ERR sluice: MONITOR is not available/);
  t.match(r[7], /^-ERR sluice: CLIENT REPLY OFF\|SKIP/);
  t.match(r[8], /^-ERR sluice: CLIENT REPLY OFF\|SKIP/);
  t.equal(r[9], '+OK\r\n');
  t.match(r[10], /^-ERR sluice: SWAPDB/);
  t.match(r[11], /^-ERR sluice: replication/);
  t.equal(r[12], '*-1\r\n', 'the blocking pop timed out upstream first');
  t.equal(r[13], '-ERR sluice: this target is bound to db 0\r\n', 'queued behind the blocking reply');
  t.equal(r[14], '+PONG\r\n');
  c.end();
});

t.test('a NUL byte hides no command or option from Sluice: Redis compares them only up to it', async (t) => {
  const c = await loggedIn();
  c.send(
    // HELLO's AUTH\0 is AUTH to Redis: it would log the session in as another ACL user.
    ['HELLO', '3', 'AUTH\u0000', 'default', 'anything'],
    ['CLIENT', 'REPLY\u0000', 'OFF'],
    ['SELECT\u0000x', '5'],
    ['FLUSHALL\u0000abc'],
    ['ACL', 'WHOAMI'],
    ['PING'],
  );
  const r = await c.replies(6);
  t.match(r[0], /^-ERR sluice: identity cannot change within a session/);
  t.match(r[1], /^-ERR sluice: CLIENT REPLY OFF\|SKIP/);
  t.equal(r[2], '-ERR sluice: a command name cannot contain a NUL byte\r\n');
  t.equal(r[3], '-ERR sluice: a command name cannot contain a NUL byte\r\n');
  t.equal(r[4], '$3\r\napp\r\n', 'still the target ACL user');
  t.equal(r[5], '+PONG\r\n');
  c.end();
});

t.test('a target bound to db 3 selects it, and RESET re-authenticates instead of dropping to default', async (t) => {
  const c = await loggedIn(gw.port('cache3'));
  c.send(['CLIENT', 'INFO'], ['SELECT', '3'], ['SELECT', '0'], ['SET', 'in3', 'yes']);
  const r = await c.replies(4);
  t.match(r[0], /db=3/);
  t.same(r.slice(1), ['+OK\r\n', '-ERR sluice: this target is bound to db 3\r\n', '+OK\r\n']);
  c.send(['CLIENT', 'SETNAME', 'before'], ['HELLO', '3'], ['RESET'], ['ACL', 'WHOAMI'], ['CLIENT', 'INFO'], ['GET', 'in3'], ['CLIENT', 'GETNAME']);
  const s = await c.replies(7);
  t.equal(s[0], '+OK\r\n');
  t.match(s[1], /^%7/);
  t.equal(s[2], '+RESET\r\n', 'the client sees +RESET and nothing of the re-authentication');
  t.equal(s[3], '$3\r\napp\r\n', 'still the target ACL user');
  t.match(s[4], /db=3 .*resp=2/, 'back in db 3, RESP2');
  t.equal(s[5], '$3\r\nyes\r\n');
  t.equal(s[6], '$-1\r\n', 'RESET cleared the name');
  t.equal(await redis.cli(['-n', '0', 'EXISTS', 'in3']), '0\n', 'the key went to db 3');
  c.end();
});

t.test('a refusal inside MULTI aborts EXEC as a queuing error does in Redis', async (t) => {
  const c = await loggedIn();
  c.send(['MULTI'], ['SET', 'tx', '1'], ['SELECT', '9'], ['EXEC'], ['EXISTS', 'tx'], ['MULTI'], ['INCR', 'tx2'], ['EXEC']);
  const r = await c.replies(8);
  t.same(r, [
    '+OK\r\n',
    '+QUEUED\r\n',
    '-ERR sluice: this target is bound to db 0\r\n',
    '-EXECABORT Transaction discarded because of previous errors.\r\n',
    ':0\r\n',
    '+OK\r\n',
    '+QUEUED\r\n',
    '*1\r\n:1\r\n',
  ]);
  c.end();
});

t.test('RESET in RESP2 subscribed mode resynchronises', async (t) => {
  const c = await loggedIn();
  c.send(['SUBSCRIBE', 'ch1', 'ch2'], ['MONITOR']);
  const r = await c.replies(3);
  t.match(r[0], /subscribe\r\n\$3\r\nch1/);
  t.match(r[1], /subscribe\r\n\$3\r\nch2/);
  t.match(r[2], /^-ERR sluice: MONITOR/);
  await redis.cli(['PUBLISH', 'ch1', 'hello']);
  const [m] = await c.replies(1);
  t.match(m, /message\r\n\$3\r\nch1\r\n\$5\r\nhello/);
  c.send(['RESET'], ['ACL', 'WHOAMI'], ['SELECT', '4'], ['PING']);
  const s = await c.replies(4);
  t.same(s, ['+RESET\r\n', '$3\r\napp\r\n', '-ERR sluice: this target is bound to db 0\r\n', '+PONG\r\n']);
  c.end();
});

t.test('protocol errors close that connection only', async (t) => {
  const other = await loggedIn();
  const c = await loggedIn();
  c.socket.write(Buffer.concat([encode(['SET', 'p', '1']), Buffer.from('GET p\r\n')]));
  const r = await c.replies(2);
  t.equal(r[0], '+OK\r\n', 'the complete command before the garbage was served');
  t.match(r[1], /^-ERR Protocol error: inline commands are not accepted/);
  t.ok(await c.closedWithin());
  const big = await Raw.open(gw.port('cache'));
  big.send(['AUTH', 'y'.repeat(200_000)]);
  const [b] = await big.replies(1);
  t.equal(b, '-ERR Protocol error: unauthenticated bulk length\r\n', 'the pre-auth bulk limit holds');
  t.ok(await big.closedWithin());
  const pre = await Raw.open(gw.port('cache'));
  pre.socket.write('*1\r\n$abc\r\n');
  const [e] = await pre.replies(1);
  t.match(e, /^-ERR Protocol error: /);
  t.ok(await pre.closedWithin());
  other.send(['PING']);
  t.same(await other.replies(1), ['+PONG\r\n'], 'another session is unaffected');
  other.end();
});

t.test('a protocol violation behind replies still owed: the session ends as soon as the client hangs up', async (t) => {
  const setup = await loggedIn();
  setup.send(['SET', 'violation-big', 'v'.repeat(1024 * 1024)]);
  t.same(await setup.replies(1), ['+OK\r\n']);
  setup.end();
  // A reply too large for one write holds the upstream's reads until the client drains; the
  // violation's error goes out behind it, then Sluice closes. Nothing may keep the session
  // waiting for its 10 s grace timer after the client has gone.
  const c = await loggedIn();
  const client = `127.0.0.1:${c.socket.localPort}`;
  // Not read at first: the reply fills the buffers, and the error and Sluice's FIN queue behind it.
  c.socket.pause();
  c.socket.write(Buffer.concat([encode(['GET', 'violation-big']), Buffer.from('GET x\r\n')]));
  await new Promise((r) => setTimeout(r, 500));
  c.socket.resume();
  const [value, err] = await c.replies(2);
  t.equal(value?.length, 1024 * 1024 + 12, 'the reply owed before the violation arrives whole');
  t.match(err, /^-ERR Protocol error: inline commands are not accepted/, 'then the error');
  t.ok(await c.closedWithin(), 'then the connection closes');
  const ended = (): boolean => gw.logs.some((l) => l.includes(client) && l.includes('"session ended"'));
  for (let i = 0; i < 150 && !ended(); i++) await new Promise((r) => setTimeout(r, 20));
  t.ok(ended(), 'the session has ended within 3 s of the client hanging up');
});

t.test('a flood before AUTH: answered until the recording can hold no more, then ended with a clear error; other sessions go on', async (t) => {
  // Until a session is admitted its recording holds both directions in memory (the credential is
  // redacted at admission), up to 512 KiB: a client that pours commands in before AUTH ends there.
  const c = await Raw.open(gw.port('cache'));
  const ping = encode(['PING']);
  const sent = Math.ceil((2 * 1024 * 1024) / ping.length);
  c.socket.write(Buffer.concat(Array.from({ length: sent }, () => ping)));
  t.ok(await c.closedWithin(10_000), 'the session is closed');
  const replies = splitReplies(c.buf);
  const last = replies.at(-1);
  t.equal(last, '-ERR sluice: too much data received before authentication completed\r\n', 'the last reply says why');
  const answered = replies.slice(0, -1);
  t.ok(answered.length > 1000 && answered.length < sent, `some commands were answered first, not all (${answered.length} of ${sent})`);
  t.ok(answered.every((r) => r === '-NOAUTH Authentication required.\r\n'), 'each with NOAUTH, in order, nothing else');
  for (let i = 0; i < 100 && !gw.logs.some((l) => l.includes('too much data received before authentication completed')); i++) await new Promise((r) => setTimeout(r, 20));
  t.ok(gw.logs.some((l) => l.includes('too much data received before authentication completed')), 'the log says why');
  const other = await loggedIn();
  other.send(['PING']);
  t.same(await other.replies(1), ['+PONG\r\n'], 'another session is unaffected');
  other.end();
});

t.test('without recording, a client that sends before AUTH and does not read is no longer read; once it reads, every command is answered', async (t) => {
  // Each PING before AUTH costs Sluice a 34-byte NOAUTH: unread, those would pile up in the
  // gateway's memory. Past 64 KiB of replies waiting, it stops reading the client.
  const plain = await startGateway(
    `identity: { dev_issuer: true }
recording: { enabled: false }
targets:${redisTarget('cache', { limits: '{ pre_auth_timeout: 60s }' })}
policies:
  - { name: ci, subjects: { groups: [ci] }, targets: [cache] }
`,
    { REDIS_APP_PASSWORD: redis.aclPassword },
  );
  t.teardown(() => plain.close());
  const socket = connect(plain.port('cache'), '127.0.0.1');
  await once(socket, 'connect');
  socket.pause(); // the client reads nothing for now
  const ping = encode(['PING']);
  const batch = Buffer.concat(Array.from({ length: 4096 }, () => ping));
  // Unread replies are 2.4 times what was sent: at 64 MiB sent without a stall, the gateway would hold 150 MiB.
  const cap = 64 * 1024 * 1024;
  let sent = 0;
  let stalled = false;
  // Write until a write stays unflushed for a second: the gateway has stopped reading.
  while (sent < cap) {
    sent += batch.length;
    if (socket.write(batch)) continue;
    const drained = await Promise.race([once(socket, 'drain').then(() => true), new Promise<boolean>((r) => setTimeout(() => r(false), 1000))]);
    if (!drained) {
      stalled = true;
      break;
    }
  }
  t.ok(stalled, `the gateway stopped reading (${(sent / 1048576).toFixed(1)} MiB sent, the kernel's buffers included)`);

  // Now read: one NOAUTH per PING, nothing lost, and the connection still logs in.
  const commands = sent / ping.length;
  const noauth = Buffer.from('-NOAUTH Authentication required.\r\n');
  let received = 0;
  let tail = '';
  let wrong = 0;
  const answered = new Promise<void>((resolve) => {
    socket.on('data', (d: Buffer) => {
      const text = tail + d.toString('latin1');
      const whole = text.length - (text.length % noauth.length);
      for (let i = 0; i < whole; i += noauth.length) if (!text.startsWith(noauth.toString('latin1'), i)) wrong++;
      received += whole / noauth.length;
      tail = text.slice(whole);
      if (received >= commands) resolve();
    });
  });
  socket.resume();
  await answered;
  t.equal(received, commands, 'every command was answered');
  t.equal(wrong, 0, 'each with NOAUTH');
  socket.removeAllListeners('data');
  let reply = '';
  socket.on('data', (d: Buffer) => (reply += d.toString('latin1')));
  socket.write(encode(['AUTH', await plain.token('ci-job', ['ci'])]));
  for (let i = 0; i < 200 && !reply.includes('\r\n'); i++) await new Promise((r) => setTimeout(r, 10));
  t.equal(tail + reply, '+OK\r\n', 'and it logs in afterwards');
  socket.destroy();
});

t.test('pre-auth deadline and idle timeout', async (t) => {
  const c = await Raw.open(gw.port('quick'));
  const [r] = await c.replies(1, 3000);
  t.match(r, /^-ERR sluice: authentication not completed within 400 ms/);
  t.ok(await c.closedWithin());
  const d = await loggedIn(gw.port('quick'));
  // Like Redis' own `timeout`, an idle client is disconnected without an
  // unsolicited reply (that would break clients' reply queues); the log says why.
  t.ok(await d.closedWithin(5000), 'an idle session is closed');
  // The session's end is logged once both sockets have closed: a moment after the client sees its close.
  for (let i = 0; i < 100 && !gw.logs.some((l) => l.includes('without traffic (idle_timeout)')); i++) await new Promise((r) => setTimeout(r, 20));
  t.ok(gw.logs.some((l) => l.includes('without traffic (idle_timeout)')), 'the log says why');
  t.ok(gw.logs.some((l) => l.includes('"code":"SLUICE_IDLE_TIMEOUT"')), 'and names the catalogue code');
});

t.test('QUIT: the session ends because the client asked, whichever FIN arrives first', async (t) => {
  const c = await loggedIn(gw.port('cache'));
  const client = `127.0.0.1:${c.socket.localPort}`;
  c.send(['SET', 'quit-key', 'v'], ['QUIT']);
  t.same(await c.replies(2), ['+OK\r\n', '+OK\r\n'], 'Redis answers QUIT with +OK');
  t.ok(await c.closedWithin(), 'and closes');
  const ended = (): string | undefined => gw.logs.find((l) => l.includes(client) && l.includes('"session ended"'));
  for (let i = 0; i < 100 && ended() === undefined; i++) await new Promise((r) => setTimeout(r, 20));
  const line = ended();
  t.ok(line, 'the session end is logged');
  t.match(JSON.parse(line ?? '{}'), { reason: 'client ended the connection' }, 'with the client as the side that ended it');
});

t.test('an upstream that does not know HELLO: the client is told, and the log names the failure without the password Redis quoted', async (t) => {
  // Redis quotes the first arguments of a command it does not know: for Sluice's
  // `HELLO 3 AUTH app <password>`, the stored password.
  const old = await startRedis({ config: ['rename-command HELLO ""'] });
  t.teardown(() => old.stop());
  const g = await startGateway(
    `identity: { dev_issuer: true }
targets:${redisTarget('cache', { port: old.port })}
policies:
  - { name: ci, subjects: { groups: [ci] }, targets: [cache] }
`,
    { REDIS_APP_PASSWORD: old.aclPassword },
  );
  t.teardown(() => g.close());
  const c = await Raw.open(g.port('cache'));
  c.send(['HELLO', '3', 'AUTH', 'ci-job', await g.token('ci-job', ['ci'])]);
  const [r] = await c.replies(1);
  t.match(r, /^-ERR sluice: could not connect to the upstream \(correlation id [^)]+\)\r\n$/, 'the client gets the correlation id, nothing of the upstream');
  c.end();
  const line = g.logs.find((l) => l.includes('upstream connection failed'));
  t.ok(line, 'the failure is logged');
  t.match(line, /unknown command 'HELLO', with its arguments \(not shown\)/, 'with what the upstream said');
  t.notOk(g.logs.some((l) => l.includes(old.aclPassword)), 'the stored password is in no log line');
});

t.test('no token or password in any log line', async (t) => {
  await new Promise((r) => setTimeout(r, 100));
  t.ok(gw.logs.length > 10);
  for (const line of gw.logs) {
    for (const s of secrets) {
      if (line.includes(s)) t.fail(`a secret appears in a log line: ${line.slice(0, 200)}`);
    }
  }
  t.ok(gw.logs.some((l) => l.includes('session started') && l.includes('"subject":"ci-job"')), 'sessions are logged with the subject');
});

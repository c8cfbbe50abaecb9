/**
 * A credential sent again after login never reaches a recording: Sluice
 * refuses a second AUTH (identity cannot change within a session), and the
 * recording gets the scrubbed form of that command too, even when the
 * command arrives split across TCP writes.
 */
import t, { type Test } from 'tap';
import { connect, type Socket } from 'node:net';
import { readFileSync } from 'node:fs';
import { startRedis } from '../helpers/redis.js';
import { startGateway } from '../helpers/gateway.js';
import { readRecording } from '../../src/recording/reader.js';
import type { SessionStore } from '../../src/store/types.js';
import { IDENTITY_FIXED } from '../../protocols/redis/commands.js';

const redis = await startRedis();
t.teardown(() => redis.stop());
const gw = await startGateway(
  `identity: { dev_issuer: true }
targets:
  cache:
    protocol: redis
    listen: 127.0.0.1:0
    allow_insecure_loopback: true
    upstream: { host: 127.0.0.1, port: ${redis.port}, user: app, password_env: REDIS_PW, db: 0, tls: disable }
policies:
  - { name: ci, subjects: { groups: [ci] }, targets: [cache] }
`,
  { REDIS_PW: redis.aclPassword },
);
t.teardown(() => gw.close());

function resp(...args: string[]): Buffer {
  return Buffer.from(`*${args.length}\r\n${args.map((a) => `$${Buffer.byteLength(a)}\r\n${a}\r\n`).join('')}`);
}

/** A raw client of the gateway: `until` waits (2 s at most) for text in what it received, `close` ends it and returns all of that. */
async function openClient(): Promise<{ socket: Socket; until(text: string): Promise<void>; close(): Promise<string> }> {
  const socket = connect(gw.port('cache'), '127.0.0.1');
  let received = '';
  socket.on('data', (c: Buffer) => (received += c.toString('latin1')));
  await new Promise((r) => socket.once('connect', r));
  return {
    socket,
    until: async (text) => {
      for (let i = 0; i < 200 && !received.includes(text); i++) await new Promise((r) => setTimeout(r, 10));
    },
    close: async () => {
      if (!socket.closed) {
        socket.end();
        await new Promise((r) => socket.once('close', r));
      }
      return received;
    },
  };
}

/** The client side of `subject`'s completed recording, once it holds no trace of `token`. */
async function recordedClientBytes(t: Test, subject: string, token: string): Promise<string> {
  let session;
  for (let i = 0; i < 200; i++) {
    session = (gw.gateway.services.store as unknown as SessionStore).listSessions({ subject })[0];
    if (session?.complete) break;
    await new Promise((r) => setTimeout(r, 25));
  }
  t.ok(session?.recordingPath, 'the session was recorded');
  const file = readFileSync(session!.recordingPath!);
  t.equal(file.indexOf(Buffer.from(token)), -1, 'the token is nowhere in the recording file');
  return (await readRecording(session!.recordingPath!).bytesOf('client')).toString('latin1');
}

t.test('AUTH after login: refused, and scrubbed in the recording', async (t) => {
  const token = await gw.token('ci-job', ['ci']);
  const { socket, until, close } = await openClient();
  socket.write(resp('AUTH', token));
  await until('+OK');
  socket.write(Buffer.concat([resp('SET', 'k', 'v'), resp('AUTH', token)]));
  await until('identity cannot change');
  // A second attempt split in the middle of the token.
  const split = resp('AUTH', 'label', token);
  socket.write(split.subarray(0, 40));
  await new Promise((r) => setTimeout(r, 50));
  socket.write(Buffer.concat([split.subarray(40), resp('GET', 'k')]));
  await until('$1\r\nv\r\n');
  const received = await close();
  t.equal((received.match(/identity cannot change/g) ?? []).length, 2, 'both re-authentications refused');

  const client = await recordedClientBytes(t, 'ci-job', token);
  t.match(client, /SET\r\n\$1\r\nk\r\n\$1\r\nv/, 'the other commands are recorded as sent');
  t.equal((client.match(/\[redacted\]/g) ?? []).length, 3, 'the login AUTH and both later ones carry the marker');
  t.match(client, /GET\r\n\$1\r\nk/);
});

t.test('a second AUTH pipelined in the same write as the login: scrubbed too', async (t) => {
  // The login AUTH is decided before the bytes after it are framed; those
  // bytes wait for the relay, which must still find the credential in them.
  const token = await gw.token('ci-pipelined', ['ci']);
  const { socket, until, close } = await openClient();
  socket.write(Buffer.concat([resp('AUTH', token), resp('AUTH', 'label', token), resp('SET', 'p', 'w'), resp('GET', 'p')]));
  await until('$1\r\nw\r\n');
  const received = await close();
  t.match(received, /^\+OK\r\n-ERR[^\r]*identity cannot change[^\r]*\r\n\+OK\r\n\$1\r\nw\r\n$/, 'login, refusal, SET, GET answered in order');
  const client = await recordedClientBytes(t, 'ci-pipelined', token);
  t.equal((client.match(/\[redacted\]/g) ?? []).length, 2, 'both AUTHs carry the marker');
  t.match(client, /SET\r\n\$1\r\np\r\n\$1\r\nw[^]*GET\r\n\$1\r\np/, 'the commands after them are recorded as sent');
});

t.test("a refusal is recorded after the command it answers, and the rest of the command's write after it", async (t) => {
  // The tap records a Redis client's bytes once the relay has framed them (to scrub a credential
  // first); a reply Sluice writes while it frames them must still come after its command.
  const token = await gw.token('ci-order', ['ci']);
  const { socket, until, close } = await openClient();
  socket.write(resp('AUTH', token));
  await until('+OK');
  // Idle: the refusal is written at once, while the write that holds the AUTH is being framed.
  socket.write(Buffer.concat([resp('AUTH', token), resp('SET', 'o', '1')]));
  await until('another token\r\n+OK\r\n');
  socket.write(resp('AUTH', token));
  await until('another token\r\n+OK\r\n-ERR');
  t.equal(
    await close(),
    `+OK\r\n${IDENTITY_FIXED.toString()}+OK\r\n${IDENTITY_FIXED.toString()}`,
    'the client got the login, the refusal, the SET, the refusal',
  );
  await recordedClientBytes(t, 'ci-order', token);
  const session = (gw.gateway.services.store as unknown as SessionStore).listSessions({ subject: 'ci-order' })[0]!;
  const records: string[] = [];
  for await (const r of readRecording(session.recordingPath!)) {
    if (r.type === 'data') records.push(`${r.direction} ${r.bytes.toString('latin1').replace(/\r\n/g, ' ').trim()}`);
  }
  const refusal = /^server -ERR sluice: identity cannot change/;
  t.match(records[0], /^client \*2 \$4 AUTH \$10 \[redacted\]$/, 'the login');
  t.equal(records[1], 'server +OK');
  t.match(records[2], /^client \*2 \$4 AUTH \$10 \[redacted\]$/, 'the second AUTH, alone: the part of its write framed when it was refused');
  t.match(records[3], refusal, 'then its refusal');
  t.equal(records[4], 'client *3 $3 SET $1 o $1 1', 'then the rest of that write');
  t.equal(records[5], 'server +OK', 'and its reply');
  t.match(records[6], /^client \*2 \$4 AUTH \$10 \[redacted\]$/, 'a third AUTH');
  t.match(records[7], refusal, 'and its refusal after it');
  t.equal(records.length, 8, 'nothing else');
});

for (const [name, write] of [
  ['an inline AUTH', (token: string) => Buffer.from(`AUTH ${token}\r\n`)],
  ['an AUTH whose token is not followed by CRLF', (token: string) => Buffer.from(`*2\r\n$4\r\nAUTH\r\n$${token.length}\r\n${token}XX\r\n`)],
] as const) {
  t.test(`${name} after login breaks the protocol: the session ends, and the token reaches no recording`, async (t) => {
    const token = await gw.token(`ci-broken-${name.length}`, ['ci']);
    const { socket, until, close } = await openClient();
    socket.write(resp('AUTH', token));
    await until('+OK');
    // A command before it in the same write: complete, so it is recorded as sent.
    const closed = new Promise((r) => socket.once('close', r));
    socket.write(Buffer.concat([resp('SET', 'b', '1'), write(token)]));
    await until('-ERR');
    // Sluice closes the connection after a protocol violation.
    await closed;
    const received = await close();
    t.match(received, /^\+OK\r\n(\+OK\r\n)?-ERR /, 'the client is told, and the connection closes');
    // The session ends once both sockets have closed (the client's end is read after the error),
    // and only then are the bytes from the violation on, which the relay never parsed, put to the
    // session's scrubber.
    const client = await recordedClientBytes(t, `ci-broken-${name.length}`, token);
    const session = (gw.gateway.services.store as unknown as SessionStore).listSessions({ subject: `ci-broken-${name.length}` })[0]!;
    t.ok(session.complete, 'the recording is complete');
    t.ok(client.endsWith('*3\r\n$3\r\nSET\r\n$1\r\nb\r\n$1\r\n1\r\n'), 'the complete command before it is recorded, and nothing after it');
  });
}

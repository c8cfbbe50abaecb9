/**
 * Pub/sub through the relay, with a command policy: Sluice's own replies
 * (here, refusals of FLUSHALL) must keep their places among the upstream's
 * while the connection is subscribed, while messages arrive between
 * replies, and after it has unsubscribed, when it is an ordinary
 * connection again. Through the upstream directly and through fault
 * relays that cut its bytes into single bytes or random pieces, so that
 * confirmations and their counts straddle chunks.
 */
import t, { type Test } from 'tap';
import { randomBytes } from 'node:crypto';
import { createServer, type AddressInfo } from 'node:net';
import { Redis } from 'ioredis';
import { startRedis } from '../helpers/redis.js';
import { startGateway, redisTargetYaml } from '../helpers/gateway.js';
import { Raw } from '../helpers/raw-redis.js';
import { startFaultRelay } from '../helpers/fault-relay.js';

const NARROW_PW = randomBytes(12).toString('base64url');
const redis = await startRedis();
t.teardown(() => redis.stop());
// A user whose ACL lets it subscribe to allowed.* only: Redis refuses any SUBSCRIBE naming another channel, as a whole.
await redis.cli(['ACL', 'SETUSER', 'narrow', 'on', `>${NARROW_PW}`, '~*', 'resetchannels', '&allowed.*', '+@all']);
const byteRelay = await startFaultRelay(redis.port, { mode: 'byte' });
t.teardown(() => byteRelay.close());
const randomRelay = await startFaultRelay(redis.port, { mode: 'random', maxChunk: 7 });
t.teardown(() => randomRelay.close());

const gw = await startGateway(
  `identity: { dev_issuer: true }
targets:${redisTargetYaml('direct', redis)}${redisTargetYaml('byte', { port: byteRelay.port })}${redisTargetYaml('random', { port: randomRelay.port })}
  narrow:
    protocol: redis
    listen: 127.0.0.1:0
    allow_insecure_loopback: true
    upstream: { host: 127.0.0.1, port: ${redis.port}, user: narrow, password_env: NARROW_PW, db: 0, tls: disable }
policies:
  - name: agents
    subjects: { groups: [agent] }
    targets: [direct, byte, random, narrow]
    default: allow
    rules:
      - { name: no-flush, action: deny, match: { commands: [flushall] } }
`,
  { REDIS_PW: redis.aclPassword, NARROW_PW },
);
t.teardown(() => gw.close());
const token = await gw.token('agent-1', ['agent']);

const publisher = new Redis({ port: redis.port, password: redis.password, lazyConnect: true });
await publisher.connect();
t.teardown(() => publisher.disconnect());

const REFUSED = /^-NOPERM sluice: denied by rule "no-flush"/;

async function login(target: string, proto: 2 | 3): Promise<Raw> {
  const a = await Raw.open(gw.port(target));
  a.send(proto === 3 ? ['HELLO', '3', 'AUTH', 'agent-1', token] : ['AUTH', token]);
  const [hello] = await a.replies(1);
  if (!(proto === 3 ? /^%/ : /^\+OK/).test(hello ?? '')) throw new Error(`login failed: ${hello}`);
  return a;
}

/** A message of any kind, as RESP2 (an array) or RESP3 (a push) sends it. */
function isMessage(reply: string): boolean {
  return /^[*>][34]\r\n\$[78]\r\n[ps]?message\r\n/.test(reply);
}

/** A session through `target`, subscribed to `channel`: its raw connection, ended with the test, and its message count. */
async function subscribed(t: Test, target: string, proto: 2 | 3, channel: string): Promise<{ a: Raw; seen: { messages: number }; confirmation: string }> {
  const a = await login(target, proto);
  t.teardown(() => a.end());
  const seen = { messages: 0 };
  a.send(['SUBSCRIBE', channel]);
  const [confirmation] = await answers(a, 1, seen);
  return { a, seen, confirmation: confirmation! };
}

/** The next `n` replies that are not messages; the messages in between are counted in `seen`. */
async function answers(a: Raw, n: number, seen: { messages: number }): Promise<string[]> {
  const out: string[] = [];
  while (out.length < n) {
    const [r] = await a.replies(1, 5_000);
    if (r === undefined) throw new Error(`connection closed after ${JSON.stringify(out)}`);
    if (isMessage(r)) seen.messages++;
    else out.push(r);
  }
  return out;
}

for (const target of ['direct', 'byte', 'random']) {
  for (const proto of [2, 3] as const) {
    t.test(`${target}, RESP${proto}: refusals keep their places while subscribed, with messages arriving, and after`, async (t) => {
      const a = await login(target, proto);
      t.teardown(() => a.end());
      const seen = { messages: 0 };
      const ch = `news-${target}-${proto}`;
      a.send(['SUBSCRIBE', ch, `sport-${target}-${proto}`], ['PSUBSCRIBE', `${ch}*`]);
      const confirmations = await answers(a, 3, seen);
      t.match(confirmations[0], /subscribe\r\n/);
      t.match(confirmations[2], /psubscribe\r\n.*\r\n:3\r\n$/s, 'three subscriptions');

      // Messages published while the pipeline is in flight land between its replies.
      const published = Promise.all([1, 2, 3].map((i) => publisher.publish(ch, `m${i}`)));
      a.send(['PING'], ['FLUSHALL'], ['PING'], ['FLUSHALL']);
      await published;
      const pong = proto === 2 ? '*2\r\n$4\r\npong\r\n$0\r\n\r\n' : '+PONG\r\n';
      const subscribed = await answers(a, 4, seen);
      t.equal(subscribed[0], pong);
      t.match(subscribed[1], REFUSED, "the refusal in the first FLUSHALL's place");
      t.equal(subscribed[2], pong);
      t.match(subscribed[3], REFUSED, "and in the second's");

      // UNSUBSCRIBE and PUNSUBSCRIBE naming nothing: one confirmation per subscription dropped.
      a.send(['UNSUBSCRIBE'], ['PUNSUBSCRIBE'], ['SET', `k-${ch}`, 'v'], ['FLUSHALL'], ['GET', `k-${ch}`]);
      const after = await answers(a, 6, seen);
      t.match(after[0], /unsubscribe\r\n.*\r\n:2\r\n$/s);
      t.match(after[1], /unsubscribe\r\n.*\r\n:1\r\n$/s);
      t.match(after[2], /punsubscribe\r\n.*\r\n:0\r\n$/s, 'nothing subscribed');
      t.equal(after[3], '+OK\r\n');
      t.match(after[4], REFUSED, "the refusal in FLUSHALL's place");
      t.equal(after[5], '$1\r\nv\r\n', 'and the GET answered last');
      t.ok(seen.messages >= 6, `the messages arrived too (${seen.messages}: each to the channel and the pattern)`);

      // An ordinary connection again: a transaction with a refused command aborts, and the session goes on.
      a.send(['MULTI'], ['SET', `k-${ch}`, 'tx'], ['FLUSHALL'], ['EXEC'], ['GET', `k-${ch}`]);
      const tx = await answers(a, 5, seen);
      t.same(tx.slice(0, 2), ['+OK\r\n', '+QUEUED\r\n']);
      t.match(tx[2], REFUSED);
      t.equal(tx[3], '-EXECABORT Transaction discarded because of previous errors.\r\n');
      t.equal(tx[4], '$1\r\nv\r\n', 'nothing of the transaction ran, and the session is still open');
    });
  }
}

t.test('subscribed (RESP3), a transaction with a refused command aborts in place: EXECABORT, the session goes on', async (t) => {
  const { a, seen, confirmation } = await subscribed(t, 'random', 3, 'tx-feed');
  t.match(confirmation, /^>3\r\n\$9\r\nsubscribe\r\n/);
  a.send(['MULTI'], ['SET', 'sub-tx', 'one'], ['FLUSHALL'], ['SET', 'sub-tx', 'two'], ['EXEC'], ['SET', 'sub-after', 'x']);
  await publisher.publish('tx-feed', 'during');
  const replies = await answers(a, 6, seen);
  t.same(replies.slice(0, 2), ['+OK\r\n', '+QUEUED\r\n']);
  t.match(replies[2], REFUSED);
  t.equal(replies[3], '+QUEUED\r\n');
  t.equal(replies[4], '-EXECABORT Transaction discarded because of previous errors.\r\n', "the DISCARD's +OK taken out, EXECABORT in its place");
  t.equal(replies[5], '+OK\r\n', 'the command after it runs');
  t.same(await publisher.mget('sub-tx', 'sub-after'), [null, 'x'], 'nothing of the transaction ran');
  await publisher.publish('tx-feed', 'after');
  const [message] = await a.replies(1);
  t.match(message, /^>3\r\n\$7\r\nmessage\r\n\$7\r\ntx-feed\r\n/, 'still subscribed');
});

t.test('a SUBSCRIBE the upstream refuses as a whole is answered by its error: refusals after it are not held back', async (t) => {
  for (const proto of [2, 3] as const) {
    const a = await login('narrow', proto);
    t.teardown(() => a.end());
    a.send(['SUBSCRIBE', 'allowed.one', 'secret.two'], ['FLUSHALL'], ['SET', 'narrow-k', String(proto)]);
    const r = await a.replies(3, 5_000);
    t.match(r[0], /^-NOPERM /, `RESP${proto}: the upstream's ACL refuses the whole command`);
    t.match(r[1], REFUSED, 'the refusal next');
    t.equal(r[2], '+OK\r\n', 'an ordinary connection: nothing was subscribed');
    a.send(['SUBSCRIBE'], ['FLUSHALL']);
    const [arity, refused] = await a.replies(2, 5_000);
    t.match(arity, /^-ERR wrong number of arguments/, 'a SUBSCRIBE naming nothing: one error');
    t.match(refused, REFUSED);
  }
});

t.test('(P|S)SUBSCRIBE inside MULTI is refused, and the transaction aborts', async (t) => {
  const a = await login('direct', 2);
  t.teardown(() => a.end());
  a.send(['MULTI'], ['SUBSCRIBE', 'in-tx'], ['EXEC'], ['PING']);
  const r = await a.replies(4);
  t.equal(r[0], '+OK\r\n');
  t.equal(r[1], '-ERR sluice: (P|S)SUBSCRIBE and (P|S)UNSUBSCRIBE are not accepted inside MULTI\r\n');
  t.equal(r[2], '-EXECABORT Transaction discarded because of previous errors.\r\n');
  t.equal(r[3], '+PONG\r\n', 'never subscribed: PING gets +PONG, not a RESP2 pub/sub pong');
});

t.test('RESET while subscribed: +RESET, the identity re-established, refusals in place (bytes cut one by one)', async (t) => {
  const a = await login('byte', 2);
  t.teardown(() => a.end());
  const seen = { messages: 0 };
  a.send(['SUBSCRIBE', 'reset-feed'], ['PSUBSCRIBE', 'reset-*']);
  await answers(a, 2, seen);
  const published = publisher.publish('reset-feed', 'x');
  a.send(['RESET'], ['FLUSHALL'], ['ACL', 'WHOAMI'], ['PING']);
  await published;
  const r = await answers(a, 4, seen);
  t.equal(r[0], '+RESET\r\n');
  t.match(r[1], REFUSED);
  t.equal(r[2], '$3\r\napp\r\n', "the target's user, not default");
  t.equal(r[3], '+PONG\r\n', 'no longer subscribed');
});

t.test('ioredis: a subscriber connection that unsubscribes pipelines ordinary commands, a refusal in its place', async (t) => {
  const sub = new Redis({ port: gw.port('direct'), password: token, lazyConnect: true, maxRetriesPerRequest: 0 });
  sub.on('error', () => {});
  await sub.connect();
  t.teardown(() => sub.disconnect());
  const got: string[] = [];
  sub.on('message', (_ch: string, m: string) => got.push(m));
  await sub.subscribe('io-feed', 'io-other');
  for (let i = 0; i < 5; i++) await publisher.publish('io-feed', `m${i}`);
  await sub.unsubscribe();
  t.same(got, ['m0', 'm1', 'm2', 'm3', 'm4'], 'every message delivered');
  const res = await sub.pipeline().set('io-k', '1').flushall().get('io-k').exec();
  t.same(res![0], [null, 'OK']);
  t.match(String(res![1]![0]), /NOPERM sluice: denied by rule "no-flush"/, "FLUSHALL's own reply is the refusal");
  t.same(res![2], [null, '1'], "and GET's is the value");
});


t.test('the protocol follows HELLO replies, not HELLO commands', async (t) => {
  // RESP2: a HELLO that Redis refuses leaves the connection on RESP2, where messages are arrays.
  const a = await login('random', 2);
  t.teardown(() => a.end());
  const seen = { messages: 0 };
  a.send(['HELLO', '3', 'FOO']);
  t.match((await a.replies(1))[0], /^-ERR/, 'Redis refuses the HELLO');
  a.send(['SUBSCRIBE', 'hello-feed']);
  await answers(a, 1, seen);
  await publisher.publish('hello-feed', 'one');
  a.send(['PING'], ['FLUSHALL'], ['PING']);
  const r = await answers(a, 3, seen);
  t.same([r[0], r[2]], ['*2\r\n$4\r\npong\r\n$0\r\n\r\n', '*2\r\n$4\r\npong\r\n$0\r\n\r\n']);
  t.match(r[1], REFUSED, 'the refusal in place: the RESP2 message was set aside');
  t.equal(seen.messages, 1);

  // RESP3, subscribed: HELLO 2 is accepted, and the messages after it are arrays.
  const b = await login('byte', 3);
  t.teardown(() => b.end());
  const seenB = { messages: 0 };
  b.send(['SUBSCRIBE', 'hello-feed'], ['HELLO', '2']);
  const [, props] = await answers(b, 2, seenB);
  t.match(props, /^\*14\r\n/, 'HELLO 2 answers with an array');
  await publisher.publish('hello-feed', 'two');
  b.send(['PING'], ['FLUSHALL'], ['PING']);
  const rb = await answers(b, 3, seenB);
  t.equal(rb[0], '*2\r\n$4\r\npong\r\n$0\r\n\r\n', 'RESP2 while subscribed');
  t.match(rb[1], REFUSED);
  t.equal(seenB.messages, 1, 'the message, an array now, set aside');
});

t.test('RESP3, subscribed: an ordinary reply shaped like a message is a reply', async (t) => {
  await publisher.del('looks-like');
  await publisher.rpush('looks-like', 'message', 'chan', 'payload');
  const a = await login('random', 3);
  t.teardown(() => a.end());
  a.send(['SUBSCRIBE', 'shape-feed'], ['LRANGE', 'looks-like', '0', '-1'], ['FLUSHALL'], ['GET', 'nothing-here']);
  const r = await a.replies(4);
  t.match(r[0], /^>3\r\n\$9\r\nsubscribe/);
  t.equal(r[1], '*3\r\n$7\r\nmessage\r\n$4\r\nchan\r\n$7\r\npayload\r\n', "LRANGE's reply");
  t.match(r[2], REFUSED, 'the refusal after it, not before');
  t.equal(r[3], '_\r\n');
});

t.test('HELLO inside MULTI, and PUBLISH inside MULTI on a subscribed connection, are refused', async (t) => {
  const a = await login('direct', 3);
  t.teardown(() => a.end());
  a.send(['MULTI'], ['HELLO', '2'], ['EXEC']);
  const r = await a.replies(3);
  t.equal(r[1], '-ERR sluice: HELLO is not accepted inside MULTI\r\n');
  t.equal(r[2], '-EXECABORT Transaction discarded because of previous errors.\r\n');
  const seen = { messages: 0 };
  a.send(['SUBSCRIBE', 'pub-tx'], ['MULTI'], ['PUBLISH', 'pub-tx', 'x'], ['EXEC'], ['PING']);
  const s = await answers(a, 5, seen);
  t.equal(s[2], '-ERR sluice: PUBLISH, SPUBLISH and scripts are not accepted inside MULTI after a (P|S)(UN)SUBSCRIBE on this connection\r\n');
  t.equal(s[3], '-EXECABORT Transaction discarded because of previous errors.\r\n');
  t.equal(s[4], '+PONG\r\n');
  t.equal(seen.messages, 0, 'nothing was published');
  // A script may publish too (Redis misplaces its message the same way).
  a.send(['MULTI'], ['EVAL', "return redis.call('publish', 'pub-tx', 'z')", '0'], ['EXEC']);
  const e = await answers(a, 3, seen);
  t.match(e[1], /^-ERR sluice: PUBLISH, SPUBLISH and scripts are not accepted inside MULTI/);
  t.equal(e[2], '-EXECABORT Transaction discarded because of previous errors.\r\n');
  a.send(['PUBLISH', 'pub-tx', 'y'], ['PING']);
  const p = await answers(a, 2, seen);
  t.same(p, [':1\r\n', '+PONG\r\n'], 'outside MULTI it runs');
  t.equal(seen.messages, 1);
});

t.test('a MULTI that Redis refuses on a subscribed connection begins no transaction: UNSUBSCRIBE still works', async (t) => {
  const { a, seen } = await subscribed(t, 'random', 2, 'multi-feed');
  a.send(['MULTI']);
  t.match((await answers(a, 1, seen))[0], /^-ERR Can't execute 'multi'/, 'Redis refuses MULTI while subscribed (RESP2)');
  a.send(['UNSUBSCRIBE'], ['PING']);
  const r = await answers(a, 2, seen);
  t.match(r[0], /^\*3\r\n\$11\r\nunsubscribe\r\n\$10\r\nmulti-feed\r\n:0\r\n$/, 'the UNSUBSCRIBE is forwarded, not refused as inside MULTI');
  t.equal(r[1], '+PONG\r\n', 'and the connection is an ordinary one');
});

t.test('channels, patterns and shard channels together, duplicates included, then all dropped', async (t) => {
  for (const proto of [2, 3] as const) {
    const a = await login('random', proto);
    t.teardown(() => a.end());
    const seen = { messages: 0 };
    a.send(['SUBSCRIBE', 'mix-a', 'mix-a', 'mix-b'], ['SSUBSCRIBE', 'mix-s'], ['PSUBSCRIBE', 'mix-*', 'mix-*'], ['FLUSHALL']);
    const r = await answers(a, 7, seen);
    t.match(r[2], /subscribe\r\n\$5\r\nmix-b\r\n:2\r\n$/, 'a duplicate leaves the count as it was');
    t.match(r[3], /ssubscribe\r\n\$5\r\nmix-s\r\n:1\r\n$/, 'shard channels are counted apart');
    t.match(r[5], /psubscribe\r\n\$5\r\nmix-\*\r\n:3\r\n$/);
    t.match(r[6], REFUSED);
    await publisher.spublish('mix-s', 's');
    await publisher.publish('mix-a', 'a');
    a.send(['SUNSUBSCRIBE'], ['UNSUBSCRIBE'], ['PUNSUBSCRIBE'], ['MULTI'], ['FLUSHALL'], ['EXEC'], ['PING']);
    const d = await answers(a, 8, seen);
    t.match(d[0], /sunsubscribe\r\n\$5\r\nmix-s\r\n:0\r\n$/);
    t.match(d[3], /punsubscribe\r\n\$5\r\nmix-\*\r\n:0\r\n$/, 'one confirmation per subscription dropped');
    t.match(d[5], REFUSED);
    t.equal(d[6], '-EXECABORT Transaction discarded because of previous errors.\r\n');
    t.equal(d[7], '+PONG\r\n', `RESP${proto}: an ordinary connection again`);
    t.equal(seen.messages, 3, 'the shard message, and the channel message twice (channel and pattern)');
  }
});

t.test('the replies to the re-authentication after RESET are taken out while pub/sub commands are awaited', async (t) => {
  const { a, seen } = await subscribed(t, 'byte', 2, 'drop-feed');
  a.send(['RESET'], ['SUBSCRIBE', 'drop-again'], ['FLUSHALL'], ['UNSUBSCRIBE'], ['ACL', 'WHOAMI']);
  const r = await answers(a, 5, seen);
  t.equal(r[0], '+RESET\r\n');
  t.match(r[1], /^\*3\r\n\$9\r\nsubscribe\r\n\$10\r\ndrop-again\r\n:1\r\n$/, "no +OK of the target's AUTH or SELECT before it");
  t.match(r[2], REFUSED);
  t.match(r[3], /unsubscribe\r\n\$10\r\ndrop-again\r\n:0\r\n$/);
  t.equal(r[4], '$3\r\napp\r\n');
});

/**
 * A stand-in upstream for what Redis does not do: it accepts the gateway's
 * login, then answers PING with two replies, SUBSCRIBE with its
 * confirmation and one more element, and PSUBSCRIBE with a confirmation
 * whose count is a string.
 */
async function lyingUpstream(t: { teardown(fn: () => unknown): void }): Promise<number> {
  const server = createServer((socket) => {
    socket.on('error', () => {});
    socket.on('data', (d: Buffer) => {
      const text = d.toString('latin1');
      if (/\$4\r\nAUTH\r\n/i.test(text)) socket.write('+OK\r\n');
      else if (/\$4\r\nPING\r\n/i.test(text)) socket.write('+PONG\r\n+PONG\r\n');
      else if (/\$9\r\nSUBSCRIBE\r\n/i.test(text)) socket.write('*3\r\n$9\r\nsubscribe\r\n$1\r\nx\r\n:1\r\n:1\r\n');
      else if (/\$10\r\nPSUBSCRIBE\r\n/i.test(text)) socket.write('*3\r\n$10\r\npsubscribe\r\n$1\r\np\r\n$1\r\n1\r\n');
    });
  });
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
  t.teardown(() => new Promise((resolve) => server.close(resolve)));
  return (server.address() as AddressInfo).port;
}

t.test('an upstream that answers more than it was asked ends the session, paired or reading pub/sub', async (t) => {
  const port = await lyingUpstream(t);
  const liar = await startGateway(
    `identity: { dev_issuer: true }
targets:${redisTargetYaml('liar', { port })}
policies:
  - { name: agents, subjects: { groups: [agent] }, targets: [liar] }
`,
    { REDIS_PW: 'not-checked' },
  );
  t.teardown(() => liar.close());
  const tok = await liar.token('agent-2', ['agent']);
  for (const command of [['PING'], ['SUBSCRIBE', 'x'], ['PSUBSCRIBE', 'p']]) {
    const a = await Raw.open(liar.port('liar'));
    t.teardown(() => a.end());
    a.send(['AUTH', tok]);
    t.same(await a.replies(1), ['+OK\r\n']);
    a.send(command);
    t.ok(await a.closedWithin(3_000), `${command[0]}: the session ends`);
    t.equal(a.buf, '', 'and nothing of the replies that no longer pair reaches the client');
  }
  t.ok(liar.logs.some((l) => l.includes('the replies no longer match the commands sent')), 'the log says why');
  t.ok(liar.logs.some((l) => l.includes('a pub/sub confirmation without a readable count')), 'for the unreadable count too');
});

import t from 'tap';
import { classifyCommand, commandKind, isKnownCategory, isKnownCommand } from '../../protocols/redis/classify.js';
import { REDIS_COMMANDS } from '../../protocols/redis/command-table.js';

const argv = (...a: (string | Buffer)[]): Buffer[] => a.map((x) => (typeof x === 'string' ? Buffer.from(x) : x));
const classify = (...a: (string | Buffer)[]) => classifyCommand(argv(...a));

t.test('string commands: name, categories, keys', async (t) => {
  t.same(classify('GET', 'k'), { protocol: 'redis', command: 'get', categories: ['@read', '@string', '@fast'], keys: ['k'] });
  const set = classify('SET', 'k', 'v', 'EX', '10');
  t.equal(set.command, 'set');
  t.same(set.keys, ['k']);
  t.ok(set.categories.includes('@write'));
  t.same(classify('MGET', 'a', 'b', 'c').keys, ['a', 'b', 'c']);
  t.same(classify('MSET', 'a', '1', 'b', '2').keys, ['a', 'b'], 'MSET: every other argument');
  t.same(classify('HSET', 'h', 'f1', 'v1', 'f2', 'v2').keys, ['h']);
  t.ok(classify('HSET', 'h', 'f', 'v').categories.includes('@hash'));
  t.same(classify('LMOVE', 'src', 'dst', 'LEFT', 'RIGHT').keys, ['src', 'dst']);
});

t.test('case-insensitive names', async (t) => {
  for (const name of ['get', 'GET', 'gEt', 'Get']) {
    const f = classify(name, 'k');
    t.equal(f.command, 'get', name);
    t.same(f.keys, ['k'], name);
  }
  t.equal(classify('cLiEnT', 'KiLl', 'ID', '1').subcommand, 'kill');
  t.ok(isKnownCommand('gEt'));
  t.ok(isKnownCommand('CLIENT|Kill'));
});

t.test('movable keys from key-specs', async (t) => {
  t.same(classify('XREAD', 'COUNT', '2', 'STREAMS', 'k1', 'k2', '0', '0').keys, ['k1', 'k2'], 'XREAD: half of what follows STREAMS');
  t.same(classify('xread', 'streams', 'k1', '$').keys, ['k1'], 'keyword matched case-insensitively');
  t.same(
    classify('XREADGROUP', 'GROUP', 'g', 'c', 'BLOCK', '0', 'STREAMS', 's1', 's2', '>', '>').keys,
    ['s1', 's2'],
  );
  t.same(classify('ZUNIONSTORE', 'dst', '2', 'a', 'b', 'WEIGHTS', '1', '2').keys, ['dst', 'a', 'b'], 'ZUNIONSTORE: destination + numkeys');
  t.same(classify('ZUNION', '2', 'a', 'b').keys, ['a', 'b']);
  t.same(classify('LMPOP', '2', 'l1', 'l2', 'LEFT').keys, ['l1', 'l2']);
  t.same(classify('BLMPOP', '0', '1', 'l1', 'LEFT').keys, ['l1']);
  t.same(classify('GEORADIUS', 'g', '0', '0', '1', 'km', 'STORE', 'dst').keys, ['g', 'dst']);
  t.same(
    classify('GEORADIUS', 'nosuch', '0', '0', '1', 'm', 'STORE', 'tmp:x', 'STORE', 'secret:important').keys,
    ['nosuch', 'tmp:x', 'secret:important'],
    'every STORE operand: Redis writes the last one',
  );
  t.same(classify('GEORADIUSBYMEMBER', 'g', 'm1', '1', 'km', 'STOREDIST', 'd1', 'STORE', 'd2').keys, ['g', 'd1', 'd2']);
  t.same(
    classify('XREADGROUP', 'COUNT', '1', 'GROUP', 'g', 'STREAMS', 'STREAMS', 'secret:s', '>').keys,
    ['secret:s'],
    'options in any order: a consumer named STREAMS is not the keyword',
  );
  t.same(classify('XREADGROUP', 'NOACK', 'GROUP', 'g', 'c', 'STREAMS', 'a', 'b', '>', '>').keys, ['a', 'b']);
  t.equal(classify('XREAD', 'STREAMS', 'a', 'b', '0').anyKey, true, 'what Redis refuses (odd count after STREAMS) counts as any key');
  t.equal(classify('XREAD', 'BOGUS', 'STREAMS', 'a', '0').anyKey, true);
  t.same(classify('SORT', 'src', 'LIMIT', '0', '10', 'STORE', 'dst').keys, ['src', 'dst'], 'SORT ... STORE');
  t.same(classify('SORT', 'src', 'BY', 'w_*', 'GET', '#', 'GET', 'o_*->f').keys, ['src', 'w_*', 'o_*->f'], 'SORT BY/GET patterns');
  t.same(classify('SORT_RO', 'src', 'BY', 'nosort').keys, ['src'], 'a BY pattern without * reads no key');
  t.equal(classify('SORT', 'l', 'BY', 'nosort', 'GET', '*').anyKey, true, 'a pattern with * reads keys made of the elements: any key');
  t.equal(classify('SORT', 'l', 'BY', 'nosort', 'GET', '#').anyKey, undefined, 'GET # reads the element itself');
  t.equal(classify('GET', 'k').anyKey, undefined);
  t.equal(classify('EVAL', "return redis.call('GET', 'secret:x')", '1', 'cache:a').anyKey, true, 'a script may reach keys it does not declare');
  t.equal(classify('FCALL_RO', 'f', '0').anyKey, true);
  t.equal(classify('SCRIPT', 'FLUSH').anyKey, undefined, 'SCRIPT itself runs nothing');
  t.equal(classify('FLUSHDB').anyKey, true, 'FLUSHDB names no key and deletes every one');
  t.equal(classify('flushall', 'ASYNC').anyKey, true);
  t.equal(classify('SWAPDB', '0', '1').anyKey, true);
  t.equal(classify('DBSIZE').anyKey, undefined, 'a count reads no key');
  t.same(classify('MIGRATE', 'h', '6379', 'k', '0', '1000').keys, ['k']);
  t.same(classify('MIGRATE', 'h', '6379', '', '0', '1000', 'COPY', 'AUTH2', 'u', 'p', 'KEYS', 'a', 'b').keys, ['a', 'b']);
  t.same(classify('OBJECT', 'ENCODING', 'k').keys, ['k'], 'subcommand key-specs count from argv[0]');
  t.same(classify('XINFO', 'STREAM', 's', 'FULL').keys, ['s']);
});

t.test('scripting', async (t) => {
  const e = classify('EVAL', 'return 1', '2', 'k1', 'k2', 'a1');
  t.equal(e.command, 'eval');
  t.same(e.keys, ['k1', 'k2']);
  t.ok(e.categories.includes('@scripting'));
  t.same(classify('EVAL', 'return 1', '0').keys, []);
  t.same(classify('FCALL', 'f', '1', 'k', 'a').keys, ['k']);
  for (const cmd of [
    ['EVALSHA', 'abc', '0'],
    ['EVAL_RO', 's', '0'],
    ['EVALSHA_RO', 'abc', '0'],
    ['FCALL', 'f', '0'],
    ['FCALL_RO', 'f', '0'],
    ['FUNCTION', 'LOAD', 'code'],
    ['FUNCTION', 'FLUSH'],
    ['FUNCTION'],
    ['FUNCTION', 'NOPE'],
    ['SCRIPT', 'LOAD', 'code'],
    ['SCRIPT', 'FLUSH'],
    ['SCRIPT'],
  ]) {
    t.ok(classify(...cmd).categories.includes('@scripting'), `${cmd.join(' ')} is @scripting`);
  }
  t.equal(classify('FUNCTION', 'load', 'code').subcommand, 'load');
});

t.test('administration and containers', async (t) => {
  const kill = classify('CLIENT', 'KILL', 'ID', '7');
  t.equal(kill.command, 'client');
  t.equal(kill.subcommand, 'kill');
  t.ok(kill.categories.includes('@admin'));
  t.ok(kill.categories.includes('@dangerous'));
  const cfg = classify('CONFIG', 'SET', 'maxmemory', '1mb');
  t.equal(cfg.command, 'config');
  t.equal(cfg.subcommand, 'set');
  t.ok(cfg.categories.includes('@admin') && cfg.categories.includes('@dangerous'));
  t.notOk(classify('CLIENT', 'SETNAME', 'x').categories.includes('@dangerous'), 'CLIENT SETNAME is harmless');
  const flush = classify('FLUSHALL', 'ASYNC');
  t.equal(flush.command, 'flushall');
  for (const c of ['@dangerous', '@write', '@keyspace']) t.ok(flush.categories.includes(c), c);
  t.ok(classify('DEBUG', 'SLEEP', '0').categories.includes('@dangerous'));
  t.equal(classify('DEBUG', 'SLEEP', '0').subcommand, undefined, 'DEBUG is not a container in Redis 7.0');
});

t.test('transactions and pub/sub', async (t) => {
  for (const cmd of ['MULTI', 'EXEC', 'DISCARD', 'WATCH']) t.ok(classify(cmd, 'k').categories.includes('@transaction'), cmd);
  t.same(classify('WATCH', 'a', 'b').keys, ['a', 'b']);
  const sub = classify('SUBSCRIBE', 'news', 'sport');
  t.ok(sub.categories.includes('@pubsub'));
  t.same(sub.keys, [], 'channels are not keys');
  t.ok(classify('PUBLISH', 'ch', 'm').categories.includes('@pubsub'));
  t.same(classify('SPUBLISH', 'ch', 'm').keys, [], 'shard channels (not_key key-specs) are not keys');
  t.equal(classify('PUBSUB', 'CHANNELS').subcommand, 'channels');
});

t.test('unknown commands and subcommands', async (t) => {
  t.same(classify('NOSUCHCMD', 'x'), { protocol: 'redis', command: 'nosuchcmd', categories: ['@unknown'], keys: [], anyKey: true }, 'its keys are not known');
  t.same(classify('JSON.SET', 'k', '$', '1').categories, ['@unknown'], 'module commands are unknown');
  t.notOk(isKnownCommand('nosuchcmd'));
  t.notOk(isKnownCommand('client|nosuch'));
  t.notOk(isKnownCommand('constructor'), 'no prototype leaks');
  t.equal(classify('constructor').categories[0], '@unknown');
  const unknownSub = classify('CLIENT', 'FROB');
  t.equal(unknownSub.command, 'client');
  t.equal(unknownSub.subcommand, 'frob');
  t.ok(unknownSub.categories.includes('@unknown'));
  t.ok(unknownSub.categories.includes('@dangerous'), 'an unknown subcommand carries the container\'s worst categories');
  t.equal(unknownSub.anyKey, true, 'a newer server\'s subcommand may take keys: not known which');
  t.ok(classify('CONFIG').categories.includes('@unknown'), 'bare container Redis would reject');
  t.same(classify('COMMAND').categories, ['@slow', '@connection'], 'bare COMMAND is a valid command');
  const binary = classify(Buffer.from([0xff, 0x47]));
  t.equal(binary.command, '\ufffdg', 'non-UTF-8 names are replaced, ASCII lowercased');
  t.same(classifyCommand([]).categories, ['@unknown']);
  t.same(classify('G'.repeat(10_000)).categories, ['@unknown'], 'an over-long name is unknown');
  t.ok(isKnownCategory('@Dangerous'));
  t.ok(isKnownCategory('@scripting'));
  t.notOk(isKnownCategory('@dangerus'));
});

t.test('keywords and subcommands are read as Redis compares them: up to a NUL byte', async (t) => {
  // Redis matches options with strcasecmp, which stops at the NUL: these are STORE, BY, GET and KEYS to it.
  t.same(classify('GEORADIUS', 'geo:pts', '0', '0', '100', 'km', 'STORE\u0000', 'secret:x').keys, ['geo:pts', 'secret:x']);
  t.same(classify('SORT', 'l', 'STORE\u0000x', 'secret:y').keys, ['l', 'secret:y']);
  t.ok(classify('SORT', 'l', 'BY\u0000', 'nosort', 'GET\u0000', 'secret:*').anyKey, 'a GET pattern may read any key');
  t.same(classify('MIGRATE', 'h', '6379', '', '0', '5000', 'KEYS\u0000', 'secret:a').keys, ['secret:a']);
  const config = classify('CONFIG', 'set\u0000x', 'dir', '/tmp');
  t.equal(config.subcommand, 'set', 'CONFIG set\\0x may run CONFIG SET: judged as it');
  t.ok(config.categories.includes('@dangerous'));
  t.same(classify('GEORADIUS', 'geo:pts', '0', '0', '100', 'km', 'STORED', 'x').keys, ['geo:pts'], 'a longer word is no keyword');
});

t.test('short or malformed argument lists never throw', async (t) => {
  const cases: string[][] = [
    ['GET'],
    ['MSET', 'a'],
    ['XREAD'],
    ['XREAD', 'STREAMS'],
    ['XREAD', 'STREAMS', 'k1'],
    ['ZUNIONSTORE', 'dst'],
    ['ZUNIONSTORE', 'dst', '5', 'a'],
    ['ZUNIONSTORE', 'dst', '-1', 'a'],
    ['ZUNIONSTORE', 'dst', 'x', 'a'],
    ['EVAL'],
    ['EVAL', 's', '99999999999999999999'],
    ['EVAL', 's', '3', 'k1'],
    ['SORT', 'k', 'STORE'],
    ['SORT', 'k', 'BY'],
    ['MIGRATE', 'h'],
    ['MIGRATE', 'h', 'p', '', '0', '0', 'KEYS'],
    ['GEORADIUS', 'g', 'STORE'],
    ['OBJECT', 'ENCODING'],
    ['CLIENT'],
  ];
  for (const c of cases) {
    t.doesNotThrow(() => classify(...c), c.join(' '));
  }
  t.same(classify('GET').keys, []);
  t.same(classify('ZUNIONSTORE', 'dst', '5', 'a').keys, ['dst'], 'numkeys beyond argc: destination only');
  t.same(classify('EVAL', 's', '3', 'k1').keys, []);
  t.same(classify('SET', Buffer.from([0x61, 0xff, 0x62]), 'v').keys, ['a\ufffdb'], 'keys decode as UTF-8 with replacement');
});

t.test('the table covers Redis 7.0', async (t) => {
  const names = Object.keys(REDIS_COMMANDS);
  t.ok(names.length >= 230, `${names.length} commands`);
  for (const name of names) {
    t.not(classify(name).categories[0], '@unknown', name);
  }
});

t.test('hot path cost (informational)', async (t) => {
  const get = argv('GET', 'user:1000');
  const set = argv('set', 'user:1000', 'value');
  const n = 500_000;
  for (let i = 0; i < 50_000; i++) classifyCommand(i & 1 ? get : set);
  // CPU time rather than wall time: the test machine is shared with other jobs.
  const start = process.cpuUsage();
  for (let i = 0; i < n; i++) classifyCommand(i & 1 ? get : set);
  const used = process.cpuUsage(start);
  const ns = ((used.user + used.system) * 1000) / n;
  t.comment(`classifyCommand GET/SET: ${ns.toFixed(0)} ns/command (CPU time)`);
  t.pass('measured');
});

t.test('commandKind: the facts of classifyCommand without keys, from offsets, one object per entry', async (t) => {
  const at = (text: string, name: string, sub?: string) => {
    const buf = Buffer.from(text);
    const n = text.indexOf(name);
    const s = sub === undefined ? -1 : text.indexOf(sub, n + name.length);
    return commandKind(buf, n, n + name.length, s, s < 0 ? 0 : s + sub!.length);
  };
  let checked = 0;
  for (const [name, spec] of Object.entries(REDIS_COMMANDS)) {
    const subs = Object.keys(spec.subcommands ?? {});
    for (const sub of subs.length ? subs : [undefined]) {
      const upper = `xx ${name.toUpperCase()} yy ${sub?.toUpperCase() ?? ''} zz`;
      const k = at(upper, name.toUpperCase(), sub?.toUpperCase());
      const facts = classifyCommand(argv(name, ...(sub ? [sub] : [])));
      if (!k || k.command !== facts.command || k.subcommand !== facts.subcommand || k.categories !== facts.categories) {
        t.fail(`${name} ${sub ?? ''}: ${JSON.stringify(k)} vs ${JSON.stringify(facts)}`);
      }
      if (k?.kind !== (sub ? `${name}|${sub}` : name)) t.fail(`${name} ${sub ?? ''}: kind ${k?.kind}`);
      checked++;
    }
  }
  t.ok(checked > 300, `every command and subcommand (${checked})`);
  t.equal(at('GET k', 'GET'), at('get', 'get'), 'the same object whatever the case');
  t.ok(Object.isFrozen(at('get', 'get')));
  t.equal(at('NOSUCHCMD', 'NOSUCHCMD'), undefined, 'unknown name');
  t.equal(at('CLIENT', 'CLIENT'), undefined, 'container without subcommand');
  t.equal(at('CLIENT FROB', 'CLIENT', 'FROB'), undefined, 'unknown subcommand');
  t.equal(at('CLIENTX KILL', 'CLIENTX', 'KILL'), undefined);
});

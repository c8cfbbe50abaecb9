/**
 * The built-in command table (protocols/redis/command-table.ts) against the
 * installed redis-server: every command and subcommand, its categories, flags,
 * key positions and key-specs, and the keys classifyCommand() extracts
 * compared with what the server's own COMMAND GETKEYS says. A Redis upgrade
 * that changes any of it fails here, naming the command and the field.
 */
import t from 'tap';
import { Redis } from 'ioredis';
import { classifyCommand } from '../../protocols/redis/classify.js';
import { REDIS_COMMANDS, REDIS_VERSION, type CommandSpec } from '../../protocols/redis/command-table.js';
import { readCommandTable, readRedisVersion } from '../helpers/redis-command-info.js';
import { startRedis } from '../helpers/redis.js';

const REGENERATE = 'regenerate with: npx tsc -p . && node dist/test/helpers/redis-command-info.js --write';

function same(a: unknown, b: unknown): boolean {
  return JSON.stringify(a) === JSON.stringify(b);
}

function sameSet(a: readonly string[], b: readonly string[]): boolean {
  return same([...a].sort(), [...b].sort());
}

/** Differences between the committed spec and the server's, one line each. */
function diff(path: string, ours: CommandSpec, theirs: CommandSpec, out: string[]): void {
  const show = (v: unknown): string => JSON.stringify(v);
  if (!sameSet(ours.categories, theirs.categories)) out.push(`${path}: categories: table ${show(ours.categories)}, server ${show(theirs.categories)}`);
  if (!sameSet(ours.flags, theirs.flags)) out.push(`${path}: flags: table ${show(ours.flags)}, server ${show(theirs.flags)}`);
  if (ours.arity !== theirs.arity) out.push(`${path}: arity: table ${ours.arity}, server ${theirs.arity}`);
  const pos = (s: CommandSpec): number[] => [s.firstKey, s.lastKey, s.step];
  if (!same(pos(ours), pos(theirs))) out.push(`${path}: first/last/step: table ${show(pos(ours))}, server ${show(pos(theirs))}`);
  if (!same(ours.keySpecs, theirs.keySpecs)) out.push(`${path}: key-specs: table ${show(ours.keySpecs)}, server ${show(theirs.keySpecs)}`);
  const ourSubs = ours.subcommands ?? {};
  const theirSubs = theirs.subcommands ?? {};
  for (const name of new Set([...Object.keys(ourSubs), ...Object.keys(theirSubs)])) {
    const o = ourSubs[name];
    const s = theirSubs[name];
    if (!o) out.push(`${path}|${name}: on the server, missing from the table`);
    else if (!s) out.push(`${path}|${name}: in the table, not on the server`);
    else diff(`${path}|${name}`, o, s, out);
  }
}

t.test('command table and key extraction match the live redis-server', async (t) => {
  const server = await startRedis();
  const client = new Redis({ host: server.host, port: server.port, password: server.password, lazyConnect: true, maxRetriesPerRequest: 0 });
  t.teardown(async () => {
    client.disconnect();
    await server.stop();
  });
  await client.connect();
  const [live, version] = await Promise.all([readCommandTable(client), readRedisVersion(client)]);
  t.comment(`redis-server ${version}; table generated from ${REDIS_VERSION}: ${Object.keys(REDIS_COMMANDS).length} commands`);

  await t.test('every command and subcommand agrees', async (t) => {
    const problems: string[] = [];
    for (const name of new Set([...Object.keys(REDIS_COMMANDS), ...Object.keys(live)])) {
      const ours = REDIS_COMMANDS[name];
      const theirs = live[name];
      if (!ours) problems.push(`${name}: on the server, missing from the table`);
      else if (!theirs) problems.push(`${name}: in the table, not on the server`);
      else diff(name, ours, theirs, problems);
    }
    t.same(problems, [], `the table (Redis ${REDIS_VERSION}) disagrees with redis-server ${version}; ${REGENERATE}`);
  });

  // Synthetic argv for every command and subcommand at its minimum argc and a
  // few arguments more: the keys classifyCommand() finds must be the keys
  // COMMAND GETKEYS finds (an error there - no keys, bad arguments - means none).
  await t.test('keys of synthetic argv agree with COMMAND GETKEYS', async (t) => {
    const argvs: string[][] = [];
    const add = (prefix: string[], arity: number): void => {
      const min = Math.abs(arity);
      const sizes = arity > 0 ? [min] : [min, min + 1, min + 3];
      for (const n of sizes) {
        const argv = [...prefix];
        for (let i = argv.length; i < n; i++) argv.push(`k${i}`);
        argvs.push(argv);
      }
    };
    for (const [name, spec] of Object.entries(REDIS_COMMANDS)) {
      if (spec.subcommands) for (const [sub, s] of Object.entries(spec.subcommands)) add([name, sub], s.arity);
      else add([name], spec.arity);
    }
    const { problems, partial } = await compareWithGetkeys(client, argvs);
    t.same(problems, [], `${argvs.length} argument lists`);
    for (const p of partial) t.comment(`partial key-specs (deliberate): ${p}`);
  });

  await t.test('keys of real-looking commands agree with COMMAND GETKEYS', async (t) => {
    const argvs = [
      ['GET', 'k'],
      ['SET', 'k', 'v', 'EX', '10', 'GET'],
      ['MSET', 'a', '1', 'b', '2'],
      ['MGET', 'a', 'b'],
      ['HSET', 'h', 'f', 'v'],
      ['XREAD', 'COUNT', '1', 'STREAMS', 'k1', 'k2', '0', '0'],
      ['XREADGROUP', 'GROUP', 'g', 'c', 'STREAMS', 's1', '>'],
      ['ZUNIONSTORE', 'dst', '2', 'a', 'b', 'WEIGHTS', '1', '2'],
      ['ZINTER', '3', 'a', 'b', 'c', 'WITHSCORES'],
      ['ZDIFFSTORE', 'dst', '1', 'a'],
      ['SINTERCARD', '2', 'a', 'b', 'LIMIT', '1'],
      ['EVAL', 'return 1', '2', 'k1', 'k2', 'a1'],
      ['EVALSHA_RO', 'abc', '1', 'k1', 'a1'],
      ['FCALL', 'f', '1', 'k', 'a'],
      ['LMPOP', '2', 'l1', 'l2', 'LEFT', 'COUNT', '2'],
      ['BZMPOP', '0', '2', 'z1', 'z2', 'MIN'],
      ['GEORADIUS', 'g', '0', '0', '1', 'km', 'STORE', 'dst'],
      ['GEORADIUSBYMEMBER', 'g', 'm', '1', 'km', 'STOREDIST', 'dst'],
      ['GEOSEARCHSTORE', 'dst', 'src', 'FROMMEMBER', 'm', 'BYRADIUS', '1', 'km'],
      ['SORT', 'src', 'LIMIT', '0', '10', 'ALPHA', 'STORE', 'dst'],
      ['SORT_RO', 'src', 'ALPHA'],
      ['MIGRATE', 'h', '6379', 'k', '0', '1000'],
      ['MIGRATE', 'h', '6379', '', '0', '1000', 'COPY', 'REPLACE', 'AUTH2', 'u', 'p', 'KEYS', 'a', 'b'],
      ['OBJECT', 'ENCODING', 'k'],
      ['XINFO', 'STREAM', 's', 'FULL'],
      ['MEMORY', 'USAGE', 'k', 'SAMPLES', '5'],
      ['BITFIELD', 'b', 'GET', 'u8', '0'],
      ['RENAME', 'a', 'b'],
      ['COPY', 'a', 'b', 'DB', '0'],
      ['BLMOVE', 'a', 'b', 'LEFT', 'RIGHT', '0'],
      ['WATCH', 'a', 'b'],
      ['DEL', 'a', 'b', 'c'],
    ];
    const { problems, partial } = await compareWithGetkeys(client, argvs);
    t.same(problems, [], `${argvs.length} argument lists`);
    t.same(partial, [], 'GETKEYS accepts every real-looking command');
  });
});

/**
 * Compares classifyCommand() keys with COMMAND GETKEYS for each argv. Where
 * GETKEYS answers an error, Redis found some key-spec invalid and drops every
 * key (getKeysUsingKeySpecs without GET_KEYSPEC_RETURN_PARTIAL); classifyCommand
 * evaluates each key-spec on its own and keeps the keys of the valid ones
 * (PFMERGE dst with no sources still writes dst), so there it may report more.
 * Those cases are listed as comments, not failures.
 */
async function compareWithGetkeys(client: Redis, argvs: string[][]): Promise<{ problems: string[]; partial: string[] }> {
  const pipeline = client.pipeline();
  for (const argv of argvs) pipeline.call('COMMAND', 'GETKEYS', ...argv);
  const replies = (await pipeline.exec()) ?? [];
  const problems: string[] = [];
  const partial: string[] = [];
  argvs.forEach((argv, i) => {
    const [err, reply] = replies[i] ?? [new Error('no reply'), null];
    const theirs = err ? [] : (reply as string[]);
    const ours = classifyCommand(argv.map((a) => Buffer.from(a))).keys;
    if (same(ours, theirs)) return;
    const line = `${argv.join(' ')}: classifyCommand ${JSON.stringify(ours)}, COMMAND GETKEYS ${err ? `error (${err.message})` : JSON.stringify(theirs)}`;
    (err ? partial : problems).push(line);
  });
  return { problems, partial };
}

import t from 'tap';
import { RedisCommandGate, describeCommand, fingerprintOf } from '../../protocols/redis/command-gate.js';
import { classifyCommand, commandKind, type CommandKind } from '../../protocols/redis/classify.js';
import { SessionPolicy } from '../../src/policy/engine.js';
import { statementHash } from '../../src/policy/approvals.js';
import { createLogger } from '../../src/log.js';
import type { RuleConfig } from '../../src/policy/types.js';
import type { AuditEvent } from '../../src/store/types.js';

const kind = (name: string, sub?: string): CommandKind => {
  const buf = Buffer.from(sub === undefined ? name : `${name} ${sub}`);
  const k = commandKind(buf, 0, name.length, sub === undefined ? -1 : name.length + 1, buf.length);
  if (!k) throw new Error(`no kind for ${name} ${sub ?? ''}`);
  return k;
};
const argv = (...a: string[]): Buffer[] => a.map((x) => Buffer.from(x));

function gate(rules: RuleConfig[], options: { auditEachAllowed?: boolean; approvals?: object } = {}) {
  const events: AuditEvent[] = [];
  const verdicts: string[] = [];
  const policy = new SessionPolicy({ name: 'p', subjects: { groups: ['g'] }, targets: ['t'], default: 'allow', rules });
  const g = new RedisCommandGate({
    sessionId: 's1',
    subject: 'alice',
    target: 't',
    policy,
    logger: createLogger('silent', { write: () => {} }),
    audit: { write: (e) => void events.push(e) },
    onVerdict: (v) => void verdicts.push(v),
    ...(options.auditEachAllowed ? { auditEachAllowed: true } : {}),
    ...(options.approvals ? { approvals: options.approvals as never } : {}),
  });
  return { g, events, verdicts };
}

const NO_ADMIN: RuleConfig = { name: 'no-admin', action: 'deny', match: { commands: ['@dangerous', 'flushall'] } };

t.test('allows: a kind the policy allows whatever its keys is allowed and counted, without judge', async (t) => {
  const { g, events, verdicts } = gate([NO_ADMIN, { name: 'pg-only', action: 'deny', match: { kinds: ['drop'] } }]);
  t.ok(g.allows(kind('GET')));
  t.ok(g.allows(kind('get')), 'the same kind, any case');
  t.ok(g.allows(kind('CLIENT', 'SETNAME')), 'a harmless subcommand');
  t.notOk(g.allows(kind('FLUSHALL')), 'denied by name: judge decides');
  t.notOk(g.allows(kind('CLIENT', 'KILL')), '@dangerous subcommand: judge decides');
  t.equal(g.judge(argv('FLUSHALL')).action, 'deny', 'and judge denies it');
  t.same(verdicts, ['allowed', 'allowed', 'allowed', 'denied']);
  g.close();
  const rows = events.filter((e) => e.verdict === 'allowed').map((e) => [e.kind, e.rows, e.text]);
  t.same(rows.sort(), [['client|setname', 1, 'CLIENT|SETNAME x1'], ['get', 2, 'GET x2']], 'one row per kind, as judge() counts');
});

t.test('allows: never decides when a rule looks at keys, or each allowed command is audited', async (t) => {
  const withKeys = gate([{ name: 'no-secrets', action: 'deny', match: { keys: ['secret:*'] } }]);
  t.notOk(withKeys.g.allows(kind('GET')), 'GET secret:x would be denied: keys matter');
  t.equal(withKeys.g.judge(argv('GET', 'secret:x')).action, 'deny');
  t.equal(withKeys.g.judge(argv('GET', 'public')).action, 'allow');
  withKeys.g.close();
  const both = gate([{ name: 'no-secret-writes', action: 'deny', match: { commands: ['@write'], keys: ['secret:*'] } }]);
  t.notOk(both.g.allows(kind('SET')));
  both.g.close();
  const each = gate([NO_ADMIN], { auditEachAllowed: true });
  t.notOk(each.g.allows(kind('GET')), 'the audit row needs the arguments');
  each.g.close();
  t.same(each.verdicts, [], 'nothing counted when allows() declines');
});

t.test('allows: a kind that needs approval goes to judge', async (t) => {
  const { g } = gate([{ name: 'writes-need-approval', action: 'approve', match: { commands: ['@write'] } }]);
  t.notOk(g.allows(kind('SET')));
  t.ok(g.allows(kind('GET')));
  g.close();
});

t.test('approval windows: scripts, administration and commands without known keys are told apart by what they do, credentials aside', async (t) => {
  const fp = (...a: string[]): string => {
    const args = a.map((x) => Buffer.from(x));
    return fingerprintOf(classifyCommand(args), args);
  };
  t.equal(fp('UNLINK', 'old:1'), fp('unlink', 'old:1'), 'a data command: its kind and keys');
  t.not(fp('UNLINK', 'a', 'b'), fp('UNLINK', 'a\u0000b'), 'two keys are not one key with a NUL in it');
  t.not(fp('EVAL', 'return 1', '0'), fp('EVAL', "return redis.call('FLUSHALL')", '0'), 'another script');
  t.not(fp('CONFIG', 'SET', 'dir', '/tmp'), fp('CONFIG', 'SET', 'dir', '/root/.ssh'), 'another value');
  t.not(fp('CONFIG', 'SET', 'maxmemory', '1gb'), fp('CONFIG', 'SET', 'dir', '1gb'), 'another parameter');
  t.equal(fp('CONFIG', 'SET', 'requirepass', 'a'), fp('CONFIG', 'SET', 'requirepass', 'b'), 'a password is not part of it');
  t.equal(fp('CONFIG', 'SET', 'tls-key-file-pass', 'a'), fp('CONFIG', 'SET', 'tls-key-file-pass', 'b'), 'nor a TLS key passphrase');
  t.equal(fp('CONFIG', 'SET', 'maxmemory', '1gb', 'tls-client-key-file-pass', 'a'), fp('CONFIG', 'SET', 'maxmemory', '1gb', 'tls-client-key-file-pass', 'b'));
  t.equal(fp('ACL', 'SETUSER', 'bob', 'on', '>pw1', '+@read'), fp('ACL', 'SETUSER', 'bob', 'on', '>pw2', '+@read'));
  t.not(fp('ACL', 'SETUSER', 'bob', 'on', '>pw1', '+@read'), fp('ACL', 'SETUSER', 'bob', 'on', '>pw1', '+@all'), 'other permissions');
  // Where the keys do not say what a command touches, its arguments do.
  t.not(fp('PUBLISH', 'deploys', 'ok'), fp('PUBLISH', 'payments-ctl', 'halt'), 'a command that names no key: another channel');
  t.equal(fp('PUBLISH', 'deploys', 'ok'), fp('publish', 'deploys', 'ok'));
  t.not(fp('JSON.SET', 'cache:1', '$', '1'), fp('JSON.SET', 'prod:users', '$', '{}'), 'a module command, whose keys are not known');
  t.equal(fp('SET', 'k', 'v1'), fp('SET', 'k', 'v2'), 'a keyed data command: other values, same window');
});

t.test('an approval that does not match the held command releases nothing', async (t) => {
  const other = { id: 'apr_other', status: 'approved', sessionId: 's1', subject: 'alice', statementHash: statementHash(Buffer.from('something else')) };
  const { g, events } = gate([{ name: 'ask', action: 'approve', match: { commands: ['unlink'] } }], {
    approvals: {
      windowAllows: () => undefined,
      markUsed: () => t.fail('not used'),
      requestFor: () => ({ record: { id: 'apr_other' }, outcome: Promise.resolve({ status: 'approved', record: other }), cancel: () => undefined }),
    },
  });
  const args = argv('UNLINK', 'old:1');
  const judged = g.judge(args);
  t.equal(judged.action, 'approve');
  if (judged.action !== 'approve') return;
  const reply = await g.hold(Buffer.from('*2\r\n$6\r\nUNLINK\r\n$5\r\nold:1\r\n'), args, judged.verdict, judged.facts);
  t.match(reply?.toString(), /^-NOPERM sluice: approval apr_other was denied/, 'refused, not forwarded');
  t.match(events.at(-1), { verdict: 'approval_denied' });
  g.close();
});

t.test('a huge command name or key is cut where it is kept or shown, and compared whole', async (t) => {
  const name = `X${'y'.repeat(1_000_000)}`;
  const denied = gate([{ name: 'no-modules', action: 'deny', match: { commands: ['@unknown'] } }]);
  const verdict = denied.g.judge([Buffer.from(name)]);
  t.equal(verdict.action, 'deny');
  const reply = verdict.action === 'deny' ? verdict.reply.toString() : '';
  t.ok(reply.length < 1000, `the client's error is short: ${reply.length} bytes`);
  t.match(reply, /command xy{127}\.\.\.\(1000001 characters\)/);
  t.ok(denied.events[0]!.kind.length <= 67, 'the audit kind is cut');
  t.ok(JSON.stringify(denied.events[0]).length < 10_000, 'so is the whole audit event');
  denied.g.close();

  const counted = gate([]);
  for (const n of [`${name}a`, `${name}b`]) t.equal(counted.g.judge([Buffer.from(n)]).action, 'allow');
  counted.g.close();
  t.same(counted.events.map((e) => [e.kind.length, e.rows]), [[67, 2]], 'allowed ones are counted under the cut kind');

  const key = 'secret:'.padEnd(500_000, 'k');
  const keyRule = gate([{ name: 'no-secrets', action: 'deny', match: { keys: ['secret:*'] } }]);
  const v = keyRule.g.judge(argv('GET', key));
  t.ok(v.action === 'deny' && v.reply.length < 1000, 'a denied key is cut in the reply too');
  keyRule.g.close();
});

t.test('a description is cut as a whole, however many arguments the command carries', async (t) => {
  const short = [Buffer.from('SET'), Buffer.from('k'), Buffer.from('two words')];
  t.equal(describeCommand(short, classifyCommand(short)), 'SET k "two words"', 'a short command is shown whole');
  // About 60 MB of arguments, each a run of control bytes that JSON.stringify writes six times over.
  const arg = Buffer.alloc(200, 1);
  const huge = [Buffer.from('FLUSHALL'), ...Array.from({ length: 300_000 }, () => arg)];
  const text = describeCommand(huge, classifyCommand(huge));
  t.ok(text.length < 6_000, `cut: ${text.length} characters`);
  t.match(text, /\.\.\.\(\d+ more arguments, \d+ bytes\)$/);
});

/**
 * The policy language as the config file spells it: the example
 * verbatim, and the typos that must be caught at load time rather than
 * become rules that silently never match.
 */
import t from 'tap';
import { ConfigError, parseConfig } from '../../src/config/load.js';

const BASE = `identity: { dev_issuer: true }
targets:
  app-db: { protocol: postgres, listen: 127.0.0.1:0, allow_insecure_loopback: true, upstream: { host: 127.0.0.1, database: app, user: app } }
  cache: { protocol: redis, listen: 127.0.0.1:0, allow_insecure_loopback: true, upstream: { host: 127.0.0.1 } }
`;

function parse(yaml: string) {
  return parseConfig(BASE + yaml, { baseDir: t.testdirName, env: {} });
}

function problems(yaml: string): string[] {
  try {
    parse(yaml);
  } catch (err) {
    if (err instanceof ConfigError) return err.problems;
    throw err;
  }
  return [];
}

t.test('the example policy from the issue loads as written', async (t) => {
  const config = parse(`policies:
  - name: agents
    subjects: { groups: [agent] }
    targets: [app-db, cache]
    default: allow
    rules:
      - { name: no-destruction, action: deny, match: { kinds: [drop, truncate] } }
      - { name: roles-need-approval, action: approve, match: { kinds: [role] } }
      - { name: no-file-access, action: deny, match: { functions: ['@dangerous'] } }
      - { name: no-server-admin, action: deny, match: { commands: ['@dangerous', '@scripting', 'flushall'] } }
      - { name: careful-writes, action: deny, match: { kinds: [update, delete], without_where: true } }
api:
  listen: 127.0.0.1:8080
  roles: { approver: [security], auditor: [security] }
approvals:
  timeout: 2m
  webhook: { url: 'https://hooks.example/sluice' }
`);
  const p = config.policies[0]!;
  t.equal(p.default, 'allow');
  t.same(p.rules.map((r) => [r.name, r.action]), [
    ['no-destruction', 'deny'],
    ['roles-need-approval', 'approve'],
    ['no-file-access', 'deny'],
    ['no-server-admin', 'deny'],
    ['careful-writes', 'deny'],
  ]);
  t.same(p.rules[4]!.match, { kinds: ['update', 'delete'], withoutWhere: true });
  t.same(p.rules[3]!.match, { commands: ['@dangerous', '@scripting', 'flushall'] });
  t.same(config.api, { listen: { host: '127.0.0.1', port: 8080 }, roles: { approver: ['security'], auditor: ['security'] } });
  t.same(config.approvals, { timeoutMs: 120_000, maxPendingPerSubject: 10, maxRequestsPerMinute: 30, webhook: { url: 'https://hooks.example/sluice', timeoutMs: 5_000 } });
});

t.test('a policy without rules allows, and approvals default to 5 minutes', async (t) => {
  const config = parse(`policies: [{ name: ci, subjects: { groups: [ci] }, targets: [app-db] }]\n`);
  t.equal(config.policies[0]!.default, 'allow');
  t.same(config.policies[0]!.rules, []);
  t.equal(config.approvals.timeoutMs, 300_000);
  t.equal(config.api, undefined);
});

t.test('typos and gaps are caught at load time', async (t) => {
  const rule = (match: string, extra = '') => `policies:
  - name: p
    subjects: { groups: [g] }
    targets: [app-db]
    default: deny
    rules: [{ name: r, action: deny, match: ${match} }${extra}]
`;
  t.match(problems(rule('{ kinds: [dorp] }')), ['policies[0].rules[0].match.kinds[0]: expected a statement kind (see docs/policy.md), found "dorp"']);
  t.same(problems(rule('{ kinds: [drop:table] }')), [], 'typed kinds are known');
  t.match(problems(rule("{ commands: ['@dangerus'] }"))[0], /match\.commands\[0\]: expected a command, command\|subcommand or ACL category/);
  t.match(problems(rule("{ functions: ['@risky'] }"))[0], /match\.functions\[0\]: expected a function name or @dangerous/);
  t.match(problems(rule('{}'))[0], /match/);
  t.match(problems(rule('{ kinds: [drop] }', ', { name: r, action: allow, match: { kinds: [select] } }'))[0], /rules\[1\]\.name: expected a name no other rule of this policy uses/);
  t.match(problems(`policies: [{ name: p, subjects: { groups: [g] }, targets: [app-db], rules: [{ name: r, action: deny, match: { kinds: [drop] } }] }]\n`), [
    /policies\[0\]\.default: expected allow or deny, found nothing/,
  ]);
  t.match(problems(rule('{ kinds: [drop] }').replace('action: deny', 'action: block'))[0], /action: expected allow, deny or approve/);
});

t.test('table globs read as SQL reads the names: unquoted folded to lower case, quoted kept', async (t) => {
  const config = parse(`policies:
  - name: p
    subjects: { groups: [g] }
    targets: [app-db]
    default: allow
    rules: [{ name: r, action: deny, match: { tables: [public.Secrets, '"Mixed"', 'App."Orders"', 'Audit.*', app.Public.Users, ÄRZTE] } }]
`);
  t.same(config.policies[0]!.rules[0]!.match.tables, ['public.secrets', 'Mixed', 'app.Orders', 'audit.*', 'public.users', 'Ärzte'], 'A-Z folded as PostgreSQL folds them; a database part dropped');
  t.match(problems(`policies:
  - name: p
    subjects: { groups: [g] }
    targets: [app-db]
    default: allow
    rules: [{ name: r, action: deny, match: { tables: ['"unclosed'] } }]
`)[0], /match\.tables\[0\]: expected a table glob/);
});

t.test('audit settings', async (t) => {
  const policies = `policies: [{ name: ci, subjects: { groups: [ci] }, targets: [app-db] }]\n`;
  t.equal(parse(policies).audit, undefined, 'absent: enabled with the defaults');
  t.same(parse(`${policies}audit: { enabled: false, redis_allowed: each }\n`).audit, { enabled: false, redisAllowed: 'each', retentionMs: 0 });
  t.same(parse(`${policies}audit: {}\n`).audit, { enabled: true, redisAllowed: 'per_second', retentionMs: 0 });
  t.match(problems(`${policies}audit: { redis_allowed: sometimes }\n`)[0], /audit\.redis_allowed: expected each or per_second/);
});

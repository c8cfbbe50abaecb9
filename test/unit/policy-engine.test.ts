import t from 'tap';
import { bindPolicy } from '../../src/policy/engine.js';
import type { PolicyConfig } from '../../src/config/types.js';
import type { Identity } from '../../src/identity/types.js';
import type { RedisCommandFacts, SqlStatementFacts } from '../../src/policy/types.js';

const agent: Identity = { subject: 'agent-7', issuer: 'https://idp', groups: ['agent'], claims: {}, tokenId: 'x', expiresAt: new Date(Date.now() + 60_000) };

/** The policy from the issue, verbatim in spirit. */
const policies: PolicyConfig[] = [
  {
    name: 'agents',
    subjects: { groups: ['agent'] },
    targets: ['app-db', 'cache'],
    default: 'allow',
    rules: [
      { name: 'no-destruction', action: 'deny', match: { kinds: ['drop', 'truncate'] } },
      { name: 'roles-need-approval', action: 'approve', match: { kinds: ['role'] } },
      { name: 'no-file-access', action: 'deny', match: { functions: ['@dangerous'] } },
      { name: 'no-server-admin', action: 'deny', match: { commands: ['@dangerous', '@scripting', 'flushall'] } },
      { name: 'careful-writes', action: 'deny', match: { kinds: ['update', 'delete'], withoutWhere: true } },
      { name: 'secrets-table', action: 'deny', match: { tables: ['public.secrets'] } },
      { name: 'no-session-keys', action: 'deny', match: { commands: ['del'], keys: ['session:*'] } },
      { name: 'no-client-kill', action: 'deny', match: { commands: ['client|kill'] } },
    ],
  },
  { name: 'fallback', subjects: { groups: ['agent'] }, targets: ['app-db'], default: 'deny', rules: [] },
];

function sql(partial: Partial<SqlStatementFacts>): SqlStatementFacts {
  return { protocol: 'postgres', text: 'x', kinds: ['select'], tables: [], functions: [], dangerousFunctions: [], withoutWhere: false, settings: [], statementName: '', ...partial };
}
function redis(partial: Partial<RedisCommandFacts>): RedisCommandFacts {
  return { protocol: 'redis', command: 'get', categories: ['@read', '@string', '@fast'], keys: ['k'], ...partial };
}

const policy = bindPolicy(agent, 'app-db', policies)!;

t.test('the session binds to the first policy in file order that matches', async (t) => {
  t.equal(policy.name, 'agents');
  t.equal(bindPolicy({ ...agent, groups: ['other'] }, 'app-db', policies), undefined);
  t.equal(bindPolicy(agent, 'elsewhere', policies), undefined);
});

t.test('first matching rule wins; the default applies otherwise', async (t) => {
  t.match(policy.evaluate(sql({ kinds: ['select'] })), { action: 'allow', rule: undefined, policy: 'agents' });
  t.match(policy.evaluate(sql({ kinds: ['drop', 'drop:table'], tables: ['t'] })), { action: 'deny', rule: 'no-destruction' });
  t.match(policy.evaluate(sql({ kinds: ['role', 'create:role', 'create'] })), { action: 'approve', rule: 'roles-need-approval' });
  t.match(policy.evaluate(sql({ kinds: ['delete'], withoutWhere: true })), { action: 'deny', rule: 'careful-writes' });
  t.match(policy.evaluate(sql({ kinds: ['delete'], withoutWhere: false })), { action: 'allow' });
  t.match(policy.evaluate(sql({ functions: ['pg_read_file'], dangerousFunctions: ['pg_read_file'] })), { action: 'deny', rule: 'no-file-access' });
  const fallback = bindPolicy(agent, 'app-db', [policies[1]!])!;
  t.match(fallback.evaluate(sql({})), { action: 'deny', rule: undefined });
});

t.test('an allow rule holds only when it covers everything the statement does; deny needs one thing', async (t) => {
  const readOnly: PolicyConfig = {
    name: 'readers',
    subjects: { groups: ['agent'] },
    targets: ['app-db', 'cache'],
    default: 'deny',
    rules: [
      { name: 'reads', action: 'allow', match: { kinds: ['select'] } },
      { name: 'public-tables', action: 'allow', match: { kinds: ['insert'], tables: ['public.*'] } },
      { name: 'drops', action: 'allow', match: { kinds: ['drop'], tables: ['scratch.*'] } },
      { name: 'sleep', action: 'allow', match: { kinds: ['call'], functions: ['pg_sleep'] } },
      { name: 'cache-keys', action: 'allow', match: { commands: ['mset', 'get'], keys: ['cache:*'] } },
    ],
  };
  const p = bindPolicy(agent, 'app-db', [readOnly])!;
  t.match(p.evaluate(sql({ kinds: ['select'], tables: ['t'] })), { action: 'allow', rule: 'reads' });
  t.match(p.evaluate(sql({ kinds: ['select', 'delete'], tables: ['t'], withoutWhere: true })), { action: 'deny', rule: undefined }, 'a SELECT whose CTE deletes is not a read');
  t.match(p.evaluate(sql({ kinds: ['insert'], tables: ['public.a', 'public.b'] })), { action: 'allow', rule: 'public-tables' });
  t.match(p.evaluate(sql({ kinds: ['insert'], tables: ['public.a', 'private.secrets'] })), { action: 'deny' }, 'one table outside the glob');
  t.match(p.evaluate(sql({ kinds: ['insert'], tables: [] })), { action: 'deny' }, 'a rule about tables does not allow a statement that names none');
  t.match(p.evaluate(sql({ kinds: ['insert'], tables: ['secrets'] })), { action: 'deny' }, 'an unqualified name may resolve outside public (search_path)');
  t.match(p.evaluate(sql({ kinds: ['drop', 'drop:table'], tables: ['scratch.t'] })), { action: 'allow', rule: 'drops' }, 'drop:table is covered by drop');
  t.match(p.evaluate(sql({ kinds: ['call'], functions: ['pg_sleep'] })), { action: 'allow', rule: 'sleep' });
  t.match(p.evaluate(sql({ kinds: ['call'], functions: ['pg_sleep', 'pg_read_file'], dangerousFunctions: ['pg_read_file'] })), { action: 'deny' });
  t.match(p.evaluate(redis({ command: 'mset', keys: ['cache:a', 'cache:b'] })), { action: 'allow', rule: 'cache-keys' });
  t.match(p.evaluate(redis({ command: 'mset', keys: ['cache:a', 'secret:b'] })), { action: 'deny' }, 'one key outside the glob');
  const anySchema = bindPolicy(agent, 'app-db', [{ ...readOnly, rules: [{ name: 'any-schema', action: 'allow', match: { kinds: ['insert'], tables: ['*.audit_log'] } }] }])!;
  t.match(anySchema.evaluate(sql({ kinds: ['insert'], tables: ['audit_log'] })), { action: 'allow' }, 'a glob with * for the schema covers an unqualified name');
  // A command that may touch keys it does not name: caught by a deny rule on keys, never allowed by one.
  t.match(p.evaluate(redis({ command: 'json.get', categories: ['@unknown'], keys: [], anyKey: true })), { action: 'deny', rule: undefined });
  t.match(policy.evaluate(redis({ command: 'del', categories: ['@keyspace', '@write', '@slow'], keys: [], anyKey: true })), { action: 'deny', rule: 'no-session-keys' });
  // Deny rules still need only one: the agents policy above stops a join that touches the secrets table.
  t.match(policy.evaluate(sql({ tables: ['public.items', 'public.secrets'] })), { action: 'deny', rule: 'secrets-table' });
});

t.test('tables: qualified rules also stop unqualified references', async (t) => {
  t.match(policy.evaluate(sql({ tables: ['secrets'] })), { action: 'deny', rule: 'secrets-table' });
  t.match(policy.evaluate(sql({ tables: ['public.secrets'] })), { action: 'deny', rule: 'secrets-table' });
  t.match(policy.evaluate(sql({ tables: ['other.secrets'] })), { action: 'allow' });
});

t.test('functions: a qualified name stops the unqualified call; allow covers only the name as written', async (t) => {
  const p = bindPolicy(agent, 'app-db', [
    {
      name: 'fn',
      subjects: { groups: ['agent'] },
      targets: ['app-db'],
      default: 'allow',
      rules: [
        { name: 'no-read-file', action: 'deny', match: { functions: ['pg_catalog.pg_read_file'] } },
        { name: 'sleep-needs-approval', action: 'approve', match: { functions: ['pg_sleep'] } },
      ],
    },
  ])!;
  // The bare call resolves to pg_catalog.pg_read_file unless the search_path says otherwise.
  t.match(p.evaluate(sql({ functions: ['pg_read_file'] })), { action: 'deny', rule: 'no-read-file' });
  t.match(p.evaluate(sql({ functions: ['pg_catalog.pg_read_file'] })), { action: 'deny', rule: 'no-read-file' });
  t.match(p.evaluate(sql({ functions: ['public.pg_read_file'] })), { action: 'allow' });
  t.match(p.evaluate(sql({ functions: ['pg_catalog.pg_sleep'] })), { action: 'approve', rule: 'sleep-needs-approval' });

  const readers = bindPolicy(agent, 'app-db', [
    {
      name: 'readers',
      subjects: { groups: ['agent'] },
      targets: ['app-db'],
      default: 'deny',
      rules: [{ name: 'lower-only', action: 'allow', match: { functions: ['lower', 'pg_catalog.upper'] } }],
    },
  ])!;
  t.match(readers.evaluate(sql({ functions: ['lower'] })), { action: 'allow', rule: 'lower-only' });
  t.match(readers.evaluate(sql({ functions: ['pg_catalog.upper'] })), { action: 'allow', rule: 'lower-only' });
  t.match(readers.evaluate(sql({ functions: ['evil.lower'] })), { action: 'deny' }, 'an unqualified allow covers no other schema');
  t.match(readers.evaluate(sql({ functions: ['upper'] })), { action: 'deny' }, 'a bare call may resolve elsewhere than the allowed schema');
});

t.test('SQL rules never match Redis commands and the reverse', async (t) => {
  t.match(policy.evaluate(redis({})), { action: 'allow' });
  t.match(policy.evaluate(redis({ command: 'flushall', categories: ['@keyspace', '@write', '@slow', '@dangerous'], keys: [] })), { action: 'deny', rule: 'no-server-admin' });
  t.match(policy.evaluate(redis({ command: 'eval', categories: ['@slow', '@scripting'] })), { action: 'deny', rule: 'no-server-admin' });
  t.match(policy.evaluate(redis({ command: 'del', categories: ['@keyspace', '@write', '@slow'], keys: ['session:42'] })), { action: 'deny', rule: 'no-session-keys' });
  t.match(policy.evaluate(redis({ command: 'del', categories: ['@keyspace', '@write', '@slow'], keys: ['cache:42'] })), { action: 'allow' });
  t.match(policy.evaluate(redis({ command: 'client', subcommand: 'kill', categories: ['@admin', '@slow'] })), { action: 'deny', rule: 'no-client-kill' });
  t.match(policy.evaluate(redis({ command: 'client', subcommand: 'setname', categories: ['@slow', '@connection'] })), { action: 'allow' });
});

t.test('changing how SQL is read is refused whatever the policy says', async (t) => {
  const open = bindPolicy(agent, 'app-db', [{ ...policies[0]!, rules: [] }])!;
  t.match(open.evaluate(sql({ kinds: ['set'], settings: ['client_encoding'] })), { action: 'deny', rule: 'sluice-parser-settings' });
  t.match(open.evaluate(sql({ kinds: ['select'], settings: ['standard_conforming_strings'] })), { action: 'deny' });
  t.match(open.evaluate(sql({ kinds: ['set'], settings: ['search_path'] })), { action: 'allow' });
});

t.test('a multi-statement message takes its most severe verdict', async (t) => {
  t.match(policy.evaluateAll([sql({}), sql({ kinds: ['role'] }), sql({})]), { action: 'approve' });
  t.match(policy.evaluateAll([sql({}), sql({ kinds: ['role'] }), sql({ kinds: ['truncate'] })]), { action: 'deny', rule: 'no-destruction' });
  t.match(policy.evaluateAll([]), { action: 'allow' });
});

t.test('shared facts: a verdict is remembered per facts object, and is the verdict of the same facts with any text', async (t) => {
  const session = bindPolicy(agent, 'app-db', policies)!;
  const drop = Object.freeze(sql({ text: 'DROP TABLE t10', kinds: ['drop', 'drop:table'] }));
  const select = Object.freeze(sql({ text: 'SELECT 10' }));
  const first = session.evaluateAll([select, drop], true);
  t.match(first, { action: 'deny', rule: 'no-destruction' });
  t.equal(session.evaluateAll([drop], true), first, 'the same verdict object: judged once');
  t.ok(Object.isFrozen(first), 'a remembered verdict is frozen (callers share it)');
  for (const text of ['DROP TABLE t42', 'drop table t7']) {
    t.same(session.evaluate({ ...drop, text }), first, `text does not change the verdict: ${text}`);
  }
  t.match(session.evaluateAll([select], true), { action: 'allow' });
});

t.test('reasons say what matched', async (t) => {
  t.match(policy.evaluate(sql({ kinds: ['drop', 'drop:table'] })).reason, 'statement kind drop');
  t.match(policy.evaluate(sql({ kinds: ['update'], withoutWhere: true })).reason, /update.*without a WHERE/);
  t.match(policy.evaluate(redis({ command: 'flushall', categories: ['@dangerous'] })).reason, 'command flushall');
});

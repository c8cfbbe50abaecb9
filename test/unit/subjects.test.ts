import t from 'tap';
import type { PolicyConfig, SubjectMatch } from '../../src/config/types.js';
import type { Identity } from '../../src/identity/types.js';
import { globMatch, policiesFor, subjectMatches } from '../../src/policy/subjects.js';

function identity(over: Partial<Identity> = {}): Identity {
  return {
    subject: 'repo:acme/app:ref:refs/heads/main',
    issuer: 'https://token.actions.githubusercontent.com',
    groups: ['ci-admins', 'deployers'],
    claims: {
      sub: 'repo:acme/app:ref:refs/heads/main',
      repository: 'acme/app',
      ref: 'refs/heads/main',
      run_attempt: 2,
      fork: false,
      environments: ['staging', 'prod'],
      realm_access: { roles: ['db-readers'] },
      nested: { deep: { value: 'x' } },
    },
    tokenId: '0'.repeat(32),
    expiresAt: new Date(Date.now() + 60_000),
    ...over,
  };
}

t.test('globMatch', async (t) => {
  t.ok(globMatch('abc', 'abc'));
  t.notOk(globMatch('abc', 'abcd'), 'anchored at the end');
  t.notOk(globMatch('bc', 'abc'), 'anchored at the start');
  t.ok(globMatch('*', ''));
  t.ok(globMatch('*', 'a/b/c'), '* crosses /');
  t.ok(globMatch('k?y', 'k\u{1F511}y'), '? is one character, a surrogate pair included');
  t.notOk(globMatch('k??y', 'k\u{1F511}y'));
  t.ok(globMatch('cache:*:end', `cache:${'x'.repeat(8 * 1024 * 1024)}:end`), 'a key of megabytes is matched as it is');
  t.ok(globMatch('repo:acme/*', 'repo:acme/app:ref:refs/heads/main'));
  t.notOk(globMatch('repo:acme/*', 'repo:acme-evil/app'));
  t.ok(globMatch('a?c', 'abc'));
  t.notOk(globMatch('a?c', 'ac'), '? is exactly one character');
  t.notOk(globMatch('a?c', 'abbc'));
  t.ok(globMatch('a?c', 'a€c'), '? is one character, not one byte');
  t.ok(globMatch('*.example.com', 'svc.example.com'));
  t.notOk(globMatch('*.example.com', 'svc.exampleXcom'), '. is literal');
  t.ok(globMatch('a+b(c)[d]{1}^$|\\', 'a+b(c)[d]{1}^$|\\'), 'regex metacharacters are literal');
  t.notOk(globMatch('a+b', 'aab'));
  t.notOk(globMatch('[ab]', 'a'));
  t.ok(globMatch('**a**', 'xxaxx'));
  t.ok(globMatch('*a*b*c', 'zzazzbzzc'));
  t.notOk(globMatch('*a*b*c', 'zzazzbzzcz'));
  t.ok(globMatch('line*', 'line1\nline2'), '* crosses newlines');
  // A pathological pattern against a long value stays cheap (no regex backtracking).
  t.notOk(globMatch('*a*a*a*a*a*a*a*a*b', 'a'.repeat(20000)));
  t.ok(globMatch('abc', 'abc'), 'cached compile gives the same answer');
});

t.test('groups: exact membership', async (t) => {
  const id = identity({ groups: ['ci-admins'] });
  t.notOk(subjectMatches(id, { groups: ['ci'] }), "'ci' does not match 'ci-admins'");
  t.notOk(subjectMatches(id, { groups: ['admins'] }));
  t.notOk(subjectMatches(id, { groups: ['CI-ADMINS'] }), 'case-sensitive');
  t.notOk(subjectMatches(id, { groups: ['ci-*'] }), 'groups are not globs');
  t.ok(subjectMatches(id, { groups: ['ci-admins'] }));
  t.ok(subjectMatches(id, { groups: ['nope', 'ci-admins'] }), 'any listed group');
  t.notOk(subjectMatches(identity({ groups: ['ci'] }), { groups: ['ci-admins'] }), 'nor the other way round');
  t.notOk(subjectMatches(id, { groups: [] }), 'an empty list matches nothing');
});

t.test('prototype names never match by accident', async (t) => {
  const noGroups = identity({ groups: [] });
  for (const name of ['__proto__', 'constructor', 'toString', 'hasOwnProperty', 'valueOf', 'length']) {
    t.notOk(subjectMatches(noGroups, { groups: [name] }), `group ${name}`);
    t.notOk(subjectMatches(noGroups, { claims: { [name]: ['*'] } }), `claim ${name}`);
    t.notOk(subjectMatches(noGroups, { claims: { [`realm_access.${name}`]: ['*'] } }), `claim path realm_access.${name}`);
    t.notOk(subjectMatches(noGroups, { claims: { [`environments.${name}`]: ['*'] } }), `claim path environments.${name}`);
  }
  // Even when a token literally carries such a claim, the path is refused.
  const sneaky = identity({ claims: JSON.parse('{"__proto__": "admin", "constructor": "admin"}') as Record<string, unknown> });
  t.notOk(subjectMatches(sneaky, { claims: { __proto__: ['admin'] } as unknown as Record<string, string[]> }));
  t.notOk(subjectMatches(sneaky, { claims: JSON.parse('{"__proto__": ["admin"]}') as Record<string, string[]> }));
  t.notOk(subjectMatches(sneaky, { claims: { constructor: ['admin'] } }));
  // A group literally named like a prototype member matches only itself.
  t.ok(subjectMatches(identity({ groups: ['constructor'] }), { groups: ['constructor'] }));
  t.notOk(subjectMatches(identity({ groups: ['constructor'] }), { groups: ['toString'] }));
});

t.test('sub globs', async (t) => {
  const id = identity();
  t.ok(subjectMatches(id, { sub: ['repo:acme/app:*'] }));
  t.ok(subjectMatches(id, { sub: ['repo:acme/app:ref:refs/heads/main'] }));
  t.notOk(subjectMatches(id, { sub: ['repo:acme/app'] }), 'anchored');
  t.notOk(subjectMatches(id, { sub: ['repo:acme/other:*'] }));
  t.ok(subjectMatches(id, { sub: ['nope', 'repo:acme/*'] }), 'any listed glob');
  t.ok(subjectMatches(identity({ subject: 'svc-1' }), { sub: ['svc-?'] }));
  t.notOk(subjectMatches(identity({ subject: 'svc-10' }), { sub: ['svc-?'] }));
});

t.test('issuer: exact', async (t) => {
  const id = identity();
  t.ok(subjectMatches(id, { issuer: ['https://token.actions.githubusercontent.com'] }));
  t.notOk(subjectMatches(id, { issuer: ['https://token.actions.githubusercontent.com/'] }));
  t.notOk(subjectMatches(id, { issuer: ['https://*'] }), 'issuers are not globs');
});

t.test('claims, GitHub Actions style', async (t) => {
  const id = identity();
  const ci: SubjectMatch = {
    issuer: ['https://token.actions.githubusercontent.com'],
    claims: { repository: ['acme/app'], ref: ['refs/heads/*'] },
  };
  t.ok(subjectMatches(id, ci));
  t.notOk(subjectMatches(identity({ claims: { ...id.claims, ref: 'refs/tags/v1' } }), ci), 'ref outside the glob');
  t.notOk(subjectMatches(identity({ claims: { ...id.claims, repository: 'acme/app-fork' } }), ci), 'repository exact');
  t.notOk(subjectMatches(identity({ claims: { repository: 'acme/app' } }), ci), 'a missing claim does not match');
  t.ok(subjectMatches(id, { claims: { run_attempt: ['2'] } }), 'numbers compare as text');
  t.ok(subjectMatches(id, { claims: { fork: ['false'] } }), 'booleans compare as text');
  t.ok(subjectMatches(id, { claims: { environments: ['prod'] } }), 'any element of an array claim');
  t.notOk(subjectMatches(id, { claims: { environments: ['dev'] } }));
  t.ok(subjectMatches(id, { claims: { 'realm_access.roles': ['db-readers'] } }), 'dotted path into an array');
  t.ok(subjectMatches(id, { claims: { 'nested.deep.value': ['x'] } }), 'dotted path to a string');
  t.notOk(subjectMatches(id, { claims: { nested: ['*'] } }), 'an object never matches, not even *');
  t.notOk(subjectMatches(id, { claims: { 'nested.deep': ['*'] } }));
  t.notOk(subjectMatches(identity({ claims: { x: null } }), { claims: { x: ['*', 'null'] } }), 'null never matches');
  t.notOk(subjectMatches(identity({ claims: { x: [{ a: 1 }, 3] } }), { claims: { x: ['*'] } }), 'non-string array elements never match');
  t.ok(subjectMatches(identity({ claims: { 'https://example.test/team': 'core' } }), { claims: { 'https://example.test/team': ['core'] } }), 'a claim name containing dots');
});

t.test('criteria combine with AND, values with OR', async (t) => {
  const id = identity();
  t.ok(subjectMatches(id, { groups: ['deployers'], sub: ['repo:acme/*'] }));
  t.notOk(subjectMatches(id, { groups: ['deployers'], sub: ['repo:other/*'] }));
  t.notOk(subjectMatches(id, { groups: ['nobody'], sub: ['repo:acme/*'] }));
  t.notOk(subjectMatches(id, { groups: ['deployers'], claims: { repository: ['acme/app'], ref: ['refs/tags/*'] } }), 'every claim must match');
});

t.test('no criteria matches nothing', async (t) => {
  const id = identity();
  t.notOk(subjectMatches(id, {}));
  t.notOk(subjectMatches(id, { claims: {} }), 'an empty claims map is not a wildcard');
  t.notOk(subjectMatches(id, { sub: [] }));
  t.notOk(subjectMatches(id, { groups: ['deployers'], claims: {} }), 'an empty claims map matches nothing, even with other criteria');
});

t.test('policiesFor filters by target and subject', async (t) => {
  const policies: PolicyConfig[] = [
    { name: 'deploy-pg', subjects: { groups: ['deployers'] }, targets: ['orders-pg', 'billing-pg'], default: 'allow', rules: [] },
    { name: 'cache', subjects: { groups: ['deployers'] }, targets: ['cache-redis'], default: 'allow', rules: [] },
    { name: 'admins', subjects: { groups: ['ci'] }, targets: ['orders-pg'], default: 'allow', rules: [] },
    { name: 'ci-main', subjects: { claims: { repository: ['acme/app'], ref: ['refs/heads/main'] } }, targets: ['orders-pg'], default: 'allow', rules: [] },
    { name: 'empty', subjects: {}, targets: ['orders-pg'], default: 'allow', rules: [] },
  ];
  const id = identity();
  t.same(policiesFor(id, 'orders-pg', policies).map((p) => p.name), ['deploy-pg', 'ci-main']);
  t.same(policiesFor(id, 'cache-redis', policies).map((p) => p.name), ['cache']);
  t.same(policiesFor(id, 'orders', policies), [], 'target names are exact');
  t.same(policiesFor(id, '*', policies), [], 'target names are not globs');
  t.same(policiesFor(identity({ groups: [], claims: {} }), 'orders-pg', policies), []);
});

/**
 * The cancel registry: a CancelRequest reaches a session's upstream only
 * with both halves of that session's gateway key, on that session's target,
 * while the session lives.
 */
import t from 'tap';
import { CancelRegistry, type CancelKey } from '../../src/gateway/cancel-registry.js';

interface Upstream {
  session: string;
}

t.test('lookup needs both halves and the same target', async (t) => {
  const reg = new CancelRegistry<Upstream>();
  const a = reg.register('app-db', { session: 'a' });
  t.ok(Number.isInteger(a.processId) && a.processId > 0 && a.processId <= 0x7fffffff, 'processId is a positive 31-bit integer, like a pid');
  t.ok(Number.isInteger(a.secretKey) && a.secretKey >= -0x80000000 && a.secretKey <= 0x7fffffff, 'secretKey is an Int32');
  t.same(reg.lookup('app-db', a), { session: 'a' }, 'the exact key on its target finds the session');
  t.equal(reg.lookup('app-db', { processId: a.processId, secretKey: (a.secretKey ^ 1) | 0 }), undefined, 'a wrong secret finds nothing');
  t.equal(reg.lookup('app-db', { processId: a.processId, secretKey: 0 }), undefined, 'a zero secret finds nothing');
  t.equal(reg.lookup('app-db', { processId: (a.processId % 0x7ffffffe) + 1, secretKey: a.secretKey }), undefined, 'the right secret with another pid finds nothing');
  t.equal(reg.lookup('other-db', a), undefined, 'the right key on another target finds nothing');
});

t.test('a cancel can never reach another session', async (t) => {
  const reg = new CancelRegistry<Upstream>();
  const keys: Array<[CancelKey, string]> = [];
  for (let i = 0; i < 200; i++) keys.push([reg.register(i % 2 ? 'app-db' : 'other-db', { session: `s${i}` }), `s${i}`]);
  for (const [i, [key, session]] of keys.entries()) {
    t.equal(reg.lookup(i % 2 ? 'app-db' : 'other-db', key)?.session, session);
  }
  // Mixing one session's pid with another's secret matches neither.
  let crossed = 0;
  for (let i = 0; i + 1 < keys.length; i++) {
    const [k1] = keys[i]!;
    const [k2] = keys[i + 1]!;
    if (k1.secretKey === k2.secretKey) continue; // 1 in 2^32: not a crossing
    for (const target of ['app-db', 'other-db']) {
      if (reg.lookup(target, { processId: k1.processId, secretKey: k2.secretKey }) !== undefined) crossed++;
    }
  }
  t.equal(crossed, 0, 'no mixed key matches');
});

t.test('unregister removes the session; stale keys match nothing', async (t) => {
  const reg = new CancelRegistry<Upstream>();
  const a = reg.register('app-db', { session: 'a' });
  const b = reg.register('app-db', { session: 'b' });
  t.equal(reg.size, 2);

  reg.unregister({ processId: a.processId, secretKey: (a.secretKey ^ 0x10) | 0 });
  t.equal(reg.size, 2, 'unregister with a wrong secret removes nothing');
  t.same(reg.lookup('app-db', a), { session: 'a' });

  reg.unregister(a);
  t.equal(reg.size, 1);
  t.equal(reg.lookup('app-db', a), undefined, 'a stale key matches nothing');
  t.same(reg.lookup('app-db', b), { session: 'b' }, 'the other session is untouched');
  reg.unregister(a);
  t.equal(reg.size, 1, 'unregistering twice is harmless');

  reg.unregister(b);
  t.equal(reg.size, 0);
  t.equal(reg.lookup('app-db', b), undefined);

  // A new session never resurrects an old key's meaning unless it drew the same key by chance; even then it is its own.
  const c = reg.register('app-db', { session: 'c' });
  t.equal(reg.lookup('app-db', a), c.processId === a.processId && c.secretKey === a.secretKey ? reg.lookup('app-db', c) : undefined);
});

t.test('gateway keys are unique among live sessions and unpredictable', async (t) => {
  const reg = new CancelRegistry<number>();
  const pids = new Set<number>();
  const secrets = new Set<number>();
  const N = 5000;
  for (let i = 0; i < N; i++) {
    const k = reg.register('app-db', i);
    pids.add(k.processId);
    secrets.add(k.secretKey);
  }
  t.equal(pids.size, N, 'every live session has its own processId');
  t.equal(reg.size, N);
  // 5000 draws from 2^32: a handful of collisions at most would be chance; a constant or counter would not.
  t.ok(secrets.size > N - 5, `secret keys are random (${secrets.size} distinct of ${N})`);
  const sorted = [...pids];
  let increasing = 0;
  for (let i = 1; i < sorted.length; i++) if (sorted[i]! === sorted[i - 1]! + 1) increasing++;
  t.ok(increasing < 10, 'processIds are not sequential');
});

/**
 * The pinned nextTick shape (src/gateway/tick-shape.ts): the object Sluice
 * keeps must share its hidden class with Node's real tick objects, and that
 * class must survive full GCs taken while no tick is pending, which is when
 * V8 would otherwise replace it (and push every nextTick onto the slow path).
 *
 * Hidden classes are only visible through V8's natives syntax, so the check
 * runs in a child process started with --allow-natives-syntax --expose-gc.
 * It asserts shapes, never timings.
 */
import t from 'tap';
import { spawnSync } from 'node:child_process';
import { pinTickObjectShape, pinnedTickShape } from '../../src/gateway/tick-shape.js';

const moduleUrl = new URL('../../src/gateway/tick-shape.js', import.meta.url).href;

/** Runs in the child: pin (or not), then compare maps of tick objects before and after GCs across timers. */
const childScript = (pin: boolean): string => `
import { executionAsyncResource } from 'node:async_hooks';
import { pinTickObjectShape, pinnedTickShape } from ${JSON.stringify(moduleUrl)};
const sameMap = new Function('a', 'b', 'return %HaveSameMap(a, b)');
const pinned = ${pin} ? pinTickObjectShape() : false;
const tickObject = () => new Promise((resolve) => process.nextTick(() => resolve(executionAsyncResource())));
let n = 0;
const cb = () => { n++; };
for (let i = 0; i < 20000; i++) process.nextTick(cb);
const before = await tickObject();
const pinnedMatches = pinned ? sameMap(pinnedTickShape(), before) : null;
const beforeWeak = new WeakRef(before);
for (let i = 0; i < 10; i++) {
  globalThis.gc();
  await new Promise((resolve) => setTimeout(resolve, 10));
}
const after = await tickObject();
// 'before' may be gone; compare with the pinned object when there is one.
const reference = pinned ? pinnedTickShape() : beforeWeak.deref();
process.stdout.write(JSON.stringify({ pinned, pinnedMatches, sameAfterGc: reference ? sameMap(reference, after) : null }));
`;

function runChild(pin: boolean): { pinned: boolean; pinnedMatches: boolean | null; sameAfterGc: boolean | null } {
  const r = spawnSync(process.execPath, ['--allow-natives-syntax', '--expose-gc', '--input-type=module', '-e', childScript(pin)], {
    encoding: 'utf8',
    timeout: 30_000,
  });
  if (r.status !== 0) throw new Error(`child failed (${r.status ?? r.signal}): ${r.stderr}`);
  return JSON.parse(r.stdout) as { pinned: boolean; pinnedMatches: boolean | null; sameAfterGc: boolean | null };
}

t.test('pinning finds Node\'s tick symbols and is idempotent', async (t) => {
  t.equal(pinTickObjectShape(), true, 'the async id symbols are found on an AsyncResource');
  const first = pinnedTickShape();
  t.equal(pinTickObjectShape(), true);
  t.equal(pinnedTickShape(), first, 'a second call keeps the same object');
});

t.test('the pinned object shares the tick objects\' hidden class, across full GCs', async (t) => {
  const r = runChild(true);
  t.equal(r.pinned, true);
  t.equal(r.pinnedMatches, true, 'same map as a real tick object');
  t.equal(r.sameAfterGc, true, 'tick objects built after idle full GCs still have that map');
});

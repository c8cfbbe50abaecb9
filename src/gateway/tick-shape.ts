import { AsyncResource } from 'node:async_hooks';

/**
 * Keeps the shape of Node's nextTick objects alive for the life of the
 * process, so that every `process.nextTick` stays on V8's fast path.
 *
 * Why. Every socket read and every completed write schedules a nextTick
 * inside Node's stream code (Readable's maybeReadMore, Writable's
 * afterWrite): about four per unpipelined Redis request. nextTick builds
 * its tick object with a literal whose first keys are computed
 * (lib/internal/process/task_queues.js):
 *
 *   { [async_id_symbol]: asyncId, [trigger_async_id_symbol]: triggerAsyncId, callback, args }
 *
 * V8 records the hidden class (map) each of those keys is added to, and for
 * this kind of literal it goes from one map straight to "megamorphic" the
 * first time it sees another (Runtime_DefineKeyedOwnPropertyInLiteral), for
 * good: optimized code then calls into the runtime for every key of every
 * tick object. The maps are only weakly held. A full GC at a moment when no
 * tick object is alive (the gateway idle between bursts of traffic) frees
 * them; the next tick object gets new maps, and the process is on the slow
 * path from then on. Measured with perf on the Redis bench: 3-6% of the
 * gateway's CPU in that runtime function, about 1.3 µs per unpipelined
 * request, in Sluice processes and not in the zero-parse relay (whose small
 * heap rarely sees a full GC).
 *
 * One object built with the same keys in the same order, holding values of
 * the same kinds, shares those maps and keeps them alive, so the first maps
 * V8 recorded stay the only ones. If a Node version names the symbols
 * differently or builds tick objects another way, nothing is pinned and
 * nothing else changes (the test in test/unit/tick-shape.test.ts says so).
 */
let pinned: object | undefined;

/** Pins the tick object shape; true when Node's symbols were found (idempotent). */
export function pinTickObjectShape(): boolean {
  if (pinned) return true;
  // An AsyncResource carries the same two internal symbols as a tick object.
  const resource = new AsyncResource('SluiceTickShape');
  const symbols = Object.getOwnPropertySymbols(resource);
  const asyncId = symbols.find((s) => s.description === 'async_id_symbol');
  const triggerId = symbols.find((s) => s.description === 'trigger_async_id_symbol');
  if (asyncId === undefined || triggerId === undefined) return false;
  // Same keys, same order, same kinds of values as Node's literal: ids are
  // doubles (0.5 is never a small integer, so the fields keep the most
  // general number representation), callback a function, args undefined.
  pinned = { [asyncId]: 0.5, [triggerId]: 0.5, callback: noop, args: undefined };
  return true;
}

/** The pinned object, for the test that checks it shares the tick objects' map. */
export function pinnedTickShape(): object | undefined {
  return pinned;
}

function noop(): void {}

/**
 * Which policies apply to a verified identity. Every criterion present in a
 * SubjectMatch must match (AND); inside one criterion any listed value may
 * match (OR). A SubjectMatch with no criteria, or a criterion with no values,
 * matches nothing: an empty rule grants nothing.
 *
 * Lookups never go through object keys built from token data (arrays and
 * Sets only), and claim paths read own properties only, so group or claim
 * names like `__proto__` or `toString` cannot match by accident.
 */
import type { PolicyConfig, SubjectMatch } from '../config/types.js';
import { claimAtPath } from '../identity/verifier.js';
import type { Identity } from '../identity/types.js';

interface CompiledGlob {
  /** Code points; '*' and '?' are the wildcards, everything else literal. */
  chars: string[];
  hasWildcard: boolean;
}

// Globs come from the config, so the cache stays small; the cap is a backstop.
const GLOB_CACHE_MAX = 4096;
const globCache = new Map<string, CompiledGlob>();

const SURROGATE = /[\uD800-\uDFFF]/;

function compile(glob: string): CompiledGlob {
  let compiled = globCache.get(glob);
  if (!compiled) {
    const chars = Array.from(glob);
    compiled = { chars, hasWildcard: chars.includes('*') || chars.includes('?') };
    if (globCache.size >= GLOB_CACHE_MAX) globCache.clear();
    globCache.set(glob, compiled);
  }
  return compiled;
}

/**
 * Anchored glob match: `*` any run of characters (including `/` and none),
 * `?` exactly one character, everything else literal. Matched with the
 * linear backtrack-to-last-star algorithm rather than a RegExp, so a subject
 * chosen by a client cannot make a pattern like `*a*a*a*b` take exponential
 * (or high-polynomial) time: the worst case is O(pattern x value).
 */
export function globMatch(glob: string, value: string): boolean {
  const { chars: pat, hasWildcard } = compile(glob);
  if (!hasWildcard) return glob === value;
  // Characters, not UTF-16 units, so `?` matches one character. A value with no surrogate pair
  // (nearly every key) is indexed as it is: a Redis key may be megabytes long, and Array.from
  // made an array of that many strings for every glob it was matched against.
  const val: ArrayLike<string> = SURROGATE.test(value) ? Array.from(value) : value;
  let p = 0;
  let v = 0;
  let star = -1;
  let mark = 0;
  while (v < val.length) {
    const c = pat[p];
    if (p < pat.length && c !== '*' && (c === '?' || c === val[v])) {
      p++;
      v++;
    } else if (p < pat.length && c === '*') {
      star = p++;
      mark = v;
    } else if (star >= 0) {
      p = star + 1;
      v = ++mark;
    } else {
      return false;
    }
  }
  while (p < pat.length && pat[p] === '*') p++;
  return p === pat.length;
}

function anyGlob(globs: readonly string[], value: string): boolean {
  return globs.some((g) => typeof g === 'string' && globMatch(g, value));
}

/** A claim value matches when it is a string (numbers and booleans compared as text) or an array with a string element that matches. Objects never match. */
function claimMatches(value: unknown, accepted: readonly string[]): boolean {
  if (typeof value === 'string') return anyGlob(accepted, value);
  if (typeof value === 'number' || typeof value === 'boolean') return anyGlob(accepted, String(value));
  if (Array.isArray(value)) return value.some((el) => typeof el === 'string' && anyGlob(accepted, el));
  return false;
}

export function subjectMatches(identity: Identity, subjects: SubjectMatch): boolean {
  let criteria = 0;

  if (subjects.groups !== undefined) {
    criteria++;
    if (!Array.isArray(subjects.groups)) return false;
    const have = new Set(identity.groups);
    if (!subjects.groups.some((g) => typeof g === 'string' && have.has(g))) return false;
  }

  if (subjects.sub !== undefined) {
    criteria++;
    if (!Array.isArray(subjects.sub) || !anyGlob(subjects.sub, identity.subject)) return false;
  }

  if (subjects.issuer !== undefined) {
    criteria++;
    if (!Array.isArray(subjects.issuer) || !subjects.issuer.includes(identity.issuer)) return false;
  }

  if (subjects.claims !== undefined) {
    criteria++;
    const entries = typeof subjects.claims === 'object' && subjects.claims !== null ? Object.entries(subjects.claims) : [];
    // An empty claims map is a criterion with nothing in it: it matches nothing.
    if (entries.length === 0) return false;
    for (const [name, accepted] of entries) {
      if (!Array.isArray(accepted)) return false;
      if (!claimMatches(claimAtPath(identity.claims, name), accepted)) return false;
    }
  }

  return criteria > 0;
}

/** The policies for `target` whose subjects match this identity. */
export function policiesFor(identity: Identity, target: string, policies: PolicyConfig[]): PolicyConfig[] {
  return policies.filter(
    (p) => Array.isArray(p.targets) && p.targets.includes(target) && subjectMatches(identity, p.subjects),
  );
}

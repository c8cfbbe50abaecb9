/**
 * The e-mail detector's regex (detectors.ts) over ASCII bytes, without
 * making a string: the same hits, in the same order, as the regex run
 * globally on the value's text. For ASCII, \p{L} is [A-Za-z] and \p{N} is
 * [0-9], and the regex has exactly one way to match at a given '@':
 *
 *   (?<![\p{L}\p{N}._%+-])[\p{L}\p{N}._%+-]{1,64}@      local part
 *   (?:[\p{L}\p{N}](?:[\p{L}\p{N}-]{0,61}[\p{L}\p{N}])?\.)+   labels
 *   \p{L}{2,24}(?![\p{L}\p{N}-])                        top-level domain
 *
 * - The local part cannot hold '@', so it is the whole run of local
 *   characters before the '@' (the lookbehind forbids starting inside the
 *   run), 1 to 64 of them, starting at or after where the search resumes.
 * - A label must be followed by '.', which it cannot hold: each label is a
 *   whole segment between dots, valid or not; `+` is greedy, so the regex
 *   ends after the most labels for which a top-level domain follows.
 * - The top-level domain is the run of letters there: 2 to 24 of them, not
 *   followed by a letter, digit or '-' (a longer run backtracks into letters).
 *
 * Hits do not overlap: after a hit the search resumes at its end, as the
 * global regex does.
 */

const LOCAL = new Uint8Array(256);
const ALNUM = new Uint8Array(256);
const LABEL = new Uint8Array(256); // [A-Za-z0-9-]
const LETTER = new Uint8Array(256);
for (let b = 0; b < 128; b++) {
  const c = String.fromCharCode(b);
  const letter = (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z');
  const alnum = letter || (c >= '0' && c <= '9');
  LETTER[b] = letter ? 1 : 0;
  ALNUM[b] = alnum ? 1 : 0;
  LABEL[b] = alnum || c === '-' ? 1 : 0;
  LOCAL[b] = alnum || '._%+-'.includes(c) ? 1 : 0;
}

/** findEmailsAscii's answer when the text is not all ASCII. */
export const NOT_ASCII = -2;

/**
 * Hits of the e-mail regex in the text buf[start, end): writes start and
 * end offsets (absolute, into buf) in pairs to `hits` and returns how many
 * hits; -1 when `hits` is too small (the caller then takes the regex), and
 * NOT_ASCII when a byte is >= 0x80 (the hits would not be the regex's:
 * \p{L} holds letters beyond ASCII). Every byte of the text is looked at:
 * the search for '@' passes over all of it but the hits' domains, which
 * hold ASCII characters only.
 */
export function findEmailsAscii(buf: Uint8Array, start: number, end: number, hits: Int32Array): number {
  let n = 0;
  let from = start; // where the search resumes (after the last hit)
  let p = start;
  let or = 0; // every byte searched, OR-ed: >= 0x80 when one is not ASCII
  for (;;) {
    let at = p;
    for (; at < end; at++) {
      const b = buf[at]!;
      or |= b;
      if (b === 0x40) break;
    }
    if (at >= end) return or >= 0x80 ? NOT_ASCII : n >> 1;
    p = at + 1;
    let s = at;
    while (s > start && LOCAL[buf[s - 1]!] === 1 && at - s <= 64) s--;
    const local = at - s;
    if (local === 0 || local > 64 || s < from) continue;
    const e = domainEnd(buf, at + 1, end);
    if (e < 0) continue;
    if (n + 2 > hits.length) return -1;
    hits[n++] = s;
    hits[n++] = e;
    from = e;
    p = e;
  }
}

/** End of the labels and top-level domain starting at d, or -1 when there is none. */
function domainEnd(buf: Uint8Array, d: number, end: number): number {
  let best = -1;
  let p = d;
  for (;;) {
    let q = p;
    while (q < end && LABEL[buf[q]!] === 1) q++;
    const len = q - p;
    if (q >= end || buf[q] !== 0x2e || len < 1 || len > 63 || ALNUM[buf[p]!] === 0 || ALNUM[buf[q - 1]!] === 0) return best;
    p = q + 1;
    let t = p;
    while (t < end && LETTER[buf[t]!] === 1 && t - p <= 24) t++;
    const r = t - p;
    if (r >= 2 && r <= 24 && (t >= end || LABEL[buf[t]!] === 0)) best = t;
  }
}

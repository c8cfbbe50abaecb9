/**
 * `new Date(ms).toISOString()` for audit timestamps, without building a
 * Date and formatting all of it per event: the text up to the seconds is
 * cached per second, and only the milliseconds are appended. An audited
 * session makes an event per statement, thousands a second; most share
 * their second with the event before.
 */
let cachedSecond = Number.NaN;
/** `YYYY-MM-DDTHH:MM:SS.` of `cachedSecond`. */
let cachedPrefix = '';
/** The last instant formatted and its text: events of the same millisecond share one string. */
let lastMs = Number.NaN;
let lastText = '';

export function isoTime(ms: number): string {
  if (ms === lastMs) return lastText;
  const millis = ((ms % 1000) + 1000) % 1000;
  const second = ms - millis;
  if (second !== cachedSecond) {
    const iso = new Date(second).toISOString();
    // 'mmmZ' is the last four characters whatever the width of the year (+275760-...).
    cachedPrefix = iso.slice(0, -4);
    cachedSecond = second;
  }
  lastMs = ms;
  lastText = cachedPrefix + (millis < 10 ? '00' : millis < 100 ? '0' : '') + millis + 'Z';
  return lastText;
}

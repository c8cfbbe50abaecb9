/**
 * What is left of `bufs` after a writev that took the first `written`
 * bytes: the buffers not yet begun, and the unwritten part of the one it
 * stopped in. For the append loops of the writer (the header, on the event
 * loop) and the seal thread (every batch), which repeat a short writev
 * until everything is down.
 */
export function unwritten<T extends Uint8Array>(bufs: T[], written: number): T[] {
  const rest: T[] = [];
  let skip = written;
  for (const b of bufs) {
    if (skip >= b.length) {
      skip -= b.length;
      continue;
    }
    rest.push(skip ? (b.subarray(skip) as T) : b);
    skip = 0;
  }
  return rest;
}

/**
 * Appends buffers to a file descriptor with writev, synchronously, until
 * every byte is down: how the seal thread writes a recording's batches
 * (the header is written when the file is created, files.ts).
 */
import { writevSync } from 'node:fs';

/** writev until every byte is down; a short write that makes no progress is an error. Returns the bytes written. */
export function appendAllSync(fd: number, bufs: Uint8Array[]): number {
  let total = 0;
  for (const b of bufs) total += b.length;
  let done = 0;
  let rest = bufs;
  while (done < total) {
    const n = writevSync(fd, rest);
    if (n <= 0) throw Object.assign(new Error('short write'), { code: 'EIO' });
    done += n;
    if (done < total) rest = unwritten(rest, n);
  }
  return total;
}

/**
 * What is left of `bufs` after a writev that took the first `written`
 * bytes: the buffers not yet begun, and the unwritten part of the one it
 * stopped in.
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

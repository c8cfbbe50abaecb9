/**
 * Retention (`recording.retention`, e.g. 30d): deletes recording files whose
 * last write is older than the cutoff, the day directories left empty, and
 * the index rows of sessions that ended before it.
 *
 * Files are judged by mtime, not by the index, so a recording whose session
 * never reached the index (a crash before the first upsert) is purged too.
 * The files of live sessions are kept however old (`live`): a session idle
 * for longer than the retention writes nothing, and its file's mtime stays
 * where it was. Rows that never ended are kept too: at start-up the
 * recovery (recover.ts) closes those a crash left, so any left are live.
 *
 * Only regular files are deleted, and only directories are walked: a
 * symlink under recordings/ is left alone, never followed.
 */
import type { Dirent } from 'node:fs';
import { lstat, readdir, rmdir, unlink } from 'node:fs/promises';
import { join } from 'node:path';
import type { SessionStore } from '../store/types.js';
import { FILE_EXTENSION } from './format.js';

export interface PurgeResult {
  files: number;
  bytes: number;
  rows: number;
  /** Files that could not be deleted (path and errno code); retried on the next run. */
  errors: { path: string; code: string }[];
}

export async function purgeRecordings(
  stateDir: string,
  store: SessionStore,
  olderThanMs: number,
  now: number = Date.now(),
  live: ReadonlySet<string> = new Set(),
): Promise<PurgeResult> {
  const cutoff = now - olderThanMs;
  const res: PurgeResult = { files: 0, bytes: 0, rows: 0, errors: [] };
  const root = join(stateDir, 'recordings');

  // recordings/YYYY/MM/DD/<id>.sluicerec; removes a directory it emptied.
  const walk = async (dir: string, depth: number): Promise<void> => {
    let entries: Dirent[];
    try {
      entries = await readdir(dir, { withFileTypes: true });
    } catch {
      return;
    }
    for (const e of entries) {
      const name = e.name;
      const p = join(dir, name);
      if (depth < 3) {
        if (e.isDirectory() && /^\d+$/.test(name)) await walk(p, depth + 1);
        continue;
      }
      if (!e.isFile() || !name.endsWith(FILE_EXTENSION) || live.has(p)) continue;
      try {
        const st = await lstat(p);
        if (!st.isFile() || st.mtimeMs >= cutoff) continue;
        await unlink(p);
        res.files++;
        res.bytes += st.size;
      } catch (err) {
        res.errors.push({ path: p, code: (err as NodeJS.ErrnoException).code ?? 'ERROR' });
      }
    }
    if (depth > 0) await rmdir(dir).catch(() => undefined); // fails (kept) unless empty
  };
  await walk(root, 0);
  res.rows = store.deleteSessionsBefore(new Date(cutoff).toISOString());
  return res;
}

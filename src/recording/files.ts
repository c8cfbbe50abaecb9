/**
 * Where recordings live: `<stateDir>/recordings/YYYY/MM/DD/<session>.sluicerec`,
 * the day (UTC) being the session's start (format.ts, datePath).
 */
import { readdir } from 'node:fs/promises';
import { join } from 'node:path';
import { FILE_EXTENSION } from './format.js';

/**
 * Every recording file, sorted by path (= by day). With `fromDay`
 * (`YYYY/MM/DD`), only those of that day and later: directories wholly
 * before it are not read.
 */
export async function listRecordingFiles(stateDir: string, fromDay = ''): Promise<string[]> {
  const out: string[] = [];
  const walk = async (dir: string, day: string, depth: number): Promise<void> => {
    let names: string[];
    try {
      names = (await readdir(dir)).sort();
    } catch {
      return;
    }
    for (const name of names) {
      if (depth < 3) {
        if (!/^\d+$/.test(name)) continue;
        const sub = day === '' ? name : `${day}/${name}`;
        // A year or month before fromDay's is skipped: compare on the parts the directory has.
        if (fromDay !== '' && sub < fromDay.slice(0, sub.length)) continue;
        await walk(join(dir, name), sub, depth + 1);
      } else if (name.endsWith(FILE_EXTENSION)) out.push(join(dir, name));
    }
  };
  await walk(join(stateDir, 'recordings'), '', 0);
  return out;
}

/**
 * Where recordings live: `<stateDir>/recordings/YYYY/MM/DD/<session>.sluicerec`,
 * the day (UTC) being the session's start (format.ts, datePath); and how
 * each file is made.
 */
import { close, open, write } from 'node:fs';
import { mkdir, readdir, realpath, stat } from 'node:fs/promises';
import { join } from 'node:path';
import { FILE_EXTENSION } from './format.js';

/**
 * Day directories made or found. Every session of a day goes into the same
 * one, so a create skips the recursive mkdir (a failing mkdir and a stat)
 * once the directory is known; one removed since (retention deletes
 * emptied day directories) shows as ENOENT from the open, and is made again.
 */
const knownDirs = new Set<string>();
const MAX_KNOWN_DIRS = 64;

async function makeDir(dir: string): Promise<void> {
  await mkdir(dir, { recursive: true, mode: 0o700 });
  if (knownDirs.size >= MAX_KNOWN_DIRS) knownDirs.clear();
  knownDirs.add(dir);
}

/** See holdRecordingCreates. */
let createsHeld: Promise<void> | undefined;

/**
 * Creates a recording's file, 0600, exclusive and append-only (O_APPEND:
 * every later write lands at its end), making its day directory when
 * needed, and writes `header` to it. Returns its descriptor, which the
 * caller closes.
 *
 * The calls run on libuv's thread pool, at the process's priority: the
 * event loop never waits for the disk (a create is a directory update and
 * an inode allocation: about 50 µs here, but on ext4 without a journal,
 * right after many deletions, up to a millisecond), and a new session's
 * create does not queue behind the recording thread's appends and fsyncs
 * either (seal-thread.ts). Plain descriptors, not FileHandles: the
 * recording thread appends to it by number.
 */
export async function createRecordingFile(dir: string, path: string, header: Uint8Array): Promise<number> {
  if (createsHeld !== undefined) await createsHeld;
  if (!knownDirs.has(dir)) await makeDir(dir);
  let fd: number;
  try {
    fd = await openExclusive(path);
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code !== 'ENOENT') throw err;
    knownDirs.delete(dir);
    await makeDir(dir);
    fd = await openExclusive(path);
  }
  try {
    await writeAll(fd, header);
  } catch (err) {
    closeRecordingFile(fd);
    throw err;
  }
  return fd;
}

/** Closes a recording's descriptor, off the event loop; an error at close (EIO) changes nothing for the recording now. */
export function closeRecordingFile(fd: number): void {
  close(fd, () => undefined);
}

/**
 * Holds every recording file create until the returned function is called,
 * as a disk that stops answering would: new sessions wait at admission.
 * For tests of what that does to them (test/integration/recording-admission).
 */
export function holdRecordingCreates(): () => void {
  let release!: () => void;
  const held = new Promise<void>((resolve) => (release = resolve));
  createsHeld = held;
  return () => {
    if (createsHeld === held) createsHeld = undefined;
    release();
  };
}

function openExclusive(path: string): Promise<number> {
  return new Promise((resolve, reject) => open(path, 'ax', 0o600, (err, fd) => (err ? reject(err) : resolve(fd))));
}

/** Writes all of `bytes` at the end of the file; a write that makes no progress is an error. */
async function writeAll(fd: number, bytes: Uint8Array): Promise<void> {
  for (let done = 0; done < bytes.length; ) {
    const n = await new Promise<number>((resolve, reject) =>
      write(fd, bytes, done, bytes.length - done, null, (err, written) => (err ? reject(err) : resolve(written))),
    );
    if (n <= 0) throw Object.assign(new Error('short write'), { code: 'EIO' });
    done += n;
  }
}

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

/**
 * `path` (a recording path from the sessions index) when it names a regular
 * `.sluicerec` file inside `<stateDir>/recordings`, symlinks resolved; else
 * undefined. The index is a file on disk like any other: a row pointing
 * elsewhere (a restored or edited database) must not make the API or the
 * CLI serve the recording key, the dev issuer's key or any other file the
 * gateway can read.
 */
export async function recordingPathWithin(stateDir: string, path: string | undefined): Promise<string | undefined> {
  if (!path || !path.endsWith(FILE_EXTENSION)) return undefined;
  try {
    const [root, real] = await Promise.all([realpath(join(stateDir, 'recordings')), realpath(path)]);
    if (!real.startsWith(`${root}/`) || !real.endsWith(FILE_EXTENSION)) return undefined;
    return (await stat(real)).isFile() ? real : undefined;
  } catch {
    return undefined;
  }
}

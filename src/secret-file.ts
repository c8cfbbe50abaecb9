/**
 * Secret files in the state directory (the dev issuer's key, the recording
 * key, the approval fingerprint key): created once, readable by their owner
 * only, and the same for every process that opens them.
 */
import { randomBytes } from 'node:crypto';
import { constants } from 'node:fs';
import { copyFile, link, open, stat, unlink } from 'node:fs/promises';
import { basename, dirname, join } from 'node:path';

/**
 * Writes `contents` to `path` (mode 0600) unless the file is there already.
 * Two processes doing this at once end up with one file: each writes its
 * candidate to a temporary file, fsyncs it (a crash never leaves an empty
 * key in place) and hard-links it into place, which fails with EEXIST if
 * the other got there first; both then read whatever is in place. On a
 * filesystem without hard links the candidate is copied into place with
 * an exclusive create instead: still one winner, though a process reading
 * at that very moment may find the file half written, and refuse to start.
 */
export async function createOnce(path: string, contents: string | Buffer): Promise<void> {
  const tmp = join(dirname(path), `.${basename(path)}.${process.pid}.${randomBytes(6).toString('hex')}.tmp`);
  // 'wx' with mode 0600: the file is never readable by others, not even briefly (chmod: whatever the umask).
  const fh = await open(tmp, 'wx', 0o600);
  try {
    try {
      await fh.chmod(0o600);
      await fh.writeFile(contents);
      await fh.sync();
    } finally {
      await fh.close();
    }
    try {
      await link(tmp, path);
    } catch (err) {
      const code = (err as NodeJS.ErrnoException).code;
      if (code !== 'EPERM' && code !== 'ENOTSUP' && code !== 'ENOSYS') throw err;
      await copyFile(tmp, path, constants.COPYFILE_EXCL);
    }
  } catch (err) {
    // EEXIST from the link or the copy: another process created the file first; theirs is used.
    if ((err as NodeJS.ErrnoException).code !== 'EEXIST') throw err;
  } finally {
    await unlink(tmp).catch(() => undefined);
  }
}

/** The file's mode when users other than its owner may read or write it, else undefined (always undefined on Windows). */
export async function sharedMode(path: string): Promise<string | undefined> {
  if (process.platform === 'win32') return undefined;
  const mode = (await stat(path)).mode & 0o777;
  return (mode & 0o077) !== 0 ? mode.toString(8) : undefined;
}

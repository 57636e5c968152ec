/**
 * Bounded reads of files whose path comes from outside (a request, a config): never more than
 * `maxBytes` in memory, never blocking on a FIFO, never reading a device (`/dev/zero`).
 */
import { closeSync, fstatSync, openSync, readSync, constants as fsc } from 'node:fs';

/** The file is not a regular file, or is larger than allowed. Carries an errno-style `code`. */
export class BoundedReadError extends Error {
  readonly code: 'EFBIG' | 'EINVAL';
  readonly path: string;
  constructor(path: string, code: 'EFBIG' | 'EINVAL', why: string) {
    super(`"${path}" ${why}`);
    this.name = 'BoundedReadError';
    this.code = code;
    this.path = path;
  }
}

/**
 * Reads `path` as UTF-8, at most `maxBytes`. Opened O_NONBLOCK (a FIFO returns at once) and
 * refused unless a regular file; a file longer than `maxBytes` is an error, not truncated.
 * fs errors (ENOENT, EACCES) are thrown as they are.
 */
export function readFileBounded(path: string, maxBytes: number): string {
  const fd = openSync(path, fsc.O_RDONLY | fsc.O_NONBLOCK);
  try {
    if (!fstatSync(fd).isFile()) throw new BoundedReadError(path, 'EINVAL', 'is not a regular file');
    return readCapped(fd, path, maxBytes, false);
  } finally {
    closeSync(fd);
  }
}

/**
 * {@link readFileBounded} for a file already known to be a regular file (a directory entry's
 * type): no fstat. Opened O_NONBLOCK | O_NOFOLLOW, so a FIFO or a symlink swapped in meanwhile
 * cannot block or redirect it; a device reads at most the cap.
 */
export function readSmallFile(path: string, maxBytes: number): string {
  let fd: number;
  try {
    fd = openSync(path, fsc.O_RDONLY | fsc.O_NONBLOCK | fsc.O_NOFOLLOW);
  } catch (err) {
    // swapped for a symlink since the directory was read
    if ((err as NodeJS.ErrnoException).code === 'ELOOP') throw new BoundedReadError(path, 'EINVAL', 'is not a regular file');
    throw err;
  }
  try {
    return readCapped(fd, path, maxBytes, true);
  } catch (err) {
    // a FIFO swapped in, with a writer and nothing written
    if ((err as NodeJS.ErrnoException).code === 'EAGAIN') throw new BoundedReadError(path, 'EINVAL', 'is not a regular file');
    throw err;
  } finally {
    closeSync(fd);
  }
}

/**
 * Reads `fd` to its end, at most `maxBytes` (more is an error). `shortReadEnds`: a short read is
 * the end (a regular file on a disk: one read for a small file); otherwise only a read of 0 is,
 * as /proc and /sys files answer a page at a time.
 */
function readCapped(fd: number, path: string, maxBytes: number, shortReadEnds: boolean): string {
  const buf = Buffer.allocUnsafe(maxBytes + 1);
  let len = 0;
  for (;;) {
    const want = buf.length - len;
    const n = readSync(fd, buf, len, want, null);
    len += n;
    if (len > maxBytes) throw new BoundedReadError(path, 'EFBIG', `is larger than ${maxBytes} bytes`);
    if (n === 0 || (shortReadEnds && n < want)) break;
  }
  return buf.toString('utf8', 0, len);
}

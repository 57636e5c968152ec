/** A kernel rejection, keeping the errno name (EEXIST, ENOENT, ESRCH, ...) callers branch on. */
export class NetlinkError extends Error {
  readonly errno: string;
  constructor(op: string, errno: string, options?: { cause?: unknown }) {
    super(`${op}: ${errno}`, options);
    this.name = 'NetlinkError';
    this.errno = errno;
  }
}

export class LinkNotFoundError extends Error {
  readonly link: string;
  constructor(link: string | number) {
    super(`link "${link}" not found`);
    this.name = 'LinkNotFoundError';
    this.link = String(link);
  }
}

/** Errno names that mean "the thing is already gone" for delete operations. */
const GONE = new Set(['ENOENT', 'ESRCH', 'ENODEV', 'EADDRNOTAVAIL']);

export function isGone(err: unknown): boolean {
  return (err instanceof NetlinkError && GONE.has(err.errno)) || err instanceof LinkNotFoundError;
}

export function isExists(err: unknown): boolean {
  return err instanceof NetlinkError && err.errno === 'EEXIST';
}

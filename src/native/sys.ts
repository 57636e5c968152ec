/**
 * Typed wrappers over the system calls of weft's native addon (src/netns/native/setns.c,
 * loaded from dist/native/setns.node by ./load.ts): setns, SO_PEERCRED, fstatfs's f_type, a
 * non-blocking flock and F_DUPFD. The addon is loaded on first use.
 */
import { loadNative } from './load.ts';

interface SysAddon {
  setns(fd: number, nstype: number): void;
  peerCred(fd: number): [pid: number, uid: number, gid: number];
  fsType(fd: number): number;
  flockTry(fd: number, exclusive?: boolean): boolean;
  reserveFds(n: number): boolean;
}

let addon: SysAddon | undefined;

/** The addon itself; throws when it cannot be loaded (a broken install). */
export function sys(): SysAddon {
  addon ??= loadNative<SysAddon>('setns.node');
  return addon;
}

/** f_type of a namespace file (`/proc/PID/ns/*`, a bind mount of one): linux/magic.h NSFS_MAGIC. */
export const NSFS_MAGIC = 0x6e736673;

/** Credentials of the process at the other end of a connected unix socket. */
export interface PeerCred {
  pid: number;
  uid: number;
  gid: number;
}

/** SO_PEERCRED of socket `fd`: who connected (as of connect()). */
export function peerCred(fd: number): PeerCred {
  const [pid, uid, gid] = sys().peerCred(fd);
  return { pid, uid, gid };
}

/** fstatfs(2)'s f_type of the file open on `fd`. */
export function fsType(fd: number): number {
  return sys().fsType(fd);
}

/** flock(fd, LOCK_EX|LOCK_NB): true when taken, false when another open file holds it. Never blocks. */
export function tryLockExclusive(fd: number): boolean {
  return sys().flockTry(fd, true);
}

/** flock(fd, LOCK_UN). */
export function unlock(fd: number): void {
  sys().flockTry(fd);
}

/**
 * Grows this process's file descriptor table to `n` entries now; false when RLIMIT_NOFILE is
 * lower. Linux grows the table as descriptors are opened, and in a process with threads each
 * growth waits out an RCU grace period (fs/file.c expand_fdtable): measured 12-17 ms inside one
 * accept4 when a burst of CNI connections crossed 256 descriptors. The table never shrinks.
 */
export function reserveFdTable(n: number): boolean {
  return sys().reserveFds(n);
}

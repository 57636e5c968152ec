/**
 * Network namespaces: open one by path and run synchronous code inside it.
 *
 * `setns(2)` moves only the calling thread. We switch the main thread, run a synchronous
 * function (create a netlink socket, write a sysctl) and switch straight back before any
 * await, so no callback or libuv thread ever observes the foreign namespace. A netlink socket
 * stays bound to the namespace it was created in, which is all the rest of weft needs.
 * See README.md in this folder.
 */
import { closeSync, fstatSync, openSync, statSync, writeFileSync, readFileSync, constants as fsc } from 'node:fs';
import { fsType, NSFS_MAGIC, sys } from '../native/sys.ts';

const CLONE_NEWNET = 0x40000000;

/** The namespace path does not exist or is not a network namespace. */
export class NetnsNotFoundError extends Error {
  readonly path: string;
  constructor(path: string, options?: { cause?: unknown }) {
    super(`network namespace "${path}" not found or not a namespace`, options);
    this.name = 'NetnsNotFoundError';
    this.path = path;
  }
}

/** An open handle on a network namespace; keep it open while you use sockets made in it. */
export interface NetNs {
  readonly path: string;
  readonly fd: number;
  close(): void;
}

const loadAddon = sys;

/**
 * Opens a namespace by path (`/run/netns/X`, `/proc/PID/ns/net`). Throws {@link NetnsNotFoundError}.
 * The path comes from the request: the open never blocks (O_NONBLOCK, so a FIFO returns at
 * once; libuv adds O_CLOEXEC) and the file must be on nsfs before anything else touches it.
 */
export function openNetns(path: string): NetNs {
  let fd: number;
  try {
    fd = openSync(path, fsc.O_RDONLY | fsc.O_NONBLOCK);
  } catch (cause) {
    throw new NetnsNotFoundError(path, { cause });
  }
  // A missing addon is a broken install, not a bad path: let that error through as it is.
  try {
    loadAddon();
  } catch (err) {
    closeSync(fd);
    throw err;
  }
  try {
    if (fsType(fd) !== NSFS_MAGIC) throw new Error('not a namespace file (fstatfs f_type is not NSFS_MAGIC)');
  } catch (cause) {
    closeSync(fd);
    throw new NetnsNotFoundError(path, { cause });
  }
  let closed = false;
  const ns: NetNs = {
    path,
    fd,
    close() {
      if (!closed) closeSync(fd);
      closed = true;
    },
  };
  // Entering and leaving proves it is a *network* namespace (EINVAL otherwise).
  try {
    withNetns(ns, () => undefined);
  } catch (cause) {
    ns.close();
    throw new NetnsNotFoundError(path, { cause });
  }
  return ns;
}

/** Identity of a namespace: its nsfs device and inode. */
function identity(st: { dev: number; ino: number }): string {
  return `${st.dev}:${st.ino}`;
}

/**
 * True when `ns` is the network namespace this process serves (its main thread's, which is
 * home whenever JavaScript runs outside {@link withNetns}): a pod must never be that one.
 */
export function isOwnNetns(ns: NetNs): boolean {
  return identity(fstatSync(ns.fd)) === identity(statSync('/proc/self/ns/net'));
}

/** The namespace the calling thread is in now. */
export function currentNetns(): NetNs {
  return openNetns('/proc/thread-self/ns/net');
}

/**
 * Runs `fn` synchronously with the main thread inside `ns`, then switches back. `fn` must not
 * await: anything scheduled for later runs in the original namespace.
 */
export function withNetns<T>(ns: NetNs, fn: () => T): T {
  const native = loadAddon();
  const home = openSync('/proc/thread-self/ns/net', fsc.O_RDONLY);
  try {
    native.setns(ns.fd, CLONE_NEWNET);
    try {
      const result = fn();
      if (result instanceof Promise) throw new Error('withNetns: fn must be synchronous');
      return result;
    } finally {
      native.setns(home, CLONE_NEWNET);
    }
  } finally {
    closeSync(home);
  }
}

/**
 * Sets a `/proc/sys/net/...` value inside `ns` (or here when omitted). The write is a
 * synchronous call made while switched: /proc/sys/net resolves to the opener's namespace.
 * `name` is dotted (`net.ipv4.ip_forward`) or a path (`net/ipv4/conf/eth0.1/arp_notify`; use
 * the path form when an interface name may contain dots).
 */
export function setSysctl(name: string, value: string, ns?: NetNs): void {
  const file = `/proc/sys/${name.includes('/') ? name : name.replaceAll('.', '/')}`;
  const write = () => {
    if (readFileSync(file, 'utf8').trim() !== value) writeFileSync(file, value);
  };
  if (ns) withNetns(ns, write);
  else write();
}

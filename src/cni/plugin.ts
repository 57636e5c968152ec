/** What every CNI command gets: the parsed request and its dependencies (real or test doubles). */
import type { Netlink } from '../netlink/index.ts';
import type { NetNs } from '../netns/index.ts';
import type { Store } from '../ipam/store.ts';
import { NetnsNotFoundError } from '../netns/index.ts';
import type { NetConf } from './config.ts';
import { CniError, ERR } from './errors.ts';
import type { CniEnv } from './types.ts';

export interface Request {
  env: CniEnv;
  conf: NetConf;
}

export interface Deps {
  /** Opens netlink in `netns`, or in the node namespace the process runs in. */
  openNetlink(netns?: NetNs): Netlink;
  /** Opens a namespace by path; throws NetnsNotFoundError. */
  openNetns(path: string): NetNs;
  /** Writes a `/proc/sys` file, given as a path below it (`net/ipv4/ip_forward`), in `netns` or here. */
  writeSysctl(path: string, value: string, netns?: NetNs): void;
  /** The IPAM store of a network. */
  store(conf: NetConf): Store;
  /** Tests only: ADD fails right after the named step (see add.ts STEPS) to exercise undo. */
  failAfter?: string;
  /** Diagnostics; never stdout. */
  log(msg: string): void;
}

/**
 * The host end's name: `veth` + 8 hex digits of an FNV-1a hash of (containerID, ifname).
 * Deterministic, so DEL and GC find it even when the pod's namespace is gone.
 */
export function hostVethName(containerID: string, ifname: string): string {
  let h = 0x811c9dc5;
  const text = `${containerID}\0${ifname}`;
  for (let i = 0; i < text.length; i++) {
    h ^= text.charCodeAt(i);
    h = Math.imul(h, 0x01000193) >>> 0;
  }
  return `veth${h.toString(16).padStart(8, '0')}`;
}

/** Opens the pod's namespace; a path that is not one is bad input (code 4). */
export function openPodNetns(deps: Deps, path: string): NetNs {
  try {
    return deps.openNetns(path);
  } catch (err) {
    if (err instanceof NetnsNotFoundError) {
      throw new CniError(ERR.INVALID_ENV, `CNI_NETNS "${path}" is not a network namespace`, '', { cause: err });
    }
    throw err;
  }
}

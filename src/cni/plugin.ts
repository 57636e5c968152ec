/** What every CNI command gets: the parsed request and its dependencies (real or test doubles). */
import type { Netlink } from '../netlink/index.ts';
import type { NetNs } from '../netns/index.ts';
import type { Store } from '../ipam/store.ts';
import { NetnsNotFoundError } from '../netns/index.ts';
import type { NetConf, OwnNetwork } from './config.ts';
import type { PodMasq } from './masq.ts';
import { CniError, ERR } from './errors.ts';
import type { CniEnv } from './types.ts';

export interface Request {
  env: CniEnv;
  conf: NetConf;
}

export interface Deps {
  /** Opens netlink in `netns`, or in the node namespace the process runs in. */
  openNetlink(netns?: NetNs): Netlink;
  /** Opens a namespace by path; throws NetnsNotFoundError. Must never block (the path is the request's). */
  openNetns(path: string): NetNs;
  /** True when `ns` is the namespace this process serves (never a pod's). */
  isOwnNetns(ns: NetNs): boolean;
  /** Writes a `/proc/sys` file of this namespace, given as a path below it (`net/ipv4/ip_forward`). */
  writeSysctl(path: string, value: string): void;
  /** The IPAM store of a network. */
  store(conf: NetConf): Store;
  /** Per-pod masquerade (./masq.ts), for nodes where weftd does not masquerade. */
  masq: PodMasq;
  /** When set, the only network served: see {@link OwnNetwork} (weftd's fast path sets it). */
  network?: OwnNetwork;
  /** Diagnostics; never stdout. */
  log(msg: string): void;
  /**
   * The fast path's: deletes a host veth that DEL has already set down (so its pod is off the
   * bridge), in the background, together with others asked for meanwhile (one kernel
   * unregistration for a burst). A veth's deletion waits out an RCU grace period in the kernel
   * (~15-25 ms here), which the reply does not wait for; weftd holds the request's
   * (containerID, ifname) until it is done (src/fastpath/server.ts). Without it (the standalone
   * binary, which exits when it replies) DEL deletes the veth itself before replying.
   */
  retireHostLink?(index: number): void;
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

/**
 * The host veth's owner, recorded as its IFLA_IFALIAS: `containerID/ifname`, or for IDs too
 * long for an alias (255 bytes) `weft-sha256:` + the hex digest of both. The 32-bit name
 * ({@link hostVethName}) can collide; DEL and GC delete a veth only when this matches.
 */
export function vethAlias(containerID: string, ifname: string): string {
  const text = `${containerID}/${ifname}`;
  if (Buffer.byteLength(text) <= 255) return text;
  // Loaded only here: every pod start would pay for crypto otherwise.
  const { createHash } = process.getBuiltinModule('node:crypto');
  return `weft-sha256:${createHash('sha256').update(`${containerID}\0${ifname}`).digest('hex')}`;
}

/**
 * Opens the pod's namespace; a path that is not one is bad input (code 4), and so is the
 * namespace this process serves: a "pod" there would replace the node's own routes.
 * With `missingOk` (DEL), a path that is gone returns undefined.
 */
export function openPodNetns(deps: Deps, path: string, opts: { missingOk?: boolean } = {}): NetNs | undefined {
  let ns: NetNs;
  try {
    ns = deps.openNetns(path);
  } catch (err) {
    if (err instanceof NetnsNotFoundError) {
      if (opts.missingOk) return undefined;
      throw new CniError(ERR.INVALID_ENV, `CNI_NETNS "${path}" is not a network namespace`, '', { cause: err });
    }
    throw err;
  }
  let own: boolean;
  try {
    own = deps.isOwnNetns(ns);
  } catch (err) {
    ns.close();
    throw err;
  }
  if (own) {
    ns.close();
    throw new CniError(ERR.INVALID_ENV, `CNI_NETNS "${path}" is the node's own network namespace, not a pod's`);
  }
  return ns;
}

/** {@link openPodNetns} for commands that need the namespace. */
export function requirePodNetns(deps: Deps, path: string): NetNs {
  return openPodNetns(deps, path)!;
}

/**
 * What the daemon needs from a lease store; {@link EtcdSubnetManager} is the etcd implementation.
 * The daemon assumes nothing about the store beyond this: a lease may never expire (`expiresAt`
 * undefined, e.g. a node's podCIDR), then renewal only runs when the daemon asks for it.
 *
 * Errors a manager throws, by what the caller does with them:
 * - {@link ConfigError}: the network config is missing or invalid (an operator must fix it);
 * - marked retryable (src/core/errors.ts `isRetryable`): the store is unreachable
 *   (EtcdUnavailableError) or has no free subnet (OutOfSubnetsError); waiting helps;
 * - {@link LeaseLostError}: another node holds our subnet now. The daemon does not move at
 *   once (src/daemon/lease.ts): it goes not ready, keeps the data plane, and keeps renewing,
 *   which takes the same subnet again as soon as the key is free.
 */
import type { IPv4Net } from '../ip/ipv4.ts';
import type { NetworkConfig } from './config.ts';
import type { Lease, LeaseAttrs } from './lease.ts';

/** A watch event on the lease table. */
export type LeaseEvent = { type: 'put'; lease: Lease } | { type: 'delete'; subnet: IPv4Net };

export interface LeaseWatchHandler {
  /** The full table; called first and again after any resync (compaction, reconnect). */
  snapshot(leases: Lease[]): void;
  event(ev: LeaseEvent): void;
}

export interface SubnetManager {
  /**
   * True when nodes choose their own subnets and another node can take ours (etcd). The daemon
   * then refuses to leave a subnet pods still use (src/daemon/lease.ts). False or absent when
   * the store assigns the subnet (Kubernetes' podCIDR): its answer is followed.
   */
  readonly canLoseSubnet?: boolean;
  /** Throws ConfigError when missing or invalid. */
  getConfig(): Promise<NetworkConfig>;
  listLeases(): Promise<{ leases: Lease[]; revision: string }>;
  /**
   * Takes a subnet for `attrs.publicIP` (see chooseSubnet) and returns our lease. Retries when
   * another node wins the race for the chosen subnet; throws OutOfSubnetsError when none is free.
   */
  acquireLease(config: NetworkConfig, attrs: LeaseAttrs, opts: { previous?: IPv4Net; ttlSeconds: number }): Promise<Lease>;
  /**
   * Extends our lease by `ttlSeconds`. If the key was deleted the same subnet is taken again;
   * throws LeaseLostError when another node holds it now.
   */
  renewLease(lease: Lease, attrs: LeaseAttrs, opts: { ttlSeconds: number }): Promise<Lease>;
  /** Watches the lease table until `signal` aborts, resyncing after compaction or reconnects. */
  watchLeases(signal: AbortSignal, handler: LeaseWatchHandler): Promise<void>;
  /**
   * Called once when the node is ready (peers programmed, subnet file written) with our lease
   * (flannel's CompleteLease: a Kubernetes manager clears NetworkUnavailable here). Retried
   * until it succeeds; the daemon reports ready after it.
   */
  ready?(lease: Lease): Promise<void>;
  /**
   * The VTEP MAC this node published before (a Kubernetes manager reads it from our own Node's
   * annotation), so a device recreated after a reboot keeps the MAC peers have in their FDB
   * (flannel #1795). Undefined: none known; the device's own MAC is used.
   */
  previousVtepMAC?(vni: number): Promise<string | undefined>;
  close(): void;
}

/** Our subnet is held by another node now (`holder`: its public IP, or a description). */
export class LeaseLostError extends Error {
  readonly subnet: string;
  readonly holder: string;

  constructor(subnet: string, holder: string) {
    super(`lease for subnet ${subnet} is now held by ${holder}`);
    this.name = 'LeaseLostError';
    this.subnet = subnet;
    this.holder = holder;
  }
}

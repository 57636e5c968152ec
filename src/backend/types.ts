/**
 * The backend seam (flannel's backend.Backend / backend.Network split): the daemon hands a
 * backend network the lease table, the backend turns it into kernel state. Only vxlan exists.
 */
import type { IPv4Net } from '../ip/ipv4.ts';
import type { Lease } from '../subnet/lease.ts';

export interface BackendNetwork {
  /** The backend data this node publishes in its lease (opaque to the subnet manager). */
  readonly backendData: unknown;
  readonly backendType: string;
  /** Replaces the whole peer set (initial list, resync after compaction or reconnect). */
  applySnapshot(leases: Lease[]): Promise<void>;
  /** A lease appeared or changed. */
  applyPut(lease: Lease): Promise<void>;
  /** A lease went away. */
  applyDelete(lease: Pick<Lease, 'subnet'>): Promise<void>;
  /** Compares kernel state with the peer set and repairs drift; returns how many fixes it made. */
  reconcile(): Promise<number>;
  /**
   * Repairs drift as the kernel announces it, until `signal` aborts (resolves then). Optional:
   * a backend without it relies on the periodic {@link reconcile} alone.
   */
  watch?(signal: AbortSignal): Promise<void>;
  /** Stops background work of its own (retries of failed peer work) when the daemon stops. */
  close?(): void;
  /** Number of peers currently programmed. */
  readonly peerCount: number;
  /** The overlay device's MTU (what pods get through the subnet file). */
  readonly mtu: number;
  /** Sets this node's own subnet (its lease), which is never programmed as a peer. */
  setSubnet(subnet: IPv4Net): Promise<void>;
  /** The overlay device's ifindex (its routes are the peers', not this node's own networks). */
  readonly deviceIndex: number;
  /** The overlay device's MAC (lower case), when the backend has one: no peer may claim it. */
  readonly deviceMAC: string | undefined;
  /**
   * The MAC a peer's lease asks to be reached at (undefined: the backend uses none); throws with
   * the reason when the lease is not one this backend can program (type, backend data).
   */
  peerMAC(lease: Lease): string | undefined;
}

/**
 * The peer model: what the vxlan backend makes of another node's lease, and the set of peers it
 * wants programmed, with the look-ups the planner and the stale-entry re-checks need.
 */
import { formatIPv4, type IPv4Net } from '../../ip/ipv4.ts';
import type { Lease } from '../../subnet/lease.ts';
import { parseBackendData, type VxlanBackendData } from './backenddata.ts';

/** Another node, as far as this node's kernel needs to know it (see expected.ts for the entries). */
export interface Peer {
  subnet: IPv4Net;
  /** The peer subnet's network address: neighbor IP and route gateway. */
  gateway: string;
  mac: string;
  publicIP: string;
}

/** Turns a lease into a peer; `{ skip }` with the reason when it is not a usable vxlan lease. */
export function peerFromLease(lease: Lease, vni: number): Peer | { skip: string } {
  if (lease.backendType !== 'vxlan') return { skip: `backend type "${lease.backendType}" is not vxlan` };
  let data: VxlanBackendData;
  try {
    data = parseBackendData(lease.backendData);
  } catch (err) {
    return { skip: (err as Error).message };
  }
  if (data.vni !== vni) return { skip: `VNI ${data.vni} differs from ours (${vni})` };
  return { subnet: lease.subnet, gateway: formatIPv4(lease.subnet.ip), mac: data.vtepMAC, publicIP: lease.publicIP };
}

/** Whether two peers need the same kernel entries (the subnet is the lease id, so equal already). */
export function samePeer(a: Peer, b: Peer): boolean {
  return a.mac === b.mac && a.publicIP === b.publicIP && a.gateway === b.gateway;
}

/**
 * The job-queue keys of work on a peer: its gateway (neighbor and route) and the MACs of the FDB
 * entries it writes or removes (`old`: the peer before a change). A MAC cannot look like an IPv4
 * address, so one key space serves both; a stale entry's key is its IP, MAC or route gateway.
 */
export function peerKeys(p: Peer, old?: Peer): string[] {
  return old && old.mac !== p.mac ? [p.gateway, p.mac, old.mac] : [p.gateway, p.mac];
}

/** What the planner asks of the wanted peer set (a read-only view of {@link PeerSet}). */
export interface WantedPeers {
  entries(): Iterable<[string, Peer]>;
  /** A wanted peer has this subnet (lease id, `a.b.c.d/n`). */
  has(id: string): boolean;
  /** A wanted peer's neighbor and route use this gateway. */
  hasGateway(ip: string): boolean;
  /** A wanted peer needs this FDB entry (a MAC can move to a new lease of the same node). */
  usesFdb(mac: string, dst: string): boolean;
}

function fdbKey(mac: string, dst: string): string {
  return `fdb ${mac}>${dst}`;
}

/** The wanted peers by lease id (`formatCIDR(subnet)`), with the look-ups reconcile and cleanup need. */
export class PeerSet implements WantedPeers {
  readonly #byId = new Map<string, Peer>();
  /** Lease id by gateway (one subnet, one network address). */
  readonly #gateways = new Map<string, string>();
  /** How many wanted peers use each FDB entry. */
  readonly #fdbUsers = new Map<string, number>();

  get size(): number {
    return this.#byId.size;
  }

  get(id: string): Peer | undefined {
    return this.#byId.get(id);
  }

  has(id: string): boolean {
    return this.#byId.has(id);
  }

  entries(): IterableIterator<[string, Peer]> {
    return this.#byId.entries();
  }

  values(): IterableIterator<Peer> {
    return this.#byId.values();
  }

  set(id: string, p: Peer): void {
    this.delete(id);
    this.#byId.set(id, p);
    this.#gateways.set(p.gateway, id);
    const k = fdbKey(p.mac, p.publicIP);
    this.#fdbUsers.set(k, (this.#fdbUsers.get(k) ?? 0) + 1);
  }

  delete(id: string): void {
    const old = this.#byId.get(id);
    if (!old) return;
    this.#byId.delete(id);
    this.#gateways.delete(old.gateway);
    const k = fdbKey(old.mac, old.publicIP);
    const n = (this.#fdbUsers.get(k) ?? 1) - 1;
    if (n) this.#fdbUsers.set(k, n);
    else this.#fdbUsers.delete(k);
  }

  hasGateway(ip: string): boolean {
    return this.#gateways.has(ip);
  }

  /** The wanted peer whose neighbor and route use this gateway. */
  byGateway(ip: string): Peer | undefined {
    const id = this.#gateways.get(ip);
    return id === undefined ? undefined : this.#byId.get(id);
  }

  usesFdb(mac: string, dst: string): boolean {
    return this.#fdbUsers.has(fdbKey(mac, dst));
  }
}

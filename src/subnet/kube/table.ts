/**
 * The peer table of the kube subnet manager (pure): Node objects in, lease events out.
 *
 * Nodes are keyed by name, leases by subnet. A node becomes a lease only when its podCIDR and
 * backend annotations are valid (src/subnet/kube/annotations.ts) and its podCIDR overlaps neither
 * our subnet nor another node's lease; the first node to hold a subnet keeps it, and a node that
 * lost that race is re-examined when the holder goes away. An update is an event only when the
 * lease changed (flannel: backend data, type or public IP), so resyncs and status heartbeats
 * are silent. Each distinct problem of a node is reported once, not on every resync.
 */
import { describeSubnet } from '../choose.ts';
import type { NetworkConfig } from '../config.ts';
import type { IPv4Net } from '../../ip/ipv4.ts';
import { sameAttrs, type Lease } from '../lease.ts';
import type { LeaseEvent } from '../manager.ts';
import { nodeToLease, type AnnotationNames, type NodeLike } from './annotations.ts';

interface Entry {
  node: NodeLike;
  state: 'lease' | 'pending' | 'invalid' | 'conflict';
  lease?: Lease;
  why?: string;
}

export interface NodeTableOptions {
  names: AnnotationNames;
  config: NetworkConfig;
  /** This node: never a peer. */
  ownName: string;
  ownSubnet?: IPv4Net;
  /** A node was rejected (bad annotations, bad or conflicting podCIDR); once per distinct reason. */
  onInvalid?: (node: string, why: string) => void;
  /** How many peers are skipped because podCIDR or annotations are missing (called on change). */
  onPending?: (count: number) => void;
}

const key = (s: IPv4Net) => describeSubnet(s);

function overlapsNet(a: IPv4Net, b: IPv4Net): boolean {
  const len = Math.min(a.prefixLen, b.prefixLen);
  const mask = len === 0 ? 0 : (0xffffffff << (32 - len)) >>> 0;
  return (a.ip & mask) >>> 0 === (b.ip & mask) >>> 0;
}

export class NodeLeaseTable {
  readonly #opts: NodeTableOptions;
  readonly #nodes = new Map<string, Entry>();
  /** Subnet key -> the node holding it. */
  readonly #holders = new Map<string, string>();
  /** Prefix lengths in use by leases, with counts (overlap needs a scan only when they differ). */
  readonly #lens = new Map<number, number>();
  #pending = 0;
  #own: IPv4Net | undefined;

  constructor(opts: NodeTableOptions) {
    this.#opts = opts;
    this.#own = opts.ownSubnet;
  }

  /** The current leases (what a snapshot hands over). */
  leases(): Lease[] {
    const out: Lease[] = [];
    for (const e of this.#nodes.values()) if (e.lease) out.push(e.lease);
    return out;
  }

  /**
   * What the table made of node `name`: its lease, or why it has none (`pending`: no podCIDR or
   * annotations yet; `invalid`/`conflict`: rejected). Undefined for our own node and unknown names.
   */
  nodeState(name: string): { state: Entry['state']; lease?: Lease; why?: string } | undefined {
    const e = this.#nodes.get(name);
    return e && { state: e.state, lease: e.lease, why: e.why };
  }

  /** Peers skipped because podCIDR or backend annotations are missing. */
  get pendingCount(): number {
    return this.#pending;
  }

  /** Peers rejected (invalid or conflicting). */
  get invalidCount(): number {
    let n = 0;
    for (const e of this.#nodes.values()) if (e.state === 'invalid' || e.state === 'conflict') n++;
    return n;
  }

  /** Sets our own subnet and re-examines every node against it. */
  setOwnSubnet(subnet: IPv4Net): LeaseEvent[] {
    this.#own = subnet;
    const events: LeaseEvent[] = [];
    for (const e of [...this.#nodes.values()]) events.push(...this.upsert(e.node));
    return events;
  }

  /** A node was added or changed. */
  upsert(node: NodeLike): LeaseEvent[] {
    const name = node.metadata?.name;
    if (!name || name === this.#opts.ownName) return [];
    const events: LeaseEvent[] = [];
    const prev = this.#nodes.get(name);
    const res = nodeToLease(node, { names: this.#opts.names, config: this.#opts.config, own: this.#own });
    let next: Entry;
    if (res.kind === 'lease') {
      const holder = this.#conflict(res.lease.subnet, name);
      next = holder ? { node, state: 'conflict', why: `podCIDR ${key(res.lease.subnet)} overlaps node "${holder}"'s` } : { node, state: 'lease', lease: res.lease };
    } else {
      next = { node, state: res.kind, why: res.why };
    }

    const prevLease = prev?.lease;
    let released: string | undefined;
    if (prevLease && (!next.lease || key(next.lease.subnet) !== key(prevLease.subnet))) {
      this.#release(prevLease);
      events.push({ type: 'delete', subnet: prevLease.subnet });
      released = key(prevLease.subnet);
    }
    if (next.lease) {
      if (!prevLease || released !== undefined) this.#hold(next.lease, name);
      if (!prevLease || released !== undefined || !sameAttrs(prevLease, next.lease)) events.push({ type: 'put', lease: next.lease });
    }
    this.#nodes.set(name, next);
    if ((next.state === 'invalid' || next.state === 'conflict') && next.why !== prev?.why) this.#opts.onInvalid?.(name, next.why!);
    this.#countPending();
    if (released !== undefined) events.push(...this.#retryConflicts(name));
    return events;
  }

  /** A node was deleted. */
  remove(name: string): LeaseEvent[] {
    const prev = this.#nodes.get(name);
    if (!prev) return [];
    this.#nodes.delete(name);
    const events: LeaseEvent[] = [];
    if (prev.lease) {
      this.#release(prev.lease);
      events.push({ type: 'delete', subnet: prev.lease.subnet });
      events.push(...this.#retryConflicts(name));
    }
    this.#countPending();
    return events;
  }

  /** A full listing: nodes not in it are removed, the others upserted. */
  replace(nodes: NodeLike[]): LeaseEvent[] {
    const seen = new Set<string>();
    for (const n of nodes) if (n.metadata?.name) seen.add(n.metadata.name);
    const events: LeaseEvent[] = [];
    for (const name of [...this.#nodes.keys()]) if (!seen.has(name)) events.push(...this.remove(name));
    for (const n of nodes) events.push(...this.upsert(n));
    return events;
  }

  #conflict(subnet: IPv4Net, name: string): string | undefined {
    const exact = this.#holders.get(key(subnet));
    if (exact !== undefined && exact !== name) return exact;
    if (this.#lens.size === 1 && this.#lens.has(subnet.prefixLen)) return undefined;
    if (this.#lens.size === 0) return undefined;
    for (const [n, e] of this.#nodes) {
      if (n !== name && e.lease && overlapsNet(e.lease.subnet, subnet)) return n;
    }
    return undefined;
  }

  #hold(lease: Lease, name: string): void {
    this.#holders.set(key(lease.subnet), name);
    this.#lens.set(lease.subnet.prefixLen, (this.#lens.get(lease.subnet.prefixLen) ?? 0) + 1);
  }

  #release(lease: Lease): void {
    this.#holders.delete(key(lease.subnet));
    const n = (this.#lens.get(lease.subnet.prefixLen) ?? 1) - 1;
    if (n > 0) this.#lens.set(lease.subnet.prefixLen, n);
    else this.#lens.delete(lease.subnet.prefixLen);
  }

  /** Nodes that lost a subnet to another node get another look once a lease is released. */
  #retryConflicts(except: string): LeaseEvent[] {
    const events: LeaseEvent[] = [];
    for (const [n, e] of [...this.#nodes]) {
      if (n !== except && e.state === 'conflict') events.push(...this.upsert(e.node));
    }
    return events;
  }

  #countPending(): void {
    let n = 0;
    for (const e of this.#nodes.values()) if (e.state === 'pending') n++;
    if (n !== this.#pending) {
      this.#pending = n;
      this.#opts.onPending?.(n);
    }
  }
}

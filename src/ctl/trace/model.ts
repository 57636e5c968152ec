/**
 * `weftctl trace`'s typed model: the question (a packet from a pod to an address), the kernel
 * state it is answered from ({@link TraceSnapshot}, read live by live.ts or given as a fixture),
 * and the answer, a list of hops per possible path ({@link TraceReport}). walk.ts turns the
 * snapshot into the report without touching the kernel; render.ts prints it.
 */
import type { BridgeFdbEntry, NeighEntry, RouteLookup } from '../../netlink/query.ts';
import type { Addr, Link } from '../../netlink/types.ts';
import type { ProxyTable } from './nft.ts';

export type L4 = 'tcp' | 'udp';

/** What to trace: `weftctl trace <src> <dst>[:port[/proto]]`. */
export interface TraceQuery {
  src: string;
  dst: string;
  /** Absent: no port, so no Service can match (an ICMP-like walk). */
  port?: number;
  protocol: L4;
}

/** One route lookup the kernel answered (or refused with `error`, an errno name). */
export interface RouteFact {
  dst: string;
  src?: string;
  /** Incoming interface name (a forwarding lookup); absent for a lookup as the host itself. */
  iif?: string;
  result?: RouteLookup;
  error?: string;
}

/** The kernel state a walk reads; every field is what the node had when it was read. */
export interface TraceSnapshot {
  /** The proxy's table, parsed; undefined when `ip weft-proxy` does not exist. */
  proxy?: ProxyTable;
  links: Link[];
  addrs: Addr[];
  neighbors: NeighEntry[];
  fdb: BridgeFdbEntry[];
  /** Every route lookup the walk needs (live.ts asks {@link lookupsFor} which). */
  routes: RouteFact[];
  /** IPAM reservations on this node: address -> owner (`<containerID> <ifname>`). */
  ipamOwners?: Record<string, string>;
}

/** An endpoint the Service hop can send the packet to. */
export interface ServiceEndpoint {
  ip: string;
  port: number;
  /** The endpoint chain that DNATs to it. */
  chain: string;
  /** How it is picked: `random 1/3`, or `affinity` when the source is in its ClientIP set. */
  choice: string;
  /** The packet is marked for masquerade on the way (hairpin, or from outside the cluster CIDR). */
  masquerade: boolean;
}

/** Hop 1: the proxy table's verdict for dst ip . proto . port. */
export interface ServiceHop {
  kind: 'service';
  /** The map and key that matched: `service-ips`, `198.19.0.10 . tcp . 80`. */
  map?: string;
  key?: string;
  /** The chain the map element jumps to. */
  chain?: string;
  /** `namespace/name` and port from the chain name, when it carries them. */
  service?: string;
  servicePort?: string;
  /** `dnat` (to one of `endpoints`), `rejected` (no endpoint / unknown port), `dropped`, `none` (not a Service). */
  verdict: 'dnat' | 'rejected' | 'dropped' | 'none';
  endpoints: ServiceEndpoint[];
  /** Why: `no endpoints (no-endpoint-services)`, `table ip weft-proxy not present`, ... */
  detail?: string;
}

/** The kernel's route for one packet. */
export interface RouteHop {
  kind: 'route';
  dst: string;
  src?: string;
  iif?: string;
  type?: string;
  matched?: string;
  dev?: string;
  gateway?: string;
  onlink?: boolean;
  prefsrc?: string;
  table?: number;
  /** The lookup failed: errno and what it likely means. */
  error?: string;
}

/** The next hop's link-layer address on `dev` (flannel.N: the peer's VTEP MAC; bridge: the pod's MAC). */
export interface NeighborHop {
  kind: 'neighbor';
  dev: string;
  ip: string;
  mac?: string;
  state: string[];
  /** Entry missing or unusable. */
  problem?: string;
}

/** A forwarding entry: VXLAN `mac -> remote node`, or the bridge port a MAC was learned on. */
export interface FdbHop {
  kind: 'fdb';
  dev: string;
  mac: string;
  /** VXLAN remote (the peer node's public IP). */
  dst?: string;
  /** Bridge port the MAC is behind. */
  port?: string;
  state: string[];
  problem?: string;
}

/** The VXLAN encapsulation the packet leaves in. */
export interface EncapHop {
  kind: 'encap';
  dev: string;
  outerSrc?: string;
  outerDst?: string;
  udpPort: number;
  vni: number;
  /** The underlay route for the outer packet. */
  underlayDev?: string;
  underlayGateway?: string;
  problem?: string;
}

/** Where the walk stops. */
export interface EndHop {
  kind: 'end';
  at: 'local-pod' | 'peer-node' | 'this-node' | 'external' | 'unreachable' | 'rejected' | 'dropped' | 'unknown';
  /** The bridge and port for local-pod; the peer node's IP for peer-node. */
  bridge?: string;
  port?: string;
  node?: string;
  /** IPAM owner of the address (container ID, ifname), when the store was readable. */
  owner?: string;
  detail: string;
}

export type Hop = ServiceHop | RouteHop | NeighborHop | FdbHop | EncapHop | EndHop;

/** One way the packet can go (one per Service endpoint, or the only one). */
export interface TracePath {
  /** The address the packet is routed to (an endpoint, or dst). */
  to: string;
  port?: number;
  /** `random 1/3`, `affinity`, or `only`. */
  choice: string;
  hops: Hop[];
}

/** Where `--probe` saw its packet. */
export interface ProbeSighting {
  /** `prerouting` (entered the node), `forward`, `encap`, `bridge-out`, `input`, `output`. */
  point: string;
  packets: number;
  detail: string;
}

export interface ProbeResult {
  /** The namespace the packet was sent from. */
  netns: string;
  /** What the sender saw: `connected`, `refused`, `timeout`, `sent`, `reply`, or an error code. */
  outcome: string;
  sightings: ProbeSighting[];
}

/** `weftctl trace`'s answer. */
export interface TraceReport {
  kind: 'Trace';
  query: TraceQuery;
  /** The interface the packet enters the node on (the source pod's bridge), or `this-node`. */
  ingress: string;
  service: ServiceHop;
  paths: TracePath[];
  warnings: string[];
  probe?: ProbeResult;
}

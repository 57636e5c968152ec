/**
 * weftctl's typed model: what `get nodes`, `describe node` and `check` know, independent of how
 * it is printed (src/status/render.ts) or gathered (collect.ts, check.ts).
 */

/** One node, as its subnet lease in etcd describes it. */
export interface NodeLease {
  /** The node's VXLAN endpoint (flannel's PublicIP). */
  publicIP: string;
  /** The node's pod subnet, `198.18.1.0/24`. */
  subnet: string;
  /** The address weftd puts on flannel.N and peers route to (the subnet's network address). */
  vtepIP: string;
  backendType: string;
  /** BackendData.VtepMAC, when the lease carries one. */
  vtepMAC?: string;
  /** BackendData.VNI, when present. */
  vni?: number;
  /** Seconds until etcd expires the lease; undefined when the key has no etcd lease. */
  expiresInSeconds?: number;
  /** Seconds since the current etcd lease was granted (weftd grants a fresh one on renewal). */
  leaseAgeSeconds?: number;
  /** TTL the current etcd lease was granted with. */
  grantedTTLSeconds?: number;
  /** etcd lease id (decimal), `0` for none. */
  etcdLeaseId: string;
  key: string;
  createRevision: string;
  modRevision: string;
  /** The raw BackendData, for `describe`. */
  backendData: unknown;
}

/** The network config as weftctl shows it. */
export interface NetworkSummary {
  network: string;
  subnetLen: number;
  subnetMin: string;
  subnetMax: string;
  backend: { type: string; vni: number; port: number };
}

/** What `get nodes` prints. */
export interface NodeList {
  prefix: string;
  /** etcd revision the listing was read at. */
  revision: string;
  nodes: NodeLease[];
}

/** A watch event for `get nodes --watch`. */
export interface NodeEvent {
  type: 'ADDED' | 'MODIFIED' | 'DELETED';
  node: NodeLease;
}

/** One difference between etcd and this node's kernel state. */
export interface Finding {
  kind: 'missing' | 'extra' | 'wrong';
  /** What the finding is about: `device`, `neighbor`, `fdb`, `route`, `subnet-file`, `lease`. */
  object: string;
  /** The entry as weft would program it (missing/wrong) or as found (extra). */
  detail: string;
  /** Which peer (subnet) it belongs to, when it belongs to one. */
  peer?: string;
}

/** Per-peer state on this node. */
export interface PeerCheck {
  subnet: string;
  publicIP: string;
  vtepMAC?: string;
  neighbor: 'ok' | 'missing' | 'wrong';
  fdb: 'ok' | 'missing' | 'wrong';
  route: 'ok' | 'missing' | 'wrong';
}

/** What `weftctl check` reports for the node it runs on. */
export interface CheckReport {
  /** This node's lease, as found through the device's local IP or the subnet file. */
  self?: { publicIP: string; subnet: string };
  device: string;
  peers: PeerCheck[];
  findings: Finding[];
  consistent: boolean;
}

/**
 * weftctl's typed model: what `get nodes`, `describe node` and `check` know, independent of how
 * it is printed (src/status/render.ts) or where it is read from (a {@link StatusSource}: etcd in
 * collect.ts; the commands in src/ctl/ only see this interface).
 */

/** One node, as its subnet lease describes it. */
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
  /** The source's name for this node, unique in a listing (the etcd key). */
  key: string;
  /** The source's version of this record (etcd mod revision); a change means the node changed. */
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
  /** Where the nodes were read from, for messages: `/coreos.com/network/subnets/`. */
  location: string;
  /** Sorted by subnet. */
  nodes: NodeLease[];
}

/** A watch event for `get nodes --watch`. */
export interface NodeEvent {
  type: 'ADDED' | 'MODIFIED' | 'DELETED';
  node: NodeLease;
}

/** What a {@link StatusSource} watch reports, in the shape of the subnet manager's lease watch. */
export interface NodeWatchHandler {
  /** Every node; called first and again after each re-list (compaction, reconnect). */
  snapshot(nodes: NodeLease[]): void;
  put(node: NodeLease): void;
  /** The node with this {@link NodeLease.key} is gone. */
  delete(key: string): void;
}

/** The network config as stored, for a guarded rewrite. */
export interface StoredConfig {
  text: string;
  /** Opaque version; a write with `ifVersion` succeeds only while it is still current. */
  version: string;
}

/**
 * Where weftctl reads node and network state (and writes the network config). The commands
 * depend only on this; the etcd implementation is {@link EtcdStatusSource} in collect.ts.
 * Methods throw {@link SourceUnavailableError} when the store cannot be reached and ConfigError
 * for an invalid config.
 */
export interface StatusSource {
  /** Where the network config lives, for messages: `/coreos.com/network/config`. */
  readonly configLocation: string;
  /** The config, defaults filled in; undefined when none is stored. */
  getNetwork(): Promise<NetworkSummary | undefined>;
  listNodes(): Promise<NodeList>;
  /**
   * Reports the node table until `signal` aborts, starting with a snapshot and re-listing (a new
   * snapshot) whenever the change stream cannot continue, so it outlives compactions and
   * reconnects. Resolves when aborted.
   */
  watchNodes(signal: AbortSignal, handler: NodeWatchHandler): Promise<void>;
  /** The stored config text; undefined when none is stored. */
  readNetworkConfig(): Promise<StoredConfig | undefined>;
  /**
   * Stores `text` if the config is still at `ifVersion` (absent: if none is stored); false when
   * it changed in between, so concurrent writers cannot interleave.
   */
  writeNetworkConfig(text: string, opts: { ifVersion?: string }): Promise<boolean>;
  close(): void;
}

/** The store behind a {@link StatusSource} failed; the message names where and what, on one line. */
export class SourceUnavailableError extends Error {
  constructor(message: string, options?: { cause?: unknown }) {
    super(message, options);
    this.name = 'SourceUnavailableError';
  }
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

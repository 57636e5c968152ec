/**
 * weftctl's typed model: what `get nodes`, `describe node` and `check` know, independent of how
 * it is printed (src/status/render.ts) or where it is read from (a {@link StatusSource}: etcd in
 * collect.ts, the Kubernetes API in kube.ts; the commands in src/ctl/ only see this interface).
 */

/**
 * One node, as its subnet lease describes it. In kube mode every Node is listed, also those that
 * are no peer (yet): then `publicIP`, `subnet` and `vtepIP` are what can be read (the public-ip
 * annotation, the podCIDR) or `''`, and {@link KubeNodeInfo.annotations} says why.
 */
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
  /** What the Kubernetes API says about the node (kube mode only). */
  kube?: KubeNodeInfo;
}

/** Whether a Node's annotations make it a peer, and if not why (weftd's own words). */
export interface AnnotationsState {
  /** `ok`: a peer; `missing`: no podCIDR or annotations yet; `malformed`: rejected by weftd. */
  state: 'ok' | 'missing' | 'malformed';
  reason?: string;
}

/** A Node condition, as `get nodes` and `describe node` show it. */
export interface ConditionSummary {
  status: string;
  reason?: string;
  message?: string;
  lastTransitionTime?: string;
}

/** The Node object behind a {@link NodeLease} in kube mode. */
export interface KubeNodeInfo {
  name: string;
  /** `status.addresses` of type InternalIP (the first IPv4 one). */
  internalIP?: string;
  /** `spec.podCIDR` (IPv4 entry of `spec.podCIDRs`), as the API holds it. */
  podCIDR?: string;
  /** The NetworkUnavailable condition; undefined when the Node has none. */
  networkUnavailable?: ConditionSummary;
  /** `metadata.creationTimestamp` (RFC 3339). */
  creationTimestamp?: string;
  /** Seconds since creationTimestamp, when read. */
  ageSeconds?: number;
  annotations: AnnotationsState;
  /** The operator's `public-ip-overwrite` annotation, when set. */
  publicIPOverwrite?: string;
  /** The Node's annotations under weft's prefix, as stored (values cut at 256 characters). */
  weftAnnotations: Record<string, string>;
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
  /** `kube`: Node objects (each node has {@link NodeLease.kube}), sorted by name; else etcd leases. */
  source?: 'etcd' | 'kube';
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

/** What `check` compares a node's kernel state with, as a source provides it. */
export interface CheckBasis {
  config: NetworkSummary;
  /** The leases weftd programs peers from (as weftd itself would judge them), ours among them if we have one. */
  leases: NodeLease[];
  /** Our public IP, to pick our lease among `leases` (else the device's local address). */
  publicIP?: string;
  /** What is wrong with our own record at the source (kube: our Node's podCIDR or annotations). */
  findings: Finding[];
  /** Nodes weftd skips as peers, and why (kube: annotations missing or malformed). */
  skipped: SkippedPeer[];
}

/** A node that is not a peer, so `check` expects no entries for it. */
export interface SkippedPeer {
  node: string;
  why: string;
}

/**
 * Where weftctl reads node and network state (and writes the network config). The commands
 * depend only on this; the etcd implementation is {@link EtcdStatusSource} in collect.ts, the
 * Kubernetes one `KubeStatusSource` in kube.ts.
 * Methods throw {@link SourceUnavailableError} when the store cannot be reached and ConfigError
 * for an invalid config.
 */
export interface StatusSource {
  /** Which store this is (undefined: etcd); `network init` is etcd-only. */
  readonly mode?: 'etcd' | 'kube';
  /** What the state is read from, for messages: `etcd`, `the Kubernetes API`. */
  readonly description?: string;
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
  /**
   * Finds the node `describe node` names; without it the commands search {@link listNodes}.
   * Throws NodeNotFoundError.
   */
  findNode?(query: string): Promise<NodeLease>;
  /**
   * What `check` compares with, when the source knows more than its listing (our own record,
   * skipped peers); without it `check` uses {@link getNetwork} and {@link listNodes}.
   * `localIP`: the device's local address, to find our node when no name is given.
   */
  checkBasis?(opts: { nodeName?: string; localIP?: string }): Promise<CheckBasis>;
  close(): void;
}

/** The store behind a {@link StatusSource} failed; the message names where and what, on one line. */
export class SourceUnavailableError extends Error {
  constructor(message: string, options?: { cause?: unknown }) {
    super(message, options);
    this.name = 'SourceUnavailableError';
  }
}

/** One difference between the source (etcd, the Kubernetes API) and this node's kernel state. */
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

/** A lease weftd's lease gate rejects on this node (src/subnet/validate.ts), so never programs. */
export interface RejectedLeaseCheck {
  subnet: string;
  publicIP: string;
  reason: string;
}

/** What `weftctl check` reports for the node it runs on. */
export interface CheckReport {
  /** This node's lease, as found through the device's local IP or the subnet file. */
  self?: { publicIP: string; subnet: string };
  device: string;
  /** The leases weftd programs as peers here. */
  peers: PeerCheck[];
  /** The leases it ignores as invalid. */
  rejected: RejectedLeaseCheck[];
  /** The iptables FORWARD accept rules for the pod network, when checked. */
  forward?: { state: 'ok' | 'drift' | 'unknown'; detail?: string };
  findings: Finding[];
  consistent: boolean;
  /** What the kernel was compared with (`etcd` when absent). */
  against?: string;
  /** Nodes that are not peers, so no entries are expected for them. */
  skipped?: SkippedPeer[];
}

/**
 * weftctl's view of a cluster in Kubernetes mode: {@link KubeStatusSource} reads Node objects
 * and net-conf.json, the way weftd's kube subnet manager does (src/subnet/kube/), and turns them
 * into the status model.
 *
 * Nothing is judged twice: whether a Node is a peer (podCIDR inside Network, annotations that
 * parse, no overlap with another node) is decided by the subnet manager's peer table
 * ({@link NodeLeaseTable}, on its annotation parser), and the watch is its Node informer
 * ({@link runNodeInformer}). This module only adds what an operator wants to see beside that:
 * the InternalIP, the NetworkUnavailable condition, the age, and why a node is not a peer.
 *
 * Without a readable net-conf.json (weftctl on a workstation), `get nodes` and `describe` still
 * work: annotations are then judged against Network 0.0.0.0/0 and VNI 1 (flannel's default), and
 * the operator is told so. `check` needs the real file.
 */
import type { KubeConfig, V1Node } from '@kubernetes/client-node';
import { systemClock, type Clock } from '../core/clock.ts';
import { UsageError } from '../core/errors.ts';
import { formatCIDR, formatIPv4, isIPv4, type IPv4Net } from '../ip/ipv4.ts';
import { KubeApiError, KubeNodeClient, type NodeClient } from '../kube/client.ts';
import { ConfigError, DEFAULT_VNI, DEFAULT_VXLAN_PORT, type NetworkConfig } from '../subnet/config.ts';
import { annotationNames, nodeToLease, parsePodCIDR, podCIDRText, runNodeInformer, type AnnotationNames, type NodeCondition } from '../subnet/kube/index.ts';
import { loadNetConf } from '../subnet/kube/netconf.ts';
import { NodeLeaseTable } from '../subnet/kube/table.ts';
import type { Lease } from '../subnet/lease.ts';
import { NodeNotFoundError, summarizeConfig } from './collect.ts';
import {
  SourceUnavailableError,
  type AnnotationsState,
  type CheckBasis,
  type ConditionSummary,
  type Finding,
  type NetworkSummary,
  type NodeLease,
  type NodeList,
  type NodeWatchHandler,
  type SkippedPeer,
  type StatusSource,
  type StoredConfig,
} from './model.ts';

/** How messages name this source. */
export const KUBE_DESCRIPTION = 'the Kubernetes API';

/** Longest annotation value shown (Node annotations may total 256 KiB). */
const MAX_SHOWN_VALUE = 256;

/**
 * What annotations are judged against when net-conf.json cannot be read: any podCIDR, flannel's
 * default VNI. Subnet range fields do not matter in kube mode.
 */
export const PERMISSIVE_CONFIG: NetworkConfig = {
  network: { ip: 0, prefixLen: 0 },
  subnetLen: 24,
  subnetMin: 0,
  subnetMax: 0,
  backend: { type: 'vxlan', vni: DEFAULT_VNI, port: DEFAULT_VXLAN_PORT },
};

/** What the peer table made of a Node (see {@link NodeLeaseTable.nodeState}). */
export interface NodeJudgement {
  state: 'lease' | 'pending' | 'invalid' | 'conflict';
  lease?: Lease;
  why?: string;
}

function time(t: Date | string | undefined): string | undefined {
  if (t === undefined || t === null) return undefined;
  if (t instanceof Date) return Number.isNaN(t.getTime()) ? undefined : t.toISOString().replace(/\.\d{3}Z$/, 'Z');
  return typeof t === 'string' ? t.slice(0, 64) : undefined;
}

function cut(s: string): string {
  return s.length > MAX_SHOWN_VALUE ? `${s.slice(0, MAX_SHOWN_VALUE)}...` : s;
}

function backendField(data: unknown, name: string): unknown {
  return typeof data === 'object' && data !== null ? (data as Record<string, unknown>)[name] : undefined;
}

/** The annotations column: a peer, not (yet) one, or rejected, with weftd's reason. */
export function annotationsState(j: NodeJudgement): AnnotationsState {
  if (j.state === 'lease') return { state: 'ok' };
  return { state: j.state === 'pending' ? 'missing' : 'malformed', reason: j.why };
}

/**
 * One Node as weftctl shows it. `judged` is the peer table's verdict on it; `now` (epoch ms)
 * dates its age. Values read from the Node are bounded; the lease fields come from the verdict
 * when the node is a peer, else from what can be read (the public-ip annotation when it is an
 * address, the podCIDR).
 */
export function nodeStatus(node: V1Node, opts: { names: AnnotationNames; judged: NodeJudgement; now: number }): NodeLease {
  const { names, judged } = opts;
  const meta = node.metadata ?? {};
  const name = meta.name ?? '';
  const ann = meta.annotations ?? {};
  const prefix = names.backendType.slice(0, names.backendType.indexOf('/') + 1);
  const weftAnnotations: Record<string, string> = {};
  for (const [k, v] of Object.entries(ann)) if (k.startsWith(prefix) && typeof v === 'string') weftAnnotations[k] = cut(v);
  const internal = (node.status?.addresses ?? []).find((a) => a?.type === 'InternalIP' && typeof a.address === 'string' && isIPv4(a.address));
  const cond = (node.status?.conditions as NodeCondition[] | undefined)?.find((c) => c?.type === 'NetworkUnavailable');
  const networkUnavailable: ConditionSummary | undefined = cond && {
    status: String(cond.status).slice(0, 16),
    reason: typeof cond.reason === 'string' ? cond.reason.slice(0, 128) : undefined,
    message: typeof cond.message === 'string' ? cut(cond.message) : undefined,
    lastTransitionTime: time(cond.lastTransitionTime),
  };
  const created = time(meta.creationTimestamp as Date | string | undefined);
  const createdMs = created ? Date.parse(created) : NaN;
  const podCIDR = podCIDRText(node);
  const overwrite = ann[names.publicIPOverwrite];
  const lease = judged.lease;
  const annotatedIP = ann[names.publicIP];
  let subnet = '';
  let vtepIP = '';
  if (lease) {
    subnet = formatCIDR(lease.subnet);
    vtepIP = formatIPv4(lease.subnet.ip);
  } else if (podCIDR) {
    subnet = cut(podCIDR);
  }
  const mac = backendField(lease?.backendData, 'VtepMAC');
  const vni = backendField(lease?.backendData, 'VNI');
  return {
    publicIP: lease?.publicIP ?? (typeof annotatedIP === 'string' && isIPv4(annotatedIP) ? annotatedIP : ''),
    subnet,
    vtepIP,
    backendType: lease?.backendType ?? (typeof ann[names.backendType] === 'string' ? ann[names.backendType]!.slice(0, 40) : ''),
    vtepMAC: typeof mac === 'string' ? mac : undefined,
    vni: typeof vni === 'number' ? vni : undefined,
    etcdLeaseId: '0',
    key: name,
    modRevision: meta.resourceVersion ?? '0',
    backendData: lease?.backendData,
    kube: {
      name,
      internalIP: internal?.address,
      podCIDR: podCIDR === undefined ? undefined : cut(podCIDR),
      networkUnavailable,
      creationTimestamp: created,
      ageSeconds: Number.isFinite(createdMs) ? Math.max(0, Math.floor((opts.now - createdMs) / 1000)) : undefined,
      annotations: annotationsState(judged),
      publicIPOverwrite: typeof overwrite === 'string' && overwrite !== '' ? cut(overwrite) : undefined,
      weftAnnotations,
    },
  };
}

/** Nodes ordered by name, as kubectl lists them. */
export function sortByName(nodes: NodeLease[]): NodeLease[] {
  return nodes.sort((a, b) => (a.key < b.key ? -1 : a.key > b.key ? 1 : 0));
}

/**
 * Every Node of a listing or a watch, judged by one peer table as weftd (on no particular node)
 * would judge them. Nodes are keyed by name.
 */
export class KubeNodeView {
  readonly #names: AnnotationNames;
  readonly #now: () => number;
  readonly #table: NodeLeaseTable;
  readonly #nodes = new Map<string, V1Node>();
  /** Last verdict per node, to find the nodes another node's change re-judged (podCIDR conflicts). */
  readonly #verdicts = new Map<string, string>();

  constructor(opts: { names: AnnotationNames; config: NetworkConfig; now: () => number }) {
    this.#names = opts.names;
    this.#now = opts.now;
    // No node is ours: every Node is judged as a peer.
    this.#table = new NodeLeaseTable({ names: opts.names, config: opts.config, ownName: '' });
  }

  #judged(name: string): NodeJudgement {
    return this.#table.nodeState(name) ?? { state: 'pending', why: 'no name' };
  }

  #status(node: V1Node): NodeLease {
    return nodeStatus(node, { names: this.#names, judged: this.#judged(node.metadata?.name ?? ''), now: this.#now() });
  }

  /** Nodes (other than `except`) whose verdict changed since it was last recorded. */
  #rejudged(except?: string): NodeLease[] {
    const out: NodeLease[] = [];
    for (const [name, node] of this.#nodes) {
      const j = this.#judged(name);
      const v = `${j.state}:${j.why ?? ''}`;
      if (this.#verdicts.get(name) === v) continue;
      this.#verdicts.set(name, v);
      if (name !== except) out.push(this.#status(node));
    }
    return out;
  }

  /** A full listing; returns every node, sorted by name. */
  replace(nodes: V1Node[]): NodeLease[] {
    const named = nodes.filter((n) => n?.metadata?.name);
    this.#nodes.clear();
    for (const n of named) this.#nodes.set(n.metadata!.name!, n);
    for (const name of [...this.#verdicts.keys()]) if (!this.#nodes.has(name)) this.#verdicts.delete(name);
    this.#table.replace(named);
    this.#rejudged();
    return sortByName(named.map((n) => this.#status(n)));
  }

  /** A Node added or changed: it, then any node its change re-judged. */
  upsert(node: V1Node): NodeLease[] {
    const name = node.metadata?.name;
    if (!name) return [];
    this.#nodes.set(name, node);
    this.#table.upsert(node);
    return [this.#status(node), ...this.#rejudged(name)];
  }

  /** A Node deleted: the nodes its departure re-judged (its own delete is the caller's). */
  remove(name: string): NodeLease[] {
    this.#nodes.delete(name);
    this.#verdicts.delete(name);
    this.#table.remove(name);
    return this.#rejudged();
  }
}

/** A node named `query` (or with that InternalIP, public IP, podCIDR or VTEP IP) in `list`. */
export function findKubeNode(list: NodeList, query: string): NodeLease {
  const q = query.trim();
  const byName = list.nodes.find((n) => n.key === q);
  if (byName) return byName;
  const hits = list.nodes.filter((n) => q !== '' && (n.publicIP === q || n.subnet === q || n.vtepIP === q || n.kube?.internalIP === q || n.kube?.podCIDR === q));
  if (hits.length === 1) return hits[0]!;
  if (hits.length > 1) throw new NodeNotFoundError(`"${q}" matches ${hits.length} nodes (${hits.map((n) => n.key).join(', ')}): name the node`);
  throw new NodeNotFoundError(`no node named "${q}" (nor with that IP or podCIDR) in ${list.location}`);
}

/** The IPv4 InternalIP of a Node, if any. */
function internalIPOf(node: V1Node): string | undefined {
  return (node.status?.addresses ?? []).find((a) => a?.type === 'InternalIP' && typeof a.address === 'string' && isIPv4(a.address))?.address;
}

/**
 * What `check` on node `nodeName` compares with: its own record and the peers weftd there would
 * program, judged by the subnet manager's peer table with our podCIDR as our subnet. Without a
 * name, our node is the one whose public IP (annotation or overwrite) or InternalIP is
 * `localIP` (the device's local address).
 */
export function kubeCheckBasis(nodes: V1Node[], opts: { names: AnnotationNames; config: NetworkConfig; nodeName?: string; localIP?: string; now: number }): CheckBasis {
  const { names, config, now } = opts;
  const findings: Finding[] = [];
  const skipped: SkippedPeer[] = [];
  const named = nodes.filter((n) => n?.metadata?.name);
  let own: V1Node | undefined;
  if (opts.nodeName) {
    own = named.find((n) => n.metadata!.name === opts.nodeName);
    if (!own) findings.push({ kind: 'missing', object: 'node', detail: `no Node "${opts.nodeName}" in ${KUBE_DESCRIPTION} (--node-name / NODE_NAME)` });
  } else if (opts.localIP) {
    const ip = opts.localIP;
    const ann = (n: V1Node, k: string) => n.metadata?.annotations?.[k];
    own = named.find((n) => ann(n, names.publicIPOverwrite) === ip || ann(n, names.publicIP) === ip) ?? named.find((n) => internalIPOf(n) === ip);
  }
  const ownName = own?.metadata?.name ?? '';

  let ownSubnet: IPv4Net | undefined;
  const leases: NodeLease[] = [];
  let publicIP: string | undefined;
  if (own) {
    const cidr = podCIDRText(own);
    if (!cidr) {
      findings.push({ kind: 'missing', object: 'podCIDR', detail: `node "${ownName}" has no spec.podCIDR (kube-controller-manager --allocate-node-cidrs?)` });
    } else {
      try {
        ownSubnet = parsePodCIDR(cidr, config.network);
      } catch (err) {
        findings.push({ kind: 'wrong', object: 'podCIDR', detail: `node "${ownName}": ${(err as Error).message}` });
      }
    }
    const res = nodeToLease(own, { names, config });
    if (res.kind !== 'lease') {
      const what = res.kind === 'pending' ? `${res.why} (is weftd running on it?)` : res.why;
      if (cidr) findings.push({ kind: res.kind === 'pending' ? 'missing' : 'wrong', object: 'annotations', detail: `node "${ownName}": ${what}` });
    }
    if (ownSubnet) {
      // Our lease is our podCIDR whatever the annotations say; the subnet file and the device
      // address are judged against it, the device's MAC against a valid annotation only.
      const judged: NodeJudgement = res.kind === 'lease' ? { state: 'lease', lease: res.lease } : { state: res.kind, why: res.why };
      const self = nodeStatus(own, { names, judged, now });
      if (!judged.lease) {
        self.subnet = formatCIDR(ownSubnet);
        self.vtepIP = formatIPv4(ownSubnet.ip);
        self.publicIP ||= internalIPOf(own) ?? '';
      }
      // With a public-ip-overwrite peers send to that address (NAT in front of us), while weftd
      // binds flannel.N to the interface's own: judge the device by the address it has.
      if (self.kube?.publicIPOverwrite && opts.localIP) self.publicIP = opts.localIP;
      leases.push(self);
      publicIP = self.publicIP || undefined;
    }
  }

  const table = new NodeLeaseTable({ names, config, ownName, ownSubnet });
  table.replace(named);
  for (const n of named) {
    const name = n.metadata!.name!;
    if (name === ownName) continue;
    const judged = table.nodeState(name);
    if (!judged) continue;
    if (judged.lease) leases.push(nodeStatus(n, { names, judged, now }));
    else skipped.push({ node: name, why: `${annotationsState(judged).state}: ${judged.why ?? 'unknown'}` });
  }
  return { config: summarizeConfig(config), leases, publicIP, findings, skipped };
}

export interface KubeStatusSourceOptions {
  kc: KubeConfig;
  /** The API server's URL, for messages. */
  server: string;
  /** net-conf.json. */
  netConfPath: string;
  /** --kube-annotation-prefix. */
  annotationPrefix?: string;
  /** Defaults to {@link KubeNodeClient} on `kc`. */
  client?: NodeClient;
  /** Deadline of each API call (ms). */
  timeoutMs?: number;
  clock?: Clock;
  /** What an operator should see beside the output (a watch restarting, a missing net-conf.json). */
  note?: (msg: string) => void;
}

/** {@link StatusSource} on the Kubernetes API (flannel's kube subnet manager's annotations). */
export class KubeStatusSource implements StatusSource {
  readonly mode = 'kube';
  readonly description = KUBE_DESCRIPTION;
  readonly configLocation: string;
  readonly #opts: KubeStatusSourceOptions;
  readonly #names: AnnotationNames;
  readonly #client: NodeClient;
  readonly #clock: Clock;
  readonly #closed = new AbortController();
  #noted = false;

  /** Nothing is dialled until the first call. */
  constructor(opts: KubeStatusSourceOptions) {
    this.#opts = opts;
    this.#names = annotationNames(opts.annotationPrefix);
    this.#client = opts.client ?? new KubeNodeClient(opts.kc, { timeoutMs: opts.timeoutMs });
    this.#clock = opts.clock ?? systemClock;
    this.configLocation = opts.netConfPath;
  }

  get #location(): string {
    return `the Nodes of ${this.#opts.server}`;
  }

  /** Runs an API call; its failure becomes one {@link SourceUnavailableError} line naming the server. */
  async #call<T>(fn: () => Promise<T>): Promise<T> {
    try {
      return await fn();
    } catch (cause) {
      if (!(cause instanceof KubeApiError)) throw cause;
      const what = cause.message.replace(/^kube API /, '');
      const msg = cause.status === 0 ? `cannot reach ${KUBE_DESCRIPTION} at ${this.#opts.server}: ${what}` : `${KUBE_DESCRIPTION} at ${this.#opts.server}: ${what}`;
      throw new SourceUnavailableError(msg, { cause });
    }
  }

  /** net-conf.json; throws ConfigError naming the file. */
  #config(): NetworkConfig {
    try {
      return loadNetConf(this.#opts.netConfPath);
    } catch (err) {
      if (err instanceof ConfigError) {
        throw new ConfigError(`${err.message}; in Kubernetes mode the network config is net-conf.json (pass --net-config-path)`, { cause: err });
      }
      throw err;
    }
  }

  /** net-conf.json, or the permissive stand-in (said once on the side) when it cannot be read. */
  #judgingConfig(): NetworkConfig {
    try {
      return this.#config();
    } catch (err) {
      if (!(err instanceof ConfigError)) throw err;
      if (!this.#noted) {
        this.#noted = true;
        this.#opts.note?.(`${(err.cause as Error | undefined)?.message ?? err.message}: annotations are judged against any Network and VNI ${DEFAULT_VNI}`);
      }
      return PERMISSIVE_CONFIG;
    }
  }

  async getNetwork(): Promise<NetworkSummary> {
    return summarizeConfig(this.#config());
  }

  async listNodes(): Promise<NodeList> {
    const list = await this.#call(() => this.#client.list());
    const view = new KubeNodeView({ names: this.#names, config: this.#judgingConfig(), now: () => this.#clock.now() });
    return { location: this.#location, source: 'kube', nodes: view.replace(list.items ?? []) };
  }

  async findNode(query: string): Promise<NodeLease> {
    return findKubeNode(await this.listNodes(), query);
  }

  async watchNodes(signal: AbortSignal, handler: NodeWatchHandler): Promise<void> {
    const view = new KubeNodeView({ names: this.#names, config: this.#judgingConfig(), now: () => this.#clock.now() });
    const note = (msg: string) => this.#opts.note?.(msg);
    let lists = 0;
    await runNodeInformer(this.#opts.kc, {
      list: () => this.#client.list(),
      currentVersion: async () => (await this.#client.list({ limit: 1 })).metadata?.resourceVersion,
      signal: AbortSignal.any([signal, this.#closed.signal]),
      clock: this.#clock,
      log: { error: note, warn: note, info: note, debug: () => undefined },
      onList: (list) => {
        if (lists++ > 0) note(`node watch: re-listed ${list.items.length} node(s)`);
        handler.snapshot(view.replace(list.items ?? []));
      },
      onUpsert: (n) => {
        for (const s of view.upsert(n)) handler.put(s);
      },
      onDelete: (n) => {
        const name = n.metadata?.name;
        if (!name) return;
        const others = view.remove(name);
        handler.delete(name);
        for (const s of others) handler.put(s);
      },
    });
  }

  async checkBasis(opts: { nodeName?: string; localIP?: string }): Promise<CheckBasis> {
    const config = this.#config();
    const list = await this.#call(() => this.#client.list());
    return kubeCheckBasis(list.items ?? [], { names: this.#names, config, nodeName: opts.nodeName, localIP: opts.localIP, now: this.#clock.now() });
  }

  async readNetworkConfig(): Promise<StoredConfig | undefined> {
    throw etcdOnly('network init');
  }

  async writeNetworkConfig(): Promise<boolean> {
    throw etcdOnly('network init');
  }

  close(): void {
    this.#closed.abort();
  }
}

/** The error for a command that only exists in etcd mode. */
export function etcdOnly(command: string): UsageError {
  return new UsageError(
    `${command} is for etcd mode only: in Kubernetes mode the network config is net-conf.json (a ConfigMap the DaemonSet mounts; ` +
      'edit that and restart weftd) and node subnets are spec.podCIDR (kube-controller-manager --allocate-node-cidrs --cluster-cidr)',
  );
}

/**
 * Reads weft's state into the status model. {@link EtcdStatusSource} is weftctl's one piece of
 * etcd code: nodes are listed and watched through the subnet layer's {@link SubnetManager}
 * (its key layout, lease parser and a watch that re-lists after compaction or a reconnect);
 * only what that interface lacks is read here from the manager's client: etcd lease TTLs, the
 * stored config text with its revision, and the config write guarded by that revision.
 */
import { formatCIDR, formatIPv4 } from '../ip/ipv4.ts';
import { ConfigError, type NetworkConfig } from '../subnet/config.ts';
import { EtcdUnavailableError, type EtcdSubnetManager } from '../subnet/etcd.ts';
import { subnetKey, subnetsPrefix, type Lease } from '../subnet/lease.ts';
import { SourceUnavailableError, type NetworkSummary, type NodeLease, type NodeList, type NodeWatchHandler, type StatusSource, type StoredConfig } from './model.ts';

/** A node named on the command line is not in the listing (or the name is ambiguous). */
export class NodeNotFoundError extends Error {
  constructor(message: string) {
    super(message);
    this.name = 'NodeNotFoundError';
  }
}

/** The config in the form weftctl prints. */
export function summarizeConfig(c: NetworkConfig): NetworkSummary {
  return {
    network: formatCIDR(c.network),
    subnetLen: c.subnetLen,
    subnetMin: formatIPv4(c.subnetMin),
    subnetMax: formatIPv4(c.subnetMax),
    backend: { type: c.backend.type, vni: c.backend.vni, port: c.backend.port },
  };
}

function backendField(data: unknown, name: string): unknown {
  return typeof data === 'object' && data !== null ? (data as Record<string, unknown>)[name] : undefined;
}

/** An etcd lease's time to live, as etcd reports it (seconds; TTL -1 once expired). */
export interface LeaseTTL {
  TTL: number;
  grantedTTL: number;
}

/** Builds a {@link NodeLease} from a lease of the subnet layer stored at `key`. */
export function nodeFromLease(lease: Lease, opts: { key: string; ttl?: LeaseTTL }): NodeLease {
  const mac = backendField(lease.backendData, 'VtepMAC');
  const vni = backendField(lease.backendData, 'VNI');
  const node: NodeLease = {
    publicIP: lease.publicIP,
    subnet: formatCIDR(lease.subnet),
    vtepIP: formatIPv4(lease.subnet.ip),
    backendType: lease.backendType,
    vtepMAC: typeof mac === 'string' ? mac.toLowerCase() : undefined,
    vni: typeof vni === 'number' ? vni : undefined,
    etcdLeaseId: lease.etcdLeaseId ?? '0',
    key: opts.key,
    modRevision: lease.modRevision ?? '0',
    backendData: lease.backendData,
  };
  const ttl = opts.ttl;
  if (ttl && ttl.TTL >= 0) {
    node.expiresInSeconds = ttl.TTL;
    node.grantedTTLSeconds = ttl.grantedTTL;
    node.leaseAgeSeconds = Math.max(0, ttl.grantedTTL - ttl.TTL);
  }
  return node;
}

/** Nodes ordered by subnet address. */
export function sortNodes(nodes: NodeLease[]): NodeLease[] {
  const n = (s: string) => s.split(/[./]/).reduce((acc, x) => acc * 256 + Number(x), 0);
  return nodes.sort((a, b) => n(a.subnet) - n(b.subnet));
}

/** Finds one node by public IP, subnet CIDR or subnet address. */
export function findNode(list: NodeList, query: string): NodeLease {
  const q = query.trim();
  const hits = list.nodes.filter((n) => n.publicIP === q || n.subnet === q || n.vtepIP === q || n.key.endsWith(`/${q}`));
  if (hits.length === 1) return hits[0]!;
  if (hits.length > 1) {
    throw new NodeNotFoundError(`"${q}" matches ${hits.length} leases (${hits.map((n) => n.subnet).join(', ')}): name the subnet`);
  }
  throw new NodeNotFoundError(`no node with public IP or subnet "${q}" under "${list.location}"`);
}

/** gRPC's UNAVAILABLE text on one line, without its trailers, doubled "Error:" and OpenSSL codes. */
export function tidyGrpc(msg: string): string {
  return msg
    .replace(/\s*\(\d{4}-\d\d-\d\dT[\d:.]+Z\)/g, '')
    .replace(/\.? Resolution note:\s*$/, '')
    .replace(/Last error: Error: /, 'last error: ')
    .replace(/Last error: /, 'last error: ')
    .replace(/ - Local \([^)]*\)/, '')
    .replace(/[0-9A-F]+:error:[0-9A-F]+:SSL routines:[^:]*:([^:]+):\S+?:\d+:?(SSL alert number \d+)?/, 'TLS: $1')
    .replace(/\s*\n\s*/g, ' ')
    .trim();
}

/** {@link StatusSource} on etcd (flannel's schema), over an {@link EtcdSubnetManager}. */
export class EtcdStatusSource implements StatusSource {
  readonly configLocation: string;
  readonly #mgr: EtcdSubnetManager;
  readonly #endpoints: string[];

  /** `endpoints` only names etcd in error messages; `mgr` is closed by {@link close}. */
  constructor(mgr: EtcdSubnetManager, opts: { endpoints: string[] }) {
    this.#mgr = mgr;
    this.#endpoints = opts.endpoints;
    this.configLocation = `${mgr.prefix}/config`;
  }

  /** Runs `fn`; etcd failures become one {@link SourceUnavailableError} line naming the endpoints. */
  async #call<T>(op: string, fn: () => Promise<T>): Promise<T> {
    try {
      return await fn();
    } catch (cause) {
      if (cause instanceof ConfigError) throw cause;
      const err = cause instanceof EtcdUnavailableError ? cause : new EtcdUnavailableError(op, { cause });
      throw new SourceUnavailableError(`cannot reach etcd at ${this.#endpoints.join(', ')}: ${tidyGrpc(err.message.replace(/^etcd /, ''))}`, { cause });
    }
  }

  async #ttl(id: string | undefined): Promise<LeaseTTL | undefined> {
    if (!id || id === '0') return undefined;
    const res = await this.#call(`time-to-live of etcd lease ${id}`, () => this.#mgr.client.leaseClient.leaseTimeToLive({ ID: id }));
    return { TTL: Number(res.TTL), grantedTTL: Number(res.grantedTTL) };
  }

  async #node(lease: Lease): Promise<NodeLease> {
    return nodeFromLease(lease, { key: subnetKey(this.#mgr.prefix, lease.subnet), ttl: await this.#ttl(lease.etcdLeaseId) });
  }

  async getNetwork(): Promise<NetworkSummary | undefined> {
    if (!(await this.readNetworkConfig())) return undefined;
    return summarizeConfig(await this.#call('get network config', () => this.#mgr.getConfig()));
  }

  async listNodes(): Promise<NodeList> {
    const { leases } = await this.#call('list leases', () => this.#mgr.listLeases());
    const nodes = await Promise.all(leases.map((l) => this.#node(l)));
    return { location: subnetsPrefix(this.#mgr.prefix), nodes: sortNodes(nodes) };
  }

  async watchNodes(signal: AbortSignal, handler: NodeWatchHandler): Promise<void> {
    // The manager calls back synchronously; TTL look-ups are async, so events queue up in order.
    // A TTL that cannot be read (etcd gone again) leaves the node without one.
    let queue = Promise.resolve();
    const enqueue = (fn: () => Promise<void> | void) => {
      queue = queue.then(fn).catch(() => undefined);
    };
    const node = (l: Lease) => this.#node(l).catch(() => nodeFromLease(l, { key: subnetKey(this.#mgr.prefix, l.subnet) }));
    await this.#mgr.watchLeases(signal, {
      snapshot: (leases) => enqueue(async () => handler.snapshot(sortNodes(await Promise.all(leases.map(node))))),
      event: (ev) =>
        enqueue(async () => {
          if (ev.type === 'put') handler.put(await node(ev.lease));
          else handler.delete(subnetKey(this.#mgr.prefix, ev.subnet));
        }),
    });
    // Aborted: what is still queued has nowhere to go.
  }

  async readNetworkConfig(): Promise<StoredConfig | undefined> {
    const res = await this.#call(`get "${this.configLocation}"`, () => this.#mgr.client.get(this.configLocation).exec());
    const kv = res.kvs[0];
    return kv ? { text: kv.value.toString(), version: kv.mod_revision } : undefined;
  }

  async writeNetworkConfig(text: string, opts: { ifVersion?: string }): Promise<boolean> {
    const key = this.configLocation;
    const client = this.#mgr.client;
    const cmp = opts.ifVersion !== undefined ? client.if(key, 'Mod', '==', opts.ifVersion) : client.if(key, 'Version', '==', 0);
    const res = await this.#call(`write "${key}"`, () => cmp.then(client.put(key).value(text)).commit());
    return res.succeeded;
  }

  close(): void {
    this.#mgr.close();
  }
}

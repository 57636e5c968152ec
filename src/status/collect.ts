/**
 * Reads weft's state from etcd into the status model, through the subnet layer's
 * {@link EtcdSubnetManager} (its client, key layout and lease parser): weftctl has no etcd code
 * of its own beyond what a status view needs on top (etcd lease TTLs, revisions, the config
 * write guarded by a transaction).
 */
import type { IKeyValue } from 'etcd3';
import { formatCIDR, formatIPv4 } from '../ip/ipv4.ts';
import { ConfigError, parseNetworkConfig, type NetworkConfig } from '../subnet/config.ts';
import { EtcdUnavailableError, leaseFromKv, type EtcdSubnetManager } from '../subnet/etcd.ts';
import { subnetsPrefix } from '../subnet/lease.ts';
import type { NetworkSummary, NodeEvent, NodeLease, NodeList } from './model.ts';

/** A node named on the command line is not in etcd (or the name is ambiguous). */
export class NodeNotFoundError extends Error {
  constructor(message: string) {
    super(message);
    this.name = 'NodeNotFoundError';
  }
}

/** `network init` would change a network nodes are using; the message says why. */
export class NetworkInUseError extends Error {
  constructor(message: string) {
    super(message);
    this.name = 'NetworkInUseError';
  }
}

async function call<T>(op: string, fn: () => Promise<T>): Promise<T> {
  try {
    return await fn();
  } catch (cause) {
    if (cause instanceof EtcdUnavailableError || cause instanceof ConfigError) throw cause;
    throw new EtcdUnavailableError(op, { cause });
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

/** Builds a {@link NodeLease} from a lease key/value; undefined for keys that are not leases. */
export function nodeFromKv(
  kv: Pick<IKeyValue, 'key' | 'value' | 'mod_revision' | 'create_revision' | 'lease'>,
  ttl?: { TTL: number; grantedTTL: number },
): NodeLease | undefined {
  const lease = leaseFromKv(kv);
  if ('skip' in lease) return undefined;
  const mac = backendField(lease.backendData, 'VtepMAC');
  const vni = backendField(lease.backendData, 'VNI');
  const node: NodeLease = {
    publicIP: lease.publicIP,
    subnet: formatCIDR(lease.subnet),
    vtepIP: formatIPv4(lease.subnet.ip),
    backendType: lease.backendType,
    vtepMAC: typeof mac === 'string' ? mac.toLowerCase() : undefined,
    vni: typeof vni === 'number' ? vni : undefined,
    etcdLeaseId: String(kv.lease ?? '0'),
    key: kv.key.toString(),
    createRevision: String(kv.create_revision),
    modRevision: String(kv.mod_revision),
    backendData: lease.backendData,
  };
  if (ttl && ttl.TTL >= 0) {
    node.expiresInSeconds = ttl.TTL;
    node.grantedTTLSeconds = ttl.grantedTTL;
    node.leaseAgeSeconds = Math.max(0, ttl.grantedTTL - ttl.TTL);
  }
  return node;
}

async function leaseTTL(mgr: EtcdSubnetManager, id: string): Promise<{ TTL: number; grantedTTL: number } | undefined> {
  if (id === '0') return undefined;
  const res = await call(`time-to-live of etcd lease ${id}`, () => mgr.client.leaseClient.leaseTimeToLive({ ID: id }));
  return { TTL: Number(res.TTL), grantedTTL: Number(res.grantedTTL) };
}

async function toNode(mgr: EtcdSubnetManager, kv: IKeyValue): Promise<NodeLease | undefined> {
  return nodeFromKv(kv, await leaseTTL(mgr, String(kv.lease)));
}

function byAddress(a: NodeLease, b: NodeLease): number {
  const n = (s: string) => s.split(/[./]/).reduce((acc, x) => acc * 256 + Number(x), 0);
  return n(a.subnet) - n(b.subnet);
}

/** Every lease under the prefix, with TTLs, sorted by subnet. */
export async function collectNodes(mgr: EtcdSubnetManager): Promise<NodeList> {
  const res = await call('list leases', () => mgr.client.getAll().prefix(subnetsPrefix(mgr.prefix)).exec());
  const nodes = (await Promise.all(res.kvs.map((kv) => toNode(mgr, kv)))).filter((n): n is NodeLease => !!n);
  return { prefix: mgr.prefix, revision: res.header.revision, nodes: nodes.sort(byAddress) };
}

/** The config at `<prefix>/config`; undefined when none is stored. Throws ConfigError when invalid. */
export async function collectConfig(mgr: EtcdSubnetManager): Promise<NetworkSummary | undefined> {
  const text = await call('get network config', () => mgr.client.get(`${mgr.prefix}/config`).string());
  if (text === null) return undefined;
  return summarizeConfig(await mgr.getConfig());
}

/** Finds one node by public IP, subnet CIDR or subnet address. */
export function findNode(list: NodeList, query: string): NodeLease {
  const q = query.trim();
  const hits = list.nodes.filter((n) => n.publicIP === q || n.subnet === q || n.vtepIP === q || n.key.endsWith(`/${q}`));
  if (hits.length === 1) return hits[0]!;
  if (hits.length > 1) {
    throw new NodeNotFoundError(`"${q}" matches ${hits.length} leases (${hits.map((n) => n.subnet).join(', ')}): name the subnet`);
  }
  throw new NodeNotFoundError(`no node with public IP or subnet "${q}" under "${list.prefix}/subnets/"`);
}

/**
 * Streams lease changes made after `list` was read as {@link NodeEvent}s until `signal` aborts.
 * Resolves when aborted; rejects when the watch fails (etcd gone, history compacted).
 */
export async function watchNodes(
  mgr: EtcdSubnetManager,
  list: NodeList,
  signal: AbortSignal,
  onEvent: (ev: NodeEvent) => void,
): Promise<void> {
  // Deletes carry no value: report the node as last seen.
  const known = new Map<string, NodeLease>(list.nodes.map((n) => [n.key, n]));
  const watcher = await call('watch leases', () =>
    mgr.client.watch().prefix(subnetsPrefix(mgr.prefix)).startRevision((BigInt(list.revision) + 1n).toString()).create(),
  );
  await new Promise<void>((resolve, reject) => {
    const stop = (err?: Error) => {
      watcher.removeAllListeners();
      watcher.on('error', () => undefined);
      watcher.cancel().catch(() => undefined);
      if (err) reject(err);
      else resolve();
    };
    signal.addEventListener('abort', () => stop(), { once: true });
    let queue = Promise.resolve();
    watcher.on('put', (kv) => {
      queue = queue.then(async () => {
        const node = await toNode(mgr, kv).catch(() => nodeFromKv(kv));
        if (!node) return;
        onEvent({ type: known.has(node.key) ? 'MODIFIED' : 'ADDED', node });
        known.set(node.key, node);
      });
    });
    watcher.on('delete', (kv) => {
      queue = queue.then(() => {
        const key = kv.key.toString();
        const node = known.get(key);
        known.delete(key);
        if (node) onEvent({ type: 'DELETED', node: { ...node, expiresInSeconds: undefined, leaseAgeSeconds: undefined } });
      });
    });
    watcher.on('error', (err) => stop(new EtcdUnavailableError('watch leases', { cause: err })));
  });
}

/** The JSON weftctl stores for `network init` flags (flannel's field names). */
export function networkConfigText(opts: { network: string; subnetLen?: number; vni?: number; port?: number }): string {
  const backend: Record<string, unknown> = { Type: 'vxlan' };
  if (opts.vni !== undefined) backend.VNI = opts.vni;
  if (opts.port !== undefined) backend.Port = opts.port;
  const cfg: Record<string, unknown> = { Network: opts.network };
  if (opts.subnetLen !== undefined) cfg.SubnetLen = opts.subnetLen;
  cfg.Backend = backend;
  return JSON.stringify(cfg);
}

/** What `network init` did. */
export type InitResult = { action: 'created' | 'updated' | 'unchanged'; config: NetworkSummary; leases: number };

/**
 * Writes the network config. Validates it first (ConfigError). If a config is stored already and
 * differs in Network or SubnetLen while leases exist, refuses with {@link NetworkInUseError}
 * unless `force`: those leases (and every pod address in them) would lie outside the new layout.
 * The write is a transaction on the key's revision, so two concurrent inits cannot interleave.
 */
export async function initNetwork(mgr: EtcdSubnetManager, text: string, opts: { force?: boolean } = {}): Promise<InitResult> {
  const next = parseNetworkConfig(text);
  const stored = JSON.stringify(JSON.parse(text));
  const key = `${mgr.prefix}/config`;
  for (let attempt = 0; attempt < 5; attempt++) {
    const cur = await call(`get "${key}"`, () => mgr.client.get(key).exec());
    const kv = cur.kvs[0];
    let action: InitResult['action'] = 'created';
    const { nodes } = await collectNodes(mgr);
    if (kv) {
      const oldText = kv.value.toString();
      if (oldText === stored) return { action: 'unchanged', config: summarizeConfig(next), leases: nodes.length };
      action = 'updated';
      let old: NetworkConfig | undefined;
      try {
        old = parseNetworkConfig(oldText);
      } catch {
        old = undefined; // an invalid stored config may always be replaced
      }
      const layoutChanged = !old || old.network.ip !== next.network.ip || old.network.prefixLen !== next.network.prefixLen || old.subnetLen !== next.subnetLen;
      if (old && layoutChanged && nodes.length > 0 && !opts.force) {
        const was = `${formatCIDR(old.network)} (subnets /${old.subnetLen})`;
        const now = `${formatCIDR(next.network)} (subnets /${next.subnetLen})`;
        throw new NetworkInUseError(
          `refusing to change the network from ${was} to ${now}: ${nodes.length} node lease(s) exist ` +
            `(${nodes.slice(0, 5).map((n) => `${n.publicIP} ${n.subnet}`).join(', ')}${nodes.length > 5 ? ', ...' : ''}) ` +
            'and their pods would be outside the new network; drain the nodes and stop weftd first, or pass --force',
        );
      }
    }
    const cmp = kv ? mgr.client.if(key, 'Mod', '==', kv.mod_revision) : mgr.client.if(key, 'Version', '==', 0);
    const res = await call(`write "${key}"`, () => cmp.then(mgr.client.put(key).value(stored)).commit());
    if (res.succeeded) return { action, config: summarizeConfig(next), leases: nodes.length };
  }
  throw new EtcdUnavailableError(`write "${key}": it kept changing under us`);
}

/**
 * Multi-node clusters for privileged tests: lab/topology.ts (underlay bridge, etcd in a
 * control-plane namespace, one weftd per node namespace, pods via the real dist/bin/weft) plus
 * readers for the kernel state tests assert on. Everything is removed by `cluster.destroy()`
 * (register it with t.teardown / test.after.always), also on failure.
 */
import { mkdtempSync, readFileSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { destroyTopologySync, Topology, type LabPod, type TopologyOptions } from '../../lab/topology.ts';
import { inNs, ipJson, sh } from './netns.ts';
import { formatCIDR, networkOf, parseCIDR } from '../../src/ip/ipv4.ts';

export interface ClusterOptions extends Partial<TopologyOptions> {
  nodes?: number;
  podsPerNode?: number;
  /** Start weftd on each node (default true). */
  start?: boolean;
}

/** What one node's flannel.1 carries, as `ip -j` reports it. */
export interface OverlayState {
  mac: string | undefined;
  routes: Array<{ dst: string; gateway?: string; flags?: string[] }>;
  neighs: Array<{ dst: string; lladdr?: string; state?: string[] }>;
  fdbs: Array<{ mac: string; dst?: string }>;
}

export class Cluster {
  readonly topo: Topology;
  readonly pods: LabPod[] = [];

  readonly #onExit = () => destroyTopologySync({ ...this.topo.state, etcdPid: this.topo.etcd.pid });

  constructor(topo: Topology) {
    this.topo = topo;
    // If the test worker dies before teardown, still kill etcd/weftd and delete namespaces.
    process.once('exit', this.#onExit);
  }

  get etcd() {
    return this.topo.etcd;
  }

  node(name: string) {
    return this.topo.node(name);
  }

  /** Kernel state of `flannel.1` in a node (empty lists when the device is missing). */
  overlay(name: string): OverlayState {
    const ns = this.node(name).netns;
    const link = ipJson(ns, 'link', 'show').find((l) => l.ifname === 'flannel.1');
    if (!link) return { mac: undefined, routes: [], neighs: [], fdbs: [] };
    const fdbOut = inNs(ns, 'bridge', ['-j', 'fdb', 'show', 'dev', 'flannel.1']).trim();
    return {
      mac: link.address,
      routes: ipJson(ns, 'route', 'show', 'dev', 'flannel.1'),
      neighs: ipJson(ns, 'neigh', 'show', 'dev', 'flannel.1'),
      fdbs: (fdbOut ? JSON.parse(fdbOut) : []).filter((f: { dst?: string }) => f.dst),
    };
  }

  /** The node's leased subnet (`198.18.x.0/24`) from its subnet file. */
  subnetOf(name: string): string | undefined {
    const s = this.topo.subnetEnv(name).FLANNEL_SUBNET;
    if (!s) return undefined;
    // FLANNEL_SUBNET is the gateway (first address) with the subnet's length.
    const gw = parseCIDR(s);
    return formatCIDR(networkOf(gw));
  }

  /** True when `name` has the neighbor, FDB entry and route for peer `peer`. */
  hasPeer(name: string, peer: string): boolean {
    const subnet = this.subnetOf(peer);
    const mac = this.overlay(peer).mac;
    if (!subnet || !mac) return false;
    const gw = subnet.split('/')[0];
    const o = this.overlay(name);
    return (
      o.routes.some((r) => r.dst === subnet && r.gateway === gw && (r.flags ?? []).includes('onlink')) &&
      o.neighs.some((n) => n.dst === gw && n.lladdr === mac && (n.state ?? []).includes('PERMANENT')) &&
      o.fdbs.some((f) => f.mac === mac && f.dst === this.node(peer).ip)
    );
  }

  /** Counts entries for a subnet on a node (route, neighbor), and FDB entries towards an IP. */
  entriesFor(name: string, subnet: string, publicIP: string): number {
    const gw = subnet.split('/')[0];
    const o = this.overlay(name);
    return o.routes.filter((r) => r.dst === subnet).length + o.neighs.filter((n) => n.dst === gw).length + o.fdbs.filter((f) => f.dst === publicIP).length;
  }

  async addPods(node: string, n: number): Promise<LabPod[]> {
    const out: LabPod[] = [];
    for (let i = 0; i < n; i++) out.push(await this.topo.addPod(node));
    this.pods.push(...out);
    return out;
  }

  /** A Prometheus sample value from a node's /metrics (NaN when absent). */
  async metric(node: string, name: string): Promise<number> {
    const { body } = await this.topo.http(node, '/metrics');
    const m = new RegExp(`^${name} (\\S+)$`, 'm').exec(body);
    return m ? Number(m[1]) : NaN;
  }

  log(node: string): string {
    try {
      return readFileSync(this.node(node).logFile, 'utf8');
    } catch {
      return '';
    }
  }

  async destroy(): Promise<void> {
    const dir = this.topo.state.workDir;
    process.removeListener('exit', this.#onExit);
    await this.topo.destroy();
    rmSync(dir, { recursive: true, force: true });
  }
}

/** Builds a cluster: etcd, `nodes` nodes with weftd running, `podsPerNode` pods each. */
export async function startCluster(opts: ClusterOptions = {}): Promise<Cluster> {
  const workDir = mkdtempSync(join(tmpdir(), 'weft-cluster-'));
  const topo = await Topology.create({ ...opts, workDir });
  const cluster = new Cluster(topo);
  try {
    const nodes = [];
    for (let i = 0; i < (opts.nodes ?? 3); i++) nodes.push(await topo.addNode({ start: false }));
    if (opts.start ?? true) await Promise.all(nodes.map((n) => topo.startDaemon(n.name)));
    for (const n of nodes) if (opts.podsPerNode) await cluster.addPods(n.name, opts.podsPerNode);
    return cluster;
  } catch (err) {
    await cluster.destroy();
    throw err;
  }
}

/** Pings `ip` from inside namespace `ns`; the parsed summary. */
export function pingStats(output: string): { sent: number; received: number } {
  const m = /(\d+) packets transmitted, (\d+) received/.exec(output);
  return m ? { sent: Number(m[1]), received: Number(m[2]) } : { sent: 0, received: 0 };
}

/** One quick ping (3 tries, 1 s wait each); true on any reply. */
export function reachable(ns: string, ip: string): boolean {
  try {
    sh('nsenter', [`--net=/run/netns/${ns}`, '--', 'ping', '-c', '1', '-W', '1', ip]);
    return true;
  } catch {
    try {
      sh('nsenter', [`--net=/run/netns/${ns}`, '--', 'ping', '-c', '2', '-W', '1', ip]);
      return true;
    } catch {
      return false;
    }
  }
}

/**
 * Figure: peer convergence in Kubernetes mode, side by side with etcd mode in the same run.
 *
 * Kubernetes mode: the lab API server (lab/apiserver) on etcd in a control-plane namespace
 * (lab/topology.ts, mode `kube`, etcd data in /dev/shm), one node whose weftd runs with
 * `--kube-subnet-mgr` (its lease is the podCIDR the server's node IPAM gives it). Then 1000
 * Node objects, each with a podCIDR and flannel's annotations (backend-type, backend-data,
 * public-ip, kube-subnet-manager), created through the API, 16 requests in flight over kept-alive
 * connections: time from the first request until all 3000 kernel entries (neighbor, FDB entry,
 * route per peer) exist. Then single updates one at a time: a new Node (API request to route,
 * `ip monitor route`) and a changed VtepMAC in a peer's backend-data annotation (API request to
 * the new FDB entry, `bridge monitor fdb`). weftd's RSS holding the peers.
 *
 * Reference: the same passes in etcd mode (figure `peers`' measurement: leases written to etcd),
 * run first in the same figure.
 */
import { readFileSync } from 'node:fs';
import { join } from 'node:path';
import { createInterface } from 'node:readline';
import { Topology, destroyTopologySync } from '../../lab/topology.ts';
import { BenchScope, sleep } from '../lib/scope.ts';
import { bins, missing, root } from '../lib/paths.ts';
import { rssMiB } from '../lib/rig.ts';
import { indexOf, leaseFor, PEER_NETWORK, PEER_SUBNET_LEN } from '../lib/leases.ts';
import { percentile, round, summarize } from '../lib/stats.ts';
import { unavailable, type BenchContext, type Figure, type Row } from '../lib/report.ts';
import { converge, measureEtcdPeers, msUntilSeen, routeMonitor, Writer, type PeersResult } from './peers.ts';

const PREFIX = 'flannel.alpha.coreos.com';

/** Peer Node i: the same subnet, public IP and VTEP MAC as etcd mode's synthetic lease i. */
function peerNode(i: number, mac?: string): object {
  const l = leaseFor(i, '');
  return {
    apiVersion: 'v1',
    kind: 'Node',
    metadata: {
      name: `peer-${i}`,
      annotations: {
        [`${PREFIX}/backend-type`]: 'vxlan',
        [`${PREFIX}/backend-data`]: JSON.stringify({ VNI: 1, VtepMAC: mac ?? l.mac }),
        [`${PREFIX}/public-ip`]: l.publicIP,
        [`${PREFIX}/kube-subnet-manager`]: 'true',
      },
    },
    spec: { podCIDR: l.subnet, podCIDRs: [l.subnet] },
  };
}

/** A MAC no synthetic lease uses (0e:58:... instead of 0e:57:...). */
function otherMac(k: number): string {
  return `0e:58:${((k >> 8) & 255).toString(16).padStart(2, '0')}:${(k & 255).toString(16).padStart(2, '0')}:00:01`;
}

/** Spawns bench/lib/kube-writer.ts in the control-plane namespace and waits for "ready". */
export async function startKubeWriter(scope: BenchScope, topo: Topology): Promise<Writer> {
  const child = scope.spawn(process.execPath, [join(root, 'bench', 'lib', 'kube-writer.ts'), topo.state.apiServer!.url], {
    ns: topo.state.etcdNetns,
    cwd: root,
    env: { PATH: '/usr/bin:/bin' },
    stdio: ['pipe', 'pipe', 'pipe'],
  });
  let err = '';
  child.stderr!.on('data', (b: Buffer) => (err += b));
  const w = new Writer(child);
  if ((await w.line().catch((e) => `${e}: ${err}`)) !== 'ready') throw new Error(`kube writer did not start: ${err}`);
  return w;
}

/** One API request through the writer; throws unless 2xx. */
export async function apiOne(w: Writer, req: { method: string; path: string; body?: unknown; contentType?: string }): Promise<{ t0: bigint; t1: bigint; body: string }> {
  const r = await w.send({ op: 'one', req });
  if (r.status < 200 || r.status >= 300) throw new Error(`${req.method} ${req.path}: HTTP ${r.status}: ${r.body}`);
  return r as { t0: bigint; t1: bigint; body: string };
}

/** Many API requests, `concurrency` in flight; throws if any failed. */
export async function apiBatch(w: Writer, reqs: Array<{ method: string; path: string; body?: unknown; contentType?: string }>, concurrency = 16): Promise<{ t0: bigint; t1: bigint }> {
  const r = await w.send({ op: 'batch', reqs, concurrency });
  if (r.nFailed) throw new Error(`${r.nFailed} of ${reqs.length} API requests failed: ${(r.failed as string[]).join('; ')}`);
  return r;
}

interface KubePeersResult extends PeersResult {
  /** Annotation VtepMAC change: API request to the new FDB entry. */
  macLat: number[];
  skippedLogLines: number;
}

async function measureKubePeers(ctx: BenchContext, o: { bulk: number; singles: number }): Promise<KubePeersResult> {
  const { bulk, singles } = o;
  const scope = new BenchScope();
  try {
    const topo = await Topology.create({
      workDir: scope.tmpdir('kpeers', '/dev/shm'),
      prefix: `wt-bench-${process.pid}`,
      mode: 'kube',
      podNetwork: PEER_NETWORK,
      subnetLen: PEER_SUBNET_LEN,
    });
    scope.defer(() => destroyTopologySync(topo.state));
    // --log-level info as in etcd mode (the lab's default is debug); parseArgs keeps the last.
    const node = await topo.addNode({ args: ['--log-level', 'info'] });
    const own = /FLANNEL_SUBNET=([\d.]+)\//.exec(readFileSync(node.subnetFile, 'utf8'));
    if (!own) throw new Error('weftd wrote no FLANNEL_SUBNET');
    const ownIndex = indexOf(own[1]);
    const indexes: number[] = [];
    for (let i = 1; indexes.length < bulk + singles; i++) if (i !== ownIndex) indexes.push(i);
    const bulkIdx = indexes.slice(0, bulk);
    const singleIdx = indexes.slice(bulk);
    const pid = node.pid!;
    // nsenter execs weftd in place, so the pid is weftd's.
    const rss0 = rssMiB(pid);
    const writer = await startKubeWriter(scope, topo);

    const routeSeen = await routeMonitor(scope, node.netns);
    const fdbSeen = new Map<string, bigint>();
    const fmon = scope.spawn('bridge', ['-n', node.netns, 'monitor', 'fdb'], { stdio: ['ignore', 'pipe', 'ignore'] });
    createInterface({ input: fmon.stdout! }).on('line', (line) => {
      const m = /^([0-9a-f:]{17}) dev flannel\.1 dst /.exec(line);
      if (m && !fdbSeen.has(m[1])) fdbSeen.set(m[1], process.hrtime.bigint());
    });
    await sleep(300);

    const leases = bulkIdx.map((i) => leaseFor(i, ''));
    const gws = new Set(leases.map((l) => l.gw));
    const macs = new Set(leases.map((l) => l.mac));
    const want = 3 * bulk;
    ctx.log(`  kube mode: creating ${bulk} Nodes`);
    const reqs = bulkIdx.map((i) => ({ method: 'POST', path: '/api/v1/nodes', body: peerNode(i) }));
    const w = await apiBatch(writer, reqs, 16);
    const limitMs = 120_000;
    const cv = await converge(node.netns, { gws, macs, want, t0: w.t0, limitMs });
    const lastRoute = leases.reduce((mx, l) => {
      const t = routeSeen.get(l.subnet);
      return t !== undefined && t > mx ? t : mx;
    }, 0n);
    await sleep(1000);
    const rss = rssMiB(pid);

    ctx.log(`  kube mode: ${singles} new Nodes, ${singles} MAC changes`);
    const lat: number[] = [];
    const macLat: number[] = [];
    for (let k = 0; k < singles; k++) {
      const i = singleIdx[k]!;
      const l = leaseFor(i, '');
      const s = await apiOne(writer, { method: 'POST', path: '/api/v1/nodes', body: peerNode(i) });
      lat.push(await msUntilSeen(routeSeen, l.subnet, s.t0, `route for new Node ${l.subnet} did not appear`));
      await sleep(20);
      // A peer from the bulk gets a new VtepMAC (as after its VXLAN device was recreated).
      const j = bulkIdx[(k * 17) % bulkIdx.length]!;
      const mac = otherMac(k);
      const patch = { metadata: { annotations: { [`${PREFIX}/backend-data`]: JSON.stringify({ VNI: 1, VtepMAC: mac }) } } };
      const m = await apiOne(writer, { method: 'PATCH', path: `/api/v1/nodes/peer-${j}`, body: patch, contentType: 'application/merge-patch+json' });
      macLat.push(await msUntilSeen(fdbSeen, mac, m.t0, `FDB entry for new MAC ${mac} of peer-${j} did not appear`));
      await sleep(20);
    }
    const log = readFileSync(node.logFile, 'utf8');
    return {
      bulk,
      want,
      convergeMs: cv.ms,
      converged: cv.ok,
      counts: cv.c,
      writeMs: Number(w.t1 - w.t0) / 1e6,
      lastRouteMs: lastRoute ? Number(lastRoute - w.t0) / 1e6 : undefined,
      lat,
      macLat,
      rss,
      rss0,
      limitMs,
      skippedLogLines: (log.match(/skipping|invalid/gi) ?? []).length,
    };
  } finally {
    scope.cleanupSync();
  }
}

export async function figKubePeers(ctx: BenchContext): Promise<Figure> {
  const id = 'kpeers';
  const title = 'peer convergence in Kubernetes mode (1000 Nodes) vs etcd mode (1000 leases)';
  const why = missing(bins.weftd) ?? missing('/usr/bin/etcd', 'apt-get install etcd-server') ?? missing('/usr/bin/curl', 'apt-get install curl');
  if (why) return unavailable(id, title, why);
  const bulk = ctx.quick ? 300 : 1000;
  const singles = ctx.quick ? 20 : 50;
  try {
    const e = await measureEtcdPeers(ctx, { bulk, singles });
    const k = await measureKubePeers(ctx, { bulk, singles });
    const ref = 'etcd mode';
    const p = (xs: number[], q: number) => round(percentile(xs, q));
    const rows: Row[] = [
      {
        metric: `${bulk} peers: all ${k.want} kernel entries`,
        unit: 'ms',
        weft: k.converged ? round(k.convergeMs) : null,
        ref: e.converged ? round(e.convergeMs) : null,
        refName: ref,
        target: '< 1000 ms',
        met: k.converged && k.convergeMs < 1000,
      },
      { metric: `  writes of the ${bulk} peers (API creates / etcd puts)`, unit: 'ms', weft: round(k.writeMs), ref: round(e.writeMs), refName: ref },
      {
        metric: '  last write acknowledged to all entries',
        unit: 'ms',
        weft: k.converged ? round(k.convergeMs - k.writeMs) : null,
        ref: e.converged ? round(e.convergeMs - e.writeMs) : null,
        refName: ref,
      },
      ...(k.lastRouteMs !== undefined && e.lastRouteMs !== undefined
        ? [{ metric: '  first write to last route (ip monitor)', unit: 'ms', weft: round(k.lastRouteMs), ref: round(e.lastRouteMs), refName: ref }]
        : []),
      { metric: `new peer: write to route, p50 (n=${k.lat.length})`, unit: 'ms', weft: p(k.lat, 50), ref: p(e.lat, 50), refName: ref },
      { metric: `new peer: write to route, p99 (n=${k.lat.length})`, unit: 'ms', weft: p(k.lat, 99), ref: p(e.lat, 99), refName: ref, target: '< 50 ms', met: percentile(k.lat, 99) < 50 },
      { metric: `MAC change: annotation patch to FDB, p50 (n=${k.macLat.length})`, unit: 'ms', weft: p(k.macLat, 50) },
      { metric: `MAC change: annotation patch to FDB, p99 (n=${k.macLat.length})`, unit: 'ms', weft: p(k.macLat, 99), target: '< 50 ms', met: percentile(k.macLat, 99) < 50 },
      { metric: `weftd RSS with ${bulk} peers`, unit: 'MiB', weft: round(k.rss, 1), ref: round(e.rss, 1), refName: ref, target: '< 100 MB', met: k.rss * 1.048576 < 100 },
      { metric: '  weftd RSS with no peers', unit: 'MiB', weft: round(k.rss0, 1), ref: round(e.rss0, 1), refName: ref },
    ];
    const nc = (r: PeersResult, what: string) =>
      r.converged ? [] : [`${what} not converged after ${r.limitMs} ms: neigh ${r.counts.neigh}, fdb ${r.counts.fdb}, route ${r.counts.route} of ${r.bulk} each`];
    return {
      id,
      title,
      available: true,
      rows,
      notes: [
        ...nc(k, 'kube mode'),
        ...nc(e, 'etcd mode'),
        `kube mode: ${bulk} Node objects (podCIDR + flannel annotations) POSTed to the lab API server, 16 in flight; the API server writes each to etcd and weftd's Node informer gets it from an etcd watch`,
        'etcd mode (the reference, run first): leases written to etcd in transactions of 100 puts, all in flight',
        'kernel entries counted with ip -j neigh / bridge -j fdb / ip -j route every ~10 ms; times from the first write; single updates seen by ip monitor route / bridge monitor fdb',
      ],
      details: {
        bulk,
        kube: { ...k, single: { ...summarize(k.lat), samples: k.lat }, mac: { ...summarize(k.macLat), samples: k.macLat } },
        etcd: { ...e, single: { ...summarize(e.lat), samples: e.lat } },
      },
    };
  } catch (err) {
    return unavailable(id, title, (err as Error).message);
  }
}

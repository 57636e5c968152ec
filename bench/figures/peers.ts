/**
 * Figure 3: peer convergence. One weftd (etcd local), then 1000 synthetic peer leases written
 * at once: time from the first write until all 3000 kernel entries (neighbor, FDB entry, route
 * per peer) exist; then 50 single new peers one at a time: etcd write to route, seen with
 * `ip monitor route`; and weftd's RSS holding 1000 peers.
 */
import { readFileSync } from 'node:fs';
import { createInterface } from 'node:readline';
import { join } from 'node:path';
import type { ChildProcess } from 'node:child_process';
import { BenchScope, ipJson, sh, sleep } from '../lib/scope.ts';
import { bins, missing, root } from '../lib/paths.ts';
import { makeRig, rssMiB, startWeftd, ETCD_PREFIX, type Rig } from '../lib/rig.ts';
import { indexOf, leaseFor } from '../lib/leases.ts';
import { msSince, percentile, round, summarize } from '../lib/stats.ts';
import { unavailable, type BenchContext, type Figure } from '../lib/report.ts';

const DEV = 'flannel.1';

/** Kernel entries on flannel.1 that belong to synthetic peers. */
export function counts(ns: string, gws: Set<string>, macs: Set<string>): { neigh: number; fdb: number; route: number } {
  const neigh = ipJson(ns, 'neigh', 'show', 'dev', DEV).filter((n) => gws.has(n.dst) && n.state?.includes('PERMANENT')).length;
  const out = sh('bridge', ['-n', ns, '-j', 'fdb', 'show', 'dev', DEV]).trim();
  const fdb = (out ? (JSON.parse(out) as any[]) : []).filter((f) => macs.has(f.mac) && f.dst).length;
  const route = ipJson(ns, 'route', 'show', 'dev', DEV).filter((r) => gws.has(String(r.dst).split('/')[0])).length;
  return { neigh, fdb, route };
}

/** A line-oriented JSON conversation with bench/lib/lease-writer.ts (or kube-writer.ts). */
export class Writer {
  readonly #lines: AsyncIterator<string>;
  readonly child: ChildProcess;
  constructor(child: ChildProcess) {
    this.child = child;
    this.#lines = createInterface({ input: child.stdout! })[Symbol.asyncIterator]();
  }
  async line(): Promise<string> {
    const r = await this.#lines.next();
    if (r.done) throw new Error('lease writer exited');
    return r.value;
  }
  async send(cmd: object): Promise<{ t0: bigint; t1: bigint; [k: string]: any }> {
    this.child.stdin!.write(`${JSON.stringify(cmd)}\n`);
    const r = JSON.parse(await this.line());
    if (r.error) throw new Error(`writer: ${r.error}`);
    return { ...r, t0: BigInt(r.t0), t1: BigInt(r.t1) };
  }
}

/**
 * Waits (at most 10 s) until a monitor saw `key` (a route, an FDB MAC), and returns the time
 * from `t0` (the write) to that sighting in ms.
 */
export async function msUntilSeen(seen: Map<string, bigint>, key: string, t0: bigint, what: string): Promise<number> {
  const end = Date.now() + 10_000;
  while (!seen.has(key) && Date.now() < end) await sleep(2);
  const at = seen.get(key);
  if (at === undefined) throw new Error(`${what} within 10 s`);
  return Number(at - t0) / 1e6;
}

/** Starts bench/lib/lease-writer.ts in the rig's namespace and waits for its "ready". */
export async function startLeaseWriter(scope: BenchScope, rig: Rig): Promise<Writer> {
  const child = scope.spawn(process.execPath, [join(root, 'bench', 'lib', 'lease-writer.ts'), rig.etcd.endpoint, ETCD_PREFIX], {
    ns: rig.ns,
    cwd: root,
    env: { PATH: '/usr/bin:/bin' },
    stdio: ['pipe', 'pipe', 'pipe'],
  });
  let err = '';
  child.stderr!.on('data', (b: Buffer) => (err += b));
  const writer = new Writer(child);
  if ((await writer.line().catch((e) => `${e}: ${err}`)) !== 'ready') throw new Error(`lease writer did not start: ${err}`);
  return writer;
}

/** What one peer-convergence pass measured (etcd or Kubernetes mode). */
export interface PeersResult {
  bulk: number;
  /** Kernel entries expected: neighbor + FDB + route per peer. */
  want: number;
  convergeMs: number;
  converged: boolean;
  counts: { neigh: number; fdb: number; route: number };
  /** The writes of the bulk (etcd puts or API creates), first sent to last acknowledged. */
  writeMs: number;
  /** First write to the last route announced by `ip monitor route`. */
  lastRouteMs?: number;
  /** New peer: write to route, per peer. */
  lat: number[];
  rss: number;
  rss0: number;
  limitMs: number;
}

/** Polls the kernel until `want` entries for `gws`/`macs` exist or `limitMs` passed since `t0`. */
export async function converge(ns: string, o: { gws: Set<string>; macs: Set<string>; want: number; t0: bigint; limitMs: number }): Promise<{ ms: number; ok: boolean; c: PeersResult['counts'] }> {
  let c = counts(ns, o.gws, o.macs);
  while (c.neigh + c.fdb + c.route < o.want && msSince(o.t0) < o.limitMs) {
    await sleep(10);
    c = counts(ns, o.gws, o.macs);
  }
  return { ms: msSince(o.t0), ok: c.neigh + c.fdb + c.route === o.want, c };
}

/** Route additions as the kernel announces them (`ip monitor route`), with our receive time. */
export async function routeMonitor(scope: BenchScope, ns: string): Promise<Map<string, bigint>> {
  const seen = new Map<string, bigint>();
  const mon = scope.spawn('ip', ['-n', ns, 'monitor', 'route'], { stdio: ['ignore', 'pipe', 'ignore'] });
  createInterface({ input: mon.stdout! }).on('line', (line) => {
    const m = /^([\d.]+\/\d+) via /.exec(line);
    if (m && !seen.has(m[1])) seen.set(m[1], process.hrtime.bigint());
  });
  await sleep(300); // let `ip monitor` subscribe
  return seen;
}

/** The etcd-mode pass: one weftd with etcd local, `bulk` leases at once, then `singles` one by one. */
export async function measureEtcdPeers(ctx: BenchContext, o: { bulk: number; singles: number }): Promise<PeersResult> {
  const { bulk, singles } = o;
  const scope = new BenchScope();
  try {
    const rig = await makeRig(scope);
    const d = await startWeftd(scope, rig);
    const own = /FLANNEL_SUBNET=([\d.]+)\//.exec(readFileSync(rig.subnetFile, 'utf8'));
    if (!own) throw new Error('weftd wrote no FLANNEL_SUBNET');
    const ownIndex = indexOf(own[1]);
    const indexes: number[] = [];
    for (let i = 1; indexes.length < bulk + singles; i++) if (i !== ownIndex) indexes.push(i);
    const bulkIdx = indexes.slice(0, bulk);
    const singleIdx = indexes.slice(bulk);
    const rss0 = rssMiB(d.pid);

    const writer = await startLeaseWriter(scope, rig);

    const routeSeen = await routeMonitor(scope, rig.ns);
    const leases = bulkIdx.map((i) => leaseFor(i, ETCD_PREFIX));
    const gws = new Set(leases.map((l) => l.gw));
    const macs = new Set(leases.map((l) => l.mac));
    const want = 3 * bulk;
    ctx.log(`  etcd mode: writing ${bulk} leases`);
    const w = await writer.send({ op: 'bulk', indexes: bulkIdx });
    const limitMs = 120_000;
    const cv = await converge(rig.ns, { gws, macs, want, t0: w.t0, limitMs });
    // Last route announcement: a finer upper bound for the routes than the polling loop.
    const lastRoute = leases.reduce((mx, l) => {
      const t = routeSeen.get(l.subnet);
      return t !== undefined && t > mx ? t : mx;
    }, 0n);
    await sleep(1000); // let the heap settle before reading RSS
    const rss = rssMiB(d.pid);

    ctx.log(`  etcd mode: ${singles} single peers`);
    const lat: number[] = [];
    for (const i of singleIdx) {
      const l = leaseFor(i, ETCD_PREFIX);
      const s = await writer.send({ op: 'one', index: i });
      lat.push(await msUntilSeen(routeSeen, l.subnet, s.t0, `route for new peer ${l.subnet} did not appear`));
      await sleep(20);
    }
    return {
      bulk,
      want,
      convergeMs: cv.ms,
      converged: cv.ok,
      counts: cv.c,
      writeMs: Number(w.t1 - w.t0) / 1e6,
      lastRouteMs: lastRoute ? Number(lastRoute - w.t0) / 1e6 : undefined,
      lat,
      rss,
      rss0,
      limitMs,
    };
  } finally {
    scope.cleanupSync();
  }
}

export async function figPeers(ctx: BenchContext): Promise<Figure> {
  const id = 'peers';
  const title = 'peer convergence (1000 leases), single-peer latency, RSS';
  const why = missing(bins.weftd) ?? missing('/usr/bin/etcd', 'apt-get install etcd-server');
  if (why) return unavailable(id, title, why);
  try {
    const r = await measureEtcdPeers(ctx, { bulk: ctx.quick ? 300 : 1000, singles: ctx.quick ? 20 : 50 });
    const { bulk, want, lat, rss } = r;
    const p99 = percentile(lat, 99);
    return {
      id,
      title,
      available: true,
      rows: [
        { metric: `${bulk} peers: all ${want} kernel entries`, unit: 'ms', weft: r.converged ? round(r.convergeMs) : null, target: '< 1000 ms', met: r.converged && r.convergeMs < 1000 },
        { metric: `  etcd writes of the ${bulk} leases took`, unit: 'ms', weft: round(r.writeMs) },
        ...(r.lastRouteMs !== undefined ? [{ metric: '  first write to last route (ip monitor)', unit: 'ms', weft: round(r.lastRouteMs) }] : []),
        { metric: `new peer: etcd write to route, p50 (n=${lat.length})`, unit: 'ms', weft: round(percentile(lat, 50)) },
        { metric: `new peer: etcd write to route, p99 (n=${lat.length})`, unit: 'ms', weft: round(p99), target: '< 50 ms', met: p99 < 50 },
        { metric: `weftd RSS with ${bulk} peers`, unit: 'MiB', weft: round(rss, 1), target: '< 100 MB', met: rss * 1.048576 < 100 },
        { metric: '  weftd RSS with no peers', unit: 'MiB', weft: round(r.rss0, 1) },
      ],
      notes: [
        ...(r.converged ? [] : [`not converged after ${r.limitMs} ms: neigh ${r.counts.neigh}, fdb ${r.counts.fdb}, route ${r.counts.route} of ${bulk} each`]),
        'kernel entries counted with ip -j neigh / bridge -j fdb / ip -j route every ~10 ms (plus the time each poll takes); time from the first etcd write',
      ],
      details: { bulk, convergeMs: r.convergeMs, converged: r.converged, counts: r.counts, writeMs: r.writeMs, single: { ...summarize(lat), samples: lat }, rssMiB: rss, rssNoPeersMiB: r.rss0 },
    };
  } catch (err) {
    return unavailable(id, title, (err as Error).message);
  }
}

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
import { makeRig, rssMiB, startWeftd, ETCD_PREFIX } from '../lib/rig.ts';
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

/** A line-oriented JSON conversation with bench/lib/lease-writer.ts. */
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
  async send(cmd: object): Promise<{ t0: bigint; t1: bigint }> {
    this.child.stdin!.write(`${JSON.stringify(cmd)}\n`);
    const r = JSON.parse(await this.line());
    if (r.error) throw new Error(`lease writer: ${r.error}`);
    return { t0: BigInt(r.t0), t1: BigInt(r.t1) };
  }
}

export async function figPeers(ctx: BenchContext): Promise<Figure> {
  const id = 'peers';
  const title = 'peer convergence (1000 leases), single-peer latency, RSS';
  const why = missing(bins.weftd) ?? missing('/usr/bin/etcd', 'apt-get install etcd-server');
  if (why) return unavailable(id, title, why);
  const bulk = ctx.quick ? 300 : 1000;
  const singles = ctx.quick ? 20 : 50;
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

    const writerChild = scope.spawn(process.execPath, [join(root, 'bench', 'lib', 'lease-writer.ts'), rig.etcd.endpoint, ETCD_PREFIX], {
      ns: rig.ns,
      cwd: root,
      env: { PATH: '/usr/bin:/bin' },
      stdio: ['pipe', 'pipe', 'pipe'],
    });
    let writerErr = '';
    writerChild.stderr!.on('data', (b: Buffer) => (writerErr += b));
    const writer = new Writer(writerChild);
    if ((await writer.line().catch((e) => `${e}: ${writerErr}`)) !== 'ready') throw new Error(`lease writer did not start: ${writerErr}`);

    // Route additions as the kernel announces them, with our monotonic receive time.
    const routeSeen = new Map<string, bigint>();
    const mon = scope.spawn('ip', ['-n', rig.ns, 'monitor', 'route'], { stdio: ['ignore', 'pipe', 'ignore'] });
    createInterface({ input: mon.stdout! }).on('line', (line) => {
      const m = /^([\d.]+\/\d+) via /.exec(line);
      if (m && !routeSeen.has(m[1])) routeSeen.set(m[1], process.hrtime.bigint());
    });
    await sleep(300); // let `ip monitor` subscribe

    const leases = bulkIdx.map((i) => leaseFor(i, ETCD_PREFIX));
    const gws = new Set(leases.map((l) => l.gw));
    const macs = new Set(leases.map((l) => l.mac));
    const want = 3 * bulk;
    ctx.log(`  writing ${bulk} leases`);
    const w = await writer.send({ op: 'bulk', indexes: bulkIdx });
    let c = counts(rig.ns, gws, macs);
    const limitMs = 120_000;
    while (c.neigh + c.fdb + c.route < want && msSince(w.t0) < limitMs) {
      await sleep(10);
      c = counts(rig.ns, gws, macs);
    }
    const convergeMs = msSince(w.t0);
    const converged = c.neigh + c.fdb + c.route === want;
    // Last route announcement: a finer upper bound for the routes than the polling loop.
    const lastRoute = leases.reduce((mx, l) => {
      const t = routeSeen.get(l.subnet);
      return t !== undefined && t > mx ? t : mx;
    }, 0n);
    await sleep(1000); // let the heap settle before reading RSS
    const rss = rssMiB(d.pid);

    ctx.log(`  ${singles} single peers`);
    const lat: number[] = [];
    for (const i of singleIdx) {
      const l = leaseFor(i, ETCD_PREFIX);
      const s = await writer.send({ op: 'one', index: i });
      const end = Date.now() + 10_000;
      while (!routeSeen.has(l.subnet) && Date.now() < end) await sleep(2);
      const seen = routeSeen.get(l.subnet);
      if (seen === undefined) throw new Error(`route for new peer ${l.subnet} did not appear within 10 s`);
      lat.push(Number(seen - s.t0) / 1e6);
      await sleep(20);
    }
    const p50 = percentile(lat, 50);
    const p99 = percentile(lat, 99);
    return {
      id,
      title,
      available: true,
      rows: [
        { metric: `${bulk} peers: all ${want} kernel entries`, unit: 'ms', weft: converged ? round(convergeMs) : null, target: '< 1000 ms', met: converged && convergeMs < 1000 },
        { metric: `  etcd writes of the ${bulk} leases took`, unit: 'ms', weft: round(Number(w.t1 - w.t0) / 1e6) },
        ...(lastRoute ? [{ metric: '  first write to last route (ip monitor)', unit: 'ms', weft: round(Number(lastRoute - w.t0) / 1e6) }] : []),
        { metric: `new peer: etcd write to route, p50 (n=${lat.length})`, unit: 'ms', weft: round(p50) },
        { metric: `new peer: etcd write to route, p99 (n=${lat.length})`, unit: 'ms', weft: round(p99), target: '< 50 ms', met: p99 < 50 },
        { metric: `weftd RSS with ${bulk} peers`, unit: 'MiB', weft: round(rss, 1), target: '< 100 MB', met: rss * 1.048576 < 100 },
        { metric: '  weftd RSS with no peers', unit: 'MiB', weft: round(rss0, 1) },
      ],
      notes: [
        ...(converged ? [] : [`not converged after ${limitMs} ms: neigh ${c.neigh}, fdb ${c.fdb}, route ${c.route} of ${bulk} each`]),
        'kernel entries counted with ip -j neigh / bridge -j fdb / ip -j route every ~10 ms (plus the time each poll takes); time from the first etcd write',
      ],
      details: { bulk, convergeMs, converged, counts: c, writeMs: Number(w.t1 - w.t0) / 1e6, single: { ...summarize(lat), samples: lat }, rssMiB: rss, rssNoPeersMiB: rss0 },
    };
  } catch (err) {
    return unavailable(id, title, (err as Error).message);
  } finally {
    scope.cleanupSync();
  }
}

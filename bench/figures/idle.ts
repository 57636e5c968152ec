/**
 * Figure: weftd's steady-state cost. One weftd (etcd local, --ip-masq so the nftables drift
 * check runs too) holding 1000 synthetic peers: its CPU time over 60 s with nothing changing
 * (utime + stime from /proc/<pid>/stat before and after, and apart the CPU of the processes it
 * spawned and reaped, i.e. `nft`), its RSS over that minute, then the etcd-write-to-route latency
 * of new single peers (seen with `ip monitor route`) on the idle daemon.
 *
 * `WEFT_BENCH_IDLE_ARGS` (space-separated) appends weftd flags, e.g. `--reconcile-interval 1s`
 * to measure the polling cost side by side.
 */
import { readFileSync } from 'node:fs';
import { BenchScope, sleep } from '../lib/scope.ts';
import { bins, missing } from '../lib/paths.ts';
import { cpuMs, makeRig, rssMiB, rssParts, startWeftd, ETCD_PREFIX } from '../lib/rig.ts';
import { indexOf, leaseFor } from '../lib/leases.ts';
import { msSince, percentile, round, summarize } from '../lib/stats.ts';
import { unavailable, type BenchContext, type Figure } from '../lib/report.ts';
import { counts, msUntilSeen, routeMonitor, startLeaseWriter } from './peers.ts';

const IDLE_MS = 60_000;
const PEERS = 1000;

export async function figIdle(ctx: BenchContext): Promise<Figure> {
  const id = 'idle';
  const title = 'weftd idle with 1000 peers: CPU, RSS, new-peer latency';
  const why = missing(bins.weftd) ?? missing('/usr/bin/etcd', 'apt-get install etcd-server') ?? missing('/usr/sbin/nft', 'apt-get install nftables');
  if (why) return unavailable(id, title, why);
  const singles = ctx.quick ? 30 : 100;
  const extra = (process.env.WEFT_BENCH_IDLE_ARGS ?? '').split(' ').filter(Boolean);
  const scope = new BenchScope();
  try {
    const rig = await makeRig(scope);
    const d = await startWeftd(scope, rig, { args: ['--ip-masq', ...extra] });
    const own = /FLANNEL_SUBNET=([\d.]+)\//.exec(readFileSync(rig.subnetFile, 'utf8'));
    if (!own) throw new Error('weftd wrote no FLANNEL_SUBNET');
    const ownIndex = indexOf(own[1]);
    const indexes: number[] = [];
    for (let i = 1; indexes.length < PEERS + singles; i++) if (i !== ownIndex) indexes.push(i);
    const bulkIdx = indexes.slice(0, PEERS);
    const singleIdx = indexes.slice(PEERS);
    await sleep(2000);
    const rss0 = rssMiB(d.pid);

    const writer = await startLeaseWriter(scope, rig);

    const leases = bulkIdx.map((i) => leaseFor(i, ETCD_PREFIX));
    const gws = new Set(leases.map((l) => l.gw));
    const macs = new Set(leases.map((l) => l.mac));
    ctx.log(`  writing ${PEERS} leases`);
    const w = await writer.send({ op: 'bulk', indexes: bulkIdx });
    let c = counts(rig.ns, gws, macs);
    while (c.neigh + c.fdb + c.route < 3 * PEERS && msSince(w.t0) < 120_000) {
      await sleep(50);
      c = counts(rig.ns, gws, macs);
    }
    if (c.neigh + c.fdb + c.route < 3 * PEERS) throw new Error(`not converged: neigh ${c.neigh}, fdb ${c.fdb}, route ${c.route} of ${PEERS} each`);
    // Let start-up work (the first passes, GC of the bulk's garbage) finish before measuring.
    await sleep(5000);

    ctx.log(`  ${IDLE_MS / 1000} s idle`);
    const rss: number[] = [];
    const cpu0 = cpuMs(d.pid);
    const t0 = process.hrtime.bigint();
    for (let k = 0; k < IDLE_MS / 5000; k++) {
      await sleep(5000);
      rss.push(rssMiB(d.pid));
    }
    const cpu1 = cpuMs(d.pid);
    const wallMs = Number(process.hrtime.bigint() - t0) / 1e6;
    const selfPct = ((cpu1.self - cpu0.self) / wallMs) * 100;
    const childPct = ((cpu1.children - cpu0.children) / wallMs) * 100;
    const rssEnd = rss[rss.length - 1];
    const parts = rssParts(d.pid);
    const rssMax = Math.max(...rss);

    const routeSeen = await routeMonitor(scope, rig.ns);
    ctx.log(`  ${singles} single peers`);
    const lat: number[] = [];
    for (const i of singleIdx) {
      const l = leaseFor(i, ETCD_PREFIX);
      const s = await writer.send({ op: 'one', index: i });
      lat.push(await msUntilSeen(routeSeen, l.subnet, s.t0, `route for new peer ${l.subnet} did not appear`));
      // Spread the writes so that some land during whatever periodic work weftd does.
      await sleep(50 + Math.floor(Math.random() * 100));
    }
    const p50 = percentile(lat, 50);
    const p99 = percentile(lat, 99);
    return {
      id,
      title,
      available: true,
      rows: [
        { metric: `weftd CPU, ${round(wallMs / 1000)} s idle, ${PEERS} peers`, unit: '% of a core', weft: round(selfPct, 2), target: '< 1 %', met: selfPct < 1 },
        { metric: '  processes it spawned (nft) meanwhile', unit: '% of a core', weft: round(childPct, 2) },
        { metric: `weftd RSS at the end of the idle minute`, unit: 'MiB', weft: round(rssEnd, 1), target: '< 80 MiB', met: rssEnd < 80 },
        { metric: '  highest RSS sample (every 5 s)', unit: 'MiB', weft: round(rssMax, 1) },
        { metric: '  of the last: anonymous (heaps, stacks)', unit: 'MiB', weft: round(parts.anon, 1) },
        { metric: '  of the last: file-backed (node binary, libraries)', unit: 'MiB', weft: round(parts.file, 1) },
        { metric: '  weftd RSS before any peer', unit: 'MiB', weft: round(rss0, 1) },
        { metric: `new peer: etcd write to route, p50 (n=${lat.length})`, unit: 'ms', weft: round(p50) },
        { metric: `new peer: etcd write to route, p99 (n=${lat.length})`, unit: 'ms', weft: round(p99), target: '< 10 ms', met: p99 < 10 },
      ],
      notes: [
        `weftd flags: the rig's, --ip-masq${extra.length ? ` ${extra.join(' ')}` : ''}`,
        ...(process.env.WEFT_BENCH_WEFTD ? [`weftd: ${bins.weftd} (WEFT_BENCH_WEFTD)`] : []),
        'CPU from /proc/<pid>/stat (utime+stime; children: cutime+cstime) before and after the idle period; this machine is shared, so the latencies include waiting for a core',
      ],
      details: {
        peers: PEERS,
        extraArgs: extra,
        idleWallMs: wallMs,
        cpuMs: { self: cpu1.self - cpu0.self, children: cpu1.children - cpu0.children },
        rssMiB: rss,
        rssNoPeersMiB: rss0,
        rssPartsMiB: parts,
        single: { ...summarize(lat), samples: lat },
        loadavg: readFileSync('/proc/loadavg', 'utf8').trim(),
      },
    };
  } catch (err) {
    return unavailable(id, title, (err as Error).message);
  } finally {
    scope.cleanupSync();
  }
}

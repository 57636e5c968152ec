/** Figure 5: weftd start to /readyz ready, with etcd local: first start, then restarts. */
import { BenchScope } from '../lib/scope.ts';
import { bins, missing } from '../lib/paths.ts';
import { makeRig, startWeftd, stopWeftd } from '../lib/rig.ts';
import { median, round } from '../lib/stats.ts';
import { unavailable, type BenchContext, type Figure } from '../lib/report.ts';

export async function figReady(ctx: BenchContext): Promise<Figure> {
  const id = 'ready';
  const title = 'weftd start to /readyz (etcd local)';
  const why = missing(bins.weftd) ?? missing('/usr/bin/etcd', 'apt-get install etcd-server');
  if (why) return unavailable(id, title, why);
  const restarts = ctx.quick ? 2 : 5;
  const scope = new BenchScope();
  try {
    const rig = await makeRig(scope);
    const first = await startWeftd(scope, rig);
    await stopWeftd(first);
    const again: number[] = [];
    const loads: number[] = first.loadMs === undefined ? [] : [first.loadMs];
    for (let i = 0; i < restarts; i++) {
      const d = await startWeftd(scope, rig);
      again.push(d.readyMs);
      if (d.loadMs !== undefined) loads.push(d.loadMs);
      await stopWeftd(d);
    }
    return {
      id,
      title,
      available: true,
      rows: [
        { metric: 'first start (new lease) to ready', unit: 'ms', weft: round(first.readyMs), target: '< 1000 ms', met: first.readyMs < 1000 },
        { metric: `restart (lease reused) to ready, median of ${restarts}`, unit: 'ms', weft: round(median(again)), target: '< 1000 ms', met: median(again) < 1000 },
      ],
      notes: [
        `of which Node start-up + loading the weftd bundle (spawn to its first log line): median ${round(median(loads))} ms; the rest is etcd, the device, the lease and the first sync`,
        'spawn of weftd (clean environment) to the first 200 from /readyz, polled every 5 ms by bench/lib/ready-poller.ts, started inside the node namespace before weftd',
      ],
      details: { firstMs: first.readyMs, restartMs: again, loadMs: loads },
    };
  } catch (err) {
    return unavailable(id, title, (err as Error).message);
  } finally {
    scope.cleanupSync();
  }
}

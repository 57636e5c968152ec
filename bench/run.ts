/**
 * `npm run bench [-- --only add,concurrent,peers,kpeers,proxy,dp,ready,fast,idle,cri] [--quick] [--out FILE]`
 *
 * Prints each figure as weft vs a reference measured in the same run and writes everything
 * (samples included) to bench/results/<timestamp>.json. Needs root (namespaces). A figure whose
 * component is not built reports "not available: <reason>" instead of failing the run.
 */
import { mkdirSync, writeFileSync } from 'node:fs';
import { cpus, hostname, loadavg, release } from 'node:os';
import { join } from 'node:path';
import { parseArgs } from 'node:util';
import { sweepStale } from './lib/scope.ts';
import { renderTable, unavailable, type BenchContext, type Figure } from './lib/report.ts';
import { root } from './lib/paths.ts';
import { figAddDel } from './figures/add-del.ts';
import { figConcurrent } from './figures/concurrent.ts';
import { figFastAdd, figFastConcurrent } from './figures/fast.ts';
import { figWhere } from './figures/where.ts';
import { figReady } from './figures/ready.ts';
import { figPeers } from './figures/peers.ts';
import { figKubePeers } from './figures/kpeers.ts';
import { figProxy } from './figures/proxy.ts';
import { figDataplane } from './figures/dataplane.ts';
import { figIdle } from './figures/idle.ts';
import { figCri } from './figures/cri.ts';

type FigureFn = (ctx: BenchContext) => Promise<Figure>;

const figures: Record<string, { title: string; run: FigureFn }> = {
  add: { title: 'pod ADD/DEL latency (standalone weft binary)', run: (ctx) => figAddDel(ctx) },
  concurrent: { title: '100 concurrent ADDs, then 100 DELs', run: (ctx) => figConcurrent(ctx) },
  fast: { title: 'pod ADD/DEL latency via the fast path (launcher -> in-daemon CNI)', run: figFastAdd },
  fastconc: { title: '100 concurrent ADDs/DELs via the fast path', run: figFastConcurrent },
  where: { title: 'where the ADD time goes', run: figWhere },
  peers: { title: 'peer convergence (1000 leases), single-peer latency, RSS', run: figPeers },
  kpeers: { title: 'peers in Kubernetes mode (1000 Nodes) vs etcd mode, same run', run: figKubePeers },
  proxy: { title: 'Service proxy: 1000 Services x 10 endpoints (sync latency, full sync, traffic, RSS)', run: figProxy },
  dp: { title: 'pod-to-pod iperf3 across two nodes', run: figDataplane },
  ready: { title: 'weftd start to /readyz (etcd local)', run: figReady },
  idle: { title: 'weftd idle with 1000 peers: CPU, RSS, new-peer latency', run: figIdle },
  cri: { title: 'pod sandbox Run / Stop+Remove through containerd CRI', run: figCri },
};

async function main(): Promise<void> {
  const { values } = parseArgs({
    options: {
      only: { type: 'string' },
      quick: { type: 'boolean', default: false },
      out: { type: 'string' },
      help: { type: 'boolean', short: 'h', default: false },
    },
  });
  if (values.help) {
    console.log(`usage: npm run bench -- [--only ${Object.keys(figures).join(',')}] [--quick] [--out FILE]`);
    return;
  }
  if (process.getuid?.() !== 0) throw new Error('bench needs root (network namespaces)');
  const ids = values.only
    ? values.only
        .split(',')
        .map((s) => s.trim())
        .filter(Boolean)
    : Object.keys(figures);
  const unknown = ids.filter((id) => !figures[id]);
  if (unknown.length) throw new Error(`unknown figure(s) "${unknown.join(', ')}"; known: ${Object.keys(figures).join(', ')}`);
  const swept = sweepStale();
  if (swept.length) console.error(`bench: removed ${swept.length} namespaces left by an earlier run`);

  const ctx: BenchContext = { quick: values.quick, log: (m) => console.error(m) };
  const started = new Date();
  // The machine may be shared (other builds and tests): keep its load beside the figures.
  const loadAtStart = loadavg();
  const results: Figure[] = [];
  for (const id of ids) {
    console.error(`bench: ${id}: ${figures[id].title}`);
    const t0 = Date.now();
    let fig: Figure;
    try {
      fig = await figures[id].run(ctx);
    } catch (err) {
      fig = unavailable(id, figures[id].title, (err as Error).message);
    }
    console.error(`bench: ${id}: done in ${((Date.now() - t0) / 1000).toFixed(1)} s`);
    results.push(fig);
  }

  const machine = { host: hostname(), cpus: cpus().length, cpu: cpus()[0]?.model, kernel: release(), node: process.version, loadavg: { start: loadAtStart, end: loadavg() } };
  const la = (l: number[]) => l.map((x) => x.toFixed(1)).join(' ');
  console.log(
    `\nweft bench ${started.toISOString()} (${machine.cpus} x ${machine.cpu}, kernel ${machine.kernel}, load average ${la(loadAtStart)} at start, ${la(machine.loadavg.end)} at end${values.quick ? ', quick' : ''})\n`,
  );
  console.log(renderTable(results));
  for (const f of results) {
    for (const n of f.notes) console.log(`  [${f.id}] ${n}`);
  }
  const out = values.out ?? join(root, 'bench', 'results', `${started.toISOString().replace(/[:.]/g, '-')}.json`);
  mkdirSync(join(out, '..'), { recursive: true });
  writeFileSync(out, `${JSON.stringify({ started: started.toISOString(), quick: values.quick, machine, figures: results }, null, 2)}\n`);
  console.log(`\nwrote ${out}`);
}

main().catch((err) => {
  console.error(`bench: ${(err as Error).message}`);
  process.exit(1);
});

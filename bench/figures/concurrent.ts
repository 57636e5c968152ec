/**
 * Figure 2: 100 ADDs started at the same instant, then 100 DELs, weft vs bridge + host-local.
 * Wall time of each burst, plus correctness: every ADD succeeded, no address handed out twice,
 * and afterwards no allocation file and no veth left behind.
 */
import { readdirSync } from 'node:fs';
import { join } from 'node:path';
import { BenchScope, eventually, ipJson } from '../lib/scope.ts';
import { callCniBatch, resultIp, type CniCall } from '../lib/cni.ts';
import { bins, missing } from '../lib/paths.ts';
import { round, summarize } from '../lib/stats.ts';
import { unavailable, type BenchContext, type Figure, type Row } from '../lib/report.ts';
import { probe, twoNodes, verifyAdd } from './add-del.ts';

/** Allocation files (named after an IPv4 address) anywhere under `dir`. */
function allocations(dir: string): string[] {
  const found: string[] = [];
  const walk = (d: string) => {
    let entries;
    try {
      entries = readdirSync(d, { withFileTypes: true });
    } catch {
      return;
    }
    for (const e of entries) {
      if (e.isDirectory()) walk(join(d, e.name));
      else if (/^\d+\.\d+\.\d+\.\d+$/.test(e.name)) found.push(join(d, e.name));
    }
  };
  walk(dir);
  return found;
}

interface Burst {
  name: string;
  addWallMs: number;
  delWallMs: number;
  addFailed: number;
  delFailed: number;
  duplicates: number;
  wrongAddr: number;
  leakedAllocations: number;
  leakedVeths: number;
  addLatency: ReturnType<typeof summarize>;
  firstError?: string;
  /** Wall-clock ms (Date.now()) from the first ADD's fork to the last DEL's exit. */
  window: { start: number; end: number };
}

async function burst(scope: BenchScope, o: { name: string; plugin: string; nodeNs: string; config: object; store: string; pods: number }): Promise<Burst> {
  const pods = Array.from({ length: o.pods }, () => scope.netns(`c${o.name}`));
  const calls = (command: 'ADD' | 'DEL'): CniCall[] => pods.map((podNs, i) => ({ plugin: o.plugin, command, containerId: `conc-${o.name}-${i}`, podNs, nodeNs: o.nodeNs, config: o.config }));
  const start = Date.now();
  const add = await callCniBatch(calls('ADD'), scope.tmpdir(`add${o.name}`));
  const failed = add.calls.filter((c) => c.code !== 0);
  const ips = add.calls.filter((c) => c.code === 0).map((c) => resultIp(c.result));
  let wrongAddr = 0;
  add.calls.forEach((c, i) => {
    if (c.code !== 0) return;
    try {
      verifyAdd('', c.result, pods[i]);
    } catch {
      wrongAddr++;
    }
  });
  const del = await callCniBatch(calls('DEL'), scope.tmpdir(`del${o.name}`));
  const end = Date.now();
  const delFailed = del.calls.filter((c) => c.code !== 0);
  // weftd's DELs reply once their veths are down; the kernel's unregistration of the last
  // batch may still run: a leak is what is left a second later.
  const veths = () => ipJson(o.nodeNs, 'link', 'show', 'type', 'veth').length;
  await eventually(() => veths() === 0, 1000, 10);
  return {
    name: o.name,
    addWallMs: round(add.wallMs),
    delWallMs: round(del.wallMs),
    addFailed: failed.length,
    delFailed: delFailed.length,
    duplicates: ips.length - new Set(ips).size,
    wrongAddr,
    leakedAllocations: allocations(o.store).length,
    leakedVeths: veths(),
    addLatency: summarize(add.calls.map((c) => c.ms)),
    firstError: (failed[0] ?? delFailed[0])?.stdout.trim().slice(0, 300),
    window: { start, end },
  };
}

export async function figConcurrent(
  ctx: BenchContext,
  opts: { weftPlugin?: string; id?: string; title?: string; serve?: (scope: BenchScope, nodeNs: string, dir: string) => Promise<object> } = {},
): Promise<Figure> {
  const id = opts.id ?? 'concurrent';
  const title = opts.title ?? '100 concurrent ADDs, then 100 DELs';
  const plugin = opts.weftPlugin ?? bins.weft;
  const why = missing(plugin) ?? missing(bins.bridge, 'apt-get install containernetworking-plugins');
  if (why) return unavailable(id, title, why);
  const pods = ctx.quick ? 30 : 100;
  const scope = new BenchScope();
  try {
    const { w, r } = await twoNodes(scope, opts.serve);
    const [wNode, rNode, wDir, rDir, wConf, rConf] = [w.nodeNs, r.nodeNs, w.dir, r.dir, w.config, r.config];
    // Warm both up (bridge created, page cache filled) so the burst measures steady state.
    const weftWhy = await probe(scope, { name: 'w', plugin, nodeNs: wNode, config: wConf, add: [], del: [] });
    await probe(scope, { name: 'r', plugin: bins.bridge, nodeNs: rNode, config: rConf, add: [], del: [] });
    ctx.log(`  ${pods} pods per side`);
    const ref = await burst(scope, { name: 'r', plugin: bins.bridge, nodeNs: rNode, config: rConf, store: rDir, pods });
    const weft = weftWhy ? undefined : await burst(scope, { name: 'w', plugin, nodeNs: wNode, config: wConf, store: wDir, pods });
    const zero = (metric: string, w: number | undefined, r: number): Row => ({
      metric,
      unit: '',
      weft: w ?? null,
      ref: r,
      refName: 'bridge+host-local',
      target: '0',
      met: w === undefined ? undefined : w === 0,
    });
    const rows: Row[] = [
      { metric: `${pods} ADDs wall`, unit: 'ms', weft: weft?.addWallMs ?? null, ref: ref.addWallMs, refName: 'bridge+host-local', target: '<= 1.00x', met: weft && weft.addWallMs <= ref.addWallMs },
      { metric: `${pods} DELs wall`, unit: 'ms', weft: weft?.delWallMs ?? null, ref: ref.delWallMs, refName: 'bridge+host-local', target: '<= 1.00x', met: weft && weft.delWallMs <= ref.delWallMs },
      zero('failed ADD/DEL calls', weft && weft.addFailed + weft.delFailed, ref.addFailed + ref.delFailed),
      zero('duplicate addresses', weft?.duplicates, ref.duplicates),
      zero('pods without their address', weft?.wrongAddr, ref.wrongAddr),
      zero('allocations left after DEL', weft?.leakedAllocations, ref.leakedAllocations),
      zero('veths left 1 s after DEL', weft?.leakedVeths, ref.leakedVeths),
    ];
    const notes = [
      ...(weftWhy ? [`weft not measured: ${weftWhy}`] : []),
      ...[weft, ref].filter((b) => b?.firstError).map((b) => `${b!.name === 'w' ? 'weft' : 'ref'} first error: ${b!.firstError}`),
      'all calls of a burst forked at once by one cnitime process; wall = first fork to last exit',
    ];
    return { id, title, available: true, rows, notes, details: { pods, weft, ref } };
  } catch (err) {
    return unavailable(id, title, (err as Error).message);
  } finally {
    scope.cleanupSync();
  }
}

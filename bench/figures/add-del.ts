/**
 * Figure 1: pod ADD and DEL latency, weft vs bridge + host-local on the same subnet, each in its
 * own node namespace, calls interleaved (weft, ref, ref, weft, ...) so machine noise hits both.
 */
import { BenchScope, eventually, ipJson, sh } from '../lib/scope.ts';
import { callCni, expectOk, resultIp, spawnBaseline, type CniCall } from '../lib/cni.ts';
import { refConfig, weftConfig, writeSubnetEnv } from '../lib/confs.ts';
import { bins, missing } from '../lib/paths.ts';
import { median, round, summarize } from '../lib/stats.ts';
import { unavailable, type BenchContext, type Figure, type Row } from '../lib/report.ts';

const SUBNET = '198.18.0.0/24';

interface Side {
  name: string;
  plugin: string;
  nodeNs: string;
  config: object;
  add: number[];
  del: number[];
}

/** Runs ADD then DEL for `pods` pods on each side, interleaved; returns the per-side samples. */
export async function addDelSamples(scope: BenchScope, sides: Side[], pods: number, log: (m: string) => void): Promise<void> {
  const podNs = new Map<Side, string[]>(sides.map((s) => [s, Array.from({ length: pods + 1 }, () => scope.netns(`pod${s.name}`))]));
  const call = (s: Side, i: number, command: 'ADD' | 'DEL'): CniCall => ({
    plugin: s.plugin,
    command,
    containerId: `bench-${s.name}-${i}`,
    podNs: podNs.get(s)![i],
    nodeNs: s.nodeNs,
    config: s.config,
  });
  const order = (i: number) => (i % 2 === 0 ? sides : [...sides].reverse());
  for (let i = 0; i < pods + 1; i++) {
    for (const s of order(i)) {
      const o = expectOk(`${s.name} ADD pod ${i}`, await callCni(call(s, i, 'ADD')));
      verifyAdd(`${s.name} ADD pod ${i}`, o.result, podNs.get(s)![i]);
      if (i > 0) s.add.push(o.ms); // pod 0 warms up: creates the bridge, fills page cache
    }
    if (i % 10 === 0) log(`  add ${i}/${pods}`);
  }
  for (let i = 0; i < pods + 1; i++) {
    for (const s of order(i)) {
      const o = expectOk(`${s.name} DEL pod ${i}`, await callCni(call(s, i, 'DEL')));
      // weftd replies once the veth is down and finishes its deletion right after (the kernel's
      // RCU wait): gone within a moment, not necessarily when the reply arrives
      if (!(await eventually(() => !ipJson(podNs.get(s)![i], 'link', 'show').some((l) => l.ifname === 'eth0'), 1000, 10))) throw new Error(`${s.name} DEL pod ${i}: eth0 still in the pod 1 s later`);
      if (i > 0) s.del.push(o.ms);
    }
  }
}

export async function figAddDel(
  ctx: BenchContext,
  opts: { weftPlugin?: string; id?: string; title?: string; serve?: (scope: BenchScope, nodeNs: string, dir: string) => Promise<object>; target?: number } = {},
): Promise<Figure> {
  const id = opts.id ?? 'add';
  const title = opts.title ?? 'pod ADD/DEL latency (standalone weft binary)';
  const plugin = opts.weftPlugin ?? bins.weft;
  const why = missing(plugin) ?? missing(bins.bridge, 'apt-get install containernetworking-plugins');
  if (why) return unavailable(id, title, why);
  const pods = ctx.quick ? 10 : 30;
  const scope = new BenchScope();
  try {
    const { w, r } = await twoNodes(scope, opts.serve);
    const wNode = w.nodeNs;
    const weft: Side = { name: 'w', plugin, nodeNs: w.nodeNs, config: w.config, add: [], del: [] };
    const ref: Side = { name: 'r', plugin: bins.bridge, nodeNs: r.nodeNs, config: r.config, add: [], del: [] };
    const base: number[] = [];
    for (let i = 0; i < 10; i++) base.push(await spawnBaseline(wNode));
    const weftWhy = await probe(scope, weft);
    await addDelSamples(scope, weftWhy ? [ref] : [weft, ref], pods, ctx.log);
    const leftover = weftWhy ? '' : sh('ip', ['-n', wNode, '-o', 'link', 'show', 'type', 'veth']).trim();
    // The hardening issue's targets: the standalone binary within 3x of the reference, the fast path within 0.5x.
    const target = opts.target ?? 3;
    const rows: Row[] = [row('ADD median', median(weft.add), median(ref.add), target), row('DEL median', median(weft.del), median(ref.del), target)];
    return {
      id,
      title,
      available: true,
      rows,
      notes: [
        ...(weftWhy ? [`weft not measured: ${weftWhy}`] : []),
        `${pods} pods per side, interleaved; as a runtime sees them: fork to exit, timed by bench/lib/cnitime.c (fork+exec of /bin/true: median ${round(median(base))} ms)`,
        ...(leftover ? [`weft left veths behind after DEL: ${leftover.split('\n').length}`] : []),
      ],
      details: {
        pods,
        weft: { add: summarize(weft.add), del: summarize(weft.del), samples: weft },
        ref: { add: summarize(ref.add), del: summarize(ref.del), samples: ref },
        spawnBaseline: summarize(base),
      },
    };
  } catch (err) {
    return unavailable(id, title, (err as Error).message);
  } finally {
    scope.cleanupSync();
  }
}

function row(metric: string, w: number, r: number, ratio: number): Row {
  const target = `<= ${ratio.toFixed(2)}x`;
  if (Number.isNaN(w)) return { metric, unit: 'ms', weft: null, ref: round(r), refName: 'bridge+host-local', target };
  return { metric, unit: 'ms', weft: round(w), ref: round(r), refName: 'bridge+host-local', target, met: w <= r * ratio };
}

/** One untimed ADD + DEL: undefined when the plugin works, else why not. */
/** A node namespace per side with the same subnet: weft's (optionally served) and the reference's. */
export async function twoNodes(
  scope: BenchScope,
  serve?: (scope: BenchScope, nodeNs: string, dir: string) => Promise<object>,
): Promise<{ w: { nodeNs: string; dir: string; config: object }; r: { nodeNs: string; dir: string; config: object } }> {
  const wNode = scope.netns('nodew');
  const rNode = scope.netns('noder');
  const wDir = scope.tmpdir('w');
  const rDir = scope.tmpdir('r');
  const subnetFile = writeSubnetEnv(wDir, SUBNET);
  const extra = serve ? await serve(scope, wNode, wDir) : {};
  return { w: { nodeNs: wNode, dir: wDir, config: weftConfig(wDir, subnetFile, extra) }, r: { nodeNs: rNode, dir: rDir, config: refConfig(rDir, SUBNET) } };
}

export async function probe(scope: BenchScope, s: Side): Promise<string | undefined> {
  const pod = scope.netns('probe');
  const call: CniCall = { plugin: s.plugin, command: 'ADD', containerId: `probe-${s.name}`, podNs: pod, nodeNs: s.nodeNs, config: s.config };
  try {
    verifyAdd('probe ADD', expectOk('probe ADD', await callCni(call)).result, pod);
    expectOk('probe DEL', await callCni({ ...call, command: 'DEL' }));
    return undefined;
  } catch (err) {
    return (err as Error).message;
  }
}

/** The independent check that an ADD did its job: the pod's eth0 carries the reported address. */
export function verifyAdd(what: string, result: any, podNs: string): string {
  const ip = resultIp(result);
  if (!ip) throw new Error(`${what}: no IP in the result: ${JSON.stringify(result)?.slice(0, 300)}`);
  const eth0 = ipJson(podNs, 'addr', 'show', 'dev', 'eth0')[0];
  if (!eth0?.addr_info?.some((a: any) => a.local === ip)) throw new Error(`${what}: eth0 in the pod does not have ${ip}`);
  return ip;
}

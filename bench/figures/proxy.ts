/**
 * Figure: the Service proxy (weftd --proxy, src/proxy) at 1000 Services x 10 endpoints.
 *
 * Layout: lab/topology.ts in Kubernetes mode (API server on etcd in the control-plane
 * namespace, etcd data in /dev/shm), two nodes: n1 runs weftd with `--proxy`, n2 without; a
 * client pod on n1 and an echo + iperf3 server pod on n2. Objects are written through the API
 * by bench/lib/kube-writer.ts (in the control-plane namespace, kept-alive connections).
 *
 * (a) One EndpointSlice change at a time (an endpoint replaced by a new address, merge PATCH)
 *     -> the new endpoint's DNAT rule committed in n1's kernel, seen by `nft monitor rules`
 *     (the kernel's own notification of the committed transaction); p50/p99 from the API
 *     request. The table is checked afterwards: every new endpoint present, every replaced one
 *     gone. weftd's sync histogram gives the time spent inside the sync.
 * (b) Full sync of the whole table (weftd's log line "full sync ... ms", at a restart and then
 *     every 10 s) against a bare `nft -f` of the same ruleset text (src/proxy/ruleset.ts
 *     buildRuleset + fullScript from the same objects, listed from the API) replacing the table
 *     in a scratch namespace, interleaved. The scratch table is compared with n1's (handles
 *     aside) to show it is the same ruleset.
 * (c) From the client pod: TCP connections per second (connect, read the echo reply, close; one
 *     after another, the ClusterIP and the pod IP taking turns connection by connection in one
 *     loop; each side's connections over their summed times, pooled over the rounds) and iperf3
 *     throughput, through the ClusterIP vs straight to the pod IP, interleaved rounds.
 * (d) weftd's RSS on n1 with the 1000 Services, against n2's weftd (no proxy).
 */
import { execFile } from 'node:child_process';
import { readFileSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { createInterface } from 'node:readline';
import { promisify } from 'node:util';
import { Topology, destroyTopologySync, type LabNode } from '../../lab/topology.ts';
import { parseCIDR } from '../../src/ip/ipv4.ts';
import { selectEndpoints } from '../../src/proxy/endpoints.ts';
import { NftShell, tableFingerprint } from '../../src/proxy/nft.ts';
import { NfnlExecutor } from '../../src/proxy/nfnl.ts';
import { buildRuleset, fullScript, partialScript, refreshScript, rulesetNames } from '../../src/proxy/ruleset.ts';
import { validateEndpointSlice, validateService, type EndpointSlice, type Service } from '../../src/proxy/types.ts';
import { BenchScope, sh, sleep } from '../lib/scope.ts';
import { bins, missing, root } from '../lib/paths.ts';
import { rssMiB } from '../lib/rig.ts';
import { median, msSince, percentile, round, summarize } from '../lib/stats.ts';
import { unavailable, type BenchContext, type Figure, type Row } from '../lib/report.ts';
import { apiBatch, apiOne, startKubeWriter } from './kpeers.ts';

const execFileP = promisify(execFile);
const NFT = '/usr/sbin/nft';
const SLICES = '/apis/discovery.k8s.io/v1/namespaces/default/endpointslices';
const SERVICES = '/api/v1/namespaces/default/services';

/** Endpoint j of synthetic Service k: 198.18.10.1 upwards, 250 per /24 (no node's subnet). */
function epIP(n: number, base = 10): string {
  return `198.18.${base + Math.floor(n / 250)}.${1 + (n % 250)}`;
}

function slice(name: string, service: string, ips: string[], ports: Array<{ name: string; port: number }>, node = 'n2'): object {
  return {
    apiVersion: 'discovery.k8s.io/v1',
    kind: 'EndpointSlice',
    metadata: { name, namespace: 'default', labels: { 'kubernetes.io/service-name': service } },
    addressType: 'IPv4',
    endpoints: ips.map((ip) => ({ addresses: [ip], conditions: { ready: true, serving: true, terminating: false }, nodeName: node })),
    ports: ports.map((p) => ({ ...p, protocol: 'TCP' })),
  };
}

function nsn(ns: string, cmd: string, args: string[], opts: { input?: string } = {}): string {
  return sh('nsenter', [`--net=/run/netns/${ns}`, '--', cmd, ...args], opts);
}

/** Milliseconds `fn` (a synchronous command) takes. */
function timed(fn: () => unknown): number {
  const t0 = process.hrtime.bigint();
  fn();
  return msSince(t0);
}

function metric(text: string, name: string): number | undefined {
  const m = new RegExp(`^${name.replace(/[{}"=]/g, (c) => `\\${c}`)} ([\\d.e+-]+)$`, 'm').exec(text);
  return m ? Number(m[1]) : undefined;
}

async function iperf(serverNs: string, bindIp: string, clientNs: string, target: string, seconds: number): Promise<number> {
  const server = execFile('nsenter', [`--net=/run/netns/${serverNs}`, '--', 'iperf3', '-s', '-1', '-B', bindIp], { timeout: (seconds + 30) * 1000 });
  try {
    await sleep(300);
    const { stdout } = await execFileP('nsenter', [`--net=/run/netns/${clientNs}`, '--', 'iperf3', '-c', target, '-t', String(seconds), '-J'], { timeout: (seconds + 20) * 1000, maxBuffer: 16 << 20 });
    const bps = JSON.parse(stdout).end?.sum_received?.bits_per_second;
    if (typeof bps !== 'number') throw new Error(`iperf3 gave no result: ${stdout.slice(0, 300)}`);
    return bps / 1e9;
  } finally {
    if (server.exitCode === null) server.kill('SIGKILL');
  }
}

/**
 * Connections per second to each of `targets` (host, port), measured in one loop that takes
 * them in turns, connection by connection (bench/lib/conn-loop.cjs): both sides of a ratio see
 * the same moments of the machine's load.
 */
async function connRates(
  clientNs: string,
  targets: Array<[string, number]>,
  count: number,
  portOffset: number,
): Promise<{ perSec: number[]; ok: number[]; seconds: number[]; spread: unknown[]; errors: number }> {
  const { stdout } = await execFileP(
    'nsenter',
    [`--net=/run/netns/${clientNs}`, '--', process.execPath, join(root, 'bench', 'lib', 'conn-loop.cjs'), String(count), String(portOffset), ...targets.map(([h, p]) => `${h}:${p}`)],
    {
      timeout: 30_000 + count * targets.length * 3000,
    },
  );
  const r = JSON.parse(stdout) as { targets: Array<{ ok: number; errors: number; ns: string; us: unknown }> };
  return {
    perSec: r.targets.map((x) => x.ok / (Number(x.ns) / 1e9)),
    ok: r.targets.map((x) => x.ok),
    seconds: r.targets.map((x) => Number(x.ns) / 1e9),
    spread: r.targets.map((x) => x.us),
    errors: r.targets.reduce((n, x) => n + x.errors, 0),
  };
}

/** Number of elements in map `name` of `ip weft-proxy` in `ns` (0 when absent). */
function mapSize(ns: string, name: string): number {
  try {
    const doc = JSON.parse(nsn(ns, NFT, ['-j', 'list', 'map', 'ip', 'weft-proxy', name])) as { nftables: Array<{ map?: { elem?: unknown[] } }> };
    return doc.nftables.find((o) => o.map)?.map?.elem?.length ?? 0;
  } catch {
    return 0;
  }
}

/** Phase times of the syncer's debug lines ("proxy sync {...}") in `text`, for one mode. */
function phases(text: string, mode: 'full' | 'partial'): { buildMs: number[]; applyMs: number[]; afterMs: number[]; via: Record<string, number> } {
  const out = { buildMs: [] as number[], applyMs: [] as number[], afterMs: [] as number[], via: {} as Record<string, number> };
  for (const m of text.matchAll(/proxy sync (\{.*\})$/gm)) {
    const o = JSON.parse(m[1]!) as Record<string, unknown>;
    if (o.mode !== mode || typeof o.buildMs !== 'number') continue;
    const via = String(o.via ?? 'nft -f');
    out.via[via] = (out.via[via] ?? 0) + 1;
    out.buildMs.push(o.buildMs);
    out.applyMs.push(o.applyMs as number);
    out.afterMs.push(o.afterMs as number);
  }
  return out;
}

/** The full-sync log lines after `offset`: ms of each. */
function fullSyncs(node: LabNode, offset: number): number[] {
  const text = readFileSync(node.logFile, 'utf8').slice(offset);
  return [...text.matchAll(/proxy: full sync, (\d+) service port\(s\), (\d+) ms/g)].map((m) => Number(m[2]));
}

export async function figProxy(ctx: BenchContext): Promise<Figure> {
  const id = 'proxy';
  const title = 'Service proxy: 1000 Services x 10 endpoints';
  const why = missing(bins.weftd) ?? missing(bins.weft) ?? missing(NFT, 'apt-get install nftables') ?? missing('/usr/bin/iperf3', 'apt-get install iperf3');
  if (why) return unavailable(id, title, why);
  const nSvc = ctx.quick ? 200 : 1000;
  const nEp = 10;
  const changes = ctx.quick ? 30 : 100;
  const fulls = ctx.quick ? 2 : 6;
  const rounds = ctx.quick ? 1 : 7;
  const conns = ctx.quick ? 300 : 1000;
  const seconds = ctx.quick ? 2 : 4;
  const scope = new BenchScope();
  try {
    const topo = await Topology.create({ workDir: scope.tmpdir('proxy', '/dev/shm'), prefix: `wt-bench-${process.pid}`, mode: 'kube' });
    scope.defer(() => destroyTopologySync(topo.state));
    const n1 = await topo.addNode({ args: ['--proxy'] });
    const n2 = await topo.addNode();
    const p1 = await topo.addPod(n1.name);
    const p2 = await topo.addPod(n2.name);
    await topo.startEcho(p2.name, { tcp: [8080], udp: [] });
    const writer = await startKubeWriter(scope, topo);

    // The Service the traffic goes through: one endpoint, the server pod.
    const echo = JSON.parse(
      (
        await apiOne(writer, {
          method: 'POST',
          path: SERVICES,
          body: {
            apiVersion: 'v1',
            kind: 'Service',
            metadata: { name: 'bench-echo' },
            spec: {
              ports: [
                { name: 'echo', port: 8080, targetPort: 8080 },
                { name: 'iperf', port: 5201, targetPort: 5201 },
              ],
            },
          },
        })
      ).body,
    );
    const cip = echo.spec.clusterIP as string;
    await apiOne(writer, {
      method: 'POST',
      path: SLICES,
      body: slice(
        'bench-echo-1',
        'bench-echo',
        [p2.ip],
        [
          { name: 'echo', port: 8080 },
          { name: 'iperf', port: 5201 },
        ],
      ),
    });

    // 1000 Services, then their slices (10 endpoints each), all through the API.
    ctx.log(`  creating ${nSvc} Services and ${nSvc} EndpointSlices`);
    const eps: string[][] = Array.from({ length: nSvc }, (_, k) => Array.from({ length: nEp }, (_, j) => epIP(k * nEp + j)));
    const svcReqs = eps.map((_, k) => ({
      method: 'POST',
      path: SERVICES,
      body: { apiVersion: 'v1', kind: 'Service', metadata: { name: `bench-${k}` }, spec: { ports: [{ port: 80, targetPort: 8080 }] } },
    }));
    const sliceReqs = eps.map((ips, k) => ({ method: 'POST', path: SLICES, body: slice(`bench-${k}-1`, `bench-${k}`, ips, [{ name: '', port: 8080 }]) }));
    const b0 = await apiBatch(writer, svcReqs, 16);
    const b1 = await apiBatch(writer, sliceReqs, 16);
    const wantPorts = nSvc + 2;
    const bulkEnd = Date.now() + 120_000;
    while (mapSize(n1.netns, 'service-ips') < wantPorts && Date.now() < bulkEnd) await sleep(100);
    const bulkMs = msSince(b0.t0);
    const bulkOk = mapSize(n1.netns, 'service-ips') === wantPorts;
    if (!bulkOk) throw new Error(`n1's service-ips map has ${mapSize(n1.netns, 'service-ips')} of ${wantPorts} elements after 120 s`);
    await sleep(2000); // let the heap settle
    const rss = rssMiB(n1.pid!);
    const rssRef = rssMiB(n2.pid!);

    // (a) EndpointSlice change -> DNAT rule committed in n1's kernel.
    ctx.log(`  ${changes} EndpointSlice changes`);
    const seen = new Map<string, bigint>();
    const mon = scope.spawn(NFT, ['monitor', 'rules'], { ns: n1.netns, stdio: ['ignore', 'pipe', 'ignore'] });
    createInterface({ input: mon.stdout! }).on('line', (line) => {
      const m = /dnat to ([\d.]+):8080/.exec(line);
      if (m && !seen.has(m[1])) seen.set(m[1], process.hrtime.bigint());
    });
    await sleep(500);
    const m0 = (await topo.http(n1.name, '/metrics')).body;
    const changeLog0 = readFileSync(n1.logFile, 'utf8').length;
    const lat: number[] = [];
    const replaced: string[] = [];
    const added: string[] = [];
    for (let c = 0; c < changes; c++) {
      const k = (c * 37) % nSvc;
      const fresh = epIP(c, 60);
      const j = c % nEp;
      replaced.push(eps[k]![j]!);
      added.push(fresh);
      eps[k]![j] = fresh;
      const body = { endpoints: (slice('x', 'x', eps[k]!, []) as { endpoints: unknown[] }).endpoints };
      const r = await apiOne(writer, { method: 'PATCH', path: `${SLICES}/bench-${k}-1`, body, contentType: 'application/merge-patch+json' });
      const end = Date.now() + 10_000;
      while (!seen.has(fresh) && Date.now() < end) await sleep(1);
      const t = seen.get(fresh);
      if (t === undefined) throw new Error(`the rule for new endpoint ${fresh} of bench-${k} was not committed within 10 s`);
      lat.push(Number(t - r.t0) / 1e6);
      await sleep(30 + (c % 5) * 10);
    }
    await sleep(500);
    const m1 = (await topo.http(n1.name, '/metrics')).body;
    const partialPhases = phases(readFileSync(n1.logFile, 'utf8').slice(changeLog0), 'partial');
    const table = nsn(n1.netns, NFT, ['list', 'table', 'ip', 'weft-proxy']);
    const missingNew = added.filter((ip) => !table.includes(`dnat to ${ip}:8080`));
    const leftOld = replaced.filter((ip) => table.includes(`dnat to ${ip}:8080`));
    const dSum = (metric(m1, 'weftd_proxy_sync_duration_seconds_sum') ?? NaN) - (metric(m0, 'weftd_proxy_sync_duration_seconds_sum') ?? NaN);
    const dCount = (metric(m1, 'weftd_proxy_sync_duration_seconds_count') ?? NaN) - (metric(m0, 'weftd_proxy_sync_duration_seconds_count') ?? NaN);
    const rssAfter = rssMiB(n1.pid!);
    // The monitor's listener makes the kernel build a notification for every object a commit
    // touches (90k for a full sync here): it must not weigh on weftd's full syncs below, which
    // the reference (in a namespace nobody listens to) would not pay.
    mon.kill('SIGKILL');

    // (c) ClusterIP vs pod IP from the client pod on n1 to the server pod on n2.
    ctx.log(`  traffic: ${rounds} round(s)`);
    const t = { cipConn: [] as number[], podConn: [] as number[], cipGbps: [] as number[], podGbps: [] as number[], nodeCipConn: [] as number[], nodePodConn: [] as number[], errors: 0 };
    // every round's connections and their summed times, per side: the pooled rates
    const pool = { cip: { ok: 0, s: 0 }, pod: { ok: 0, s: 0 } };
    // each round's connection times per side (us: p50, p90, p99, max, over 10 ms), in details
    const spreads: Array<Record<string, unknown>> = [];
    for (let r = 0; r < rounds; r++) {
      const order: Array<'cip' | 'pod'> = r % 2 ? ['pod', 'cip'] : ['cip', 'pod'];
      // one loop, the two targets taking turns; which goes first alternates by round
      const turns = (ns: string, cipOut: number[], podOut: number[], pooled?: typeof pool) =>
        connRates(
          ns,
          order.map((w) => [w === 'cip' ? cip : p2.ip, 8080]),
          conns,
          // fresh source ports every round (conn-loop.cjs says why)
          r * (conns + 1),
        ).then((c) => {
          t.errors += c.errors;
          spreads.push({ round: r, from: ns, ...Object.fromEntries(order.map((w, i) => [w, c.spread[i]])) });
          for (const [i, w] of order.entries()) {
            (w === 'cip' ? cipOut : podOut).push(c.perSec[i]!);
            if (pooled) {
              pooled[w].ok += c.ok[i]!;
              pooled[w].s += c.seconds[i]!;
            }
          }
        });
      await turns(p1.netns, t.cipConn, t.podConn, pool);
      for (const w of order) (w === 'cip' ? t.cipGbps : t.podGbps).push(await iperf(p2.netns, p2.ip, p1.netns, w === 'cip' ? cip : p2.ip, seconds));
      // The same loop from n1 itself: its packets leave through the output hooks, not across
      // the pod bridge, so this tells br_netfilter's share from the DNAT's.
      await turns(n1.netns, t.nodeCipConn, t.nodePodConn);
    }

    // (b) Full syncs: restart n1's weftd with a 10 s full-sync interval; a bare nft -f of the
    // same ruleset in a scratch namespace after each.
    ctx.log(`  ${fulls} full syncs`);
    const [svcList, sliceList] = await Promise.all([apiOne(writer, { method: 'GET', path: '/api/v1/services' }), apiOne(writer, { method: 'GET', path: '/apis/discovery.k8s.io/v1/endpointslices' })]);
    const services = (JSON.parse(svcList.body).items as unknown[]).map(validateService).flatMap((v) => (v.ok ? [v.value as Service] : []));
    const slices = (JSON.parse(sliceList.body).items as unknown[]).map(validateEndpointSlice).flatMap((v) => (v.ok ? [v.value as EndpointSlice] : []));
    const state = selectEndpoints(services, slices, { nodeName: n1.name });
    const script = fullScript(buildRuleset(state, { clusterCIDR: parseCIDR(topo.state.podNetwork) }));
    const scriptFile = join(scope.tmpdir('proxy-script'), 'ruleset.nft');
    writeFileSync(scriptFile, script);
    // what weftd's full sync sends for the same ruleset over a table that holds it (the in-place
    // rewrite, ordered for the kernel): a diagnostic, not the reference
    const rsRef = buildRuleset(state, { clusterCIDR: parseCIDR(topo.state.podNetwork) });
    const refreshFile = join(scope.tmpdir('proxy-script'), 'refresh.nft');
    writeFileSync(refreshFile, refreshScript(rsRef, rulesetNames(rsRef)));
    const scratch = scope.netns('nft');
    nsn(scratch, NFT, ['-f', scriptFile]); // the table exists from here on: each timed run replaces it, as a full sync does

    // Where a partial sync's apply goes, against the whole table in the scratch namespace: the
    // same one-endpoint change (and back) as one netlink batch (NfnlExecutor, weftd's first
    // choice), as `nft -f` processes and through one kept `nft -i` (NftShell, its fallback),
    // interleaved; and `nft -f` of a command that loads no cache of this table (process
    // start-up and the commit alone).
    const rsA = buildRuleset(state, { clusterCIDR: parseCIDR(topo.state.podNetwork) });
    const moved = state.ports.map((sp, i) => {
      if (i !== Math.floor(state.ports.length / 2) || !sp.clusterEndpoints.length) return sp;
      const e = { ...sp.clusterEndpoints[0]!, ip: '198.18.99.1' };
      return { ...sp, clusterEndpoints: [e, ...sp.clusterEndpoints.slice(1)], allEndpoints: [e, ...sp.allEndpoints.slice(1)] };
    });
    const rsB = buildRuleset({ ...state, ports: moved }, { clusterCIDR: parseCIDR(topo.state.podNetwork) });
    const fwd = partialScript(rsA, rsB);
    const back = partialScript(rsB, rsA);
    const applyCost = { nftF: [] as number[], shell: [] as number[], nfnl: [] as number[], noCache: [] as number[], lines: fwd.split('\n').length - 1 };
    const shell = new NftShell({ netns: `/run/netns/${scratch}`, nftBin: NFT });
    const nfnl = new NfnlExecutor({ netns: `/run/netns/${scratch}` });
    try {
      for (let i = 0; i < (ctx.quick ? 4 : 10); i++) {
        for (const s of [fwd, back]) applyCost.nftF.push(timed(() => nsn(scratch, NFT, ['-f', '-'], { input: s })));
        for (const s of [fwd, back]) {
          const t0 = process.hrtime.bigint();
          await shell.apply(s);
          applyCost.shell.push(msSince(t0));
        }
        for (const s of [fwd, back]) {
          const t0 = process.hrtime.bigint();
          const r = await nfnl.apply(s);
          if (!r.applied) throw new Error(`the netlink executor did not take the partial script: ${r.reason}`);
          applyCost.nfnl.push(msSince(t0));
        }
        applyCost.noCache.push(timed(() => nsn(scratch, NFT, ['-f', '-'], { input: 'add table ip weft-bench-empty\n' })));
      }
    } finally {
      shell.close();
      nfnl.close();
    }
    nsn(scratch, NFT, ['-f', scriptFile]);
    const logOffset = readFileSync(n1.logFile, 'utf8').length;
    await topo.stopDaemon(n1.name);
    const restart0 = process.hrtime.bigint();
    await topo.startDaemon(n1.name, { args: ['--proxy', '--proxy-full-sync-interval', '10s'] });
    const refApply: number[] = [];
    const refRefresh: number[] = [];
    const refList: number[] = [];
    const refApplyN1: number[] = [];
    let got = 0;
    const fullEnd = Date.now() + fulls * 10_000 + 60_000;
    let firstFullMs: number | undefined;
    while (got < fulls && Date.now() < fullEnd) {
      const f = fullSyncs(n1, logOffset);
      if (f.length > got) {
        if (got === 0) firstFullMs = msSince(restart0);
        got = f.length;
        await sleep(200);
        refApply.push(timed(() => nsn(scratch, NFT, ['-f', scriptFile])));
        refRefresh.push(timed(() => nsn(scratch, NFT, ['-f', refreshFile])));
        refList.push(timed(() => nsn(scratch, NFT, ['-j', 'list', 'table', 'ip', 'weft-proxy'])));
        // the same text into n1's namespace too (it replaces weftd's table with an identical
        // one): tells the namespace's share (other tables, conntrack) from weftd's
        refApplyN1.push(timed(() => nsn(n1.netns, NFT, ['-f', scriptFile])));
      }
      await sleep(100);
    }
    const weftFull = fullSyncs(n1, logOffset).slice(0, fulls);
    if (weftFull.length < fulls) throw new Error(`only ${weftFull.length} of ${fulls} full syncs logged by n1's weftd`);
    const fp = phases(readFileSync(n1.logFile, 'utf8').slice(logOffset), 'full');
    const fullPhases = { buildMs: fp.buildMs.slice(0, fulls), applyMs: fp.applyMs.slice(0, fulls), afterMs: fp.afterMs.slice(0, fulls) };
    const fpScratch = tableFingerprint(nsn(scratch, NFT, ['-j', 'list', 'table', 'ip', 'weft-proxy']));
    const fpN1 = tableFingerprint(nsn(n1.netns, NFT, ['-j', 'list', 'table', 'ip', 'weft-proxy']));
    const same = fpScratch === fpN1;
    // When they differ, which objects: the first few on each side that the other lacks.
    let tableDiff: { onlyScratch: string[]; onlyN1: string[] } | undefined;
    if (!same) {
      const a = (JSON.parse(fpScratch) as unknown[]).map((o) => JSON.stringify(o));
      const b = (JSON.parse(fpN1) as unknown[]).map((o) => JSON.stringify(o));
      const [sa, sb] = [new Set(a), new Set(b)];
      tableDiff = {
        onlyScratch: a
          .filter((o) => !sb.has(o))
          .slice(0, 5)
          .map((o) => o.slice(0, 400)),
        onlyN1: b
          .filter((o) => !sa.has(o))
          .slice(0, 5)
          .map((o) => o.slice(0, 400)),
      };
    }

    const p50 = percentile(lat, 50);
    const p99 = percentile(lat, 99);
    const wf = median(weftFull);
    const rf = median(refApply);
    // Pooled: all rounds' connections over all their time, per side. The two sides took turns
    // connection by connection, so their totals cover the same moments; the medians of each
    // side's rounds (the row below) can come from different rounds, whose load differs by more
    // than the effect measured.
    const cc = pool.cip.ok / pool.cip.s;
    const pc = pool.pod.ok / pool.pod.s;
    const cg = median(t.cipGbps);
    const pg = median(t.podGbps);
    const rows: Row[] = [
      { metric: `${nSvc} Services + ${nSvc} slices: first API write to all in the kernel`, unit: 'ms', weft: round(bulkMs) },
      { metric: `  API writes of the ${2 * nSvc} objects took`, unit: 'ms', weft: round(Number(b1.t1 - b0.t0) / 1e6) },
      { metric: `slice change: API write to rule in kernel, p50 (n=${lat.length})`, unit: 'ms', weft: round(p50) },
      { metric: `slice change: API write to rule in kernel, p99 (n=${lat.length})`, unit: 'ms', weft: round(p99), target: '< 50 ms', met: p99 < 50 && !missingNew.length && !leftOld.length },
      { metric: '  in-weftd sync time, mean of the syncs meanwhile', unit: 'ms', weft: dCount > 0 ? round((dSum / dCount) * 1000) : null },
      { metric: '  partial sync phases, medians: model + script', unit: 'ms', weft: round(median(partialPhases.buildMs)) },
      { metric: '  ... apply (netlink batch; nft for a script it does not translate)', unit: 'ms', weft: round(median(partialPhases.applyMs)) },
      { metric: '  ... after (read-back, conntrack)', unit: 'ms', weft: round(median(partialPhases.afterMs)) },
      {
        metric: `  scratch table: the ${applyCost.lines}-line partial script, netlink batch vs nft -f, median (n=${applyCost.nfnl.length})`,
        unit: 'ms',
        weft: round(median(applyCost.nfnl)),
        ref: round(median(applyCost.nftF)),
        refName: 'nft -f',
      },
      {
        metric: `  ... the same through the kept nft -i (the fallback) vs nft -f, median (n=${applyCost.shell.length})`,
        unit: 'ms',
        weft: round(median(applyCost.shell)),
        ref: round(median(applyCost.nftF)),
        refName: 'nft -f',
      },
      { metric: '  ... nft -f of a command that loads no cache of the table', unit: 'ms', weft: round(median(applyCost.noCache)) },
      {
        metric: `full sync of ${nSvc} Services vs bare nft -f, median (n=${weftFull.length})`,
        unit: 'ms',
        weft: round(wf),
        ref: round(rf),
        refName: 'nft -f',
        target: '<= 1.5x',
        met: wf / rf <= 1.5 && same,
      },
      { metric: '  full sync phases, medians: model + script', unit: 'ms', weft: round(median(fullPhases.buildMs)) },
      { metric: '  ... nft -f (weftd)', unit: 'ms', weft: round(median(fullPhases.applyMs)), ref: round(rf), refName: 'nft -f' },
      { metric: '  ... bare nft -f of the same text in n1 itself', unit: 'ms', weft: round(median(refApplyN1)), ref: round(rf), refName: 'nft -f' },
      { metric: "  ... bare nft -f of weftd's in-place script (same ruleset) in the scratch namespace", unit: 'ms', weft: round(median(refRefresh)), ref: round(rf), refName: 'nft -f' },
      { metric: '  ... after: read-back and fingerprint', unit: 'ms', weft: round(median(fullPhases.afterMs)), ref: round(median(refList)), refName: 'nft -j list' },
      { metric: '  weftd restart to the first full sync logged', unit: 'ms', weft: firstFullMs === undefined ? null : round(firstFullMs) },
      {
        metric: `TCP connections/s, ClusterIP vs pod IP, pooled over the ${rounds} rounds (${conns} each per round, in turns)`,
        unit: 'conn/s',
        weft: round(cc, 0),
        ref: round(pc, 0),
        refName: 'pod IP',
        target: '>= 0.95x',
        met: cc / pc >= 0.95 && t.errors === 0,
      },
      { metric: "  medians of the rounds' rates", unit: 'conn/s', weft: round(median(t.cipConn), 0), ref: round(median(t.podConn), 0), refName: 'pod IP' },
      { metric: '  median of the per-round ratios', unit: 'x', weft: round(median(t.cipConn.map((x, i) => x / t.podConn[i]!))) },
      { metric: '  the same from node n1 (no pod bridge on the way)', unit: 'conn/s', weft: round(median(t.nodeCipConn), 0), ref: round(median(t.nodePodConn), 0), refName: 'pod IP' },
      { metric: 'iperf3 throughput, ClusterIP vs pod IP', unit: 'Gbit/s', weft: round(cg), ref: round(pg), refName: 'pod IP', target: '>= 0.95x', met: cg / pg >= 0.95 },
      { metric: `weftd RSS with ${nSvc} Services (n1) vs without proxy (n2)`, unit: 'MiB', weft: round(rss, 1), ref: round(rssRef, 1), refName: 'no proxy' },
      { metric: `  weftd RSS after the ${changes} changes`, unit: 'MiB', weft: round(rssAfter, 1) },
    ];
    return {
      id,
      title,
      available: true,
      rows,
      notes: [
        `${nSvc} Services x ${nEp} endpoints (+ the echo Service), created through the lab API server 16 requests in flight; slice change = one endpoint replaced by a new address (merge PATCH), one change at a time, 30-70 ms apart; "in the kernel" = the new DNAT rule's commit notification from nft monitor rules in n1's namespace`,
        `after the changes: ${missingNew.length} new endpoints missing and ${leftOld.length} replaced endpoints left in n1's table`,
        `in-weftd syncs during the changes: ${dCount} (weftd_proxy_sync_duration_seconds), ${round(dSum * 1000)} ms in all; partial syncs applied via: ${
          Object.entries(partialPhases.via)
            .map(([k, v]) => `${k} ${v}`)
            .join(', ') || 'none logged'
        }`,
        `full sync: weftd's "full sync ... ms" log line (build + nft -f of its in-place rewrite), at a restart and then every 10 s; reference: nft -f of the same ruleset text (fullScript, ${script.split('\n').length} lines) replacing the table in a scratch namespace, right after each; scratch table ${same ? 'equals' : 'DIFFERS FROM'} n1's table (handles aside)`,
        `traffic: client pod on n1, echo/iperf3 server pod on n2 (VXLAN between them), ${rounds} round(s); connections: one loop per round of ${conns} sequential connect + read + close to each target, the targets taking turns connection by connection (A B, B A, ...; which starts alternates by round), each target's rate = its connections / the sum of their times, pooled over the rounds for the target row; iperf3 ${seconds} s per target, interleaved, medians; ${t.errors} failed connections`,
      ],
      details: {
        nSvc,
        nEp,
        bulkMs,
        apiWritesMs: Number(b1.t1 - b0.t0) / 1e6,
        change: { ...summarize(lat), samples: lat, missingNew, leftOld },
        syncHistogram: { sumS: dSum, count: dCount },
        partialPhases,
        applyCost,
        fullSync: {
          phases: fullPhases,
          weftMs: weftFull,
          refApplyMs: refApply,
          refApplyN1Ms: refApplyN1,
          refRefreshMs: refRefresh,
          refListMs: refList,
          scriptLines: script.split('\n').length,
          sameTable: same,
          tableDiff,
          firstFullMs,
        },
        traffic: { ...t, pooled: pool, spreads },
        rssMiB: { withServices: rss, afterChanges: rssAfter, noProxy: rssRef },
      },
    };
  } catch (err) {
    return unavailable(id, title, (err as Error).message);
  } finally {
    scope.cleanupSync();
  }
}

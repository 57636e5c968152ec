/**
 * `weftctl trace` on a real two-node cluster (throwaway namespaces from test/helpers/cluster.ts:
 * etcd, weftd per node, pods from the real CNI binary) with the proxy table for one Service with
 * an endpoint on each node, built by the proxy's own ruleset builder and applied with nft. The
 * binary runs inside node n1's namespace; every hop it reports is checked against what `ip -j`,
 * `bridge -j` and `nft` say there, and `--probe` must see its packet.
 */
import test from 'ava';
import { execFile } from 'node:child_process';
import { join, resolve } from 'node:path';
import { writeFileSync } from 'node:fs';
import { parseCIDR } from '../../src/ip/ipv4.ts';
import { selectEndpoints } from '../../src/proxy/endpoints.ts';
import { nftApply } from '../../src/proxy/nft.ts';
import { buildRuleset, fullScript } from '../../src/proxy/ruleset.ts';
import { validateEndpointSlice, validateService } from '../../src/proxy/types.ts';
import type { TraceReport } from '../../src/ctl/trace/model.ts';
import { inNs, ipJson } from '../helpers/netns.ts';
import { startCluster, type Cluster } from '../helpers/cluster.ts';
import type { LabPod } from '../../lab/topology.ts';

const WEFTCTL = resolve(import.meta.dirname, '..', '..', 'dist', 'bin', 'weftctl');
const CLUSTER_IP = '198.19.0.10';
const EMPTY_IP = '198.19.0.11';

let cluster: Cluster;
let client: LabPod; // n1p1
let localEp: LabPod; // n1p2
let remoteEp: LabPod; // n2p1
const servers: Array<{ kill(): void }> = [];

const SERVER = `
const net = require('node:net'), dgram = require('node:dgram');
net.createServer((c) => { c.on('error', () => {}); c.end('hi\\n'); }).listen(8080, '0.0.0.0', () => {
  const s = dgram.createSocket('udp4');
  s.on('message', (m, r) => s.send('hi\\n', r.port, r.address));
  s.bind(5353, '0.0.0.0', () => process.stdout.write('ready\\n'));
});
`;

function v<T>(r: { ok: true; value: T } | { ok: false; reason: string }): T {
  if (!r.ok) throw new Error(r.reason);
  return r.value;
}

function weftctl(node: string, args: string[]): Promise<{ code: number; stdout: string; stderr: string }> {
  return new Promise((res) => {
    execFile('nsenter', [`--net=/run/netns/${cluster.node(node).netns}`, '--', WEFTCTL, ...args], { encoding: 'utf8', timeout: 30_000 }, (err, stdout, stderr) => {
      res({ code: err ? ((err as { code?: number }).code ?? -1) : 0, stdout, stderr });
    });
  });
}

async function trace(args: string[]): Promise<{ code: number; report: TraceReport; stderr: string }> {
  const r = await weftctl('n1', ['trace', ...args, '-o', 'json', '--ipam-dir', cluster.node('n1').dataDir]);
  let report: TraceReport;
  try {
    report = JSON.parse(r.stdout) as TraceReport;
  } catch {
    throw new Error(`weftctl trace ${args.join(' ')} exited ${r.code}: ${r.stdout}${r.stderr}`);
  }
  return { code: r.code, report, stderr: r.stderr };
}

test.before(async () => {
  cluster = await startCluster({ nodes: 2, podsPerNode: 0 });
  [client, localEp] = await cluster.addPods('n1', 2);
  [remoteEp] = await cluster.addPods('n2', 1);
  const dir = cluster.topo.state.workDir;
  writeFileSync(join(dir, 'echo.cjs'), SERVER);
  for (const pod of [localEp, remoteEp]) {
    await new Promise<void>((ok, fail) => {
      const child = execFile('nsenter', [`--net=/run/netns/${pod.netns}`, '--', process.execPath, join(dir, 'echo.cjs')]);
      servers.push(child);
      const timer = setTimeout(() => fail(new Error(`echo server in ${pod.name} did not start`)), 15_000);
      child.stdout!.on('data', (d: string) => {
        if (String(d).includes('ready')) {
          clearTimeout(timer);
          ok();
        }
      });
    });
  }
  const services = [
    v(
      validateService({
        metadata: { namespace: 'default', name: 'echo' },
        spec: {
          clusterIP: CLUSTER_IP,
          ports: [
            { name: 'tcp', port: 80, protocol: 'TCP' },
            { name: 'udp', port: 53, protocol: 'UDP' },
          ],
        },
      }),
    ),
    v(validateService({ metadata: { namespace: 'default', name: 'empty' }, spec: { clusterIP: EMPTY_IP, ports: [{ port: 80 }] } })),
  ];
  const slices = [
    v(
      validateEndpointSlice({
        metadata: { namespace: 'default', name: 'echo-1', labels: { 'kubernetes.io/service-name': 'echo' } },
        addressType: 'IPv4',
        endpoints: [
          { addresses: [localEp.ip], nodeName: 'n1' },
          { addresses: [remoteEp.ip], nodeName: 'n2' },
        ],
        ports: [
          { name: 'tcp', port: 8080, protocol: 'TCP' },
          { name: 'udp', port: 5353, protocol: 'UDP' },
        ],
      }),
    ),
  ];
  const script = fullScript(buildRuleset(selectEndpoints(services, slices, { nodeName: 'n1' }), { clusterCIDR: parseCIDR('198.18.0.0/16') }));
  await nftApply(script, { netns: `/run/netns/${cluster.node('n1').netns}` });
  // same-node endpoint replies must be un-DNATed (the proxy's documented choice)
  inNs(cluster.node('n1').netns, 'sysctl', ['-qw', 'net.bridge.bridge-nf-call-iptables=1']);
});

test.after.always(async () => {
  for (const s of servers) s.kill();
  await cluster?.destroy();
});

/** What n1's kernel says, independently of weftctl. */
function facts() {
  const ns = cluster.node('n1').netns;
  const n2flannel = ipJson(cluster.node('n2').netns, 'link', 'show', 'flannel.1')[0];
  const peerSubnet = cluster.subnetOf('n2')!;
  const gw = peerSubnet.split('/')[0]!;
  return {
    ns,
    peerMac: n2flannel.address as string,
    gw,
    peerSubnet,
    routeTo: (ip: string) => ipJson(ns, 'route', 'get', ip, 'from', client.ip, 'iif', 'cni0')[0],
    neigh: ipJson(ns, 'neigh', 'show', 'dev', 'flannel.1').find((n) => n.dst === gw),
    fdb: JSON.parse(inNs(ns, 'bridge', ['-j', 'fdb', 'show', 'dev', 'flannel.1'])).find((f: { mac: string; dst?: string }) => f.mac === n2flannel.address && f.dst),
    vxlan: ipJson(ns, '-d', 'link', 'show', 'flannel.1')[0].linkinfo.info_data,
  };
}

test.serial('a pod -> ClusterIP: the map element, both endpoints, and each path hop by hop as the kernel has it', async (t) => {
  // make the local endpoint's MAC known on the bridge, as any prior traffic would
  inNs(localEp.netns, 'ping', ['-c', '1', '-W', '1', cluster.subnetOf('n1')!.replace(/0\/24$/, '1')]);
  const { code, report } = await trace([client.ip, `${CLUSTER_IP}:80/tcp`]);
  t.is(code, 0);
  const f = facts();
  t.is(report.ingress, 'cni0');
  const svc = report.service;
  t.is(svc.verdict, 'dnat');
  t.is(svc.map, 'service-ips');
  t.is(svc.key, `${CLUSTER_IP} . tcp . 80`);
  t.is(svc.service, 'default/echo');
  const listed = JSON.parse(inNs(f.ns, '/usr/sbin/nft', ['-j', 'list', 'map', 'ip', 'weft-proxy', 'service-ips'])).nftables.find((o: any) => o.map).map.elem;
  const elem = listed.find((e: any) => e[0].concat.join(' . ') === `${CLUSTER_IP} . tcp . 80`);
  t.is(svc.chain, elem[1].goto.target, 'the chain the kernel map element points at');
  t.deepEqual(svc.endpoints.map((e) => `${e.ip}:${e.port} ${e.choice}`).sort(), [`${localEp.ip}:8080 random 1/2`, `${remoteEp.ip}:8080 random 1/2`].sort());
  t.is(report.paths.length, 2);

  const remote = report.paths.find((p) => p.to === remoteEp.ip)!;
  const kinds = remote.hops.map((h) => h.kind);
  t.deepEqual(kinds, ['route', 'neighbor', 'fdb', 'encap', 'end']);
  const [route, neigh, fdb, encap, end] = remote.hops as any[];
  const kr = f.routeTo(remoteEp.ip);
  t.is(route.dev, kr.dev);
  t.is(route.dev, 'flannel.1');
  t.is(route.gateway, kr.gateway);
  t.is(route.gateway, f.gw);
  t.is(route.matched, f.peerSubnet);
  t.true(route.onlink);
  t.is(neigh.mac, f.neigh.lladdr);
  t.is(neigh.mac, f.peerMac, "the neighbor is n2's VTEP MAC");
  t.true(neigh.state.includes('permanent'));
  t.is(fdb.dst, f.fdb.dst);
  t.is(fdb.dst, cluster.node('n2').ip);
  t.is(encap.outerSrc, cluster.node('n1').ip);
  t.is(encap.outerDst, cluster.node('n2').ip);
  t.is(encap.udpPort, f.vxlan.port);
  t.is(encap.vni, f.vxlan.id);
  t.is(encap.underlayDev, 'eth0');
  t.is(end.at, 'peer-node');
  t.is(end.node, cluster.node('n2').ip);

  const local = report.paths.find((p) => p.to === localEp.ip)!;
  t.deepEqual(
    local.hops.map((h) => h.kind),
    ['route', 'neighbor', 'fdb', 'end'],
  );
  const [lroute, lneigh, lfdb, lend] = local.hops as any[];
  t.is(lroute.dev, f.routeTo(localEp.ip).dev);
  t.is(lroute.dev, 'cni0');
  const podMac = ipJson(localEp.netns, 'link', 'show', 'eth0')[0].address;
  t.is(lneigh.mac, podMac);
  const brPort = JSON.parse(inNs(f.ns, 'bridge', ['-j', 'fdb', 'show', 'br', 'cni0'])).find((e: any) => e.mac === podMac && !e.flags?.includes('self'));
  t.truthy(brPort, 'the bridge learned the pod MAC');
  t.is(lfdb.port, brPort.ifname);
  t.is(lend.at, 'local-pod');
  t.is(lend.port, brPort.ifname);
  t.is(lend.bridge, 'cni0');
  t.true(String(lend.owner).startsWith(localEp.containerId), `IPAM owner ${lend.owner}`);
});

test.serial('a Service without endpoints is rejected, an unknown port too; exit status 1', async (t) => {
  const empty = await trace([client.ip, `${EMPTY_IP}:80/tcp`]);
  t.is(empty.code, 1);
  t.is(empty.report.service.verdict, 'rejected');
  t.is(empty.report.service.map, 'no-endpoint-services');
  t.deepEqual(empty.report.paths, []);
  const port = await trace([client.ip, `${CLUSTER_IP}:81/tcp`]);
  t.is(port.report.service.verdict, 'rejected');
  t.regex(port.report.service.detail ?? '', /not one of its ports/);
});

test.serial('no Service: straight to a remote pod; the text output names every hop', async (t) => {
  const r = await weftctl('n1', ['trace', client.ip, remoteEp.ip]);
  t.is(r.code, 0, r.stderr);
  const f = facts();
  t.regex(
    r.stdout,
    new RegExp(
      `route +${remoteEp.ip.replaceAll('.', '\\.')} from ${client.ip.replaceAll('.', '\\.')} iif cni0: unicast ${f.peerSubnet.replaceAll('.', '\\.')} via ${f.gw.replaceAll('.', '\\.')} dev flannel\\.1 onlink`,
    ),
  );
  t.regex(r.stdout, new RegExp(`neighbor +${f.gw.replaceAll('.', '\\.')} on flannel\\.1: ${f.peerMac}`));
  t.regex(r.stdout, new RegExp(`encap +${cluster.node('n1').ip.replaceAll('.', '\\.')} -> ${cluster.node('n2').ip.replaceAll('.', '\\.')} UDP 8472 VNI 1`));
  t.regex(r.stdout, /end +peer-node:/);
});

test.serial('--probe: a real packet to the remote pod is seen entering, forwarded, and encapsulated to n2', async (t) => {
  const { code, report, stderr } = await trace([client.ip, `${remoteEp.ip}:8080/tcp`, '--probe']);
  t.is(code, 0, stderr);
  const p = report.probe!;
  t.truthy(p);
  t.is(p.netns, `/run/netns/${client.netns}`, 'found the pod namespace by its address');
  t.is(p.outcome, 'connected');
  const at = (point: string) => p.sightings.filter((s) => s.point === point);
  t.true(at('prerouting')[0]!.packets >= 1);
  t.true(at('forward').some((s) => s.detail.includes(remoteEp.ip) && s.packets >= 1));
  t.true(at('postrouting').some((s) => s.detail.includes('flannel.1')));
  t.true(at('encap').some((s) => s.detail.includes(cluster.node('n2').ip) && s.packets >= 1));
  const tables = inNs(cluster.node('n1').netns, '/usr/sbin/nft', ['list', 'tables']);
  t.notRegex(tables, /weft-trace-/, 'the probe table is gone');
});

test.serial('--probe through the ClusterIP: the forward counter shows the endpoint the kernel picked', async (t) => {
  const { report } = await trace([client.ip, `${CLUSTER_IP}:53/udp`, '--probe', '--src-netns', `/run/netns/${client.netns}`]);
  const p = report.probe!;
  t.is(p.outcome, 'reply');
  const fwd = p.sightings.filter((s) => s.point === 'forward');
  t.is(fwd.length, 1, JSON.stringify(p.sightings));
  const picked = [localEp.ip, remoteEp.ip].find((ip) => fwd[0]!.detail.includes(ip));
  t.truthy(picked, fwd[0]!.detail);
  const enc = p.sightings.filter((s) => s.point === 'encap');
  t.is(enc.length, picked === remoteEp.ip ? 1 : 0, 'encapsulated exactly when the remote endpoint was picked');
});

test.serial('from the node itself, --probe pings a pod the node has not talked to; the walk after it names the bridge port', async (t) => {
  const [fresh] = await cluster.addPods('n1', 1);
  const n1 = cluster.node('n1');
  const ns = n1.netns;
  t.falsy(
    ipJson(ns, 'neigh', 'show', 'dev', 'cni0').find((n) => n.dst === fresh!.ip && n.lladdr),
    'not resolved before',
  );
  const { code, report, stderr } = await trace([n1.ip, fresh!.ip, '--probe']);
  t.is(code, 0, stderr);
  t.is(report.ingress, 'this-node');
  t.is(report.probe!.outcome, 'reply');
  t.true(report.probe!.sightings.some((s) => s.point === 'output' && s.packets >= 1));
  t.true(report.probe!.sightings.some((s) => s.point === 'postrouting' && s.detail.includes('cni0')));
  const podMac = ipJson(fresh!.netns, 'link', 'show', 'eth0')[0].address;
  const port = JSON.parse(inNs(ns, 'bridge', ['-j', 'fdb', 'show', 'br', 'cni0'])).find((e: any) => e.mac === podMac && !e.flags?.includes('self'));
  const end = report.paths[0]!.hops.at(-1) as any;
  t.is(end.at, 'local-pod');
  t.is(end.port, port.ifname);
  t.true(String(end.owner).startsWith(fresh!.containerId));
});

test.serial('pod -> pod on the same node is bridged, and the walk says the node does not route it', async (t) => {
  const { report } = await trace([client.ip, localEp.ip]);
  const end = report.paths[0]!.hops.at(-1) as any;
  t.is(end.at, 'local-pod');
  t.regex(end.detail, /same subnet as the source/);
  const viaService = await trace([client.ip, `${CLUSTER_IP}:80/tcp`]);
  const local = viaService.report.paths.find((p) => p.to === localEp.ip)!.hops.at(-1) as any;
  t.notRegex(local.detail, /same subnet/, 'after DNAT the node does route it');
});

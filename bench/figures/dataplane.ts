/**
 * Figure 4: data plane. Pod-to-pod iperf3 across two nodes over weft's overlay (lab/topology.ts:
 * etcd, two weftd, pods made by the weft CNI binary) against the same two-node topology with
 * the VXLAN overlay built by hand with `ip` exactly as flannel lays it out (reference §3), and
 * the underlay node to node. Runs interleaved: weft, hand, underlay, weft, ...
 */
import { spawn } from 'node:child_process';
import { Topology, destroyTopologySync } from '../../lab/topology.ts';
import { BenchScope, inNs, sh, sleep } from '../lib/scope.ts';
import { bins, missing } from '../lib/paths.ts';
import { median, round } from '../lib/stats.ts';
import { unavailable, type BenchContext, type Figure } from '../lib/report.ts';

const ipn = (ns: string, ...args: string[]) => sh('ip', ['-n', ns, ...args]);

interface HandNode {
  ns: string;
  ip: string;
  mac: string;
  subnet: number;
  pod: string;
  podIp: string;
}

/** Two nodes on a bridge underlay (203.0.113.0/24), flannel-style VXLAN set up by hand. */
function handOverlay(scope: BenchScope): { a: HandNode; b: HandNode } {
  const ul = scope.netns('hul');
  ipn(ul, 'link', 'add', 'br0', 'type', 'bridge');
  ipn(ul, 'link', 'set', 'br0', 'up');
  const nodes: HandNode[] = [1, 2].map((k) => {
    const ns = scope.netns(`hn${k}`);
    const ip = `203.0.113.${10 + k}`;
    ipn(ul, 'link', 'add', `vn${k}`, 'type', 'veth', 'peer', 'name', 'eth0', 'netns', ns);
    ipn(ul, 'link', 'set', `vn${k}`, 'master', 'br0', 'up');
    ipn(ns, 'addr', 'add', `${ip}/24`, 'dev', 'eth0');
    ipn(ns, 'link', 'set', 'eth0', 'up');
    inNs(ns, 'sysctl', ['-qw', 'net.ipv4.ip_forward=1']);
    const mac = `0e:57:00:00:00:0${k}`;
    ipn(ns, 'link', 'add', 'flannel.1', 'address', mac, 'mtu', '1450', 'type', 'vxlan', 'id', '1', 'local', ip, 'dev', 'eth0', 'dstport', '8472', 'nolearning');
    ipn(ns, 'addr', 'add', `198.18.${k}.0/32`, 'dev', 'flannel.1');
    ipn(ns, 'link', 'set', 'flannel.1', 'up');
    ipn(ns, 'link', 'add', 'cni0', 'mtu', '1450', 'type', 'bridge');
    ipn(ns, 'addr', 'add', `198.18.${k}.1/24`, 'dev', 'cni0');
    ipn(ns, 'link', 'set', 'cni0', 'up');
    const pod = scope.netns(`hp${k}`);
    ipn(ns, 'link', 'add', 'veth0', 'mtu', '1450', 'type', 'veth', 'peer', 'name', 'eth0', 'netns', pod);
    ipn(ns, 'link', 'set', 'veth0', 'master', 'cni0', 'up');
    ipn(pod, 'addr', 'add', `198.18.${k}.2/24`, 'dev', 'eth0');
    ipn(pod, 'link', 'set', 'eth0', 'up');
    ipn(pod, 'route', 'add', 'default', 'via', `198.18.${k}.1`);
    return { ns, ip, mac, subnet: k, pod, podIp: `198.18.${k}.2` };
  });
  for (const [me, peer] of [
    [nodes[0], nodes[1]],
    [nodes[1], nodes[0]],
  ]) {
    const gw = `198.18.${peer.subnet}.0`;
    ipn(me.ns, 'neigh', 'add', gw, 'lladdr', peer.mac, 'dev', 'flannel.1', 'nud', 'permanent');
    sh('bridge', ['-n', me.ns, 'fdb', 'append', peer.mac, 'dev', 'flannel.1', 'dst', peer.ip, 'self', 'permanent']);
    ipn(me.ns, 'route', 'add', `198.18.${peer.subnet}.0/24`, 'via', gw, 'dev', 'flannel.1', 'onlink');
  }
  return { a: nodes[0], b: nodes[1] };
}

/** One bounded iperf3 run from `clientNs` to `serverIp` (server in `serverNs`); Gbit/s received. */
async function iperf(serverNs: string, clientNs: string, serverIp: string, seconds: number): Promise<number> {
  const server = spawn('nsenter', [`--net=/run/netns/${serverNs}`, '--', 'iperf3', '-s', '-1', '-B', serverIp], { stdio: 'ignore' });
  try {
    await sleep(300);
    const out = sh('timeout', [String(seconds + 20), 'nsenter', `--net=/run/netns/${clientNs}`, '--', 'iperf3', '-c', serverIp, '-t', String(seconds), '-J']);
    const bps = JSON.parse(out).end?.sum_received?.bits_per_second;
    if (typeof bps !== 'number') throw new Error(`iperf3 gave no result: ${out.slice(0, 300)}`);
    return bps / 1e9;
  } finally {
    if (server.exitCode === null) server.kill('SIGKILL');
  }
}

export async function figDataplane(ctx: BenchContext): Promise<Figure> {
  const id = 'dp';
  const title = 'pod-to-pod iperf3 across two nodes';
  const why = missing(bins.weftd) ?? missing(bins.weft) ?? missing('/usr/bin/iperf3', 'apt-get install iperf3');
  if (why) return unavailable(id, title, why);
  const rounds = ctx.quick ? 1 : 3;
  const seconds = ctx.quick ? 2 : 4;
  const scope = new BenchScope();
  try {
    const topo = await Topology.create({ workDir: scope.tmpdir('dp'), prefix: `wt-bench-${process.pid}` });
    scope.defer(() => destroyTopologySync(topo.state));
    const n1 = await topo.addNode();
    const n2 = await topo.addNode();
    const p1 = await topo.addPod(n1.name);
    const p2 = await topo.addPod(n2.name);
    const hand = handOverlay(scope);
    // Both overlays must carry traffic before anything is timed.
    const pingOk = (ns: string, ip: string) => {
      for (let i = 0; i < 20; i++) {
        try {
          inNs(ns, 'ping', ['-c', '1', '-W', '1', ip]);
          return;
        } catch {
          /* peers may still be programming */
        }
      }
      throw new Error(`no ping from ${ns} to ${ip}`);
    };
    pingOk(p1.netns, p2.ip);
    pingOk(hand.a.pod, hand.b.podIp);
    const s = { weft: [] as number[], hand: [] as number[], underlay: [] as number[] };
    for (let r = 0; r < rounds; r++) {
      ctx.log(`  round ${r + 1}/${rounds}`);
      s.weft.push(await iperf(p2.netns, p1.netns, p2.ip, seconds));
      s.hand.push(await iperf(hand.b.pod, hand.a.pod, hand.b.podIp, seconds));
      s.underlay.push(await iperf(hand.b.ns, hand.a.ns, hand.b.ip, seconds));
    }
    const w = median(s.weft);
    const h = median(s.hand);
    const u = median(s.underlay);
    return {
      id,
      title,
      available: true,
      rows: [
        { metric: 'pod to pod over weft vs hand-built VXLAN', unit: 'Gbit/s', weft: round(w), ref: round(h), refName: 'hand VXLAN', target: '>= 0.95x', met: w / h >= 0.95 },
        { metric: 'pod to pod over weft vs underlay node to node', unit: 'Gbit/s', weft: round(w), ref: round(u), refName: 'underlay' },
      ],
      notes: [`iperf3 TCP, ${seconds} s per run, ${rounds} interleaved round(s), medians; hand VXLAN ${round(h)} Gbit/s = ${round(h / u)}x of the underlay`],
      details: { seconds, rounds, gbps: s },
    };
  } catch (err) {
    return unavailable(id, title, (err as Error).message);
  } finally {
    scope.cleanupSync();
  }
}

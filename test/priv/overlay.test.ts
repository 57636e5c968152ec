/**
 * The overlay end to end, on one shared cluster (3 nodes + underlay + etcd, weftd per node, two
 * pods per node from the real CNI binary): pod-to-pod reachability, the VXLAN wire format on the
 * underlay, a node joining, lease deletion, drift repair and the nftables table.
 */
import test from 'ava';
import { spawn } from 'node:child_process';
import { existsSync, mkdtempSync, readFileSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { eventually, inNs, sh } from '../helpers/netns.ts';
import { reachable, startCluster, type Cluster } from '../helpers/cluster.ts';

let cluster: Cluster;

test.before(async () => {
  cluster = await startCluster({ nodes: 3, podsPerNode: 2, weftdArgs: ['--reconcile-interval', '500ms'] });
});

test.after.always(async () => {
  await cluster?.destroy();
});

test.serial('every pod reaches every other pod, on its own node and across nodes', (t) => {
  const pods = cluster.pods;
  t.is(pods.length, 6);
  const subnets = ['n1', 'n2', 'n3'].map((n) => cluster.subnetOf(n));
  t.is(new Set(subnets).size, 3, 'each node leased its own subnet');
  const failures: string[] = [];
  for (const a of pods) {
    for (const b of pods) {
      if (a !== b && !reachable(a.netns, b.ip)) failures.push(`${a.name} -> ${b.name} (${b.ip})`);
    }
  }
  t.deepEqual(failures, []);
});

test.serial('each node has neighbor, FDB entry and onlink route for every peer, and a ready daemon', async (t) => {
  for (const n of ['n1', 'n2', 'n3']) {
    for (const p of ['n1', 'n2', 'n3']) if (n !== p) t.true(cluster.hasPeer(n, p), `${n} programs ${p}`);
    const link = sh('ip', ['-n', cluster.node(n).netns, '-d', '-j', 'link', 'show', 'flannel.1']);
    const info = JSON.parse(link)[0];
    t.is(info.mtu, 1450);
    t.is(info.linkinfo.info_data.id, 1);
    t.is(info.linkinfo.info_data.port, 8472);
    t.is(info.linkinfo.info_data.local, cluster.node(n).ip);
    t.is(info.linkinfo.info_data.learning, false);
    const env = cluster.topo.subnetEnv(n);
    t.is(env.FLANNEL_NETWORK, '198.18.0.0/16');
    t.is(env.FLANNEL_MTU, '1450');
    t.is(env.FLANNEL_IPMASQ, 'true');
    t.is((await cluster.topo.http(n, '/readyz')).status, 200);
    t.is((await cluster.topo.http(n, '/healthz')).status, 200);
    t.is(await cluster.metric(n, 'weftd_peers'), 2);
    t.true((await cluster.metric(n, 'weftd_lease_expiry_seconds')) > 0);
    t.is(await cluster.metric(n, 'weftd_ready'), 1);
    // prom-client's default process and event-loop metrics come along.
    t.true((await cluster.metric(n, 'process_resident_memory_bytes')) > 0);
    t.true((await cluster.metric(n, 'nodejs_eventloop_lag_seconds')) >= 0);
  }
  const leases = await cluster.etcd.getPrefix('/coreos.com/network/subnets/');
  t.is(leases.size, 3);
  for (const [key, value] of leases) {
    t.regex(key, /^\/coreos\.com\/network\/subnets\/198\.18\.\d+\.0-24$/);
    const v = JSON.parse(value);
    t.deepEqual(Object.keys(v), ['PublicIP', 'BackendType', 'BackendData']);
    t.is(v.BackendType, 'vxlan');
    t.is(v.BackendData.VNI, 1);
    t.regex(v.BackendData.VtepMAC, /^([0-9a-f]{2}:){5}[0-9a-f]{2}$/);
  }
});

/** Minimal pcap reader: returns each captured Ethernet frame. */
function pcapFrames(buf: Buffer): Buffer[] {
  const le = buf.readUInt32LE(0) === 0xa1b2c3d4;
  const u32 = (o: number) => (le ? buf.readUInt32LE(o) : buf.readUInt32BE(o));
  const frames: Buffer[] = [];
  for (let off = 24; off + 16 <= buf.length; ) {
    const len = u32(off + 8);
    frames.push(buf.subarray(off + 16, off + 16 + len));
    off += 16 + len;
  }
  return frames;
}

const ip4 = (b: Buffer, o: number) => `${b[o]}.${b[o + 1]}.${b[o + 2]}.${b[o + 3]}`;

test.serial('cross-node packets cross the underlay as UDP 8472 VXLAN with VNI 1 between node IPs', async (t) => {
  const dir = mkdtempSync(join(tmpdir(), 'weft-pcap-'));
  t.teardown(() => rmSync(dir, { recursive: true, force: true }));
  const file = join(dir, 'cap.pcap');
  const ul = cluster.topo.state.underlayNetns;
  // On n1's bridge port: a capture on br0 itself misses unicast forwarded between ports.
  const dump = spawn('nsenter', [`--net=/run/netns/${ul}`, '--', 'tcpdump', '-i', 'vn1', '--immediate-mode', '-U', '-c', '2', '-nn', '-w', file, 'udp port 8472'], {
    stdio: ['ignore', 'ignore', 'pipe'],
  });
  let err = '';
  dump.stderr.on('data', (d) => (err += d));
  t.teardown(() => dump.kill('SIGKILL'));
  await eventually(() => err.includes('listening on'), 10_000);
  const [a, b] = [cluster.pods.find((p) => p.node === 'n1')!, cluster.pods.find((p) => p.node === 'n2')!];
  t.true(reachable(a.netns, b.ip));
  // tcpdump exits after two packets (request and reply); SIGINT only as a fallback.
  const exited = new Promise((r) => dump.once('exit', r));
  const fallback = setTimeout(() => dump.kill('SIGINT'), 15_000);
  await exited;
  clearTimeout(fallback);
  t.true(existsSync(file));
  const frames = pcapFrames(readFileSync(file));
  const vxlan = frames
    .filter((f) => f.readUInt16BE(12) === 0x0800 && f[23] === 17)
    .map((f) => {
      const ihl = (f[14] & 0x0f) * 4;
      const udp = 14 + ihl;
      const vx = udp + 8;
      const inner = vx + 8 + 14;
      return {
        src: ip4(f, 26),
        dst: ip4(f, 30),
        dport: f.readUInt16BE(udp + 2),
        flags: f[vx],
        vni: f.readUIntBE(vx + 4, 3),
        innerSrc: ip4(f, inner + 12),
        innerDst: ip4(f, inner + 16),
      };
    })
    .filter((p) => p.innerSrc === a.ip && p.innerDst === b.ip);
  t.true(vxlan.length > 0, `captured the ping ${a.ip} -> ${b.ip} inside VXLAN (${frames.length} frames seen)`);
  for (const p of vxlan) {
    t.is(p.src, cluster.node('n1').ip);
    t.is(p.dst, cluster.node('n2').ip);
    t.is(p.dport, 8472);
    t.is(p.flags, 0x08, 'VNI-present flag');
    t.is(p.vni, 1);
  }
});

test.serial("masquerade and forward rules live in weft's own nftables table", (t) => {
  const rules = inNs(cluster.node('n1').netns, '/usr/sbin/nft', ['list', 'table', 'ip', 'weft']);
  t.regex(rules, /chain postrouting[\s\S]*meta mark & 0x00004000 == 0x00004000 return[\s\S]*ip saddr 198\.18\.\d+\.0\/24 ip daddr 198\.18\.0\.0\/16 return/);
  t.regex(rules, /ip saddr 198\.18\.0\.0\/16 ip daddr != 224\.0\.0\.0\/4 masquerade fully-random/);
  t.regex(rules, /chain forward[\s\S]*ip saddr 198\.18\.0\.0\/16 accept/);
  // The control-plane namespace has no route to the pod network: a reply proves masquerade.
  const pod = cluster.pods.find((p) => p.node === 'n1')!;
  t.true(reachable(pod.netns, '198.51.100.2'), 'pod reaches a host outside the pod network');
});

test.serial('a deleted nftables table is put back', async (t) => {
  const ns = cluster.node('n2').netns;
  inNs(ns, '/usr/sbin/nft', ['delete', 'table', 'ip', 'weft']);
  t.true(await eventually(() => cluster.log('n2').includes('repair: nftables table "ip weft" put back'), 30_000));
  t.regex(inNs(ns, '/usr/sbin/nft', ['list', 'table', 'ip', 'weft']), /masquerade fully-random/);
});

test.serial('a rule deleted inside the nftables table is noticed and the whole table replaced', async (t) => {
  const ns = cluster.node('n3').netns;
  const nft = (...args: string[]) => inNs(ns, '/usr/sbin/nft', args);
  const before = nft('list', 'table', 'ip', 'weft');
  const m = /ip saddr 198\.18\.0\.0\/16 ip daddr != 224\.0\.0\.0\/4 masquerade fully-random # handle (\d+)/.exec(nft('-a', 'list', 'table', 'ip', 'weft'));
  t.truthy(m, 'the pod -> outside masquerade rule is there');
  const repairs = cluster
    .log('n3')
    .split('\n')
    .filter((l) => l.includes('repair: nftables table')).length;
  nft('delete', 'rule', 'ip', 'weft', 'postrouting', 'handle', m![1]!);
  t.notRegex(nft('list', 'table', 'ip', 'weft'), /daddr != 224\.0\.0\.0\/4 masquerade/, 'deleted');
  t.true(
    await eventually(
      () =>
        cluster
          .log('n3')
          .split('\n')
          .filter((l) => l.includes('repair: nftables table "ip weft" put back (its rules had been changed)')).length > repairs,
      60_000,
    ),
    cluster.log('n3'),
  );
  t.is(nft('list', 'table', 'ip', 'weft'), before, 'the table is exactly as weftd wrote it again');
  // An edited rule (same count, other verdict) is noticed too.
  const fwd = /ip daddr 198\.18\.0\.0\/16 accept # handle (\d+)/.exec(nft('-a', 'list', 'table', 'ip', 'weft'));
  t.truthy(fwd);
  nft('replace', 'rule', 'ip', 'weft', 'forward', 'handle', fwd![1]!, 'ip', 'daddr', '198.18.0.0/16', 'counter', 'accept');
  t.true(await eventually(() => nft('list', 'table', 'ip', 'weft') === before, 60_000), nft('list', 'table', 'ip', 'weft'));
});

test.serial('a fourth node joins: the others program it and its pods are reachable within seconds', async (t) => {
  await cluster.topo.addNode();
  const [p4] = await cluster.addPods('n4', 1);
  for (const n of ['n1', 'n2', 'n3']) {
    t.true(await eventually(() => cluster.hasPeer(n, 'n4'), 10_000), `${n} programs n4`);
    t.true(await eventually(() => cluster.hasPeer('n4', n), 10_000), `n4 programs ${n}`);
  }
  for (const p of cluster.pods.filter((x) => x.node !== 'n4')) {
    t.true(reachable(p.netns, p4.ip), `${p.name} -> ${p4.name}`);
    t.true(reachable(p4.netns, p.ip), `${p4.name} -> ${p.name}`);
  }
});

test.serial('a deleted lease of a running daemon comes back with the same subnet', async (t) => {
  const subnet = cluster.subnetOf('n3')!;
  const key = `/coreos.com/network/subnets/${subnet.replace('/', '-')}`;
  await cluster.etcd.del(key);
  const back = await eventually(async () => (await cluster.etcd.get(key)) ?? '', 10_000);
  t.is(JSON.parse(back).PublicIP, cluster.node('n3').ip);
  t.is(cluster.subnetOf('n3'), subnet);
  t.true(await eventually(() => cluster.hasPeer('n1', 'n3') && cluster.hasPeer('n2', 'n3'), 10_000));
});

test.serial('delete a route, an FDB entry and the whole flannel.1 on one node: repaired', async (t) => {
  const n1 = cluster.node('n1');
  const sub2 = cluster.subnetOf('n2')!;
  const mac2 = cluster.overlay('n2').mac!;
  // Each deletion must show up as a repair in the log (the reconciler may win the race against
  // our own read-back, so "gone for a moment" is not asserted).
  sh('ip', ['-n', n1.netns, 'route', 'del', sub2]);
  t.true(await eventually(() => cluster.log('n1').includes(`repair: route ${sub2}`), 10_000), 'route repair logged');
  t.true(await eventually(() => cluster.hasPeer('n1', 'n2'), 10_000), 'route put back');

  sh('bridge', ['-n', n1.netns, 'fdb', 'del', mac2, 'dev', 'flannel.1', 'dst', cluster.node('n2').ip]);
  t.true(await eventually(() => cluster.log('n1').includes(`repair: fdb ${mac2} -> ${cluster.node('n2').ip}`), 10_000), 'fdb repair logged');
  t.true(await eventually(() => cluster.hasPeer('n1', 'n2'), 10_000), 'fdb entry put back');

  const gw3 = cluster.subnetOf('n3')!.split('/')[0];
  sh('ip', ['-n', n1.netns, 'neigh', 'del', gw3, 'dev', 'flannel.1']);
  t.true(await eventually(() => cluster.log('n1').includes(`repair: neighbor ${gw3}`), 10_000), 'neighbor repair logged');
  t.true(await eventually(() => cluster.hasPeer('n1', 'n3'), 10_000), 'neighbor put back');

  const macBefore = cluster.overlay('n1').mac;
  sh('ip', ['-n', n1.netns, 'link', 'del', 'flannel.1']);
  t.true(await eventually(() => cluster.log('n1').includes('repair: device "flannel.1" created'), 10_000), 'device repair logged');
  t.true(await eventually(() => ['n2', 'n3', 'n4'].every((p) => cluster.hasPeer('n1', p)), 15_000), 'device and every peer entry back');
  t.is(cluster.overlay('n1').mac, macBefore, 'recreated with the MAC peers have cached');
  const a = cluster.pods.find((p) => p.node === 'n1')!;
  const b = cluster.pods.find((p) => p.node === 'n3')!;
  t.true(reachable(a.netns, b.ip));
  t.true(reachable(b.netns, a.ip));
  t.true((await cluster.metric('n1', 'weftd_reconcile_repairs_total')) >= 4);
});

test.serial("a stopped node's deleted lease: every other node removes its three entries", async (t) => {
  const n4 = cluster.node('n4');
  const subnet = cluster.subnetOf('n4')!;
  await cluster.topo.stopDaemon('n4', 'SIGTERM');
  await cluster.etcd.del(`/coreos.com/network/subnets/${subnet.replace('/', '-')}`);
  for (const n of ['n1', 'n2', 'n3']) {
    t.true(await eventually(() => cluster.entriesFor(n, subnet, n4.ip) === 0, 10_000), `${n} removed route, neighbor and FDB entry of n4`);
    t.is(await eventually(async () => (await cluster.metric(n, 'weftd_peers')) === 2, 5000), true);
  }
  t.true(cluster.hasPeer('n1', 'n2'), 'other peers untouched');
});

/**
 * Daemon restarts leave the data plane alone: after SIGTERM or SIGKILL the node keeps its
 * device, peer entries and rules, comes back with the same subnet, and a ping running across
 * the restart loses no packets.
 */
import test from 'ava';
import { execFile } from 'node:child_process';
import { promisify } from 'node:util';
import { eventually, sh } from '../helpers/netns.ts';
import { pingStats, reachable, startCluster, type Cluster } from '../helpers/cluster.ts';

const execFileP = promisify(execFile);
let cluster: Cluster;

test.before(async () => {
  cluster = await startCluster({ nodes: 2, podsPerNode: 1 });
});

test.after.always(async () => {
  await cluster?.destroy();
});

for (const signal of ['SIGTERM', 'SIGKILL'] as const) {
  test.serial(`${signal}: same subnet afterwards and no packet lost by a ping across the restart`, async (t) => {
    const [a, b] = [cluster.pods.find((p) => p.node === 'n1')!, cluster.pods.find((p) => p.node === 'n2')!];
    const subnet = cluster.subnetOf('n1');
    const mac = cluster.overlay('n1').mac;
    const key = `/coreos.com/network/subnets/${subnet!.replace('/', '-')}`;
    const pinging = execFileP('nsenter', [`--net=/run/netns/${b.netns}`, '--', 'ping', '-i', '0.1', '-c', '60', '-W', '1', a.ip], {
      encoding: 'utf8',
      timeout: 60_000,
    }).catch((err: { stdout?: string }) => ({ stdout: err.stdout ?? '' }));
    await new Promise((r) => setTimeout(r, 700));
    await cluster.topo.stopDaemon('n1', signal);
    if (signal === 'SIGTERM') t.regex(cluster.log('n1'), /SIGTERM: stopping[\s\S]*stopped; the data plane \(device, peers, rules\) stays in place/);
    t.true(cluster.hasPeer('n1', 'n2'), 'peer entries stay while the daemon is down');
    t.regex(sh('nsenter', [`--net=/run/netns/${cluster.node('n1').netns}`, '--', '/usr/sbin/nft', 'list', 'table', 'ip', 'weft']), /masquerade/, 'rules stay');
    t.true(cluster.hasPeer('n2', 'n1'));
    await cluster.topo.startDaemon('n1');
    const { stdout } = await pinging;
    const stats = pingStats(stdout);
    t.is(stats.sent, 60, stdout);
    t.is(stats.received, stats.sent, `no loss across the ${signal} restart:\n${stdout}`);
    t.is(cluster.subnetOf('n1'), subnet);
    t.is(cluster.overlay('n1').mac, mac, 'device reused with its MAC');
    t.is(JSON.parse((await cluster.etcd.get(key))!).PublicIP, cluster.node('n1').ip);
    t.true(await eventually(() => cluster.hasPeer('n1', 'n2') && cluster.hasPeer('n2', 'n1'), 10_000));
    t.regex(cluster.log('n1'), /reusing device "flannel\.1"/);
  });
}

test.serial('on start, entries of peers that left while the daemon was down are removed', async (t) => {
  const key = '/coreos.com/network/subnets/198.18.251.0-24';
  await cluster.etcd.put(key, JSON.stringify({ PublicIP: '198.51.100.98', BackendType: 'vxlan', BackendData: { VNI: 1, VtepMAC: '02:00:00:00:fb:01' } }));
  t.true(await eventually(() => cluster.entriesFor('n1', '198.18.251.0/24', '198.51.100.98') === 3, 10_000), 'departed peer programmed first');
  await cluster.topo.stopDaemon('n1', 'SIGTERM');
  await cluster.etcd.del(key);
  t.is(cluster.entriesFor('n1', '198.18.251.0/24', '198.51.100.98'), 3, 'nobody removed them while the daemon was down');
  await cluster.topo.startDaemon('n1');
  const state = () => `${JSON.stringify(cluster.overlay('n1'))}\n${cluster.log('n1').split('\n').slice(-30).join('\n')}`;
  t.true(await eventually(() => cluster.entriesFor('n1', '198.18.251.0/24', '198.51.100.98') === 0, 20_000), `stale entries removed after the restart:\n${state()}`);
  t.regex(cluster.log('n1'), /removed stale route 198\.18\.251\.0\/24/);
  t.true(await eventually(() => cluster.hasPeer('n1', 'n2'), 20_000), `the live peer kept:\n${state()}`);
});

test.serial('an incompatible flannel.1 (other UDP port) is recreated with the right parameters and its MAC, and the reason is logged', async (t) => {
  const n1 = cluster.node('n1');
  const mac = cluster.overlay('n1').mac!;
  await cluster.topo.stopDaemon('n1', 'SIGTERM');
  sh('ip', ['-n', n1.netns, 'link', 'del', 'flannel.1']);
  sh('ip', ['-n', n1.netns, 'link', 'add', 'flannel.1', 'address', mac, 'type', 'vxlan', 'id', '1', 'dstport', '4789', 'local', n1.ip, 'dev', 'eth0', 'nolearning']);
  await cluster.topo.startDaemon('n1');
  t.regex(cluster.log('n1'), /recreated device "flannel\.1": port 4789 != 8472/);
  const info = JSON.parse(sh('ip', ['-n', n1.netns, '-d', '-j', 'link', 'show', 'flannel.1']))[0];
  t.is(info.linkinfo.info_data.port, 8472);
  t.is(info.address, mac);
  t.true(await eventually(() => cluster.hasPeer('n1', 'n2') && cluster.hasPeer('n2', 'n1'), 10_000));
  const [a, b] = [cluster.pods.find((p) => p.node === 'n1')!, cluster.pods.find((p) => p.node === 'n2')!];
  t.true(await eventually(() => reachable(a.netns, b.ip), 10_000));
});

test.serial('a node that comes back with a new IP keeps its subnet; peers move the FDB entry', async (t) => {
  const n1 = cluster.node('n1');
  const subnet = cluster.subnetOf('n1')!;
  const mac = cluster.overlay('n1').mac!;
  const newIP = n1.ip.replace(/\.\d+$/, '.31');
  await cluster.topo.stopDaemon('n1', 'SIGTERM');
  sh('ip', ['-n', n1.netns, 'addr', 'del', `${n1.ip}/24`, 'dev', 'eth0']);
  sh('ip', ['-n', n1.netns, 'addr', 'add', `${newIP}/24`, 'dev', 'eth0']);
  await cluster.topo.startDaemon('n1');
  t.is(cluster.subnetOf('n1'), subnet);
  t.is(cluster.overlay('n1').mac, mac, 'recreated (local address changed) with the same MAC');
  t.regex(cluster.log('n1'), /recreated device "flannel\.1": local address 198\.51\.100\.11 != 198\.51\.100\.31/);
  const lease = JSON.parse((await cluster.etcd.get(`/coreos.com/network/subnets/${subnet.replace('/', '-')}`))!);
  t.is(lease.PublicIP, newIP);
  t.is((await cluster.etcd.getPrefix('/coreos.com/network/subnets/')).size, 2, 'no second lease taken');
  t.true(
    await eventually(() => {
      const fdbs = cluster.overlay('n2').fdbs.filter((f) => f.mac === mac);
      return fdbs.length === 1 && fdbs[0].dst === newIP;
    }, 10_000),
    'n2 points the MAC at the new IP and dropped the old FDB entry',
  );
  const [a, b] = [cluster.pods.find((p) => p.node === 'n1')!, cluster.pods.find((p) => p.node === 'n2')!];
  t.true(await eventually(() => reachable(b.netns, a.ip), 10_000));
});

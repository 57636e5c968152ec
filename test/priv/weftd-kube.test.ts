/**
 * weftd in Kubernetes mode end to end (issue 8): the lab's API server and node IPAM in the
 * control-plane namespace, three nodes registered as kubelet would, weftd with
 * --kube-subnet-mgr on each. The lease is the Node's podCIDR, peers come from annotations,
 * NetworkUnavailable=False once ready; no etcd key is ever written by weftd.
 */
import test from 'ava';
import { execFile } from 'node:child_process';
import { existsSync, readFileSync } from 'node:fs';
import { promisify } from 'node:util';
import { eventually } from '../helpers/netns.ts';
import { pingStats, reachable, startCluster, type Cluster } from '../helpers/cluster.ts';

const execFileP = promisify(execFile);
const ANN = 'flannel.alpha.coreos.com';
let cluster: Cluster;

test.before(async () => {
  cluster = await startCluster({ nodes: 3, podsPerNode: 1, mode: 'kube' });
});

test.after.always(async () => {
  await cluster?.destroy();
});

const condition = (node: any, type: string) => (node?.status?.conditions ?? []).find((c: any) => c.type === type);

test.serial('every pod reaches every other pod; each node leases its podCIDR and says so in its annotations', async (t) => {
  for (const a of cluster.pods) {
    for (const b of cluster.pods) if (a !== b) t.true(reachable(a.netns, b.ip), `${a.name} -> ${b.name} (${b.ip})`);
  }
  for (const n of cluster.topo.state.nodes) {
    const node = await cluster.topo.getNode(n.name);
    t.is(cluster.subnetOf(n.name), node.spec.podCIDR, `${n.name}: subnet file = podCIDR`);
    const ann = node.metadata.annotations;
    t.is(ann[`${ANN}/backend-type`], 'vxlan');
    t.is(ann[`${ANN}/public-ip`], n.ip);
    t.is(ann[`${ANN}/kube-subnet-manager`], 'true');
    t.deepEqual(JSON.parse(ann[`${ANN}/backend-data`]), { VNI: 1, VtepMAC: cluster.overlay(n.name).mac });
    const cond = condition(node, 'NetworkUnavailable');
    t.is(cond?.status, 'False', n.name);
    t.is(cond?.reason, 'WeftIsUp');
    for (const peer of cluster.topo.state.nodes) if (peer !== n) t.true(cluster.hasPeer(n.name, peer.name), `${n.name} has ${peer.name}`);
  }
  t.is(await cluster.etcd.get('/coreos.com/network/config'), undefined, 'no etcd schema in Kubernetes mode');
});

test.serial('SIGKILL and restart: same subnet, same MAC, no ping lost', async (t) => {
  const [a, b] = [cluster.pods.find((p) => p.node === 'n1')!, cluster.pods.find((p) => p.node === 'n2')!];
  const subnet = cluster.subnetOf('n1');
  const mac = cluster.overlay('n1').mac;
  const pinging = execFileP('nsenter', [`--net=/run/netns/${b.netns}`, '--', 'ping', '-i', '0.1', '-c', '40', '-W', '1', a.ip], { encoding: 'utf8', timeout: 60_000 }).catch(
    (err: { stdout?: string }) => ({ stdout: err.stdout ?? '' }),
  );
  await new Promise((r) => setTimeout(r, 500));
  await cluster.topo.stopDaemon('n1', 'SIGKILL');
  await cluster.topo.startDaemon('n1');
  const stats = pingStats((await pinging).stdout);
  t.is(stats.sent, 40);
  t.is(stats.received, 40, 'no loss across the restart');
  t.is(cluster.subnetOf('n1'), subnet);
  t.is(cluster.overlay('n1').mac, mac);
});

test.serial('the device deleted while weftd is down comes back with the MAC from our annotation', async (t) => {
  const mac = cluster.overlay('n2').mac;
  await cluster.topo.stopDaemon('n2', 'SIGTERM');
  await execFileP('ip', ['-n', cluster.node('n2').netns, 'link', 'del', 'flannel.1']);
  await cluster.topo.startDaemon('n2');
  t.is(cluster.overlay('n2').mac, mac, 'peers keep a valid FDB entry for us (flannel #1795)');
  t.true(await eventually(() => cluster.hasPeer('n2', 'n1') && cluster.hasPeer('n1', 'n2'), 10_000));
});

test.serial('a peer whose annotated MAC changes gets its FDB entry replaced; a deleted Node leaves no entry behind within 1 s', async (t) => {
  const n3 = cluster.node('n3');
  const subnet = cluster.subnetOf('n3')!;
  await cluster.topo.stopDaemon('n3', 'SIGTERM');
  const newMac = '02:42:c6:12:00:33';
  await cluster.topo.api(
    'PATCH',
    '/api/v1/nodes/n3',
    { metadata: { annotations: { [`${ANN}/backend-data`]: JSON.stringify({ VNI: 1, VtepMAC: newMac }) } } },
    { contentType: 'application/merge-patch+json' },
  );
  t.true(
    await eventually(() => {
      const o = cluster.overlay('n1');
      return o.fdbs.some((f) => f.mac === newMac && f.dst === n3.ip) && o.fdbs.filter((f) => f.dst === n3.ip).length === 1;
    }, 5000),
    'new FDB entry in, old one out',
  );
  const start = Date.now();
  await cluster.topo.api('DELETE', '/api/v1/nodes/n3');
  t.true(await eventually(() => cluster.entriesFor('n1', subnet, n3.ip) === 0 && cluster.entriesFor('n2', subnet, n3.ip) === 0, 1000), 'entries gone on every peer');
  t.log(`deleted Node's entries gone after ${Date.now() - start} ms`);
});

test('a node without a podCIDR stays not ready with one line naming the cause, then becomes ready once assigned', async (t) => {
  // Its own control plane without node IPAM: kube-controller-manager without --allocate-node-cidrs.
  const bare = await startCluster({ nodes: 1, start: false, mode: 'kube', allocateNodeCIDRs: false, underlay: '203.0.113' });
  t.teardown(() => bare.destroy());
  const topo = bare.topo;
  await topo.startDaemon('n1', { wait: false });
  t.true(await eventually(() => /allocate-node-cidrs/.test(bare.log('n1')), 10_000), bare.log('n1'));
  t.is((await topo.http('n1', '/readyz')).status, 503, 'not ready without a podCIDR');
  t.is((await topo.getNode('n1')).spec?.podCIDR, undefined);
  await topo.api('PATCH', '/api/v1/nodes/n1', { spec: { podCIDR: '198.18.200.0/24', podCIDRs: ['198.18.200.0/24'] } }, { contentType: 'application/merge-patch+json' });
  await topo.waitReady('n1', 20_000);
  t.is(bare.subnetOf('n1'), '198.18.200.0/24');
  t.is(bare.log('n1').match(/allocate-node-cidrs/g)?.length, 1, 'said once, not per retry');
  t.is(condition(await topo.getNode('n1'), 'NetworkUnavailable')?.status, 'False');

  // The Node deleted and registered again with another podCIDR: weftd must not keep routing
  // the old one. It says so and exits (the DaemonSet restarts it onto the new subnet).
  const pid = bare.node('n1').pid!;
  await topo.api('DELETE', '/api/v1/nodes/n1');
  await topo.api('POST', '/api/v1/nodes', { apiVersion: 'v1', kind: 'Node', metadata: { name: 'n1' }, spec: { podCIDR: '198.18.201.0/24', podCIDRs: ['198.18.201.0/24'] } });
  t.true(await eventually(() => !existsSync(`/proc/${pid}`) || /^Z/m.test(readFileSync(`/proc/${pid}/status`, 'utf8').match(/State:\s+(\S)/)?.[1] ?? ''), 15_000), 'weftd exited');
  t.regex(bare.log('n1'), /podCIDR changed from 198\.18\.200\.0\/24 to 198\.18\.201\.0\/24/);
  await topo.stopDaemon('n1').catch(() => undefined);
  await topo.startDaemon('n1');
  t.is(bare.subnetOf('n1'), '198.18.201.0/24', 'a restart takes the new podCIDR');
});

test('podCIDRs of another size than /24 (kube-controller-manager --node-cidr-mask-size 26): peers are programmed', async (t) => {
  const small = await startCluster({ nodes: 2, podsPerNode: 1, mode: 'kube', subnetLen: 26, underlay: '203.0.113' });
  t.teardown(() => small.destroy());
  for (const n of ['n1', 'n2']) t.regex(small.subnetOf(n) ?? '', /\/26$/, n);
  t.true(small.hasPeer('n1', 'n2') && small.hasPeer('n2', 'n1'), 'each node has the other as a peer');
  const [a, b] = small.pods;
  t.true(reachable(a!.netns, b!.ip), 'pod to pod across nodes');
  t.regex(small.log('n1'), /subnet length \/26 from our podCIDR/);
});

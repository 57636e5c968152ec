/**
 * A lost subnet (another node's lease takes our key): the node goes not ready, names the holder,
 * the subnet file's lost form makes CNI STATUS fail (50) and ADD retryable (11), the data plane
 * and existing pods stay; the subnet comes back when the key frees up, and the node moves
 * (flannel.1, cni0's gateway, subnet file) only once no pod is left on it. A restart while lost
 * stays on the lost subnet.
 */
import test from 'ava';
import { existsSync, readdirSync } from 'node:fs';
import { join } from 'node:path';
import { cni } from '../helpers/cni.ts';
import { reachable, startCluster, type Cluster } from '../helpers/cluster.ts';
import { eventually, ipJson, ping } from '../helpers/netns.ts';

let cluster: Cluster;

test.before(async () => {
  cluster = await startCluster({ nodes: 2, podsPerNode: 1 });
});

test.after.always(async () => {
  await cluster?.destroy();
});

const THIEF = '198.51.100.99';
const keyOf = (subnet: string) => `/coreos.com/network/subnets/${subnet.replace('/', '-')}`;
const steal = (subnet: string, mac: string) => cluster.etcd.put(keyOf(subnet), JSON.stringify({ PublicIP: THIEF, BackendType: 'vxlan', BackendData: { VNI: 1, VtepMAC: mac } }));

/** The CNI STATUS verb as a runtime calls it on `node`. */
async function status(node: string) {
  const n = cluster.node(node);
  return cni(n.netns, { command: 'STATUS', conf: { cniVersion: '1.1.0', name: 'weft-lab', type: 'weft', bridge: 'cni0', subnetFile: n.subnetFile, dataDir: n.dataDir } });
}

function addrs(node: string, dev: string): string[] {
  return ipJson(cluster.node(node).netns, 'addr', 'show', 'dev', dev).flatMap((l) =>
    (l.addr_info ?? []).filter((a: { family: string }) => a.family === 'inet').map((a: { local: string; prefixlen: number }) => `${a.local}/${a.prefixlen}`),
  );
}

const gw = (subnet: string) => subnet.replace(/\.0\/(\d+)$/, '.1/$1');

async function waitLost(node: string, subnet: string): Promise<void> {
  const ok = await eventually(async () => (await cluster.topo.http(node, '/readyz')).status === 503 && cluster.topo.subnetEnv(node).WEFT_SUBNET_LOST === gw(subnet), 20_000);
  if (!ok) throw new Error(`${node} did not go lost:\n${cluster.log(node)}`);
}

test.serial('subnet taken by another node: not ready, STATUS 50, ADD retryable, pods kept; reclaimed when the key frees up', async (t) => {
  const subnet = cluster.subnetOf('n1')!;
  const [p1, p2] = [cluster.pods.find((p) => p.node === 'n1')!, cluster.pods.find((p) => p.node === 'n2')!];
  t.true(reachable(p1.netns, p2.ip));
  t.is((await status('n1')).code, 0, 'STATUS passes before');
  const before = { cni0: addrs('n1', 'cni0'), flannel: addrs('n1', 'flannel.1'), logAt: cluster.log('n1').length };

  await steal(subnet, '02:00:00:00:99:01');
  await waitLost('n1', subnet);
  const log = cluster.log('n1').slice(before.logAt);
  t.regex(log, new RegExp(` error \\[n1\\] subnet ${subnet.replace(/[./]/g, '\\$&')} is now held by the node at ${THIEF.replace(/\./g, '\\.')}: not ready`));
  t.is(await cluster.metric('n1', 'weftd_subnet_lost'), 1);
  t.is(await cluster.metric('n1', 'weftd_ready'), 0);
  t.is((await cluster.topo.http('n1', '/healthz')).status, 200, 'alive: nothing is broken in the daemon');
  const env = cluster.topo.subnetEnv('n1');
  t.false('FLANNEL_SUBNET' in env, "no FLANNEL_SUBNET: flannel's plugin refuses ADD too");
  t.is(env.WEFT_SUBNET_HOLDER, THIEF);
  t.truthy(env.FLANNEL_NETWORK);

  const st = await status('n1');
  t.is(st.code, 1, st.stdout);
  t.is(st.json?.code, 50, st.stdout);
  t.regex(st.json?.msg ?? '', /lost this node's subnet/);
  const add = await cluster.topo.addPod('n1').then(
    () => undefined,
    (err: Error) => err.message,
  );
  t.regex(add ?? 'ADD succeeded', /"code":11/, 'a new pod is refused, retryably');
  // The failed pod's namespace is left by addPod; remove it (DEL without an allocation is fine).
  const failed = cluster.topo.state.pods.find((p) => p.node === 'n1' && !p.ip);
  if (failed) await cluster.topo.removePod(failed.name);

  // Nothing torn down: same addresses, the pod still reaches its gateway.
  t.deepEqual(addrs('n1', 'cni0'), before.cni0);
  t.deepEqual(addrs('n1', 'flannel.1'), before.flannel);
  t.true(ping(p1.netns, gw(subnet).split('/')[0]), 'the existing pod reaches its gateway');
  t.true(cluster.hasPeer('n1', 'n2'), 'peers stay programmed');
  await new Promise((r) => setTimeout(r, 3000));
  t.is(cluster.subnetOf('n1'), undefined, 'still lost: not moved while a pod uses the subnet');
  t.is((await cluster.topo.http('n1', '/readyz')).status, 503);

  // The thief goes away: the same subnet comes back.
  await cluster.etcd.del(keyOf(subnet));
  t.true(await eventually(async () => (await cluster.topo.http('n1', '/readyz')).status === 200, 20_000), cluster.log('n1').slice(before.logAt));
  t.is(cluster.subnetOf('n1'), subnet);
  t.is(JSON.parse((await cluster.etcd.get(keyOf(subnet)))!).PublicIP, cluster.node('n1').ip);
  t.regex(cluster.log('n1').slice(before.logAt), /reclaimed subnet /);
  t.is(await cluster.metric('n1', 'weftd_subnet_lost'), 0);
  t.is((await status('n1')).code, 0, 'STATUS passes again');
  t.true(await eventually(() => cluster.hasPeer('n2', 'n1'), 20_000));
  t.true(await eventually(() => reachable(p1.netns, p2.ip) && reachable(p2.netns, p1.ip), 20_000), 'cross-node traffic again');
});

test.serial('restart while lost: stays on the lost subnet (no silent move), reclaimed after', async (t) => {
  const subnet = cluster.subnetOf('n2')!;
  await steal(subnet, '02:00:00:00:99:02');
  await waitLost('n2', subnet);
  await cluster.topo.stopDaemon('n2');
  const logAt = cluster.log('n2').length;
  await cluster.topo.startDaemon('n2', { wait: false });
  t.true(await eventually(() => /started, not ready: subnet .* is held by 198\.51\.100\.99/.test(cluster.log('n2').slice(logAt)), 20_000), cluster.log('n2').slice(logAt));
  t.is((await cluster.topo.http('n2', '/readyz')).status, 503);
  t.is(cluster.topo.subnetEnv('n2').WEFT_SUBNET_LOST, gw(subnet));
  const keys = [...(await cluster.etcd.getPrefix('/coreos.com/network/subnets/')).values()].map((v) => JSON.parse(v).PublicIP);
  t.false(keys.includes(cluster.node('n2').ip), 'no other subnet was taken');
  await cluster.etcd.del(keyOf(subnet));
  t.true(await eventually(async () => (await cluster.topo.http('n2', '/readyz')).status === 200, 20_000), cluster.log('n2').slice(logAt));
  t.is(cluster.subnetOf('n2'), subnet);
});

test.serial('subnet taken and the last pod deleted: the node moves, cni0 and flannel.1 re-addressed, new pods work', async (t) => {
  const subnet = cluster.subnetOf('n1')!;
  const p1 = cluster.pods.find((p) => p.node === 'n1')!;
  const p2 = cluster.pods.find((p) => p.node === 'n2')!;
  const logAt = cluster.log('n1').length;
  await steal(subnet, '02:00:00:00:99:03');
  await waitLost('n1', subnet);
  // DEL works while lost, and frees the last address.
  await cluster.topo.removePod(p1.name);
  cluster.pods.splice(cluster.pods.indexOf(p1), 1);
  const ipamDir = join(cluster.node('n1').dataDir, 'weft-lab');
  t.false(existsSync(join(ipamDir, p1.ip)), `DEL released ${p1.ip}: ${readdirSync(ipamDir).join(', ')}`);

  t.true(await eventually(async () => (await cluster.topo.http('n1', '/readyz')).status === 200, 20_000), cluster.log('n1').slice(logAt));
  const moved = cluster.subnetOf('n1')!;
  t.truthy(moved);
  t.not(moved, subnet);
  t.regex(cluster.log('n1').slice(logAt), /moved the pod gateway on "cni0" to /);
  t.deepEqual(addrs('n1', 'cni0'), [gw(moved)], 'cni0 carries the new gateway only');
  t.deepEqual(addrs('n1', 'flannel.1'), [`${moved.split('/')[0]}/32`]);
  t.is(JSON.parse((await cluster.etcd.get(keyOf(moved)))!).PublicIP, cluster.node('n1').ip);
  t.true(await eventually(() => cluster.hasPeer('n2', 'n1'), 20_000), "n2 programs n1's new subnet");
  const [fresh] = await cluster.addPods('n1', 1);
  t.true(fresh.ip.startsWith(`${moved.split('.').slice(0, 3).join('.')}.`), `${fresh.ip} in ${moved}`);
  const both = await eventually(() => reachable(fresh.netns, p2.ip) && reachable(p2.netns, fresh.ip), 20_000);
  const routes = (n: string) =>
    ipJson(cluster.node(n).netns, 'route', 'show')
      .map((r) => `${r.dst} ${r.gateway ?? ''} ${r.dev}`)
      .join('; ');
  t.true(both, `${fresh.ip} <-> ${p2.ip}: n1 routes ${routes('n1')}\nn2 routes ${routes('n2')}\nn1 log:\n${cluster.log('n1').slice(logAt).split('\n').slice(-25).join('\n')}`);
  await cluster.etcd.del(keyOf(subnet));
});

/**
 * test/priv/cri.test.ts's path (pods through containerd's CRI, the plugin as install-cni.sh
 * installs it) on a Kubernetes-mode cluster, the default install: the lab API server plays
 * kube-apiserver and node IPAM, weftd runs --kube-subnet-mgr, each node's subnet is its Node's
 * podCIDR and peers come from Node annotations.
 */
import test from 'ava';
import { CriCluster, inSubnet, reachable } from '../helpers/cri/nodes.ts';

let c: CriCluster;

test.before(async () => {
  c = await CriCluster.start({ nodes: 2, mode: 'kube' });
});

test.after.always(async () => {
  await c?.destroy();
});

test.serial('kube mode: sandboxes on two nodes get addresses from their podCIDRs and reach each other; Stop/Remove leaves nothing', async (t) => {
  t.is(c.cluster.topo.state.mode, 'kube');
  const before = { n1: c.nodeState('n1'), n2: c.nodeState('n2') };
  // Through weftd: the fallback is not there meanwhile.
  const a = await c.withoutStandalone('n1', () => c.runSandbox('n1'));
  const b = await c.runSandbox('n2');
  // The subnet file weftd wrote from the Node's spec.podCIDR.
  t.true(inSubnet(a.ip, c.cluster.subnetOf('n1')!), `${a.ip} in ${c.cluster.subnetOf('n1')}`);
  t.true(inSubnet(b.ip, c.cluster.subnetOf('n2')!), `${b.ip} in ${c.cluster.subnetOf('n2')}`);
  t.true(reachable(a.netns, b.ip), `${a.ip} -> ${b.ip}`);
  t.true(reachable(b.netns, a.ip), `${b.ip} -> ${a.ip}`);
  await c.removeSandbox(a);
  await c.removeSandbox(b);
  t.deepEqual(c.nodeState('n1'), before.n1);
  t.deepEqual(c.nodeState('n2'), before.n2);
});

test.serial('kube mode: weftd stopped -> weft-standalone serves the pod; the overlay stays', async (t) => {
  const before = c.nodeState('n1');
  const peer = await c.runSandbox('n2');
  await c.cluster.topo.stopDaemon('n1');
  try {
    const s = await c.runSandbox('n1');
    t.true(inSubnet(s.ip, c.cluster.subnetOf('n1')!));
    t.true(reachable(s.netns, peer.ip));
    await c.removeSandbox(s);
    t.deepEqual(c.nodeState('n1'), before);
  } finally {
    await c.cluster.topo.startDaemon('n1', { args: ['--cni-data-dir', c.cluster.node('n1').dataDir] });
  }
  await c.removeSandbox(peer);
});

/**
 * weftd's masquerade rules (flannel's FLANNEL-POSTRTG in `table ip weft`): pod -> outside is
 * masqueraded, except packets kube-proxy marked for its own masquerade (bit 0x4000), which leave
 * untouched so they are not NATed twice. The control-plane namespace has no route back to the
 * pod network, so a reply there proves the source was rewritten and no reply proves it was not.
 * The mark is set the way kube-proxy's nftables mode does (`meta mark set meta mark | 0x4000`),
 * in a table of the test's own, also together with other mark bits (the rule tests the bit, like
 * flannel's `--mark 0x4000/0x4000`).
 */
import test from 'ava';
import { inNs } from '../helpers/netns.ts';
import { startCluster, type Cluster } from '../helpers/cluster.ts';
import { defaultNftBin } from '../../src/rules/nft.ts';

const NFT = defaultNftBin();
let cluster: Cluster;

test.before(async () => {
  cluster = await startCluster({ nodes: 1, podsPerNode: 1 });
});

test.after.always(async () => {
  await cluster?.destroy();
});

/** One ping from the pod to the control-plane namespace's address (a fresh ICMP id, so a fresh conntrack entry). */
function pingOut(): boolean {
  const [pod] = cluster.pods;
  if (!pod) throw new Error('the cluster has no pod');
  try {
    inNs(pod.netns, 'ping', ['-c', '1', '-W', '1', cluster.topo.state.etcdEndpoint.replace(/^\w+:\/\/([\d.]+):\d+$/, '$1')]);
    return true;
  } catch {
    return false;
  }
}

test.serial('pod -> outside is masqueraded, but not what kube-proxy marked 0x4000', (t) => {
  const ns = cluster.node('n1').netns;
  t.regex(cluster.topo.state.etcdEndpoint, /^\w+:\/\/198\.51\.100\.\d+:\d+$/);
  t.regex(inNs(ns, NFT, ['list', 'table', 'ip', 'weft']), /meta mark & 0x00004000 == 0x00004000 return/);
  t.true(pingOut(), 'masqueraded: the reply finds its way back');

  for (const bits of ['0x4000', '0x4001']) {
    inNs(ns, NFT, ['-f', '-'], {
      input: `table ip wt-kp {\n chain pre {\n  type filter hook prerouting priority mangle; policy accept;\n  ip saddr 198.18.0.0/16 meta mark set meta mark | ${bits}\n }\n}\n`,
    });
    t.false(pingOut(), `mark ${bits}: left alone for kube-proxy, so no route back`);
    inNs(ns, NFT, ['delete', 'table', 'ip', 'wt-kp']);
  }

  inNs(ns, NFT, ['-f', '-'], {
    input: 'table ip wt-kp {\n chain pre {\n  type filter hook prerouting priority mangle; policy accept;\n  ip saddr 198.18.0.0/16 meta mark set 0x8000\n }\n}\n',
  });
  t.true(pingOut(), 'another mark bit: masqueraded as usual');
  inNs(ns, NFT, ['delete', 'table', 'ip', 'wt-kp']);
  t.true(pingOut());
});

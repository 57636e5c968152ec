/** weftd against an etcd that requires TLS client certificates (--etcd-cafile/certfile/keyfile). */
import test from 'ava';
import { reachable, startCluster } from '../helpers/cluster.ts';
import { eventually } from '../helpers/netns.ts';

test('two nodes lease subnets and connect pods through an etcd that requires client certificates', async (t) => {
  const cluster = await startCluster({ nodes: 2, podsPerNode: 1, etcdTls: true });
  t.teardown(() => cluster.destroy());
  t.regex(cluster.topo.state.etcdEndpoint, /^https:\/\//);
  const leases = await cluster.etcd.getPrefix('/coreos.com/network/subnets/');
  t.is(leases.size, 2);
  t.true(cluster.hasPeer('n1', 'n2') && cluster.hasPeer('n2', 'n1'));
  const [a, b] = cluster.pods;
  t.true(reachable(a.netns, b.ip));

  // Without the client certificate the daemon cannot get in, and says so without crashing.
  await cluster.topo.addNode({ start: false });
  await cluster.topo.startDaemon('n3', { args: ['--etcd-certfile', '', '--etcd-keyfile', ''], wait: false });
  t.true(await eventually(() => /network config: etcd get "\/coreos\.com\/network\/config" failed/.test(cluster.log('n3')), 30_000), cluster.log('n3'));
  t.is((await cluster.topo.http('n3', '/readyz')).status, 503);
});

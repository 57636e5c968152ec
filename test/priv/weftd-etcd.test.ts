/**
 * etcd outages: while etcd is down the data plane stays; when it is back the daemons recover
 * their watch (a new lease is programmed everywhere) and keep renewing (short TTL here).
 */
import test from 'ava';
import { eventually } from '../helpers/netns.ts';
import { reachable, startCluster, type Cluster } from '../helpers/cluster.ts';

let cluster: Cluster;

test.before(async () => {
  // The default 5-minute resync: these tests must recover through the watch itself (cancel,
  // reconnect, stall detection), never through the periodic re-list.
  cluster = await startCluster({ nodes: 2, podsPerNode: 1, weftdArgs: ['--lease-ttl', '8s', '--renew-margin', '5s', '--watch-stall-timeout', '6s'] });
});

test.after.always(async () => {
  await cluster?.destroy();
});

const FAKE_KEY = '/coreos.com/network/subnets/198.18.250.0-24';
const FAKE = JSON.stringify({ PublicIP: '198.51.100.99', BackendType: 'vxlan', BackendData: { VNI: 1, VtepMAC: '02:00:00:00:fa:01' } });

function hasFake(node: string): boolean {
  const o = cluster.overlay(node);
  return (
    o.routes.some((r) => r.dst === '198.18.250.0/24' && r.gateway === '198.18.250.0') &&
    o.neighs.some((n) => n.dst === '198.18.250.0' && n.lladdr === '02:00:00:00:fa:01') &&
    o.fdbs.some((f) => f.mac === '02:00:00:00:fa:01' && f.dst === '198.51.100.99')
  );
}

test.serial('stop and restart etcd: data plane kept, watch recovered, renewals continue', async (t) => {
  const [a, b] = [cluster.pods.find((p) => p.node === 'n1')!, cluster.pods.find((p) => p.node === 'n2')!];
  const leasesBefore = await cluster.etcd.getPrefix('/coreos.com/network/subnets/');
  t.is(leasesBefore.size, 2);

  await cluster.topo.stopEtcd();
  await new Promise((r) => setTimeout(r, 3000));
  t.true(reachable(a.netns, b.ip), 'pods talk while etcd is down');
  t.true(cluster.hasPeer('n1', 'n2') && cluster.hasPeer('n2', 'n1'));
  for (const n of ['n1', 'n2']) {
    t.is((await cluster.topo.http(n, '/healthz')).status, 200, `${n} stays alive`);
    t.true(await eventually(async () => (await cluster.metric(n, 'weftd_etcd_errors_total')) > 0, 15_000), `${n} counted etcd errors`);
  }
  const renewals = { n1: await cluster.metric('n1', 'weftd_lease_renewals_total'), n2: await cluster.metric('n2', 'weftd_lease_renewals_total') };

  await cluster.topo.startEtcd();
  // Watch recovered: a lease written after the restart is programmed on both nodes.
  await cluster.etcd.put(FAKE_KEY, FAKE);
  for (const n of ['n1', 'n2']) t.true(await eventually(() => hasFake(n), 20_000), `${n} saw a lease put after etcd came back`);
  // The peer's MAC and IP change: new entries in, the old FDB entry out.
  await cluster.etcd.put(FAKE_KEY, JSON.stringify({ PublicIP: '198.51.100.98', BackendType: 'vxlan', BackendData: { VNI: 1, VtepMAC: '02:00:00:00:fa:02' } }));
  for (const n of ['n1', 'n2']) {
    t.true(
      await eventually(() => {
        const o = cluster.overlay(n);
        return (
          o.neighs.some((x) => x.dst === '198.18.250.0' && x.lladdr === '02:00:00:00:fa:02') &&
          o.fdbs.some((f) => f.mac === '02:00:00:00:fa:02' && f.dst === '198.51.100.98') &&
          !o.fdbs.some((f) => f.mac === '02:00:00:00:fa:01')
        );
      }, 20_000),
      `${n} replaced the changed peer and removed its old FDB entry`,
    );
  }
  await cluster.etcd.del(FAKE_KEY);
  for (const n of ['n1', 'n2']) t.true(await eventually(() => cluster.entriesFor(n, '198.18.250.0/24', '198.51.100.98') === 0, 20_000));

  // Renewals continue, and the leases outlive their 8 s TTL.
  for (const n of ['n1', 'n2'] as const) {
    t.true(await eventually(async () => (await cluster.metric(n, 'weftd_lease_renewals_total')) >= renewals[n] + 2, 30_000), `${n} renews after the restart`);
  }
  for (const n of ['n1', 'n2']) {
    const warns = cluster.log(n).match(/ warn .*renew lease:/g) ?? [];
    t.true(warns.length <= 2, `${n}: renew failures are not logged once per retry:\n${warns.join('\n')}`);
  }
  const leasesAfter = await cluster.etcd.getPrefix('/coreos.com/network/subnets/');
  t.deepEqual([...leasesAfter.keys()].sort(), [...leasesBefore.keys()].sort());
  // Each renewal replaces the etcd lease and revokes the old one: no leases pile up.
  const etcdLeases = (await cluster.etcd.ctl(['lease', 'list'])).split('\n').filter((l) => /^[0-9a-f]+$/.test(l.trim()));
  t.is(etcdLeases.length, 2, `etcd leases: ${etcdLeases.join(', ')}`);
  t.true(reachable(a.netns, b.ip));
  t.true(reachable(b.netns, a.ip));
});

test.serial('a watch whose revision was compacted away re-lists and converges', async (t) => {
  const n1 = cluster.node('n1');
  const gone = '/coreos.com/network/subnets/198.18.252.0-24';
  const added = '/coreos.com/network/subnets/198.18.253.0-24';
  await cluster.etcd.put(gone, JSON.stringify({ PublicIP: '198.51.100.97', BackendType: 'vxlan', BackendData: { VNI: 1, VtepMAC: '02:00:00:00:fc:01' } }));
  t.true(await eventually(() => cluster.entriesFor('n1', '198.18.252.0/24', '198.51.100.97') === 3, 20_000));
  const before = cluster.log('n1').length;
  // Freeze n1's daemon, restart etcd under it (its watch stream breaks), change the lease table
  // and compact past everything n1 has seen; when n1 resumes, its watch cannot continue.
  process.kill(n1.pid!, 'SIGSTOP');
  try {
    await cluster.topo.stopEtcd();
    await cluster.topo.startEtcd();
    await cluster.etcd.del(gone);
    await cluster.etcd.put(added, JSON.stringify({ PublicIP: '198.51.100.96', BackendType: 'vxlan', BackendData: { VNI: 1, VtepMAC: '02:00:00:00:fd:01' } }));
    const status = JSON.parse(await cluster.etcd.ctl(['endpoint', 'status', '-w', 'json']));
    await cluster.etcd.ctl(['compact', String(status[0].Status.header.revision)]);
  } finally {
    process.kill(n1.pid!, 'SIGCONT');
  }
  t.true(await eventually(() => cluster.entriesFor('n1', '198.18.253.0/24', '198.51.100.96') === 3, 30_000), 'lease added during the gap programmed');
  t.true(await eventually(() => cluster.entriesFor('n1', '198.18.252.0/24', '198.51.100.97') === 0, 30_000), 'lease deleted during the gap removed');
  t.regex(cluster.log('n1').slice(before), /lease watch: .*re-listing/);
  t.log(
    cluster
      .log('n1')
      .slice(before)
      .match(/lease watch: .*/g),
  );
  await cluster.etcd.del(added);
  t.true(await eventually(() => cluster.entriesFor('n1', '198.18.253.0/24', '198.51.100.96') === 0, 20_000), 'watch works after the resync');
});

test.serial('a compaction that cancels the watch while it is connected re-lists and converges', async (t) => {
  const n1 = cluster.node('n1');
  const gone = '/coreos.com/network/subnets/198.18.248.0-24';
  const added = '/coreos.com/network/subnets/198.18.249.0-24';
  await cluster.etcd.put(gone, JSON.stringify({ PublicIP: '198.51.100.95', BackendType: 'vxlan', BackendData: { VNI: 1, VtepMAC: '02:00:00:00:f8:01' } }));
  t.true(await eventually(() => cluster.entriesFor('n1', '198.18.248.0/24', '198.51.100.95') === 3, 20_000));
  const before = cluster.log('n1').length;
  // etcd stays up and n1's watch stream stays connected. While n1 is frozen it reads nothing,
  // so enough large events under the watched prefix fill the stream and etcd sets the watcher
  // aside (unsynced); the lease changes after that and a compaction past them mean etcd must
  // cancel the watch with "compacted" once n1 reads again: only a re-list can bring them in.
  process.kill(n1.pid!, 'SIGSTOP');
  try {
    const filler = 'x'.repeat(64 * 1024);
    for (let i = 0; i < 240; i += 8) {
      await Promise.all(Array.from({ length: 8 }, (_, j) => cluster.etcd.ctl(['put', `/coreos.com/network/subnets/filler-${i + j}`], filler)));
    }
    await cluster.etcd.del(gone);
    await cluster.etcd.put(added, JSON.stringify({ PublicIP: '198.51.100.94', BackendType: 'vxlan', BackendData: { VNI: 1, VtepMAC: '02:00:00:00:f9:01' } }));
    // Gone again before n1 re-lists: 15 MB under the prefix would exceed a list's message limit.
    await cluster.etcd.del('/coreos.com/network/subnets/filler-', { prefix: true });
    const status = JSON.parse(await cluster.etcd.ctl(['endpoint', 'status', '-w', 'json']));
    await cluster.etcd.ctl(['compact', String(status[0].Status.header.revision)]);
  } finally {
    process.kill(n1.pid!, 'SIGCONT');
  }
  t.true(
    await eventually(() => cluster.entriesFor('n1', '198.18.249.0/24', '198.51.100.94') === 3, 60_000),
    `lease added behind the compaction programmed; n1: ${cluster
      .log('n1')
      .slice(before)
      .split('\n')
      .filter((l) => !l.includes('filler-'))
      .join('\n')}`,
  );
  t.true(await eventually(() => cluster.entriesFor('n1', '198.18.248.0/24', '198.51.100.95') === 0, 30_000), 'lease deleted behind the compaction removed');
  // The live path: etcd cancels the watch for the compaction (on the stream that stayed
  // connected, or when the watch is re-created after a stall, or after the behind probe found
  // the put undelivered: etcd answered progress but set the watcher aside) and n1 re-lists; the
  // periodic resync (5 min here) plays no part.
  const logs = cluster.log('n1').slice(before);
  t.log(logs.match(/lease watch: .*/g));
  t.regex(logs, /lease watch: watch cancelled \(compacted at revision \d+\); re-listing/);
  t.notRegex(logs, /lease resync: /);
  await cluster.etcd.del(added);
  t.true(await eventually(() => cluster.entriesFor('n1', '198.18.249.0/24', '198.51.100.94') === 0, 20_000), 'watch works after the resync');
});

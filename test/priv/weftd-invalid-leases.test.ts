/**
 * The lease gate in a running cluster: invalid leases written to etcd (a subnet outside the
 * Network, a /25 inside a peer's subnet, a peer's VtepMAC, our own PublicIP, a multicast
 * VtepMAC) are never programmed (no route, neighbor or FDB entry), counted by
 * `weftd_invalid_leases`, logged once each, and reported by `weftctl check`; a later valid value
 * for a rejected key is programmed. A valid lease written alongside shows the watch delivered
 * them all.
 */
import test from 'ava';
import { spawnSync } from 'node:child_process';
import { join, resolve } from 'node:path';
import { eventually } from '../helpers/netns.ts';
import { reachable, startCluster, type Cluster } from '../helpers/cluster.ts';

const WEFTCTL = join(resolve(import.meta.dirname, '../..'), 'dist', 'bin', 'weftctl');
const KEYS = '/coreos.com/network/subnets/';

let cluster: Cluster;

test.before(async () => {
  cluster = await startCluster({ nodes: 2, podsPerNode: 1 });
});

test.after.always(async () => {
  await cluster?.destroy();
});

const value = (publicIP: string, mac: string) => JSON.stringify({ PublicIP: publicIP, BackendType: 'vxlan', BackendData: { VNI: 1, VtepMAC: mac } });

/** Routes, neighbors and FDB entries on `node`'s flannel.1 that mention any of `subnets`, `ips` or `macs`. */
function entriesOf(node: string, bad: { subnets: string[]; gateways: string[]; macs: string[] }): string[] {
  const o = cluster.overlay(node);
  return [
    ...o.routes.filter((r) => bad.subnets.includes(r.dst) || bad.gateways.includes(r.gateway ?? '')).map((r) => `route ${r.dst}`),
    ...o.neighs.filter((n) => bad.gateways.includes(n.dst) || bad.macs.includes(n.lladdr ?? '')).map((n) => `neigh ${n.dst}`),
    ...o.fdbs.filter((f) => bad.macs.includes(f.mac)).map((f) => `fdb ${f.mac}`),
  ];
}

function count(text: string, needle: string): number {
  return text.split('\n').filter((l) => l.includes(needle)).length;
}

test.serial('invalid leases are never programmed, counted and logged once; a later valid value is applied', async (t) => {
  const n1 = cluster.node('n1');
  const sub2 = cluster.subnetOf('n2')!;
  const mac2 = cluster.overlay('n2').mac!;
  const inside2 = sub2.replace(/\.0\/24$/, '.128');
  const bad = {
    [`${KEYS}1.0.0.0-8`]: value('198.51.100.91', '02:00:00:00:a1:01'),
    [`${KEYS}${inside2}-25`]: value('198.51.100.92', '02:00:00:00:a2:01'),
    [`${KEYS}198.18.240.0-24`]: value('198.51.100.93', mac2),
    [`${KEYS}198.18.241.0-24`]: value(n1.ip, '02:00:00:00:a4:01'),
    [`${KEYS}198.18.242.0-24`]: value('198.51.100.95', '01:00:5e:00:00:01'),
  };
  for (const [k, v] of Object.entries(bad)) await cluster.etcd.put(k, v);
  await cluster.etcd.put(`${KEYS}198.18.243.0-24`, value('198.51.100.96', '02:00:00:00:a6:01'));
  const has243 = (n: string) => cluster.overlay(n).routes.some((r) => r.dst === '198.18.243.0/24');
  for (const n of ['n1', 'n2']) t.true(await eventually(() => has243(n), 15_000), `${n} programmed the valid lease written after the bad ones`);

  const probe = {
    subnets: ['1.0.0.0/8', `${inside2}/25`, '198.18.240.0/24', '198.18.241.0/24', '198.18.242.0/24'],
    gateways: ['1.0.0.0', inside2, '198.18.240.0', '198.18.241.0', '198.18.242.0'],
    macs: ['02:00:00:00:a1:01', '02:00:00:00:a2:01', '02:00:00:00:a4:01', '01:00:5e:00:00:01'],
  };
  const why = (n: string) =>
    cluster
      .log(n)
      .split('\n')
      .filter((l) => /198\.18\.24\d|lease watch|rejected|invalid|peer (added|changed|removed)/.test(l))
      .slice(-30)
      .join('\n');
  t.deepEqual(entriesOf('n1', probe), [], `n1 has no entry for any invalid lease; its log:\n${why('n1')}`);
  t.is(await cluster.metric('n1', 'weftd_invalid_leases'), 5);
  // On n2 the lease with n1's PublicIP is just another peer's; n2's own VtepMAC is refused there too.
  t.deepEqual(
    entriesOf('n2', {
      ...probe,
      subnets: probe.subnets.filter((s) => s !== '198.18.241.0/24'),
      gateways: probe.gateways.filter((g) => g !== '198.18.241.0'),
      macs: probe.macs.filter((m) => m !== '02:00:00:00:a4:01'),
    }),
    [],
  );
  t.is(await cluster.metric('n2', 'weftd_invalid_leases'), 4);
  t.true(cluster.hasPeer('n1', 'n2') && cluster.hasPeer('n2', 'n1'), 'the real peers are untouched');
  const [a, b] = [cluster.pods.find((p) => p.node === 'n1')!, cluster.pods.find((p) => p.node === 'n2')!];
  t.true(reachable(a.netns, b.ip), 'pods still talk');

  const reasons = [
    'ignoring lease 1.0.0.0/8 (PublicIP 198.51.100.91): subnet 1.0.0.0/8 is not inside network 198.18.0.0/16',
    `ignoring lease ${inside2}/25 (PublicIP 198.51.100.92): subnet ${inside2}/25 is not a /24`,
    `ignoring lease 198.18.240.0/24 (PublicIP 198.51.100.93): VtepMAC ${mac2} is also used by the lease for ${sub2}, which ranks first`,
    `ignoring lease 198.18.241.0/24 (PublicIP ${n1.ip}): PublicIP ${n1.ip} is this node's address`,
    'ignoring lease 198.18.242.0/24 (PublicIP 198.51.100.95): VtepMAC 01:00:5e:00:00:01 is multicast',
  ];
  // Past a rules tick (facts re-read) and more reconcile passes: still one line each.
  await new Promise((r) => setTimeout(r, 12_000));
  const log1 = cluster.log('n1');
  for (const line of reasons) t.is(count(log1, line), 1, `${line}\n${log1.slice(-3000)}`);

  const node = n1;
  const check = spawnSync('nsenter', [`--net=/run/netns/${node.netns}`, '--', WEFTCTL, 'check', '--subnet-file', node.subnetFile, '-o', 'json'], {
    encoding: 'utf8',
    env: { PATH: process.env.PATH, WEFTD_ETCD_ENDPOINTS: cluster.topo.state.etcdEndpoint, WEFTD_ETCD_PREFIX: cluster.topo.state.etcdPrefix },
  });
  t.is(check.status, 1, check.stdout + check.stderr);
  const report = JSON.parse(check.stdout);
  t.deepEqual(report.rejected.map((r: { subnet: string }) => r.subnet).sort(), [...probe.subnets].sort());
  t.deepEqual(
    report.findings.map((f: { kind: string; object: string }) => `${f.kind} ${f.object}`),
    probe.subnets.map(() => 'wrong lease'),
    'nothing else differs: the rejected leases are not expected in the kernel',
  );
  t.deepEqual(report.forward, { state: 'ok' });

  // A valid value for the multicast key: programmed, and the gauge drops.
  await cluster.etcd.put(`${KEYS}198.18.242.0-24`, value('198.51.100.95', '02:00:00:00:a5:01'));
  for (const n of ['n1', 'n2']) {
    t.true(
      await eventually(() => {
        const o = cluster.overlay(n);
        return (
          o.routes.some((r) => r.dst === '198.18.242.0/24' && r.gateway === '198.18.242.0') &&
          o.neighs.some((x) => x.dst === '198.18.242.0' && x.lladdr === '02:00:00:00:a5:01') &&
          o.fdbs.some((f) => f.mac === '02:00:00:00:a5:01' && f.dst === '198.51.100.95')
        );
      }, 15_000),
      `${n} programmed the corrected lease`,
    );
  }
  t.is(await cluster.metric('n1', 'weftd_invalid_leases'), 4);
  t.is(await cluster.metric('n2', 'weftd_invalid_leases'), 3);
});

/** Pure parts of weftctl: duration and table rendering, the check comparison, the version. */
import test from 'ava';
import { readFileSync } from 'node:fs';
import { compareState, parseSubnetEnv, type KernelState } from '../../src/status/check.ts';
import { nodeFromKv } from '../../src/status/collect.ts';
import type { NetworkSummary, NodeLease } from '../../src/status/model.ts';
import { formatDuration, renderNodes, table } from '../../src/status/render.ts';
import { VERSION } from '../../src/status/version.ts';

test('VERSION is package.json version', (t) => {
  t.is(VERSION, JSON.parse(readFileSync('package.json', 'utf8')).version);
});

test('formatDuration is kubectl-like', (t) => {
  t.is(formatDuration(undefined), '<none>');
  t.is(formatDuration(-1), '<none>');
  t.is(formatDuration(45), '45s');
  t.is(formatDuration(300), '5m');
  t.is(formatDuration(310), '5m10s');
  t.is(formatDuration(3600), '1h');
  t.is(formatDuration(3600 * 3 + 60 * 12), '3h12m');
  t.is(formatDuration(86_400 * 2 + 3600 * 4), '2d4h');
});

test('table aligns columns', (t) => {
  t.is(table(['A', 'LONGER'], [['xxxx', 'y'], ['z', 'w']]), 'A      LONGER\nxxxx   y\nz      w\n');
});

const kv = (subnet: string, value: unknown, lease = '0') => ({
  key: Buffer.from(`/p/subnets/${subnet.replace('/', '-')}`),
  value: Buffer.from(JSON.stringify(value)),
  mod_revision: '7',
  create_revision: '5',
  lease,
});

test('nodeFromKv reads flannel lease values and TTLs; foreign keys are skipped', (t) => {
  const n = nodeFromKv(kv('198.18.3.0/24', { PublicIP: '198.51.100.13', BackendType: 'vxlan', BackendData: { VNI: 1, VtepMAC: 'AA:BB:CC:00:00:03' } }, '42'), {
    TTL: 100,
    grantedTTL: 160,
  })!;
  t.like(n, { publicIP: '198.51.100.13', subnet: '198.18.3.0/24', vtepIP: '198.18.3.0', vtepMAC: 'aa:bb:cc:00:00:03', vni: 1, etcdLeaseId: '42' });
  t.is(n.expiresInSeconds, 100);
  t.is(n.leaseAgeSeconds, 60);
  t.is(nodeFromKv({ ...kv('x', {}), key: Buffer.from('/p/subnets/garbage') }), undefined);
  t.is(nodeFromKv(kv('198.18.4.0/24', { BackendType: 'vxlan' })), undefined);
});

test('renderNodes says when there are no leases', (t) => {
  t.is(renderNodes({ prefix: '/p', revision: '1', nodes: [] }, 'table'), 'No node leases found under "/p/subnets/".\n');
});

const config: NetworkSummary = {
  network: '198.18.0.0/16',
  subnetLen: 24,
  subnetMin: '198.18.1.0',
  subnetMax: '198.18.255.0',
  backend: { type: 'vxlan', vni: 1, port: 8472 },
};

function lease(subnet: string, publicIP: string, mac: string): NodeLease {
  return nodeFromKv(kv(subnet, { PublicIP: publicIP, BackendType: 'vxlan', BackendData: { VNI: 1, VtepMAC: mac } }))!;
}

function healthyKernel(): KernelState {
  return {
    device: { index: 5, name: 'flannel.1', kind: 'vxlan', mtu: 1450, mac: '0a:00:00:00:00:01', up: true, vxlan: { vni: 1, port: 8472, local: '198.51.100.11', parentIndex: 2, learning: false } },
    parent: { index: 2, name: 'eth0', mtu: 1500, mac: '0a:00:00:00:01:01', up: true },
    addrs: [{ index: 5, ip: '198.18.1.0', prefixLen: 32 }],
    neighs: [{ index: 5, ip: '198.18.2.0', mac: '0a:00:00:00:00:02', permanent: true }],
    fdbs: [{ index: 5, mac: '0a:00:00:00:00:02', dst: '198.51.100.12' }],
    routes: [{ dst: '198.18.2.0/24', gateway: '198.18.2.0', index: 5, onlink: true }],
    subnetFile: parseSubnetEnv('FLANNEL_NETWORK=198.18.0.0/16\nFLANNEL_SUBNET=198.18.1.1/24\nFLANNEL_MTU=1450\nFLANNEL_IPMASQ=true\n'),
  };
}

const leases = [lease('198.18.1.0/24', '198.51.100.11', '0a:00:00:00:00:01'), lease('198.18.2.0/24', '198.51.100.12', '0a:00:00:00:00:02')];
const run = (kernel: KernelState) => compareState({ kernel, leases, config, device: 'flannel.1', subnetFile: '/run/flannel/subnet.env' });

test('compareState: healthy state is consistent', (t) => {
  const r = run(healthyKernel());
  t.deepEqual(r.findings, []);
  t.true(r.consistent);
  t.deepEqual(r.self, { publicIP: '198.51.100.11', subnet: '198.18.1.0/24' });
  t.deepEqual(r.peers.map((p) => [p.subnet, p.neighbor, p.fdb, p.route]), [['198.18.2.0/24', 'ok', 'ok', 'ok']]);
});

test('compareState: device drift (MAC peers do not know, learning, MTU, address)', (t) => {
  const k = healthyKernel();
  k.device = { ...k.device!, mac: '0a:ff:00:00:00:01', mtu: 1500, vxlan: { ...k.device!.vxlan!, learning: true } };
  k.addrs = [];
  const details = run(k).findings.map((f) => `${f.kind} ${f.object}: ${f.detail}`);
  t.true(details.some((d) => d.startsWith('wrong device: flannel.1 MAC 0a:ff:00:00:00:01, lease publishes 0a:00:00:00:00:01')));
  t.true(details.some((d) => d.startsWith('wrong device: flannel.1 has learning on')));
  t.true(details.some((d) => d === 'wrong device: flannel.1 MTU 1500, expected 1450 (eth0 MTU 1500 - 50)'));
  t.true(details.includes('missing address: 198.18.1.0/32 on flannel.1'));
});

test('compareState: a non-permanent neighbor and a route without onlink are wrong', (t) => {
  const k = healthyKernel();
  k.neighs = [{ ...k.neighs[0]!, permanent: false }];
  k.routes = [{ ...k.routes[0]!, onlink: false }];
  const r = run(k);
  t.deepEqual(r.peers.map((p) => [p.neighbor, p.fdb, p.route]), [['wrong', 'ok', 'wrong']]);
  t.false(r.consistent);
});

test('compareState: an address weftd would remove is extra; a non-vxlan device is wrong', (t) => {
  const k = healthyKernel();
  k.addrs.push({ index: 5, ip: '198.18.7.0', prefixLen: 32 });
  t.deepEqual(run(k).findings.map((f) => `${f.kind} ${f.object}: ${f.detail}`), ['extra address: 198.18.7.0/32 on flannel.1']);
  k.device = { ...k.device!, kind: 'bridge', vxlan: undefined };
  k.addrs.pop();
  t.deepEqual(run(k).findings.map((f) => `${f.kind} ${f.object}: ${f.detail}`), ['wrong device: flannel.1 is a bridge device, not vxlan']);
});

/**
 * Pure parts of weftctl: lease -> node, rendering (tables, the kubectl-style list), the watch's
 * event table, the check comparison, the version.
 */
import test from 'ava';
import { readFileSync } from 'node:fs';
import { compareState, type KernelState } from '../../src/status/check.ts';
import { parseSubnetEnvVars } from '../../src/core/subnetenv.ts';
import { NodeEvents } from '../../src/ctl/watch.ts';
import { parseCIDR } from '../../src/ip/ipv4.ts';
import { nodeFromLease } from '../../src/status/collect.ts';
import type { NetworkSummary, NodeEvent, NodeLease } from '../../src/status/model.ts';
import { formatDuration, renderNodes, table } from '../../src/status/render.ts';
import { parseLeaseValue, subnetKey } from '../../src/subnet/lease.ts';
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
  t.is(
    table(
      ['A', 'LONGER'],
      [
        ['xxxx', 'y'],
        ['z', 'w'],
      ],
    ),
    'A      LONGER\nxxxx   y\nz      w\n',
  );
});

/** A lease as the subnet manager lists it, from flannel's JSON value. */
function nodeOf(subnet: string, value: unknown, opts: { etcdLeaseId?: string; modRevision?: string; ttl?: { TTL: number; grantedTTL: number } } = {}): NodeLease {
  const lease = { subnet: parseCIDR(subnet), ...parseLeaseValue(JSON.stringify(value)), modRevision: opts.modRevision ?? '7', etcdLeaseId: opts.etcdLeaseId };
  return nodeFromLease(lease, { key: subnetKey('/p', lease.subnet), ttl: opts.ttl });
}

test('nodeFromLease reads flannel lease values and TTLs', (t) => {
  const n = nodeOf(
    '198.18.3.0/24',
    { PublicIP: '198.51.100.13', BackendType: 'vxlan', BackendData: { VNI: 1, VtepMAC: 'AA:BB:CC:00:00:03' } },
    { etcdLeaseId: '42', ttl: { TTL: 100, grantedTTL: 160 } },
  );
  t.like(n, { publicIP: '198.51.100.13', subnet: '198.18.3.0/24', vtepIP: '198.18.3.0', vtepMAC: 'aa:bb:cc:00:00:03', vni: 1, etcdLeaseId: '42', key: '/p/subnets/198.18.3.0-24', modRevision: '7' });
  t.is(n.expiresInSeconds, 100);
  t.is(n.leaseAgeSeconds, 60);
  // An expired etcd lease (TTL -1) and a key without one carry no lease times.
  const expired = nodeOf('198.18.4.0/24', { PublicIP: '198.51.100.14' }, { etcdLeaseId: '43', ttl: { TTL: -1, grantedTTL: 0 } });
  t.is(expired.expiresInSeconds, undefined);
  t.like(nodeOf('198.18.5.0/24', { PublicIP: '198.51.100.15' }), { etcdLeaseId: '0', vtepMAC: undefined, vni: undefined });
});

test('renderNodes says when there are no leases', (t) => {
  t.is(renderNodes({ location: '/p/subnets/', nodes: [] }, 'table'), 'No node leases found under "/p/subnets/".\n');
});

test('renderNodes -o json|yaml prints a kubectl-style List', (t) => {
  const nodes = [nodeOf('198.18.2.0/24', { PublicIP: '198.51.100.12' }), nodeOf('198.18.3.0/24', { PublicIP: '198.51.100.13' })];
  const json = JSON.parse(renderNodes({ location: '/p/subnets/', nodes }, 'json'));
  t.deepEqual(Object.keys(json), ['apiVersion', 'kind', 'items']);
  t.like(json, { apiVersion: 'v1', kind: 'List' });
  t.deepEqual(
    json.items.map((n: NodeLease) => n.subnet),
    ['198.18.2.0/24', '198.18.3.0/24'],
  );
  t.regex(renderNodes({ location: '/p/subnets/', nodes: [] }, 'yaml'), /^apiVersion: v1\nkind: List\nitems: \[\]\n$/);
});

test('NodeEvents: puts and deletes after the printed list, and a re-list snapshot diffed against it', (t) => {
  const at = (subnet: string, publicIP: string, modRevision: string) => nodeOf(subnet, { PublicIP: publicIP }, { modRevision });
  const seen: string[] = [];
  const ev = new NodeEvents([at('198.18.1.0/24', '198.51.100.11', '5'), at('198.18.2.0/24', '198.51.100.12', '6')], (e: NodeEvent) => seen.push(`${e.type} ${e.node.subnet} ${e.node.publicIP}`));
  // The watch's first snapshot repeats what was printed: nothing to report.
  ev.snapshot([at('198.18.1.0/24', '198.51.100.11', '5'), at('198.18.2.0/24', '198.51.100.12', '6')]);
  t.deepEqual(seen, []);
  ev.put(at('198.18.3.0/24', '198.51.100.13', '8'));
  ev.put(at('198.18.3.0/24', '198.51.100.13', '8')); // a replay
  ev.put(at('198.18.1.0/24', '198.51.100.21', '9'));
  ev.delete('/p/subnets/198.18.9.0-24'); // never seen
  // A re-list after compaction: 198.18.2.0/24 went away, 198.18.4.0/24 came, 198.18.3.0/24 changed.
  ev.snapshot([at('198.18.1.0/24', '198.51.100.21', '9'), at('198.18.3.0/24', '198.51.100.33', '12'), at('198.18.4.0/24', '198.51.100.14', '11')]);
  ev.delete('/p/subnets/198.18.4.0-24');
  t.deepEqual(seen, [
    'ADDED 198.18.3.0/24 198.51.100.13',
    'MODIFIED 198.18.1.0/24 198.51.100.21',
    'MODIFIED 198.18.3.0/24 198.51.100.33',
    'ADDED 198.18.4.0/24 198.51.100.14',
    'DELETED 198.18.2.0/24 198.51.100.12',
    'DELETED 198.18.4.0/24 198.51.100.14',
  ]);
});

const config: NetworkSummary = {
  network: '198.18.0.0/16',
  subnetLen: 24,
  subnetMin: '198.18.1.0',
  subnetMax: '198.18.255.0',
  backend: { type: 'vxlan', vni: 1, port: 8472 },
};

function lease(subnet: string, publicIP: string, mac: string): NodeLease {
  return nodeOf(subnet, { PublicIP: publicIP, BackendType: 'vxlan', BackendData: { VNI: 1, VtepMAC: mac } });
}

function healthyKernel(): KernelState {
  return {
    device: { index: 5, name: 'flannel.1', kind: 'vxlan', mtu: 1450, mac: '0a:00:00:00:00:01', up: true, vxlan: { vni: 1, port: 8472, local: '198.51.100.11', parentIndex: 2, learning: false } },
    parent: { index: 2, name: 'eth0', mtu: 1500, mac: '0a:00:00:00:01:01', up: true },
    addrs: [{ index: 5, ip: '198.18.1.0', prefixLen: 32 }],
    neighs: [{ index: 5, ip: '198.18.2.0', mac: '0a:00:00:00:00:02', permanent: true }],
    fdbs: [{ index: 5, mac: '0a:00:00:00:00:02', dst: '198.51.100.12' }],
    routes: [{ dst: '198.18.2.0/24', gateway: '198.18.2.0', index: 5, onlink: true }],
    subnetFile: Object.fromEntries(parseSubnetEnvVars('FLANNEL_NETWORK=198.18.0.0/16\nFLANNEL_SUBNET=198.18.1.1/24\nFLANNEL_MTU=1450\nFLANNEL_IPMASQ=true\n')),
  };
}

const leases = [lease('198.18.1.0/24', '198.51.100.11', '0a:00:00:00:00:01'), lease('198.18.2.0/24', '198.51.100.12', '0a:00:00:00:00:02')];
const run = (kernel: KernelState) => compareState({ kernel, leases, config, device: 'flannel.1', subnetFile: '/run/flannel/subnet.env' });

test('compareState: healthy state is consistent', (t) => {
  const r = run(healthyKernel());
  t.deepEqual(r.findings, []);
  t.true(r.consistent);
  t.deepEqual(r.self, { publicIP: '198.51.100.11', subnet: '198.18.1.0/24' });
  t.deepEqual(
    r.peers.map((p) => [p.subnet, p.neighbor, p.fdb, p.route]),
    [['198.18.2.0/24', 'ok', 'ok', 'ok']],
  );
});

test('compareState: a lost subnet (the lost form of the subnet file) is reported with its holder', (t) => {
  const k = healthyKernel();
  k.subnetFile = { FLANNEL_NETWORK: '198.18.0.0/16', WEFT_SUBNET_LOST: '198.18.1.1/24', WEFT_SUBNET_HOLDER: '198.51.100.99', FLANNEL_MTU: '1450', FLANNEL_IPMASQ: 'true' };
  const r = compareState({ kernel: k, leases: [lease('198.18.1.0/24', '198.51.100.99', '0a:00:00:00:00:99'), leases[1]!], config, device: 'flannel.1', subnetFile: '/run/flannel/subnet.env' });
  const details = r.findings.map((f) => `${f.kind} ${f.object}: ${f.detail}`);
  t.true(
    details.some((d) => d.startsWith('wrong subnet-file: subnet 198.18.1.1/24 is lost to the node at 198.51.100.99')),
    details.join('\n'),
  );
  t.false(r.consistent);
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
  t.deepEqual(
    r.peers.map((p) => [p.neighbor, p.fdb, p.route]),
    [['wrong', 'ok', 'wrong']],
  );
  t.false(r.consistent);
});

test('compareState: an address weftd would remove is extra; a non-vxlan device is wrong', (t) => {
  const k = healthyKernel();
  k.addrs.push({ index: 5, ip: '198.18.7.0', prefixLen: 32 });
  t.deepEqual(
    run(k).findings.map((f) => `${f.kind} ${f.object}: ${f.detail}`),
    ['extra address: 198.18.7.0/32 on flannel.1'],
  );
  k.device = { ...k.device!, kind: 'bridge', vxlan: undefined };
  k.addrs.pop();
  t.deepEqual(
    run(k).findings.map((f) => `${f.kind} ${f.object}: ${f.detail}`),
    ['wrong device: flannel.1 is a bridge device, not vxlan'],
  );
});

test('compareState: leases weftd rejects are reported and not expected in the kernel; FORWARD rules state', (t) => {
  const k = healthyKernel();
  k.facts = { ownAddresses: ['198.51.100.11', '198.18.1.0'], connectedRoutes: [parseCIDR('198.51.100.0/24')] };
  const bad = [lease('1.0.0.0/8', '198.51.100.13', '0a:00:00:00:00:03'), lease('198.18.4.0/24', '198.51.100.11', '0a:00:00:00:00:04'), lease('198.18.5.0/24', '198.51.100.15', '01:00:5e:00:00:05')];
  k.forward = { drift: 'iptables-nft: jump from FORWARD to WEFT-FORWARD missing' };
  const r = compareState({ kernel: k, leases: [...leases, ...bad], config, device: 'flannel.1', subnetFile: '/run/flannel/subnet.env' });
  t.deepEqual(r.self, { publicIP: '198.51.100.11', subnet: '198.18.1.0/24' }, 'a second lease with our PublicIP does not pass for ours');
  t.deepEqual(
    r.peers.map((p) => p.subnet),
    ['198.18.2.0/24'],
    'no neighbor/FDB/route expected for a rejected lease',
  );
  t.deepEqual(
    r.rejected.map((x) => x.subnet),
    ['1.0.0.0/8', '198.18.4.0/24', '198.18.5.0/24'],
  );
  t.deepEqual(r.forward, { state: 'drift', detail: 'iptables-nft: jump from FORWARD to WEFT-FORWARD missing' });
  t.deepEqual(
    r.findings.map((f) => `${f.kind} ${f.object}: ${f.detail}`),
    [
      'missing forward-rules: iptables FORWARD accept rules for 198.18.0.0/16: iptables-nft: jump from FORWARD to WEFT-FORWARD missing',
      'wrong lease: 1.0.0.0/8 (PublicIP 198.51.100.13) is invalid, weftd ignores it: subnet 1.0.0.0/8 is not inside network 198.18.0.0/16',
      "wrong lease: 198.18.4.0/24 (PublicIP 198.51.100.11) is invalid, weftd ignores it: PublicIP 198.51.100.11 is this node's address",
      'wrong lease: 198.18.5.0/24 (PublicIP 198.51.100.15) is invalid, weftd ignores it: VtepMAC 01:00:5e:00:00:05 is multicast',
    ],
  );
  t.false(r.consistent);
  k.forward = { drift: undefined };
  const ok = compareState({ kernel: k, leases, config, device: 'flannel.1', subnetFile: '/run/flannel/subnet.env' });
  t.true(ok.consistent);
  t.deepEqual(ok.forward, { state: 'ok' });
  k.forward = { error: 'nft: not found' };
  t.deepEqual(
    run(k).findings.map((f) => `${f.kind} ${f.object}`),
    ['wrong forward-rules'],
  );
});

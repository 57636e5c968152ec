import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import test from 'ava';
import { formatCIDR, parseCIDR } from '../../src/ip/ipv4.ts';
import { ConfigError, parseNetworkConfig } from '../../src/subnet/config.ts';
import type { LeaseEvent } from '../../src/subnet/manager.ts';
import { annotatedVtepMAC, annotationNames, networkAvailablePatch, nodeToLease, ownAnnotations, parseBackendDataAnnotation, podCIDRText, type NodeLike } from '../../src/subnet/kube/annotations.ts';
import { loadNetConf } from '../../src/subnet/kube/netconf.ts';
import { NodeLeaseTable } from '../../src/subnet/kube/table.ts';
import { KubeApiError, loadKubeConfig } from '../../src/kube/client.ts';
import { KubeSubnetManager } from '../../src/subnet/kube/manager.ts';
import { KubeConfig } from '@kubernetes/client-node';
import { createKubeSubnetManager } from '../../src/subnet/kube/index.ts';

const P = 'flannel.alpha.coreos.com/';
const names = annotationNames();
const config = parseNetworkConfig(JSON.stringify({ Network: '198.18.0.0/16', Backend: { Type: 'vxlan', VNI: 1 } }));

function node(name: string, o: { cidr?: string; mac?: string; ip?: string; extra?: Record<string, string>; bare?: boolean } = {}): NodeLike {
  const annotations: Record<string, string> = o.bare
    ? {}
    : {
        [`${P}kube-subnet-manager`]: 'true',
        [`${P}backend-type`]: 'vxlan',
        [`${P}backend-data`]: JSON.stringify({ VNI: 1, VtepMAC: o.mac ?? '0a:00:00:00:00:01' }),
        [`${P}public-ip`]: o.ip ?? '198.51.100.11',
      };
  Object.assign(annotations, o.extra);
  return { metadata: { name, annotations }, spec: o.cidr === '' ? {} : { podCIDR: o.cidr ?? '198.18.1.0/24' } };
}

const describe = (evs: LeaseEvent[]) =>
  evs.map((e) => (e.type === 'put' ? `put ${formatCIDR(e.lease.subnet)} ${e.lease.publicIP} ${(e.lease.backendData as { VtepMAC: string }).VtepMAC}` : `delete ${formatCIDR(e.subnet)}`));

test('annotation names: flannel prefix by default, custom prefix validated', (t) => {
  t.is(names.backendData, 'flannel.alpha.coreos.com/backend-data');
  t.is(names.publicIPOverwrite, 'flannel.alpha.coreos.com/public-ip-overwrite');
  t.is(annotationNames('weft.example.com/').publicIP, 'weft.example.com/public-ip');
  t.throws(() => annotationNames('Not A Domain'), { message: /not a DNS subdomain/ });
  t.throws(() => annotationNames('a/b'), { message: /not a DNS subdomain/ });
});

test('nodeToLease: a well-annotated peer becomes a lease in the etcd schema', (t) => {
  const r = nodeToLease(node('n2', { cidr: '198.18.2.0/24', mac: '0A:00:00:00:00:02', ip: '198.51.100.12' }), { names, config });
  t.is(r.kind, 'lease');
  if (r.kind !== 'lease') return;
  t.is(formatCIDR(r.lease.subnet), '198.18.2.0/24');
  t.is(r.lease.publicIP, '198.51.100.12');
  t.is(r.lease.backendType, 'vxlan');
  t.deepEqual(r.lease.backendData, { VNI: 1, VtepMAC: '0a:00:00:00:00:02' });
});

test('nodeToLease: podCIDRs (dual stack) picks the IPv4 entry', (t) => {
  const n = node('n2');
  n.spec = { podCIDR: 'fd00::/64', podCIDRs: ['fd00::/64', '198.18.7.0/24'] };
  t.is(podCIDRText(n), '198.18.7.0/24');
  const r = nodeToLease(n, { names, config });
  t.true(r.kind === 'lease' && formatCIDR(r.lease.subnet) === '198.18.7.0/24');
});

test('nodeToLease: missing podCIDR or annotations is pending, not invalid', (t) => {
  t.deepEqual(nodeToLease(node('n2', { cidr: '' }), { names, config }), { kind: 'pending', why: 'no podCIDR' });
  t.is(nodeToLease(node('n2', { bare: true }), { names, config }).kind, 'pending');
  const half = node('n2');
  delete half.metadata!.annotations![`${P}public-ip`];
  t.is(nodeToLease(half, { names, config }).kind, 'pending');
  // Another prefix's annotations are not ours.
  t.is(nodeToLease(node('n2'), { names: annotationNames('weft.example.com'), config }).kind, 'pending');
});

test('nodeToLease: malformed annotations and bad podCIDRs are invalid, with the reason', (t) => {
  const own = parseCIDR('198.18.100.0/24');
  const cases: Array<[NodeLike, RegExp]> = [
    [node('n2', { extra: { [`${P}backend-data`]: '{not json' } }), /not JSON/],
    [node('n2', { extra: { [`${P}backend-data`]: '[1,2]' } }), /not a JSON object/],
    [node('n2', { extra: { [`${P}backend-data`]: 'x'.repeat(5000) } }), /at most 4096/],
    [node('n2', { mac: 'zz:00:00:00:00:01' }), /VtepMAC/],
    [node('n2', { mac: '01:00:5e:00:00:01' }), /unicast/],
    [node('n2', { mac: '00:00:00:00:00:00' }), /VtepMAC/],
    [node('n2', { extra: { [`${P}backend-data`]: '{"VNI":2,"VtepMAC":"0a:00:00:00:00:02"}' } }), /VNI 2 differs/],
    [node('n2', { extra: { [`${P}backend-data`]: '{"VNI":"1","VtepMAC":"0a:00:00:00:00:02"}' } }), /not a VNI/],
    [node('n2', { ip: '198.51.100.300' }), /public-ip/],
    [node('n2', { extra: { [`${P}backend-type`]: 'host-gw' } }), /not supported/],
    [node('n2', { cidr: '203.0.113.0/24' }), /outside the network 198\.18\.0\.0\/16/],
    [node('n2', { cidr: '198.18.2.1/24' }), /host bits/],
    [node('n2', { cidr: '198.18.0.0/15' }), /outside/],
    [node('n2', { cidr: 'garbage' }), /not an IPv4 CIDR/],
    [node('n2', { cidr: '198.18.100.0/24' }), /overlaps our subnet/],
    [node('n2', { cidr: '198.18.100.128/25' }), /overlaps our subnet/],
    [node('n2', { cidr: '198.18.96.0/20' }), /overlaps our subnet/],
  ];
  for (const [n, re] of cases) {
    const r = nodeToLease(n, { names, config, own });
    t.is(r.kind, 'invalid', JSON.stringify(n.metadata?.annotations));
    if (r.kind === 'invalid') t.regex(r.why, re);
  }
});

test('parseBackendDataAnnotation: VNI defaults to 1, MAC is lower-cased', (t) => {
  t.deepEqual(parseBackendDataAnnotation('{"VtepMAC":"0A:BB:CC:DD:EE:FF"}', 1), { VNI: 1, VtepMAC: '0a:bb:cc:dd:ee:ff' });
});

test('ownAnnotations: first run writes all four keys, a second run nothing', (t) => {
  const attrs = { publicIP: '198.51.100.11', backendType: 'vxlan', backendData: { VNI: 1, VtepMAC: '0a:00:00:00:00:01' } };
  const fresh: NodeLike = { metadata: { name: 'n1', annotations: { 'other/key': 'x' } } };
  const first = ownAnnotations(fresh, { names, attrs });
  t.is(first.publicIP, '198.51.100.11');
  t.deepEqual(first.patch, {
    metadata: {
      annotations: {
        [`${P}backend-type`]: 'vxlan',
        [`${P}backend-data`]: '{"VNI":1,"VtepMAC":"0a:00:00:00:00:01"}',
        [`${P}public-ip`]: '198.51.100.11',
        [`${P}kube-subnet-manager`]: 'true',
      },
    },
  });
  const done: NodeLike = { metadata: { name: 'n1', annotations: { ...fresh.metadata!.annotations, ...first.patch!.metadata.annotations } } };
  t.is(ownAnnotations(done, { names, attrs }).patch, undefined);
  // Only the changed key is patched (a new MAC after the device was recreated without reuse).
  const moved = ownAnnotations(done, { names, attrs: { ...attrs, backendData: { VNI: 1, VtepMAC: '0a:00:00:00:00:09' } } });
  t.deepEqual(moved.patch, { metadata: { annotations: { [`${P}backend-data`]: '{"VNI":1,"VtepMAC":"0a:00:00:00:00:09"}' } } });
});

test('ownAnnotations: a valid public-ip-overwrite wins, an invalid one is ignored and reported', (t) => {
  const attrs = { publicIP: '198.51.100.11', backendType: 'vxlan', backendData: { VNI: 1, VtepMAC: '0a:00:00:00:00:01' } };
  const n = node('n1', { ip: '198.51.100.11', extra: { [`${P}public-ip-overwrite`]: '203.0.113.7' } });
  const r = ownAnnotations(n, { names, attrs });
  t.is(r.publicIP, '203.0.113.7');
  t.deepEqual(r.patch, { metadata: { annotations: { [`${P}public-ip`]: '203.0.113.7' } } });
  const bad = ownAnnotations(node('n1', { extra: { [`${P}public-ip-overwrite`]: 'nope' } }), { names, attrs });
  t.is(bad.publicIP, '198.51.100.11');
  t.is(bad.badOverwrite, 'nope');
  t.is(bad.patch, undefined);
});

test('annotatedVtepMAC: reuses our MAC only for vxlan data with our VNI', (t) => {
  t.is(annotatedVtepMAC(node('n1', { mac: '0A:00:00:00:00:05' }), { names, vni: 1 }), '0a:00:00:00:00:05');
  t.is(annotatedVtepMAC(node('n1'), { names, vni: 2 }), undefined);
  t.is(annotatedVtepMAC(node('n1', { bare: true }), { names, vni: 1 }), undefined);
  t.is(annotatedVtepMAC(node('n1', { extra: { [`${P}backend-data`]: 'junk' } }), { names, vni: 1 }), undefined);
  t.is(annotatedVtepMAC(node('n1', { extra: { [`${P}backend-type`]: 'host-gw' } }), { names, vni: 1 }), undefined);
});

test('networkAvailablePatch: sets False/WeftIsUp once, keeps the transition time', (t) => {
  const now = new Date('2026-12-01T07:00:00.123Z');
  const n: NodeLike = {
    metadata: { name: 'n1' },
    status: {
      conditions: [
        { type: 'Ready', status: 'True' },
        { type: 'NetworkUnavailable', status: 'True', reason: 'NoRouteCreated' },
      ],
    },
  };
  const p = networkAvailablePatch(n, { now, message: 'm' });
  t.deepEqual(p, {
    status: {
      conditions: [{ type: 'NetworkUnavailable', status: 'False', reason: 'WeftIsUp', message: 'm', lastTransitionTime: '2026-12-01T07:00:00Z', lastHeartbeatTime: '2026-12-01T07:00:00Z' }],
    },
  });
  const set: NodeLike = { status: { conditions: p!.status.conditions } };
  t.is(networkAvailablePatch(set, { now, message: 'm' }), undefined);
  // flannel's condition (reason FlannelIsUp) is taken over, keeping when the network came up.
  const flannel: NodeLike = { status: { conditions: [{ type: 'NetworkUnavailable', status: 'False', reason: 'FlannelIsUp', lastTransitionTime: new Date('2026-11-30T00:00:00Z') }] } };
  t.is(networkAvailablePatch(flannel, { now, message: 'm' })!.status.conditions[0].lastTransitionTime, '2026-11-30T00:00:00Z');
});

function table(opts: { own?: string } = {}) {
  const invalid: string[] = [];
  const pending: number[] = [];
  const tbl = new NodeLeaseTable({
    names,
    config,
    ownName: 'n1',
    ownSubnet: opts.own ? parseCIDR(opts.own) : undefined,
    onInvalid: (n, why) => invalid.push(`${n}: ${why}`),
    onPending: (c) => pending.push(c),
  });
  return { tbl, invalid, pending };
}

test('table: add, unchanged update, MAC change, IP change, delete', (t) => {
  const { tbl } = table({ own: '198.18.1.0/24' });
  t.deepEqual(describe(tbl.upsert(node('n1', { cidr: '198.18.1.0/24' }))), [], 'our own node is never a peer');
  t.deepEqual(describe(tbl.upsert(node('n2', { cidr: '198.18.2.0/24' }))), ['put 198.18.2.0/24 198.51.100.11 0a:00:00:00:00:01']);
  const withHeartbeat = node('n2', { cidr: '198.18.2.0/24', extra: { 'node.alpha.kubernetes.io/ttl': '0' } });
  t.deepEqual(describe(tbl.upsert(withHeartbeat)), [], 'unrelated changes are silent');
  t.deepEqual(describe(tbl.upsert(node('n2', { cidr: '198.18.2.0/24', mac: '0a:00:00:00:00:02' }))), ['put 198.18.2.0/24 198.51.100.11 0a:00:00:00:00:02']);
  t.deepEqual(describe(tbl.upsert(node('n2', { cidr: '198.18.2.0/24', mac: '0a:00:00:00:00:02', ip: '198.51.100.22' }))), ['put 198.18.2.0/24 198.51.100.22 0a:00:00:00:00:02']);
  t.is(tbl.leases().length, 1);
  t.deepEqual(describe(tbl.remove('n2')), ['delete 198.18.2.0/24']);
  t.deepEqual(describe(tbl.remove('n2')), []);
  t.is(tbl.leases().length, 0);
});

test('table: removed annotations delete the lease; pending peers are counted', (t) => {
  const { tbl, pending, invalid } = table();
  tbl.upsert(node('n2', { cidr: '198.18.2.0/24' }));
  t.deepEqual(describe(tbl.upsert(node('n2', { cidr: '198.18.2.0/24', bare: true }))), ['delete 198.18.2.0/24']);
  t.deepEqual(describe(tbl.upsert(node('n3', { cidr: '' }))), []);
  t.is(tbl.pendingCount, 2);
  t.deepEqual(pending, [1, 2]);
  t.deepEqual(describe(tbl.upsert(node('n3', { cidr: '198.18.3.0/24' }))), ['put 198.18.3.0/24 198.51.100.11 0a:00:00:00:00:01']);
  t.is(tbl.pendingCount, 1);
  t.deepEqual(invalid, []);
});

test('table: a malformed peer is reported once, not per resync, and never leased', (t) => {
  const { tbl, invalid } = table();
  const bad = node('n2', { cidr: '198.18.2.0/24', extra: { [`${P}backend-data`]: '{oops' } });
  for (let i = 0; i < 5; i++) t.deepEqual(tbl.upsert(bad), []);
  t.deepEqual(tbl.replace([bad]), []);
  t.is(invalid.length, 1);
  t.regex(invalid[0], /^n2: backend-data is not JSON/);
  t.is(tbl.invalidCount, 1);
  // A different problem is a new line; fixed then broken again is a new line too.
  tbl.upsert(node('n2', { mac: 'bad' }));
  t.is(invalid.length, 2);
  t.deepEqual(describe(tbl.upsert(node('n2', { cidr: '198.18.2.0/24' }))), ['put 198.18.2.0/24 198.51.100.11 0a:00:00:00:00:01']);
  t.is(tbl.invalidCount, 0);
  t.deepEqual(describe(tbl.upsert(bad)), ['delete 198.18.2.0/24']);
  t.is(invalid.length, 3);
});

test('table: two nodes claiming one podCIDR: the first keeps it, the second takes over when it leaves', (t) => {
  const { tbl, invalid } = table();
  t.deepEqual(describe(tbl.upsert(node('n2', { cidr: '198.18.2.0/24', ip: '198.51.100.12' }))), ['put 198.18.2.0/24 198.51.100.12 0a:00:00:00:00:01']);
  t.deepEqual(describe(tbl.upsert(node('n3', { cidr: '198.18.2.0/24', ip: '198.51.100.13' }))), []);
  t.deepEqual(describe(tbl.upsert(node('n4', { cidr: '198.18.2.128/25', ip: '198.51.100.14' }))), []);
  t.is(invalid.length, 2);
  t.regex(invalid[0], /n3: podCIDR 198\.18\.2\.0\/24 overlaps node "n2"/);
  const evs = describe(tbl.remove('n2'));
  t.is(evs[0], 'delete 198.18.2.0/24');
  // Exactly one of the waiting nodes gets the space now, the other stays rejected.
  t.is(evs.length, 2);
  t.regex(evs[1], /^put 198\.18\.2\.(0\/24 198\.51\.100\.13|128\/25 198\.51\.100\.14)/);
  t.is(tbl.leases().length, 1);
});

test('table: replace diffs a relist against what the watch delivered', (t) => {
  const { tbl } = table();
  tbl.replace([node('n2', { cidr: '198.18.2.0/24' }), node('n3', { cidr: '198.18.3.0/24' })]);
  const evs = describe(tbl.replace([node('n3', { cidr: '198.18.3.0/24', mac: '0a:00:00:00:00:33' }), node('n4', { cidr: '198.18.4.0/24' })]));
  t.deepEqual(evs.sort(), ['delete 198.18.2.0/24', 'put 198.18.3.0/24 198.51.100.11 0a:00:00:00:00:33', 'put 198.18.4.0/24 198.51.100.11 0a:00:00:00:00:01']);
});

test('table: a podCIDR change of a peer deletes the old subnet and puts the new', (t) => {
  const { tbl } = table();
  tbl.upsert(node('n2', { cidr: '198.18.2.0/24' }));
  t.deepEqual(describe(tbl.upsert(node('n2', { cidr: '198.18.9.0/24' }))), ['delete 198.18.2.0/24', 'put 198.18.9.0/24 198.51.100.11 0a:00:00:00:00:01']);
});

test('table: setOwnSubnet drops a peer that overlaps us', (t) => {
  const { tbl } = table();
  tbl.upsert(node('n2', { cidr: '198.18.2.0/24' }));
  t.deepEqual(describe(tbl.setOwnSubnet(parseCIDR('198.18.2.0/24'))), ['delete 198.18.2.0/24']);
});

test('net-conf.json: parsed like the etcd config, errors name the file', (t) => {
  const dir = mkdtempSync(join(tmpdir(), 'weft-netconf-'));
  t.teardown(() => rmSync(dir, { recursive: true, force: true }));
  const f = join(dir, 'net-conf.json');
  writeFileSync(f, JSON.stringify({ Network: '198.18.0.0/16', Backend: { Type: 'vxlan', VNI: 4, Port: 4789 } }));
  const c = loadNetConf(f);
  t.is(formatCIDR(c.network), '198.18.0.0/16');
  t.deepEqual(c.backend, { type: 'vxlan', vni: 4, port: 4789 });
  writeFileSync(f, '{"Network":"198.18.0.1/16"}');
  t.throws(() => loadNetConf(f), { instanceOf: ConfigError, message: new RegExp(`host bits.*${f}`) });
  writeFileSync(f, JSON.stringify({ Network: '198.18.0.0/16', Pad: 'x'.repeat(70_000) }));
  t.throws(() => loadNetConf(f), { instanceOf: ConfigError, message: /at most 65536/ });
  t.throws(() => loadNetConf(join(dir, 'missing.json')), { instanceOf: ConfigError, message: /cannot be read \(ENOENT\)/ });
});

test('kubeconfig: --kubeconfig, then $KUBECONFIG; plain http allowed; none is a usage error', (t) => {
  const dir = mkdtempSync(join(tmpdir(), 'weft-kc-'));
  t.teardown(() => rmSync(dir, { recursive: true, force: true }));
  const f = join(dir, 'kc');
  writeFileSync(
    f,
    'apiVersion: v1\nkind: Config\nclusters:\n- name: c\n  cluster:\n    server: http://198.51.100.1:6443\nusers:\n- name: u\n  user: {}\ncontexts:\n- name: x\n  context: {cluster: c, user: u}\ncurrent-context: x\n',
  );
  const a = loadKubeConfig({ kubeconfig: f, env: {} });
  t.is(a.source, 'file');
  t.is(a.server, 'http://198.51.100.1:6443');
  t.true(a.kc.getCurrentCluster()!.skipTLSVerify);
  t.is(loadKubeConfig({ env: { KUBECONFIG: `${join(dir, 'nope')}:${f}` } }).source, 'KUBECONFIG');
  t.throws(() => loadKubeConfig({ env: {} }), { name: 'UsageError', message: /no Kubernetes API config/ });
  t.throws(() => loadKubeConfig({ kubeconfig: join(dir, 'nope'), env: {} }), { name: 'UsageError', message: /--kubeconfig: cannot load/ });
});

test('createKubeSubnetManager: the node name is required, the prefix validated', (t) => {
  const dir = mkdtempSync(join(tmpdir(), 'weft-kc-'));
  t.teardown(() => rmSync(dir, { recursive: true, force: true }));
  const f = join(dir, 'kc');
  writeFileSync(
    f,
    'apiVersion: v1\nkind: Config\nclusters:\n- name: c\n  cluster:\n    server: https://198.51.100.1:6443\nusers:\n- name: u\n  user: {}\ncontexts:\n- name: x\n  context: {cluster: c, user: u}\ncurrent-context: x\n',
  );
  t.throws(() => createKubeSubnetManager({ kubeconfig: f, nodeName: '', env: {} }), { name: 'UsageError', message: /--node-name or NODE_NAME/ });
  t.throws(() => createKubeSubnetManager({ kubeconfig: f, nodeName: 'n1', annotationPrefix: 'Bad Prefix', env: {} }), { message: /not a DNS subdomain/ });
  const m = createKubeSubnetManager({ kubeconfig: f, nodeName: 'n1', annotationPrefix: 'weft.example.com', env: {} });
  t.is(m.names.backendData, 'weft.example.com/backend-data');
  m.close();
});

test('previousVtepMAC: waits out an unreachable API server (retrying), throws a non-retryable error', async (t) => {
  let now = 0;
  const sleeps: number[] = [];
  const clock = { now: () => now, sleep: async (ms: number) => void (sleeps.push(ms), (now += ms)) };
  let failures = 2;
  let status = 0;
  const client = {
    get: async (name: string) => {
      if (failures-- > 0) throw new KubeApiError(`get node "${name}"`, status, status ? 'forbidden' : 'other side closed');
      return node(name, { mac: '0a:00:00:00:00:42' }) as never;
    },
    list: async () => ({ items: [] }) as never,
    patchStatus: async () => ({}) as never,
  };
  const m = new KubeSubnetManager({ kc: new KubeConfig(), nodeName: 'n1', client, clock });
  t.is(await m.previousVtepMAC(1), '0a:00:00:00:00:42');
  t.deepEqual(sleeps, [2000, 2000], 'two retries, 2 s apart');
  failures = 1;
  status = 403;
  await t.throwsAsync(() => m.previousVtepMAC(1), { message: /HTTP 403/ });
  m.close();
});

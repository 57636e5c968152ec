/**
 * weftctl's Kubernetes mode, pure parts: Node -> status model (through the kube subnet manager's
 * peer table), the kube columns / JSON / describe, the check basis (our Node, peers, skipped
 * nodes) fed through the same compareState as etcd mode, and the source over a fake NodeClient.
 */
import test from 'ava';
import { KubeConfig, type V1Node, type V1NodeList } from '@kubernetes/client-node';
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { kubeMode } from '../../src/ctl/connect.ts';
import { parseCommandLine } from '../../src/ctl/args.ts';
import { runCommand } from '../../src/ctl/run.ts';
import { NodeEvents } from '../../src/ctl/watch.ts';
import { KubeApiError, type NodeClient } from '../../src/kube/client.ts';
import { compareState, type KernelState } from '../../src/status/check.ts';
import { findKubeNode, kubeCheckBasis, KubeNodeView, KubeStatusSource, PERMISSIVE_CONFIG } from '../../src/status/kube.ts';
import { SourceUnavailableError, type NodeEvent } from '../../src/status/model.ts';
import { printable, renderCheck, renderDescribe, renderNodeEvent, renderNodes, renderWatchHeader } from '../../src/status/render.ts';
import { ConfigError, parseNetworkConfig } from '../../src/subnet/config.ts';
import { annotationNames } from '../../src/subnet/kube/annotations.ts';

const P = 'flannel.alpha.coreos.com/';
const names = annotationNames();
const config = parseNetworkConfig('{"Network":"198.18.0.0/16","Backend":{"Type":"vxlan","VNI":1}}');
const NOW = Date.parse('2026-12-01T12:00:00Z');

function node(
  name: string,
  o: { cidr?: string; mac?: string; ip?: string; internal?: string; annotations?: Record<string, string>; rv?: string; cond?: Record<string, string>; created?: string } = {},
): V1Node {
  const annotations = o.annotations ?? {
    [`${P}kube-subnet-manager`]: 'true',
    [`${P}backend-type`]: 'vxlan',
    [`${P}backend-data`]: JSON.stringify({ VNI: 1, VtepMAC: o.mac ?? '0a:00:00:00:00:01' }),
    [`${P}public-ip`]: o.ip ?? '198.51.100.11',
    'unrelated.example.com/x': 'y',
  };
  return {
    apiVersion: 'v1',
    kind: 'Node',
    metadata: { name, annotations, resourceVersion: o.rv ?? '10', creationTimestamp: new Date(o.created ?? '2026-12-01T11:00:00Z') },
    spec: o.cidr === undefined ? {} : { podCIDR: o.cidr },
    status: {
      addresses: [{ type: 'Hostname', address: name }, ...(o.internal ? [{ type: 'InternalIP', address: o.internal }] : [])],
      conditions: o.cond ? [{ type: 'NetworkUnavailable', status: o.cond.status!, reason: o.cond.reason, message: o.cond.message, lastTransitionTime: new Date('2026-12-01T11:30:00Z') }] : [],
    },
  };
}

const noAnn = (name: string, cidr?: string) => node(name, { cidr, annotations: {} });
const badJSON = (name: string, cidr: string) =>
  node(name, { cidr, annotations: { [`${P}kube-subnet-manager`]: 'true', [`${P}backend-type`]: 'vxlan', [`${P}backend-data`]: '{"VNI":1,', [`${P}public-ip`]: '198.51.100.14' } });

test('nodeStatus: a peer Node with its lease, InternalIP, condition and age; foreign annotations left out', (t) => {
  const n = node('n1', { cidr: '198.18.1.0/24', mac: '0A:00:00:00:00:01', internal: '198.51.100.11', cond: { status: 'False', reason: 'WeftIsUp', message: 'weft is running' } });
  const view = new KubeNodeView({ names, config, now: () => NOW });
  const [s] = view.replace([n]);
  t.like(s, { publicIP: '198.51.100.11', subnet: '198.18.1.0/24', vtepIP: '198.18.1.0', vtepMAC: '0a:00:00:00:00:01', vni: 1, backendType: 'vxlan', key: 'n1', modRevision: '10' });
  t.deepEqual(s!.kube, {
    name: 'n1',
    internalIP: '198.51.100.11',
    podCIDR: '198.18.1.0/24',
    networkUnavailable: { status: 'False', reason: 'WeftIsUp', message: 'weft is running', lastTransitionTime: '2026-12-01T11:30:00Z' },
    creationTimestamp: '2026-12-01T11:00:00Z',
    ageSeconds: 3600,
    annotations: { state: 'ok' },
    publicIPOverwrite: undefined,
    weftAnnotations: {
      [`${P}kube-subnet-manager`]: 'true',
      [`${P}backend-type`]: 'vxlan',
      [`${P}backend-data`]: '{"VNI":1,"VtepMAC":"0A:00:00:00:00:01"}',
      [`${P}public-ip`]: '198.51.100.11',
    },
  });
});

test('KubeNodeView judges like weftd: ok, missing (no annotations, no podCIDR), malformed with the reason', (t) => {
  const view = new KubeNodeView({ names, config, now: () => NOW });
  const list = view.replace([
    node('d-outside', { cidr: '10.244.1.0/24', mac: '0a:00:00:00:00:04' }),
    badJSON('c-badjson', '198.18.3.0/24'),
    noAnn('b-bare', '198.18.2.0/24'),
    noAnn('a-nocidr'),
    node('e-ok', { cidr: '198.18.5.0/24' }),
  ]);
  t.deepEqual(
    list.map((n) => [n.key, n.kube!.annotations.state, n.kube!.annotations.reason ?? '']),
    [
      ['a-nocidr', 'missing', 'no podCIDR'],
      ['b-bare', 'missing', 'backend annotations not written yet'],
      ['c-badjson', 'malformed', 'backend-data is not JSON'],
      ['d-outside', 'malformed', 'podCIDR 10.244.1.0/24 is outside the network 198.18.0.0/16'],
      ['e-ok', 'ok', ''],
    ],
  );
  // Not a peer: no VTEP fields, but what can be read is shown.
  const bad = list[2]!;
  t.like(bad, { publicIP: '198.51.100.14', subnet: '198.18.3.0/24', vtepIP: '', vtepMAC: undefined });
  t.is(list[0]!.subnet, '');
});

test('KubeNodeView: a podCIDR conflict is malformed, and resolved (re-judged) when the holder leaves', (t) => {
  const view = new KubeNodeView({ names, config, now: () => NOW });
  const [a, b] = view.replace([node('a', { cidr: '198.18.1.0/24' }), node('b', { cidr: '198.18.1.0/24', mac: '0a:00:00:00:00:02' })]);
  t.is(a!.kube!.annotations.state, 'ok');
  t.deepEqual(b!.kube!.annotations, { state: 'malformed', reason: `podCIDR 198.18.1.0/24 overlaps node "a"'s` });
  const rejudged = view.remove('a');
  t.deepEqual(
    rejudged.map((n) => [n.key, n.kube!.annotations.state]),
    [['b', 'ok']],
  );
  // An unchanged upsert is just the node itself.
  t.deepEqual(
    view.upsert(node('b', { cidr: '198.18.1.0/24', mac: '0a:00:00:00:00:02', rv: '11' })).map((n) => n.key),
    ['b'],
  );
});

test('NodeEvents: same resourceVersion is a repeat, a new verdict at the same version is MODIFIED', (t) => {
  const view = new KubeNodeView({ names, config, now: () => NOW });
  const listed = view.replace([node('a', { cidr: '198.18.1.0/24' }), node('b', { cidr: '198.18.1.0/24', mac: '0a:00:00:00:00:02' })]);
  const events: NodeEvent[] = [];
  const w = new NodeEvents(listed, (e) => events.push(e));
  for (const n of view.upsert(node('a', { cidr: '198.18.1.0/24' }))) w.put(n);
  t.is(events.length, 0);
  const others = view.remove('a');
  w.delete('a');
  for (const n of others) w.put(n);
  t.deepEqual(
    events.map((e) => `${e.type} ${e.node.key} ${e.node.kube!.annotations.state}`),
    ['DELETED a ok', 'MODIFIED b ok'],
  );
});

test('renderNodes (kube): NAME INTERNAL-IP POD-CIDR VTEP-MAC PUBLIC-IP NETWORK-UNAVAILABLE AGE; wide adds backend, VNI, annotations', (t) => {
  const view = new KubeNodeView({ names, config, now: () => NOW });
  const list = {
    location: 'the Nodes of http://198.51.100.2:6443',
    source: 'kube' as const,
    nodes: view.replace([node('n1', { cidr: '198.18.1.0/24', internal: '198.51.100.11', cond: { status: 'False', reason: 'WeftIsUp' } }), badJSON('n2', '198.18.2.0/24'), noAnn('n3')]),
  };
  t.is(
    renderNodes(list, 'table'),
    [
      'NAME   INTERNAL-IP     POD-CIDR        VTEP-MAC            PUBLIC-IP       NETWORK-UNAVAILABLE   AGE',
      'n1     198.51.100.11   198.18.1.0/24   0a:00:00:00:00:01   198.51.100.11   False/WeftIsUp        1h',
      'n2     <none>          198.18.2.0/24   <none>              198.51.100.14   <none>                1h',
      'n3     <none>          <none>          <none>              <none>          <none>                1h',
      '',
    ].join('\n'),
  );
  const wide = renderNodes(list, 'wide').split('\n');
  t.regex(wide[0]!, /AGE\s+BACKEND\s+VNI\s+ANNOTATIONS$/);
  t.regex(wide[1]!, /1h\s+vxlan\s+1\s+ok$/);
  t.regex(wide[2]!, /1h\s+vxlan\s+<none>\s+malformed: backend-data is not JSON$/);
  t.regex(wide[3]!, /1h\s+<none>\s+<none>\s+missing: no podCIDR$/);
  t.is(renderNodes({ ...list, nodes: [] }, 'table'), 'No nodes found in the Nodes of http://198.51.100.2:6443.\n');

  const json = JSON.parse(renderNodes(list, 'json'));
  t.deepEqual(Object.keys(json), ['apiVersion', 'kind', 'items']);
  t.like(json, { apiVersion: 'v1', kind: 'List' });
  t.deepEqual(
    json.items.map((i: { name: string }) => i.name),
    ['n1', 'n2', 'n3'],
  );
  t.like(json.items[0], {
    name: 'n1',
    internalIP: '198.51.100.11',
    podCIDR: '198.18.1.0/24',
    vtepMAC: '0a:00:00:00:00:01',
    networkUnavailable: { status: 'False', reason: 'WeftIsUp' },
    annotations: { state: 'ok' },
  });
  // No etcd lease fields, no nulls for what a Node lacks.
  t.false('etcdLeaseId' in json.items[0]);
  t.false('expiresInSeconds' in json.items[0]);
  t.false('vtepMAC' in json.items[2]);
  t.deepEqual(json.items[1].annotations, { state: 'malformed', reason: 'backend-data is not JSON' });
});

test('watch rendering (kube): header with EVENT, rows aligned to it, JSON events carry the kube item', (t) => {
  const view = new KubeNodeView({ names, config, now: () => NOW });
  const nodes = view.replace([node('n1', { cidr: '198.18.1.0/24', internal: '198.51.100.11' })]);
  const head = renderWatchHeader({ location: 'x', source: 'kube', nodes }, 'table');
  const lines = head.text.trimEnd().split('\n');
  t.regex(lines[0]!, /^EVENT\s+NAME\s+INTERNAL-IP\s+POD-CIDR\s+VTEP-MAC\s+PUBLIC-IP\s+NETWORK-UNAVAILABLE\s+AGE$/);
  const changed = view.upsert(node('n1', { cidr: '198.18.1.0/24', internal: '198.51.100.11', mac: '0a:00:00:00:00:99', rv: '11' }))[0]!;
  const row = renderNodeEvent({ type: 'MODIFIED', node: changed }, 'table', head.widths);
  t.is(row.indexOf('198.18.1.0/24'), lines[0]!.indexOf('POD-CIDR'));
  t.regex(row, /^MODIFIED\s+n1\s+.*0a:00:00:00:00:99/);
  const ev = JSON.parse(renderNodeEvent({ type: 'MODIFIED', node: changed }, 'json'));
  t.like(ev, { type: 'MODIFIED', node: { name: 'n1', vtepMAC: '0a:00:00:00:00:99', resourceVersion: '11' } });
});

test('renderDescribe (kube): the Node, its condition, verdict and raw weft annotations', (t) => {
  const view = new KubeNodeView({ names, config, now: () => NOW });
  const [n] = view.replace([node('n1', { cidr: '198.18.1.0/24', internal: '198.51.100.11', cond: { status: 'False', reason: 'WeftIsUp', message: 'up' } })]);
  const text = renderDescribe(n!, { network: '198.18.0.0/16', subnetLen: 24, subnetMin: '198.18.1.0', subnetMax: '198.18.255.0', backend: { type: 'vxlan', vni: 1, port: 8472 } }, 'table');
  t.regex(text, /^Name:\s+n1$/m);
  t.regex(text, /^Internal IP:\s+198\.51\.100\.11$/m);
  t.regex(text, /^Pod CIDR:\s+198\.18\.1\.0\/24$/m);
  t.regex(text, /^VTEP MAC:\s+0a:00:00:00:00:01$/m);
  t.regex(text, /^Annotations:\s+ok \(a peer/m);
  t.regex(text, /^NetworkUnavailable:\s+False \(WeftIsUp: up\) since 2026-12-01T11:30:00Z$/m);
  t.regex(text, /^Created:\s+2026-12-01T11:00:00Z \(1h ago\)$/m);
  t.regex(text, /^Weft annotations:\s+flannel\.alpha\.coreos\.com\/backend-data=\{"VNI":1,"VtepMAC":"0a:00:00:00:00:01"\}$/m);
  t.regex(text, /^\s+flannel\.alpha\.coreos\.com\/public-ip=198\.51\.100\.11$/m);
  t.notRegex(text, /etcd/);
  const json = JSON.parse(renderDescribe(n!, undefined, 'json'));
  t.like(json.node, { name: 'n1', backendData: { VNI: 1, VtepMAC: '0a:00:00:00:00:01' } });
});

test('findKubeNode: by name, then by IP or podCIDR; ambiguous and unknown are clear errors', (t) => {
  const view = new KubeNodeView({ names, config, now: () => NOW });
  const list = {
    location: 'the Nodes of X',
    source: 'kube' as const,
    nodes: view.replace([node('n1', { cidr: '198.18.1.0/24', internal: '198.51.100.21' }), node('n2', { cidr: '198.18.2.0/24', ip: '198.51.100.11' })]),
  };
  t.is(findKubeNode(list, 'n2').key, 'n2');
  t.is(findKubeNode(list, '198.51.100.21').key, 'n1');
  t.is(findKubeNode(list, '198.18.2.0/24').key, 'n2');
  t.throws(() => findKubeNode(list, '198.51.100.11'), { message: /matches 2 nodes \(n1, n2\): name the node/ });
  t.throws(() => findKubeNode(list, 'n9'), { message: /no node named "n9" .*in the Nodes of X/ });
});

/** Kernel state of node n1 (198.18.1.0/24 on 198.51.100.11) with entries for the given peers. */
function kernelFor(peers: Array<{ subnet: string; vtep: string; mac: string; ip: string }>, opts: { fileSubnet?: string } = {}): KernelState {
  return {
    device: { index: 5, name: 'flannel.1', kind: 'vxlan', mtu: 1450, mac: '0a:00:00:00:00:01', up: true, vxlan: { vni: 1, port: 8472, local: '198.51.100.11', parentIndex: 2, learning: false } },
    parent: { index: 2, name: 'eth0', mtu: 1500, mac: '0a:00:00:00:01:01', up: true },
    addrs: [{ index: 5, ip: '198.18.1.0', prefixLen: 32 }],
    neighs: peers.map((p) => ({ index: 5, ip: p.vtep, mac: p.mac, permanent: true })),
    fdbs: peers.map((p) => ({ index: 5, mac: p.mac, dst: p.ip })),
    routes: peers.map((p) => ({ dst: p.subnet, gateway: p.vtep, index: 5, onlink: true })),
    subnetFile: { FLANNEL_NETWORK: '198.18.0.0/16', FLANNEL_SUBNET: opts.fileSubnet ?? '198.18.1.1/24', FLANNEL_MTU: '1450', FLANNEL_IPMASQ: 'true' },
  };
}

const peer2 = { subnet: '198.18.2.0/24', vtep: '198.18.2.0', mac: '0a:00:00:00:00:02', ip: '198.51.100.12' };
const cluster = () => [
  node('n1', { cidr: '198.18.1.0/24', internal: '198.51.100.11' }),
  node('n2', { cidr: '198.18.2.0/24', mac: peer2.mac, ip: peer2.ip }),
  badJSON('n3', '198.18.3.0/24'),
  noAnn('n4', '198.18.4.0/24'),
];

test('kubeCheckBasis: our Node by name, peers as weftd would program them, the rest skipped; compareState agrees', (t) => {
  const basis = kubeCheckBasis(cluster(), { names, config, nodeName: 'n1', now: NOW });
  t.deepEqual(
    basis.leases.map((l) => `${l.key} ${l.subnet} ${l.publicIP} ${l.vtepMAC}`),
    ['n1 198.18.1.0/24 198.51.100.11 0a:00:00:00:00:01', 'n2 198.18.2.0/24 198.51.100.12 0a:00:00:00:00:02'],
  );
  t.is(basis.publicIP, '198.51.100.11');
  t.deepEqual(basis.findings, []);
  t.deepEqual(basis.skipped, [
    { node: 'n3', why: 'malformed: backend-data is not JSON' },
    { node: 'n4', why: 'missing: backend annotations not written yet' },
  ]);
  const opts = { leases: basis.leases, config: basis.config, device: 'flannel.1', subnetFile: '/run/flannel/subnet.env', publicIP: basis.publicIP, against: 'the Kubernetes API' };
  const ok = compareState({ ...opts, kernel: kernelFor([peer2]) });
  t.true(ok.consistent, JSON.stringify(ok.findings));
  t.is(ok.self?.subnet, '198.18.1.0/24');
  t.is(
    renderCheck({ ...ok, against: 'the Kubernetes API', skipped: basis.skipped }, 'table')
      .split('\n')
      .at(-2),
    'consistent: kernel state matches the Kubernetes API',
  );

  // Entries for a skipped node are extra; the subnet file is judged against our podCIDR.
  const drift = compareState({ ...opts, kernel: kernelFor([peer2, { subnet: '198.18.3.0/24', vtep: '198.18.3.0', mac: '0a:00:00:00:00:03', ip: '198.51.100.14' }], { fileSubnet: '198.18.9.1/24' }) });
  t.deepEqual(drift.findings.map((f) => `${f.kind} ${f.object}: ${f.detail}`).sort(), [
    'extra fdb: 0a:00:00:00:00:03 dst 198.51.100.14 dev flannel.1',
    'extra neighbor: 198.18.3.0 lladdr 0a:00:00:00:00:03 dev flannel.1',
    'extra route: 198.18.3.0/24 via 198.18.3.0 dev flannel.1',
    'wrong subnet-file: FLANNEL_SUBNET=198.18.9.1/24, lease says 198.18.1.1/24',
  ]);
});

test('kubeCheckBasis: our Node found by the device address; its own missing annotations and podCIDR are findings', (t) => {
  const byIP = kubeCheckBasis(cluster(), { names, config, localIP: '198.51.100.11', now: NOW });
  t.is(byIP.leases[0]!.key, 'n1');
  t.is(byIP.skipped.length, 2);

  // weftd has not annotated us yet: the podCIDR still is our lease (subnet file, device address).
  const bare = kubeCheckBasis([noAnn('n1', '198.18.1.0/24'), node('n2', { cidr: '198.18.2.0/24', mac: peer2.mac, ip: peer2.ip })], { names, config, nodeName: 'n1', now: NOW });
  t.deepEqual(bare.findings, [{ kind: 'missing', object: 'annotations', detail: 'node "n1": backend annotations not written yet (is weftd running on it?)' }]);
  t.like(bare.leases[0], { key: 'n1', subnet: '198.18.1.0/24', vtepIP: '198.18.1.0', vtepMAC: undefined });

  const noCIDR = kubeCheckBasis([noAnn('n1')], { names, config, nodeName: 'n1', now: NOW });
  t.deepEqual(
    noCIDR.findings.map((f) => `${f.kind} ${f.object}`),
    ['missing podCIDR'],
  );
  t.regex(noCIDR.findings[0]!.detail, /allocate-node-cidrs/);
  const outside = kubeCheckBasis([node('n1', { cidr: '10.244.0.0/24' })], { names, config, nodeName: 'n1', now: NOW });
  t.deepEqual(
    outside.findings.map((f) => `${f.kind} ${f.object}`),
    ['wrong podCIDR', 'wrong annotations'],
  );
  t.regex(outside.findings[0]!.detail, /outside the network 198\.18\.0\.0\/16/);
  const absent = kubeCheckBasis(cluster(), { names, config, nodeName: 'n9', now: NOW });
  t.deepEqual(
    absent.findings.map((f) => `${f.kind} ${f.object}`),
    ['missing node'],
  );
});

test('kubeMode: --kubeconfig, --kube-subnet-mgr or $WEFTD_KUBE_SUBNET_MGR, read as weftd reads it', (t) => {
  const flags = (argv: string[]) => parseCommandLine(['get', 'nodes', ...argv]).flags;
  t.false(kubeMode(flags([]), {}));
  t.true(kubeMode(flags(['--kubeconfig', '/k']), {}));
  t.true(kubeMode(flags(['--kube-subnet-mgr']), {}));
  t.true(kubeMode(flags([]), { WEFTD_KUBE_SUBNET_MGR: 'true' }));
  t.true(kubeMode(flags([]), { WEFTD_KUBE_SUBNET_MGR: '1' }));
  t.false(kubeMode(flags([]), { WEFTD_KUBE_SUBNET_MGR: 'false' }));
  t.throws(() => kubeMode(flags([]), { WEFTD_KUBE_SUBNET_MGR: 'maybe' }), { message: /expected true or false/ });
});

test('network init in kube mode: says it is etcd-only, before opening anything', async (t) => {
  const out: string[] = [];
  const err = await t.throwsAsync(
    runCommand(parseCommandLine(['network', 'init', '--network', '198.18.0.0/16', '--kubeconfig', '/nonexistent']), {
      openSource: () => t.fail('no source is opened') as never,
      out: (s) => out.push(s),
      interrupted: () => new AbortController().signal,
      env: {},
    }),
  );
  t.regex(err!.message, /^network init is for etcd mode only: in Kubernetes mode the network config is net-conf\.json .*spec\.podCIDR/);
  t.deepEqual(out, []);
});

/** A NodeClient serving a fixed list (or failing). */
function fakeClient(items: V1Node[] | Error): NodeClient {
  return {
    list: async () => {
      if (items instanceof Error) throw items;
      return { apiVersion: 'v1', kind: 'NodeList', metadata: { resourceVersion: '20' }, items } satisfies V1NodeList;
    },
    get: async () => {
      throw new Error('not used');
    },
    patchStatus: async () => {
      throw new Error('read-only');
    },
  };
}

test('KubeStatusSource: lists and finds Nodes, net-conf.json is the network, API failures are one clear line', async (t) => {
  const dir = mkdtempSync(join(tmpdir(), 'weftctl-kube-'));
  t.teardown(() => rmSync(dir, { recursive: true, force: true }));
  const netConf = join(dir, 'net-conf.json');
  writeFileSync(netConf, '{"Network":"198.18.0.0/16","Backend":{"Type":"vxlan","VNI":1}}');
  const notes: string[] = [];
  const src = (items: V1Node[] | Error, path = netConf) =>
    new KubeStatusSource({
      kc: new KubeConfig(),
      server: 'http://198.51.100.2:6443',
      netConfPath: path,
      client: fakeClient(items),
      note: (m) => notes.push(m),
      clock: { now: () => NOW, sleep: async () => {} },
    });

  const s = src(cluster());
  t.is(s.mode, 'kube');
  t.is(s.configLocation, netConf);
  const list = await s.listNodes();
  t.is(list.source, 'kube');
  t.deepEqual(
    list.nodes.map((n) => `${n.key} ${n.kube!.annotations.state}`),
    ['n1 ok', 'n2 ok', 'n3 malformed', 'n4 missing'],
  );
  t.is((await s.findNode('198.18.2.0/24')).key, 'n2');
  t.like(await s.getNetwork(), { network: '198.18.0.0/16', backend: { vni: 1 } });
  await t.throwsAsync(s.writeNetworkConfig(), { message: /etcd mode only/ });
  t.deepEqual(notes, []);

  // No net-conf.json: get network says where it looked; nodes are still listed, with a note.
  const missing = src([node('n1', { cidr: '10.244.1.0/24' })], join(dir, 'absent.json'));
  await t.throwsAsync(missing.getNetwork(), { instanceOf: ConfigError, message: /absent\.json" cannot be read \(ENOENT\).*--net-config-path/ });
  t.is((await missing.listNodes()).nodes[0]!.kube!.annotations.state, 'ok');
  t.is(notes.length, 1);
  t.regex(notes[0]!, /absent\.json" cannot be read \(ENOENT\): annotations are judged against any Network and VNI 1/);
  t.is(PERMISSIVE_CONFIG.network.prefixLen, 0);

  const down = src(new KubeApiError('list nodes', 0, 'connect ECONNREFUSED 198.51.100.2:6443'));
  await t.throwsAsync(down.listNodes(), {
    instanceOf: SourceUnavailableError,
    message: 'cannot reach the Kubernetes API at http://198.51.100.2:6443: list nodes: connect ECONNREFUSED 198.51.100.2:6443',
  });
  const forbidden = src(new KubeApiError('list nodes', 403, 'nodes is forbidden'));
  await t.throwsAsync(forbidden.listNodes(), { instanceOf: SourceUnavailableError, message: 'the Kubernetes API at http://198.51.100.2:6443: list nodes: HTTP 403: nodes is forbidden' });

  const basis = await s.checkBasis({ nodeName: 'n2' });
  t.deepEqual(
    basis.leases.map((l) => l.key),
    ['n2', 'n1'],
  );
});

test('kubeCheckBasis: with a public-ip-overwrite, flannel.1 is judged by its own address, peers by the overwrite', (t) => {
  const n1 = node('n1', { cidr: '198.18.1.0/24', ip: '203.0.113.50' });
  n1.metadata!.annotations![`${P}public-ip-overwrite`] = '203.0.113.50';
  const basis = kubeCheckBasis([n1, node('n2', { cidr: '198.18.2.0/24', mac: peer2.mac, ip: peer2.ip })], { names, config, nodeName: 'n1', localIP: '198.51.100.11', now: NOW });
  t.is(basis.publicIP, '198.51.100.11');
  const report = compareState({ kernel: kernelFor([peer2]), leases: basis.leases, config: basis.config, device: 'flannel.1', subnetFile: 'f', publicIP: basis.publicIP });
  t.true(report.consistent, JSON.stringify(report.findings));
  // As a peer, the overwrite is what others must send to.
  const seen = kubeCheckBasis([n1, node('n2', { cidr: '198.18.2.0/24', mac: peer2.mac, ip: peer2.ip })], { names, config, nodeName: 'n2', now: NOW });
  t.is(seen.leases.find((l) => l.key === 'n1')?.publicIP, '203.0.113.50');
});

test('text from Nodes is shown escaped in tables and describe (no terminal escapes)', (t) => {
  const view = new KubeNodeView({ names, config, now: () => NOW });
  const evil = node('n1', { cidr: '198.18.1.0/24', cond: { status: 'False', reason: 'Up\u001b[2J', message: 'line\nbreak' } });
  const [n] = view.replace([evil]);
  const table = renderNodes({ location: 'x', source: 'kube', nodes: [n!] }, 'table');
  t.false(table.includes('\u001b'));
  t.regex(table, /False\/Up\\x1b\[2J/);
  const text = renderDescribe(n!, undefined, 'table');
  t.false(text.includes('\u001b') || text.includes('line\nbreak'));
  t.regex(text, /Up\\x1b\[2J: line\\x0abreak/);
  t.is(printable('ok'), 'ok');
  // JSON keeps the value as it is (JSON escapes it).
  t.is(JSON.parse(renderNodes({ location: 'x', source: 'kube', nodes: [n!] }, 'json')).items[0].networkUnavailable.message, 'line\nbreak');
});

/**
 * weftctl in Kubernetes mode against the lab API server (real etcd behind it) in a throwaway
 * control-plane namespace (test/priv/kube-env.ts). Nodes are written through the API as a
 * kubelet / operator would (one well annotated, one with malformed annotations, one without any);
 * weftctl runs inside a node namespace with --kubeconfig. `check` is judged on a node whose
 * flannel.1 the real weftd (dist/bin/weftd --kube-subnet-mgr) programmed, then on drift made by
 * hand with `ip` after weftd stopped. The watch is also run across an API server restart with
 * etcd compacted behind it, so only a relist (410 Gone) can bring the changes in.
 *
 * Serial: the tests share the cluster and change its Nodes in order.
 */
import test from 'ava';
import type { ChildProcess } from 'node:child_process';
import { existsSync, readFileSync, writeFileSync } from 'node:fs';
import { join, resolve } from 'node:path';
import { parse as parseYaml } from 'yaml';
import { writeKubeconfig } from '../../lab/apiserver/kubeconfig.ts';
import { killAndWait } from '../../lab/etcd.ts';
import { eventually, inNs, ipJson, runInNs, sh } from '../helpers/netns.ts';
import { API_PORT, CP_IP, KubeLab, P, peerNode, type Driver } from './kube-env.ts';

const WEFTCTL = resolve('dist/bin/weftctl');
const WEFTD = resolve('dist/bin/weftd');
const N1_IP = '198.51.100.11';
const P2_MAC = '0a:00:00:00:02:01';

let lab: KubeLab;
let admin: Driver;
let kubeconfig = '';

test.before(async () => {
  lab = await KubeLab.create([
    { name: 'n1', ip: N1_IP },
    { name: 'adm', ip: '198.51.100.20' },
  ]);
  kubeconfig = join(lab.dir, 'kubeconfig');
  writeKubeconfig(kubeconfig, { server: `http://${CP_IP}:${API_PORT}` });
  // The test's API client (its kubectl), in a namespace of its own on the underlay.
  admin = lab.driver('adm', { in: 'adm' });
  await createNode(peerNode('n1', { cidr: '198.18.1.0/24', annotations: {} }), { internalIP: N1_IP });
  await createNode(peerNode('p2', { cidr: '198.18.2.0/24', mac: P2_MAC, ip: '198.51.100.12' }), {
    internalIP: '198.51.100.12',
    condition: { type: 'NetworkUnavailable', status: 'False', reason: 'WeftIsUp', message: 'weft is running on this node' },
  });
  const bad = peerNode('bad3', { cidr: '198.18.3.0/24', ip: '198.51.100.13' });
  bad.metadata.annotations[`${P}backend-data`] = '{"VNI":1,';
  await createNode(bad, { internalIP: '198.51.100.13' });
  await createNode(peerNode('bare4', { cidr: '198.18.4.0/24', annotations: {} }), {});
});
test.after.always(() => lab?.destroy());

async function api(method: string, path: string, body?: unknown, contentType?: string): Promise<any> {
  const r = await admin.api(method, path, body, contentType);
  if (r.status >= 300) throw new Error(`${method} ${path}: HTTP ${r.status} ${JSON.stringify(r.body)}`);
  return r.body;
}

/** Creates a Node, then sets its addresses and condition through /status as a kubelet would. */
async function createNode(node: ReturnType<typeof peerNode>, o: { internalIP?: string; condition?: Record<string, string> }): Promise<void> {
  await api('POST', '/api/v1/nodes', node);
  const status: Record<string, unknown> = {};
  if (o.internalIP)
    status.addresses = [
      { type: 'InternalIP', address: o.internalIP },
      { type: 'Hostname', address: node.metadata.name },
    ];
  if (o.condition) status.conditions = [{ ...o.condition, lastTransitionTime: new Date().toISOString().replace(/\.\d+Z$/, 'Z') }];
  if (Object.keys(status).length) await api('PATCH', `/api/v1/nodes/${node.metadata.name}/status`, { status }, 'application/strategic-merge-patch+json');
}

const annotate = (name: string, annotations: Record<string, string | null>) => api('PATCH', `/api/v1/nodes/${name}`, { metadata: { annotations } }, 'application/merge-patch+json');

interface Run {
  code: number | null;
  stdout: string;
  stderr: string;
}

/** Runs weftctl in node n1's namespace with the lab kubeconfig (unless `bare`); never throws on exit codes. */
function weftctl(args: string[], opts: { env?: Record<string, string>; bare?: boolean } = {}): Promise<Run> {
  const base = opts.bare ? [] : ['--kubeconfig', kubeconfig, '--net-config-path', lab.netConf];
  return runInNs(lab.ns.get('n1')!, WEFTCTL, [...base, ...args], { PATH: process.env.PATH!, ...opts.env });
}

const noStack = /\n\s+at .+\(/;

test.serial('get nodes: one row per Node, with InternalIP, podCIDR, VTEP MAC, public IP, condition, age', async (t) => {
  const r = await weftctl(['get', 'nodes']);
  t.is(r.code, 0, r.stderr);
  const lines = r.stdout.trimEnd().split('\n');
  t.regex(lines[0]!, /^NAME\s+INTERNAL-IP\s+POD-CIDR\s+VTEP-MAC\s+PUBLIC-IP\s+NETWORK-UNAVAILABLE\s+AGE$/);
  t.is(lines.length, 5, r.stdout);
  t.regex(lines[1]!, /^bad3\s+198\.51\.100\.13\s+198\.18\.3\.0\/24\s+<none>\s+198\.51\.100\.13\s+<none>\s+\d+s$/);
  t.regex(lines[2]!, /^bare4\s+<none>\s+198\.18\.4\.0\/24\s+<none>\s+<none>\s+<none>\s+\d+s$/);
  t.regex(lines[3]!, /^n1\s+198\.51\.100\.11\s+198\.18\.1\.0\/24\s+<none>\s+<none>\s+<none>\s+\d+s$/);
  t.regex(lines[4]!, new RegExp(`^p2\\s+198\\.51\\.100\\.12\\s+198\\.18\\.2\\.0/24\\s+${P2_MAC}\\s+198\\.51\\.100\\.12\\s+False/WeftIsUp\\s+\\d+s$`));
  t.is(r.stderr, '');

  const wide = await weftctl(['get', 'nodes', '-o', 'wide']);
  t.is(wide.code, 0, wide.stderr);
  const w = wide.stdout.trimEnd().split('\n');
  t.regex(w[0]!, /AGE\s+BACKEND\s+VNI\s+ANNOTATIONS$/);
  t.regex(w[1]!, /^bad3\s.*\s+vxlan\s+<none>\s+malformed: backend-data is not JSON$/);
  t.regex(w[2]!, /^bare4\s.*\s+<none>\s+<none>\s+missing: backend annotations not written yet$/);
  t.regex(w[4]!, /^p2\s.*\s+vxlan\s+1\s+ok$/);
});

test.serial('get nodes -o json|yaml: a kubectl-style List of Node items', async (t) => {
  const r = await weftctl(['get', 'nodes', '-o', 'json']);
  t.is(r.code, 0, r.stderr);
  const json = JSON.parse(r.stdout);
  t.deepEqual(Object.keys(json), ['apiVersion', 'kind', 'items']);
  t.like(json, { apiVersion: 'v1', kind: 'List' });
  t.deepEqual(
    json.items.map((i: { name: string }) => i.name),
    ['bad3', 'bare4', 'n1', 'p2'],
  );
  const p2 = json.items[3];
  t.like(p2, {
    name: 'p2',
    internalIP: '198.51.100.12',
    podCIDR: '198.18.2.0/24',
    publicIP: '198.51.100.12',
    vtepIP: '198.18.2.0',
    vtepMAC: P2_MAC,
    vni: 1,
    backendData: { VNI: 1, VtepMAC: P2_MAC },
    networkUnavailable: { status: 'False', reason: 'WeftIsUp' },
    annotations: { state: 'ok' },
  });
  t.true(Date.parse(p2.creationTimestamp) > Date.now() - 600_000);
  t.regex(p2.resourceVersion, /^\d+$/);
  t.deepEqual(json.items[0].annotations, { state: 'malformed', reason: 'backend-data is not JSON' });
  t.false('etcdLeaseId' in p2);
  const yaml = parseYaml((await weftctl(['get', 'nodes', '-o', 'yaml'])).stdout);
  t.like(yaml, { apiVersion: 'v1', kind: 'List' });
  t.is(yaml.items.length, 4);
});

test.serial('describe node: by name or podCIDR; an unknown node is a clear error', async (t) => {
  const r = await weftctl(['describe', 'node', 'p2']);
  t.is(r.code, 0, r.stderr);
  t.regex(r.stdout, /^Name:\s+p2$/m);
  t.regex(r.stdout, /^Internal IP:\s+198\.51\.100\.12$/m);
  t.regex(r.stdout, /^Pod CIDR:\s+198\.18\.2\.0\/24$/m);
  t.regex(r.stdout, new RegExp(`^VTEP MAC:\\s+${P2_MAC}$`, 'm'));
  t.regex(r.stdout, /^NetworkUnavailable:\s+False \(WeftIsUp: weft is running on this node\) since \d{4}-/m);
  t.regex(r.stdout, /^Annotations:\s+ok /m);
  t.regex(r.stdout, /^Network:\s+198\.18\.0\.0\/16 \(VNI 1, UDP 8472\)$/m);
  const bad = await weftctl(['describe', 'node', '198.18.3.0/24']);
  t.is(bad.code, 0, bad.stderr);
  t.regex(bad.stdout, /^Name:\s+bad3$/m);
  t.regex(bad.stdout, /^Annotations:\s+malformed: backend-data is not JSON \(not a peer/m);
  t.regex(bad.stdout, /flannel\.alpha\.coreos\.com\/backend-data=\{"VNI":1,$/m);
  const json = JSON.parse((await weftctl(['describe', 'node', 'p2', '-o', 'json'])).stdout);
  t.like(json, { node: { name: 'p2', vtepMAC: P2_MAC }, network: { network: '198.18.0.0/16' } });
  const missing = await weftctl(['describe', 'node', 'nosuch']);
  t.is(missing.code, 2);
  t.regex(missing.stderr, /^weftctl: no node named "nosuch" \(nor with that IP or podCIDR\) in the Nodes of http:\/\/198\.51\.100\.2:6443\n$/);
});

test.serial('get network is net-conf.json; network init is etcd-only; a missing file or API says so', async (t) => {
  const net = await weftctl(['get', 'network', '-o', 'json']);
  t.is(net.code, 0, net.stderr);
  t.like(JSON.parse(net.stdout), { network: '198.18.0.0/16', backend: { type: 'vxlan', vni: 1, port: 8472 } });
  const absent = await weftctl(['get', 'network', '--net-config-path', join(lab.dir, 'absent.json')]);
  t.is(absent.code, 2);
  t.regex(absent.stderr, /absent\.json" cannot be read \(ENOENT\); in Kubernetes mode the network config is net-conf\.json \(pass --net-config-path\)/);
  // Nodes are still listed without it, judged against any Network (and told so).
  const nodes = await weftctl(['get', 'nodes', '--net-config-path', join(lab.dir, 'absent.json')]);
  t.is(nodes.code, 0, nodes.stderr);
  t.regex(nodes.stderr, /^weftctl: .*absent\.json" cannot be read \(ENOENT\): annotations are judged against any Network and VNI 1\n$/);

  const init = await weftctl(['network', 'init', '--network', '198.18.0.0/16']);
  t.is(init.code, 2);
  t.regex(init.stderr, /^weftctl: network init is for etcd mode only: in Kubernetes mode the network config is net-conf\.json/);
  // weftd's environment picks the mode too (in-cluster, else $KUBECONFIG).
  const env = await weftctl(['get', 'nodes', '-o', 'json'], { bare: true, env: { WEFTD_KUBE_SUBNET_MGR: 'true', KUBECONFIG: kubeconfig, WEFTD_NET_CONFIG_PATH: lab.netConf } });
  t.is(env.code, 0, env.stderr);
  t.is(JSON.parse(env.stdout).items.length, 4);

  const down = await weftctl(['get', 'nodes'], { bare: true, env: { WEFTD_KUBE_SUBNET_MGR: 'true', KUBECONFIG: writeServerKubeconfig('http://198.51.100.2:6499') } });
  t.is(down.code, 2);
  t.regex(down.stderr, /^weftctl: cannot reach the Kubernetes API at http:\/\/198\.51\.100\.2:6499: list nodes: .*ECONNREFUSED/);
  t.notRegex(down.stderr, noStack);
  t.is(down.stderr.trim().split('\n').length, 1, down.stderr);
});

function writeServerKubeconfig(server: string): string {
  const path = join(lab.dir, `kubeconfig-${server.replace(/\W/g, '_')}`);
  writeKubeconfig(path, { server });
  return path;
}

/** `weftctl get nodes --watch -o json` in n1's namespace; events as `TYPE NAME STATE MAC`. */
function watchNodes() {
  const child: ChildProcess = lab.scope.spawn('nsenter', [
    `--net=/run/netns/${lab.ns.get('n1')}`,
    '--',
    WEFTCTL,
    '--kubeconfig',
    kubeconfig,
    '--net-config-path',
    lab.netConf,
    'get',
    'nodes',
    '--watch',
    '-o',
    'json',
  ]);
  let stdout = '';
  let stderr = '';
  let exit: number | null | undefined;
  child.stdout!.on('data', (d) => (stdout += d));
  child.stderr!.on('data', (d) => (stderr += d));
  const closed = new Promise<number | null>((r) =>
    child.on('close', (code) => {
      exit = code;
      r(code);
    }),
  );
  const events = () =>
    stdout
      .split('\n')
      .filter(Boolean)
      .map((l) => {
        const e = JSON.parse(l) as { type: string; node: { name: string; annotations: { state: string }; vtepMAC?: string } };
        return `${e.type} ${e.node.name} ${e.node.annotations.state} ${e.node.vtepMAC ?? '-'}`;
      });
  const first = (n: number, timeoutMs = 20_000) => eventually(() => (events().length >= n ? events() : undefined), timeoutMs);
  const output = () => `stdout:\n${stdout}\nstderr:\n${stderr}\nexit: ${exit}`;
  return { child, closed, events, first, output, stderr: () => stderr, running: () => exit === undefined };
}

test.serial('get nodes --watch: annotation changes, a repaired and a deleted node, a new one', async (t) => {
  const w = watchNodes();
  t.truthy(await w.first(4, 30_000), `no listing; ${w.output()}`);
  t.deepEqual(w.events(), ['ADDED bad3 malformed -', 'ADDED bare4 missing -', 'ADDED n1 missing -', 'ADDED p2 ok 0a:00:00:00:02:01']);
  await annotate('p2', { [`${P}backend-data`]: JSON.stringify({ VNI: 1, VtepMAC: '0a:00:00:00:02:02' }) });
  t.deepEqual((await w.first(5))?.slice(4), ['MODIFIED p2 ok 0a:00:00:00:02:02'], w.output());
  await annotate('bad3', { [`${P}backend-data`]: JSON.stringify({ VNI: 1, VtepMAC: '0a:00:00:00:03:01' }) });
  t.deepEqual((await w.first(6))?.slice(5), ['MODIFIED bad3 ok 0a:00:00:00:03:01'], w.output());
  await api('DELETE', '/api/v1/nodes/bare4');
  await createNode(peerNode('p5', { cidr: '198.18.5.0/24', mac: '0a:00:00:00:05:01', ip: '198.51.100.15' }), {});
  t.deepEqual((await w.first(8))?.slice(6), ['DELETED bare4 missing -', 'ADDED p5 ok 0a:00:00:00:05:01'], w.output());
  t.true(w.running(), w.output());
  w.child.kill('SIGINT');
  t.is(await w.closed, 0, w.output());
  t.is(w.events().length, 8, 'no event twice');
});

test.serial('get nodes --watch: relists after the API server restarts with etcd compacted past its resourceVersion', async (t) => {
  const w = watchNodes();
  t.truthy(await w.first(4, 30_000), `no listing; ${w.output()}`);
  const before = w.events().length;
  // Freeze weftctl, replace the API server under it (its watch stream breaks), change Nodes and
  // compact etcd past everything it has seen: resuming from its resourceVersion gets 410 Gone,
  // and only a relist brings the changes in.
  process.kill(w.child.pid!, 'SIGSTOP');
  try {
    await killAndWait(lab.apiPid!, 'SIGKILL', { graceMs: 5000 });
    lab.apiPid = await lab.startApi();
    await annotate('p5', { [`${P}backend-data`]: JSON.stringify({ VNI: 1, VtepMAC: '0a:00:00:00:05:02' }) });
    await api('DELETE', '/api/v1/nodes/bad3');
    await createNode(peerNode('p6', { cidr: '198.18.6.0/24', mac: '0a:00:00:00:06:01', ip: '198.51.100.16' }), {});
    await admin.call('compact');
  } finally {
    process.kill(w.child.pid!, 'SIGCONT');
  }
  const all = await w.first(before + 3, 40_000);
  t.truthy(all, `changes behind the compaction; ${w.output()}`);
  t.deepEqual(all!.slice(before).sort(), ['ADDED p6 ok 0a:00:00:00:06:01', 'DELETED bad3 ok 0a:00:00:00:03:01', 'MODIFIED p5 ok 0a:00:00:00:05:02'], w.output());
  // Which path brought them (a resumed watch answered 410 and re-listed, or the restart began
  // with a listing after a request to the old server failed, or a watch that ended cleanly) is
  // timing; what stderr says is logged, the changes above are the proof.
  t.log(w.stderr().trim() || '(nothing on stderr)');
  // The watch goes on after the relist.
  await annotate('p6', { [`${P}public-ip`]: '198.51.100.26' });
  t.deepEqual((await w.first(before + 4))?.slice(before + 3), ['MODIFIED p6 ok 0a:00:00:00:06:01'], w.output());
  w.child.kill('SIGINT');
  t.is(await w.closed, 0, w.output());
  t.is(w.events().length, before + 4, w.output());
});

test.serial('get nodes -w (table): the header once, then one aligned row per change', async (t) => {
  const child = lab.scope.spawn('nsenter', [`--net=/run/netns/${lab.ns.get('n1')}`, '--', WEFTCTL, '--kubeconfig', kubeconfig, '--net-config-path', lab.netConf, 'get', 'nodes', '-w']);
  let stdout = '';
  child.stdout!.on('data', (d) => (stdout += d));
  const closed = new Promise<number | null>((r) => child.on('close', (code) => r(code)));
  t.truthy(await eventually(() => /^ADDED\s+p6\s/m.test(stdout), 30_000), stdout);
  await annotate('p2', { 'example.com/note': 'touched' });
  t.truthy(await eventually(() => /^MODIFIED\s+p2\s/m.test(stdout), 20_000), stdout);
  child.kill('SIGINT');
  t.is(await closed, 0);
  const lines = stdout.trimEnd().split('\n');
  t.regex(lines[0]!, /^EVENT\s+NAME\s+INTERNAL-IP\s+POD-CIDR\s+VTEP-MAC\s+PUBLIC-IP\s+NETWORK-UNAVAILABLE\s+AGE$/);
  t.is(lines.filter((l) => l.startsWith('EVENT')).length, 1);
  const modified = lines.find((l) => l.startsWith('MODIFIED'))!;
  t.is(modified.indexOf('198.18.2.0/24'), lines[0]!.indexOf('POD-CIDR'), stdout);
  t.regex(modified, /^MODIFIED\s+p2\s+198\.51\.100\.12\s+198\.18\.2\.0\/24\s+0a:00:00:00:02:02\s+198\.51\.100\.12\s+False\/WeftIsUp\s+\d+[sm]/);
});

test.serial('check: a node programmed by weftd in kube mode is consistent; hand-made drift is reported', async (t) => {
  const ns = lab.ns.get('n1')!;
  const subnetFile = join(lab.dir, 'n1-subnet.env');
  const log: string[] = [];
  const weftd = lab.scope.spawn('nsenter', [
    `--net=/run/netns/${ns}`,
    '--',
    WEFTD,
    '--kube-subnet-mgr',
    '--kubeconfig',
    kubeconfig,
    '--net-config-path',
    lab.netConf,
    '--node-name',
    'n1',
    '--iface',
    'eth0',
    '--subnet-file',
    subnetFile,
    '--healthz-addr',
    '127.0.0.1:9333',
    '--cni-socket',
    join(lab.dir, 'cni.sock'),
  ]);
  weftd.stdout!.on('data', (d) => log.push(String(d)));
  weftd.stderr!.on('data', (d) => log.push(String(d)));
  const peers = ['198.18.2.0/24', '198.18.5.0/24', '198.18.6.0/24'];
  const programmed = () => existsSync(subnetFile) && peers.every((p) => ipJson(ns, 'route', 'show', 'dev', 'flannel.1').some((r) => r.dst === p));
  t.true(await eventually(programmed, 30_000, 200), `weftd did not program n1: ${log.join('')}`);
  // weftd marks the Node ready once programmed.
  const ready = await eventually(async () => /^n1\s.*False\/WeftIsUp/m.test((await weftctl(['get', 'nodes'])).stdout), 20_000, 300);
  t.true(ready, log.join(''));
  const mac = ipJson(ns, 'link', 'show', 'flannel.1')[0].address as string;

  const check = (args: string[] = []) => weftctl(['check', '--subnet-file', subnetFile, ...args]);
  const ok = await check(['--node-name', 'n1']);
  t.is(ok.code, 0, ok.stdout + ok.stderr);
  t.regex(ok.stdout, /^node: 198\.51\.100\.11 198\.18\.1\.0\/24, device flannel\.1, 3 peer\(s\)$/m);
  t.regex(ok.stdout, /^198\.18\.2\.0\/24\s+198\.51\.100\.12\s+0a:00:00:00:02:02\s+ok\s+ok\s+ok$/m);
  t.regex(ok.stdout, /^198\.18\.6\.0\/24\s+198\.51\.100\.26\s+0a:00:00:00:06:01\s+ok\s+ok\s+ok$/m);
  t.regex(ok.stdout, /^consistent: kernel state matches the Kubernetes API$/m);
  // Without a name, our Node is found by flannel.1's local address (its public-ip annotation).
  const byIP = await check();
  t.is(byIP.code, 0, byIP.stdout + byIP.stderr);
  const json = JSON.parse((await check(['-o', 'json'])).stdout);
  t.like(json, { consistent: true, against: 'the Kubernetes API', self: { publicIP: N1_IP, subnet: '198.18.1.0/24' } });

  // Our annotations carry flannel.1's MAC, as peers need it.
  const n1 = JSON.parse((await weftctl(['get', 'nodes', '-o', 'json'])).stdout).items.find((i: { name: string }) => i.name === 'n1');
  t.like(n1, { vtepMAC: mac, annotations: { state: 'ok' } });

  // A node that is no peer is listed as skipped; entries for it are extra.
  await createNode(peerNode('bare7', { cidr: '198.18.7.0/24', annotations: {} }), {});
  const skipped = await check();
  t.is(skipped.code, 0, skipped.stdout);
  t.regex(skipped.stdout, /^skipped node "bare7" \(not a peer, no entries expected\): missing: backend annotations not written yet$/m);

  // Stop weftd (it would repair what follows), then drift by hand.
  await killAndWait(weftd.pid!, 'SIGTERM', { graceMs: 10_000 });
  const ip = (...a: string[]) => sh('ip', ['-n', ns, ...a]);
  ip('route', 'del', '198.18.5.0/24');
  ip('neigh', 'replace', '198.18.7.0', 'lladdr', '0a:00:00:00:07:01', 'dev', 'flannel.1', 'nud', 'permanent');
  inNs(ns, 'bridge', ['fdb', 'replace', '0a:00:00:00:02:02', 'dev', 'flannel.1', 'dst', '198.51.100.99', 'self', 'permanent']);
  writeFileSync(subnetFile, readFileSync(subnetFile, 'utf8').replace(/FLANNEL_SUBNET=.*/, 'FLANNEL_SUBNET=198.18.9.1/24'));
  const bad = await check(['--node-name', 'n1']);
  t.is(bad.code, 1, bad.stdout + bad.stderr);
  t.regex(bad.stdout, /^missing route: 198\.18\.5\.0\/24 via 198\.18\.5\.0 dev flannel\.1 onlink$/m);
  t.regex(bad.stdout, /^extra\s+neighbor: 198\.18\.7\.0 lladdr 0a:00:00:00:07:01 dev flannel\.1$/m);
  t.regex(bad.stdout, /^wrong\s+fdb: 0a:00:00:00:02:02 dst 198\.51\.100\.99, lease says 198\.51\.100\.12$/m);
  t.regex(bad.stdout, /^wrong\s+subnet-file: FLANNEL_SUBNET=198\.18\.9\.1\/24, lease says 198\.18\.1\.1\/24$/m);
  t.regex(bad.stdout, /^inconsistent: 4 difference\(s\)$/m);

  // Our own Node's annotations gone: said once, and the podCIDR still judges the subnet file.
  await annotate('n1', { [`${P}backend-data`]: null, [`${P}backend-type`]: null, [`${P}public-ip`]: null, [`${P}kube-subnet-manager`]: null });
  const bare = await check(['--node-name', 'n1', '-o', 'json']);
  t.is(bare.code, 1);
  const findings = JSON.parse(bare.stdout).findings.map((f: { kind: string; object: string; detail: string }) => `${f.kind} ${f.object}: ${f.detail}`);
  t.true(findings.includes('missing annotations: node "n1": backend annotations not written yet (is weftd running on it?)'), findings.join('\n'));
  t.true(findings.includes('wrong subnet-file: FLANNEL_SUBNET=198.18.9.1/24, lease says 198.18.1.1/24'), findings.join('\n'));
  t.false(
    findings.some((f: string) => f.startsWith('missing lease')),
    findings.join('\n'),
  );
  const unknown = await check(['--node-name', 'n9']);
  t.is(unknown.code, 1);
  t.regex(unknown.stdout, /^missing node: no Node "n9" in the Kubernetes API/m);
});

/**
 * The API server in a lab topology (lab/topology.ts), as the kube-subnet-manager tests use it:
 * started with spawnApiServer in the control-plane namespace next to etcd (198.51.100.2), with
 * node IPAM on; clients in two node namespaces reach it over the underlay bridge. kubectl runs in
 * node n1's namespace, client-node's informer (test/helpers/informer-client.ts) in n2's.
 * Everything is removed by the topology's destroy and the server's stop.
 */
import { spawn, type ChildProcess } from 'node:child_process';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import test from 'ava';
import { spawnApiServer, type ApiServerProcess } from '../../lab/apiserver/process.ts';
import { Topology } from '../../lab/topology.ts';
import { run } from '../helpers/netns.ts';

let topo: Topology;
let api: ApiServerProcess;
let informer: ChildProcess | undefined;
const dir = mkdtempSync(join(tmpdir(), 'weft-apiserver-lab-'));
const kubeconfig = join(dir, 'kubeconfig');

test.before(async () => {
  topo = await Topology.create({ workDir: join(dir, 'lab') });
  await topo.addNode({ start: false });
  await topo.addNode({ start: false });
  api = await spawnApiServer({
    netns: topo.state.etcdNetns,
    listen: `${topo.state.underlay}.2:6443`,
    etcd: [topo.state.etcdEndpoint],
    kubeconfig,
    args: ['--allocate-node-cidrs', '--cluster-cidr', topo.state.podNetwork],
  });
});

test.after.always(async () => {
  informer?.kill('SIGKILL');
  await api?.stop();
  await topo?.destroy();
  rmSync(dir, { recursive: true, force: true });
});

const kubectl = async (node: string, args: string[], input?: string) =>
  (await run('nsenter', [`--net=/run/netns/${topo.node(node).netns}`, '--', 'kubectl', '--kubeconfig', kubeconfig, ...args], { input, env: { ...process.env, HOME: dir } })).stdout;

test.serial('nodes register from their namespaces, get pod CIDRs, and an informer on another node sees them', async (t) => {
  t.is(api.url, 'http://198.51.100.2:6443');
  const lines: Array<{ ev: string; name?: string }> = [];
  informer = spawn('nsenter', [`--net=/run/netns/${topo.node('n2').netns}`, '--', process.execPath, join(import.meta.dirname, '..', 'helpers', 'informer-client.ts'), kubeconfig], {
    stdio: ['pipe', 'pipe', 'inherit'],
  });
  let buf = '';
  informer.stdout!.on('data', (c: Buffer) => {
    buf += c.toString();
    for (let i = buf.indexOf('\n'); i >= 0; i = buf.indexOf('\n')) {
      lines.push(JSON.parse(buf.slice(0, i)));
      buf = buf.slice(i + 1);
    }
  });
  for (const n of topo.state.nodes) {
    const manifest = `apiVersion: v1\nkind: Node\nmetadata: {name: ${n.name}}\nstatus:\n  addresses: [{type: InternalIP, address: ${n.ip}}]\n`;
    t.regex(await kubectl('n1', ['apply', '-f', '-'], manifest), new RegExp(`node/${n.name} created`));
  }
  const end = Date.now() + 15_000;
  let cidrs = '';
  while (Date.now() < end) {
    cidrs = await kubectl('n1', ['get', 'nodes', '-o', 'jsonpath={range .items[*]}{.metadata.name}={.spec.podCIDR} {end}']);
    if (/n1=198\.18\.\d+\.0\/24 n2=198\.18\.\d+\.0\/24/.test(cidrs)) break;
    await new Promise((r) => setTimeout(r, 200));
  }
  t.is(cidrs.trim(), 'n1=198.18.0.0/24 n2=198.18.1.0/24');
  const wide = await kubectl('n1', ['get', 'nodes', '-o', 'wide']);
  t.regex(wide, /^n2\s+Unknown\s+<none>\s+\S+\s+198\.51\.100\.12\s/m);
  const deadline = Date.now() + 15_000;
  while (!['n1', 'n2'].every((n) => lines.some((l) => l.name === n)) && Date.now() < deadline) await new Promise((r) => setTimeout(r, 100));
  t.true(
    ['n1', 'n2'].every((n) => lines.some((l) => (l.ev === 'add' || l.ev === 'update') && l.name === n)),
    JSON.stringify(lines),
  );
  t.false(
    lines.some((l) => l.ev === 'error'),
    JSON.stringify(lines),
  );
});

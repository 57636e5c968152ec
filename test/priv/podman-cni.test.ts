/**
 * podman 4 with its CNI backend runs containers on a weft network, the plugin installed the
 * common way: a symlink in the CNI bin dir (`ln -s .../dist/bin/weft <bin>/weft`), which once
 * failed every container start (netlink.node looked up beside the link). podman runs inside a
 * node namespace of a two-node test cluster (`nsenter --net`), so the bridge and veths are made
 * there; the root namespace must get none of them. Also the fast-path launcher through a
 * symlink, served by the node's weftd (its fallback beside the real file records each use).
 * Image: one static program (test/helpers/podman-probe.c), so no registry or base image.
 */
import test from 'ava';
import { spawnSync } from 'node:child_process';
import { chmodSync, copyFileSync, existsSync, mkdirSync, readdirSync, readFileSync, symlinkSync, writeFileSync } from 'node:fs';
import { join, resolve } from 'node:path';
import { type Cluster, reachable, startCluster } from '../helpers/cluster.ts';
import { eventually, ipJson } from '../helpers/netns.ts';
import { PROBE_IMAGE, Podman } from '../helpers/podman.ts';

const root = resolve('.');
const NET = 'weft-pm';
const FAST_NET = 'weft-pmf';
const ECHO_PORT = 7181;

let cluster: Cluster;
let podman: Podman;
let standaloneConf = '';
let fastConf = '';
let fallbackLog = '';

type Link = { ifindex: number; ifname: string; master?: string; ifalias?: string; link_type?: string; linkinfo?: { info_kind?: string } };

/** The root namespace's links, read only. */
function rootLinks(): Link[] {
  const r = spawnSync('ip', ['-j', '-d', 'link', 'show'], { encoding: 'utf8' });
  if (r.status !== 0) throw new Error(`ip link: ${r.stderr}`);
  return JSON.parse(r.stdout);
}

const nodeLinks = (node: string): Link[] => ipJson(cluster.node(node).netns, '-d', 'link', 'show');
const isVeth = (l: Link) => l.linkinfo?.info_kind === 'veth';

function inSubnet(ip: string, cidr: string): boolean {
  const n = (s: string) => s.split('.').reduce((a, o) => a * 256 + Number(o), 0);
  const [base, len] = cidr.split('/');
  const size = 2 ** (32 - Number(len));
  return Math.floor(n(ip) / size) === Math.floor(n(base) / size);
}

/** The IPs allocated in a network's IPAM store on a node (host-local layout: one file per IP). */
function allocations(node: string, net: string): Map<string, string> {
  const dir = join(cluster.node(node).dataDir, net);
  const out = new Map<string, string>();
  if (!existsSync(dir)) return out;
  for (const f of readdirSync(dir)) if (/^\d+\.\d+\.\d+\.\d+$/.test(f)) out.set(f, readFileSync(join(dir, f), 'utf8'));
  return out;
}

function conflist(net: string, extra: Record<string, unknown> = {}): string {
  const n1 = cluster.node('n1');
  return JSON.stringify({
    cniVersion: '1.0.0',
    name: net,
    plugins: [{ type: 'weft', bridge: 'cni0', subnetFile: n1.subnetFile, dataDir: n1.dataDir, ...extra }],
  });
}

test.before(async () => {
  cluster = await startCluster({ nodes: 2, start: false });
  // The fast path serves one dataDir (by default the host's /var/lib/cni/networks): the node's.
  for (const n of ['n1', 'n2']) await cluster.topo.startDaemon(n, { args: ['--cni-data-dir', cluster.node(n).dataDir] });
  const [pod] = await cluster.addPods('n2', 1);
  await cluster.topo.startEcho(pod.name, { tcp: [ECHO_PORT], udp: [] });
  podman = new Podman({ netns: cluster.node('n1').netns });
  // The standalone plugin, symlinked into a CNI bin dir as a user would install it.
  const bin = join(podman.dir, 'cni-bin');
  mkdirSync(bin);
  symlinkSync(join(root, 'dist/bin/weft'), join(bin, 'weft'));
  // The launcher, symlinked too. Beside its real file, the fallback it would exec when weftd
  // does not serve: a wrapper around the standalone that records each command, so the test
  // sees that ADD and DEL went through weftd's socket (libcni's VERSION probe carries no
  // fastpathSocket, so it goes to the default socket, absent here, and falls back).
  const fastPkg = join(podman.dir, 'fast-pkg');
  const fastBin = join(podman.dir, 'cni-bin-fast');
  mkdirSync(fastPkg);
  mkdirSync(fastBin);
  fallbackLog = join(podman.dir, 'fallback.log');
  copyFileSync(join(root, 'dist/bin/weft-fast'), join(fastPkg, 'weft'));
  chmodSync(join(fastPkg, 'weft'), 0o755);
  writeFileSync(join(fastPkg, 'weft-standalone'), `#!/bin/sh\necho "$CNI_COMMAND" >> '${fallbackLog}'\nexec '${join(root, 'dist/bin/weft')}'\n`, { mode: 0o755 });
  symlinkSync(join(fastPkg, 'weft'), join(fastBin, 'weft'));
  fastConf = podman.writeConf([fastBin, '/usr/lib/cni']);
  standaloneConf = podman.writeConf([bin, '/usr/lib/cni']);
  writeFileSync(join(podman.netDir, `${NET}.conflist`), conflist(NET));
  writeFileSync(join(podman.netDir, `${FAST_NET}.conflist`), conflist(FAST_NET, { fastpathSocket: join(cluster.node('n1').dir, 'cni.sock') }));
  podman.use(standaloneConf);
  podman.buildProbeImage();
});

test.after.always(async () => {
  podman?.cleanup();
  await cluster?.destroy();
});

/**
 * Runs a detached probe container on `net` and checks everything about it; returns what the
 * removal checks need.
 */
async function runAndCheck(t: any, name: string, net: string) {
  const subnet = cluster.subnetOf('n1')!;
  t.truthy(subnet, 'n1 has a leased subnet');
  const rootBefore = rootLinks();
  const vethsBefore = nodeLinks('n1').filter(isVeth).length;

  const r = podman.runContainer(['-d', '--name', name, '--network', net, PROBE_IMAGE, '/probe', 'sleep']);
  t.is(r.status, 0, `podman run: ${r.stdout}${r.stderr}`);
  const info = podman.inspect(name);
  const id: string = info.Id;
  const ip: string = info.NetworkSettings?.Networks?.[net]?.IPAddress;
  t.regex(ip ?? '', /^\d+\.\d+\.\d+\.\d+$/, 'podman reports the container address');
  t.true(inSubnet(ip, subnet), `${ip} is in n1's subnet ${subnet}`);

  // The container itself has the address on eth0.
  const logs = await eventually(() => {
    const out = podman.run(['logs', name]).stdout;
    return out.includes('addr eth0') ? out : '';
  });
  t.regex(logs, new RegExp(`^addr eth0 ${ip.replaceAll('.', '\\.')}$`, 'm'));

  // The IPAM store of the node holds the allocation, owned by this container.
  t.is(allocations('n1', net).get(ip)?.split(/\r?\n/)[0], id, 'allocation owned by the container');

  // Bridge and host veth in the node namespace...
  const links = nodeLinks('n1');
  t.true(
    links.some((l) => l.ifname === 'cni0'),
    'cni0 in the node namespace',
  );
  const veth = links.find((l) => isVeth(l) && l.ifalias === `${id}/eth0`);
  t.truthy(veth, 'the host veth (alias containerID/eth0) is in the node namespace');
  t.is(veth?.master, 'cni0');
  t.is(links.filter(isVeth).length, vethsBefore + 1);
  // ...and nothing of it in the root namespace (other users' podman may add links there, so
  // compare by what is ours: the bridge name, the alias, the veth's name).
  const known = new Set(rootBefore.map((l) => `${l.ifindex}/${l.ifname}`));
  const added = rootLinks().filter((l) => !known.has(`${l.ifindex}/${l.ifname}`));
  t.deepEqual(
    added.filter((l) => l.ifname === 'cni0' || l.master === 'cni0' || l.ifalias?.startsWith(id) || l.ifname === veth?.ifname),
    [],
    'no bridge or veth of ours in the root namespace',
  );
  t.is(
    rootLinks().some((l) => l.ifname === 'cni0'),
    rootBefore.some((l) => l.ifname === 'cni0'),
    'no cni0 appeared in the root namespace',
  );

  // A pod on the other node reaches the container over the overlay...
  const pod = cluster.pods.find((p) => p.node === 'n2')!;
  t.true(await eventually(() => reachable(pod.netns, ip), 15_000), `${pod.name} pings the container ${ip}`);
  // podman's own namespace for the container, removed with it.
  const sandbox: string = info.NetworkSettings?.SandboxKey ?? '';
  t.regex(sandbox, /^\/run\/netns\/[\w-]+$/);
  return { id, ip, veth: veth?.ifname, sandbox };
}

/** podman rm releases the allocation and deletes the veth and the container's namespace. */
async function removeAndCheck(t: any, name: string, net: string, c: { id: string; ip: string; veth?: string; sandbox: string }) {
  const r = podman.run(['rm', '--force', '--time', '2', name]);
  t.is(r.status, 0, `podman rm: ${r.stdout}${r.stderr}`);
  t.false(allocations('n1', net).has(c.ip), 'allocation released');
  t.false(
    nodeLinks('n1').some((l) => l.ifalias === `${c.id}/eth0` || l.ifname === c.veth),
    'host veth deleted',
  );
  t.false(existsSync(c.sandbox), `container netns ${c.sandbox} removed`);
}

test.serial('podman (CNI backend) runs containers through a symlinked standalone weft plugin, in the node namespace', async (t) => {
  podman.use(standaloneConf);
  const c = await runAndCheck(t, 'pm-standalone', NET);

  // ...and the container reaches that pod: the echo server answers with its name and the
  // client address it saw, the container's own (no NAT inside the pod network).
  const pod = cluster.pods.find((p) => p.node === 'n2')!;
  const vethsBefore = nodeLinks('n1').filter(isVeth).length;
  const r = podman.runContainer(['--name', 'pm-once', '--network', NET, PROBE_IMAGE, '/probe', 'tcp', pod.ip, String(ECHO_PORT)]);
  t.is(r.status, 0, `probe tcp: ${r.stdout}${r.stderr}`);
  const own = /^addr eth0 (\S+)$/m.exec(r.stdout)?.[1];
  t.truthy(own, r.stdout);
  t.true(inSubnet(own!, cluster.subnetOf('n1')!));
  t.not(own, c.ip);
  t.is(/^reply (.*)$/m.exec(r.stdout)?.[1], `${pod.name} ${own}`);
  // Its exit released its address and deleted its veth, before any `podman rm`: only the
  // running container's allocation and veth are left.
  t.is(podman.inspect('pm-once').State?.Status, 'exited');
  t.deepEqual([...allocations('n1', NET).keys()], [c.ip]);
  t.is(nodeLinks('n1').filter(isVeth).length, vethsBefore);
  t.is(podman.run(['rm', 'pm-once']).status, 0);

  await removeAndCheck(t, 'pm-standalone', NET, c);
  t.is(allocations('n1', NET).size, 0);
});

test.serial("podman runs containers through a symlinked fast-path launcher served by the node's weftd", async (t) => {
  podman.use(fastConf);
  const c = await runAndCheck(t, 'pm-fast', FAST_NET);
  await removeAndCheck(t, 'pm-fast', FAST_NET, c);
  t.is(allocations('n1', FAST_NET).size, 0);
  // The fallback ran for VERSION probes at most: weftd served ADD and DEL.
  const fellBack = existsSync(fallbackLog) ? readFileSync(fallbackLog, 'utf8').split('\n').filter(Boolean) : [];
  t.deepEqual(
    fellBack.filter((cmd) => cmd !== 'VERSION'),
    [],
    'no ADD/DEL fell back to the standalone',
  );
});

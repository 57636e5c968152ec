/**
 * Pods started the way kubelet starts them: through containerd's CRI plugin (RunPodSandbox,
 * PodSandboxStatus, StopPodSandbox, RemovePodSandbox over gRPC), which runs the CNI plugins
 * itself through libcni with its own environment, cache and timeouts. Each of two weft nodes
 * (test/helpers/cluster.ts: etcd, weftd, VXLAN underlay) gets Debian's containerd inside its
 * node namespace, configured like a kubelet node: the CNI bin dir holds what
 * install/install-cni.sh installed from a read-only copy of the image's /opt/weft/cni (the
 * launcher as `weft`, `weft-standalone`, the addons, portmap) into a temporary host root, beside
 * the `loopback` plugin a node's CNI package provides; the conf dir holds the shipped conflist
 * with this node's paths. containerd's PATH holds no Node.js.
 */
import test from 'ava';
import { execFileSync } from 'node:child_process';
import { cpSync, existsSync, mkdirSync, mkdtempSync, readdirSync, readFileSync, renameSync, rmSync, statSync, writeFileSync } from 'node:fs';
import { join, resolve } from 'node:path';
import { startCluster, type Cluster } from '../helpers/cluster.ts';
import { Containerd } from '../helpers/cri/containerd.ts';
import { sandboxNetns, type PodSandboxConfig } from '../helpers/cri/client.ts';
import { ipJson, sh } from '../helpers/netns.ts';

const root = resolve('.');
const NODES = ['n1', 'n2'] as const;
/** install-cni runs like the init container: a plain shell and coreutils. */
const BARE_PATH = '/usr/sbin:/usr/bin:/sbin:/bin';

let work: string;
let cluster: Cluster;
const runtimes = new Map<string, Containerd>();
/** Per node: the temporary host root install-cni installs into. */
const hosts = new Map<string, string>();
let srcDir: string;
let podSeq = 0;

function nodeConflist(node: string): string {
  const n = cluster.node(node);
  const conf = JSON.parse(readFileSync(join(root, 'cni-conf/10-weft.conflist'), 'utf8'));
  // The shipped conflist, with the paths of this lab node instead of the host's defaults.
  conf.plugins[0] = { ...conf.plugins[0], subnetFile: n.subnetFile, dataDir: n.dataDir, fastpathSocket: join(n.dir, 'cni.sock') };
  return `${JSON.stringify(conf, null, 2)}\n`;
}

/** Runs install/install-cni.sh for `node` with the source mounted read-only, as in the image. */
function installCni(node: string, env: Record<string, string> = {}): { status: number; stdout: string; stderr: string } {
  const host = hosts.get(node)!;
  const confFile = join(work, `${node}-cni-conf.json`);
  writeFileSync(confFile, nodeConflist(node));
  // A private mount namespace: the read-only bind exists for this one run only.
  const script = `mount --bind "$SRC" "$SRC" && mount -o remount,bind,ro "$SRC" "$SRC" && exec sh "${join(root, 'install/install-cni.sh')}"`;
  try {
    const stdout = execFileSync('unshare', ['--mount', '--propagation', 'private', 'sh', '-c', script], {
      encoding: 'utf8',
      stdio: ['ignore', 'pipe', 'pipe'],
      env: {
        PATH: BARE_PATH,
        SRC: srcDir,
        WEFT_CNI_SRC_DIR: srcDir,
        WEFT_HOST_CNI_BIN_DIR: join(host, 'opt/cni/bin'),
        WEFT_HOST_CNI_LIB_DIR: join(host, 'opt/cni/lib/weft'),
        WEFT_HOST_CNI_CONF_DIR: join(host, 'etc/cni/net.d'),
        WEFT_CNI_CONF_FILE: confFile,
        ...env,
      },
    });
    return { status: 0, stdout, stderr: '' };
  } catch (err) {
    const e = err as { status: number; stdout: string; stderr: string };
    return { status: e.status ?? 1, stdout: e.stdout ?? '', stderr: e.stderr ?? '' };
  }
}

/** Every file under `dir` (relative paths). */
function tree(dir: string): string[] {
  const out: string[] = [];
  for (const e of readdirSync(dir, { withFileTypes: true })) {
    const p = join(dir, e.name);
    if (e.isDirectory()) out.push(...tree(p).map((q) => `${e.name}/${q}`));
    else out.push(e.name);
  }
  return out.sort();
}

function inodes(dir: string): Record<string, number> {
  return Object.fromEntries(tree(dir).map((f) => [f, statSync(join(dir, f)).ino]));
}

function sandboxConfig(node: string): PodSandboxConfig {
  const i = ++podSeq;
  const name = `pod-${node}-${i}`;
  // What kubelet sends for a plain pod (no host network, no port mappings).
  return {
    metadata: { name, uid: `uid-${work.slice(-6)}-${i}`, namespace: 'default', attempt: 0 },
    hostname: name,
    logDirectory: '',
    dnsConfig: { servers: [], searches: [], options: [] },
    labels: { 'io.kubernetes.pod.name': name, 'io.kubernetes.pod.namespace': 'default' },
    annotations: {},
    linux: { securityContext: { namespaceOptions: { network: 'POD', pid: 'CONTAINER', ipc: 'POD' } } },
  };
}

interface Sandbox {
  id: string;
  node: string;
  ip: string;
  netns: string;
}

async function runSandbox(node: string): Promise<Sandbox> {
  const cd = runtimes.get(node)!;
  const id = await cd.cri().runPodSandbox(sandboxConfig(node));
  const st = await cd.cri().podSandboxStatus(id);
  const netns = sandboxNetns(st);
  if (netns) cd.podNetns.add(netns);
  if (st.status.state !== 'SANDBOX_READY') throw new Error(`sandbox ${id} is ${st.status.state}`);
  if (!netns || !st.status.network?.ip) throw new Error(`sandbox ${id}: no netns or IP in its status`);
  return { id, node, ip: st.status.network.ip, netns };
}

async function removeSandbox(s: Sandbox): Promise<void> {
  const cri = runtimes.get(s.node)!.cri();
  await cri.stopPodSandbox(s.id);
  await cri.removePodSandbox(s.id);
}

/** What a pod leaves on its node: host-side veths, IPAM claims, pod namespaces, shims. */
function nodeState(node: string): { veths: string[]; claims: string[]; podNetns: string[]; shims: number } {
  const n = cluster.node(node);
  const veths = ipJson(n.netns, 'link', 'show', 'type', 'veth')
    .map((l) => l.ifname as string)
    .sort();
  const ipamDir = join(n.dataDir, 'weft');
  const claims = existsSync(ipamDir)
    ? readdirSync(ipamDir)
        .filter((f) => /^\d+\.\d+\.\d+\.\d+$/.test(f))
        .sort()
    : [];
  const cd = runtimes.get(node)!;
  const podNetns = [...new Set([...cd.podNetns].filter((p) => existsSync(p)).concat(cd.podNamespaces()))].sort();
  return { veths, claims, podNetns, shims: cd.shims().length };
}

/** One ping (up to 3 tries) from inside a namespace given by path (the CRI's, not under /run/netns). */
function reachable(netnsPath: string, ip: string): boolean {
  for (let i = 0; i < 3; i++) {
    try {
      sh('nsenter', [`--net=${netnsPath}`, '--', 'ping', '-c', '1', '-W', '1', ip]);
      return true;
    } catch {
      /* retry */
    }
  }
  return false;
}

function inSubnet(ip: string, subnet: string): boolean {
  const [net, len] = subnet.split('/');
  const toInt = (a: string) => a.split('.').reduce((acc, o) => acc * 256 + Number(o), 0);
  const size = 2 ** (32 - Number(len));
  return Math.floor(toInt(ip) / size) === Math.floor(toInt(net!) / size);
}

test.before(async () => {
  execFileSync(process.execPath, [join(root, 'scripts/package.ts')], { stdio: 'pipe' });
  work = mkdtempSync('/tmp/wt-cri-');
  // The image's /opt/weft/cni (Dockerfile): dist/pkg plus the reference portmap.
  srcDir = join(work, 'src');
  cpSync(join(root, 'dist/pkg'), srcDir, { recursive: true });
  cpSync('/usr/lib/cni/portmap', join(srcDir, 'bin/portmap'));
  cluster = await startCluster({ nodes: NODES.length });
  for (const node of NODES) {
    const host = join(work, `${node}-host`);
    hosts.set(node, host);
    // What a node's CNI package provides before weft is installed.
    mkdirSync(join(host, 'opt/cni/bin'), { recursive: true });
    cpSync('/usr/lib/cni/loopback', join(host, 'opt/cni/bin/loopback'));
    const r = installCni(node);
    if (r.status !== 0) throw new Error(`install-cni on ${node} failed: ${r.stderr}`);
    const cd = new Containerd({ netns: cluster.node(node).netns, dir: join(work, `${node}-cd`), cniBinDir: join(host, 'opt/cni/bin'), cniConfDir: join(host, 'etc/cni/net.d') });
    runtimes.set(node, cd);
    await cd.start();
  }
});

test.after.always(async () => {
  for (const cd of runtimes.values()) await cd.destroy().catch(() => {});
  await cluster?.destroy();
  if (work) rmSync(work, { recursive: true, force: true });
});

test.serial('install-cni from a read-only source: the layout kubelet needs; a second run changes nothing; no temp files', (t) => {
  for (const node of NODES) {
    const host = hosts.get(node)!;
    t.deepEqual(tree(join(host, 'opt/cni/bin')), ['loopback', 'portmap', 'weft', 'weft-standalone']);
    t.deepEqual(tree(join(host, 'opt/cni/lib/weft')), ['netlink.node', 'setns.node']);
    t.deepEqual(tree(join(host, 'etc/cni/net.d')), ['10-weft.conflist']);
    t.is(readFileSync(join(host, 'etc/cni/net.d/10-weft.conflist'), 'utf8'), nodeConflist(node));
    t.is(statSync(join(host, 'opt/cni/bin/weft')).mode & 0o777, 0o755);
    t.is(statSync(join(host, 'etc/cni/net.d/10-weft.conflist')).mode & 0o777, 0o644);
    const before = inodes(host);
    const again = installCni(node);
    t.is(again.status, 0, again.stderr);
    t.deepEqual(inodes(host), before, 'idempotent: the same files, not rewritten');
  }
  // The source really is read-only inside the run: a write there fails.
  const probe = execFileSync(
    'unshare',
    [
      '--mount',
      '--propagation',
      'private',
      'sh',
      '-c',
      `mount --bind "${srcDir}" "${srcDir}" && mount -o remount,bind,ro "${srcDir}" "${srcDir}" && (touch "${srcDir}/x" 2>/dev/null && echo writable || echo read-only)`,
    ],
    { encoding: 'utf8' },
  );
  t.is(probe.trim(), 'read-only');
});

test.serial('install-cni: a changed file is replaced by rename; a failing run installs no conflist and leaves no temp file', (t) => {
  const node = 'n1';
  const host = hosts.get(node)!;
  const conf = join(host, 'etc/cni/net.d/10-weft.conflist');
  writeFileSync(conf, '{"stale": true}\n');
  const staleIno = statSync(conf).ino;
  const r = installCni(node);
  t.is(r.status, 0, r.stderr);
  t.is(readFileSync(conf, 'utf8'), nodeConflist(node));
  t.not(statSync(conf).ino, staleIno, 'replaced by a new file (rename), not rewritten in place');

  // A conflist that does not configure weft: refused after the binaries, before the conflist.
  rmSync(conf);
  const badConf = join(work, 'bad-conf.json');
  writeFileSync(badConf, '{"cniVersion":"1.0.0","name":"x","plugins":[{"type":"bridge"}]}');
  const bad = installCni(node, { WEFT_CNI_CONF_FILE: badConf });
  t.not(bad.status, 0);
  t.regex(bad.stderr, /does not configure the weft plugin/);
  t.false(existsSync(conf), 'no conflist: the node stays NotReady');
  for (const dir of ['opt/cni/bin', 'opt/cni/lib/weft', 'etc/cni/net.d']) {
    t.deepEqual(
      readdirSync(join(host, dir)).filter((f) => f.startsWith('.')),
      [],
      `${dir}: no temp files left`,
    );
  }
  // Installed again for the tests that follow.
  const t2 = installCni(node);
  t.is(t2.status, 0, t2.stderr);
});

test.serial('CRI: sandboxes on two nodes get weft addresses from their node subnets and reach each other over the overlay (fast path)', async (t) => {
  const v = await runtimes.get('n1')!.cri().version();
  t.is(v.runtimeName, 'containerd');
  t.is(v.runtimeApiVersion, 'v1');
  for (const node of NODES) t.false(existsSync(join(runtimes.get(node)!.path, 'node')), "no Node.js on containerd's PATH");
  // Proof that ADD goes through weftd: the standalone the launcher would fall back to is gone.
  const standalone = join(hosts.get('n1')!, 'opt/cni/bin/weft-standalone');
  renameSync(standalone, `${standalone}.aside`);
  let a: Sandbox;
  try {
    a = await runSandbox('n1');
  } finally {
    renameSync(`${standalone}.aside`, standalone);
  }
  const b = await runSandbox('n2');
  t.true(inSubnet(a.ip, cluster.subnetOf('n1')!), `${a.ip} in ${cluster.subnetOf('n1')}`);
  t.true(inSubnet(b.ip, cluster.subnetOf('n2')!), `${b.ip} in ${cluster.subnetOf('n2')}`);
  // The address the CRI reports is the one inside the sandbox's namespace.
  const addrs = (JSON.parse(sh('nsenter', [`--net=${a.netns}`, '--', 'ip', '-j', '-4', 'addr', 'show', 'dev', 'eth0'])) as Array<{ addr_info: Array<{ local: string }> }>).flatMap((l) =>
    l.addr_info.map((x) => x.local),
  );
  t.deepEqual(addrs, [a.ip]);
  t.true(reachable(a.netns, b.ip), `${a.ip} -> ${b.ip} over VXLAN`);
  t.true(reachable(b.netns, a.ip), `${b.ip} -> ${a.ip} over VXLAN`);
  t.true(nodeState('n1').claims.includes(a.ip));
  await removeSandbox(a);
  await removeSandbox(b);
});

test.serial('CRI: Stop releases the address and the veth, Remove the namespace; nothing is left', async (t) => {
  const before = nodeState('n1');
  const s = await runSandbox('n1');
  const during = nodeState('n1');
  t.is(during.veths.length, before.veths.length + 1);
  t.deepEqual(during.claims, [...before.claims, s.ip].sort());
  await runtimes.get('n1')!.cri().stopPodSandbox(s.id);
  const stopped = nodeState('n1');
  t.deepEqual(stopped.veths, before.veths, 'veth gone after StopPodSandbox');
  t.deepEqual(stopped.claims, before.claims, 'address released after StopPodSandbox');
  // kubelet stops more than once; the second must succeed and change nothing.
  await runtimes.get('n1')!.cri().stopPodSandbox(s.id);
  await runtimes.get('n1')!.cri().removePodSandbox(s.id);
  t.deepEqual(nodeState('n1'), before, 'no veth, claim, namespace or shim left');
  t.false(existsSync(s.netns));
});

test.serial('CRI: weftd stopped -> the launcher falls back to weft-standalone (no Node.js on PATH); back to weftd after', async (t) => {
  const before = nodeState('n1');
  const peer = await runSandbox('n2');
  await cluster.topo.stopDaemon('n1');
  try {
    const s = await runSandbox('n1');
    t.true(inSubnet(s.ip, cluster.subnetOf('n1')!));
    // The data plane stays while weftd is down: the overlay still carries the pod.
    t.true(reachable(s.netns, peer.ip), `${s.ip} -> ${peer.ip} with weftd down`);
    await removeSandbox(s);
    t.deepEqual(nodeState('n1'), before, 'the standalone released what it allocated');
    // And without the standalone there is nothing to fall back to: the ADD fails cleanly.
    const standalone = join(hosts.get('n1')!, 'opt/cni/bin/weft-standalone');
    renameSync(standalone, `${standalone}.aside`);
    try {
      await t.throwsAsync(runSandbox('n1'), { message: /weft/ });
    } finally {
      renameSync(`${standalone}.aside`, standalone);
    }
    const cri = runtimes.get('n1')!.cri();
    for (const p of await cri.listPodSandbox()) {
      await cri.stopPodSandbox(p.id);
      await cri.removePodSandbox(p.id);
    }
    t.deepEqual(nodeState('n1'), before, 'a failed RunPodSandbox leaves nothing either');
  } finally {
    await cluster.topo.startDaemon('n1');
  }
  const again = await runSandbox('n1');
  t.true(reachable(again.netns, peer.ip));
  await removeSandbox(again);
  await removeSandbox(peer);
});

test.serial('CRI: a containerd restart between Run and Stop leaks nothing', async (t) => {
  const before = nodeState('n1');
  const s = await runSandbox('n1');
  const peer = await runSandbox('n2');
  const cd = runtimes.get('n1')!;
  await cd.restart();
  const st = await cd.cri().podSandboxStatus(s.id);
  t.is(st.status.state, 'SANDBOX_READY', 'the sandbox survived the restart');
  t.is(st.status.network?.ip, s.ip, 'same address after the restart');
  t.true(reachable(s.netns, peer.ip));
  await removeSandbox(s);
  t.deepEqual(nodeState('n1'), before, 'no veth, claim, namespace or shim left');
  // And a new sandbox after the restart works as before.
  const s2 = await runSandbox('n1');
  t.true(reachable(s2.netns, peer.ip));
  await removeSandbox(s2);
  await removeSandbox(peer);
  t.deepEqual(nodeState('n1'), before);
});

/**
 * The image (Dockerfile, built by scripts/image.sh) run as a node, the way the etcd-mode
 * DaemonSet (install/etcd/30-daemonset.yaml) runs it: everything podman is told comes from the
 * manifest: the install-cni init container (its env, mounts and securityContext: uid 0, no
 * capabilities, read-only root) installs into a temporary host root; network-config writes the
 * network; weftd runs privileged with host network (= a lab node namespace), host PID, the
 * DaemonSet's env, args and mounts. Then pods come through containerd's CRI on that node (the
 * installed launcher -> weftd's fast path), and with weftd stopped through the installed
 * weft-standalone (no Node.js on the host side).
 *
 * The host root is a temporary directory, not `/`: each hostPath volume H is the directory
 * <root>/H. On a real node the container path of these volumes equals the host path (checked in
 * test/unit/manifests.test.ts), and the plugin on the host hands weftd host paths (subnetFile,
 * dataDir in the conflist); so every such volume is also mounted at <root>/H, the identity it
 * has on a real node.
 *
 * The image must have been built first (scripts/image.sh: minutes, needs apt and npm registry
 * access, longer than ava's inactivity timeout); without it every test here is skipped and says
 * so. WEFT_TEST_IMAGE names another image.
 */
import test from 'ava';
import { spawnSync } from 'node:child_process';
import { cpSync, existsSync, mkdirSync, mkdtempSync, readdirSync, readFileSync, renameSync, rmSync, writeFileSync } from 'node:fs';
import { join, resolve } from 'node:path';
import { parseAllDocuments } from 'yaml';
import { startCluster, type Cluster } from '../helpers/cluster.ts';
import { Containerd } from '../helpers/cri/containerd.ts';
import { sandboxNetns, type PodSandboxConfig } from '../helpers/cri/client.ts';
import { reachable } from '../helpers/cri/nodes.ts';

type Obj = Record<string, any>;

const root = resolve('.');
const IMAGE = process.env.WEFT_TEST_IMAGE ?? 'weft:0.1.0';
/** podman without systemd: cgroupfs, events in a file. */
const PODMAN = ['--cgroup-manager=cgroupfs', '--events-backend=file'];
/**
 * podman's default rlimits for a rootful container (nofile 1048576, nproc 4194304) exceed what
 * this machine allows (runc: "error setting rlimit ... operation not permitted"): explicit,
 * modest ones, as a kubelet node's runtime would pass down its own.
 */
const ULIMITS = ['--ulimit', 'nofile=16384:16384', '--ulimit', 'nproc=4096:4096'];

const ds = parseAllDocuments(readFileSync(join(root, 'install/etcd/30-daemonset.yaml'), 'utf8'))
  .map((d) => d.toJS())
  .find((o: Obj) => o?.kind === 'DaemonSet') as Obj;
const podSpec = ds.spec.template.spec;
const volumes = new Map<string, Obj>(podSpec.volumes.map((v: Obj) => [v.name, v]));
const container = (name: string): Obj => [...podSpec.initContainers, ...podSpec.containers].find((c: Obj) => c.name === name);

let work: string;
let hostRoot: string;
let cluster: Cluster;
let cd: Containerd;
let weftdName: string;
let seq = 0;

function podman(args: string[], opts: { check?: boolean; timeoutMs?: number } = {}): { status: number; out: string } {
  const r = spawnSync('podman', [...PODMAN, ...args], { encoding: 'utf8', timeout: opts.timeoutMs ?? 120_000 });
  const out = `${r.stdout ?? ''}${r.stderr ?? ''}`;
  if ((opts.check ?? true) && r.status !== 0) throw new Error(`podman ${args.join(' ')}: ${out}`);
  return { status: r.status ?? 1, out };
}

/** The temporary host's directory for a hostPath (`/run/netns` stays the real one: pods live there). */
function onHost(hostPath: string): string {
  return hostPath === '/var/run/netns' ? '/run/netns' : join(hostRoot, hostPath);
}

/** The conflist as the ConfigMap ships it, with the temporary host's paths. */
function conflist(): string {
  const conf = JSON.parse(readFileSync(join(root, 'cni-conf/10-weft.conflist'), 'utf8'));
  conf.plugins[0] = {
    ...conf.plugins[0],
    subnetFile: onHost(conf.plugins[0].subnetFile),
    dataDir: onHost('/var/lib/cni/networks'),
    fastpathSocket: onHost('/run/weft/cni.sock'),
  };
  return JSON.stringify(conf, null, 2);
}

/**
 * podman flags for a container of the DaemonSet: its volume mounts (hostPath -> the temporary
 * host; ConfigMap -> `configDir`; Secret -> an empty dir, it is optional), env (values,
 * ConfigMap keys from `cm`, the downward API from `fields`) and securityContext.
 */
function runFlags(c: Obj, opts: { configDir: string; cm: Record<string, string>; fields: Record<string, string>; identity?: boolean }): string[] {
  const flags: string[] = [];
  for (const m of c.volumeMounts ?? []) {
    const v = volumes.get(m.name)!;
    let src: string;
    if (v.hostPath) src = onHost(v.hostPath.path);
    else if (v.configMap) src = opts.configDir;
    else src = mkdtempSync(join(work, 'secret-'));
    mkdirSync(src, { recursive: true });
    const mode = [m.readOnly ? 'ro' : 'rw', ...(m.mountPropagation === 'HostToContainer' ? ['rslave'] : [])].join(',');
    flags.push('-v', `${src}:${m.mountPath}:${mode}`);
    // The path the host-side plugin names, as on a real node (host path = container path).
    if (opts.identity && v.hostPath && src !== m.mountPath) flags.push('-v', `${src}:${src}:${mode}`);
  }
  for (const e of c.env ?? []) {
    let value: string | undefined = e.value;
    if (e.valueFrom?.configMapKeyRef) value = opts.cm[e.valueFrom.configMapKeyRef.key];
    if (e.valueFrom?.fieldRef) value = opts.fields[e.valueFrom.fieldRef.fieldPath];
    if (value === undefined) throw new Error(`${c.name}: no value for ${e.name}`);
    flags.push('-e', `${e.name}=${value}`);
  }
  const sc = c.securityContext ?? {};
  if (sc.privileged) flags.push('--privileged');
  if (sc.runAsUser !== undefined) flags.push('--user', `${sc.runAsUser}${sc.runAsGroup !== undefined ? `:${sc.runAsGroup}` : ''}`);
  if (sc.readOnlyRootFilesystem) flags.push('--read-only');
  if (sc.allowPrivilegeEscalation === false) flags.push('--security-opt', 'no-new-privileges');
  if (sc.capabilities?.drop?.includes('ALL')) flags.push('--cap-drop', 'ALL');
  for (const cap of sc.capabilities?.add ?? []) flags.push('--cap-add', cap);
  return flags;
}

/**
 * A weftd flag naming a path on a hostPath volume (`--subnet-file=/run/flannel/subnet.env`),
 * with the temporary host's path instead: mounted at the same path inside (the identity mounts),
 * it is what the host-side plugin names in its requests, as the manifest's path is on a node.
 */
function hostArg(arg: string): string {
  const m = /^(--[a-z-]+)=(\/.*)$/.exec(arg);
  if (!m) return arg;
  for (const vm of container('weftd').volumeMounts ?? []) {
    const v = volumes.get(vm.name)!;
    if (v.hostPath && (m[2] === vm.mountPath || m[2]!.startsWith(`${vm.mountPath}/`))) return `${m[1]}=${onHost(v.hostPath.path)}${m[2]!.slice(vm.mountPath.length)}`;
  }
  return arg;
}

/** A container's `command` replaces the image's ENTRYPOINT (Kubernetes semantics); `args` follow the image name. */
function entrypoint(c: Obj): string[] {
  return c.command ? ['--entrypoint', JSON.stringify(c.command)] : [];
}

function sandboxConfig(): PodSandboxConfig {
  const name = `img-pod-${++seq}`;
  return {
    metadata: { name, uid: `${name}-${process.pid}`, namespace: 'default' },
    hostname: name,
    linux: { securityContext: { namespaceOptions: { network: 'POD', pid: 'CONTAINER', ipc: 'POD' } } },
  };
}

async function runPod(): Promise<{ id: string; ip: string; netns: string }> {
  const id = await cd.cri().runPodSandbox(sandboxConfig());
  const st = await cd.cri().podSandboxStatus(id);
  const netns = sandboxNetns(st);
  if (!netns || !st.status.network?.ip) throw new Error(`sandbox ${id}: no netns or IP`);
  cd.podNetns.add(netns);
  return { id, ip: st.status.network.ip, netns };
}

async function removePod(id: string): Promise<void> {
  await cd.cri().stopPodSandbox(id);
  await cd.cri().removePodSandbox(id);
}

async function readyz(): Promise<number> {
  return (await cluster.topo.http('n1', '/readyz')).status;
}

const missing =
  spawnSync('podman', ['--version']).status !== 0
    ? 'podman not installed'
    : podman(['image', 'exists', IMAGE], { check: false }).status !== 0
      ? `image ${IMAGE} not built (run scripts/image.sh)`
      : undefined;
/** test.serial, or a skip that names what is missing. */
const serial = missing ? (title: string, _fn: unknown) => test.serial.skip(`${title} [skipped: ${missing}]`, () => {}) : test.serial;

test.before(async (t) => {
  if (missing) return;
  // scripts/image.sh labels the image with the commit it was built from.
  const rev = podman(['image', 'inspect', '--format', '{{index .Labels "org.opencontainers.image.revision"}}', IMAGE], { check: false }).out.trim();
  const head = spawnSync('git', ['rev-parse', 'HEAD'], { encoding: 'utf8' }).stdout.trim();
  if (rev !== head) t.log(`note: ${IMAGE} was built from ${rev || 'an unknown revision'}, the work tree is at ${head}`);
  work = mkdtempSync('/tmp/wt-img-');
  hostRoot = join(work, 'host');
  // n1 runs weftd from the image; n2 runs dist/bin/weftd as its peer.
  cluster = await startCluster({ nodes: 2, start: false });
  await cluster.topo.startDaemon('n2');
  const n1 = cluster.node('n1');
  const configDir = join(work, 'config');
  mkdirSync(configDir);
  writeFileSync(join(configDir, 'cni-conf.json'), conflist());
  // The network the lab already stored: network-config must find it unchanged (a no-op).
  const net = JSON.parse((await cluster.etcd.get(`${cluster.topo.state.etcdPrefix}/config`)) as string);
  writeFileSync(join(configDir, 'net-conf.json'), JSON.stringify(net));
  const cm = { 'etcd-endpoints': cluster.topo.state.etcdEndpoint, 'etcd-prefix': cluster.topo.state.etcdPrefix };
  const fields = { 'spec.nodeName': 'n1', 'status.hostIP': n1.ip };
  const netFlag = `--network=ns:/run/netns/${n1.netns}`;
  // A node's CNI package before weft is installed.
  mkdirSync(join(hostRoot, 'opt/cni/bin'), { recursive: true });
  cpSync('/usr/lib/cni/loopback', join(hostRoot, 'opt/cni/bin/loopback'));

  for (const init of podSpec.initContainers as Obj[]) {
    const r = podman(['run', '--rm', netFlag, ...ULIMITS, ...runFlags(init, { configDir, cm, fields }), ...entrypoint(init), IMAGE, ...(init.args ?? [])], { check: false });
    if (r.status !== 0) throw new Error(`init container ${init.name} failed: ${r.out}`);
  }
  const weftd = container('weftd');
  weftdName = `wt-img-weftd-${process.pid}`;
  podman([
    'run',
    '-d',
    '--name',
    weftdName,
    netFlag,
    ...ULIMITS,
    ...(podSpec.hostPID ? ['--pid=host'] : []),
    ...runFlags(weftd, { configDir, cm, fields, identity: true }),
    ...entrypoint(weftd),
    IMAGE,
    ...weftd.args.map(hostArg),
  ]);
  const end = Date.now() + 60_000;
  while ((await readyz()) !== 200) {
    if (Date.now() > end) throw new Error(`weftd from the image not ready: ${podman(['logs', weftdName], { check: false }).out.slice(-3000)}`);
    await new Promise((r) => setTimeout(r, 300));
  }
  cd = new Containerd({ netns: n1.netns, dir: join(work, 'cd'), cniBinDir: join(hostRoot, 'opt/cni/bin'), cniConfDir: join(hostRoot, 'etc/cni/net.d'), netnsUnderState: false });
  await cd.start();
});

test.after.always(async () => {
  if (weftdName) podman(['rm', '-f', '-t', '0', weftdName], { check: false });
  await cd?.destroy().catch(() => {});
  await cluster?.destroy();
  if (work) rmSync(work, { recursive: true, force: true });
});

serial('install-cni from the image (uid 0, no capabilities, read-only root) installed the plugin and the conflist', (t) => {
  const bin = join(hostRoot, 'opt/cni/bin');
  for (const f of ['weft', 'weft-standalone', 'portmap', 'loopback']) t.true(existsSync(join(bin, f)), f);
  t.true(existsSync(join(hostRoot, 'opt/cni/lib/weft/netlink.node')));
  t.is(readFileSync(join(hostRoot, 'etc/cni/net.d/10-weft.conflist'), 'utf8'), conflist());
  // The standalone runs on the host without Node.js.
  const r = spawnSync(join(bin, 'weft-standalone'), [], { input: '{"cniVersion":"1.0.0"}', env: { PATH: '/nonexistent', CNI_COMMAND: 'VERSION' }, encoding: 'utf8' });
  t.is(r.status, 0, r.stderr);
  t.true(JSON.parse(r.stdout).supportedVersions.includes('1.0.0'));
});

serial('weftd from the image: leased a subnet, wrote the subnet file on the host, peers with n2', async (t) => {
  t.is(await readyz(), 200);
  const subnet = readFileSync(onHost('/run/flannel/subnet.env'), 'utf8');
  t.regex(subnet, /^FLANNEL_SUBNET=198\.18\./m);
  t.true(existsSync(onHost('/run/weft/cni.sock')), 'fast-path socket on the host');
  // n1's subnet file is on the temporary host (cluster.subnetOf reads the lab's node dir).
  const m = /^FLANNEL_SUBNET=(\d+\.\d+\.\d+)\.\d+\/(\d+)$/m.exec(subnet)!;
  const n1Subnet = `${m[1]}.0/${m[2]}`;
  const n2HasN1 = () => {
    const mac = cluster.overlay('n1').mac;
    const o = cluster.overlay('n2');
    return (
      !!mac &&
      o.routes.some((r) => r.dst === n1Subnet && r.gateway === `${m[1]}.0`) &&
      o.neighs.some((nb) => nb.dst === `${m[1]}.0` && nb.lladdr === mac) &&
      o.fdbs.some((f) => f.mac === mac && f.dst === cluster.node('n1').ip)
    );
  };
  const end = Date.now() + 10_000;
  while (!(n2HasN1() && cluster.hasPeer('n1', 'n2')) && Date.now() < end) await new Promise((r) => setTimeout(r, 200));
  t.true(n2HasN1(), `n2 programmed n1's lease (written by the image's weftd): ${JSON.stringify(cluster.overlay('n2'))}`);
  t.true(cluster.hasPeer('n1', 'n2'), "the image's weftd programmed n2");
});

serial('a pod through containerd -> the installed launcher -> weftd in the image (fast path), reaching n2 over the overlay', async (t) => {
  const peer = await cluster.addPods('n2', 1);
  // Proof of the fast path: the standalone the launcher would fall back to is gone meanwhile.
  const standalone = join(hostRoot, 'opt/cni/bin/weft-standalone');
  renameSync(standalone, `${standalone}.aside`);
  let pod: Awaited<ReturnType<typeof runPod>>;
  try {
    pod = await runPod();
  } finally {
    renameSync(`${standalone}.aside`, standalone);
  }
  t.true(existsSync(join(onHost('/var/lib/cni/networks'), 'weft', pod.ip)), 'claimed in the host IPAM store');
  t.true(reachable(pod.netns, peer[0]!.ip), `${pod.ip} -> ${peer[0]!.ip}`);
  await removePod(pod.id);
  t.false(existsSync(join(onHost('/var/lib/cni/networks'), 'weft', pod.ip)), 'released');
});

serial('weftd stopped: the installed weft-standalone serves the pod; weftd restarted serves again', async (t) => {
  const peer = cluster.pods[0]!;
  podman(['stop', '-t', '10', weftdName]);
  t.not(await readyz(), 200);
  t.is(podman(['inspect', '--format', '{{.State.Status}}', weftdName]).out.trim(), 'exited');
  const pod = await runPod();
  t.true(reachable(pod.netns, peer.ip), 'data plane stays while weftd is down');
  await removePod(pod.id);
  t.false(existsSync(join(onHost('/var/lib/cni/networks'), 'weft', pod.ip)));
  podman(['start', weftdName]);
  const end = Date.now() + 60_000;
  while ((await readyz()) !== 200 && Date.now() < end) await new Promise((r) => setTimeout(r, 300));
  t.is(await readyz(), 200);
  const again = await runPod();
  t.true(reachable(again.netns, peer.ip));
  await removePod(again.id);
  t.deepEqual(cd.podNamespaces(), [], 'no pod namespace left');
  t.deepEqual(
    readdirSync(join(onHost('/var/lib/cni/networks'), 'weft')).filter((f) => /^\d+\.\d+\.\d+\.\d+$/.test(f)),
    [],
    'no address left claimed',
  );
});

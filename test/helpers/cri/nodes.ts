/**
 * A weft lab cluster (test/helpers/cluster.ts, etcd or Kubernetes mode) whose nodes run pods
 * the way kubelet does: through Debian's containerd and its CRI plugin inside each node
 * namespace. Each node's CNI bin dir holds what install/install-cni.sh installed from a
 * read-only copy of the image's /opt/weft/cni (the launcher as `weft`, `weft-standalone`, the
 * addons, portmap) into a temporary host root, beside the `loopback` plugin a node's CNI package
 * provides; the conf dir holds the shipped conflist with this node's paths. containerd's PATH
 * holds no Node.js. `destroy()` removes everything, also after a failure half-way.
 */
import { execFileSync } from 'node:child_process';
import { cpSync, existsSync, mkdirSync, mkdtempSync, readdirSync, readFileSync, renameSync, rmSync, statSync, writeFileSync } from 'node:fs';
import { join, resolve } from 'node:path';
import { startCluster, type Cluster, type ClusterOptions } from '../cluster.ts';
import { ipJson, sh } from '../netns.ts';
import { sandboxNetns, type PodSandboxConfig } from './client.ts';
import { Containerd } from './containerd.ts';

const root = resolve(import.meta.dirname, '..', '..', '..');
/** install-cni runs like the init container: a plain shell and coreutils. */
const BARE_PATH = '/usr/sbin:/usr/bin:/sbin:/bin';

export interface Sandbox {
  id: string;
  node: string;
  /** The address the CRI reports (PodSandboxStatus.network.ip). */
  ip: string;
  /** The sandbox's network namespace path (from containerd's verbose status). */
  netns: string;
}

/** What pods leave on a node: host-side veths, IPAM claims, pod namespaces, shims. */
export interface NodeState {
  veths: string[];
  claims: string[];
  podNetns: string[];
  shims: number;
}

export interface InstallResult {
  status: number;
  stdout: string;
  stderr: string;
}

export class CriCluster {
  readonly cluster: Cluster;
  readonly work: string;
  /** The image-like source layout install-cni reads (read-only while it runs). */
  readonly srcDir: string;
  readonly runtimes = new Map<string, Containerd>();
  /** Per node: the temporary host root install-cni installs into. */
  readonly hosts = new Map<string, string>();
  #podSeq = 0;

  private constructor(cluster: Cluster, work: string) {
    this.cluster = cluster;
    this.work = work;
    this.srcDir = join(work, 'src');
  }

  /** Packages the plugin, starts the cluster, installs the plugin on every node and starts containerd there. */
  static async start(opts: ClusterOptions & { nodes: number }): Promise<CriCluster> {
    execFileSync(process.execPath, [join(root, 'scripts/package.ts')], { stdio: 'pipe' });
    const work = mkdtempSync('/tmp/wt-cri-');
    let c: CriCluster | undefined;
    try {
      const cluster = await startCluster({ ...opts, start: false });
      c = new CriCluster(cluster, work);
      // weftd's fast path serves only its own network: the conflist's dataDir (the lab node's
      // IPAM dir) must be its --cni-data-dir, as /var/lib/cni/networks is on both sides on a node.
      await Promise.all(cluster.topo.state.nodes.map((n) => cluster.topo.startDaemon(n.name, { args: ['--cni-data-dir', n.dataDir] })));
      // The image's /opt/weft/cni (Dockerfile): dist/pkg plus the reference portmap.
      cpSync(join(root, 'dist/pkg'), c.srcDir, { recursive: true });
      cpSync('/usr/lib/cni/portmap', join(c.srcDir, 'bin/portmap'));
      for (const n of cluster.topo.state.nodes) {
        const host = join(work, `${n.name}-host`);
        c.hosts.set(n.name, host);
        // What a node's CNI package provides before weft is installed.
        mkdirSync(join(host, 'opt/cni/bin'), { recursive: true });
        cpSync('/usr/lib/cni/loopback', join(host, 'opt/cni/bin/loopback'));
        const r = c.installCni(n.name);
        if (r.status !== 0) throw new Error(`install-cni on ${n.name} failed: ${r.stderr}`);
        const cd = new Containerd({ netns: n.netns, dir: join(work, `${n.name}-cd`), cniBinDir: join(host, 'opt/cni/bin'), cniConfDir: join(host, 'etc/cni/net.d') });
        c.runtimes.set(n.name, cd);
        await cd.start();
      }
      return c;
    } catch (err) {
      if (c) await c.destroy();
      else rmSync(work, { recursive: true, force: true });
      throw err;
    }
  }

  runtime(node: string): Containerd {
    const cd = this.runtimes.get(node);
    if (!cd) throw new Error(`no containerd on node "${node}"`);
    return cd;
  }

  /** The shipped conflist, with the paths of this lab node instead of the host's defaults. */
  nodeConflist(node: string): string {
    const n = this.cluster.node(node);
    const conf = JSON.parse(readFileSync(join(root, 'cni-conf/10-weft.conflist'), 'utf8'));
    conf.plugins[0] = { ...conf.plugins[0], subnetFile: n.subnetFile, dataDir: n.dataDir, fastpathSocket: join(n.dir, 'cni.sock') };
    return `${JSON.stringify(conf, null, 2)}\n`;
  }

  /** Runs install/install-cni.sh for `node` with the source mounted read-only, as in the image. */
  installCni(node: string, env: Record<string, string> = {}): InstallResult {
    const host = this.hosts.get(node)!;
    const confFile = join(this.work, `${node}-cni-conf.json`);
    writeFileSync(confFile, this.nodeConflist(node));
    // A private mount namespace: the read-only bind exists for this one run only.
    const script = `mount --bind "$SRC" "$SRC" && mount -o remount,bind,ro "$SRC" "$SRC" && exec sh "${join(root, 'install/install-cni.sh')}"`;
    try {
      const stdout = execFileSync('unshare', ['--mount', '--propagation', 'private', 'sh', '-c', script], {
        encoding: 'utf8',
        stdio: ['ignore', 'pipe', 'pipe'],
        env: {
          PATH: BARE_PATH,
          SRC: this.srcDir,
          WEFT_CNI_SRC_DIR: this.srcDir,
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

  /** What kubelet sends for a plain pod (no host network, no port mappings). */
  sandboxConfig(node: string): PodSandboxConfig {
    const i = ++this.#podSeq;
    const name = `pod-${node}-${i}`;
    return {
      metadata: { name, uid: `uid-${this.work.slice(-6)}-${i}`, namespace: 'default', attempt: 0 },
      hostname: name,
      logDirectory: '',
      dnsConfig: { servers: [], searches: [], options: [] },
      labels: { 'io.kubernetes.pod.name': name, 'io.kubernetes.pod.namespace': 'default' },
      annotations: {},
      linux: { securityContext: { namespaceOptions: { network: 'POD', pid: 'CONTAINER', ipc: 'POD' } } },
    };
  }

  /** RunPodSandbox then PodSandboxStatus: throws unless ready with a netns and an IP. */
  /**
   * Runs `fn` with the node's installed standalone plugin moved aside, so that what succeeds
   * meanwhile went through weftd's fast path (the launcher has nothing to fall back to).
   */
  async withoutStandalone<T>(node: string, fn: () => Promise<T>): Promise<T> {
    const standalone = join(this.hosts.get(node)!, 'opt/cni/bin/weft-standalone');
    renameSync(standalone, `${standalone}.aside`);
    try {
      return await fn();
    } finally {
      renameSync(`${standalone}.aside`, standalone);
    }
  }

  async runSandbox(node: string): Promise<Sandbox> {
    const cd = this.runtime(node);
    const id = await cd.cri().runPodSandbox(this.sandboxConfig(node));
    const st = await cd.cri().podSandboxStatus(id);
    const netns = sandboxNetns(st);
    if (netns) cd.podNetns.add(netns);
    if (st.status.state !== 'SANDBOX_READY') throw new Error(`sandbox ${id} is ${st.status.state}`);
    if (!netns || !st.status.network?.ip) throw new Error(`sandbox ${id}: no netns or IP in its status`);
    return { id, node, ip: st.status.network.ip, netns };
  }

  /** StopPodSandbox then RemovePodSandbox, as kubelet does. */
  async removeSandbox(s: Sandbox): Promise<void> {
    const cri = this.runtime(s.node).cri();
    await cri.stopPodSandbox(s.id);
    await cri.removePodSandbox(s.id);
  }

  nodeState(node: string): NodeState {
    const n = this.cluster.node(node);
    const veths = ipJson(n.netns, 'link', 'show', 'type', 'veth')
      .map((l) => l.ifname as string)
      .sort();
    const ipamDir = join(n.dataDir, 'weft');
    const claims = existsSync(ipamDir)
      ? readdirSync(ipamDir)
          .filter((f) => /^\d+\.\d+\.\d+\.\d+$/.test(f))
          .sort()
      : [];
    const cd = this.runtime(node);
    const podNetns = [...new Set([...cd.podNetns].filter((p) => existsSync(p)).concat(cd.podNamespaces()))].sort();
    return { veths, claims, podNetns, shims: cd.shims().length };
  }

  async destroy(): Promise<void> {
    for (const cd of this.runtimes.values()) await cd.destroy().catch(() => {});
    await this.cluster.destroy();
    rmSync(this.work, { recursive: true, force: true });
  }
}

/** One ping (up to 3 tries) from inside a namespace given by path (the CRI's, not under /run/netns). */
export function reachable(netnsPath: string, ip: string): boolean {
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

export function inSubnet(ip: string, subnet: string): boolean {
  const [net, len] = subnet.split('/');
  const toInt = (a: string) => a.split('.').reduce((acc, o) => acc * 256 + Number(o), 0);
  const size = 2 ** (32 - Number(len));
  return Math.floor(toInt(ip) / size) === Math.floor(toInt(net!) / size);
}

/** Every file under `dir` (relative paths). */
export function tree(dir: string): string[] {
  const out: string[] = [];
  for (const e of readdirSync(dir, { withFileTypes: true })) {
    const p = join(dir, e.name);
    if (e.isDirectory()) out.push(...tree(p).map((q) => `${e.name}/${q}`));
    else out.push(e.name);
  }
  return out.sort();
}

/** Inode of every file under `dir`: unchanged inodes mean the files were not rewritten. */
export function inodes(dir: string): Record<string, number> {
  return Object.fromEntries(tree(dir).map((f) => [f, statSync(join(dir, f)).ino]));
}

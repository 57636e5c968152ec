/**
 * containerd (Debian's, with its CRI plugin) run as a lab node's container runtime: inside the
 * node's network namespace (`nsenter --net`), with its own root, state, runc root and sockets
 * under a private directory, configured as a kubelet node's would be (CNI bin and conf dirs,
 * sandbox image). Its PATH holds no Node.js: the CNI plugin must run without one, as on a real
 * node. `destroy()` removes everything it made, including shims, pause processes, mounts and the
 * pod namespaces the CRI plugin created, also when the test failed half-way.
 */
import { execFileSync, spawn, type ChildProcess } from 'node:child_process';
import { closeSync, existsSync, mkdirSync, openSync, readdirSync, readFileSync, rmSync, symlinkSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { CriClient } from './client.ts';
import { buildPauseImage, PAUSE_IMAGE } from './image.ts';

export interface ContainerdOptions {
  /** Node network namespace name (under /run/netns). */
  netns: string;
  /** Private directory for root, state, sockets, config and log (short: the socket path must fit 107 bytes). */
  dir: string;
  /** The CRI plugin's CNI dirs (what kubelet nodes have as /opt/cni/bin and /etc/cni/net.d). */
  cniBinDir: string;
  cniConfDir: string;
  /**
   * Pod namespaces under containerd's state dir (default) rather than /var/run/netns: a failed
   * RunPodSandbox whose CNI DEL also fails makes containerd 1.6 forget the sandbox but keep its
   * namespace, and under the state dir destroy() still finds it. A weftd in a container sees
   * only /var/run/netns (the DaemonSet's mount): pass false to test that contract.
   */
  netnsUnderState?: boolean;
}

/** Tools containerd and the CNI plugins may exec, linked into a PATH directory without node. */
const TOOLS = ['containerd-shim-runc-v2', 'runc', 'iptables', 'iptables-save', 'iptables-restore', 'ip6tables', 'nft', 'ip', 'mount', 'umount', 'modprobe'];

function findTool(name: string): string | undefined {
  for (const d of ['/usr/sbin', '/usr/bin', '/sbin', '/bin']) if (existsSync(join(d, name))) return join(d, name);
  return undefined;
}

function isAlive(pid: number): boolean {
  try {
    process.kill(pid, 0);
    return true;
  } catch {
    return false;
  }
}

async function waitExit(pid: number, ms: number): Promise<boolean> {
  const end = Date.now() + ms;
  while (Date.now() < end) {
    if (!isAlive(pid)) return true;
    await new Promise((r) => setTimeout(r, 50));
  }
  return !isAlive(pid);
}

/** Pids of processes whose command line contains `needle` (NUL-separated argv joined by spaces). */
function pidsWithArg(needle: string): number[] {
  const out: number[] = [];
  for (const e of readdirSync('/proc')) {
    if (!/^\d+$/.test(e)) continue;
    try {
      if (readFileSync(`/proc/${e}/cmdline`, 'utf8').split('\0').join(' ').includes(needle)) out.push(Number(e));
    } catch {
      /* exited */
    }
  }
  return out;
}

function childrenOf(pid: number): number[] {
  const out: number[] = [];
  for (const e of readdirSync('/proc')) {
    if (!/^\d+$/.test(e)) continue;
    try {
      const stat = readFileSync(`/proc/${e}/stat`, 'utf8');
      const ppid = Number(stat.slice(stat.lastIndexOf(')') + 2).split(' ')[1]);
      if (ppid === pid) out.push(Number(e));
    } catch {
      /* exited */
    }
  }
  return out;
}

/** containerd's pod namespaces (`cni-<uuid>`) in /run/netns. */
function runNetnsCni(): string[] {
  try {
    return readdirSync('/run/netns')
      .filter((f) => /^cni-[0-9a-f-]{36}$/.test(f))
      .map((f) => join('/var/run/netns', f));
  } catch {
    return [];
  }
}

export class Containerd {
  readonly opts: ContainerdOptions;
  readonly socket: string;
  readonly config: string;
  readonly logFile: string;
  /** The PATH containerd (and so every CNI plugin it runs) gets. */
  readonly path: string;
  /** Pod namespaces seen in sandbox statuses (deleted at destroy if the runtime left them). */
  readonly podNetns = new Set<string>();
  #child: ChildProcess | undefined;
  #cri: CriClient | undefined;
  /** containerd-named namespaces in /run/netns before we started (not ours to remove). */
  #foreignNetns = new Set<string>();

  constructor(opts: ContainerdOptions) {
    this.opts = opts;
    this.socket = join(opts.dir, 'cd.sock');
    this.config = join(opts.dir, 'config.toml');
    this.logFile = join(opts.dir, 'containerd.log');
    this.path = join(opts.dir, 'bin');
    if (Buffer.byteLength(this.socket) > 100) throw new Error(`containerd socket path too long: ${this.socket}`);
  }

  /** Writes the config, imports the sandbox image and starts containerd; resolves once the CRI answers. */
  async start(): Promise<void> {
    const { dir } = this.opts;
    mkdirSync(this.path, { recursive: true });
    for (const t of TOOLS) {
      const p = findTool(t);
      if (p && !existsSync(join(this.path, t))) symlinkSync(p, join(this.path, t));
    }
    writeFileSync(this.config, this.#configToml());
    this.#foreignNetns = new Set(runNetnsCni());
    // The image goes in before the CRI plugin starts: it never pulls what it already has.
    const tar = buildPauseImage(dir);
    await this.#spawn();
    execFileSync('ctr', ['--address', this.socket, '-n', 'k8s.io', 'images', 'import', '--snapshotter', 'native', '--no-unpack=false', tar], { stdio: 'pipe' });
  }

  #configToml(): string {
    const d = this.opts.dir;
    const q = JSON.stringify;
    return `version = 2
root = ${q(join(d, 'root'))}
state = ${q(join(d, 'state'))}
# Snapshotters this machine has no use for (and would probe for at start).
disabled_plugins = ["io.containerd.snapshotter.v1.aufs", "io.containerd.snapshotter.v1.btrfs", "io.containerd.snapshotter.v1.zfs", "io.containerd.snapshotter.v1.devmapper", "io.containerd.snapshotter.v1.overlayfs"]

[grpc]
  address = ${q(this.socket)}

[ttrpc]
  address = ${q(`${this.socket}.ttrpc`)}

[debug]
  level = "info"

[plugins."io.containerd.internal.v1.opt"]
  path = ${q(join(d, 'opt'))}

[plugins."io.containerd.grpc.v1.cri"]
  sandbox_image = ${q(PAUSE_IMAGE)}
  stream_server_address = "127.0.0.1"
  stream_server_port = "0"
  enable_selinux = false
  disable_apparmor = true
  restrict_oom_score_adj = true
  netns_mounts_under_state_dir = ${this.opts.netnsUnderState ?? true}
  [plugins."io.containerd.grpc.v1.cri".containerd]
    snapshotter = "native"
    default_runtime_name = "runc"
    [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc]
      runtime_type = "io.containerd.runc.v2"
      [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc.options]
        BinaryName = ${q(join(this.path, 'runc'))}
        Root = ${q(join(d, 'runc'))}
        SystemdCgroup = false
  [plugins."io.containerd.grpc.v1.cri".cni]
    bin_dir = ${q(this.opts.cniBinDir)}
    conf_dir = ${q(this.opts.cniConfDir)}
    max_conf_num = 1
`;
  }

  async #spawn(): Promise<void> {
    const fd = openSync(this.logFile, 'a');
    this.#child = spawn('/usr/bin/nsenter', [`--net=/run/netns/${this.opts.netns}`, '--', '/usr/bin/containerd', '--config', this.config], {
      stdio: ['ignore', fd, fd],
      env: { PATH: this.path, HOME: this.opts.dir },
    });
    closeSync(fd);
    const end = Date.now() + 30_000;
    let last: unknown;
    while (Date.now() < end) {
      if (this.#child.exitCode !== null) throw new Error(`containerd exited (${this.#child.exitCode}); log ${this.logFile}:\n${this.log().slice(-3000)}`);
      if (existsSync(this.socket)) {
        try {
          await this.cri().version();
          return;
        } catch (err) {
          last = err;
          this.#cri?.close();
          this.#cri = undefined;
        }
      }
      await new Promise((r) => setTimeout(r, 200));
    }
    throw new Error(`containerd CRI not answering after 30 s: ${String(last)}; log:\n${this.log().slice(-3000)}`);
  }

  get pid(): number | undefined {
    return this.#child?.pid;
  }

  cri(): CriClient {
    this.#cri ??= new CriClient(this.socket);
    return this.#cri;
  }

  log(): string {
    try {
      return readFileSync(this.logFile, 'utf8');
    } catch {
      return '';
    }
  }

  /** Stops containerd itself (SIGTERM; shims and sandboxes keep running, as on a real node). */
  async stop(): Promise<void> {
    this.#cri?.close();
    this.#cri = undefined;
    const pid = this.#child?.pid;
    if (pid && isAlive(pid)) {
      process.kill(pid, 'SIGTERM');
      if (!(await waitExit(pid, 10_000))) {
        process.kill(pid, 'SIGKILL');
        await waitExit(pid, 5000);
      }
    }
    this.#child = undefined;
  }

  /** stop() then start containerd again on the same root and state. */
  async restart(): Promise<void> {
    await this.stop();
    await this.#spawn();
  }

  /** Pod network namespaces this containerd holds now (under its state dir, or new ones in /run/netns). */
  podNamespaces(): string[] {
    if (this.opts.netnsUnderState ?? true) {
      const dir = join(this.opts.dir, 'state', 'io.containerd.grpc.v1.cri', 'netns');
      return existsSync(dir)
        ? readdirSync(dir)
            .map((f) => join(dir, f))
            .sort()
        : [];
    }
    return runNetnsCni()
      .filter((p) => !this.#foreignNetns.has(p))
      .sort();
  }

  /** The shim processes serving this containerd (they carry its socket address on their command line). */
  shims(): number[] {
    return pidsWithArg(`-address ${this.socket}`).filter((p) => p !== this.#child?.pid);
  }

  /** Removes everything: sandboxes (through the CRI), containerd, shims and their children, mounts, pod namespaces, the directory. */
  async destroy(): Promise<void> {
    try {
      if (this.#child && isAlive(this.#child.pid!)) {
        const cri = this.cri();
        for (const s of await cri.listPodSandbox().catch(() => [])) {
          await cri.stopPodSandbox(s.id).catch(() => {});
          await cri.removePodSandbox(s.id).catch(() => {});
        }
      }
    } finally {
      await this.stop();
      for (const shim of this.shims()) {
        for (const c of childrenOf(shim)) if (isAlive(c)) process.kill(c, 'SIGKILL');
        if (isAlive(shim)) process.kill(shim, 'SIGKILL');
        await waitExit(shim, 5000);
      }
      // Mounts under our directory (rootfs binds of the native snapshotter, shm), deepest first.
      const mounts = readFileSync('/proc/self/mountinfo', 'utf8')
        .split('\n')
        .map((l) => l.split(' ')[4])
        .filter((m): m is string => !!m && m.startsWith(`${this.opts.dir}/`))
        .sort((a, b) => b.length - a.length);
      for (const m of mounts) {
        try {
          execFileSync('umount', ['-l', m], { stdio: 'pipe' });
        } catch {
          /* already gone */
        }
      }
      for (const ns of new Set([...this.podNetns, ...this.podNamespaces()])) {
        if (existsSync(ns)) {
          try {
            execFileSync('umount', ['-l', ns], { stdio: 'pipe' });
          } catch {
            /* not mounted */
          }
          rmSync(ns, { force: true });
        }
      }
      rmSync(this.opts.dir, { recursive: true, force: true });
    }
  }
}

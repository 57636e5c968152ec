/**
 * A throwaway podman for privileged tests: its own storage root, runroot, tmp dir, file locks
 * and containers.conf (CNI backend, our net.d and plugin dirs), run inside a given network
 * namespace with `nsenter --net`, so the CNI plugins it execs build their bridge and veths
 * there and never in the root namespace. The image is one static program
 * (test/helpers/podman-probe.c) imported from a tar: no registry, no base image needed.
 * `cleanup()` removes every container (and so its netns and mounts), then the directories.
 */
import { spawnSync } from 'node:child_process';
import { existsSync, mkdirSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join, resolve } from 'node:path';

const PROBE_SRC = resolve(import.meta.dirname, 'podman-probe.c');
/** The probe image's name in the throwaway store. */
export const PROBE_IMAGE = 'localhost/weft-probe:test';
/**
 * podman's default rlimits for a rootful container exceed what this machine allows (runc:
 * "error setting rlimit"); modest explicit ones, as in test/priv/image.test.ts.
 */
const ULIMITS = ['--ulimit', 'nofile=16384:16384', '--ulimit', 'nproc=4096:4096'];

export interface PodmanResult {
  status: number;
  stdout: string;
  stderr: string;
}

export interface PodmanOptions {
  /** Network namespace (under /run/netns) podman and its CNI plugins run in. */
  netns: string;
}

export class Podman {
  readonly dir: string;
  readonly netDir: string;
  readonly #netns: string;
  #conf = '';
  #confSeq = 0;

  constructor(opts: PodmanOptions) {
    this.#netns = opts.netns;
    this.dir = mkdtempSync(join(tmpdir(), 'wt-podman-'));
    this.netDir = join(this.dir, 'net.d');
    for (const d of ['net.d', 'root', 'runroot', 'tmp', 'build']) mkdirSync(join(this.dir, d));
    writeFileSync(join(this.dir, 'storage.conf'), `[storage]\ndriver = "vfs"\ngraphroot = ${JSON.stringify(join(this.dir, 'root'))}\nrunroot = ${JSON.stringify(join(this.dir, 'runroot'))}\n`);
  }

  /**
   * Writes a containers.conf whose CNI plugin dirs are `pluginDirs` (searched in order); its
   * path, for {@link use}. The engine's tmp dir and locks are ours too, so nothing is shared
   * with the machine's podman.
   */
  writeConf(pluginDirs: string[]): string {
    const file = join(this.dir, `containers-${this.#confSeq++}.conf`);
    const q = (s: string) => JSON.stringify(s);
    writeFileSync(
      file,
      [
        '[engine]',
        'cgroup_manager = "cgroupfs"',
        'events_logger = "file"',
        `tmp_dir = ${q(join(this.dir, 'tmp'))}`,
        'lock_type = "file"',
        'runtime = "runc"',
        '[network]',
        'network_backend = "cni"',
        `network_config_dir = ${q(this.netDir)}`,
        `cni_plugin_dirs = [${pluginDirs.map(q).join(', ')}]`,
        '',
      ].join('\n'),
    );
    return file;
  }

  /** Makes a config from {@link writeConf} the current one. */
  use(conf: string): void {
    this.#conf = conf;
  }

  /** Runs podman in the namespace with the throwaway store; never throws on a non-zero exit. */
  run(args: string[], opts: { timeoutMs?: number } = {}): PodmanResult {
    if (!this.#conf) throw new Error('podman: no containers.conf chosen (writeConf, then use)');
    const r = spawnSync('nsenter', [`--net=/run/netns/${this.#netns}`, '--', 'podman', '--root', join(this.dir, 'root'), '--runroot', join(this.dir, 'runroot'), '--storage-driver', 'vfs', ...args], {
      encoding: 'utf8',
      timeout: opts.timeoutMs ?? 60_000,
      maxBuffer: 4 << 20,
      env: { PATH: process.env.PATH, HOME: this.dir, CONTAINERS_CONF: this.#conf, CONTAINERS_STORAGE_CONF: join(this.dir, 'storage.conf') },
    });
    return { status: r.status ?? -1, stdout: r.stdout ?? '', stderr: `${r.stderr ?? ''}${r.error ? String(r.error) : ''}` };
  }

  /** Like run, but throws with podman's output on failure; stdout. */
  ok(args: string[], opts: { timeoutMs?: number } = {}): string {
    const r = this.run(args, opts);
    if (r.status !== 0) throw new Error(`podman ${args.join(' ')} exited ${r.status}: ${r.stdout}${r.stderr}`);
    return r.stdout;
  }

  /** `podman run` with the rlimits this machine allows. */
  runContainer(args: string[]): PodmanResult {
    return this.run(['run', ...ULIMITS, ...args]);
  }

  /** Compiles the probe statically and imports a rootfs of just it as {@link PROBE_IMAGE}. */
  buildProbeImage(): void {
    const build = join(this.dir, 'build');
    const rootfs = join(build, 'rootfs');
    for (const d of ['etc', 'proc', 'sys', 'dev', 'tmp', 'run']) mkdirSync(join(rootfs, d), { recursive: true });
    const cc = spawnSync('cc', ['-static', '-O2', '-Wall', '-o', join(rootfs, 'probe'), PROBE_SRC], { encoding: 'utf8' });
    if (cc.status !== 0) throw new Error(`cc -static podman-probe.c: ${cc.stderr}`);
    const tar = join(build, 'rootfs.tar');
    const t = spawnSync('tar', ['-C', rootfs, '-cf', tar, '.'], { encoding: 'utf8' });
    if (t.status !== 0) throw new Error(`tar rootfs: ${t.stderr}`);
    this.ok(['import', '--change', 'CMD ["/probe", "sleep"]', tar, PROBE_IMAGE]);
  }

  /** `podman inspect` of one container. */
  inspect(name: string): any {
    return JSON.parse(this.ok(['inspect', '--type', 'container', name]))[0];
  }

  /**
   * Removes every container, then whatever podman left: the containers' network namespaces
   * (normally deleted by `rm`), mounts under our directory, the directory.
   */
  cleanup(): void {
    if (this.#conf) {
      const ids = this.run(['ps', '--all', '--quiet', '--no-trunc'])
        .stdout.split('\n')
        .filter((l) => /^[0-9a-f]{64}$/.test(l));
      const sandboxes: string[] = [];
      for (const id of ids) {
        try {
          const key = this.inspect(id).NetworkSettings?.SandboxKey;
          if (typeof key === 'string' && /^\/run\/netns\/[\w-]+$/.test(key)) sandboxes.push(key);
        } catch {
          /* gone meanwhile */
        }
      }
      this.run(['rm', '--all', '--force', '--time', '0']);
      for (const ns of sandboxes.filter((p) => existsSync(p))) spawnSync('ip', ['netns', 'del', ns.slice('/run/netns/'.length)]);
    }
    // A container podman could not remove may leave its shm or rootfs mounts under our root.
    const mounts = readFileSync('/proc/self/mounts', 'utf8')
      .split('\n')
      .map((l) => l.split(' ')[1])
      .filter((m) => m?.startsWith(`${this.dir}/`))
      .sort((a, b) => b.length - a.length);
    for (const m of mounts) spawnSync('umount', ['-l', m]);
    rmSync(this.dir, { recursive: true, force: true });
  }
}

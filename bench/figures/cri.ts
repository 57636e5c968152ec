/**
 * Figure `cri`: pod sandbox latency through containerd's CRI plugin, the path kubelet takes:
 * RunPodSandbox until it returns (the sandbox is ready: pause started, CNI ADD done) and
 * StopPodSandbox + RemovePodSandbox, with weft as installed by install-cni.sh (the launcher
 * forwarding to a warm fast-path server, as weftd serves it) vs the reference bridge +
 * host-local on the same subnet. One containerd per side, each in its own node namespace
 * (test/helpers/cri/containerd.ts), calls interleaved so machine noise hits both.
 */
import { execFileSync } from 'node:child_process';
import { cpSync, existsSync, mkdirSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { Containerd } from '../../test/helpers/cri/containerd.ts';
import type { PodSandboxConfig } from '../../test/helpers/cri/client.ts';
import { BenchScope } from '../lib/scope.ts';
import { refConfig, weftConfig, writeSubnetEnv } from '../lib/confs.ts';
import { startFastServer } from '../lib/fastserve.ts';
import { missing, root } from '../lib/paths.ts';
import { median, percentile, round, summarize } from '../lib/stats.ts';
import { unavailable, type BenchContext, type Figure, type Row } from '../lib/report.ts';

const SUBNET = '198.18.0.0/24';
const TITLE = 'pod sandbox Run / Stop+Remove through containerd CRI';

interface Side {
  name: 'w' | 'r';
  cd: Containerd;
  run: number[];
  stopRemove: number[];
}

/** A conflist from one plugin config (as bench/lib/confs.ts builds them). */
function conflist(conf: Record<string, unknown>): string {
  const { cniVersion, name, ...plugin } = conf;
  return JSON.stringify({ cniVersion, name, plugins: [plugin] }, null, 2);
}

function sandbox(side: string, i: number): PodSandboxConfig {
  const name = `bench-${side}-${i}`;
  return {
    metadata: { name, uid: `${name}-${process.pid}`, namespace: 'bench' },
    hostname: name,
    linux: { securityContext: { namespaceOptions: { network: 'POD', pid: 'CONTAINER', ipc: 'POD' } } },
  };
}

export async function figCri(ctx: BenchContext): Promise<Figure> {
  const pkg = join(root, 'dist', 'pkg');
  const why =
    missing(join(pkg, 'bin', 'weft'), 'run `node scripts/build.ts && node scripts/package.ts`') ??
    missing('/usr/bin/containerd', 'apt-get install containerd runc') ??
    missing('/usr/lib/cni/bridge', 'apt-get install containernetworking-plugins');
  if (why) return unavailable('cri', TITLE, why);
  const pods = ctx.quick ? 10 : 30;
  const scope = new BenchScope();
  const sides: Side[] = [];
  try {
    for (const name of ['w', 'r'] as const) {
      const nodeNs = scope.netns(`cri${name}`);
      const dir = scope.tmpdir(`cri${name}`, '/tmp');
      const bin = join(dir, 'opt/cni/bin');
      const conf = join(dir, 'etc/cni/net.d');
      mkdirSync(bin, { recursive: true });
      mkdirSync(conf, { recursive: true });
      cpSync('/usr/lib/cni/loopback', join(bin, 'loopback'));
      if (name === 'w') {
        const served = await startFastServer(scope, nodeNs, dir);
        const subnetFile = writeSubnetEnv(dir, SUBNET);
        const confFile = join(dir, 'weft.conflist');
        writeFileSync(confFile, conflist(weftConfig(dir, subnetFile, { fastpathSocket: served.socket }) as Record<string, unknown>));
        execFileSync('sh', [join(root, 'install', 'install-cni.sh')], {
          stdio: 'pipe',
          env: {
            PATH: '/usr/sbin:/usr/bin:/sbin:/bin',
            WEFT_CNI_SRC_DIR: pkg,
            WEFT_HOST_CNI_BIN_DIR: bin,
            WEFT_HOST_CNI_LIB_DIR: join(dir, 'opt/cni/lib/weft'),
            WEFT_HOST_CNI_CONF_DIR: conf,
            WEFT_CNI_CONF_FILE: confFile,
          },
        });
      } else {
        cpSync('/usr/lib/cni/bridge', join(bin, 'bridge'));
        cpSync('/usr/lib/cni/host-local', join(bin, 'host-local'));
        writeFileSync(join(conf, '10-ref.conflist'), conflist(refConfig(dir, SUBNET) as Record<string, unknown>));
      }
      const cd = new Containerd({ netns: nodeNs, dir: join(dir, 'cd'), cniBinDir: bin, cniConfDir: conf });
      sides.push({ name, cd, run: [], stopRemove: [] });
      await cd.start();
    }
    const order = (i: number) => (i % 2 === 0 ? sides : [...sides].reverse());
    const ids = new Map<Side, string[]>(sides.map((s) => [s, []]));
    // Pod 0 on each side warms up (creates cni0, loads the image snapshot): not counted.
    for (let i = 0; i <= pods; i++) {
      for (const s of order(i)) {
        const t0 = performance.now();
        const id = await s.cd.cri().runPodSandbox(sandbox(s.name, i));
        const ms = performance.now() - t0;
        const st = await s.cd.cri().podSandboxStatus(id, false);
        if (st.status.state !== 'SANDBOX_READY' || !st.status.network?.ip) throw new Error(`${s.name} sandbox ${i}: not ready or no IP`);
        ids.get(s)!.push(id);
        if (i > 0) s.run.push(ms);
      }
      if (i % 10 === 0) ctx.log(`  run ${i}/${pods}`);
    }
    for (let i = 0; i <= pods; i++) {
      for (const s of order(i)) {
        const id = ids.get(s)![i]!;
        const t0 = performance.now();
        await s.cd.cri().stopPodSandbox(id);
        await s.cd.cri().removePodSandbox(id);
        if (i > 0) s.stopRemove.push(performance.now() - t0);
      }
    }
    const [w, r] = sides as [Side, Side];
    const rows: Row[] = [
      row('RunPodSandbox median', median(w.run), median(r.run)),
      row('RunPodSandbox p90', percentile(w.run, 90), percentile(r.run, 90)),
      row('Stop+Remove median', median(w.stopRemove), median(r.stopRemove)),
    ];
    const leftover = sides.flatMap((s) => s.cd.podNamespaces());
    return {
      id: 'cri',
      title: TITLE,
      available: true,
      rows,
      notes: [
        `${pods} sandboxes per side, interleaved; containerd ${(await w.cd.cri().version()).runtimeVersion} (CRI runtime.v1), native snapshotter, local pause image`,
        'weft: the installed launcher forwarding to a warm fast-path server (as weftd serves it); the sandbox (runc + pause) costs the same on both sides',
        ...(leftover.length ? [`pod namespaces left after Remove: ${leftover.length}`] : []),
      ],
      details: { pods, weft: { run: summarize(w.run), stopRemove: summarize(w.stopRemove) }, ref: { run: summarize(r.run), stopRemove: summarize(r.stopRemove) } },
    };
  } catch (err) {
    const logs = sides.map((s) => (existsSync(s.cd.logFile) ? s.cd.log().slice(-400) : '')).join(' | ');
    return unavailable('cri', TITLE, `${(err as Error).message}${logs ? ` (containerd: ${logs})` : ''}`);
  } finally {
    for (const s of sides) await s.cd.destroy().catch(() => {});
    scope.cleanupSync();
  }
}

function row(metric: string, w: number, r: number): Row {
  return { metric, unit: 'ms', weft: round(w), ref: round(r), refName: 'bridge+host-local', target: '<= 1.00x', met: w <= r };
}

/**
 * One weft node for the daemon figures: a node namespace with an underlay address on a veth
 * eth0 (198.51.100.10/24), etcd inside it on 127.0.0.1 (lab/etcd.ts, data in /dev/shm), the network config
 * (198.18.0.0/15 in /26 subnets, vxlan VNI 1), and weftd started on demand the way a
 * DaemonSet would: clean environment, its own subnet file.
 */
import type { ChildProcess } from 'node:child_process';
import { openSync, closeSync, readFileSync } from 'node:fs';
import { join } from 'node:path';
import { EtcdServer } from '../../lab/etcd.ts';
import { type BenchScope, sh } from './scope.ts';
import { bins, root } from './paths.ts';
import { PEER_NETWORK, PEER_SUBNET_LEN } from './leases.ts';

export const ETCD_PREFIX = '/coreos.com/network';
export const NODE_IP = '198.51.100.10';

export interface Rig {
  ns: string;
  dir: string;
  etcd: EtcdServer;
  subnetFile: string;
  logFile: string;
}

export async function makeRig(scope: BenchScope): Promise<Rig> {
  const ns = scope.netns('node');
  // No dummy driver in this kernel: a veth pair whose peer stays down in the same namespace.
  sh('ip', ['-n', ns, 'link', 'add', 'eth0', 'type', 'veth', 'peer', 'name', 'ul-peer']);
  sh('ip', ['-n', ns, 'link', 'set', 'ul-peer', 'up']);
  sh('ip', ['-n', ns, 'addr', 'add', `${NODE_IP}/24`, 'dev', 'eth0']);
  sh('ip', ['-n', ns, 'link', 'set', 'eth0', 'up']);
  const dir = scope.tmpdir('rig');
  // etcd's data in memory (/dev/shm): the figures measure weftd, not this machine's fsync.
  const etcd = new EtcdServer({ netns: ns, ip: '127.0.0.1', dataDir: join(scope.tmpdir('etcd', '/dev/shm'), 'data'), logFile: join(dir, 'etcd.log') });
  scope.defer(() => {
    if (etcd.pid) process.kill(etcd.pid, 'SIGKILL');
  });
  await etcd.start();
  await etcd.put(`${ETCD_PREFIX}/config`, JSON.stringify({ Network: PEER_NETWORK, SubnetLen: PEER_SUBNET_LEN, Backend: { Type: 'vxlan', VNI: 1, Port: 8472 } }));
  return { ns, dir, etcd, subnetFile: join(dir, 'subnet.env'), logFile: join(dir, 'weftd.log') };
}

export interface Daemon {
  child: ChildProcess;
  pid: number;
  /** Spawn to first 200 from /readyz. */
  readyMs: number;
  /** Spawn to weftd's first log line (Node start-up and bundle load), from the log's wall clock. */
  loadMs?: number;
}

/**
 * Starts weftd in the rig and waits for /readyz (polled from inside the namespace). `args` are
 * appended to the rig's flags (e.g. a --reconcile-interval to compare), `env` to its clean
 * environment.
 */
export async function startWeftd(scope: BenchScope, rig: Rig, opts: { timeoutMs?: number; args?: string[]; env?: Record<string, string> } = {}): Promise<Daemon> {
  const timeoutMs = opts.timeoutMs ?? 60_000;
  // WEFT_BENCH_WEFTD_NODE_OPTIONS lets one try V8 flags on the daemon without rebuilding it.
  const nodeOptions = process.env.WEFT_BENCH_WEFTD_NODE_OPTIONS;
  const args = [
    '--etcd-endpoints',
    rig.etcd.endpoint,
    '--etcd-prefix',
    ETCD_PREFIX,
    '--iface',
    'eth0',
    '--subnet-file',
    rig.subnetFile,
    // The fast path on, as in production, but on the rig's own socket, never the host's /run/weft.
    '--cni-socket',
    join(rig.dir, 'cni.sock'),
    '--healthz-addr',
    '127.0.0.1:9333',
    '--node-name',
    'bench',
    '--log-level',
    'info',
    ...(opts.args ?? []),
  ];
  // The poller starts (and pays its own start-up) before weftd; it reports the monotonic time
  // of the first 200 from /readyz.
  const poll = scope.spawn(process.execPath, [join(root, 'bench', 'lib', 'ready-poller.ts'), 'http://127.0.0.1:9333/readyz', '5'], { ns: rig.ns, env: { PATH: '/usr/bin:/bin' } });
  let pollOut = '';
  await new Promise<void>((resolve, reject) => {
    poll.stdout!.on('data', (b: Buffer) => {
      pollOut += b.toString();
      if (pollOut.includes('armed')) resolve();
    });
    poll.once('exit', () => reject(new Error('ready poller exited early')));
  });
  const log = openSync(rig.logFile, 'a');
  const logStart = (() => {
    try {
      return readFileSync(rig.logFile, 'utf8').length;
    } catch {
      return 0;
    }
  })();
  const wall0 = Date.now();
  const t0 = process.hrtime.bigint();
  const env = { PATH: '/usr/sbin:/usr/bin:/sbin:/bin', ...(nodeOptions ? { NODE_OPTIONS: nodeOptions } : {}), ...opts.env };
  const child = scope.spawn(bins.weftd, args, { ns: rig.ns, env, stdio: ['ignore', log, log] });
  closeSync(log);
  const readyMs = await new Promise<number>((resolve, reject) => {
    const timer = setTimeout(() => (poll.kill('SIGKILL'), reject(new Error(`weftd not ready after ${timeoutMs} ms: ${tail(rig.logFile)}`))), timeoutMs);
    child.once('exit', (code) => (clearTimeout(timer), poll.kill('SIGKILL'), reject(new Error(`weftd exited ${code}: ${tail(rig.logFile)}`))));
    poll.once('exit', () => {
      clearTimeout(timer);
      const m = /^(\d+)$/m.exec(pollOut.replace('armed', ''));
      if (m) resolve(Number(BigInt(m[1]) - t0) / 1e6);
      else reject(new Error('ready poller gave no time'));
    });
  });
  child.removeAllListeners('exit');
  const first = /^(\S+Z) /m.exec(readFileSync(rig.logFile, 'utf8').slice(logStart));
  const loadMs = first ? Date.parse(first[1]) - wall0 : undefined;
  return { child, pid: child.pid!, readyMs, loadMs };
}

/** SIGTERM, then wait for the exit. */
export function stopWeftd(d: Daemon): Promise<void> {
  if (d.child.exitCode !== null || d.child.signalCode !== null) return Promise.resolve();
  return new Promise((resolve) => {
    const kill = setTimeout(() => d.child.kill('SIGKILL'), 10_000);
    d.child.once('exit', () => (clearTimeout(kill), resolve()));
    d.child.kill('SIGTERM');
  });
}

export function tail(file: string, lines = 8): string {
  try {
    return readFileSync(file, 'utf8').trim().split('\n').slice(-lines).join('\n');
  } catch {
    return '(no log)';
  }
}

/** USER_HZ: /proc reports CPU time in these ticks (100 on every Linux architecture we run on). */
const CLK_TCK = Number(sh('getconf', ['CLK_TCK']).trim()) || 100;

/**
 * CPU time a process has used so far, in milliseconds, from /proc/<pid>/stat: its own (utime +
 * stime) and that of its children it has waited for (cutime + cstime: e.g. each `nft` it ran).
 */
export function cpuMs(pid: number): { self: number; children: number } {
  const stat = readFileSync(`/proc/${pid}/stat`, 'utf8');
  // The command name (field 2) may hold spaces and parentheses: count fields after the last ')'.
  const f = stat
    .slice(stat.lastIndexOf(')') + 2)
    .split(' ')
    .map(Number);
  // f[0] is field 3 (state): utime, stime, cutime, cstime are fields 14 to 17.
  const [utime, stime, cutime, cstime] = [f[11], f[12], f[13], f[14]];
  if (![utime, stime, cutime, cstime].every(Number.isFinite)) throw new Error(`cannot read CPU time of pid ${pid}`);
  return { self: ((utime + stime) * 1000) / CLK_TCK, children: ((cutime + cstime) * 1000) / CLK_TCK };
}

/** RssAnon (heap, stacks) and RssFile (mapped binary and libraries) of a process in MiB. */
export function rssParts(pid: number): { anon: number; file: number } {
  const status = readFileSync(`/proc/${pid}/status`, 'utf8');
  const kb = (field: string) => Number(new RegExp(`${field}:\\s+(\\d+) kB`).exec(status)?.[1] ?? NaN);
  return { anon: kb('RssAnon') / 1024, file: kb('RssFile') / 1024 };
}

/** VmRSS of a process in MiB. */
export function rssMiB(pid: number): number {
  const m = /VmRSS:\s+(\d+) kB/.exec(readFileSync(`/proc/${pid}/status`, 'utf8'));
  if (!m) throw new Error(`no VmRSS for pid ${pid}`);
  return Number(m[1]) / 1024;
}

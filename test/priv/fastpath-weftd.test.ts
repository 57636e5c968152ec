/**
 * The fast path wired into the real daemon: weftd (lab topology, etcd, one node) serves CNI
 * requests from the launcher on WEFTD_CNI_SOCKET; once weftd stops, the launcher falls back to
 * the standalone binary and the pod is still torn down.
 */
import test from 'ava';
import { existsSync, mkdtempSync, readdirSync, readFileSync, rmSync, statSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join, resolve } from 'node:path';
import { buildLauncher, LAUNCHER } from '../../scripts/build-launcher.ts';
import { MAX_CONNECTIONS } from '../../src/fastpath/server.ts';
import { startCluster } from '../helpers/cluster.ts';
import { cni } from '../helpers/cni.ts';
import { eventually, ipJson, ping, Scope } from '../helpers/netns.ts';

const root = resolve(import.meta.dirname, '..', '..');

/** The threads of `pid`: id, name and nice value (/proc/PID/task/TID/stat field 19). */
function threads(pid: number): Array<{ tid: number; comm: string; nice: number }> {
  return readdirSync(`/proc/${pid}/task`).flatMap((tid) => {
    try {
      const stat = readFileSync(`/proc/${pid}/task/${tid}/stat`, 'utf8');
      const fields = stat.slice(stat.lastIndexOf(')') + 2).split(' ');
      return [{ tid: Number(tid), comm: stat.slice(stat.indexOf('(') + 1, stat.lastIndexOf(')')), nice: Number(fields[16]) }];
    } catch {
      return []; // the thread ended meanwhile
    }
  });
}

test('weftd serves the launcher; with weftd stopped the launcher falls back', async (t) => {
  const src = join(root, 'src', 'fastpath', 'launcher.c');
  if (!existsSync(LAUNCHER) || statSync(LAUNCHER).mtimeMs < statSync(src).mtimeMs) buildLauncher();
  const dir = mkdtempSync(join(tmpdir(), 'wt-fastpath-'));
  t.teardown(() => rmSync(dir, { recursive: true, force: true }));
  const socket = join(dir, 'cni.sock');
  process.env.WEFTD_CNI_SOCKET = socket; // inherited by the lab's weftd
  const cluster = await startCluster({ nodes: 1 });
  t.teardown(() => cluster.destroy());
  const scope = new Scope();
  t.teardown(() => scope.cleanup());
  const node = cluster.node('n1');
  await eventually(() => existsSync(socket), 10_000);
  t.regex(readFileSync(node.logFile, 'utf8'), /serving CNI requests on .*cni\.sock/);

  const conf = { cniVersion: '1.0.0', name: 'wt-fast', type: 'weft', subnetFile: node.subnetFile, dataDir: node.dataDir, fastpathSocket: socket }; // the one network its fast path serves (the lab passes --cni-data-dir)
  const pod = scope.netns('pod');
  const debug = { WEFT_LAUNCHER_DEBUG: '1' };
  const add = await cni(node.netns, { bin: LAUNCHER, command: 'ADD', conf, containerID: 'c1', netns: pod, ifname: 'eth0', env: debug });
  t.is(add.code, 0, add.stdout + add.stderr);
  t.notRegex(add.stderr, /falling back/, 'served by weftd, not the fallback');
  const subnet = /FLANNEL_SUBNET=([\d.]+)\.1\/24/.exec(readFileSync(node.subnetFile, 'utf8'));
  t.truthy(subnet);
  t.is(add.json.ips[0].address, `${subnet![1]}.2/24`);
  t.true(ping(pod, `${subnet![1]}.1`), 'pod reaches its gateway');
  // --nice (default -10): every weftd thread, the CNI worker this request started too (the
  // first request after an idle spell runs on the main thread while a worker starts).
  const pid = node.pid!;
  t.true(await eventually(() => threads(pid).some((th) => th.comm === 'WorkerThread'), 10_000), 'a CNI worker thread started');
  const all = threads(pid);
  t.true(all.length > 2);
  t.deepEqual(
    all.filter((th) => th.nice !== -10),
    [],
    'every thread at nice -10',
  );
  // Its descriptor table was grown for 2 x MAX_CONNECTIONS up front, not in the middle of a burst.
  const fdSize = Number(/^FDSize:\s+(\d+)/m.exec(readFileSync(`/proc/${pid}/status`, 'utf8'))?.[1]);
  t.true(fdSize >= 2 * MAX_CONNECTIONS, `FDSize ${fdSize}`);

  await cluster.topo.stopDaemon('n1');
  t.false(existsSync(socket), 'weftd removed its socket on a clean stop');
  const del = await cni(node.netns, { bin: LAUNCHER, command: 'DEL', conf, containerID: 'c1', netns: pod, ifname: 'eth0', env: debug });
  t.is(del.code, 0, del.stdout + del.stderr);
  t.regex(del.stderr, /falling back/);
  t.deepEqual(
    ipJson(pod, 'link', 'show').map((l) => l.ifname),
    ['lo'],
  );
  // eth0 is the node's own (veth) underlay link; no pod veth may remain.
  t.deepEqual(
    ipJson(node.netns, 'link', 'show', 'type', 'veth')
      .map((l) => l.ifname)
      .filter((n) => n !== 'eth0'),
    [],
  );
});

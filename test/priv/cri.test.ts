/**
 * Pods started the way kubelet starts them: through containerd's CRI plugin (RunPodSandbox,
 * PodSandboxStatus, StopPodSandbox, RemovePodSandbox over gRPC), which runs the CNI plugins
 * itself through libcni with its own environment, cache and timeouts, on a two-node etcd-mode
 * cluster (test/helpers/cri/nodes.ts: containerd in each node namespace, the plugin installed by
 * install/install-cni.sh from a read-only image-like layout, no Node.js on containerd's PATH).
 * Kubernetes mode: cri-kube.test.ts.
 */
import test from 'ava';
import { execFileSync } from 'node:child_process';
import { existsSync, readdirSync, readFileSync, rmSync, statSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { CriCluster, inSubnet, inodes, reachable, tree, type Sandbox } from '../helpers/cri/nodes.ts';
import { sh } from '../helpers/netns.ts';

const NODES = ['n1', 'n2'] as const;
let c: CriCluster;

test.before(async () => {
  c = await CriCluster.start({ nodes: NODES.length });
});

test.after.always(async () => {
  await c?.destroy();
});

test.serial('install-cni from a read-only source: the layout kubelet needs; a second run changes nothing; no temp files', (t) => {
  for (const node of NODES) {
    const host = c.hosts.get(node)!;
    t.deepEqual(tree(join(host, 'opt/cni/bin')), ['loopback', 'portmap', 'weft', 'weft-standalone']);
    t.deepEqual(tree(join(host, 'opt/cni/lib/weft')), ['netlink.node', 'setns.node']);
    t.deepEqual(tree(join(host, 'etc/cni/net.d')), ['10-weft.conflist']);
    t.is(readFileSync(join(host, 'etc/cni/net.d/10-weft.conflist'), 'utf8'), c.nodeConflist(node));
    t.is(statSync(join(host, 'opt/cni/bin/weft')).mode & 0o777, 0o755);
    t.is(statSync(join(host, 'etc/cni/net.d/10-weft.conflist')).mode & 0o777, 0o644);
    const before = inodes(host);
    const again = c.installCni(node);
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
      `mount --bind "${c.srcDir}" "${c.srcDir}" && mount -o remount,bind,ro "${c.srcDir}" "${c.srcDir}" && (touch "${c.srcDir}/x" 2>/dev/null && echo writable || echo read-only)`,
    ],
    { encoding: 'utf8' },
  );
  t.is(probe.trim(), 'read-only');
});

test.serial('install-cni: a changed file is replaced by rename; a failing run installs no conflist and leaves no temp file', (t) => {
  const node = 'n1';
  const host = c.hosts.get(node)!;
  const conf = join(host, 'etc/cni/net.d/10-weft.conflist');
  writeFileSync(conf, '{"stale": true}\n');
  const staleIno = statSync(conf).ino;
  const r = c.installCni(node);
  t.is(r.status, 0, r.stderr);
  t.is(readFileSync(conf, 'utf8'), c.nodeConflist(node));
  t.not(statSync(conf).ino, staleIno, 'replaced by a new file (rename), not rewritten in place');

  // A conflist that does not configure weft: refused after the binaries, before the conflist.
  rmSync(conf);
  const badConf = join(c.work, 'bad-conf.json');
  writeFileSync(badConf, '{"cniVersion":"1.0.0","name":"x","plugins":[{"type":"bridge"}]}');
  const bad = c.installCni(node, { WEFT_CNI_CONF_FILE: badConf });
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
  const t2 = c.installCni(node);
  t.is(t2.status, 0, t2.stderr);
});

test.serial('CRI: sandboxes on two nodes get weft addresses from their node subnets and reach each other over the overlay (fast path)', async (t) => {
  const v = await c.runtimes.get('n1')!.cri().version();
  t.is(v.runtimeName, 'containerd');
  t.is(v.runtimeApiVersion, 'v1');
  for (const node of NODES) t.false(existsSync(join(c.runtimes.get(node)!.path, 'node')), "no Node.js on containerd's PATH");
  // Proof that ADD goes through weftd: the standalone the launcher would fall back to is gone.
  const a: Sandbox = await c.withoutStandalone('n1', () => c.runSandbox('n1'));
  const b = await c.runSandbox('n2');
  t.true(inSubnet(a.ip, c.cluster.subnetOf('n1')!), `${a.ip} in ${c.cluster.subnetOf('n1')}`);
  t.true(inSubnet(b.ip, c.cluster.subnetOf('n2')!), `${b.ip} in ${c.cluster.subnetOf('n2')}`);
  // The address the CRI reports is the one inside the sandbox's namespace.
  const addrs = (JSON.parse(sh('nsenter', [`--net=${a.netns}`, '--', 'ip', '-j', '-4', 'addr', 'show', 'dev', 'eth0'])) as Array<{ addr_info: Array<{ local: string }> }>).flatMap((l) =>
    l.addr_info.map((x) => x.local),
  );
  t.deepEqual(addrs, [a.ip]);
  t.true(reachable(a.netns, b.ip), `${a.ip} -> ${b.ip} over VXLAN`);
  t.true(reachable(b.netns, a.ip), `${b.ip} -> ${a.ip} over VXLAN`);
  t.true(c.nodeState('n1').claims.includes(a.ip));
  await c.removeSandbox(a);
  await c.removeSandbox(b);
});

test.serial('CRI: Stop releases the address and the veth, Remove the namespace; nothing is left', async (t) => {
  const before = c.nodeState('n1');
  const s = await c.runSandbox('n1');
  const during = c.nodeState('n1');
  t.is(during.veths.length, before.veths.length + 1);
  t.deepEqual(during.claims, [...before.claims, s.ip].sort());
  await c.runtimes.get('n1')!.cri().stopPodSandbox(s.id);
  const stopped = c.nodeState('n1');
  t.deepEqual(stopped.veths, before.veths, 'veth gone after StopPodSandbox');
  t.deepEqual(stopped.claims, before.claims, 'address released after StopPodSandbox');
  // kubelet stops more than once; the second must succeed and change nothing.
  await c.runtimes.get('n1')!.cri().stopPodSandbox(s.id);
  await c.runtimes.get('n1')!.cri().removePodSandbox(s.id);
  t.deepEqual(c.nodeState('n1'), before, 'no veth, claim, namespace or shim left');
  t.false(existsSync(s.netns));
});

test.serial('CRI: weftd stopped -> the launcher falls back to weft-standalone (no Node.js on PATH); back to weftd after', async (t) => {
  const before = c.nodeState('n1');
  const peer = await c.runSandbox('n2');
  await c.cluster.topo.stopDaemon('n1');
  try {
    const s = await c.runSandbox('n1');
    t.true(inSubnet(s.ip, c.cluster.subnetOf('n1')!));
    // The data plane stays while weftd is down: the overlay still carries the pod.
    t.true(reachable(s.netns, peer.ip), `${s.ip} -> ${peer.ip} with weftd down`);
    await c.removeSandbox(s);
    t.deepEqual(c.nodeState('n1'), before, 'the standalone released what it allocated');
    // And without the standalone there is nothing to fall back to: the ADD fails cleanly.
    await c.withoutStandalone('n1', () => t.throwsAsync(c.runSandbox('n1'), { message: /weft/ }));
    const cri = c.runtimes.get('n1')!.cri();
    for (const p of await cri.listPodSandbox()) {
      await cri.stopPodSandbox(p.id);
      await cri.removePodSandbox(p.id);
    }
    t.deepEqual(c.nodeState('n1'), before, 'a failed RunPodSandbox leaves nothing either');
  } finally {
    await c.cluster.topo.startDaemon('n1', { args: ['--cni-data-dir', c.cluster.node('n1').dataDir] });
  }
  const again = await c.runSandbox('n1');
  t.true(reachable(again.netns, peer.ip));
  await c.removeSandbox(again);
  await c.removeSandbox(peer);
});

test.serial('CRI: a containerd restart between Run and Stop leaks nothing', async (t) => {
  const before = c.nodeState('n1');
  const s = await c.runSandbox('n1');
  const peer = await c.runSandbox('n2');
  const cd = c.runtimes.get('n1')!;
  await cd.restart();
  const st = await cd.cri().podSandboxStatus(s.id);
  t.is(st.status.state, 'SANDBOX_READY', 'the sandbox survived the restart');
  t.is(st.status.network?.ip, s.ip, 'same address after the restart');
  t.true(reachable(s.netns, peer.ip));
  await c.removeSandbox(s);
  t.deepEqual(c.nodeState('n1'), before, 'no veth, claim, namespace or shim left');
  // And a new sandbox after the restart works as before.
  const s2 = await c.runSandbox('n1');
  t.true(reachable(s2.netns, peer.ip));
  await c.removeSandbox(s2);
  await c.removeSandbox(peer);
  t.deepEqual(c.nodeState('n1'), before);
});

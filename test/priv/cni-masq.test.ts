/**
 * FLANNEL_IPMASQ=false: weftd does not masquerade, so the plugin masquerades each pod itself
 * (table ip weft-pods), as flannel's plugin does through the bridge plugin's ipMasq; with
 * FLANNEL_IPMASQ=true it leaves that to weftd and adds nothing. An "outside" namespace that has
 * no route back to the pod network answers a pod's ping only when the pod is masqueraded.
 */
import test, { type ExecutionContext } from 'ava';
import { writeFileSync } from 'node:fs';
import { cni, cniFixture } from '../helpers/cni.ts';
import { inNs, ping, Scope, sh } from '../helpers/netns.ts';

function setup(t: ExecutionContext, third: number, ipmasq: boolean) {
  const scope = new Scope();
  t.teardown(() => scope.cleanup());
  const node = scope.netns('node');
  const outside = scope.netns('out');
  sh('ip', ['-n', node, 'link', 'add', 'wtout0', 'type', 'veth', 'peer', 'name', 'wtout1', 'netns', outside]);
  sh('ip', ['-n', node, 'addr', 'add', '203.0.113.1/24', 'dev', 'wtout0']);
  sh('ip', ['-n', node, 'link', 'set', 'wtout0', 'up']);
  sh('ip', ['-n', outside, 'addr', 'add', '203.0.113.2/24', 'dev', 'wtout1']);
  sh('ip', ['-n', outside, 'link', 'set', 'wtout1', 'up']);
  const fx = cniFixture(scope, { third });
  writeFileSync(fx.subnetFile, `FLANNEL_NETWORK=198.18.0.0/16\nFLANNEL_SUBNET=198.18.${third}.1/24\nFLANNEL_MTU=1450\nFLANNEL_IPMASQ=${ipmasq}\n`);
  return { scope, node, fx };
}

/** The addresses in weft-pods' set, or undefined when the table is absent. */
function masqPods(node: string): string[] | undefined {
  let out: string;
  try {
    out = inNs(node, '/usr/sbin/nft', ['-j', 'list', 'set', 'ip', 'weft-pods', 'pods']);
  } catch {
    return undefined;
  }
  const set = JSON.parse(out).nftables.find((o: any) => o.set)?.set;
  return (set?.elem ?? []).map(String).sort();
}

test('FLANNEL_IPMASQ=false: the pod is masqueraded and reaches the outside; DEL removes it', async (t) => {
  const { scope, node, fx } = setup(t, 31, false);
  const pod = scope.netns('pod');
  const add = await cni(node, { command: 'ADD', conf: fx.conf(), containerID: 'm1', netns: pod, ifname: 'eth0' });
  t.is(add.code, 0, add.stdout + add.stderr);
  const ip = add.json.ips[0].address.split('/')[0];
  t.deepEqual(masqPods(node), [ip]);
  t.true(ping(pod, '203.0.113.2', 2), 'the outside answers a masqueraded pod');
  // Pod -> pod network keeps its source: the rule returns before masquerade.
  t.regex(inNs(node, '/usr/sbin/nft', ['list', 'chain', 'ip', 'weft-pods', 'postrouting']), /ip saddr @pods ip daddr 198\.18\.0\.0\/16 return/);
  const del = await cni(node, { command: 'DEL', conf: fx.conf(), containerID: 'm1', netns: pod, ifname: 'eth0' });
  t.is(del.code, 0, del.stdout + del.stderr);
  t.deepEqual(masqPods(node), []);
  // DEL again: idempotent.
  t.is((await cni(node, { command: 'DEL', conf: fx.conf(), containerID: 'm1', netns: pod, ifname: 'eth0' })).code, 0);
});

test('FLANNEL_IPMASQ=true: weftd masquerades, the plugin adds nothing (the pod does not reach an outside weftd is not serving here)', async (t) => {
  const { scope, node, fx } = setup(t, 32, true);
  const pod = scope.netns('pod');
  const add = await cni(node, { command: 'ADD', conf: fx.conf(), containerID: 'm2', netns: pod, ifname: 'eth0' });
  t.is(add.code, 0, add.stdout + add.stderr);
  t.is(masqPods(node), undefined, 'no weft-pods table');
  t.false(ping(pod, '203.0.113.2', 1), 'not masqueraded: the outside has no route back');
  // An explicit ipMasq in the config wins over the subnet file.
  const pod2 = scope.netns('pod');
  const add2 = await cni(node, { command: 'ADD', conf: fx.conf({ ipMasq: true }), containerID: 'm3', netns: pod2, ifname: 'eth0' });
  t.is(add2.code, 0, add2.stdout);
  t.deepEqual(masqPods(node), [add2.json.ips[0].address.split('/')[0]]);
  t.true(ping(pod2, '203.0.113.2', 2));
  const gc = await cni(node, { command: 'GC', conf: { ...fx.conf({ ipMasq: true }, '1.1.0'), 'cni.dev/valid-attachments': [] } });
  t.is(gc.code, 0, gc.stdout);
  t.deepEqual(masqPods(node), [], 'GC removed it with the allocation');
});

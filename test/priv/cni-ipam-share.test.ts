/**
 * weft and the reference host-local sharing one IPAM store at the same time (both take the
 * `lock` flock), and the host veth's owner label (IFLA_IFALIAS): DEL and GC never delete a veth
 * whose name collides but which is labelled for another pod.
 */
import test from 'ava';
import { readdirSync } from 'node:fs';
import { cni, cniSetup, expectedVethName, REF_HOST_LOCAL } from '../helpers/cni.ts';
import { ipJson, sh } from '../helpers/netns.ts';

const setup = cniSetup;

const ipFiles = (dir: string) => readdirSync(dir).filter((f) => /^\d+\.\d+\.\d+\.\d+$/.test(f));

test('weft ADDs and host-local ADDs on one store at once never share an address', async (t) => {
  const { scope, node, fx } = setup(t, 21);
  const hostLocal = {
    cniVersion: '1.0.0',
    name: fx.name,
    ipam: { type: 'host-local', dataDir: fx.dataDir, ranges: [[{ subnet: '198.18.21.0/24', gateway: '198.18.21.1' }]] },
  };
  const pods = Array.from({ length: 12 }, () => scope.netns('pod'));
  const calls = pods.map((pod, i) =>
    i % 2 === 0
      ? cni(node, { command: 'ADD', conf: fx.conf(), containerID: `w${i}`, netns: pod, ifname: 'eth0' })
      : cni(node, { bin: REF_HOST_LOCAL, command: 'ADD', conf: hostLocal, containerID: `h${i}`, netns: pod, ifname: 'eth0' }),
  );
  const results = await Promise.all(calls);
  for (const r of results) t.is(r.code, 0, r.stdout + r.stderr);
  const ips = results.map((r) => r.json.ips[0].address.split('/')[0]);
  t.is(new Set(ips).size, 12, ips.join(' '));
  t.is(ipFiles(fx.ipamDir).length, 12);
  // Each releases its own.
  await Promise.all(
    pods.map((pod, i) =>
      i % 2 === 0
        ? cni(node, { command: 'DEL', conf: fx.conf(), containerID: `w${i}`, netns: pod, ifname: 'eth0' })
        : cni(node, { bin: REF_HOST_LOCAL, command: 'DEL', conf: hostLocal, containerID: `h${i}`, netns: pod, ifname: 'eth0' }),
    ),
  );
  t.deepEqual(ipFiles(fx.ipamDir), []);
});

test('the host veth is labelled with its owner; DEL and GC leave a colliding veth labelled for another pod', async (t) => {
  const { scope, node, fx } = setup(t, 22);
  const pod = scope.netns('pod');
  const add = await cni(node, { command: 'ADD', conf: fx.conf(), containerID: 'owner1', netns: pod, ifname: 'eth0' });
  t.is(add.code, 0, add.stdout);
  const veth = expectedVethName('owner1', 'eth0');
  t.is(ipJson(node, 'link', 'show', 'dev', veth)[0].ifalias, 'owner1/eth0');
  const check = await cni(node, { command: 'CHECK', conf: fx.conf({ prevResult: add.json }), containerID: 'owner1', netns: pod, ifname: 'eth0' });
  t.is(check.code, 0, check.stdout);
  sh('ip', ['-n', node, 'link', 'set', veth, 'alias', 'someone-else/eth0']);
  const relabelled = await cni(node, { command: 'CHECK', conf: fx.conf({ prevResult: add.json }), containerID: 'owner1', netns: pod, ifname: 'eth0' });
  t.is(relabelled.json?.code, 103, relabelled.stdout);
  t.regex(relabelled.json.msg, /belongs to "someone-else\/eth0"/);
  sh('ip', ['-n', node, 'link', 'set', veth, 'alias', 'owner1/eth0']);

  // Stand-in for a 32-bit name collision: the veth named for "victim" belongs to someone else.
  const victim = expectedVethName('victim', 'eth0');
  sh('ip', ['-n', node, 'link', 'add', victim, 'type', 'veth', 'peer', 'name', 'wtpeer0']);
  sh('ip', ['-n', node, 'link', 'set', victim, 'alias', 'another-pod/eth0']);
  const del = await cni(node, { command: 'DEL', conf: fx.conf(), containerID: 'victim', netns: pod, ifname: 'eth0' });
  t.is(del.code, 0, del.stdout);
  t.is(ipJson(node, 'link', 'show', 'dev', victim)[0]?.ifalias, 'another-pod/eth0', 'DEL left it');
  const gcConf = { ...fx.conf({}, '1.1.0'), 'cni.dev/valid-attachments': [] };
  // An allocation for "victim" makes GC consider that veth name.
  sh('sh', ['-c', `printf 'victim\\r\\neth0' > ${fx.ipamDir}/198.18.22.200`]);
  const gc = await cni(node, { command: 'GC', conf: gcConf });
  t.is(gc.code, 0, gc.stdout);
  t.is(ipJson(node, 'link', 'show', 'dev', victim)[0]?.ifalias, 'another-pod/eth0', 'GC left it');
  t.deepEqual(ipFiles(fx.ipamDir), [], 'GC released both allocations');
  t.deepEqual(
    ipJson(node, 'link', 'show', 'type', 'veth')
      .map((l) => l.ifname)
      .sort(),
    [victim, 'wtpeer0'].sort(),
    "owner1's own veth was collected",
  );

  // An unlabelled veth (an ADD that died before labelling) is still cleaned up by its DEL.
  const orphan = expectedVethName('orphan', 'eth0');
  sh('ip', ['-n', node, 'link', 'add', orphan, 'type', 'veth', 'peer', 'name', 'wtpeer1']);
  const del2 = await cni(node, { command: 'DEL', conf: fx.conf(), containerID: 'orphan', netns: pod, ifname: 'eth0' });
  t.is(del2.code, 0);
  t.false(ipJson(node, 'link', 'show').some((l) => l.ifname === orphan));
});

/**
 * Every kind of bad input gets its CNI error code as JSON on stdout, exit 1, and leaves nothing
 * half-made on the node, in the pod or in the store.
 */
import test, { type ExecutionContext } from 'ava';
import { existsSync, mkdirSync, readdirSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { cni, cniFixture, type CniCall, type CniEnvFixture } from '../helpers/cni.ts';
import { ipJson, Scope, sh } from '../helpers/netns.ts';

function setup(t: ExecutionContext, third = 20) {
  const scope = new Scope();
  t.teardown(() => scope.cleanup());
  const node = scope.netns('node');
  const pod = scope.netns('pod');
  const fx = cniFixture(scope, { third });
  return { scope, node, pod, fx };
}

function ipFiles(fx: CniEnvFixture): string[] {
  if (!existsSync(fx.ipamDir)) return [];
  return readdirSync(fx.ipamDir).filter((f) => /^\d+\.\d+\.\d+\.\d+$/.test(f));
}

/** Runs ADD, expects `code`, and checks nothing was created. Returns the error JSON. */
async function expectRejected(t: ExecutionContext, node: string, pod: string, fx: CniEnvFixture, call: Partial<CniCall>, code: number, opts: { podLinks?: string[] } = {}) {
  const r = await cni(node, { command: 'ADD', conf: fx.conf(), containerID: 'bad', netns: pod, ifname: 'eth0', ...call });
  t.is(r.code, 1, r.stdout);
  t.truthy(r.json, `stdout is JSON: ${r.stdout}`);
  t.is(r.stdout.trim().split('\n').length, 1, 'stdout carries only the error');
  t.is(r.json.code, code, r.json.msg);
  t.is(typeof r.json.msg, 'string');
  t.truthy(r.json.cniVersion);
  t.deepEqual(
    ipJson(node, 'link', 'show', 'type', 'veth').map((l) => l.ifname),
    [],
    'no veth on the node',
  );
  t.deepEqual(
    ipJson(pod, 'link', 'show')
      .map((l) => l.ifname)
      .sort(),
    (opts.podLinks ?? ['lo']).sort(),
    'pod untouched',
  );
  t.deepEqual(ipFiles(fx), [], 'no IP file');
  return r.json;
}

test('malformed JSON -> 6', async (t) => {
  const { node, pod, fx } = setup(t);
  const e = await expectRejected(t, node, pod, fx, { conf: '{"cniVersion": "1.0.0", "name": ' }, 6);
  t.regex(e.msg, /not valid JSON/);
  await expectRejected(t, node, pod, fx, { conf: '[1,2]' }, 6);
});

test('missing or unsupported cniVersion -> 1', async (t) => {
  const { node, pod, fx } = setup(t);
  const conf = fx.conf();
  delete conf.cniVersion;
  t.is((await expectRejected(t, node, pod, fx, { conf }, 1)).msg, 'missing cniVersion');
  const e = await expectRejected(t, node, pod, fx, { conf: fx.conf({}, '0.2.0') }, 1);
  t.is(e.msg, 'unsupported cniVersion "0.2.0"');
  t.regex(e.details, /1\.1\.0/);
});

test('missing or invalid CNI_* variables -> 4', async (t) => {
  const { node, pod, fx } = setup(t);
  t.is((await expectRejected(t, node, pod, fx, { env: { CNI_COMMAND: undefined } }, 4)).msg, 'missing CNI_COMMAND');
  t.regex((await expectRejected(t, node, pod, fx, { command: 'ATTACH' }, 4)).msg, /unknown CNI_COMMAND "ATTACH"/);
  t.is((await expectRejected(t, node, pod, fx, { env: { CNI_CONTAINERID: undefined } }, 4)).msg, 'missing CNI_CONTAINERID');
  t.is((await expectRejected(t, node, pod, fx, { env: { CNI_IFNAME: undefined } }, 4)).msg, 'missing CNI_IFNAME');
  t.is((await expectRejected(t, node, pod, fx, { env: { CNI_NETNS: undefined } }, 4)).msg, 'missing CNI_NETNS');
  await expectRejected(t, node, pod, fx, { ifname: 'a-very-long-interface-name' }, 4);
  await expectRejected(t, node, pod, fx, { ifname: 'eth/0' }, 4);
  await expectRejected(t, node, pod, fx, { netns: 'relative/path' }, 4);
});

test('container IDs that could corrupt the store or paths -> 4', async (t) => {
  const { node, pod, fx } = setup(t);
  for (const id of ['../../etc/passwd', 'a/b', 'a\r\nb', 'a b', '-leading-dash', '.hidden']) {
    const e = await expectRejected(t, node, pod, fx, { containerID: id }, 4);
    t.is(e.msg, 'invalid characters in CNI_CONTAINERID');
  }
  // DEL validates too: it must not release or delete by a forged ID.
  const del = await cni(node, { command: 'DEL', conf: fx.conf(), containerID: '../x', ifname: 'eth0' });
  t.is(del.json.code, 4);
  t.is(del.code, 1);
});

test('CNI_NETNS that is not a network namespace -> 4', async (t) => {
  const { node, pod, fx } = setup(t);
  const e = await expectRejected(t, node, pod, fx, { netns: '/etc/hostname' }, 4);
  t.is(e.msg, 'CNI_NETNS "/etc/hostname" is not a network namespace');
  await expectRejected(t, node, pod, fx, { netns: '/run/netns/wt-does-not-exist' }, 4);
});

test('the interface name already taken in the pod -> 100, the existing link untouched', async (t) => {
  const { node, pod, fx } = setup(t);
  sh('ip', ['-n', pod, 'link', 'add', 'eth0', 'type', 'veth', 'peer', 'name', 'other0']);
  sh('ip', ['-n', pod, 'addr', 'add', '198.51.100.9/24', 'dev', 'eth0']);
  const e = await expectRejected(t, node, pod, fx, {}, 100, { podLinks: ['lo', 'other0', 'eth0'] });
  t.is(e.msg, `interface "eth0" already exists in "/run/netns/${pod}"`);
  t.deepEqual(
    ipJson(pod, 'addr', 'show', 'dev', 'eth0')[0].addr_info.map((a: any) => a.local),
    ['198.51.100.9'],
  );
});

test('subnet file missing -> 11 (weftd not ready); malformed -> 7', async (t) => {
  const { node, pod, fx } = setup(t);
  const missing = await expectRejected(t, node, pod, fx, { conf: fx.conf({ subnetFile: join(fx.dir, 'absent.env') }) }, 11);
  t.is(missing.msg, `node daemon (weftd) is not ready: subnet file "${join(fx.dir, 'absent.env')}" does not exist yet`);
  const cases: Array<[string, RegExp]> = [
    ['FLANNEL_NETWORK=198.18.0.0/16\nFLANNEL_MTU=1450\n', /FLANNEL_SUBNET is missing/],
    ['FLANNEL_NETWORK=198.18.0.0/16\nFLANNEL_SUBNET=198.19.1.1/24\nFLANNEL_MTU=1450\n', /not inside FLANNEL_NETWORK/],
    ['FLANNEL_NETWORK=198.18.0.0/16\nFLANNEL_SUBNET=198.18.1.1/24\nFLANNEL_MTU=lots\n', /FLANNEL_MTU "lots"/],
    ['FLANNEL_NETWORK=198.18.0.0/16\nFLANNEL_SUBNET=198.18.1.300/24\nFLANNEL_MTU=1450\n', /FLANNEL_SUBNET: invalid IPv4/],
    ['this is not a subnet file\n', /is not KEY=VALUE/],
  ];
  for (const [text, re] of cases) {
    writeFileSync(fx.subnetFile, text);
    t.regex((await expectRejected(t, node, pod, fx, {}, 7)).msg, re);
  }
});

test('an exhausted subnet -> 102 "no free address in 198.18.1.0/24"', async (t) => {
  const { node, pod, fx } = setup(t, 1);
  mkdirSync(fx.ipamDir, { recursive: true });
  for (let i = 2; i <= 254; i++) writeFileSync(join(fx.ipamDir, `198.18.1.${i}`), `other${i}\r\neth0`);
  const r = await cni(node, { command: 'ADD', conf: fx.conf(), containerID: 'bad', netns: pod, ifname: 'eth0' });
  t.is(r.code, 1);
  t.is(r.json.code, 102);
  t.is(r.json.msg, 'no free address in 198.18.1.0/24');
  t.is(readdirSync(fx.ipamDir).filter((f) => f.startsWith('198.')).length, 253);
  t.deepEqual(ipJson(node, 'link', 'show', 'type', 'veth'), []);
  t.deepEqual(
    ipJson(pod, 'link', 'show').map((l) => l.ifname),
    ['lo'],
  );
});

test('invalid configuration values -> 7', async (t) => {
  const { node, pod, fx } = setup(t);
  for (const extra of [{ name: '../evil' }, { name: '' }, { mtu: 20 }, { mtu: '1450' }, { bridge: 'br/0' }, { hairpinMode: 'yes' }, { dataDir: 'relative' }]) {
    await expectRejected(t, node, pod, fx, { conf: fx.conf(extra) }, 7);
  }
});

test('a bridge name taken by a non-bridge, or a bridge with another address -> 101', async (t) => {
  const { node, pod, fx } = setup(t);
  sh('ip', ['-n', node, 'link', 'add', 'notbr', 'type', 'veth', 'peer', 'name', 'notbr-p']);
  const r = await cni(node, { command: 'ADD', conf: fx.conf({ bridge: 'notbr' }), containerID: 'bad', netns: pod, ifname: 'eth0' });
  t.is(r.json.code, 101);
  t.is(r.json.msg, '"notbr" exists but is not a bridge (kind "veth")');
  sh('ip', ['-n', node, 'link', 'del', 'notbr']);

  sh('ip', ['-n', node, 'link', 'add', 'cni0', 'type', 'bridge']);
  sh('ip', ['-n', node, 'addr', 'add', '198.18.99.1/24', 'dev', 'cni0']);
  const e = await expectRejected(t, node, pod, fx, {}, 101);
  t.is(e.msg, 'bridge "cni0" already has address 198.18.99.1/24, different from the gateway 198.18.20.1/24');
});

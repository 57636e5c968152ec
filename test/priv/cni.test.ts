/**
 * The built weft binary in throwaway namespaces: a node namespace stands in for the host, one
 * namespace per pod. Kernel state is read back with `ip -j`, the store from its files.
 */
import test, { type ExecutionContext } from 'ava';
import { existsSync, readdirSync, readFileSync, writeFileSync, mkdirSync } from 'node:fs';
import { join, resolve } from 'node:path';
import { INJECTED } from '../helpers/cni-faults.ts';
import { cni, cniFixture, expectedVethName, type CniEnvFixture } from '../helpers/cni.ts';
import { ipJson, ping, Scope, sh } from '../helpers/netns.ts';

const root = resolve(import.meta.dirname, '..', '..');

function setup(t: ExecutionContext, opts: { third?: number } = {}) {
  const scope = new Scope();
  t.teardown(() => scope.cleanup());
  const node = scope.netns('node');
  const fx = cniFixture(scope, opts);
  return { scope, node, fx };
}

function cat(ns: string, file: string): string {
  return sh('nsenter', [`--net=/run/netns/${ns}`, '--', 'cat', file]).trim();
}

function ipFiles(fx: CniEnvFixture): string[] {
  if (!existsSync(fx.ipamDir)) return [];
  return readdirSync(fx.ipamDir).filter((f) => /^\d+\.\d+\.\d+\.\d+$/.test(f));
}

function inet(ns: string, dev: string): string[] {
  const l = ipJson(ns, 'addr', 'show', 'dev', dev)[0];
  return (l?.addr_info ?? []).filter((a: any) => a.family === 'inet').map((a: any) => `${a.local}/${a.prefixlen}`);
}

/** `nft list set ip weft-pods pods` in `ns` ('' when there is no such table). */
function nftPods(ns: string): string {
  try {
    return sh('nsenter', [`--net=/run/netns/${ns}`, '--', '/usr/sbin/nft', 'list', 'set', 'ip', 'weft-pods', 'pods']);
  } catch {
    return '';
  }
}

/** Nothing of a pod attachment left: no veth on the node, only lo in the pod, no IP file. */
function assertNoAttachment(t: ExecutionContext, node: string, pod: string, fx: CniEnvFixture) {
  t.deepEqual(
    ipJson(node, 'link', 'show', 'type', 'veth').map((l) => l.ifname),
    [],
    'no veth on the node',
  );
  t.deepEqual(
    ipJson(pod, 'link', 'show').map((l) => l.ifname),
    ['lo'],
    'only lo in the pod',
  );
  t.deepEqual(ipFiles(fx), [], 'no IP file');
}

test('ADD configures eth0 (address, routes, MTU), bridge and host veth; DEL removes them and releases the IP', async (t) => {
  const { scope, node, fx } = setup(t);
  const pod = scope.netns('pod');
  const add = await cni(node, { command: 'ADD', conf: fx.conf(), containerID: 'c1', netns: pod, ifname: 'eth0' });
  t.is(add.code, 0, add.stdout + add.stderr);
  const r = add.json;
  t.is(r.cniVersion, '1.0.0');
  const veth = expectedVethName('c1', 'eth0');
  t.deepEqual(
    r.interfaces.map((i: any) => i.name),
    ['cni0', veth, 'eth0'],
  );
  t.is(r.interfaces[2].sandbox, `/run/netns/${pod}`);
  t.deepEqual(r.ips, [{ address: '198.18.1.2/24', gateway: '198.18.1.1', interface: 2 }]);
  t.deepEqual(r.routes, [
    { dst: '0.0.0.0/0', gw: '198.18.1.1' },
    { dst: '198.18.0.0/16', gw: '198.18.1.1' },
  ]);

  const eth0 = ipJson(pod, 'addr', 'show', 'dev', 'eth0')[0];
  t.is(eth0.mtu, 1450);
  t.true(eth0.flags.includes('UP'));
  t.is(eth0.address, r.interfaces[2].mac);
  t.deepEqual(inet(pod, 'eth0'), ['198.18.1.2/24']);
  const routes = ipJson(pod, 'route', 'show');
  t.truthy(routes.find((x) => x.dst === 'default' && x.gateway === '198.18.1.1' && x.dev === 'eth0'));
  t.truthy(routes.find((x) => x.dst === '198.18.0.0/16' && x.gateway === '198.18.1.1'));
  t.is(cat(pod, '/proc/sys/net/ipv4/conf/eth0/arp_notify'), '1');

  const br = ipJson(node, '-d', 'link', 'show', 'dev', 'cni0')[0];
  t.is(br.linkinfo.info_kind, 'bridge');
  t.is(br.mtu, 1450);
  t.true(br.flags.includes('UP'));
  t.is(br.address, r.interfaces[0].mac);
  t.deepEqual(inet(node, 'cni0'), ['198.18.1.1/24']);
  const hostVeth = ipJson(node, '-d', 'link', 'show', 'dev', veth)[0];
  t.is(hostVeth.master, 'cni0');
  t.is(hostVeth.mtu, 1450);
  t.is(hostVeth.linkinfo.info_slave_data.hairpin, true);
  t.is(hostVeth.address, r.interfaces[1].mac);
  t.is(cat(node, '/proc/sys/net/ipv4/ip_forward'), '1');
  t.is(readFileSync(join(fx.ipamDir, '198.18.1.2'), 'utf8'), 'c1\r\neth0');
  t.is(readFileSync(join(fx.ipamDir, 'last_reserved_ip.0'), 'utf8'), '198.18.1.2');

  const del = await cni(node, { command: 'DEL', conf: fx.conf(), containerID: 'c1', netns: pod, ifname: 'eth0' });
  t.is(del.code, 0, del.stdout + del.stderr);
  t.is(del.stdout, '');
  assertNoAttachment(t, node, pod, fx);
});

test('ADD honours hairpinMode, isDefaultGateway and mtu from the configuration; 0.3.1 results tag ips with version 4', async (t) => {
  const { scope, node, fx } = setup(t, { third: 7 });
  const pod = scope.netns('pod');
  const conf = fx.conf({ hairpinMode: false, isDefaultGateway: false, mtu: 1400, bridge: 'br-w' }, '0.3.1');
  const add = await cni(node, { command: 'ADD', conf, containerID: 'c2', netns: pod, ifname: 'net1' });
  t.is(add.code, 0, add.stdout + add.stderr);
  t.is(add.json.cniVersion, '0.3.1');
  t.deepEqual(add.json.ips, [{ version: '4', address: '198.18.7.2/24', gateway: '198.18.7.1', interface: 2 }]);
  t.deepEqual(add.json.routes, [{ dst: '198.18.0.0/16', gw: '198.18.7.1' }]);
  t.is(ipJson(pod, 'link', 'show', 'dev', 'net1')[0].mtu, 1400);
  t.is(ipJson(node, 'link', 'show', 'dev', 'br-w')[0].mtu, 1400);
  const veth = ipJson(node, '-d', 'link', 'show', 'dev', expectedVethName('c2', 'net1'))[0];
  t.is(veth.linkinfo.info_slave_data.hairpin, false);
  t.is(veth.mtu, 1400);
  t.falsy(ipJson(pod, 'route', 'show').find((x) => x.dst === 'default'));
});

test('two pods on one node ping each other through the bridge', async (t) => {
  const { scope, node, fx } = setup(t, { third: 2 });
  const a = scope.netns('pod');
  const b = scope.netns('pod');
  const ra = await cni(node, { command: 'ADD', conf: fx.conf(), containerID: 'pa', netns: a, ifname: 'eth0' });
  const rb = await cni(node, { command: 'ADD', conf: fx.conf(), containerID: 'pb', netns: b, ifname: 'eth0' });
  t.is(ra.code, 0, ra.stdout);
  t.is(rb.code, 0, rb.stdout);
  const ipA = ra.json.ips[0].address.split('/')[0];
  const ipB = rb.json.ips[0].address.split('/')[0];
  t.not(ipA, ipB);
  t.true(ping(a, ipB, 2), `ping ${ipB} from pod a`);
  t.true(ping(b, ipA, 2), `ping ${ipA} from pod b`);
  t.true(ping(a, '198.18.2.1'), 'gateway answers');
});

test('DEL is idempotent: twice, after the namespace is gone, with empty CNI_NETNS, and for an unknown container', async (t) => {
  const { scope, node, fx } = setup(t, { third: 3 });
  const pod = scope.netns('pod');
  const add = await cni(node, { command: 'ADD', conf: fx.conf(), containerID: 'c3', netns: pod, ifname: 'eth0' });
  t.is(add.code, 0, add.stdout);
  sh('ip', ['netns', 'del', pod]);
  const gone = await cni(node, { command: 'DEL', conf: fx.conf(), containerID: 'c3', netns: pod, ifname: 'eth0' });
  t.is(gone.code, 0, gone.stdout + gone.stderr);
  t.deepEqual(ipJson(node, 'link', 'show', 'type', 'veth'), []);
  t.deepEqual(ipFiles(fx), []);
  const again = await cni(node, { command: 'DEL', conf: fx.conf(), containerID: 'c3', netns: pod, ifname: 'eth0' });
  t.is(again.code, 0, again.stdout + again.stderr);
  const empty = await cni(node, { command: 'DEL', conf: fx.conf(), containerID: 'c3', netns: '', ifname: 'eth0' });
  t.is(empty.code, 0, empty.stdout + empty.stderr);
  const unknown = await cni(node, { command: 'DEL', conf: fx.conf(), containerID: 'never-added', ifname: 'eth0' });
  t.is(unknown.code, 0, unknown.stdout + unknown.stderr);

  // DEL needs neither the subnet file nor weftd: it works when the daemon is gone.
  const pod2 = scope.netns('pod');
  t.is((await cni(node, { command: 'ADD', conf: fx.conf(), containerID: 'c4', netns: pod2, ifname: 'eth0' })).code, 0);
  writeFileSync(fx.subnetFile, 'garbage\n');
  const noDaemon = await cni(node, { command: 'DEL', conf: fx.conf(), containerID: 'c4', netns: pod2, ifname: 'eth0' });
  t.is(noDaemon.code, 0, noDaemon.stdout);
  assertNoAttachment(t, node, pod2, fx);
});

test('50 concurrent ADDs get 50 distinct addresses; 50 DELs release them all', async (t) => {
  const { scope, node, fx } = setup(t, { third: 4 });
  const pods = Array.from({ length: 50 }, () => scope.netns('pod'));
  const adds = await Promise.all(pods.map((p, i) => cni(node, { command: 'ADD', conf: fx.conf(), containerID: `burst-${i}`, netns: p, ifname: 'eth0' })));
  const failed = adds.filter((r) => r.code !== 0);
  t.deepEqual(
    failed.map((r) => r.stdout + r.stderr),
    [],
  );
  const ips = adds.map((r) => r.json.ips[0].address);
  t.is(new Set(ips).size, 50);
  t.is(ipFiles(fx).length, 50);
  for (const [i, p] of pods.entries()) t.deepEqual(inet(p, 'eth0'), [ips[i]]);
  t.is(ipJson(node, 'link', 'show', 'master', 'cni0').length, 50);

  const dels = await Promise.all(pods.map((p, i) => cni(node, { command: 'DEL', conf: fx.conf(), containerID: `burst-${i}`, netns: p, ifname: 'eth0' })));
  t.deepEqual(
    dels.filter((r) => r.code !== 0).map((r) => r.stdout),
    [],
  );
  t.deepEqual(ipFiles(fx), []);
  t.deepEqual(ipJson(node, 'link', 'show', 'type', 'veth'), []);
});

test('a failure injected at each dependency call of ADD in turn is undone: no IP file, veth or pod address', async (t) => {
  const { scope, node, fx } = setup(t, { third: 5 });
  const pod = scope.netns('pod');
  // The fault injector is test wiring (test/helpers/cni-faults.ts), run as the plugin.
  const bin = join(fx.dir, 'weft-faulty');
  writeFileSync(bin, `#!/bin/sh\nexec ${process.execPath} ${join(root, 'test', 'helpers', 'cni-faults.ts')}\n`, { mode: 0o755 });
  let failed = 0;
  for (let at = 1; ; at++) {
    // ipMasq: the per-pod masquerade step (and its undo) is among the calls.
    const add = await cni(node, { bin, command: 'ADD', conf: fx.conf({ ipMasq: true }), containerID: 'cf', netns: pod, ifname: 'eth0', env: { WEFT_FAULT_AT: String(at) } });
    if (add.code === 0) {
      // Past the last call nothing fails: every call before it has been a fault point.
      t.is(Number(/fault-calls (\d+)/.exec(add.stderr)?.[1]), at - 1, add.stderr);
      break;
    }
    t.is(add.code, 1);
    t.is(add.json.code, 999, add.stdout);
    t.true(`${add.json.msg}: ${add.json.details ?? ''}`.includes(`${INJECTED} ${at} (`), add.stdout);
    t.log(`fault at ${at}: ${add.json.details ?? add.json.msg}`);
    assertNoAttachment(t, node, pod, fx);
    t.notRegex(nftPods(node), /elements = \{ 198\./, 'no masquerade element left');
    failed++;
    if (at > 200) return t.fail('ADD never succeeded');
  }
  t.true(failed >= 15, `ADD makes ${failed} dependency calls`);
  // The last run succeeded; the container is attached once, and DEL clears it.
  t.is(ipFiles(fx).length, 1);
  t.true(nftPods(node).includes(`elements = { ${ipFiles(fx)[0]} }`), 'the attached pod is masqueraded');
  const del = await cni(node, { command: 'DEL', conf: fx.conf({ ipMasq: true }), containerID: 'cf', netns: pod, ifname: 'eth0' });
  t.is(del.code, 0, del.stdout);
  assertNoAttachment(t, node, pod, fx);
  t.notRegex(nftPods(node), /elements = /);
});

test('a real failure midway (host veth name taken by another link) is undone and reported', async (t) => {
  const { scope, node, fx } = setup(t, { third: 6 });
  const pod = scope.netns('pod');
  const taken = expectedVethName('cx', 'eth0');
  sh('ip', ['-n', node, 'link', 'add', taken, 'type', 'bridge']); // no dummy module on this kernel
  const add = await cni(node, { command: 'ADD', conf: fx.conf(), containerID: 'cx', netns: pod, ifname: 'eth0' });
  t.is(add.code, 1);
  t.is(add.json.code, 104);
  t.regex(add.json.msg, new RegExp(`host veth "${taken}"`));
  t.deepEqual(ipFiles(fx), [], 'the reservation was released');
  t.deepEqual(
    ipJson(pod, 'link', 'show').map((l) => l.ifname),
    ['lo'],
  );
  t.is(ipJson(node, '-d', 'link', 'show', 'dev', taken)[0].linkinfo.info_kind, 'bridge', 'the other link is untouched');
});

test('CHECK passes on a fresh attachment and names a removed address, a removed route and a detached veth', async (t) => {
  const { scope, node, fx } = setup(t, { third: 8 });
  const pod = scope.netns('pod');
  const add = await cni(node, { command: 'ADD', conf: fx.conf({}, '1.1.0'), containerID: 'ck', netns: pod, ifname: 'eth0' });
  t.is(add.code, 0, add.stdout);
  const check = (version = '1.1.0') => cni(node, { command: 'CHECK', conf: fx.conf({ prevResult: add.json }, version), containerID: 'ck', netns: pod, ifname: 'eth0' });
  const ok = await check();
  t.is(ok.code, 0, ok.stdout + ok.stderr);
  t.is(ok.stdout, '');
  const ok04 = await check('0.4.0');
  t.is(ok04.code, 0, ok04.stdout);
  const old = await check('0.3.1');
  t.is(old.json.code, 1);

  const noPrev = await cni(node, { command: 'CHECK', conf: fx.conf({}, '1.1.0'), containerID: 'ck', netns: pod, ifname: 'eth0' });
  t.is(noPrev.json.code, 7);

  sh('ip', ['-n', pod, 'route', 'del', '198.18.0.0/16']);
  const noRoute = await check();
  t.is(noRoute.code, 1);
  t.is(noRoute.json.code, 103);
  t.is(noRoute.json.msg, 'route 198.18.0.0/16 via 198.18.8.1 is missing in the pod');
  sh('ip', ['-n', pod, 'route', 'add', '198.18.0.0/16', 'via', '198.18.8.1']);
  t.is((await check()).code, 0);

  sh('ip', ['-n', node, 'link', 'set', expectedVethName('ck', 'eth0'), 'nomaster']);
  const detached = await check();
  t.is(detached.json.code, 103);
  t.is(detached.json.msg, `host veth "${expectedVethName('ck', 'eth0')}" is not attached to bridge "cni0"`);
  sh('ip', ['-n', node, 'link', 'set', expectedVethName('ck', 'eth0'), 'master', 'cni0']);

  sh('ip', ['-n', pod, 'addr', 'del', '198.18.8.2/24', 'dev', 'eth0']);
  const noAddr = await check();
  t.is(noAddr.code, 1);
  t.is(noAddr.json.code, 103);
  t.is(noAddr.json.msg, 'address 198.18.8.2/24 is missing from "eth0"');
});

test('GC releases allocations and veths not in cni.dev/valid-attachments (and accepts cni.dev/attachments)', async (t) => {
  const { scope, node, fx } = setup(t, { third: 9 });
  const pods = [scope.netns('pod'), scope.netns('pod'), scope.netns('pod')];
  for (const [i, p] of pods.entries()) {
    const r = await cni(node, { command: 'ADD', conf: fx.conf({}, '1.1.0'), containerID: `gc${i}`, netns: p, ifname: 'eth0' });
    t.is(r.code, 0, r.stdout);
  }
  // A leaked allocation without any link (e.g. a crash between reservation and veth).
  writeFileSync(join(fx.ipamDir, '198.18.9.200'), 'crashed\r\neth0');
  const gc = await cni(node, {
    command: 'GC',
    conf: fx.conf({ 'cni.dev/valid-attachments': [{ containerID: 'gc1', ifname: 'eth0' }] }, '1.1.0'),
  });
  t.is(gc.code, 0, gc.stdout + gc.stderr);
  t.deepEqual(ipFiles(fx), ['198.18.9.3']);
  t.deepEqual(
    ipJson(node, 'link', 'show', 'type', 'veth').map((l) => l.ifname),
    [expectedVethName('gc1', 'eth0')],
  );
  t.deepEqual(inet(pods[1], 'eth0'), ['198.18.9.3/24']);

  const legacyKey = await cni(node, { command: 'GC', conf: fx.conf({ 'cni.dev/attachments': [] }, '1.1.0') });
  t.is(legacyKey.code, 0, legacyKey.stdout);
  t.deepEqual(ipFiles(fx), []);
  t.deepEqual(ipJson(node, 'link', 'show', 'type', 'veth'), []);

  const noList = await cni(node, { command: 'GC', conf: fx.conf({}, '1.1.0') });
  t.is(noList.json.code, 7);
  const oldVersion = await cni(node, { command: 'GC', conf: fx.conf({ 'cni.dev/valid-attachments': [] }, '1.0.0') });
  t.is(oldVersion.json.code, 1);
});

test('STATUS: ready, then error 50 for a missing or invalid subnet file, an unwritable store and a full subnet', async (t) => {
  const { scope, node, fx } = setup(t, { third: 10 });
  const status = (extra: Record<string, unknown> = {}) => cni(node, { command: 'STATUS', conf: fx.conf(extra, '1.1.0') });
  const ok = await status();
  t.is(ok.code, 0, ok.stdout);
  t.is(ok.stdout, '');

  const missing = await status({ subnetFile: join(fx.dir, 'nope.env') });
  t.is(missing.json.code, 50);
  t.regex(missing.json.msg, /weftd\) is not ready/);
  writeFileSync(join(fx.dir, 'bad.env'), 'FLANNEL_NETWORK=198.18.0.0/16\n');
  const invalid = await status({ subnetFile: join(fx.dir, 'bad.env') });
  t.is(invalid.json.code, 50);
  t.regex(invalid.json.msg, /FLANNEL_SUBNET is missing/);

  writeFileSync(join(fx.dir, 'a-file'), '');
  const unwritable = await status({ dataDir: join(fx.dir, 'a-file') });
  t.is(unwritable.json.code, 50);
  t.regex(unwritable.json.msg, /not writable/);

  mkdirSync(fx.ipamDir, { recursive: true });
  for (let i = 2; i <= 254; i++) writeFileSync(join(fx.ipamDir, `198.18.10.${i}`), `other${i}\r\neth0`);
  const full = await status();
  t.is(full.json.code, 50);
  t.is(full.json.msg, 'no free address in 198.18.10.0/24');
  const old = await cni(node, { command: 'STATUS', conf: fx.conf({}, '1.0.0') });
  t.is(old.json.code, 1);
  void scope;
});

test('VERSION lists the supported versions', async (t) => {
  const { node } = setup(t);
  const r = await cni(node, { command: 'VERSION', conf: { cniVersion: '0.4.0' } });
  t.is(r.code, 0);
  t.deepEqual(r.json, { cniVersion: '0.4.0', supportedVersions: ['0.3.0', '0.3.1', '0.4.0', '1.0.0', '1.1.0'] });
});

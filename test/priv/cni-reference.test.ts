/**
 * Side by side with the reference plugins (Debian's containernetworking-plugins: bridge +
 * host-local in /usr/lib/cni): same result shape and pod state for the same subnet, and the
 * same on-disk IPAM store in both directions, so a node can switch plugins without leaking.
 */
import test, { type ExecutionContext } from 'ava';
import { existsSync, readdirSync, readFileSync } from 'node:fs';
import { join } from 'node:path';
import { cni, cniFixture, REF_BRIDGE, REF_HOST_LOCAL } from '../helpers/cni.ts';
import { ipJson, Scope } from '../helpers/netns.ts';

const haveReference = existsSync(REF_BRIDGE) && existsSync(REF_HOST_LOCAL);
const refTest = haveReference ? test : test.skip;

function refConf(version: string, dataDir: string, subnet = '198.18.30.0/24') {
  return {
    cniVersion: version,
    name: 'wt-net',
    type: 'bridge',
    bridge: 'cni0',
    isGateway: true,
    isDefaultGateway: true,
    hairpinMode: true,
    mtu: 1450,
    ipam: { type: 'host-local', subnet, dataDir, routes: [{ dst: '198.18.0.0/16' }] },
  };
}

function hostLocalConf(version: string, dataDir: string, subnet = '198.18.30.0/24') {
  return { cniVersion: version, name: 'wt-net', type: 'host-local', ipam: { type: 'host-local', subnet, dataDir } };
}

/** The shape of a result: keys, interface/ips structure and route destinations, not values. */
function shape(r: any) {
  return {
    keys: Object.keys(r).sort(),
    cniVersion: r.cniVersion,
    interfaces: r.interfaces.map((i: any) => Object.keys(i).sort()),
    sandboxAt: r.interfaces.findIndex((i: any) => i.sandbox),
    ips: r.ips.map((ip: any) => ({ keys: Object.keys(ip).sort(), interface: ip.interface, version: ip.version, prefix: ip.address.split('/')[1] })),
    routeDsts: r.routes.map((x: any) => x.dst).sort(),
    dns: r.dns,
  };
}

function podState(pod: string) {
  const eth0 = ipJson(pod, 'addr', 'show', 'dev', 'eth0')[0];
  return {
    mtu: eth0.mtu,
    up: eth0.flags.includes('UP'),
    addrs: eth0.addr_info.filter((a: any) => a.family === 'inet').map((a: any) => `${a.local}/${a.prefixlen}`),
    routes: ipJson(pod, 'route', 'show')
      .map((x) => `${x.dst} ${x.gateway ?? '-'} ${x.dev}`)
      .sort(),
  };
}

function ipFiles(dir: string): string[] {
  return existsSync(dir)
    ? readdirSync(dir)
        .filter((f) => /^\d+\.\d+\.\d+\.\d+$/.test(f))
        .sort()
    : [];
}

async function compareVersion(t: ExecutionContext, version: string) {
  const scope = new Scope();
  t.teardown(() => scope.cleanup());
  const fx = cniFixture(scope, { third: 30 });
  const refNode = scope.netns('node');
  const weftNode = scope.netns('node');
  const refPod = scope.netns('pod');
  const weftPod = scope.netns('pod');
  const refData = join(fx.dir, 'ref-data');
  const ref = await cni(refNode, { command: 'ADD', bin: REF_BRIDGE, conf: refConf(version, refData), containerID: 'side', netns: refPod, ifname: 'eth0' });
  t.is(ref.code, 0, ref.stdout + ref.stderr);
  const weft = await cni(weftNode, { command: 'ADD', conf: fx.conf({}, version), containerID: 'side', netns: weftPod, ifname: 'eth0' });
  t.is(weft.code, 0, weft.stdout + weft.stderr);
  t.deepEqual(shape(weft.json), shape(ref.json));
  t.is(weft.json.ips[0].address, ref.json.ips[0].address, 'same first address');
  t.is(weft.json.ips[0].gateway, ref.json.ips[0].gateway);
  t.deepEqual(podState(weftPod), podState(refPod));
  t.deepEqual(
    ipJson(weftNode, 'addr', 'show', 'dev', 'cni0')[0]
      .addr_info.filter((a: any) => a.family === 'inet')
      .map((a: any) => a.local),
    ['198.18.30.1'],
  );
  t.deepEqual(
    ipJson(refNode, 'addr', 'show', 'dev', 'cni0')[0]
      .addr_info.filter((a: any) => a.family === 'inet')
      .map((a: any) => a.local),
    ['198.18.30.1'],
  );
  // Same store bytes.
  t.is(readFileSync(join(fx.ipamDir, '198.18.30.2'), 'utf8'), readFileSync(join(refData, 'wt-net', '198.18.30.2'), 'utf8'));
  t.is(readFileSync(join(fx.ipamDir, 'last_reserved_ip.0'), 'utf8'), readFileSync(join(refData, 'wt-net', 'last_reserved_ip.0'), 'utf8'));
}

for (const version of ['0.3.1', '0.4.0', '1.0.0']) {
  refTest(`ADD result and pod state match bridge + host-local (cniVersion ${version})`, (t) => compareVersion(t, version));
}

refTest('an allocation written by weft is released by host-local DEL, and the reverse', async (t) => {
  const scope = new Scope();
  t.teardown(() => scope.cleanup());
  const fx = cniFixture(scope, { third: 30 });
  const node = scope.netns('node');
  const pod = scope.netns('pod');
  const add = await cni(node, { command: 'ADD', conf: fx.conf(), containerID: 'mover', netns: pod, ifname: 'eth0' });
  t.is(add.code, 0, add.stdout);
  t.deepEqual(ipFiles(fx.ipamDir), ['198.18.30.2']);

  const hlDel = await cni(node, { command: 'DEL', bin: REF_HOST_LOCAL, conf: hostLocalConf('1.0.0', fx.dataDir), containerID: 'mover', netns: pod, ifname: 'eth0' });
  t.is(hlDel.code, 0, hlDel.stdout + hlDel.stderr);
  t.deepEqual(ipFiles(fx.ipamDir), [], 'host-local released the file weft wrote');

  // host-local allocates next (round-robin from weft's last_reserved_ip.0) and weft's DEL releases it.
  const hlAdd = await cni(node, { command: 'ADD', bin: REF_HOST_LOCAL, conf: hostLocalConf('1.0.0', fx.dataDir), containerID: 'back', netns: pod, ifname: 'eth1' });
  t.is(hlAdd.code, 0, hlAdd.stdout + hlAdd.stderr);
  t.is(hlAdd.json.ips[0].address, '198.18.30.3/24');
  // weft skips host-local's reservation and continues the round-robin after it.
  const pod2 = scope.netns('pod');
  const next = await cni(node, { command: 'ADD', conf: fx.conf(), containerID: 'next', netns: pod2, ifname: 'eth0' });
  t.is(next.json.ips[0].address, '198.18.30.4/24');
  const del = await cni(node, { command: 'DEL', conf: fx.conf(), containerID: 'back', ifname: 'eth1' });
  t.is(del.code, 0, del.stdout);
  t.deepEqual(ipFiles(fx.ipamDir), ['198.18.30.4']);
});

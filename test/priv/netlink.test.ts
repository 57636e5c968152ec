import test, { type ExecutionContext } from 'ava';
import { LinkBatchDeleter, openNetlink, LinkNotFoundError, NetlinkError } from '../../src/netlink/index.ts';
import { openNetns, NetnsNotFoundError, setSysctl } from '../../src/netns/index.ts';
import { inNs, ipJson, Scope } from '../helpers/netns.ts';

/** A node and a pod namespace, with netlink open in each; all gone after the test. */
function twoNamespaces(t: ExecutionContext) {
  const scope = new Scope();
  t.teardown(() => scope.cleanup());
  const nodeName = scope.netns('node');
  const podName = scope.netns('pod');
  const node = openNetns(`/run/netns/${nodeName}`);
  const pod = openNetns(`/run/netns/${podName}`);
  scope.defer(() => (node.close(), pod.close()));
  const nl = openNetlink({ netns: node });
  const pnl = openNetlink({ netns: pod });
  scope.defer(() => (nl.close(), pnl.close()));
  return { nodeName, podName, node, pod, nl, pnl };
}

test('netlink layer programs bridge, veth into another netns, vxlan, neighbor, fdb and onlink route', async (t) => {
  const { nodeName, node, pod, nl, pnl } = twoNamespaces(t);

  await nl.linkAdd({ kind: 'bridge', name: 'br-t', mtu: 1450 });
  const br = await nl.linkByName('br-t');
  t.is(br.kind, 'bridge');
  // Up and enslaved as created; the kernel (6.3+, this machine's 6.18) echoes the new end.
  const echoed = await nl.linkAdd({ kind: 'veth', name: 'veth-t', peerName: 'eth0', peerNetnsFd: pod.fd, mtu: 1450, peerMac: '02:00:5e:10:20:30', up: true, masterIndex: br.index });
  const host = await nl.linkByName('veth-t');
  t.deepEqual(echoed && { index: echoed.index, name: echoed.name, mac: echoed.mac, kind: echoed.kind }, { index: host.index, name: 'veth-t', mac: host.mac, kind: 'veth' });
  t.is(host.masterIndex, br.index);
  t.true(host.up);
  const alias = `c${'x'.repeat(253)}/`; // the longest the kernel takes: 255 bytes
  await nl.linkSetPort(host.index, { alias, hairpin: true });
  t.is((await nl.linkByIndex(host.index)).alias, alias);
  await t.throwsAsync(nl.linkSetPort(host.index, { alias: `${alias}x`, hairpin: true }), { message: /longer than 255 bytes/ });
  const eth0 = await pnl.linkByName('eth0');
  t.is(eth0.mtu, 1450);
  // The pod end as asked, and findable from the host end without a lookup in the pod's namespace.
  t.is(eth0.mac, '02:00:5e:10:20:30');
  t.is(echoed?.linkIndex, eth0.index);
  t.is(host.linkIndex, eth0.index);
  t.false(eth0.up, 'the peer is left down (it cannot be opened before the pair is joined)');
  await t.throwsAsync(nl.linkByName('eth0'), { instanceOf: LinkNotFoundError });
  const err = await t.throwsAsync(nl.linkAdd({ kind: 'bridge', name: 'br-t' }), { instanceOf: NetlinkError });
  t.is(err?.errno, 'EEXIST');
  const hostJson = ipJson(nodeName, '-d', 'link', 'show', 'veth-t')[0];
  t.is(hostJson.master, 'br-t');
  t.is(hostJson.linkinfo.info_slave_data.hairpin, true);

  await nl.linkAdd({ kind: 'veth', name: 'ul0', peerName: 'ul1' });
  const ul = await nl.linkByName('ul0');
  await nl.addrAdd({ index: ul.index, ip: '198.51.100.10', prefixLen: 24 });
  await nl.linkAdd({ kind: 'vxlan', name: 'vx-t', vni: 1, port: 8472, local: '198.51.100.10', parentIndex: ul.index });
  const vx = await nl.linkByName('vx-t');
  t.deepEqual(vx.vxlan, { vni: 1, port: 8472, local: '198.51.100.10', parentIndex: ul.index, learning: false });
  await nl.linkSetUp(vx.index);
  await nl.neighReplace({ index: vx.index, ip: '198.18.2.0', mac: 'aa:bb:cc:dd:ee:02' });
  await nl.fdbReplace({ index: vx.index, mac: 'aa:bb:cc:dd:ee:02', dst: '198.51.100.11' });
  await nl.routeReplace({ dst: '198.18.2.0/24', gateway: '198.18.2.0', index: vx.index, onlink: true });
  const routes = ipJson(nodeName, 'route', 'show', 'dev', 'vx-t');
  t.deepEqual(
    routes.map((r) => [r.dst, r.gateway, r.flags]),
    [['198.18.2.0/24', '198.18.2.0', ['onlink']]],
  );
  t.deepEqual(await nl.fdbs(vx.index), [{ index: vx.index, mac: 'aa:bb:cc:dd:ee:02', dst: '198.51.100.11' }]);
  t.true(inNs(nodeName, 'bridge', ['fdb', 'show', 'dev', 'vx-t']).includes('aa:bb:cc:dd:ee:02 dst 198.51.100.11 self permanent'));

  setSysctl('net.ipv4.ip_forward', '1', node);
  t.is(inNs(nodeName, 'cat', ['/proc/sys/net/ipv4/ip_forward']).trim(), '1');
});

test('openNetns rejects paths that are not network namespaces', (t) => {
  t.throws(() => openNetns('/nonexistent/netns'), { instanceOf: NetnsNotFoundError });
  t.throws(() => openNetns('/etc/hostname'), { instanceOf: NetnsNotFoundError });
});

test('linksDel deletes a set of veths in one unregistration and only those; LinkBatchDeleter hands concurrent deletes over together', async (t) => {
  const { nodeName, podName, node, pod, nl } = twoNamespaces(t);
  const add = async (i: number) => {
    await nl.linkAdd({ kind: 'veth', name: `vb${i}`, peerName: `pb${i}`, peerNetnsFd: pod.fd });
    return (await nl.linkByName(`vb${i}`)).index;
  };
  const names = () => ipJson<{ ifname: string }>(nodeName, 'link', 'show').map((l) => l.ifname);
  const doomed = await Promise.all([0, 1, 2, 3, 4, 5].map(add));
  const kept = await add(9);
  const gone = await add(8);
  await nl.linkDel(gone);
  await nl.linksDel([...doomed, gone]);
  t.deepEqual(
    names().filter((n) => n.startsWith('vb')),
    ['vb9'],
    'the six and nothing else; one already gone is skipped',
  );
  t.deepEqual(
    ipJson<{ ifname: string }>(podName, 'link', 'show')
      .map((l) => l.ifname)
      .filter((n) => n.startsWith('pb')),
    ['pb9'],
    'their peers went with them',
  );
  t.is(ipJson<{ group: string }>(nodeName, 'link', 'show', 'vb9')[0]!.group, 'default', 'the survivor is untagged');
  // The fast path's batcher: six deletes asked at once, one linksDel
  const more = await Promise.all([10, 11, 12, 13, 14, 15].map(add));
  let batches = 0;
  const deleter = new LinkBatchDeleter(() => {
    const s = openNetlink({ netns: node });
    const linksDel = s.linksDel.bind(s);
    s.linksDel = (ix) => (batches++, linksDel(ix));
    return s;
  });
  await Promise.all([...more, gone].map((i) => deleter.delete(i)));
  t.is(batches, 1);
  t.deepEqual(
    names().filter((n) => n.startsWith('vb')),
    ['vb9'],
  );
  await nl.linkDel(kept);
});

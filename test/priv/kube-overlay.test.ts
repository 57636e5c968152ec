/**
 * Kube mode end to end on real kernels: two nodes whose subnet manager is the Kubernetes API
 * (lab API server) drive the real VXLAN backend (kube-driver.ts `up`, weftd's start-up in
 * miniature), plus a hand-built flannel-style peer (device made with `ip`, annotations written
 * by hand) that interoperates. Covers: peers programmed from annotations, ping over the
 * overlay, NetworkUnavailable=False, a MAC change replacing the FDB entry, a "reboot" (device
 * gone) that recreates flannel.1 with the annotated MAC so peers' entries stay valid, and a
 * deleted Node whose entries disappear from its peers within a second.
 */
import test from 'ava';
import { eventually, inNs, ipJson, ping, sh } from '../helpers/netns.ts';
import { KubeLab, P, peerNode, type Driver } from './kube-env.ts';

const NODES = [
  { name: 'n1', ip: '198.51.100.11', cidr: '198.18.1.0/24' },
  { name: 'n2', ip: '198.51.100.12', cidr: '198.18.2.0/24' },
  { name: 'f3', ip: '198.51.100.13', cidr: '198.18.3.0/24' },
];
const F3_MAC = '0a:66:00:00:00:03';

let lab: KubeLab;
const drivers = new Map<string, Driver>();

interface Overlay {
  mac?: string;
  routes: Array<{ dst: string; gateway?: string; flags?: string[] }>;
  neighs: Array<{ dst: string; lladdr?: string }>;
  fdbs: Array<{ mac: string; dst?: string }>;
}

function overlay(node: string): Overlay {
  const ns = lab.ns.get(node)!;
  const link = ipJson(ns, 'link', 'show').find((l) => l.ifname === 'flannel.1');
  if (!link) return { routes: [], neighs: [], fdbs: [] };
  const fdb = inNs(ns, 'bridge', ['-j', 'fdb', 'show', 'dev', 'flannel.1']).trim();
  return {
    mac: link.address,
    routes: ipJson(ns, 'route', 'show', 'dev', 'flannel.1'),
    neighs: ipJson(ns, 'neigh', 'show', 'dev', 'flannel.1'),
    fdbs: (fdb ? JSON.parse(fdb) : []).filter((f: { dst?: string }) => f.dst),
  };
}

/** True when `node` holds neighbor, FDB entry and route for a peer at (cidr, mac, ip). */
function hasPeer(node: string, peer: { cidr: string; mac: string; ip: string }): boolean {
  const o = overlay(node);
  const gw = peer.cidr.split('/')[0];
  return (
    o.routes.some((r) => r.dst === peer.cidr && r.gateway === gw && (r.flags ?? []).includes('onlink')) &&
    o.neighs.some((n) => n.dst === gw && n.lladdr === peer.mac) &&
    o.fdbs.some((f) => f.mac === peer.mac && f.dst === peer.ip)
  );
}

function entriesFor(node: string, cidr: string): number {
  const o = overlay(node);
  const gw = cidr.split('/')[0];
  return o.routes.filter((r) => r.dst === cidr).length + o.neighs.filter((n) => n.dst === gw).length;
}

async function up(name: string): Promise<{ mac: string; reusedMac: string | null; subnet: string }> {
  const n = NODES.find((x) => x.name === name)!;
  const d = lab.driver(name, { in: name });
  drivers.set(name, d);
  return d.call('up', { iface: 'eth0', ip: n.ip }, 60_000);
}

/** The hand-built flannel node: `ip`-made flannel.1 and annotations written as flannel would. */
function buildFlannelPeer(peerOf: { cidr: string; mac: string; ip: string }): void {
  const ns = lab.ns.get('f3')!;
  const ip = (...a: string[]) => sh('ip', ['-n', ns, ...a]);
  ip('link', 'add', 'flannel.1', 'address', F3_MAC, 'type', 'vxlan', 'id', '1', 'local', '198.51.100.13', 'dev', 'eth0', 'dstport', '8472', 'nolearning');
  ip('link', 'set', 'flannel.1', 'mtu', '1450', 'up');
  ip('addr', 'add', '198.18.3.0/32', 'dev', 'flannel.1');
  const gw = peerOf.cidr.split('/')[0];
  ip('neigh', 'replace', gw, 'lladdr', peerOf.mac, 'dev', 'flannel.1', 'nud', 'permanent');
  sh('bridge', ['-n', ns, 'fdb', 'append', peerOf.mac, 'dev', 'flannel.1', 'dst', peerOf.ip]);
  ip('route', 'replace', peerOf.cidr, 'via', gw, 'dev', 'flannel.1', 'onlink');
}

test.before(async () => {
  lab = await KubeLab.create(NODES.map(({ name, ip }) => ({ name, ip })));
});

test.after.always(async () => {
  await lab?.destroy();
});

test.serial('two kube-mode nodes and a hand-built flannel peer: programmed from annotations, ping, MAC reuse after a reboot, MAC change, node delete', async (t) => {
  const api = lab.driver('admin', { in: 'f3' });
  for (const n of NODES.slice(0, 2)) t.is((await api.api('POST', '/api/v1/nodes', peerNode(n.name, { cidr: n.cidr, annotations: {} }))).status, 201);
  t.is((await api.api('POST', '/api/v1/nodes', peerNode('f3', { cidr: '198.18.3.0/24', mac: F3_MAC, ip: '198.51.100.13' }))).status, 201);

  const [r1, r2] = await Promise.all([up('n1'), up('n2')]);
  t.is(r1.subnet, '198.18.1.0/24');
  t.is(r1.reusedMac, null, 'first start: no MAC to reuse');
  const p1 = { cidr: '198.18.1.0/24', mac: r1.mac, ip: '198.51.100.11' };
  const p2 = { cidr: '198.18.2.0/24', mac: r2.mac, ip: '198.51.100.12' };
  const f3 = { cidr: '198.18.3.0/24', mac: F3_MAC, ip: '198.51.100.13' };
  t.true(await eventually(() => hasPeer('n1', p2) && hasPeer('n2', p1), 10_000), 'each node programmed the other from its annotations');
  t.true(hasPeer('n1', f3) && hasPeer('n2', f3), 'the flannel-style peer is programmed too');
  t.is(overlay('n1').mac, r1.mac);
  for (const n of ['n1', 'n2']) {
    const node = (await api.api('GET', `/api/v1/nodes/${n}`)).body;
    t.like(
      node.status.conditions.find((c: { type: string }) => c.type === 'NetworkUnavailable'),
      { status: 'False', reason: 'WeftIsUp' },
      n,
    );
  }
  t.true(ping(lab.ns.get('n1')!, '198.18.2.0', 3), 'n1 -> n2 over VXLAN');
  buildFlannelPeer(p1);
  t.true(ping(lab.ns.get('f3')!, '198.18.1.0', 3), 'flannel-style peer -> n1 over VXLAN');

  // Reboot n1: the daemon dies and the device is gone. On start the manager hands the backend
  // the MAC from n1's annotation; the hand-built peer still has the old FDB entry and must work.
  await drivers.get('n1')!.stop();
  sh('ip', ['-n', lab.ns.get('n1')!, 'link', 'del', 'flannel.1']);
  t.is(overlay('n1').mac, undefined);
  const again = await up('n1');
  t.is(again.reusedMac, r1.mac);
  t.is(again.mac, r1.mac);
  t.is(overlay('n1').mac, r1.mac, 'flannel.1 recreated with the annotated MAC');
  t.true(await eventually(() => hasPeer('n1', p2) && hasPeer('n1', f3), 10_000), 'peers re-programmed after the reboot');
  t.true(ping(lab.ns.get('f3')!, '198.18.1.0', 3), 'peers keep working with the MAC they cached');
  t.true(ping(lab.ns.get('n1')!, '198.18.2.0', 3));

  // The flannel peer's MAC changes (its device was recreated): FDB replaced, old entry gone.
  const f3b = { ...f3, mac: '0a:66:00:00:00:33' };
  await api.api('PATCH', '/api/v1/nodes/f3', { metadata: { annotations: { [`${P}backend-data`]: `{"VNI":1,"VtepMAC":"${f3b.mac}"}` } } }, 'application/merge-patch+json');
  for (const n of ['n1', 'n2']) {
    t.true(await eventually(() => hasPeer(n, f3b) && !overlay(n).fdbs.some((f) => f.mac === F3_MAC), 5000), `${n}: new FDB entry in, old one out`);
  }

  // n2's Node is deleted: its entries leave n1 within a second.
  const at = Date.now();
  t.is((await api.api('DELETE', '/api/v1/nodes/n2')).status, 200);
  t.true(await eventually(() => entriesFor('n1', '198.18.2.0/24') === 0 && !overlay('n1').fdbs.some((f) => f.mac === r2.mac), 5000, 20));
  t.true(Date.now() - at < 1000, `n2's entries gone from n1 after ${Date.now() - at} ms`);
  t.true(hasPeer('n1', f3b), 'other peers untouched');
});

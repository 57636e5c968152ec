/**
 * VxlanNetwork against an in-memory Netlink: the order peer entries are programmed in, what a
 * change and a removal do, and what reconcile repairs. (test/priv covers the real kernel.)
 */
import test from 'ava';
import { parseCIDR } from '../../src/ip/ipv4.ts';
import type { Fdb, Neigh, Netlink, Route } from '../../src/netlink/index.ts';
import { FakeNetlink } from '../helpers/fake-netlink.ts';
import { VxlanNetwork } from '../../src/backend/vxlan/network.ts';
import type { Lease } from '../../src/subnet/lease.ts';

const silent = { error() {}, warn() {}, info() {}, debug() {} };

const lease = (cidr: string, publicIP: string, mac: string): Lease => ({
  subnet: parseCIDR(cidr),
  publicIP,
  backendType: 'vxlan',
  backendData: { VNI: 1, VtepMAC: mac },
});

async function setup() {
  const nl = new FakeNetlink() satisfies Netlink;
  const repairs: string[] = [];
  const net = await VxlanNetwork.open(nl, {
    device: { name: 'flannel.1', vni: 1, port: 8472, local: '198.51.100.11', parentIndex: 2, mtu: 1450 },
    log: silent,
    onRepair: (what) => repairs.push(what),
  });
  await net.setSubnet(parseCIDR('10.244.1.0/24'));
  nl.ops = [];
  return { nl, net, repairs };
}

const own = lease('10.244.1.0/24', '198.51.100.11', 'aa:00:00:00:00:0a');
const peer2 = lease('10.244.2.0/24', '198.51.100.12', 'aa:bb:cc:00:00:02');
const peer3 = lease('10.244.3.0/24', '198.51.100.13', 'aa:bb:cc:00:00:03');

test('peers are programmed neighbor, then FDB, then onlink route; our own lease is skipped', async (t) => {
  const { nl, net } = await setup();
  await net.applySnapshot([own, peer2]);
  t.deepEqual(nl.ops, ['neigh 10.244.2.0 aa:bb:cc:00:00:02 permanent', 'fdb aa:bb:cc:00:00:02 198.51.100.12', 'route 10.244.2.0/24 via 10.244.2.0 onlink']);
  t.is(net.peerCount, 1);
  t.deepEqual(net.backendData, { VNI: 1, VtepMAC: nl.links_.find((l) => l.name === 'flannel.1')!.mac });
});

test('a changed MAC and IP replaces the entries and removes the old FDB entry; removal deletes all three', async (t) => {
  const { nl, net } = await setup();
  await net.applySnapshot([peer2, peer3]);
  nl.ops = [];
  await net.applyPut(lease('10.244.2.0/24', '198.51.100.22', 'aa:bb:cc:00:00:22'));
  t.deepEqual(nl.ops, ['neigh 10.244.2.0 aa:bb:cc:00:00:22 permanent', 'fdb aa:bb:cc:00:00:22 198.51.100.22', 'route 10.244.2.0/24 via 10.244.2.0 onlink', 'fdb del aa:bb:cc:00:00:02 198.51.100.12']);
  nl.ops = [];
  await net.applyPut(lease('10.244.2.0/24', '198.51.100.22', 'aa:bb:cc:00:00:22'));
  t.deepEqual(nl.ops, [], 'an unchanged lease touches nothing');
  await net.applyDelete({ subnet: parseCIDR('10.244.3.0/24') });
  t.deepEqual(nl.ops, ['route del 10.244.3.0/24', 'neigh del 10.244.3.0', 'fdb del aa:bb:cc:00:00:03 198.51.100.13']);
  t.is(net.peerCount, 1);
  t.deepEqual(
    nl.fdbs_.map((f) => f.mac),
    ['aa:bb:cc:00:00:22'],
  );
});

test('a snapshot diff removes peers that are gone and reconcile drops entries nobody owns', async (t) => {
  const { nl, net, repairs } = await setup();
  const dev = nl.links_.find((l) => l.name === 'flannel.1')!.index;
  // Left over from a peer that went away while we were down.
  nl.neighs_.push({ index: dev, ip: '10.244.9.0', mac: 'aa:bb:cc:00:00:09', permanent: true });
  nl.fdbs_.push({ index: dev, mac: 'aa:bb:cc:00:00:09', dst: '198.51.100.19' });
  nl.routes_.push({ dst: '10.244.9.0/24', gateway: '10.244.9.0', index: dev, onlink: true });
  await net.applySnapshot([peer2]);
  t.deepEqual(
    nl.routes_.map((r) => r.dst),
    ['10.244.2.0/24'],
  );
  t.deepEqual(
    nl.neighs_.map((n) => n.ip),
    ['10.244.2.0'],
  );
  t.deepEqual(
    nl.fdbs_.map((f) => f.dst),
    ['198.51.100.12'],
  );
  t.deepEqual(repairs, ['stale', 'stale', 'stale']);
});

test('reconcile puts back a deleted route, FDB entry, neighbor and device (same MAC) and counts each fix', async (t) => {
  const { nl, net, repairs } = await setup();
  await net.applySnapshot([peer2, peer3]);
  t.is(await net.reconcile(), 0, 'nothing to do when in sync');
  nl.routes_ = nl.routes_.filter((r) => r.dst !== '10.244.2.0/24');
  nl.fdbs_ = nl.fdbs_.filter((f) => f.dst !== '198.51.100.13');
  nl.neighs_ = nl.neighs_.filter((n) => n.ip !== '10.244.3.0');
  t.is(await net.reconcile(), 3);
  t.deepEqual(repairs, ['route', 'neighbor', 'fdb'], 'peer 2: route; peer 3: neighbor, then FDB');
  const mac = nl.links_.find((l) => l.name === 'flannel.1')!.mac;
  await nl.linkDel(nl.links_.find((l) => l.name === 'flannel.1')!.index);
  t.is(await net.reconcile(), 8, 'device, address and six peer entries');
  const dev = nl.links_.find((l) => l.name === 'flannel.1')!;
  t.is(dev.mac, mac);
  t.true(dev.up);
  t.deepEqual(
    nl.addrs_.filter((a) => a.index === dev.index),
    [{ index: dev.index, ip: '10.244.1.0', prefixLen: 32 }],
  );
  t.is(nl.routes_.length, 2);
  t.is(nl.neighs_.length, 2);
  t.is(nl.fdbs_.length, 2);
  t.is(await net.reconcile(), 0);

  // Someone recreates flannel.1 with the right parameters but another MAC: ours comes back.
  const cur = nl.links_.find((l) => l.name === 'flannel.1')!;
  await nl.linkDel(cur.index);
  await nl.linkAdd({ kind: 'vxlan', name: 'flannel.1', vni: 1, port: 8472, local: '198.51.100.11', parentIndex: 2, mac: 'aa:ff:ff:ff:ff:ff', mtu: 1450 });
  await nl.linkSetUp(nl.links_.find((l) => l.name === 'flannel.1')!.index);
  t.true((await net.reconcile()) > 0);
  t.is(nl.links_.find((l) => l.name === 'flannel.1')!.mac, mac);
});

/** A fake whose writes take a turn of the event loop, counting how many are in flight at once. */
class SlowNetlink extends FakeNetlink {
  inFlight = 0;
  maxInFlight = 0;
  async #slow(fn: () => Promise<void>) {
    this.inFlight++;
    this.maxInFlight = Math.max(this.maxInFlight, this.inFlight);
    await new Promise((r) => setImmediate(r));
    try {
      await fn();
    } finally {
      this.inFlight--;
    }
  }
  override neighReplace(n: Neigh) {
    return this.#slow(() => super.neighReplace(n));
  }
  override fdbReplace(f: Fdb) {
    return this.#slow(() => super.fdbReplace(f));
  }
  override routeReplace(r: Route) {
    return this.#slow(() => super.routeReplace(r));
  }
}

/** A read-only view of `nl` (the second socket) whose neighbor dump waits for `hold`. */
function heldDumps(nl: FakeNetlink, hold: Promise<void>): { view: Netlink; started: Promise<void> } {
  let started!: () => void;
  const p = new Promise<void>((r) => (started = r));
  const view = Object.assign(Object.create(nl) as FakeNetlink, {
    async neighs(index?: number) {
      started();
      await hold;
      return nl.neighs(index);
    },
  });
  return { view, started: p };
}

function peerLease(i: number): Lease {
  const hex = i.toString(16).padStart(2, '0');
  return lease(`10.244.${100 + i}.0/24`, `198.51.100.${100 + i}`, `aa:bb:cc:00:01:${hex}`);
}

test('a bulk snapshot programs different peers side by side, within the limit, each still neighbor -> FDB -> route', async (t) => {
  const nl = new SlowNetlink();
  const net = await VxlanNetwork.open(nl, { device: { name: 'flannel.1', vni: 1, port: 8472, local: '198.51.100.11', parentIndex: 2, mtu: 1450 }, log: silent, concurrency: 4 });
  await net.setSubnet(parseCIDR('10.244.1.0/24'));
  nl.ops = [];
  const leases = Array.from({ length: 20 }, (_, i) => peerLease(i));
  await net.applySnapshot(leases);
  t.is(nl.maxInFlight, 4, 'four peers in flight at once, never more');
  t.is(nl.routes_.length, 20);
  t.is(nl.neighs_.length, 20);
  t.is(nl.fdbs_.length, 20);
  for (const l of leases) {
    const gw = `10.244.${(l.subnet.ip >>> 8) & 255}.0`;
    const mine = nl.ops.filter((o) => o.startsWith(`neigh ${gw} `) || o.startsWith(`route ${gw}/`) || o.includes(` ${l.publicIP}`));
    t.deepEqual(
      mine.map((o) => o.split(' ')[0]),
      ['neigh', 'fdb', 'route'],
      gw,
    );
  }
  t.is(await net.reconcile(), 0);
});

test('a new peer is programmed while a reconcile pass is still reading, and the pass does not count it as drift', async (t) => {
  const nl = new FakeNetlink();
  let release!: () => void;
  const { view, started } = heldDumps(nl, new Promise<void>((r) => (release = r)));
  const repairs: string[] = [];
  const net = await VxlanNetwork.open(nl, {
    device: { name: 'flannel.1', vni: 1, port: 8472, local: '198.51.100.11', parentIndex: 2, mtu: 1450 },
    log: silent,
    dumpNl: view,
    onRepair: (w) => repairs.push(w),
  });
  await net.setSubnet(parseCIDR('10.244.1.0/24'));
  const pass = net.reconcile();
  await started;
  await net.applyPut(peer2);
  t.true(
    nl.routes_.some((r) => r.dst === '10.244.2.0/24'),
    'route in place while the dump is held',
  );
  release();
  t.is(await pass, 0);
  t.deepEqual(repairs, []);
  t.is(await net.reconcile(), 0);
});

test('without a second socket a dump has the socket to itself: a peer update waits for it', async (t) => {
  const nl = new FakeNetlink();
  let release!: () => void;
  const hold = new Promise<void>((r) => (release = r));
  let dumping = false;
  const neighs = nl.neighs.bind(nl);
  nl.neighs = async (index?: number) => {
    dumping = true;
    await hold;
    dumping = false;
    return neighs(index);
  };
  const net = await VxlanNetwork.open(nl, { device: { name: 'flannel.1', vni: 1, port: 8472, local: '198.51.100.11', parentIndex: 2, mtu: 1450 }, log: silent });
  await net.setSubnet(parseCIDR('10.244.1.0/24'));
  const pass = net.reconcile();
  while (!dumping) await new Promise((r) => setImmediate(r));
  let done = false;
  const put = net.applyPut(peer2).then(() => (done = true));
  for (let i = 0; i < 5; i++) await new Promise((r) => setImmediate(r));
  t.false(done);
  t.false(
    nl.ops.some((o) => o.startsWith('neigh 10.244.2.0')),
    'nothing sent during the dump',
  );
  release();
  await put;
  await pass;
  t.true(nl.routes_.some((r) => r.dst === '10.244.2.0/24'));
});

test('events for one peer apply in order even when not awaited; a MAC moving to a new lease keeps its FDB entry', async (t) => {
  const nl = new SlowNetlink();
  const net = await VxlanNetwork.open(nl, { device: { name: 'flannel.1', vni: 1, port: 8472, local: '198.51.100.11', parentIndex: 2, mtu: 1450 }, log: silent });
  await net.setSubnet(parseCIDR('10.244.1.0/24'));
  await net.applySnapshot([peer2, peer3]);
  // peer 2 changes twice and then goes, all before the first change reached the kernel.
  await Promise.all([
    net.applyPut(lease('10.244.2.0/24', '198.51.100.22', 'aa:bb:cc:00:00:22')),
    net.applyPut(lease('10.244.2.0/24', '198.51.100.32', 'aa:bb:cc:00:00:32')),
    net.applyDelete({ subnet: parseCIDR('10.244.2.0/24') }),
  ]);
  t.deepEqual(
    nl.routes_.map((r) => r.dst),
    ['10.244.3.0/24'],
  );
  t.deepEqual(
    nl.fdbs_.map((f) => f.mac),
    ['aa:bb:cc:00:00:03'],
  );
  // peer 3's node took a new subnet (same VTEP MAC and IP) before its old lease expired.
  const moved = lease('10.244.33.0/24', '198.51.100.13', 'aa:bb:cc:00:00:03');
  await net.applyPut(moved);
  await net.applyDelete({ subnet: parseCIDR('10.244.3.0/24') });
  t.deepEqual(
    nl.routes_.map((r) => r.dst),
    ['10.244.33.0/24'],
  );
  t.deepEqual(
    nl.neighs_.map((n) => n.ip),
    ['10.244.33.0'],
  );
  t.deepEqual(nl.fdbs_, [{ index: net.link.index, mac: 'aa:bb:cc:00:00:03', dst: '198.51.100.13' }]);
  t.is(await net.reconcile(), 0);
});

test('a reconcile pass that reads during a bulk add leaves queued peers to their jobs (no double programming, no false repairs)', async (t) => {
  const nl = new SlowNetlink();
  let release!: () => void;
  const { view, started } = heldDumps(nl, new Promise<void>((r) => (release = r)));
  const repairs: string[] = [];
  const net = await VxlanNetwork.open(nl, {
    device: { name: 'flannel.1', vni: 1, port: 8472, local: '198.51.100.11', parentIndex: 2, mtu: 1450 },
    log: silent,
    concurrency: 2,
    dumpNl: view,
    onRepair: (w) => repairs.push(w),
  });
  await net.setSubnet(parseCIDR('10.244.1.0/24'));
  nl.ops = [];
  const pass = net.reconcile();
  await started;
  const puts = Array.from({ length: 10 }, (_, i) => net.applyPut(peerLease(i)));
  await new Promise((r) => setImmediate(r));
  release();
  t.is(await pass, 0);
  t.true(nl.ops.length < 30, 'the pass compared while jobs were still queued');
  await Promise.all(puts);
  t.deepEqual(repairs, []);
  t.is(nl.ops.length, 30, 'three entries per peer, once each');
  t.is(await net.reconcile(), 0);
});

test('a reconcile pass waits for queued peer jobs before it reads', async (t) => {
  const nl = new SlowNetlink();
  let reads = 0;
  let opsAtRead = -1;
  const view = Object.assign(Object.create(nl) as FakeNetlink, {
    async neighs(index?: number) {
      reads++;
      opsAtRead = nl.ops.length;
      return nl.neighs(index);
    },
  });
  const net = await VxlanNetwork.open(nl, { device: { name: 'flannel.1', vni: 1, port: 8472, local: '198.51.100.11', parentIndex: 2, mtu: 1450 }, log: silent, dumpNl: view });
  await net.setSubnet(parseCIDR('10.244.1.0/24'));
  nl.ops = [];
  const puts = Array.from({ length: 10 }, (_, i) => net.applyPut(peerLease(i)));
  t.is(await net.reconcile(), 0);
  t.is(reads, 1);
  t.is(opsAtRead, 30, 'all peers were programmed before the pass read');
  await Promise.all(puts);
});

test('a peer job that fails is retried by a full pass within seconds, not at the next periodic pass', async (t) => {
  const nl = new FakeNetlink();
  const warned: string[] = [];
  const real = nl.routeReplace.bind(nl);
  let failures = 1;
  nl.routeReplace = async (r: Route) => {
    if (failures-- > 0) throw new Error('replace route: Timeout has been reached');
    return real(r);
  };
  const logged = await VxlanNetwork.open(nl, {
    device: { name: 'flannel.1', vni: 1, port: 8472, local: '198.51.100.11', parentIndex: 2, mtu: 1450 },
    log: { ...silent, warn: (m: string) => warned.push(m) },
  });
  await logged.setSubnet(parseCIDR('10.244.1.0/24'));
  t.teardown(() => logged.close());
  await logged.applyPut(peer2);
  t.false(
    nl.routes_.some((r) => r.dst === '10.244.2.0/24'),
    'the first try failed',
  );
  t.regex(warned.join('\n'), /add peer 10\.244\.2\.0\/24: replace route: Timeout has been reached/);
  const start = Date.now();
  while (!nl.routes_.some((r) => r.dst === '10.244.2.0/24') && Date.now() - start < 5000) await new Promise((r) => setTimeout(r, 50));
  // Nothing else runs passes here (no reconcile loop): only the retry can have programmed it.
  t.true(
    nl.routes_.some((r) => r.dst === '10.244.2.0/24'),
    'the retry pass programmed the route',
  );
});

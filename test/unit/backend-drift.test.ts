/**
 * The event path of drift repair (src/backend/vxlan/drift.ts, cache.ts) against the in-memory
 * netlink: events that only echo weftd's own writes cause no work; a deleted, changed or stale
 * entry is repaired from the cache for its key alone; device and address drift and lost
 * notifications ask for a full pass; a cache seeded by a pass's dump keeps the events that
 * arrived while the dump was read.
 */
import test from 'ava';
import { parseCIDR } from '../../src/ip/ipv4.ts';
import type { RtEvent, RtMonitor, RtMonitorHandlers } from '../../src/netlink/monitor.ts';
import { KernelCache } from '../../src/backend/vxlan/cache.ts';
import { VxlanNetwork } from '../../src/backend/vxlan/network.ts';
import type { Lease } from '../../src/subnet/lease.ts';
import { FakeNetlink } from '../helpers/fake-netlink.ts';

const lines: string[] = [];
const log = { error() {}, warn() {}, info() {}, debug: (m: string) => void lines.push(m) };

const lease = (cidr: string, publicIP: string, mac: string): Lease => ({ subnet: parseCIDR(cidr), publicIP, backendType: 'vxlan', backendData: { VNI: 1, VtepMAC: mac } });
const peer2 = lease('198.18.2.0/24', '198.51.100.12', 'aa:bb:cc:00:00:02');
const peer3 = lease('198.18.3.0/24', '198.51.100.13', 'aa:bb:cc:00:00:03');

const tick = (ms: number) => new Promise((r) => setTimeout(r, ms));

/** A VxlanNetwork on the fake kernel, watching through a fake monitor the test feeds by hand. */
async function setup() {
  const nl = new FakeNetlink();
  const repairs: string[] = [];
  let handlers: RtMonitorHandlers | undefined;
  let closed = false;
  const subscription: string[] = [];
  const net = await VxlanNetwork.open(nl, {
    device: { name: 'flannel.1', vni: 1, port: 8472, local: '198.51.100.11', parentIndex: 2, mtu: 1450 },
    log,
    onRepair: (what) => repairs.push(what),
    monitor: (h): RtMonitor => {
      handlers = h;
      return {
        pause: () => void subscription.push('pause'),
        resume: () => void subscription.push('resume'),
        close: () => {
          closed = true;
        },
      };
    },
  });
  await net.setSubnet(parseCIDR('198.18.1.0/24'));
  await net.applySnapshot([peer2, peer3]);
  const ac = new AbortController();
  const watching = net.watch(ac.signal);
  await tick(20); // the seeding pass
  nl.ops = [];
  repairs.length = 0;
  const index = net.link.index;
  const emit = (...evs: RtEvent[]) => handlers!.onEvents(evs);
  const stop = async () => {
    ac.abort();
    await watching;
    return closed;
  };
  return { nl, net, repairs, emit, index, stop, subscription, lost: (e: Error) => handlers!.onLost(e) };
}

test('events that echo what weftd wrote cause no work', async (t) => {
  const { nl, repairs, emit, index, stop } = await setup();
  emit(
    { kind: 'neigh', op: 'new', neigh: { index, ip: '198.18.2.0', mac: 'aa:bb:cc:00:00:02', permanent: true } },
    { kind: 'fdb', op: 'new', fdb: { index, mac: 'aa:bb:cc:00:00:02', dst: '198.51.100.12' } },
    { kind: 'route', op: 'new', route: { dst: '198.18.2.0/24', gateway: '198.18.2.0', index, onlink: true, table: 254, scope: 'universe' } },
    // Other devices' entries and unowned kinds of entries are not ours to judge.
    { kind: 'neigh', op: 'del', neigh: { index: 2, ip: '198.51.100.1', mac: '', permanent: false } },
    { kind: 'neigh', op: 'new', neigh: { index, ip: '198.18.9.9', mac: '02:00:00:00:00:09', permanent: false } },
    { kind: 'route', op: 'del', route: { dst: '198.18.3.0/24', gateway: '198.18.3.0', index: 2, table: 254 } },
  );
  await tick(80);
  t.deepEqual(nl.ops, []);
  t.deepEqual(repairs, []);
  t.true(await stop(), 'the monitor is closed when the signal aborts');
});

test('a deleted route is put back from the cache for its peer only, without a dump', async (t) => {
  const { nl, repairs, emit, index, stop } = await setup();
  let dumps = 0;
  const routes = nl.routes.bind(nl);
  nl.routes = async () => {
    dumps++;
    return routes();
  };
  nl.routes_ = nl.routes_.filter((r) => r.dst !== '198.18.2.0/24');
  emit({ kind: 'route', op: 'del', route: { dst: '198.18.2.0/24', gateway: '198.18.2.0', index, onlink: true, table: 254, scope: 'universe' } });
  await tick(80);
  t.deepEqual(nl.ops, ['route 198.18.2.0/24 via 198.18.2.0 onlink']);
  t.deepEqual(repairs, ['route']);
  t.is(dumps, 0, 'planned from the cache');
  await stop();
});

test('a neighbor changed to another MAC, a deleted FDB entry and a stale route: each repaired once, a burst planned together', async (t) => {
  const { nl, repairs, emit, index, stop } = await setup();
  nl.routes_.push({ dst: '198.18.7.0/24', gateway: '198.18.7.0', index, onlink: true });
  emit(
    { kind: 'neigh', op: 'new', neigh: { index, ip: '198.18.3.0', mac: '02:00:5e:00:53:99', permanent: true } },
    { kind: 'fdb', op: 'del', fdb: { index, mac: 'aa:bb:cc:00:00:02', dst: '198.51.100.12' } },
    { kind: 'route', op: 'new', route: { dst: '198.18.7.0/24', gateway: '198.18.7.0', index, onlink: true, table: 254, scope: 'universe' } },
  );
  await tick(80);
  t.deepEqual(nl.ops.sort(), ['fdb aa:bb:cc:00:00:02 198.51.100.12', 'neigh 198.18.3.0 aa:bb:cc:00:00:03 permanent', 'route del 198.18.7.0/24'].sort());
  t.deepEqual(repairs.sort(), ['fdb', 'neighbor', 'stale']);
  t.true(lines.some((l) => /kernel drift on 3 key\(s\)/.test(l)));
  await stop();
});

test('a key a peer job is working on is left to the job', async (t) => {
  const { nl, net, repairs, emit, index, stop } = await setup();
  // The lease changes (a job reprograms the peer) while the old route's deletion is announced.
  const job = net.applyPut(lease('198.18.2.0/24', '198.51.100.22', 'aa:bb:cc:00:00:22'));
  emit({ kind: 'route', op: 'del', route: { dst: '198.18.2.0/24', gateway: '198.18.2.0', index, table: 254 } });
  await job;
  await tick(80);
  t.deepEqual(repairs, [], 'no repair: the job wrote the route after the event');
  t.true(nl.ops.includes('route 198.18.2.0/24 via 198.18.2.0 onlink'));
  await stop();
});

test('device and address drift and lost notifications run a full pass', async (t) => {
  const { nl, net, repairs, emit, index, lost, stop } = await setup();
  const dev = nl.links_.find((l) => l.index === index)!;
  // Unchanged device: nothing.
  emit({ kind: 'link', op: 'new', link: { ...dev } });
  await tick(40);
  t.deepEqual(repairs, []);
  // Set down: a pass brings it up.
  dev.up = false;
  emit({ kind: 'link', op: 'new', link: { ...dev } });
  await tick(40);
  t.deepEqual(repairs, ['device']);
  t.true(dev.up);
  // Our address removed: a pass puts it back.
  nl.addrs_ = nl.addrs_.filter((a) => a.index !== index);
  emit({ kind: 'addr', op: 'del', addr: { index, ip: '198.18.1.0', prefixLen: 32 } });
  await tick(40);
  t.deepEqual(repairs, ['device', 'address']);
  // The device deleted: recreated with every peer.
  await nl.linkDel(index);
  emit({ kind: 'link', op: 'del', link: { ...dev } });
  await tick(60);
  t.not(net.link.index, index);
  t.is(nl.routes_.filter((r) => r.index === net.link.index).length, 2);
  // Lost notifications: the cache is void until a full pass, which runs.
  repairs.length = 0;
  nl.neighs_ = nl.neighs_.filter((n) => n.ip !== '198.18.3.0');
  lost(new Error('ENOBUFS'));
  await tick(40);
  t.deepEqual(repairs, ['neighbor']);
  await stop();
});

test('the cache keeps events that arrive while its dump is read, and is void after lost events until the next dump', (t) => {
  const c = new KernelCache();
  const route = (dst: string) => ({ dst, gateway: dst.split('/')[0], index: 7, onlink: true, table: 254 });
  c.beginDump();
  // Arrives during the dump: the dump may or may not show it.
  c.apply({ kind: 'route', op: 'del', route: route('198.18.2.0/24') });
  c.apply({ kind: 'route', op: 'new', route: route('198.18.4.0/24') });
  c.endDump(
    {
      neighs: [],
      fdbs: [
        { index: 7, mac: 'aa:bb:cc:00:00:02', dst: '198.51.100.12' },
        { index: 8, mac: 'x', dst: 'y' },
      ],
      routes: [route('198.18.2.0/24'), route('198.18.3.0/24')],
    },
    7,
  );
  t.true(c.valid);
  t.deepEqual(
    c
      .dump()
      .routes.map((r) => r.dst)
      .sort(),
    ['198.18.3.0/24', '198.18.4.0/24'],
  );
  t.deepEqual(c.dump().fdbs, [{ index: 7, mac: 'aa:bb:cc:00:00:02', dst: '198.51.100.12' }], 'other devices are not kept');
  // Lost events during a dump: that dump cannot make it valid.
  c.invalidate();
  c.beginDump();
  c.invalidate();
  c.endDump({ neighs: [], fdbs: [], routes: [] }, 7);
  t.false(c.valid);
  t.is(c.route('198.18.3.0/24'), undefined);
  c.beginDump();
  c.endDump({ neighs: [], fdbs: [], routes: [route('198.18.5.0/24')] }, 7);
  t.true(c.valid);
  t.truthy(c.route('198.18.5.0/24'));
});

test('a bulk of peer jobs pauses the subscription; once they are done it resumes and a full pass reads the kernel again', async (t) => {
  const { nl, net, emit, index, subscription, stop } = await setup();
  let dumps = 0;
  const routes = nl.routes.bind(nl);
  nl.routes = async () => {
    dumps++;
    return routes();
  };
  const bulk = Array.from({ length: 40 }, (_, i) => net.applyPut(lease(`198.18.${10 + i}.0/24`, `198.51.100.${100 + i}`, `aa:bb:cc:00:01:${(16 + i).toString(16)}`)));
  // The first of their notifications arrives while most jobs are still queued.
  emit({ kind: 'neigh', op: 'new', neigh: { index, ip: '198.18.10.0', mac: 'aa:bb:cc:00:01:10', permanent: true } });
  t.deepEqual(subscription, ['pause']);
  // Drift meanwhile goes unseen by the event path...
  nl.routes_ = nl.routes_.filter((r) => r.dst !== '198.18.3.0/24');
  emit({ kind: 'route', op: 'del', route: { dst: '198.18.3.0/24', gateway: '198.18.3.0', index, table: 254 } });
  await Promise.all(bulk);
  await tick(60);
  // ...and is found by the full pass that follows.
  t.deepEqual(subscription, ['pause', 'resume']);
  t.is(dumps, 1);
  t.true(nl.routes_.some((r) => r.dst === '198.18.3.0/24'));
  t.is(nl.routes_.filter((r) => r.index === index).length, 42);
  // The cache is valid again: the event path repairs on its own.
  nl.routes_ = nl.routes_.filter((r) => r.dst !== '198.18.2.0/24');
  emit({ kind: 'route', op: 'del', route: { dst: '198.18.2.0/24', gateway: '198.18.2.0', index, table: 254 } });
  await tick(60);
  t.is(dumps, 1);
  t.true(nl.routes_.some((r) => r.dst === '198.18.2.0/24'));
  await stop();
});

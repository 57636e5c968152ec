/**
 * The vxlan backend's pure parts: the reconcile planner against plain dumps, the expected-state
 * rules it judges by, and the keyed job queue and socket lock the executor runs on.
 */
import test from 'ava';
import { parseCIDR } from '../../src/ip/ipv4.ts';
import type { Link } from '../../src/netlink/index.ts';
import { deviceFaults, expectedDevice, fdbState, peerRoute } from '../../src/backend/vxlan/expected.ts';
import { KeyedJobQueue } from '../../src/backend/vxlan/jobqueue.ts';
import { PeerSet, peerFromLease, type Peer } from '../../src/backend/vxlan/peers.ts';
import { addressNeedsRepair, deviceNeedsRepair, isStale, planPeers, staleKey, type Dump } from '../../src/backend/vxlan/plan.ts';
import { SocketLock } from '../../src/backend/vxlan/socketlock.ts';

const DEV = 7;

function peer(n: number): Peer {
  const p = peerFromLease({ subnet: parseCIDR(`198.18.${n}.0/24`), publicIP: `198.51.100.${n}`, backendType: 'vxlan', backendData: { VNI: 1, VtepMAC: `0a:00:00:00:00:0${n}` } }, 1);
  if ('skip' in p) throw new Error(p.skip);
  return p;
}

function wanted(...peers: Peer[]): PeerSet {
  const s = new PeerSet();
  for (const p of peers) s.set(`198.18.${p.gateway.split('.')[2]}.0/24`, p);
  return s;
}

/** What the kernel holds when `peers` are all programmed on DEV. */
function inSync(...peers: Peer[]): { neighs: Dump['neighs'][number][]; fdbs: Dump['fdbs'][number][]; routes: Dump['routes'][number][] } {
  return {
    neighs: peers.map((p) => ({ index: DEV, ip: p.gateway, mac: p.mac, permanent: true })),
    fdbs: peers.map((p) => ({ index: DEV, mac: p.mac, dst: p.publicIP })),
    routes: peers.map((p) => peerRoute(p, DEV)),
  };
}

test('planPeers: a dump that matches the wanted peers plans nothing', (t) => {
  const [a, b] = [peer(2), peer(3)];
  t.deepEqual(planPeers(wanted(a, b), inSync(a, b), { index: DEV }), { repairs: [], stale: [] });
});

test('planPeers: missing and wrong entries become repairs, in wanted order and programming order', (t) => {
  const [a, b, c] = [peer(2), peer(3), peer(4)];
  const dump = inSync(a, b, c);
  dump.routes = dump.routes.filter((r) => r.dst !== '198.18.2.0/24');
  dump.neighs = dump.neighs.map((n) => (n.ip === b.gateway ? { ...n, permanent: false } : n));
  dump.fdbs = dump.fdbs.map((f) => (f.mac === b.mac ? { ...f, dst: '198.51.100.99' } : f));
  dump.routes = dump.routes.map((r) => (r.dst === '198.18.4.0/24' ? { ...r, onlink: false } : r));
  const plan = planPeers(wanted(a, b, c), dump, { index: DEV });
  t.deepEqual(
    plan.repairs.map((r) => [r.id, r.needs]),
    [
      ['198.18.2.0/24', ['route']],
      ['198.18.3.0/24', ['neighbor', 'fdb']],
      ['198.18.4.0/24', ['route']],
    ],
  );
  t.is(plan.repairs[1]!.peer, b);
  t.deepEqual(plan.stale, [{ kind: 'fdb', fdb: { index: DEV, mac: b.mac, dst: '198.51.100.99' } }], "b's FDB entry to an old address is stale");
});

test('planPeers: only weft-made entries nobody wants are stale, and only on our device', (t) => {
  const a = peer(2);
  const gone = peer(9);
  const dump = inSync(a, gone);
  dump.neighs.push({ index: DEV, ip: '198.18.8.0', mac: '0a:00:00:00:00:08', permanent: false });
  dump.routes.push({ dst: '198.18.8.0/24', index: DEV, scope: 'link' });
  dump.routes.push({ dst: '198.18.7.0/24', gateway: '198.51.100.1', index: 2 });
  dump.neighs.push({ index: 2, ip: '198.18.6.0', mac: '0a:00:00:00:00:06', permanent: true });
  dump.fdbs.push({ index: 3, mac: '0a:00:00:00:00:05', dst: '198.51.100.5' });
  const plan = planPeers(wanted(a), dump, { index: DEV });
  t.deepEqual(plan.repairs, []);
  t.deepEqual(
    plan.stale.map((s) => `${s.kind} ${staleKey(s)}`),
    ['neighbor 198.18.9.0', `fdb ${gone.mac}`, 'route 198.18.9.0'],
    "a kernel-made neighbor, a device route and other devices' entries are left alone",
  );
});

test('planPeers: entries on other devices do not satisfy a peer', (t) => {
  const a = peer(2);
  const dump = inSync(a);
  const elsewhere = { neighs: dump.neighs.map((n) => ({ ...n, index: 2 })), fdbs: dump.fdbs.map((f) => ({ ...f, index: 2 })), routes: dump.routes.map((r) => ({ ...r, index: 2 })) };
  t.deepEqual(
    planPeers(wanted(a), elsewhere, { index: DEV }).repairs.map((r) => r.needs),
    [['neighbor', 'fdb', 'route']],
  );
});

test('planPeers: keys that are not settled are left to their jobs', (t) => {
  const [a, b] = [peer(2), peer(3)];
  const gone = peer(9);
  const dump = inSync(gone);
  const busy = new Set([a.mac, gone.gateway]);
  const plan = planPeers(wanted(a, b), dump, { index: DEV, settled: (k) => !busy.has(k) });
  t.deepEqual(
    plan.repairs.map((r) => r.id),
    ['198.18.3.0/24'],
    'a is skipped: a job holds its MAC',
  );
  t.deepEqual(
    plan.stale.map((s) => s.kind),
    ['fdb'],
    'the stale neighbor and route hang off a busy gateway',
  );
});

test('isStale re-checks against the set as it is now: a peer that claimed the entry keeps it', (t) => {
  const a = peer(2);
  const set = wanted();
  const s = { kind: 'route' as const, route: peerRoute(a, DEV) };
  t.true(isStale(set, s));
  set.set('198.18.2.0/24', a);
  t.false(isStale(set, s));
  t.false(isStale(set, { kind: 'fdb', fdb: { index: DEV, mac: a.mac, dst: a.publicIP } }));
  t.true(isStale(set, { kind: 'fdb', fdb: { index: DEV, mac: a.mac, dst: '198.51.100.99' } }));
});

test("fdbState: several destinations for one MAC are fine when one is the peer's", (t) => {
  const a = peer(2);
  t.is(fdbState([], a), 'missing');
  t.is(fdbState([{ index: DEV, mac: a.mac, dst: '198.51.100.99' }], a), 'wrong');
  t.is(
    fdbState(
      [
        { index: DEV, mac: a.mac, dst: '198.51.100.99' },
        { index: DEV, mac: a.mac, dst: a.publicIP },
      ],
      a,
    ),
    'ok',
  );
});

test('the device: expected spec from the external link; any fault or a new index needs a repair', (t) => {
  const spec = expectedDevice({ index: 2, mtu: 9000 }, { vni: 4, port: 8472, local: '198.51.100.11' });
  t.deepEqual(spec, { name: 'flannel.4', vni: 4, port: 8472, local: '198.51.100.11', parentIndex: 2, mtu: 8950 });
  const link: Link = {
    index: DEV,
    name: 'flannel.4',
    kind: 'vxlan',
    mtu: 8950,
    mac: '0a:00:00:00:00:01',
    up: true,
    vxlan: { vni: 4, port: 8472, local: '198.51.100.11', parentIndex: 2, learning: false },
  };
  const want = { ...spec, mac: link.mac };
  t.false(deviceNeedsRepair({ found: link, index: DEV, want }));
  t.true(deviceNeedsRepair({ found: undefined, index: DEV, want }));
  t.true(deviceNeedsRepair({ found: { ...link, index: DEV + 1 }, index: DEV, want }), 'recreated by someone else');
  t.true(deviceNeedsRepair({ found: { ...link, mtu: 1500 }, index: DEV, want }));
  t.deepEqual(
    deviceFaults({ ...link, up: false, mtu: 1500, mac: '0a:ff:00:00:00:01' }, want).map((f) => f.field),
    ['mac', 'mtu', 'down'],
  );
  t.deepEqual(deviceFaults({ ...link, kind: 'bridge', vxlan: undefined }, { vni: 4, port: 8472 }), [{ field: 'kind', found: 'bridge' }]);
});

test('addressNeedsRepair: exactly the subnet network address /32', (t) => {
  const subnet = parseCIDR('198.18.1.0/24');
  t.false(addressNeedsRepair([{ index: DEV, ip: '198.18.1.0', prefixLen: 32 }], subnet));
  t.true(addressNeedsRepair([], subnet));
  t.true(addressNeedsRepair([{ index: DEV, ip: '198.18.1.0', prefixLen: 24 }], subnet));
  t.true(
    addressNeedsRepair(
      [
        { index: DEV, ip: '198.18.1.0', prefixLen: 32 },
        { index: DEV, ip: '198.18.5.0', prefixLen: 32 },
      ],
      subnet,
    ),
    'left from an older subnet',
  );
});

const tick = () => new Promise<void>((r) => setImmediate(r));

function deferred(): { promise: Promise<void>; resolve: () => void } {
  let resolve!: () => void;
  const promise = new Promise<void>((r) => (resolve = r));
  return { promise, resolve };
}

test('KeyedJobQueue: one key in order (also after a failure), other keys side by side within the lock', async (t) => {
  const q = new KeyedJobQueue(new SocketLock(2));
  const log: string[] = [];
  const gate = deferred();
  let running = 0;
  let most = 0;
  const job =
    (name: string, fail = false) =>
    async () => {
      running++;
      most = Math.max(most, running);
      log.push(`start ${name}`);
      await gate.promise;
      running--;
      log.push(`end ${name}`);
      if (fail) throw new Error(name);
    };
  const a1 = q.run(['a'], job('a1', true));
  const a2 = q.run(['a', 'x'], job('a2'));
  const b = q.run(['b'], job('b'));
  const c = q.run(['c'], job('c'));
  await tick();
  t.deepEqual(log, ['start a1', 'start b'], 'a2 waits for a1; c waits for a slot');
  t.is(q.pending, 4);
  gate.resolve();
  await t.throwsAsync(a1, { message: 'a1' });
  await Promise.all([a2, b, c]);
  t.true(log.indexOf('start a2') > log.indexOf('end a1'));
  t.is(most, 2);
  t.is(q.pending, 0);
  t.throws(() => q.run([], async () => undefined), { instanceOf: RangeError });
});

test('KeyedJobQueue.watch: a key is unsettled while a job has it and after one ran on it', async (t) => {
  const q = new KeyedJobQueue(new SocketLock(1));
  const hold = deferred();
  const queued = q.run(['gw', 'mac'], () => hold.promise);
  const w = q.watch();
  t.false(w.settled('gw'));
  t.false(w.settled('mac'));
  t.true(w.settled('other'));
  hold.resolve();
  await queued;
  t.false(w.settled('gw'), 'finished during the watch: what was read may be older');
  const fresh = q.watch();
  t.true(fresh.settled('gw'));
  w.close();
  await q.run(['later'], async () => undefined);
  t.true(w.settled('later'), 'a closed watch records nothing');
  t.false(fresh.settled('later'));
  fresh.close();
});

test('KeyedJobQueue.idle: resolves when the queue drains, or after maxMs', async (t) => {
  const q = new KeyedJobQueue(new SocketLock(1));
  await q.idle(10_000);
  const hold = deferred();
  const job = q.run(['a'], () => hold.promise);
  let idle = false;
  const waiting = q.idle(10_000).then(() => (idle = true));
  await tick();
  t.false(idle);
  hold.resolve();
  await job;
  await waiting;
  t.true(idle);
  let slowDone = false;
  const slow = q.run(['b'], async () => {
    await new Promise<void>((r) => setTimeout(r, 500));
    slowDone = true;
  });
  const started = Date.now();
  await q.idle(30);
  t.true(Date.now() - started >= 25);
  t.false(slowDone, 'gave up waiting before the job finished');
  await slow;
});

test('SocketLock: an exclusive holder waits for shared ones, and later arrivals wait behind it', async (t) => {
  const lock = new SocketLock(3);
  const log: string[] = [];
  const hold = deferred();
  const s1 = lock.shared(async () => {
    log.push('s1');
    await hold.promise;
  });
  const x = lock.exclusive(async () => {
    log.push(`x alone=${lock.active === 1}`);
  });
  const s2 = lock.shared(async () => {
    log.push('s2');
  });
  await tick();
  t.deepEqual(log, ['s1'], 's2 does not overtake the waiting exclusive holder');
  hold.resolve();
  await Promise.all([s1, x, s2]);
  t.deepEqual(log, ['s1', 'x alone=true', 's2']);
  t.throws(() => new SocketLock(0), { instanceOf: RangeError });
});

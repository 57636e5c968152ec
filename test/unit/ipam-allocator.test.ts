import test from 'ava';
import { allocate, candidates, capacity, DuplicateAllocationError, hasFree, NoFreeAddressError, pickAddress, type Range, type Store } from '../../src/ipam/index.ts';
import { FakeStore } from '../../src/ipam/fake.ts';
import { formatIPv4, parseCIDR, parseIPv4 } from '../../src/ip/ipv4.ts';

const range = (cidr: string, gw: string): Range => ({ subnet: parseCIDR(cidr), gateway: parseIPv4(gw) });
const r24 = range('198.18.1.0/24', '198.18.1.1');
const ips = (xs: Iterable<number>) => [...xs].map(formatIPv4);

test('candidates skip network, gateway and broadcast', (t) => {
  const all = ips(candidates(r24));
  t.is(all.length, 253);
  t.is(all[0], '198.18.1.2');
  t.is(all.at(-1), '198.18.1.254');
  t.false(all.includes('198.18.1.0'));
  t.false(all.includes('198.18.1.1'));
  t.false(all.includes('198.18.1.255'));
  t.is(capacity(r24), 253);
  // A gateway in the middle of the range is skipped too.
  const mid = range('198.18.2.0/29', '198.18.2.4');
  t.deepEqual(ips(candidates(mid)), ['198.18.2.1', '198.18.2.2', '198.18.2.3', '198.18.2.5', '198.18.2.6']);
  t.is(capacity(mid), 5);
});

test('candidates are round-robin after the last reserved address and wrap', (t) => {
  t.deepEqual(ips(candidates(r24, parseIPv4('198.18.1.10'))).slice(0, 2), ['198.18.1.11', '198.18.1.12']);
  const wrapped = ips(candidates(r24, parseIPv4('198.18.1.253')));
  t.deepEqual(wrapped.slice(0, 3), ['198.18.1.254', '198.18.1.2', '198.18.1.3']);
  t.is(wrapped.at(-1), '198.18.1.253');
  t.is(wrapped.length, 253);
  t.is(ips(candidates(r24, parseIPv4('198.18.1.254')))[0], '198.18.1.2', 'last address wraps to the first');
  t.is(ips(candidates(r24, parseIPv4('203.0.113.7')))[0], '198.18.1.2', 'a hint outside the range is ignored');
});

test('pickAddress skips taken addresses and reports exhaustion as undefined', (t) => {
  const taken = new Set([parseIPv4('198.18.1.2'), parseIPv4('198.18.1.3')]);
  t.is(formatIPv4(pickAddress(r24, taken)!), '198.18.1.4');
  const tiny = range('198.18.3.0/30', '198.18.3.1');
  t.is(formatIPv4(pickAddress(tiny, new Set())!), '198.18.3.2');
  t.is(pickAddress(tiny, new Set([parseIPv4('198.18.3.2')])), undefined);
});

test('allocate: round-robin through the store, wrap, reuse after release', async (t) => {
  const store = new FakeStore() satisfies Store;
  const a = await allocate(store, r24, { containerID: 'a', ifname: 'eth0' });
  const b = await allocate(store, r24, { containerID: 'b', ifname: 'eth0' });
  t.deepEqual(ips([a, b]), ['198.18.1.2', '198.18.1.3']);
  await store.release(a);
  // Round-robin: the freed .2 is not reused until the range wraps.
  t.is(formatIPv4(await allocate(store, r24, { containerID: 'c', ifname: 'eth0' })), '198.18.1.4');
  store.last = parseIPv4('198.18.1.254');
  t.is(formatIPv4(await allocate(store, r24, { containerID: 'd', ifname: 'eth0' })), '198.18.1.2');
  t.is(formatIPv4(store.last), '198.18.1.2');
});

test('allocate refuses a second address for the same (containerID, ifname)', async (t) => {
  const store = new FakeStore();
  await allocate(store, r24, { containerID: 'a', ifname: 'eth0' });
  await t.throwsAsync(allocate(store, r24, { containerID: 'a', ifname: 'eth0' }), { instanceOf: DuplicateAllocationError });
  t.is(formatIPv4(await allocate(store, r24, { containerID: 'a', ifname: 'eth1' })), '198.18.1.3');
});

test('allocate moves on when a claim loses a race', async (t) => {
  const store = new FakeStore();
  // Someone else claims .2 between our listing and our claim.
  const reserve = store.reserve.bind(store);
  let raced = false;
  store.reserve = async (ip, owner) => {
    if (!raced) {
      raced = true;
      await reserve(ip, { containerID: 'other', ifname: 'eth0' });
    }
    return reserve(ip, owner);
  };
  t.is(formatIPv4(await allocate(store, r24, { containerID: 'me', ifname: 'eth0' })), '198.18.1.3');
});

test('exhaustion: "no free address in <subnet>"', async (t) => {
  const store = new FakeStore();
  const small = range('198.18.1.0/29', '198.18.1.1');
  for (let i = 0; i < 5; i++) await allocate(store, small, { containerID: `c${i}`, ifname: 'eth0' });
  t.false(await hasFree(store, small));
  const err = await t.throwsAsync(allocate(store, small, { containerID: 'x', ifname: 'eth0' }), { instanceOf: NoFreeAddressError });
  t.is(err?.message, 'no free address in 198.18.1.0/29');
  t.is(new NoFreeAddressError(parseCIDR('198.18.1.1/24')).message, 'no free address in 198.18.1.0/24');
  await store.releaseByOwner({ containerID: 'c3', ifname: 'eth0' });
  t.true(await hasFree(store, small));
});

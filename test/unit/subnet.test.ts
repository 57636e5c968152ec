import test from 'ava';
import { formatIPv4, parseCIDR } from '../../src/ip/ipv4.ts';
import { chooseSubnet, OutOfSubnetsError } from '../../src/subnet/choose.ts';
import { isRetryable } from '../../src/core/errors.ts';
import { constantDelay } from '../../src/core/retry.ts';
import { FakeClock } from '../helpers/clock.ts';
import { ConfigError, parseNetworkConfig } from '../../src/subnet/config.ts';
import { diffLeases } from '../../src/subnet/diff.ts';
import { EtcdUnavailableError, leaseFromKv } from '../../src/subnet/etcd.ts';
import { encodeLeaseValue, parseLeaseValue, parseSubnetKey, subnetKey, type Lease } from '../../src/subnet/lease.ts';
import { renewDelay, Renewer } from '../../src/subnet/renew.ts';
import { LeaseTracker, resyncLoop } from '../../src/subnet/resync.ts';
import { LeaseLostError, type LeaseEvent } from '../../src/subnet/manager.ts';

const cfg = (o: object) => parseNetworkConfig(JSON.stringify(o));

test('config: flannel defaults for a /16', (t) => {
  const c = cfg({ Network: '10.244.0.0/16' });
  t.is(c.subnetLen, 24);
  t.is(formatIPv4(c.subnetMin), '10.244.1.0');
  t.is(formatIPv4(c.subnetMax), '10.244.255.0');
  t.deepEqual(c.backend, { type: 'vxlan', vni: 1, port: 8472 });
});

test('config: small networks get prefix + 2, explicit values are kept', (t) => {
  const small = cfg({ Network: '198.18.0.0/24' });
  t.is(small.subnetLen, 26);
  t.is(formatIPv4(small.subnetMin), '198.18.0.64');
  t.is(formatIPv4(small.subnetMax), '198.18.0.192');
  const c = cfg({ Network: '198.18.0.0/16', SubnetLen: 25, SubnetMin: '198.18.4.0', SubnetMax: '198.18.9.128', Backend: { Type: 'vxlan', VNI: 7, Port: 4789 } });
  t.is(c.subnetLen, 25);
  t.is(formatIPv4(c.subnetMin), '198.18.4.0');
  t.is(formatIPv4(c.subnetMax), '198.18.9.128');
  t.deepEqual(c.backend, { type: 'vxlan', vni: 7, port: 4789 });
});

test('config: invalid input is rejected with a message naming the field', (t) => {
  const bad: Array<[string, RegExp]> = [
    ['not json', /not valid JSON/],
    ['[]', /must be a JSON object/],
    ['{}', /"Network" is required/],
    ['{"Network":"198.18.0.0/33"}', /"Network" is not a valid IPv4 CIDR/],
    ['{"Network":"198.18.1.0/16"}', /host bits set \(did you mean 198\.18\.0\.0\/16\?\)/],
    ['{"Network":"198.18.0.0/16","SubnetLen":16}', /"SubnetLen" must be an integer between 17 and 30/],
    ['{"Network":"198.18.0.0/16","SubnetLen":"24"}', /"SubnetLen" must be an integer/],
    ['{"Network":"198.18.0.0/16","SubnetMin":"198.19.0.0"}', /"SubnetMin" 198\.19\.0\.0 is outside "Network"/],
    ['{"Network":"198.18.0.0/16","SubnetMax":"198.18.3.7"}', /"SubnetMax" 198\.18\.3\.7 is not aligned to \/24/],
    ['{"Network":"198.18.0.0/16","SubnetMin":"198.18.9.0","SubnetMax":"198.18.3.0"}', /"SubnetMin" is greater than "SubnetMax"/],
    ['{"Network":"198.18.0.0/16","Backend":{"Type":"host-gw"}}', /backend type "host-gw" is not supported/],
    ['{"Network":"198.18.0.0/16","Backend":{"Type":"vxlan","VNI":16777216}}', /"VNI" must be an integer between 1 and 16777215/],
    ['{"Network":"198.18.0.0/16","Backend":{"Type":"vxlan","Port":70000}}', /"Port" must be an integer between 1 and 65535/],
    ['{"Network":"198.18.0.0/16","EnableIPv6":true}', /IPv6/],
  ];
  for (const [text, re] of bad) {
    const err = t.throws(() => parseNetworkConfig(text), { instanceOf: ConfigError }, text);
    t.regex(err!.message, re, text);
  }
});

test("lease keys and values round-trip in flannel's format", (t) => {
  const subnet = parseCIDR('10.244.1.0/24');
  t.is(subnetKey('/coreos.com/network', subnet), '/coreos.com/network/subnets/10.244.1.0-24');
  t.is(subnetKey('/coreos.com/network/', subnet), '/coreos.com/network/subnets/10.244.1.0-24');
  t.deepEqual(parseSubnetKey('/coreos.com/network/subnets/10.244.1.0-24'), subnet);
  t.is(parseSubnetKey('/coreos.com/network/subnets/10.244.1.7-24'), undefined, 'host bits');
  t.is(parseSubnetKey('/coreos.com/network/config'), undefined);
  const value = encodeLeaseValue({ publicIP: '198.51.100.11', backendType: 'vxlan', backendData: { VNI: 1, VtepMAC: 'aa:bb:cc:dd:ee:ff' } });
  t.is(value, '{"PublicIP":"198.51.100.11","BackendType":"vxlan","BackendData":{"VNI":1,"VtepMAC":"aa:bb:cc:dd:ee:ff"}}');
  t.deepEqual(parseLeaseValue(value), { publicIP: '198.51.100.11', backendType: 'vxlan', backendData: { VNI: 1, VtepMAC: 'aa:bb:cc:dd:ee:ff' } });
  t.throws(() => parseLeaseValue('{"PublicIP":"nope"}'), { message: /PublicIP/ });
  const kv = (key: string, value: string) => ({ key: Buffer.from(key), value: Buffer.from(value), mod_revision: '5' });
  t.like(leaseFromKv(kv('/p/subnets/10.244.1.0-24', value)), { publicIP: '198.51.100.11', modRevision: '5' });
  t.is((leaseFromKv({ ...kv('/p/subnets/10.244.1.0-24', value), lease: '7587' }) as Lease).etcdLeaseId, '7587');
  t.is((leaseFromKv({ ...kv('/p/subnets/10.244.1.0-24', value), lease: '0' }) as Lease).etcdLeaseId, undefined);
  t.regex((leaseFromKv(kv('/p/subnets/10.244.1.0-24', 'garbage')) as { skip: string }).skip, /lease "\/p\/subnets\/10\.244\.1\.0-24": lease value is not JSON/);
  t.regex((leaseFromKv(kv('/p/subnets/junk', value)) as { skip: string }).skip, /not a subnet key/);
});

const lease = (cidr: string, publicIP: string, mac = 'aa:bb:cc:dd:ee:01'): Lease => ({
  subnet: parseCIDR(cidr),
  publicIP,
  backendType: 'vxlan',
  backendData: { VNI: 1, VtepMAC: mac },
});

test('choose: our own lease (same PublicIP) first', (t) => {
  const config = cfg({ Network: '10.244.0.0/16' });
  const mine = lease('10.244.7.0/24', '198.51.100.11');
  const c = chooseSubnet({ config, leases: [lease('10.244.3.0/24', '198.51.100.12'), mine], publicIP: '198.51.100.11', previous: parseCIDR('10.244.9.0/24') });
  t.deepEqual(c, { kind: 'existing', lease: mine });
});

test('choose: the previous subnet when free, else a random free one', (t) => {
  const config = cfg({ Network: '10.244.0.0/16' });
  const others = [lease('10.244.3.0/24', '198.51.100.12')];
  t.deepEqual(chooseSubnet({ config, leases: others, publicIP: '198.51.100.11', previous: parseCIDR('10.244.9.0/24') }), {
    kind: 'new',
    subnet: parseCIDR('10.244.9.0/24'),
    reason: 'previous',
  });
  const taken = chooseSubnet({ config, leases: others, publicIP: '198.51.100.11', previous: parseCIDR('10.244.3.0/24'), random: () => 0 });
  t.deepEqual(taken, { kind: 'new', subnet: parseCIDR('10.244.1.0/24'), reason: 'random' });
  const outside = chooseSubnet({ config, leases: [], publicIP: '198.51.100.11', previous: parseCIDR('10.245.3.0/24'), random: () => 0.999 });
  t.deepEqual(outside, { kind: 'new', subnet: parseCIDR('10.244.255.0/24'), reason: 'random' });
});

test('choose: our previous subnet held under an old public IP with our VTEP MAC is ours (node IP changed)', (t) => {
  const config = cfg({ Network: '10.244.0.0/16' });
  const old = lease('10.244.9.0/24', '198.51.100.50', 'aa:bb:cc:dd:ee:09');
  const c = chooseSubnet({ config, leases: [old], publicIP: '198.51.100.11', previous: parseCIDR('10.244.9.0/24'), backendData: { VNI: 1, VtepMAC: 'aa:bb:cc:dd:ee:09' } });
  t.deepEqual(c, { kind: 'existing', lease: old });
  const other = chooseSubnet({ config, leases: [old], publicIP: '198.51.100.11', previous: parseCIDR('10.244.9.0/24'), backendData: { VNI: 1, VtepMAC: 'aa:bb:cc:dd:ee:10' }, random: () => 0 });
  t.deepEqual(other, { kind: 'new', subnet: parseCIDR('10.244.1.0/24'), reason: 'random' }, "someone else's lease is left alone");
});

test('choose: random picks only free subnets inside SubnetMin..SubnetMax', (t) => {
  const config = cfg({ Network: '198.18.0.0/16', SubnetMin: '198.18.1.0', SubnetMax: '198.18.3.0' });
  const leases = [lease('198.18.1.0/24', '198.51.100.12'), lease('198.18.3.0/24', '198.51.100.13')];
  for (const r of [0, 0.5, 0.99]) {
    t.deepEqual(chooseSubnet({ config, leases, publicIP: '198.51.100.11', random: () => r }), { kind: 'new', subnet: parseCIDR('198.18.2.0/24'), reason: 'random' });
  }
});

test('choose: out of subnets names the network', (t) => {
  const config = cfg({ Network: '198.18.0.0/16', SubnetMin: '198.18.1.0', SubnetMax: '198.18.2.0' });
  const leases = [lease('198.18.1.0/24', '198.51.100.12'), lease('198.18.2.0/24', '198.51.100.13')];
  const err = t.throws(() => chooseSubnet({ config, leases, publicIP: '198.51.100.11' }), { instanceOf: OutOfSubnetsError });
  t.is(err!.message, 'out of subnets: all 2 subnets of network 198.18.0.0/16 are leased');
  t.is(err!.network, '198.18.0.0/16');
});

test('diff: added, changed (MAC or IP) and removed leases', (t) => {
  const a = lease('10.244.1.0/24', '198.51.100.11');
  const b = lease('10.244.2.0/24', '198.51.100.12');
  const c = lease('10.244.3.0/24', '198.51.100.13');
  const b2 = lease('10.244.2.0/24', '198.51.100.12', 'aa:bb:cc:dd:ee:99');
  const d = lease('10.244.4.0/24', '198.51.100.14');
  const diff = diffLeases([a, b, c], [a, b2, d]);
  t.deepEqual(diff.added, [d]);
  t.deepEqual(diff.changed, [{ before: b, after: b2 }]);
  t.deepEqual(diff.removed, [c]);
  const moved = diffLeases([a], [{ ...a, publicIP: '198.51.100.99' }]);
  t.is(moved.changed.length, 1);
  t.deepEqual(diffLeases([a, b], [{ ...b }, { ...a }]), { added: [], changed: [], removed: [] });
});

test('diff: a custom "same" test decides what counts as changed', (t) => {
  const a = { ...lease('10.244.1.0/24', '198.51.100.11'), modRevision: '5' };
  const newer = { ...a, modRevision: '7' };
  t.deepEqual(diffLeases([a], [newer]).changed, [], 'same attributes: no change by default');
  const byRevision = diffLeases([a], [newer], { same: (x, y) => BigInt(x.modRevision!) >= BigInt(y.modRevision!) });
  t.deepEqual(byRevision.changed, [{ before: a, after: newer }]);
});

test('errors: etcd unavailable and out of subnets are retryable, a lost lease and bad config are not', (t) => {
  t.true(isRetryable(new EtcdUnavailableError('get "/k"', { cause: new Error('connection refused') })));
  t.true(isRetryable(new Error('wrapped', { cause: new EtcdUnavailableError('list leases') })), 'through a cause');
  const config = cfg({ Network: '198.18.0.0/16', SubnetLen: 17 });
  const taken = [lease('198.18.0.0/17', '198.51.100.1'), lease('198.18.128.0/17', '198.51.100.2')];
  t.true(isRetryable(t.throws(() => chooseSubnet({ config, leases: taken, publicIP: '198.51.100.3' }), { instanceOf: OutOfSubnetsError })));
  t.false(isRetryable(new LeaseLostError('198.18.0.0/17', '198.51.100.9')));
  t.false(isRetryable(t.throws(() => cfg({}), { instanceOf: ConfigError })));
});

test('renewal timing: renew the margin before expiry, never negative', (t) => {
  const h = 3_600_000;
  t.is(renewDelay(24 * h, { now: 0, renewMarginMs: h }), 23 * h);
  t.is(renewDelay(10_000, { now: 9_000, renewMarginMs: 5_000 }), 0);
});

test('renewer: renews at expiry - margin with an injected clock, retries failures, and kick() renews at once', async (t) => {
  const clock = new FakeClock();
  const ttl = 24 * 3_600_000;
  const margin = 3_600_000;
  const calls: number[] = [];
  let fail = false;
  const renewer = new Renewer(ttl, {
    clock,
    renewMarginMs: margin,
    retry: constantDelay(1000),
    renew: async () => {
      calls.push(clock.now());
      if (fail) throw new Error('etcd down');
      return clock.now() + ttl;
    },
  });
  const ac = new AbortController();
  const running = renewer.run(ac.signal);
  await clock.advance(0);
  await clock.advance(ttl - margin - 1);
  t.deepEqual(calls, [], 'not before expiry - margin');
  await clock.advance(1);
  t.deepEqual(calls, [ttl - margin]);
  t.is(renewer.expiresAt, ttl - margin + ttl);

  fail = true;
  await clock.advance(ttl - margin);
  t.is(calls.length, 2);
  await clock.advance(1000);
  t.is(calls.length, 3, "retried after the policy's delay");
  fail = false;
  await clock.advance(1000);
  t.is(calls.length, 4);
  const renewedAt = calls[3];
  t.is(renewer.expiresAt, renewedAt + ttl);

  renewer.kick();
  await clock.advance(0);
  t.is(calls.length, 5, 'kick renews immediately');
  t.is(calls[4], renewedAt);
  ac.abort();
  await running;
});

const leaseAt = (cidr: string, modRevision: string, mac = 'aa:bb:cc:00:00:01'): Lease => ({
  subnet: parseCIDR(cidr),
  publicIP: '198.51.100.11',
  backendType: 'vxlan',
  backendData: { VNI: 1, VtepMAC: mac },
  modRevision,
});
const evText = (evs: LeaseEvent[]) => evs.map((e) => (e.type === 'put' ? `put ${formatIPv4(e.lease.subnet.ip)}@${e.lease.modRevision}` : `delete ${formatIPv4(e.subnet.ip)}`));

test('renewer: a lease without expiry is renewed only when kicked; failures wait as the policy says', async (t) => {
  const clock = new FakeClock();
  const calls: number[] = [];
  let failing = 2;
  const renewer = new Renewer(undefined, {
    clock,
    renewMarginMs: 1000,
    retry: { delayMs: (failures) => failures * 100 },
    renew: async () => {
      calls.push(clock.now());
      if (failing-- > 0) throw new Error('api server down');
      return undefined;
    },
  });
  const ac = new AbortController();
  const running = renewer.run(ac.signal);
  await clock.advance(365 * 86_400_000);
  t.deepEqual(calls, [], 'no renewal without a kick, however long');
  t.is(clock.sleeps.length, 0, 'and no timer either');
  renewer.kick();
  await clock.advance(0);
  await clock.advance(100);
  await clock.advance(200);
  const at = 365 * 86_400_000;
  t.deepEqual(calls, [at, at + 100, at + 300], 'first retry after 100 ms, the second after 200 ms');
  await clock.advance(86_400_000);
  t.is(calls.length, 3, 'back to waiting for a kick once it worked');
  ac.abort();
  await running;
});

test('resync: a listing that matches what the watch delivered finds nothing', (t) => {
  const tr = new LeaseTracker();
  tr.reset([leaseAt('198.18.0.64/26', '5'), leaseAt('198.18.0.128/26', '6')]);
  t.true(tr.put(leaseAt('198.18.0.192/26', '8')));
  t.true(tr.delete(parseCIDR('198.18.0.128/26'), '9'));
  t.deepEqual(tr.resync([leaseAt('198.18.0.64/26', '5'), leaseAt('198.18.0.192/26', '8')], '9'), []);
  t.is(tr.size, 2);
});

test('resync: puts, changes and deletes the watch missed come back as events', (t) => {
  const tr = new LeaseTracker();
  tr.reset([leaseAt('198.18.0.64/26', '5'), leaseAt('198.18.0.128/26', '6')]);
  // The watch delivered nothing; meanwhile .64 changed MAC, .128 was deleted, .192 appeared.
  const listed = [leaseAt('198.18.0.64/26', '10', 'aa:bb:cc:00:00:09'), leaseAt('198.18.0.192/26', '11')];
  t.deepEqual(evText(tr.resync(listed, '12')), ['put 198.18.0.64@10', 'put 198.18.0.192@11', 'delete 198.18.0.128']);
  // Recorded: the same listing again is no difference, and a replayed put is dropped.
  t.deepEqual(tr.resync(listed, '12'), []);
  t.false(tr.put(leaseAt('198.18.0.192/26', '11')), 'replayed put');
  t.true(tr.put(leaseAt('198.18.0.192/26', '13')), 'a newer put still counts');
});

test('resync: changes the watch delivered after the listing was taken are not differences', (t) => {
  const tr = new LeaseTracker();
  tr.reset([leaseAt('198.18.0.64/26', '5'), leaseAt('198.18.0.128/26', '6')]);
  // Listing taken at revision 6; before it returns the watch sees a new lease (7) and a delete (8).
  t.true(tr.put(leaseAt('198.18.0.192/26', '7')));
  t.true(tr.delete(parseCIDR('198.18.0.64/26'), '8'));
  t.deepEqual(tr.resync([leaseAt('198.18.0.64/26', '5'), leaseAt('198.18.0.128/26', '6')], '6'), []);
  // A watch restarted after the listing (from 7) replays 7 and 8: both are dropped.
  t.false(tr.put(leaseAt('198.18.0.192/26', '7')), 'replayed put');
  t.false(tr.delete(parseCIDR('198.18.0.64/26'), '8'), 'replayed delete');
  // The delete at 8 is still known, so a later listing at 8 agrees too.
  t.deepEqual(tr.resync([leaseAt('198.18.0.128/26', '6'), leaseAt('198.18.0.192/26', '7')], '8'), []);
});

test('resync loop: lists every interval on the injected clock, reports only differences, survives a failed list', async (t) => {
  const clock = new FakeClock();
  const tr = new LeaseTracker();
  tr.reset([leaseAt('198.18.0.64/26', '5')]);
  let table = { leases: [leaseAt('198.18.0.64/26', '5')], revision: '5' };
  let lists = 0;
  let failNext = false;
  const repairs: string[][] = [];
  const errors: unknown[] = [];
  const ac = new AbortController();
  const loop = resyncLoop(ac.signal, {
    clock,
    intervalMs: 60_000,
    tracker: tr,
    list: async () => {
      lists++;
      if (failNext) {
        failNext = false;
        throw new Error('etcd down');
      }
      return table;
    },
    onRepair: (evs) => repairs.push(evText(evs)),
    onError: (err) => errors.push(err),
  });
  await clock.advance(59_999);
  t.is(lists, 0, 'nothing before the interval');
  await clock.advance(1);
  t.is(lists, 1);
  t.deepEqual(repairs, [], 'in sync');
  // A lease appears that the (stalled) watch never delivers.
  table = { leases: [leaseAt('198.18.0.64/26', '5'), leaseAt('198.18.0.128/26', '9')], revision: '9' };
  failNext = true;
  await clock.advance(60_000);
  t.is(errors.length, 1, 'failed listing reported');
  t.deepEqual(repairs, [], 'nothing repaired from a failed listing');
  await clock.advance(60_000);
  t.deepEqual(repairs, [['put 198.18.0.128@9']]);
  await clock.advance(60_000);
  t.is(lists, 4);
  t.is(repairs.length, 1, 'a repaired difference is not reported again');
  ac.abort();
  await loop;
});

import test from 'ava';
import { parseCIDR } from '../../src/ip/ipv4.ts';
import { leaseId, type Lease } from '../../src/subnet/lease.ts';
import type { LeaseEvent } from '../../src/subnet/manager.ts';
import { LEASE_HARD_CAP, LeaseGate, leaseCap, nodeFacts, publicIPProblem, rejectionLine, validateLeases, vtepMACProblem, type LeaseContext } from '../../src/subnet/validate.ts';

let macSeq = 0;
function lease(subnet: string, o: { ip?: string; mac?: string; rev?: string; type?: string } = {}): Lease {
  const n = ++macSeq;
  return {
    subnet: parseCIDR(subnet),
    publicIP: o.ip ?? `198.51.100.${10 + (n % 200)}`,
    backendType: o.type ?? 'vxlan',
    backendData: { VNI: 1, VtepMAC: o.mac ?? `02:00:00:00:${(n >> 8).toString(16).padStart(2, '0')}:${(n & 255).toString(16).padStart(2, '0')}` },
    modRevision: o.rev,
  };
}

// The daemon passes the vxlan backend's parser; a minimal stand-in that also throws on bad data.
const vtepMAC = (l: Lease) => {
  if (l.backendType !== 'vxlan') return undefined;
  const m = (l.backendData as { VtepMAC?: unknown } | null)?.VtepMAC;
  if (typeof m !== 'string') throw new Error('BackendData has no valid "VtepMAC"');
  return m;
};

const ctx: LeaseContext = {
  config: { network: parseCIDR('198.18.0.0/16'), subnetLen: 24 },
  ownSubnet: parseCIDR('198.18.1.0/24'),
  ownAddresses: ['127.0.0.1', '198.51.100.2', '198.18.1.0', '198.18.1.1'],
  connectedRoutes: [parseCIDR('198.51.100.0/24'), parseCIDR('198.18.1.0/24'), parseCIDR('0.0.0.0/0')],
  ownMAC: '02:aa:bb:cc:dd:ee',
  vtepMAC,
};

const reasonOf = (l: Lease, c: LeaseContext = ctx): string | undefined => validateLeases([l], c).rejected[0]?.reason;

test('lease validation: a good peer lease and our own lease are accepted', (t) => {
  const peer = lease('198.18.2.0/24');
  const own = lease('198.18.1.0/24', { ip: '198.51.100.2', mac: '02:aa:bb:cc:dd:ee' });
  const r = validateLeases([peer, own], ctx);
  t.deepEqual(r.rejected, []);
  t.deepEqual(r.accepted, [peer, own]);
});

test('lease validation: the subnet must be a /SubnetLen network address inside Network', (t) => {
  t.is(reasonOf(lease('1.0.0.0/8')), 'subnet 1.0.0.0/8 is not inside network 198.18.0.0/16');
  t.is(reasonOf(lease('198.0.0.0/8')), 'subnet 198.0.0.0/8 is not inside network 198.18.0.0/16', 'a supernet of Network');
  t.is(reasonOf(lease('198.19.2.0/24')), 'subnet 198.19.2.0/24 is not inside network 198.18.0.0/16');
  t.is(reasonOf(lease('198.18.2.0/25')), "subnet 198.18.2.0/25 is not a /24 (the network's SubnetLen)");
  t.is(reasonOf(lease('198.18.2.0/23')), "subnet 198.18.2.0/23 is not a /24 (the network's SubnetLen)");
  t.is(reasonOf(lease('198.18.2.7/24')), 'subnet 198.18.2.7/24 is not a network address');
});

test('lease validation: overlap is by range: our subnet, connected routes, our addresses', (t) => {
  // 198.18.1.0/25 is a different key from ours but the same addresses: also caught by length.
  const c25 = { ...ctx, config: { ...ctx.config, subnetLen: 25 }, ownSubnet: parseCIDR('198.18.1.0/24') };
  t.is(reasonOf(lease('198.18.1.0/25', { ip: '198.51.100.9' }), c25), 'subnet 198.18.1.0/25 overlaps our subnet 198.18.1.0/24 (PublicIP 198.51.100.9)', 'same start, other length');
  t.is(reasonOf(lease('198.18.1.128/25', { ip: '198.51.100.9' }), c25), 'subnet 198.18.1.128/25 overlaps our subnet 198.18.1.0/24 (PublicIP 198.51.100.9)');
  t.is(reasonOf(lease('198.18.1.0/24', { ip: '198.51.100.9' })), 'subnet 198.18.1.0/24 overlaps our subnet 198.18.1.0/24 (PublicIP 198.51.100.9)', 'our subnet, another node: never a peer route');
  const underlay = { ...ctx, config: { network: parseCIDR('198.48.0.0/12'), subnetLen: 24 } };
  t.is(reasonOf(lease('198.51.100.0/24'), underlay), 'subnet 198.51.100.0/24 overlaps connected route 198.51.100.0/24');
  const wide = { ...ctx, config: { network: parseCIDR('198.48.0.0/12'), subnetLen: 16 } };
  t.is(reasonOf(lease('198.51.0.0/16'), wide), 'subnet 198.51.0.0/16 overlaps connected route 198.51.100.0/24', 'a lease covering the underlay');
  const onLo = { ...ctx, ownAddresses: [...ctx.ownAddresses, '198.18.7.7'] };
  t.is(reasonOf(lease('198.18.7.0/24'), onLo), "subnet 198.18.7.0/24 holds this node's address 198.18.7.7");
  t.is(reasonOf(lease('198.18.3.0/24')), undefined, 'the default route in connectedRoutes is ignored');
});

test('lease validation: PublicIP must be unicast and not ours unless it is our lease', (t) => {
  for (const [ip, why] of [
    ['0.0.0.0', 'is in 0.0.0.0/8 (this network)'],
    ['127.0.0.1', 'is loopback'],
    ['127.1.2.3', 'is loopback'],
    ['224.0.0.1', 'is multicast'],
    ['239.255.255.255', 'is multicast'],
    ['255.255.255.255', 'is the broadcast address'],
    ['240.0.0.1', 'is reserved (240.0.0.0/4)'],
    ['198.51.100.255', 'is the broadcast address of connected network 198.51.100.0/24'],
    ['not-an-ip', 'is not an IPv4 address'],
  ] as const) {
    t.is(reasonOf(lease('198.18.2.0/24', { ip })), `PublicIP ${ip} ${why}`, ip);
  }
  t.is(publicIPProblem('203.0.113.7'), undefined);
  t.is(reasonOf(lease('198.18.2.0/24', { ip: '198.51.100.2' })), "PublicIP 198.51.100.2 is this node's address");
});

test("lease validation: VtepMAC must be unicast, non-zero and not our device's", (t) => {
  t.is(reasonOf(lease('198.18.2.0/24', { mac: 'ff:ff:ff:ff:ff:ff' })), 'VtepMAC ff:ff:ff:ff:ff:ff is the broadcast address');
  t.is(reasonOf(lease('198.18.2.0/24', { mac: '01:00:5e:00:00:01' })), 'VtepMAC 01:00:5e:00:00:01 is multicast');
  t.is(reasonOf(lease('198.18.2.0/24', { mac: '33:33:00:00:00:01' })), 'VtepMAC 33:33:00:00:00:01 is multicast');
  t.is(reasonOf(lease('198.18.2.0/24', { mac: '00:00:00:00:00:00' })), 'VtepMAC 00:00:00:00:00:00 is zero');
  t.is(reasonOf(lease('198.18.2.0/24', { mac: '02:AA:BB:CC:DD:EE' })), "VtepMAC 02:AA:BB:CC:DD:EE is our device's");
  t.is(vtepMACProblem('zz:00:00:00:00:00'), 'is not a MAC address');
  const bad = { ...lease('198.18.2.0/24'), backendData: null };
  t.is(reasonOf(bad), 'BackendData has no valid "VtepMAC"', "the backend parser's reason");
  t.is(reasonOf(lease('198.18.2.0/24', { type: 'host-gw' })), undefined, 'a backend without a VtepMAC is not checked for one');
});

test('lease validation: conflicts: the older mod revision wins, regardless of input order', (t) => {
  const old = lease('198.18.2.0/24', { rev: '9', mac: '02:00:00:00:00:01' });
  const twin = lease('198.18.3.0/24', { rev: '10', mac: '02:00:00:00:00:01' });
  const a = validateLeases([twin, old], ctx);
  const b = validateLeases([old, twin], ctx);
  t.deepEqual(a.accepted, [old]);
  t.deepEqual(b.accepted, [old]);
  t.is(a.rejected[0].reason, 'VtepMAC 02:00:00:00:00:01 is also used by the lease for 198.18.2.0/24, which ranks first');
  // Compared as numbers, not text: "9" < "10".
  const dupA = lease('198.18.4.0/24', { rev: '10' });
  const dupB = lease('198.18.4.0/24', { rev: '9' });
  const d = validateLeases([dupA, dupB], ctx);
  t.deepEqual(d.accepted, [dupB]);
  t.regex(d.rejected[0].reason, /^subnet 198\.18\.4\.0\/24 is also leased by PublicIP .*, which ranks first$/);
  // Without revisions: the lower subnet wins, whatever the order.
  const x = lease('198.18.6.0/24', { mac: '02:00:00:00:00:07' });
  const y = lease('198.18.5.0/24', { mac: '02:00:00:00:00:07' });
  t.deepEqual(validateLeases([x, y], ctx).accepted, [y]);
  t.deepEqual(validateLeases([y, x], ctx).accepted, [y]);
});

test('lease validation: the cap: the number of subnets in Network, and a hard cap', (t) => {
  t.is(leaseCap({ network: parseCIDR('198.18.0.0/16'), subnetLen: 24 }), 256);
  t.is(leaseCap({ network: parseCIDR('198.18.0.0/24'), subnetLen: 26 }), 4);
  t.is(leaseCap({ network: parseCIDR('10.0.0.0/8'), subnetLen: 28 }), LEASE_HARD_CAP);
  const leases = [lease('198.18.5.0/24', { rev: '3' }), lease('198.18.2.0/24', { rev: '1' }), lease('198.18.3.0/24', { rev: '2' })];
  const r = validateLeases(leases, { ...ctx, maxLeases: 2 });
  t.deepEqual(
    r.accepted.map((l) => l.modRevision),
    ['1', '2'],
  );
  t.deepEqual(
    r.rejected.map((x) => [x.lease.modRevision, x.reason]),
    [['3', 'over the cap of 2 leases']],
  );
  t.is(rejectionLine(r.rejected[0]), `ignoring lease 198.18.5.0/24 (PublicIP ${leases[0].publicIP}): over the cap of 2 leases`);
});

test('lease gate: one report per rejected lease, not per resync; events for what changes; a later valid value is applied', (t) => {
  const gate = new LeaseGate(ctx);
  const good = lease('198.18.2.0/24', { rev: '5' });
  const bad = lease('198.18.3.0/24', { rev: '6', ip: '127.0.0.1' });
  const first = gate.snapshot([good, bad]);
  t.deepEqual(first.accepted, [good]);
  t.deepEqual(
    first.newlyRejected.map((r) => r.lease),
    [bad],
  );
  t.is(first.invalid, 1);
  t.is(gate.invalid, 1);

  const resync = gate.snapshot([good, bad]);
  t.deepEqual(resync.newlyRejected, [], 'same rejection, same reason: not reported again');
  t.is(resync.invalid, 1);

  const fixed = { ...bad, publicIP: '198.51.100.77', modRevision: '7' };
  const ev = gate.event({ type: 'put', lease: fixed });
  t.deepEqual(ev.events, [{ type: 'put', lease: fixed }]);
  t.is(ev.invalid, 0);

  const broken = { ...fixed, backendData: { VNI: 1, VtepMAC: 'ff:ff:ff:ff:ff:ff' }, modRevision: '8' };
  const ev2 = gate.event({ type: 'put', lease: broken });
  t.deepEqual(ev2.events, [{ type: 'delete', subnet: broken.subnet }], 'an accepted lease turning bad is withdrawn');
  t.deepEqual(
    ev2.newlyRejected.map((r) => r.reason),
    ['VtepMAC ff:ff:ff:ff:ff:ff is the broadcast address'],
  );

  const gone = gate.event({ type: 'delete', subnet: broken.subnet });
  t.deepEqual(gone.events, [], 'a rejected lease deleted: nothing was programmed');
  t.is(gone.invalid, 0);
  const renewed = { ...good, modRevision: '9' };
  t.deepEqual(gate.event({ type: 'put', lease: renewed }).events, [{ type: 'put', lease: renewed }]);
});

test('lease gate: the incumbent keeps its place; a conflict resolves when it leaves', (t) => {
  const gate = new LeaseGate(ctx);
  const a = lease('198.18.2.0/24', { rev: '50', mac: '02:00:00:00:00:99' });
  gate.snapshot([a]);
  // An older revision arriving later (e.g. a restored backup) does not push a working peer out.
  const b = lease('198.18.3.0/24', { rev: '10', mac: '02:00:00:00:00:99' });
  const r = gate.event({ type: 'put', lease: b });
  t.deepEqual(r.events, []);
  t.is(r.newlyRejected[0].lease, b);
  // Renewing a bumps its revision past b's: it still wins.
  const a2 = { ...a, modRevision: '60' };
  t.deepEqual(gate.event({ type: 'put', lease: a2 }).events, [{ type: 'put', lease: a2 }]);
  const left = gate.event({ type: 'delete', subnet: a.subnet });
  t.deepEqual(left.events, [
    { type: 'delete', subnet: a.subnet },
    { type: 'put', lease: b },
  ]);
  t.is(left.invalid, 0);
});

test('lease gate: our subnet changing re-validates the table', (t) => {
  // Before our lease: no cni0 route, no address in the subnet yet.
  const gate = new LeaseGate({ ...ctx, ownSubnet: undefined, connectedRoutes: [parseCIDR('198.51.100.0/24')], ownAddresses: ['198.51.100.2'] });
  const peer = lease('198.18.1.0/24', { ip: '198.51.100.50' });
  t.deepEqual(gate.snapshot([peer]).accepted, [peer]);
  const r = gate.update({ ownSubnet: parseCIDR('198.18.1.0/24') });
  t.deepEqual(r.events, [{ type: 'delete', subnet: peer.subnet }]);
  t.is(r.newlyRejected[0].reason, 'subnet 198.18.1.0/24 overlaps our subnet 198.18.1.0/24 (PublicIP 198.51.100.50)');
});

test('lease gate: random event sequences: what the backend is told equals validating the whole table', (t) => {
  let seed = 12345;
  const rnd = (n: number) => {
    seed = (seed * 1103515245 + 12345) >>> 0;
    return (seed >>> 8) % n;
  };
  const small: LeaseContext = { ...ctx, maxLeases: 6 };
  let relationalSteps = 0;
  let cleanSteps = 0;
  for (let round = 0; round < 20; round++) {
    const gate = new LeaseGate(small);
    const raw = new Map<string, Lease>();
    // The backend's view, built only from the events the gate hands on.
    const programmed = new Map<string, Lease>();
    let accepted = new Set<string>();
    let rev = 0;
    for (let step = 0; step < 200; step++) {
      const subnet = `198.18.${2 + rnd(10)}.0/24`;
      let ev: LeaseEvent;
      if (rnd(4) === 0) {
        ev = { type: 'delete', subnet: parseCIDR(subnet) };
        raw.delete(subnet);
      } else {
        const l = lease(subnet, { rev: String(++rev), mac: `02:00:00:00:00:0${rnd(8)}`, ip: rnd(8) === 0 ? '127.0.0.1' : undefined });
        ev = { type: 'put', lease: l };
        raw.set(subnet, l);
      }
      const r = gate.event(ev);
      for (const e of r.events) {
        if (e.type === 'put') programmed.set(leaseId(e.lease), e.lease);
        else programmed.delete(leaseId(e));
      }
      const want = validateLeases([...raw.values()], small, { incumbents: accepted });
      accepted = new Set(want.accepted.map(leaseId));
      if (want.rejected.some((x) => /also used|over the cap/.test(x.reason))) relationalSteps++;
      else cleanSteps++;
      const ok = [...programmed.keys()].sort().join() === [...accepted].sort().join() && [...programmed.values()].every((l) => raw.get(leaseId(l)) === l);
      if (!ok || r.invalid !== want.rejected.length) {
        t.fail(`round ${round} step ${step}: backend has ${[...programmed.keys()].sort()} (${r.invalid} invalid), full run accepts ${[...accepted].sort()} (${want.rejected.length})`);
        return;
      }
    }
  }
  t.true(relationalSteps > 100 && cleanSteps > 100, `both paths exercised (${relationalSteps} steps with conflicts, ${cleanSteps} without)`);
});

test('lease validation: values from outside are bounded in reasons', (t) => {
  const huge = 'x'.repeat(10_000);
  const reason = reasonOf({ ...lease('198.18.2.0/24'), publicIP: huge }) ?? '';
  t.regex(reason, /^PublicIP x{64}\.\.\. is not an IPv4 address$/);
  t.is(reasonOf(lease('198.18.2.0/24', { ip: 'a b' })), 'PublicIP "a b" is not an IPv4 address');
});

test("node facts: addresses, and the connected routes (not the default, not via a gateway, not flannel.1's peers)", (t) => {
  const facts = nodeFacts(
    [
      { index: 1, ip: '127.0.0.1', prefixLen: 8 },
      { index: 2, ip: '198.51.100.2', prefixLen: 24 },
      { index: 5, ip: '198.18.1.1', prefixLen: 24 },
    ],
    [
      { dst: '0.0.0.0/0', gateway: '198.51.100.1', index: 2 },
      { dst: '198.51.100.0/24', index: 2, scope: 'link', table: 254 },
      { dst: '198.18.1.0/24', index: 5, scope: 'link' },
      { dst: '198.18.2.0/24', gateway: '198.18.2.0', index: 4, onlink: true },
      { dst: '198.18.9.0/24', index: 4, scope: 'link' },
      { dst: '203.0.113.0/24', index: 2, scope: 'link', table: 100 },
    ],
    { vxlanIndex: 4 },
  );
  t.deepEqual(facts.ownAddresses, ['127.0.0.1', '198.51.100.2', '198.18.1.1']);
  t.deepEqual(facts.connectedRoutes, [parseCIDR('198.51.100.0/24'), parseCIDR('198.18.1.0/24')]);
});

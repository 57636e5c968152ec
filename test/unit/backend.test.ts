import test from 'ava';
import { parseCIDR } from '../../src/ip/ipv4.ts';
import type { Link } from '../../src/netlink/index.ts';
import { encodeBackendData, parseBackendData } from '../../src/backend/vxlan/backenddata.ts';
import { incompatibility, type VxlanDeviceSpec } from '../../src/backend/vxlan/device.ts';
import { peerFromLease } from '../../src/backend/vxlan/peers.ts';

test('backend data: flannel\'s {"VNI","VtepMAC"} both ways', (t) => {
  t.deepEqual(encodeBackendData({ vni: 1, vtepMAC: 'aa:bb:cc:dd:ee:ff' }), { VNI: 1, VtepMAC: 'aa:bb:cc:dd:ee:ff' });
  t.deepEqual(parseBackendData({ VNI: 3, VtepMAC: 'AA:BB:CC:DD:EE:FF' }), { vni: 3, vtepMAC: 'aa:bb:cc:dd:ee:ff' });
  t.deepEqual(parseBackendData({ VtepMAC: 'aa:bb:cc:dd:ee:ff' }), { vni: 1, vtepMAC: 'aa:bb:cc:dd:ee:ff' });
  t.throws(() => parseBackendData(null), { message: /not an object/ });
  t.throws(() => parseBackendData({ VNI: 1, VtepMAC: 'zz' }), { message: /VtepMAC/ });
  t.throws(() => parseBackendData({ VNI: '1', VtepMAC: 'aa:bb:cc:dd:ee:ff' }), { message: /VNI/ });
});

test('peerFromLease: gateway is the subnet network address; foreign leases are skipped with a reason', (t) => {
  const base = { subnet: parseCIDR('10.244.5.0/24'), publicIP: '198.51.100.15', backendType: 'vxlan', backendData: { VNI: 1, VtepMAC: 'aa:bb:cc:dd:ee:05' } };
  t.deepEqual(peerFromLease(base, 1), { subnet: base.subnet, gateway: '10.244.5.0', mac: 'aa:bb:cc:dd:ee:05', publicIP: '198.51.100.15' });
  t.deepEqual(peerFromLease({ ...base, backendType: 'host-gw' }, 1), { skip: 'backend type "host-gw" is not vxlan' });
  t.deepEqual(peerFromLease(base, 2), { skip: 'VNI 1 differs from ours (2)' });
  t.regex((peerFromLease({ ...base, backendData: {} }, 1) as { skip: string }).skip, /VtepMAC/);
});

test('device compatibility: reuse only a vxlan device with the same VNI, port, local, parent and nolearning', (t) => {
  const spec: VxlanDeviceSpec = { name: 'flannel.1', vni: 1, port: 8472, local: '198.51.100.11', parentIndex: 2, mtu: 1450 };
  const link: Link = {
    index: 5,
    name: 'flannel.1',
    kind: 'vxlan',
    mtu: 1400,
    mac: 'aa:bb:cc:dd:ee:01',
    up: false,
    vxlan: { vni: 1, port: 8472, local: '198.51.100.11', parentIndex: 2, learning: false },
  };
  t.is(incompatibility(link, spec), undefined, 'MTU and up state are fixed in place, not by recreating');
  t.is(incompatibility({ ...link, kind: 'bridge', vxlan: undefined }, spec), 'it is a bridge, not vxlan');
  t.is(incompatibility({ ...link, vxlan: { ...link.vxlan!, vni: 2 } }, spec), 'VNI 2 != 1');
  t.is(incompatibility({ ...link, vxlan: { ...link.vxlan!, port: 4789 } }, spec), 'port 4789 != 8472');
  t.is(incompatibility({ ...link, vxlan: { ...link.vxlan!, local: '198.51.100.99' } }, spec), 'local address 198.51.100.99 != 198.51.100.11');
  t.is(incompatibility({ ...link, vxlan: { ...link.vxlan!, parentIndex: 3 } }, spec), 'parent interface 3 != 2');
  t.is(incompatibility({ ...link, vxlan: { ...link.vxlan!, learning: true } }, spec), 'learning is on');
  t.is(incompatibility(link, { ...spec, mac: 'aa:bb:cc:dd:ee:02' }), 'MAC aa:bb:cc:dd:ee:01 != aa:bb:cc:dd:ee:02', 'a MAC is only required once peers know it');
});

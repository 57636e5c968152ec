import test from 'ava';
import { buildResult, encodeResult, parsePrevResult, type Attached } from '../../src/cni/result.ts';

const attached: Attached = {
  bridge: { name: 'cni0', mac: '02:00:00:00:00:01' },
  hostVeth: { name: 'veth0123abcd', mac: '02:00:00:00:00:02' },
  pod: { name: 'eth0', mac: '02:00:00:00:00:03', sandbox: '/run/netns/p' },
  address: '198.18.1.2/24',
  gateway: '198.18.1.1',
  routes: [
    { dst: '0.0.0.0/0', gw: '198.18.1.1' },
    { dst: '198.18.0.0/16', gw: '198.18.1.1' },
  ],
};

test('1.0.0 and 1.1.0 results: [bridge, host veth, eth0 in sandbox], ips[].interface = 2, no ip version', (t) => {
  for (const v of ['1.0.0', '1.1.0'] as const) {
    t.deepEqual(encodeResult(buildResult(attached), v), {
      cniVersion: v,
      interfaces: [
        { name: 'cni0', mac: '02:00:00:00:00:01' },
        { name: 'veth0123abcd', mac: '02:00:00:00:00:02' },
        { name: 'eth0', mac: '02:00:00:00:00:03', sandbox: '/run/netns/p' },
      ],
      ips: [{ address: '198.18.1.2/24', gateway: '198.18.1.1', interface: 2 }],
      routes: [
        { dst: '0.0.0.0/0', gw: '198.18.1.1' },
        { dst: '198.18.0.0/16', gw: '198.18.1.1' },
      ],
      dns: {},
    });
  }
});

test('0.3.0, 0.3.1 and 0.4.0 results tag ips with version "4"', (t) => {
  for (const v of ['0.3.0', '0.3.1', '0.4.0'] as const) {
    const r = encodeResult(buildResult(attached), v) as any;
    t.is(r.cniVersion, v);
    t.deepEqual(r.ips, [{ version: '4', address: '198.18.1.2/24', gateway: '198.18.1.1', interface: 2 }]);
    t.is(r.interfaces.length, 3);
  }
});

test('a chained prevResult passes through first and shifts our interface index', (t) => {
  const prev = parsePrevResult({
    cniVersion: '0.4.0',
    interfaces: [{ name: 'lo0', sandbox: '/run/netns/p' }],
    ips: [{ version: '4', address: '203.0.113.5/32', interface: 0 }],
    routes: [{ dst: '203.0.113.0/24' }],
    dns: { nameservers: ['203.0.113.53'] },
  });
  const r = encodeResult(buildResult(attached, prev), '1.0.0') as any;
  t.deepEqual(
    r.interfaces.map((i: any) => i.name),
    ['lo0', 'cni0', 'veth0123abcd', 'eth0'],
  );
  t.deepEqual(r.ips, [
    { address: '203.0.113.5/32', interface: 0 },
    { address: '198.18.1.2/24', gateway: '198.18.1.1', interface: 3 },
  ]);
  t.deepEqual(r.routes[0], { dst: '203.0.113.0/24' });
  t.deepEqual(r.dns, { nameservers: ['203.0.113.53'] });
});

test('parsePrevResult rejects malformed results with code 7', (t) => {
  const err = t.throws(() => parsePrevResult({ interfaces: 'nope' }));
  t.is((err as any).code, 7);
  t.is((t.throws(() => parsePrevResult({ ips: [{}] })) as any).code, 7);
});

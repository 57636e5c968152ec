import test from 'ava';
import { selectEndpoints } from '../../src/proxy/endpoints.ts';
import { conntrackArgs, tableFingerprint, tableFingerprintSliced } from '../../src/proxy/nft.ts';
import { staleUDPFlows } from '../../src/proxy/sync.ts';
import { validateEndpointSlice, validateService } from '../../src/proxy/types.ts';

function state(eps: Array<[string, boolean?]>, opts: { nodePort?: number; clusterIP?: string; protocol?: string } = {}) {
  const s = validateService({
    metadata: { namespace: 'ns1', name: 'dns' },
    spec: { type: opts.nodePort ? 'NodePort' : 'ClusterIP', clusterIP: opts.clusterIP ?? '198.19.0.10', ports: [{ name: 'dns', port: 53, protocol: opts.protocol ?? 'UDP', nodePort: opts.nodePort }] },
  });
  const sl = validateEndpointSlice({
    metadata: { namespace: 'ns1', name: 'dns-1', labels: { 'kubernetes.io/service-name': 'dns' } },
    addressType: 'IPv4',
    endpoints: eps.map(([ip, ready]) => ({ addresses: [ip], conditions: ready === undefined ? {} : { ready, serving: ready, terminating: false } })),
    ports: [{ name: 'dns', port: 5353, protocol: opts.protocol ?? 'UDP' }],
  });
  if (!s.ok || !sl.ok) throw new Error('bad fixture');
  return selectEndpoints([s.value], [sl.value]);
}

test('stale UDP: an endpoint that went away or stopped being ready loses its flows', (t) => {
  const a = state([['198.18.0.11'], ['198.18.0.12'], ['198.18.0.13']], { nodePort: 30053 });
  const b = state([['198.18.0.11'], ['198.18.0.12', false]], { nodePort: 30053 });
  t.deepEqual(staleUDPFlows(a, b), [
    { origDst: '198.19.0.10', port: 53, dnatTo: '198.18.0.12' },
    { port: 30053, dnatTo: '198.18.0.12' },
    { origDst: '198.19.0.10', port: 53, dnatTo: '198.18.0.13' },
    { port: 30053, dnatTo: '198.18.0.13' },
  ]);
  t.deepEqual(staleUDPFlows(b, b), []);
  t.deepEqual(staleUDPFlows(undefined, a), [], 'first sync: nothing known to be stale');
});

test('stale UDP: a service gaining its first endpoint clears flows to its address', (t) => {
  const none = state([]);
  const one = state([['198.18.0.11']]);
  t.deepEqual(staleUDPFlows(none, one), [{ origDst: '198.19.0.10', port: 53 }]);
  t.deepEqual(staleUDPFlows({ ports: [], skipped: [] }, one), [{ origDst: '198.19.0.10', port: 53 }]);
  t.deepEqual(staleUDPFlows(one, { ports: [], skipped: [] }), [{ origDst: '198.19.0.10', port: 53, dnatTo: '198.18.0.11' }], 'deleted service');
});

test('stale UDP: TCP services are left to TCP', (t) => {
  t.deepEqual(staleUDPFlows(state([['198.18.0.11']], { protocol: 'TCP' }), state([], { protocol: 'TCP' })), []);
});

test('conntrack: arguments are canonical and validated', (t) => {
  t.deepEqual(conntrackArgs({ origDst: '198.19.0.10', port: 53, dnatTo: '198.18.0.12' }), ['-D', '-p', 'udp', '--orig-dst', '198.19.0.10', '--orig-port-dst', '53', '--dst-nat', '198.18.0.12']);
  t.deepEqual(conntrackArgs({ port: 30053 }), ['-D', '-p', 'udp', '--orig-port-dst', '30053']);
  t.throws(() => conntrackArgs({ origDst: '198.19.0.10 -F', port: 53 }));
  t.throws(() => conntrackArgs({ port: 0 }));
});

test('fingerprint: ignores handles and dynamic set contents, sees everything else', async (t) => {
  const doc = (elem: unknown[], rule: string) =>
    JSON.stringify({
      nftables: [
        { metainfo: { version: '1.0.6' } },
        { chain: { family: 'ip', table: 'weft-proxy', name: 'services', handle: Math.floor(Math.random() * 1000) } },
        { set: { family: 'ip', table: 'weft-proxy', name: 'aff-X', type: 'ipv4_addr', flags: ['timeout', 'dynamic'], elem, handle: 7 } },
        { set: { family: 'ip', table: 'weft-proxy', name: 'cluster-ips', type: 'ipv4_addr', elem: ['198.19.0.10'] } },
        { rule: { chain: 'services', expr: [{ jump: { target: rule } }], handle: 9 } },
      ],
    });
  t.is(tableFingerprint(doc([], 'a')), tableFingerprint(doc([{ elem: { val: '198.18.0.11', expires: 5 } }], 'a')));
  t.not(tableFingerprint(doc([], 'a')), tableFingerprint(doc([], 'b')));
  t.throws(() => tableFingerprint('{}'));
  // the drift check's sliced walk gives the very same string, whatever the slice
  const big = doc([{ elem: { val: '198.18.0.11', expires: 5 } }], 'c');
  for (const slice of [1, 2, 3, 2000]) t.is(await tableFingerprintSliced(big, slice), tableFingerprint(big), `slice ${slice}`);
  await t.throwsAsync(tableFingerprintSliced('{}'));
});

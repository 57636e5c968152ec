import test from 'ava';
import { selectEndpoints, usable } from '../../src/proxy/endpoints.ts';
import { validateEndpointSlice, validateService, type EndpointSlice, type Service } from '../../src/proxy/types.ts';

function service(name: string, spec: Record<string, unknown>, labels: Record<string, string> = {}): Service {
  const r = validateService({ metadata: { namespace: 'ns1', name, labels }, spec: { clusterIP: '198.19.0.10', ports: [{ name: 'http', port: 80 }], ...spec } });
  if (!r.ok) throw new Error(r.reason);
  return r.value;
}

function slice(svc: string, endpoints: unknown[], ports: unknown[] = [{ name: 'http', port: 8080, protocol: 'TCP' }], name = `${svc}-1`): EndpointSlice {
  const r = validateEndpointSlice({ metadata: { namespace: 'ns1', name, labels: { 'kubernetes.io/service-name': svc } }, addressType: 'IPv4', endpoints, ports });
  if (!r.ok) throw new Error(r.reason);
  return r.value;
}

const ep = (ip: string, conditions: Record<string, boolean> = {}, nodeName = 'node-a') => ({ addresses: [ip, '198.18.9.9'], conditions, nodeName });
const ips = (eps: Array<{ ip: string; port: number }>) => eps.map((e) => `${e.ip}:${e.port}`);

test('select: joins slice and service ports by name and protocol; addresses[0] only', (t) => {
  const svc = service('web', {
    ports: [
      { name: 'http', port: 80 },
      { name: 'dns', port: 53, protocol: 'UDP' },
    ],
  });
  const sl = slice(
    'web',
    [ep('198.18.0.12'), ep('198.18.0.11')],
    [
      { name: 'http', port: 8080, protocol: 'TCP' },
      { name: 'dns', port: 5353, protocol: 'TCP' }, // same name, other protocol: no match for the UDP port
      { name: 'other', port: 9, protocol: 'UDP' },
    ],
  );
  const { ports } = selectEndpoints([svc], [sl]);
  t.deepEqual(
    ports.map((p) => `${p.portName}/${p.protocol}`),
    ['dns/UDP', 'http/TCP'],
  );
  t.deepEqual(ips(ports[0]!.clusterEndpoints), []);
  t.deepEqual(ips(ports[1]!.clusterEndpoints), ['198.18.0.11:8080', '198.18.0.12:8080'], 'sorted, first address only');
});

test('select: ready endpoints only; unset ready counts as ready', (t) => {
  const { ports } = selectEndpoints(
    [service('web', {})],
    [slice('web', [ep('198.18.0.11'), ep('198.18.0.12', { ready: false, serving: true, terminating: true }), ep('198.18.0.13', { ready: true })])],
  );
  t.deepEqual(ips(ports[0]!.clusterEndpoints), ['198.18.0.11:8080', '198.18.0.13:8080']);
  t.is(ports[0]!.allEndpoints.length, 3);
});

test('select: none ready -> serving and terminating ones (KEP-1669), never non-serving', (t) => {
  const { ports } = selectEndpoints(
    [service('web', {})],
    [
      slice('web', [
        ep('198.18.0.11', { ready: false, serving: true, terminating: true }),
        ep('198.18.0.12', { ready: false, serving: false, terminating: true }),
        ep('198.18.0.13', { ready: false, serving: true, terminating: false }),
      ]),
    ],
  );
  t.deepEqual(ips(ports[0]!.clusterEndpoints), ['198.18.0.11:8080']);
  t.deepEqual(usable([]), []);
});

test("select: Local traffic policies keep this node's endpoints, with their own fallback", (t) => {
  const svc = service('web', { type: 'NodePort', internalTrafficPolicy: 'Local', externalTrafficPolicy: 'Local', ports: [{ name: 'http', port: 80, nodePort: 30080 }] });
  const sl = slice('web', [ep('198.18.0.11', {}, 'node-a'), ep('198.18.1.11', {}, 'node-b'), ep('198.18.0.12', { ready: false, serving: true, terminating: true }, 'node-b')]);
  const a = selectEndpoints([svc], [sl], { nodeName: 'node-a' }).ports[0]!;
  t.true(a.internalLocal && a.externalLocal);
  t.deepEqual(ips(a.localEndpoints), ['198.18.0.11:8080']);
  t.deepEqual(ips(a.clusterEndpoints), ['198.18.0.11:8080', '198.18.1.11:8080']);
  const c = selectEndpoints([svc], [slice('web', [ep('198.18.1.11', {}, 'node-c'), ep('198.18.0.12', { ready: false, serving: true, terminating: true }, 'node-b')])], { nodeName: 'node-b' })
    .ports[0]!;
  t.deepEqual(ips(c.localEndpoints), ['198.18.0.12:8080'], 'local fallback to serving+terminating although the cluster has a ready one');
  const none = selectEndpoints([svc], [sl]).ports[0]!;
  t.deepEqual(none.localEndpoints, [], 'no node name: nothing is local');
});

test('select: skips headless, ExternalName and service-proxy-name services', (t) => {
  const { ports, skipped } = selectEndpoints(
    [
      service('headless', { clusterIP: 'None' }),
      service('ext', { type: 'ExternalName', clusterIP: '', externalName: 'x.example' }),
      service('other', { clusterIP: '198.19.0.11' }, { 'service.kubernetes.io/service-proxy-name': 'foo' }),
      service('web', { clusterIP: '198.19.0.12' }),
    ],
    [],
  );
  t.deepEqual(
    ports.map((p) => p.name),
    ['web'],
  );
  t.deepEqual(skipped.map((s) => s.reason).sort(), ['ExternalName service', 'headless service', 'labelled service.kubernetes.io/service-proxy-name']);
});

test('select: merges slices, each with its own port number; the same endpoint twice counts once', (t) => {
  const { ports } = selectEndpoints(
    [service('web', {})],
    [
      slice('web', [ep('198.18.0.11')], [{ name: 'http', port: 8080, protocol: 'TCP' }], 'web-a'),
      slice('web', [ep('198.18.0.12'), ep('198.18.0.11', { ready: false })], [{ name: 'http', port: 8081, protocol: 'TCP' }], 'web-b'),
      slice('web', [ep('198.18.0.11', { ready: false })], [{ name: 'http', port: 8080, protocol: 'TCP' }], 'web-c'),
      slice('other', [ep('198.18.0.99')], undefined, 'other-a'),
    ],
  );
  t.deepEqual(ips(ports[0]!.clusterEndpoints), ['198.18.0.11:8080', '198.18.0.12:8081']);
  t.deepEqual(ips(ports[0]!.allEndpoints), ['198.18.0.11:8080', '198.18.0.11:8081', '198.18.0.12:8081']);
});

test('select: node ports only for NodePort types and inside the range; collisions keep the first', (t) => {
  const np = (name: string, ip: string, nodePort: number, type = 'NodePort') => service(name, { type, clusterIP: ip, ports: [{ name: 'http', port: 80, nodePort }] });
  const { ports, skipped } = selectEndpoints(
    [np('a', '198.19.0.10', 30080), np('b', '198.19.0.11', 30080), np('c', '198.19.0.12', 80), np('d', '198.19.0.13', 30081, 'ClusterIP'), np('e', '198.19.0.10', 30082)],
    [],
  );
  t.deepEqual(
    ports.map((p) => [p.name, p.nodePort]),
    [
      ['a', 30080],
      ['b', undefined],
      ['c', undefined],
      ['d', undefined],
    ],
  );
  t.deepEqual(
    skipped.map((s) => s.service),
    ['ns1/b:http/TCP', 'ns1/c:http/TCP', 'ns1/e:http/TCP'],
  );
  t.regex(skipped[1]!.reason, /outside 30000-32767/);
  t.regex(skipped[2]!.reason, /already belongs/);
  const custom = selectEndpoints([np('c', '198.19.0.12', 80)], [], { nodePortRange: { min: 1, max: 1000 } });
  t.is(custom.ports[0]!.nodePort, 80);
});

test('select: affinity timeout carried, deterministic regardless of input order', (t) => {
  const a = service('a', { clusterIP: '198.19.0.10', sessionAffinity: 'ClientIP', sessionAffinityConfig: { clientIP: { timeoutSeconds: 30 } } });
  const b = service('b', { clusterIP: '198.19.0.11' });
  const sls = [slice('a', [ep('198.18.0.12'), ep('198.18.0.11')]), slice('b', [ep('198.18.0.13')])];
  const x = selectEndpoints([a, b], sls);
  const y = selectEndpoints([b, a], [...sls].reverse());
  t.deepEqual(x, y);
  t.is(x.ports[0]!.affinitySeconds, 30);
  t.is(x.ports[1]!.affinitySeconds, undefined);
});

test('select: an unchanged Service keeps its port objects across calls; a changed one or a node port freed by another gets new ones', (t) => {
  const a = service('a', { clusterIP: '198.19.0.10', type: 'NodePort', ports: [{ name: 'http', port: 80, nodePort: 30080 }] });
  const b = service('b', { clusterIP: '198.19.0.11', type: 'NodePort', ports: [{ name: 'http', port: 80, nodePort: 30080 }] });
  const sa = slice('a', [ep('198.18.0.11')]);
  const sb = slice('b', [ep('198.18.0.21')]);
  const one = selectEndpoints([a, b], [sa, sb]);
  const two = selectEndpoints([a, b], [sa, sb]);
  t.is(one.ports[0], two.ports[0], 'same objects in, same port object out');
  t.is(one.ports[1], two.ports[1]);
  t.is(one.ports[1]!.nodePort, undefined, "b's node port is a's");
  t.deepEqual(
    one.skipped.map((s) => s.service),
    ['ns1/b:http/TCP'],
  );
  // a's slice replaced: a's port is new, b's stays
  const sa2 = slice('a', [ep('198.18.0.12')]);
  const three = selectEndpoints([a, b], [sa2, sb]);
  t.not(three.ports[0], two.ports[0]);
  t.deepEqual(ips(three.ports[0]!.clusterEndpoints), ['198.18.0.12:8080']);
  t.is(three.ports[1], two.ports[1]);
  // a gone: b's node port is free now, although b and its slice did not change
  const four = selectEndpoints([b], [sb]);
  t.is(four.ports.length, 1);
  t.is(four.ports[0]!.nodePort, 30080);
  t.deepEqual(ips(four.ports[0]!.clusterEndpoints), ['198.18.0.21:8080']);
  t.is(one.ports[1]!.nodePort, undefined, 'an earlier result is not changed afterwards');
  // and back: a takes the node port again, b loses it
  const five = selectEndpoints([a, b], [sa2, sb]);
  t.is(five.ports[0]!.nodePort, 30080);
  t.is(five.ports[1]!.nodePort, undefined);
  // another node name: a new join
  t.not(selectEndpoints([a, b], [sa2, sb], { nodeName: 'node-a' }).ports[1], five.ports[1]);
});

test('select: an unset serving condition means what ready says (a not-ready, not-terminating endpoint is never a fallback)', (t) => {
  const svc = service('web', {});
  // Not ready, serving unset, terminating: not serving, so with no ready endpoint there is none.
  const st = selectEndpoints([svc], [slice('web', [ep('198.18.0.11', { ready: false, terminating: true })])], { nodeName: 'node-a' });
  t.deepEqual(st.ports[0]!.clusterEndpoints, []);
  // Serving said explicitly: the terminating fallback (KEP-1669).
  const st2 = selectEndpoints([svc], [slice('web', [ep('198.18.0.11', { ready: false, serving: true, terminating: true })])], { nodeName: 'node-a' });
  t.deepEqual(ips(st2.ports[0]!.clusterEndpoints), ['198.18.0.11:8080']);
});

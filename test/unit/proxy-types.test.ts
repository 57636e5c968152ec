import test from 'ava';
import { LIMITS, validateEndpointSlice, validateService } from '../../src/proxy/types.ts';

const svc = (spec: Record<string, unknown>, meta: Record<string, unknown> = {}) => ({ metadata: { namespace: 'default', name: 'web', ...meta }, spec });
const slice = (o: Record<string, unknown>) => ({
  metadata: { namespace: 'default', name: 'web-abc12', labels: { 'kubernetes.io/service-name': 'web' } },
  addressType: 'IPv4',
  endpoints: [{ addresses: ['198.18.0.11'], conditions: { ready: true }, nodeName: 'node-1' }],
  ports: [{ name: 'http', port: 8080, protocol: 'TCP' }],
  ...o,
});

test('service: copies only the fields the proxy uses, with API defaults', (t) => {
  const raw = {
    apiVersion: 'v1',
    kind: 'Service',
    metadata: { namespace: 'default', name: 'web', uid: 'x', labels: { app: 'web' }, annotations: { a: 'b' } },
    spec: { clusterIP: '198.19.0.10', ports: [{ name: 'http', port: 80, targetPort: 8080 }], selector: { app: 'web' } },
    status: {},
  };
  const r = validateService(raw);
  t.true(r.ok);
  if (!r.ok) return;
  t.deepEqual(r.value, {
    metadata: { namespace: 'default', name: 'web', labels: {} },
    spec: {
      type: 'ClusterIP',
      clusterIP: '198.19.0.10',
      ports: [{ name: 'http', protocol: 'TCP', port: 80, targetPort: 8080 }],
      sessionAffinity: 'None',
      internalTrafficPolicy: 'Cluster',
      externalTrafficPolicy: 'Cluster',
    },
  });
  t.not(r.value.metadata, raw.metadata as unknown, 'a fresh object, not the input');
});

test('service: session affinity timeout defaults to 10800 s and is bounded', (t) => {
  const ok = validateService(svc({ clusterIP: '198.19.0.10', ports: [{ port: 80 }], sessionAffinity: 'ClientIP' }));
  t.true(ok.ok && ok.value.spec.sessionAffinityConfig?.clientIP.timeoutSeconds === 10800);
  const custom = validateService(svc({ clusterIP: '198.19.0.10', ports: [{ port: 80 }], sessionAffinity: 'ClientIP', sessionAffinityConfig: { clientIP: { timeoutSeconds: 5 } } }));
  t.true(custom.ok && custom.value.spec.sessionAffinityConfig?.clientIP.timeoutSeconds === 5);
  for (const bad of [0, -1, 86401, 1.5, '10']) {
    const r = validateService(svc({ clusterIP: '198.19.0.10', ports: [{ port: 80 }], sessionAffinity: 'ClientIP', sessionAffinityConfig: { clientIP: { timeoutSeconds: bad } } }));
    t.false(r.ok, `timeout ${bad}`);
  }
});

test('service: headless, ExternalName and the proxy-name label are valid (selection skips them)', (t) => {
  t.true(validateService(svc({ clusterIP: 'None', ports: [{ port: 80 }] })).ok);
  const en = validateService(svc({ type: 'ExternalName', externalName: 'example.com' }));
  t.true(en.ok && en.value.spec.externalName === 'example.com');
  const lab = validateService(svc({ clusterIP: '198.19.0.10', ports: [{ port: 80 }] }, { labels: { 'service.kubernetes.io/service-proxy-name': 'other' } }));
  t.true(lab.ok && lab.value.metadata.labels['service.kubernetes.io/service-proxy-name'] === 'other');
});

test('service: hostile or malformed objects become skip reasons, never throws', (t) => {
  const cases: Array<[unknown, RegExp]> = [
    [null, /not an object/],
    ['x', /not an object/],
    [{ metadata: { namespace: 'default', name: 'web' } }, /spec is not an object/],
    [svc({ clusterIP: '198.19.0.10' }, { namespace: 'Bad_NS' }), /namespace/],
    [svc({ clusterIP: '198.19.0.10' }, { name: 'a;b' }), /metadata.name/],
    [svc({ clusterIP: '198.19.0.10' }, { name: 'x'.repeat(64) }), /metadata.name/],
    [svc({ clusterIP: '198.19.0.10 ; flush ruleset', ports: [{ port: 80 }] }), /clusterIP/],
    [svc({ clusterIP: 'fd00::10', ports: [{ port: 80 }] }), /IPv4/],
    [svc({ clusterIP: '198.19.0.10', ports: [{ port: 70000 }] }), /port number/],
    [svc({ clusterIP: '198.19.0.10', ports: [{ port: '80' }] }), /port number/],
    [svc({ clusterIP: '198.19.0.10', ports: [{ port: 80, protocol: 'ICMP' }] }), /protocol/],
    [svc({ clusterIP: '198.19.0.10', ports: [{ port: 80, name: 'HTTP' }] }), /DNS label/],
    [svc({ clusterIP: '198.19.0.10', ports: [{ port: 80, name: 'a}b' }] }), /DNS label/],
    [svc({ clusterIP: '198.19.0.10', ports: [{ port: 80 }, { port: 81 }] }), /unnamed port/],
    [
      svc({
        clusterIP: '198.19.0.10',
        ports: [
          { name: 'a', port: 80 },
          { name: 'a', port: 81 },
        ],
      }),
      /two ports/,
    ],
    [svc({ clusterIP: '198.19.0.10', ports: Array.from({ length: LIMITS.servicePorts + 1 }, (_, i) => ({ name: `p${i}`, port: i + 1 })) }), /at most/],
    [svc({ clusterIP: '198.19.0.10', ports: {} }), /not a list/],
    [svc({ type: 'Weird', clusterIP: '198.19.0.10', ports: [] }), /spec.type/],
    [svc({ clusterIP: '198.19.0.10', ports: [], internalTrafficPolicy: 'local' }), /internalTrafficPolicy/],
    [svc({ clusterIP: '198.19.0.10', ports: [], sessionAffinity: 'Cookie' }), /sessionAffinity/],
  ];
  for (const [raw, re] of cases) {
    const r = validateService(raw);
    t.false(r.ok, JSON.stringify(raw)?.slice(0, 80));
    if (!r.ok) t.regex(r.reason, re);
  }
});

test('endpointslice: copies endpoints, conditions and ports; unset port skipped', (t) => {
  const r = validateEndpointSlice(slice({ ports: [{ name: 'http', port: 8080, protocol: 'TCP' }, { name: 'all' }] }));
  t.true(r.ok);
  if (!r.ok) return;
  t.deepEqual(r.value.endpoints, [{ addresses: ['198.18.0.11'], conditions: { ready: true }, nodeName: 'node-1' }]);
  t.deepEqual(r.value.ports, [{ name: 'http', port: 8080, protocol: 'TCP' }]);
  t.is(r.value.metadata.labels['kubernetes.io/service-name'], 'web');
});

test('endpointslice: rejects wrong address types, bad addresses and oversize lists', (t) => {
  const cases: Array<[unknown, RegExp]> = [
    [slice({ addressType: 'IPv6' }), /addressType/],
    [slice({ addressType: 'FQDN' }), /addressType/],
    [{ ...slice({}), metadata: { namespace: 'default', name: 'x' } }, /service-name/],
    [slice({ endpoints: [{ addresses: [] }] }), /empty/],
    [slice({ endpoints: [{ addresses: ['198.18.0.1 } ; flush ruleset'] }] }), /non-IPv4/],
    [slice({ endpoints: [{ addresses: ['198.18.0.300'] }] }), /non-IPv4/],
    [slice({ endpoints: [{ addresses: ['198.18.0.1'], conditions: { ready: 'yes' } }] }), /ready/],
    [slice({ endpoints: [{ addresses: ['198.18.0.1'], nodeName: 'Node_1' }] }), /nodeName/],
    [slice({ endpoints: Array.from({ length: LIMITS.sliceEndpoints + 1 }, () => ({ addresses: ['198.18.0.1'] })) }), /at most 1000/],
    [slice({ ports: [{ name: 'http', port: 0.5 }] }), /port number/],
  ];
  for (const [raw, re] of cases) {
    const r = validateEndpointSlice(raw);
    t.false(r.ok);
    if (!r.ok) t.regex(r.reason, re);
  }
});

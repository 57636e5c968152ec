/**
 * A sequence of proxy states that, between them, make ruleset.ts emit every line shape a
 * partial sync has: ClusterIP TCP, UDP and SCTP, NodePort, ClientIP affinity, Local internal and
 * external traffic policies (with and without a local endpoint), Services without endpoints,
 * and from step to step endpoints added, removed and replaced, Services added and removed.
 * Used by the nfnl unit fixture (test/helpers/nfnl-capture.ts) and the priv comparison.
 */
import { selectEndpoints, type ProxyState } from '../../src/proxy/endpoints.ts';
import { validateEndpointSlice, validateService } from '../../src/proxy/types.ts';

interface Spec {
  ip: string;
  ports: Array<{ name: string; port: number; protocol?: string; nodePort?: number }>;
  type?: string;
  affinity?: number;
  internalLocal?: boolean;
  externalLocal?: boolean;
  /** [address, node]: node-a is this node. */
  eps: Array<[string, string?]>;
}

export const NODE = 'node-a';

function state(specs: Record<string, Spec>): ProxyState {
  const services = [];
  const slices = [];
  for (const [name, s] of Object.entries(specs)) {
    const svc = validateService({
      metadata: { namespace: 'shapes', name },
      spec: {
        type: s.type ?? (s.ports.some((p) => p.nodePort) ? 'NodePort' : 'ClusterIP'),
        clusterIP: s.ip,
        ports: s.ports.map((p) => ({ name: p.name, port: p.port, protocol: p.protocol ?? 'TCP', nodePort: p.nodePort })),
        ...(s.affinity ? { sessionAffinity: 'ClientIP', sessionAffinityConfig: { clientIP: { timeoutSeconds: s.affinity } } } : {}),
        ...(s.internalLocal ? { internalTrafficPolicy: 'Local' } : {}),
        ...(s.externalLocal ? { externalTrafficPolicy: 'Local' } : {}),
      },
    });
    if (!svc.ok) throw new Error(`fixture ${name}: ${svc.reason}`);
    services.push(svc.value);
    const sl = validateEndpointSlice({
      metadata: { namespace: 'shapes', name: `${name}-1`, labels: { 'kubernetes.io/service-name': name } },
      addressType: 'IPv4',
      endpoints: s.eps.map(([ip, node]) => ({ addresses: [ip], conditions: { ready: true, serving: true, terminating: false }, nodeName: node ?? 'node-b' })),
      ports: s.ports.map((p) => ({ name: p.name, port: p.port + 8000, protocol: p.protocol ?? 'TCP' })),
    });
    if (!sl.ok) throw new Error(`fixture ${name}: ${sl.reason}`);
    slices.push(sl.value);
  }
  return selectEndpoints(services, slices, { nodeName: NODE });
}

const web = (eps: Spec['eps']): Spec => ({ ip: '198.19.0.10', ports: [{ name: 'http', port: 80 }], eps });
const dns = (eps: Spec['eps']): Spec => ({
  ip: '198.19.0.11',
  ports: [
    { name: 'dns', port: 53, protocol: 'UDP', nodePort: 30053 },
    { name: 'dns-tcp', port: 53, nodePort: 30054 },
  ],
  affinity: 10800,
  eps,
});
const local = (eps: Spec['eps']): Spec => ({ ip: '198.19.0.12', ports: [{ name: 'http', port: 80, nodePort: 30080 }], externalLocal: true, eps });
const ilocal = (eps: Spec['eps']): Spec => ({ ip: '198.19.0.13', ports: [{ name: 'http', port: 80 }], internalLocal: true, eps });
const sctp = (eps: Spec['eps']): Spec => ({ ip: '198.19.0.14', ports: [{ name: 'x', port: 9, protocol: 'SCTP', nodePort: 30009 }], eps });
const empty = (): Spec => ({ ip: '198.19.0.15', ports: [{ name: 'http', port: 80, nodePort: 30081 }], eps: [] });
const late = (eps: Spec['eps']): Spec => ({ ip: '198.19.0.16', ports: [{ name: 'http', port: 8080, nodePort: 30082 }], affinity: 60, externalLocal: true, eps });

/** Step 0 is the full sync; every later step is a partial sync from the one before. */
export function shapeSteps(): Array<{ what: string; state: ProxyState }> {
  const e = (n: number, node?: string): [string, string?] => [`198.18.1.${n}`, node];
  return [
    {
      what: 'initial',
      state: state({ web: web([e(1), e(2)]), dns: dns([e(3), e(4, NODE)]), local: local([e(5), e(6, NODE)]), ilocal: ilocal([e(7, NODE), e(8)]), sctp: sctp([e(9)]), empty: empty() }),
    },
    {
      what: 'endpoint added',
      state: state({
        web: web([e(1), e(2), e(20)]),
        dns: dns([e(3), e(4, NODE), e(21, NODE)]),
        local: local([e(5), e(6, NODE)]),
        ilocal: ilocal([e(7, NODE), e(8)]),
        sctp: sctp([e(9)]),
        empty: empty(),
      }),
    },
    { what: 'endpoint removed', state: state({ web: web([e(2), e(20)]), dns: dns([e(3), e(21, NODE)]), local: local([e(5)]), ilocal: ilocal([e(8)]), sctp: sctp([e(9)]), empty: empty() }) },
    {
      what: 'endpoint replaced',
      state: state({ web: web([e(22), e(20)]), dns: dns([e(3), e(23, NODE)]), local: local([e(24, NODE)]), ilocal: ilocal([e(25, NODE), e(8)]), sctp: sctp([e(26)]), empty: empty() }),
    },
    {
      what: 'service added, endpoints gone',
      state: state({ web: web([e(22), e(20)]), dns: dns([]), local: local([e(24, NODE)]), ilocal: ilocal([e(25, NODE), e(8)]), sctp: sctp([]), empty: empty(), late: late([e(27), e(28, NODE)]) }),
    },
    { what: 'service removed, endpoints back', state: state({ web: web([e(22), e(20)]), dns: dns([e(3)]), ilocal: ilocal([e(25, NODE), e(8)]), sctp: sctp([e(9)]), late: late([e(27)]) }) },
    {
      what: 'back to the start',
      state: state({ web: web([e(1), e(2)]), dns: dns([e(3), e(4, NODE)]), local: local([e(5), e(6, NODE)]), ilocal: ilocal([e(7, NODE), e(8)]), sctp: sctp([e(9)]), empty: empty() }),
    },
  ];
}

/**
 * Endpoint selection (pure): validated Services and EndpointSlices -> one entry per Service
 * port with the endpoints this node sends its traffic to, following kube-proxy's
 * `CategorizeEndpoints`:
 * - slice ports and Service ports are joined by (port name, protocol); the endpoint's port is
 *   the slice's number (slices of one Service may disagree, each keeps its own);
 * - an endpoint is used when `ready` (unset counts as true); when none is, the ones that are
 *   `serving` and `terminating` (KEP-1669), so a rolling update does not drop connections;
 * - `Local` traffic policies keep the endpoints whose `nodeName` is this node (with the same
 *   fallback among them);
 * - only `addresses[0]` of an endpoint is used;
 * - headless, ExternalName and `service.kubernetes.io/service-proxy-name` Services are skipped.
 * Output is sorted, so the ruleset built from it is deterministic. Keys that would collide in
 * the kernel's maps (two Services claiming one ClusterIP and port, or one NodePort) keep the
 * first by namespace/name and report the other: one duplicate must not fail the whole
 * transaction.
 */
import { parseIPv4 } from '../ip/ipv4.ts';
import { SERVICE_NAME_LABEL, SERVICE_PROXY_NAME_LABEL, type EndpointSlice, type Protocol, type Service } from './types.ts';

/** One endpoint of a Service port, after the join. */
export interface ProxyEndpoint {
  ip: string;
  port: number;
  /** On this node (its `nodeName` is ours). */
  local: boolean;
  ready: boolean;
  serving: boolean;
  terminating: boolean;
}

/** A Service port as the ruleset builder needs it. */
export interface ServicePortState {
  namespace: string;
  name: string;
  /** The Service port's name ("" when the Service has a single unnamed port). */
  portName: string;
  protocol: Protocol;
  clusterIP: string;
  port: number;
  /** Set for NodePort / LoadBalancer Services when inside the node-port range. */
  nodePort?: number;
  /** ClientIP session affinity timeout, when affinity is on. */
  affinitySeconds?: number;
  internalLocal: boolean;
  externalLocal: boolean;
  /** Endpoints for traffic under the Cluster policy (ready, else serving+terminating). */
  clusterEndpoints: ProxyEndpoint[];
  /** This node's endpoints (ready, else serving+terminating among them). */
  localEndpoints: ProxyEndpoint[];
  /** Every joined endpoint, used or not (for status and stale-conntrack decisions). */
  allEndpoints: ProxyEndpoint[];
}

export interface Skipped {
  /** `namespace/name` of the Service (or `namespace/name:port/proto`). */
  service: string;
  reason: string;
}

/** The whole desired state of the proxy. */
export interface ProxyState {
  ports: ServicePortState[];
  skipped: Skipped[];
}

export interface SelectOptions {
  /** This node's name, for Local traffic policies. */
  nodeName?: string;
  /** Inclusive NodePort range (default 30000-32767); node ports outside it are not programmed. */
  nodePortRange?: { min: number; max: number };
}

/** The default NodePort range of kube-apiserver's `--service-node-port-range`. */
export const DEFAULT_NODE_PORT_RANGE = { min: 30000, max: 32767 } as const;

/** kube-proxy's "service port name" identity: namespace/name:port/protocol. */
export function servicePortKey(sp: Pick<ServicePortState, 'namespace' | 'name' | 'portName' | 'protocol'>): string {
  return `${sp.namespace}/${sp.name}:${sp.portName}/${sp.protocol}`;
}

function ipOrder(a: string): number {
  return parseIPv4(a);
}

function byEndpoint(a: ProxyEndpoint, b: ProxyEndpoint): number {
  return ipOrder(a.ip) - ipOrder(b.ip) || a.port - b.port;
}

/** Ready endpoints, else the serving+terminating ones (KEP-1669). */
export function usable(eps: ProxyEndpoint[]): ProxyEndpoint[] {
  const ready = eps.filter((e) => e.ready);
  if (ready.length) return ready;
  return eps.filter((e) => e.serving && e.terminating);
}

/** Why a Service is not proxied at all, or undefined. */
export function skipReason(svc: Service): string | undefined {
  if (svc.spec.type === 'ExternalName') return 'ExternalName service';
  if (svc.spec.clusterIP === 'None') return 'headless service';
  if (svc.metadata.labels[SERVICE_PROXY_NAME_LABEL] !== undefined) return `labelled ${SERVICE_PROXY_NAME_LABEL}`;
  return undefined;
}

type ServicePort = Service['spec']['ports'][number];

interface Joined {
  p: ServicePort;
  state: ServicePortState;
}

// Between two syncs only a few objects change, and the caches replace an object on every
// update: so a Service whose object, slices (the same objects, in the same order) and node
// name are those of the last call gets its last join back, the same ServicePortState objects,
// which buildRuleset then finds by identity. Only speed depends on it.
const joinMemo = new WeakMap<Service, { slices: readonly EndpointSlice[]; nodeName: string | undefined; ports: Joined[] }>();

function joined(svc: Service, svcSlices: readonly EndpointSlice[], nodeName: string | undefined): Joined[] {
  const hit = joinMemo.get(svc);
  if (hit && hit.nodeName === nodeName && hit.slices.length === svcSlices.length && hit.slices.every((s, i) => s === svcSlices[i])) return hit.ports;
  const sps = [...svc.spec.ports].sort((a, b) => (a.name < b.name ? -1 : a.name > b.name ? 1 : a.protocol < b.protocol ? -1 : a.protocol > b.protocol ? 1 : 0));
  const ports = sps.map((p) => ({ p, state: joinPort(svc, p, svcSlices, nodeName) }));
  joinMemo.set(svc, { slices: svcSlices, nodeName, ports });
  return ports;
}

/** One Service port joined with its slices (no node port: that depends on the other Services). */
function joinPort(svc: Service, p: ServicePort, svcSlices: readonly EndpointSlice[], nodeName: string | undefined): ServicePortState {
  const state: ServicePortState = {
    namespace: svc.metadata.namespace,
    name: svc.metadata.name,
    portName: p.name,
    protocol: p.protocol,
    clusterIP: svc.spec.clusterIP,
    port: p.port,
    internalLocal: svc.spec.internalTrafficPolicy === 'Local',
    externalLocal: svc.spec.externalTrafficPolicy === 'Local',
    clusterEndpoints: [],
    localEndpoints: [],
    allEndpoints: [],
  };
  if (svc.spec.sessionAffinity === 'ClientIP') state.affinitySeconds = svc.spec.sessionAffinityConfig?.clientIP.timeoutSeconds;
  const eps = new Map<string, ProxyEndpoint>();
  for (const sl of svcSlices) {
    const sp = sl.ports.find((x) => x.name === p.name && x.protocol === p.protocol);
    if (!sp) continue;
    for (const e of sl.endpoints) {
      const c = e.conditions;
      const ep: ProxyEndpoint = {
        ip: e.addresses[0]!,
        port: sp.port,
        local: nodeName !== undefined && e.nodeName === nodeName,
        ready: c.ready ?? true,
        // The API's rule: unset serving means the same as ready.
        serving: c.serving ?? c.ready ?? true,
        terminating: c.terminating ?? false,
      };
      const k = `${ep.ip}:${ep.port}`;
      const prev = eps.get(k);
      // the same endpoint in two slices (during a slice rewrite): the better state wins
      if (!prev || (!prev.ready && ep.ready)) eps.set(k, ep);
    }
  }
  state.allEndpoints = [...eps.values()].sort(byEndpoint);
  state.clusterEndpoints = usable(state.allEndpoints);
  state.localEndpoints = usable(state.allEndpoints.filter((e) => e.local));
  return state;
}

/** Computes the proxy's desired state from validated objects. */
export function selectEndpoints(services: readonly Service[], slices: readonly EndpointSlice[], opts: SelectOptions = {}): ProxyState {
  const range = opts.nodePortRange ?? DEFAULT_NODE_PORT_RANGE;
  const skipped: Skipped[] = [];
  const byService = new Map<string, EndpointSlice[]>();
  for (const sl of slices) {
    const key = `${sl.metadata.namespace}/${sl.metadata.labels[SERVICE_NAME_LABEL]}`;
    const arr = byService.get(key);
    if (arr) arr.push(sl);
    else byService.set(key, [sl]);
  }
  for (const arr of byService.values()) arr.sort((a, b) => (a.metadata.name < b.metadata.name ? -1 : a.metadata.name > b.metadata.name ? 1 : 0));

  const sorted = [...services].sort((a, b) => {
    const ka = `${a.metadata.namespace}/${a.metadata.name}`;
    const kb = `${b.metadata.namespace}/${b.metadata.name}`;
    return ka < kb ? -1 : ka > kb ? 1 : 0;
  });
  const ports: ServicePortState[] = [];
  const clusterKeys = new Set<string>();
  const nodePortKeys = new Set<string>();
  const seenServices = new Set<string>();
  for (const svc of sorted) {
    const id = `${svc.metadata.namespace}/${svc.metadata.name}`;
    if (seenServices.has(id)) {
      skipped.push({ service: id, reason: 'duplicate service object' });
      continue;
    }
    seenServices.add(id);
    const why = skipReason(svc);
    if (why) {
      skipped.push({ service: id, reason: why });
      continue;
    }
    const svcSlices = byService.get(id) ?? [];
    for (const entry of joined(svc, svcSlices, opts.nodeName)) {
      const { p } = entry;
      const label = servicePortKey(entry.state);
      const ck = `${p.protocol}/${svc.spec.clusterIP}:${p.port}`;
      if (clusterKeys.has(ck)) {
        skipped.push({ service: label, reason: `${ck} already belongs to another service` });
        continue;
      }
      clusterKeys.add(ck);
      let nodePort: number | undefined;
      if ((svc.spec.type === 'NodePort' || svc.spec.type === 'LoadBalancer') && p.nodePort !== undefined) {
        const nk = `${p.protocol}/${p.nodePort}`;
        if (p.nodePort < range.min || p.nodePort > range.max) skipped.push({ service: label, reason: `node port ${p.nodePort} outside ${range.min}-${range.max}` });
        else if (nodePortKeys.has(nk)) skipped.push({ service: label, reason: `node port ${nk} already belongs to another service` });
        else {
          nodePortKeys.add(nk);
          nodePort = p.nodePort;
        }
      }
      // the node port depends on the other Services (collisions) and the range: a new object
      // only when it differs from the memoized one, so an unchanged port keeps its identity
      if (entry.state.nodePort !== nodePort) {
        const { nodePort: _, ...rest } = entry.state;
        entry.state = nodePort === undefined ? rest : { ...rest, nodePort };
      }
      ports.push(entry.state);
    }
  }
  return { ports, skipped };
}

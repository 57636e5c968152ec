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

/** The Service (namespace/name) an EndpointSlice belongs to, by its service-name label. */
export function sliceService(sl: EndpointSlice): string {
  return `${sl.metadata.namespace}/${sl.metadata.labels[SERVICE_NAME_LABEL]}`;
}

function serviceId(svc: Service): string {
  return `${svc.metadata.namespace}/${svc.metadata.name}`;
}

function byName(a: EndpointSlice, b: EndpointSlice): number {
  return a.metadata.name < b.metadata.name ? -1 : a.metadata.name > b.metadata.name ? 1 : 0;
}

/** The port's key in the ClusterIP maps: two Services claiming it collide. */
function clusterKey(svc: Service, p: ServicePort): string {
  return `${p.protocol}/${svc.spec.clusterIP}:${p.port}`;
}

/** The port's node-port key when its Service type has node ports and it names one. */
function nodePortKey(svc: Service, p: ServicePort): string | undefined {
  if ((svc.spec.type !== 'NodePort' && svc.spec.type !== 'LoadBalancer') || p.nodePort === undefined) return undefined;
  return `${p.protocol}/${p.nodePort}`;
}

const outOfRange = (p: ServicePort, range: { min: number; max: number }) => p.nodePort! < range.min || p.nodePort! > range.max;
const rangeReason = (p: ServicePort, range: { min: number; max: number }) => `node port ${p.nodePort} outside ${range.min}-${range.max}`;
const takenCluster = (ck: string) => `${ck} already belongs to another service`;
const takenNodePort = (nk: string) => `node port ${nk} already belongs to another service`;

// the node port depends on the other Services (collisions) and the range: a new object only
// when it differs from the memoized one, so an unchanged port keeps its identity
function withNodePort(entry: Joined, nodePort: number | undefined): ServicePortState {
  if (entry.state.nodePort !== nodePort) {
    const { nodePort: _, ...rest } = entry.state;
    entry.state = nodePort === undefined ? rest : { ...rest, nodePort };
  }
  return entry.state;
}

/** Computes the proxy's desired state from validated objects. */
export function selectEndpoints(services: readonly Service[], slices: readonly EndpointSlice[], opts: SelectOptions = {}): ProxyState {
  const range = opts.nodePortRange ?? DEFAULT_NODE_PORT_RANGE;
  const skipped: Skipped[] = [];
  const byService = new Map<string, EndpointSlice[]>();
  for (const sl of slices) {
    const key = sliceService(sl);
    const arr = byService.get(key);
    if (arr) arr.push(sl);
    else byService.set(key, [sl]);
  }
  for (const arr of byService.values()) arr.sort(byName);

  const sorted = [...services].sort((a, b) => {
    const ka = serviceId(a);
    const kb = serviceId(b);
    return ka < kb ? -1 : ka > kb ? 1 : 0;
  });
  const ports: ServicePortState[] = [];
  const clusterKeys = new Set<string>();
  const nodePortKeys = new Set<string>();
  const seenServices = new Set<string>();
  for (const svc of sorted) {
    const id = serviceId(svc);
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
      const ck = clusterKey(svc, p);
      if (clusterKeys.has(ck)) {
        skipped.push({ service: label, reason: takenCluster(ck) });
        continue;
      }
      clusterKeys.add(ck);
      let nodePort: number | undefined;
      const nk = nodePortKey(svc, p);
      if (nk !== undefined) {
        if (outOfRange(p, range)) skipped.push({ service: label, reason: rangeReason(p, range) });
        else if (nodePortKeys.has(nk)) skipped.push({ service: label, reason: takenNodePort(nk) });
        else {
          nodePortKeys.add(nk);
          nodePort = p.nodePort;
        }
      }
      ports.push(withNodePort(entry, nodePort));
    }
  }
  return { ports, skipped };
}

/** A claim on a map key: the claimant that sorts first (Service, then port) gets the key. */
interface Claim {
  id: string;
  idx: number;
}

function claimBefore(a: Claim, b: Claim): boolean {
  return a.id < b.id || (a.id === b.id && a.idx < b.idx);
}

/** Who claims each key, in order (almost always one claimant). */
class Claims {
  readonly #by = new Map<string, Claim[]>();

  add(key: string, c: Claim): void {
    const arr = this.#by.get(key);
    if (!arr) {
      this.#by.set(key, [c]);
      return;
    }
    let i = arr.length;
    while (i > 0 && claimBefore(c, arr[i - 1]!)) i--;
    arr.splice(i, 0, c);
  }

  /** Drops every claim of Service `id` on `key`. */
  remove(key: string, id: string): void {
    const arr = this.#by.get(key)?.filter((c) => c.id !== id);
    if (arr?.length) this.#by.set(key, arr);
    else this.#by.delete(key);
  }

  wins(key: string, c: Claim): boolean {
    const first = this.#by.get(key)?.[0];
    return first !== undefined && first.id === c.id && first.idx === c.idx;
  }

  claimants(key: string): readonly Claim[] {
    return this.#by.get(key) ?? [];
  }
}

interface Selected {
  ports: ServicePortState[];
  skipped: Skipped[];
}

/** What the selector knows of one Service. */
interface Entry {
  svc: Service;
  joined: Joined[];
  why: string | undefined;
  /** Per joined port, its ClusterIP key. */
  clusterKeys: string[];
  /** The node-port keys it claims now. */
  nodePortKeys: string[];
  out: Selected;
}

const NOTHING: Selected = { ports: [], skipped: [] };

/** What one {@link EndpointSelector.select} pass gathers. */
interface Pass {
  clusterTouched: Set<string>;
  nodeTouched: Set<string>;
  resolve: Set<string>;
  changed: Map<string, ServicePortState[]>;
}

/** A desired state and the Services whose ports changed since the previous one. */
export interface Selection {
  state: ProxyState;
  /** Service (namespace/name) -> its ports now ([] when gone or skipped), for each that changed. */
  changed: Map<string, ServicePortState[]>;
}

/**
 * {@link selectEndpoints} kept up to date Service by Service: after a change only the Services
 * named dirty are joined again, and only those whose ClusterIP or node-port keys they shared
 * have their collisions looked at again, so a change costs what it touches, not a pass over every
 * Service and slice (at 1000 Services x 10 endpoints that pass was most of a partial sync's
 * JavaScript). The result is what selectEndpoints gives for the same objects.
 */
export class EndpointSelector {
  readonly #opts: SelectOptions;
  readonly #range: { min: number; max: number };
  #entries = new Map<string, Entry>();
  /** Service ids, sorted: the output's order. */
  #order: string[] = [];
  #cluster = new Claims();
  #nodePorts = new Claims();

  constructor(opts: SelectOptions = {}) {
    this.#opts = opts;
    this.#range = opts.nodePortRange ?? DEFAULT_NODE_PORT_RANGE;
  }

  /**
   * The desired state for `services` (by namespace/name) and their slices (`slicesOf`, any
   * order), recomputing the Services in `dirty` (every one, from scratch, when undefined): a
   * Service whose object or slices changed since the last call must be in it.
   */
  select(services: ReadonlyMap<string, Service>, slicesOf: (id: string) => readonly EndpointSlice[], dirty?: Iterable<string>): Selection {
    const changed = new Map<string, ServicePortState[]>();
    const fresh = dirty === undefined;
    if (fresh) {
      this.#entries = new Map();
      this.#cluster = new Claims();
      this.#nodePorts = new Claims();
      this.#order = [...services.keys()].sort();
    }
    // keys a changed Service held or holds: whoever else claims one may have won or lost it
    const clusterTouched = new Set<string>();
    const nodeTouched = new Set<string>();
    const resolve = new Set<string>();
    for (const id of dirty ?? this.#order) this.#rejoin(id, services.get(id), slicesOf, fresh, { clusterTouched, nodeTouched, resolve, changed });
    for (const ck of clusterTouched) for (const c of this.#cluster.claimants(ck)) resolve.add(c.id);
    // a port claims its node port only once it holds its ClusterIP key
    for (const id of resolve) this.#claimNodePorts(id, nodeTouched);
    for (const nk of nodeTouched) for (const c of this.#nodePorts.claimants(nk)) resolve.add(c.id);
    for (const id of resolve) this.#output(id, changed);
    const ports: ServicePortState[] = [];
    const skipped: Skipped[] = [];
    for (const id of this.#order) {
      const out = this.#entries.get(id)!.out;
      for (const sp of out.ports) ports.push(sp);
      for (const s of out.skipped) skipped.push(s);
    }
    return { state: { ports, skipped }, changed };
  }

  /** Joins Service `id` again (or forgets it) and renews its ClusterIP claims. */
  #rejoin(id: string, svc: Service | undefined, slicesOf: (id: string) => readonly EndpointSlice[], fresh: boolean, acc: Pass): void {
    const old = this.#entries.get(id);
    if (old) this.#release(id, old, acc);
    if (!svc) {
      if (!old) return;
      this.#entries.delete(id);
      this.#order.splice(this.#at(id), 1);
      if (old.out.ports.length) acc.changed.set(id, []);
      return;
    }
    const why = skipReason(svc);
    const js = why ? [] : joined(svc, [...slicesOf(id)].sort(byName), this.#opts.nodeName);
    const entry: Entry = { svc, joined: js, why, clusterKeys: js.map((j) => clusterKey(svc, j.p)), nodePortKeys: [], out: old?.out ?? NOTHING };
    if (!old && !fresh) this.#order.splice(this.#at(id), 0, id);
    this.#entries.set(id, entry);
    entry.clusterKeys.forEach((ck, idx) => {
      this.#cluster.add(ck, { id, idx });
      acc.clusterTouched.add(ck);
    });
    acc.resolve.add(id);
  }

  #release(id: string, e: Entry, acc: Pass): void {
    for (const ck of e.clusterKeys) {
      this.#cluster.remove(ck, id);
      acc.clusterTouched.add(ck);
    }
    for (const nk of e.nodePortKeys) {
      this.#nodePorts.remove(nk, id);
      acc.nodeTouched.add(nk);
    }
    e.nodePortKeys = [];
  }

  /** Renews Service `id`'s node-port claims: ports that hold their ClusterIP key, inside the range. */
  #claimNodePorts(id: string, nodeTouched: Set<string>): void {
    const e = this.#entries.get(id)!;
    for (const nk of e.nodePortKeys) {
      this.#nodePorts.remove(nk, id);
      nodeTouched.add(nk);
    }
    e.nodePortKeys = [];
    e.joined.forEach((j, idx) => {
      const nk = nodePortKey(e.svc, j.p);
      if (nk === undefined || outOfRange(j.p, this.#range) || !this.#cluster.wins(e.clusterKeys[idx]!, { id, idx })) return;
      this.#nodePorts.add(nk, { id, idx });
      e.nodePortKeys.push(nk);
      nodeTouched.add(nk);
    });
  }

  /** Service `id`'s ports and skips, in selectEndpoints' order; `changed` when its ports differ. */
  #output(id: string, changed: Map<string, ServicePortState[]>): void {
    const e = this.#entries.get(id)!;
    const out: Selected = { ports: [], skipped: [] };
    if (e.why) out.skipped.push({ service: id, reason: e.why });
    e.joined.forEach((j, idx) => {
      const ck = e.clusterKeys[idx]!;
      const label = servicePortKey(j.state);
      if (!this.#cluster.wins(ck, { id, idx })) {
        out.skipped.push({ service: label, reason: takenCluster(ck) });
        return;
      }
      let nodePort: number | undefined;
      const nk = nodePortKey(e.svc, j.p);
      if (nk !== undefined) {
        if (outOfRange(j.p, this.#range)) out.skipped.push({ service: label, reason: rangeReason(j.p, this.#range) });
        else if (!this.#nodePorts.wins(nk, { id, idx })) out.skipped.push({ service: label, reason: takenNodePort(nk) });
        else nodePort = j.p.nodePort;
      }
      out.ports.push(withNodePort(j, nodePort));
    });
    const before = e.out.ports;
    if (before.length !== out.ports.length || before.some((sp, i) => sp !== out.ports[i])) changed.set(id, out.ports);
    e.out = out;
  }

  /** Where `id` is or would go in the sorted order (binary search). */
  #at(id: string): number {
    let lo = 0;
    let hi = this.#order.length;
    while (lo < hi) {
      const mid = (lo + hi) >> 1;
      if (this.#order[mid]! < id) lo = mid + 1;
      else hi = mid;
    }
    return lo;
  }
}

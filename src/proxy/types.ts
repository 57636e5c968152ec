/**
 * The Service proxy's inputs: the few fields of a Service and an EndpointSlice it reads, shaped
 * like the Kubernetes JSON (camelCase, same nesting) so an informer's object passes through
 * {@link validateService} / {@link validateEndpointSlice} unchanged in meaning.
 *
 * Everything from the API server is treated as hostile: the validators copy only the fields
 * listed here into fresh plain objects, check each against the API's own rules (DNS labels,
 * port ranges, dotted-quad IPv4) and bound every list, so what reaches the ruleset builder can
 * be written into nft text without quoting. Anything else becomes a skip reason, not a throw:
 * one bad object must not stop the proxy programming the others.
 */
import { isIPv4 } from '../ip/ipv4.ts';

export type Protocol = 'TCP' | 'UDP' | 'SCTP';
export type ServiceType = 'ClusterIP' | 'NodePort' | 'LoadBalancer' | 'ExternalName';
export type TrafficPolicy = 'Cluster' | 'Local';

/** The label that hands a Service to another proxy (kube-proxy skips such Services too). */
export const SERVICE_PROXY_NAME_LABEL = 'service.kubernetes.io/service-proxy-name';
/** The label that ties an EndpointSlice to its Service. */
export const SERVICE_NAME_LABEL = 'kubernetes.io/service-name';

/** Bounds on one object (the API server's own: 100 ports and 1000 endpoints per slice). */
export const LIMITS = {
  servicePorts: 100,
  slicePorts: 100,
  sliceEndpoints: 1000,
  endpointAddresses: 100,
  /** sessionAffinityConfig.clientIP.timeoutSeconds: the API's range and default. */
  affinityMaxSeconds: 86400,
  affinityDefaultSeconds: 10800,
} as const;

export interface ServicePort {
  /** DNS label; may be empty only when the Service has one port. */
  name: string;
  protocol: Protocol;
  port: number;
  /** Kept for completeness; the endpoint port comes from the EndpointSlice. */
  targetPort?: number | string;
  nodePort?: number;
}

export interface Service {
  metadata: { namespace: string; name: string; labels: { [SERVICE_PROXY_NAME_LABEL]?: string } };
  spec: {
    type: ServiceType;
    /** Dotted-quad IPv4, or "None" (headless), or "" (ExternalName). */
    clusterIP: string;
    ports: ServicePort[];
    sessionAffinity: 'None' | 'ClientIP';
    sessionAffinityConfig?: { clientIP: { timeoutSeconds: number } };
    internalTrafficPolicy: TrafficPolicy;
    externalTrafficPolicy: TrafficPolicy;
    externalName?: string;
  };
}

export interface EndpointConditions {
  ready?: boolean;
  serving?: boolean;
  terminating?: boolean;
}

export interface Endpoint {
  /** Dotted-quad IPv4 addresses (at least one); the proxy uses the first, as kube-proxy does. */
  addresses: string[];
  conditions: EndpointConditions;
  nodeName?: string;
}

export interface EndpointPort {
  name: string;
  protocol: Protocol;
  port: number;
}

export interface EndpointSlice {
  metadata: { namespace: string; name: string; labels: { [SERVICE_NAME_LABEL]: string } };
  addressType: 'IPv4';
  endpoints: Endpoint[];
  ports: EndpointPort[];
}

/** What a validator returns: the typed object, or why it was skipped. */
export type Validated<T> = { ok: true; value: T } | { ok: false; reason: string };

const DNS_LABEL = /^[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?$/;
const DNS_SUBDOMAIN = /^[a-z0-9]([-a-z0-9.]{0,251}[a-z0-9])?$/;

/** True for an RFC 1123 DNS label (namespaces, port names): safe to write into nft names. */
export function isDNSLabel(s: unknown): s is string {
  return typeof s === 'string' && DNS_LABEL.test(s);
}

/** True for an RFC 1123 DNS subdomain (object and node names), at most 253 characters. */
export function isDNSSubdomain(s: unknown): s is string {
  return typeof s === 'string' && s.length <= 253 && DNS_SUBDOMAIN.test(s);
}

class Invalid extends Error {}

function fail(msg: string): never {
  throw new Invalid(msg);
}

function isObj(v: unknown): v is Record<string, unknown> {
  return typeof v === 'object' && v !== null && !Array.isArray(v);
}

function obj(v: unknown, what: string): Record<string, unknown> {
  if (!isObj(v)) fail(`${what} is not an object`);
  return v;
}

function optObj(v: unknown, what: string): Record<string, unknown> {
  return v === undefined || v === null ? {} : obj(v, what);
}

function list(v: unknown, what: string, max: number): unknown[] {
  if (v === undefined || v === null) return [];
  if (!Array.isArray(v)) fail(`${what} is not a list`);
  if (v.length > max) fail(`${what} has ${v.length} entries (at most ${max})`);
  return v;
}

function portNumber(v: unknown, what: string, opts: { optional?: boolean } = {}): number | undefined {
  if ((v === undefined || v === null || v === 0) && opts.optional) return undefined;
  if (typeof v !== 'number' || !Number.isInteger(v) || v < 1 || v > 65535) fail(`${what} is not a port number`);
  return v;
}

function protocol(v: unknown, what: string): Protocol {
  if (v === undefined || v === null) return 'TCP';
  if (v === 'TCP' || v === 'UDP' || v === 'SCTP') return v;
  fail(`${what} is not TCP, UDP or SCTP`);
}

function portName(v: unknown, what: string): string {
  if (v === undefined || v === null || v === '') return '';
  if (!isDNSLabel(v)) fail(`${what} is not a DNS label`);
  return v;
}

function optBool(v: unknown, what: string): boolean | undefined {
  if (v === undefined || v === null) return undefined;
  if (typeof v !== 'boolean') fail(`${what} is not a boolean`);
  return v;
}

function policy(v: unknown, what: string): TrafficPolicy {
  if (v === undefined || v === null || v === '' || v === 'Cluster') return 'Cluster';
  if (v === 'Local') return 'Local';
  fail(`${what} is not Cluster or Local`);
}

function meta(v: unknown): { namespace: string; name: string; labels: Record<string, unknown> } {
  const m = obj(v, 'metadata');
  if (!isDNSLabel(m.namespace)) fail('metadata.namespace is not a DNS label');
  return { namespace: m.namespace, name: m.name as string, labels: optObj(m.labels, 'metadata.labels') };
}

function guard<T>(fn: () => T): Validated<T> {
  try {
    return { ok: true, value: fn() };
  } catch (err) {
    if (err instanceof Invalid) return { ok: false, reason: err.message };
    throw err;
  }
}

/**
 * Checks a raw Service (from the API server or an informer) and copies the fields the proxy
 * uses. Headless and ExternalName Services are valid here; endpoint selection skips them.
 */
export function validateService(raw: unknown): Validated<Service> {
  return guard(() => {
    const o = obj(raw, 'service');
    const m = meta(o.metadata);
    if (!isDNSLabel(m.name)) fail('metadata.name is not a DNS label');
    const spec = obj(o.spec, 'spec');
    const type = spec.type ?? 'ClusterIP';
    if (type !== 'ClusterIP' && type !== 'NodePort' && type !== 'LoadBalancer' && type !== 'ExternalName') {
      fail('spec.type is not ClusterIP, NodePort, LoadBalancer or ExternalName');
    }
    const clusterIP = spec.clusterIP ?? '';
    if (typeof clusterIP !== 'string') fail('spec.clusterIP is not a string');
    if (type !== 'ExternalName' && clusterIP !== 'None' && !isIPv4(clusterIP)) {
      // an IPv6 Service is not an error, only something this IPv4 proxy does not serve
      fail(clusterIP === '' ? 'spec.clusterIP is empty' : 'spec.clusterIP is not an IPv4 address');
    }
    const rawPorts = list(spec.ports, 'spec.ports', LIMITS.servicePorts);
    const ports: ServicePort[] = rawPorts.map((rp, i) => {
      const p = obj(rp, `spec.ports[${i}]`);
      const port: ServicePort = {
        name: portName(p.name, `spec.ports[${i}].name`),
        protocol: protocol(p.protocol, `spec.ports[${i}].protocol`),
        port: portNumber(p.port, `spec.ports[${i}].port`)!,
      };
      if (typeof p.targetPort === 'number') port.targetPort = portNumber(p.targetPort, `spec.ports[${i}].targetPort`);
      else if (isDNSLabel(p.targetPort)) port.targetPort = p.targetPort;
      const np = portNumber(p.nodePort, `spec.ports[${i}].nodePort`, { optional: true });
      if (np !== undefined) port.nodePort = np;
      return port;
    });
    const seen = new Set<string>();
    for (const p of ports) {
      const key = `${p.name}/${p.protocol}`;
      if (seen.has(key)) fail(`spec.ports has two ports named "${p.name}" for ${p.protocol}`);
      seen.add(key);
      if (p.name === '' && ports.length > 1) fail('spec.ports has an unnamed port among several');
    }
    const affinity = spec.sessionAffinity ?? 'None';
    if (affinity !== 'None' && affinity !== 'ClientIP') fail('spec.sessionAffinity is not None or ClientIP');
    const labels: Service['metadata']['labels'] = {};
    const proxyName = m.labels[SERVICE_PROXY_NAME_LABEL];
    if (typeof proxyName === 'string') labels[SERVICE_PROXY_NAME_LABEL] = proxyName.slice(0, 63);
    const svc: Service = {
      metadata: { namespace: m.namespace, name: m.name, labels },
      spec: {
        type,
        clusterIP,
        ports,
        sessionAffinity: affinity,
        internalTrafficPolicy: policy(spec.internalTrafficPolicy, 'spec.internalTrafficPolicy'),
        externalTrafficPolicy: policy(spec.externalTrafficPolicy, 'spec.externalTrafficPolicy'),
      },
    };
    if (affinity === 'ClientIP') {
      const cfg = optObj(optObj(spec.sessionAffinityConfig, 'spec.sessionAffinityConfig').clientIP, 'spec.sessionAffinityConfig.clientIP');
      const t = cfg.timeoutSeconds ?? LIMITS.affinityDefaultSeconds;
      if (typeof t !== 'number' || !Number.isInteger(t) || t < 1 || t > LIMITS.affinityMaxSeconds) {
        fail(`spec.sessionAffinityConfig.clientIP.timeoutSeconds is not 1..${LIMITS.affinityMaxSeconds}`);
      }
      svc.spec.sessionAffinityConfig = { clientIP: { timeoutSeconds: t } };
    }
    if (type === 'ExternalName' && typeof spec.externalName === 'string') svc.spec.externalName = spec.externalName.slice(0, 253);
    return svc;
  });
}

/**
 * Checks a raw EndpointSlice and copies the fields the proxy uses. Only IPv4 slices are
 * accepted; an endpoint whose first address is not IPv4 fails the slice (the API server
 * guarantees the address type, so a mismatch means the object is not what it claims).
 */
export function validateEndpointSlice(raw: unknown): Validated<EndpointSlice> {
  return guard(() => {
    const o = obj(raw, 'endpointslice');
    const m = meta(o.metadata);
    if (!isDNSSubdomain(m.name)) fail('metadata.name is not a DNS subdomain');
    const svcName = m.labels[SERVICE_NAME_LABEL];
    if (!isDNSLabel(svcName)) fail(`label ${SERVICE_NAME_LABEL} is missing or not a DNS label`);
    if (o.addressType !== 'IPv4') fail('addressType is not IPv4');
    const endpoints: Endpoint[] = list(o.endpoints, 'endpoints', LIMITS.sliceEndpoints).map((re, i) => {
      const e = obj(re, `endpoints[${i}]`);
      const addrs = list(e.addresses, `endpoints[${i}].addresses`, LIMITS.endpointAddresses);
      if (addrs.length === 0) fail(`endpoints[${i}].addresses is empty`);
      for (const a of addrs) if (typeof a !== 'string' || !isIPv4(a)) fail(`endpoints[${i}].addresses has a non-IPv4 address`);
      const c = optObj(e.conditions, `endpoints[${i}].conditions`);
      const conditions: EndpointConditions = {};
      const ready = optBool(c.ready, `endpoints[${i}].conditions.ready`);
      const serving = optBool(c.serving, `endpoints[${i}].conditions.serving`);
      const terminating = optBool(c.terminating, `endpoints[${i}].conditions.terminating`);
      if (ready !== undefined) conditions.ready = ready;
      if (serving !== undefined) conditions.serving = serving;
      if (terminating !== undefined) conditions.terminating = terminating;
      const ep: Endpoint = { addresses: [...(addrs as string[])], conditions };
      if (e.nodeName !== undefined && e.nodeName !== null) {
        if (!isDNSSubdomain(e.nodeName)) fail(`endpoints[${i}].nodeName is not a DNS subdomain`);
        ep.nodeName = e.nodeName;
      }
      return ep;
    });
    const ports: EndpointPort[] = [];
    list(o.ports, 'ports', LIMITS.slicePorts).forEach((rp, i) => {
      const p = obj(rp, `ports[${i}]`);
      const name = portName(p.name, `ports[${i}].name`);
      const proto = protocol(p.protocol, `ports[${i}].protocol`);
      // an unset port means "all ports", which kube-proxy ignores too
      const port = portNumber(p.port, `ports[${i}].port`, { optional: true });
      if (port !== undefined) ports.push({ name, protocol: proto, port });
    });
    return { metadata: { namespace: m.namespace, name: m.name, labels: { [SERVICE_NAME_LABEL]: svcName } }, addressType: 'IPv4', endpoints, ports };
  });
}

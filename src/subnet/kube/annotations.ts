/**
 * flannel's Node annotations (kube subnet manager), pure: names, reading a peer Node into a
 * lease, the patch that publishes our own attributes, and the NetworkUnavailable condition.
 *
 * Annotations (prefix `flannel.alpha.coreos.com/` unless configured):
 *   kube-subnet-manager  "true" once a kube-mode daemon owns the node
 *   backend-type         "vxlan"
 *   backend-data         `{"VNI":1,"VtepMAC":"aa:bb:cc:dd:ee:ff"}`
 *   public-ip            the address peers send VXLAN packets to
 *   public-ip-overwrite  set by the operator; wins over the address the daemon found
 * The subnet is the Node's `spec.podCIDR` (kube-controller-manager --allocate-node-cidrs).
 *
 * Everything read from a Node is untrusted: values are length-bounded and validated, and a node
 * whose annotations do not parse is reported, never turned into a lease.
 */
import { contains, formatCIDR, isIPv4, isMAC, networkOf, overlaps, parseCIDR, type IPv4Net } from '../../ip/ipv4.ts';
import type { NetworkConfig } from '../config.ts';
import type { Lease, LeaseAttrs } from '../lease.ts';

export const DEFAULT_ANNOTATION_PREFIX = 'flannel.alpha.coreos.com';

/** The only backend weft speaks. */
export const BACKEND_TYPE = 'vxlan';

/** Longest backend-data value we parse (flannel's is ~45 bytes; Node annotations may total 256 KiB). */
const MAX_BACKEND_DATA = 4096;

/** The subset of a v1 Node this module reads (a `V1Node` from client-node satisfies it). */
export interface NodeLike {
  metadata?: { name?: string; annotations?: Record<string, string>; resourceVersion?: string };
  spec?: { podCIDR?: string; podCIDRs?: string[] };
  status?: { conditions?: NodeCondition[] };
}

export interface NodeCondition {
  type: string;
  status: string;
  reason?: string;
  message?: string;
  lastTransitionTime?: Date | string;
  lastHeartbeatTime?: Date | string;
}

/** Full annotation keys for one prefix. */
export interface AnnotationNames {
  kubeSubnetManager: string;
  backendType: string;
  backendData: string;
  publicIP: string;
  publicIPOverwrite: string;
}

// A DNS-1123 subdomain (the prefix part of a qualified annotation key), at most 253 characters.
const SUBDOMAIN = /^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$/;

/** Builds the annotation keys; `prefix` may end in `/`. Throws when it is not a DNS subdomain. */
export function annotationNames(prefix: string = DEFAULT_ANNOTATION_PREFIX): AnnotationNames {
  const p = prefix.replace(/\/$/, '');
  if (p.length > 253 || !SUBDOMAIN.test(p)) {
    throw new Error(`annotation prefix "${prefix}" is not a DNS subdomain (e.g. ${DEFAULT_ANNOTATION_PREFIX})`);
  }
  return {
    kubeSubnetManager: `${p}/kube-subnet-manager`,
    backendType: `${p}/backend-type`,
    backendData: `${p}/backend-data`,
    publicIP: `${p}/public-ip`,
    publicIPOverwrite: `${p}/public-ip-overwrite`,
  };
}

/** A unicast, non-zero MAC in lower case, or undefined. */
export function validVtepMAC(value: unknown): string | undefined {
  if (typeof value !== 'string' || !isMAC(value)) return undefined;
  const mac = value.toLowerCase();
  // Multicast (I/G bit) or all-zero MACs cannot be a VTEP; FDB entries for them would be wrong.
  if (parseInt(mac.slice(0, 2), 16) & 1 || mac === '00:00:00:00:00:00') return undefined;
  return mac;
}

/** The node's IPv4 pod CIDR text (`spec.podCIDRs` first, as dual-stack clusters fill it), or undefined. */
export function podCIDRText(node: NodeLike): string | undefined {
  const list = node.spec?.podCIDRs;
  if (Array.isArray(list) && list.length) return list.find((c) => typeof c === 'string' && !c.includes(':'));
  const one = node.spec?.podCIDR;
  return typeof one === 'string' && one !== '' ? one : undefined;
}

/** Parses a podCIDR and checks it is a network (no host bits) inside `network`; throws with the reason. */
export function parsePodCIDR(text: string, network: IPv4Net): IPv4Net {
  let net: IPv4Net;
  try {
    net = parseCIDR(text);
  } catch {
    throw new Error(`podCIDR ${JSON.stringify(text.slice(0, 64))} is not an IPv4 CIDR`);
  }
  if (networkOf(net).ip !== net.ip) throw new Error(`podCIDR ${text} has host bits set`);
  if (net.prefixLen < network.prefixLen || !contains(network, net.ip)) {
    throw new Error(`podCIDR ${text} is outside the network ${formatCIDR(network)}`);
  }
  return net;
}

/** Parses backend-data for vxlan; throws with the reason. */
export function parseBackendDataAnnotation(text: string, vni: number): { VNI: number; VtepMAC: string } {
  if (text.length > MAX_BACKEND_DATA) throw new Error(`backend-data is ${text.length} bytes (at most ${MAX_BACKEND_DATA})`);
  let raw: unknown;
  try {
    raw = JSON.parse(text);
  } catch {
    throw new Error('backend-data is not JSON');
  }
  if (typeof raw !== 'object' || raw === null || Array.isArray(raw)) throw new Error('backend-data is not a JSON object');
  const o = raw as Record<string, unknown>;
  const mac = validVtepMAC(o.VtepMAC);
  if (!mac) throw new Error(`backend-data has no valid unicast "VtepMAC" (${JSON.stringify(o.VtepMAC)?.slice(0, 40)})`);
  const v = o.VNI ?? 1;
  if (typeof v !== 'number' || !Number.isInteger(v) || v < 1 || v > 16_777_215) throw new Error(`backend-data "VNI" ${JSON.stringify(v)?.slice(0, 20)} is not a VNI`);
  if (v !== vni) throw new Error(`backend-data VNI ${v} differs from the network's VNI ${vni}`);
  return { VNI: v, VtepMAC: mac };
}

/** What a peer Node amounts to. */
export type NodeLeaseResult =
  | { kind: 'lease'; lease: Lease }
  /** Not (yet) a member: no podCIDR, or the daemon has not annotated it. Counted, not logged. */
  | { kind: 'pending'; why: string }
  /** Annotated but unusable; logged once and counted. */
  | { kind: 'invalid'; why: string };

/**
 * Reads a peer Node into a lease. `own`: our subnet, which a peer must not overlap. The lease
 * carries BackendData as the etcd schema does (`{"VNI":1,"VtepMAC":".."}`), so the backend code
 * is the same in both modes.
 */
export function nodeToLease(node: NodeLike, opts: { names: AnnotationNames; config: NetworkConfig; own?: IPv4Net }): NodeLeaseResult {
  const { names, config, own } = opts;
  const ann = node.metadata?.annotations ?? {};
  const cidr = podCIDRText(node);
  if (!cidr) return { kind: 'pending', why: 'no podCIDR' };
  const managed = ann[names.kubeSubnetManager];
  const bdText = ann[names.backendData];
  const ipText = ann[names.publicIP];
  const type = ann[names.backendType];
  if (managed !== 'true' || bdText === undefined || ipText === undefined || type === undefined) {
    return { kind: 'pending', why: 'backend annotations not written yet' };
  }
  try {
    const subnet = parsePodCIDR(cidr, config.network);
    if (own && overlaps(subnet, own)) throw new Error(`podCIDR ${cidr} overlaps our subnet ${formatCIDR(own)}`);
    if (type !== BACKEND_TYPE) throw new Error(`backend-type ${JSON.stringify(type.slice(0, 40))} is not supported (only "${BACKEND_TYPE}")`);
    if (!isIPv4(ipText)) throw new Error(`public-ip ${JSON.stringify(ipText.slice(0, 64))} is not an IPv4 address`);
    const backendData = parseBackendDataAnnotation(bdText, config.backend.vni);
    return { kind: 'lease', lease: { subnet, publicIP: ipText, backendType: type, backendData } };
  } catch (err) {
    return { kind: 'invalid', why: (err as Error).message };
  }
}

/**
 * The VtepMAC our own annotation carries, if it is vxlan data for `vni`: after a reboot or a
 * recreated device the daemon creates flannel.<VNI> with it, so the FDB entries every peer holds
 * for us stay valid (flannel #1795).
 */
export function annotatedVtepMAC(node: NodeLike, opts: { names: AnnotationNames; vni: number }): string | undefined {
  const ann = node.metadata?.annotations ?? {};
  if (ann[opts.names.backendType] !== BACKEND_TYPE) return undefined;
  const text = ann[opts.names.backendData];
  if (text === undefined) return undefined;
  try {
    return parseBackendDataAnnotation(text, opts.vni).VtepMAC;
  } catch {
    return undefined;
  }
}

/** Our backend data as flannel writes it: compact JSON, `VNI` before `VtepMAC`. */
export function encodeBackendDataAnnotation(data: unknown): string {
  if (typeof data === 'object' && data !== null && 'VtepMAC' in data) {
    const o = data as { VNI?: unknown; VtepMAC: unknown };
    return JSON.stringify({ VNI: o.VNI, VtepMAC: o.VtepMAC });
  }
  return JSON.stringify(data);
}

export interface OwnAnnotations {
  /** The address peers must use: a valid `public-ip-overwrite`, else ours. */
  publicIP: string;
  /** Strategic-merge patch body with only the changed keys; undefined when nothing changed. */
  patch?: { metadata: { annotations: Record<string, string> } };
  /** A `public-ip-overwrite` that is set but not an IPv4 address (ignored). */
  badOverwrite?: string;
}

/** Computes our annotations from `attrs` and the node as it is now, and the patch to get there. */
export function ownAnnotations(node: NodeLike, opts: { names: AnnotationNames; attrs: LeaseAttrs }): OwnAnnotations {
  const { names, attrs } = opts;
  const ann = node.metadata?.annotations ?? {};
  const overwrite = ann[names.publicIPOverwrite];
  let publicIP = attrs.publicIP;
  let badOverwrite: string | undefined;
  if (overwrite !== undefined && overwrite !== '') {
    if (isIPv4(overwrite)) publicIP = overwrite;
    else badOverwrite = overwrite.slice(0, 64);
  }
  const want: Record<string, string> = {
    [names.backendType]: attrs.backendType,
    [names.backendData]: encodeBackendDataAnnotation(attrs.backendData),
    [names.publicIP]: publicIP,
    [names.kubeSubnetManager]: 'true',
  };
  const changed: Record<string, string> = {};
  for (const [k, v] of Object.entries(want)) if (ann[k] !== v) changed[k] = v;
  const res: OwnAnnotations = { publicIP };
  if (badOverwrite !== undefined) res.badOverwrite = badOverwrite;
  if (Object.keys(changed).length) res.patch = { metadata: { annotations: changed } };
  return res;
}

export const CONDITION_REASON = 'WeftIsUp';

/**
 * Strategic-merge patch for `nodes/<name>/status` setting NetworkUnavailable=False (conditions
 * merge by `type`, so other conditions are untouched); undefined when the node already says so.
 * lastTransitionTime keeps its old value unless the status flips.
 */
export function networkAvailablePatch(node: NodeLike, opts: { now: Date; message: string }): { status: { conditions: NodeCondition[] } } | undefined {
  const cur = node.status?.conditions?.find((c) => c.type === 'NetworkUnavailable');
  if (cur && cur.status === 'False' && cur.reason === CONDITION_REASON && cur.message === opts.message) return undefined;
  const now = opts.now.toISOString().replace(/\.\d{3}Z$/, 'Z');
  const transition = cur && cur.status === 'False' && cur.lastTransitionTime ? toTime(cur.lastTransitionTime) : now;
  return {
    status: {
      conditions: [{ type: 'NetworkUnavailable', status: 'False', reason: CONDITION_REASON, message: opts.message, lastTransitionTime: transition, lastHeartbeatTime: now }],
    },
  };
}

function toTime(t: Date | string): string {
  return t instanceof Date ? t.toISOString().replace(/\.\d{3}Z$/, 'Z') : t;
}

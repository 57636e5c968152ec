/**
 * A node's subnet lease in flannel's etcd schema:
 * key `<prefix>/subnets/10.244.1.0-24`, value
 * `{"PublicIP":"198.51.100.11","BackendType":"vxlan","BackendData":{"VNI":1,"VtepMAC":"aa:.."}}`.
 * BackendData stays opaque here; the backend parses it (flannel keeps the same split, so the
 * lease code never imports vxlan).
 */
import { formatCIDR, formatIPv4, isIPv4, maskOf, parseIPv4, type IPv4Net } from '../ip/ipv4.ts';

/** flannel's default etcd key prefix (config at `<prefix>/config`, leases under `<prefix>/subnets/`). */
export const DEFAULT_ETCD_PREFIX = '/coreos.com/network';

export interface Lease {
  subnet: IPv4Net;
  publicIP: string;
  backendType: string;
  backendData: unknown;
  /** Expiry as epoch milliseconds; undefined: the lease does not expire (or it is not known). */
  expiresAt?: number;
  /** etcd mod revision of the key, when read from etcd. */
  modRevision?: string;
  /** ID of the etcd lease the key is attached to ("0" or absent: none). */
  etcdLeaseId?: string;
}

/** The lease attributes a node publishes (everything except the subnet). */
export interface LeaseAttrs {
  publicIP: string;
  backendType: string;
  backendData: unknown;
}

/** `10.244.1.0/24` -> `10.244.1.0-24` (flannel's key form). */
export function subnetKeyName(subnet: IPv4Net): string {
  return `${formatIPv4(subnet.ip)}-${subnet.prefixLen}`;
}

/** Full etcd key of a subnet's lease. */
export function subnetKey(prefix: string, subnet: IPv4Net): string {
  return `${subnetsPrefix(prefix)}${subnetKeyName(subnet)}`;
}

/** The key prefix under which all leases live (with trailing slash). */
export function subnetsPrefix(prefix: string): string {
  return `${prefix.replace(/\/+$/, '')}/subnets/`;
}

/** Parses `10.244.1.0-24` (or a full key ending in it); undefined when it is not one. */
export function parseSubnetKey(key: string): IPv4Net | undefined {
  const m = /(\d+\.\d+\.\d+\.\d+)-(\d{1,2})$/.exec(key);
  if (!m) return undefined;
  const len = Number(m[2]);
  if (len > 32 || !isIPv4(m[1])) return undefined;
  const ip = parseIPv4(m[1]);
  if ((ip & maskOf(len)) >>> 0 !== ip) return undefined;
  return { ip, prefixLen: len };
}

/** The JSON value stored at the lease key, byte-compatible with flannel's. */
export function encodeLeaseValue(attrs: LeaseAttrs): string {
  return JSON.stringify({ PublicIP: attrs.publicIP, BackendType: attrs.backendType, BackendData: attrs.backendData });
}

/** Parses a lease value; throws with a reason when it is not one. */
export function parseLeaseValue(text: string): LeaseAttrs {
  let raw: unknown;
  try {
    raw = JSON.parse(text);
  } catch (cause) {
    throw new Error('lease value is not JSON', { cause });
  }
  if (typeof raw !== 'object' || raw === null) throw new Error('lease value is not an object');
  const o = raw as Record<string, unknown>;
  if (typeof o.PublicIP !== 'string' || !isIPv4(o.PublicIP)) throw new Error(`lease value has no valid "PublicIP"`);
  return {
    publicIP: o.PublicIP,
    backendType: typeof o.BackendType === 'string' ? o.BackendType : '',
    backendData: o.BackendData ?? null,
  };
}

/** A printable id for a lease: its subnet CIDR. */
export function leaseId(lease: Pick<Lease, 'subnet'>): string {
  return formatCIDR(lease.subnet);
}

/** True when two leases publish the same attributes. */
export function sameAttrs(a: LeaseAttrs, b: LeaseAttrs): boolean {
  return a.publicIP === b.publicIP && a.backendType === b.backendType && JSON.stringify(a.backendData) === JSON.stringify(b.backendData);
}

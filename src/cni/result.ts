/**
 * ADD results: built in one internal shape, encoded in the version the configuration asked
 * for. 0.3.x and 0.4.0 tag each IP with `"version": "4"`; 1.0.0 dropped that field.
 */
import { CniError, ERR } from './errors.ts';
import { compareVersions, type CniVersion, type DNS, type Interface, type IPConfig, type Result, type RouteConfig } from './types.ts';

/** What one ADD made, in result terms. */
export interface Attached {
  bridge: Interface;
  hostVeth: Interface;
  /** The pod's interface; `sandbox` set. */
  pod: Interface;
  /** `a.b.c.d/len` */
  address: string;
  gateway: string;
  routes: RouteConfig[];
}

function asArray(v: unknown, what: string): unknown[] {
  if (v === undefined) return [];
  if (!Array.isArray(v)) throw new CniError(ERR.INVALID_CONFIG, `invalid prevResult: "${what}" is not a list`);
  return v;
}

/** Reads a `prevResult` of any supported version into the internal shape. */
export function parsePrevResult(raw: Record<string, unknown>): Result {
  const interfaces = asArray(raw.interfaces, 'interfaces').map((i) => {
    const o = i as Record<string, unknown>;
    if (!o || typeof o.name !== 'string') throw new CniError(ERR.INVALID_CONFIG, 'invalid prevResult: interface without a name');
    const out: Interface = { name: o.name };
    if (typeof o.mac === 'string') out.mac = o.mac;
    if (typeof o.mtu === 'number') out.mtu = o.mtu;
    if (typeof o.sandbox === 'string') out.sandbox = o.sandbox;
    return out;
  });
  const ips = asArray(raw.ips, 'ips').map((i) => {
    const o = i as Record<string, unknown>;
    if (!o || typeof o.address !== 'string') throw new CniError(ERR.INVALID_CONFIG, 'invalid prevResult: ip without an address');
    const out: IPConfig = { address: o.address };
    if (typeof o.gateway === 'string') out.gateway = o.gateway;
    if (typeof o.interface === 'number') out.interface = o.interface;
    return out;
  });
  const routes = asArray(raw.routes, 'routes').map((r) => {
    const o = r as Record<string, unknown>;
    if (!o || typeof o.dst !== 'string') throw new CniError(ERR.INVALID_CONFIG, 'invalid prevResult: route without a dst');
    const out: RouteConfig = { dst: o.dst };
    if (typeof o.gw === 'string') out.gw = o.gw;
    return out;
  });
  const dns = raw.dns && typeof raw.dns === 'object' ? (raw.dns as DNS) : {};
  return { cniVersion: typeof raw.cniVersion === 'string' ? raw.cniVersion : '', interfaces, ips, routes, dns };
}

/**
 * The result of an ADD: `[bridge, host veth, pod interface]` with the IP on index 2. When
 * chained after another plugin, its result comes first, unchanged, and our indices shift.
 */
export function buildResult(a: Attached, prev?: Result): Result {
  const base = prev?.interfaces.length ?? 0;
  return {
    cniVersion: '',
    interfaces: [...(prev?.interfaces ?? []), a.bridge, a.hostVeth, a.pod],
    ips: [...(prev?.ips ?? []), { address: a.address, gateway: a.gateway, interface: base + 2 }],
    routes: [...(prev?.routes ?? []), ...a.routes],
    dns: prev?.dns ?? {},
  };
}

/** Encodes `r` as the JSON object of `version`. */
export function encodeResult(r: Result, version: CniVersion): Record<string, unknown> {
  const tagged = compareVersions(version, '1.0.0') < 0;
  return {
    cniVersion: version,
    interfaces: r.interfaces.map((i) => {
      const o: Record<string, unknown> = { name: i.name };
      if (i.mac !== undefined) o.mac = i.mac;
      if (i.mtu !== undefined && !tagged) o.mtu = i.mtu;
      if (i.sandbox !== undefined) o.sandbox = i.sandbox;
      return o;
    }),
    ips: r.ips.map((ip) => {
      const o: Record<string, unknown> = {};
      if (tagged) o.version = ip.address.includes(':') ? '6' : '4';
      o.address = ip.address;
      if (ip.gateway !== undefined) o.gateway = ip.gateway;
      if (ip.interface !== undefined) o.interface = ip.interface;
      return o;
    }),
    routes: r.routes.map((rt) => (rt.gw !== undefined ? { dst: rt.dst, gw: rt.gw } : { dst: rt.dst })),
    dns: r.dns,
  };
}

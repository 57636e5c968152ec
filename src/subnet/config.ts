/**
 * The network configuration every node shares, stored by the operator at `<prefix>/config` in
 * flannel's JSON format, e.g.
 * `{"Network":"10.244.0.0/16","SubnetLen":24,"Backend":{"Type":"vxlan","VNI":1,"Port":8472}}`.
 * Parsing fills flannel's defaults and rejects anything a node could not act on, with a message
 * that names the offending field.
 */
import { formatCIDR, maskOf, networkOf, parseCIDR, type IPv4Net } from '../ip/ipv4.ts';

/** The config is missing or invalid; the message says which field and why. */
export class ConfigError extends Error {
  constructor(message: string, options?: { cause?: unknown }) {
    super(message, options);
    this.name = 'ConfigError';
  }
}

export interface VxlanBackendConfig {
  type: 'vxlan';
  vni: number;
  port: number;
}

export interface NetworkConfig {
  /** The whole pod network (FLANNEL_NETWORK). */
  network: IPv4Net;
  /** Prefix length of each node's subnet. */
  subnetLen: number;
  /** First and last subnet network address nodes may lease (inclusive). */
  subnetMin: number;
  subnetMax: number;
  backend: VxlanBackendConfig;
}

export const DEFAULT_VNI = 1;
export const DEFAULT_VXLAN_PORT = 8472;

function field(obj: Record<string, unknown>, name: string): unknown {
  return obj[name];
}

function parseNet(value: unknown, name: string): IPv4Net {
  if (typeof value !== 'string') throw new ConfigError(`network config: "${name}" must be a CIDR string`);
  let net: IPv4Net;
  try {
    net = parseCIDR(value);
  } catch (cause) {
    throw new ConfigError(`network config: "${name}" is not a valid IPv4 CIDR: ${JSON.stringify(value)}`, { cause });
  }
  return net;
}

function intField(obj: Record<string, unknown>, name: string, range: { min: number; max: number; dflt: number }): number {
  const { min, max, dflt } = range;
  const v = field(obj, name);
  if (v === undefined || v === 0) return dflt;
  if (typeof v !== 'number' || !Number.isInteger(v) || v < min || v > max) {
    throw new ConfigError(`network config: "${name}" must be an integer between ${min} and ${max}, got ${JSON.stringify(v)}`);
  }
  return v;
}

/**
 * Parses and validates the config text. SubnetLen defaults to 24 (prefix + 2 for networks too
 * small for that); SubnetMin to the second subnet and SubnetMax to the last; Backend to vxlan
 * with VNI 1 on port 8472. Throws {@link ConfigError}.
 */
export function parseNetworkConfig(text: string): NetworkConfig {
  let raw: unknown;
  try {
    raw = JSON.parse(text);
  } catch (cause) {
    throw new ConfigError('network config is not valid JSON', { cause });
  }
  if (typeof raw !== 'object' || raw === null || Array.isArray(raw)) throw new ConfigError('network config must be a JSON object');
  const obj = raw as Record<string, unknown>;
  if (obj.Network === undefined) throw new ConfigError('network config: "Network" is required');
  if (obj.EnableIPv6 === true || obj.IPv6Network !== undefined) {
    throw new ConfigError('network config: IPv6 ("EnableIPv6"/"IPv6Network") is not supported');
  }
  const given = parseNet(obj.Network, 'Network');
  const network = networkOf(given);
  if (network.ip !== given.ip) {
    throw new ConfigError(`network config: "Network" ${obj.Network} has host bits set (did you mean ${formatCIDR(network)}?)`);
  }
  if (network.prefixLen > 28) throw new ConfigError(`network config: "Network" ${obj.Network} is too small (at most /28)`);

  const subnetLen = intField(obj, 'SubnetLen', { min: network.prefixLen + 1, max: 30, dflt: Math.max(24, network.prefixLen + 2) });
  if (subnetLen <= network.prefixLen) {
    throw new ConfigError(`network config: "SubnetLen" ${subnetLen} must be longer than the network prefix /${network.prefixLen}`);
  }
  const size = 2 ** (32 - subnetLen);
  const first = network.ip;
  const last = (network.ip + 2 ** (32 - network.prefixLen) - size) >>> 0;

  const bound = (name: string, dflt: number): number => {
    const v = obj[name];
    if (v === undefined || v === '') return dflt;
    if (typeof v !== 'string') throw new ConfigError(`network config: "${name}" must be an IPv4 address string`);
    let ip: number;
    try {
      ip = parseCIDR(`${v}/32`).ip;
    } catch (cause) {
      throw new ConfigError(`network config: "${name}" is not a valid IPv4 address: ${JSON.stringify(v)}`, { cause });
    }
    if ((ip & maskOf(subnetLen)) >>> 0 !== ip) throw new ConfigError(`network config: "${name}" ${v} is not aligned to /${subnetLen}`);
    if (ip < first || ip > last) throw new ConfigError(`network config: "${name}" ${v} is outside "Network" ${formatCIDR(network)}`);
    return ip;
  };
  const subnetMin = bound('SubnetMin', Math.min((first + size) >>> 0, last));
  const subnetMax = bound('SubnetMax', last);
  if (subnetMin > subnetMax) throw new ConfigError('network config: "SubnetMin" is greater than "SubnetMax"');

  const backendRaw = obj.Backend ?? { Type: 'vxlan' };
  if (typeof backendRaw !== 'object' || backendRaw === null || Array.isArray(backendRaw)) {
    throw new ConfigError('network config: "Backend" must be an object');
  }
  const b = backendRaw as Record<string, unknown>;
  const type = b.Type ?? 'vxlan';
  if (type !== 'vxlan') throw new ConfigError(`network config: backend type ${JSON.stringify(type)} is not supported (only "vxlan")`);
  const backend: VxlanBackendConfig = {
    type: 'vxlan',
    vni: intField(b, 'VNI', { min: 1, max: 16_777_215, dflt: DEFAULT_VNI }),
    port: intField(b, 'Port', { min: 1, max: 65_535, dflt: DEFAULT_VXLAN_PORT }),
  };
  return { network, subnetLen, subnetMin, subnetMax, backend };
}

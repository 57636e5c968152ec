/**
 * The node daemon's subnet file (flannel's `subnet.env`): what this node's pods may use.
 * ```
 * FLANNEL_NETWORK=10.244.0.0/16
 * FLANNEL_SUBNET=10.244.1.1/24   (gateway/len)
 * FLANNEL_MTU=1450
 * FLANNEL_IPMASQ=true
 * ```
 * Missing means weftd has not leased a subnet yet: a retryable error (11), not a failure.
 */
import { readFileBounded } from '../core/readfile.ts';
import { broadcastOf, contains, formatCIDR, networkOf, parseCIDR, type IPv4Net } from '../ip/ipv4.ts';
import { CniError, ERR, retryable } from './errors.ts';

export interface SubnetInfo {
  /** The whole pod network (FLANNEL_NETWORK). */
  network: IPv4Net;
  /** This node's subnet, host bits cleared. */
  subnet: IPv4Net;
  /** The gateway address (FLANNEL_SUBNET's address), on the bridge. */
  gateway: number;
  mtu: number;
  ipmasq: boolean;
}

function malformed(path: string, why: string): CniError {
  return new CniError(ERR.INVALID_CONFIG, `malformed subnet file "${path}": ${why}`);
}

/** Parses subnet file text; throws code 7 naming what is wrong. */
export function parseSubnetFile(text: string, path = 'subnet.env'): SubnetInfo {
  const kv = new Map<string, string>();
  for (const rawLine of text.split('\n')) {
    const line = rawLine.trim();
    if (!line || line.startsWith('#')) continue;
    const eq = line.indexOf('=');
    if (eq <= 0) throw malformed(path, `line "${line}" is not KEY=VALUE`);
    kv.set(line.slice(0, eq).trim(), line.slice(eq + 1).trim());
  }
  const need = (key: string) => {
    const v = kv.get(key);
    if (v === undefined || v === '') throw malformed(path, `${key} is missing`);
    return v;
  };
  let network: IPv4Net;
  let gw: IPv4Net;
  try {
    network = networkOf(parseCIDR(need('FLANNEL_NETWORK')));
  } catch (err) {
    if (err instanceof CniError) throw err;
    throw malformed(path, `FLANNEL_NETWORK: ${(err as Error).message}`);
  }
  try {
    gw = parseCIDR(need('FLANNEL_SUBNET'));
  } catch (err) {
    if (err instanceof CniError) throw err;
    throw malformed(path, `FLANNEL_SUBNET: ${(err as Error).message}`);
  }
  const subnet = networkOf(gw);
  if (subnet.prefixLen > 30) throw malformed(path, `FLANNEL_SUBNET ${formatCIDR(gw)} is too small for pods (longer than /30)`);
  if (subnet.prefixLen < network.prefixLen || !contains(network, subnet.ip)) {
    throw malformed(path, `FLANNEL_SUBNET ${formatCIDR(gw)} is not inside FLANNEL_NETWORK ${formatCIDR(network)}`);
  }
  if (gw.ip === subnet.ip || gw.ip === broadcastOf(subnet)) {
    throw malformed(path, `FLANNEL_SUBNET ${formatCIDR(gw)} must name the gateway (a host address), e.g. the first one`);
  }
  const mtuText = need('FLANNEL_MTU');
  const mtu = Number(mtuText);
  if (!/^\d+$/.test(mtuText) || mtu < 68 || mtu > 65535) throw malformed(path, `FLANNEL_MTU "${mtuText}" is not an MTU`);
  const masq = kv.get('FLANNEL_IPMASQ') ?? 'false';
  if (masq !== 'true' && masq !== 'false') throw malformed(path, `FLANNEL_IPMASQ "${masq}" is not true or false`);
  return { network, subnet, gateway: gw.ip, mtu, ipmasq: masq === 'true' };
}

/** Reads the subnet file: missing -> retryable (11, weftd not ready); malformed -> 7; unreadable -> 5. */
export function readSubnetFile(path: string): SubnetInfo {
  let text: string;
  try {
    text = readFileBounded(path, 64 << 10); // a subnet.env is ~100 bytes
  } catch (cause) {
    if ((cause as NodeJS.ErrnoException).code === 'ENOENT') {
      throw retryable(`node daemon (weftd) is not ready: subnet file "${path}" does not exist yet`, cause);
    }
    throw new CniError(ERR.IO, `read subnet file "${path}"`, (cause as Error).message, { cause });
  }
  return parseSubnetFile(text, path);
}

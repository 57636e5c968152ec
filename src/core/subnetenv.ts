/**
 * flannel's subnet file (`/run/flannel/subnet.env`): what this node's pods may use. weftd
 * writes it, the CNI plugin reads it, `weftctl check` compares it. The one home of the format:
 * ```
 * FLANNEL_NETWORK=10.244.0.0/16
 * FLANNEL_SUBNET=10.244.1.1/24   (gateway/len)
 * FLANNEL_MTU=1450
 * FLANNEL_IPMASQ=true
 * ```
 * It lives in core, not in src/subnet, because the CNI plugin's bundle may not load daemon code:
 * it imports only the IPv4 helpers and node:fs.
 *
 * A lost subnet (another node holds our lease's key; src/daemon/lease.ts) is written as the same
 * file without FLANNEL_SUBNET and with two weft keys instead:
 * ```
 * WEFT_SUBNET_LOST=10.244.1.1/24     (the gateway/len we had)
 * WEFT_SUBNET_HOLDER=198.51.100.12   (the public IP of the node holding it now)
 * ```
 * A file without FLANNEL_SUBNET makes ADD and STATUS fail in both weft's plugin
 * ({@link SubnetLostError}) and flannel's ("subnet.env is missing FLANNEL_SUBNET"); DEL, CHECK
 * and GC never read the file, so existing pods keep working and can still be deleted. The
 * daemon reads WEFT_SUBNET_LOST back after a restart, so it does not forget which subnet the
 * node's pods are on.
 */
import { mkdirSync, readFileSync, renameSync, rmSync, writeFileSync } from 'node:fs';
import { dirname } from 'node:path';
import { broadcastOf, contains, formatCIDR, formatIPv4, networkOf, parseCIDR, type IPv4Net } from '../ip/ipv4.ts';

/** The file's contents. */
export interface SubnetEnv {
  /** The whole pod network (FLANNEL_NETWORK). */
  network: IPv4Net;
  /** This node's subnet, host bits cleared. */
  subnet: IPv4Net;
  /** The gateway address (FLANNEL_SUBNET's address), on the bridge. */
  gateway: number;
  mtu: number;
  ipMasq: boolean;
}

/** The file does not say what it must; the message names the problem. */
export class SubnetEnvError extends Error {
  constructor(message: string) {
    super(message);
    this.name = 'SubnetEnvError';
  }
}

/** `KEY=VALUE` lines (blank lines and `#` comments skipped); throws on any other line. */
export function parseSubnetEnvVars(text: string): Map<string, string> {
  const kv = new Map<string, string>();
  for (const rawLine of text.split('\n')) {
    const line = rawLine.trim();
    if (!line || line.startsWith('#')) continue;
    const eq = line.indexOf('=');
    if (eq <= 0) throw new SubnetEnvError(`line "${line}" is not KEY=VALUE`);
    kv.set(line.slice(0, eq).trim(), line.slice(eq + 1).trim());
  }
  return kv;
}

/** The file says weftd lost the node's subnet to another node: no new pods for now. */
export class SubnetLostError extends SubnetEnvError {
  constructor(lost: string, holder: string) {
    super(`weftd lost this node's subnet ${lost} to the node at ${holder || 'an unknown address'}; no new pods until weftd reclaims it or, once no pod is left on it, moves to a new one`);
    this.name = 'SubnetLostError';
  }
}

/** Parses and validates the file's text; throws {@link SubnetEnvError} naming what is wrong. */
export function parseSubnetEnv(text: string): SubnetEnv {
  const kv = parseSubnetEnvVars(text);
  const lost = kv.get('WEFT_SUBNET_LOST');
  if (lost) throw new SubnetLostError(lost, kv.get('WEFT_SUBNET_HOLDER') ?? '');
  const need = (key: string) => {
    const v = kv.get(key);
    if (v === undefined || v === '') throw new SubnetEnvError(`${key} is missing`);
    return v;
  };
  const cidr = (key: string) => {
    const v = need(key);
    try {
      return parseCIDR(v);
    } catch (err) {
      throw new SubnetEnvError(`${key}: ${(err as Error).message}`);
    }
  };
  const network = networkOf(cidr('FLANNEL_NETWORK'));
  const gw = cidr('FLANNEL_SUBNET');
  const subnet = networkOf(gw);
  if (subnet.prefixLen > 30) throw new SubnetEnvError(`FLANNEL_SUBNET ${formatCIDR(gw)} is too small for pods (longer than /30)`);
  if (subnet.prefixLen < network.prefixLen || !contains(network, subnet.ip)) {
    throw new SubnetEnvError(`FLANNEL_SUBNET ${formatCIDR(gw)} is not inside FLANNEL_NETWORK ${formatCIDR(network)}`);
  }
  if (gw.ip === subnet.ip || gw.ip === broadcastOf(subnet)) {
    throw new SubnetEnvError(`FLANNEL_SUBNET ${formatCIDR(gw)} must name the gateway (a host address), e.g. the first one`);
  }
  const mtuText = need('FLANNEL_MTU');
  const mtu = Number(mtuText);
  if (!/^\d+$/.test(mtuText) || mtu < 68 || mtu > 65535) throw new SubnetEnvError(`FLANNEL_MTU "${mtuText}" is not an MTU`);
  const masq = kv.get('FLANNEL_IPMASQ') ?? 'false';
  if (masq !== 'true' && masq !== 'false') throw new SubnetEnvError(`FLANNEL_IPMASQ "${masq}" is not true or false`);
  return { network, subnet, gateway: gw.ip, mtu, ipMasq: masq === 'true' };
}

/** What the daemon writes: the gateway is the subnet's first address. */
export type SubnetEnvContents = Omit<SubnetEnv, 'gateway'>;

/** The gateway weftd publishes for `subnet` (its first address), as FLANNEL_SUBNET writes it. */
export function gatewayOf(subnet: IPv4Net): string {
  return `${formatIPv4((subnet.ip + 1) >>> 0)}/${subnet.prefixLen}`;
}

/** The file's text (pure). */
export function formatSubnetEnv(c: SubnetEnvContents): string {
  return [`FLANNEL_NETWORK=${formatCIDR(c.network)}`, `FLANNEL_SUBNET=${gatewayOf(c.subnet)}`, `FLANNEL_MTU=${c.mtu}`, `FLANNEL_IPMASQ=${c.ipMasq}`, ''].join('\n');
}

/** The file's text for a lost subnet (pure): FLANNEL_SUBNET replaced by the WEFT_SUBNET_* keys. */
export function formatLostSubnetEnv(c: SubnetEnvContents, holder: string): string {
  return [`FLANNEL_NETWORK=${formatCIDR(c.network)}`, `WEFT_SUBNET_LOST=${gatewayOf(c.subnet)}`, `WEFT_SUBNET_HOLDER=${holder}`, `FLANNEL_MTU=${c.mtu}`, `FLANNEL_IPMASQ=${c.ipMasq}`, ''].join('\n');
}

/**
 * Writes atomically (temp file + rename in the same directory), so a reader never sees half a
 * file. With `lostTo` (the holder's public IP) the lost-subnet form is written.
 */
export function writeSubnetEnv(path: string, c: SubnetEnvContents, opts: { lostTo?: string } = {}): void {
  mkdirSync(dirname(path), { recursive: true });
  const tmp = `${path}.${process.pid}.tmp`;
  try {
    writeFileSync(tmp, opts.lostTo === undefined ? formatSubnetEnv(c) : formatLostSubnetEnv(c, opts.lostTo), { mode: 0o644 });
    renameSync(tmp, path);
  } catch (err) {
    rmSync(tmp, { force: true });
    throw new Error(`write subnet file "${path}"`, { cause: err });
  }
}

/**
 * The subnet an existing file records (our previous lease, or the lost one), undefined when the
 * file is missing or says nothing usable. Only that key is needed, so the rest is not judged.
 */
export function readPreviousSubnet(path: string): IPv4Net | undefined {
  try {
    const kv = parseSubnetEnvVars(readFileSync(path, 'utf8'));
    const gw = kv.get('FLANNEL_SUBNET') ?? kv.get('WEFT_SUBNET_LOST');
    return gw ? networkOf(parseCIDR(gw)) : undefined;
  } catch {
    return undefined;
  }
}

/**
 * flannel's subnet file (`/run/flannel/subnet.env`), which the CNI plugin reads:
 * FLANNEL_NETWORK, FLANNEL_SUBNET (gateway/len), FLANNEL_MTU, FLANNEL_IPMASQ. Written with
 * temp file + rename so a reader never sees half a file.
 */
import { mkdirSync, readFileSync, renameSync, writeFileSync, rmSync } from 'node:fs';
import { dirname } from 'node:path';
import { formatCIDR, formatIPv4, networkOf, parseCIDR, type IPv4Net } from '../ip/ipv4.ts';

export interface SubnetFileContents {
  network: IPv4Net;
  subnet: IPv4Net;
  mtu: number;
  ipMasq: boolean;
}

/** The file's text (pure). FLANNEL_SUBNET carries the gateway (first address) of the subnet. */
export function formatSubnetFile(c: SubnetFileContents): string {
  return [
    `FLANNEL_NETWORK=${formatCIDR(c.network)}`,
    `FLANNEL_SUBNET=${formatIPv4((c.subnet.ip + 1) >>> 0)}/${c.subnet.prefixLen}`,
    `FLANNEL_MTU=${c.mtu}`,
    `FLANNEL_IPMASQ=${c.ipMasq}`,
    '',
  ].join('\n');
}

/** Writes atomically (temp + rename in the same directory). */
export function writeSubnetFile(path: string, c: SubnetFileContents): void {
  mkdirSync(dirname(path), { recursive: true });
  const tmp = `${path}.${process.pid}.tmp`;
  try {
    writeFileSync(tmp, formatSubnetFile(c), { mode: 0o644 });
    renameSync(tmp, path);
  } catch (err) {
    rmSync(tmp, { force: true });
    throw new Error(`write subnet file "${path}"`, { cause: err });
  }
}

/** The subnet recorded in an existing file (our previous lease), if readable. */
export function readPreviousSubnet(path: string): IPv4Net | undefined {
  let text: string;
  try {
    text = readFileSync(path, 'utf8');
  } catch {
    return undefined;
  }
  const m = /^FLANNEL_SUBNET=(\S+)$/m.exec(text);
  if (!m) return undefined;
  try {
    return networkOf(parseCIDR(m[1]));
  } catch {
    return undefined;
  }
}

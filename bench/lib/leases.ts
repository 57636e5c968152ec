/**
 * Synthetic peers: lease i is the i-th /26 of 198.18.0.0/15 (flannel's lease JSON, reference
 * §4). Public IPs cycle through 203.0.113.1-254 (only documentation ranges may be used, so with
 * 1000 peers each address is shared by a few peers; every peer has its own VTEP MAC).
 */
export const PEER_NETWORK = '198.18.0.0/15';
export const PEER_SUBNET_LEN = 26;

export interface SyntheticLease {
  subnet: string;
  /** The peer subnet's network address: neighbor and route gateway. */
  gw: string;
  publicIP: string;
  mac: string;
  key: string;
  value: string;
}

function ipOf(n: number): string {
  return [n >>> 24, (n >>> 16) & 255, (n >>> 8) & 255, n & 255].join('.');
}

/** Index of the /26 containing `ip` (inverse of {@link leaseFor}'s subnet). */
export function indexOf(ip: string): number {
  const o = ip.split('.').map(Number);
  const n = ((o[0] << 24) >>> 0) + (o[1] << 16) + (o[2] << 8) + o[3];
  return (n - ((198 << 24) >>> 0) - (18 << 16)) >>> (32 - PEER_SUBNET_LEN);
}

export function leaseFor(i: number, prefix: string): SyntheticLease {
  const base = ((198 << 24) >>> 0) + (18 << 16);
  const net = base + i * 2 ** (32 - PEER_SUBNET_LEN);
  const gw = ipOf(net);
  const publicIP = `203.0.113.${1 + (i % 254)}`;
  const mac = `0e:57:${((i >> 8) & 255).toString(16).padStart(2, '0')}:${(i & 255).toString(16).padStart(2, '0')}:00:01`;
  const key = `${prefix}/subnets/${gw}-${PEER_SUBNET_LEN}`;
  const value = JSON.stringify({ PublicIP: publicIP, BackendType: 'vxlan', BackendData: { VNI: 1, VtepMAC: mac } });
  return { subnet: `${gw}/${PEER_SUBNET_LEN}`, gw, publicIP, mac, key, value };
}

/**
 * Minimal IPv4 arithmetic shared by IPAM, netlink and the subnet manager. Kept dependency-free
 * because it sits on the CNI binary's start-up path (every pod pays for each module loaded).
 */

/** An IPv4 network or interface address: `ip` as a 32-bit unsigned integer plus prefix length. */
export interface IPv4Net {
  readonly ip: number;
  readonly prefixLen: number;
}

const DOTTED = /^(\d{1,3})\.(\d{1,3})\.(\d{1,3})\.(\d{1,3})$/;

/** Parses dotted-quad IPv4 into an unsigned integer; throws on anything else. */
export function parseIPv4(text: string): number {
  const m = DOTTED.exec(text);
  if (!m) throw new Error(`invalid IPv4 address "${text}"`);
  let v = 0;
  for (let i = 1; i <= 4; i++) {
    const octet = Number(m[i]);
    if (octet > 255 || (m[i].length > 1 && m[i][0] === '0')) throw new Error(`invalid IPv4 address "${text}"`);
    v = v * 256 + octet;
  }
  return v;
}

/** True when `text` is a dotted-quad IPv4 address. */
export function isIPv4(text: string): boolean {
  try {
    parseIPv4(text);
    return true;
  } catch {
    return false;
  }
}

export function formatIPv4(ip: number): string {
  return `${(ip >>> 24) & 255}.${(ip >>> 16) & 255}.${(ip >>> 8) & 255}.${ip & 255}`;
}

/** Parses `a.b.c.d/len`, keeping host bits (an interface address); see {@link networkOf}. */
export function parseCIDR(text: string): IPv4Net {
  const slash = text.indexOf('/');
  if (slash < 0) throw new Error(`invalid CIDR "${text}": missing prefix length`);
  const lenText = text.slice(slash + 1);
  if (!/^\d{1,2}$/.test(lenText) || Number(lenText) > 32) throw new Error(`invalid CIDR "${text}": bad prefix length`);
  return { ip: parseIPv4(text.slice(0, slash)), prefixLen: Number(lenText) };
}

export function formatCIDR(net: IPv4Net): string {
  return `${formatIPv4(net.ip)}/${net.prefixLen}`;
}

export function maskOf(prefixLen: number): number {
  return prefixLen === 0 ? 0 : (0xffffffff << (32 - prefixLen)) >>> 0;
}

/** The network containing `net` (host bits cleared). */
export function networkOf(net: IPv4Net): IPv4Net {
  return { ip: (net.ip & maskOf(net.prefixLen)) >>> 0, prefixLen: net.prefixLen };
}

export function broadcastOf(net: IPv4Net): number {
  return (networkOf(net).ip | (~maskOf(net.prefixLen) >>> 0)) >>> 0;
}

export function contains(net: IPv4Net, ip: number): boolean {
  const mask = maskOf(net.prefixLen);
  return (ip & mask) >>> 0 === (net.ip & mask) >>> 0;
}

/** True when the two networks share any address. */
export function overlaps(a: IPv4Net, b: IPv4Net): boolean {
  const len = Math.min(a.prefixLen, b.prefixLen);
  return contains({ ip: a.ip, prefixLen: len }, b.ip);
}

export function ipv4ToBuffer(ip: number): Buffer {
  const b = Buffer.alloc(4);
  b.writeUInt32BE(ip >>> 0);
  return b;
}

export function bufferToIPv4(b: Buffer | Uint8Array): number {
  return ((b[0] << 24) | (b[1] << 16) | (b[2] << 8) | b[3]) >>> 0;
}

const MAC = /^([0-9a-f]{2}:){5}[0-9a-f]{2}$/i;

export function isMAC(text: string): boolean {
  return MAC.test(text);
}

export function macToBuffer(mac: string): Buffer {
  if (!MAC.test(mac)) throw new Error(`invalid MAC address "${mac}"`);
  return Buffer.from(mac.split(':').map((h) => parseInt(h, 16)));
}

/**
 * A random locally administered unicast MAC, as the kernel picks for a device created without
 * one (eth_hw_addr_random). Math.random suffices: the address needs to be unique on a bridge,
 * not unguessable, and node:crypto would cost the CNI plugin's start-up a module load.
 */
export function randomMAC(): string {
  const b = Array.from({ length: 6 }, () => Math.floor(Math.random() * 256));
  b[0] = (b[0] & 0xfe) | 0x02;
  return bufferToMAC(Uint8Array.from(b));
}

export function bufferToMAC(b: Buffer | Uint8Array): string {
  return Array.from(b, (x) => x.toString(16).padStart(2, '0')).join(':');
}

/**
 * Which subnet a node takes (pure). In order: the lease that already carries our public IP
 * (a restart); the subnet from our previous subnet file if nobody holds it, or if its lease
 * carries our own backend data (same VTEP MAC: this node came back with a new IP); else a
 * random free one between SubnetMin and SubnetMax.
 */
import { contains, formatCIDR, formatIPv4, type IPv4Net } from '../ip/ipv4.ts';
import { markRetryable } from '../core/errors.ts';
import type { NetworkConfig } from './config.ts';
import type { Lease } from './lease.ts';

/** Every subnet in the configured range is leased. */
export class OutOfSubnetsError extends Error {
  readonly network: string;
  constructor(network: string, taken: number) {
    super(`out of subnets: all ${taken} subnets of network ${network} are leased`);
    this.name = 'OutOfSubnetsError';
    this.network = network;
    // A lease may expire or be deleted: waiting helps.
    markRetryable(this);
  }
}

export type SubnetChoice = { kind: 'existing'; lease: Lease } | { kind: 'new'; subnet: IPv4Net; reason: 'previous' | 'random' };

export interface ChooseOptions {
  config: NetworkConfig;
  leases: Lease[];
  publicIP: string;
  /** The subnet from our old subnet file, if any. */
  previous?: IPv4Net;
  /** Our backend data; a lease on `previous` with exactly this data is ours. */
  backendData?: unknown;
  /** Uniform in [0, 1); injected for tests. */
  random?: () => number;
}

/** Throws {@link OutOfSubnetsError} when nothing is free. */
export function chooseSubnet(opts: ChooseOptions): SubnetChoice {
  const { config, leases, publicIP } = opts;
  const mine = leases.find((l) => l.publicIP === publicIP && l.subnet.prefixLen === config.subnetLen && contains(config.network, l.subnet.ip));
  if (mine) return { kind: 'existing', lease: mine };

  const taken = new Set(leases.map((l) => `${l.subnet.ip}/${l.subnet.prefixLen}`));
  const inRange = (s: IPv4Net) => s.prefixLen === config.subnetLen && s.ip >= config.subnetMin && s.ip <= config.subnetMax && contains(config.network, s.ip);
  const prev = opts.previous;
  if (prev && inRange(prev)) {
    if (!taken.has(`${prev.ip}/${prev.prefixLen}`)) return { kind: 'new', subnet: prev, reason: 'previous' };
    const held = leases.find((l) => l.subnet.ip === prev.ip && l.subnet.prefixLen === prev.prefixLen);
    if (held && opts.backendData !== undefined && JSON.stringify(held.backendData) === JSON.stringify(opts.backendData)) {
      return { kind: 'existing', lease: held };
    }
  }

  const size = 2 ** (32 - config.subnetLen);
  const free: number[] = [];
  for (let ip = config.subnetMin; ip <= config.subnetMax; ip += size) {
    if (!taken.has(`${ip}/${config.subnetLen}`)) free.push(ip);
  }
  if (!free.length) {
    const total = (config.subnetMax - config.subnetMin) / size + 1;
    throw new OutOfSubnetsError(formatCIDR(config.network), total);
  }
  const pick = free[Math.floor((opts.random ?? Math.random)() * free.length)];
  return { kind: 'new', subnet: { ip: pick, prefixLen: config.subnetLen }, reason: 'random' };
}

/** `10.244.1.0/24` for logs. */
export function describeSubnet(s: IPv4Net): string {
  return `${formatIPv4(s.ip)}/${s.prefixLen}`;
}

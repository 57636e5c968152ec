/**
 * Pure address selection, host-local's way: round-robin starting after the last reserved
 * address, wrapping at the end of the range, never handing out the network, gateway or
 * broadcast address. Which addresses are taken is the store's business (./store.ts).
 */
import { broadcastOf, formatCIDR, networkOf, type IPv4Net } from '../ip/ipv4.ts';

/** The node subnet pods draw from and its gateway (never allocated). */
export interface Range {
  subnet: IPv4Net;
  gateway: number;
}

/** Who holds an address: host-local's key. */
export interface Owner {
  containerID: string;
  ifname: string;
}

/** The subnet has no address left. */
export class NoFreeAddressError extends Error {
  readonly subnet: string;
  constructor(subnet: IPv4Net) {
    const text = formatCIDR(networkOf(subnet));
    super(`no free address in ${text}`);
    this.name = 'NoFreeAddressError';
    this.subnet = text;
  }
}

/** First and last assignable addresses (network and broadcast excluded). */
export function bounds(range: Range): { first: number; last: number } {
  const net = networkOf(range.subnet).ip;
  return { first: net + 1, last: broadcastOf(range.subnet) - 1 };
}

/** True when `ip` may be handed to a pod. */
export function isAssignable(range: Range, ip: number): boolean {
  const { first, last } = bounds(range);
  return ip >= first && ip <= last && ip !== range.gateway;
}

/** How many addresses pods can get from this range. */
export function capacity(range: Range): number {
  const { first, last } = bounds(range);
  const n = last - first + 1;
  const gatewayInside = range.gateway >= first && range.gateway <= last;
  return Math.max(0, gatewayInside ? n - 1 : n);
}

/**
 * Every assignable address in allocation order: starting right after `lastReserved` when it is
 * inside the range (round-robin), from the start otherwise, wrapping once around.
 */
export function* candidates(range: Range, lastReserved?: number): Generator<number> {
  const { first, last } = bounds(range);
  if (last < first) return;
  const start = lastReserved !== undefined && lastReserved >= first && lastReserved < last ? lastReserved + 1 : first;
  const size = last - first + 1;
  for (let i = 0; i < size; i++) {
    const ip = first + ((start - first + i) % size);
    if (ip !== range.gateway) yield ip;
  }
}

/** The next free address given what is taken; undefined when exhausted. */
export function pickAddress(range: Range, taken: ReadonlySet<number>, lastReserved?: number): number | undefined {
  for (const ip of candidates(range, lastReserved)) {
    if (!taken.has(ip)) return ip;
  }
  return undefined;
}

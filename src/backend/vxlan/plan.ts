/**
 * The reconcile planner: from the wanted peers and what the kernel has, decide which peer
 * entries to put back and which entries nobody wants. Pure: it reads a dump, whatever produced
 * it (a pass's netlink dumps today; a cache kept from rtnetlink notifications could feed it
 * the same way), and returns a plan that the executor (executor.ts) carries out.
 *
 * Entries a job is working on (or worked on while the dump was taken) are left out: what the
 * dump shows for them may already be outdated, and the job is putting them right anyway. The
 * caller says which those are with `settled`.
 *
 * The device is judged apart ({@link deviceNeedsRepair}, {@link addressNeedsRepair}) and
 * before the peer entries: repairing it can change the index those entries hang off, so the
 * peer dump is only worth reading once the device is right.
 */
import { formatCIDR, type IPv4Net } from '../../ip/ipv4.ts';
import type { Addr, Fdb, Link, Neigh, Route } from '../../netlink/index.ts';
import { addressFaults, deviceFaults, fdbState, neighState, routeState, type DeviceWant } from './expected.ts';
import type { Peer, WantedPeers } from './peers.ts';

/** What the kernel has, from any source: entries of other devices are ignored. */
export interface Dump {
  neighs: readonly Neigh[];
  fdbs: readonly Fdb[];
  routes: readonly Route[];
}

export type PeerNeed = 'neighbor' | 'fdb' | 'route';

/** A wanted peer's entries to write again, in programming order. */
export interface PeerRepair {
  id: string;
  peer: Peer;
  needs: PeerNeed[];
}

/** An entry on the device that no wanted peer needs. */
export type StaleEntry = { kind: 'neighbor'; neigh: Neigh } | { kind: 'fdb'; fdb: Fdb } | { kind: 'route'; route: Route };

export interface Plan {
  repairs: PeerRepair[];
  stale: StaleEntry[];
}

/** The job-queue key of work on a stale entry (see peerKeys in peers.ts). */
export function staleKey(s: StaleEntry): string {
  if (s.kind === 'neighbor') return s.neigh.ip;
  if (s.kind === 'fdb') return s.fdb.mac;
  const [gateway = ''] = s.route.dst.split('/');
  return gateway;
}

/**
 * Whether no wanted peer needs `s`. Only entries weft makes count: permanent neighbors and routes
 * with a gateway (a kernel-made neighbor or a device route is someone else's).
 */
export function isStale(wanted: WantedPeers, s: StaleEntry): boolean {
  if (s.kind === 'neighbor') return !!s.neigh.permanent && !wanted.hasGateway(s.neigh.ip);
  if (s.kind === 'fdb') return !wanted.usesFdb(s.fdb.mac, s.fdb.dst);
  return !!s.route.gateway && !wanted.has(s.route.dst);
}

/**
 * Plans one pass over the peer entries on the device `index`: repairs in wanted-set order, then
 * stale neighbors, FDB entries and routes in dump order. With `keys` (job-queue keys: gateways
 * and MACs, see peerKeys) only the peers and stale entries with one of those keys are planned:
 * the event path (drift.ts) asks about what a notification touched, not the whole table.
 */
export function planPeers(wanted: WantedPeers, dump: Dump, opts: { index: number; settled?: (key: string) => boolean; keys?: ReadonlySet<string> }): Plan {
  const { index, keys } = opts;
  const settled = opts.settled ?? (() => true);
  const inScope = keys ? (k: string) => keys.has(k) : () => true;
  const neighs = dump.neighs.filter((n) => n.index === index);
  const fdbs = dump.fdbs.filter((f) => f.index === index);
  const neighByIP = new Map(neighs.map((n) => [n.ip, n]));
  const fdbsByMac = new Map<string, Fdb[]>();
  for (const f of fdbs) {
    const list = fdbsByMac.get(f.mac);
    if (list) list.push(f);
    else fdbsByMac.set(f.mac, [f]);
  }
  const routeByDst = new Map(dump.routes.filter((r) => r.index === index).map((r) => [r.dst, r]));

  const repairs: PeerRepair[] = [];
  for (const [id, p] of wanted.entries()) {
    if (!inScope(p.gateway) && !inScope(p.mac)) continue;
    if (!settled(p.gateway) || !settled(p.mac)) continue;
    const needs: PeerNeed[] = [];
    if (neighState(neighByIP.get(p.gateway), p) !== 'ok') needs.push('neighbor');
    if (fdbState(fdbsByMac.get(p.mac) ?? [], p) !== 'ok') needs.push('fdb');
    if (routeState(routeByDst.get(formatCIDR(p.subnet)), p) !== 'ok') needs.push('route');
    if (needs.length) repairs.push({ id, peer: p, needs });
  }
  const candidates: StaleEntry[] = [
    ...neighs.map((neigh) => ({ kind: 'neighbor' as const, neigh })),
    ...fdbs.map((fdb) => ({ kind: 'fdb' as const, fdb })),
    ...[...routeByDst.values()].map((route) => ({ kind: 'route' as const, route })),
  ];
  const stale = candidates.filter((s) => inScope(staleKey(s)) && isStale(wanted, s) && settled(staleKey(s)));
  return { repairs, stale };
}

/** What the device is judged against in a pass: the spec it was made with, on the index we use. */
export interface DeviceFacts {
  /** The device as read now; undefined when it is gone. */
  found?: Link;
  /** The index peer entries hang off. */
  index: number;
  want: DeviceWant;
}

/** Whether the device must be ensured again (gone, replaced, or any fault). */
export function deviceNeedsRepair(f: DeviceFacts): boolean {
  return !f.found || f.found.index !== f.index || deviceFaults(f.found, f.want).length > 0;
}

/** Whether the device's addresses must be set again (ours missing, or another one present). */
export function addressNeedsRepair(addrs: readonly Addr[], subnet: IPv4Net): boolean {
  const f = addressFaults(addrs, subnet);
  return f.missing || f.extra.length > 0;
}

/**
 * Expected kernel state of the vxlan backend: what the device and each peer need, and how to
 * judge what the kernel has against that. weftd's reconcile (which makes it so) and
 * `weftctl check` (which reports where it differs) both decide from here.
 *
 * The device is `flannel.<VNI>`: vxlan with the network's VNI and UDP port, local address the
 * node's public IP, on the external interface, learning off, MTU the external MTU minus
 * {@link VXLAN_OVERHEAD}, up, with exactly one address: our subnet's network address /32.
 *
 * For each other node's lease, programmed in this order:
 *   1. neighbor  <peer subnet network addr> -> <peer VtepMAC>, permanent, on flannel.<VNI>
 *   2. FDB       <peer VtepMAC> -> dst <peer PublicIP>, permanent (AF_BRIDGE, self)
 *   3. route     <peer subnet> via <peer subnet network addr> dev flannel.<VNI> onlink
 * so that by the time the route makes traffic flow, ARP and VTEP lookups already resolve (the
 * device runs with nolearning and no L2/L3 miss handling, like flannel's).
 */
import { formatCIDR, formatIPv4, type IPv4Net } from '../../ip/ipv4.ts';
import type { Addr, Fdb, Link, Neigh, Route } from '../../netlink/index.ts';
import type { VxlanDeviceSpec } from './device.ts';
import type { Peer } from './peers.ts';

/** Bytes VXLAN adds to each packet: outer IPv4 (20) + UDP (8) + VXLAN (8) + inner Ethernet (14). */
export const VXLAN_OVERHEAD = 50;

/** The device's name for a VNI (flannel's, so flannel and weft nodes can be swapped). */
export function deviceName(vni: number): string {
  return `flannel.${vni}`;
}

/** The device's MTU on an external interface with `externalMtu`. */
export function overlayMtu(externalMtu: number): number {
  return externalMtu - VXLAN_OVERHEAD;
}

/** The whole device spec for a network's VNI and port on the external interface `parent`. */
export function expectedDevice(parent: Pick<Link, 'index' | 'mtu'>, opts: { vni: number; port: number; local: string }): VxlanDeviceSpec {
  return { name: deviceName(opts.vni), vni: opts.vni, port: opts.port, local: opts.local, parentIndex: parent.index, mtu: overlayMtu(parent.mtu) };
}

/** What a device is judged against; an omitted field is not checked (its expectation is unknown). */
export interface DeviceWant {
  vni: number;
  port: number;
  local?: string;
  parentIndex?: number;
  mac?: string;
  mtu?: number;
}

/** One way a link differs from {@link DeviceWant}, in the order {@link deviceFaults} reports them. */
export type DeviceFault =
  | { field: 'kind'; found?: string }
  | { field: 'attributes' }
  | { field: 'vni' | 'port' | 'parentIndex'; found?: number; want: number }
  | { field: 'local'; found?: string; want: string }
  | { field: 'learning' }
  | { field: 'mac'; found: string; want: string }
  | { field: 'mtu'; found: number; want: number }
  | { field: 'down' };

/**
 * Everything about `link` that differs from `want`. Kind and VXLAN parameters first (the device
 * must be recreated for those), then MAC, then MTU and up state (fixable in place).
 */
export function deviceFaults(link: Link, want: DeviceWant): DeviceFault[] {
  const faults: DeviceFault[] = [];
  const v = link.vxlan;
  if (link.kind !== 'vxlan') faults.push({ field: 'kind', found: link.kind });
  else if (!v) faults.push({ field: 'attributes' });
  else {
    if (v.vni !== want.vni) faults.push({ field: 'vni', found: v.vni, want: want.vni });
    if (v.port !== want.port) faults.push({ field: 'port', found: v.port, want: want.port });
    if (want.local !== undefined && v.local !== want.local) faults.push({ field: 'local', found: v.local, want: want.local });
    if (want.parentIndex !== undefined && v.parentIndex !== want.parentIndex) {
      faults.push({ field: 'parentIndex', found: v.parentIndex, want: want.parentIndex });
    }
    if (v.learning) faults.push({ field: 'learning' });
  }
  if (want.mac && link.mac !== want.mac) faults.push({ field: 'mac', found: link.mac, want: want.mac });
  if (want.mtu !== undefined && link.mtu !== want.mtu) faults.push({ field: 'mtu', found: link.mtu, want: want.mtu });
  if (!link.up) faults.push({ field: 'down' });
  return faults;
}

/** Faults that are fixed on the existing device (the rest need it recreated). */
export function fixableInPlace(f: DeviceFault): boolean {
  return f.field === 'mtu' || f.field === 'down';
}

/** The device's one address for our subnet: its network address /32. */
export function deviceAddress(subnet: IPv4Net): { ip: string; prefixLen: 32 } {
  return { ip: formatIPv4(subnet.ip), prefixLen: 32 };
}

/** Compares the device's addresses with {@link deviceAddress}: is it there, what else is. */
export function addressFaults(addrs: readonly Addr[], subnet: IPv4Net): { missing: boolean; extra: Addr[] } {
  const { ip } = deviceAddress(subnet);
  const right = (a: Addr) => a.ip === ip && a.prefixLen === 32;
  return { missing: !addrs.some(right), extra: addrs.filter((a) => !right(a)) };
}

/** How an entry the kernel has compares with the one a peer needs. */
export type EntryState = 'ok' | 'missing' | 'wrong';

/** The neighbor `p` needs on the device `index`. */
export function peerNeigh(p: Peer, index: number): Neigh {
  return { index, ip: p.gateway, mac: p.mac, permanent: true };
}

/** The FDB entry `p` needs on the device `index`. */
export function peerFdb(p: Peer, index: number): Fdb {
  return { index, mac: p.mac, dst: p.publicIP };
}

/** The route `p` needs through the device `index`. */
export function peerRoute(p: Peer, index: number): Route {
  return { dst: formatCIDR(p.subnet), gateway: p.gateway, index, onlink: true };
}

/** `found`: the device's neighbor for `p.gateway`, if any. */
export function neighState(found: Neigh | undefined, p: Peer): EntryState {
  if (!found) return 'missing';
  return found.mac === p.mac && found.permanent ? 'ok' : 'wrong';
}

/** `found`: the device's FDB entries for `p.mac` (one MAC may have several destinations). */
export function fdbState(found: readonly Fdb[], p: Peer): EntryState {
  if (!found.length) return 'missing';
  return found.some((f) => f.dst === p.publicIP) ? 'ok' : 'wrong';
}

/** `found`: the device's route to `p.subnet`, if any. */
export function routeState(found: Route | undefined, p: Peer): EntryState {
  if (!found) return 'missing';
  return found.gateway === p.gateway && found.onlink ? 'ok' : 'wrong';
}

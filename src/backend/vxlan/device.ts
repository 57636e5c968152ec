/**
 * The `flannel.<VNI>` device. An existing device is reused when its VXLAN parameters match, so
 * its MAC (which every peer has cached from our lease) survives daemon restarts; a device with
 * other parameters is deleted and recreated (flannel's vxlanLinksIncompat), keeping the MAC.
 */
import { isGone, LinkNotFoundError, type Link, type Netlink } from '../../netlink/index.ts';

export interface VxlanDeviceSpec {
  name: string;
  vni: number;
  port: number;
  /** Source address: the node's public IP. */
  local: string;
  parentIndex: number;
  mtu: number;
  /**
   * MAC the device must have (peers cached it from our lease): kept across recreation, and an
   * existing device with another MAC is recreated. Omitted: any MAC, random when created.
   */
  mac?: string;
}

/** Why an existing link cannot serve as the device, or undefined when it can. */
export function incompatibility(link: Link, spec: VxlanDeviceSpec): string | undefined {
  if (link.kind !== 'vxlan') return `it is a ${link.kind ?? 'device of unknown kind'}, not vxlan`;
  const v = link.vxlan;
  if (!v) return 'its vxlan attributes are unreadable';
  if (v.vni !== spec.vni) return `VNI ${v.vni} != ${spec.vni}`;
  if (v.port !== spec.port) return `port ${v.port} != ${spec.port}`;
  if (v.local !== spec.local) return `local address ${v.local ?? 'unset'} != ${spec.local}`;
  if (v.parentIndex !== spec.parentIndex) return `parent interface ${v.parentIndex ?? 'unset'} != ${spec.parentIndex}`;
  if (v.learning) return 'learning is on';
  if (spec.mac && link.mac !== spec.mac) return `MAC ${link.mac} != ${spec.mac}`;
  return undefined;
}

export interface EnsureResult {
  link: Link;
  /** 'reused', 'created' (absent before) or 'recreated' (incompatible one replaced). */
  action: 'reused' | 'created' | 'recreated';
  reason?: string;
}

/** Makes sure the device exists, matches `spec`, has the MTU and is up. */
export async function ensureVxlanDevice(nl: Netlink, spec: VxlanDeviceSpec): Promise<EnsureResult> {
  let existing: Link | undefined;
  try {
    existing = await nl.linkByName(spec.name);
  } catch (err) {
    if (!(err instanceof LinkNotFoundError)) throw err;
  }
  let action: EnsureResult['action'] = 'created';
  let reason: string | undefined;
  let mac = spec.mac;
  if (existing) {
    reason = incompatibility(existing, spec);
    if (!reason) {
      if (existing.mtu !== spec.mtu) await nl.linkSetMtu(existing.index, spec.mtu);
      if (!existing.up) await nl.linkSetUp(existing.index);
      return { link: await nl.linkByIndex(existing.index), action: 'reused' };
    }
    mac = mac ?? (existing.kind === 'vxlan' ? existing.mac : undefined);
    try {
      await nl.linkDel(existing.index);
    } catch (err) {
      if (!isGone(err)) throw new Error(`delete incompatible device "${spec.name}" (${reason})`, { cause: err });
    }
    action = 'recreated';
  }
  try {
    await nl.linkAdd({
      kind: 'vxlan',
      name: spec.name,
      vni: spec.vni,
      port: spec.port,
      local: spec.local,
      parentIndex: spec.parentIndex,
      learning: false,
      mtu: spec.mtu,
      mac,
    });
  } catch (cause) {
    throw new Error(`create vxlan device "${spec.name}" (VNI ${spec.vni}, port ${spec.port}, local ${spec.local})`, { cause });
  }
  const link = await nl.linkByName(spec.name);
  try {
    await nl.linkSetUp(link.index);
  } catch (cause) {
    await nl.linkDel(link.index).catch(() => undefined);
    throw new Error(`set "${spec.name}" up`, { cause });
  }
  return { link: await nl.linkByIndex(link.index), action, reason };
}

/** Gives the device exactly `ip`/32, removing other addresses (left from an older subnet). */
export async function ensureDeviceAddress(nl: Netlink, want: { index: number; ip: string }): Promise<boolean> {
  const { index, ip } = want;
  const addrs = await nl.addrs(index);
  let changed = false;
  for (const a of addrs) {
    if (a.ip === ip && a.prefixLen === 32) continue;
    await nl.addrDel(a).catch((err) => {
      if (!isGone(err)) throw err;
    });
    changed = true;
  }
  if (!addrs.some((a) => a.ip === ip && a.prefixLen === 32)) {
    await nl.addrAdd({ index, ip, prefixLen: 32 });
    changed = true;
  }
  return changed;
}

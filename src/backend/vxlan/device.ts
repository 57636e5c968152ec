/**
 * The `flannel.<VNI>` device. An existing device is reused when its VXLAN parameters match, so
 * its MAC (which every peer has cached from our lease) survives daemon restarts; a device with
 * other parameters is deleted and recreated (flannel's vxlanLinksIncompat), keeping the MAC.
 */
import { isGone, LinkNotFoundError, type Link, type Netlink } from '../../netlink/index.ts';
import { deviceFaults, fixableInPlace } from './expected.ts';

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

/** Why an existing link cannot serve as the device, or undefined when it can (MTU and up state are fixed in place). */
export function incompatibility(link: Link, spec: VxlanDeviceSpec): string | undefined {
  const f = deviceFaults(link, spec).find((x) => !fixableInPlace(x));
  switch (f?.field) {
    case undefined:
      return undefined;
    case 'kind':
      return `it is a ${f.found ?? 'device of unknown kind'}, not vxlan`;
    case 'attributes':
      return 'its vxlan attributes are unreadable';
    case 'vni':
      return `VNI ${f.found} != ${f.want}`;
    case 'port':
      return `port ${f.found} != ${f.want}`;
    case 'local':
      return `local address ${f.found ?? 'unset'} != ${f.want}`;
    case 'parentIndex':
      return `parent interface ${f.found ?? 'unset'} != ${f.want}`;
    case 'learning':
      return 'learning is on';
    case 'mac':
      return `MAC ${f.found} != ${f.want}`;
  }
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
  // The new address first: removing a device's last IPv4 address makes the kernel drop every
  // route on it without a notification, which event-driven reconcile would not see.
  const drop = async (a: (typeof addrs)[number]) => {
    await nl.addrDel(a).catch((err) => {
      if (!isGone(err)) throw err;
    });
    changed = true;
  };
  if (!addrs.some((a) => a.ip === ip && a.prefixLen === 32)) {
    // The same address with another length would make the add fail: that one goes first.
    for (const a of addrs) if (a.ip === ip) await drop(a);
    await nl.addrAdd({ index, ip, prefixLen: 32 });
    changed = true;
  }
  for (const a of addrs) if (a.ip !== ip) await drop(a);
  return changed;
}

/**
 * What the daemon needs to know about the node's pods when its subnet is lost (lease.ts): are
 * any left on the old subnet (the CNI plugin's IPAM store), and moving the bridge's gateway to a
 * new subnet once none are.
 *
 * The store is host-local's layout (src/ipam/disk.ts): `<dataDir>/<network name>/<ip>` per
 * allocation, besides `last_reserved_ip.0` and a lock. The daemon does not know the CNI
 * network's name, so every network directory under `dataDir` is read; only addresses inside the
 * subnet count, so another network's pods never hold the move back. A store that cannot be read
 * throws: when unsure, the daemon does not move.
 */
import { readdirSync } from 'node:fs';
import { DiskStore } from '../ipam/disk.ts';
import { contains, formatIPv4, parseCIDR, type IPv4Net } from '../ip/ipv4.ts';
import { gatewayOf } from '../core/subnetenv.ts';
import type { Netlink } from '../netlink/index.ts';

/** The CNI plugin's default `dataDir` (host-local's). */
export const DEFAULT_CNI_DATA_DIR = '/var/lib/cni/networks';

/** Addresses inside `subnet` allocated in any network's store under `dataDir`. */
export async function podAddressesIn(dataDir: string, subnet: IPv4Net): Promise<number[]> {
  let networks: string[];
  try {
    networks = readdirSync(dataDir, { withFileTypes: true })
      .filter((d) => d.isDirectory())
      .map((d) => d.name);
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code === 'ENOENT') return [];
    throw new Error(`read the CNI data dir "${dataDir}"`, { cause: err });
  }
  const out: number[] = [];
  for (const name of networks) {
    for (const a of await new DiskStore(dataDir, name).list()) if (contains(subnet, a.ip)) out.push(a.ip);
  }
  return out;
}

/**
 * Moves the pod gateway from `from`'s subnet to `to`'s on the bridge that carries it (cni0):
 * the old gateway address is removed and the new one added, so the CNI plugin's next ADD finds
 * the bridge matching the subnet file. No bridge with the old gateway (no pod was ever started,
 * or it was removed): nothing to do, ADD sets the address. Returns the bridge's name.
 */
export async function moveBridgeGateway(nl: Netlink, move: { from: IPv4Net; to: IPv4Net }): Promise<string | undefined> {
  const oldGw = parseCIDR(gatewayOf(move.from));
  const newGw = parseCIDR(gatewayOf(move.to));
  const fmt = (n: IPv4Net) => formatIPv4(n.ip);
  for (const a of await nl.addrs()) {
    if (a.ip !== fmt(oldGw) || a.prefixLen !== oldGw.prefixLen) continue;
    const link = await nl.linkByIndex(a.index);
    if (link.kind !== 'bridge') continue;
    const has = (await nl.addrs(a.index)).some((x) => x.ip === fmt(newGw) && x.prefixLen === newGw.prefixLen);
    if (!has) await nl.addrAdd({ index: a.index, ip: fmt(newGw), prefixLen: newGw.prefixLen });
    await nl.addrDel({ index: a.index, ip: a.ip, prefixLen: a.prefixLen });
    return link.name;
  }
  return undefined;
}

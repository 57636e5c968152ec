/**
 * Reads the {@link TraceSnapshot} a walk needs from the namespace weftctl runs in (a node's):
 * links, addresses, neighbors and the forwarding database over netlink, the proxy table through
 * `nft -j`, IPAM reservations from the host-local-format store, and the route lookups the walk
 * asks for, answered by the kernel (RTM_GETROUTE) rather than matched against a dumped table,
 * so policy routing, onlink routes and forwarding state count as they do for a real packet.
 */
import { readdirSync, readFileSync } from 'node:fs';
import { join } from 'node:path';
import { isIPv4 } from '../../ip/ipv4.ts';
import { openNetlink } from '../../netlink/index.ts';
import { NetlinkError } from '../../netlink/errors.ts';
import { openNetlinkQuery } from '../../netlink/query.ts';
import { readProxyTable } from '../../proxy/nft.ts';
import type { TraceQuery, TraceReport, TraceSnapshot } from './model.ts';
import { parseProxyTable } from './nft.ts';
import { walk } from './walk.ts';

/** host-local's default store parent; one directory per network below it. */
export const DEFAULT_IPAM_ROOT = '/var/lib/cni/networks';
const MAX_IPAM_FILES = 65_536;

/**
 * Owners of the reservations under `dir` (one network's store) or, when `dir` is the parent,
 * under each network directory in it. Unreadable stores give undefined: the owner is a nicety.
 */
export function readIpamOwners(dir: string): Record<string, string> | undefined {
  const out: Record<string, string> = {};
  let seen = 0;
  const readDir = (d: string, depth: number): boolean => {
    let names: string[];
    try {
      names = readdirSync(d);
    } catch {
      return false;
    }
    for (const name of names) {
      if (++seen > MAX_IPAM_FILES) return true;
      if (isIPv4(name)) {
        try {
          const text = readFileSync(join(d, name), 'utf8').slice(0, 512);
          out[name] = text
            .trim()
            .split(/\r?\n/)
            .map((s) => s.trim())
            .filter(Boolean)
            .join(' ');
        } catch {
          // released between listing and reading
        }
      } else if (depth === 0 && !name.startsWith('.') && !name.startsWith('last_reserved_ip')) {
        readDir(join(d, name), 1);
      }
    }
    return true;
  };
  return readDir(dir, 0) ? out : undefined;
}

export interface LiveOptions {
  /** IPAM store directory (a network's, or their parent); default {@link DEFAULT_IPAM_ROOT}. */
  ipamDir?: string;
  nftBin?: string;
  timeoutMs?: number;
}

/** Reads the kernel state of the current namespace and walks `q` over it. */
export async function traceLive(q: TraceQuery, opts: LiveOptions = {}): Promise<{ report: TraceReport; snapshot: TraceSnapshot }> {
  const json = await readProxyTable({ nftBin: opts.nftBin, timeoutMs: opts.timeoutMs ?? 10_000 });
  const nl = openNetlink();
  const qs = openNetlinkQuery();
  try {
    const [links, addrs, neighbors, fdb] = [await nl.links(), await nl.addrs(), await qs.neighbors(), await qs.bridgeFdb()];
    const snap: TraceSnapshot = { links, addrs, neighbors, fdb, routes: [], ipamOwners: readIpamOwners(opts.ipamDir ?? DEFAULT_IPAM_ROOT) };
    if (json !== undefined) snap.proxy = parseProxyTable(json);
    for (let round = 0; ; round++) {
      const { report, missing } = walk(snap, q);
      if (!missing.length) return { report, snapshot: snap };
      if (round >= 4) throw new Error(`trace: route lookups did not settle after ${round} rounds`);
      for (const k of missing) {
        const iif = k.iif === undefined ? undefined : links.find((l) => l.name === k.iif)?.index;
        try {
          snap.routes.push({ ...k, result: await qs.routeGet(k.dst, { src: k.src, iif }) });
        } catch (err) {
          if (!(err instanceof NetlinkError)) throw err;
          snap.routes.push({ ...k, error: err.errno });
        }
      }
    }
  } finally {
    qs.close();
    nl.close();
  }
}

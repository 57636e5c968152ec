/**
 * Read-only kernel questions `weftctl trace` asks that {@link Netlink} does not cover: a route
 * lookup as the kernel would make it for one packet (RTM_GETROUTE without NLM_F_DUMP, the
 * request behind `ip route get`), neighbor entries with their NUD state, and the bridge's
 * forwarding database (learned MACs per port, which `Netlink.fdbs` drops because it keeps only
 * VXLAN entries with a remote).
 *
 * The `netlink` package can send a non-dump RTM_GETROUTE (`getRoute`) and types its attributes
 * (dst, src, iif, oif, ...), so the lookup goes through it; nothing is hand-encoded here. Kept
 * apart from rtnl.ts so that the interface the daemon and the CNI plugin implement (and fake)
 * does not grow for a diagnostic.
 */
import { createRtNetlink, type RtNetlinkSocket } from 'netlink/dist/rt/rt.js';
import { bufferToIPv4, bufferToMAC, formatIPv4, ipv4ToBuffer, parseIPv4 } from '../ip/ipv4.ts';
import { withNetns, type NetNs } from '../netns/index.ts';
import { NetlinkError } from './errors.ts';
import { AF_BRIDGE, AF_INET } from './uapi.ts';

/** Route types as `ip route` names them (linux/rtnetlink.h RTN_*). */
const ROUTE_TYPES = ['unspec', 'unicast', 'local', 'broadcast', 'anycast', 'multicast', 'blackhole', 'unreachable', 'prohibit', 'throw', 'nat', 'xresolve'] as const;
export type RouteType = (typeof ROUTE_TYPES)[number];

/** What the kernel answered for one lookup. */
export interface RouteLookup {
  type: RouteType;
  /** The matched table's destination, `198.18.2.0/24` (from an RTM_F_FIB_MATCH lookup). */
  matched?: string;
  /** Output interface index. */
  oif?: number;
  gateway?: string;
  /** The source address the kernel would pick for locally generated traffic. */
  prefsrc?: string;
  /** The gateway is on-link (RTNH_F_ONLINK on the matched route). */
  onlink?: boolean;
  table?: number;
}

/** An IPv4 neighbor entry with its state names (`permanent`, `reachable`, `stale`, `failed`, ...). */
export interface NeighEntry {
  index: number;
  ip: string;
  /** Absent while unresolved (`incomplete`, `failed`). */
  mac?: string;
  state: string[];
}

/** One AF_BRIDGE forwarding entry: on bridge ports (`master` set) or a VXLAN device (`dst` set). */
export interface BridgeFdbEntry {
  /** The port (or VXLAN device) the MAC is behind. */
  index: number;
  mac: string;
  /** The bridge the port belongs to, for entries the bridge learned or owns. */
  master?: number;
  /** VXLAN remote. */
  dst?: string;
  state: string[];
  /** NTF_SELF entries (the device's own table) vs. the bridge's (NTF_MASTER). */
  self: boolean;
}

/** Read-only queries on one namespace's routing state. */
export interface NetlinkQuery {
  /**
   * The route the kernel picks for a packet to `dst`: with `iif` (and `src`) as if it arrived
   * on that interface (forwarding lookup, which fails with EXDEV/ENETUNREACH when forwarding is
   * off or the source is not valid there); without, as if sent from this host. Kernel rejections
   * throw {@link NetlinkError} with the errno name (ENETUNREACH, EHOSTUNREACH, EINVAL, ...).
   */
  routeGet(dst: string, opts?: { src?: string; iif?: number }): Promise<RouteLookup>;
  neighbors(): Promise<NeighEntry[]>;
  bridgeFdb(): Promise<BridgeFdbEntry[]>;
  close(): void;
}

function wrap(op: string, err: unknown): Error {
  const msg = err instanceof Error ? err.message : String(err);
  const m = /Request rejected: (\w+)/.exec(msg);
  return m ? new NetlinkError(op, m[1]!, { cause: err }) : new Error(op, { cause: err });
}

function names(o: object | undefined): string[] {
  return o ? Object.keys(o).filter((k) => k !== '__unknown' && (o as Record<string, unknown>)[k] === true) : [];
}

function ip(b: Buffer | undefined): string | undefined {
  return b && b.length === 4 ? formatIPv4(bufferToIPv4(b)) : undefined;
}

function routeType(t: unknown): RouteType {
  if (typeof t === 'number') return ROUTE_TYPES[t] ?? 'unspec';
  if (typeof t === 'string') return (ROUTE_TYPES as readonly string[]).includes(t.toLowerCase()) ? (t.toLowerCase() as RouteType) : 'unspec';
  return 'unspec';
}

class Query implements NetlinkQuery {
  readonly #sock: RtNetlinkSocket;
  readonly #o: { localPort: number };

  constructor(sock: RtNetlinkSocket) {
    this.#sock = sock;
    this.#o = { localPort: sock.socket.address().port };
  }

  async #get(dst: string, opts: { src?: string; iif?: number }, fibMatch: boolean) {
    const attrs: Record<string, unknown> = { dst: ipv4ToBuffer(parseIPv4(dst)) };
    if (opts.src) attrs.src = ipv4ToBuffer(parseIPv4(opts.src));
    if (opts.iif) attrs.iif = opts.iif;
    const data = { family: AF_INET, dstLen: 32, srcLen: opts.src ? 32 : 0, flags: fibMatch ? { fibMatch: true as const } : {} };
    const what = `route get ${dst}${opts.src ? ` from ${opts.src}` : ''}${opts.iif ? ` iif ${opts.iif}` : ''}`;
    try {
      const msgs = await this.#sock.getRoute(data, attrs, this.#o);
      if (!msgs.length) throw new Error(`${what}: no answer`);
      return msgs[0]!;
    } catch (err) {
      throw wrap(what, err);
    }
  }

  async routeGet(dst: string, opts: { src?: string; iif?: number } = {}): Promise<RouteLookup> {
    const m = await this.#get(dst, opts, false);
    const out: RouteLookup = { type: routeType(m.data.type) };
    if (m.attrs.oif) out.oif = m.attrs.oif;
    const gw = ip(m.attrs.gateway);
    if (gw) out.gateway = gw;
    const pref = ip(m.attrs.prefsrc);
    if (pref) out.prefsrc = pref;
    const table = m.attrs.table ?? m.data.table;
    if (table !== undefined) out.table = table;
    // the plain answer is the cached result (dst/32); ask once more for the table entry itself
    try {
      const f = await this.#get(dst, opts, true);
      out.matched = `${ip(f.attrs.dst) ?? '0.0.0.0'}/${f.data.dstLen ?? 0}`;
      const flags = f.data.flags as { __unknown?: number } | undefined;
      if (flags?.__unknown && flags.__unknown & 4) out.onlink = true;
    } catch {
      // older kernels reject RTM_F_FIB_MATCH; the lookup itself stands
    }
    return out;
  }

  async neighbors(): Promise<NeighEntry[]> {
    const msgs = await this.#sock.getNeighbors({ family: AF_INET }, undefined, this.#o).catch((err: unknown) => {
      throw wrap('list neighbors', err);
    });
    const out: NeighEntry[] = [];
    for (const m of msgs) {
      const dst = ip(m.attrs.dst);
      if (m.data.family !== AF_INET || !dst) continue;
      const e: NeighEntry = { index: m.data.ifindex ?? 0, ip: dst, state: names(m.data.state) };
      if (m.attrs.lladdr?.length === 6) e.mac = bufferToMAC(m.attrs.lladdr);
      out.push(e);
    }
    return out;
  }

  async bridgeFdb(): Promise<BridgeFdbEntry[]> {
    const msgs = await this.#sock.getNeighbors({ family: AF_BRIDGE }, undefined, this.#o).catch((err: unknown) => {
      throw wrap('list bridge fdb', err);
    });
    const out: BridgeFdbEntry[] = [];
    for (const m of msgs) {
      if (m.attrs.lladdr?.length !== 6) continue;
      const e: BridgeFdbEntry = { index: m.data.ifindex ?? 0, mac: bufferToMAC(m.attrs.lladdr), state: names(m.data.state), self: Boolean(m.data.flags?.self) };
      if (m.attrs.master) e.master = m.attrs.master;
      const dst = ip(m.attrs.dst);
      if (dst) e.dst = dst;
      out.push(e);
    }
    return out;
  }

  close(): void {
    this.#sock.socket.close();
  }
}

/** Opens a query socket in `netns` (the caller's namespace when omitted). */
export function openNetlinkQuery(opts: { netns?: NetNs } = {}): NetlinkQuery {
  const create = () => new Query(createRtNetlink());
  return opts.netns ? withNetns(opts.netns, create) : create();
}

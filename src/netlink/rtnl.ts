/**
 * {@link Netlink} over the `netlink` package's rtnetlink socket. The package types most
 * messages; IFLA_LINKINFO (veth peer, vxlan), bridge-port protinfo and the onlink route flag
 * are left raw there, so they are encoded here with ./attrs.
 */
// The rtnetlink part of the package only, not its index (which also loads nl80211, genl and
// wireguard: ~500 KB of JavaScript the CNI binary would parse at every start).
import { FlagsGet, FlagsNew } from 'netlink/dist/constants.js';
import { createRtNetlink, type RtNetlinkSocket } from 'netlink/dist/rt/rt.js';
import { bufferToIPv4, bufferToMAC, formatIPv4, ipv4ToBuffer, macToBuffer, parseCIDR, parseIPv4 } from '../ip/ipv4.ts';
import { cstr, ifinfomsg, nla, NLA_F_NESTED, parseAttrs, u16be, u32, u8 } from './attrs.ts';
import { isGone, LinkNotFoundError, NetlinkError } from './errors.ts';
import { parseRtMessage, type RtEvent } from './monitor.ts';
import type { Addr, Fdb, Link, LinkSpec, Neigh, Netlink, Route, VxlanInfo } from './types.ts';

/** Dump entries parsed between two turns of the event loop. */
const DUMP_PARSE_SLICE = 200;

/** Resolves after the event loop has run its pending I/O callbacks. */
const yieldToLoop = () => new Promise<void>((resolve) => setImmediate(resolve));

const AF_INET = 2;
const AF_BRIDGE = 7;
const RT_TABLE_MAIN = 254;
const RTNH_F_ONLINK = 4;
const RTM_SETLINK = 19;
const RTM_GETROUTE = 26;
const RTM_GETNEIGH = 30;
const NDA_IFINDEX = 8;

// rtnetlink attribute numbers (linux/if_link.h, linux/veth.h, linux/if_bridge.h)
const IFLA_IFNAME = 3;
const IFLA_MTU = 4;
const IFLA_PROTINFO = 12;
const IFLA_NET_NS_FD = 28;
const IFLA_INFO_KIND = 1;
const IFLA_INFO_DATA = 2;
const VETH_INFO_PEER = 1;
const IFLA_VXLAN_ID = 1;
const IFLA_VXLAN_LINK = 3;
const IFLA_VXLAN_LOCAL = 4;
const IFLA_VXLAN_LEARNING = 7;
const IFLA_VXLAN_PORT = 15;
const IFLA_BRPORT_MODE = 4;

const CREATE_EXCL = FlagsNew.CREATE | FlagsNew.EXCL;
const CREATE_REPLACE = FlagsNew.CREATE | FlagsNew.REPLACE;

/** The package reports kernel rejections as `Error('Request rejected: EEXIST')`; keep the errno. */
function wrap(op: string, err: unknown): Error {
  const msg = err instanceof Error ? err.message : String(err);
  const m = /Request rejected: (\w+)/.exec(msg);
  return m ? new NetlinkError(op, m[1], { cause: err }) : new Error(op, { cause: err });
}

async function call<T>(op: string, fn: () => Promise<T>): Promise<T> {
  try {
    return await fn();
  } catch (err) {
    throw wrap(op, err);
  }
}

function linkInfo(spec: LinkSpec): Buffer {
  const kind = nla(IFLA_INFO_KIND, cstr(spec.kind));
  switch (spec.kind) {
    case 'bridge':
      return kind;
    case 'veth': {
      const peerAttrs = [nla(IFLA_IFNAME, cstr(spec.peerName))];
      if (spec.peerMtu ?? spec.mtu) peerAttrs.push(nla(IFLA_MTU, u32((spec.peerMtu ?? spec.mtu)!)));
      if (spec.peerNetnsFd !== undefined) peerAttrs.push(nla(IFLA_NET_NS_FD, u32(spec.peerNetnsFd)));
      const peer = nla(VETH_INFO_PEER | NLA_F_NESTED, Buffer.concat([ifinfomsg(), ...peerAttrs]));
      return Buffer.concat([kind, nla(IFLA_INFO_DATA | NLA_F_NESTED, peer)]);
    }
    case 'vxlan': {
      const data = Buffer.concat([
        nla(IFLA_VXLAN_ID, u32(spec.vni)),
        nla(IFLA_VXLAN_LINK, u32(spec.parentIndex)),
        nla(IFLA_VXLAN_LOCAL, ipv4ToBuffer(parseIPv4(spec.local))),
        nla(IFLA_VXLAN_LEARNING, u8(spec.learning ? 1 : 0)),
        nla(IFLA_VXLAN_PORT, u16be(spec.port)),
      ]);
      return Buffer.concat([kind, nla(IFLA_INFO_DATA | NLA_F_NESTED, data)]);
    }
  }
}

/** IFLA_INFO_DATA of a vxlan link (also read by monitor.ts). */
export function parseVxlan(data: Buffer): VxlanInfo {
  const a = parseAttrs(data);
  const id = a.get(IFLA_VXLAN_ID);
  const link = a.get(IFLA_VXLAN_LINK);
  const local = a.get(IFLA_VXLAN_LOCAL);
  const learning = a.get(IFLA_VXLAN_LEARNING);
  const port = a.get(IFLA_VXLAN_PORT);
  // Sizes checked: notifications (monitor.ts) come through here too.
  return {
    vni: id && id.length >= 4 ? id.readUInt32LE(0) : 0,
    port: port && port.length >= 2 ? port.readUInt16BE(0) : 0,
    local: local && local.length === 4 ? formatIPv4(bufferToIPv4(local)) : undefined,
    parentIndex: link && link.length >= 4 ? link.readUInt32LE(0) || undefined : undefined,
    learning: learning?.length ? learning[0] !== 0 : true,
  };
}

interface RawLink {
  data: { index?: number; flags?: { up?: true } };
  attrs: { ifname?: string; mtu?: number; address?: Buffer; master?: number; linkinfo?: Buffer; ifalias?: string };
}

function toLink(m: RawLink): Link {
  const link: Link = {
    index: m.data.index ?? 0,
    name: m.attrs.ifname ?? '',
    mtu: m.attrs.mtu ?? 0,
    mac: m.attrs.address ? bufferToMAC(m.attrs.address) : '',
    up: Boolean(m.data.flags?.up),
  };
  if (m.attrs.master) link.masterIndex = m.attrs.master;
  if (m.attrs.ifalias) link.alias = m.attrs.ifalias;
  if (m.attrs.linkinfo) {
    const info = parseAttrs(m.attrs.linkinfo);
    const kind = info.get(IFLA_INFO_KIND);
    if (kind) link.kind = kind.toString('utf8').replace(/\0+$/, '');
    const data = info.get(IFLA_INFO_DATA);
    if (link.kind === 'vxlan' && data) link.vxlan = parseVxlan(data);
  }
  return link;
}

/** A dump request's struct rtmsg: only the family set. */
function rtmsgFamily(family: number): Buffer {
  const b = Buffer.alloc(12);
  b.writeUInt8(family, 0);
  return b;
}

/** A dump request's struct ndmsg: only the family set. */
function ndmsgFamily(family: number): Buffer {
  const b = Buffer.alloc(12);
  b.writeUInt8(family, 0);
  return b;
}

function routeMsg(r: Route) {
  const dst = parseCIDR(r.dst);
  const table = r.table ?? RT_TABLE_MAIN;
  const scope = r.scope === 'link' ? 253 : r.scope === 'host' ? 254 : 0;
  const data = {
    family: AF_INET,
    dstLen: dst.prefixLen,
    table: table < 256 ? table : 252,
    protocol: 4 /* RTPROT_STATIC: installed on purpose, survives kernel cleanup */,
    scope,
    type: 1 /* unicast */,
    flags: r.onlink ? { __unknown: RTNH_F_ONLINK } : {},
  };
  const attrs: Record<string, unknown> = { dst: ipv4ToBuffer(dst.ip) };
  if (table >= 256) attrs.table = table;
  if (r.gateway) attrs.gateway = ipv4ToBuffer(parseIPv4(r.gateway));
  if (r.index) attrs.oif = r.index;
  return { data, attrs };
}

/**
 * How long one request waits for its answer. The kernel answers at once; a reply can still be
 * lost (the socket's receive buffer overflowed), and a request left waiting would hold the
 * caller's socket lock, and with it every peer job, forever.
 */
const REQUEST_TIMEOUT_MS = 15_000;

class RtNetlink implements Netlink {
  readonly #sock: RtNetlinkSocket;
  /**
   * Send options carrying the socket's own port: without `localPort` the package asks the
   * kernel for it (getsockname) on every request, ~10% of programming 1000 peers. Replies are
   * matched by sequence number only, so the header's port changes nothing else.
   */
  readonly #o: { localPort: number; timeout: number };

  constructor(sock: RtNetlinkSocket) {
    this.#sock = sock;
    this.#o = { localPort: sock.socket.address().port, timeout: REQUEST_TIMEOUT_MS };
  }

  /** `opts` plus the cached local port and the request deadline. */
  #with<T extends object>(opts: T): T & { localPort: number; timeout: number } {
    return { ...opts, ...this.#o };
  }

  async links(): Promise<Link[]> {
    const msgs = await call('list links', () => this.#sock.getLinks(undefined, undefined, this.#o));
    return msgs.map((m) => toLink(m as RawLink));
  }

  async linkByName(name: string): Promise<Link> {
    try {
      const msgs = await this.#sock.getLink({}, { ifname: name }, this.#o);
      if (!msgs.length) throw new LinkNotFoundError(name);
      return toLink(msgs[0] as RawLink);
    } catch (err) {
      if (err instanceof LinkNotFoundError) throw err;
      const e = wrap(`get link "${name}"`, err);
      if (e instanceof NetlinkError && e.errno === 'ENODEV') throw new LinkNotFoundError(name);
      throw e;
    }
  }

  async linkByIndex(index: number): Promise<Link> {
    try {
      const msgs = await this.#sock.getLink({ index }, undefined, this.#o);
      if (!msgs.length) throw new LinkNotFoundError(index);
      return toLink(msgs[0] as RawLink);
    } catch (err) {
      if (err instanceof LinkNotFoundError) throw err;
      const e = wrap(`get link ${index}`, err);
      if (e instanceof NetlinkError && e.errno === 'ENODEV') throw new LinkNotFoundError(index);
      throw e;
    }
  }

  async linkAdd(spec: LinkSpec): Promise<void> {
    const attrs: Record<string, unknown> = { ifname: spec.name, linkinfo: linkInfo(spec) };
    if (spec.mtu) attrs.mtu = spec.mtu;
    if (spec.mac) attrs.address = macToBuffer(spec.mac);
    await call(`create ${spec.kind} "${spec.name}"`, () => this.#sock.newLink({}, attrs, this.#with({ flags: CREATE_EXCL })));
  }

  async linkDel(index: number): Promise<void> {
    await call(`delete link ${index}`, () => this.#sock.delLink({ index }, undefined, this.#o));
  }

  async linksDel(indices: readonly number[]): Promise<void> {
    // High and random: no tool hands out such groups, and no other link may carry it when the
    // group goes (the kernel deletes every link of the namespace in it). Math.random, not
    // node:crypto: the CNI binary bundles this file and would load crypto at every pod start.
    const group = (0x80000000 | Math.floor(Math.random() * 0x7fffffff)) >>> 0;
    const tagged: number[] = [];
    try {
      for (const index of indices) {
        try {
          await call(`tag link ${index} for deletion`, () => this.#sock.setLink({ index }, { group }, this.#o));
          tagged.push(index);
        } catch (err) {
          if (!isGone(err)) throw err;
        }
      }
      if (tagged.length) await call(`delete links of group ${group}`, () => this.#sock.delLink({ index: 0 }, { group }, this.#o));
    } catch (err) {
      for (const index of tagged) await this.#sock.setLink({ index }, { group: 0 }, this.#o).catch(() => undefined);
      throw err;
    }
  }

  async linkSetUp(index: number): Promise<void> {
    await call(`set link ${index} up`, () => this.#sock.setLink({ index, flags: { up: true }, change: { up: true } }, undefined, this.#o));
  }

  async linkSetMtu(index: number, mtu: number): Promise<void> {
    await call(`set link ${index} mtu ${mtu}`, () => this.#sock.setLink({ index }, { mtu }, this.#o));
  }

  async linkSetMaster(index: number, masterIndex: number, opts: { alias?: string } = {}): Promise<void> {
    const attrs: { master: number; ifalias?: string } = { master: masterIndex };
    if (opts.alias !== undefined) {
      if (Buffer.byteLength(opts.alias) > 255) throw new Error(`set link ${index} alias: longer than 255 bytes`);
      attrs.ifalias = opts.alias;
    }
    await call(`set link ${index} master ${masterIndex}`, () => this.#sock.setLink({ index }, attrs, this.#o));
  }

  async linkSetNetns(index: number, netnsFd: number): Promise<void> {
    await call(`move link ${index} to netns`, () => this.#sock.setLink({ index }, { netNsFd: netnsFd }, this.#o));
  }

  async linkSetHairpin(index: number, on: boolean): Promise<void> {
    // AF_BRIDGE SETLINK with a *nested* IFLA_PROTINFO; the package cannot set NLA_F_NESTED.
    const body = Buffer.concat([ifinfomsg({ family: AF_BRIDGE, index }), nla(IFLA_PROTINFO | NLA_F_NESTED, nla(IFLA_BRPORT_MODE, u8(on ? 1 : 0)))]);
    await call(`set hairpin on link ${index}`, () => this.#sock.request(RTM_SETLINK, body, this.#o));
  }

  async addrs(index?: number): Promise<Addr[]> {
    const msgs = await call('list addresses', () => this.#sock.getAddresses({ family: AF_INET }, undefined, this.#o));
    const out: Addr[] = [];
    for (const m of msgs) {
      const raw = m.attrs.local ?? m.attrs.address;
      if (!raw || m.data.family !== AF_INET) continue;
      if (index !== undefined && m.data.index !== index) continue;
      out.push({ index: m.data.index ?? 0, ip: formatIPv4(bufferToIPv4(raw)), prefixLen: m.data.prefixlen ?? 32 });
    }
    return out;
  }

  async addrAdd(a: Addr): Promise<void> {
    const ip = ipv4ToBuffer(parseIPv4(a.ip));
    await call(`add address ${a.ip}/${a.prefixLen} to link ${a.index}`, () =>
      this.#sock.newAddress({ family: AF_INET, prefixlen: a.prefixLen, index: a.index }, { local: ip, address: ip }, this.#with({ flags: CREATE_EXCL })),
    );
  }

  async addrDel(a: Addr): Promise<void> {
    const ip = ipv4ToBuffer(parseIPv4(a.ip));
    await call(`delete address ${a.ip}/${a.prefixLen} from link ${a.index}`, () =>
      this.#sock.delAddress({ family: AF_INET, prefixlen: a.prefixLen, index: a.index }, { local: ip, address: ip }, this.#o),
    );
  }

  async routes(table = RT_TABLE_MAIN): Promise<Route[]> {
    const out: Route[] = [];
    for (const ev of await this.#dump('list routes', RTM_GETROUTE, rtmsgFamily(AF_INET))) {
      if (ev.kind === 'route' && ev.route.table === table) out.push(ev.route);
    }
    return out;
  }

  /**
   * A dump read with the notification parser (monitor.ts) instead of the package's, which
   * turns every attribute of every entry into objects: a reconcile pass over 1000 peers reads
   * 3000 entries, and only a handful of attributes of each matter.
   */
  async #dump(op: string, type: number, body: Buffer): Promise<RtEvent[]> {
    const [msgs] = await call(op, () => this.#sock.socket.request(type, body, { ...this.#o, flags: FlagsGet.DUMP }));
    const out: RtEvent[] = [];
    for (let i = 0; i < msgs.length; i++) {
      // Parsing 1000 entries takes milliseconds: let the acks of a new peer's requests (the
      // other socket) through meanwhile.
      if (i > 0 && i % DUMP_PARSE_SLICE === 0) await yieldToLoop();
      const ev = parseRtMessage(msgs[i].type, msgs[i].data);
      if (ev) out.push(ev);
    }
    return out;
  }

  async routeReplace(r: Route): Promise<void> {
    const { data, attrs } = routeMsg(r);
    await call(`replace route ${r.dst}${r.gateway ? ` via ${r.gateway}` : ''}`, () => this.#sock.newRoute(data as never, attrs, this.#with({ flags: CREATE_REPLACE })));
  }

  async routeDel(r: Route): Promise<void> {
    const { data, attrs } = routeMsg(r);
    // Match any protocol and scope, as `ip route del` does: a route someone else added (proto
    // boot, say) is deleted too, not refused with ESRCH.
    const match = { ...data, protocol: 0 /* RTPROT_UNSPEC */, scope: 255 /* RT_SCOPE_NOWHERE */ };
    await call(`delete route ${r.dst}`, () => this.#sock.delRoute(match as never, attrs, this.#o));
  }

  async neighs(index?: number): Promise<Neigh[]> {
    // NDA_IFINDEX has the kernel leave out other devices' entries (neigh_valid_dump_req).
    const body = Buffer.concat([ndmsgFamily(AF_INET), ...(index !== undefined ? [nla(NDA_IFINDEX, u32(index))] : [])]);
    const out: Neigh[] = [];
    for (const ev of await this.#dump('list neighbors', RTM_GETNEIGH, body)) {
      if (ev.kind === 'neigh' && ev.op === 'new' && (index === undefined || ev.neigh.index === index)) out.push(ev.neigh);
    }
    return out;
  }

  async neighReplace(n: Neigh): Promise<void> {
    await call(`replace neighbor ${n.ip} -> ${n.mac}`, () =>
      this.#sock.newNeighbor(
        { family: AF_INET, ifindex: n.index, state: n.permanent === false ? { reachable: true } : { permanent: true } },
        { dst: ipv4ToBuffer(parseIPv4(n.ip)), lladdr: macToBuffer(n.mac) },
        this.#with({ flags: CREATE_REPLACE }),
      ),
    );
  }

  async neighDel(n: Neigh): Promise<void> {
    await call(`delete neighbor ${n.ip}`, () => this.#sock.delNeighbor({ family: AF_INET, ifindex: n.index }, { dst: ipv4ToBuffer(parseIPv4(n.ip)) }, this.#o));
  }

  async fdbs(index?: number): Promise<Fdb[]> {
    // An AF_BRIDGE dump request carrying a struct ifinfomsg names the port whose entries are
    // wanted (the kernel's valid_fdb_dump_legacy): without it the kernel sends every bridge
    // port's entries too, i.e. every pod MAC on cni0, only to be dropped here.
    const body = ifinfomsg({ family: AF_BRIDGE, index: index ?? 0 });
    const out: Fdb[] = [];
    for (const ev of await this.#dump('list fdb', RTM_GETNEIGH, body)) {
      if (ev.kind === 'fdb' && (index === undefined || ev.fdb.index === index)) out.push(ev.fdb);
    }
    return out;
  }

  async fdbReplace(f: Fdb): Promise<void> {
    await call(`replace fdb ${f.mac} -> ${f.dst}`, () =>
      this.#sock.newNeighbor(
        { family: AF_BRIDGE, ifindex: f.index, state: { permanent: true }, flags: { self: true } },
        { lladdr: macToBuffer(f.mac), dst: ipv4ToBuffer(parseIPv4(f.dst)) },
        this.#with({ flags: CREATE_REPLACE }),
      ),
    );
  }

  async fdbDel(f: Fdb): Promise<void> {
    await call(`delete fdb ${f.mac} -> ${f.dst}`, () =>
      this.#sock.delNeighbor({ family: AF_BRIDGE, ifindex: f.index, state: { permanent: true }, flags: { self: true } }, { lladdr: macToBuffer(f.mac), dst: ipv4ToBuffer(parseIPv4(f.dst)) }, this.#o),
    );
  }

  close(): void {
    this.#sock.socket.close();
  }
}

/** Creates an rtnetlink socket in the calling thread's current namespace. */
export function createRtnl(): Netlink {
  return new RtNetlink(createRtNetlink());
}

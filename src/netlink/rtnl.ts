/**
 * {@link Netlink} over rtnetlink: requests encoded here with ./attrs and sent with ./socket,
 * answers read with the notification parser (monitor.ts), which reads only the attributes weft
 * uses. The `netlink` package provides the socket (its native binding), not the messages: its
 * typed layer cost a pod ADD more than the kernel's work did (socket.ts says how much).
 */
import { formatIPv4, ipv4ToBuffer, bufferToIPv4, macToBuffer, parseCIDR, parseIPv4 } from '../ip/ipv4.ts';
import { cstr, ifinfomsg, nla, NLA_F_NESTED, parseAttrs, u16be, u32, u8 } from './attrs.ts';
import { isGone, LinkNotFoundError, NetlinkError } from './errors.ts';
import { parseRtMessage, type RtEvent } from './monitor.ts';
import { RtSocket, type NlMessage } from './socket.ts';
import {
  AF_BRIDGE,
  AF_INET,
  IFA_ADDRESS,
  IFA_LOCAL,
  IFF_UP,
  IFLA_ADDRESS,
  IFLA_AF_SPEC,
  IFLA_BRPORT_MODE,
  IFLA_EXT_MASK,
  IFLA_GROUP,
  IFLA_IFALIAS,
  IFLA_IFNAME,
  IFLA_INET_CONF,
  IFLA_INFO_DATA,
  IFLA_INFO_KIND,
  IFLA_INFO_SLAVE_DATA,
  IFLA_LINKINFO,
  IFLA_MASTER,
  IFLA_MTU,
  IFLA_NET_NS_FD,
  IFLA_VXLAN_ID,
  IFLA_VXLAN_LEARNING,
  IFLA_VXLAN_LINK,
  IFLA_VXLAN_LOCAL,
  IFLA_VXLAN_PORT,
  IPV4_DEVCONF_ARP_NOTIFY,
  NDA_DST,
  NLM_F,
  NDA_LLADDR,
  NTF_SELF,
  NUD_PERMANENT,
  NUD_REACHABLE,
  RTA_DST,
  RTA_GATEWAY,
  RTA_OIF,
  RTA_TABLE,
  RTM_DELADDR,
  RTM_DELLINK,
  RTM_DELNEIGH,
  RTM_DELROUTE,
  RTM_GETADDR,
  RTM_GETLINK,
  RTM_GETNEIGH,
  RTM_GETROUTE,
  RTM_NEWADDR,
  RTM_NEWLINK,
  RTM_NEWNEIGH,
  RTM_NEWROUTE,
  RTM_SETLINK,
  RTNH_F_ONLINK,
  RT_TABLE_MAIN,
  VETH_INFO_PEER,
} from './uapi.ts';
import type { Addr, Fdb, Link, LinkSpec, Neigh, Netlink, Route, VxlanInfo } from './types.ts';

/** Dump entries parsed between two turns of the event loop. */
const DUMP_PARSE_SLICE = 200;

/** Resolves after the event loop has run its pending I/O callbacks. */
const yieldToLoop = () => new Promise<void>((resolve) => setImmediate(resolve));

/** RTEXT_FILTER_SKIP_STATS: a link's answer without its ~1 KB of counters, which weft never reads. */
const EXT_MASK_SKIP_STATS = u32(1 << 3);

const ACK = NLM_F.ACK;
const CREATE_EXCL = NLM_F.ACK | NLM_F.CREATE | NLM_F.EXCL;
const CREATE_REPLACE = NLM_F.ACK | NLM_F.CREATE | NLM_F.REPLACE;

function linkInfo(spec: LinkSpec): Buffer {
  const kind = nla(IFLA_INFO_KIND, cstr(spec.kind));
  switch (spec.kind) {
    case 'bridge':
      return kind;
    case 'veth': {
      const peerAttrs = [nla(IFLA_IFNAME, cstr(spec.peerName))];
      if (spec.peerMtu ?? spec.mtu) peerAttrs.push(nla(IFLA_MTU, u32((spec.peerMtu ?? spec.mtu)!)));
      if (spec.peerNetnsFd !== undefined) peerAttrs.push(nla(IFLA_NET_NS_FD, u32(spec.peerNetnsFd)));
      if (spec.peerMac) peerAttrs.push(nla(IFLA_ADDRESS, macToBuffer(spec.peerMac)));
      // The peer stays down: it is configured before the pair is joined, and opening it then
      // fails (veth_open: ENOTCONN).
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

/** An ifinfomsg that sets IFF_UP (and changes nothing else) when `up`. */
function upFlags(up: boolean | undefined, index = 0): Buffer {
  return ifinfomsg(up ? { index, flags: IFF_UP, change: IFF_UP } : { index });
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

/** The first link among answers, if any. */
function firstLink(msgs: NlMessage[]): Link | undefined {
  for (const m of msgs) {
    const ev = parseRtMessage(m.type, m.body);
    if (ev?.kind === 'link') return ev.link;
  }
  return undefined;
}

/** struct ifaddrmsg: family, prefixlen, flags, scope, index. */
function ifaddrmsg(prefixLen = 0, index = 0): Buffer {
  const b = Buffer.alloc(8);
  b.writeUInt8(AF_INET, 0);
  b.writeUInt8(prefixLen, 1);
  b.writeUInt32LE(index, 4);
  return b;
}

/** struct rtmsg: family, dst_len, src_len, tos, table, protocol, scope, type, flags. */
function rtmsg(f: { dstLen?: number; table?: number; protocol?: number; scope?: number; type?: number; flags?: number } = {}): Buffer {
  const b = Buffer.alloc(12);
  b.writeUInt8(AF_INET, 0);
  b.writeUInt8(f.dstLen ?? 0, 1);
  b.writeUInt8(f.table ?? 0, 4);
  b.writeUInt8(f.protocol ?? 0, 5);
  b.writeUInt8(f.scope ?? 0, 6);
  b.writeUInt8(f.type ?? 0, 7);
  b.writeUInt32LE(f.flags ?? 0, 8);
  return b;
}

/** struct ndmsg: family, pads, ifindex, state, flags, type. */
function ndmsg(family: number, index = 0, state = 0, flags = 0): Buffer {
  const b = Buffer.alloc(12);
  b.writeUInt8(family, 0);
  b.writeInt32LE(index, 4);
  b.writeUInt16LE(state, 8);
  b.writeUInt8(flags, 10);
  return b;
}

function routeBody(r: Route, match = false): Buffer {
  const dst = parseCIDR(r.dst);
  const table = r.table ?? RT_TABLE_MAIN;
  const scope = r.scope === 'link' ? 253 : r.scope === 'host' ? 254 : 0;
  const head = rtmsg({
    dstLen: dst.prefixLen,
    table: table < 256 ? table : 252 /* RT_TABLE_COMPAT: the real one in RTA_TABLE */,
    // Deleting matches any protocol and scope, as `ip route del` does: a route someone else
    // added (proto boot, say) is deleted too, not refused with ESRCH.
    protocol: match ? 0 : 4 /* RTPROT_STATIC: installed on purpose, survives kernel cleanup */,
    scope: match ? 255 /* RT_SCOPE_NOWHERE */ : scope,
    type: 1 /* unicast */,
    flags: r.onlink ? RTNH_F_ONLINK : 0,
  });
  const attrs = [head, nla(RTA_DST, ipv4ToBuffer(dst.ip))];
  if (table >= 256) attrs.push(nla(RTA_TABLE, u32(table)));
  if (r.gateway) attrs.push(nla(RTA_GATEWAY, ipv4ToBuffer(parseIPv4(r.gateway))));
  if (r.index) attrs.push(nla(RTA_OIF, u32(r.index)));
  return Buffer.concat(attrs);
}

function addrBody(a: Addr): Buffer {
  const ip = ipv4ToBuffer(parseIPv4(a.ip));
  return Buffer.concat([ifaddrmsg(a.prefixLen, a.index), nla(IFA_LOCAL, ip), nla(IFA_ADDRESS, ip)]);
}

function fdbBody(f: Fdb, withDst: boolean): Buffer {
  const parts = [ndmsg(AF_BRIDGE, f.index, NUD_PERMANENT, NTF_SELF), nla(NDA_LLADDR, macToBuffer(f.mac))];
  if (withDst) parts.push(nla(NDA_DST, ipv4ToBuffer(parseIPv4(f.dst))));
  return Buffer.concat(parts);
}

class RtNetlink implements Netlink {
  readonly #sock = new RtSocket();

  async links(): Promise<Link[]> {
    const out: Link[] = [];
    for (const ev of await this.#dump('list links', RTM_GETLINK, Buffer.concat([ifinfomsg(), nla(IFLA_EXT_MASK, EXT_MASK_SKIP_STATS)]))) {
      if (ev.kind === 'link') out.push(ev.link);
    }
    return out;
  }

  linkByName(name: string): Promise<Link> {
    return this.#getLink(name, Buffer.concat([ifinfomsg(), nla(IFLA_IFNAME, cstr(name)), nla(IFLA_EXT_MASK, EXT_MASK_SKIP_STATS)]));
  }

  linkByIndex(index: number): Promise<Link> {
    return this.#getLink(index, Buffer.concat([ifinfomsg({ index }), nla(IFLA_EXT_MASK, EXT_MASK_SKIP_STATS)]));
  }

  async #getLink(which: string | number, body: Buffer): Promise<Link> {
    let msgs: NlMessage[];
    try {
      msgs = await this.#sock.request(typeof which === 'string' ? `get link "${which}"` : `get link ${which}`, RTM_GETLINK, 0, body);
    } catch (err) {
      if (err instanceof NetlinkError && err.errno === 'ENODEV') throw new LinkNotFoundError(which);
      throw err;
    }
    const link = firstLink(msgs);
    if (!link) throw new LinkNotFoundError(which);
    return link;
  }

  async linkAdd(spec: LinkSpec): Promise<Link | undefined> {
    const attrs = [upFlags(spec.up), nla(IFLA_IFNAME, cstr(spec.name))];
    if (spec.mtu) attrs.push(nla(IFLA_MTU, u32(spec.mtu)));
    if (spec.mac) attrs.push(nla(IFLA_ADDRESS, macToBuffer(spec.mac)));
    if (spec.masterIndex) attrs.push(nla(IFLA_MASTER, u32(spec.masterIndex)));
    attrs.push(nla(IFLA_LINKINFO, linkInfo(spec)));
    // NLM_F_ECHO: kernels since 6.3 send the new link back (index, MAC), saving a lookup.
    const msgs = await this.#sock.request(`create ${spec.kind} "${spec.name}"`, RTM_NEWLINK, CREATE_EXCL | NLM_F.ECHO, Buffer.concat(attrs));
    const link = firstLink(msgs);
    return link?.name === spec.name ? link : undefined;
  }

  async linkDel(index: number): Promise<void> {
    await this.#sock.request(`delete link ${index}`, RTM_DELLINK, ACK, ifinfomsg({ index }));
  }

  async linksDel(indices: readonly number[]): Promise<void> {
    // High and random: no tool hands out such groups, and no other link may carry it when the
    // group goes (the kernel deletes every link of the namespace in it). Math.random, not
    // node:crypto: the CNI binary bundles this file and would load crypto at every pod start.
    const group = (0x80000000 | Math.floor(Math.random() * 0x7fffffff)) >>> 0;
    const setGroup = (index: number, g: number) => this.#sock.request(`tag link ${index} for deletion`, RTM_SETLINK, ACK, Buffer.concat([ifinfomsg({ index }), nla(IFLA_GROUP, u32(g))]));
    const tagged: number[] = [];
    try {
      for (const index of indices) {
        try {
          await setGroup(index, group);
          tagged.push(index);
        } catch (err) {
          if (!isGone(err)) throw err;
        }
      }
      if (tagged.length) await this.#sock.request(`delete links of group ${group}`, RTM_DELLINK, ACK, Buffer.concat([ifinfomsg(), nla(IFLA_GROUP, u32(group))]));
    } catch (err) {
      for (const index of tagged) await setGroup(index, 0).catch(() => undefined);
      throw err;
    }
  }

  async linkSetUp(index: number, opts: { arpNotify?: boolean } = {}): Promise<void> {
    const attrs = [upFlags(true, index)];
    if (opts.arpNotify !== undefined) {
      const conf = nla(IFLA_INET_CONF | NLA_F_NESTED, nla(IPV4_DEVCONF_ARP_NOTIFY, u32(opts.arpNotify ? 1 : 0)));
      attrs.push(nla(IFLA_AF_SPEC | NLA_F_NESTED, nla(AF_INET | NLA_F_NESTED, conf)));
    }
    await this.#sock.request(`set link ${index} up`, RTM_SETLINK, ACK, Buffer.concat(attrs));
  }

  async linkSetDown(index: number): Promise<void> {
    await this.#sock.request(`set link ${index} down`, RTM_SETLINK, ACK, ifinfomsg({ index, flags: 0, change: IFF_UP }));
  }

  async linkSetMtu(index: number, mtu: number): Promise<void> {
    await this.#sock.request(`set link ${index} mtu ${mtu}`, RTM_SETLINK, ACK, Buffer.concat([ifinfomsg({ index }), nla(IFLA_MTU, u32(mtu))]));
  }

  async linkSetPort(index: number, opts: { alias?: string; hairpin: boolean }): Promise<void> {
    // RTM_NEWLINK on an existing link (no NLM_F_CREATE): the one request that takes bridge-port
    // settings (IFLA_INFO_SLAVE_DATA, handed to the master's driver) with link attributes.
    const attrs = [ifinfomsg({ index })];
    if (opts.alias !== undefined) attrs.push(aliasAttr(index, opts.alias));
    attrs.push(nla(IFLA_LINKINFO | NLA_F_NESTED, nla(IFLA_INFO_SLAVE_DATA | NLA_F_NESTED, nla(IFLA_BRPORT_MODE, u8(opts.hairpin ? 1 : 0)))));
    await this.#sock.request(`set bridge port ${index}`, RTM_NEWLINK, ACK, Buffer.concat(attrs));
  }

  async addrs(index?: number): Promise<Addr[]> {
    const out: Addr[] = [];
    for (const ev of await this.#dump('list addresses', RTM_GETADDR, ifaddrmsg())) {
      if (ev.kind === 'addr' && ev.op === 'new' && (index === undefined || ev.addr.index === index)) out.push(ev.addr);
    }
    return out;
  }

  async addrAdd(a: Addr): Promise<void> {
    await this.#sock.request(`add address ${a.ip}/${a.prefixLen} to link ${a.index}`, RTM_NEWADDR, CREATE_EXCL, addrBody(a));
  }

  async addrDel(a: Addr): Promise<void> {
    await this.#sock.request(`delete address ${a.ip}/${a.prefixLen} from link ${a.index}`, RTM_DELADDR, ACK, addrBody(a));
  }

  async routes(table = RT_TABLE_MAIN): Promise<Route[]> {
    const out: Route[] = [];
    for (const ev of await this.#dump('list routes', RTM_GETROUTE, rtmsg())) {
      if (ev.kind === 'route' && ev.route.table === table) out.push(ev.route);
    }
    return out;
  }

  /**
   * A dump, parsed in slices: a reconcile pass over 1000 peers reads 3000 entries, and parsing
   * them takes milliseconds, so the acks of a new peer's requests (the other socket) get through
   * meanwhile.
   */
  async #dump(op: string, type: number, body: Buffer): Promise<RtEvent[]> {
    const msgs = await this.#sock.request(op, type, NLM_F.DUMP, body);
    const out: RtEvent[] = [];
    for (let i = 0; i < msgs.length; i++) {
      if (i > 0 && i % DUMP_PARSE_SLICE === 0) await yieldToLoop();
      const ev = parseRtMessage(msgs[i]!.type, msgs[i]!.body);
      if (ev) out.push(ev);
    }
    return out;
  }

  async routeReplace(r: Route): Promise<void> {
    await this.#sock.request(`replace route ${r.dst}${r.gateway ? ` via ${r.gateway}` : ''}`, RTM_NEWROUTE, CREATE_REPLACE, routeBody(r));
  }

  async routeDel(r: Route): Promise<void> {
    await this.#sock.request(`delete route ${r.dst}`, RTM_DELROUTE, ACK, routeBody(r, true));
  }

  async neighs(index?: number): Promise<Neigh[]> {
    // NDA_IFINDEX has the kernel leave out other devices' entries (neigh_valid_dump_req).
    const body = Buffer.concat([ndmsg(AF_INET), ...(index !== undefined ? [nla(8 /* NDA_IFINDEX */, u32(index))] : [])]);
    const out: Neigh[] = [];
    for (const ev of await this.#dump('list neighbors', RTM_GETNEIGH, body)) {
      if (ev.kind === 'neigh' && ev.op === 'new' && (index === undefined || ev.neigh.index === index)) out.push(ev.neigh);
    }
    return out;
  }

  async neighReplace(n: Neigh): Promise<void> {
    const body = Buffer.concat([ndmsg(AF_INET, n.index, n.permanent === false ? NUD_REACHABLE : NUD_PERMANENT), nla(NDA_DST, ipv4ToBuffer(parseIPv4(n.ip))), nla(NDA_LLADDR, macToBuffer(n.mac))]);
    await this.#sock.request(`replace neighbor ${n.ip} -> ${n.mac}`, RTM_NEWNEIGH, CREATE_REPLACE, body);
  }

  async neighDel(n: Neigh): Promise<void> {
    await this.#sock.request(`delete neighbor ${n.ip}`, RTM_DELNEIGH, ACK, Buffer.concat([ndmsg(AF_INET, n.index), nla(NDA_DST, ipv4ToBuffer(parseIPv4(n.ip)))]));
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
    await this.#sock.request(`replace fdb ${f.mac} -> ${f.dst}`, RTM_NEWNEIGH, CREATE_REPLACE, fdbBody(f, true));
  }

  async fdbDel(f: Fdb): Promise<void> {
    await this.#sock.request(`delete fdb ${f.mac} -> ${f.dst}`, RTM_DELNEIGH, ACK, fdbBody(f, true));
  }

  close(): void {
    this.#sock.close();
  }
}

/** IFLA_IFALIAS, at most 255 bytes (IFALIASZ - 1). */
function aliasAttr(index: number, alias: string): Buffer {
  const b = Buffer.from(alias, 'utf8');
  if (b.length > 255) throw new Error(`set link ${index} alias: longer than 255 bytes`);
  // no NUL: the kernel stores the attribute's length as given, and 255 bytes + NUL is too long
  return nla(IFLA_IFALIAS, b);
}

/** Creates an rtnetlink socket in the calling thread's current namespace. */
export function createRtnl(): Netlink {
  return new RtNetlink();
}

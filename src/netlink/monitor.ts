/**
 * rtnetlink notifications: a socket of its own that joins the kernel's multicast groups for
 * links, IPv4 addresses, neighbors (ARP and bridge/VXLAN FDB entries) and IPv4 routes, and turns
 * each notification into a typed {@link RtEvent} shaped like what the dumps in rtnl.ts return.
 *
 * The `netlink` package can do this much (RawNetlinkSocket binds, joins groups and emits every
 * datagram; its recvmsg errors, ENOBUFS included, come out as 'error' events), so no native code
 * is needed. Its higher layers are not used: they would parse every attribute of every message
 * into objects, where a busy node sees a stream of notifications about other devices (pod veths,
 * the bridge learning pod MACs, ARP on the underlay) that the caller drops by index at once.
 *
 * A notification socket whose receive queue fills up loses messages; the kernel says so with
 * ENOBUFS on the next read (or an NLMSG_OVERRUN message). {@link RtMonitorHandlers.onLost} then
 * tells the caller that what it built from events is no longer complete.
 */
import { RawNetlinkSocket } from 'netlink/dist/raw.js';
import { bufferToIPv4, bufferToMAC, formatIPv4 } from '../ip/ipv4.ts';
import { withNetns, type NetNs } from '../netns/index.ts';
import { parseAttrs } from './attrs.ts';
import { parseVxlan } from './rtnl.ts';
import type { Addr, Fdb, Link, Neigh, Route } from './types.ts';
import {
  AF_BRIDGE,
  AF_INET,
  IFADDRMSG_LEN,
  IFA_ADDRESS,
  IFA_LOCAL,
  IFF_UP,
  IFINFOMSG_LEN,
  IFLA_ADDRESS,
  IFLA_IFALIAS,
  IFLA_IFNAME,
  IFLA_INFO_DATA,
  IFLA_INFO_KIND,
  IFLA_LINKINFO,
  IFLA_MASTER,
  IFLA_LINK,
  IFLA_MTU,
  NDA_DST,
  NDA_LLADDR,
  NDMSG_LEN,
  NETLINK_ROUTE,
  NLMSG_ERROR,
  NLMSG_HDRLEN,
  NLMSG_OVERRUN,
  NUD_PERMANENT,
  RTA_DST,
  RTA_GATEWAY,
  RTA_OIF,
  RTA_TABLE,
  RTMSG_LEN,
  RTM_DELADDR,
  RTM_DELLINK,
  RTM_DELNEIGH,
  RTM_DELROUTE,
  RTM_NEWADDR,
  RTM_NEWLINK,
  RTM_NEWNEIGH,
  RTM_NEWROUTE,
  RTNH_F_ONLINK,
  RTN_UNICAST,
} from './uapi.ts';

/** rtnetlink multicast groups (linux/rtnetlink.h `enum rtnetlink_groups`). */
export const RTNLGRP = { LINK: 1, NEIGH: 3, IPV4_IFADDR: 5, IPV4_ROUTE: 7 } as const;

export type RtOp = 'new' | 'del';

/**
 * One notification. A neighbor or FDB entry that lost its link-layer address comes as `del`
 * (`ip neigh del` first turns the entry FAILED, announced as a RTM_NEWNEIGH without one): the
 * dumps would not list it either.
 */
export type RtEvent =
  | { kind: 'link'; op: RtOp; link: Link }
  | { kind: 'addr'; op: RtOp; addr: Addr }
  | { kind: 'route'; op: RtOp; route: Route }
  | { kind: 'neigh'; op: RtOp; neigh: Neigh }
  | { kind: 'fdb'; op: RtOp; fdb: Fdb };

/** Thrown by {@link parseNotifications} for a datagram that cannot be what the kernel sends. */
export class BadNotificationError extends Error {
  constructor(msg: string) {
    super(`bad rtnetlink notification: ${msg}`);
    this.name = 'BadNotificationError';
  }
}

/** The messages of a datagram said the kernel dropped some (NLMSG_OVERRUN). */
export const OVERRUN = Symbol('overrun');

/**
 * Parses one datagram (one or more netlink messages) into events. Messages of other types,
 * families or route types are skipped; a header that does not fit the datagram throws
 * {@link BadNotificationError}; a body too short for its fixed part is skipped. Returns
 * {@link OVERRUN} among the events when the kernel reports lost messages.
 */
export function parseNotifications(buf: Buffer): Array<RtEvent | typeof OVERRUN> {
  const out: Array<RtEvent | typeof OVERRUN> = [];
  let off = 0;
  while (off + NLMSG_HDRLEN <= buf.length) {
    const len = buf.readUInt32LE(off);
    const type = buf.readUInt16LE(off + 4);
    if (len < NLMSG_HDRLEN || off + len > buf.length) throw new BadNotificationError(`message length ${len} at offset ${off} of ${buf.length}`);
    const body = buf.subarray(off + NLMSG_HDRLEN, off + len);
    off += (len + 3) & ~3;
    if (type === NLMSG_OVERRUN) {
      out.push(OVERRUN);
      continue;
    }
    if (type === NLMSG_ERROR) continue;
    const ev = parseRtMessage(type, body);
    if (ev) out.push(ev);
  }
  return out;
}

/**
 * One rtnetlink message body of `type` as an event (undefined: a type, family or route type
 * weft does not read). Dump replies are the same messages (NEW* types), so rtnl.ts reads its
 * neighbor, FDB and route dumps with this too.
 */
export function parseRtMessage(type: number, body: Buffer): RtEvent | undefined {
  switch (type) {
    case RTM_NEWLINK:
    case RTM_DELLINK:
      return parseLink(type === RTM_NEWLINK ? 'new' : 'del', body);
    case RTM_NEWADDR:
    case RTM_DELADDR:
      return parseAddr(type === RTM_NEWADDR ? 'new' : 'del', body);
    case RTM_NEWROUTE:
    case RTM_DELROUTE:
      return parseRoute(type === RTM_NEWROUTE ? 'new' : 'del', body);
    case RTM_NEWNEIGH:
    case RTM_DELNEIGH:
      return parseNeigh(type === RTM_NEWNEIGH ? 'new' : 'del', body);
    default:
      return undefined;
  }
}

function cstring(b: Buffer): string {
  const nul = b.indexOf(0);
  return b.toString('utf8', 0, nul < 0 ? b.length : nul);
}

function parseLink(op: RtOp, body: Buffer): RtEvent | undefined {
  if (body.length < IFINFOMSG_LEN) return undefined;
  const a = parseAttrs(body.subarray(IFINFOMSG_LEN));
  const mtu = a.get(IFLA_MTU);
  const mac = a.get(IFLA_ADDRESS);
  const link: Link = {
    index: body.readInt32LE(4),
    name: cstring(a.get(IFLA_IFNAME) ?? Buffer.alloc(0)),
    mtu: mtu && mtu.length >= 4 ? mtu.readUInt32LE(0) : 0,
    mac: mac && mac.length === 6 ? bufferToMAC(mac) : '',
    up: (body.readUInt32LE(8) & IFF_UP) !== 0,
  };
  const master = a.get(IFLA_MASTER);
  if (master && master.length >= 4 && master.readUInt32LE(0)) link.masterIndex = master.readUInt32LE(0);
  const alias = a.get(IFLA_IFALIAS);
  if (alias?.length && alias[0] !== 0) link.alias = cstring(alias);
  const peer = a.get(IFLA_LINK);
  if (peer && peer.length >= 4 && peer.readUInt32LE(0) && peer.readUInt32LE(0) !== link.index) link.linkIndex = peer.readUInt32LE(0);
  const info = a.get(IFLA_LINKINFO);
  if (info) {
    const ia = parseAttrs(info);
    const kind = ia.get(IFLA_INFO_KIND);
    if (kind) link.kind = cstring(kind);
    const data = ia.get(IFLA_INFO_DATA);
    if (link.kind === 'vxlan' && data) link.vxlan = parseVxlan(data);
  }
  return { kind: 'link', op, link };
}

function parseAddr(op: RtOp, body: Buffer): RtEvent | undefined {
  if (body.length < IFADDRMSG_LEN || body[0] !== AF_INET) return undefined;
  const a = parseAttrs(body.subarray(IFADDRMSG_LEN));
  const raw = a.get(IFA_LOCAL) ?? a.get(IFA_ADDRESS);
  if (raw?.length !== 4) return undefined;
  return { kind: 'addr', op, addr: { index: body.readUInt32LE(4), ip: formatIPv4(bufferToIPv4(raw)), prefixLen: body[1] } };
}

/** As rtnl.ts `routes()` reads a route: unicast only, scope and onlink as there. */
function parseRoute(op: RtOp, body: Buffer): RtEvent | undefined {
  if (body.length < RTMSG_LEN || body[0] !== AF_INET || body[7] !== RTN_UNICAST) return undefined;
  const a = parseAttrs(body.subarray(RTMSG_LEN));
  const tableAttr = a.get(RTA_TABLE);
  const table = tableAttr && tableAttr.length >= 4 ? tableAttr.readUInt32LE(0) : body[4];
  const dst = a.get(RTA_DST);
  const route: Route = { dst: `${dst && dst.length === 4 ? formatIPv4(bufferToIPv4(dst)) : '0.0.0.0'}/${body[1]}`, table };
  const gw = a.get(RTA_GATEWAY);
  if (gw && gw.length === 4) route.gateway = formatIPv4(bufferToIPv4(gw));
  const oif = a.get(RTA_OIF);
  if (oif && oif.length >= 4) route.index = oif.readUInt32LE(0);
  if (body.readUInt32LE(8) & RTNH_F_ONLINK) route.onlink = true;
  const scope = body[6];
  route.scope = scope === 253 ? 'link' : scope === 254 ? 'host' : 'universe';
  return { kind: 'route', op, route };
}

/** AF_INET: an ARP entry; AF_BRIDGE with an IPv4 destination: a VXLAN FDB entry. */
function parseNeigh(op: RtOp, body: Buffer): RtEvent | undefined {
  if (body.length < NDMSG_LEN) return undefined;
  const family = body[0];
  if (family !== AF_INET && family !== AF_BRIDGE) return undefined;
  const index = body.readInt32LE(4);
  const state = body.readUInt16LE(8);
  const a = parseAttrs(body.subarray(NDMSG_LEN));
  const dst = a.get(NDA_DST);
  const ll = a.get(NDA_LLADDR);
  if (dst?.length !== 4) return undefined;
  const ip = formatIPv4(bufferToIPv4(dst));
  const mac = ll && ll.length === 6 ? bufferToMAC(ll) : '';
  if (family === AF_BRIDGE) {
    // Without a MAC there is no telling which entry it was: not one weft makes.
    if (!mac) return undefined;
    return { kind: 'fdb', op, fdb: { index, mac, dst: ip } };
  }
  return { kind: 'neigh', op: mac ? op : 'del', neigh: { index, ip, mac, permanent: (state & NUD_PERMANENT) !== 0 } };
}

export interface RtMonitorHandlers {
  /** The events of one datagram, in the kernel's order. */
  onEvents: (events: RtEvent[]) => void;
  /** Notifications were lost (receive queue overrun) or the socket failed: rebuild from a dump. */
  onLost: (err: Error) => void;
}

export interface RtMonitor {
  /**
   * Leaves the groups until {@link resume}; datagrams already queued are dropped unread. For a
   * caller that is about to cause a flood of notifications it would only discard (1000 peers
   * being programmed), so that reading them costs nothing; what changed meanwhile is not seen.
   */
  pause(): void;
  /** Joins the groups again. */
  resume(): void;
  close(): void;
}

/** Receive buffer asked for; the kernel caps it at net.core.rmem_max. */
const RECV_BUFFER = 4 << 20;

/**
 * Opens a notification socket in `netns` (the caller's namespace when omitted; the socket stays
 * bound to the namespace it was created in) subscribed to `groups` (default: link, IPv4
 * address, neighbor, IPv4 route). It does not keep the process alive by itself.
 */
export function openRtMonitor(handlers: RtMonitorHandlers, opts: { netns?: NetNs; groups?: number[] } = {}): RtMonitor {
  const create = () => new RawNetlinkSocket(NETLINK_ROUTE, { recvBufferSize: RECV_BUFFER, sendBufferSize: 0 /* the default: nothing is sent */ });
  const sock = opts.netns ? withNetns(opts.netns, create) : create();
  const groups = opts.groups ?? [RTNLGRP.LINK, RTNLGRP.IPV4_IFADDR, RTNLGRP.NEIGH, RTNLGRP.IPV4_ROUTE];
  try {
    for (const g of groups) sock.addMembership(g);
  } catch (err) {
    sock.close();
    throw err;
  }
  sock.unref();
  let closed = false;
  let paused = false;
  sock.on('message', (msg: Buffer, rinfo: { port: number }) => {
    // Only the kernel (port 0) speaks for the kernel.
    if (paused || rinfo.port !== 0) return;
    let parsed: Array<RtEvent | typeof OVERRUN>;
    try {
      parsed = parseNotifications(msg);
    } catch (err) {
      handlers.onLost(err as Error);
      return;
    }
    const events = parsed.filter((e): e is RtEvent => e !== OVERRUN);
    if (events.length) handlers.onEvents(events);
    if (events.length !== parsed.length) handlers.onLost(new Error('rtnetlink notifications lost (overrun)'));
  });
  sock.on('truncatedMessage', () => handlers.onLost(new Error('rtnetlink notification truncated')));
  sock.on('error', (err: Error) => {
    if (!closed && !paused) handlers.onLost(err);
  });
  return {
    pause: () => {
      if (closed || paused) return;
      paused = true;
      for (const g of groups) sock.dropMembership(g);
    },
    resume: () => {
      if (closed || !paused) return;
      for (const g of groups) sock.addMembership(g);
      paused = false;
    },
    close: () => {
      if (closed) return;
      closed = true;
      sock.close();
    },
  };
}

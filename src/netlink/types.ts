/**
 * The netlink interface the rest of weft uses. Addresses are dotted strings and MACs
 * colon-separated lower-case strings; conversion to wire bytes stays inside the implementation.
 */

export type LinkKind = 'bridge' | 'veth' | 'vxlan' | string;

export interface VxlanInfo {
  vni: number;
  port: number;
  /** Local (source) IPv4 address, when set. */
  local?: string;
  /** Index of the parent (underlay) device, when set. */
  parentIndex?: number;
  learning: boolean;
}

export interface Link {
  index: number;
  name: string;
  /** IFLA_INFO_KIND, when the driver reports one. */
  kind?: LinkKind;
  mtu: number;
  mac: string;
  /** Administratively up (IFF_UP). */
  up: boolean;
  /** Index of the master (bridge) device, when enslaved. */
  masterIndex?: number;
  /** IFLA_IFALIAS, when set (weft records a host veth's owner there). */
  alias?: string;
  /**
   * IFLA_LINK, when it names another link: the one this pairs with or sits on (a veth's other
   * end, numbered in that end's namespace; a VXLAN device's underlay).
   */
  linkIndex?: number;
  vxlan?: VxlanInfo;
}

interface LinkSpecBase {
  name: string;
  mtu?: number;
  mac?: string;
  /** Up as created (a veth: its first end only; the kernel cannot open the peer yet). */
  up?: boolean;
  /** Enslaved to this bridge as created. */
  masterIndex?: number;
}

export type LinkSpec =
  | (LinkSpecBase & { kind: 'bridge' })
  | (LinkSpecBase & {
      kind: 'veth';
      peerName: string;
      /** Namespace fd the peer is created in (the pod's); host namespace of the socket otherwise. */
      peerNetnsFd?: number;
      peerMtu?: number;
      /** The peer's MAC (the kernel picks a random one otherwise). */
      peerMac?: string;
    })
  | (LinkSpecBase & { kind: 'vxlan'; vni: number; port: number; local: string; parentIndex: number; learning?: boolean });

export interface Addr {
  index: number;
  ip: string;
  prefixLen: number;
}

export interface Route {
  /** Destination CIDR; `0.0.0.0/0` for default. */
  dst: string;
  gateway?: string;
  /** Output interface index. */
  index?: number;
  /** RTNH_F_ONLINK: the gateway is on-link even though no address covers it. */
  onlink?: boolean;
  /** RT_SCOPE_LINK for device routes without a gateway; universe otherwise. */
  scope?: 'universe' | 'link' | 'host';
  table?: number;
}

/** An IPv4 neighbor (ARP) entry. */
export interface Neigh {
  index: number;
  ip: string;
  mac: string;
  permanent?: boolean;
}

/** A bridge/VXLAN forwarding entry (AF_BRIDGE, NTF_SELF): `mac` is reached via `dst`. */
export interface Fdb {
  index: number;
  mac: string;
  dst: string;
}

export interface Netlink {
  links(): Promise<Link[]>;
  /** Throws LinkNotFoundError. */
  linkByName(name: string): Promise<Link>;
  /** Throws LinkNotFoundError. */
  linkByIndex(index: number): Promise<Link>;
  /**
   * Throws NetlinkError with errno 'EEXIST' when the name is taken. Resolves with the new link
   * (a veth: its first end) when the kernel echoes it (6.3 and later), else undefined.
   */
  linkAdd(spec: LinkSpec): Promise<Link | undefined>;
  linkDel(index: number): Promise<void>;
  /**
   * Deletes these links in one unregistration, so the kernel waits out one RCU grace period for
   * all of them instead of one each: each is tagged with a fresh random IFLA_GROUP, then the group
   * is deleted. Links already gone are skipped. On failure the tags are taken off again.
   */
  linksDel(indices: readonly number[]): Promise<void>;
  /**
   * Up. `arpNotify` sets the link's IPv4 `arp_notify` in the same request (IFLA_AF_SPEC), as
   * writing net/ipv4/conf/<link>/arp_notify would, without entering its namespace.
   */
  linkSetUp(index: number, opts?: { arpNotify?: boolean }): Promise<void>;
  /** Down (IFF_UP cleared): a bridge port stops forwarding at once, without the wait a delete has. */
  linkSetDown(index: number): Promise<void>;
  linkSetMtu(index: number, mtu: number): Promise<void>;
  /**
   * A bridge port's owner label (IFLA_IFALIAS, at most 255 bytes) and hairpin mode, in one
   * request (the kernel ignores IFLA_IFALIAS when creating a link, so linkAdd cannot set it).
   */
  linkSetPort(index: number, opts: { alias?: string; hairpin: boolean }): Promise<void>;
  addrs(index?: number): Promise<Addr[]>;
  /** Throws NetlinkError 'EEXIST' when present. */
  addrAdd(addr: Addr): Promise<void>;
  addrDel(addr: Addr): Promise<void>;
  routes(table?: number): Promise<Route[]>;
  routeReplace(route: Route): Promise<void>;
  routeDel(route: Route): Promise<void>;
  neighs(index?: number): Promise<Neigh[]>;
  neighReplace(neigh: Neigh): Promise<void>;
  neighDel(neigh: Neigh): Promise<void>;
  fdbs(index?: number): Promise<Fdb[]>;
  fdbReplace(fdb: Fdb): Promise<void>;
  fdbDel(fdb: Fdb): Promise<void>;
  close(): void;
}

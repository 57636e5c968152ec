/**
 * Netlink and rtnetlink numbers from the kernel's uapi headers: the one home for rtnl.ts,
 * monitor.ts and socket.ts, and for the generic netlink ones nf_tables' proxy/nfnl.ts uses.
 */

// Address families and link flags (linux/socket.h, linux/if.h)
export const AF_INET = 2;
export const AF_BRIDGE = 7;
export const IFF_UP = 1;
export const NETLINK_ROUTE = 0;

// Message types and header sizes (linux/netlink.h, linux/rtnetlink.h)
export const RTM_NEWLINK = 16;
export const RTM_DELLINK = 17;
export const RTM_GETLINK = 18;
export const RTM_SETLINK = 19;
export const RTM_NEWADDR = 20;
export const RTM_DELADDR = 21;
export const RTM_GETADDR = 22;
export const RTM_NEWROUTE = 24;
export const RTM_DELROUTE = 25;
export const RTM_GETROUTE = 26;
export const RTM_NEWNEIGH = 28;
export const RTM_DELNEIGH = 29;
export const RTM_GETNEIGH = 30;
export const NLMSG_ERROR = 2;
export const NLMSG_DONE = 3;
export const NLMSG_OVERRUN = 4;
export const NLMSG_HDRLEN = 16;
/** Header flags (linux/netlink.h). */
export const NLM_F = { REQUEST: 0x1, ACK: 0x4, ECHO: 0x8, DUMP: 0x300, REPLACE: 0x100, EXCL: 0x200, CREATE: 0x400, APPEND: 0x800 } as const;
export const IFINFOMSG_LEN = 16;
export const IFADDRMSG_LEN = 8;
export const RTMSG_LEN = 12;
export const NDMSG_LEN = 12;

// Link attributes (linux/if_link.h, linux/veth.h, linux/if_bridge.h)
export const IFLA_ADDRESS = 1;
export const IFLA_IFNAME = 3;
export const IFLA_MTU = 4;
export const IFLA_LINK = 5;
export const IFLA_MASTER = 10;
export const IFLA_LINKINFO = 18;
export const IFLA_IFALIAS = 20;
export const IFLA_GROUP = 27;
export const IFLA_NET_NS_FD = 28;
export const IFLA_AF_SPEC = 26;
/** Inside IFLA_AF_SPEC's AF_INET (linux/if_link.h): the interface's IPv4 settings, by IPV4_DEVCONF_* number. */
export const IFLA_INET_CONF = 1;
/** linux/ip.h: the `arp_notify` sysctl's number. */
export const IPV4_DEVCONF_ARP_NOTIFY = 22;
export const IFLA_EXT_MASK = 29;
export const IFLA_INFO_KIND = 1;
export const IFLA_INFO_DATA = 2;
export const IFLA_INFO_SLAVE_DATA = 5;
export const VETH_INFO_PEER = 1;
export const IFLA_VXLAN_ID = 1;
export const IFLA_VXLAN_LINK = 3;
export const IFLA_VXLAN_LOCAL = 4;
export const IFLA_VXLAN_LEARNING = 7;
export const IFLA_VXLAN_PORT = 15;
export const IFLA_BRPORT_MODE = 4;

// Address, route and neighbor attributes and values (linux/if_addr.h, linux/rtnetlink.h, linux/neighbour.h)
export const RT_TABLE_MAIN = 254;
export const RTNH_F_ONLINK = 4;
export const IFA_ADDRESS = 1;
export const IFA_LOCAL = 2;
export const RTA_DST = 1;
export const RTA_OIF = 4;
export const RTA_GATEWAY = 5;
export const RTA_TABLE = 15;
export const NDA_DST = 1;
export const NDA_LLADDR = 2;
export const NUD_REACHABLE = 0x02;
export const NUD_PERMANENT = 0x80;
export const NTF_SELF = 0x02;
export const RTN_UNICAST = 1;

/**
 * ADD: attach a pod to the node's bridge, the reference bridge + host-local way.
 * Shared node state (bridge, gateway address, ip_forward) is ensured idempotently and kept;
 * everything made for this pod (address reservation, veth pair and with it the pod's
 * addresses and routes) is registered on an undo stack and unwound on any failure, so a failed
 * ADD leaves nothing behind and reports the original error.
 */
import { allocate, DuplicateAllocationError, NoFreeAddressError } from '../ipam/index.ts';
import { formatCIDR, formatIPv4, randomMAC, type IPv4Net } from '../ip/ipv4.ts';
import { findLink, isExists, isGone, type Link, type Netlink } from '../netlink/index.ts';
import { CniError, ERR } from './errors.ts';
import { hostVethName, requirePodNetns, vethAlias, type Deps, type Request } from './plugin.ts';
import { buildResult, encodeResult, parsePrevResult } from './result.ts';
import { readSubnetFile, type SubnetInfo } from './subnetfile.ts';
import type { NetNs } from '../netns/index.ts';
import type { Result, RouteConfig } from './types.ts';

/** Undo actions, run newest first; failures are logged, never mask the original error. */
class UndoStack {
  readonly #items: Array<{ what: string; fn: () => Promise<void> }> = [];
  readonly #log: (msg: string) => void;
  constructor(log: (msg: string) => void) {
    this.#log = log;
  }
  push(what: string, fn: () => Promise<void>): void {
    this.#items.push({ what, fn });
  }
  async unwind(): Promise<void> {
    while (this.#items.length) {
      const { what, fn } = this.#items.pop()!;
      try {
        await fn();
      } catch (err) {
        this.#log(`weft: undo "${what}" failed: ${(err as Error).message}`);
      }
    }
  }
}

/** Accepts an existing bridge (the usual case: one lookup) or creates it; MTU set, up. */
export async function ensureBridge(nl: Netlink, name: string, mtu: number): Promise<Link> {
  let br = await findLink(nl, name);
  if (!br) {
    try {
      await nl.linkAdd({ kind: 'bridge', name, mtu, up: true });
    } catch (err) {
      if (!isExists(err)) throw new Error(`create bridge "${name}"`, { cause: err });
    }
    br = await nl.linkByName(name);
  }
  if (br.kind !== 'bridge') {
    throw new CniError(ERR.BRIDGE_CONFLICT, `"${name}" exists but is not a bridge (kind "${br.kind ?? 'unknown'}")`);
  }
  if (br.mtu !== mtu) await nl.linkSetMtu(br.index, mtu);
  if (!br.up) await nl.linkSetUp(br.index);
  return br;
}

/** Puts the gateway address on the bridge; a different address already there is an error. */
export async function ensureGateway(nl: Netlink, br: Link, subnet: SubnetInfo): Promise<void> {
  const want = { index: br.index, ip: formatIPv4(subnet.gateway), prefixLen: subnet.subnet.prefixLen };
  const have = await nl.addrs(br.index);
  if (have.some((a) => a.ip === want.ip && a.prefixLen === want.prefixLen)) return;
  if (have.length) {
    const list = have.map((a) => `${a.ip}/${a.prefixLen}`).join(', ');
    throw new CniError(
      ERR.BRIDGE_CONFLICT,
      `bridge "${br.name}" already has address ${list}, different from the gateway ${want.ip}/${want.prefixLen}`,
      'the node subnet changed: delete the bridge (or its address) once no pod uses it',
    );
  }
  try {
    await nl.addrAdd(want);
  } catch (err) {
    if (!isExists(err)) throw new Error(`add gateway ${want.ip}/${want.prefixLen} to bridge "${br.name}"`, { cause: err });
  }
}

function podRoutes(subnet: SubnetInfo, isDefaultGateway: boolean): RouteConfig[] {
  const gw = formatIPv4(subnet.gateway);
  const routes: RouteConfig[] = [];
  if (isDefaultGateway) routes.push({ dst: '0.0.0.0/0', gw });
  routes.push({ dst: formatCIDR(subnet.network), gw });
  return routes;
}

/** Runs ADD and returns the result JSON object in the configuration's version. */
export async function cmdAdd(req: Request, deps: Deps): Promise<Record<string, unknown>> {
  const { env, conf } = req;
  const prev = conf.prevResult ? parsePrevResult(conf.prevResult) : undefined;
  const subnet = readSubnetFile(conf.subnetFile);
  const mtu = conf.mtu ?? subnet.mtu;
  const pod = requirePodNetns(deps, env.netns);
  let host: Netlink | undefined;
  let podNl: Netlink | undefined;
  try {
    host = deps.openNetlink();
    podNl = deps.openNetlink(pod);
    return await attach(req, deps, { subnet, mtu, prev, pod, host, podNl });
  } finally {
    host?.close();
    podNl?.close();
    pod.close();
  }
}

interface AttachCtx {
  subnet: SubnetInfo;
  mtu: number;
  prev?: Result;
  pod: NetNs;
  host: Netlink;
  podNl: Netlink;
}

async function attach(req: Request, deps: Deps, ctx: AttachCtx): Promise<Record<string, unknown>> {
  const { env, conf } = req;
  const { subnet, mtu, prev, pod, host, podNl } = ctx;
  const undo = new UndoStack(deps.log);
  try {
    // An `ifname` already in the pod is found when the veth is created (EEXIST, below): no
    // lookup up front for what almost never happens.
    const br = await ensureBridge(host, conf.bridge, mtu);
    await ensureGateway(host, br, subnet);
    deps.writeSysctl('net/ipv4/ip_forward', '1');

    const store = deps.store(conf);
    const owner = { containerID: env.containerID, ifname: env.ifname };
    let ip: number;
    try {
      ip = await allocate(store, { subnet: subnet.subnet, gateway: subnet.gateway }, owner);
    } catch (err) {
      if (err instanceof NoFreeAddressError) throw new CniError(ERR.NO_FREE_ADDRESS, err.message);
      // A second ADD of a live attachment: report the interface, as the creation would.
      if (err instanceof DuplicateAllocationError && (await findLink(podNl, env.ifname))) {
        throw new CniError(ERR.IFACE_EXISTS, `interface "${env.ifname}" already exists in "${env.netns}"`);
      }
      throw err;
    }
    undo.push(`release ${formatIPv4(ip)}`, () => store.locked(() => store.release(ip)));

    const vethName = hostVethName(env.containerID, env.ifname);
    // Chosen here rather than by the kernel, so the pod end needs no lookup (below).
    const podMac = randomMAC();
    let created: Link | undefined;
    try {
      // The host end up and on the bridge as it is created: one request, not three.
      created = await host.linkAdd({ kind: 'veth', name: vethName, peerName: env.ifname, peerNetnsFd: pod.fd, mtu, peerMtu: mtu, peerMac: podMac, up: true, masterIndex: br.index });
    } catch (err) {
      if (isExists(err) && (await findLink(host, vethName))) {
        throw new CniError(ERR.VETH_EXISTS, `host veth "${vethName}" for this container already exists`, 'a stale attachment: DEL (or GC) removes it');
      }
      if (isExists(err) && (await findLink(podNl, env.ifname))) {
        throw new CniError(ERR.IFACE_EXISTS, `interface "${env.ifname}" already exists in "${env.netns}"`);
      }
      throw new Error(`create veth "${vethName}" <-> "${env.ifname}"`, { cause: err });
    }
    undo.push(`delete veth "${vethName}"`, async () => {
      const link = await findLink(host, vethName);
      if (link)
        await host.linkDel(link.index).catch((err) => {
          if (!isGone(err)) throw err;
        });
    });

    // The kernel echoes the new end since 6.3; older ones need the lookup.
    const hostLink = created ?? (await host.linkByName(vethName));
    // The pod end: its index is the host end's IFLA_LINK, its MAC the one given. (The kernel
    // leaves IFLA_LINK out when both ends have the same number, each in its namespace.)
    const podLink: Pick<Link, 'index' | 'name' | 'mac'> = created?.linkIndex ? { index: created.linkIndex, name: env.ifname, mac: podMac } : await podNl.linkByName(env.ifname);
    const routes = podRoutes(subnet, conf.isDefaultGateway);
    // Sent back to back, each socket's answered in order: the kernel handles each request as it
    // is sent, so the pod's link is up and the routes' gateway on-link by the time each arrives.
    // Each failure names its step.
    const steps = [
      // Owner label and hairpin in one request: DEL and GC delete only a veth labelled as theirs.
      host.linkSetPort(hostLink.index, { alias: vethAlias(env.containerID, env.ifname), hairpin: conf.hairpinMode }),
      // arp_notify as the bridge plugin sets it: a gratuitous ARP whenever the link comes up.
      podNl.linkSetUp(podLink.index, { arpNotify: true }),
      podNl.addrAdd({ index: podLink.index, ip: formatIPv4(ip), prefixLen: subnet.subnet.prefixLen }),
      ...routes.map((r) =>
        podNl.routeReplace({ dst: r.dst, gateway: r.gw, index: podLink.index }).catch((err) => {
          throw new Error(`add route ${r.dst} via ${r.gw} in the pod`, { cause: err });
        }),
      ),
    ];
    // The bridge's MAC may have changed when it gained the port (it takes its lowest port's
    // unless one was set): read after linkAdd, behind the port settings on the same socket.
    const bridgeNow = host.linkByIndex(br.index);
    const settled = await Promise.allSettled([...steps, bridgeNow]);
    const failed = settled.find((r): r is PromiseRejectedResult => r.status === 'rejected');
    if (failed) throw failed.reason;

    if (conf.ipMasq ?? !subnet.ipMasq) {
      const addr = formatIPv4(ip);
      await deps.masq.add(addr, formatCIDR(subnet.network));
      undo.push(`remove masquerade for ${addr}`, () => deps.masq.remove(addr));
    }

    // The veths' MACs are as created.
    const brNow = await bridgeNow;
    const [hostNow, podNow] = [hostLink, podLink];
    const address: IPv4Net = { ip, prefixLen: subnet.subnet.prefixLen };
    const result = buildResult(
      {
        bridge: { name: brNow.name, mac: brNow.mac },
        hostVeth: { name: hostNow.name, mac: hostNow.mac },
        pod: { name: podNow.name, mac: podNow.mac, sandbox: env.netns },
        address: formatCIDR(address),
        gateway: formatIPv4(subnet.gateway),
        routes,
      },
      prev,
    );
    return encodeResult(result, conf.cniVersion);
  } catch (err) {
    await undo.unwind();
    throw err;
  }
}

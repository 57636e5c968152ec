/**
 * ADD: attach a pod to the node's bridge, the reference bridge + host-local way.
 * Shared node state (bridge, gateway address, ip_forward) is ensured idempotently and kept;
 * everything made for this pod (address reservation, veth pair and with it the pod's
 * addresses and routes) is registered on an undo stack and unwound on any failure, so a failed
 * ADD leaves nothing behind and reports the original error.
 */
import { allocate, NoFreeAddressError } from '../ipam/index.ts';
import { formatCIDR, formatIPv4, type IPv4Net } from '../ip/ipv4.ts';
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

/** Creates the bridge or accepts an existing one that really is a bridge; MTU set, up. */
export async function ensureBridge(nl: Netlink, name: string, mtu: number): Promise<Link> {
  try {
    await nl.linkAdd({ kind: 'bridge', name, mtu });
  } catch (err) {
    if (!isExists(err)) throw new Error(`create bridge "${name}"`, { cause: err });
  }
  const br = await nl.linkByName(name);
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
    if (await findLink(podNl, env.ifname)) {
      throw new CniError(ERR.IFACE_EXISTS, `interface "${env.ifname}" already exists in "${env.netns}"`);
    }

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
      throw err;
    }
    undo.push(`release ${formatIPv4(ip)}`, () => store.locked(() => store.release(ip)));

    const vethName = hostVethName(env.containerID, env.ifname);
    try {
      await host.linkAdd({ kind: 'veth', name: vethName, peerName: env.ifname, peerNetnsFd: pod.fd, mtu, peerMtu: mtu });
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

    const hostLink = await host.linkByName(vethName);
    // Owner label and bridge in one request: DEL and GC delete only a veth labelled as theirs.
    await host.linkSetMaster(hostLink.index, br.index, { alias: vethAlias(env.containerID, env.ifname) });
    await host.linkSetHairpin(hostLink.index, conf.hairpinMode);
    await host.linkSetUp(hostLink.index);

    const podLink = await podNl.linkByName(env.ifname);
    await podNl.linkSetUp(podLink.index);
    await podNl.addrAdd({ index: podLink.index, ip: formatIPv4(ip), prefixLen: subnet.subnet.prefixLen });

    const routes = podRoutes(subnet, conf.isDefaultGateway);
    for (const r of routes) {
      try {
        await podNl.routeReplace({ dst: r.dst, gateway: r.gw, index: podLink.index });
      } catch (err) {
        throw new Error(`add route ${r.dst} via ${r.gw} in the pod`, { cause: err });
      }
    }

    if (conf.ipMasq ?? !subnet.ipMasq) {
      const addr = formatIPv4(ip);
      await deps.masq.add(addr, formatCIDR(subnet.network));
      undo.push(`remove masquerade for ${addr}`, () => deps.masq.remove(addr));
    }

    // Announce the new address with a gratuitous ARP when the link comes up (as the bridge plugin).
    deps.writeSysctl(`net/ipv4/conf/${env.ifname}/arp_notify`, '1', pod);

    // The veths' MACs are as created; the bridge's may have changed when it gained a port.
    const brNow = await host.linkByIndex(br.index);
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

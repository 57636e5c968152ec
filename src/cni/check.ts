/**
 * CHECK: compare the live state with `prevResult` and name the first thing that differs:
 * the pod's interface, its addresses and routes, the host veth and its bridge, the reservation.
 */
import { formatIPv4, networkOf, parseCIDR } from '../ip/ipv4.ts';
import { findLink } from '../netlink/index.ts';
import { CniError, ERR } from './errors.ts';
import { hostVethName, requirePodNetns, vethAlias, type Deps, type Request } from './plugin.ts';
import { parsePrevResult } from './result.ts';

function mismatch(msg: string): CniError {
  return new CniError(ERR.CHECK_MISMATCH, msg);
}

export async function cmdCheck(req: Request, deps: Deps): Promise<void> {
  const { env, conf } = req;
  if (!conf.prevResult) throw new CniError(ERR.INVALID_CONFIG, 'CHECK needs "prevResult"');
  const prev = parsePrevResult(conf.prevResult);
  const podIndex = prev.interfaces.findIndex((i) => i.name === env.ifname && i.sandbox !== undefined);
  if (podIndex < 0) throw mismatch(`prevResult has no interface "${env.ifname}" in a sandbox`);

  const pod = requirePodNetns(deps, env.netns);
  const podNl = deps.openNetlink(pod);
  const host = deps.openNetlink();
  try {
    const podLink = await findLink(podNl, env.ifname);
    if (!podLink) throw mismatch(`interface "${env.ifname}" is missing from "${env.netns}"`);
    const want = prev.interfaces[podIndex];
    if (want.mac && want.mac.toLowerCase() !== podLink.mac) {
      throw mismatch(`interface "${env.ifname}" has MAC ${podLink.mac}, prevResult says ${want.mac}`);
    }

    const addrs = await podNl.addrs(podLink.index);
    const mine = prev.ips.filter((ip) => ip.interface === podIndex && !ip.address.includes(':'));
    for (const ip of mine) {
      const cidr = parseCIDR(ip.address);
      if (!addrs.some((a) => a.ip === formatIPv4(cidr.ip) && a.prefixLen === cidr.prefixLen)) {
        throw mismatch(`address ${ip.address} is missing from "${env.ifname}"`);
      }
    }

    const routes = await podNl.routes();
    for (const r of prev.routes) {
      if (r.dst.includes(':')) continue;
      const dst = networkOf(parseCIDR(r.dst));
      const dstText = `${formatIPv4(dst.ip)}/${dst.prefixLen}`;
      const found = routes.some((x) => x.dst === dstText && (r.gw === undefined || x.gateway === r.gw));
      if (!found) throw mismatch(`route ${r.dst}${r.gw ? ` via ${r.gw}` : ''} is missing in the pod`);
    }

    const vethName = hostVethName(env.containerID, env.ifname);
    const veth = await findLink(host, vethName);
    if (!veth) throw mismatch(`host veth "${vethName}" is missing`);
    const owner = vethAlias(env.containerID, env.ifname);
    if (veth.alias !== owner) throw mismatch(`host veth "${vethName}" belongs to "${veth.alias ?? ''}", not "${owner}"`);
    const br = await findLink(host, conf.bridge);
    if (!br) throw mismatch(`bridge "${conf.bridge}" is missing`);
    if (veth.masterIndex !== br.index) throw mismatch(`host veth "${vethName}" is not attached to bridge "${conf.bridge}"`);

    const held = (await deps.store(conf).list()).filter((a) => a.containerID === env.containerID && a.ifname === env.ifname);
    for (const ip of mine) {
      const addr = formatIPv4(parseCIDR(ip.address).ip);
      if (!held.some((a) => formatIPv4(a.ip) === addr)) throw mismatch(`address ${addr} is not reserved for this container in the IPAM store`);
    }
  } finally {
    host.close();
    podNl.close();
    pod.close();
  }
}

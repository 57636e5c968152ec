/**
 * The backend step: find the external interface and open the backend network through an
 * injected factory, so the daemon knows only the {@link BackendNetwork} interface (cmd/weftd.ts
 * chooses VXLAN; its factory also turns on IP forwarding, the only host-wide setting).
 */
import type { BackendNetwork } from '../backend/types.ts';
import type { Log } from '../core/log.ts';
import { LinkNotFoundError, type Link, type Netlink } from '../netlink/index.ts';
import type { NetworkConfig } from '../subnet/config.ts';

/** The external interface and the address overlay packets leave from. */
export interface External {
  link: Link;
  ip: string;
}

/** Opens (creates or reuses) the backend's device for `config` on the external interface. */
export type BackendFactory = (config: NetworkConfig, opts: { external: External; onRepair: () => void }) => Promise<BackendNetwork>;

/** Resolves --iface / --public-ip (or the default route's interface) to a link and address. */
export async function findExternal(nl: Netlink, opts: { iface?: string; publicIP?: string }): Promise<External> {
  const addrs = await nl.addrs();
  let link: Link;
  if (opts.iface) {
    try {
      link = await nl.linkByName(opts.iface);
    } catch (err) {
      if (err instanceof LinkNotFoundError) throw new Error(`--iface: interface "${opts.iface}" not found`);
      throw err;
    }
  } else if (opts.publicIP) {
    const a = addrs.find((x) => x.ip === opts.publicIP);
    if (!a) throw new Error(`--public-ip: no interface has address ${opts.publicIP}`);
    link = await nl.linkByIndex(a.index);
  } else {
    const def = (await nl.routes()).find((r) => r.dst === '0.0.0.0/0' && r.index);
    if (!def) throw new Error('no default route to pick the external interface from; pass --iface or --public-ip');
    link = await nl.linkByIndex(def.index!);
  }
  const own = addrs.filter((a) => a.index === link.index);
  const ip = opts.publicIP ?? own[0]?.ip;
  if (!ip) throw new Error(`interface "${link.name}" has no IPv4 address; pass --public-ip`);
  return { link, ip };
}

export interface OpenBackendOptions {
  nl: Netlink;
  open: BackendFactory;
  iface?: string;
  publicIP?: string;
  log: Log;
  /** Called once per repair the backend's reconcile makes (metrics). */
  onRepair: () => void;
}

/** The backend step: the external interface, then the backend network on it. */
export async function openBackend(config: NetworkConfig, opts: OpenBackendOptions): Promise<{ external: External; network: BackendNetwork }> {
  const external = await findExternal(opts.nl, opts);
  opts.log.info(`external interface "${external.link.name}", public IP ${external.ip}, MTU ${external.link.mtu}`);
  const network = await opts.open(config, { external, onRepair: opts.onRepair });
  return { external, network };
}

/**
 * Peer programming for the vxlan backend. For each other node's lease we install, in this order:
 *   1. neighbor  <peer subnet network addr> -> <peer VtepMAC>, permanent, on flannel.<VNI>
 *   2. FDB       <peer VtepMAC> -> dst <peer PublicIP>, permanent (AF_BRIDGE, self)
 *   3. route     <peer subnet> via <peer subnet network addr> dev flannel.<VNI> onlink
 * so that by the time the route makes traffic flow, ARP and VTEP lookups already resolve (the
 * device runs with nolearning and no L2/L3 miss handling, like flannel's).
 *
 * Unlike flannel we also: remove the old FDB entry when a peer's MAC or IP changes; re-add every
 * peer entry when the device had to be recreated; remove entries of peers that left while we
 * were down; and reconcile periodically, so a deleted route, neighbor, FDB entry or device is
 * put back. Every operation runs through one queue, so a watch event never interleaves with a
 * reconcile pass.
 */
import { formatCIDR, formatIPv4, type IPv4Net } from '../../ip/ipv4.ts';
import { isGone, LinkNotFoundError, type Link, type Netlink, type Route } from '../../netlink/index.ts';
import { leaseId, type Lease } from '../../subnet/lease.ts';
import type { BackendNetwork, Log } from '../types.ts';
import { encodeBackendData, parseBackendData } from './backenddata.ts';
import { ensureDeviceAddress, ensureVxlanDevice, incompatibility, type VxlanDeviceSpec } from './device.ts';

/** What one peer needs in the kernel. */
export interface Peer {
  subnet: IPv4Net;
  /** The peer subnet's network address: neighbor IP and route gateway. */
  gateway: string;
  mac: string;
  publicIP: string;
}

/** Turns a lease into a peer; undefined (with reason) when it is not a usable vxlan lease. */
export function peerFromLease(lease: Lease, vni: number): Peer | { skip: string } {
  if (lease.backendType !== 'vxlan') return { skip: `backend type "${lease.backendType}" is not vxlan` };
  let data;
  try {
    data = parseBackendData(lease.backendData);
  } catch (err) {
    return { skip: (err as Error).message };
  }
  if (data.vni !== vni) return { skip: `VNI ${data.vni} differs from ours (${vni})` };
  return { subnet: lease.subnet, gateway: formatIPv4(lease.subnet.ip), mac: data.vtepMAC, publicIP: lease.publicIP };
}

export interface VxlanNetworkOptions {
  /** Device parameters; `mac` is filled from the existing device on start. */
  device: VxlanDeviceSpec;
  /** Our own subnet (its network address goes on the device); set later with setSubnet(). */
  subnet?: IPv4Net;
  log: Log;
  /** Called once per repair made by reconcile (metrics). */
  onRepair?: (what: 'device' | 'address' | 'neighbor' | 'fdb' | 'route' | 'stale') => void;
}

function samePeer(a: Peer, b: Peer): boolean {
  return a.mac === b.mac && a.publicIP === b.publicIP && a.gateway === b.gateway;
}

export class VxlanNetwork implements BackendNetwork {
  readonly backendType = 'vxlan';
  readonly #nl: Netlink;
  readonly #opts: VxlanNetworkOptions;
  readonly #peers = new Map<string, Peer>();
  #link: Link;
  #queue: Promise<unknown> = Promise.resolve();

  private constructor(nl: Netlink, opts: VxlanNetworkOptions, link: Link) {
    this.#nl = nl;
    this.#opts = opts;
    this.#link = link;
  }

  /**
   * Ensures the device (reusing a compatible one and its MAC). The subnet/address is set later
   * with {@link setSubnet} because the lease (which carries our MAC) is taken after this.
   */
  static async open(nl: Netlink, opts: VxlanNetworkOptions): Promise<VxlanNetwork> {
    const res = await ensureVxlanDevice(nl, opts.device);
    if (res.action === 'recreated') opts.log.warn(`recreated device "${opts.device.name}": ${res.reason}`);
    else opts.log.info(`${res.action === 'reused' ? 'reusing' : 'created'} device "${opts.device.name}"`, { mac: res.link.mac, mtu: res.link.mtu });
    opts.device.mac = res.link.mac;
    return new VxlanNetwork(nl, opts, res.link);
  }

  get link(): Link {
    return this.#link;
  }

  get backendData(): unknown {
    return encodeBackendData({ vni: this.#opts.device.vni, vtepMAC: this.#link.mac });
  }

  get peerCount(): number {
    return this.#peers.size;
  }

  /** Peers currently wanted (for status and tests). */
  peers(): Peer[] {
    return [...this.#peers.values()];
  }

  #serial<T>(fn: () => Promise<T>): Promise<T> {
    const next = this.#queue.then(fn, fn);
    this.#queue = next.catch(() => undefined);
    return next;
  }

  /** Sets our subnet and puts its network address on the device. */
  setSubnet(subnet: IPv4Net): Promise<void> {
    return this.#serial(async () => {
      this.#opts.subnet = subnet;
      this.#peers.delete(formatCIDR(subnet));
      await ensureDeviceAddress(this.#nl, { index: this.#link.index, ip: formatIPv4(subnet.ip) });
    });
  }

  #toPeer(lease: Lease): Peer | undefined {
    if (this.#opts.subnet && leaseId(lease) === formatCIDR(this.#opts.subnet)) return undefined;
    const p = peerFromLease(lease, this.#opts.device.vni);
    if ('skip' in p) {
      this.#opts.log.warn(`ignoring lease ${leaseId(lease)}: ${p.skip}`);
      return undefined;
    }
    return p;
  }

  applySnapshot(leases: Lease[]): Promise<void> {
    return this.#serial(async () => {
      const next = new Map<string, Peer>();
      for (const l of leases) {
        const p = this.#toPeer(l);
        if (p) next.set(leaseId(l), p);
      }
      for (const [id, old] of this.#peers) {
        const now = next.get(id);
        if (!now) await this.#removePeer(old);
        else if (!samePeer(old, now)) await this.#changePeer(old, now);
      }
      for (const [id, p] of next) if (!this.#peers.has(id)) await this.#addPeer(p);
      this.#peers.clear();
      for (const [id, p] of next) this.#peers.set(id, p);
      await this.#reconcile();
    });
  }

  applyPut(lease: Lease): Promise<void> {
    return this.#serial(async () => {
      const p = this.#toPeer(lease);
      const id = leaseId(lease);
      const old = this.#peers.get(id);
      if (!p) {
        if (old) {
          await this.#removePeer(old);
          this.#peers.delete(id);
        }
        return;
      }
      if (old && samePeer(old, p)) return;
      if (old) await this.#changePeer(old, p);
      else await this.#addPeer(p);
      this.#peers.set(id, p);
    });
  }

  applyDelete(lease: Pick<Lease, 'subnet'>): Promise<void> {
    return this.#serial(async () => {
      const id = leaseId(lease);
      const old = this.#peers.get(id);
      if (!old) return;
      await this.#removePeer(old);
      this.#peers.delete(id);
    });
  }

  reconcile(): Promise<number> {
    return this.#serial(() => this.#reconcile());
  }

  #route(p: Peer): Route {
    return { dst: formatCIDR(p.subnet), gateway: p.gateway, index: this.#link.index, onlink: true };
  }

  async #program(p: Peer): Promise<void> {
    const index = this.#link.index;
    await this.#nl.neighReplace({ index, ip: p.gateway, mac: p.mac, permanent: true });
    await this.#nl.fdbReplace({ index, mac: p.mac, dst: p.publicIP });
    await this.#nl.routeReplace(this.#route(p));
  }

  async #addPeer(p: Peer): Promise<void> {
    try {
      await this.#program(p);
      this.#opts.log.debug(`peer added: ${formatCIDR(p.subnet)} via ${p.publicIP}`, { mac: p.mac });
    } catch (err) {
      // The device may be gone; the next reconcile pass recreates it and retries.
      this.#opts.log.warn(`add peer ${formatCIDR(p.subnet)}: ${(err as Error).message}`);
    }
  }

  async #changePeer(old: Peer, p: Peer): Promise<void> {
    try {
      await this.#program(p);
      if (old.mac !== p.mac || old.publicIP !== p.publicIP) await this.#ignoreGone(this.#nl.fdbDel({ index: this.#link.index, mac: old.mac, dst: old.publicIP }));
      this.#opts.log.debug(`peer changed: ${formatCIDR(p.subnet)} via ${p.publicIP}`, { mac: p.mac, oldMac: old.mac, oldPublicIP: old.publicIP });
    } catch (err) {
      this.#opts.log.warn(`update peer ${formatCIDR(p.subnet)}: ${(err as Error).message}`);
    }
  }

  async #removePeer(p: Peer): Promise<void> {
    const index = this.#link.index;
    try {
      await this.#ignoreGone(this.#nl.routeDel(this.#route(p)));
      await this.#ignoreGone(this.#nl.neighDel({ index, ip: p.gateway, mac: p.mac }));
      await this.#ignoreGone(this.#nl.fdbDel({ index, mac: p.mac, dst: p.publicIP }));
      this.#opts.log.debug(`peer removed: ${formatCIDR(p.subnet)} via ${p.publicIP}`, { mac: p.mac });
    } catch (err) {
      this.#opts.log.warn(`remove peer ${formatCIDR(p.subnet)}: ${(err as Error).message}`);
    }
  }

  async #ignoreGone(p: Promise<void>): Promise<void> {
    try {
      await p;
    } catch (err) {
      if (!isGone(err)) throw err;
    }
  }

  #repair(what: Parameters<NonNullable<VxlanNetworkOptions['onRepair']>>[0], msg: string): void {
    this.#opts.onRepair?.(what);
    this.#opts.log.info(`repair: ${msg}`);
  }

  /** One pass: device, address, every wanted entry present, nothing unwanted left. */
  async #reconcile(): Promise<number> {
    let fixes = 0;
    const spec = this.#opts.device;
    let link: Link | undefined;
    try {
      link = await this.#nl.linkByName(spec.name);
    } catch (err) {
      if (!(err instanceof LinkNotFoundError)) throw err;
    }
    const want = { ...spec, mac: this.#link.mac };
    const intact = link && link.index === this.#link.index && link.up && link.mtu === spec.mtu && !incompatibility(link, want);
    if (!intact) {
      const res = await ensureVxlanDevice(this.#nl, want);
      fixes++;
      this.#repair('device', `device "${spec.name}" ${res.action}${res.reason ? ` (${res.reason})` : link ? '' : ' (it was missing)'}`);
      this.#link = res.link;
    }
    const index = this.#link.index;
    const own = this.#opts.subnet;
    if (own && (await ensureDeviceAddress(this.#nl, { index, ip: formatIPv4(own.ip) }))) {
      fixes++;
      this.#repair('address', `address ${formatIPv4(own.ip)}/32 on "${spec.name}"`);
    }

    // One dump at a time: a netlink socket refuses a second dump while one is in progress.
    const neighs = await this.#nl.neighs(index);
    const fdbs = await this.#nl.fdbs(index);
    const routes = await this.#nl.routes();
    const ourRoutes = routes.filter((r) => r.index === index);
    const wantNeigh = new Map<string, string>();
    const wantFdb = new Set<string>();
    const wantRoute = new Set<string>();
    for (const p of this.#peers.values()) {
      wantNeigh.set(p.gateway, p.mac);
      wantFdb.add(`${p.mac}>${p.publicIP}`);
      const cidr = formatCIDR(p.subnet);
      wantRoute.add(cidr);
      const n = neighs.find((x) => x.ip === p.gateway);
      if (!n || n.mac !== p.mac || !n.permanent) {
        await this.#nl.neighReplace({ index, ip: p.gateway, mac: p.mac, permanent: true });
        fixes++;
        this.#repair('neighbor', `neighbor ${p.gateway} -> ${p.mac}`);
      }
      if (!fdbs.some((f) => f.mac === p.mac && f.dst === p.publicIP)) {
        await this.#nl.fdbReplace({ index, mac: p.mac, dst: p.publicIP });
        fixes++;
        this.#repair('fdb', `fdb ${p.mac} -> ${p.publicIP}`);
      }
      const r = ourRoutes.find((x) => x.dst === cidr);
      if (!r || r.gateway !== p.gateway || !r.onlink) {
        await this.#nl.routeReplace(this.#route(p));
        fixes++;
        this.#repair('route', `route ${cidr} via ${p.gateway}`);
      }
    }
    for (const n of neighs) {
      if (n.permanent && !wantNeigh.has(n.ip)) {
        await this.#ignoreGone(this.#nl.neighDel(n));
        fixes++;
        this.#repair('stale', `removed stale neighbor ${n.ip} -> ${n.mac}`);
      }
    }
    for (const f of fdbs) {
      if (!wantFdb.has(`${f.mac}>${f.dst}`)) {
        await this.#ignoreGone(this.#nl.fdbDel(f));
        fixes++;
        this.#repair('stale', `removed stale fdb ${f.mac} -> ${f.dst}`);
      }
    }
    for (const r of ourRoutes) {
      if (r.gateway && !wantRoute.has(r.dst)) {
        await this.#ignoreGone(this.#nl.routeDel(r));
        fixes++;
        this.#repair('stale', `removed stale route ${r.dst} via ${r.gateway}`);
      }
    }
    return fixes;
  }
}

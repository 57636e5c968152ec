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
 * put back.
 *
 * Concurrency: the wanted peer set changes synchronously when an event arrives; the kernel
 * work for it runs as a per-peer job. Jobs of one peer run in order (a put then a delete never
 * swap), jobs of different peers may run side by side, at most PEER_CONCURRENCY at once on the one
 * socket (the netlink package matches each ack to its request by sequence number). A reconcile
 * pass never holds up a new peer: its dumps go to a second socket when there is one (else they
 * take the socket alone, briefly), entries of peers that a job touched while the pass was
 * looking are left to that job, and its repairs are per-peer jobs that re-check what is wanted
 * right before they act.
 */
import { formatCIDR, formatIPv4, type IPv4Net } from '../../ip/ipv4.ts';
import { isGone, LinkNotFoundError, type Link, type Netlink, type Route } from '../../netlink/index.ts';
import { leaseId, type Lease } from '../../subnet/lease.ts';
import type { Log } from '../../core/log.ts';
import type { BackendNetwork } from '../types.ts';
import { encodeBackendData, parseBackendData } from './backenddata.ts';
import { ensureDeviceAddress, ensureVxlanDevice, incompatibility, type VxlanDeviceSpec } from './device.ts';
import { Gate } from './gate.ts';

/**
 * Peer jobs in flight at once on the netlink socket (bulk adds, snapshots, repairs); callers
 * can raise it with `concurrency`. The default is 1 by measurement: the kernel answers each
 * request at once, so the cost is the JS around each request, not waiting; on the bench (1000
 * peers, 2 cores) 2, 4 or 32 in flight converged no faster than 1 while weftd's RSS grew by
 * about 2, 5 and 8 MiB, against a 100 MB target. With a second socket for its dumps, a
 * reconcile pass still never holds a job up.
 */
export const PEER_CONCURRENCY = 1;

/** How long a reconcile pass waits at most for queued peer jobs to finish before it reads. */
const RECONCILE_YIELD_MS = 2000;

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
  onRepair?: (what: RepairKind) => void;
  /**
   * A second netlink socket in the same namespace for reconcile's reads. Without it the dumps
   * take the main socket alone while they run (a dump must not interleave with other replies),
   * which holds peer updates back meanwhile.
   */
  dumpNl?: Netlink;
  /** Peer jobs in flight at once (default {@link PEER_CONCURRENCY}). */
  concurrency?: number;
}

export type RepairKind = 'device' | 'address' | 'neighbor' | 'fdb' | 'route' | 'stale';

function samePeer(a: Peer, b: Peer): boolean {
  return a.mac === b.mac && a.publicIP === b.publicIP && a.gateway === b.gateway;
}

function fdbKey(mac: string, dst: string): string {
  return `fdb ${mac}>${dst}`;
}

/** The wanted peers by lease id, with the look-ups reconcile and cleanup need. */
class PeerSet {
  readonly #byId = new Map<string, Peer>();
  readonly #gateways = new Set<string>();
  /** How many wanted peers use each FDB entry (a MAC can move to a new lease of the same node). */
  readonly #fdbUsers = new Map<string, number>();

  get size(): number {
    return this.#byId.size;
  }

  get(id: string): Peer | undefined {
    return this.#byId.get(id);
  }

  has(id: string): boolean {
    return this.#byId.has(id);
  }

  entries(): IterableIterator<[string, Peer]> {
    return this.#byId.entries();
  }

  values(): IterableIterator<Peer> {
    return this.#byId.values();
  }

  set(id: string, p: Peer): void {
    this.delete(id);
    this.#byId.set(id, p);
    this.#gateways.add(p.gateway);
    const k = fdbKey(p.mac, p.publicIP);
    this.#fdbUsers.set(k, (this.#fdbUsers.get(k) ?? 0) + 1);
  }

  delete(id: string): void {
    const old = this.#byId.get(id);
    if (!old) return;
    this.#byId.delete(id);
    this.#gateways.delete(old.gateway);
    const k = fdbKey(old.mac, old.publicIP);
    const n = (this.#fdbUsers.get(k) ?? 1) - 1;
    if (n) this.#fdbUsers.set(k, n);
    else this.#fdbUsers.delete(k);
  }

  hasGateway(ip: string): boolean {
    return this.#gateways.has(ip);
  }

  usesFdb(mac: string, dst: string): boolean {
    return this.#fdbUsers.has(fdbKey(mac, dst));
  }
}

export class VxlanNetwork implements BackendNetwork {
  readonly backendType = 'vxlan';
  readonly #nl: Netlink;
  readonly #opts: VxlanNetworkOptions;
  readonly #peers = new PeerSet();
  readonly #gate: Gate;
  /** The tail of each peer's job chain, by gateway (by MAC for stale FDB entries). */
  readonly #chains = new Map<string, Promise<unknown>>();
  /** Keys (gateway, FDB MAC) with a job queued or running. */
  readonly #busy = new Map<string, number>();
  /** Jobs queued or running, and passes waiting for that to reach zero. */
  #pending = 0;
  #idleWaiters: Array<() => void> = [];
  /** Keys a job touched since the current reconcile pass started reading (only kept then). */
  #touched = new Set<string>();
  #reading = false;
  #reconciling: Promise<unknown> = Promise.resolve();
  #link: Link;

  private constructor(nl: Netlink, opts: VxlanNetworkOptions, link: Link) {
    this.#nl = nl;
    this.#opts = opts;
    this.#link = link;
    this.#gate = new Gate(opts.concurrency ?? PEER_CONCURRENCY);
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

  get mtu(): number {
    return this.#link.mtu;
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

  /** Sets our subnet and puts its network address on the device. */
  async setSubnet(subnet: IPv4Net): Promise<void> {
    this.#opts.subnet = subnet;
    this.#peers.delete(formatCIDR(subnet));
    await this.#gate.exclusive(() => ensureDeviceAddress(this.#nl, { index: this.#link.index, ip: formatIPv4(subnet.ip) }));
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

  async applySnapshot(leases: Lease[]): Promise<void> {
    const next = new Map<string, Peer>();
    for (const l of leases) {
      const p = this.#toPeer(l);
      if (p) next.set(leaseId(l), p);
    }
    const jobs: Promise<void>[] = [];
    for (const [id, old] of [...this.#peers.entries()]) {
      const now = next.get(id);
      if (!now) {
        this.#peers.delete(id);
        jobs.push(this.#removeJob(old));
      } else if (!samePeer(old, now)) {
        this.#peers.set(id, now);
        jobs.push(this.#changeJob(old, now));
      }
    }
    for (const [id, p] of next) {
      if (this.#peers.has(id)) continue;
      this.#peers.set(id, p);
      jobs.push(this.#addJob(p));
    }
    await Promise.all(jobs);
    await this.reconcile();
  }

  applyPut(lease: Lease): Promise<void> {
    const id = leaseId(lease);
    const p = this.#toPeer(lease);
    const old = this.#peers.get(id);
    if (!p) {
      if (!old) return Promise.resolve();
      this.#peers.delete(id);
      return this.#removeJob(old);
    }
    if (old && samePeer(old, p)) return Promise.resolve();
    this.#peers.set(id, p);
    return old ? this.#changeJob(old, p) : this.#addJob(p);
  }

  applyDelete(lease: Pick<Lease, 'subnet'>): Promise<void> {
    const id = leaseId(lease);
    const old = this.#peers.get(id);
    if (!old) return Promise.resolve();
    this.#peers.delete(id);
    return this.#removeJob(old);
  }

  /** One pass at a time; a call during a pass runs after it. */
  reconcile(): Promise<number> {
    const run = this.#reconciling.then(() => this.#reconcile());
    this.#reconciling = run.catch(() => undefined);
    return run;
  }

  /**
   * Queues `fn` behind earlier jobs on `keys[0]` and runs it within the socket's concurrency
   * limit. Every key counts as busy from now until `fn` is done (queued jobs too: a bulk add
   * waiting for its turn is not drift), so a reconcile pass leaves them alone.
   */
  #job<T>(keys: string[], fn: () => Promise<T>): Promise<T> {
    const chain = keys[0]!;
    this.#mark(keys, 1);
    this.#pending++;
    const run = async (): Promise<T> => {
      try {
        return await this.#gate.shared(fn);
      } finally {
        this.#mark(keys, -1);
        if (this.#chains.get(chain) === next) this.#chains.delete(chain);
        if (--this.#pending === 0) for (const wake of this.#idleWaiters.splice(0)) wake();
      }
    };
    // The next job on this chain starts when this one settles, whether it failed or not.
    const prev = this.#chains.get(chain);
    const next: Promise<T> = prev ? prev.then(run, run) : run();
    this.#chains.set(chain, next);
    return next;
  }

  #mark(keys: string[], delta: number): void {
    for (const k of keys) {
      if (this.#reading) this.#touched.add(k);
      const n = (this.#busy.get(k) ?? 0) + delta;
      if (n) this.#busy.set(k, n);
      else this.#busy.delete(k);
    }
  }

  /** No job ran on `key` since the pass started reading, so what it read is current. */
  #settled(key: string): boolean {
    return !this.#busy.has(key) && !this.#touched.has(key);
  }

  /**
   * A peer job's keys: its gateway (neighbor and route) and the MACs of the FDB entries it
   * writes or removes (a MAC cannot look like an IPv4 address, so one key space serves both).
   */
  #keys(p: Peer, old?: Peer): string[] {
    return old && old.mac !== p.mac ? [p.gateway, p.mac, old.mac] : [p.gateway, p.mac];
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

  /** Deletes an FDB entry unless a wanted peer uses it (its MAC moved to another lease). */
  async #dropFdb(mac: string, dst: string): Promise<boolean> {
    if (this.#peers.usesFdb(mac, dst)) return false;
    await this.#ignoreGone(this.#nl.fdbDel({ index: this.#link.index, mac, dst }));
    return true;
  }

  #addJob(p: Peer): Promise<void> {
    return this.#job(this.#keys(p), async () => {
      try {
        await this.#program(p);
        this.#opts.log.debug(`peer added: ${formatCIDR(p.subnet)} via ${p.publicIP}`, { mac: p.mac });
      } catch (err) {
        // The device may be gone; the next reconcile pass recreates it and retries.
        this.#opts.log.warn(`add peer ${formatCIDR(p.subnet)}: ${(err as Error).message}`);
      }
    });
  }

  #changeJob(old: Peer, p: Peer): Promise<void> {
    return this.#job(this.#keys(p, old), async () => {
      try {
        await this.#program(p);
        if (old.mac !== p.mac || old.publicIP !== p.publicIP) await this.#dropFdb(old.mac, old.publicIP);
        this.#opts.log.debug(`peer changed: ${formatCIDR(p.subnet)} via ${p.publicIP}`, { mac: p.mac, oldMac: old.mac, oldPublicIP: old.publicIP });
      } catch (err) {
        this.#opts.log.warn(`update peer ${formatCIDR(p.subnet)}: ${(err as Error).message}`);
      }
    });
  }

  #removeJob(p: Peer): Promise<void> {
    return this.#job(this.#keys(p), async () => {
      const index = this.#link.index;
      try {
        await this.#ignoreGone(this.#nl.routeDel(this.#route(p)));
        await this.#ignoreGone(this.#nl.neighDel({ index, ip: p.gateway, mac: p.mac }));
        await this.#dropFdb(p.mac, p.publicIP);
        this.#opts.log.debug(`peer removed: ${formatCIDR(p.subnet)} via ${p.publicIP}`, { mac: p.mac });
      } catch (err) {
        this.#opts.log.warn(`remove peer ${formatCIDR(p.subnet)}: ${(err as Error).message}`);
      }
    });
  }

  async #ignoreGone(p: Promise<void>): Promise<void> {
    try {
      await p;
    } catch (err) {
      if (!isGone(err)) throw err;
    }
  }

  #repair(what: RepairKind, msg: string): void {
    this.#opts.onRepair?.(what);
    this.#opts.log.info(`repair: ${msg}`);
  }

  /** Runs a read on the dump socket, or alone on the main socket when there is none. */
  #read<T>(fn: (nl: Netlink) => Promise<T>): Promise<T> {
    const dumpNl = this.#opts.dumpNl;
    return dumpNl ? fn(dumpNl) : this.#gate.exclusive(() => fn(this.#nl));
  }

  /** One pass: device, address, every wanted entry present, nothing unwanted left. */
  /** Resolves once no job is queued or running, or after `maxMs` (so churn cannot starve a pass). */
  #idle(maxMs: number): Promise<void> {
    if (!this.#pending) return Promise.resolve();
    return new Promise((resolve) => {
      const timer = setTimeout(resolve, maxMs);
      timer.unref?.();
      this.#idleWaiters.push(() => {
        clearTimeout(timer);
        resolve();
      });
    });
  }

  async #reconcile(): Promise<number> {
    // Peer jobs first: a pass that reads while a bulk add is being programmed only competes
    // with it for the CPU, and would have to leave those peers alone anyway.
    await this.#idle(RECONCILE_YIELD_MS);
    let fixes = 0;
    const spec = this.#opts.device;
    const link = await this.#read(async (nl) => {
      try {
        return await nl.linkByName(spec.name);
      } catch (err) {
        if (err instanceof LinkNotFoundError) return undefined;
        throw err;
      }
    });
    const want = { ...spec, mac: this.#link.mac };
    const intact = link && link.index === this.#link.index && link.up && link.mtu === spec.mtu && !incompatibility(link, want);
    if (!intact) {
      // Alone on the socket: no peer job may program the old index while the device changes.
      const res = await this.#gate.exclusive(async () => {
        const r = await ensureVxlanDevice(this.#nl, want);
        this.#link = r.link;
        return r;
      });
      fixes++;
      this.#repair('device', `device "${spec.name}" ${res.action}${res.reason ? ` (${res.reason})` : link ? '' : ' (it was missing)'}`);
    }
    const index = this.#link.index;
    const own = this.#opts.subnet;
    if (own) {
      const ip = formatIPv4(own.ip);
      const addrs = await this.#read((nl) => nl.addrs(index));
      if (addrs.length !== 1 || addrs[0]!.ip !== ip || addrs[0]!.prefixLen !== 32) {
        if (await this.#gate.exclusive(() => ensureDeviceAddress(this.#nl, { index, ip }))) {
          fixes++;
          this.#repair('address', `address ${ip}/32 on "${spec.name}"`);
        }
      }
    }

    this.#touched.clear();
    this.#reading = true;
    let seen;
    try {
      // One dump at a time: a netlink socket refuses a second dump while one is in progress.
      seen = await this.#read(async (nl) => ({ neighs: await nl.neighs(index), fdbs: await nl.fdbs(index), routes: await nl.routes() }));
    } catch (err) {
      this.#reading = false;
      throw err;
    }
    const neighs = new Map(seen.neighs.map((n) => [n.ip, n]));
    const fdbs = new Map<string, string[]>();
    for (const f of seen.fdbs) {
      const dsts = fdbs.get(f.mac);
      if (dsts) dsts.push(f.dst);
      else fdbs.set(f.mac, [f.dst]);
    }
    const routes = new Map(seen.routes.filter((r) => r.index === index).map((r) => [r.dst, r]));

    // Decide everything first, then queue: a queued job marks its keys busy.
    const jobs: Array<() => Promise<number>> = [];
    for (const [id, p] of this.#peers.entries()) {
      if (!this.#settled(p.gateway) || !this.#settled(p.mac)) continue;
      const needs: Array<'neighbor' | 'fdb' | 'route'> = [];
      const n = neighs.get(p.gateway);
      if (!n || n.mac !== p.mac || !n.permanent) needs.push('neighbor');
      if (!fdbs.get(p.mac)?.includes(p.publicIP)) needs.push('fdb');
      const r = routes.get(formatCIDR(p.subnet));
      if (!r || r.gateway !== p.gateway || !r.onlink) needs.push('route');
      if (needs.length) jobs.push(() => this.#repairPeer(id, p, needs));
    }
    for (const n of seen.neighs) {
      if (!n.permanent || this.#peers.hasGateway(n.ip) || !this.#settled(n.ip)) continue;
      jobs.push(() => this.#job([n.ip], () => this.#dropStale(!this.#peers.hasGateway(n.ip), this.#nl.neighDel.bind(this.#nl, n), `removed stale neighbor ${n.ip} -> ${n.mac}`)));
    }
    for (const f of seen.fdbs) {
      if (this.#peers.usesFdb(f.mac, f.dst) || !this.#settled(f.mac)) continue;
      jobs.push(() => this.#job([f.mac], () => this.#dropStale(!this.#peers.usesFdb(f.mac, f.dst), this.#nl.fdbDel.bind(this.#nl, f), `removed stale fdb ${f.mac} -> ${f.dst}`)));
    }
    for (const r of routes.values()) {
      const gw = r.dst.split('/')[0]!;
      if (!r.gateway || this.#peers.has(r.dst) || !this.#settled(gw)) continue;
      jobs.push(() => this.#job([gw], () => this.#dropStale(!this.#peers.has(r.dst), this.#nl.routeDel.bind(this.#nl, r), `removed stale route ${r.dst} via ${r.gateway}`)));
    }
    this.#reading = false;
    this.#touched.clear();
    const results = await Promise.allSettled(jobs.map((start) => start()));
    for (const res of results) {
      if (res.status === 'rejected') throw res.reason;
      fixes += res.value;
    }
    return fixes;
  }

  /** Puts back a peer's missing entries, unless the peer changed since the pass looked. */
  #repairPeer(id: string, p: Peer, needs: Array<'neighbor' | 'fdb' | 'route'>): Promise<number> {
    return this.#job(this.#keys(p), async () => {
      if (this.#peers.get(id) !== p) return 0;
      const index = this.#link.index;
      for (const what of needs) {
        if (what === 'neighbor') {
          await this.#nl.neighReplace({ index, ip: p.gateway, mac: p.mac, permanent: true });
          this.#repair('neighbor', `neighbor ${p.gateway} -> ${p.mac}`);
        } else if (what === 'fdb') {
          await this.#nl.fdbReplace({ index, mac: p.mac, dst: p.publicIP });
          this.#repair('fdb', `fdb ${p.mac} -> ${p.publicIP}`);
        } else {
          await this.#nl.routeReplace(this.#route(p));
          this.#repair('route', `route ${formatCIDR(p.subnet)} via ${p.gateway}`);
        }
      }
      return needs.length;
    });
  }

  /** Deletes an entry nobody wants, re-checked right before (a peer may have claimed it since). */
  async #dropStale(stillStale: boolean, del: () => Promise<void>, msg: string): Promise<number> {
    if (!stillStale) return 0;
    await this.#ignoreGone(del());
    this.#repair('stale', msg);
    return 1;
  }
}

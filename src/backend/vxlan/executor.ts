/**
 * The executor: carries peer events and reconcile plans out on the kernel, each piece of work a
 * job on the keyed queue (jobqueue.ts) holding the socket lock (socketlock.ts).
 *
 * Unlike flannel we also: remove the old FDB entry when a peer's MAC or IP changes; re-add every
 * peer entry when the device had to be recreated; remove entries of peers that left while we
 * were down; and reconcile periodically, so a deleted route, neighbor, FDB entry or device is
 * put back.
 *
 * Concurrency: the wanted peer set changes synchronously when an event arrives (network.ts); the
 * kernel work for it runs as a per-peer job. Jobs of one peer run in order (a put then a delete
 * never swap), jobs of different peers may run side by side, at most `concurrency` at once on
 * the one socket (the netlink package matches each ack to its request by sequence number). A
 * reconcile pass never holds up a new peer: its dumps go to a second socket when there is one
 * (else they take the socket alone, briefly), entries of peers that a job touched while the pass
 * was looking are left to that job (the planner, plan.ts, skips keys that are not settled), and
 * its repairs are per-peer jobs that re-check what is wanted right before they act. A device
 * repair takes the socket alone: no peer job may program the old index while the device changes.
 */
import type { IPv4Net } from '../../ip/ipv4.ts';
import { formatCIDR } from '../../ip/ipv4.ts';
import { isGone, LinkNotFoundError, type Link, type Netlink } from '../../netlink/index.ts';
import { errText } from '../../core/errors.ts';
import type { Log } from '../../core/log.ts';
import { ensureDeviceAddress, ensureVxlanDevice, type VxlanDeviceSpec } from './device.ts';
import { deviceAddress, peerFdb, peerNeigh, peerRoute } from './expected.ts';
import type { KernelCache } from './cache.ts';
import { KeyedJobQueue, type Watch } from './jobqueue.ts';
import { peerKeys, type Peer, type PeerSet } from './peers.ts';
import { addressNeedsRepair, deviceNeedsRepair, isStale, planPeers, staleKey, type Plan, type PeerRepair, type StaleEntry } from './plan.ts';
import { SocketLock } from './socketlock.ts';

/** How long a reconcile pass waits at most for queued peer jobs to finish before it reads. */
const RECONCILE_YIELD_MS = 2000;

export type RepairKind = 'device' | 'address' | 'neighbor' | 'fdb' | 'route' | 'stale';

/** The device as the facade and the executor share it; a pass replaces `link` when it recreates the device. */
export interface DeviceState {
  /** The spec it is ensured with; `mac` is the one peers know from our lease. */
  spec: VxlanDeviceSpec;
  link: Link;
  /** Our own subnet, once leased (its network address goes on the device). */
  subnet?: IPv4Net;
}

export interface ExecutorOptions {
  nl: Netlink;
  /** A second socket in the same namespace for the pass's reads (see VxlanNetworkOptions). */
  dumpNl?: Netlink;
  /** Peer jobs in flight at once. */
  concurrency: number;
  /** The wanted peers; jobs re-check it right before they act. */
  peers: PeerSet;
  device: DeviceState;
  log: Log;
  onRepair?: (what: RepairKind) => void;
  /** The kernel cache of the event path (drift.ts); each pass's dump seeds it. */
  cache?: KernelCache;
  /** A peer job failed (network.ts schedules a pass to retry it soon). */
  onJobFailed?: () => void;
}

export class Executor {
  readonly #nl: Netlink;
  readonly #opts: ExecutorOptions;
  readonly #lock: SocketLock;
  readonly #queue: KeyedJobQueue;

  constructor(opts: ExecutorOptions) {
    this.#nl = opts.nl;
    this.#opts = opts;
    this.#lock = new SocketLock(opts.concurrency);
    this.#queue = new KeyedJobQueue(this.#lock);
  }

  get #index(): number {
    return this.#opts.device.link.index;
  }

  /** Programs a new peer: neighbor, FDB, route (expected.ts says why in that order). */
  add(p: Peer): Promise<void> {
    return this.#queue.run(peerKeys(p), async () => {
      try {
        await this.#program(p);
        this.#opts.log.debug(`peer added: ${formatCIDR(p.subnet)} via ${p.publicIP}`, { mac: p.mac });
      } catch (err) {
        // The device may be gone; the retry pass recreates it and programs the peer.
        this.#opts.log.warn(`add peer ${formatCIDR(p.subnet)}: ${errText(err)}`);
        this.#opts.onJobFailed?.();
      }
    });
  }

  /** Programs a changed peer, then removes its old FDB entry unless a wanted peer still uses it. */
  change(old: Peer, p: Peer): Promise<void> {
    return this.#queue.run(peerKeys(p, old), async () => {
      try {
        await this.#program(p);
        if (old.mac !== p.mac || old.publicIP !== p.publicIP) await this.#dropFdb(old);
        this.#opts.log.debug(`peer changed: ${formatCIDR(p.subnet)} via ${p.publicIP}`, { mac: p.mac, oldMac: old.mac, oldPublicIP: old.publicIP });
      } catch (err) {
        this.#opts.log.warn(`update peer ${formatCIDR(p.subnet)}: ${errText(err)}`);
        this.#opts.onJobFailed?.();
      }
    });
  }

  /** Removes a peer's route, neighbor and (unless still used) FDB entry, in that order. */
  remove(p: Peer): Promise<void> {
    return this.#queue.run(peerKeys(p), async () => {
      try {
        await ignoreGone(this.#nl.routeDel(peerRoute(p, this.#index)));
        await ignoreGone(this.#nl.neighDel(peerNeigh(p, this.#index)));
        await this.#dropFdb(p);
        this.#opts.log.debug(`peer removed: ${formatCIDR(p.subnet)} via ${p.publicIP}`, { mac: p.mac });
      } catch (err) {
        this.#opts.log.warn(`remove peer ${formatCIDR(p.subnet)}: ${errText(err)}`);
        this.#opts.onJobFailed?.();
      }
    });
  }

  /** Gives the device our subnet's address (alone on the socket); true when it changed anything. */
  ensureAddress(subnet: IPv4Net): Promise<boolean> {
    return this.#lock.exclusive(() => ensureDeviceAddress(this.#nl, { index: this.#index, ip: deviceAddress(subnet).ip }));
  }

  /**
   * One reconcile pass: device, address, then every wanted entry present and nothing unwanted
   * left. Returns the number of fixes. The caller runs one pass at a time.
   */
  async pass(): Promise<number> {
    // Peer jobs first: a pass that reads while a bulk add is being programmed only competes
    // with it for the CPU, and would have to leave those peers alone anyway.
    await this.#queue.idle(RECONCILE_YIELD_MS);
    let fixes = 0;
    const dev = this.#opts.device;
    const found = await this.#read((nl) => linkIfAny(nl, dev.spec.name));
    const want = { ...dev.spec, mac: dev.link.mac };
    if (deviceNeedsRepair({ found, index: dev.link.index, want })) {
      const res = await this.#lock.exclusive(async () => {
        const r = await ensureVxlanDevice(this.#nl, want);
        dev.link = r.link;
        return r;
      });
      fixes++;
      this.#repaired('device', `device "${want.name}" ${res.action}${res.reason ? ` (${res.reason})` : found ? '' : ' (it was missing)'}`);
    }
    const index = dev.link.index;
    const own = dev.subnet;
    if (own && addressNeedsRepair(await this.#read((nl) => nl.addrs(index)), own)) {
      const { ip } = deviceAddress(own);
      if (await this.#lock.exclusive(() => ensureDeviceAddress(this.#nl, { index, ip }))) {
        fixes++;
        this.#repaired('address', `address ${ip}/32 on "${want.name}"`);
      }
    }

    const watch = this.#queue.watch();
    const cache = this.#opts.cache;
    let plan: Plan;
    try {
      cache?.beginDump();
      // One dump at a time: a netlink socket refuses a second dump while one is in progress.
      const dump = await this.#read(async (nl) => ({ neighs: await nl.neighs(index), fdbs: await nl.fdbs(index), routes: await nl.routes() }));
      cache?.endDump(dump, index);
      // Seeding the cache and planning 1000 peers are milliseconds each on the event loop: a
      // new peer's job (its acks) gets a turn in between.
      await new Promise<void>((resolve) => setImmediate(resolve));
      plan = planPeers(this.#opts.peers, dump, { index, settled: watch.settled });
    } finally {
      cache?.abortDump();
      // Decided everything; the repairs queued next mark their own keys busy.
      watch.close();
    }
    return fixes + (await this.#carryOut(plan));
  }

  /**
   * The event path (drift.ts): plans the peer entries of `keys` from the kernel cache instead of
   * a dump, and carries the plan out like a pass does. Returns the number of fixes; 0 when there
   * is no valid cache (a full pass is due then anyway).
   */
  async repairKeys(keys: ReadonlySet<string>, settled: (key: string) => boolean): Promise<number> {
    const cache = this.#opts.cache;
    if (!cache?.valid || cache.index !== this.#index) return 0;
    return this.#carryOut(planPeers(this.#opts.peers, cache.dump(), { index: this.#index, settled, keys }));
  }

  /** Peer jobs queued or running. */
  get pending(): number {
    return this.#queue.pending;
  }

  /** Resolves once no peer job is queued or running. */
  async idle(): Promise<void> {
    while (this.#queue.pending) await this.#queue.idle(1000);
  }

  /** Starts recording which keys jobs work on (see KeyedJobQueue.watch). */
  watch(): Watch {
    return this.#queue.watch();
  }

  /** Runs a plan's repairs and removals as per-peer jobs; the number of fixes. */
  async #carryOut(plan: Plan): Promise<number> {
    let fixes = 0;
    const jobs = [...plan.repairs.map((r) => () => this.#repair(r)), ...plan.stale.map((s) => () => this.#dropStale(s))];
    const results = await Promise.allSettled(jobs.map((start) => start()));
    for (const res of results) {
      if (res.status === 'rejected') throw res.reason;
      fixes += res.value;
    }
    return fixes;
  }

  async #program(p: Peer): Promise<void> {
    const index = this.#index;
    await this.#nl.neighReplace(peerNeigh(p, index));
    await this.#nl.fdbReplace(peerFdb(p, index));
    await this.#nl.routeReplace(peerRoute(p, index));
  }

  /** Deletes a peer's FDB entry unless a wanted peer uses it (its MAC moved to another lease). */
  async #dropFdb(p: Peer): Promise<void> {
    if (this.#opts.peers.usesFdb(p.mac, p.publicIP)) return;
    await ignoreGone(this.#nl.fdbDel(peerFdb(p, this.#index)));
  }

  /** Puts back a peer's missing entries, unless the peer changed since the pass looked. */
  #repair(r: PeerRepair): Promise<number> {
    const p = r.peer;
    return this.#queue.run(peerKeys(p), async () => {
      if (this.#opts.peers.get(r.id) !== p) return 0;
      const index = this.#index;
      for (const what of r.needs) {
        if (what === 'neighbor') {
          await this.#nl.neighReplace(peerNeigh(p, index));
          this.#repaired('neighbor', `neighbor ${p.gateway} -> ${p.mac}`);
        } else if (what === 'fdb') {
          await this.#nl.fdbReplace(peerFdb(p, index));
          this.#repaired('fdb', `fdb ${p.mac} -> ${p.publicIP}`);
        } else {
          await this.#nl.routeReplace(peerRoute(p, index));
          this.#repaired('route', `route ${formatCIDR(p.subnet)} via ${p.gateway}`);
        }
      }
      return r.needs.length;
    });
  }

  /** Deletes an entry nobody wants, re-checked right before (a peer may have claimed it since). */
  #dropStale(s: StaleEntry): Promise<number> {
    return this.#queue.run([staleKey(s)], async () => {
      if (!isStale(this.#opts.peers, s)) return 0;
      if (s.kind === 'neighbor') await ignoreGone(this.#nl.neighDel(s.neigh));
      else if (s.kind === 'fdb') await ignoreGone(this.#nl.fdbDel(s.fdb));
      else await ignoreGone(this.#nl.routeDel(s.route));
      this.#repaired('stale', `removed stale ${describeStale(s)}`);
      return 1;
    });
  }

  #repaired(what: RepairKind, msg: string): void {
    this.#opts.onRepair?.(what);
    this.#opts.log.info(`repair: ${msg}`);
  }

  /** Runs a read on the dump socket, or alone on the main socket when there is none. */
  #read<T>(fn: (nl: Netlink) => Promise<T>): Promise<T> {
    const dumpNl = this.#opts.dumpNl;
    return dumpNl ? fn(dumpNl) : this.#lock.exclusive(() => fn(this.#nl));
  }
}

function describeStale(s: StaleEntry): string {
  if (s.kind === 'neighbor') return `neighbor ${s.neigh.ip} -> ${s.neigh.mac}`;
  if (s.kind === 'fdb') return `fdb ${s.fdb.mac} -> ${s.fdb.dst}`;
  return `route ${s.route.dst} via ${s.route.gateway}`;
}

async function linkIfAny(nl: Netlink, name: string): Promise<Link | undefined> {
  try {
    return await nl.linkByName(name);
  } catch (err) {
    if (err instanceof LinkNotFoundError) return undefined;
    throw err;
  }
}

async function ignoreGone(p: Promise<void>): Promise<void> {
  try {
    await p;
  } catch (err) {
    if (!isGone(err)) throw err;
  }
}

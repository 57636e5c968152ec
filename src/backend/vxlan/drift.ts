/**
 * The event path of drift repair: rtnetlink notifications (src/netlink/monitor.ts) about the
 * VXLAN device, its address and the peer entries on it, judged as they come, so a deleted or
 * changed entry is put back within milliseconds instead of at the next periodic pass (which
 * stays as the safety net, see --reconcile-interval).
 *
 * Each event first updates the kernel cache (cache.ts). A peer-entry event is drift when, after
 * it, the entry for its key is not what the wanted peer needs (neighState, fdbState, routeState
 * of expected.ts) or is one nobody wants (isStale of plan.ts): weftd's own writes are not drift,
 * so programming 1000 peers causes no work here beyond reading the notifications. Drifted keys
 * are gathered for {@link SETTLE_MS} (a flush or a device going away is a burst of events),
 * then the planner runs on the cache for those keys only and the executor repairs what it finds.
 * Device and address events, and lost notifications, ask for a full pass instead (they are rare,
 * and a recreated device needs every peer programmed again).
 *
 * Keys a job worked on after the first event of a batch are left to that job (the queue's
 * `settled`, as in a pass). A job that finished just before could still have notifications in
 * flight that the cache has not seen; the wait before planning lets them arrive, and the worst a
 * stale cache causes is one redundant, idempotent replace.
 */
import type { IPv4Net } from '../../ip/ipv4.ts';
import type { Link } from '../../netlink/index.ts';
import type { RtEvent } from '../../netlink/monitor.ts';
import type { Log } from '../../core/log.ts';
import type { KernelCache } from './cache.ts';
import { deviceAddress, neighState, routeState, type DeviceWant } from './expected.ts';
import type { Watch } from './jobqueue.ts';
import { deviceNeedsRepair, isStale } from './plan.ts';
import type { Peer, WantedPeers } from './peers.ts';

/** How long drifted keys are gathered before they are planned. */
export const SETTLE_MS = 30;

/**
 * Peer jobs in the queue from which the event path steps aside: a bulk of them (a snapshot, a
 * burst of lease events) makes three notifications per peer that would all be read, parsed and
 * found to be our own writes, in the same thread that programs the peers. It pauses the
 * subscription instead and runs a full pass once the queue is empty; drift that happens
 * meanwhile is found by that pass.
 */
export const BUSY_JOBS = 16;

/** The wanted peers, with the look-ups the judging needs (PeerSet). */
export interface DriftPeers extends WantedPeers {
  get(id: string): Peer | undefined;
  byGateway(ip: string): Peer | undefined;
}

export interface DriftWatchOptions {
  cache: KernelCache;
  peers: DriftPeers;
  /** The device as it should be now: name, index, the spec and our subnet. */
  device: () => { name: string; index: number; want: DeviceWant; subnet?: IPv4Net };
  /** Starts recording which keys jobs touch (the executor's queue). */
  watch: () => Watch;
  /** Plans and repairs `keys` from the cache; the caller runs one at a time with full passes. */
  repairKeys: (keys: ReadonlySet<string>, settled: (key: string) => boolean) => Promise<unknown>;
  /** Asks for a full pass (device, address, every peer); requests while one is queued merge. */
  fullPass: (why: string) => void;
  /** Peer jobs queued or running, and a promise for when there are none. */
  jobs: { pending: () => number; idle: () => Promise<void> };
  /** Pauses and resumes the subscription (RtMonitor; set once it is open). */
  subscription?: { pause(): void; resume(): void };
  log: Log;
  settleMs?: number;
  busyJobs?: number;
}

/** Judges notifications and starts repairs; see the module comment. */
export class DriftWatch {
  readonly #o: DriftWatchOptions;
  #keys = new Set<string>();
  #watch: Watch | undefined;
  #timer: ReturnType<typeof setTimeout> | undefined;
  #closed = false;
  #paused = false;

  constructor(opts: DriftWatchOptions) {
    this.#o = opts;
  }

  /** Whether the subscription is paused for a bulk of peer jobs. */
  get paused(): boolean {
    return this.#paused;
  }

  /** The events of one notification datagram, in order. */
  onEvents(events: readonly RtEvent[]): void {
    if (this.#closed || this.#paused) return;
    if (this.#o.subscription && this.#o.jobs.pending() >= (this.#o.busyJobs ?? BUSY_JOBS)) {
      this.#pause();
      return;
    }
    for (const ev of events) this.#judge(ev);
  }

  /** Steps aside for a bulk of peer jobs; see {@link BUSY_JOBS}. */
  #pause(): void {
    this.#paused = true;
    this.#o.subscription!.pause();
    this.#o.cache.invalidate();
    this.#o.log.debug(`kernel notifications paused while ${this.#o.jobs.pending()} peer jobs run`);
    this.#o.jobs.idle().then(() => {
      if (this.#closed) return;
      this.#o.subscription!.resume();
      this.#paused = false;
      this.#o.fullPass('peer jobs done, kernel notifications resumed');
    });
  }

  /** Notifications were lost: nothing built from them can be trusted until a full dump. */
  onLost(err: Error): void {
    if (this.#closed) return;
    this.#o.cache.invalidate();
    this.#o.fullPass(`kernel notifications lost (${err.message})`);
  }

  close(): void {
    this.#closed = true;
    if (this.#timer) clearTimeout(this.#timer);
    this.#timer = undefined;
    this.#watch?.close();
    this.#watch = undefined;
  }

  #judge(ev: RtEvent): void {
    const dev = this.#o.device();
    if (ev.kind === 'link') {
      if (ev.link.index !== dev.index && ev.link.name !== dev.name) return;
      const why = linkDrift(ev.op, ev.link, dev);
      if (why) this.#o.fullPass(why);
      return;
    }
    if (ev.kind === 'addr') {
      if (ev.addr.index !== dev.index || !dev.subnet) return;
      const own = deviceAddress(dev.subnet);
      const ours = ev.addr.ip === own.ip && ev.addr.prefixLen === own.prefixLen;
      if (ev.op === 'del' ? ours : !ours) this.#o.fullPass(`address ${ev.addr.ip}/${ev.addr.prefixLen} ${ev.op === 'del' ? 'removed from' : 'added to'} "${dev.name}"`);
      return;
    }
    const cache = this.#o.cache;
    if (ev.kind === 'route' && ev.op === 'new' && ev.route.index !== dev.index && (ev.route.table ?? 254) === 254 && cache.route(ev.route.dst)) {
      // Another device's route to a destination we route: `ip route replace` swaps ours out
      // without a deletion notice, and the cache cannot tell whether ours is still there.
      this.#o.fullPass(`route ${ev.route.dst} added on device ${ev.route.index}`);
      return;
    }
    if (!cache.apply(ev) || cache.index !== dev.index) return;
    const key = this.#drifted(ev);
    if (key !== undefined) this.#mark(key);
  }

  /** The key `ev` leaves in a state the planner would act on, if it does. */
  #drifted(ev: RtEvent): string | undefined {
    const { cache, peers } = this.#o;
    switch (ev.kind) {
      case 'neigh': {
        const ip = ev.neigh.ip;
        const p = peers.byGateway(ip);
        const now = cache.neigh(ip);
        if (p) return neighState(now, p) === 'ok' ? undefined : ip;
        return now && isStale(peers, { kind: 'neighbor', neigh: now }) ? ip : undefined;
      }
      case 'fdb': {
        const { mac, dst } = ev.fdb;
        const used = peers.usesFdb(mac, dst);
        if (ev.op === 'del') return used ? mac : undefined;
        if (!used) return mac;
        return undefined;
      }
      case 'route': {
        const dst = ev.route.dst;
        const [gateway = ''] = dst.split('/');
        const p = peers.get(dst);
        const now = cache.route(dst);
        if (p) return routeState(now, p) === 'ok' ? undefined : p.gateway;
        return now && isStale(peers, { kind: 'route', route: now }) ? gateway : undefined;
      }
      default:
        return undefined;
    }
  }

  #mark(key: string): void {
    this.#keys.add(key);
    this.#watch ??= this.#o.watch();
    this.#timer ??= setTimeout(() => this.#flush(), this.#o.settleMs ?? SETTLE_MS);
  }

  #flush(): void {
    this.#timer = undefined;
    const keys = this.#keys;
    const watch = this.#watch!;
    this.#keys = new Set();
    this.#watch = undefined;
    this.#o.log.debug(`kernel drift on ${keys.size} key(s): ${[...keys].slice(0, 5).join(', ')}${keys.size > 5 ? ', ...' : ''}`);
    this.#o
      .repairKeys(keys, watch.settled)
      .catch((err) => this.#o.fullPass(`event repair failed: ${(err as Error).message}`))
      .finally(() => watch.close());
  }
}

/** Why a link notification about our device (by index or name) calls for a full pass. */
function linkDrift(op: 'new' | 'del', link: Link, dev: { name: string; index: number; want: DeviceWant }): string | undefined {
  if (op === 'del') return link.index === dev.index ? `device "${dev.name}" deleted` : undefined;
  if (link.index !== dev.index) return `device "${dev.name}" replaced (index ${link.index}, was ${dev.index})`;
  if (link.name !== dev.name) return `device "${dev.name}" renamed to "${link.name}"`;
  return deviceNeedsRepair({ found: link, index: dev.index, want: dev.want }) ? `device "${dev.name}" changed` : undefined;
}

/**
 * The vxlan backend's {@link BackendNetwork}: keeps the wanted peer set (peers.ts) in step with
 * lease events and hands the kernel work to the executor (executor.ts), which runs it as per-peer
 * jobs and runs reconcile passes from the planner (plan.ts). What the kernel must end up holding
 * is in expected.ts; the concurrency model is written down in executor.ts.
 */
import { formatCIDR, type IPv4Net } from '../../ip/ipv4.ts';
import type { Link, Netlink } from '../../netlink/index.ts';
import { leaseId, type Lease } from '../../subnet/lease.ts';
import type { Log } from '../../core/log.ts';
import type { BackendNetwork } from '../types.ts';
import { encodeBackendData } from './backenddata.ts';
import { ensureVxlanDevice, type VxlanDeviceSpec } from './device.ts';
import type { RtMonitor, RtMonitorHandlers } from '../../netlink/monitor.ts';
import { errText } from '../../core/errors.ts';
import { KernelCache } from './cache.ts';
import { DriftWatch } from './drift.ts';
import { Executor, type DeviceState, type RepairKind } from './executor.ts';
import { PeerSet, peerFromLease, samePeer, type Peer } from './peers.ts';

/**
 * Peer jobs in flight at once on the netlink socket (bulk adds, snapshots, repairs); callers
 * can raise it with `concurrency`. The default is 1 by measurement: the kernel answers each
 * request at once, so the cost is the JS around each request, not waiting; on the bench (1000
 * peers, 2 cores) 2, 4 or 32 in flight converged no faster than 1 while weftd's RSS grew by
 * about 2, 5 and 8 MiB, against a 100 MB target. With a second socket for its dumps, a
 * reconcile pass still never holds a job up.
 */
export const PEER_CONCURRENCY = 1;

/** The first wait before a pass retries failed peer work, and the longest (ms). */
const RETRY_FIRST_MS = 1000;
const RETRY_MAX_MS = 30_000;

export interface VxlanNetworkOptions {
  /** Device parameters (expected.ts `expectedDevice`); `mac` is filled from the existing device on start. */
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
  /**
   * Opens an rtnetlink notification socket in the namespace of `nl` (cmd/weftd.ts:
   * `openRtMonitor`); without it {@link VxlanNetwork.watch} has nothing to watch and only the
   * periodic passes repair drift.
   */
  monitor?: (handlers: RtMonitorHandlers) => RtMonitor;
}

export class VxlanNetwork implements BackendNetwork {
  readonly backendType = 'vxlan';
  readonly #opts: VxlanNetworkOptions;
  readonly #peers = new PeerSet();
  readonly #device: DeviceState;
  readonly #exec: Executor;
  readonly #cache = new KernelCache();
  #reconciling: Promise<unknown> = Promise.resolve();
  /** A full pass asked for by the event path is queued and not started yet. */
  #passQueued = false;
  /** The retry of failed peer work: its timer, and the wait before the next one. */
  #retryTimer: NodeJS.Timeout | undefined;
  #retryDelayMs = RETRY_FIRST_MS;
  #closed = false;

  private constructor(nl: Netlink, opts: VxlanNetworkOptions, link: Link) {
    this.#opts = opts;
    this.#device = { spec: opts.device, link, subnet: opts.subnet };
    this.#exec = new Executor({
      nl,
      dumpNl: opts.dumpNl,
      concurrency: opts.concurrency ?? PEER_CONCURRENCY,
      peers: this.#peers,
      device: this.#device,
      log: opts.log,
      onRepair: opts.onRepair,
      cache: this.#cache,
      onJobFailed: () => this.#retrySoon(),
    });
  }

  /**
   * A peer job failed (a netlink error or timeout; the device gone): a full pass puts that peer
   * right within seconds instead of at the next periodic pass. Failures while one is waiting
   * merge; the wait doubles while passes keep failing, up to RETRY_MAX_MS.
   */
  #retrySoon(): void {
    if (this.#retryTimer || this.#closed) return;
    this.#retryTimer = setTimeout(() => {
      this.#retryTimer = undefined;
      this.reconcile().then(
        () => (this.#retryDelayMs = RETRY_FIRST_MS),
        (err) => {
          this.#opts.log.warn(`reconcile (retrying failed peer work): ${errText(err)}`);
          this.#retryDelayMs = Math.min(RETRY_MAX_MS, this.#retryDelayMs * 2);
          this.#retrySoon();
        },
      );
    }, this.#retryDelayMs);
    this.#retryTimer.unref();
  }

  /** Stops the retries of failed peer work (the daemon stops). */
  close(): void {
    this.#closed = true;
    clearTimeout(this.#retryTimer);
    this.#retryTimer = undefined;
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
    return this.#device.link;
  }

  get mtu(): number {
    return this.#device.link.mtu;
  }

  get deviceIndex(): number {
    return this.#device.link.index;
  }

  get deviceMAC(): string {
    return this.#device.link.mac.toLowerCase();
  }

  peerMAC(lease: Lease): string {
    const p = peerFromLease(lease, this.#opts.device.vni);
    if ('skip' in p) throw new Error(p.skip);
    return p.mac;
  }

  get backendData(): unknown {
    return encodeBackendData({ vni: this.#opts.device.vni, vtepMAC: this.#device.link.mac });
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
    this.#device.subnet = subnet;
    this.#peers.delete(formatCIDR(subnet));
    await this.#exec.ensureAddress(subnet);
  }

  #toPeer(lease: Lease): Peer | undefined {
    const own = this.#device.subnet;
    if (own && leaseId(lease) === formatCIDR(own)) return undefined;
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
        jobs.push(this.#exec.remove(old));
      } else if (!samePeer(old, now)) {
        this.#peers.set(id, now);
        jobs.push(this.#exec.change(old, now));
      }
    }
    for (const [id, p] of next) {
      if (this.#peers.has(id)) continue;
      this.#peers.set(id, p);
      jobs.push(this.#exec.add(p));
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
      return this.#exec.remove(old);
    }
    if (old && samePeer(old, p)) return Promise.resolve();
    this.#peers.set(id, p);
    return old ? this.#exec.change(old, p) : this.#exec.add(p);
  }

  applyDelete(lease: Pick<Lease, 'subnet'>): Promise<void> {
    const id = leaseId(lease);
    const old = this.#peers.get(id);
    if (!old) return Promise.resolve();
    this.#peers.delete(id);
    return this.#exec.remove(old);
  }

  /** One pass at a time; a call during a pass runs after it. */
  reconcile(): Promise<number> {
    return this.#serial(() => this.#exec.pass());
  }

  /**
   * Repairs drift as the kernel announces it (drift.ts) until `signal` aborts; the periodic
   * {@link reconcile} passes stay the safety net. Subscribes first, then runs one full pass,
   * which seeds the kernel cache the event path plans from. Without a `monitor` option, or when
   * the socket cannot be opened, it logs why and returns: only the periodic passes repair then.
   */
  async watch(signal: AbortSignal): Promise<void> {
    const open = this.#opts.monitor;
    const log = this.#opts.log;
    if (!open || signal.aborted) return;
    const drift = new DriftWatch({
      cache: this.#cache,
      peers: this.#peers,
      device: () => ({ name: this.#device.spec.name, index: this.#device.link.index, want: { ...this.#device.spec, mac: this.#device.link.mac }, subnet: this.#device.subnet }),
      watch: () => this.#exec.watch(),
      repairKeys: (keys, settled) => this.#serial(() => this.#exec.repairKeys(keys, settled)),
      fullPass: (why) => this.#queuePass(why),
      jobs: { pending: () => this.#exec.pending, idle: () => this.#exec.idle() },
      subscription: { pause: () => mon?.pause(), resume: () => mon?.resume() },
      log,
    });
    let mon: RtMonitor | undefined;
    try {
      mon = open({ onEvents: (evs) => drift.onEvents(evs), onLost: (err) => drift.onLost(err) });
    } catch (err) {
      log.warn(`kernel notifications unavailable, drift is repaired by the periodic pass only: ${errText(err)}`);
      return;
    }
    this.#queuePass('watching kernel notifications');
    await new Promise<void>((resolve) => signal.addEventListener('abort', () => resolve(), { once: true }));
    drift.close();
    mon.close();
  }

  /** A full pass for the event path; requests while one is queued (not yet running) merge. */
  #queuePass(why: string): void {
    if (this.#passQueued) return;
    this.#passQueued = true;
    this.#opts.log.debug(`full pass: ${why}`);
    this.#serial(() => {
      this.#passQueued = false;
      return this.#exec.pass();
    }).catch((err) => this.#opts.log.warn(`reconcile (${why}): ${errText(err)}`));
  }

  /** Runs `fn` after every pass or event repair queued before it. */
  #serial<T>(fn: () => Promise<T>): Promise<T> {
    const run = this.#reconciling.then(fn);
    this.#reconciling = run.catch(() => undefined);
    return run;
  }
}

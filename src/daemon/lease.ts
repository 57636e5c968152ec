/**
 * The lease step: take our subnet lease, then keep it (renewal policy). Only the
 * {@link SubnetManager} interface is used, so the store may be etcd or anything else that
 * implements it, including one whose leases never expire (then renewal waits for a kick).
 *
 * A lost subnet (renewal finds our key held by another node: {@link LeaseLostError}) never
 * moves the node silently. The node's pods have addresses in that subnet and cni0 its gateway,
 * so the keeper (1) goes lost: one error line naming the holder, `onLost` (run.ts: not ready,
 * the lost form of the subnet file so CNI ADD and STATUS fail, the weftd_subnet_lost gauge);
 * nothing in the data plane is torn down, so existing pods keep their addresses and local
 * traffic; (2) keeps retrying the renewal, which takes the same subnet again as soon as its key
 * is free (expired or deleted; the watch kicks a renewal at the delete): `onReclaimed`; (3) only
 * when no pod address is left in the subnet (`podsOn`, the CNI IPAM store) takes a new subnet:
 * `onNewLease` (run.ts moves flannel.1 and cni0's gateway). A restart while lost does the same:
 * {@link acquireLease} finds the previous subnet held elsewhere with pods on it and starts lost
 * instead of taking a free subnet.
 */
import type { Clock } from '../core/clock.ts';
import { FailureLog, retrying, type RetryPolicy } from '../core/retry.ts';
import type { Log } from '../core/log.ts';
import type { IPv4Net } from '../ip/ipv4.ts';
import { OutOfSubnetsError } from '../subnet/choose.ts';
import type { NetworkConfig } from '../subnet/config.ts';
import { describeSubnet } from '../subnet/choose.ts';
import { leaseId, type Lease, type LeaseAttrs } from '../subnet/lease.ts';
import { LeaseLostError, type SubnetManager } from '../subnet/manager.ts';
import { Renewer } from '../subnet/renew.ts';
import type { Metrics } from './metrics.ts';

export interface LeaseContext {
  manager: SubnetManager;
  config: NetworkConfig;
  /** What we publish in the lease (read at each call: the backend data may change). */
  attrs: () => LeaseAttrs;
  ttlSeconds: number;
  clock: Clock;
  log: Log;
}

/** `2026-12-01T07:00:00.000Z`, or `never` for a lease without expiry. */
export function describeExpiry(lease: Lease): string {
  return lease.expiresAt === undefined ? 'never' : new Date(lease.expiresAt).toISOString();
}

/** The first lease; `lostTo`: the previous subnet is held by that node and pods are still on it. */
export interface FirstLease {
  lease: Lease;
  lostTo?: string;
}

const sameSubnet = (a: IPv4Net, b: IPv4Net) => a.ip === b.ip && a.prefixLen === b.prefixLen;

/**
 * Takes a lease (our old one, else `previous`, else a free subnet), retrying until it works or
 * `signal` aborts (undefined). Out of subnets is waited out: a lease may expire or be deleted.
 * When the manager lets nodes choose (`canLoseSubnet`), `previous` is held by another node, we
 * hold no lease and pods are still on `previous`, no new subnet is taken: the result is `previous` (not leased) and `lostTo` the holder.
 */
export async function acquireLease(
  previous: IPv4Net | undefined,
  ctx: LeaseContext & { signal: AbortSignal; retry: RetryPolicy; podsOn: (subnet: IPv4Net) => Promise<number> },
): Promise<FirstLease | undefined> {
  const { manager, config, ttlSeconds } = ctx;
  const lease = await retrying<FirstLease>(
    'subnet lease',
    async () => {
      const attrs = ctx.attrs();
      if (previous && manager.canLoseSubnet) {
        const { leases } = await manager.listLeases();
        const holder = leases.find((l) => sameSubnet(l.subnet, previous));
        // Same backend data (VTEP MAC): this node under a new public IP; chooseSubnet takes it over.
        const ours = (l: Lease) => l.publicIP === attrs.publicIP || JSON.stringify(l.backendData) === JSON.stringify(attrs.backendData);
        if (holder && !ours(holder) && !leases.some((l) => l.publicIP === attrs.publicIP)) {
          const pods = await ctx.podsOn(previous);
          if (pods > 0) return { lease: { subnet: previous, ...attrs }, lostTo: holder.publicIP };
          ctx.log.info(`our previous subnet ${describeSubnet(previous)} is held by ${holder.publicIP} and no pod is left on it: taking another`);
        }
      }
      try {
        return { lease: await manager.acquireLease(config, attrs, { previous, ttlSeconds }) };
      } catch (err) {
        if (err instanceof OutOfSubnetsError) throw new Error(`${err.message}; waiting for a lease to expire or be deleted`, { cause: err });
        throw err;
      }
    },
    { signal: ctx.signal, clock: ctx.clock, log: ctx.log, policy: ctx.retry },
  );
  if (lease && !lease.lostTo) ctx.log.info(`leased subnet ${leaseId(lease.lease)}`, { publicIP: lease.lease.publicIP, expires: describeExpiry(lease.lease) });
  return lease;
}

/** Still lost: thrown by a renewal attempt so the renewer retries it after its delay. */
export class SubnetStillLostError extends Error {
  constructor(subnet: string, opts: { holder: string; pods: number }) {
    super(`subnet ${subnet} is still held by ${opts.holder}; ${opts.pods} pod address(es) left on it, so not moving`);
    this.name = 'SubnetStillLostError';
  }
}

export interface LeaseKeeperOptions extends LeaseContext {
  /** Renew this long before expiry. */
  renewMarginMs: number;
  /** The wait between failed renewals. */
  retry: RetryPolicy;
  metrics: Metrics;
  /** Pod addresses still allocated in `subnet` (the CNI IPAM store). */
  podsOn: (subnet: IPv4Net) => Promise<number>;
  /** Our subnet is held by `holder` now: stop taking pods, go not ready. Retried until it works. */
  onLost: (lease: Lease, holder: string) => Promise<void>;
  /** We hold the lost subnet again: take pods, go ready. */
  onReclaimed: (lease: Lease) => Promise<void>;
  /** Moved from the lost `old` subnet to `lease` (no pod was left on `old`): move the node onto it. */
  onNewLease: (lease: Lease, old: Lease) => Promise<void>;
  /** Start lost to this holder (a restart while lost; see {@link acquireLease}). */
  lostTo?: string;
}

/** Why and since when our subnet is lost. */
interface Lost {
  holder: string;
  since: number;
  /** onLost has run for this holder. */
  published: boolean;
  /** Pod addresses last seen on the subnet (logged when it changes). */
  pods?: number;
}

/**
 * Keeps our lease: renews it before it expires and at once when {@link kick}ed (the watch saw
 * it deleted or taken over); when another node holds our subnet, waits lost (module comment).
 */
export class LeaseKeeper {
  readonly #opts: LeaseKeeperOptions;
  readonly #renewer: Renewer;
  readonly #failures: FailureLog;
  #lease: Lease;
  #lost: Lost | undefined;
  /** A move whose onNewLease has not completed yet: the subnet we left. */
  #moving: Lease | undefined;

  constructor(lease: Lease, opts: LeaseKeeperOptions) {
    this.#lease = lease;
    this.#opts = opts;
    this.#failures = new FailureLog('renew lease', opts);
    opts.metrics.setLeaseExpiry(lease.expiresAt);
    if (opts.lostTo !== undefined) this.#markLost(opts.lostTo);
    this.#renewer = new Renewer(lease.expiresAt, {
      clock: opts.clock,
      renewMarginMs: opts.renewMarginMs,
      retry: opts.retry,
      renew: () => this.#renew(),
      onError: (err) => this.#failures.failed(err),
    });
  }

  /** Our current lease. */
  get lease(): Lease {
    return this.#lease;
  }

  /** True when `subnet` is our lease's subnet. */
  isOwn(subnet: IPv4Net): boolean {
    return subnet.ip === this.#lease.subnet.ip && subnet.prefixLen === this.#lease.subnet.prefixLen;
  }

  /** The public IP of the node holding our subnet; undefined while we hold it. */
  get lostTo(): string | undefined {
    return this.#lost?.holder;
  }

  /** Renew now. */
  kick(): void {
    this.#renewer.kick();
  }

  /** Renews until `signal` aborts (at once when starting lost). */
  run(signal: AbortSignal): Promise<void> {
    if (this.#lost) this.#renewer.kick();
    return this.#renewer.run(signal);
  }

  #markLost(holder: string): void {
    const subnet = describeSubnet(this.#lease.subnet);
    if (this.#lost?.holder === holder) return;
    this.#opts.log.error(
      `subnet ${subnet} is now held by the node at ${holder}: not ready, no new pods; existing pods keep their addresses; ` +
        `reclaiming it as soon as it is free, moving to another subnet only once no pod is left on it`,
    );
    this.#lost = { holder, since: this.#opts.clock.now(), published: false };
    this.#opts.metrics.subnetLost.set(1);
  }

  async #renew(): Promise<number | undefined> {
    const { manager, ttlSeconds, log, metrics } = this.#opts;
    try {
      this.#lease = await manager.renewLease(this.#lease, this.#opts.attrs(), { ttlSeconds });
    } catch (err) {
      if (!(err instanceof LeaseLostError)) throw err;
      await this.#whileLost(err.holder);
    }
    if (this.#moving) {
      await this.#opts.onNewLease(this.#lease, this.#moving);
      log.info(`moved from subnet ${leaseId(this.#moving)} to ${leaseId(this.#lease)}`);
      this.#moving = undefined;
    } else if (this.#lost) {
      await this.#opts.onReclaimed(this.#lease);
      log.info(`reclaimed subnet ${leaseId(this.#lease)} (held by ${this.#lost.holder} for ${Math.round((this.#opts.clock.now() - this.#lost.since) / 1000)}s)`);
    }
    if (this.#lost) {
      this.#lost = undefined;
      metrics.subnetLost.set(0);
    }
    this.#failures.ok();
    metrics.renewals.inc();
    metrics.setLeaseExpiry(this.#lease.expiresAt);
    log.debug(`renewed lease ${leaseId(this.#lease)}`, { expires: describeExpiry(this.#lease) });
    return this.#lease.expiresAt;
  }

  /** Our key is held by `holder`: publish that once, then move if no pod is left, else throw. */
  async #whileLost(holder: string): Promise<void> {
    const { manager, config, ttlSeconds, log } = this.#opts;
    this.#markLost(holder);
    const lost = this.#lost!;
    if (!lost.published) {
      await this.#opts.onLost(this.#lease, holder);
      lost.published = true;
    }
    const pods = await this.#opts.podsOn(this.#lease.subnet);
    if (pods !== lost.pods && pods > 0) log.info(`lost subnet ${leaseId(this.#lease)}: ${pods} pod address(es) still allocated on it; waiting`);
    lost.pods = pods;
    if (pods > 0) throw new SubnetStillLostError(describeSubnet(this.#lease.subnet), { holder, pods });
    const old = this.#lease;
    log.warn(`no pod is left on the lost subnet ${leaseId(old)}: taking a new subnet`);
    const fresh = await manager.acquireLease(config, this.#opts.attrs(), { ttlSeconds });
    log.info(`leased subnet ${leaseId(fresh)}`, { publicIP: fresh.publicIP, expires: describeExpiry(fresh) });
    this.#lease = fresh;
    this.#moving = old;
  }
}

/**
 * The lease step: take our subnet lease, then keep it (renewal policy). Only the
 * {@link SubnetManager} interface is used, so the store may be etcd or anything else that
 * implements it, including one whose leases never expire (then renewal waits for a kick).
 */
import type { Clock } from '../core/clock.ts';
import { FailureLog, retrying, type RetryPolicy } from '../core/retry.ts';
import type { Log } from '../core/log.ts';
import type { IPv4Net } from '../ip/ipv4.ts';
import { OutOfSubnetsError } from '../subnet/choose.ts';
import type { NetworkConfig } from '../subnet/config.ts';
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

/**
 * Takes a lease (our old one, else `previous`, else a free subnet), retrying until it works or
 * `signal` aborts (undefined). Out of subnets is waited out: a lease may expire or be deleted.
 */
export async function acquireLease(previous: IPv4Net | undefined, ctx: LeaseContext & { signal: AbortSignal; retry: RetryPolicy }): Promise<Lease | undefined> {
  const { manager, config, ttlSeconds } = ctx;
  const lease = await retrying(
    'subnet lease',
    async () => {
      try {
        return await manager.acquireLease(config, ctx.attrs(), { previous, ttlSeconds });
      } catch (err) {
        if (err instanceof OutOfSubnetsError) throw new Error(`${err.message}; waiting for a lease to expire or be deleted`, { cause: err });
        throw err;
      }
    },
    { signal: ctx.signal, clock: ctx.clock, log: ctx.log, policy: ctx.retry },
  );
  if (lease) ctx.log.info(`leased subnet ${leaseId(lease)}`, { publicIP: lease.publicIP, expires: describeExpiry(lease) });
  return lease;
}

export interface LeaseKeeperOptions extends LeaseContext {
  /** Renew this long before expiry. */
  renewMarginMs: number;
  /** The wait between failed renewals. */
  retry: RetryPolicy;
  metrics: Metrics;
  /** Called with a different subnet's lease after ours was lost; must move the node onto it. */
  onNewLease: (lease: Lease) => Promise<void>;
}

/**
 * Keeps our lease: renews it before it expires and at once when {@link kick}ed (the watch saw
 * it deleted or taken over); when another node holds our subnet, takes a new one.
 */
export class LeaseKeeper {
  readonly #opts: LeaseKeeperOptions;
  readonly #renewer: Renewer;
  readonly #failures: FailureLog;
  #lease: Lease;

  constructor(lease: Lease, opts: LeaseKeeperOptions) {
    this.#lease = lease;
    this.#opts = opts;
    this.#failures = new FailureLog('renew lease', opts);
    opts.metrics.setLeaseExpiry(lease.expiresAt);
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

  /** Renew now. */
  kick(): void {
    this.#renewer.kick();
  }

  /** Renews until `signal` aborts. */
  run(signal: AbortSignal): Promise<void> {
    return this.#renewer.run(signal);
  }

  async #renew(): Promise<number | undefined> {
    const { manager, config, ttlSeconds, log, metrics } = this.#opts;
    try {
      this.#lease = await manager.renewLease(this.#lease, this.#opts.attrs(), { ttlSeconds });
    } catch (err) {
      if (!(err instanceof LeaseLostError)) throw err;
      log.error(`${err.message}; taking a new subnet`);
      const fresh = await manager.acquireLease(config, this.#opts.attrs(), { ttlSeconds });
      this.#lease = fresh;
      await this.#opts.onNewLease(fresh);
      log.info(`leased subnet ${leaseId(fresh)}`);
    }
    this.#failures.ok();
    metrics.renewals.inc();
    metrics.setLeaseExpiry(this.#lease.expiresAt);
    log.debug(`renewed lease ${leaseId(this.#lease)}`, { expires: describeExpiry(this.#lease) });
    return this.#lease.expiresAt;
  }
}

/**
 * The daemon's Prometheus metrics through prom-client: weftd's own families plus prom-client's
 * default process and Node.js metrics (CPU, memory, file descriptors, event-loop lag, GC). Each
 * {@link Metrics} has its own Registry (never prom-client's global one), so several daemons can
 * run in one process (tests) without their metrics colliding.
 */
import { collectDefaultMetrics, Counter, Gauge, Registry } from 'prom-client';
import { systemClock, type Clock } from '../core/clock.ts';

export class Metrics {
  readonly registry = new Registry();
  /** Peers with neighbor, FDB entry and route programmed. */
  readonly peers: Gauge;
  readonly renewals: Counter;
  readonly etcdErrors: Counter;
  /** Kernel objects and nftables tables the reconciler put back or removed. */
  readonly repairs: Counter;
  /** Lease changes the watch missed and a periodic resync found. */
  readonly resyncRepairs: Counter;
  readonly ready: Gauge;
  /** 1 while another node holds our subnet (src/daemon/lease.ts). */
  readonly subnetLost: Gauge;
  /** Lease watches restarted, by reason (stalled, cancelled, reconnected, resync). */
  readonly watchRestarts: Counter<'reason'>;
  /** Epoch ms when our lease expires; undefined before the first lease and for leases that never expire. */
  #leaseExpiresAt: number | undefined;

  constructor(opts: { clock?: Clock } = {}) {
    const clock = opts.clock ?? systemClock;
    const registers = [this.registry];
    collectDefaultMetrics({ register: this.registry });
    this.peers = new Gauge({ name: 'weftd_peers', help: 'Peers (other nodes) with neighbor, FDB entry and route programmed.', registers });
    const expiry = () => this.#leaseExpiresAt;
    new Gauge({
      name: 'weftd_lease_expiry_timestamp_seconds',
      help: "When this node's subnet lease expires (Unix time; 0: no lease yet or one that never expires).",
      registers,
      collect() {
        this.set(Math.floor((expiry() ?? 0) / 1000));
      },
    });
    new Gauge({
      name: 'weftd_lease_expiry_seconds',
      help: "Seconds until this node's subnet lease expires (0: no lease yet or one that never expires).",
      registers,
      collect() {
        const at = expiry();
        this.set(at ? Math.max(0, Math.round((at - clock.now()) / 1000)) : 0);
      },
    });
    this.renewals = new Counter({ name: 'weftd_lease_renewals_total', help: 'Successful lease renewals.', registers });
    this.etcdErrors = new Counter({ name: 'weftd_etcd_errors_total', help: 'Failed etcd calls and watch interruptions.', registers });
    this.repairs = new Counter({ name: 'weftd_reconcile_repairs_total', help: 'Kernel state the reconciler had to put back or remove.', registers });
    this.resyncRepairs = new Counter({
      name: 'weftd_watch_resync_repairs_total',
      help: 'Lease changes the etcd watch missed and a periodic re-list found.',
      registers,
    });
    this.ready = new Gauge({ name: 'weftd_ready', help: '1 once the device, peers and subnet file are in place (0 while the subnet is lost).', registers });
    this.subnetLost = new Gauge({
      name: 'weftd_subnet_lost',
      help: "1 while another node holds this node's subnet (no new pods; reclaimed when free, moved once no pod is left on it).",
      registers,
    });
    this.watchRestarts = new Counter({
      name: 'weftd_watch_restarts_total',
      help: 'Lease watches restarted (reason: stalled = no event and no progress notification in time; cancelled; reconnected; resync = a re-list found missed changes).',
      labelNames: ['reason'],
      registers,
    });
  }

  /** Records our lease's expiry (epoch ms; undefined: it never expires). */
  setLeaseExpiry(expiresAt: number | undefined): void {
    this.#leaseExpiresAt = expiresAt;
  }

  /** The exposition text of every metric in this registry. */
  render(): Promise<string> {
    return this.registry.metrics();
  }

  /** The Content-Type for {@link render}'s text. */
  get contentType(): string {
    return this.registry.contentType;
  }
}

/**
 * The daemon's Prometheus metrics through prom-client: weftd's own families plus prom-client's
 * default process and Node.js metrics (CPU, memory, file descriptors, event-loop lag, GC). Each
 * {@link Metrics} has its own Registry (never prom-client's global one), so several daemons can
 * run in one process (tests) without their metrics colliding.
 */
import { collectDefaultMetrics, Counter, Gauge, Histogram, Registry } from 'prom-client';
import { systemClock, type Clock } from '../core/clock.ts';

export class Metrics {
  readonly registry = new Registry();
  /** Peers with neighbor, FDB entry and route programmed. */
  readonly peers: Gauge;
  readonly renewals: Counter;
  readonly etcdErrors: Counter;
  /** Kernel objects and nftables tables the reconciler put back or removed. */
  readonly repairs: Counter;
  /** Leases the lease gate (src/subnet/validate.ts) rejects now: never programmed. */
  readonly invalidLeases: Gauge;
  /** Lease changes the watch missed and a periodic resync found. */
  readonly resyncRepairs: Counter;
  readonly ready: Gauge;
  /** 1 while another node holds our subnet (src/daemon/lease.ts). */
  readonly subnetLost: Gauge;
  /** Lease watches restarted, by reason (stalled, cancelled, reconnected, resync). */
  readonly watchRestarts: Counter<'reason'>;
  /** Kubernetes mode: peer Nodes skipped for malformed annotations or podCIDRs. */
  readonly malformedNodes: Counter;
  /** Service proxy: syncs by mode (full, partial, unchanged) and failures. */
  readonly proxySyncs: Counter<'mode'>;
  readonly proxySyncSeconds: Histogram;
  readonly proxyServicePorts: Gauge;
  readonly proxyInvalidObjects: Counter<'kind'>;
  /** Kubernetes mode: failed API calls and watch interruptions. */
  readonly kubeErrors: Counter;
  /** Kubernetes mode: peer Nodes that have no weft/flannel annotations yet. */
  readonly unannotatedNodes: Gauge;
  /** Epoch ms when our lease expires; undefined before the first lease and for leases that never expire. */
  #leaseExpiresAt: number | undefined;

  constructor(opts: { clock?: Clock } = {}) {
    const clock = opts.clock ?? systemClock;
    const registers = [this.registry];
    // The event-loop lag histogram samples on a timer: prom-client's default 10 ms wakes an idle
    // weftd 100 times a second (~0.4% of a core in a bare Node 24 process); 100 ms still shows lag.
    collectDefaultMetrics({ register: this.registry, eventLoopMonitoringPrecision: 100 });
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
    this.invalidLeases = new Gauge({
      name: 'weftd_invalid_leases',
      help: 'Leases in the table that failed validation and are not programmed (each logged once when rejected).',
      registers,
    });
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
    this.malformedNodes = new Counter({ name: 'weftd_kube_malformed_nodes_total', help: 'Kubernetes mode: peer Nodes skipped (never programmed) for malformed annotations or podCIDRs.', registers });
    this.proxySyncs = new Counter({ name: 'weftd_proxy_syncs_total', help: 'Service proxy nftables syncs by mode (full, partial, unchanged, failed).', labelNames: ['mode'], registers });
    this.proxySyncSeconds = new Histogram({
      name: 'weftd_proxy_sync_duration_seconds',
      help: 'Service proxy: time from a desired state to rules live in the kernel (one nft transaction).',
      buckets: [0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5],
      registers,
    });
    this.proxyServicePorts = new Gauge({ name: 'weftd_proxy_service_ports', help: 'Service proxy: Service ports programmed.', registers });
    this.proxyInvalidObjects = new Counter({ name: 'weftd_proxy_invalid_objects_total', help: 'Service proxy: Services and EndpointSlices ignored as invalid.', labelNames: ['kind'], registers });
    this.kubeErrors = new Counter({ name: 'weftd_kube_api_errors_total', help: 'Kubernetes mode: failed API server calls and watch interruptions.', registers });
    this.unannotatedNodes = new Gauge({ name: 'weftd_kube_unannotated_nodes', help: 'Kubernetes mode: peer Nodes without backend annotations yet (skipped).', registers });
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

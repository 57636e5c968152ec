/** The daemon's Prometheus metrics (text exposition format 0.0.4), kept as plain counters. */

export class Metrics {
  peers = 0;
  /** Epoch ms when our lease expires (0 before the first lease). */
  leaseExpiresAt = 0;
  etcdErrors = 0;
  repairs = 0;
  renewals = 0;
  /** Lease changes the watch missed and a periodic resync found. */
  resyncRepairs = 0;
  ready = false;

  /** Renders every metric; `now` is epoch ms. */
  render(now: number): string {
    const g = (name: string, help: string, type: 'gauge' | 'counter', value: number) =>
      `# HELP ${name} ${help}\n# TYPE ${name} ${type}\n${name} ${value}\n`;
    return [
      g('weftd_peers', 'Peers (other nodes) with neighbor, FDB entry and route programmed.', 'gauge', this.peers),
      g('weftd_lease_expiry_timestamp_seconds', 'When this node\'s subnet lease expires (Unix time).', 'gauge', Math.floor(this.leaseExpiresAt / 1000)),
      g('weftd_lease_expiry_seconds', 'Seconds until this node\'s subnet lease expires.', 'gauge', this.leaseExpiresAt ? Math.max(0, Math.round((this.leaseExpiresAt - now) / 1000)) : 0),
      g('weftd_lease_renewals_total', 'Successful lease renewals.', 'counter', this.renewals),
      g('weftd_etcd_errors_total', 'Failed etcd calls and watch interruptions.', 'counter', this.etcdErrors),
      g('weftd_reconcile_repairs_total', 'Kernel state the reconciler had to put back or remove.', 'counter', this.repairs),
      g('weftd_watch_resync_repairs_total', 'Lease changes the etcd watch missed and a periodic re-list found.', 'counter', this.resyncRepairs),
      g('weftd_ready', '1 once the device, peers and subnet file are in place.', 'gauge', this.ready ? 1 : 0),
    ].join('');
  }
}

/**
 * The peer glue: the subnet manager's lease watch drives the backend. Our own lease is never a
 * peer; seeing it deleted or taken over kicks a renewal instead. Backend calls are not awaited
 * by the watch (it must keep reading); their failures are logged and reconcile repairs the rest.
 */
import type { BackendNetwork } from '../backend/types.ts';
import { errText } from '../core/errors.ts';
import type { Log } from '../core/log.ts';
import { formatCIDR, type IPv4Net } from '../ip/ipv4.ts';
import type { SubnetManager } from '../subnet/manager.ts';
import type { Metrics } from './metrics.ts';

export interface PeerGlueOptions {
  manager: SubnetManager;
  network: BackendNetwork;
  /** Our lease: which subnet is ours, and how to renew it now. */
  own: { isOwn(subnet: IPv4Net): boolean; kick(): void };
  /** The public IP our lease must carry. */
  publicIP: string;
  log: Log;
  metrics: Metrics;
}

/**
 * Follows the lease table into the backend until `signal` aborts. `synced` resolves once the
 * first snapshot has been applied (or failed to: reconcile retries it), `done` when the watch ends.
 */
export function followPeers(signal: AbortSignal, opts: PeerGlueOptions): { synced: Promise<void>; done: Promise<void> } {
  const { manager, network, own, publicIP, log, metrics } = opts;
  let firstSnapshot!: () => void;
  const synced = new Promise<void>((r) => (firstSnapshot = r));
  const done = manager.watchLeases(signal, {
    snapshot: (leases) => {
      if (!leases.some((l) => own.isOwn(l.subnet) && l.publicIP === publicIP)) own.kick();
      network
        .applySnapshot(leases)
        .then(() => {
          metrics.peers.set(network.peerCount);
          log.info(`lease table synced: ${network.peerCount} peer(s)`);
        })
        .catch((err) => log.error(`apply lease table: ${errText(err)}`))
        .finally(firstSnapshot);
    },
    event: (ev) => {
      const subnet = ev.type === 'put' ? ev.lease.subnet : ev.subnet;
      if (own.isOwn(subnet)) {
        if (ev.type === 'delete' || ev.lease.publicIP !== publicIP) {
          log.warn(`our lease ${formatCIDR(subnet)} was ${ev.type === 'delete' ? 'deleted' : 'taken over'}; renewing`);
          own.kick();
        }
        return;
      }
      const p = ev.type === 'put' ? network.applyPut(ev.lease) : network.applyDelete({ subnet });
      p.then(() => metrics.peers.set(network.peerCount)).catch((err) => log.error(`apply lease change: ${errText(err)}`));
    },
  });
  return { synced, done };
}

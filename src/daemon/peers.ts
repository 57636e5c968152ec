/**
 * The peer glue: the subnet manager's lease watch drives the backend, through the lease gate
 * (src/subnet/validate.ts), so no lease reaches the kernel unchecked. Our own lease is never a
 * peer; seeing it deleted or taken over (judged on the raw input, before the gate) kicks a
 * renewal instead. Backend calls are not awaited by the watch (it must keep reading); their
 * failures are logged and reconcile repairs the rest.
 *
 * Order: gate calls are synchronous and made in the order the watch reports, so the gate's
 * table always follows the watch; the backend serializes its own work per peer.
 */
import type { BackendNetwork } from '../backend/types.ts';
import { errText } from '../core/errors.ts';
import type { Log } from '../core/log.ts';
import { formatCIDR, type IPv4Net } from '../ip/ipv4.ts';
import type { SubnetManager } from '../subnet/manager.ts';
import { rejectionLine, type GateResult, type LeaseContext, type LeaseGate } from '../subnet/validate.ts';
import type { Metrics } from './metrics.ts';

/** Rejections logged one line each per gate call; the rest are summed up in one more line. */
export const REJECTION_LINES = 20;

/** The node facts the gate compares leases with, as {@link nodeFacts} reads them. */
export type NodeFacts = Pick<LeaseContext, 'ownAddresses' | 'connectedRoutes'>;

export interface PeerGlueOptions {
  manager: SubnetManager;
  network: BackendNetwork;
  /** Validates every lease before the backend sees it (its context: our subnet, MAC, facts). */
  gate: LeaseGate;
  /** The addresses and routes the gate was built with (see {@link PeerGlue.refreshFacts}). */
  facts?: NodeFacts;
  /** Our lease: which subnet is ours, and how to renew it now. */
  own: { isOwn(subnet: IPv4Net): boolean; kick(): void };
  /** The public IP our lease must carry. */
  publicIP: string;
  log: Log;
  metrics: Metrics;
}

function sameFacts(a: NodeFacts, b: NodeFacts): boolean {
  const key = (f: NodeFacts) => JSON.stringify([[...f.ownAddresses].sort(), f.connectedRoutes.map((r) => formatCIDR(r)).sort()]);
  return key(a) === key(b);
}

/** The lease watch -> gate -> backend path, plus re-validation when this node's facts change. */
export class PeerGlue {
  readonly #opts: PeerGlueOptions;
  #facts: NodeFacts | undefined;

  constructor(opts: PeerGlueOptions) {
    this.#opts = opts;
    this.#facts = opts.facts;
  }

  /**
   * Follows the lease table into the backend until `signal` aborts. `synced` resolves once the
   * first snapshot has been applied (or failed to: reconcile retries it), `done` when the watch ends.
   */
  follow(signal: AbortSignal): { synced: Promise<void>; done: Promise<void> } {
    const { manager, network, gate, own, publicIP, log, metrics } = this.#opts;
    let firstSnapshot!: () => void;
    const synced = new Promise<void>((r) => (firstSnapshot = r));
    const done = manager.watchLeases(signal, {
      snapshot: (leases) => {
        if (!leases.some((l) => own.isOwn(l.subnet) && l.publicIP === publicIP)) own.kick();
        const r = gate.snapshot(leases);
        this.#report(r);
        network
          .applySnapshot(r.accepted)
          .then(() => {
            metrics.peers.set(network.peerCount);
            log.info(`lease table synced: ${network.peerCount} peer(s)${r.invalid ? `, ${r.invalid} invalid lease(s) ignored` : ''}`);
          })
          .catch((err) => log.error(`apply lease table: ${errText(err)}`))
          .finally(firstSnapshot);
      },
      event: (ev) => {
        const subnet = ev.type === 'put' ? ev.lease.subnet : ev.subnet;
        if (own.isOwn(subnet) && (ev.type === 'delete' || ev.lease.publicIP !== publicIP)) {
          log.warn(`our lease ${formatCIDR(subnet)} was ${ev.type === 'delete' ? 'deleted' : 'taken over'}; renewing`);
          own.kick();
        }
        // The gate sees our own key too, so its table stays the watch's.
        this.#apply(gate.event(ev));
      },
    });
    // Observed now: the watch may end in an error (kube: our podCIDR moved) before runDaemon awaits it.
    done.catch(() => undefined);
    return { synced, done };
  }

  /** This node's facts changed (our subnet after a move, the device's MAC): re-validate. */
  update(ctx: Partial<LeaseContext>): void {
    this.#apply(this.#opts.gate.update(ctx));
  }

  /**
   * Re-validates with freshly read addresses and routes, only when they differ from the last
   * ones (cheap to call on every slow reconcile tick); true when they did.
   */
  refreshFacts(facts: NodeFacts): boolean {
    if (this.#facts && sameFacts(this.#facts, facts)) return false;
    this.#facts = facts;
    this.update(facts);
    return true;
  }

  /** Hands the gate's changes to the backend (never our own subnet: it is not a peer). */
  #apply(r: GateResult): void {
    const { network, own, log, metrics } = this.#opts;
    this.#report(r);
    for (const ev of r.events) {
      const subnet = ev.type === 'put' ? ev.lease.subnet : ev.subnet;
      if (own.isOwn(subnet)) continue;
      const p = ev.type === 'put' ? network.applyPut(ev.lease) : network.applyDelete({ subnet });
      p.then(() => metrics.peers.set(network.peerCount)).catch((err) => log.error(`apply lease change: ${errText(err)}`));
    }
  }

  #report(r: GateResult): void {
    const { log, metrics } = this.#opts;
    metrics.invalidLeases.set(r.invalid);
    for (const x of r.newlyRejected.slice(0, REJECTION_LINES)) log.warn(rejectionLine(x));
    const more = r.newlyRejected.length - REJECTION_LINES;
    if (more > 0) log.warn(`and ${more} more invalid lease(s) ignored`);
  }
}

/** {@link PeerGlue.follow} for a glue that needs no later updates. */
export function followPeers(signal: AbortSignal, opts: PeerGlueOptions): { synced: Promise<void>; done: Promise<void> } {
  return new PeerGlue(opts).follow(signal);
}

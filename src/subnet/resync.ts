/**
 * The watch's safety net (Kubernetes informers call it a resync): what the watch has told us is
 * kept per subnet with etcd revisions, and a periodic full listing is compared with it. A
 * difference means the watch missed something (a silently dead stream, a lost event); it is
 * handed on as the events the watch should have delivered.
 *
 * Revisions make the comparison safe while the watch keeps running: an entry the watch saw after
 * the listing's revision is newer than the listing, not missing from it.
 */
import type { Clock } from '../core/clock.ts';
import { diffLeases } from './diff.ts';
import { leaseId, type Lease } from './lease.ts';
import type { LeaseEvent } from './manager.ts';
import type { IPv4Net } from '../ip/ipv4.ts';

const rev = (r: string | undefined): bigint => BigInt(r ?? 0);

/** The lease table as the watch has delivered it, with the revision of each put or delete. */
export class LeaseTracker {
  readonly #live = new Map<string, Lease>();
  /** Subnets deleted since the last listing, with the revision of the delete. */
  readonly #gone = new Map<string, bigint>();

  /** Replaces everything with a listing (the watch starts after it). */
  reset(leases: Lease[]): void {
    this.#live.clear();
    this.#gone.clear();
    for (const l of leases) this.#live.set(leaseId(l), l);
  }

  /** Records a put; false when it is not newer than what is known (a replayed event). */
  put(lease: Lease): boolean {
    const key = leaseId(lease);
    const r = rev(lease.modRevision);
    const known = this.#live.get(key);
    if (known && rev(known.modRevision) >= r) return false;
    if ((this.#gone.get(key) ?? -1n) >= r) return false;
    this.#gone.delete(key);
    this.#live.set(key, lease);
    return true;
  }

  /** Records a delete at `revision`; false when it is not newer than what is known. */
  delete(subnet: IPv4Net, revision: string | undefined): boolean {
    const key = leaseId({ subnet });
    const r = rev(revision);
    const known = this.#live.get(key);
    if (known && rev(known.modRevision) > r) return false;
    if ((this.#gone.get(key) ?? -1n) >= r) return false;
    this.#live.delete(key);
    this.#gone.set(key, r);
    return true;
  }

  get size(): number {
    return this.#live.size;
  }

  /**
   * Compares a listing taken at `revision` with what the watch delivered, records the
   * differences and returns them as the events the watch missed (empty when it missed nothing).
   */
  resync(listed: Lease[], revision: string): LeaseEvent[] {
    const at = BigInt(revision);
    const events: LeaseEvent[] = [];
    // Changed here means newer: a revision the watch has not delivered, whatever the attributes.
    const diff = diffLeases(this.#live.values(), listed, { same: (known, l) => rev(known.modRevision) >= rev(l.modRevision) });
    const newer = new Set([...diff.added, ...diff.changed.map((c) => c.after)]);
    for (const l of listed.filter((x) => newer.has(x))) {
      const key = leaseId(l);
      // Deleted after the listing was taken: the listing is the stale side.
      if ((this.#gone.get(key) ?? -1n) > rev(l.modRevision)) continue;
      this.#gone.delete(key);
      this.#live.set(key, l);
      events.push({ type: 'put', lease: l });
    }
    for (const l of diff.removed) {
      // Put after the listing was taken: not missing, just newer.
      if (rev(l.modRevision) > at) continue;
      const key = leaseId(l);
      this.#live.delete(key);
      this.#gone.set(key, at);
      events.push({ type: 'delete', subnet: l.subnet });
    }
    // Deletes the listing already reflects are not needed to judge later listings.
    for (const [key, r] of this.#gone) if (r <= at) this.#gone.delete(key);
    return events;
  }
}

export interface ResyncOptions {
  clock: Clock;
  intervalMs: number;
  /** A full listing of the lease table and its etcd revision. */
  list: () => Promise<{ leases: Lease[]; revision: string }>;
  tracker: LeaseTracker;
  /** Called with the events the watch missed (never with an empty list) and the listing's revision. */
  onRepair: (events: LeaseEvent[], revision: string) => void;
  /** A failed listing; the next interval tries again. */
  onError?: (err: unknown) => void;
}

/** Every `intervalMs` until `signal` aborts: list, compare with the tracker, report differences. */
export async function resyncLoop(signal: AbortSignal, opts: ResyncOptions): Promise<void> {
  const { clock, intervalMs, list, tracker } = opts;
  while (!signal.aborted) {
    await clock.sleep(intervalMs, signal);
    if (signal.aborted) return;
    let snap: { leases: Lease[]; revision: string };
    try {
      snap = await list();
    } catch (err) {
      opts.onError?.(err);
      continue;
    }
    if (signal.aborted) return;
    const events = tracker.resync(snap.leases, snap.revision);
    if (events.length) opts.onRepair(events, snap.revision);
  }
}

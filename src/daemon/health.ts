/**
 * Health and readiness. Ready: the device, every peer and the subnet file are in place, and our
 * subnet is not lost to another node (lease.ts: then no new pod may start here). Healthy
 * (liveness): no fatal error and, once running, the reconcile loop keeps completing passes (a
 * wedged netlink socket or event loop shows up here); before that, only a fatal error counts.
 */
import type { Clock } from '../core/clock.ts';
import type { Metrics } from './metrics.ts';

export class Health {
  readonly #opts: { clock: Clock; metrics: Metrics; stallMs: number };
  #failed = false;
  #ready = false;
  #lost = false;
  #lastPassAt = 0;

  /** `stallMs`: how long without a reconcile pass counts as wedged. */
  constructor(opts: { clock: Clock; metrics: Metrics; stallMs: number }) {
    this.#opts = opts;
    opts.metrics.ready.set(0);
  }

  /** The stall limit for a reconcile interval: three missed passes, at least 30 s. */
  static stallMsFor(reconcileIntervalMs: number): number {
    // Three missed full passes: with the 60 s default a wedged loop shows within 3 minutes.
    return Math.max(30_000, 3 * reconcileIntervalMs);
  }

  healthy(): boolean {
    return !this.#failed && (!this.#lastPassAt || this.#opts.clock.now() - this.#lastPassAt < this.#opts.stallMs);
  }

  get ready(): boolean {
    return this.#ready && !this.#lost;
  }

  /** Start-up is complete (true) or the daemon stops (false). */
  setReady(ready: boolean): void {
    this.#ready = ready;
    this.#opts.metrics.ready.set(this.ready ? 1 : 0);
  }

  /** Another node holds our subnet (true) or we hold a subnet again (false). */
  setLost(lost: boolean): void {
    this.#lost = lost;
    this.#opts.metrics.ready.set(this.ready ? 1 : 0);
  }

  /** A reconcile pass completed. */
  passed(): void {
    this.#lastPassAt = this.#opts.clock.now();
  }

  /** A fatal error: unhealthy from now on. */
  fail(): void {
    this.#failed = true;
  }
}

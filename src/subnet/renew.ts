/**
 * Keeping our lease alive. The lease is renewed `renewMargin` before it expires (flannel: 1 h
 * before a 24 h TTL); a failed renewal is retried every `retryMs` until it works, and
 * `kick()` renews at once (used when a watch shows our key was deleted: the renewal
 * re-creates it for the same subnet while the data plane stays up).
 */
import type { Clock } from '../core/clock.ts';

/** Milliseconds to wait before the next renewal of a lease expiring at `expiresAt`. */
export function renewDelay(expiresAt: number, opts: { now: number; renewMarginMs: number }): number {
  const { now, renewMarginMs } = opts;
  return Math.max(0, expiresAt - renewMarginMs - now);
}

export interface RenewerOptions {
  clock: Clock;
  renewMarginMs: number;
  /** Delay between attempts after a failure. */
  retryMs: number;
  /** Performs one renewal and returns the new expiry (epoch ms). */
  renew: () => Promise<number>;
  onError?: (err: unknown) => void;
}

/** Runs renewals until the signal aborts. */
export class Renewer {
  readonly #opts: RenewerOptions;
  #expiresAt: number;
  #wake: AbortController = new AbortController();

  constructor(expiresAt: number, opts: RenewerOptions) {
    this.#expiresAt = expiresAt;
    this.#opts = opts;
  }

  get expiresAt(): number {
    return this.#expiresAt;
  }

  /** Renew now instead of waiting. */
  kick(): void {
    this.#wake.abort();
  }

  async run(signal: AbortSignal): Promise<void> {
    const { clock, renewMarginMs, retryMs } = this.#opts;
    let delay = renewDelay(this.#expiresAt, { now: clock.now(), renewMarginMs });
    while (!signal.aborted) {
      await clock.sleep(delay, AbortSignal.any([signal, this.#wake.signal]));
      if (signal.aborted) return;
      if (this.#wake.signal.aborted) this.#wake = new AbortController();
      try {
        this.#expiresAt = await this.#opts.renew();
        delay = renewDelay(this.#expiresAt, { now: clock.now(), renewMarginMs });
      } catch (err) {
        this.#opts.onError?.(err);
        delay = retryMs;
      }
    }
  }
}

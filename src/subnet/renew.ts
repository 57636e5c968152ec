/**
 * Keeping our lease alive. The lease is renewed `renewMargin` before it expires (flannel: 1 h
 * before a 24 h TTL); a failed renewal is retried after the retry policy's delay until it works,
 * and `kick()` renews at once (used when a watch shows our key was deleted: the renewal
 * re-creates it for the same subnet while the data plane stays up). A lease without an expiry
 * (undefined) is renewed only when kicked.
 */
import type { Clock } from '../core/clock.ts';
import type { RetryPolicy } from '../core/retry.ts';

/** Milliseconds to wait before the next renewal of a lease expiring at `expiresAt` (Infinity: never). */
export function renewDelay(expiresAt: number | undefined, opts: { now: number; renewMarginMs: number }): number {
  const { now, renewMarginMs } = opts;
  if (expiresAt === undefined) return Infinity;
  return Math.max(0, expiresAt - renewMarginMs - now);
}

export interface RenewerOptions {
  clock: Clock;
  renewMarginMs: number;
  /** The wait between attempts after a failure. */
  retry: RetryPolicy;
  /** Performs one renewal and returns the new expiry (epoch ms; undefined: none). */
  renew: () => Promise<number | undefined>;
  onError?: (err: unknown) => void;
}

/** Resolves when `signal` aborts. */
function aborted(signal: AbortSignal): Promise<void> {
  return new Promise((resolve) => {
    if (signal.aborted) resolve();
    else signal.addEventListener('abort', () => resolve(), { once: true });
  });
}

/** Runs renewals until the signal aborts. */
export class Renewer {
  readonly #opts: RenewerOptions;
  #expiresAt: number | undefined;
  #wake: AbortController = new AbortController();

  constructor(expiresAt: number | undefined, opts: RenewerOptions) {
    this.#expiresAt = expiresAt;
    this.#opts = opts;
  }

  get expiresAt(): number | undefined {
    return this.#expiresAt;
  }

  /** Renew now instead of waiting. */
  kick(): void {
    this.#wake.abort();
  }

  async run(signal: AbortSignal): Promise<void> {
    const { clock, renewMarginMs, retry } = this.#opts;
    let delay = renewDelay(this.#expiresAt, { now: clock.now(), renewMarginMs });
    let failures = 0;
    while (!signal.aborted) {
      const wake = AbortSignal.any([signal, this.#wake.signal]);
      await (delay === Infinity ? aborted(wake) : clock.sleep(delay, wake));
      if (signal.aborted) return;
      if (this.#wake.signal.aborted) this.#wake = new AbortController();
      try {
        this.#expiresAt = await this.#opts.renew();
        failures = 0;
        delay = renewDelay(this.#expiresAt, { now: clock.now(), renewMarginMs });
      } catch (err) {
        this.#opts.onError?.(err);
        delay = retry.delayMs(++failures);
      }
    }
  }
}

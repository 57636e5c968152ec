/**
 * One way to wait between attempts, injected wherever something is retried (the daemon's
 * start-up steps and lease renewal, the etcd watch), so tests can shorten the waits and a
 * policy change is made in one place.
 */
import type { Clock } from './clock.ts';
import { errText } from './errors.ts';
import type { Log } from './log.ts';

/** How long to wait after a failure. */
export interface RetryPolicy {
  /** Milliseconds before the next attempt, after `failures` (1, 2, ...) failures in a row. */
  delayMs(failures: number): number;
}

/** The same wait after every failure. */
export function constantDelay(ms: number): RetryPolicy {
  return { delayMs: () => ms };
}

/** A repeated failure with the same text is logged again only after this long. */
const REPEAT_LOG_MS = 60_000;

export interface RetryingOptions {
  signal: AbortSignal;
  clock: Clock;
  log: Log;
  policy: RetryPolicy;
}

/**
 * Repeats `fn` until it succeeds or `signal` aborts (then resolves undefined). Logs each distinct
 * failure once (and again once a minute while it lasts) and says when it works again.
 */
export async function retrying<T>(what: string, fn: () => Promise<T>, opts: RetryingOptions): Promise<T | undefined> {
  const { signal, clock, log, policy } = opts;
  let last = '';
  let lastAt = 0;
  for (let failures = 1; !signal.aborted; failures++) {
    try {
      const v = await fn();
      if (last) log.info(`${what}: ok now`);
      return v;
    } catch (err) {
      const msg = (err as Error).message;
      const delay = policy.delayMs(failures);
      if (msg !== last || clock.now() - lastAt > REPEAT_LOG_MS) {
        log.error(`${what}: ${msg}; retrying every ${delay / 1000}s`);
        last = msg;
        lastAt = clock.now();
      }
      await clock.sleep(delay, signal);
    }
  }
  return undefined;
}

/**
 * Reports a failure that keeps being retried elsewhere (a renewal loop): the first one, then
 * once a minute with how long it has lasted, then "ok again" when {@link FailureLog.ok} is called.
 */
export class FailureLog {
  readonly #what: string;
  readonly #opts: { clock: Clock; log: Log };
  /** When the current run of failures began; undefined: not failing. */
  #since: number | undefined;
  #loggedAt = 0;

  constructor(what: string, opts: { clock: Clock; log: Log }) {
    this.#what = what;
    this.#opts = opts;
  }

  /** The operation failed (again). */
  failed(err: unknown): void {
    const now = this.#opts.clock.now();
    if (this.#since === undefined || now - this.#loggedAt >= REPEAT_LOG_MS) {
      const lasting = this.#since === undefined ? '' : ` (failing for ${Math.round((now - this.#since) / 1000)}s)`;
      this.#opts.log.warn(`${this.#what}: ${errText(err)}${lasting}`);
      this.#loggedAt = now;
    }
    this.#since ??= now;
  }

  /** The operation worked (again). */
  ok(): void {
    if (this.#since !== undefined) this.#opts.log.info(`${this.#what}: ok again after ${Math.round((this.#opts.clock.now() - this.#since) / 1000)}s`);
    this.#since = undefined;
  }
}

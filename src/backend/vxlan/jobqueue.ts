/**
 * A keyed job queue: jobs that share a first key run one after another in the order they were
 * queued (a peer's put then delete never swap), jobs on different keys run side by side within
 * what the socket lock admits. It also answers the reconcile pass's question "did any job
 * work on this key while I was reading?" ({@link KeyedJobQueue.watch}), and lets a pass wait
 * for the queue to drain ({@link KeyedJobQueue.idle}).
 */
import type { SocketLock } from './socketlock.ts';

/** A record of the keys jobs worked on since {@link KeyedJobQueue.watch}. */
export interface Watch {
  /** No job was queued, running or finished on `key` since the watch started. */
  settled(key: string): boolean;
  /** Stops recording. */
  close(): void;
}

export class KeyedJobQueue {
  readonly #lock: Pick<SocketLock, 'shared'>;
  /** The tail of each key's job chain. */
  readonly #chains = new Map<string, Promise<unknown>>();
  /** Keys with a job queued or running, and how many. */
  readonly #busy = new Map<string, number>();
  /** Jobs queued or running, and callers waiting for that to reach zero. */
  #pending = 0;
  #idleWaiters: Array<() => void> = [];
  /** Keys touched, per open watch. */
  readonly #watches = new Set<Set<string>>();

  /** Each job runs as a shared holder of `lock`. */
  constructor(lock: Pick<SocketLock, 'shared'>) {
    this.#lock = lock;
  }

  /** Jobs queued or running. */
  get pending(): number {
    return this.#pending;
  }

  /**
   * Queues `fn` behind earlier jobs on `keys[0]` and runs it as a shared holder of the lock.
   * Every key counts as busy from now until `fn` is done (queued jobs too: a bulk add waiting
   * for its turn is not drift). The next job on the chain starts when this one settles, whether
   * it failed or not.
   */
  run<T>(keys: string[], fn: () => Promise<T>): Promise<T> {
    const chain = keys[0];
    if (chain === undefined) throw new RangeError('a job needs at least one key');
    this.#mark(keys, 1);
    this.#pending++;
    const run = async (): Promise<T> => {
      try {
        return await this.#lock.shared(fn);
      } finally {
        this.#mark(keys, -1);
        if (this.#chains.get(chain) === next) this.#chains.delete(chain);
        if (--this.#pending === 0) for (const wake of this.#idleWaiters.splice(0)) wake();
      }
    };
    const prev = this.#chains.get(chain);
    const next: Promise<T> = prev ? prev.then(run, run) : run();
    this.#chains.set(chain, next);
    return next;
  }

  /** Starts recording which keys jobs work on, for a caller that reads state jobs may change. */
  watch(): Watch {
    const touched = new Set<string>();
    this.#watches.add(touched);
    return {
      settled: (key) => !this.#busy.has(key) && !touched.has(key),
      close: () => void this.#watches.delete(touched),
    };
  }

  /** Resolves once no job is queued or running, or after `maxMs` (so churn cannot starve a caller). */
  idle(maxMs: number): Promise<void> {
    if (!this.#pending) return Promise.resolve();
    return new Promise((resolve) => {
      const timer = setTimeout(resolve, maxMs);
      timer.unref?.();
      this.#idleWaiters.push(() => {
        clearTimeout(timer);
        resolve();
      });
    });
  }

  #mark(keys: string[], delta: number): void {
    for (const k of keys) {
      for (const touched of this.#watches) touched.add(k);
      const n = (this.#busy.get(k) ?? 0) + delta;
      if (n) this.#busy.set(k, n);
      else this.#busy.delete(k);
    }
  }
}

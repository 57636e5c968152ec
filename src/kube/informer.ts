/**
 * An informer that stays up: client-node's ListWatch (list, then watch from the list's
 * resourceVersion; relist on 410 Gone; resume on a clean stream end) stops for good on any other
 * error, so {@link keepInformer} restarts it with doubling backoff, logs once per outage (and
 * once when it is ok again), and stops it when the signal aborts. Every watch asks for BOOKMARK
 * events, so a quiet cluster's resourceVersion stays fresh and a reconnect need not relist.
 *
 * Used for Nodes (src/subnet/kube) and for Services and EndpointSlices (src/proxy).
 */
import { ListWatch, Watch, type KubeConfig, type KubernetesListObject, type KubernetesObject } from '@kubernetes/client-node';
import { systemClock, type Clock } from '../core/clock.ts';
import { errText } from '../core/errors.ts';
import type { Log } from '../core/log.ts';

/** client-node's Watch, asking for BOOKMARK events (the ListWatch takes their resourceVersion). */
export class BookmarkWatch extends Watch {
  override watch(...[path, params, cb, done]: Parameters<Watch['watch']>): ReturnType<Watch['watch']> {
    return super.watch(path, { ...params, allowWatchBookmarks: true }, cb, done);
  }
}

export interface KeepInformerOptions<T extends KubernetesObject> {
  kc: KubeConfig;
  /** The collection's path, e.g. `/api/v1/nodes`. */
  path: string;
  /** What it watches, for log lines ("node watch"). */
  what: string;
  /**
   * Lists the collection (the informer's first step and every relist). It must apply any
   * selector itself: client-node applies a label selector only to the watch.
   */
  list: () => Promise<KubernetesListObject<T>>;
  onAdd: (obj: T) => void;
  onUpdate: (obj: T) => void;
  onDelete: (obj: T) => void;
  log: Log;
  clock?: Clock;
  /** Restart backoff after errors (ms): doubles from `min` up to `max`. */
  backoffMs?: { min: number; max: number };
  /** Called with every failure that stopped the informer (metrics). */
  onError?: (err: unknown) => void;
}

/** Runs the informer until `signal` aborts, restarting it after errors. */
export async function keepInformer<T extends KubernetesObject>(signal: AbortSignal, opts: KeepInformerOptions<T>): Promise<void> {
  const { log, what } = opts;
  const clock = opts.clock ?? systemClock;
  const informer = new ListWatch<T>(
    opts.path,
    new BookmarkWatch(opts.kc),
    async () => {
      const list = await opts.list();
      // Failing here keeps the informer from starting a watch after we stopped it.
      if (signal.aborted) throw new Error(`${what} stopped`);
      return list;
    },
    false,
  );
  informer.on('add', opts.onAdd);
  informer.on('update', opts.onUpdate);
  informer.on('delete', opts.onDelete);
  let failed: unknown;
  let wake: () => void = () => {};
  informer.on('error', (err) => {
    failed = err ?? new Error(`${what} failed`);
    wake();
  });

  const backoff = opts.backoffMs ?? { min: 1000, max: 30_000 };
  let delay = backoff.min;
  let failingSince = 0;
  let lastMsg = '';
  const stopped = new Promise<void>((r) => signal.addEventListener('abort', () => r(), { once: true }));
  let starting: Promise<void> | undefined;
  try {
    while (!signal.aborted) {
      failed = undefined;
      const errored = new Promise<void>((r) => (wake = r));
      // start() lists and opens the watch (each bounded by a deadline); stopping does not wait for it.
      starting = informer.start().catch((err) => {
        failed ??= err;
      });
      await Promise.race([starting, stopped]);
      if (signal.aborted) break;
      if (failed === undefined) {
        if (failingSince) log.info(`${what}: ok again after ${Math.round((clock.now() - failingSince) / 1000)}s`);
        failingSince = 0;
        lastMsg = '';
        const startedAt = clock.now();
        // Running; the informer reconnects by itself on 410 and on clean stream ends.
        await Promise.race([errored, stopped]);
        if (signal.aborted) break;
        // A watch that stayed up a while starts the backoff afresh; a flapping one keeps backing off.
        if (clock.now() - startedAt >= backoff.max) delay = backoff.min;
      }
      opts.onError?.(failed);
      const msg = errText(failed);
      if (msg !== lastMsg) log.warn(`${what}: ${msg}; restarting in ${delay / 1000}s (and backing off)`);
      lastMsg = msg;
      failingSince ||= clock.now();
      await informer.stop();
      await clock.sleep(delay, signal);
      delay = Math.min(delay * 2, backoff.max);
    }
  } finally {
    await informer.stop();
    // A start still under way may open its watch after this; close that one too.
    void starting?.then(() => informer.stop());
  }
}

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

/**
 * client-node's Watch, asking for BOOKMARK events (the ListWatch takes their resourceVersion).
 * With `stale`, asked before each watch opens from a resourceVersion: when it answers true, the
 * watch is not opened and ListWatch gets a 410 Gone instead, which it answers by listing afresh.
 */
export class BookmarkWatch extends Watch {
  readonly #stale: ((resourceVersion: string) => Promise<boolean>) | undefined;

  constructor(kc: KubeConfig, stale?: (resourceVersion: string) => Promise<boolean>) {
    super(kc);
    this.#stale = stale;
  }

  override async watch(...[path, params, cb, done]: Parameters<Watch['watch']>): ReturnType<Watch['watch']> {
    const rv = params?.resourceVersion;
    if (rv && this.#stale && (await this.#stale(String(rv)))) {
      // As Watch reports a failed open: done first, then the (already aborted) controller.
      const ctl = new AbortController();
      ctl.abort();
      done(Object.assign(new Error(`resourceVersion ${rv} is gone`), { statusCode: 410 }));
      return ctl;
    }
    return super.watch(path, { ...params, allowWatchBookmarks: true }, cb, done);
  }
}

/**
 * True when the API server's store is behind `ours`: the store's resourceVersion `now` (etcd's
 * revision) is lower than one we saw, so it was emptied or restored from a backup. A watch from
 * `ours` would then wait, silently, until the new store's revision reaches it. Versions that are
 * not decimal integers (not etcd-backed) are never judged.
 */
export function storeBehind(now: string | undefined, ours: string): boolean {
  if (!now || !/^\d{1,30}$/.test(now) || !/^\d{1,30}$/.test(ours)) return false;
  return BigInt(now) < BigInt(ours);
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
  /**
   * The collection's resourceVersion now (a list with limit 1). When given, it is read before
   * each watch resumes from a version not just listed (a restart, a reconnect): if the store is
   * behind that version ({@link storeBehind}: the API server came back on an emptied or restored
   * etcd), the informer lists afresh instead of watching from a version the store has not
   * reached, which would deliver nothing. A failed read resumes as without it.
   */
  currentVersion?: () => Promise<string | undefined>;
}

/** Runs the informer until `signal` aborts, restarting it after errors. */
export async function keepInformer<T extends KubernetesObject>(signal: AbortSignal, opts: KeepInformerOptions<T>): Promise<void> {
  const { log, what } = opts;
  const clock = opts.clock ?? systemClock;
  const { currentVersion } = opts;
  // The version ListWatch watches from right after a listing: no need to ask how new it is.
  let listed: string | undefined;
  const stale = currentVersion
    ? async (rv: string): Promise<boolean> => {
        if (rv === listed) {
          listed = undefined;
          return false;
        }
        let now: string | undefined;
        try {
          now = await currentVersion();
        } catch {
          return false;
        }
        if (!storeBehind(now, rv)) return false;
        log.warn(`${what}: the API server's resourceVersion ${now} is behind ours (${rv}): its store was emptied or restored; listing afresh`);
        return true;
      }
    : undefined;
  const informer = new ListWatch<T>(
    opts.path,
    new BookmarkWatch(opts.kc, stale),
    async () => {
      const list = await opts.list();
      // Failing here keeps the informer from starting a watch after we stopped it.
      if (signal.aborted) throw new Error(`${what} stopped`);
      listed = list.metadata?.resourceVersion;
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

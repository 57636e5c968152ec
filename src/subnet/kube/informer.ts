/**
 * The one Node informer of weft: client-node's ListWatch (list, watch from its resourceVersion,
 * relist on 410 Gone) asking for bookmarks, restarted with backoff on every other error (ListWatch
 * stops on those). The kube subnet manager's peer watch and `weftctl get nodes --watch` both run
 * on it.
 *
 * ListWatch keeps the resourceVersion across a restart, so a restarted watch resumes where it
 * stopped; only a 410 (or a failed list) makes it list again. Every listing is handed to
 * `onList` before ListWatch's own add/update/delete callbacks for the difference, so a caller
 * that keeps a table can replace it from the listing and treat the callbacks as idempotent.
 *
 * Concurrency: every callback runs on the event loop, one at a time.
 */
import { ListWatch, Watch, type KubeConfig, type V1Node, type V1NodeList } from '@kubernetes/client-node';
import type { Clock } from '../../core/clock.ts';
import { errText } from '../../core/errors.ts';
import type { Log } from '../../core/log.ts';

/** client-node's Watch, asking for BOOKMARK events (the ListWatch takes their resourceVersion). */
export class BookmarkWatch extends Watch {
  override watch(...[path, params, cb, done]: Parameters<Watch['watch']>): ReturnType<Watch['watch']> {
    return super.watch(path, { ...params, allowWatchBookmarks: true }, cb, done);
  }
}

export interface NodeInformerOptions {
  /** Lists every Node (with a deadline of its own: ListWatch sets none). */
  list(): Promise<V1NodeList>;
  /** Stops the informer; {@link runNodeInformer} resolves once it is stopped. */
  signal: AbortSignal;
  clock: Clock;
  log: Log;
  /** Restart backoff after errors (ms): doubles from `min` up to `max` (default 1 s .. 30 s). */
  backoffMs?: { min: number; max: number };
  /** Every failed list or watch (the informer restarts after it). */
  onError?: (err: unknown) => void;
  /** Each full listing (the first, after 410, after a failed list), before its add/update/delete callbacks. */
  onList(list: V1NodeList): void;
  /** A Node was added or changed (resourceVersion differs from the one held). */
  onUpsert(node: V1Node): void;
  onDelete(node: V1Node): void;
}

/** Runs the Node informer until `opts.signal` aborts; never rejects for API errors (they are logged, then retried). */
export async function runNodeInformer(kc: KubeConfig, opts: NodeInformerOptions): Promise<void> {
  const { signal: stop, clock, log } = opts;
  const listFn = async (): Promise<V1NodeList> => {
    const list = await opts.list();
    // Failing here keeps the informer from starting a watch after we stopped it.
    if (stop.aborted) throw new Error('node watch stopped');
    opts.onList(list);
    return list;
  };
  const informer = new ListWatch<V1Node>('/api/v1/nodes', new BookmarkWatch(kc), listFn, false);
  let failed: unknown;
  informer.on('add', (n) => opts.onUpsert(n));
  informer.on('update', (n) => opts.onUpsert(n));
  informer.on('delete', (n) => opts.onDelete(n));
  let wake: () => void = () => {};
  informer.on('error', (err) => {
    failed = err ?? new Error('node watch failed');
    wake();
  });

  const backoff = opts.backoffMs ?? { min: 1000, max: 30_000 };
  let delay = backoff.min;
  let failingSince = 0;
  let lastMsg = '';
  const stopped = new Promise<void>((r) => stop.addEventListener('abort', () => r(), { once: true }));
  let starting: Promise<void> | undefined;
  try {
    while (!stop.aborted) {
      failed = undefined;
      const errored = new Promise<void>((r) => (wake = r));
      // start() lists and opens the watch (each bounded by a deadline); stopping does not wait for it.
      starting = informer.start().catch((err) => {
        failed ??= err;
      });
      await Promise.race([starting, stopped]);
      if (stop.aborted) break;
      if (failed === undefined) {
        if (failingSince) log.info(`node watch: ok again after ${Math.round((clock.now() - failingSince) / 1000)}s`);
        failingSince = 0;
        lastMsg = '';
        const startedAt = clock.now();
        // Running; the informer reconnects by itself on 410 and on clean stream ends.
        await Promise.race([errored, stopped]);
        if (stop.aborted) break;
        // A watch that stayed up a while starts the backoff afresh; a flapping one keeps backing off.
        if (clock.now() - startedAt >= backoff.max) delay = backoff.min;
      }
      opts.onError?.(failed);
      const msg = errText(failed);
      if (msg !== lastMsg) log.warn(`node watch: ${msg}; restarting in ${delay / 1000}s (and backing off)`);
      lastMsg = msg;
      failingSince ||= clock.now();
      await informer.stop();
      await clock.sleep(delay, stop);
      delay = Math.min(delay * 2, backoff.max);
    }
  } finally {
    await informer.stop();
    // A start still under way may open its watch after this; close that one too.
    void starting?.then(() => informer.stop());
  }
}

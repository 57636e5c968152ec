/**
 * The one Node informer of weft, on src/kube/informer.ts's keeper (client-node's ListWatch:
 * list, watch from its resourceVersion, relist on 410 Gone, bookmarks; restarted with backoff on
 * every other error). The kube subnet manager's peer watch and `weftctl get nodes --watch` both
 * run on it.
 *
 * ListWatch keeps the resourceVersion across a restart, so a restarted watch resumes where it
 * stopped; only a 410 (or a failed list) makes it list again. Every listing is handed to
 * `onList` before ListWatch's own add/update/delete callbacks for the difference, so a caller
 * that keeps a table can replace it from the listing and treat the callbacks as idempotent.
 *
 * Concurrency: every callback runs on the event loop, one at a time.
 */
import type { KubeConfig, V1Node, V1NodeList } from '@kubernetes/client-node';
import type { Clock } from '../../core/clock.ts';
import type { Log } from '../../core/log.ts';
import { keepInformer } from '../../kube/informer.ts';

export interface NodeInformerOptions {
  /** Lists every Node (with a deadline of its own: ListWatch sets none). */
  list(): Promise<V1NodeList>;
  /** Stops the informer; {@link runNodeInformer} resolves once it is stopped. */
  signal: AbortSignal;
  clock: Clock;
  log: Log;
  /** Restart backoff after errors (ms): doubles from `min` up to `max` (default 1 s .. 30 s). */
  backoffMs?: { min: number; max: number };
  /** The Nodes' resourceVersion now (a list with limit 1): a watch does not resume past an emptied store (keepInformer). */
  currentVersion?: () => Promise<string | undefined>;
  /** Every failed list or watch (the informer restarts after it). */
  onError?: (err: unknown) => void;
  /** Each full listing (the first, after 410, after a failed list), before its add/update/delete callbacks. */
  onList(list: V1NodeList): void;
  /** A Node was added or changed (resourceVersion differs from the one held). */
  onUpsert(node: V1Node): void;
  onDelete(node: V1Node): void;
}

/** Runs the Node informer until `opts.signal` aborts; never rejects for API errors (they are logged, then retried). */
export function runNodeInformer(kc: KubeConfig, opts: NodeInformerOptions): Promise<void> {
  return keepInformer<V1Node>(opts.signal, {
    kc,
    path: '/api/v1/nodes',
    what: 'node watch',
    list: async () => {
      const list = await opts.list();
      if (!opts.signal.aborted) opts.onList(list);
      return list;
    },
    onAdd: (n) => opts.onUpsert(n),
    onUpdate: (n) => opts.onUpsert(n),
    onDelete: (n) => opts.onDelete(n),
    log: opts.log,
    clock: opts.clock,
    backoffMs: opts.backoffMs,
    onError: opts.onError,
    currentVersion: opts.currentVersion,
  });
}

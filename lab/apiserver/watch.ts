/**
 * Watches as kube-apiserver serves them: chunked JSON lines (`{"type":..,"object":..}`) from an
 * etcd watch at resourceVersion+1 (or the current objects as ADDED first when resourceVersion is
 * unset or 0), headers flushed at once. A watch ends after timeoutSeconds (else the server's
 * min-request-timeout x [1, 2)), when the client goes away, when the client stops reading (16 MiB
 * queued), or with an ERROR event carrying a Status (410 Expired once compacted).
 */
import type { IncomingMessage, ServerResponse } from 'node:http';
import type { Log } from '../../src/core/log.ts';
import { isTrue, parseRV } from './http.ts';
import { apiVersion, type ResourceDef } from './resources.ts';
import { ApiError, badRequest, failure, gone } from './status.ts';
import type { KubeObject, Store, StoreEvent, StoreWatch } from './store.ts';
import { renderTable, wantsTable } from './table.ts';

/** What all watches of one server share. */
export interface WatchContext {
  store: Store;
  log: Log;
  bookmarkIntervalMs: number;
  maxWatchSeconds: number;
  maxWatches: number;
  /** Stop functions of the open watches (the server stops them all on close). */
  open: Set<() => void>;
}

export interface WatchRequest {
  def: ResourceDef;
  /** The etcd key prefix watched (a resource, or one namespace of it). */
  dir: string;
  q: URLSearchParams;
  /** Label and field selectors. */
  filter: (o: KubeObject) => boolean;
  ctx: WatchContext;
}

export function withKind(def: ResourceDef, obj: KubeObject): KubeObject {
  return { apiVersion: apiVersion(def), kind: def.kind, ...obj };
}

/**
 * A watch: chunked JSON lines (`{"type":..,"object":..}`) from etcd's watch at resourceVersion+1
 * (or the current objects as ADDED first when resourceVersion is unset or 0). Ends after
 * timeoutSeconds, when the client goes away, or with an ERROR event (410 once compacted).
 */
export async function serveWatch(req: IncomingMessage, res: ServerResponse, w: WatchRequest): Promise<void> {
  const { def, q, filter, ctx } = w;
  if (ctx.open.size >= ctx.maxWatches) throw new ApiError(429, 'TooManyRequests', `too many open watches (${ctx.maxWatches}); try again later`);
  const rv = parseRV(q.get('resourceVersion'));
  const bookmarks = isTrue(q.get('allowWatchBookmarks'));
  const table = wantsTable(req);
  const includeObject = q.get('includeObject');
  const timeoutRaw = q.get('timeoutSeconds');
  if (timeoutRaw !== null && !/^\d{1,9}$/.test(timeoutRaw)) throw badRequest(`invalid timeoutSeconds ${JSON.stringify(timeoutRaw)}`);
  // Without a timeout kube picks one in [min-request-timeout, 2x); a client must cope either way.
  const timeoutS = timeoutRaw !== null ? Number(timeoutRaw) : ctx.maxWatchSeconds * (1 + Math.random());
  const { dir } = w;

  // sendInitialEvents (the watch-list protocol): the current state as ADDED, then a bookmark
  // annotated k8s.io/initial-events-end, whatever resourceVersion says.
  const sendInitial = isTrue(q.get('sendInitialEvents'));
  if (sendInitial && q.get('resourceVersionMatch') !== 'NotOlderThan')
    throw new ApiError(422, 'Invalid', 'resourceVersionMatch: Forbidden: sendInitialEvents requires setting resourceVersionMatch to NotOlderThan');
  if (sendInitial && !bookmarks) throw new ApiError(422, 'Invalid', 'allowWatchBookmarks: Required value: sendInitialEvents requires allowWatchBookmarks');
  let initial: KubeObject[] = [];
  let from: bigint;
  let tooOld = false;
  if (rv === undefined || rv === 0n || sendInitial) {
    const listing = await ctx.store.list(dir);
    initial = listing.items.map((s) => s.obj).filter(filter);
    from = listing.rev + 1n;
  } else {
    try {
      await ctx.store.checkNotCompacted(rv);
    } catch (err) {
      if (!(err instanceof ApiError) || err.code !== 410) throw err;
      tooOld = true;
    }
    from = rv + 1n;
  }

  res.writeHead(200, { 'content-type': 'application/json', 'cache-control': 'no-cache, private', 'transfer-encoding': 'chunked' });
  res.flushHeaders();
  const encode = (type: string, obj: KubeObject | object) => {
    const o = table && type !== 'ERROR' && type !== 'BOOKMARK' ? renderTable(def, [obj as KubeObject], { includeObject }) : obj;
    return `${JSON.stringify({ type, object: o })}\n`;
  };
  if (tooOld) {
    res.end(encode('ERROR', gone(rv!.toString()).toStatus()));
    return;
  }
  let last = from - 1n;
  let stopped = false;
  let timer: NodeJS.Timeout | undefined;
  let bookmarkTimer: NodeJS.Timeout | undefined;
  let watch: StoreWatch | undefined;
  const stop = (finalLine?: string) => {
    if (stopped) return;
    stopped = true;
    ctx.open.delete(stop);
    clearTimeout(timer);
    clearInterval(bookmarkTimer);
    watch?.cancel();
    if (!res.destroyed && !res.writableEnded) res.end(finalLine);
  };
  const write = (line: string) => {
    if (stopped) return;
    res.write(line);
    // A client that does not read is dropped rather than buffered without bound.
    if (res.writableLength > 16 * 1024 * 1024) {
      ctx.log.warn('watch client too slow; closing its watch', { url: req.url });
      stop();
      res.destroy();
    }
  };
  for (const o of initial) write(encode('ADDED', withKind(def, o)));
  if (sendInitial) {
    write(encode('BOOKMARK', { kind: def.kind, apiVersion: apiVersion(def), metadata: { resourceVersion: String(from - 1n), annotations: { 'k8s.io/initial-events-end': 'true' } } }));
  }
  if (stopped) return; // Dropped while sending the initial state.
  watch = ctx.store.watch(dir, from, {
    onEvents: (evs: StoreEvent[]) => {
      for (const ev of evs) {
        last = ev.rev;
        const type = eventType(ev, filter);
        if (type) write(encode(type, withKind(def, ev.obj)));
      }
    },
    onEnd: (err) => {
      if (stopped) return;
      const status = err instanceof ApiError ? err.toStatus() : failure(500, 'InternalError', `watch ended: ${err.message}`);
      stop(encode('ERROR', status));
    },
  });
  ctx.open.add(stop);
  timer = setTimeout(() => stop(), timeoutS * 1000);
  if (bookmarks) {
    bookmarkTimer = setInterval(() => {
      // A bookmark's version is one every event up to it was sent for.
      write(encode('BOOKMARK', { kind: def.kind, apiVersion: apiVersion(def), metadata: { resourceVersion: String(last) } }));
    }, ctx.bookmarkIntervalMs);
  }
  // The response closes when we end it or the client's connection goes away.
  res.on('close', () => stop());
  if (!res.socket || res.socket.destroyed) stop(); // Gone while we listed.
}

/** ADDED / MODIFIED / DELETED as a selector-filtered watch reports them, or undefined to skip. */
function eventType(ev: StoreEvent, filter: (o: KubeObject) => boolean): string | undefined {
  if (ev.type === 'delete') return filter(ev.obj) ? 'DELETED' : undefined;
  const now = filter(ev.obj);
  const before = ev.prev !== undefined && filter(ev.prev);
  if (now) return before ? 'MODIFIED' : 'ADDED';
  // An object that stops matching leaves the watcher's view as a deletion.
  return before ? 'DELETED' : undefined;
}

/**
 * One etcd watch on its own gRPC stream, with liveness. Why not etcd3's `client.watch()`:
 * - etcd3's WatchManager multiplexes every watcher on one stream and throws ("Failed to find
 *   watcher for IWatchResponse") on a response whose watch_id is no watcher's, which is what
 *   etcd answers a WatchProgressRequest with (watch_id -1). So progress cannot be asked for on
 *   its stream; on our own stream it can.
 * - etcd3 sets `progress_notify` on every watch, but etcd sends those only every
 *   `--experimental-watch-progress-notify-interval` (10 min by default) and only to synced
 *   watchers: far too rare to tell a live watch from a silent one.
 * Liveness: every `progressIntervalMs` a WatchProgressRequest goes out; etcd answers it at once
 * on a live stream. When nothing at all (no event, no progress answer) arrived for `stallMs`, the
 * stream is declared stalled and the caller restarts the watch from the last revision it saw.
 *
 * What we found about the silent watches (issue 11): etcd3 1.1.2 gives grpc-js no keepalive
 * options, and a watch only receives. So a connection that dies without a FIN or RST reaching
 * the client (a path that went away for good, a NAT entry dropped, a server that lost it) leaves
 * the HTTP/2 stream open forever: no error, no 'end', no event, and etcd3's watcher never
 * reconnects. test/priv/faults.test.ts shows it with its fault proxy's half-open mode: a plain
 * etcd3 watcher stays silent (no event, no 'disconnected') for the whole 25 s the test waits,
 * while weftd applies the same change within about 10 s over a new connection. The fixes:
 * etcdClientOptions sets gRPC keepalive (a dead connection fails within about 15 s), and this
 * module's progress requests catch a stream that answers nothing, even on a live connection.
 * A watcher etcd itself set aside (a slow reader, "unsynced"/victim) keeps answering progress
 * requests on etcd 3.4 while it delivers nothing: the compaction test
 * (test/priv/weftd-etcd.test.ts) saw it stay silent for a minute after the reader caught up, in
 * about one run in five. For that, `latestRevision` (when given) is asked every `stallMs` for the
 * newest mod revision under the prefix: a revision that one probe saw and the next still finds
 * undelivered means the stream is behind, and the watch is restarted from where it is (a
 * compacted revision then makes etcd cancel it, and the caller re-lists). A deletion moves no
 * mod revision; the periodic resync (resync.ts) remains the net for that.
 */
import { Range, type Etcd3, type IEvent, type IWatchResponse } from 'etcd3';
import type { Clock } from '../core/clock.ts';

/** Why a watch ended (the reason label of weftd_watch_restarts_total). */
export type WatchEndReason = 'stalled' | 'cancelled' | 'error' | 'reset' | 'resync';

export interface WatchEnd {
  reason: WatchEndReason;
  why: string;
  /** Where to resume without a new listing; undefined: re-list first. */
  resumeAt?: bigint;
  /** etcd answered on this stream (it worked for a while before it ended). */
  heard?: boolean;
}

export interface WatchStreamOptions {
  client: Etcd3;
  prefix: string;
  /** The first revision to deliver. */
  from: bigint;
  clock: Clock;
  /** How often progress is asked for (ms). */
  progressIntervalMs: number;
  /** No event and no progress for this long (ms): stalled. */
  stallMs: number;
  signal: AbortSignal;
  /** Called with each response's events, in revision order. */
  onEvents: (events: IEvent[]) => void;
  /** Ends the watch from outside (the resync found missed changes). */
  stop?: AbortSignal & { reason?: WatchEnd };
  /** The newest mod revision under the prefix now (undefined: no key), for the behind probe. */
  latestRevision?: () => Promise<bigint | undefined>;
}

/**
 * Runs one watch until it ends; resolves with why (undefined when `signal` aborted). Never
 * rejects: a stream that cannot be opened is an `error` end resuming at `from`.
 */
export async function watchStream(opts: WatchStreamOptions): Promise<WatchEnd | undefined> {
  const { client, prefix, from, clock, signal } = opts;
  if (signal.aborted) return undefined;
  // Resume after the last revision delivered: events of one revision come in one response.
  let next = from;
  let stream: Awaited<ReturnType<Etcd3['watchClient']['watch']>>;
  // Opening is bounded too: etcd3 opens the stream behind its host policies and credentials,
  // and a wait there is as silent as a stalled stream.
  const opening = client.watchClient.watch();
  const openTimer = new AbortController();
  try {
    const opened = await Promise.race([opening, clock.sleep(opts.stallMs, AbortSignal.any([openTimer.signal, signal])).then(() => undefined)]);
    if (!opened) {
      opening.then((s) => s.cancel()).catch(() => undefined);
      if (signal.aborted) return undefined;
      return { reason: 'stalled', why: `watch stream did not open within ${Math.round(opts.stallMs / 1000)}s`, resumeAt: next };
    }
    stream = opened;
  } catch (err) {
    return { reason: 'error', why: `watch stream failed to open (${(err as Error).message})`, resumeAt: next };
  } finally {
    openTimer.abort();
  }
  const range = Range.prefix(prefix);
  return await new Promise<WatchEnd | undefined>((resolve) => {
    let done = false;
    let heard = false;
    let lastHeard = clock.now();
    const ticker = new AbortController();
    const finish = (end: WatchEnd | undefined) => {
      if (done) return;
      done = true;
      ticker.abort();
      signal.removeEventListener('abort', onAbort);
      opts.stop?.removeEventListener('abort', onStop);
      stream.cancel();
      resolve(end && { ...end, heard });
    };
    const onAbort = () => finish(undefined);
    const onStop = () => finish(opts.stop?.reason ?? { reason: 'resync', why: 'stopped', resumeAt: next });
    signal.addEventListener('abort', onAbort, { once: true });
    opts.stop?.addEventListener('abort', onStop, { once: true });
    if (opts.stop?.aborted) return onStop();

    stream.on('data', (res: IWatchResponse) => {
      // Runs inside grpc-js's callback: a throw here would be an uncaught exception.
      try {
        onData(res);
      } catch (err) {
        finish({ reason: 'error', why: `handling a watch response failed (${(err as Error).message})` });
      }
    });
    const onData = (res: IWatchResponse) => {
      if (done) return;
      heard = true;
      lastHeard = clock.now();
      if (res.created && !res.canceled) {
        // An etcd whose revision is behind where we resume was emptied or restored from an
        // older backup: a watch from `next` would wait for revisions that mean something else.
        if (BigInt(res.header.revision) + 1n < from) {
          finish({ reason: 'reset', why: `etcd's revision ${res.header.revision} is behind ours (${from - 1n}): its data was replaced` });
        }
        return;
      }
      if (res.canceled) {
        const compacted = res.compact_revision && res.compact_revision !== '0';
        finish({ reason: 'cancelled', why: `watch cancelled (${compacted ? `compacted at revision ${res.compact_revision}` : res.cancel_reason || 'no reason given'})` });
        return;
      }
      if (res.events?.length) {
        const last = BigInt(res.events[res.events.length - 1].kv.mod_revision);
        if (last >= next) next = last + 1n;
        opts.onEvents(res.events);
      } else if (res.watch_id !== '-1' && BigInt(res.header.revision) >= next) {
        // etcd's own progress notification for this watch: everything up to here was delivered.
        // (The answer to a progress request, watch_id -1, promises that only on etcd >= 3.5.)
        next = BigInt(res.header.revision) + 1n;
      }
    };
    const broken = (what: string) => finish({ reason: 'error', why: `watch stream ${what}`, resumeAt: next });
    stream.on('error', (err: Error) => broken(`failed (${err.message})`));
    stream.on('end', () => broken('ended'));
    try {
      stream.write({ create_request: { key: range.start, range_end: range.end, start_revision: from.toString(), progress_notify: true } });
    } catch (err) {
      broken(`write failed (${(err as Error).message})`);
    }

    // The behind probe: a revision seen under the prefix by the last probe, not yet delivered.
    let probedAt = clock.now();
    let seen: bigint | undefined;
    const probe = async () => {
      let latest: bigint | undefined;
      try {
        latest = await opts.latestRevision!();
      } catch {
        return; // unreachable etcd is the stall detector's business
      }
      if (done) return;
      if (seen !== undefined && next <= seen) {
        finish({ reason: 'stalled', why: `behind: revision ${seen} under the prefix was not delivered within ${Math.round(opts.stallMs / 1000)}s`, resumeAt: next });
        return;
      }
      seen = latest !== undefined && latest >= next ? latest : undefined;
    };

    void (async () => {
      while (!ticker.signal.aborted) {
        if (opts.latestRevision && clock.now() - probedAt >= opts.stallMs) {
          probedAt = clock.now();
          void probe();
        }
        const sleptAt = clock.now();
        await clock.sleep(opts.progressIntervalMs, ticker.signal);
        if (ticker.signal.aborted) return;
        // Woken far too late: this process was paused itself (SIGSTOP, a suspended VM, a long
        // GC), and whatever etcd sent meanwhile is still unread. Judge the stream afresh.
        if (clock.now() - sleptAt > 2 * opts.progressIntervalMs + 1000) lastHeard = clock.now();
        const silent = clock.now() - lastHeard;
        if (silent >= opts.stallMs) {
          finish({ reason: 'stalled', why: `stalled: no event and no progress answer for ${Math.round(silent / 1000)}s`, resumeAt: next });
          return;
        }
        try {
          stream.write({ progress_request: {} });
        } catch (err) {
          broken(`write failed (${(err as Error).message})`);
        }
      }
    })();
  });
}

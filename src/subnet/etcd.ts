/**
 * {@link SubnetManager} on etcd v3 (flannel's schema, so weft and flannel nodes can share one
 * etcd). Design notes:
 * - Acquire: list, choose, then `txn(version(key) == 0) put(key, value, lease)`; a lost race
 *   (another node took the subnet between our list and our txn) is retried with a fresh list
 *   (flannel gives up there).
 * - Renew: like flannel, grant a fresh etcd lease and re-put the key under it, guarded by the
 *   key's mod revision; the old etcd lease is revoked. A deleted key is taken again with the
 *   create transaction, so the same subnet comes back while the data plane stays up. Lease IDs
 *   are ours, not etcd's: a grant whose answer was lost may still have been applied, and only a
 *   known ID can be revoked afterwards (else it lingers until its TTL runs out).
 * - Watch: from the snapshot revision + 1, on a stream of its own with progress requests and a
 *   stall detector (etcdwatch.ts, which also records what we found about silent watches). A
 *   broken or stalled stream is resumed from the revision after the last event delivered; after
 *   compaction (the watch is cancelled) or when etcd's revision went back (its data replaced) we
 *   re-list and hand the handler a new snapshot; the caller diffs it.
 * - Resync: every `resyncIntervalMs` the table is listed again and compared with what the watch
 *   delivered (src/subnet/resync.ts). Differences (a watcher etcd set aside and never resumed;
 *   a lost event) go to the handler as events and the watch is restarted from the listing's
 *   revision.
 */
import { randomBytes } from 'node:crypto';
import { readFileSync } from 'node:fs';
import { Etcd3, isRecoverableError, Range, type IKeyValue, type IOptions } from 'etcd3';
import type { IPv4Net } from '../ip/ipv4.ts';
import { chooseSubnet, describeSubnet } from './choose.ts';
import { systemClock, type Clock } from '../core/clock.ts';
import { markRetryable } from '../core/errors.ts';
import { silentLog, type Log } from '../core/log.ts';
import { constantDelay, type RetryPolicy } from '../core/retry.ts';
import { ConfigError, parseNetworkConfig, type NetworkConfig } from './config.ts';
import { DEFAULT_ETCD_PREFIX, encodeLeaseValue, parseLeaseValue, parseSubnetKey, subnetKey, subnetsPrefix, type Lease, type LeaseAttrs } from './lease.ts';
import { LeaseLostError, type LeaseEvent, type LeaseWatchHandler, type SubnetManager } from './manager.ts';
import { LeaseTracker, resyncLoop } from './resync.ts';
import { watchStream, type WatchEnd, type WatchEndReason } from './etcdwatch.ts';

export interface EtcdOptions {
  endpoints: string[];
  prefix?: string;
  cafile?: string;
  certfile?: string;
  keyfile?: string;
  /** Per-call deadline (ms); streams are exempt. */
  callTimeoutMs?: number;
  clock?: Clock;
  /** Called with every failed etcd call (metrics). */
  onError?: (err: unknown) => void;
  /** Where lines worth logging go (resyncs, lost races, foreign keys). */
  log?: Log;
  /** The wait before re-listing after a failed listing and before reconnecting a watch. */
  retry?: RetryPolicy;
  /** How often the watched table is compared with a full listing (ms); 0 turns it off. */
  resyncIntervalMs?: number;
  /** Called with the number of differences a resync found (metrics). */
  onResyncRepair?: (count: number) => void;
  /** No event and no progress answer for this long (ms): the watch is restarted (etcdwatch.ts). */
  watchStallMs?: number;
  /** Called each time the watch is restarted, with why (metrics). */
  onWatchRestart?: (reason: WatchEndReason) => void;
}

export const DEFAULT_WATCH_STALL_MS = 15_000;

export const DEFAULT_RESYNC_INTERVAL_MS = 5 * 60_000;

/** Re-list and reconnect quickly after an etcd restart (etcd3's default backs off up to 30 s). */
export const DEFAULT_ETCD_RETRY: RetryPolicy = constantDelay(1000);

/** etcd could not be reached or answered with an error; marked retryable (src/core/errors.ts). */
export class EtcdUnavailableError extends Error {
  constructor(op: string, options?: { cause?: unknown }) {
    super(`etcd ${op} failed${options?.cause instanceof Error ? `: ${options.cause.message}` : ''}`, options);
    this.name = 'EtcdUnavailableError';
    markRetryable(this);
  }
}

/** Builds etcd3 client options from endpoints and TLS files (shared with weftctl). */
export function etcdClientOptions(opts: Pick<EtcdOptions, 'endpoints' | 'cafile' | 'certfile' | 'keyfile' | 'callTimeoutMs' | 'retry'>): IOptions {
  const timeout = opts.callTimeoutMs ?? 5000;
  const o: IOptions = {
    hosts: opts.endpoints,
    dialTimeout: timeout,
    defaultCallOptions: (ctx) => (ctx.isStream ? {} : { deadline: Date.now() + timeout }),
    faultHandling: { watchBackoff: etcdBackoff(opts.retry ?? DEFAULT_ETCD_RETRY), host: () => new HostBreaker() as unknown as HostPolicy },
    // Without keepalive a connection that dies silently (no FIN, no RST) is never noticed by
    // grpc-js: streams on it hang (etcdwatch.ts). etcd refuses pings more often than every 5 s
    // (--grpc-keepalive-min-time) and pings without a call in flight.
    // A reconnect backoff capped at 2 s (grpc-js: up to 120 s) so the end of an outage is
    // noticed within seconds.
    grpcOptions: {
      'grpc.keepalive_time_ms': 10_000,
      'grpc.keepalive_timeout_ms': 5_000,
      'grpc.keepalive_permit_without_calls': 0,
      'grpc.initial_reconnect_backoff_ms': 500,
      'grpc.max_reconnect_backoff_ms': 2_000,
    },
  };
  if (opts.cafile || opts.certfile || opts.keyfile) {
    const read = (what: string, file: string) => {
      try {
        return readFileSync(file);
      } catch (cause) {
        throw new Error(`etcd TLS: read ${what} "${file}"`, { cause });
      }
    };
    o.credentials = {
      // Without a CA file the system roots verify the server (grpc's default for null).
      rootCertificate: (opts.cafile ? read('CA file', opts.cafile) : null) as Buffer,
      privateKey: opts.keyfile ? read('key file', opts.keyfile) : undefined,
      certChain: opts.certfile ? read('certificate file', opts.certfile) : undefined,
    };
  }
  return o;
}

type HostPolicy = ReturnType<NonNullable<NonNullable<IOptions['faultHandling']>['host']>>;

/** Thrown while a host's breaker is open; etcd3 then tries the next endpoint. */
class HostUnavailableError extends Error {
  constructor(last: string) {
    super(`etcd endpoint failed 3 times in a row (last: ${last}); trying it again within 1s`);
    this.name = 'HostUnavailableError';
  }
}

/**
 * etcd3's per-endpoint fault policy (it only calls `execute`): open after 3 recoverable failures
 * in a row, let a call through again after 1 s. etcd3's default waits 5 s, which the end of every
 * outage then waits out before the watch or a renewal gets through.
 */
class HostBreaker {
  #failures = 0;
  #openUntil = 0;
  #last = '';

  async execute<T>(fn: (ctx: { signal: AbortSignal }) => Promise<T> | T): Promise<T> {
    if (Date.now() < this.#openUntil) throw new HostUnavailableError(this.#last);
    try {
      const v = await fn({ signal: new AbortController().signal });
      this.#failures = 0;
      return v;
    } catch (err) {
      if (err instanceof Error && isRecoverableError(err)) {
        this.#last = err.message;
        if (++this.#failures >= 3) this.#openUntil = Date.now() + 1000;
      }
      throw err;
    }
  }
}

/** etcd3's backoff shape (`duration`, then `next()` after another failure) from a policy. */
interface Backoff {
  duration: number;
  next(): Backoff;
}

function etcdBackoff(policy: RetryPolicy, failures = 1): Backoff {
  return { duration: policy.delayMs(failures), next: () => etcdBackoff(policy, failures + 1) };
}

/** Parses one key/value from the subnets prefix; undefined (with a reason) for foreign entries. */
export function leaseFromKv(kv: Pick<IKeyValue, 'key' | 'value' | 'mod_revision'> & { lease?: string }): Lease | { skip: string } {
  const key = kv.key.toString();
  const subnet = parseSubnetKey(key);
  if (!subnet) return { skip: `key "${key}" is not a subnet key` };
  try {
    const attrs = parseLeaseValue(kv.value.toString());
    const lease: Lease = { subnet, ...attrs, modRevision: kv.mod_revision };
    if (kv.lease && String(kv.lease) !== '0') lease.etcdLeaseId = String(kv.lease);
    return lease;
  } catch (err) {
    return { skip: `lease "${key}": ${(err as Error).message}` };
  }
}

/** `2 put(s) (198.18.0.64/26, ...), 1 delete(s) (...)` for a log line. */
function describeEvents(events: LeaseEvent[]): string {
  const subnets = (type: LeaseEvent['type']) => events.filter((e) => e.type === type).map((e) => describeSubnet(e.type === 'put' ? e.lease.subnet : e.subnet));
  const part = (type: LeaseEvent['type']) => {
    const s = subnets(type);
    return s.length ? `${s.length} ${type}(s) (${s.slice(0, 5).join(', ')}${s.length > 5 ? ', ...' : ''})` : '';
  };
  return [part('put'), part('delete')].filter(Boolean).join(' and ');
}

/** How many possibly-granted lease IDs are kept for revoking (each also expires by its TTL). */
const MAX_UNSURE_GRANTS = 64;

/** A random positive int64 for a lease grant (etcd: 0 means "choose one for me"). */
function newLeaseId(): string {
  const v = randomBytes(8).readBigUInt64BE() & 0x3fff_ffff_ffff_ffffn;
  return String(v === 0n ? 1n : v);
}

export class EtcdSubnetManager implements SubnetManager {
  readonly canLoseSubnet = true;
  readonly client: Etcd3;
  readonly prefix: string;
  readonly #clock: Clock;
  readonly #opts: EtcdOptions;
  readonly #log: Log;
  /** IDs of grants that failed but may have been applied: revoked after the next good grant. */
  readonly #unsureGrants = new Set<string>();

  constructor(opts: EtcdOptions) {
    this.#opts = opts;
    this.prefix = (opts.prefix ?? DEFAULT_ETCD_PREFIX).replace(/\/+$/, '');
    this.#clock = opts.clock ?? systemClock;
    this.#log = opts.log ?? silentLog;
    this.client = new Etcd3(etcdClientOptions(opts));
  }

  async #call<T>(op: string, fn: () => Promise<T>): Promise<T> {
    try {
      return await fn();
    } catch (cause) {
      this.#opts.onError?.(cause);
      throw new EtcdUnavailableError(op, { cause });
    }
  }

  async getConfig(): Promise<NetworkConfig> {
    const key = `${this.prefix}/config`;
    const text = await this.#call(`get "${key}"`, () => this.client.get(key).string());
    if (text === null) throw new ConfigError(`network config not found at etcd key "${key}"`);
    try {
      return parseNetworkConfig(text);
    } catch (err) {
      if (err instanceof ConfigError) throw new ConfigError(`${err.message} (etcd key "${key}")`, { cause: err });
      throw err;
    }
  }

  async listLeases(): Promise<{ leases: Lease[]; revision: string }> {
    const res = await this.#call('list leases', () => this.client.getAll().prefix(subnetsPrefix(this.prefix)).exec());
    const leases: Lease[] = [];
    for (const kv of res.kvs) {
      const l = leaseFromKv(kv);
      if ('skip' in l) this.#log.warn(`ignoring ${l.skip}`);
      else leases.push(l);
    }
    return { leases, revision: res.header.revision };
  }

  async #grant(ttlSeconds: number): Promise<{ id: string; expiresAt: number }> {
    const start = this.#clock.now();
    const id = newLeaseId();
    let res: Awaited<ReturnType<Etcd3['leaseClient']['leaseGrant']>>;
    try {
      res = await this.#call('grant lease', () => this.client.leaseClient.leaseGrant({ TTL: ttlSeconds, ID: id }));
    } catch (err) {
      // etcd3 retries a call whose connection broke: "already exists" is our own first copy.
      if (/lease already exists/i.test((err as Error).message)) return { id, expiresAt: start + ttlSeconds * 1000 };
      if (this.#unsureGrants.size < MAX_UNSURE_GRANTS) this.#unsureGrants.add(id);
      throw err;
    }
    if (this.#unsureGrants.size) void this.#revokeUnsure();
    return { id: String(res.ID), expiresAt: start + Number(res.TTL) * 1000 };
  }

  /** Revokes the leases of failed grants; those etcd never applied answer "not found" (done too). */
  async #revokeUnsure(): Promise<void> {
    for (const id of [...this.#unsureGrants]) {
      this.#unsureGrants.delete(id);
      try {
        await this.client.leaseClient.leaseRevoke({ ID: id });
      } catch (err) {
        // Not found: never granted, or expired. Anything else: try again after the next grant.
        if (!/not found/i.test((err as Error).message) && this.#unsureGrants.size < MAX_UNSURE_GRANTS) this.#unsureGrants.add(id);
        return;
      }
    }
  }

  async #revoke(id: string): Promise<void> {
    try {
      await this.client.leaseClient.leaseRevoke({ ID: id });
    } catch {
      /* it expires by itself */
    }
  }

  /** Creates the key if absent; false when another node got there first. */
  async #create(subnet: IPv4Net, opts: { attrs: LeaseAttrs; ttlSeconds: number }): Promise<Lease | undefined> {
    const { attrs, ttlSeconds } = opts;
    const key = subnetKey(this.prefix, subnet);
    const g = await this.#grant(ttlSeconds);
    const res = await this.#call(`create "${key}"`, () =>
      this.client
        .if(key, 'Version', '==', 0)
        .then(this.client.put(key).value(encodeLeaseValue(attrs)).lease(g.id))
        .commit(),
    );
    const revision = res.succeeded ? res.header.revision : await this.#settleLost(key, g.id);
    if (revision === undefined) return undefined;
    return { subnet, ...attrs, expiresAt: g.expiresAt, modRevision: revision, etcdLeaseId: g.id };
  }

  /**
   * A transaction putting `key` under etcd lease `leaseId` did not succeed. etcd3 retries calls
   * whose connection broke (UNAVAILABLE), so the "failure" may be the retry of a copy that was
   * applied before the reply got lost: then the key is ours, under `leaseId`, and revoking that
   * lease would delete our own key (every peer would drop this node until it is re-created).
   * Returns the key's mod revision when it is ours; else revokes the unused lease (only when the
   * key was read: when unsure, the lease is left to expire by itself).
   */
  async #settleLost(key: string, leaseId: string): Promise<string | undefined> {
    let kv: IKeyValue | undefined;
    try {
      kv = (await this.#call(`get "${key}"`, () => this.client.get(key).exec())).kvs[0];
    } catch {
      return undefined;
    }
    if (kv && String(kv.lease) === leaseId) {
      this.#log.info(`"${key}" was written by an earlier copy of our own transaction (its reply was lost); keeping it`);
      return kv.mod_revision;
    }
    await this.#revoke(leaseId);
    return undefined;
  }

  /**
   * Re-puts an existing key under a fresh etcd lease if it is unchanged since `current` was
   * read, then revokes the key's previous etcd lease.
   */
  async #refresh(current: Lease, opts: { attrs: LeaseAttrs; ttlSeconds: number }): Promise<Lease | undefined> {
    const { attrs, ttlSeconds } = opts;
    const subnet = current.subnet;
    const key = subnetKey(this.prefix, subnet);
    const modRevision = current.modRevision!;
    const oldLease = current.etcdLeaseId;
    const g = await this.#grant(ttlSeconds);
    const res = await this.#call(`renew "${key}"`, () =>
      this.client
        .if(key, 'Mod', '==', modRevision)
        .then(this.client.put(key).value(encodeLeaseValue(attrs)).lease(g.id))
        .commit(),
    );
    const revision = res.succeeded ? res.header.revision : await this.#settleLost(key, g.id);
    if (revision === undefined) return undefined;
    if (oldLease && oldLease !== g.id) await this.#revoke(oldLease);
    return { subnet, ...attrs, expiresAt: g.expiresAt, modRevision: revision, etcdLeaseId: g.id };
  }

  async acquireLease(config: NetworkConfig, attrs: LeaseAttrs, opts: { previous?: IPv4Net; ttlSeconds: number }): Promise<Lease> {
    for (let attempt = 1; ; attempt++) {
      const { leases } = await this.listLeases();
      const choice = chooseSubnet({ config, leases, publicIP: attrs.publicIP, previous: opts.previous, backendData: attrs.backendData });
      if (choice.kind === 'existing' && choice.lease.publicIP !== attrs.publicIP) {
        this.#log.info(`lease ${describeSubnet(choice.lease.subnet)} carries our VTEP but public IP ${choice.lease.publicIP}; taking it over with ${attrs.publicIP}`);
      }
      let lease: Lease | undefined;
      if (choice.kind === 'existing') {
        lease = await this.#refresh(choice.lease, { attrs, ttlSeconds: opts.ttlSeconds });
      } else {
        lease = await this.#create(choice.subnet, { attrs, ttlSeconds: opts.ttlSeconds });
      }
      if (lease) return lease;
      const subnet = describeSubnet(choice.kind === 'existing' ? choice.lease.subnet : choice.subnet);
      this.#log.info(`subnet ${subnet} changed under us (another node won the race), retrying (attempt ${attempt})`);
      if (attempt >= 20) throw new EtcdUnavailableError(`acquire a subnet after ${attempt} lost races`);
    }
  }

  async renewLease(lease: Lease, attrs: LeaseAttrs, opts: { ttlSeconds: number }): Promise<Lease> {
    const key = subnetKey(this.prefix, lease.subnet);
    for (let attempt = 1; attempt <= 5; attempt++) {
      const res = await this.#call(`get "${key}"`, () => this.client.get(key).exec());
      const kv = res.kvs[0];
      if (!kv) {
        const created = await this.#create(lease.subnet, { attrs, ttlSeconds: opts.ttlSeconds });
        if (created) {
          this.#log.info(`lease for ${describeSubnet(lease.subnet)} was gone; took the same subnet again`);
          return created;
        }
        continue;
      }
      const current = leaseFromKv(kv);
      if ('skip' in current || current.publicIP !== attrs.publicIP) {
        throw new LeaseLostError(describeSubnet(lease.subnet), 'skip' in current ? 'an unreadable lease' : current.publicIP);
      }
      const refreshed = await this.#refresh(current, { attrs, ttlSeconds: opts.ttlSeconds });
      if (refreshed) return refreshed;
    }
    throw new EtcdUnavailableError(`renew "${key}": the key kept changing`);
  }

  async watchLeases(signal: AbortSignal, handler: LeaseWatchHandler): Promise<void> {
    const prefix = subnetsPrefix(this.prefix);
    const tracker = new LeaseTracker();
    // Where the next watch starts; undefined: list and hand over a snapshot first.
    let from: bigint | undefined;
    const retry = this.#opts.retry ?? DEFAULT_ETCD_RETRY;
    let failures = 0;
    while (!signal.aborted) {
      if (from === undefined) {
        let snap: { leases: Lease[]; revision: string };
        try {
          snap = await this.listLeases();
          failures = 0;
        } catch {
          await this.#clock.sleep(retry.delayMs(++failures), signal);
          continue;
        }
        tracker.reset(snap.leases);
        handler.snapshot(snap.leases);
        from = BigInt(snap.revision) + 1n;
      }
      const end = await this.#watchOnce(from, { prefix, signal, handler, tracker });
      if (!end) continue;
      this.#opts.onWatchRestart?.(end.reason);
      // A broken or stalled stream is logged once per outage, not once per attempt, and
      // retried after the policy's delay; one that worked for a while starts a new outage.
      const trouble = end.reason === 'error' || end.reason === 'stalled';
      if (end.heard || !trouble) failures = 0;
      if (trouble) {
        this.#opts.onError?.(new Error(end.why));
        failures++;
      }
      if (!trouble || failures === 1) {
        this.#log.info(`lease watch: ${end.why}; ${end.resumeAt === undefined ? 're-listing' : `restarting the watch from revision ${end.resumeAt}`}`);
      }
      from = end.resumeAt;
      if (end.reason === 'error') await this.#clock.sleep(retry.delayMs(failures), signal);
    }
  }

  /**
   * One watch from `rev` (etcdwatch.ts: its own stream, progress requests, stall detection),
   * with the resync beside it; resolves with why it ended (undefined when aborted).
   */
  async #watchOnce(rev: bigint, opts: { prefix: string; signal: AbortSignal; handler: LeaseWatchHandler; tracker: LeaseTracker }): Promise<WatchEnd | undefined> {
    const { prefix, signal, handler, tracker } = opts;
    const stopResync = new AbortController();
    const stopWatch = new AbortController();
    const intervalMs = this.#opts.resyncIntervalMs ?? DEFAULT_RESYNC_INTERVAL_MS;
    if (intervalMs > 0) {
      void resyncLoop(stopResync.signal, {
        clock: this.#clock,
        intervalMs,
        list: () => this.listLeases(),
        tracker,
        onError: () => undefined, // counted by #call; the next interval tries again
        onRepair: (events, revision) => {
          this.#log.info(`lease resync: the watch missed ${describeEvents(events)}; applying them`);
          this.#opts.onResyncRepair?.(events.length);
          for (const ev of events) handler.event(ev);
          // The stream that missed them is suspect: start a new one after the listing.
          stopWatch.abort({ reason: 'resync', why: 'resync found missed changes', resumeAt: BigInt(revision) + 1n } satisfies WatchEnd);
        },
      });
    }
    const stallMs = this.#opts.watchStallMs ?? DEFAULT_WATCH_STALL_MS;
    try {
      return await watchStream({
        client: this.client,
        prefix,
        from: rev,
        clock: this.#clock,
        progressIntervalMs: Math.max(100, Math.round(stallMs / 3)),
        stallMs,
        signal,
        stop: stopWatch.signal,
        latestRevision: () => this.#latestRevision(prefix),
        onEvents: (events) => {
          for (const ev of events) {
            if (ev.type === 'Put') {
              const l = leaseFromKv(ev.kv);
              if ('skip' in l) this.#log.warn(`ignoring ${l.skip}`);
              // A restarted watch replays what came after the listing; the tracker drops repeats.
              else if (tracker.put(l)) handler.event({ type: 'put', lease: l });
              else this.#log.debug(`lease watch: put of ${describeSubnet(l.subnet)} at revision ${l.modRevision} is not newer than what is known; skipped`);
            } else {
              const subnet = parseSubnetKey(ev.kv.key.toString());
              if (!subnet) continue;
              if (tracker.delete(subnet, ev.kv.mod_revision)) handler.event({ type: 'delete', subnet });
              else this.#log.debug(`lease watch: delete of ${describeSubnet(subnet)} at revision ${ev.kv.mod_revision} is not newer than what is known; skipped`);
            }
          }
        },
      });
    } finally {
      stopResync.abort();
    }
  }

  /** The newest mod revision under `prefix` (one key, no value: cheap at any table size). */
  async #latestRevision(prefix: string): Promise<bigint | undefined> {
    const range = Range.prefix(prefix);
    const res = await this.client.kv.range({ key: range.start, range_end: range.end, sort_target: 'Mod', sort_order: 'Descend', limit: 1, keys_only: true });
    const kv = res.kvs[0];
    return kv ? BigInt(kv.mod_revision) : undefined;
  }

  close(): void {
    this.client.close();
  }
}

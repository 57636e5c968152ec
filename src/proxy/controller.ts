/**
 * The Service proxy's control loop (kube-proxy's role): Service and EndpointSlice informers ->
 * validated caches -> desired state (endpoints.ts) -> one nft transaction (sync.ts).
 *
 * - Nothing is programmed before both informers have listed once (a half-known cluster would
 *   reject Services whose slices had not arrived yet).
 * - Every change schedules a sync; changes that arrive while one runs are folded into the next
 *   one, so a burst costs a few transactions, not one per event. Syncs are partial (only the
 *   Service ports that changed) except the first, the periodic full one (`fullSyncIntervalMs`),
 *   after a failure and after drift.
 * - Drift (someone edited or deleted `ip weft-proxy`) is checked every `driftIntervalMs` and
 *   repaired by a full sync. On a weftd restart the table stays in place until the first full
 *   sync replaces it atomically, so established and new connections see no gap.
 * - Objects from the API are hostile input: each is validated (types.ts) before it is cached;
 *   an invalid one is dropped with one log line per object and reason, and counted.
 */
import { CoreV1Api, DiscoveryV1Api, type KubeConfig, type KubernetesObject } from '@kubernetes/client-node';
import { systemClock, type Clock } from '../core/clock.ts';
import { errText } from '../core/errors.ts';
import type { Log } from '../core/log.ts';
import type { IPv4Net } from '../ip/ipv4.ts';
import { callOptions } from '../kube/client.ts';
import { keepInformer } from '../kube/informer.ts';
import { ensureBridgeNetfilter } from './bridge.ts';
import { EndpointSelector, sliceService, type ProxyState } from './endpoints.ts';
import { ProxySyncer, type SyncResult } from './sync.ts';
import { validateEndpointSlice, validateService, type EndpointSlice, type Service, type Validated } from './types.ts';

/** What the proxy reports to metrics. */
export interface ProxyHooks {
  onSync?: (r: SyncResult, state: ProxyState) => void;
  onSyncError?: (err: unknown) => void;
  onInvalid?: (kind: string) => void;
  onDrift?: () => void;
  onApiError?: (err: unknown) => void;
}

export interface ServiceProxyOptions extends ProxyHooks {
  kc: KubeConfig;
  /** This node's name (Local traffic policies). */
  nodeName: string;
  /** The pod network: ClusterIP traffic from outside it is masqueraded. */
  clusterCIDR: IPv4Net;
  nodePortRange?: { min: number; max: number };
  log: Log;
  clock?: Clock;
  /** How often the whole table is rewritten (default 5 min). */
  fullSyncIntervalMs?: number;
  /** How often the table is compared with what the last sync left (default 30 s). */
  driftIntervalMs?: number;
  /** The syncer (tests inject one bound to a namespace). */
  syncer?: ProxySyncer;
}

const SERVICES = '/api/v1/services';
const SLICES = '/apis/discovery.k8s.io/v1/endpointslices';

function keyOf(o: KubernetesObject): string {
  return `${o.metadata?.namespace ?? ''}/${o.metadata?.name ?? ''}`;
}

/**
 * A validated cache of one kind, keyed by namespace/name, indexed by the Service each object
 * belongs to (`owner`: a Service itself, a slice's service-name label). Every change marks the
 * Services it concerns dirty, the old owner too when a slice moved to another Service, so a
 * partial sync recomputes those only.
 */
export class ProxyCache<T> {
  readonly #items = new Map<string, T>();
  readonly #byOwner = new Map<string, Map<string, T>>();
  readonly #bad = new Map<string, string>();
  /** Services (namespace/name) whose objects changed since the last {@link takeDirty}. */
  #dirty = new Set<string>();

  readonly kind: string;
  readonly validate: (raw: unknown) => Validated<T>;
  readonly opts: { log: Log; owner: (v: T) => string; onInvalid?: (kind: string) => void; onChange: () => void };

  constructor(kind: string, validate: (raw: unknown) => Validated<T>, opts: ProxyCache<T>['opts']) {
    this.kind = kind;
    this.validate = validate;
    this.opts = opts;
  }

  get items(): ReadonlyMap<string, T> {
    return this.#items;
  }

  get size(): number {
    return this.#items.size;
  }

  /** The objects belonging to Service `id`. */
  of(id: string): T[] {
    const m = this.#byOwner.get(id);
    return m ? [...m.values()] : [];
  }

  takeDirty(): Set<string> {
    const d = this.#dirty;
    this.#dirty = new Set();
    return d;
  }

  replace(items: KubernetesObject[]): void {
    for (const [k, v] of [...this.#items]) this.#drop(k, v);
    for (const o of items) this.#put(o, false);
    this.opts.onChange();
  }

  upsert(o: KubernetesObject): void {
    this.#put(o, true);
  }

  remove(o: KubernetesObject): void {
    const k = keyOf(o);
    this.#bad.delete(k);
    const old = this.#items.get(k);
    if (old === undefined) return;
    this.#drop(k, old);
    this.opts.onChange();
  }

  #put(o: KubernetesObject, notify: boolean): void {
    const k = keyOf(o);
    const v = this.validate(o);
    const old = this.#items.get(k);
    if (old !== undefined) this.#drop(k, old);
    if (v.ok) {
      this.#bad.delete(k);
      this.#items.set(k, v.value);
      const owner = this.opts.owner(v.value);
      this.#dirty.add(owner);
      const m = this.#byOwner.get(owner);
      if (m) m.set(k, v.value);
      else this.#byOwner.set(owner, new Map([[k, v.value]]));
    } else {
      // One line per object and reason, not one per resync.
      if (this.#bad.get(k) !== v.reason) this.opts.log.warn(`proxy: ignoring ${this.kind} "${k}": ${v.reason}`);
      this.#bad.set(k, v.reason);
      this.opts.onInvalid?.(this.kind);
      if (old === undefined) return;
    }
    if (notify) this.opts.onChange();
  }

  #drop(k: string, v: T): void {
    this.#items.delete(k);
    const owner = this.opts.owner(v);
    this.#dirty.add(owner);
    const m = this.#byOwner.get(owner);
    m?.delete(k);
    if (m?.size === 0) this.#byOwner.delete(owner);
  }
}

/** Runs the Service proxy until `signal` aborts. */
export async function runServiceProxy(signal: AbortSignal, opts: ServiceProxyOptions): Promise<void> {
  const { log } = opts;
  const clock = opts.clock ?? systemClock;
  // No read-back inside a sync: the drift check after it takes the baseline. At 1000 Services x
  // 10 endpoints a read-back (`nft -j list table` and its fingerprint) costs 1-1.5 s on a busy
  // 2-core machine, as much as the full sync's apply; with 'always' every partial sync held the
  // sync chain for it, so a change arriving meanwhile waited that long (bench/figures/proxy.ts).
  // Drift is still caught: a deleted table at once, other edits by every check after the one
  // that re-baselines, and the periodic full sync rewrites the table whatever happened.
  const syncer = opts.syncer ?? new ProxySyncer({ log, ruleset: { clusterCIDR: opts.clusterCIDR }, readBack: 'lazy' });
  if (ensureBridgeNetfilter()) log.info('proxy: turned net.bridge.bridge-nf-call-iptables on (same-node endpoints need it)');

  let dirty = false;
  let full = true;
  let running: Promise<void> | undefined;
  const synced = { services: false, slices: false };
  const schedule = () => {
    dirty = true;
    if (!running && synced.services && synced.slices && !signal.aborted) running = drain();
  };
  const caches = {
    services: new ProxyCache<Service>('Service', validateService, { log, owner: (s) => `${s.metadata.namespace}/${s.metadata.name}`, onInvalid: opts.onInvalid, onChange: schedule }),
    slices: new ProxyCache<EndpointSlice>('EndpointSlice', validateEndpointSlice, { log, owner: sliceService, onInvalid: opts.onInvalid, onChange: schedule }),
  };
  const selector = new EndpointSelector({ nodeName: opts.nodeName, nodePortRange: opts.nodePortRange });
  const slicesOf = (id: string) => caches.slices.of(id);

  let failingSince = 0;
  async function drain(): Promise<void> {
    try {
      while (dirty && !signal.aborted) {
        dirty = false;
        // A full sync asked for while this one runs (the periodic timer, drift) is kept for the next.
        const wantFull = full;
        full = false;
        // the Services whose objects changed since the last pass; a full sync recomputes all
        const touched = new Set([...caches.services.takeDirty(), ...caches.slices.takeDirty()]);
        const { state, changed } = selector.select(caches.services.items, slicesOf, wantFull ? undefined : touched);
        try {
          const r = await syncer.sync(state, { full: wantFull, changed: wantFull ? undefined : changed });
          if (failingSince) log.info(`proxy: syncing again after ${Math.round((clock.now() - failingSince) / 1000)}s`);
          failingSince = 0;
          opts.onSync?.(r, state);
          if (r.mode !== 'unchanged') log.debug(`proxy: ${r.mode} sync, ${state.ports.length} service port(s), ${Math.round(r.ms)} ms`);
        } catch (err) {
          // the syncer's next sync is full whatever failed: recompute everything for it too
          full = true;
          opts.onSyncError?.(err);
          if (!failingSince) log.error(`proxy: sync failed: ${errText(err)}; retrying with backoff`);
          failingSince ||= clock.now();
          dirty = true;
          // 1 s, doubling while it keeps failing, at most 30 s: a lasting failure does not spin.
          await clock.sleep(Math.min(30_000, 1000 * 2 ** Math.min(5, Math.floor((clock.now() - failingSince) / 2000))), signal);
        }
      }
    } finally {
      running = undefined;
    }
  }

  const listOptions = callOptions(['Accept', 'application/json'], 60_000);
  // The one-item list keepInformer reads the collection's resourceVersion with.
  const probeOptions = callOptions(['Accept', 'application/json'], 10_000);
  const core = opts.kc.makeApiClient(CoreV1Api);
  const discovery = opts.kc.makeApiClient(DiscoveryV1Api);
  type Listing<T> = { items: T[]; metadata?: { resourceVersion?: string } };
  const informer = <T extends KubernetesObject>(path: string, cache: ProxyCache<unknown>, flag: keyof typeof synced, list: (limit?: number) => Promise<Listing<T>>) =>
    keepInformer<T>(signal, {
      kc: opts.kc,
      path,
      what: `proxy ${cache.kind} watch`,
      currentVersion: async () => (await list(1)).metadata?.resourceVersion,
      list: async () => {
        const l = await list();
        // The informer relists after 410 too: either way the cache becomes exactly the listing.
        cache.replace(l.items);
        if (!synced[flag]) {
          synced[flag] = true;
          log.info(`proxy: ${cache.size} ${cache.kind}(s) listed`);
          schedule();
        }
        return l as never;
      },
      onAdd: (o) => cache.upsert(o),
      onUpdate: (o) => cache.upsert(o),
      onDelete: (o) => cache.remove(o),
      log,
      clock,
      onError: opts.onApiError,
    });

  const periodic = async (everyMs: number, fn: () => Promise<void>) => {
    while (!signal.aborted) {
      await clock.sleep(everyMs, signal);
      if (signal.aborted) return;
      await fn().catch((err) => log.warn(`proxy: ${errText(err)}`));
    }
  };

  await Promise.all([
    // A deadline on each listing (client-node's calls have none), like the Node informer's.
    informer(SERVICES, caches.services as ProxyCache<unknown>, 'services', (limit) => core.listServiceForAllNamespaces(limit ? { limit } : {}, limit ? probeOptions : listOptions)),
    informer(SLICES, caches.slices as ProxyCache<unknown>, 'slices', (limit) => discovery.listEndpointSliceForAllNamespaces(limit ? { limit } : {}, limit ? probeOptions : listOptions)),
    periodic(opts.fullSyncIntervalMs ?? 5 * 60_000, async () => {
      full = true;
      schedule();
    }),
    periodic(opts.driftIntervalMs ?? 30_000, async () => {
      if (!synced.services || !synced.slices || running) return;
      if (await syncer.drifted()) {
        opts.onDrift?.();
        log.info(`repair: nftables table "ip weft-proxy" was changed by someone else; rewriting it`);
        full = true;
        schedule();
      }
    }),
  ]);
  await running;
  syncer.close();
}

/**
 * {@link SubnetManager} on the Kubernetes API: flannel's kube subnet manager (`--kube-subnet-mgr`),
 * wire-compatible with it (same annotations, same backend data), so weft and flannel nodes can
 * share a cluster.
 *
 * - Config: net-conf.json (src/subnet/kube/netconf.ts), not the API.
 * - Lease: our Node's `spec.podCIDR`; it never expires (`expiresAt` undefined: the daemon's
 *   renewer only runs when kicked, and renewing is a no-op). Not assigned yet: one log line naming the likely
 *   cause, then the Node is watched until it appears. Outside Network: {@link PodCIDRError}.
 * - Publishing: our attributes go into annotations with one strategic-merge PATCH of only the
 *   changed keys, on `nodes/<name>/status` as flannel does (so RBAC needs nodes/status patch and
 *   no nodes patch). A user-set `public-ip-overwrite` wins. If someone strips or edits them
 *   later, the watch notices and writes them back.
 * - Peers: the Node informer (src/subnet/kube/informer.ts on src/kube/informer.ts: client-node's
 *   ListWatch, restarted with backoff after errors; it keeps its resourceVersion, so a restarted watch resumes where
 *   it stopped, and asks for bookmarks, so in a quiet cluster that version stays recent and a
 *   reconnect does not turn into a 410 and a full relist). Every listing (first and after 410)
 *   goes through the peer table (src/subnet/kube/table.ts), which turns it into the events the
 *   watch would have delivered: nothing is missed across a relist.
 * - Ready: NetworkUnavailable=False (reason WeftIsUp) via strategic-merge PATCH on the status.
 *
 * Concurrency: informer callbacks run on the event loop one at a time; the peer table is only
 * touched from them. Own-annotation repairs are serialized through one promise chain.
 */
import { Watch, type KubeConfig, type V1Node, type V1NodeList } from '@kubernetes/client-node';
import { systemClock, type Clock } from '../../core/clock.ts';
import { errText, isRetryable, markRetryable } from '../../core/errors.ts';
import { silentLog, type Log } from '../../core/log.ts';
import { formatCIDR, type IPv4Net } from '../../ip/ipv4.ts';
import { KubeApiError, KubeNodeClient, type NodeClient } from '../../kube/client.ts';
import type { NetworkConfig } from '../config.ts';
import type { Lease, LeaseAttrs } from '../lease.ts';
import type { LeaseEvent, LeaseWatchHandler, SubnetManager } from '../manager.ts';
import { annotatedVtepMAC, annotationNames, networkAvailablePatch, ownAnnotations, parsePodCIDR, podCIDRText, type AnnotationNames, type NodeLike } from './annotations.ts';
import { DEFAULT_NET_CONF_PATH, loadNetConf } from './netconf.ts';
import { runNodeInformer } from './informer.ts';
import { NodeLeaseTable } from './table.ts';

/** Our podCIDR cannot be used (outside Network, not a CIDR); retrying will not fix it. */
export class PodCIDRError extends Error {
  constructor(message: string, options?: { cause?: unknown }) {
    super(message, options);
    this.name = 'PodCIDRError';
  }
}

export interface KubeSubnetManagerOptions {
  kc: KubeConfig;
  /** This node's Node object name (NODE_NAME). */
  nodeName: string;
  netConfPath?: string;
  /** Default flannel.alpha.coreos.com. */
  annotationPrefix?: string;
  /** Set NetworkUnavailable=False in ready() (default true). */
  setNodeNetworkUnavailable?: boolean;
  /** Defaults to {@link KubeNodeClient} on `kc`. */
  client?: NodeClient;
  log?: Log;
  clock?: Clock;
  /** Ends waits (podCIDR not assigned yet) and watches, as close() does. */
  signal?: AbortSignal;
  /** Informer restart backoff after errors (ms): doubles from `min` up to `max`. */
  restartBackoffMs?: { min: number; max: number };
  /** How long one wait for our podCIDR watches before re-reading the Node (ms). */
  podCIDRPollMs?: number;
  /** A peer Node was rejected (bad annotations, bad or overlapping podCIDR); once per reason. */
  onMalformedNode?: (node: string, why: string) => void;
  /** Peers skipped because podCIDR or backend annotations are missing (gauge). */
  onUnannotatedNodes?: (count: number) => void;
  /** Every failed API call or watch (metrics). */
  onError?: (err: unknown) => void;
}

export class KubeSubnetManager implements SubnetManager {
  readonly nodeName: string;
  readonly names: AnnotationNames;
  readonly #opts: KubeSubnetManagerOptions;
  readonly #client: NodeClient;
  readonly #log: Log;
  readonly #clock: Clock;
  readonly #closed = new AbortController();
  readonly #signal: AbortSignal;
  #config: NetworkConfig | undefined;
  #own: { subnet: IPv4Net; attrs: LeaseAttrs } | undefined;
  #repairing: Promise<void> = Promise.resolve();
  #repairPending = false;

  constructor(opts: KubeSubnetManagerOptions) {
    if (!opts.nodeName) throw new Error('kube subnet manager: the node name is required (--node-name or NODE_NAME)');
    this.#opts = opts;
    this.nodeName = opts.nodeName;
    this.names = annotationNames(opts.annotationPrefix);
    this.#client = opts.client ?? new KubeNodeClient(opts.kc);
    this.#log = opts.log ?? silentLog;
    this.#clock = opts.clock ?? systemClock;
    this.#signal = opts.signal ? AbortSignal.any([opts.signal, this.#closed.signal]) : this.#closed.signal;
  }

  async getConfig(): Promise<NetworkConfig> {
    const config = loadNetConf(this.#opts.netConfPath ?? DEFAULT_NET_CONF_PATH);
    this.#config = config;
    return config;
  }

  async #getNode(): Promise<V1Node> {
    try {
      return await this.#client.get(this.nodeName);
    } catch (err) {
      this.#opts.onError?.(err);
      // Our Node not registered yet (the kubelet creates it): a wait, not an operator error.
      if (err instanceof KubeApiError && err.status === 404) {
        throw markRetryable(new Error(`node "${this.nodeName}" is not registered with the API server (yet?); check --node-name / NODE_NAME`, { cause: err }));
      }
      throw err;
    }
  }

  /**
   * The VtepMAC our Node's annotation carries for `vni` (undefined when there is none). The
   * daemon creates flannel.<VNI> with it after a reboot or a recreated device, so the FDB
   * entries peers hold for us stay valid (flannel #1795). While the API is unreachable it waits
   * (a random MAC then would break every peer's entry for us; exiting would leave the node to
   * kubelet's crash-loop backoff), retrying every 2 s until close(); other errors are thrown.
   */
  async previousVtepMAC(vni: number): Promise<string | undefined> {
    let lastErr = '';
    for (;;) {
      try {
        const node = await this.#getNode();
        if (lastErr) this.#log.info(`read node "${this.nodeName}": ok now`);
        return annotatedVtepMAC(node, { names: this.names, vni });
      } catch (err) {
        if (!isRetryable(err) || this.#signal.aborted) throw err;
        if (errText(err) !== lastErr) this.#log.warn(`reading our VTEP MAC annotation: ${errText(err)}; retrying every 2s`);
        lastErr = errText(err);
        await this.#clock.sleep(2000, this.#signal);
      }
    }
  }

  async listLeases(): Promise<{ leases: Lease[]; revision: string }> {
    const config = this.#config ?? (await this.getConfig());
    let list: V1NodeList;
    try {
      list = await this.#client.list();
    } catch (err) {
      this.#opts.onError?.(err);
      throw err;
    }
    const table = new NodeLeaseTable({ names: this.names, config, ownName: this.nodeName, ownSubnet: this.#own?.subnet });
    table.replace(list.items);
    return { leases: table.leases(), revision: list.metadata?.resourceVersion ?? '' };
  }

  /**
   * Our lease is the Node's podCIDR. Waits (until close() or `opts.signal`) while none is
   * assigned; throws {@link PodCIDRError} when it is unusable. Publishes `attrs` as annotations.
   */
  async acquireLease(config: NetworkConfig, attrs: LeaseAttrs, opts: { previous?: IPv4Net; ttlSeconds: number; signal?: AbortSignal }): Promise<Lease> {
    this.#config = config;
    const signal = opts.signal ? AbortSignal.any([opts.signal, this.#signal]) : this.#signal;
    let node = await this.#getNode();
    if (!podCIDRText(node)) {
      this.#log.warn(
        `node "${this.nodeName}" has no spec.podCIDR yet; is kube-controller-manager running with --allocate-node-cidrs ` +
          `(and --cluster-cidr ${formatCIDR(config.network)})? not ready until one is assigned`,
      );
      node = await this.#waitForPodCIDR(signal);
      this.#log.info(`node "${this.nodeName}" got podCIDR ${podCIDRText(node)}`);
    }
    const cidr = podCIDRText(node) ?? '';
    let subnet: IPv4Net;
    try {
      subnet = parsePodCIDR(cidr, config.network);
    } catch (cause) {
      throw new PodCIDRError(`node "${this.nodeName}": ${(cause as Error).message}; net-conf.json "Network" must contain every node's podCIDR (kube-controller-manager --cluster-cidr)`, { cause });
    }
    if (subnet.prefixLen !== config.subnetLen) {
      const file = this.#config && 'subnetLenFromFile' in this.#config ? this.#config.subnetLenFromFile : true;
      if (file) {
        throw new PodCIDRError(
          `node "${this.nodeName}": podCIDR ${cidr} is a /${subnet.prefixLen} but net-conf.json says "SubnetLen": ${config.subnetLen}; set it to ${subnet.prefixLen} or remove it`,
        );
      }
      // As flannel's kube mode: the podCIDRs' size is kube-controller-manager's
      // (--node-cidr-mask-size); peers are judged by it (the lease gate checks SubnetLen).
      this.#log.info(`subnet length /${subnet.prefixLen} from our podCIDR (net-conf.json sets no SubnetLen)`);
      config.subnetLen = subnet.prefixLen;
    }
    const publicIP = await this.#publish(node, attrs);
    this.#own = { subnet, attrs };
    return { subnet, publicIP, backendType: attrs.backendType, backendData: attrs.backendData };
  }

  /** Patches our annotations where they differ from `attrs`; returns the public IP peers use. */
  async #publish(node: NodeLike, attrs: LeaseAttrs): Promise<string> {
    const own = ownAnnotations(node, { names: this.names, attrs });
    if (own.badOverwrite !== undefined) {
      this.#log.warn(`ignoring annotation ${this.names.publicIPOverwrite}=${JSON.stringify(own.badOverwrite)}: not an IPv4 address`);
    } else if (own.publicIP !== attrs.publicIP) {
      this.#log.info(`public IP ${own.publicIP} from annotation ${this.names.publicIPOverwrite} (instead of ${attrs.publicIP})`);
    }
    if (own.patch) {
      try {
        await this.#client.patchStatus(this.nodeName, own.patch);
      } catch (err) {
        this.#opts.onError?.(err);
        throw err;
      }
      this.#log.info(`annotated node "${this.nodeName}"`, { changed: Object.keys(own.patch.metadata.annotations) });
    }
    return own.publicIP;
  }

  /** Watches our Node until it has a podCIDR, re-reading it every `podCIDRPollMs`. */
  async #waitForPodCIDR(signal: AbortSignal): Promise<V1Node> {
    const pollMs = this.#opts.podCIDRPollMs ?? 30_000;
    let lastErr = '';
    while (!signal.aborted) {
      let node: V1Node;
      try {
        node = await this.#getNode();
      } catch (err) {
        if (errText(err) !== lastErr) this.#log.warn(`waiting for podCIDR: ${errText(err)}`);
        lastErr = errText(err);
        await this.#clock.sleep(2000, signal);
        continue;
      }
      lastErr = '';
      if (podCIDRText(node)) return node;
      const seen = await this.#watchOwn(node.metadata?.resourceVersion, { signal, timeoutMs: pollMs });
      if (seen) return seen;
    }
    throw new Error(`stopped while waiting for node "${this.nodeName}" to get a podCIDR`);
  }

  /** One watch on our Node from `rv`; resolves with it once it has a podCIDR, else undefined. */
  #watchOwn(rv: string | undefined, opts: { signal: AbortSignal; timeoutMs: number }): Promise<V1Node | undefined> {
    return new Promise((resolve) => {
      let ctl: AbortController | undefined;
      let settled = false;
      const finish = (node?: V1Node) => {
        if (settled) return;
        settled = true;
        clearTimeout(timer);
        opts.signal.removeEventListener('abort', onAbort);
        ctl?.abort();
        resolve(node);
      };
      const onAbort = () => finish();
      const timer = setTimeout(() => finish(), opts.timeoutMs);
      opts.signal.addEventListener('abort', onAbort, { once: true });
      const params: Record<string, string> = { fieldSelector: `metadata.name=${this.nodeName}` };
      if (rv) params.resourceVersion = rv;
      new Watch(this.#opts.kc)
        .watch(
          '/api/v1/nodes',
          params,
          (type, obj: V1Node) => {
            if ((type === 'ADDED' || type === 'MODIFIED') && obj?.metadata?.name === this.nodeName && podCIDRText(obj)) finish(obj);
          },
          () => finish(),
        )
        .then((c) => {
          ctl = c;
          if (settled) c.abort();
        })
        .catch(() => finish());
    });
  }

  /** Nothing to renew: the podCIDR belongs to the Node for its lifetime. */
  async renewLease(lease: Lease, _attrs: LeaseAttrs, _opts: { ttlSeconds: number }): Promise<Lease> {
    return lease;
  }

  /** Sets NetworkUnavailable=False (reason WeftIsUp) on our Node, unless turned off. */
  async ready(lease: Lease): Promise<void> {
    if (this.#opts.setNodeNetworkUnavailable === false) return;
    const node = await this.#getNode();
    const patch = networkAvailablePatch(node, { now: new Date(this.#clock.now()), message: `weft is running on this node (subnet ${formatCIDR(lease.subnet)})` });
    if (!patch) return;
    try {
      await this.#client.patchStatus(this.nodeName, patch);
    } catch (err) {
      this.#opts.onError?.(err);
      throw err;
    }
    this.#log.info(`set node "${this.nodeName}" condition NetworkUnavailable=False`);
  }

  /** Our own Node changed: write our annotations back if someone removed or edited them. */
  #ownNodeChanged(node: V1Node): void {
    const own = this.#own;
    if (!own || !ownAnnotations(node, { names: this.names, attrs: own.attrs }).patch || this.#repairPending) return;
    this.#repairPending = true;
    this.#repairing = this.#repairing.then(async () => {
      this.#repairPending = false;
      if (this.#signal.aborted) return;
      try {
        const fresh = await this.#getNode();
        const res = ownAnnotations(fresh, { names: this.names, attrs: own.attrs });
        if (!res.patch) return;
        this.#log.warn(`our annotations on node "${this.nodeName}" were changed; writing them back`, { keys: Object.keys(res.patch.metadata.annotations) });
        await this.#publish(fresh, own.attrs);
      } catch (err) {
        this.#log.warn(`restore annotations on node "${this.nodeName}": ${errText(err)}`);
      }
    });
  }

  async watchLeases(signal: AbortSignal, handler: LeaseWatchHandler): Promise<void> {
    const config = this.#config ?? (await this.getConfig());
    // Our own Node's podCIDR changing under us (the Node deleted and registered again) ends the
    // watch with an error: the daemon exits and its restart takes the new subnet, instead of
    // peers routing the new podCIDR here while our pods sit in the old one.
    const moved = new AbortController();
    let movedErr: Error | undefined;
    const stop = AbortSignal.any([signal, this.#signal, moved.signal]);
    const log = this.#log;
    const table = new NodeLeaseTable({
      names: this.names,
      config,
      ownName: this.nodeName,
      ownSubnet: this.#own?.subnet,
      onInvalid: (node, why) => {
        log.warn(`ignoring node "${node}": ${why}`);
        this.#opts.onMalformedNode?.(node, why);
      },
      onPending: (n) => this.#opts.onUnannotatedNodes?.(n),
    });
    let synced = false;
    const emit = (events: LeaseEvent[]) => {
      if (!synced || stop.aborted) return;
      for (const ev of events) handler.event(ev);
    };
    const own = (n: V1Node) => n.metadata?.name === this.nodeName;
    const ownChanged = (n: V1Node) => {
      const now = podCIDRText(n);
      const was = this.#own ? formatCIDR(this.#own.subnet) : undefined;
      if (now && was && now !== was && !movedErr) {
        movedErr = new Error(`our node "${this.nodeName}"'s podCIDR changed from ${was} to ${now} (was the Node re-registered?); restarting to take the new one`);
        log.error(movedErr.message);
        moved.abort();
        return;
      }
      this.#ownNodeChanged(n);
    };

    await runNodeInformer(this.#opts.kc, {
      list: () => this.#client.list(),
      // An API server back on an emptied store: list it (our Node and peers re-registered
      // there are then seen, and annotated again) instead of watching from a version it lacks.
      currentVersion: async () => (await this.#client.list({ limit: 1 })).metadata?.resourceVersion,
      signal: stop,
      clock: this.#clock,
      log,
      backoffMs: this.#opts.restartBackoffMs,
      onError: (err) => this.#opts.onError?.(err),
      onList: (list) => {
        const events = table.replace(list.items);
        const mine = list.items.find(own);
        if (mine) ownChanged(mine);
        if (!synced) {
          synced = true;
          handler.snapshot(table.leases());
        } else {
          // Only after 410 Gone (or a failed list): worth a line, with what the watch had missed.
          log.info(`node list: re-listed ${list.items.length} node(s), ${events.length} change(s) since the watch stopped`);
          emit(events);
        }
      },
      onUpsert: (n) => {
        if (own(n)) ownChanged(n);
        else emit(table.upsert(n));
      },
      onDelete: (n) => {
        if (n.metadata?.name) emit(table.remove(n.metadata.name));
      },
    });
    if (movedErr) throw movedErr;
  }

  close(): void {
    this.#closed.abort();
  }
}

/**
 * What kube-controller-manager's node IPAM range allocator (`--allocate-node-cidrs
 * --cluster-cidr --node-cidr-mask-size`) does, for the lab's kube-subnet-manager mode: every Node
 * without `spec.podCIDR` gets the lowest free subnet of the cluster CIDR; a deleted Node's subnet
 * is released. It runs beside the API server, on the same store: a list, then a watch from the
 * listing's revision (relisting after compaction). Claims are etcd keys like the service IPs'
 * (alloc.ts), so a restart re-reads them; podCIDRs set by hand are claimed when seen.
 */
import type { Log } from '../../src/core/log.ts';
import { errText } from '../../src/core/errors.ts';
import { KeyAllocator } from './alloc.ts';
import { formatIPv4, parseCIDR } from './names.ts';
import type { KubeObject, Store } from './store.ts';

export interface NodeIpamOptions {
  clusterCIDR: string;
  /** Per-node prefix length (kube's default for IPv4 is 24). */
  nodeMaskSize?: number;
  log: Log;
}

const NODES = { group: '', resource: 'nodes' };

export class NodeIpam {
  readonly #store: Store;
  readonly #alloc: KeyAllocator;
  readonly #base: number;
  readonly #mask: number;
  readonly #log: Log;
  readonly #ac = new AbortController();
  #done: Promise<void> | undefined;

  constructor(store: Store, opts: NodeIpamOptions) {
    const c = parseCIDR(opts.clusterCIDR);
    const mask = opts.nodeMaskSize ?? 24;
    if (!c || mask < c.len || mask > 30 || mask - c.len > 16) throw new Error(`cluster CIDR "${opts.clusterCIDR}" with node mask /${mask}: need a network at most 16 bits shorter than the mask`);
    this.#store = store;
    this.#base = c.base;
    this.#mask = mask;
    this.#log = opts.log;
    this.#alloc = new KeyAllocator(store.client, { dir: `${store.prefix}/ranges/nodecidrs`, first: 0, last: 2 ** (mask - c.len) - 1, what: 'node CIDRs', sequential: true });
  }

  #cidr(i: number): string {
    return `${formatIPv4(this.#base + i * 2 ** (32 - this.#mask))}/${this.#mask}`;
  }

  #index(cidr: unknown): number | undefined {
    const c = parseCIDR(cidr);
    if (!c || c.len !== this.#mask) return undefined;
    const i = (c.base - this.#base) / 2 ** (32 - this.#mask);
    return Number.isInteger(i) && this.#alloc.contains(i) ? i : undefined;
  }

  start(): void {
    this.#done = this.#run(this.#ac.signal);
  }

  async stop(): Promise<void> {
    this.#ac.abort();
    await this.#done;
  }

  async #run(signal: AbortSignal): Promise<void> {
    while (!signal.aborted) {
      try {
        const { items, rev } = await this.#store.list(this.#store.dir(NODES));
        for (const it of items) await this.#handle(it.obj);
        await this.#watch(rev + 1n, signal);
      } catch (err) {
        if (!signal.aborted) this.#log.warn('node ipam: relisting', { err: errText(err) });
      }
      if (!signal.aborted) await new Promise((r) => setTimeout(r, 500));
    }
  }

  /** Resolves when the watch ends (error, compaction) or `signal` aborts. */
  #watch(from: bigint, signal: AbortSignal): Promise<void> {
    return new Promise((resolve) => {
      let chain = Promise.resolve();
      const w = this.#store.watch(this.#store.dir(NODES), from, {
        onEvents: (evs) => {
          // One event at a time, in order (a delete must not overtake the add before it).
          for (const ev of evs) {
            chain = chain
              .then(() => (ev.type === 'put' ? this.#handle(ev.obj) : this.#release(ev.obj)))
              .catch((err: unknown) => {
                this.#log.warn('node ipam: event failed', { err: errText(err) });
              });
          }
        },
        onEnd: (err) => {
          if (!signal.aborted) this.#log.info('node ipam: watch ended', { err: err.message });
          void chain.then(resolve);
        },
      });
      signal.addEventListener('abort', () => w.cancel(), { once: true });
    });
  }

  /** Claims a node's own podCIDR, or allocates and sets one. */
  async #handle(node: KubeObject): Promise<void> {
    const name = String(node.metadata.name);
    const spec = (node.spec ?? {}) as { podCIDR?: string };
    if (spec.podCIDR) {
      const i = this.#index(spec.podCIDR);
      if (i !== undefined) await this.#alloc.claim(i, name);
      return;
    }
    const i = await this.#alloc.allocate(name);
    const cidr = this.#cidr(i);
    const key = this.#store.key(NODES, undefined, name);
    for (let attempt = 0; attempt < 20; attempt++) {
      const cur = await this.#store.get(key);
      const curSpec = (cur?.obj.spec ?? {}) as { podCIDR?: string };
      if (!cur || curSpec.podCIDR) {
        await this.#alloc.release(i); // Gone, or someone else set one meanwhile.
        if (cur && curSpec.podCIDR) await this.#handle(cur.obj);
        return;
      }
      const obj = { ...cur.obj, spec: { ...curSpec, podCIDR: cidr, podCIDRs: [cidr] } };
      if ((await this.#store.update(key, obj, cur.rev)) !== undefined) {
        this.#log.info('node ipam: allocated pod CIDR', { node: name, podCIDR: cidr });
        return;
      }
    }
    await this.#alloc.release(i);
    throw new Error(`node ipam: set podCIDR of node "${name}": it kept changing`);
  }

  async #release(node: KubeObject): Promise<void> {
    const i = this.#index((node.spec as { podCIDR?: string } | undefined)?.podCIDR);
    if (i !== undefined) await this.#alloc.release(i);
  }
}

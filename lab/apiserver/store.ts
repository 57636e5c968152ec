/**
 * Objects in etcd, as kube-apiserver keeps them: one key per object under
 * `<prefix>/<group>/<resource>/[<namespace>/]<name>`, the JSON without `resourceVersion`, which
 * is the key's mod revision on the way out. Writes are compare-and-swap transactions on that
 * revision, so a stale writer gets a conflict instead of overwriting. Lists carry the store's
 * revision; watches are etcd watches from a revision, so history is etcd's (bounded by its
 * compaction).
 */
import type { Etcd3, IKeyValue, Watcher } from 'etcd3';
import type { Json } from './patch.ts';
import { gone } from './status.ts';

export type KubeObject = { [k: string]: Json } & { metadata: { [k: string]: Json } };

export interface Stored {
  obj: KubeObject;
  /** The key's mod revision: the object's resourceVersion. */
  rev: bigint;
}

export interface StoreEvent {
  type: 'put' | 'delete';
  /** The object after a put; the last stored object for a delete. */
  obj: KubeObject;
  /** The object before a put (undefined on create). */
  prev: KubeObject | undefined;
  rev: bigint;
}

export interface StoreWatch {
  cancel(): void;
}

/** Where a resource's keys live: `group/resource`, e.g. `core/nodes`. */
export interface KeySpace {
  group: string;
  resource: string;
}

export class Store {
  readonly client: Etcd3;
  readonly prefix: string;

  constructor(client: Etcd3, prefix = '/registry') {
    this.client = client;
    this.prefix = prefix.replace(/\/+$/, '');
  }

  /** The key prefix of a resource (and namespace, if given). */
  dir(ks: KeySpace, ns?: string): string {
    return `${this.prefix}/${ks.group || 'core'}/${ks.resource}/${ns ? `${ns}/` : ''}`;
  }

  key(ks: KeySpace, ns: string | undefined, name: string): string {
    return this.dir(ks, ns) + name;
  }

  /** The store's current revision. */
  async revision(): Promise<bigint> {
    const res = await this.client.get(`${this.prefix}/`).exec();
    return BigInt(res.header.revision);
  }

  async get(key: string): Promise<Stored | undefined> {
    const res = await this.client.get(key).exec();
    const kv = res.kvs[0];
    return kv ? decode(kv) : undefined;
  }

  /** Every object under `dir` and the revision the listing was taken at. */
  async list(dir: string, opts: { atRevision?: bigint } = {}): Promise<{ items: Stored[]; rev: bigint }> {
    const q = this.client.getAll().prefix(dir);
    if (opts.atRevision !== undefined) q.revision(opts.atRevision.toString());
    const res = await withGone(opts.atRevision, () => q.exec(), opts.atRevision?.toString());
    return { items: res.kvs.map(decode), rev: BigInt(res.header.revision) };
  }

  /** Creates `key`; undefined when it exists already. */
  async create(key: string, obj: KubeObject): Promise<bigint | undefined> {
    const res = await this.client
      .if(key, 'Create', '==', 0)
      .then(this.client.put(key).value(encode(obj)))
      .commit();
    return res.succeeded ? BigInt(res.header.revision) : undefined;
  }

  /** Replaces `key` if it is still at revision `rev`; undefined on a conflict (or when gone). */
  async update(key: string, obj: KubeObject, rev: bigint): Promise<bigint | undefined> {
    const res = await this.client
      .if(key, 'Mod', '==', rev.toString())
      .then(this.client.put(key).value(encode(obj)))
      .commit();
    return res.succeeded ? BigInt(res.header.revision) : undefined;
  }

  /** Deletes `key` if it is still at revision `rev`; the deletion's revision, or undefined. */
  async delete(key: string, rev: bigint): Promise<bigint | undefined> {
    const res = await this.client.if(key, 'Mod', '==', rev.toString()).then(this.client.delete().key(key)).commit();
    return res.succeeded ? BigInt(res.header.revision) : undefined;
  }

  /** Deletes everything under `dir` (a namespace's contents). */
  async deleteAll(dir: string): Promise<void> {
    await this.client.delete().prefix(dir).exec();
  }

  /**
   * Fails with 410 when revision `rev` has been compacted away (a watch from rev+1 would miss
   * events). A revision newer than the store's is fine: the watch waits for it.
   */
  async checkNotCompacted(rev: bigint): Promise<void> {
    if (rev <= 0n) return;
    const current = await this.revision();
    if (rev > current) return;
    await withGone(rev, () => this.client.get(`${this.prefix}/`).revision(rev.toString()).exec(), rev.toString());
  }

  /**
   * Watches `dir` from revision `from` (inclusive). `onEvents` gets each etcd batch in order;
   * `onEnd` is called once when the watch cannot go on: `gone` when `from` was compacted.
   */
  watch(dir: string, from: bigint, handlers: { onEvents(evs: StoreEvent[]): void; onEnd(err: Error): void }): StoreWatch {
    const watcher: Watcher = this.client.watch().prefix(dir).withPreviousKV().startRevision(from.toString()).watcher();
    let done = false;
    const end = (err: Error) => {
      if (done) return;
      done = true;
      watcher.removeAllListeners();
      watcher.on('error', () => undefined);
      watcher.cancel().catch(() => undefined);
      handlers.onEnd(err);
    };
    watcher.on('data', (res) => {
      if (done) return;
      const evs: StoreEvent[] = [];
      for (const ev of res.events) {
        const rev = BigInt(ev.kv.mod_revision);
        const prev = ev.prev_kv ? decode(ev.prev_kv).obj : undefined;
        if (ev.type === 'Put') evs.push({ type: 'put', obj: decode(ev.kv).obj, prev, rev });
        // A delete without the previous value (compacted meanwhile) cannot be told to clients.
        // The deleted object carries the deletion's revision, as kube-apiserver sends it.
        else if (prev) evs.push({ type: 'delete', obj: { ...prev, metadata: { ...prev.metadata, resourceVersion: String(rev) } }, prev, rev });
      }
      if (evs.length) handlers.onEvents(evs);
    });
    watcher.on('error', (err) => end(/compact/i.test(err.message) ? gone(from.toString()) : err));
    watcher.on('end', () => end(new Error('etcd watch ended')));
    return { cancel: () => end(new Error('cancelled')) };
  }
}

function encode(obj: KubeObject): string {
  const { resourceVersion: _, ...meta } = obj.metadata;
  return JSON.stringify({ ...obj, metadata: meta });
}

function decode(kv: IKeyValue): Stored {
  const obj = JSON.parse(kv.value.toString('utf8')) as KubeObject;
  obj.metadata = { ...obj.metadata, resourceVersion: String(kv.mod_revision) };
  return { obj, rev: BigInt(kv.mod_revision) };
}

async function withGone<T>(rev: bigint | undefined, fn: () => Promise<T>, rv: string | undefined): Promise<T> {
  try {
    return await fn();
  } catch (err) {
    if (rev !== undefined && /compacted/i.test((err as Error).message)) throw gone(rv ?? rev.toString());
    throw err;
  }
}

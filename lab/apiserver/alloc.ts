/**
 * Service cluster IPs and node ports, allocated as kube-apiserver does: out of a configured range,
 * each taken value recorded in etcd so two servers (or two requests) never hand out the same one.
 * One key per value (`<dir>/<value>`, created in a transaction) instead of kube's bitmap: simpler,
 * and the claim is atomic on its own.
 */
import { randomInt } from 'node:crypto';
import type { Etcd3 } from 'etcd3';

export class RangeFullError extends Error {
  constructor(what: string) {
    super(`range is full: no free ${what} left`);
    this.name = 'RangeFullError';
  }
}

export class KeyAllocator {
  readonly #client: Etcd3;
  readonly #dir: string;
  readonly #first: number;
  readonly #last: number;
  readonly #what: string;
  readonly #reserved: number[];
  readonly #sequential: boolean;

  /**
   * Values `first..last` (inclusive) under etcd directory `dir`; `reserved` ones are only handed
   * out when asked for by value (kube keeps the range's first IP for the `kubernetes` service).
   */
  constructor(client: Etcd3, opts: { dir: string; first: number; last: number; what: string; reserved?: number[]; sequential?: boolean }) {
    this.#client = client;
    this.#dir = opts.dir.replace(/\/?$/, '/');
    this.#first = opts.first;
    this.#last = opts.last;
    this.#what = opts.what;
    this.#reserved = opts.reserved ?? [];
    this.#sequential = opts.sequential ?? false;
  }

  contains(n: number): boolean {
    return n >= this.#first && n <= this.#last;
  }

  /** Claims `n` for `owner`; false when someone holds it. */
  async claim(n: number, owner: string): Promise<boolean> {
    const key = this.#dir + n;
    const res = await this.#client.if(key, 'Create', '==', 0).then(this.#client.put(key).value(owner)).commit();
    return res.succeeded;
  }

  async release(n: number): Promise<void> {
    await this.#client
      .delete()
      .key(this.#dir + n)
      .exec();
  }

  /**
   * Claims a free value: from a random start, as kube's service allocators pick, or the lowest
   * free one (`sequential`, as the node CIDR allocator hands out subnets in order).
   */
  async allocate(owner: string): Promise<number> {
    const size = this.#last - this.#first + 1;
    for (let attempt = 0; attempt < 5; attempt++) {
      const taken = new Set((await this.#client.getAll().prefix(this.#dir).keys()).map((k) => Number(k.slice(this.#dir.length))));
      for (const r of this.#reserved) taken.add(r);
      if (taken.size >= size) break;
      const start = this.#sequential ? 0 : randomInt(size);
      for (let i = 0; i < size; i++) {
        const n = this.#first + ((start + i) % size);
        if (taken.has(n)) continue;
        if (await this.claim(n, owner)) return n;
        break; // Lost a race: list again.
      }
    }
    throw new RangeFullError(this.#what);
  }
}

/** In-memory {@link Store} for unit tests, with the same claim semantics as the disk store. */
import type { Owner } from './allocator.ts';
import type { Allocation, Store } from './store.ts';

export class FakeStore implements Store {
  readonly held = new Map<number, Owner>();
  last: number | undefined;
  /** Set to make checkWritable fail. */
  readOnly = false;

  #tail: Promise<unknown> = Promise.resolve();
  /** Calls made while the lock was held, for tests. */
  lockedCalls = 0;

  async locked<T>(fn: () => Promise<T>): Promise<T> {
    const call = () => {
      this.lockedCalls++;
      return fn();
    };
    const run = this.#tail.then(call, call);
    this.#tail = run.catch(() => undefined);
    return run;
  }

  async reserve(ip: number, owner: Owner): Promise<boolean> {
    if (this.readOnly) throw new Error('fake store is read-only');
    if (this.held.has(ip)) return false;
    this.held.set(ip, { ...owner });
    return true;
  }

  async release(ip: number): Promise<void> {
    this.held.delete(ip);
  }

  async releaseByOwner(owner: Owner): Promise<number[]> {
    return this.locked(async () => this.#releaseByOwner(owner));
  }

  #releaseByOwner(owner: Owner): number[] {
    const freed: number[] = [];
    for (const [ip, o] of this.held) {
      if (o.containerID === owner.containerID && o.ifname === owner.ifname) freed.push(ip);
    }
    for (const ip of freed) this.held.delete(ip);
    return freed;
  }

  async list(): Promise<Allocation[]> {
    return [...this.held].map(([ip, o]) => ({ ip, ...o }));
  }

  async lastReserved(): Promise<number | undefined> {
    return this.last;
  }

  async setLastReserved(ip: number): Promise<void> {
    this.last = ip;
  }

  async checkWritable(): Promise<void> {
    if (this.readOnly) throw new Error('fake store is read-only');
  }
}

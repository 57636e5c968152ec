/** Where allocations live. The disk store is host-local's format; the fake one is for unit tests. */
import type { Owner } from './allocator.ts';

export interface Allocation extends Owner {
  ip: number;
}

export interface Store {
  /**
   * Runs `fn` holding the store's exclusive lock (the disk store: host-local's flock on
   * `<dir>/lock`, so weft and host-local can share a store). Not reentrant: `fn` must not call
   * {@link releaseByOwner} or `locked` again.
   */
  locked<T>(fn: () => Promise<T>): Promise<T>;
  /** Claims `ip` for `owner` atomically; false when it is already held (by anyone). */
  reserve(ip: number, owner: Owner): Promise<boolean>;
  /** Frees `ip`; a no-op when it is not held. */
  release(ip: number): Promise<void>;
  /** Frees everything `owner` holds, under the lock; returns the freed addresses (empty when none). */
  releaseByOwner(owner: Owner): Promise<number[]>;
  list(): Promise<Allocation[]>;
  lastReserved(): Promise<number | undefined>;
  setLastReserved(ip: number): Promise<void>;
  /** Throws, saying why, when a reservation could not be written. */
  checkWritable(): Promise<void>;
}

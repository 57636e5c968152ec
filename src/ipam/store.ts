/** Where allocations live. The disk store is host-local's format; the fake one is for unit tests. */
import type { Owner } from './allocator.ts';

export interface Allocation extends Owner {
  ip: number;
}

export interface Store {
  /** Claims `ip` for `owner` atomically; false when it is already held (by anyone). */
  reserve(ip: number, owner: Owner): Promise<boolean>;
  /** Frees `ip`; a no-op when it is not held. */
  release(ip: number): Promise<void>;
  /** Frees everything `owner` holds; returns the freed addresses (empty when none). */
  releaseByOwner(owner: Owner): Promise<number[]>;
  list(): Promise<Allocation[]>;
  lastReserved(): Promise<number | undefined>;
  setLastReserved(ip: number): Promise<void>;
  /** Throws, saying why, when a reservation could not be written. */
  checkWritable(): Promise<void>;
}

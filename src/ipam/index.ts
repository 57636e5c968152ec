/** Pod IP address management: pick with the pure allocator, claim atomically in a store. */
import { formatIPv4 } from '../ip/ipv4.ts';
import { candidates, NoFreeAddressError, type Owner, type Range } from './allocator.ts';
import type { Store } from './store.ts';

export * from './allocator.ts';
export type { Allocation, Store } from './store.ts';

/** The owner already holds an address (host-local refuses duplicates too). */
export class DuplicateAllocationError extends Error {
  constructor(owner: Owner, ip: number) {
    super(`${formatIPv4(ip)} is already allocated to container "${owner.containerID}" interface "${owner.ifname}"`);
    this.name = 'DuplicateAllocationError';
  }
}

/**
 * Allocates an address for `owner`, holding the store's lock (host-local's), so the check that
 * the owner holds nothing yet and the claim are one step: two ADDs for one container get one
 * address. Each claim is also atomic on its own (a file that appears with its owner in it).
 * Throws {@link NoFreeAddressError} when exhausted.
 */
export async function allocate(store: Store, range: Range, owner: Owner): Promise<number> {
  return store.locked(() => allocateLocked(store, range, owner));
}

async function allocateLocked(store: Store, range: Range, owner: Owner): Promise<number> {
  const existing = await store.list();
  const mine = existing.find((a) => a.containerID === owner.containerID && a.ifname === owner.ifname);
  if (mine) throw new DuplicateAllocationError(owner, mine.ip);
  const taken = new Set(existing.map((a) => a.ip));
  for (const ip of candidates(range, await store.lastReserved())) {
    if (taken.has(ip)) continue;
    if (await store.reserve(ip, owner)) {
      try {
        await store.setLastReserved(ip);
      } catch (err) {
        await store.release(ip); // the caller never learns of an address it did not get
        throw err;
      }
      return ip;
    }
  }
  throw new NoFreeAddressError(range.subnet);
}

/** True when at least one address of the range is free. */
export async function hasFree(store: Store, range: Range): Promise<boolean> {
  const taken = new Set((await store.list()).map((a) => a.ip));
  for (const ip of candidates(range)) if (!taken.has(ip)) return true;
  return false;
}

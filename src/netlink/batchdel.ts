/**
 * Batches link deletions made at about the same time into one kernel unregistration
 * ({@link Netlink.linksDel}). Deleting a veth waits out an RCU grace period inside the request,
 * with the RTNL lock held, so a burst of pod DELs deleted one by one takes a grace period each
 * (~15-20 ms here), one after another; handed over together they share one. The fast path keeps
 * one per thread for the host ends of pod veths.
 */
import { isGone } from './errors.ts';
import type { Netlink } from './types.ts';

/** Most links per unregistration: bounds one request's time holding RTNL. */
const MAX_BATCH = 128;

export class LinkBatchDeleter {
  readonly #open: () => Netlink;
  #queue: Array<{ index: number; resolve: () => void; reject: (err: unknown) => void }> = [];
  #running = false;

  /** `open` gives a socket in the namespace the links live in (closed after each batch). */
  constructor(open: () => Netlink) {
    this.#open = open;
  }

  /** Deletes link `index` (gone already counts as done), with whatever else is asked meanwhile. */
  delete(index: number): Promise<void> {
    return new Promise((resolve, reject) => {
      this.#queue.push({ index, resolve, reject });
      if (this.#running) return;
      this.#running = true;
      // After the requests being read right now have asked too.
      setImmediate(() => void this.#drain());
    });
  }

  async #drain(): Promise<void> {
    try {
      while (this.#queue.length) {
        const batch = this.#queue.splice(0, MAX_BATCH);
        let nl: Netlink;
        try {
          nl = this.#open();
        } catch (err) {
          for (const b of batch) b.reject(err);
          continue;
        }
        try {
          if (batch.length > 1) {
            try {
              await nl.linksDel(batch.map((b) => b.index));
              for (const b of batch) b.resolve();
              continue;
            } catch {
              // each on its own below, with its own outcome
            }
          }
          for (const b of batch) {
            await nl.linkDel(b.index).then(b.resolve, (err) => (isGone(err) ? b.resolve() : b.reject(err)));
          }
        } finally {
          nl.close();
        }
      }
    } finally {
      this.#running = false;
    }
  }
}

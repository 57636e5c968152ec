/**
 * What the kernel holds on the VXLAN device (neighbors, FDB entries, main-table routes), kept up
 * to date from rtnetlink notifications (src/netlink/monitor.ts) between full dumps, so the event
 * path (drift.ts) can hand the planner (plan.ts) a {@link Dump} without asking the kernel.
 *
 * Seeding: each full reconcile pass dumps the kernel anyway (executor.ts). Events that arrive
 * while that dump is read may or may not be in it, so they are kept and applied again on top of
 * it ({@link KernelCache.beginDump}, {@link KernelCache.endDump}): applying an event the dump
 * already reflects changes nothing, and every later change comes as a later event. When events
 * were lost (the socket's queue overran) the cache is invalid until the next dump completes.
 */
import type { Fdb, Neigh, Route } from '../../netlink/index.ts';
import type { RtEvent } from '../../netlink/monitor.ts';
import type { Dump } from './plan.ts';

const RT_TABLE_MAIN = 254;

/** Events kept at most while a dump runs; more means something floods us: start over. */
const MAX_REPLAY = 100_000;

function fdbKey(f: Fdb): string {
  return `${f.mac}>${f.dst}`;
}

export class KernelCache {
  #index = 0;
  #valid = false;
  /** Events seen since the running dump started (undefined: no dump running, or it is void). */
  #replay: RtEvent[] | undefined;
  #dumping = false;
  readonly #neighs = new Map<string, Neigh>();
  readonly #fdbs = new Map<string, Fdb>();
  readonly #routes = new Map<string, Route>();

  /** Whether the contents match the kernel as far as the events received say. */
  get valid(): boolean {
    return this.#valid;
  }

  /** The device index the contents are of. */
  get index(): number {
    return this.#index;
  }

  /** A dump starts: keep the events from now on to apply again on top of it. */
  beginDump(): void {
    this.#dumping = true;
    this.#replay = [];
  }

  /**
   * The dump of device `index` is read: it becomes the contents, with the events received
   * meanwhile applied on top. Stays invalid when events were lost during the dump.
   */
  endDump(dump: Dump, index: number): void {
    const replay = this.#replay;
    this.#dumping = false;
    this.#replay = undefined;
    if (!replay) return;
    this.#index = index;
    this.#neighs.clear();
    this.#fdbs.clear();
    this.#routes.clear();
    for (const n of dump.neighs) if (n.index === index) this.#neighs.set(n.ip, n);
    for (const f of dump.fdbs) if (f.index === index) this.#fdbs.set(fdbKey(f), f);
    for (const r of dump.routes) if (r.index === index && (r.table ?? RT_TABLE_MAIN) === RT_TABLE_MAIN) this.#routes.set(r.dst, r);
    this.#valid = true;
    for (const ev of replay) this.apply(ev);
  }

  /** The dump failed: the contents stay what they were. */
  abortDump(): void {
    this.#dumping = false;
    this.#replay = undefined;
  }

  /** Events were lost: invalid until a dump started after this completes. */
  invalidate(): void {
    this.#valid = false;
    if (this.#dumping) this.#replay = undefined;
  }

  /**
   * Applies one event. Returns whether it changed a peer entry of the cached device (only
   * those are kept; link and address events are the caller's).
   */
  apply(ev: RtEvent): boolean {
    if (this.#replay) {
      if (this.#replay.length >= MAX_REPLAY) this.invalidate();
      else this.#replay.push(ev);
    }
    if (!this.#valid) return false;
    switch (ev.kind) {
      case 'neigh':
        if (ev.neigh.index !== this.#index) return false;
        if (ev.op === 'new') this.#neighs.set(ev.neigh.ip, ev.neigh);
        else this.#neighs.delete(ev.neigh.ip);
        return true;
      case 'fdb':
        if (ev.fdb.index !== this.#index) return false;
        if (ev.op === 'new') this.#fdbs.set(fdbKey(ev.fdb), ev.fdb);
        else this.#fdbs.delete(fdbKey(ev.fdb));
        return true;
      case 'route': {
        const r = ev.route;
        if ((r.table ?? RT_TABLE_MAIN) !== RT_TABLE_MAIN) return false;
        const had = this.#routes.get(r.dst);
        if (ev.op === 'new') {
          if (r.index !== this.#index) {
            // Another device's route to the same destination: ours, if any, stays.
            return false;
          }
          this.#routes.set(r.dst, r);
          return true;
        }
        // A deletion names the route it removed; only ours counts.
        if (!had || (r.index !== undefined && r.index !== this.#index)) return false;
        this.#routes.delete(r.dst);
        return true;
      }
      default:
        return false;
    }
  }

  neigh(ip: string): Neigh | undefined {
    return this.#valid ? this.#neighs.get(ip) : undefined;
  }

  /** The device's FDB entries for `mac`. */
  fdbsOf(mac: string): Fdb[] {
    const out: Fdb[] = [];
    if (!this.#valid) return out;
    for (const f of this.#fdbs.values()) if (f.mac === mac) out.push(f);
    return out;
  }

  route(dst: string): Route | undefined {
    return this.#valid ? this.#routes.get(dst) : undefined;
  }

  /** The contents as a planner dump. */
  dump(): Dump {
    return { neighs: [...this.#neighs.values()], fdbs: [...this.#fdbs.values()], routes: [...this.#routes.values()] };
  }
}

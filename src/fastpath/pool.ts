/**
 * A small pool of worker threads (./worker.ts) that run the fast path's CNI requests, each with
 * its own netlink sockets. rtnetlink does the kernel's work inside sendmsg (deleting a veth
 * waits for RCU), so on the main thread a burst of DELs would hold up everything else weftd
 * does: lease renewal, peer programming, /healthz. Results are those of the in-process handler:
 * the workers run the same code. Ordering per (containerID, ifname) stays the server's
 * (./server.ts), which hands a request over only after the previous one for it replied.
 */
import { existsSync, realpathSync } from 'node:fs';
import { dirname, join } from 'node:path';
import { Worker } from 'node:worker_threads';
import type { OwnNetwork } from '../cni/config.ts';
import type { CniReply, CniRequest } from './protocol.ts';
import type { CniHandler } from './server.ts';
import type { FromWorker, ToWorker, WorkerInit } from './worker.ts';

/** The worker's entry: the source file beside this one, or in a bundle the worker bundle beside it. */
export function workerFile(): string {
  // Bundles define `import.meta.dirname` as undefined (scripts/build.ts): dist/bin/weft-cni-worker.js.
  const sourceDir: string | undefined = import.meta.dirname;
  if (sourceDir) return join(sourceDir, 'worker.ts');
  const main = process.argv[1] ? realpathSync(process.argv[1]) : process.execPath;
  return join(dirname(main), 'weft-cni-worker.js');
}

export interface WorkerPool {
  handler: CniHandler;
  /** Terminates the workers; requests still running in them get an error reply. */
  close(): Promise<void>;
}

interface Slot {
  worker: Worker;
  pending: Map<number, (reply: CniReply) => void>;
  /** Replied requests whose background work (a veth deletion) is still running. */
  settling: Map<number, { resolve(): void; reject(err: Error): void }>;
  /** When it last had nothing to do (ms). */
  idleSince: number;
  /** Has sent its first message: loaded and listening. */
  ready: boolean;
}

export interface PoolOptions {
  network: OwnNetwork;
  /** Workers kept even when idle (0: none while nothing happens; each costs ~20 MiB). */
  min: number;
  /**
   * Most workers at once. A burst of DELs is bound by the kernel's wait for each veth to go
   * (RCU), which only overlaps across threads: more workers, shorter bursts, more memory.
   */
  max: number;
  /** Extra workers idle this long are stopped (default 60 s). */
  idleMs?: number;
  /**
   * Runs a request while no worker has loaded yet (the first after an idle spell), so it never
   * waits for a worker to start; without it such a request waits. One at a time: the rest of a
   * burst waits for the worker rather than hold up the main thread (rtnetlink's work happens
   * inside sendmsg, on the calling thread).
   */
  inline?: CniHandler;
  log?: (msg: string) => void;
}

/**
 * Starts `min` workers serving `network`, growing to `max` under load and back to `min` when
 * idle; throws when the worker file is missing.
 */
export function startWorkerPool(opts: PoolOptions): WorkerPool {
  const file = workerFile();
  if (!existsSync(file)) throw new Error(`cni worker "${file}" is missing`);
  const log = opts.log ?? (() => undefined);
  const min = Math.max(0, opts.min);
  const max = Math.max(min, opts.max, 1);
  const idleMs = opts.idleMs ?? 60_000;
  let seq = 0;
  let closing = false;
  let inlineBusy = false;
  const slots: Slot[] = [];
  const died = (msg: string): CniReply => ({
    code: 1,
    stdout: `${JSON.stringify({ cniVersion: '1.0.0', code: 999, msg: `weftd: cni worker ${msg}` })}\n`,
  });
  const spawn = (): Slot => {
    const init: WorkerInit = { network: opts.network };
    const worker = new Worker(file, { workerData: { weftCniWorker: init } });
    // Never what keeps weftd alive: it exits when its own work is done (after drain()).
    worker.unref();
    const slot: Slot = { worker, pending: new Map(), settling: new Map(), idleSince: Date.now(), ready: false };
    worker.on('message', (m: FromWorker | 'ready') => {
      if (m === 'ready') {
        slot.ready = true;
        return;
      }
      if ('settled' in m) {
        const s = slot.settling.get(m.id);
        slot.settling.delete(m.id);
        if (m.error) s?.reject(new Error(m.error));
        else s?.resolve();
        return;
      }
      const done = slot.pending.get(m.id);
      slot.pending.delete(m.id);
      if (!slot.pending.size) slot.idleSince = Date.now();
      const settled = m.more ? new Promise<void>((resolve, reject) => slot.settling.set(m.id, { resolve, reject })) : undefined;
      done?.(settled ? { ...m.reply, settled } : m.reply);
    });
    let gone = false;
    const fail = (why: string) => {
      if (gone) return;
      gone = true;
      for (const done of slot.pending.values()) done(died(why));
      slot.pending.clear();
      for (const s of slot.settling.values()) s.reject(new Error(`cni worker ${why}`));
      slot.settling.clear();
      const i = slots.indexOf(slot);
      if (i < 0) return; // retired on purpose
      slots.splice(i, 1);
      if (!closing) {
        log(`cni fast path: a worker ${why}; starting another`);
        if (slots.length < min) slots.push(spawn());
      }
    };
    worker.on('error', (err) => fail(`failed: ${err.message}`));
    worker.on('exit', (code) => fail(`exited (${code})`));
    return slot;
  };
  for (let i = 0; i < min; i++) slots.push(spawn());
  // Extra workers that sat idle go; the timer never keeps weftd alive.
  const reaper = setInterval(
    () => {
      const now = Date.now();
      for (const slot of [...slots]) {
        if (slots.length <= min) break;
        if (!slot.pending.size && !slot.settling.size && now - slot.idleSince > idleMs) {
          slots.splice(slots.indexOf(slot), 1);
          void slot.worker.terminate();
        }
      }
    },
    Math.min(idleMs, 5000),
  );
  reaper.unref();
  const handler: CniHandler = (req: CniRequest) =>
    new Promise<CniReply>((resolve) => {
      if (closing) return resolve(died('pool is closed'));
      const ready = slots.filter((x) => x.ready);
      if (!ready.length) {
        if (!slots.length) slots.push(spawn());
        if (opts.inline && !inlineBusy) {
          inlineBusy = true;
          return void opts
            .inline(req)
            .then(resolve, (err) => resolve(died(`inline: ${(err as Error).message}`)))
            .finally(() => {
              inlineBusy = false;
            });
        }
      }
      // The least busy loaded worker: one slow request (a veth delete, also one left running
      // after its reply) does not queue others behind it, and none waits for a worker still starting.
      const pool = ready.length ? ready : slots;
      const busy = (x: Slot) => x.pending.size + x.settling.size;
      const slot = pool.reduce((a, b) => (busy(b) < busy(a) ? b : a));
      // All busy: start another for the requests after this one.
      if (busy(slot) && slots.length < max && slots.every((x) => x.ready)) slots.push(spawn());
      const id = ++seq;
      slot.pending.set(id, resolve);
      slot.worker.postMessage({ id, req } satisfies ToWorker);
    });
  const close = async () => {
    closing = true;
    clearInterval(reaper);
    const all = slots.splice(0);
    await Promise.all(all.map((s) => s.worker.terminate()));
  };
  return { handler, close };
}

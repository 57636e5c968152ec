/**
 * The CNI fast path, for weftd: `startCniFastpath({ signal, log, network })` serves CNI requests
 * from the launcher (dist/bin/weft-fast, src/fastpath/launcher.c) on /run/weft/cni.sock, for
 * weftd's own network only, on worker threads (./pool.ts) so netlink never blocks weftd's loop.
 */
import { DEFAULTS, type OwnNetwork } from '../cni/config.ts';
import { cniHandler } from './handler.ts';
import { startWorkerPool, type WorkerPool } from './pool.ts';
import { DEFAULT_SOCKET, serveCni, type FastpathServer } from './server.ts';

export { DEFAULT_SOCKET, serveCni, type FastpathServer, type CniHandler } from './server.ts';
export { cniHandler, handleCniWith, type HandlerOptions } from './handler.ts';
export { startWorkerPool, type WorkerPool } from './pool.ts';

/**
 * Worker threads: none while no pod comes or goes (each costs ~13-20 MiB of RSS: weftd idles at
 * ~94 instead of ~100 MiB with 1000 peers), one started by the first request after an idle
 * spell (which itself runs on the main thread meanwhile), a second in a burst; idle ones stop
 * after 60 s. Measured here (50 pods through the launcher, 2 shared cores): with workers the main
 * thread's worst event-loop delay per second is ~10-15 ms instead of 30-60 ms, DEL bursts ~10%
 * shorter, ADD bursts the same.
 */
export const DEFAULT_WORKERS = { min: 0, max: 2 };

export interface StartOptions {
  path?: string;
  signal?: AbortSignal;
  log?: (msg: string) => void;
  warn?: (msg: string) => void;
  /** Fields left out are the CNI defaults (/run/flannel/subnet.env, /var/lib/cni/networks, cni0). */
  network?: Partial<OwnNetwork>;
  /** Worker threads running the requests (default {@link DEFAULT_WORKERS}); max 0 runs them on the main thread. */
  workers?: { min: number; max: number };
}

/**
 * Serves the real CNI handler on `path` (default /run/weft/cni.sock) until `signal` aborts.
 * weftd passes its --subnet-file, --cni-data-dir and --cni-bridge as `network`. On SIGTERM,
 * `await server.drain(ms)` before exiting lets requests in flight finish (and then stops the
 * workers).
 */
export async function startCniFastpath(opts: StartOptions = {}): Promise<FastpathServer> {
  const network: OwnNetwork = {
    subnetFile: opts.network?.subnetFile ?? DEFAULTS.subnetFile,
    dataDir: opts.network?.dataDir ?? DEFAULTS.dataDir,
    bridge: opts.network?.bridge ?? DEFAULTS.bridge,
  };
  const size = opts.workers ?? DEFAULT_WORKERS;
  let pool: WorkerPool | undefined;
  if (size.max > 0) {
    try {
      pool = startWorkerPool({ network, ...size, inline: cniHandler({ network }), log: opts.warn ?? opts.log });
      opts.log?.(`cni fast path: ${size.min ? `${size.min} to ${size.max} worker threads` : `up to ${size.max} worker threads, started on demand`}`);
    } catch (err) {
      (opts.warn ?? opts.log)?.(`cni fast path: no worker threads, serving on the main thread: ${(err as Error).message}`);
    }
  }
  let server: FastpathServer;
  try {
    server = await serveCni({ path: opts.path ?? DEFAULT_SOCKET, handler: pool?.handler ?? cniHandler({ network }), signal: opts.signal, log: opts.log, warn: opts.warn });
  } catch (err) {
    await pool?.close();
    throw err;
  }
  if (!pool) return server;
  const p = pool;
  return {
    ...server,
    path: server.path,
    async drain(ms) {
      const ok = await server.drain(ms);
      await p.close();
      return ok;
    },
  };
}

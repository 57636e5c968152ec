/**
 * The CNI fast path, for weftd: `startCniFastpath({ signal, log })` serves CNI requests from the
 * launcher (dist/bin/weft-fast, src/fastpath/launcher.c) on /run/weft/cni.sock, in-process.
 */
import { handleCni } from './handler.ts';
import { DEFAULT_SOCKET, serveCni, type FastpathServer } from './server.ts';

export { DEFAULT_SOCKET, serveCni, type FastpathServer, type CniHandler } from './server.ts';
export { handleCni, handleCniWith } from './handler.ts';

/** Serves the real CNI handler on `path` (default /run/weft/cni.sock) until `signal` aborts. */
export function startCniFastpath(opts: { path?: string; signal?: AbortSignal; log?: (msg: string) => void } = {}): Promise<FastpathServer> {
  return serveCni({ path: opts.path ?? DEFAULT_SOCKET, handler: handleCni, signal: opts.signal, log: opts.log });
}

/**
 * The CNI fast path, for weftd: `startCniFastpath({ signal, log, network })` serves CNI requests
 * from the launcher (dist/bin/weft-fast, src/fastpath/launcher.c) on /run/weft/cni.sock,
 * in-process, for weftd's own network only.
 */
import { DEFAULTS, type OwnNetwork } from '../cni/config.ts';
import { cniHandler } from './handler.ts';
import { DEFAULT_SOCKET, serveCni, type FastpathServer } from './server.ts';

export { DEFAULT_SOCKET, serveCni, type FastpathServer, type CniHandler } from './server.ts';
export { cniHandler, handleCniWith, type HandlerOptions } from './handler.ts';

/**
 * Serves the real CNI handler on `path` (default /run/weft/cni.sock) until `signal` aborts.
 * `network` fields left out are the CNI defaults (/run/flannel/subnet.env,
 * /var/lib/cni/networks, cni0); weftd passes its --subnet-file.
 */
export function startCniFastpath(
  opts: { path?: string; signal?: AbortSignal; log?: (msg: string) => void; warn?: (msg: string) => void; network?: Partial<OwnNetwork> } = {},
): Promise<FastpathServer> {
  const network: OwnNetwork = {
    subnetFile: opts.network?.subnetFile ?? DEFAULTS.subnetFile,
    dataDir: opts.network?.dataDir ?? DEFAULTS.dataDir,
    bridge: opts.network?.bridge ?? DEFAULTS.bridge,
  };
  return serveCni({ path: opts.path ?? DEFAULT_SOCKET, handler: cniHandler({ network }), signal: opts.signal, log: opts.log, warn: opts.warn });
}

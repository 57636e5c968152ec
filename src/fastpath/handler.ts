/**
 * The in-process CNI handler weftd serves on the fast path: the CNI skel (src/cni/skel.ts) with
 * the same real dependencies as the standalone `weft` binary (cmd/weft.ts), run per request
 * with that request's environment and stdin, output collected instead of written to fd 1/2.
 * Unlike the standalone binary, it serves one network only (weftd's own, {@link OwnNetwork}).
 */
import type { OwnNetwork } from '../cni/config.ts';
import type { Deps } from '../cni/plugin.ts';
import { systemDeps } from '../cni/deps.ts';
import { LinkBatchDeleter, openNetlink } from '../netlink/index.ts';
import { runSkel } from '../cni/skel.ts';
import type { CniHandler } from './server.ts';
import type { CniReply, CniRequest } from './protocol.ts';

export interface HandlerOptions {
  /** The only network served: requests naming another subnetFile, dataDir or bridge are refused. */
  network: OwnNetwork;
  /** Wraps the request's dependencies (the bench times netlink, IPAM and namespace calls; tests inject faults). */
  wrap?: (deps: Deps) => Deps;
}

/** The fast path's handler for `network`. */
export function cniHandler(opts: HandlerOptions): CniHandler {
  return (req) => handleCniWith(req, opts);
}

// One per thread (the main one, each worker): the DELs this thread serves delete their host veths
// together (src/netlink/batchdel.ts), after their replies.
let hostLinks: LinkBatchDeleter | undefined;

/** Runs one forwarded request through the CNI skel. */
export async function handleCniWith(req: CniRequest, opts: HandlerOptions): Promise<CniReply> {
  let stdout = '';
  let stderr = '';
  hostLinks ??= new LinkBatchDeleter(() => openNetlink());
  const retiring: Promise<void>[] = [];
  const retireHostLink = (index: number) =>
    void retiring.push(
      hostLinks!.delete(index).catch((err) => {
        throw new Error(`delete host veth ${index}`, { cause: err });
      }),
    );
  const deps = systemDeps({ network: opts.network, log: (msg) => (stderr += `${msg}\n`), retireHostLink });
  const code = await runSkel(
    {
      env: req.env,
      stdin: req.stdin,
      stdout: (text) => (stdout += text),
      stderr: (text) => (stderr += text),
    },
    opts.wrap ? opts.wrap(deps) : deps,
  );
  return retiring.length ? { code, stdout, stderr, settled: Promise.all(retiring).then(() => undefined) } : { code, stdout, stderr };
}

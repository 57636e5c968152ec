/**
 * The in-process CNI handler weftd serves on the fast path: the CNI skel (src/cni/skel.ts) with
 * the same real dependencies as the standalone `weft` binary (cmd/weft.ts), run per request
 * with that request's environment and stdin, output collected instead of written to fd 1/2.
 */
import type { Deps } from '../cni/plugin.ts';
import { systemDeps } from '../cni/deps.ts';
import { runSkel } from '../cni/skel.ts';
import type { CniHandler } from './server.ts';
import type { CniReply, CniRequest } from './protocol.ts';

/** Runs one forwarded request through the CNI skel. */
export function handleCni(req: CniRequest): Promise<CniReply> {
  return handleCniWith(req);
}

/**
 * {@link handleCni} with a hook that may wrap the request's dependencies (the bench uses it to
 * time netlink, IPAM and namespace calls separately).
 */
export async function handleCniWith(req: CniRequest, wrap: (deps: Deps) => Deps = (d) => d): Promise<CniReply> {
  let stdout = '';
  let stderr = '';
  const code = await runSkel(
    {
      env: req.env,
      stdin: req.stdin,
      stdout: (text) => (stdout += text),
      stderr: (text) => (stderr += text),
    },
    // The request's environment, not weftd's: its test hook (WEFT_TEST_FAIL_AFTER) is per call.
    wrap(systemDeps({ env: req.env, log: (msg) => (stderr += `${msg}\n`) })),
  );
  return { code, stdout, stderr };
}

handleCni satisfies CniHandler;

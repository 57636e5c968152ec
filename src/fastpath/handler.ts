/**
 * The in-process CNI handler weftd serves on the fast path: the CNI skel (src/cni/skel.ts) with
 * the same real dependencies as the standalone `weft` binary (cmd/weft.ts), run per request
 * with that request's environment and stdin, output collected instead of written to fd 1/2.
 */
import { readFileSync, writeFileSync } from 'node:fs';
import { DiskStore } from '../ipam/disk.ts';
import { openNetlink } from '../netlink/index.ts';
import { openNetns, withNetns, type NetNs } from '../netns/index.ts';
import type { Deps } from '../cni/plugin.ts';
import { runSkel } from '../cni/skel.ts';
import type { CniHandler } from './server.ts';
import type { CniReply, CniRequest } from './protocol.ts';

/** Writes `/proc/sys/<path>` synchronously while inside `netns` (it resolves per opener). */
function writeSysctl(path: string, value: string, netns?: NetNs): void {
  const file = `/proc/sys/${path}`;
  const write = () => {
    if (readFileSync(file, 'utf8').trim() !== value) writeFileSync(file, value);
  };
  if (netns) withNetns(netns, write);
  else write();
}

/** Dependencies for one request; `log` lines go to that request's stderr. */
function depsFor(req: CniRequest, log: (msg: string) => void): Deps {
  return {
    openNetlink: (netns) => openNetlink(netns ? { netns } : {}),
    openNetns,
    writeSysctl,
    store: (conf) => new DiskStore(conf.dataDir, conf.name),
    // Same test hook as the standalone binary, taken from the request's environment.
    failAfter: req.env.WEFT_TEST_FAIL_AFTER || undefined,
    log,
  };
}

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
    wrap(depsFor(req, (msg) => (stderr += `${msg}\n`))),
  );
  return { code, stdout, stderr };
}

handleCni satisfies CniHandler;

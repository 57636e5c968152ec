/**
 * The real system behind the CNI handlers: rtnetlink, namespaces, /proc/sys and the
 * host-local-format store. Shared by the standalone binary (cmd/weft.ts) and the in-daemon
 * fast path (src/fastpath), so both run exactly the same code against the kernel.
 */
import { DiskStore } from '../ipam/disk.ts';
import { openNetlink } from '../netlink/index.ts';
import { openNetns, setSysctl } from '../netns/index.ts';
import type { Deps } from './plugin.ts';

export function systemDeps(opts: { log: (msg: string) => void; env?: NodeJS.ProcessEnv }): Deps {
  return {
    openNetlink: (netns) => openNetlink(netns ? { netns } : {}),
    openNetns,
    writeSysctl: setSysctl,
    store: (conf) => new DiskStore(conf.dataDir, conf.name),
    // Honoured only when a test sets it; kubelet never does.
    failAfter: opts.env?.WEFT_TEST_FAIL_AFTER || undefined,
    log: opts.log,
  };
}

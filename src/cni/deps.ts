/**
 * The real system behind the CNI handlers: rtnetlink, namespaces, /proc/sys and the
 * host-local-format store. Shared by the standalone binary (cmd/weft.ts) and the in-daemon
 * fast path (src/fastpath), so both run exactly the same code against the kernel.
 */
import { DiskStore } from '../ipam/disk.ts';
import { openNetlink } from '../netlink/index.ts';
import { isOwnNetns, openNetns, setSysctl } from '../netns/index.ts';
import type { OwnNetwork } from './config.ts';
import { systemMasq } from './masq.ts';
import type { Deps } from './plugin.ts';

/**
 * The real dependencies. `network` confines requests to one network (weftd's fast path);
 * the standalone binary serves whatever configuration its runtime hands it.
 * Fault injection for tests wraps these (test/helpers/cni-faults.ts); nothing here reads a switch.
 */
export function systemDeps(opts: { log: (msg: string) => void; network?: OwnNetwork; retireHostLink?: (index: number) => void }): Deps {
  return {
    retireHostLink: opts.retireHostLink,
    openNetlink: (netns) => openNetlink(netns ? { netns } : {}),
    openNetns,
    isOwnNetns,
    writeSysctl: setSysctl,
    store: (conf) => new DiskStore(conf.dataDir, conf.name),
    masq: systemMasq,
    network: opts.network,
    log: opts.log,
  };
}

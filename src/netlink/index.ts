/** The netlink layer: `openNetlink()` gives a {@link Netlink} bound to a namespace. */
import { withNetns, type NetNs } from '../netns/index.ts';
import { createRtnl } from './rtnl.ts';
import type { Netlink } from './types.ts';

export * from './types.ts';
export * from './errors.ts';

/**
 * Opens an rtnetlink socket in `netns` (the caller's namespace when omitted). The socket is
 * created while the thread is switched, which binds it to that namespace for its lifetime.
 */
export function openNetlink(opts: { netns?: NetNs } = {}): Netlink {
  return opts.netns ? withNetns(opts.netns, createRtnl) : createRtnl();
}

/** The netlink layer: `openNetlink()` gives a {@link Netlink} bound to a namespace. */
import { withNetns, type NetNs } from '../netns/index.ts';
import { createRtnl } from './rtnl.ts';
import { LinkNotFoundError } from './errors.ts';
import type { Link, Netlink } from './types.ts';

export * from './types.ts';
export * from './errors.ts';
export { LinkBatchDeleter } from './batchdel.ts';

/**
 * Opens an rtnetlink socket in `netns` (the caller's namespace when omitted). The socket is
 * created while the thread is switched, which binds it to that namespace for its lifetime.
 */
export function openNetlink(opts: { netns?: NetNs } = {}): Netlink {
  return opts.netns ? withNetns(opts.netns, createRtnl) : createRtnl();
}

/** The link called `name`, or undefined when there is none (other errors still throw). */
export async function findLink(nl: Netlink, name: string): Promise<Link | undefined> {
  try {
    return await nl.linkByName(name);
  } catch (err) {
    if (err instanceof LinkNotFoundError) return undefined;
    throw err;
  }
}

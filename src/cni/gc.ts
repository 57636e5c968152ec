/**
 * GC: release every allocation, and its host veth, whose (containerID, ifname) is not among
 * the attachments the runtime says are still valid. The runtime never runs GC concurrently
 * with ADD or DEL on the same network; the store's lock covers host-local and other nodes'
 * tools sharing it anyway.
 */
import { formatIPv4 } from '../ip/ipv4.ts';
import { deleteVeth, masqMayBeSet } from './del.ts';
import { hostVethName, vethAlias, type Deps, type Request } from './plugin.ts';

export async function cmdGc(req: Request, deps: Deps): Promise<void> {
  const { conf } = req;
  const valid = new Set((conf.validAttachments ?? []).map((a) => `${a.containerID}\0${a.ifname}`));
  const validIds = new Set((conf.validAttachments ?? []).map((a) => a.containerID));
  const store = deps.store(conf);
  const masq = masqMayBeSet(conf);
  const host = deps.openNetlink();
  try {
    // One pass under host-local's lock: no ADD claims an address between the listing and the release.
    await store.locked(async () => {
      for (const a of await store.list()) {
        // Legacy host-local files hold only the container ID; unreadable ones (containerID '') are not ours.
        if (!a.containerID) continue;
        const keep = a.ifname === '' ? validIds.has(a.containerID) : valid.has(`${a.containerID}\0${a.ifname}`);
        if (keep) continue;
        // Only a veth labelled as this attachment's (or unlabelled): a name collision is another pod's.
        if (a.ifname) await deleteVeth(host, hostVethName(a.containerID, a.ifname), { owner: vethAlias(a.containerID, a.ifname) });
        if (masq) await deps.masq.remove(formatIPv4(a.ip));
        await store.release(a.ip);
        deps.log(`weft: gc released ${formatIPv4(a.ip)} of "${a.containerID}"/"${a.ifname}"`);
      }
    });
  } finally {
    host.close();
  }
}

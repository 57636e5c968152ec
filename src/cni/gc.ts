/**
 * GC: release every allocation, and its host veth, whose (containerID, ifname) is not among
 * the attachments the runtime says are still valid. The runtime never runs GC concurrently
 * with ADD or DEL on the same network.
 */
import { formatIPv4 } from '../ip/ipv4.ts';
import { deleteVeth } from './del.ts';
import { hostVethName, type Deps, type Request } from './plugin.ts';

export async function cmdGc(req: Request, deps: Deps): Promise<void> {
  const { conf } = req;
  const valid = new Set((conf.validAttachments ?? []).map((a) => `${a.containerID}\0${a.ifname}`));
  const validIds = new Set((conf.validAttachments ?? []).map((a) => a.containerID));
  const store = deps.store(conf);
  const host = deps.openNetlink();
  try {
    for (const a of await store.list()) {
      // Legacy host-local files hold only the container ID.
      const keep = a.ifname === '' ? validIds.has(a.containerID) : valid.has(`${a.containerID}\0${a.ifname}`);
      if (keep) continue;
      if (a.ifname) await deleteVeth(host, hostVethName(a.containerID, a.ifname));
      await store.release(a.ip);
      deps.log(`weft: gc released ${formatIPv4(a.ip)} of "${a.containerID}"/"${a.ifname}"`);
    }
  } finally {
    host.close();
  }
}

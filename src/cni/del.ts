/**
 * DEL: remove the veth pair (only one labelled as this attachment's) and release the address. Idempotent: a namespace, link or
 * allocation that is already gone counts as done, so DEL after a failed ADD, after the pod's
 * namespace vanished, or twice in a row succeeds. Needs neither the subnet file nor the pod's
 * namespace: the host veth's name derives from (containerID, ifname).
 * The link goes first, the allocation last: a crash in between leaves only an allocation,
 * which GC (or the next DEL) still finds. In weftd the link is set down and deleted in the
 * background (Deps.retireHostLink): a crash before that ends leaves a down veth labelled with
 * its owner, which the next DEL or GC deletes, as does the runtime's removal of the pod's
 * namespace.
 */
import { isGone, LinkNotFoundError, type Netlink } from '../netlink/index.ts';
import { formatIPv4 } from '../ip/ipv4.ts';
import type { NetConf } from './config.ts';
import { readSubnetFile } from './subnetfile.ts';
import { hostVethName, openPodNetns, vethAlias, type Deps, type Request } from './plugin.ts';

/**
 * Deletes link `name` when it is a veth and, with `owner`, when its alias is that owner's
 * ({@link vethAlias}) or empty (an ADD that died before labelling it); a veth labelled for
 * another pod, whose name merely collides, is left alone. Gone already is fine. With `retire`,
 * the link is set down here and handed over for deletion in the background. True when the
 * link was there and is deleted (or going).
 */
export async function deleteVeth(nl: Netlink, name: string, opts: { owner?: string; retire?: (index: number) => void } = {}): Promise<boolean> {
  try {
    const link = await nl.linkByName(name);
    if (link.kind !== undefined && link.kind !== 'veth') return false;
    if (opts.owner !== undefined && link.alias && link.alias !== opts.owner) return false;
    if (opts.retire) {
      // Down first: the pod is cut off before its address can be handed to another pod.
      await nl.linkSetDown(link.index);
      opts.retire(link.index);
    } else await nl.linkDel(link.index);
    return true;
  } catch (err) {
    if (err instanceof LinkNotFoundError || isGone(err)) return false;
    throw new Error(`delete veth "${name}"`, { cause: err });
  }
}

export async function cmdDel(req: Request, deps: Deps): Promise<void> {
  const { env, conf } = req;
  // Opened first: the node's own namespace as the "pod" is refused before anything is deleted.
  const pod = env.netns ? openPodNetns(deps, env.netns, { missingOk: true }) : undefined;
  try {
    const host = deps.openNetlink();
    let paired = false;
    try {
      paired = await deleteVeth(host, hostVethName(env.containerID, env.ifname), { owner: vethAlias(env.containerID, env.ifname), retire: deps.retireHostLink?.bind(deps) });
    } finally {
      host.close();
    }
    // The pod end goes with its host end; this covers a pod end left on its own.
    if (pod && !paired) {
      const nl = deps.openNetlink(pod);
      try {
        await deleteVeth(nl, env.ifname);
      } finally {
        nl.close();
      }
    }
  } finally {
    pod?.close();
  }
  const store = deps.store(conf);
  const owner = { containerID: env.containerID, ifname: env.ifname };
  // Before the release: once released, the address may be another pod's, element and all.
  if (masqMayBeSet(conf)) {
    for (const a of await store.list()) {
      if (a.containerID === owner.containerID && (a.ifname === owner.ifname || a.ifname === '')) await deps.masq.remove(formatIPv4(a.ip));
    }
  }
  await store.releaseByOwner(owner);
}

/**
 * Whether ADD may have set up per-pod masquerade (./masq.ts): the config says so, or weftd does
 * not masquerade; when the subnet file cannot tell, assume it may (removal is idempotent).
 */
export function masqMayBeSet(conf: NetConf): boolean {
  if (conf.ipMasq !== undefined) return conf.ipMasq;
  try {
    return !readSubnetFile(conf.subnetFile).ipMasq;
  } catch {
    return true;
  }
}

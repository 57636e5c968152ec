/**
 * DEL: remove the veth pair (only one labelled as this attachment's) and release the address. Idempotent: a namespace, link or
 * allocation that is already gone counts as done, so DEL after a failed ADD, after the pod's
 * namespace vanished, or twice in a row succeeds. Needs neither the subnet file nor the pod's
 * namespace: the host veth's name derives from (containerID, ifname).
 * The link goes first, the allocation last: a crash in between leaves only an allocation,
 * which GC (or the next DEL) still finds.
 */
import { isGone, LinkNotFoundError, type Netlink } from '../netlink/index.ts';
import { formatIPv4 } from '../ip/ipv4.ts';
import type { NetConf } from './config.ts';
import { readSubnetFile } from './subnetfile.ts';
import { hostVethName, openPodNetns, vethAlias, type Deps, type Request } from './plugin.ts';

/**
 * Deletes link `name` when it is a veth and, with `owner`, when its alias is that owner's
 * ({@link vethAlias}) or empty (an ADD that died before labelling it); a veth labelled for
 * another pod, whose name merely collides, is left alone. Gone already is fine.
 */
export async function deleteVeth(nl: Netlink, name: string, opts: { owner?: string; del?: (index: number) => Promise<void> } = {}): Promise<boolean> {
  try {
    const link = await nl.linkByName(name);
    if (link.kind !== undefined && link.kind !== 'veth') return false;
    if (opts.owner !== undefined && link.alias && link.alias !== opts.owner) return false;
    await (opts.del ? opts.del(link.index) : nl.linkDel(link.index));
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
    try {
      await deleteVeth(host, hostVethName(env.containerID, env.ifname), { owner: vethAlias(env.containerID, env.ifname), del: deps.deleteHostLink?.bind(deps) });
    } finally {
      host.close();
    }
    // The pair is normally gone with its host end; this covers a pod end left on its own.
    if (pod) {
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

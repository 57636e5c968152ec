/**
 * `weftctl check`: compares the kernel state of the node it runs on (its network namespace)
 * with what etcd says that state should be, judged by the same rules weftd's reconcile uses
 * (src/backend/vxlan/expected.ts: device `flannel.<VNI>` and, per peer lease, a permanent
 * neighbor, an FDB entry and an onlink route); plus entries on the device that no lease
 * accounts for (extra) and the subnet file the CNI plugin reads. Leases are judged by weftd's
 * lease gate (src/subnet/validate.ts, the same validateLeases over the same node facts): a
 * rejected lease is reported as such and not expected in the kernel. The iptables FORWARD accept
 * rules (src/rules/iptables.ts) are reported when the caller read them.
 *
 * Pure comparison ({@link compareState}) is separate from reading the kernel
 * ({@link readKernelState}) so it can be unit tested with plain objects.
 */
import { gatewayOf, parseSubnetEnvVars } from '../core/subnetenv.ts';
import { readFileSync } from 'node:fs';
import { addressFaults, deviceAddress, deviceFaults, fdbState, neighState, overlayMtu, routeState, VXLAN_OVERHEAD, type DeviceFault } from '../backend/vxlan/expected.ts';
import { peerFromLease, type Peer } from '../backend/vxlan/peers.ts';
import { formatCIDR, parseCIDR, type IPv4Net } from '../ip/ipv4.ts';
import { LinkNotFoundError, type Addr, type Fdb, type Link, type Neigh, type Netlink, type Route } from '../netlink/index.ts';
import type { Lease } from '../subnet/lease.ts';
import { nodeFacts, validateLeases } from '../subnet/validate.ts';
import type { CheckReport, Finding, NetworkSummary, NodeLease, PeerCheck, RejectedLeaseCheck } from './model.ts';

/** Everything `check` reads from this node. */
export interface KernelState {
  device?: Link;
  /** The device's parent (underlay) link, when it names one. */
  parent?: Link;
  addrs: Addr[];
  neighs: Neigh[];
  fdbs: Fdb[];
  /** Main-table routes through the device. */
  routes: Route[];
  /** Parsed subnet file; undefined when missing. `error` when unreadable. */
  subnetFile?: Record<string, string>;
  subnetFileError?: string;
  /** Every address and connected network of the node (the lease gate's facts); undefined: not read. */
  facts?: { ownAddresses: readonly string[]; connectedRoutes: readonly IPv4Net[] };
  /**
   * The iptables FORWARD accept rules: why they are not in place (`drift` undefined: they are),
   * or why they could not be read; undefined when not checked.
   */
  forward?: { drift: string | undefined } | { error: string };
}

/** Reads the device, its entries and the subnet file through `nl` (bound to the node's namespace). */
export async function readKernelState(nl: Netlink, device: string, subnetFile: string): Promise<KernelState> {
  const state: KernelState = { addrs: [], neighs: [], fdbs: [], routes: [] };
  try {
    state.subnetFile = Object.fromEntries(parseSubnetEnvVars(readFileSync(subnetFile, 'utf8')));
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code !== 'ENOENT') state.subnetFileError = (err as Error).message;
  }
  try {
    state.device = await nl.linkByName(device);
  } catch (err) {
    if (!(err instanceof LinkNotFoundError)) throw err;
    state.facts = nodeFacts(await nl.addrs(), await nl.routes());
    return state;
  }
  const idx = state.device.index;
  if (state.device.vxlan?.parentIndex) state.parent = await nl.linkByIndex(state.device.vxlan.parentIndex).catch(() => undefined);
  state.addrs = await nl.addrs(idx);
  state.neighs = await nl.neighs(idx);
  state.fdbs = await nl.fdbs(idx);
  const routes = await nl.routes();
  state.routes = routes.filter((r) => r.index === idx);
  state.facts = nodeFacts(await nl.addrs(), routes, { vxlanIndex: idx });
  return state;
}

/** The peer a lease makes (as the backend's peerFromLease does; the lease lists it with its VTEP IP). */
function peerOf(l: NodeLease, mac: string): Peer {
  return { subnet: parseCIDR(l.subnet), gateway: l.vtepIP, mac, publicIP: l.publicIP };
}

/** A device fault as `check` prints it, after the device's name. */
function describeFault(f: DeviceFault, parent: Link | undefined): string {
  switch (f.field) {
    case 'kind':
      return `is a ${f.found ?? 'unknown'} device, not vxlan`;
    case 'attributes':
      return 'has no readable vxlan attributes';
    case 'vni':
      return `VNI ${f.found}, network config says ${f.want}`;
    case 'port':
      return `UDP port ${f.found}, network config says ${f.want}`;
    case 'local':
      return `local ${f.found ?? '<none>'}, lease says ${f.want}`;
    case 'parentIndex':
      return `parent interface ${f.found ?? '<none>'}, expected ${f.want}`;
    case 'learning':
      return 'has learning on (weft programs FDB entries itself)';
    case 'mac':
      return `MAC ${f.found}, lease publishes ${f.want} (peers send to the lease's)`;
    case 'mtu':
      return `MTU ${f.found}, expected ${f.want} (${parent?.name} MTU ${parent?.mtu} - ${VXLAN_OVERHEAD})`;
    case 'down':
      return 'is down';
  }
}

/**
 * Compares `kernel` with the leases. `self` is this node's lease: the one whose PublicIP is the
 * device's local address, else the one matching the subnet file, else `publicIP` when given.
 */
export function compareState(opts: {
  kernel: KernelState;
  leases: NodeLease[];
  config: NetworkSummary;
  device: string;
  subnetFile: string;
  publicIP?: string;
  /** What the leases come from, for messages (default `etcd`). */
  against?: string;
}): CheckReport {
  const { kernel, leases, config, device } = opts;
  const findings: Finding[] = [];
  const add = (kind: Finding['kind'], object: string, detail: string, peer?: string) => findings.push({ kind, object, detail, peer });

  const localIP = opts.publicIP ?? kernel.device?.vxlan?.local;
  const fileSubnet = kernel.subnetFile?.FLANNEL_SUBNET;
  const mine = localIP ? leases.filter((l) => l.publicIP === localIP) : [];
  // A second lease carrying our address (a stale or forged one) must not pass for ours.
  const matchesFile = (l: NodeLease) => !!fileSubnet && gatewayOf(parseCIDR(l.subnet)) === fileSubnet;
  const onDevice = (l: NodeLease) => kernel.addrs.some((a) => a.ip === l.vtepIP);
  let self: NodeLease | undefined = mine.find(matchesFile) ?? mine.find(onDevice) ?? mine[0];
  if (!self && fileSubnet) self = leases.find(matchesFile);

  if (!self) {
    add('missing', 'lease', `no lease in ${opts.against ?? 'etcd'} for this node${localIP ? ` (public IP ${localIP})` : ''}`);
  }
  const dev = kernel.device;
  if (!dev) {
    add('missing', 'device', `${device} (vxlan VNI ${config.backend.vni}, UDP ${config.backend.port}${self ? `, local ${self.publicIP}` : ''})`);
  } else {
    const parent = kernel.parent;
    const want = { vni: config.backend.vni, port: config.backend.port, local: self?.publicIP, mac: self?.vtepMAC, mtu: parent && overlayMtu(parent.mtu) };
    for (const f of deviceFaults(dev, want)) add('wrong', 'device', `${device} ${describeFault(f, parent)}`);
    if (self) {
      const { missing, extra } = addressFaults(kernel.addrs, parseCIDR(self.subnet));
      if (missing) add('missing', 'address', `${deviceAddress(parseCIDR(self.subnet)).ip}/32 on ${device}`);
      for (const a of extra) add('extra', 'address', `${a.ip}/${a.prefixLen} on ${device}`);
    }
  }

  const sf = kernel.subnetFile;
  if (kernel.subnetFileError) add('wrong', 'subnet-file', `${opts.subnetFile}: ${kernel.subnetFileError}`);
  else if (!sf) add('missing', 'subnet-file', `${opts.subnetFile} (the CNI plugin cannot add pods until weftd writes it)`);
  else if (sf.WEFT_SUBNET_LOST) {
    // The lost form (src/core/subnetenv.ts): another node's lease holds our subnet.
    add(
      'wrong',
      'subnet-file',
      `subnet ${sf.WEFT_SUBNET_LOST} is lost to the node at ${sf.WEFT_SUBNET_HOLDER || 'an unknown address'}: weftd refuses new pods until it reclaims it, or moves once no pod is left on it`,
    );
  } else {
    if (sf.FLANNEL_NETWORK !== config.network) {
      add('wrong', 'subnet-file', `FLANNEL_NETWORK=${sf.FLANNEL_NETWORK ?? '<none>'}, network config says ${config.network}`);
    }
    if (self && sf.FLANNEL_SUBNET !== gatewayOf(parseCIDR(self.subnet))) {
      add('wrong', 'subnet-file', `FLANNEL_SUBNET=${sf.FLANNEL_SUBNET ?? '<none>'}, lease says ${gatewayOf(parseCIDR(self.subnet))}`);
    }
    if (dev && sf.FLANNEL_MTU !== String(dev.mtu)) add('wrong', 'subnet-file', `FLANNEL_MTU=${sf.FLANNEL_MTU ?? '<none>'}, ${device} MTU is ${dev.mtu}`);
  }

  const forward = kernel.forward;
  if (forward && 'error' in forward) add('wrong', 'forward-rules', `iptables FORWARD accept rules unreadable: ${forward.error}`);
  else if (forward?.drift) add('missing', 'forward-rules', `iptables FORWARD accept rules for ${config.network}: ${forward.drift}`);

  // weftd programs only the leases its gate accepts; judge the rest as it does.
  const verdict = judgeLeases(
    leases.filter((l) => l !== self),
    { kernel, config, self, localIP },
  );
  const rejected = verdict.rejected;
  for (const r of rejected) add('wrong', 'lease', `${r.subnet} (PublicIP ${r.publicIP}) is invalid, weftd ignores it: ${r.reason}`, r.subnet);

  const peers: PeerCheck[] = [];
  const others = verdict.accepted.map((a) => a.node);
  for (const { node: p, mac } of verdict.accepted) {
    const pc: PeerCheck = { subnet: p.subnet, publicIP: p.publicIP, vtepMAC: p.vtepMAC, neighbor: 'missing', fdb: 'missing', route: 'missing' };
    peers.push(pc);
    if (!dev) continue;
    const peer = peerOf(p, mac);
    const neigh = kernel.neighs.find((n) => n.ip === peer.gateway);
    pc.neighbor = neighState(neigh, peer);
    if (pc.neighbor === 'missing') add('missing', 'neighbor', `${peer.gateway} lladdr ${peer.mac} dev ${device} permanent`, p.subnet);
    if (pc.neighbor === 'wrong') {
      add('wrong', 'neighbor', `${peer.gateway} lladdr ${neigh!.mac}${neigh!.permanent ? '' : ' (not permanent)'}, lease says ${peer.mac}`, p.subnet);
    }
    const fdbs = kernel.fdbs.filter((f) => f.mac === peer.mac);
    pc.fdb = fdbState(fdbs, peer);
    if (pc.fdb === 'missing') add('missing', 'fdb', `${peer.mac} dst ${peer.publicIP} dev ${device}`, p.subnet);
    if (pc.fdb === 'wrong') add('wrong', 'fdb', `${peer.mac} dst ${fdbs.map((f) => f.dst).join(', ')}, lease says ${peer.publicIP}`, p.subnet);
    const route = kernel.routes.find((r) => r.dst === formatCIDR(peer.subnet));
    pc.route = routeState(route, peer);
    if (pc.route === 'missing') add('missing', 'route', `${p.subnet} via ${peer.gateway} dev ${device} onlink`, p.subnet);
    if (pc.route === 'wrong') {
      add('wrong', 'route', `${p.subnet} via ${route!.gateway ?? '<none>'}${route!.onlink ? ' onlink' : ''}, expected via ${peer.gateway} onlink`, p.subnet);
    }
  }

  // Entries for peers that are no longer in etcd (flannel never removes these: flannel#2554).
  const peerVtepIPs = new Set(others.map((p) => p.vtepIP));
  const peerMACs = new Set(verdict.accepted.map((a) => a.mac));
  const peerSubnets = new Set(others.map((p) => p.subnet));
  for (const n of kernel.neighs) if (!peerVtepIPs.has(n.ip)) add('extra', 'neighbor', `${n.ip} lladdr ${n.mac} dev ${device}`);
  for (const f of kernel.fdbs) if (!peerMACs.has(f.mac)) add('extra', 'fdb', `${f.mac} dst ${f.dst} dev ${device}`);
  for (const r of kernel.routes) if (!peerSubnets.has(r.dst)) add('extra', 'route', `${r.dst}${r.gateway ? ` via ${r.gateway}` : ''} dev ${device}`);

  return {
    self: self ? { publicIP: self.publicIP, subnet: self.subnet } : undefined,
    device,
    peers,
    rejected,
    ...(forward && {
      forward: 'error' in forward ? { state: 'unknown' as const, detail: forward.error } : forward.drift ? { state: 'drift' as const, detail: forward.drift } : { state: 'ok' as const },
    }),
    findings,
    consistent: findings.length === 0,
  };
}

/** A listed lease back in the subnet layer's shape (what the gate validates). */
function leaseOf(n: NodeLease): Lease {
  return { subnet: parseCIDR(n.subnet), publicIP: n.publicIP, backendType: n.backendType, backendData: n.backendData, modRevision: n.modRevision };
}

/** Splits the other nodes' leases as weftd's lease gate would on this node. */
function judgeLeases(
  leases: NodeLease[],
  at: { kernel: KernelState; config: NetworkSummary; self: NodeLease | undefined; localIP: string | undefined },
): { accepted: Array<{ node: NodeLease; mac: string }>; rejected: RejectedLeaseCheck[] } {
  const { kernel, config, self } = at;
  const byLease = new Map(leases.map((n) => [leaseOf(n), n]));
  const macs = new Map<Lease, string>();
  const result = validateLeases([...byLease.keys()], {
    config: { network: parseCIDR(config.network), subnetLen: config.subnetLen },
    ownSubnet: self && parseCIDR(self.subnet),
    ownAddresses: kernel.facts?.ownAddresses ?? (at.localIP ? [at.localIP] : []),
    connectedRoutes: kernel.facts?.connectedRoutes ?? [],
    ownMAC: kernel.device?.mac,
    vtepMAC: (l) => {
      const p = peerFromLease(l, config.backend.vni);
      if ('skip' in p) throw new Error(p.skip);
      macs.set(l, p.mac);
      return p.mac;
    },
  });
  return {
    accepted: result.accepted.map((l) => ({ node: byLease.get(l)!, mac: macs.get(l)! })),
    rejected: result.rejected.map((r) => ({ subnet: byLease.get(r.lease)!.subnet, publicIP: r.lease.publicIP, reason: r.reason })),
  };
}

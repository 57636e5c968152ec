/**
 * `weftctl check`: compares the kernel state of the node it runs on (its network namespace)
 * with what etcd says that state should be, judged by the same rules weftd's reconcile uses
 * (src/backend/vxlan/expected.ts: device `flannel.<VNI>` and, per peer lease, a permanent
 * neighbor, an FDB entry and an onlink route); plus entries on the device that no lease
 * accounts for (extra) and the subnet file the CNI plugin reads.
 *
 * Pure comparison ({@link compareState}) is separate from reading the kernel
 * ({@link readKernelState}) so it can be unit tested with plain objects.
 */
import { gatewayOf, parseSubnetEnvVars } from '../core/subnetenv.ts';
import { readFileSync } from 'node:fs';
import {
  addressFaults,
  deviceAddress,
  deviceFaults,
  deviceName,
  fdbState,
  neighState,
  overlayMtu,
  routeState,
  VXLAN_OVERHEAD,
  type DeviceFault,
} from '../backend/vxlan/expected.ts';
import type { Peer } from '../backend/vxlan/peers.ts';
import { formatCIDR, parseCIDR } from '../ip/ipv4.ts';
import { LinkNotFoundError, type Addr, type Fdb, type Link, type Neigh, type Netlink, type Route } from '../netlink/index.ts';
import { ConfigError } from '../subnet/config.ts';
import type { EtcdSubnetManager } from '../subnet/etcd.ts';
import { collectConfig, collectNodes } from './collect.ts';
import type { CheckReport, Finding, NetworkSummary, NodeLease, PeerCheck } from './model.ts';

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
    if (err instanceof LinkNotFoundError) return state;
    throw err;
  }
  const idx = state.device.index;
  if (state.device.vxlan?.parentIndex) state.parent = await nl.linkByIndex(state.device.vxlan.parentIndex).catch(() => undefined);
  state.addrs = await nl.addrs(idx);
  state.neighs = await nl.neighs(idx);
  state.fdbs = await nl.fdbs(idx);
  state.routes = (await nl.routes()).filter((r) => r.index === idx);
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
  let self = localIP ? leases.find((l) => l.publicIP === localIP) : undefined;
  if (!self && fileSubnet) self = leases.find((l) => gatewayOf(parseCIDR(l.subnet)) === fileSubnet);

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
  else {
    if (sf.FLANNEL_NETWORK !== config.network) {
      add('wrong', 'subnet-file', `FLANNEL_NETWORK=${sf.FLANNEL_NETWORK ?? '<none>'}, network config says ${config.network}`);
    }
    if (self && sf.FLANNEL_SUBNET !== gatewayOf(parseCIDR(self.subnet))) {
      add('wrong', 'subnet-file', `FLANNEL_SUBNET=${sf.FLANNEL_SUBNET ?? '<none>'}, lease says ${gatewayOf(parseCIDR(self.subnet))}`);
    }
    if (dev && sf.FLANNEL_MTU !== String(dev.mtu)) add('wrong', 'subnet-file', `FLANNEL_MTU=${sf.FLANNEL_MTU ?? '<none>'}, ${device} MTU is ${dev.mtu}`);
  }

  const peers: PeerCheck[] = [];
  const others = leases.filter((l) => l !== self);
  for (const p of others) {
    const pc: PeerCheck = { subnet: p.subnet, publicIP: p.publicIP, vtepMAC: p.vtepMAC, neighbor: 'missing', fdb: 'missing', route: 'missing' };
    peers.push(pc);
    if (!p.vtepMAC) {
      add('wrong', 'lease', `peer ${p.subnet} (${p.publicIP}) publishes no VtepMAC`, p.subnet);
      continue;
    }
    if (!dev) continue;
    const peer = peerOf(p, p.vtepMAC);
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
  const peerMACs = new Set(others.map((p) => p.vtepMAC));
  const peerSubnets = new Set(others.map((p) => p.subnet));
  for (const n of kernel.neighs) if (!peerVtepIPs.has(n.ip)) add('extra', 'neighbor', `${n.ip} lladdr ${n.mac} dev ${device}`);
  for (const f of kernel.fdbs) if (!peerMACs.has(f.mac)) add('extra', 'fdb', `${f.mac} dst ${f.dst} dev ${device}`);
  for (const r of kernel.routes) if (!peerSubnets.has(r.dst)) add('extra', 'route', `${r.dst}${r.gateway ? ` via ${r.gateway}` : ''} dev ${device}`);

  return {
    self: self ? { publicIP: self.publicIP, subnet: self.subnet } : undefined,
    device,
    peers,
    findings,
    consistent: findings.length === 0,
  };
}

/**
 * Runs the whole check on the node `nl` is bound to: reads the config and leases from etcd and
 * the kernel state, then compares. The device defaults to `flannel.<VNI>` from the config.
 */
export async function checkNode(
  mgr: EtcdSubnetManager,
  nl: Netlink,
  opts: { subnetFile: string; device?: string; publicIP?: string },
): Promise<CheckReport> {
  const config = await collectConfig(mgr);
  if (!config) throw new ConfigError(`no network config at "${mgr.prefix}/config": nothing to check against`);
  const { nodes } = await collectNodes(mgr);
  const device = opts.device ?? deviceName(config.backend.vni);
  const kernel = await readKernelState(nl, device, opts.subnetFile);
  return compareState({ kernel, leases: nodes, config, device, subnetFile: opts.subnetFile, publicIP: opts.publicIP });
}

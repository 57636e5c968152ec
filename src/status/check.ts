/**
 * `weftctl check`: compares the kernel state of the node it runs on (its network namespace)
 * with what etcd says that state should be, the way weftd programs it (reference.md section 3):
 * device `flannel.<VNI>` and, per peer lease, a permanent neighbor (peer VTEP IP -> VtepMAC),
 * an FDB entry (VtepMAC -> peer PublicIP) and an onlink route (peer subnet via VTEP IP); plus
 * entries for peers that are gone (extra) and the subnet file the CNI plugin reads.
 *
 * Pure comparison ({@link compareState}) is separate from reading the kernel
 * ({@link readKernelState}) so it can be unit tested with plain objects.
 */
import { readFileSync } from 'node:fs';
import { formatIPv4, parseCIDR } from '../ip/ipv4.ts';
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

/** Flannel's subnet.env: `KEY=VALUE` lines. */
export function parseSubnetEnv(text: string): Record<string, string> {
  const out: Record<string, string> = {};
  for (const line of text.split('\n')) {
    const m = /^\s*([A-Z_][A-Z0-9_]*)=(.*)$/.exec(line);
    if (m) out[m[1]!] = m[2]!.trim();
  }
  return out;
}

/** Reads the device, its entries and the subnet file through `nl` (bound to the node's namespace). */
export async function readKernelState(nl: Netlink, device: string, subnetFile: string): Promise<KernelState> {
  const state: KernelState = { addrs: [], neighs: [], fdbs: [], routes: [] };
  try {
    state.subnetFile = parseSubnetEnv(readFileSync(subnetFile, 'utf8'));
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

function gatewayOf(subnet: string): string {
  const n = parseCIDR(subnet);
  return `${formatIPv4(n.ip + 1)}/${n.prefixLen}`;
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
}): CheckReport {
  const { kernel, leases, config, device } = opts;
  const findings: Finding[] = [];
  const add = (kind: Finding['kind'], object: string, detail: string, peer?: string) => findings.push({ kind, object, detail, peer });

  const localIP = opts.publicIP ?? kernel.device?.vxlan?.local;
  const fileSubnet = kernel.subnetFile?.FLANNEL_SUBNET;
  let self = localIP ? leases.find((l) => l.publicIP === localIP) : undefined;
  if (!self && fileSubnet) self = leases.find((l) => gatewayOf(l.subnet) === fileSubnet);

  if (!self) {
    add('missing', 'lease', `no lease in etcd for this node${localIP ? ` (public IP ${localIP})` : ''}`);
  }
  const dev = kernel.device;
  if (!dev) {
    add('missing', 'device', `${device} (vxlan VNI ${config.backend.vni}, UDP ${config.backend.port}${self ? `, local ${self.publicIP}` : ''})`);
  } else {
    const vx = dev.vxlan;
    if (dev.kind !== 'vxlan' || !vx) add('wrong', 'device', `${device} is a ${dev.kind ?? 'unknown'} device, not vxlan`);
    else {
      if (vx.vni !== config.backend.vni) add('wrong', 'device', `${device} VNI ${vx.vni}, network config says ${config.backend.vni}`);
      if (vx.port !== config.backend.port) add('wrong', 'device', `${device} UDP port ${vx.port}, network config says ${config.backend.port}`);
      if (self && vx.local !== self.publicIP) add('wrong', 'device', `${device} local ${vx.local ?? '<none>'}, lease says ${self.publicIP}`);
      if (vx.learning) add('wrong', 'device', `${device} has learning on (weft programs FDB entries itself)`);
    }
    if (self?.vtepMAC && dev.mac !== self.vtepMAC) {
      add('wrong', 'device', `${device} MAC ${dev.mac}, lease publishes ${self.vtepMAC} (peers send to the lease's)`);
    }
    if (!dev.up) add('wrong', 'device', `${device} is down`);
    if (kernel.parent && dev.mtu !== kernel.parent.mtu - 50) {
      add('wrong', 'device', `${device} MTU ${dev.mtu}, expected ${kernel.parent.mtu - 50} (${kernel.parent.name} MTU ${kernel.parent.mtu} - 50)`);
    }
    if (self && !kernel.addrs.some((a) => a.ip === self.vtepIP && a.prefixLen === 32)) {
      add('missing', 'address', `${self.vtepIP}/32 on ${device}`);
    }
  }

  const sf = kernel.subnetFile;
  if (kernel.subnetFileError) add('wrong', 'subnet-file', `${opts.subnetFile}: ${kernel.subnetFileError}`);
  else if (!sf) add('missing', 'subnet-file', `${opts.subnetFile} (the CNI plugin cannot add pods until weftd writes it)`);
  else {
    if (sf.FLANNEL_NETWORK !== config.network) {
      add('wrong', 'subnet-file', `FLANNEL_NETWORK=${sf.FLANNEL_NETWORK ?? '<none>'}, network config says ${config.network}`);
    }
    if (self && sf.FLANNEL_SUBNET !== gatewayOf(self.subnet)) {
      add('wrong', 'subnet-file', `FLANNEL_SUBNET=${sf.FLANNEL_SUBNET ?? '<none>'}, lease says ${gatewayOf(self.subnet)}`);
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
    const neigh = kernel.neighs.find((n) => n.ip === p.vtepIP);
    pc.neighbor = !neigh ? 'missing' : neigh.mac === p.vtepMAC && neigh.permanent ? 'ok' : 'wrong';
    if (pc.neighbor === 'missing') add('missing', 'neighbor', `${p.vtepIP} lladdr ${p.vtepMAC} dev ${device} permanent`, p.subnet);
    if (pc.neighbor === 'wrong') {
      add('wrong', 'neighbor', `${p.vtepIP} lladdr ${neigh!.mac}${neigh!.permanent ? '' : ' (not permanent)'}, lease says ${p.vtepMAC}`, p.subnet);
    }
    const fdb = kernel.fdbs.find((f) => f.mac === p.vtepMAC);
    pc.fdb = !fdb ? 'missing' : fdb.dst === p.publicIP ? 'ok' : 'wrong';
    if (pc.fdb === 'missing') add('missing', 'fdb', `${p.vtepMAC} dst ${p.publicIP} dev ${device}`, p.subnet);
    if (pc.fdb === 'wrong') add('wrong', 'fdb', `${p.vtepMAC} dst ${fdb!.dst}, lease says ${p.publicIP}`, p.subnet);
    const route = kernel.routes.find((r) => r.dst === p.subnet);
    pc.route = !route ? 'missing' : route.gateway === p.vtepIP && route.onlink ? 'ok' : 'wrong';
    if (pc.route === 'missing') add('missing', 'route', `${p.subnet} via ${p.vtepIP} dev ${device} onlink`, p.subnet);
    if (pc.route === 'wrong') {
      add('wrong', 'route', `${p.subnet} via ${route!.gateway ?? '<none>'}${route!.onlink ? ' onlink' : ''}, expected via ${p.vtepIP} onlink`, p.subnet);
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
  const device = opts.device ?? `flannel.${config.backend.vni}`;
  const kernel = await readKernelState(nl, device, opts.subnetFile);
  return compareState({ kernel, leases: nodes, config, device, subnetFile: opts.subnetFile, publicIP: opts.publicIP });
}

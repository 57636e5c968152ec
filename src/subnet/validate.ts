/**
 * Lease validation, the one gate every lease passes before it reaches the backend, whichever
 * subnet manager (etcd, Kubernetes) produced it. A lease becomes a metric-0 onlink route, a
 * permanent neighbor and an FDB entry on every node, so one bad value (a key `1.0.0.0-8`, a
 * subnet over the underlay or over our own pods, a PublicIP of 127.0.0.1, a multicast VtepMAC)
 * can cut a node off. Pure: the caller supplies the node's facts ({@link LeaseContext}).
 *
 * A lease is accepted only when
 *   - its subnet is a network address inside Network with exactly SubnetLen;
 *   - it overlaps neither our subnet (unless it is our own lease: our subnet and our address),
 *     nor a connected route of this node (the underlay), nor holds one of our addresses;
 *   - its PublicIP is unicast (not 0.0.0.0/8, loopback, multicast, 240.0.0.0/4 or the broadcast
 *     address of a connected network) and not ours, unless it is our own lease;
 *   - its VtepMAC (when the backend has one) is unicast, not zero and not our device's;
 *   - no lease ranked before it holds the same subnet or the same VtepMAC;
 *   - fewer than the cap have been accepted before it.
 *
 * Overlap is by range: after the Network/SubnetLen check every remaining subnet is an aligned
 * block of one size, so two of them overlap exactly when their network addresses are equal (a
 * `198.18.1.0/25` never gets that far); our subnet and connected routes are compared with
 * {@link overlaps}.
 *
 * Who wins a conflict (same subnet, same VtepMAC, the cap), deterministically:
 *   1. a lease (by subnet key) this validator accepted before: the incumbent keeps its place, so
 *      a newcomer cannot push a working peer out, and renewals, which bump etcd's mod revision,
 *      do not flip the winner;
 *   2. then the lower etcd mod revision (written earlier; leases without one rank after);
 *   3. then the lower subnet address, then the PublicIP as text.
 * The first snapshot after a restart has no incumbents, so there rule 2 decides.
 */
import { broadcastOf, contains, formatCIDR, isIPv4, isMAC, maskOf, overlaps, parseCIDR, parseIPv4, type IPv4Net } from '../ip/ipv4.ts';
import { errText } from '../core/errors.ts';
import type { Addr, Route } from '../netlink/types.ts';
import type { NetworkConfig } from './config.ts';
import { leaseId, type Lease } from './lease.ts';
import type { LeaseEvent } from './manager.ts';

/** Most leases accepted whatever the Network's size (a /8 with /24 subnets has 65536). */
export const LEASE_HARD_CAP = 65_536;

/** What the node knows about itself; every field is read by the caller (netlink, the device). */
export interface LeaseContext {
  config: Pick<NetworkConfig, 'network' | 'subnetLen'>;
  /** Our leased subnet (undefined before we have one). */
  ownSubnet?: IPv4Net;
  /** Every IPv4 address on this node's interfaces. */
  ownAddresses: readonly string[];
  /**
   * This node's connected networks: routes without a gateway (scope link), e.g. the underlay.
   * Leave out the routes weft programs to peers; a default route (/0) is ignored.
   */
  connectedRoutes: readonly IPv4Net[];
  /** Our VTEP device's MAC (lower case), when there is one. */
  ownMAC?: string;
  /**
   * The lease's VtepMAC, undefined when its backend has none; throws when the backend data is
   * malformed (the backend's parser: the lease code never reads BackendData itself).
   */
  vtepMAC?: (lease: Lease) => string | undefined;
  /** Cap on accepted leases (default: the number of subnets in Network, at most {@link LEASE_HARD_CAP}). */
  maxLeases?: number;
}

export interface RejectedLease {
  lease: Lease;
  reason: string;
}

export interface LeaseValidation {
  /** In input order. */
  accepted: Lease[];
  /** In input order. */
  rejected: RejectedLease[];
}

/**
 * {@link LeaseContext.ownAddresses} and {@link LeaseContext.connectedRoutes} from the kernel's
 * address and route dumps (pure): every address; the gatewayless, non-default routes of the
 * main table, except those on `vxlanIndex` (weft's own device, whose routes are the peers).
 */
export function nodeFacts(addrs: readonly Addr[], routes: readonly Route[], opts: { vxlanIndex?: number } = {}): Pick<LeaseContext, 'ownAddresses' | 'connectedRoutes'> {
  const connectedRoutes: IPv4Net[] = [];
  for (const r of routes) {
    if (r.gateway || r.dst === '0.0.0.0/0' || (r.table !== undefined && r.table !== 254)) continue;
    if (r.index !== undefined && r.index === opts.vxlanIndex) continue;
    if (r.scope !== undefined && r.scope !== 'link') continue;
    try {
      connectedRoutes.push(parseCIDR(r.dst.includes('/') ? r.dst : `${r.dst}/32`));
    } catch {
      // not IPv4
    }
  }
  return { ownAddresses: addrs.map((a) => a.ip).filter(isIPv4), connectedRoutes };
}

/** The cap for `config`: the number of subnets in Network, at most {@link LEASE_HARD_CAP}. */
export function leaseCap(config: Pick<NetworkConfig, 'network' | 'subnetLen'>): number {
  const bits = config.subnetLen - config.network.prefixLen;
  return bits < 0 ? 0 : Math.min(2 ** bits, LEASE_HARD_CAP);
}

/** Why `ip` cannot be a peer's VXLAN endpoint (undefined: it can). */
export function publicIPProblem(ip: string, connected: readonly IPv4Net[] = []): string | undefined {
  if (!isIPv4(ip)) return 'is not an IPv4 address';
  const v = parseIPv4(ip);
  const top = v >>> 24;
  if (top === 0) return 'is in 0.0.0.0/8 (this network)';
  if (top === 127) return 'is loopback';
  if (top >= 224 && top < 240) return 'is multicast';
  if (v === 0xffffffff) return 'is the broadcast address';
  if (top >= 240) return 'is reserved (240.0.0.0/4)';
  const bcast = connected.find((n) => n.prefixLen > 0 && n.prefixLen < 31 && broadcastOf(n) === v);
  if (bcast) return `is the broadcast address of connected network ${formatCIDR(bcast)}`;
  return undefined;
}

/** Why `mac` cannot be a VTEP address (undefined: it can). */
export function vtepMACProblem(mac: string): string | undefined {
  if (!isMAC(mac)) return 'is not a MAC address';
  const lower = mac.toLowerCase();
  if (lower === 'ff:ff:ff:ff:ff:ff') return 'is the broadcast address';
  if (parseInt(lower.slice(0, 2), 16) & 1) return 'is multicast';
  if (lower === '00:00:00:00:00:00') return 'is zero';
  return undefined;
}

/** A value from outside for a log line: bounded, and quoted when it is not plain. */
function shown(text: string): string {
  const cut = text.length > 64 ? `${text.slice(0, 64)}...` : text;
  return /^[\w.:-]+$/.test(cut) ? cut : JSON.stringify(cut);
}

function isOwnLease(lease: Lease, ctx: LeaseContext): boolean {
  const own = ctx.ownSubnet;
  return !!own && lease.subnet.ip === own.ip && lease.subnet.prefixLen === own.prefixLen && ctx.ownAddresses.includes(lease.publicIP);
}

/** The checks that need no other lease; undefined when they pass. */
function ownProblem(lease: Lease, ctx: LeaseContext, out: { mac?: string }): string | undefined {
  const { network, subnetLen } = ctx.config;
  const s = lease.subnet;
  const cidr = formatCIDR(s);
  if (s.prefixLen < network.prefixLen || !contains(network, s.ip)) return `subnet ${cidr} is not inside network ${formatCIDR(network)}`;
  if (s.prefixLen !== subnetLen) return `subnet ${cidr} is not a /${subnetLen} (the network's SubnetLen)`;
  if ((s.ip & maskOf(s.prefixLen)) >>> 0 !== s.ip) return `subnet ${cidr} is not a network address`;
  const own = isOwnLease(lease, ctx);
  if (!own && ctx.ownSubnet && overlaps(s, ctx.ownSubnet)) return `subnet ${cidr} overlaps our subnet ${formatCIDR(ctx.ownSubnet)} (PublicIP ${shown(lease.publicIP)})`;
  // Our own lease overlaps cni0's route (our pods) by design.
  const route = own ? undefined : ctx.connectedRoutes.find((r) => r.prefixLen > 0 && overlaps(s, r));
  if (route) return `subnet ${cidr} overlaps connected route ${formatCIDR(route)}`;
  const addr = ctx.ownAddresses.find((a) => isIPv4(a) && contains(s, parseIPv4(a)));
  if (addr && !own) return `subnet ${cidr} holds this node's address ${addr}`;
  const ip = publicIPProblem(lease.publicIP, ctx.connectedRoutes);
  if (ip) return `PublicIP ${shown(lease.publicIP)} ${ip}`;
  if (!own && ctx.ownAddresses.includes(lease.publicIP)) return `PublicIP ${lease.publicIP} is this node's address`;
  let mac: string | undefined;
  try {
    mac = ctx.vtepMAC?.(lease);
  } catch (err) {
    return errText(err) || 'backend data unreadable';
  }
  if (mac !== undefined) {
    out.mac = mac.toLowerCase();
    const m = vtepMACProblem(mac);
    if (m) return `VtepMAC ${shown(mac)} ${m}`;
    if (!own && ctx.ownMAC && mac.toLowerCase() === ctx.ownMAC.toLowerCase()) return `VtepMAC ${mac} is our device's`;
  }
  return undefined;
}

function revision(lease: Lease): bigint | undefined {
  return lease.modRevision !== undefined && /^\d{1,20}$/.test(lease.modRevision) ? BigInt(lease.modRevision) : undefined;
}

/** One lease's own verdict: everything that does not depend on the other leases. */
export interface LeaseCheck {
  id: string;
  /** Why it fails on its own; undefined when it passes. */
  reason: string | undefined;
  /** Its VtepMAC, lower case, when it has one. */
  mac: string | undefined;
  revision: bigint | undefined;
}

function checkLease(lease: Lease, ctx: LeaseContext): LeaseCheck {
  const out: { mac?: string } = {};
  const reason = ownProblem(lease, ctx, out);
  return { id: leaseId(lease), reason, mac: out.mac, revision: revision(lease) };
}

interface Ranked {
  lease: Lease;
  check: LeaseCheck;
  incumbent: boolean;
}

/** Sort order for conflicts (see the module note): negative when `a` wins. */
function rank(x: Ranked, y: Ranked): number {
  if (x.incumbent !== y.incumbent) return x.incumbent ? -1 : 1;
  const rx = x.check.revision;
  const ry = y.check.revision;
  if (rx !== ry) {
    if (rx === undefined) return 1;
    if (ry === undefined) return -1;
    return rx < ry ? -1 : 1;
  }
  const a = x.lease;
  const b = y.lease;
  if (a.subnet.ip !== b.subnet.ip) return a.subnet.ip - b.subnet.ip;
  if (a.subnet.prefixLen !== b.subnet.prefixLen) return a.subnet.prefixLen - b.subnet.prefixLen;
  return a.publicIP < b.publicIP ? -1 : a.publicIP > b.publicIP ? 1 : 0;
}

/** Options of {@link validateLeases}. */
export interface ValidateOptions {
  /** Ids ({@link leaseId}) of leases accepted before: they win conflicts. */
  incumbents?: ReadonlySet<string>;
  /**
   * Per-lease verdicts kept between calls with the same context (a lease object is checked
   * once, then only ranked); {@link LeaseGate} keeps one and drops it when the context changes.
   */
  memo?: WeakMap<Lease, LeaseCheck>;
}

/**
 * Splits `leases` into accepted and rejected (with a reason each), deterministically: the result
 * does not depend on the input order.
 */
export function validateLeases(leases: readonly Lease[], ctx: LeaseContext, opts: ValidateOptions = {}): LeaseValidation {
  const incumbents = opts.incumbents ?? new Set<string>();
  const reasons = new Map<Lease, string>();
  const candidates: Ranked[] = [];
  for (const l of leases) {
    let check = opts.memo?.get(l);
    if (!check) {
      check = checkLease(l, ctx);
      opts.memo?.set(l, check);
    }
    if (check.reason !== undefined) reasons.set(l, check.reason);
    else candidates.push({ lease: l, check, incumbent: incumbents.has(check.id) });
  }
  candidates.sort(rank);
  const cap = ctx.maxLeases ?? leaseCap(ctx.config);
  const bySubnet = new Map<number, Lease>();
  const byMAC = new Map<string, Ranked>();
  let count = 0;
  for (const c of candidates) {
    const l = c.lease;
    const other = bySubnet.get(l.subnet.ip);
    if (other) {
      reasons.set(l, `subnet ${c.check.id} is also leased by PublicIP ${shown(other.publicIP)}, which ranks first`);
      continue;
    }
    const mac = c.check.mac;
    const twin = mac === undefined ? undefined : byMAC.get(mac);
    if (twin) {
      reasons.set(l, `VtepMAC ${mac} is also used by the lease for ${twin.check.id}, which ranks first`);
      continue;
    }
    if (count >= cap) {
      reasons.set(l, `over the cap of ${cap} leases`);
      continue;
    }
    count++;
    bySubnet.set(l.subnet.ip, l);
    if (mac !== undefined) byMAC.set(mac, c);
  }
  const out: LeaseValidation = { accepted: [], rejected: [] };
  for (const l of leases) {
    const reason = reasons.get(l);
    if (reason === undefined) out.accepted.push(l);
    else out.rejected.push({ lease: l, reason });
  }
  return out;
}

/** What a {@link LeaseGate} call hands on. */
export interface GateResult {
  /** The changes to the accepted table (the event path: pass each to the backend). */
  events: LeaseEvent[];
  /** Rejections not reported before (or whose reason changed): log one line each. */
  newlyRejected: RejectedLease[];
  /** How many leases are rejected now: the `weftd_invalid_leases` gauge. */
  invalid: number;
}

/** A {@link LeaseGate} result after a full table or a context change. */
export interface GateSnapshot extends GateResult {
  /** The accepted table, in input order (the snapshot path: pass it to the backend's snapshot). */
  accepted: Lease[];
}

/**
 * The stateful side of validation for the daemon's lease glue: it holds the raw lease table
 * (keyed by subnet, as the managers' events are), re-validates it whole after each snapshot,
 * event or context change (a lease's fate can depend on others: a conflict, the cap), and tells
 * the caller what changed in the accepted table. It remembers each rejected lease's reason, so
 * a lease is logged once when rejected, not on every resync, and again only if its reason
 * changes or it comes back after being accepted or deleted.
 */
export class LeaseGate {
  #ctx: LeaseContext;
  readonly #raw = new Map<string, Lease>();
  #accepted = new Map<string, Lease>();
  /** Accepted leases' VtepMACs -> lease id. */
  #macs = new Map<string, string>();
  #reported = new Map<string, string>();
  /** Rejected leases that pass on their own (a conflict or the cap): their fate depends on others. */
  #relational = 0;
  #memo = new WeakMap<Lease, LeaseCheck>();

  constructor(ctx: LeaseContext) {
    this.#ctx = ctx;
  }

  /** The number of leases rejected now. */
  get invalid(): number {
    return this.#reported.size;
  }

  /** A full table from the manager (first list, resync). */
  snapshot(leases: readonly Lease[]): GateSnapshot {
    this.#raw.clear();
    for (const l of leases) this.#raw.set(leaseId(l), l);
    return this.#run();
  }

  /**
   * One watch event. Re-validating the whole table costs O(n log n); while no lease is rejected
   * for a conflict or the cap, an event touches only its own lease and is decided in O(1) (with
   * the same result, see #fast), which keeps a new peer cheap on a large table.
   */
  event(ev: LeaseEvent): GateResult {
    const id = ev.type === 'put' ? leaseId(ev.lease) : formatCIDR(ev.subnet);
    if (ev.type === 'put') this.#raw.set(id, ev.lease);
    else this.#raw.delete(id);
    return (this.#relational === 0 && this.#fast(id, ev.type === 'put' ? ev.lease : undefined)) || this.#run();
  }

  /** The node's facts changed (our subnet, addresses, routes, device MAC): re-validate. */
  update(ctx: Partial<LeaseContext>): GateSnapshot {
    this.#ctx = { ...this.#ctx, ...ctx };
    this.#memo = new WeakMap();
    return this.#run();
  }

  #check(l: Lease): LeaseCheck {
    let c = this.#memo.get(l);
    if (!c) {
      c = checkLease(l, this.#ctx);
      this.#memo.set(l, c);
    }
    return c;
  }

  /**
   * The event path when nothing is rejected for a conflict or the cap. Every accepted lease is
   * an incumbent then and none shares a VtepMAC with another, so the full run would keep all of
   * them; only the changed lease needs deciding. Returns undefined (run in full) when the new
   * value would share an accepted lease's VtepMAC or exceed the cap.
   */
  #fast(id: string, lease: Lease | undefined): GateResult | undefined {
    const prev = this.#accepted.get(id);
    const check = lease ? this.#check(lease) : undefined;
    const reason = check?.reason;
    if (lease && check && reason === undefined) {
      const holder = check.mac === undefined ? undefined : this.#macs.get(check.mac);
      if (holder !== undefined && holder !== id) return undefined;
      if (this.#accepted.size - (prev ? 1 : 0) + 1 > (this.#ctx.maxLeases ?? leaseCap(this.#ctx.config))) return undefined;
    }
    const events: LeaseEvent[] = [];
    const newlyRejected: RejectedLease[] = [];
    if (prev) {
      this.#accepted.delete(id);
      const mac = this.#check(prev).mac;
      if (mac !== undefined && this.#macs.get(mac) === id) this.#macs.delete(mac);
    }
    if (lease && check && reason === undefined) {
      this.#accepted.set(id, lease);
      if (check.mac !== undefined) this.#macs.set(check.mac, id);
      this.#reported.delete(id);
      if (prev !== lease) events.push({ type: 'put', lease });
      return { events, newlyRejected, invalid: this.#reported.size };
    }
    if (prev) events.push({ type: 'delete', subnet: prev.subnet });
    if (lease && reason !== undefined) {
      if (this.#reported.get(id) !== reason) newlyRejected.push({ lease, reason });
      this.#reported.set(id, reason);
    } else {
      this.#reported.delete(id);
    }
    return { events, newlyRejected, invalid: this.#reported.size };
  }

  #run(): GateSnapshot {
    const entries = [...this.#raw];
    const result = validateLeases(
      entries.map(([, l]) => l),
      this.#ctx,
      { incumbents: new Set(this.#accepted.keys()), memo: this.#memo },
    );
    const ok = new Set(result.accepted);
    const why = new Map(result.rejected.map((r) => [r.lease, r.reason]));
    const next = new Map<string, Lease>();
    const macs = new Map<string, string>();
    const reported = new Map<string, string>();
    const newlyRejected: RejectedLease[] = [];
    let relational = 0;
    for (const [id, l] of entries) {
      const check = this.#check(l);
      if (ok.has(l)) {
        next.set(id, l);
        if (check.mac !== undefined) macs.set(check.mac, id);
        continue;
      }
      const reason = why.get(l) ?? 'rejected';
      if (check.reason === undefined) relational++;
      if (this.#reported.get(id) !== reason) newlyRejected.push({ lease: l, reason });
      reported.set(id, reason);
    }
    const events: LeaseEvent[] = [];
    for (const [id, l] of this.#accepted) if (!next.has(id)) events.push({ type: 'delete', subnet: l.subnet });
    for (const [id, l] of next) if (this.#accepted.get(id) !== l) events.push({ type: 'put', lease: l });
    this.#accepted = next;
    this.#macs = macs;
    this.#reported = reported;
    this.#relational = relational;
    return { accepted: result.accepted, events, newlyRejected, invalid: reported.size };
  }
}

/** One log line for a rejected lease. */
export function rejectionLine(r: RejectedLease): string {
  return `ignoring lease ${leaseId(r.lease)} (PublicIP ${shown(r.lease.publicIP)}): ${r.reason}`;
}

/**
 * The proxy's nftables ruleset (pure): {@link ProxyState} -> a {@link Ruleset} model -> `nft -f`
 * script text, for a full sync (the whole table) or a partial one (only what changed).
 *
 * Layout follows kube-proxy's nftables mode, in weft's own table `ip weft-proxy`:
 * - `nat-prerouting` / `nat-output` jump to `services`, which looks the packet up in the verdict
 *   map `service-ips` (`ipv4_addr . inet_proto . inet_service`) and, for a local destination
 *   address, in `service-nodeports`; each element jumps (`goto`) to a per-Service-port chain;
 * - a Service-port chain picks an endpoint with `numgen random mod N vmap {...}` (after the
 *   ClientIP-affinity lookups); an endpoint chain marks hairpin traffic for masquerade and DNATs;
 * - masquerade is kube-proxy's mark convention: `mark-for-masquerade` sets 0x4000 and
 *   `nat-postrouting` masquerades marked packets, clearing the bit, so weft's own masquerade
 *   table and this one agree on one meaning of that bit;
 * - Service ports with no usable endpoint are rejected (TCP reset, else ICMP port unreachable)
 *   from `filter-input` / `filter-forward` / `filter-output` through `no-endpoint-*` maps,
 *   because `reject` is not allowed in prerouting; unknown ports of a ClusterIP are rejected in
 *   `cluster-ips-check` after DNAT had its chance.
 *
 * Same-node endpoints: when client and endpoint hang off one bridge, the endpoint's reply is
 * bridged straight back to the client, never routed through the node, so conntrack never sees
 * it and the client gets a reply from the pod IP instead of the ClusterIP (and resets it). Two
 * cures: masquerade such traffic, or have bridged IPv4 frames traverse the ip hooks
 * (`br_netfilter`, `net.bridge.bridge-nf-call-iptables=1`, per network namespace on this
 * kernel). weft chooses br_netfilter: it keeps the client's source address (what NetworkPolicy,
 * access logs and `externalTrafficPolicy: Local` exist to preserve), it is what kubeadm's
 * preflight and every bridge-based CNI setup already require, and with it the DNAT of a
 * bridged frame is undone for the reply by conntrack like any routed flow. Masquerade stays for
 * the two cases that need it whatever the bridge does: hairpin (a pod reaching itself through
 * its Service; the bridge port also needs hairpin mode, which the CNI plugin sets) and traffic
 * from outside the cluster CIDR. The cost is that every bridged frame pays a conntrack lookup.
 *
 * Names: chains and sets are `<kind>-<HASH>-<ns>/<name>/<proto>/<port>[__<ip>/<port>]`, the hash
 * being the base32 SHA-256 of the identity (stable across restarts and versions), as kube-proxy
 * names its chains. Every part is validated (DNS labels, canonical IPv4, integers) before it gets
 * here, and {@link nftName} checks the whole name again, so no input string reaches nft text
 * unchecked; the only comment is a constant.
 *
 * Full sync: `add table` + a flush of every chain + the whole table + deletion of what the
 * kernel held beyond it, one transaction (refreshScript, ordered for the kernel's sake): no moment without rules, the base chains never
 * leave their hooks, and whatever someone else changed inside the table is gone. It also
 * empties the ClientIP affinity sets (sticky clients pick again once per full sync). Only with
 * no table yet, or after a declaration changed incompatibly, is the table replaced whole
 * (fullScript: `add table` + `delete table` + everything). Partial sync: flush and rewrite only chains whose rules changed, delete chains and sets nobody
 * references any more, and add or delete only the map elements that differ, in one transaction.
 */
import { hash } from 'node:crypto';
import { formatCIDR, formatIPv4, parseIPv4, type IPv4Net } from '../ip/ipv4.ts';
import type { ProxyEndpoint, ProxyState, ServicePortState } from './endpoints.ts';

export const PROXY_TABLE = 'weft-proxy';
/** kube-proxy's masquerade mark bit. */
export const MASQ_MARK = 0x4000;

export interface RulesetOptions {
  /** The pod network: ClusterIP traffic from outside it is masqueraded (kube-proxy's --cluster-cidr). */
  clusterCIDR?: IPv4Net;
  /**
   * Addresses NodePorts answer on. Unset: every local address but 127.0.0.0/8, matched with
   * `fib daddr type local` as kube-proxy does without --nodeport-addresses.
   */
  nodePortAddresses?: string[];
}

/** The ruleset as data: what a sync diffs and renders. */
export interface Ruleset {
  /** Table, base chains, helper chains, maps: everything that does not depend on Services. */
  frame: string[];
  /** Affinity sets: name -> declaration. */
  sets: Map<string, string>;
  /** Service-port, external, local and endpoint chains: name -> rules. */
  chains: Map<string, string[]>;
  /** Map and set elements: map name -> key -> value ("" for a plain set). */
  elements: Map<string, Map<string, string>>;
}

const T = `ip ${PROXY_TABLE}`;
const NAME = /^[a-zA-Z][a-zA-Z0-9/_.-]*$/;

/** Returns `s` when it is safe as an unquoted nft chain or set name; throws otherwise. */
export function nftName(s: string): string {
  if (s.length > 255 || !NAME.test(s)) throw new Error(`unsafe nft name "${s.slice(0, 80)}"`);
  return s;
}

function ip(s: string): string {
  return formatIPv4(parseIPv4(s));
}

function int(n: number, min: number, max: number): string {
  if (!Number.isInteger(n) || n < min || n > max) throw new Error(`number ${n} outside ${min}..${max}`);
  return String(n);
}

const B32 = 'ABCDEFGHIJKLMNOPQRSTUVWXYZ234567';

// Every sync rebuilds every name; the same names come back each time, so remember them
// (bounded: cleared when full, which only costs recomputing).
const hashMemo = new Map<string, string>();
const HASH_MEMO_MAX = 200_000;

/** The first 8 base32 characters of SHA-256(`s`), kube-proxy's `hashAndTruncate`. */
export function shortHash(s: string): string {
  const hit = hashMemo.get(s);
  if (hit !== undefined) return hit;
  const h = hash('sha256', s, 'buffer');
  let out = '';
  // 8 characters x 5 bits = the first 40 bits (5 bytes)
  const acc = h[0]! * 2 ** 32 + h[1]! * 2 ** 24 + h[2]! * 2 ** 16 + h[3]! * 2 ** 8 + h[4]!;
  for (let i = 7; i >= 0; i--) out += B32[Math.floor(acc / 2 ** (i * 5)) % 32];
  if (hashMemo.size >= HASH_MEMO_MAX) hashMemo.clear();
  hashMemo.set(s, out);
  return out;
}

function proto(p: ServicePortState['protocol']): string {
  return p === 'TCP' ? 'tcp' : p === 'UDP' ? 'udp' : 'sctp';
}

function spLabel(sp: ServicePortState): string {
  return `${sp.namespace}/${sp.name}/${proto(sp.protocol)}/${sp.portName || int(sp.port, 1, 65535)}`;
}

function chainName(kind: string, sp: ServicePortState, ep?: ProxyEndpoint): string {
  const label = ep ? `${spLabel(sp)}__${ip(ep.ip)}/${int(ep.port, 1, 65535)}` : spLabel(sp);
  return nftName(`${kind}-${shortHash(`${kind}/${label}`)}-${label}`);
}

/** The Service-port chain's name (cluster-wide endpoints). */
export function serviceChain(sp: ServicePortState): string {
  return chainName('svc', sp);
}

/** The chain over this node's endpoints (Local traffic policies). */
export function localChain(sp: ServicePortState): string {
  return chainName('local', sp);
}

/** The NodePort entry chain. */
export function externalChain(sp: ServicePortState): string {
  return chainName('ext', sp);
}

/** The endpoint chain for `ep` of `sp`. */
export function endpointChain(sp: ServicePortState, ep: ProxyEndpoint): string {
  return chainName('ep', sp, ep);
}

/** The ClientIP affinity set of `ep` of `sp` (its timeout is part of the identity). */
export function affinitySet(sp: ServicePortState, ep: ProxyEndpoint): string {
  const label = `${spLabel(sp)}__${ip(ep.ip)}/${int(ep.port, 1, 65535)}`;
  return nftName(`aff-${shortHash(`aff/${label}/${sp.affinitySeconds}`)}-${label}`);
}

function frame(opts: RulesetOptions): string[] {
  const npMatch = opts.nodePortAddresses ? 'ip daddr @nodeport-ips' : 'fib daddr type local ip daddr != 127.0.0.0/8';
  const lines = [
    `add table ${T} { comment "weft service proxy"; }`,
    `add set ${T} cluster-ips { type ipv4_addr; }`,
    `add map ${T} service-ips { type ipv4_addr . inet_proto . inet_service : verdict; }`,
    `add map ${T} service-nodeports { type inet_proto . inet_service : verdict; }`,
    `add map ${T} no-endpoint-services { type ipv4_addr . inet_proto . inet_service : verdict; }`,
    `add map ${T} no-endpoint-nodeports { type inet_proto . inet_service : verdict; }`,
  ];
  if (opts.nodePortAddresses) {
    const addrs = [...new Set(opts.nodePortAddresses.map(ip))].sort((a, b) => parseIPv4(a) - parseIPv4(b));
    lines.push(`add set ${T} nodeport-ips { type ipv4_addr; }`);
    if (addrs.length) lines.push(`add element ${T} nodeport-ips { ${addrs.join(', ')} }`);
  }
  const base: Array<[string, string]> = [
    ['filter-input', 'type filter hook input priority -110; policy accept;'],
    ['filter-forward', 'type filter hook forward priority -110; policy accept;'],
    ['filter-output', 'type filter hook output priority -110; policy accept;'],
    // after nat-output (-100): only traffic DNAT did not take is still addressed to a ClusterIP
    ['filter-output-post-dnat', 'type filter hook output priority -90; policy accept;'],
    ['nat-prerouting', 'type nat hook prerouting priority dstnat; policy accept;'],
    ['nat-output', 'type nat hook output priority -100; policy accept;'],
    ['nat-postrouting', 'type nat hook postrouting priority srcnat; policy accept;'],
  ];
  for (const [name, spec] of base) lines.push(`add chain ${T} ${name} { ${spec} }`);
  for (const name of ['mark-for-masquerade', 'masquerading', 'services', 'service-endpoints-check', 'nodeport-endpoints-check', 'cluster-ips-check', 'reject-chain']) {
    lines.push(`add chain ${T} ${name}`);
  }
  const mark = `0x${MASQ_MARK.toString(16)}`;
  const rules: Array<[string, string]> = [
    ['filter-input', 'ct state new jump nodeport-endpoints-check'],
    ['filter-input', 'ct state new jump service-endpoints-check'],
    ['filter-forward', 'ct state new jump service-endpoints-check'],
    ['filter-forward', 'ct state new jump cluster-ips-check'],
    ['filter-output', 'ct state new jump service-endpoints-check'],
    ['filter-output-post-dnat', 'ct state new jump cluster-ips-check'],
    ['nat-prerouting', 'jump services'],
    ['nat-output', 'jump services'],
    ['nat-postrouting', 'jump masquerading'],
    ['mark-for-masquerade', `meta mark set meta mark or ${mark}`],
    ['masquerading', `meta mark & ${mark} == 0 return`],
    ['masquerading', `meta mark set meta mark xor ${mark}`],
    ['masquerading', 'masquerade fully-random'],
    ['services', 'ip daddr . meta l4proto . th dport vmap @service-ips'],
    ['services', `${npMatch} meta l4proto . th dport vmap @service-nodeports`],
    ['service-endpoints-check', 'ip daddr . meta l4proto . th dport vmap @no-endpoint-services'],
    ['nodeport-endpoints-check', `${npMatch} meta l4proto . th dport vmap @no-endpoint-nodeports`],
    ['cluster-ips-check', 'ip daddr @cluster-ips goto reject-chain'],
    ['reject-chain', 'meta l4proto tcp reject with tcp reset'],
    ['reject-chain', 'reject'],
  ];
  for (const [chain, rule] of rules) lines.push(`add rule ${T} ${chain} ${rule}`);
  return lines;
}

function setElement(rs: Ruleset, map: string, key: string, value: string): void {
  const m = rs.elements.get(map);
  if (m) m.set(key, value);
  else rs.elements.set(map, new Map([[key, value]]));
}

/** A chain that picks one of `eps` (affinity first), or undefined when `eps` is empty. */
function pickRules(rs: Ruleset, sp: ServicePortState, eps: ProxyEndpoint[], pre: string[]): string[] {
  const rules = [...pre];
  if (sp.affinitySeconds !== undefined) {
    for (const ep of eps) rules.push(`ip saddr @${affinitySet(sp, ep)} goto ${endpointChain(sp, ep)}`);
  }
  const arms = eps.map((ep, i) => `${i} : goto ${endpointChain(sp, ep)}`);
  rules.push(`numgen random mod ${eps.length} vmap { ${arms.join(', ')} }`);
  // The vmap above is anonymous, bound to its rule. When a sync replaces the rule, the kernel
  // deactivates the old map's elements for the next generation, and a packet already walking the
  // old rules whose lookup runs after the commit finds no arm: without this it would leave the
  // chain un-DNATed and be rejected as an unknown ClusterIP port (1 connection in ~400 during
  // full syncs, in test/priv/proxy-traffic.test.ts). Never reached otherwise (mod N has N arms).
  rules.push(`goto ${endpointChain(sp, eps[0]!)}`);
  for (const ep of eps) addEndpoint(rs, sp, ep);
  return rules;
}

function addEndpoint(rs: Ruleset, sp: ServicePortState, ep: ProxyEndpoint): void {
  const name = endpointChain(sp, ep);
  if (rs.chains.has(name)) return;
  const addr = ip(ep.ip);
  const rules = [`ip saddr ${addr} jump mark-for-masquerade`];
  if (sp.affinitySeconds !== undefined) {
    const set = affinitySet(sp, ep);
    rs.sets.set(set, `{ type ipv4_addr; flags dynamic,timeout; timeout ${int(sp.affinitySeconds, 1, 86400)}s; }`);
    rules.push(`update @${set} { ip saddr }`);
  }
  rules.push(`meta l4proto ${proto(sp.protocol)} dnat to ${addr}:${int(ep.port, 1, 65535)}`);
  rs.chains.set(name, rules);
}

/** Adds one Service port's chains, sets and elements to `rs`. */
function addServicePort(rs: Ruleset, sp: ServicePortState, opts: RulesetOptions): void {
  const cip = ip(sp.clusterIP);
  const p = proto(sp.protocol);
  const port = int(sp.port, 1, 65535);
  const key = `${cip} . ${p} . ${port}`;
  setElement(rs, 'cluster-ips', cip, '');
  let svc: string | undefined;
  if (sp.clusterEndpoints.length) {
    svc = serviceChain(sp);
    const pre = opts.clusterCIDR && !sp.internalLocal ? [`ip daddr ${cip} ${p} dport ${port} ip saddr != ${formatCIDR(opts.clusterCIDR)} jump mark-for-masquerade`] : [];
    rs.chains.set(svc, pickRules(rs, sp, sp.clusterEndpoints, pre));
  }
  let local: string | undefined;
  if (sp.localEndpoints.length && (sp.internalLocal || (sp.externalLocal && sp.nodePort !== undefined))) {
    local = localChain(sp);
    rs.chains.set(local, pickRules(rs, sp, sp.localEndpoints, []));
  }
  const internal = sp.internalLocal ? local : svc;
  if (internal) setElement(rs, 'service-ips', key, `goto ${internal}`);
  else setElement(rs, 'no-endpoint-services', key, 'goto reject-chain');

  if (sp.nodePort === undefined) return;
  const npKey = `${p} . ${int(sp.nodePort, 1, 65535)}`;
  if (!svc) {
    setElement(rs, 'no-endpoint-nodeports', npKey, 'goto reject-chain');
    return;
  }
  const ext = externalChain(sp);
  if (!sp.externalLocal) {
    rs.chains.set(ext, ['jump mark-for-masquerade', `goto ${svc}`]);
  } else {
    // the node's own traffic to its NodePort has no client address worth keeping
    const rules = ['fib saddr type local jump mark-for-masquerade', `fib saddr type local goto ${svc}`];
    // no endpoint here: drop rather than reject, so a load balancer's health check moves on
    rules.push(local ? `goto ${local}` : 'drop');
    rs.chains.set(ext, rules);
  }
  setElement(rs, 'service-nodeports', npKey, `goto ${ext}`);
}

/** One Service port's share of a ruleset (what {@link addServicePort} adds). */
type Piece = Omit<Ruleset, 'frame'>;

// Every sync rebuilds the whole model, but between two syncs only a few Service ports change:
// keep each port's piece under the port's full description, so unchanged ports cost a lookup
// (and their chains are the same arrays, which diffRulesets compares by identity first). Two
// generations: a piece not used by the last build is dropped by the next, so the memo holds
// about one ruleset's worth. Only speed depends on it: a miss rebuilds the piece.
let pieces = new Map<string, Piece>();
let piecesBefore = new Map<string, Piece>();

// selectEndpoints hands back the same object for a Service port that did not change: found by
// identity, such a port costs neither the build nor the JSON key.
const byIdentity = new WeakMap<ServicePortState, { optsKey: string; piece: Piece }>();

function pieceOf(sp: ServicePortState, opts: RulesetOptions, optsKey: string, byValue = true): Piece {
  const same = byIdentity.get(sp);
  if (same && same.optsKey === optsKey) return same.piece;
  const piece = byValue ? pieceByValue(sp, opts, optsKey) : newPiece(sp, opts);
  byIdentity.set(sp, { optsKey, piece });
  return piece;
}

function newPiece(sp: ServicePortState, opts: RulesetOptions): Piece {
  const rs: Ruleset = { frame: [], sets: new Map(), chains: new Map(), elements: new Map() };
  addServicePort(rs, sp, opts);
  return rs;
}

function pieceByValue(sp: ServicePortState, opts: RulesetOptions, optsKey: string): Piece {
  const key = `${optsKey}\n${JSON.stringify(sp)}`;
  const piece = pieces.get(key) ?? piecesBefore.get(key) ?? newPiece(sp, opts);
  pieces.set(key, piece);
  return piece;
}

function optsKeyOf(opts: RulesetOptions): string {
  return opts.clusterCIDR ? formatCIDR(opts.clusterCIDR) : '';
}

/** Adds `piece` to `rs`; `refs` counts the pieces holding each element. */
function addPiece(rs: Ruleset, piece: Piece, refs?: Map<string, Map<string, number>>): void {
  for (const [name, decl] of piece.sets) rs.sets.set(name, decl);
  for (const [name, rules] of piece.chains) if (!rs.chains.has(name)) rs.chains.set(name, rules);
  for (const [map, m] of piece.elements) {
    for (const [k, v] of m) setElement(rs, map, k, v);
    if (refs) for (const k of m.keys()) bump(refs, map, k, 1);
  }
}

function bump(refs: Map<string, Map<string, number>>, map: string, key: string, by: number): number {
  const m = refs.get(map) ?? new Map<string, number>();
  refs.set(map, m);
  const n = (m.get(key) ?? 0) + by;
  m.set(key, n);
  return n;
}

function copy<V>(from: Map<string, V>, to: Map<string, V>, name: string): void {
  const v = from.get(name);
  if (v !== undefined) to.set(name, v);
}

function emptyRuleset(frame: string[]): Ruleset {
  return { frame, sets: new Map(), chains: new Map(), elements: new Map() };
}

/** Builds the ruleset model for `state` (pure: the memo only saves work). */
export function buildRuleset(state: ProxyState, opts: RulesetOptions = {}): Ruleset {
  const rs = emptyRuleset(frame(opts));
  piecesBefore = pieces;
  pieces = new Map();
  const optsKey = optsKeyOf(opts);
  for (const sp of state.ports) addPiece(rs, pieceOf(sp, opts, optsKey));
  piecesBefore = new Map();
  return rs;
}

/**
 * The part of the ruleset some Services change: `before` is what the whole ruleset holds of
 * their chains, sets and elements now, `after` what it will, so `diffRulesets(before, after)`
 * and `partialScript(before, after)` are those of the whole rulesets.
 */
export interface RulesetDelta {
  before: Ruleset;
  after: Ruleset;
  /** The Services' ports on each side, for the stale-conntrack decisions. */
  beforePorts: ServicePortState[];
  afterPorts: ServicePortState[];
  /** Their pieces after, and the element counts after, for {@link LiveRuleset.commit}. */
  pieces: Map<string, { ports: readonly ServicePortState[]; pieces: Piece[] }>;
  refs: Map<string, Map<string, number>>;
}

/**
 * A ruleset kept Service by Service: built whole for a full sync, then changed only where some
 * Services changed, so a partial sync costs what changed. Rebuilding and comparing the whole
 * model instead cost about 4 ms per change at 1000 Services x 10 endpoints (11k chains merged and
 * compared each time). Chains and sets belong to one Service port (their names say which); an
 * element may be in several pieces (every port of a ClusterIP adds it to `cluster-ips`), so each
 * is counted and goes only with its last piece.
 */
export class LiveRuleset {
  readonly rs: Ruleset;
  readonly #opts: RulesetOptions;
  readonly #optsKey: string;
  /** Service (namespace/name) -> its ports and their pieces. */
  readonly #services = new Map<string, { ports: readonly ServicePortState[]; pieces: Piece[] }>();
  /** map -> element key -> how many pieces hold it. */
  readonly #refs = new Map<string, Map<string, number>>();

  constructor(state: ProxyState, opts: RulesetOptions = {}) {
    this.#opts = opts;
    this.#optsKey = optsKeyOf(opts);
    this.rs = emptyRuleset(frame(opts));
    piecesBefore = pieces;
    pieces = new Map();
    for (const sp of state.ports) {
      const id = `${sp.namespace}/${sp.name}`;
      const svc = this.#services.get(id) ?? { ports: [], pieces: [] };
      this.#services.set(id, svc);
      const piece = pieceOf(sp, opts, this.#optsKey);
      (svc.ports as ServicePortState[]).push(sp);
      svc.pieces.push(piece);
      addPiece(this.rs, piece, this.#refs);
    }
    piecesBefore = new Map();
  }

  /** Both sides of replacing the ports of the Services in `changed` (id -> ports now). */
  delta(changed: ReadonlyMap<string, readonly ServicePortState[]>): RulesetDelta {
    const d: RulesetDelta = { before: emptyRuleset(this.rs.frame), after: emptyRuleset(this.rs.frame), beforePorts: [], afterPorts: [], pieces: new Map(), refs: new Map() };
    const counts = new Map<string, Map<string, number>>();
    for (const id of [...changed.keys()].sort()) {
      const old = this.#services.get(id);
      for (const piece of old?.pieces ?? []) {
        for (const name of piece.sets.keys()) copy(this.rs.sets, d.before.sets, name);
        for (const name of piece.chains.keys()) copy(this.rs.chains, d.before.chains, name);
        for (const [map, m] of piece.elements) for (const k of m.keys()) bump(counts, map, k, -1);
      }
      const ports = changed.get(id)!;
      // a changed port is new by value too: no JSON key for the by-value memo
      const next = ports.map((sp) => pieceOf(sp, this.#opts, this.#optsKey, false));
      for (const piece of next) addPiece(d.after, piece);
      for (const piece of next) for (const [map, m] of piece.elements) for (const k of m.keys()) bump(counts, map, k, 1);
      d.pieces.set(id, { ports, pieces: next });
      d.beforePorts.push(...(old?.ports ?? []));
      d.afterPorts.push(...ports);
    }
    // each touched element as the whole ruleset has it before and after
    for (const [map, m] of counts) {
      const now = this.rs.elements.get(map);
      const after = d.after.elements.get(map);
      for (const [k, by] of m) {
        const v = now?.get(k);
        if (v !== undefined) setElement(d.before, map, k, v);
        const n = (this.#refs.get(map)?.get(k) ?? 0) + by;
        bump(d.refs, map, k, n);
        // held by a Service that did not change (a ClusterIP with other ports): stays as it is
        if (n > 0 && after?.get(k) === undefined && v !== undefined) setElement(d.after, map, k, v);
      }
    }
    return d;
  }

  /** Makes `d` (from {@link delta}, nothing committed since) the ruleset. */
  commit(d: RulesetDelta): void {
    for (const name of d.before.sets.keys()) this.rs.sets.delete(name);
    for (const name of d.before.chains.keys()) this.rs.chains.delete(name);
    for (const [name, decl] of d.after.sets) this.rs.sets.set(name, decl);
    for (const [name, rules] of d.after.chains) this.rs.chains.set(name, rules);
    for (const [map, m] of d.refs) {
      const refs = this.#refs.get(map) ?? new Map<string, number>();
      this.#refs.set(map, refs);
      for (const [k, n] of m) {
        if (n > 0) {
          refs.set(k, n);
          setElement(this.rs, map, k, d.after.elements.get(map)!.get(k)!);
        } else {
          refs.delete(k);
          this.rs.elements.get(map)?.delete(k);
        }
      }
      // as a fresh build has it: no map without elements
      if (this.rs.elements.get(map)?.size === 0) this.rs.elements.delete(map);
      if (refs.size === 0) this.#refs.delete(map);
    }
    for (const [id, svc] of d.pieces) {
      if (svc.ports.length) this.#services.set(id, svc);
      else this.#services.delete(id);
    }
  }
}

function elementLines(verb: 'add' | 'delete', map: string, entries: Array<[string, string]>, withValues: boolean): string[] {
  const out: string[] = [];
  for (let i = 0; i < entries.length; i += 500) {
    const chunk = entries.slice(i, i + 500).map(([k, v]) => (withValues && v ? `${k} : ${v}` : k));
    out.push(`${verb} element ${T} ${map} { ${chunk.join(', ')} }`);
  }
  return out;
}

function sortedKeys<V>(m: Map<string, V>): string[] {
  return [...m.keys()].sort();
}

/** Names of the chains, sets and maps a table holds, as {@link tableNames} reads them. */
export interface TableNames {
  chains: Set<string>;
  sets: Set<string>;
  maps: Set<string>;
}

/**
 * The chain and set/map names of our table in `nft -j` listings: one `list table` document, or
 * the documents of `list chains`/`list sets`/`list maps` (undefined: no table).
 */
export function tableNames(json: string | undefined | readonly string[]): TableNames | undefined {
  if (json === undefined) return undefined;
  const out: TableNames = { chains: new Set(), sets: new Set(), maps: new Set() };
  for (const doc of typeof json === 'string' ? [json] : json) {
    for (const o of (JSON.parse(doc) as { nftables?: Array<Record<string, { name?: unknown; table?: unknown }>> }).nftables ?? []) {
      // `list chains ip` and friends name every ip table's objects: keep ours
      const obj = o.chain ?? o.set ?? o.map;
      if (!obj || typeof obj.name !== 'string' || (obj.table !== undefined && obj.table !== PROXY_TABLE)) continue;
      (o.chain ? out.chains : o.set ? out.sets : out.maps).add(obj.name);
    }
  }
  return out;
}

/** The names a ruleset declares (frame included), for the next {@link refreshScript}. */
export function rulesetNames(rs: Ruleset): TableNames {
  const out: TableNames = { chains: new Set(rs.chains.keys()), sets: new Set(rs.sets.keys()), maps: new Set() };
  for (const line of rs.frame) {
    const m = /^add (chain|set|map) \S+ \S+ (\S+)/.exec(line);
    if (m) (m[1] === 'chain' ? out.chains : m[1] === 'set' ? out.sets : out.maps).add(m[2]!);
  }
  return out;
}

/** True when a chain's rules hold an anonymous set (`numgen ... vmap { ... }`, pickRules). */
function bindsAnonymousSet(rules: readonly string[]): boolean {
  return rules.some((r) => r.includes(' vmap { '));
}

/**
 * The whole table rewritten in place, as one `nft -f` transaction: every chain `existing`
 * names is flushed (what `flush table` does), and `flush set`/`flush map` empty the frame's
 * sets and maps; then everything is declared and filled again, and what `existing` holds that
 * the ruleset no longer declares is deleted. Unlike {@link fullScript} the base chains stay
 * registered on their hooks throughout, so no packet meets a moment of hook churn (kube-proxy's
 * nftables mode syncs the same way). Fails where a declaration changed incompatibly (a newer
 * weft changed a map's type), or where `existing` names a chain the kernel lacks: then replace
 * the table.
 *
 * Order matters to the kernel's cost, not to the result. Each rule that binds an anonymous set
 * (the Service-port chains' `numgen` vmaps) makes nf_tables walk the whole transaction list so
 * far (`__nft_set_trans_bind`, 6.x): with `flush table` first (a transaction entry per rule and
 * per anonymous set of the old table, ~35k at 1000 Services x 10 endpoints) and the 10k
 * endpoint chains' rules before them, those 1000 walks were about two thirds of the commit's
 * CPU (perf, docs/benchmarks.md). So: declare only the chains the table lacks, then flush and
 * refill the chains with anonymous sets one by one while the list is still short, and only
 * then flush and refill everything else.
 */
export function refreshScript(rs: Ruleset, existing: TableNames): string {
  const want = rulesetNames(rs);
  const lines = [`add table ${T}`];
  const frameRules: string[] = [];
  const frameElements: string[] = [];
  for (const line of rs.frame) {
    if (line.startsWith('add rule ')) frameRules.push(line);
    else if (line.startsWith('add element ')) frameElements.push(line);
    else lines.push(line); // declarations: idempotent for what exists
  }
  for (const name of sortedKeys(rs.sets)) lines.push(`add set ${T} ${name} ${rs.sets.get(name)}`);
  const chains = sortedKeys(rs.chains);
  for (const name of chains) if (!existing.chains.has(name)) lines.push(`add chain ${T} ${name}`);
  const first = chains.filter((name) => bindsAnonymousSet(rs.chains.get(name)!));
  const firstSet = new Set(first);
  for (const name of first) {
    if (existing.chains.has(name)) lines.push(`flush chain ${T} ${name}`);
    for (const r of rs.chains.get(name)!) lines.push(`add rule ${T} ${name} ${r}`);
  }
  // every other chain the table holds, ours or not, wanted or not: as `flush table` would
  for (const name of [...existing.chains].sort()) if (!firstSet.has(name)) lines.push(`flush chain ${T} ${name}`);
  lines.push(...frameRules);
  for (const name of chains) if (!firstSet.has(name)) for (const r of rs.chains.get(name)!) lines.push(`add rule ${T} ${name} ${r}`);
  // `flush table` empties chains only (nft 1.0.6 keeps every set's elements): the frame's sets
  // and maps are emptied here and refilled below, so an element nobody wants (a deleted
  // Service's, someone else's) goes too. The ClientIP affinity sets (rs.sets) keep theirs.
  for (const name of [...existing.sets].sort()) if (want.sets.has(name) && !rs.sets.has(name)) lines.push(`flush set ${T} ${name}`);
  for (const name of [...existing.maps].sort()) if (want.maps.has(name)) lines.push(`flush map ${T} ${name}`);
  // after every flush: nothing references what goes any more
  // (maps and sets first: an element of a map that goes may still point at a chain that goes)
  for (const name of [...existing.maps].sort()) if (!want.maps.has(name)) lines.push(`delete map ${T} ${name}`);
  for (const name of [...existing.sets].sort()) if (!want.sets.has(name)) lines.push(`delete set ${T} ${name}`);
  for (const name of [...existing.chains].sort()) if (!want.chains.has(name)) lines.push(`delete chain ${T} ${name}`);
  lines.push(...frameElements, ...elementScript(rs));
  return `${lines.join('\n')}\n`;
}

function elementScript(rs: Ruleset): string[] {
  const lines: string[] = [];
  for (const map of sortedKeys(rs.elements)) {
    const m = rs.elements.get(map)!;
    lines.push(
      ...elementLines(
        'add',
        map,
        sortedKeys(m).map((k) => [k, m.get(k)!]),
        true,
      ),
    );
  }
  return lines;
}

/** The whole table, replacing whatever is there, as one `nft -f` transaction. */
export function fullScript(rs: Ruleset): string {
  const lines = [`add table ${T}`, `delete table ${T}`, ...rs.frame];
  for (const name of sortedKeys(rs.sets)) lines.push(`add set ${T} ${name} ${rs.sets.get(name)}`);
  const chains = sortedKeys(rs.chains);
  for (const name of chains) lines.push(`add chain ${T} ${name}`);
  // the rules that bind anonymous sets while the transaction is short (see refreshScript)
  const first = chains.filter((name) => bindsAnonymousSet(rs.chains.get(name)!));
  const firstSet = new Set(first);
  for (const name of [...first, ...chains.filter((c) => !firstSet.has(c))]) for (const r of rs.chains.get(name)!) lines.push(`add rule ${T} ${name} ${r}`);
  lines.push(...elementScript(rs));
  return `${lines.join('\n')}\n`;
}

function sameRules(a: string[] | undefined, b: string[] | undefined): boolean {
  if (a === b) return !!a;
  return !!a && !!b && a.length === b.length && a.every((r, i) => r === b[i]);
}

/** What a partial sync changes (for logs, metrics and tests). */
export interface RulesetDiff {
  addedChains: string[];
  changedChains: string[];
  removedChains: string[];
  addedSets: string[];
  removedSets: string[];
  /** Elements added or deleted, counted per map. */
  elementChanges: number;
}

/** The differences between two rulesets with the same frame. */
export function diffRulesets(prev: Ruleset, next: Ruleset): RulesetDiff {
  const d: RulesetDiff = { addedChains: [], changedChains: [], removedChains: [], addedSets: [], removedSets: [], elementChanges: 0 };
  // Walk the maps unsorted and sort only what differs: at 1000 Services x 10 endpoints there
  // are 11k chains, and sorting all their names on every sync cost more than the rest.
  for (const [name, rules] of next.chains) {
    const old = prev.chains.get(name);
    if (!old) d.addedChains.push(name);
    else if (!sameRules(old, rules)) d.changedChains.push(name);
  }
  for (const name of prev.chains.keys()) if (!next.chains.has(name)) d.removedChains.push(name);
  for (const [name, decl] of next.sets) if (prev.sets.get(name) !== decl) d.addedSets.push(name);
  for (const name of prev.sets.keys()) if (!next.sets.has(name)) d.removedSets.push(name);
  for (const list of [d.addedChains, d.changedChains, d.removedChains, d.addedSets, d.removedSets]) list.sort();
  for (const map of new Set([...prev.elements.keys(), ...next.elements.keys()])) {
    const a = prev.elements.get(map) ?? new Map<string, string>();
    const b = next.elements.get(map) ?? new Map<string, string>();
    for (const [k, v] of a) if (b.get(k) !== v) d.elementChanges++;
    for (const [k, v] of b) if (a.get(k) !== v) d.elementChanges++;
  }
  return d;
}

/** True when `prev` and `next` differ only in what a partial sync can change. */
export function canPartial(prev: Ruleset, next: Ruleset): boolean {
  if (prev.frame.length !== next.frame.length || !prev.frame.every((l, i) => l === next.frame[i])) return false;
  // a set whose declaration changed keeps its name only if the timeout is unchanged (it is
  // part of the name), so a same-named set with a new declaration means a bug: go full
  for (const [name, decl] of next.sets) if (prev.sets.has(name) && prev.sets.get(name) !== decl) return false;
  return true;
}

/**
 * The transaction that turns `prev` (what the kernel has) into `next`, touching only what
 * changed; "" when nothing did. Call only when {@link canPartial} holds. `d` is
 * `diffRulesets(prev, next)` when the caller has it already.
 */
export function partialScript(prev: Ruleset, next: Ruleset, d: RulesetDiff = diffRulesets(prev, next)): string {
  const lines: string[] = [];
  // 1. empty changed and doomed chains, so nothing references what step 3 deletes
  for (const name of [...d.changedChains, ...d.removedChains]) lines.push(`flush chain ${T} ${name}`);
  // 2. drop elements that go away or change value (a map key cannot be overwritten in place)
  const adds: Array<[string, Array<[string, string]>]> = [];
  for (const map of [...new Set([...prev.elements.keys(), ...next.elements.keys()])].sort()) {
    const a = prev.elements.get(map) ?? new Map<string, string>();
    const b = next.elements.get(map) ?? new Map<string, string>();
    const del = [...a.keys()].filter((k) => b.get(k) !== a.get(k)).sort();
    if (del.length)
      lines.push(
        ...elementLines(
          'delete',
          map,
          del.map((k) => [k, '']),
          false,
        ),
      );
    const add = [...b.keys()].filter((k) => a.get(k) !== b.get(k)).sort();
    if (add.length) adds.push([map, add.map((k) => [k, b.get(k)!])]);
  }
  // 3. delete what nobody references now
  for (const name of d.removedChains) lines.push(`delete chain ${T} ${name}`);
  for (const name of d.removedSets) lines.push(`delete set ${T} ${name}`);
  // 4. declare, 5. fill, 6. point the maps at them
  for (const name of d.addedSets) lines.push(`add set ${T} ${name} ${next.sets.get(name)}`);
  for (const name of d.addedChains) lines.push(`add chain ${T} ${name}`);
  for (const name of [...d.addedChains, ...d.changedChains]) for (const r of next.chains.get(name)!) lines.push(`add rule ${T} ${name} ${r}`);
  for (const [map, entries] of adds) lines.push(...elementLines('add', map, entries, true));
  return lines.length ? `${lines.join('\n')}\n` : '';
}

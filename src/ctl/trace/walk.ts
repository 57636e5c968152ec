/**
 * The packet walk (pure): a {@link TraceSnapshot} and a {@link TraceQuery} -> the hops the
 * kernel takes, per possible path. Order follows the packet: the proxy's DNAT (nat prerouting,
 * or nat output for the node's own traffic) and, when nothing DNATs it, the proxy's reject
 * checks; then, per endpoint, the route lookup as the node makes it for a packet arriving from
 * the source pod's bridge; for a route over a VXLAN device the neighbor (peer VTEP MAC), the FDB
 * entry (MAC -> peer node) and the outer header; for a bridge, the pod's MAC and the port it
 * was learned on.
 *
 * Route lookups are the kernel's own answers (RTM_GETROUTE), so the snapshot carries them as
 * facts; {@link walk} says which lookups it is missing, and the live reader asks for them and
 * walks again (the second round needs the first's answers: the ingress interface, then the
 * VXLAN remote's underlay route).
 */
import type { Link } from '../../netlink/types.ts';
import type { EndHop, Hop, RouteFact, RouteHop, ServiceEndpoint, ServiceHop, TracePath, TraceQuery, TraceReport, TraceSnapshot } from './model.ts';
import { evaluate, type Outcome } from './nft.ts';

/** A route lookup the walk needs: `dst`, optionally as arriving on `iif` from `src`. */
export interface RouteKey {
  dst: string;
  src?: string;
  iif?: string;
}

function sameKey(f: RouteKey, k: RouteKey): boolean {
  return f.dst === k.dst && (f.src ?? '') === (k.src ?? '') && (f.iif ?? '') === (k.iif ?? '');
}

/** kube-proxy-style chain names carry `namespace/name/proto/port` after the hash. */
const CHAIN_LABEL = /^(?:svc|local|ext)-[A-Z2-7]{8}-([^/]+)\/([^/]+)\/([a-z]+)\/(.+)$/;

const ERRNO_HINT: Record<string, string> = {
  ENETUNREACH: 'no route to this address',
  EHOSTUNREACH: 'the kernel would not forward it: no route, forwarding off (net.ipv4.ip_forward=0), or the source is not valid on the ingress interface (rp_filter)',
  EINVAL: 'the kernel rejected the lookup (source address not valid on the ingress interface?)',
  EXDEV: 'the source address is not valid on the ingress interface (rp_filter)',
};

class Walker {
  readonly missing: RouteKey[] = [];
  readonly #s: TraceSnapshot;

  constructor(s: TraceSnapshot) {
    this.#s = s;
  }

  route(k: RouteKey): RouteFact | undefined {
    const f = this.#s.routes.find((r) => sameKey(r, k));
    if (!f && !this.missing.some((m) => sameKey(m, k))) this.missing.push(k);
    return f;
  }

  link(index: number | undefined): Link | undefined {
    return index === undefined ? undefined : this.#s.links.find((l) => l.index === index);
  }

  linkByName(name: string | undefined): Link | undefined {
    return name === undefined ? undefined : this.#s.links.find((l) => l.name === name);
  }

  get snap(): TraceSnapshot {
    return this.#s;
  }
}

function isLocal(s: TraceSnapshot, ip: string): boolean {
  return s.addrs.some((a) => a.ip === ip);
}

function serviceHop(s: TraceSnapshot, q: TraceQuery, fromHost: boolean, warnings: string[]): ServiceHop {
  const none = (detail: string): ServiceHop => ({ kind: 'service', verdict: 'none', endpoints: [], detail });
  if (!s.proxy) return none('table ip weft-proxy is not on this node: no Service is programmed here');
  const clusterIP = (s.proxy.sets['cluster-ips'] ?? []).includes(q.dst);
  if (q.port === undefined) return none(clusterIP ? `${q.dst} is a ClusterIP: give a port (${q.dst}:PORT/tcp) to trace a Service` : 'no port given: Services not consulted');
  const pkt = { saddr: q.src, daddr: q.dst, protocol: q.protocol, dport: q.port, local: new Set(s.addrs.map((a) => a.ip)) };
  const nat = evaluate(s.proxy, fromHost ? 'nat-output' : 'nat-prerouting', pkt);
  warnings.push(...nat.notes.unknown);
  const dnat = nat.outcomes.filter((o) => o.verdict === 'dnat');
  const first: Outcome | undefined = dnat[0] ?? nat.outcomes.find((o) => o.verdict !== 'continue');
  const hop: ServiceHop = { kind: 'service', verdict: 'none', endpoints: [] };
  const lookup = first?.lookups[0];
  if (lookup) {
    hop.map = lookup.map;
    hop.key = lookup.key;
    hop.chain = lookup.target;
    const m = lookup.target ? CHAIN_LABEL.exec(lookup.target) : null;
    if (m) {
      hop.service = `${m[1]}/${m[2]}`;
      hop.servicePort = `${m[4]}/${m[3]}`;
    }
  }
  if (dnat.length) {
    hop.verdict = 'dnat';
    const seen = new Set<string>();
    for (const o of dnat) {
      const id = `${o.addr}:${o.port ?? ''}`;
      if (!o.addr || seen.has(id)) continue;
      seen.add(id);
      const ep: ServiceEndpoint = { ip: o.addr, port: o.port ?? q.port, chain: o.chains.at(-1) ?? '', choice: o.choice.at(-1) ?? 'only', masquerade: o.masquerade };
      hop.endpoints.push(ep);
    }
    const sticky = hop.endpoints.find((e) => e.choice === 'affinity');
    if (sticky) hop.detail = `${q.src} is in the ClientIP affinity set of ${sticky.ip}:${sticky.port}: it sticks to that endpoint`;
    else hop.detail = `${hop.endpoints.length} endpoint(s); the kernel picks one at random per new connection`;
    return hop;
  }
  if (first?.verdict === 'drop') return { ...hop, verdict: 'dropped', detail: 'dropped in nat (a Local traffic policy without a local endpoint)' };
  // nothing DNATed it: the filter hooks reject Service ports without endpoints and unknown ports
  const filterChain = fromHost ? 'filter-output' : isLocal(s, q.dst) ? 'filter-input' : 'filter-forward';
  const filt = evaluate(s.proxy, filterChain, pkt);
  warnings.push(...filt.notes.unknown);
  let rej = filt.outcomes.find((o) => o.verdict === 'reject' || o.verdict === 'drop');
  if (!rej && fromHost) rej = evaluate(s.proxy, 'filter-output-post-dnat', pkt).outcomes.find((o) => o.verdict === 'reject');
  if (rej) {
    const l = rej.lookups[0];
    if (l) {
      hop.map = l.map;
      hop.key = l.key;
      const m = CHAIN_LABEL.exec(l.target ?? '');
      if (m) hop.service = `${m[1]}/${m[2]}`;
    }
    hop.verdict = rej.verdict === 'drop' ? 'dropped' : 'rejected';
    hop.detail = l
      ? `no usable endpoint: ${l.map} rejects it (TCP reset / ICMP port unreachable)`
      : clusterIP
        ? `${q.dst} is a ClusterIP but port ${q.port}/${q.protocol} is not one of its ports: rejected`
        : `rejected in ${rej.chains.join(' -> ')}`;
    return hop;
  }
  return none(clusterIP ? `${q.dst} is a ClusterIP, yet no rule matched port ${q.port}/${q.protocol}` : `no Service at ${q.dst}:${q.port}/${q.protocol}`);
}

function routeHop(w: Walker, k: RouteKey, f: RouteFact | undefined): RouteHop {
  const hop: RouteHop = { kind: 'route', dst: k.dst, src: k.src, iif: k.iif };
  if (!f) return { ...hop, error: 'not looked up' };
  if (f.error) return { ...hop, error: `${f.error}: ${ERRNO_HINT[f.error] ?? 'lookup failed'}` };
  const r = f.result!;
  hop.type = r.type;
  if (r.matched) hop.matched = r.matched;
  const dev = w.link(r.oif);
  if (dev) hop.dev = dev.name;
  else if (r.oif !== undefined) hop.dev = `if${r.oif}`;
  if (r.gateway) hop.gateway = r.gateway;
  if (r.onlink) hop.onlink = true;
  if (r.prefsrc) hop.prefsrc = r.prefsrc;
  if (r.table !== undefined) hop.table = r.table;
  return hop;
}

function vxlanHops(w: Walker, dev: Link, nexthop: string, to: string, route: RouteHop): Hop[] {
  const s = w.snap;
  const hops: Hop[] = [];
  const vx = dev.vxlan;
  const n = s.neighbors.find((x) => x.index === dev.index && x.ip === nexthop);
  if (!n?.mac) {
    hops.push({
      kind: 'neighbor',
      dev: dev.name,
      ip: nexthop,
      state: n?.state ?? [],
      problem: `no neighbor entry for ${nexthop} on ${dev.name}: the peer's VTEP MAC is not programmed (run weftctl check)`,
    });
    hops.push({ kind: 'end', at: 'unknown', detail: `cannot resolve ${nexthop} on ${dev.name} (nolearning: no ARP is sent)` });
    return hops;
  }
  const usable = n.state.some((x) => x === 'permanent' || x === 'reachable' || x === 'noarp' || x === 'stale' || x === 'delay' || x === 'probe');
  hops.push({ kind: 'neighbor', dev: dev.name, ip: nexthop, mac: n.mac, state: n.state, ...(usable ? {} : { problem: `entry is ${n.state.join(',') || 'unusable'}` }) });
  const f = s.fdb.find((x) => x.index === dev.index && x.mac === n.mac && x.dst);
  if (!f) {
    hops.push({ kind: 'fdb', dev: dev.name, mac: n.mac, state: [], problem: `no FDB entry for ${n.mac} on ${dev.name}: the kernel does not know which node owns it (run weftctl check)` });
    hops.push({ kind: 'end', at: 'unknown', detail: `frames to ${n.mac} have no VXLAN remote` });
    return hops;
  }
  hops.push({ kind: 'fdb', dev: dev.name, mac: f.mac, dst: f.dst, state: f.state });
  const outerDst = f.dst!;
  const under = w.route({ dst: outerDst });
  const encap: Hop = { kind: 'encap', dev: dev.name, outerDst, udpPort: vx?.port ?? 8472, vni: vx?.vni ?? 0, outerSrc: vx?.local };
  if (under?.result) {
    const u = w.link(under.result.oif);
    encap.underlayDev = u?.name;
    if (under.result.gateway) encap.underlayGateway = under.result.gateway;
    encap.outerSrc ??= under.result.prefsrc;
    if (under.result.type === 'local') encap.problem = `${outerDst} is this node's own address: the FDB points back at us`;
  } else if (under?.error) {
    encap.problem = `no underlay route to ${outerDst}: ${under.error}`;
  }
  if (!vx) encap.problem ??= `${dev.name} reports no VXLAN attributes`;
  hops.push(encap);
  const subnet = route.matched && route.matched !== '0.0.0.0/0' ? ` (its subnet ${route.matched})` : '';
  hops.push({ kind: 'end', at: 'peer-node', node: outerDst, detail: `decapsulated by node ${outerDst}${subnet}, which delivers it to ${to}` });
  return hops;
}

function bridgeHops(w: Walker, br: Link, nexthop: string, q: TraceQuery, direct: boolean): Hop[] {
  const s = w.snap;
  const hops: Hop[] = [];
  const n = s.neighbors.find((x) => x.index === br.index && x.ip === nexthop);
  const owner = s.ipamOwners?.[nexthop];
  const end: EndHop = { kind: 'end', at: 'local-pod', bridge: br.name, detail: '' };
  if (owner) end.owner = owner;
  if (n?.mac) {
    hops.push({
      kind: 'neighbor',
      dev: br.name,
      ip: nexthop,
      mac: n.mac,
      state: n.state,
      ...(n.state.includes('failed') ? { problem: 'ARP failed: nothing answers for this address on the bridge' } : {}),
    });
    const f = s.fdb.find((x) => x.master === br.index && x.mac === n.mac && !x.self);
    const port = f ? (w.link(f.index)?.name ?? `if${f.index}`) : undefined;
    if (f) hops.push({ kind: 'fdb', dev: br.name, mac: n.mac, port, state: f.state });
    else hops.push({ kind: 'fdb', dev: br.name, mac: n.mac, state: [], problem: `the bridge has not learned ${n.mac} (yet): it floods the first frame to every port` });
    if (port) end.port = port;
  } else {
    hops.push({ kind: 'neighbor', dev: br.name, ip: nexthop, state: n?.state ?? [], problem: `not resolved yet: the node ARPs for ${nexthop} on ${br.name} on the first packet` });
  }
  const who = end.port ? `port ${end.port}` : 'a port not known yet';
  const own = owner ? ` (IPAM: ${owner})` : s.ipamOwners && !owner ? ' (no IPAM reservation for it on this node)' : '';
  // a destination in the source pod's own subnet never reaches the node's IP layer: the pod
  // ARPs for it and the bridge switches the frame (only br_netfilter shows it to nftables)
  const l2 = direct ? '; same subnet as the source, so the pod sends it straight over the bridge and the node does not route it' : '';
  end.detail = (nexthop === q.src ? `hairpin: back out of ${who} on ${br.name} to the sender itself${own}` : `bridged out of ${who} on ${br.name} to ${nexthop}${own}`) + l2;
  hops.push(end);
  return hops;
}

/** Both addresses inside one prefix of an address on interface `index` (the bridge's subnet). */
function sameSubnet(s: TraceSnapshot, index: number, a: string, b: string): boolean {
  const n = (ip: string) => ip.split('.').reduce((acc, o) => acc * 256 + Number(o), 0);
  return s.addrs.some((x) => {
    if (x.index !== index || x.prefixLen === 0 || x.prefixLen > 32) return false;
    const size = 2 ** (32 - x.prefixLen);
    const base = Math.floor(n(x.ip) / size);
    return Math.floor(n(a) / size) === base && Math.floor(n(b) / size) === base;
  });
}

function pathHops(w: Walker, ingress: RouteKey | undefined, to: string, q: TraceQuery, dnat: boolean): Hop[] {
  const k: RouteKey = ingress ? { dst: to, src: q.src, iif: ingress.iif } : { dst: to, src: q.src };
  const f = w.route(k);
  const route = routeHop(w, k, f);
  const hops: Hop[] = [route];
  if (!f) return hops;
  if (route.error) {
    hops.push({ kind: 'end', at: 'unreachable', detail: route.error });
    return hops;
  }
  const r = f.result!;
  if (r.type === 'local') {
    hops.push({ kind: 'end', at: 'this-node', detail: `${to} is an address of this node: delivered locally` });
    return hops;
  }
  if (r.type !== 'unicast') {
    hops.push({ kind: 'end', at: r.type === 'blackhole' ? 'dropped' : 'unreachable', detail: `route type ${r.type}` });
    return hops;
  }
  const dev = w.link(r.oif);
  const nexthop = r.gateway ?? to;
  if (dev?.kind === 'vxlan') return [...hops, ...vxlanHops(w, dev, nexthop, to, route)];
  if (dev?.kind === 'bridge') {
    const direct = !dnat && !r.gateway && to !== q.src && ingress?.iif === dev.name && sameSubnet(w.snap, dev.index, q.src, to);
    return [...hops, ...bridgeHops(w, dev, nexthop, q, direct)];
  }
  hops.push({ kind: 'end', at: 'external', detail: `leaves the node on ${dev?.name ?? `if${r.oif}`}${r.gateway ? ` via ${r.gateway}` : ''}: outside the overlay` });
  return hops;
}

/**
 * Walks `q` over `s`. `missing` lists route lookups the snapshot lacks; a walk with missing
 * lookups is incomplete (the live reader adds them and walks again).
 */
export function walk(s: TraceSnapshot, q: TraceQuery): { report: TraceReport; missing: RouteKey[] } {
  const w = new Walker(s);
  const warnings: string[] = [];
  // where the packet enters: the interface the node routes the source address to (the pod's
  // bridge), or nowhere when the source is one of the node's own addresses
  const fromHost = isLocal(s, q.src);
  let ingress: RouteKey | undefined;
  let ingressName = 'this-node';
  if (!fromHost) {
    const back = w.route({ dst: q.src });
    const dev = back?.result ? w.link(back.result.oif) : undefined;
    if (back && !dev) {
      const why = back.error ? `no route back to ${q.src} (${back.error})` : `route to ${q.src} has no known device`;
      const report: TraceReport = {
        kind: 'Trace',
        query: q,
        ingress: 'unknown',
        service: { kind: 'service', verdict: 'none', endpoints: [], detail: 'not evaluated' },
        paths: [],
        warnings: [`${why}: ${q.src} is not reachable from this node, so a packet from it cannot be traced here`],
      };
      return { report, missing: w.missing };
    }
    if (dev) {
      ingressName = dev.name;
      ingress = { dst: q.src, iif: dev.name };
      if (dev.kind === 'vxlan') warnings.push(`${q.src} is routed via ${dev.name}: it is a pod on another node; run trace there for its first hops`);
      else if (back?.result?.gateway) warnings.push(`${q.src} is behind gateway ${back.result.gateway}: not a pod on this node's bridge`);
    }
  }
  const service = serviceHop(s, q, fromHost, warnings);
  const paths: TracePath[] = [];
  if (service.verdict === 'dnat') {
    for (const ep of service.endpoints) paths.push({ to: ep.ip, port: ep.port, choice: ep.choice, hops: back(w, ingress, fromHost, ep.ip, q, true) });
  } else if (service.verdict === 'none') {
    paths.push({ to: q.dst, port: q.port, choice: 'only', hops: back(w, ingress, fromHost, q.dst, q, false) });
  }
  return { report: { kind: 'Trace', query: q, ingress: ingressName, service, paths, warnings }, missing: w.missing };
}

function back(w: Walker, ingress: RouteKey | undefined, fromHost: boolean, to: string, q: TraceQuery, dnat: boolean): Hop[] {
  if (!fromHost && !ingress) return [];
  return pathHops(w, ingress, to, q, dnat);
}

/**
 * The trace walk over a fixture: kernel state captured from node n1 of a two-node test cluster
 * (trace.fixture.json: links, addresses, neighbors, FDB, the kernel's own route lookups, IPAM
 * owners, and the raw `nft -j list table ip weft-proxy`), plus variations of it for the ways a
 * walk ends short. Also the nft evaluator's edges, argument parsing, rendering, the probe's nft
 * script, and `get services`' join of API objects with the table.
 */
import test from 'ava';
import { readFileSync } from 'node:fs';
import { join } from 'node:path';
import { UsageError } from '../../src/core/errors.ts';
import { parseTraceArgs } from '../../src/ctl/trace.ts';
import type { EncapHop, EndHop, FdbHop, NeighborHop, RouteHop, TraceQuery, TraceSnapshot } from '../../src/ctl/trace/model.ts';
import { evaluate, parseProxyTable, type ProxyTable } from '../../src/ctl/trace/nft.ts';
import { pickNamespace, probeScript } from '../../src/ctl/trace/probe.ts';
import { renderTrace } from '../../src/ctl/trace/render.ts';
import { walk } from '../../src/ctl/trace/walk.ts';
import { kernelVerdict, renderServices, serviceStatuses, tableStatuses } from '../../src/ctl/services.ts';
import { validateEndpointSlice, validateService, type EndpointSlice, type Service } from '../../src/proxy/types.ts';

interface Fixture {
  query: { src: string; a2: string; b1: string; n1: string; n2: string; a2cid: string };
  snapshot: TraceSnapshot;
  nft: unknown;
}

const FX: Fixture = JSON.parse(readFileSync(join(import.meta.dirname, 'trace.fixture.json'), 'utf8'));
const { src, a2, b1, n1, n2 } = FX.query;
const CLUSTER_IP = '198.19.0.10';
const A2_MAC = '42:73:2a:8c:ff:91'; // learned on cni0 port veth161a576c (index 6)

function table(): ProxyTable {
  return parseProxyTable(JSON.stringify(FX.nft));
}

function snap(edit?: (s: TraceSnapshot) => void): TraceSnapshot {
  const s: TraceSnapshot = structuredClone(FX.snapshot);
  s.proxy = table();
  edit?.(s);
  return s;
}

const toService = (port = 80): TraceQuery => ({ src, dst: CLUSTER_IP, port, protocol: 'tcp' });

test('the real nft listing parses into maps, sets and chains', (t) => {
  const tb = table();
  t.deepEqual(
    tb.maps['service-ips']!.map((e) => e.key.join(' . ')),
    [`${CLUSTER_IP} . tcp . 80`],
  );
  t.deepEqual(
    tb.maps['no-endpoint-services']!.map((e) => [e.key.join(' . '), e.verdict]),
    [['198.19.0.11 . tcp . 80', { kind: 'goto', target: 'reject-chain' }]],
  );
  t.deepEqual([...tb.sets['cluster-ips']!].sort(), [CLUSTER_IP, '198.19.0.11']);
  t.true(Object.keys(tb.chains).some((c) => c.startsWith('svc-')));
  t.is(Object.keys(tb.chains).filter((c) => c.startsWith('ep-')).length, 2);
});

test('hostile or foreign listings are refused', (t) => {
  t.throws(() => parseProxyTable('not json'), { message: /not JSON/ });
  t.throws(() => parseProxyTable('[]'), { message: /no "nftables" list/ });
  t.throws(() => parseProxyTable(JSON.stringify({ nftables: new Array(200_001).fill(0) })), { message: /more than/ });
  const odd = parseProxyTable(
    JSON.stringify({ nftables: [{ map: { name: 'service-ips', map: 'verdict', elem: [[{ concat: [{}, 'tcp'] }, { goto: { target: 'x' } }], 'junk'] } }, { rule: { chain: 5, expr: [] } }] }),
  );
  t.deepEqual(odd.maps['service-ips'], [], 'malformed elements are dropped, not guessed');
  t.deepEqual(odd.chains, {});
});

test('pod -> ClusterIP: the map element, both endpoints at random, and each path hop by hop', (t) => {
  const { report, missing } = walk(snap(), toService());
  t.deepEqual(missing, []);
  t.is(report.ingress, 'cni0');
  const s = report.service;
  t.is(s.verdict, 'dnat');
  t.is(s.map, 'service-ips');
  t.is(s.key, `${CLUSTER_IP} . tcp . 80`);
  t.regex(s.chain!, /^svc-[A-Z2-7]{8}-default\/echo\/tcp\/tcp$/);
  t.is(s.service, 'default/echo');
  t.deepEqual(
    s.endpoints.map((e) => [e.ip, e.port, e.choice, e.masquerade]).sort(),
    [
      [a2, 8080, 'random 1/2', false],
      [b1, 8080, 'random 1/2', false],
    ].sort(),
  );

  const remote = report.paths.find((p) => p.to === b1)!;
  const [route, neigh, fdb, encap, end] = remote.hops as [RouteHop, NeighborHop, FdbHop, EncapHop, EndHop];
  t.like(route, { kind: 'route', dst: b1, src, iif: 'cni0', type: 'unicast', dev: 'flannel.1', gateway: '198.18.37.0', matched: '198.18.37.0/24', onlink: true });
  t.like(neigh, { kind: 'neighbor', dev: 'flannel.1', ip: '198.18.37.0', mac: '02:3d:b0:8e:76:a2', problem: undefined });
  t.like(fdb, { kind: 'fdb', dev: 'flannel.1', mac: '02:3d:b0:8e:76:a2', dst: n2 });
  t.like(encap, { kind: 'encap', outerSrc: n1, outerDst: n2, udpPort: 8472, vni: 1, underlayDev: 'eth0', problem: undefined });
  t.like(end, { kind: 'end', at: 'peer-node', node: n2 });

  const local = report.paths.find((p) => p.to === a2)!;
  t.deepEqual(
    local.hops.map((h) => h.kind),
    ['route', 'neighbor', 'end'],
  );
  t.like(local.hops[0], { dev: 'cni0', matched: '198.18.117.0/24' });
  t.regex((local.hops[1] as NeighborHop).problem!, /not resolved yet/, 'no ARP entry for the pod in the capture');
  t.like(local.hops[2], { at: 'local-pod', bridge: 'cni0', owner: `${FX.query.a2cid} eth0` });
});

test('a resolved pod address leads to its bridge port through the learned FDB entry', (t) => {
  const s = snap((x) => x.neighbors.push({ index: 4, ip: a2, mac: A2_MAC, state: ['reachable'] }));
  const local = walk(s, toService()).report.paths.find((p) => p.to === a2)!;
  t.like(local.hops[1], { kind: 'neighbor', dev: 'cni0', mac: A2_MAC, problem: undefined });
  t.like(local.hops[2], { kind: 'fdb', dev: 'cni0', mac: A2_MAC, port: 'veth161a576c' });
  t.like(local.hops[3], { kind: 'end', at: 'local-pod', port: 'veth161a576c' });
  // the MAC known by ARP but not (yet) by the bridge
  const s2 = snap((x) => {
    x.neighbors.push({ index: 4, ip: a2, mac: '02:00:00:00:00:99', state: ['stale'] });
  });
  const l2 = walk(s2, toService()).report.paths.find((p) => p.to === a2)!;
  t.regex((l2.hops[2] as FdbHop).problem!, /has not learned/);
});

test('route lookups are asked for in rounds: ingress first, then per endpoint, then the underlay', (t) => {
  const all = FX.snapshot.routes;
  const s = snap((x) => (x.routes = []));
  const rounds: string[][] = [];
  for (let i = 0; i < 5; i++) {
    const { missing } = walk(s, toService());
    if (!missing.length) break;
    rounds.push(missing.map((k) => `${k.dst}${k.iif ? `@${k.iif}` : ''}`).sort());
    for (const k of missing) s.routes.push(all.find((r) => r.dst === k.dst && (r.iif ?? '') === (k.iif ?? '') && (r.src ?? '') === (k.src ?? ''))!);
  }
  t.deepEqual(rounds, [[src], [`${b1}@cni0`, `${a2}@cni0`].sort(), [n2]]);
  t.is(walk(s, toService()).report.paths.length, 2);
});

test('a Service without endpoints, and an unknown port of a ClusterIP, are rejected', (t) => {
  const empty = walk(snap(), { src, dst: '198.19.0.11', port: 80, protocol: 'tcp' }).report;
  t.like(empty.service, { verdict: 'rejected', map: 'no-endpoint-services', key: '198.19.0.11 . tcp . 80' });
  t.deepEqual(empty.paths, []);
  const port = walk(snap(), toService(81)).report;
  t.is(port.service.verdict, 'rejected');
  t.regex(port.service.detail!, /not one of its ports/);
  const udp = walk(snap(), { ...toService(), protocol: 'udp' }).report;
  t.is(udp.service.verdict, 'rejected', 'tcp/80 is programmed, udp/80 is not');
});

test("a source in an endpoint's ClientIP affinity set sticks to that endpoint", (t) => {
  const s = snap((x) => {
    const set = Object.keys(x.proxy!.sets).find((n) => n.startsWith('aff-') && n.includes(b1))!;
    x.proxy!.sets[set] = [src];
  });
  const r = walk(s, toService()).report;
  t.deepEqual(
    r.service.endpoints.map((e) => [e.ip, e.choice]),
    [[b1, 'affinity']],
  );
  t.regex(r.service.detail!, /affinity/);
  t.is(r.paths.length, 1);
});

test('without the proxy table, or without a port, the packet goes straight to dst', (t) => {
  const s = snap((x) => (x.proxy = undefined));
  const r = walk(s, { src, dst: b1, protocol: 'tcp', port: 8080 });
  t.is(r.report.service.verdict, 'none');
  t.regex(r.report.service.detail!, /not on this node/);
  t.deepEqual(
    r.report.paths.map((p) => [p.to, p.choice, p.hops.at(-1)!.kind]),
    [[b1, 'only', 'end']],
  );
  const noPort = walk(snap(), { src, dst: CLUSTER_IP, protocol: 'tcp' });
  t.regex(noPort.report.service.detail!, /is a ClusterIP: give a port/);
  t.deepEqual(noPort.missing, [{ dst: CLUSTER_IP, src, iif: 'cni0' }]);
});

test('a refused route lookup ends the walk as unreachable, with the likely cause', (t) => {
  const r = walk(snap(), { src, dst: '198.18.250.9', protocol: 'tcp' }).report;
  const [route, end] = r.paths[0]!.hops as [RouteHop, EndHop];
  t.regex(route.error!, /^ENETUNREACH: no route/);
  t.is(end.at, 'unreachable');
  const fwdOff = snap((x) => {
    const f = x.routes.find((q) => q.dst === b1 && q.iif === 'cni0')!;
    delete f.result;
    f.error = 'EHOSTUNREACH';
  });
  const h = walk(fwdOff, toService()).report.paths.find((p) => p.to === b1)!.hops[0] as RouteHop;
  t.regex(h.error!, /forwarding off/);
});

test('missing VXLAN neighbor or FDB entries are named as the problem', (t) => {
  const noNeigh = snap((x) => (x.neighbors = x.neighbors.filter((n) => n.index !== 3)));
  const p1 = walk(noNeigh, toService()).report.paths.find((p) => p.to === b1)!;
  t.deepEqual(
    p1.hops.map((h) => h.kind),
    ['route', 'neighbor', 'end'],
  );
  t.regex((p1.hops[1] as NeighborHop).problem!, /VTEP MAC is not programmed/);
  t.is((p1.hops[2] as EndHop).at, 'unknown');
  const noFdb = snap((x) => (x.fdb = x.fdb.filter((f) => !f.dst)));
  const p2 = walk(noFdb, toService()).report.paths.find((p) => p.to === b1)!;
  t.deepEqual(
    p2.hops.map((h) => h.kind),
    ['route', 'neighbor', 'fdb', 'end'],
  );
  t.regex((p2.hops[2] as FdbHop).problem!, /no FDB entry/);
});

test('a source this node cannot route back to is not traced, and says why', (t) => {
  const s = snap((x) => x.routes.push({ dst: '203.0.113.50', error: 'ENETUNREACH' }));
  const r = walk(s, { src: '203.0.113.50', dst: CLUSTER_IP, port: 80, protocol: 'tcp' }).report;
  t.is(r.ingress, 'unknown');
  t.deepEqual(r.paths, []);
  t.regex(r.warnings[0]!, /not reachable from this node/);
});

test('traffic from the node itself goes through nat-output and is looked up as the host', (t) => {
  const s = snap((x) => {
    for (const ep of [a2, b1]) {
      const f = x.routes.find((q) => q.dst === ep && q.iif === 'cni0')!;
      x.routes.push({ dst: ep, src: n1, result: f.result });
    }
  });
  const r = walk(s, { src: n1, dst: CLUSTER_IP, port: 80, protocol: 'tcp' });
  t.deepEqual(r.missing, []);
  t.is(r.report.ingress, 'this-node');
  t.is(r.report.service.verdict, 'dnat');
  // from outside the cluster CIDR: marked for masquerade on the way
  t.true(r.report.service.endpoints.every((e) => e.masquerade));
});

test('the evaluator reports rules it cannot read instead of taking them, and bounds loops', (t) => {
  const tb = table();
  const svc = Object.keys(tb.chains).find((c) => c.startsWith('svc-'))!;
  tb.chains[svc]!.unshift({ handle: 999, expr: [{ match: { op: '==', left: { osf: { key: 'name' } }, right: 'Linux' } }, { drop: null }] });
  const r = evaluate(tb, 'nat-prerouting', { saddr: src, daddr: CLUSTER_IP, protocol: 'tcp', dport: 80, local: new Set() });
  t.is(r.outcomes.filter((o) => o.verdict === 'dnat').length, 2);
  t.regex(r.notes.unknown[0]!, /rule 999: match .* not understood/);
  const loop: ProxyTable = { chains: { a: [{ expr: [{ jump: { target: 'a' } }] }] }, sets: {}, maps: {} };
  t.throws(() => evaluate(loop, 'a', { saddr: src, daddr: CLUSTER_IP, protocol: 'tcp', local: new Set() }), { message: /deeper than/ });
});

test('trace arguments: address, port and protocol are checked', (t) => {
  t.deepEqual(parseTraceArgs([src, '198.19.0.10:53/udp']), { src, dst: CLUSTER_IP, port: 53, protocol: 'udp' });
  t.deepEqual(parseTraceArgs([src, '198.19.0.10:80']), { src, dst: CLUSTER_IP, port: 80, protocol: 'tcp' });
  t.deepEqual(parseTraceArgs([src, '198.19.0.10']), { src, dst: CLUSTER_IP, protocol: 'tcp' });
  for (const bad of [[src], ['10.0.0.256', '198.19.0.10'], [src, '198.19.0.10:0'], [src, '198.19.0.10:65536'], [src, '198.19.0.10:80/sctp'], [src, '198.19.00.10'], [src, 'x; rm']]) {
    t.throws(() => parseTraceArgs(bad), { instanceOf: UsageError }, bad.join(' '));
  }
});

test('the text rendering names every hop; json is the model', (t) => {
  const s = snap((x) => x.neighbors.push({ index: 4, ip: a2, mac: A2_MAC, state: ['reachable'] }));
  const r = walk(s, toService()).report;
  const text = renderTrace(r, 'table');
  t.regex(text, /^trace 198\.18\.117\.2 -> 198\.19\.0\.10:80\/tcp \(enters on cni0\)$/m);
  t.regex(text, /service +dnat: service-ips\[198\.19\.0\.10 \. tcp \. 80\] -> svc-\S+ \(Service default\/echo port tcp\/tcp\)/);
  t.regex(text, /route +198\.18\.37\.2 from 198\.18\.117\.2 iif cni0: unicast 198\.18\.37\.0\/24 via 198\.18\.37\.0 dev flannel\.1 onlink/);
  t.regex(text, /fdb +02:3d:b0:8e:76:a2 on flannel\.1: -> node 198\.51\.100\.12 \(permanent\)/);
  t.regex(text, /encap +198\.51\.100\.11 -> 198\.51\.100\.12 UDP 8472 VNI 1 from flannel\.1 out eth0/);
  t.regex(text, /end +local-pod: bridged out of port veth161a576c on cni0 to 198\.18\.117\.3 \(IPAM: lab-\S+ eth0\)/);
  t.deepEqual(JSON.parse(renderTrace(r, 'json')), JSON.parse(JSON.stringify(r)));
});

test('the probe script counts only the probe, at each point of the walk', (t) => {
  const r = walk(snap(), toService()).report;
  const { script, points } = probeScript('weft-trace-0001', r);
  t.regex(script, /add chain ip weft-trace-0001 probe-pre \{ type filter hook prerouting priority -400; policy accept; \}/);
  t.regex(script, new RegExp(`probe-pre ip saddr ${src} ip daddr ${CLUSTER_IP} th dport 80 tcp flags & \\(syn \\| ack\\) == syn counter name c_pre`));
  for (const ep of [a2, b1, CLUSTER_IP]) t.regex(script, new RegExp(`probe-fwd ip saddr ${src} ip daddr ${ep} tcp`));
  t.regex(script, /probe-post oifname "flannel\.1" ip saddr/);
  t.regex(script, /probe-post oifname "cni0" ip saddr/);
  // 198.18.117.2 = 0xc6127502, 42 bytes into the outer UDP header
  t.regex(script, new RegExp(`probe-out ip daddr ${n2} udp dport 8472 @th,336,32 0xc6127502 counter name c_enc0`));
  t.is(points.get('c_enc0')!.point, 'encap');
  // device names come from the kernel, but only safe ones reach nft text
  const evil = structuredClone(r);
  (evil.paths[0]!.hops[0] as RouteHop).dev = 'x" drop; "';
  t.notRegex(probeScript('weft-trace-0002', evil).script, /drop/);
});

test('the probe needs exactly one namespace holding the source address', (t) => {
  t.is(pickNamespace(['/run/netns/a'], src), '/run/netns/a');
  t.throws(() => pickNamespace([], src), { instanceOf: UsageError, message: /--src-netns/ });
  t.throws(() => pickNamespace(['/run/netns/a', '/run/netns/b'], src), { instanceOf: UsageError, message: /several/ });
});

function svc(name: string, spec: Record<string, unknown>): Service {
  const r = validateService({ metadata: { namespace: 'default', name }, spec });
  if (!r.ok) throw new Error(r.reason);
  return r.value;
}

function slice(service: string, eps: Array<{ ip: string; ready?: boolean }>): EndpointSlice {
  const r = validateEndpointSlice({
    metadata: { namespace: 'default', name: `${service}-1`, labels: { 'kubernetes.io/service-name': service } },
    addressType: 'IPv4',
    endpoints: eps.map((e) => ({ addresses: [e.ip], conditions: { ready: e.ready ?? true } })),
    ports: [{ name: 'tcp', port: 8080, protocol: 'TCP' }],
  });
  if (!r.ok) throw new Error(r.reason);
  return r.value;
}

test('get services: programmed means the table DNATs to exactly the usable endpoints (or rejects)', (t) => {
  const tb = table();
  t.deepEqual(kernelVerdict(tb, CLUSTER_IP, 'TCP', 80), [`${b1}:8080`, `${a2}:8080`], 'numeric order: 198.18.37.2 before 198.18.117.3');
  const services = [
    svc('echo', { clusterIP: CLUSTER_IP, sessionAffinity: 'ClientIP', ports: [{ name: 'tcp', port: 80 }] }),
    svc('empty', { clusterIP: '198.19.0.11', ports: [{ port: 80 }] }),
    svc('headless', { clusterIP: 'None', ports: [{ port: 80 }] }),
  ];
  const good = serviceStatuses(services, [slice('echo', [{ ip: a2 }, { ip: b1 }, { ip: '198.18.37.9', ready: false }])], tb);
  t.like(good[0], { name: 'echo', clusterIP: CLUSTER_IP });
  t.like(good[0]!.ports[0], { port: 80, ready: 2, total: 3, programmed: 'yes' });
  t.like(good[1]!.ports[0], { ready: 0, total: 0, programmed: 'yes', kernel: ['reject'] });
  t.is(good[2]!.skipped, 'headless service');
  const moved = serviceStatuses(services, [slice('echo', [{ ip: a2 }, { ip: '198.18.37.9' }])], tb);
  t.is(moved[0]!.ports[0]!.programmed, 'differs');
  const absent = serviceStatuses([svc('new', { clusterIP: '198.19.0.99', ports: [{ port: 80 }] })], [], tb);
  t.is(absent[0]!.ports[0]!.programmed, 'no');
  const noTable = serviceStatuses(services, [], undefined);
  t.is(noTable[0]!.ports[0]!.programmed, 'unknown');
  const text = renderServices({ source: 'kubernetes API http://x + node table', table: 'present', items: good, warnings: [] }, 'table');
  t.regex(text, /^NAMESPACE +NAME +CLUSTER-IP +PORT\(S\) +ENDPOINTS +PROGRAMMED$/m);
  t.regex(text, /^default +echo +198\.19\.0\.10 +80\/TCP +2\/3 +yes$/m);
  t.regex(text, /^default +headless +None +80\/TCP +0\/0 +skipped \(headless service\)$/m);
});

test('get services from the table alone lists what it programs', (t) => {
  const rows = tableStatuses(table());
  const echo = rows.find((r) => r.name === 'echo')!;
  t.is(echo.clusterIP, CLUSTER_IP);
  t.is(echo.ports[0]!.kernel.length, 2);
  t.true(rows.some((r) => r.clusterIP === '198.19.0.11' && r.ports[0]!.kernel[0] === 'reject'));
  const text = renderServices({ source: 'node table only', table: 'present', items: rows, warnings: [] }, 'table');
  t.regex(text, /no Kubernetes API config/);
  t.regex(text, /^default +echo +198\.19\.0\.10 +80\/TCP +2$/m);
});

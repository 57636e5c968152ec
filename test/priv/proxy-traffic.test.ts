/**
 * Service traffic through the proxy's ruleset on a real kernel: one node namespace with a
 * bridge and pod namespaces (see proxy-topo.ts); the ruleset is built from API-shaped objects
 * (validate -> select -> build) and applied by the proxy's own executor inside the node
 * namespace. The oracle is what the echo servers answer.
 */
import test from 'ava';
import { selectEndpoints } from '../../src/proxy/endpoints.ts';
import { ProxySyncer } from '../../src/proxy/sync.ts';
import { validateEndpointSlice, validateService, type EndpointSlice, type Service } from '../../src/proxy/types.ts';
import { parseCIDR } from '../../src/ip/ipv4.ts';
import { buildTopo, CLIENT_IP, EXT_NODE_IP, EXT_IP, NODE_IP, POD_IPS, rawService, rawSlice, tally, type Topo } from './proxy-topo.ts';

let topo: Topo;
let syncer: ProxySyncer;
/** What the syncer warned about (a full sync that fell back to replacing the table, ...). */
const warnings: string[] = [];

const WEB = '198.19.0.10';
const EMPTY = '198.19.0.11';
const STICKY = '198.19.0.12';
const HAIR = '198.19.0.13';
const LOC = '198.19.0.14';
const LOCNONE = '198.19.0.15';
const ports = [
  { name: 'http', port: 8080, protocol: 'TCP' },
  { name: 'dns', port: 5353, protocol: 'UDP' },
];
const all = POD_IPS.map((ip) => ({ ip }));

function objects(): { services: Service[]; slices: EndpointSlice[] } {
  const raw = [
    rawService('web', {
      type: 'NodePort',
      clusterIP: WEB,
      ports: [
        { name: 'http', port: 80, targetPort: 8080, nodePort: 30080 },
        { name: 'dns', port: 53, protocol: 'UDP', nodePort: 30053 },
      ],
    }),
    rawService('empty', {
      type: 'NodePort',
      clusterIP: EMPTY,
      ports: [
        { name: 'http', port: 80, nodePort: 30081 },
        { name: 'dns', port: 53, protocol: 'UDP' },
      ],
    }),
    rawService('loc', { type: 'NodePort', externalTrafficPolicy: 'Local', clusterIP: LOC, ports: [{ name: 'http', port: 80, nodePort: 30082 }] }),
    rawService('locnone', { type: 'NodePort', externalTrafficPolicy: 'Local', clusterIP: LOCNONE, ports: [{ name: 'http', port: 80, nodePort: 30083 }] }),
    rawService('sticky', { clusterIP: STICKY, sessionAffinity: 'ClientIP', sessionAffinityConfig: { clientIP: { timeoutSeconds: 60 } }, ports: [{ name: 'http', port: 80 }] }),
    rawService('hair', { clusterIP: HAIR, ports: [{ name: 'http', port: 80 }] }),
    rawService('headless', { clusterIP: 'None', ports: [{ name: 'http', port: 80 }] }),
  ];
  const slices = [
    rawSlice('web', all, ports),
    rawSlice('empty', [{ ip: POD_IPS[0]!, ready: false, serving: false }], ports),
    rawSlice('sticky', all, ports),
    rawSlice('hair', [{ ip: POD_IPS[0]! }], ports),
    rawSlice('headless', all, ports),
    rawSlice(
      'loc',
      [
        { ip: POD_IPS[0]!, node: 'node-a' },
        { ip: POD_IPS[1]!, node: 'node-b' },
      ],
      ports,
    ),
    rawSlice('locnone', [{ ip: POD_IPS[1]!, node: 'node-b' }], ports),
  ];
  const services = raw.map((o) => validateService(o)).map((r) => (r.ok ? r.value : assertNever(r.reason)));
  return { services, slices: slices.map((o) => validateEndpointSlice(o)).map((r) => (r.ok ? r.value : assertNever(r.reason))) };
}

function assertNever(reason: string): never {
  throw new Error(`fixture invalid: ${reason}`);
}

test.before(async () => {
  topo = await buildTopo();
  const note = (m: string, meta?: unknown) => warnings.push(`${m} ${meta ? JSON.stringify(meta) : ''}`);
  syncer = new ProxySyncer({
    netns: topo.nodeNetns,
    ruleset: { clusterCIDR: parseCIDR('198.18.0.0/15') },
    log: { error: note, warn: note, info() {}, debug() {} },
  });
  const { services, slices } = objects();
  const state = selectEndpoints(services, slices, { nodeName: 'node-a' });
  const r = await syncer.sync(state);
  if (r.mode !== 'full') throw new Error(`first sync was ${r.mode}`);
});

test.after.always(async () => {
  await topo?.scope.cleanup();
});

test.serial('TCP and UDP to ClusterIP:port reach an endpoint, from a pod and from the node itself', async (t) => {
  const [tcp] = await topo.request(topo.client, { host: WEB, port: 80 });
  t.regex(tcp!.reply ?? String(tcp!.err), /^pod-[123] 198\.18\.0\.10$/, 'answered by a pod, the client address kept');
  const [udp] = await topo.request(topo.client, { host: WEB, port: 53, proto: 'udp' });
  t.regex(udp!.reply ?? String(udp!.err), /^pod-[123] 198\.18\.0\.10$/);
  const [fromNode] = await topo.request(topo.node, { host: WEB, port: 80 });
  t.regex(fromNode!.reply ?? String(fromNode!.err), /^pod-[123] /);
});

test.serial('300 connections spread over the 3 endpoints within a binomial bound', async (t) => {
  const replies = await topo.request(topo.client, { host: WEB, port: 80, count: 300 });
  const counts = tally(replies);
  t.deepEqual(Object.keys(counts).sort(), ['pod-1', 'pod-2', 'pod-3'], JSON.stringify(counts));
  // each count ~ Binomial(300, 1/3): mean 100, sigma 8.2; [60, 140] is +-4.9 sigma, so a
  // correct ruleset fails this less than once in 10^5 runs, a skewed one (e.g. 1/2) does not pass
  for (const [pod, n] of Object.entries(counts)) t.true(n >= 60 && n <= 140, `${pod}: ${n} of 300`);
});

test.serial('no usable endpoint: TCP refused and UDP port unreachable at once, not a timeout', async (t) => {
  const [tcp] = await topo.request(topo.client, { host: EMPTY, port: 80, timeoutMs: 5000 });
  t.is(tcp!.err, 'ECONNREFUSED');
  t.true(tcp!.ms < 1000, `${tcp!.ms} ms`);
  const [udp] = await topo.request(topo.client, { host: EMPTY, port: 53, proto: 'udp', timeoutMs: 5000 });
  t.is(udp!.err, 'ECONNREFUSED', 'ICMP port unreachable surfaces on a connected UDP socket');
  t.true(udp!.ms < 1000, `${udp!.ms} ms`);
  const [fromNode] = await topo.request(topo.node, { host: EMPTY, port: 80, timeoutMs: 5000 });
  t.is(fromNode!.err, 'ECONNREFUSED', 'also from the node (filter-output)');
});

test.serial('an unknown port of a ClusterIP is rejected', async (t) => {
  const [tcp] = await topo.request(topo.client, { host: WEB, port: 9999, timeoutMs: 5000 });
  t.is(tcp!.err, 'ECONNREFUSED');
  t.true(tcp!.ms < 1000);
  const [fromNode] = await topo.request(topo.node, { host: WEB, port: 9999, timeoutMs: 5000 });
  t.is(fromNode!.err, 'ECONNREFUSED', 'from the node (filter-output-post-dnat)');
  // an address outside any Service is not ours to reject: it just goes unanswered
  const [other] = await topo.request(topo.client, { host: '198.19.0.99', port: 80, timeoutMs: 700 });
  t.is(other!.err, 'TIMEOUT');
});

test.serial('ClientIP session affinity sticks to one endpoint and is recorded in its set', async (t) => {
  const replies = await topo.request(topo.client, { host: STICKY, port: 80, count: 40 });
  const counts = tally(replies);
  t.is(Object.keys(counts).length, 1, JSON.stringify(counts));
  t.true(Object.keys(counts)[0]!.startsWith('pod-'));
  const pod = Object.keys(counts)[0]!;
  const ip = POD_IPS[Number(pod.slice(4)) - 1]!;
  const sets = JSON.parse(topo.nsh(topo.node, '/usr/sbin/nft', ['-j', 'list', 'sets', 'table', 'ip', 'weft-proxy'])).nftables as Array<{ set?: { name: string } }>;
  const name = sets.map((s) => s.set?.name).find((n) => n?.includes('/sticky/') && n.endsWith(`__${ip}/8080`));
  t.truthy(name);
  const listed = topo.nsh(topo.node, '/usr/sbin/nft', ['list', 'set', 'ip', 'weft-proxy', name!]);
  t.regex(listed, new RegExp(`${CLIENT_IP.replace(/\./g, '\\.')} (timeout|expires)`));
  // the web service (no affinity) from the same client does not stick
  t.true(Object.keys(tally(await topo.request(topo.client, { host: WEB, port: 80, count: 40 }))).length > 1);
});

test.serial('hairpin: a pod reaching itself through its Service is masqueraded', async (t) => {
  const [r] = await topo.request(topo.pods[0]!, { host: HAIR, port: 80 });
  t.is(r!.reply, `pod-1 ${NODE_IP}`, 'answered by itself, seeing the node address');
  const [other] = await topo.request(topo.pods[1]!, { host: HAIR, port: 80 });
  t.is(other!.reply, `pod-1 ${POD_IPS[1]}`, 'another pod keeps its address');
  // control: without hairpin mode on its bridge port the frame cannot go back out the port it came in
  const port = topo.portOf(topo.pods[0]!);
  topo.nsh(topo.node, 'ip', ['link', 'set', port, 'type', 'bridge_slave', 'hairpin', 'off']);
  try {
    const [off] = await topo.request(topo.pods[0]!, { host: HAIR, port: 80, timeoutMs: 1000 });
    t.is(off!.err, 'TIMEOUT', JSON.stringify(off));
  } finally {
    topo.nsh(topo.node, 'ip', ['link', 'set', port, 'type', 'bridge_slave', 'hairpin', 'on']);
  }
  const [back] = await topo.request(topo.pods[0]!, { host: HAIR, port: 80 });
  t.is(back!.reply, `pod-1 ${NODE_IP}`);
});

test.serial('same-node endpoints: br_netfilter un-DNATs the bridged reply; without it the client fails', async (t) => {
  const ok = await topo.request(topo.client, { host: WEB, port: 80, count: 10 });
  t.true(
    ok.every((r) => r.reply?.endsWith(` ${CLIENT_IP}`)),
    JSON.stringify(ok),
  );
  topo.nsh(topo.node, 'sysctl', ['-qw', 'net.bridge.bridge-nf-call-iptables=0']);
  try {
    const bad = await topo.request(topo.client, { host: WEB, port: 80, count: 3, timeoutMs: 1000 });
    t.true(
      bad.every((r) => r.err),
      `the control must fail: ${JSON.stringify(bad)}`,
    );
  } finally {
    // the proxy's own switch puts it back (run inside the node namespace)
    const out = topo.nsh(topo.node, process.execPath, [
      '--input-type=module',
      '-e',
      `import { ensureBridgeNetfilter } from ${JSON.stringify(new URL('../../src/proxy/bridge.ts', import.meta.url).href)}; process.stdout.write(String(ensureBridgeNetfilter()));`,
    ]);
    t.is(out, 'true');
  }
  t.is(topo.nsh(topo.node, 'sysctl', ['-n', 'net.bridge.bridge-nf-call-iptables']).trim(), '1');
  const again = await topo.request(topo.client, { host: WEB, port: 80, count: 3 });
  t.true(
    again.every((r) => r.reply),
    JSON.stringify(again),
  );
});

test.serial('NodePort from outside the cluster: DNAT and masquerade; ClusterIP from outside too', async (t) => {
  const [np] = await topo.request(topo.ext, { host: EXT_NODE_IP, port: 30080 });
  t.regex(np!.reply ?? String(np!.err), /^pod-[123] 198\.18\.0\.1$/, 'masqueraded to the node address');
  const [npUdp] = await topo.request(topo.ext, { host: EXT_NODE_IP, port: 30053, proto: 'udp' });
  t.regex(npUdp!.reply ?? String(npUdp!.err), /^pod-[123] 198\.18\.0\.1$/);
  const [np2] = await topo.request(topo.client, { host: NODE_IP, port: 30080 });
  t.regex(np2!.reply ?? String(np2!.err), /^pod-[123] /, 'a pod reaches the NodePort on the node too');
  const [cip] = await topo.request(topo.ext, { host: WEB, port: 80 });
  t.regex(cip!.reply ?? String(cip!.err), /^pod-[123] 198\.18\.0\.1$/, `${EXT_IP} is outside the cluster CIDR: masqueraded`);
  const [unused] = await topo.request(topo.ext, { host: EXT_NODE_IP, port: 30099, timeoutMs: 700 });
  t.truthy(unused!.err, 'an unused node port is not answered');
  const [empty] = await topo.request(topo.ext, { host: EXT_NODE_IP, port: 30081, timeoutMs: 5000 });
  t.is(empty!.err, 'ECONNREFUSED', 'a NodePort without endpoints is rejected (filter-input)');
  t.true(empty!.ms < 1000);
});

test.serial("externalTrafficPolicy Local: this node's endpoints only, client address kept; none here -> dropped", async (t) => {
  const replies = await topo.request(topo.ext, { host: EXT_NODE_IP, port: 30082, count: 20 });
  t.deepEqual(tally(replies), { 'pod-1': 20 }, 'only the endpoint on node-a');
  t.is(replies[0]!.reply, `pod-1 ${EXT_IP}`, 'source address preserved');
  const [none] = await topo.request(topo.ext, { host: EXT_NODE_IP, port: 30083, timeoutMs: 700 });
  t.is(none!.err, 'TIMEOUT', 'no local endpoint: dropped, so a load balancer health check moves on');
  const [fromNode] = await topo.request(topo.node, { host: EXT_NODE_IP, port: 30083 });
  t.regex(fromNode!.reply ?? String(fromNode!.err), /^pod-2 /, 'the node itself still reaches the cluster-wide endpoints');
  const internal = tally(await topo.request(topo.client, { host: LOC, port: 80, count: 40 }));
  t.deepEqual(Object.keys(internal).sort(), ['pod-1', 'pod-2'], 'the ClusterIP (internal policy Cluster) uses every endpoint');
});

test.serial('a full sync under a connection loop loses no connection', async (t) => {
  const loop = topo.requestAsync(topo.client, { host: WEB, port: 80, count: 400 });
  const { services, slices } = objects();
  const state = selectEndpoints(services, slices, { nodeName: 'node-a' });
  let fulls = 0;
  const until = Date.now() + 60_000;
  let finished = false;
  void loop.result.finally(() => (finished = true));
  while (!finished && Date.now() < until) {
    const r = await syncer.sync(state, { full: true });
    if (r.mode === 'full') fulls++;
  }
  const replies = await loop.result;
  t.true(fulls >= 3, `${fulls} full syncs during the loop`);
  const refused = replies.flatMap((r, i) => (r.err ? [`#${i}: ${r.err} after ${r.ms} ms`] : []));
  t.deepEqual(tally(replies)['err:ECONNREFUSED'] ?? 0, 0, `${refused.join(', ')}; ${fulls} full syncs; syncer warnings: ${warnings.join(' | ') || 'none'}`);
  t.true(
    replies.every((r) => r.reply),
    JSON.stringify(tally(replies)),
  );
});

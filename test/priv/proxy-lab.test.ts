/**
 * Services end to end (issue 9) in a Kubernetes-mode lab: weftd --proxy on three nodes, echo
 * servers in one pod per node, a Service and its EndpointSlice created through the lab API
 * server. ClusterIP from pods and nodes over TCP and UDP, spread over three endpoints, readiness
 * changes, no endpoints -> refused at once, NodePort from outside the cluster, a deleted Service
 * leaves nothing behind, a weftd restart under a connection loop loses nothing.
 */
import test from 'ava';
import { eventually, inNs } from '../helpers/netns.ts';
import { startCluster, type Cluster } from '../helpers/cluster.ts';
import type { EchoReply } from '../../lab/topology.ts';
import { defaultNftBin } from '../../src/rules/nft.ts';

let cluster: Cluster;
let clusterIP = '';
let nodePort = 0;
const NS = '/api/v1/namespaces/default';
const SLICES = '/apis/discovery.k8s.io/v1/namespaces/default/endpointslices';

function slice(endpoints: Array<{ ip: string; node: string; ready?: boolean }>) {
  return {
    apiVersion: 'discovery.k8s.io/v1',
    kind: 'EndpointSlice',
    metadata: { name: 'echo-abc', namespace: 'default', labels: { 'kubernetes.io/service-name': 'echo' } },
    addressType: 'IPv4',
    endpoints: endpoints.map((e) => ({ addresses: [e.ip], nodeName: e.node, conditions: { ready: e.ready ?? true } })),
    ports: [
      { name: 'tcp', port: 8080, protocol: 'TCP' },
      { name: 'udp', port: 5353, protocol: 'UDP' },
    ],
  };
}

const endpointsNow = () => cluster.pods.map((p) => ({ ip: p.ip, node: p.node }));
const from = (replies: EchoReply[]) => replies.map((r) => r.reply?.split(' ')[0] ?? r.err);

async function putSlice(endpoints: Array<{ ip: string; node: string; ready?: boolean }>) {
  const cur = await cluster.topo.api('GET', `${SLICES}/echo-abc`, undefined, { allow404: true });
  const body = slice(endpoints);
  if (cur) await cluster.topo.api('PUT', `${SLICES}/echo-abc`, { ...body, metadata: { ...body.metadata, resourceVersion: cur.metadata.resourceVersion } });
  else await cluster.topo.api('POST', SLICES, body);
}

test.before(async () => {
  cluster = await startCluster({ nodes: 3, podsPerNode: 1, mode: 'kube', weftdArgs: ['--proxy'] });
  for (const p of cluster.pods) await cluster.topo.startEcho(p.name, { tcp: [8080], udp: [5353] });
  const svc = await cluster.topo.api('POST', `${NS}/services`, {
    apiVersion: 'v1',
    kind: 'Service',
    metadata: { name: 'echo', namespace: 'default' },
    spec: {
      type: 'NodePort',
      selector: { app: 'echo' },
      ports: [
        { name: 'tcp', port: 80, targetPort: 8080, protocol: 'TCP' },
        { name: 'udp', port: 53, targetPort: 5353, protocol: 'UDP' },
      ],
    },
  });
  clusterIP = svc.spec.clusterIP;
  nodePort = svc.spec.ports[0].nodePort;
  await putSlice(endpointsNow());
});

test.after.always(async () => {
  await cluster?.destroy();
});

test.serial('every pod and every node reaches the ClusterIP over TCP and UDP', async (t) => {
  t.regex(clusterIP, /^198\.19\./);
  const ok = await eventually(async () => (await cluster.topo.echoRequest(cluster.pods[0]!.netns, { host: clusterIP, port: 80 }))[0]?.reply !== undefined, 10_000);
  t.true(ok, 'rules programmed');
  for (const ns of [...cluster.pods.map((p) => p.netns), ...cluster.topo.state.nodes.map((n) => n.netns)]) {
    for (const [proto, port] of [
      ['tcp', 80],
      ['udp', 53],
    ] as const) {
      const [r] = await cluster.topo.echoRequest(ns, { host: clusterIP, port, proto });
      t.truthy(r?.reply, `${ns} ${proto}: ${JSON.stringify(r)}`);
      t.true(
        cluster.pods.some((p) => r?.reply?.startsWith(`${p.name} `)),
        `${ns} ${proto}: answered by an endpoint pod`,
      );
    }
  }
});

test.serial('300 connections spread over 3 endpoints (each between 60 and 140, about 5 sigma)', async (t) => {
  const replies = await cluster.topo.echoRequest(cluster.pods[0]!.netns, { host: clusterIP, port: 80, count: 300 });
  const tally: Record<string, number> = {};
  for (const who of from(replies)) tally[who ?? '?'] = (tally[who ?? '?'] ?? 0) + 1;
  t.log(JSON.stringify(tally));
  t.deepEqual(Object.keys(tally).sort(), cluster.pods.map((p) => p.name).sort());
  for (const n of Object.values(tally)) t.true(n >= 60 && n <= 140, JSON.stringify(tally));
});

test.serial('an endpoint marked not ready is excluded within 1 s; all endpoints gone -> refused at once', async (t) => {
  const [a, b, c] = cluster.pods;
  await putSlice([
    { ip: a!.ip, node: a!.node },
    { ip: b!.ip, node: b!.node, ready: false },
    { ip: c!.ip, node: c!.node },
  ]);
  const t0 = Date.now();
  t.true(await eventually(async () => !from(await cluster.topo.echoRequest(a!.netns, { host: clusterIP, port: 80, count: 30 })).includes(b!.name), 1000), 'not-ready endpoint excluded');
  t.log(`excluded after ${Date.now() - t0} ms`);
  await putSlice([]);
  t.true(await eventually(async () => (await cluster.topo.echoRequest(a!.netns, { host: clusterIP, port: 80 }))[0]?.err === 'ECONNREFUSED', 2000));
  const [r] = await cluster.topo.echoRequest(a!.netns, { host: clusterIP, port: 80, timeoutMs: 3000 });
  t.is(r?.err, 'ECONNREFUSED');
  t.true(r!.ms < 1000, `refused at once, not a timeout (${r!.ms} ms)`);
  const [u] = await cluster.topo.echoRequest(a!.netns, { host: clusterIP, port: 53, proto: 'udp', timeoutMs: 3000 });
  t.is(u?.err, 'ECONNREFUSED', 'UDP gets port unreachable');
  await putSlice(endpointsNow());
  t.true(await eventually(async () => (await cluster.topo.echoRequest(a!.netns, { host: clusterIP, port: 80 }))[0]?.reply !== undefined, 2000));
});

test.serial('NodePort from outside the cluster (the control-plane namespace on the underlay)', async (t) => {
  const outside = cluster.topo.state.etcdNetns;
  for (const n of cluster.topo.state.nodes) {
    const [r] = await cluster.topo.echoRequest(outside, { host: n.ip, port: nodePort });
    t.truthy(r?.reply, `${n.name}:${nodePort} ${JSON.stringify(r)}`);
  }
});

test.serial('a weftd restart under a running connection loop loses no connection', async (t) => {
  const client = cluster.pods[0]!;
  const loop = cluster.topo.echoRequest(client.netns, { host: clusterIP, port: 80, count: 150, timeoutMs: 2000 });
  await new Promise((r) => setTimeout(r, 300));
  await cluster.topo.stopDaemon(client.node, 'SIGKILL');
  await cluster.topo.startDaemon(client.node);
  const replies = await loop;
  const failed = replies.filter((r) => !r.reply);
  t.is(failed.length, 0, JSON.stringify(failed.slice(0, 5)));
});

test.serial('a deleted Service leaves no chain, map element or rejection behind', async (t) => {
  const node = cluster.topo.state.nodes[0]!;
  const table = () => inNs(node.netns, defaultNftBin(), ['list', 'table', 'ip', 'weft-proxy']);
  t.regex(table(), new RegExp(clusterIP.replaceAll('.', '\\.')));
  await cluster.topo.api('DELETE', `${NS}/services/echo`);
  await cluster.topo.api('DELETE', `${SLICES}/echo-abc`);
  t.true(await eventually(() => !table().includes(clusterIP), 2000), table());
  t.notRegex(table(), /default\/echo/, 'no chain of the deleted Service');
});

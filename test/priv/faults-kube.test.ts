/**
 * The fault-injection suite in Kubernetes mode (issue 11 item 6, last sentence): a 3-node lab
 * cluster (--kube-subnet-mgr) whose daemons reach the lab API server only through the
 * fault-injecting TCP proxy (test/helpers/faultproxy.ts) in the control-plane namespace: weftd
 * gets a kubeconfig naming the proxy's port instead of the API server's. Pings run between
 * existing pods in each scenario. Figures are printed with t.log and written to a results file
 * whose path is printed, as test/priv/faults.test.ts does for etcd mode.
 *
 * Peer changes are made on a fake Node ("wt-fake": a podCIDR and the annotations a kube-mode
 * weftd writes, public IP 198.51.100.90, which no host has) straight on the API server, not
 * through the proxy. Shortened for CI time: the API server is blackholed 15 s, one node is cut
 * off from it 12 s, connections are reset every 3 s for 21 s, weftd is SIGKILLed 10 times at
 * random moments of start-up; the fake peer flaps 100 times. Only generous bounds are asserted
 * (0 lost pings, a change applied < 5 s after an outage ends, nothing left behind); other
 * timings are reported.
 *
 * Kubernetes mode has no lease TTL (a Node's podCIDR is its for life), so unlike etcd mode's
 * partitioned node, one cut off from the API server is never dropped by the others.
 */
import test from 'ava';
import { spawn } from 'node:child_process';
import { existsSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { FaultProxyProcess } from '../helpers/faultproxy.ts';
import {
  converged as clusterConverged,
  FaultFigures,
  isAlive,
  lostTotal,
  metricSum as clusterMetricSum,
  pingPairs as clusterPingPairs,
  faultSuiteHooks,
  ring,
  sentTotal,
  statuses as clusterStatuses,
} from '../helpers/faults.ts';
import { startCluster, type Cluster } from '../helpers/cluster.ts';
import { eventually } from '../helpers/netns.ts';
import { writeKubeconfig } from '../../lab/apiserver/kubeconfig.ts';

const API_IP = '198.51.100.2';
const PROXY_PORT = 16443;
const ANN = 'flannel.alpha.coreos.com';
const FAKE = 'wt-fake';
const FAKE_SUBNET = '198.18.240.0/24';
const FAKE_IP = '198.51.100.90';
/** The fake's other public IP, for the flapping peer (no host has it either). */
const FAKE_IP2 = '198.51.100.91';
const NODES = ['n1', 'n2', 'n3'];

let cluster: Cluster;
let proxy: FaultProxyProcess;
const figures = new FaultFigures('weft-faults-kube-');
const proxyKubeconfig = join(figures.dir, 'kubeconfig-via-proxy');
const record = figures.record.bind(figures);

test.before(async () => {
  writeKubeconfig(proxyKubeconfig, { server: `http://${API_IP}:${PROXY_PORT}` });
  // The later --kubeconfig wins over the one the lab passes (weftd's parseArgs keeps the last).
  cluster = await startCluster({ nodes: 3, start: false, mode: 'kube', weftdArgs: ['--kubeconfig', proxyKubeconfig] });
  proxy = await FaultProxyProcess.start(cluster.topo.state.etcdNetns, { listen: `${API_IP}:${PROXY_PORT}`, upstream: `${API_IP}:6443` });
  await Promise.all(NODES.map((n) => cluster.topo.startDaemon(n)));
  for (const n of NODES) await cluster.addPods(n, 1);
});

// A dead daemon's log tail and a failed scenario's logs are kept; the proxy is put back to pass.
faultSuiteHooks(test, () => ({ cluster, proxy }), NODES, figures);

const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));
const converged = (extra = 0) => clusterConverged(cluster, NODES, extra);
const statuses = (path: string) => clusterStatuses(cluster, NODES, path);
const metricSum = (name: string) => clusterMetricSum(cluster, NODES, name);

/** Pings between the given node pairs' pods every 200 ms for `seconds` (default: both ways around the ring). */
const pingPairs = (seconds: number, pairs: Array<[string, string]> = ring(NODES)) => clusterPingPairs(cluster, seconds, pairs);

const backendData = (mac: string) => JSON.stringify({ VNI: 1, VtepMAC: mac });

/** The fake peer Node's annotations, as a kube-mode weftd annotates its own. */
const fakeAnnotations = (mac: string, ip = FAKE_IP) => ({
  [`${ANN}/backend-type`]: 'vxlan',
  [`${ANN}/backend-data`]: backendData(mac),
  [`${ANN}/public-ip`]: ip,
  [`${ANN}/kube-subnet-manager`]: 'true',
});

const fakeNode = (mac: string, ip = FAKE_IP) => ({
  apiVersion: 'v1',
  kind: 'Node',
  metadata: { name: FAKE, annotations: fakeAnnotations(mac, ip) },
  spec: { podCIDR: FAKE_SUBNET, podCIDRs: [FAKE_SUBNET] },
});

/** Creates the fake peer Node. */
async function createFake(mac: string): Promise<void> {
  await cluster.topo.api('POST', '/api/v1/nodes', fakeNode(mac));
}

/** Changes the fake peer's VTEP MAC (what a peer's weftd does when its device is re-created). */
async function setFakeMac(mac: string): Promise<void> {
  await cluster.topo.api('PATCH', `/api/v1/nodes/${FAKE}`, { metadata: { annotations: { [`${ANN}/backend-data`]: backendData(mac) } } }, { contentType: 'application/merge-patch+json' });
}

async function deleteFake(): Promise<void> {
  await cluster.topo.api('DELETE', `/api/v1/nodes/${FAKE}`, undefined, { allow404: true });
}

function hasFake(node: string, mac: string): boolean {
  const o = cluster.overlay(node);
  return (
    o.routes.some((r) => r.dst === FAKE_SUBNET && r.gateway === '198.18.240.0') &&
    o.neighs.some((n) => n.dst === '198.18.240.0' && n.lladdr === mac) &&
    o.fdbs.some((f) => f.mac === mac && f.dst === FAKE_IP)
  );
}

/** The fake's route, neighbor and FDB entries on a node (under either public IP). */
const fakeEntries = (n: string) => cluster.entriesFor(n, FAKE_SUBNET, FAKE_IP) + cluster.overlay(n).fdbs.filter((f) => f.dst === FAKE_IP2).length;
const fakeGone = () => NODES.every((n) => fakeEntries(n) === 0);

/** Milliseconds after `since` at which each of `nodes` showed the fake with `mac` (absent: never, within `timeoutMs`). */
async function appliedAfter(since: number, mac: string, timeoutMs: number, nodes = NODES): Promise<Record<string, number>> {
  const at: Record<string, number> = {};
  await eventually(
    () => {
      for (const n of nodes) if (at[n] === undefined && hasFake(n, mac)) at[n] = Date.now() - since;
      return Object.keys(at).length === nodes.length;
    },
    timeoutMs,
    100,
  );
  return at;
}

const watchLines = (n: string) =>
  cluster
    .log(n)
    .split('\n')
    .filter((l) => /node watch|node list|kube API/.test(l))
    .slice(-8)
    .join('\n');

/**
 * Deletes the fake Node when a scenario ends, however it ends: a failed assertion ends the test
 * at once, and a fake left behind would fail every later scenario too.
 */
function deleteFakeAfter(t: { teardown(fn: () => Promise<void>): void }): void {
  t.teardown(async () => {
    await proxy.pass();
    await deleteFake().catch(() => undefined);
    await eventually(fakeGone, 20_000);
  });
}

test.serial('API server blackholed 15 s: no lost pings, healthy and ready throughout, a peer change applied < 5 s after', async (t) => {
  deleteFakeAfter(t);
  t.true(converged());
  await createFake('02:00:00:00:e0:01');
  t.true(await eventually(() => NODES.every((n) => hasFake(n, '02:00:00:00:e0:01')), 10_000), 'the fake peer is programmed before the outage');
  const errorsBefore = await metricSum('weftd_kube_api_errors_total');
  const pings = pingPairs(19);
  await sleep(1000);
  await proxy.blackhole();
  const startedAt = Date.now();
  await sleep(3000);
  // The peer change, made on the API server during the outage.
  await setFakeMac('02:00:00:00:e0:02');
  await sleep(7000);
  const during = { healthz: await statuses('/healthz'), readyz: await statuses('/readyz') };
  await sleep(Math.max(0, 15_000 - (Date.now() - startedAt)));
  t.false(
    NODES.some((n) => hasFake(n, '02:00:00:00:e0:02')),
    'nothing arrived through the blackhole',
  );
  await proxy.pass();
  const endedAt = Date.now();
  const appliedMs = await appliedAfter(endedAt, '02:00:00:00:e0:02', 20_000);
  const ping = await pings.results();
  const apiErrors = (await metricSum('weftd_kube_api_errors_total')) - errorsBefore;
  const restarts = await metricSum('weftd_watch_restarts_total');
  record(t, 'API server blackholed 15s', {
    outageMs: endedAt - startedAt,
    pingsSent: sentTotal(ping),
    lostPings: lostTotal(ping),
    ping,
    during,
    peerChangeAppliedMsAfterOutage: appliedMs,
    kubeApiErrors: apiErrors,
    watchRestartsTotal: restarts,
  });
  t.is(lostTotal(ping), 0, JSON.stringify(ping));
  t.deepEqual(during.healthz, { n1: 200, n2: 200, n3: 200 }, 'alive: the data plane needs no API server');
  t.deepEqual(during.readyz, { n1: 200, n2: 200, n3: 200 }, 'ready: the subnet file stays valid, new pods can start');
  for (const n of NODES) {
    t.not(appliedMs[n], undefined, `${n} applied the change:\n${watchLines(n)}`);
    t.true(appliedMs[n] < 5000, `${n} applied the change ${appliedMs[n]} ms after the outage`);
  }
  await deleteFake();
  t.true(await eventually(fakeGone, 20_000), 'the deleted fake Node leaves nothing behind');
});

test.serial('one node partitioned from the API server 12 s: every node keeps its peers, no lost pings, a peer change applied on it < 5 s after', async (t) => {
  deleteFakeAfter(t);
  const n3 = cluster.node('n3');
  const others = ['n1', 'n2'];
  t.true(converged());
  await createFake('02:00:00:00:e3:01');
  t.true(await eventually(() => NODES.every((n) => hasFake(n, '02:00:00:00:e3:01')), 10_000), 'the fake peer is programmed before the partition');
  const errorsBefore = await metricSum('weftd_kube_api_errors_total');
  const pings = pingPairs(16);
  await sleep(1000);
  // n3's watch last carried data (the fake's ADDED) ~1 s ago, so the 12 s stall stays well inside
  // client-node's 30 s watch inactivity timeout: the watch just resumes, nothing restarts.
  await proxy.blackhole(n3.ip);
  const startedAt = Date.now();
  await sleep(2000);
  // The peer change, made on the API server during the partition: n1 and n2 still see it at once.
  const changedAt = Date.now();
  await setFakeMac('02:00:00:00:e3:02');
  const othersMs = await appliedAfter(changedAt, '02:00:00:00:e3:02', 8000, others);
  // No lease TTL in Kubernetes mode: n3's Node stays, so nobody drops it, and it drops nobody.
  const during = {
    n3healthz: (await cluster.topo.http('n3', '/healthz')).status,
    n3readyz: (await cluster.topo.http('n3', '/readyz')).status,
    othersKeptN3: others.every((n) => cluster.hasPeer(n, 'n3')),
    n3KeptItsPeers: others.every((n) => cluster.hasPeer('n3', n)),
    n3KeptTheOldFake: hasFake('n3', '02:00:00:00:e3:01'),
  };
  await sleep(Math.max(0, 12_000 - (Date.now() - startedAt)));
  const n3GotNothing = !hasFake('n3', '02:00:00:00:e3:02');
  await proxy.pass(n3.ip);
  const endedAt = Date.now();
  const n3Ms = await appliedAfter(endedAt, '02:00:00:00:e3:02', 20_000, ['n3']);
  const ping = await pings.results();
  const apiErrors = (await metricSum('weftd_kube_api_errors_total')) - errorsBefore;
  record(t, 'n3 partitioned 12s', {
    partitionMs: endedAt - startedAt,
    pingsSent: sentTotal(ping),
    lostPings: lostTotal(ping),
    ping,
    during,
    peerChangeAppliedMsAfterChange: othersMs,
    peerChangeAppliedMsAfterPartition: n3Ms,
    kubeApiErrors: apiErrors,
    watchRestartsTotal: await metricSum('weftd_watch_restarts_total'),
  });
  t.is(lostTotal(ping), 0, JSON.stringify(ping));
  t.is(during.n3healthz, 200, 'n3 alive: its data plane needs no API server');
  t.is(during.n3readyz, 200, 'n3 ready: its subnet file stays valid');
  t.true(during.othersKeptN3, 'n1 and n2 keep n3 (its Node is still there)');
  t.true(during.n3KeptItsPeers, 'n3 keeps n1 and n2');
  t.true(during.n3KeptTheOldFake, 'and the fake as it last saw it');
  t.true(n3GotNothing, 'nothing reached n3 through the partition');
  for (const n of others) {
    t.not(othersMs[n], undefined, `${n} applied the change during the partition:\n${watchLines(n)}`);
    t.true(othersMs[n] < 5000, `${n} applied the change ${othersMs[n]} ms after it was made`);
  }
  t.not(n3Ms.n3, undefined, `n3 applied the change after the partition:\n${watchLines('n3')}`);
  t.true(n3Ms.n3 < 5000, `n3 applied the change ${n3Ms.n3} ms after the partition`);
  t.true(converged(1), 'every real peer still programmed, the fake once');
  await deleteFake();
  t.true(await eventually(fakeGone, 20_000), 'the deleted fake Node leaves nothing behind');
});

test.serial('a peer flapping 100 times (annotations changed, Node deleted and re-created): no neighbor, FDB entry or route leaked', async (t) => {
  deleteFakeAfter(t);
  t.true(converged());
  const logAt = Object.fromEntries(NODES.map((n) => [n, cluster.log(n).length]));
  const errorsBefore = await metricSum('weftd_kube_api_errors_total');
  // One client in the control-plane namespace, straight to the API server, one request at a
  // time (as fast as it takes them): create the fake, change its MAC and public IP (the two
  // sets alternate), delete it; 100 times.
  const flap = [
    { mac: '02:00:00:00:e4:02', ip: FAKE_IP },
    { mac: '02:00:00:00:e4:03', ip: FAKE_IP2 },
  ];
  const script = join(figures.dir, 'flap.mjs');
  writeFileSync(
    script,
    `const base = ${JSON.stringify(cluster.topo.state.apiServer!.url)};
    const nodes = ${JSON.stringify(flap.map((v) => fakeNode(v.mac, v.ip)))};
    const call = async (method, path, body, type = 'application/json') => {
      const r = await fetch(base + path, { method, headers: { accept: 'application/json', 'content-type': type }, body: body && JSON.stringify(body) });
      const text = await r.text();
      if (!r.ok) throw new Error(method + ' ' + path + ': HTTP ' + r.status + ': ' + text.slice(0, 300));
    };
    let requests = 0;
    for (let i = 0; i < 100; i++) {
      const [a, b] = i % 2 ? [nodes[1], nodes[0]] : [nodes[0], nodes[1]];
      await call('POST', '/api/v1/nodes', a);
      await call('PATCH', '/api/v1/nodes/${FAKE}', { metadata: { annotations: b.metadata.annotations } }, 'application/merge-patch+json');
      await call('DELETE', '/api/v1/nodes/${FAKE}');
      requests += 3;
    }
    console.log(requests);`,
  );
  const startedAt = Date.now();
  const child = spawn('nsenter', [`--net=/run/netns/${cluster.topo.state.etcdNetns}`, '--', process.execPath, script], { stdio: ['ignore', 'pipe', 'inherit'] });
  t.teardown(() => child.kill('SIGKILL'));
  let out = '';
  child.stdout.on('data', (d) => (out += d));
  const code = await new Promise<number | null>((r) => child.on('close', r));
  const flapMs = Date.now() - startedAt;
  t.is(code, 0, 'the flap script ran to the end');
  const ok = await eventually(() => converged() && fakeGone(), 20_000, 100);
  const settleMs = Date.now() - startedAt - flapMs;
  const leftovers = Object.fromEntries(NODES.map((n) => [n, fakeEntries(n)]));
  const fakeFdbs = Object.fromEntries(NODES.map((n) => [n, cluster.overlay(n).fdbs.filter((f) => f.mac.startsWith('02:00:00:00:e4')).length]));
  const work = Object.fromEntries(
    NODES.map((n) => {
      const log = cluster.log(n).slice(logAt[n]);
      const count = (re: RegExp) => (log.match(re) ?? []).length;
      return [n, { added: count(/peer added: 198\.18\.240\.0\/24/g), changed: count(/peer changed: 198\.18\.240\.0\/24/g), removed: count(/peer removed: 198\.18\.240\.0\/24/g) }];
    }),
  );
  record(t, 'peer flapping 100 times', {
    requests: Number(out.trim()),
    flapMs,
    settleMsAfterLastChange: settleMs,
    leftovers,
    fakeFdbs,
    work,
    kubeApiErrors: (await metricSum('weftd_kube_api_errors_total')) - errorsBefore,
  });
  t.true(ok, `only the real peers are left on flannel.1:\n${NODES.map(watchLines).join('\n')}`);
  t.deepEqual(leftovers, { n1: 0, n2: 0, n3: 0 });
  t.deepEqual(fakeFdbs, { n1: 0, n2: 0, n3: 0 });
  for (const n of NODES) {
    // The flap reached every node, and no change was applied twice (some may be coalesced).
    t.true(work[n].added >= 1 && work[n].added <= 100, `${n}: added ${work[n].added} times for 100 creates`);
    t.true(work[n].changed <= 100, `${n}: changed ${work[n].changed} times for 100 changes`);
    t.true(work[n].removed <= 100, `${n}: removed ${work[n].removed} times for 100 deletes`);
  }
});

test.serial('connections reset every 3 s for 21 s: converges, each change applied once, no kernel repairs', async (t) => {
  deleteFakeAfter(t);
  const repairsBefore = await metricSum('weftd_reconcile_repairs_total');
  const logAt = Object.fromEntries(NODES.map((n) => [n, cluster.log(n).length]));
  const pings = pingPairs(24);
  let resets = 0;
  let creates = 0;
  let changes = 0;
  let deletes = 0;
  await createFake('02:00:00:00:e1:00');
  creates++;
  for (let i = 1; i <= 7; i++) {
    await sleep(3000);
    resets += await proxy.reset();
    // Peer changes while connections keep breaking: a new MAC each time, a delete and re-create once.
    if (i === 4) {
      await deleteFake();
      deletes++;
    } else if (i === 5) {
      await createFake(`02:00:00:00:e1:0${i}`);
      creates++;
    } else {
      await setFakeMac(`02:00:00:00:e1:0${i}`);
      changes++;
    }
  }
  await setFakeMac('02:00:00:00:e1:ff');
  changes++;
  const quietAt = Date.now();
  const ok = await eventually(() => converged(1) && NODES.every((n) => hasFake(n, '02:00:00:00:e1:ff')), 30_000, 100);
  const convergeMs = Date.now() - quietAt;
  const ping = await pings.results();
  const work = Object.fromEntries(
    NODES.map((n) => {
      const log = cluster.log(n).slice(logAt[n]);
      const count = (re: RegExp) => (log.match(re) ?? []).length;
      return [
        n,
        {
          added: count(/peer added: 198\.18\.240\.0\/24/g),
          changed: count(/peer changed: 198\.18\.240\.0\/24/g),
          removed: count(/peer removed: 198\.18\.240\.0\/24/g),
          relists: count(/node list: re-listed/g),
        },
      ];
    }),
  );
  const repairs = (await metricSum('weftd_reconcile_repairs_total')) - repairsBefore;
  const stats = await proxy.stats();
  record(t, 'resets every 3s for 21s', {
    resets,
    creates,
    changes,
    deletes,
    convergeMsAfterLastChange: convergeMs,
    pingsSent: sentTotal(ping),
    lostPings: lostTotal(ping),
    ping,
    work,
    kernelRepairs: repairs,
    proxyConnectionsAccepted: stats.accepted,
  });
  t.true(ok, `converged:\n${NODES.map(watchLines).join('\n')}`);
  t.true(resets >= 7, `${resets} connections reset`);
  t.is(lostTotal(ping), 0, JSON.stringify(ping));
  for (const n of NODES) {
    // Each change applied at most once (some may be coalesced when a watch resumes late), the last one at all.
    t.true(work[n].added >= 1 && work[n].added <= creates, `${n}: added ${work[n].added} times for ${creates} creates`);
    t.true(work[n].changed <= changes, `${n}: changed ${work[n].changed} times for ${changes} MAC changes`);
    t.true(work[n].removed <= deletes, `${n}: removed ${work[n].removed} times for ${deletes} deletes`);
  }
  t.is(repairs, 0, 'no kernel state had to be repaired');
  await deleteFake();
  t.true(await eventually(fakeGone, 20_000));
});

test.serial('API server restarted (stop, start on the same etcd): the informers recover, nothing lost', async (t) => {
  deleteFakeAfter(t);
  const before = Object.fromEntries(NODES.map((n) => [n, cluster.subnetOf(n)]));
  await createFake('02:00:00:00:e2:01');
  t.true(await eventually(() => NODES.every((n) => hasFake(n, '02:00:00:00:e2:01')), 10_000));
  const pings = pingPairs(14);
  await sleep(1000);
  await cluster.topo.stopApiServer('SIGTERM');
  const stoppedAt = Date.now();
  // n3's weftd restarts while the API server is down: it must wait for it, not exit.
  await cluster.topo.stopDaemon('n3', 'SIGKILL');
  await cluster.topo.startDaemon('n3', { wait: false });
  await sleep(4000);
  const during = { healthz: await statuses('/healthz'), readyz: await statuses('/readyz') };
  const n3AliveDuring = isAlive(cluster.node('n3').pid);
  await cluster.topo.startApiServer();
  const startedAt = Date.now();
  // A change right after the restart: applied once each informer is back.
  await setFakeMac('02:00:00:00:e2:02');
  let n3ReadyMs: number | undefined;
  const n3Ready = eventually(async () => (await cluster.topo.http('n3', '/readyz')).status === 200, 30_000).then((ok) => {
    if (ok) n3ReadyMs = Date.now() - startedAt;
  });
  const appliedMs = await appliedAfter(startedAt, '02:00:00:00:e2:02', 40_000);
  await n3Ready;
  const ping = await pings.results();
  const ok = await eventually(() => converged(1), 10_000);
  const podCIDRs = Object.fromEntries(await Promise.all(NODES.map(async (n) => [n, (await cluster.topo.getNode(n))?.spec?.podCIDR] as const)));
  record(t, 'API server restarted', {
    downMs: startedAt - stoppedAt,
    during,
    peerChangeAppliedMsAfterRestart: appliedMs,
    n3RestartedDuringOutage: { aliveDuring: n3AliveDuring, readyMsAfterApiServerStart: n3ReadyMs },
    pingsSent: sentTotal(ping),
    lostPings: lostTotal(ping),
    ping,
  });
  t.true(ok, 'every peer still programmed, nothing extra');
  t.is(lostTotal(ping), 0, JSON.stringify(ping));
  t.deepEqual(during.healthz, { n1: 200, n2: 200, n3: 200 }, 'alive, n3 too while it waits for the API server');
  t.is(during.readyz.n1, 200);
  t.is(during.readyz.n2, 200);
  t.is(during.readyz.n3, 503, 'n3, started during the outage, is not ready yet');
  t.true(n3AliveDuring, 'weftd started while the API server is down waits for it instead of exiting');
  t.not(n3ReadyMs, undefined, 'and becomes ready once it is back');
  for (const n of NODES) {
    t.not(appliedMs[n], undefined, `${n} applied the change after the restart:\n${watchLines(n)}`);
    // Generous: the informer's restart backoff (1 s doubling) is running through the outage.
    t.true(appliedMs[n] < 20_000, `${n} applied the change ${appliedMs[n]} ms after the restart`);
    t.is(cluster.subnetOf(n), before[n], `${n} kept its subnet`);
    t.is(podCIDRs[n], before[n], `${n}'s Node kept its podCIDR`);
  }
  await deleteFake();
  t.true(await eventually(fakeGone, 20_000));
});

test.serial('weftd SIGKILLed at random moments of start-up 10 times: converges every time, same podCIDR', async (t) => {
  const subnet = cluster.subnetOf('n2');
  const mac = cluster.overlay('n2').mac;
  const kills: number[] = [];
  const readyMs: number[] = [];
  // Pings between the other nodes' pods (asserted) and to n2's pod (reported).
  const pings = pingPairs(40, [
    ['n1', 'n3'],
    ['n3', 'n1'],
  ]);
  const toN2 = pingPairs(40, [['n1', 'n2']]);
  // Random start-up moments: spread over 0..1.5 s, about weftd's time to ready here.
  for (let i = 0; i < 10; i++) {
    await cluster.topo.stopDaemon('n2', 'SIGKILL');
    await cluster.topo.startDaemon('n2', { wait: false });
    const at = Math.floor(Math.random() * 1500);
    await sleep(at);
    await cluster.topo.stopDaemon('n2', 'SIGKILL');
    kills.push(at);
    const startAt = Date.now();
    await cluster.topo.startDaemon('n2');
    readyMs.push(Date.now() - startAt);
    t.true(await eventually(converged, 10_000), `converged after kill ${i + 1} at ${at} ms`);
    t.is(cluster.subnetOf('n2'), subnet, `kill ${i + 1}: same subnet`);
  }
  const node = await cluster.topo.getNode('n2');
  const figures = await pings.results();
  const n2figures = await toN2.results();
  record(t, 'SIGKILL during start-up x10', {
    killAtMs: kills,
    readyMsAfterRestart: readyMs,
    pingsSent: sentTotal(figures),
    lostPings: lostTotal(figures),
    ping: figures,
    pingToN2: n2figures,
  });
  t.is(node?.spec?.podCIDR, subnet, 'the Node keeps its podCIDR');
  t.is(JSON.parse(node?.metadata?.annotations?.[`${ANN}/backend-data`] ?? '{}').VtepMAC, mac, 'and its annotated MAC');
  t.is(cluster.overlay('n2').mac, mac, 'flannel.1 keeps its MAC');
  t.is(lostTotal(figures), 0, JSON.stringify(figures));
});

/**
 * The API server's store lost: the API server and its etcd killed, etcd's data dir deleted, both
 * started empty. What a real cluster's components then do is done by hand: each kubelet
 * registers its Node again (name, labels, addresses; a kubelet registers once per start, so in a
 * real cluster that is when it is restarted) and the node IPAM controller gives it a podCIDR. The
 * lab re-creates every Node with the podCIDR it had (the lab's node IPAM claims a podCIDR set on
 * create). A controller that hands out different podCIDRs is a different scenario: weftd then
 * exits on purpose ("podCIDR changed ... restarting to take the new one", manager.ts) and its
 * restart moves the node onto the new subnet; Kubernetes mode has no lost-subnet waiting (the
 * kube subnet manager cannot lose a subnet). The flannel annotations are weftd's to write back.
 *
 * weftd's informer held a resourceVersion far beyond the new store's revision: it must list the
 * new store instead of watching from that version (src/kube/informer.ts, currentVersion). The
 * empty listing removes every peer until the Nodes are back: the pings lost are that gap, which
 * here is as short as the test makes it (the Nodes come back once every weftd has seen the empty
 * list). Kept last: it replaces every object the API server had.
 */
test.serial('API server restarted on an empty store (data lost): every weftd re-annotates its re-registered Node, peers converge with the same subnets', async (t) => {
  t.true(converged(), 'converged before');
  const before = Object.fromEntries(NODES.map((n) => [n, { subnet: cluster.subnetOf(n)!, mac: cluster.overlay(n).mac! }]));
  const nodesBefore = Object.fromEntries(await Promise.all(NODES.map(async (n) => [n, await cluster.topo.getNode(n)] as const)));
  const logAt = Object.fromEntries(NODES.map((n) => [n, cluster.log(n).length]));
  /** What a kubelet registers (as the lab's own registration: the Node, then its addresses), with the old podCIDR. */
  const register = async (n: string) => {
    const old = nodesBefore[n];
    await cluster.topo.api('POST', '/api/v1/nodes', {
      apiVersion: 'v1',
      kind: 'Node',
      metadata: { name: n, labels: old.metadata.labels },
      spec: { podCIDR: before[n]!.subnet, podCIDRs: [before[n]!.subnet] },
    });
    await cluster.topo.api('PATCH', `/api/v1/nodes/${n}/status`, { status: { addresses: old.status.addresses } }, { contentType: 'application/strategic-merge-patch+json' });
  };
  // However the scenario ends, etcd and the API server run and every Node is registered again.
  t.teardown(async () => {
    if (!isAlive(cluster.topo.state.etcdPid)) await cluster.topo.startEtcd().catch(() => undefined);
    if (!isAlive(cluster.topo.state.apiServer?.pid)) await cluster.topo.startApiServer().catch(() => undefined);
    for (const n of NODES) if (!(await cluster.topo.getNode(n).catch(() => ({})))) await register(n).catch(() => undefined);
  });
  const pings = pingPairs(30);
  await sleep(1000);
  await cluster.topo.stopApiServer('SIGKILL');
  await cluster.topo.stopEtcd('SIGKILL');
  const stoppedAt = Date.now();
  rmSync(cluster.etcd.dataDir, { recursive: true, force: true });
  const etcdLog = join(cluster.topo.state.workDir, 'etcd.log');
  const etcdLogAt = existsSync(etcdLog) ? readFileSync(etcdLog, 'utf8').length : 0;
  let etcdStartAttempts = 0;
  for (;;) {
    etcdStartAttempts++;
    try {
      await cluster.topo.startEtcd();
      break;
    } catch (err) {
      // As in faults.test.ts's etcd scenario: etcd seen exiting at once on the fresh data dir; its log says why.
      t.log(`etcd start failed: ${(err as Error).message}\n${existsSync(etcdLog) ? readFileSync(etcdLog, 'utf8').slice(etcdLogAt).slice(-2000) : '(no etcd log)'}`);
      if (etcdStartAttempts >= 3) throw err;
      await sleep(1000);
    }
  }
  await cluster.topo.startApiServer();
  const emptyAt = Date.now();
  const emptyList = await cluster.topo.api('GET', '/api/v1/nodes');
  // The Node list stays empty until every weftd has seen it and acted on it (or 10 s), as if the kubelets were slow.
  const relisted = (n: string) => /node list: re-listed 0 node\(s\)/.test(cluster.log(n).slice(logAt[n]));
  const peerless = (n: string) => NODES.every((p) => p === n || !cluster.hasPeer(n, p));
  const sawEmpty = await eventually(() => NODES.every(relisted), 10_000, 100);
  if (sawEmpty) await eventually(() => NODES.every(peerless), 5000, 100);
  const peersWhileEmpty = Object.fromEntries(NODES.map((n) => [n, NODES.filter((p) => p !== n && cluster.hasPeer(n, p)).length]));
  const during = { healthz: await statuses('/healthz'), readyz: await statuses('/readyz') };
  for (const n of NODES) await register(n);
  const registeredAt = Date.now();
  const annotated = (node: any, n: string) => {
    const a = node?.metadata?.annotations ?? {};
    return (
      a[`${ANN}/kube-subnet-manager`] === 'true' && a[`${ANN}/backend-type`] === 'vxlan' && a[`${ANN}/public-ip`] === cluster.node(n).ip && a[`${ANN}/backend-data`] === backendData(before[n]!.mac)
    );
  };
  const annotatedMs: Record<string, number> = {};
  const reannotated = await eventually(
    async () => {
      for (const n of NODES) if (annotatedMs[n] === undefined && annotated(await cluster.topo.getNode(n), n)) annotatedMs[n] = Date.now() - registeredAt;
      return Object.keys(annotatedMs).length === NODES.length;
    },
    20_000,
    100,
  );
  const ok = await eventually(converged, 20_000, 100);
  const convergedMs = Date.now() - registeredAt;
  const ping = await pings.results();
  const after = Object.fromEntries(NODES.map((n) => [n, { subnet: cluster.subnetOf(n), mac: cluster.overlay(n).mac }]));
  const nodesAfter = Object.fromEntries(await Promise.all(NODES.map(async (n) => [n, await cluster.topo.getNode(n)] as const)));
  const work = Object.fromEntries(
    NODES.map((n) => {
      const log = cluster.log(n).slice(logAt[n]);
      const count = (re: RegExp) => (log.match(re) ?? []).length;
      return [
        n,
        {
          added: count(/peer added: /g),
          changed: count(/peer changed: /g),
          removed: count(/peer removed: /g),
          relists: count(/node list: re-listed/g),
          storeBehind: count(/is behind ours/g),
          restored: count(/writing them back/g),
        },
      ];
    }),
  );
  // How long each node was without its peers, from its log: first peer removed to last peer added back.
  const peerlessMs = Object.fromEntries(
    NODES.map((n) => {
      const at = (re: RegExp) => [...cluster.log(n).slice(logAt[n]).matchAll(re)].map((m) => Date.parse(m[1]!));
      const removed = at(/^(\S+) .*peer removed: /gm);
      const added = at(/^(\S+) .*peer added: /gm);
      return [n, removed.length && added.length ? Math.max(...added) - Math.min(...removed) : undefined];
    }),
  );
  const readyAfter = await statuses('/readyz');
  const pingAfter = await pingPairs(2).results();
  record(t, 'API server restarted empty', {
    downMs: emptyAt - stoppedAt,
    etcdStartAttempts,
    emptyListItems: emptyList?.items?.length,
    emptyMsBeforeReRegistration: registeredAt - emptyAt,
    everyWeftdSawTheEmptyList: sawEmpty,
    peersWhileEmpty,
    peerlessMs,
    during,
    annotatedMsAfterReRegistration: annotatedMs,
    allPeersProgrammedMsAfterReRegistration: convergedMs,
    pingsSent: sentTotal(ping),
    lostPings: lostTotal(ping),
    ping,
    work,
    readyzAfter: readyAfter,
    // weftd sets NetworkUnavailable=False once, at start: a re-created Node does not get it again.
    networkUnavailableAfter: Object.fromEntries(NODES.map((n) => [n, nodesAfter[n]?.status?.conditions?.find((c: { type: string }) => c.type === 'NetworkUnavailable')?.status ?? 'absent'])),
    pingAfter,
  });
  t.is(emptyList?.items?.length, 0, 'the API server came back empty');
  t.true(sawEmpty, `every weftd listed the empty store:\n${NODES.map(watchLines).join('\n')}`);
  t.true(reannotated, `every weftd re-annotated its Node:\n${NODES.map(watchLines).join('\n')}`);
  t.true(ok, 'peers converged: every real peer programmed, nothing stale or extra');
  for (const n of NODES) {
    t.deepEqual(after[n], before[n], `${n} kept its subnet and VTEP MAC`);
    t.is(nodesAfter[n]?.spec?.podCIDR, before[n]!.subnet);
    t.true(isAlive(cluster.node(n).pid), `weftd on ${n} still running`);
  }
  t.deepEqual(during.healthz, { n1: 200, n2: 200, n3: 200 }, 'alive while the store is empty');
  t.deepEqual(during.readyz, { n1: 200, n2: 200, n3: 200 }, 'ready while the store is empty: the subnet file stays valid');
  t.deepEqual(readyAfter, { n1: 200, n2: 200, n3: 200 }, 'ready after');
  t.is(lostTotal(pingAfter), 0, `pods reach each other once converged: ${JSON.stringify(pingAfter)}`);
});

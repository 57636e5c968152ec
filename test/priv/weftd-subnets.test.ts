/**
 * Subnet exhaustion and configuration errors: two daemons racing for the last free subnet (one
 * wins, the other says clearly that the network is out of subnets and keeps waiting), and a
 * missing or invalid network config (one clear log line, no crash loop, ready once fixed).
 */
import test from 'ava';
import { execFile } from 'node:child_process';
import { join } from 'node:path';
import { promisify } from 'node:util';
import { eventually } from '../helpers/netns.ts';
import { startCluster, type Cluster } from '../helpers/cluster.ts';

let cluster: Cluster;

test.before(async () => {
  cluster = await startCluster({ nodes: 3, start: false, networkConfig: { SubnetMin: '198.18.1.0', SubnetMax: '198.18.2.0' } });
  await cluster.topo.startDaemon('n1');
});

test.after.always(async () => {
  await cluster?.destroy();
});

const alive = (pid: number | undefined) => {
  try {
    return pid !== undefined && process.kill(pid, 0);
  } catch {
    return false;
  }
};

test.serial('two daemons racing for the last free subnet: one wins, the other reports out of subnets', async (t) => {
  await Promise.all([cluster.topo.startDaemon('n2', { wait: false }), cluster.topo.startDaemon('n3', { wait: false })]);
  const outcome = await eventually(async () => {
    const ready = await Promise.all(['n2', 'n3'].map(async (n) => (await cluster.topo.http(n, '/readyz')).status === 200));
    const out = ['n2', 'n3'].map((n) => /out of subnets: all 2 subnets of network 198\.18\.0\.0\/16 are leased/.test(cluster.log(n)));
    if (ready[0] !== ready[1] && out[0] !== out[1] && ready[0] === out[1]) return ready[0] ? 'n2' : 'n3';
    return undefined;
  }, 30_000);
  t.truthy(outcome, `one winner and one clear loser\n--- n2\n${cluster.log('n2')}\n--- n3\n${cluster.log('n3')}`);
  const loser = outcome === 'n2' ? 'n3' : 'n2';
  const leases = await cluster.etcd.getPrefix('/coreos.com/network/subnets/');
  t.deepEqual([...leases.keys()].sort(), ['/coreos.com/network/subnets/198.18.1.0-24', '/coreos.com/network/subnets/198.18.2.0-24']);
  const holders = [...leases.values()].map((v) => JSON.parse(v).PublicIP).sort();
  t.deepEqual(holders, [cluster.node('n1').ip, cluster.node(outcome!).ip].sort());
  // The loser keeps running, not ready, logging the condition without stack traces.
  await new Promise((r) => setTimeout(r, 3000));
  t.true(alive(cluster.node(loser).pid));
  t.is((await cluster.topo.http(loser, '/readyz')).status, 503);
  t.is((await cluster.topo.http(loser, '/healthz')).status, 200);
  const log = cluster.log(loser);
  t.is(log.match(/out of subnets/g)?.length, 1, log);
  t.notRegex(log, /^\s+at /m);
  await cluster.topo.stopDaemon(loser);
});

test.serial('missing, then invalid, then valid network config: clear log lines, no crash, ready when fixed', async (t) => {
  const prefix = '/weft-test-missing';
  const { name: n } = await cluster.topo.addNode({ start: false });
  await cluster.topo.startDaemon(n, { args: ['--etcd-prefix', prefix], wait: false });
  const missing = `network config not found at etcd key "${prefix}/config"`;
  t.true(await eventually(() => cluster.log(n).includes(missing), 15_000));
  await new Promise((r) => setTimeout(r, 3000));
  t.true(alive(cluster.node(n).pid));
  t.is(cluster.log(n).split(missing).length - 1, 1, 'logged once, not once per retry');
  t.is((await cluster.topo.http(n, '/readyz')).status, 503);

  await cluster.etcd.put(`${prefix}/config`, '{"Network":"198.18.0.0/33"}');
  t.true(await eventually(() => cluster.log(n).includes('"Network" is not a valid IPv4 CIDR'), 15_000));
  t.notRegex(cluster.log(n), /^\s+at /m);

  await cluster.etcd.put(`${prefix}/config`, JSON.stringify({ Network: '198.19.0.0/16', Backend: { Type: 'vxlan' } }));
  await cluster.topo.waitReady(n, 20_000);
  t.regex(cluster.topo.subnetEnv(n).FLANNEL_SUBNET, /^198\.19\.\d+\.1\/24$/);
});

test.serial('two managers that pick the same last subnet at once: one txn wins, the loser retries and gets out-of-subnets', async (t) => {
  // Both list before either writes (same process, interleaved I/O), so both choose the one free
  // subnet and race in the create transaction. Runs inside the control-plane namespace, where
  // etcd is reachable.
  const prefix = '/weft-test-race';
  await cluster.etcd.put(`${prefix}/config`, JSON.stringify({ Network: '198.18.0.0/16', SubnetMin: '198.18.7.0', SubnetMax: '198.18.7.0' }));
  const etcdTs = join(import.meta.dirname, '..', '..', 'src', 'subnet', 'etcd.ts');
  const script = `
    import { EtcdSubnetManager } from ${JSON.stringify(etcdTs)};
    const logs = [];
    const m = new EtcdSubnetManager({ endpoints: [${JSON.stringify(cluster.topo.state.etcdEndpoint)}], prefix: ${JSON.stringify(prefix)}, log: Object.fromEntries(['error', 'warn', 'info', 'debug'].map((l) => [l, (msg) => logs.push(msg)])) });
    const config = await m.getConfig();
    const attrs = (ip) => ({ publicIP: ip, backendType: 'vxlan', backendData: { VNI: 1, VtepMAC: '02:00:00:00:07:0' + ip.slice(-1) } });
    const results = await Promise.allSettled([m.acquireLease(config, attrs('198.51.100.71'), { ttlSeconds: 60 }), m.acquireLease(config, attrs('198.51.100.72'), { ttlSeconds: 60 })]);
    console.log(JSON.stringify({ results: results.map((r) => r.status === 'fulfilled' ? { ok: r.value.publicIP } : { err: r.reason.name + ': ' + r.reason.message }), logs }));
    m.close();
    process.exit(0);
  `;
  const { stdout } = await promisify(execFile)('nsenter', [`--net=/run/netns/${cluster.topo.state.etcdNetns}`, '--', process.execPath, '--input-type=module', '-e', script], {
    encoding: 'utf8',
    timeout: 60_000,
  });
  const out = JSON.parse(stdout) as { results: Array<{ ok?: string; err?: string }>; logs: string[] };
  t.is(out.results.filter((r) => r.ok).length, 1, stdout);
  t.deepEqual(
    out.results.filter((r) => r.err).map((r) => r.err),
    ['OutOfSubnetsError: out of subnets: all 1 subnets of network 198.18.0.0/16 are leased'],
  );
  t.true(
    out.logs.some((l) => /subnet 198\.18\.7\.0\/24 changed under us \(another node won the race\), retrying/.test(l)),
    out.logs.join('\n'),
  );
  const leases = await cluster.etcd.getPrefix(`${prefix}/subnets/`);
  t.deepEqual([...leases.keys()], [`${prefix}/subnets/198.18.7.0-24`]);
  t.is(JSON.parse([...leases.values()][0]).PublicIP, out.results.find((r) => r.ok)!.ok);
});

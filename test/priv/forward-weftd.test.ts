/**
 * Host firewalls handled by weftd itself: node namespaces whose iptables FORWARD policy is DROP
 * before weftd starts (n1 through iptables-nft, n2 through iptables-legacy, n3 through both)
 * pass the cross-node ping matrix with no rules module call from the test: weftd puts
 * WEFT-FORWARD and its jump in every backend with a FORWARD chain when it publishes. Later
 * drift (a backend's FORWARD chain appearing after start, a deleted jump, a flushed chain) is
 * repaired by the rules keeper's periodic check, logged and counted; `weftctl check` reports
 * the missing rules while no weftd runs to put them back.
 */
import test from 'ava';
import { spawnSync } from 'node:child_process';
import { join, resolve } from 'node:path';
import { eventually, inNs } from '../helpers/netns.ts';
import { reachable, startCluster, type Cluster } from '../helpers/cluster.ts';
import { defaultNftBin } from '../../src/rules/nft.ts';

const NETWORK = '198.18.0.0/16';
const NODES = ['n1', 'n2', 'n3'];
const NFT = defaultNftBin();
const WEFTCTL = join(resolve(import.meta.dirname, '../..'), 'dist', 'bin', 'weftctl');

/** Which iptables backends get a DROP policy on each node before weftd starts. */
const DROP_BEFORE: Record<string, Array<'nft' | 'legacy'>> = { n1: ['nft'], n2: ['legacy'], n3: ['nft', 'legacy'] };

let cluster: Cluster;

test.before(async () => {
  cluster = await startCluster({ nodes: NODES.length, start: false });
  for (const n of NODES) for (const b of DROP_BEFORE[n]!) inNs(ns(n), `iptables-${b}`, ['-P', 'FORWARD', 'DROP']);
  await Promise.all(NODES.map((n) => cluster.topo.startDaemon(n)));
  for (const n of NODES) await cluster.addPods(n, 1);
});

test.after.always(async () => {
  await cluster?.destroy();
});

function ns(node: string): string {
  return cluster.node(node).netns;
}

function save(backend: 'nft' | 'legacy', node: string): string {
  return inNs(ns(node), `iptables-${backend}-save`, ['-t', 'filter']);
}

/** Cross-node pod pairs that get no reply. */
function closedPairs(): string[] {
  const out: string[] = [];
  for (const a of cluster.pods) for (const b of cluster.pods) if (a.node !== b.node && !reachable(a.netns, b.ip)) out.push(`${a.name} -> ${b.name} (${b.ip})`);
  return out;
}

function weftRules(s: string): string[] {
  return s.split('\n').filter((l) => /WEFT-FORWARD/.test(l) && l.startsWith('-A'));
}

const WANT = ['-A FORWARD -j WEFT-FORWARD', `-A WEFT-FORWARD -s ${NETWORK} -j ACCEPT`, `-A WEFT-FORWARD -d ${NETWORK} -j ACCEPT`];

test.serial('FORWARD policy DROP before weftd starts (iptables-nft, -legacy, both): weftd alone makes the ping matrix pass', (t) => {
  t.is(cluster.pods.length, NODES.length);
  for (const n of NODES) {
    for (const b of ['nft', 'legacy'] as const) {
      if (DROP_BEFORE[n]!.includes(b)) {
        const s = save(b, n);
        t.regex(s, /^:FORWARD DROP/m, `${n} iptables-${b}: the host's policy is left alone`);
        t.deepEqual(weftRules(s), WANT, `${n} iptables-${b}: WEFT-FORWARD and one jump`);
      }
    }
    if (!DROP_BEFORE[n]!.includes('nft')) t.throws(() => inNs(ns(n), NFT, ['list', 'chain', 'ip', 'filter', 'FORWARD']), undefined, `${n}: no iptables-nft chain created`);
    t.regex(inNs(ns(n), NFT, ['list', 'table', 'ip', 'weft']), /chain forward[^}]*ip saddr 198\.18\.0\.0\/16 accept/s);
  }
  t.deepEqual(closedPairs(), [], 'every cross-node pair gets through');
});

test.serial('drift after start: a new FORWARD chain, a deleted jump, a flushed chain are put back, logged and counted', async (t) => {
  const repairsBefore = await cluster.metric('n1', 'weftd_reconcile_repairs_total');
  inNs(ns('n1'), 'iptables-legacy', ['-P', 'FORWARD', 'DROP']);
  inNs(ns('n2'), 'iptables-legacy', ['-D', 'FORWARD', '-j', 'WEFT-FORWARD']);
  inNs(ns('n3'), 'iptables-nft', ['-F', 'WEFT-FORWARD']);
  const expect = {
    n1: 'repair: iptables FORWARD accept rules put back (iptables-legacy: chain WEFT-FORWARD missing)',
    n2: 'repair: iptables FORWARD accept rules put back (iptables-legacy: jump from FORWARD to WEFT-FORWARD missing)',
    n3: 'repair: iptables FORWARD accept rules put back (iptables-nft: chain WEFT-FORWARD changed)',
  };
  for (const [n, line] of Object.entries(expect)) t.true(await eventually(() => cluster.log(n).includes(line), 30_000), `${n}: ${line}\n${cluster.log(n).slice(-2000)}`);
  t.true((await cluster.metric('n1', 'weftd_reconcile_repairs_total')) > repairsBefore, 'counted');
  t.deepEqual(weftRules(save('legacy', 'n1')), WANT);
  t.deepEqual(weftRules(save('nft', 'n1')), WANT, 'the nft backend kept its rules');
  t.deepEqual(weftRules(save('legacy', 'n2')), WANT);
  t.deepEqual(weftRules(save('nft', 'n3')), WANT);
  t.deepEqual(closedPairs(), []);
});

test.serial('weftctl check reports missing FORWARD accept rules (exit 1) and passes once they are back', async (t) => {
  const node = cluster.node('n3');
  const check = () =>
    spawnSync('nsenter', [`--net=/run/netns/${node.netns}`, '--', WEFTCTL, 'check', '--subnet-file', node.subnetFile, '-o', 'json'], {
      encoding: 'utf8',
      env: { PATH: process.env.PATH, WEFTD_ETCD_ENDPOINTS: cluster.topo.state.etcdEndpoint, WEFTD_ETCD_PREFIX: cluster.topo.state.etcdPrefix },
    });
  const ok = check();
  t.is(ok.status, 0, ok.stdout + ok.stderr);
  t.deepEqual(JSON.parse(ok.stdout).forward, { state: 'ok' });
  // With weftd stopped nothing puts the jump back before weftctl looks.
  await cluster.topo.stopDaemon('n3');
  inNs(node.netns, 'iptables-legacy', ['-D', 'FORWARD', '-j', 'WEFT-FORWARD']);
  const bad = check();
  t.is(bad.status, 1, bad.stdout + bad.stderr);
  const report = JSON.parse(bad.stdout);
  t.deepEqual(report.forward, { state: 'drift', detail: 'iptables-legacy: jump from FORWARD to WEFT-FORWARD missing' });
  t.deepEqual(
    report.findings.map((f: { kind: string; object: string }) => `${f.kind} ${f.object}`),
    ['missing forward-rules'],
  );
  await cluster.topo.startDaemon('n3');
  t.deepEqual(weftRules(save('legacy', 'n3')), WANT, 'a restarted weftd puts the jump back before it is ready');
  t.is(check().status, 0);
});

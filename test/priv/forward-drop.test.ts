/**
 * Host firewalls: node namespaces whose iptables FORWARD policy is DROP, once through
 * iptables-nft and once through iptables-legacy. `table ip weft`'s accepting forward chain does
 * not help (every base chain on the hook must accept), so the cross-node ping matrix fails;
 * once src/rules/iptables.ts has put WEFT-FORWARD and its jump in place it passes, also while
 * the rules are rewritten, and a deleted jump is reported as drift and repaired.
 *
 * The rules module is run directly inside each node namespace (a small `node -e` script under
 * nsenter), not by weftd: the daemons are stopped after start-up (the data plane stays, see
 * src/daemon/run.ts), so the test alone decides when the rules arrive, whether or not weftd
 * installs them itself.
 */
import test from 'ava';
import { spawn } from 'node:child_process';
import { fileURLToPath } from 'node:url';
import { inNs } from '../helpers/netns.ts';
import { pingStats, reachable, startCluster, type Cluster } from '../helpers/cluster.ts';
import type { ForwardReport, IptablesBackend } from '../../src/rules/iptables.ts';
import { defaultNftBin } from '../../src/rules/nft.ts';

const MODULE = fileURLToPath(new URL('../../src/rules/iptables.ts', import.meta.url));
const NETWORK = '198.18.0.0/16';
const NODES = ['n1', 'n2', 'n3'];
// The system's nft: node_modules/.bin, first on PATH, has an unrelated npm package of that name.
const NFT = defaultNftBin();

let cluster: Cluster;

test.before(async () => {
  cluster = await startCluster({ nodes: NODES.length, podsPerNode: 1 });
  for (const n of NODES) await cluster.topo.stopDaemon(n);
});

test.after.always(async () => {
  await cluster?.destroy();
});

const ns = (node: string) => cluster.node(node).netns;

/** Calls one function of the rules module inside a node namespace; its JSON result. */
function rules(node: string, fn: 'ensure' | 'drift' | 'remove'): unknown {
  const call = {
    ensure: 'r.ensureIptablesForward(net)',
    drift: 'r.iptablesForwardDrift(net)',
    remove: 'r.removeIptablesForward()',
  }[fn];
  const code = [
    `import * as r from ${JSON.stringify(MODULE)};`,
    `import { parseCIDR } from ${JSON.stringify(fileURLToPath(new URL('../../src/ip/ipv4.ts', import.meta.url)))};`,
    `const net = parseCIDR(${JSON.stringify(NETWORK)});`,
    `process.stdout.write(JSON.stringify((await ${call}) ?? null));`,
  ].join('\n');
  return JSON.parse(inNs(ns(node), process.execPath, ['--input-type=module', '-e', code]));
}

/** Cross-node pod pairs, `a -> b (ip)`. */
function pairs() {
  const out = [];
  for (const a of cluster.pods) for (const b of cluster.pods) if (a.node !== b.node) out.push({ a, b, name: `${a.name} -> ${b.name} (${b.ip})` });
  return out;
}

function pingOnce(fromNs: string, ip: string): boolean {
  try {
    inNs(fromNs, 'ping', ['-c', '1', '-W', '1', ip]);
    return true;
  } catch {
    return false;
  }
}

function save(backend: IptablesBackend, node: string): string {
  return inNs(ns(node), `iptables-${backend}-save`, ['-t', 'filter']);
}

for (const backend of ['nft', 'legacy'] as const) {
  test.serial(`FORWARD policy DROP through iptables-${backend}: the ping matrix fails without weft's rules and passes with them`, async (t) => {
    t.is(cluster.pods.length, NODES.length);
    for (const n of NODES) {
      inNs(ns(n), `iptables-${backend}`, ['-P', 'FORWARD', 'DROP']);
      t.regex(save(backend, n), /^:FORWARD DROP/m);
      t.notRegex(save(backend, n), /WEFT-FORWARD/);
      t.regex(inNs(ns(n), NFT, ['list', 'table', 'ip', 'weft']), /chain forward[^}]*ip saddr 198\.18\.0\.0\/16 accept/s, "weft's own forward chain is there");
    }

    const open = pairs()
      .filter((p) => pingOnce(p.a.netns, p.b.ip))
      .map((p) => p.name);
    t.deepEqual(open, [], 'with DROP and no weft rules, no cross-node pair gets through');

    for (const n of NODES) t.is(rules(n, 'drift'), `iptables-${backend}: chain WEFT-FORWARD missing`);
    for (const n of NODES) t.deepEqual(rules(n, 'ensure') as ForwardReport[], [{ backend, drift: 'chain WEFT-FORWARD missing' }]);

    const closed = pairs()
      .filter((p) => !reachable(p.a.netns, p.b.ip))
      .map((p) => p.name);
    t.deepEqual(closed, [], "with weft's rules every cross-node pair gets through");

    for (const n of NODES) {
      t.is(rules(n, 'drift'), null, 'nothing to repair');
      t.deepEqual(rules(n, 'ensure'), [{ backend }], 'idempotent: already in place (drift undefined)');
      const s = save(backend, n);
      t.regex(s, /^:FORWARD DROP/m, "the host's policy is left alone");
      t.is(s.match(/^-A FORWARD -j WEFT-FORWARD$/gm)?.length, 1, 'one jump');
      t.deepEqual(s.match(/^-A WEFT-FORWARD .*$/gm), [`-A WEFT-FORWARD -s ${NETWORK} -j ACCEPT`, `-A WEFT-FORWARD -d ${NETWORK} -j ACCEPT`]);
      if (backend === 'legacy') t.throws(() => inNs(ns(n), NFT, ['list', 'chain', 'ip', 'filter', 'FORWARD']), undefined, 'no iptables-nft chain created');
    }
  });

  test.serial(`iptables-${backend}: rewriting the rules loses no packet; a deleted jump is drift, repaired`, async (t) => {
    const [p] = pairs();
    // 0.05 s apart for ~4 s while both ends rewrite their chains ten times.
    const pinger = spawn('nsenter', [`--net=/run/netns/${p.a.netns}`, '--', 'ping', '-c', '80', '-i', '0.05', '-W', '1', p.b.ip], { stdio: ['ignore', 'pipe', 'pipe'] });
    let out = '';
    pinger.stdout.on('data', (d) => (out += d));
    const done = new Promise<number | null>((r) => pinger.on('exit', r));
    for (let i = 0; i < 5; i++) for (const n of [p.a.node, p.b.node]) rules(n, 'ensure');
    await done;
    const stats = pingStats(out);
    t.is(stats.sent, 80);
    t.is(stats.received, stats.sent, 'no packet lost while the chains were rewritten');

    inNs(ns(p.b.node), `iptables-${backend}`, ['-D', 'FORWARD', '-j', 'WEFT-FORWARD']);
    t.false(pingOnce(p.a.netns, p.b.ip), 'without the jump the DROP policy applies again');
    t.is(rules(p.b.node, 'drift'), `iptables-${backend}: jump from FORWARD to WEFT-FORWARD missing`);
    t.deepEqual(rules(p.b.node, 'ensure'), [{ backend, drift: 'jump from FORWARD to WEFT-FORWARD missing' }]);
    t.true(reachable(p.a.netns, p.b.ip), 'repaired');

    for (const n of NODES) {
      rules(n, 'remove');
      t.notRegex(save(backend, n), /WEFT-FORWARD/, 'removed');
      t.is(rules(n, 'drift'), `iptables-${backend}: chain WEFT-FORWARD missing`);
      // Hand the next backend's test a node without this one's DROP policy.
      if (backend === 'nft') inNs(ns(n), NFT, ['delete', 'table', 'ip', 'filter']);
      else inNs(ns(n), 'iptables-legacy', ['-P', 'FORWARD', 'ACCEPT']);
    }
    t.true(reachable(p.a.netns, p.b.ip));
  });
}

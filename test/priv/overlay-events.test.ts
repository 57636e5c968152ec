/**
 * Drift repair from kernel notifications (src/backend/vxlan/drift.ts): with the periodic full
 * check pushed out to 60 s, a deleted or changed route, neighbor, FDB entry, an entry nobody
 * wants, a downed and a deleted flannel.1 are all put right within ~1 s, which only the event
 * path can do. Also: programming the peers in the first place is not mistaken for drift.
 */
import test from 'ava';
import { eventually, sh } from '../helpers/netns.ts';
import { startCluster, type Cluster } from '../helpers/cluster.ts';

/** What "within ~1 s" allows: the repair itself takes milliseconds, the rest is this loaded machine and `ip` spawns. */
const EVENT_MS = 1500;

let cluster: Cluster;

test.before(async () => {
  cluster = await startCluster({ nodes: 3, podsPerNode: 0, weftdArgs: ['--reconcile-interval', '60s'] });
});

test.after.always(async () => {
  await cluster?.destroy();
});

/** Milliseconds until `cond` holds (polled as fast as `ip` allows), or undefined after `limitMs`. */
async function timeUntil(cond: () => boolean, limitMs = 10_000): Promise<number | undefined> {
  const t0 = Date.now();
  while (Date.now() - t0 < limitMs) {
    if (cond()) return Date.now() - t0;
    await new Promise((r) => setTimeout(r, 10));
  }
  return undefined;
}

function repairs(node: string): string[] {
  return cluster
    .log(node)
    .split('\n')
    .filter((l) => l.includes('repair: '));
}

test.serial('the peers are programmed and nothing is taken for drift', async (t) => {
  t.true(await eventually(() => cluster.hasPeer('n1', 'n2') && cluster.hasPeer('n1', 'n3'), 15_000));
  await new Promise((r) => setTimeout(r, 1000));
  t.deepEqual(repairs('n1'), [], 'no repair without drift');
  t.regex(cluster.log('n1'), /full pass: watching kernel notifications/);
});

test.serial('a deleted route, FDB entry and neighbor are back within ~1 s', async (t) => {
  const ns = cluster.node('n1').netns;
  const sub2 = cluster.subnetOf('n2')!;
  const mac3 = cluster.overlay('n3').mac!;
  const gw2 = sub2.split('/')[0];

  sh('ip', ['-n', ns, 'route', 'del', sub2]);
  const route = await timeUntil(() => cluster.hasPeer('n1', 'n2'));
  t.log(`route back after ${route} ms`);
  t.true(route !== undefined && route < EVENT_MS, `route back after ${route} ms`);
  t.true(repairs('n1').some((l) => l.includes(`repair: route ${sub2}`)));

  sh('bridge', ['-n', ns, 'fdb', 'del', mac3, 'dev', 'flannel.1', 'dst', cluster.node('n3').ip]);
  const fdb = await timeUntil(() => cluster.hasPeer('n1', 'n3'));
  t.log(`fdb entry back after ${fdb} ms`);
  t.true(fdb !== undefined && fdb < EVENT_MS, `fdb back after ${fdb} ms`);
  t.true(repairs('n1').some((l) => l.includes(`repair: fdb ${mac3}`)));

  sh('ip', ['-n', ns, 'neigh', 'del', gw2, 'dev', 'flannel.1']);
  const neigh = await timeUntil(() => cluster.hasPeer('n1', 'n2'));
  t.log(`neighbor back after ${neigh} ms`);
  t.true(neigh !== undefined && neigh < EVENT_MS, `neighbor back after ${neigh} ms`);
  t.true(repairs('n1').some((l) => l.includes(`repair: neighbor ${gw2}`)));
});

test.serial('a neighbor changed to another MAC is set right within ~1 s', async (t) => {
  const ns = cluster.node('n1').netns;
  const gw3 = cluster.subnetOf('n3')!.split('/')[0];
  sh('ip', ['-n', ns, 'neigh', 'replace', gw3, 'lladdr', '02:00:5e:00:53:99', 'dev', 'flannel.1', 'nud', 'permanent']);
  const ms = await timeUntil(() => cluster.hasPeer('n1', 'n3'));
  t.log(`neighbor right again after ${ms} ms`);
  t.true(ms !== undefined && ms < EVENT_MS, `after ${ms} ms`);
});

test.serial('a peer route replaced by one through another device is put back within ~1 s', async (t) => {
  const ns = cluster.node('n1').netns;
  const sub3 = cluster.subnetOf('n3')!;
  sh('ip', ['-n', ns, 'route', 'replace', sub3, 'via', '198.51.100.1', 'dev', 'eth0']);
  const ms = await timeUntil(() => cluster.hasPeer('n1', 'n3'));
  t.log(`route back on flannel.1 after ${ms} ms`);
  t.true(ms !== undefined && ms < EVENT_MS, `after ${ms} ms`);
  t.regex(cluster.log('n1'), new RegExp(`full pass: route ${sub3.replace(/\./g, '\\.')} added on device \\d+`));
  t.true(repairs('n1').some((l) => l.includes(`repair: route ${sub3}`)));
});

test.serial('a route and an FDB entry nobody wants are removed within ~1 s', async (t) => {
  const ns = cluster.node('n1').netns;
  sh('ip', ['-n', ns, 'route', 'add', '198.18.250.0/24', 'via', '198.18.250.0', 'dev', 'flannel.1', 'onlink']);
  sh('bridge', ['-n', ns, 'fdb', 'append', '02:00:5e:00:53:aa', 'dev', 'flannel.1', 'dst', '203.0.113.250']);
  const ms = await timeUntil(() => {
    const o = cluster.overlay('n1');
    return !o.routes.some((r) => r.dst === '198.18.250.0/24') && !o.fdbs.some((f) => f.mac === '02:00:5e:00:53:aa');
  });
  t.log(`stale entries gone after ${ms} ms`);
  t.true(ms !== undefined && ms < EVENT_MS, `after ${ms} ms: ${cluster.log('n1').split('\n').slice(-15).join('\n')}`);
  t.true(repairs('n1').some((l) => l.includes('removed stale route 198.18.250.0/24')));
  t.true(repairs('n1').some((l) => l.includes('removed stale fdb 02:00:5e:00:53:aa')));
});

test.serial('flannel.1 set down comes up again, and a deleted flannel.1 comes back with every peer, within ~1 s', async (t) => {
  const ns = cluster.node('n2').netns;
  const up = () => !!sh('ip', ['-n', ns, '-j', 'link', 'show', 'flannel.1']).includes('"UP"');
  sh('ip', ['-n', ns, 'link', 'set', 'flannel.1', 'down']);
  const upMs = await timeUntil(() => up() && cluster.hasPeer('n2', 'n1') && cluster.hasPeer('n2', 'n3'));
  t.log(`up again after ${upMs} ms`);
  t.true(upMs !== undefined && upMs < EVENT_MS, `up after ${upMs} ms`);

  const mac = cluster.overlay('n2').mac;
  sh('ip', ['-n', ns, 'link', 'del', 'flannel.1']);
  const back = await timeUntil(() => cluster.hasPeer('n2', 'n1') && cluster.hasPeer('n2', 'n3'));
  t.log(`device and peers back after ${back} ms`);
  t.true(back !== undefined && back < EVENT_MS, `back after ${back} ms`);
  t.is(cluster.overlay('n2').mac, mac, 'recreated with the MAC peers know');
  t.true(repairs('n2').some((l) => l.includes('repair: device "flannel.1" created')));
});

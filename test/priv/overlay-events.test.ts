/**
 * Drift repair from kernel notifications (src/backend/vxlan/drift.ts): with the periodic full
 * check pushed out to 60 s, a deleted or changed route, neighbor, FDB entry, an entry nobody
 * wants, a downed and a deleted flannel.1 are all put right within ~1 s, which only the event
 * path can do. Also: programming the peers in the first place is not mistaken for drift.
 *
 * The time asserted is weftd's: from just before the change to the timestamp of its `repair:`
 * log line. Polling the kernel with `ip` (several spawns per look) on this shared machine would
 * mostly measure the spawns; the kernel state is then checked to be right again.
 */
import test from 'ava';
import { eventually, sh } from '../helpers/netns.ts';
import { startCluster, type Cluster } from '../helpers/cluster.ts';

/** "Within ~1 s"; the 60 s periodic check cannot get there in time. */
const EVENT_MS = 1000;

let cluster: Cluster;

test.before(async () => {
  cluster = await startCluster({ nodes: 3, podsPerNode: 0, weftdArgs: ['--reconcile-interval', '60s'] });
});

test.after.always(async () => {
  await cluster?.destroy();
});

function repairs(node: string): string[] {
  return cluster
    .log(node)
    .split('\n')
    .filter((l) => l.includes('repair: '));
}

/**
 * Makes a change on `node` and returns how long weftd took to log a repair containing `needle`
 * (from its log line's timestamp), or undefined when none came within 10 s.
 */
async function reaction(node: string, needle: string, change: () => void): Promise<number | undefined> {
  const t0 = Date.now();
  change();
  let at: number | undefined;
  await eventually(() => {
    for (const l of repairs(node)) {
      const ts = Date.parse(l.split(' ')[0]);
      if (l.includes(needle) && ts >= t0 - 5) at = ts;
    }
    return at !== undefined;
  }, 10_000);
  return at === undefined ? undefined : Math.max(0, at - t0);
}

function fast(t: { log: (...a: unknown[]) => void; true: (v: boolean, m?: string) => void }, what: string, ms: number | undefined) {
  t.log(`${what}: repaired after ${ms} ms`);
  t.true(ms !== undefined && ms < EVENT_MS, `${what}: repaired after ${ms} ms`);
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

  fast(t, 'route', await reaction('n1', `repair: route ${sub2}`, () => sh('ip', ['-n', ns, 'route', 'del', sub2])));
  t.true(await eventually(() => cluster.hasPeer('n1', 'n2'), 10_000), 'route back');

  fast(t, 'fdb entry', await reaction('n1', `repair: fdb ${mac3}`, () => sh('bridge', ['-n', ns, 'fdb', 'del', mac3, 'dev', 'flannel.1', 'dst', cluster.node('n3').ip])));
  t.true(await eventually(() => cluster.hasPeer('n1', 'n3'), 10_000), 'fdb entry back');

  fast(t, 'neighbor', await reaction('n1', `repair: neighbor ${gw2}`, () => sh('ip', ['-n', ns, 'neigh', 'del', gw2, 'dev', 'flannel.1'])));
  t.true(await eventually(() => cluster.hasPeer('n1', 'n2'), 10_000), 'neighbor back');
});

test.serial('a neighbor changed to another MAC is set right within ~1 s', async (t) => {
  const ns = cluster.node('n1').netns;
  const gw3 = cluster.subnetOf('n3')!.split('/')[0];
  const change = () => sh('ip', ['-n', ns, 'neigh', 'replace', gw3, 'lladdr', '02:00:5e:00:53:99', 'dev', 'flannel.1', 'nud', 'permanent']);
  fast(t, 'neighbor MAC', await reaction('n1', `repair: neighbor ${gw3}`, change));
  t.true(await eventually(() => cluster.hasPeer('n1', 'n3'), 10_000));
});

test.serial('a peer route replaced by one through another device is put back within ~1 s', async (t) => {
  const ns = cluster.node('n1').netns;
  const sub3 = cluster.subnetOf('n3')!;
  fast(t, 'route via eth0', await reaction('n1', `repair: route ${sub3}`, () => sh('ip', ['-n', ns, 'route', 'replace', sub3, 'via', '198.51.100.1', 'dev', 'eth0'])));
  t.regex(cluster.log('n1'), new RegExp(`full pass: route ${sub3.replace(/\./g, '\\.')} added on device \\d+`));
  t.true(await eventually(() => cluster.hasPeer('n1', 'n3'), 10_000));
});

test.serial('a route and an FDB entry nobody wants are removed within ~1 s', async (t) => {
  const ns = cluster.node('n1').netns;
  fast(
    t,
    'stale route',
    await reaction('n1', 'removed stale route 198.18.250.0/24', () => sh('ip', ['-n', ns, 'route', 'add', '198.18.250.0/24', 'via', '198.18.250.0', 'dev', 'flannel.1', 'onlink'])),
  );
  fast(t, 'stale fdb', await reaction('n1', 'removed stale fdb 02:00:5e:00:53:aa', () => sh('bridge', ['-n', ns, 'fdb', 'append', '02:00:5e:00:53:aa', 'dev', 'flannel.1', 'dst', '203.0.113.250'])));
  t.true(
    await eventually(() => {
      const o = cluster.overlay('n1');
      return !o.routes.some((r) => r.dst === '198.18.250.0/24') && !o.fdbs.some((f) => f.mac === '02:00:5e:00:53:aa');
    }, 10_000),
  );
});

test.serial('flannel.1 set down comes up again, and a deleted flannel.1 comes back with every peer, within ~1 s', async (t) => {
  const ns = cluster.node('n2').netns;
  const up = () => sh('ip', ['-n', ns, '-j', 'link', 'show', 'flannel.1']).includes('"UP"');
  fast(t, 'device down', await reaction('n2', 'repair: device "flannel.1" reused', () => sh('ip', ['-n', ns, 'link', 'set', 'flannel.1', 'down'])));
  t.true(await eventually(() => up() && cluster.hasPeer('n2', 'n1') && cluster.hasPeer('n2', 'n3'), 10_000));

  const mac = cluster.overlay('n2').mac;
  fast(t, 'device deleted', await reaction('n2', 'repair: device "flannel.1" created', () => sh('ip', ['-n', ns, 'link', 'del', 'flannel.1'])));
  t.true(await eventually(() => cluster.hasPeer('n2', 'n1') && cluster.hasPeer('n2', 'n3'), 10_000), 'every peer back');
  t.is(cluster.overlay('n2').mac, mac, 'recreated with the MAC peers know');
});

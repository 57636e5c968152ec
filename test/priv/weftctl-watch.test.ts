/**
 * `weftctl get nodes --watch` across an etcd compaction: the watch goes through the subnet
 * manager, which re-lists when its stream cannot continue, and weftctl reports the difference
 * as events. etcd runs in its own throwaway namespace (standing in for a node), restarted here,
 * so this file does not share it with the other weftctl tests.
 */
import test from 'ava';
import { resolve } from 'node:path';
import { EtcdServer } from '../../lab/etcd.ts';
import { eventually, Scope, sh } from '../helpers/netns.ts';

const WEFTCTL = resolve('dist/bin/weftctl');
const NODE_IP = '198.51.100.31';
const PREFIX = '/weft-watch-test/network';

const scope = new Scope();
let ns = '';
let etcd: EtcdServer;

test.before(async () => {
  ns = scope.netns('ctlw');
  sh('ip', ['-n', ns, 'link', 'add', 'eth0', 'type', 'veth', 'peer', 'name', 'uplink']);
  sh('ip', ['-n', ns, 'addr', 'add', `${NODE_IP}/24`, 'dev', 'eth0']);
  sh('ip', ['-n', ns, 'link', 'set', 'eth0', 'up']);
  sh('ip', ['-n', ns, 'link', 'set', 'uplink', 'up']);
  etcd = new EtcdServer({ netns: ns, ip: NODE_IP, clientPort: 2379, peerPort: 2380 });
  scope.defer(() => etcd.destroy());
  await etcd.start();
});
test.after.always(() => scope.cleanup());

const leaseKey = (subnet: string) => `${PREFIX}/subnets/${subnet.replace('/', '-')}`;

async function putLease(subnet: string, publicIP: string, mac: string): Promise<void> {
  await etcd.put(leaseKey(subnet), JSON.stringify({ PublicIP: publicIP, BackendType: 'vxlan', BackendData: { VNI: 1, VtepMAC: mac } }));
}

async function compactAll(): Promise<string> {
  const status = JSON.parse(await etcd.ctl(['endpoint', 'status', '-w', 'json'])) as Array<{ Status: { header: { revision: number } } }>;
  const rev = String(status[0]!.Status.header.revision);
  await etcd.ctl(['compact', rev]);
  return rev;
}

test('get nodes --watch keeps printing changes across an etcd compaction', async (t) => {
  await putLease('198.18.6.0/24', '198.51.100.16', '0a:00:00:00:00:06');
  const child = scope.spawn('nsenter', [`--net=/run/netns/${ns}`, '--', WEFTCTL, 'get', 'nodes', '--watch', '-o', 'json'], {
    env: { PATH: process.env.PATH!, WEFTD_ETCD_ENDPOINTS: etcd.endpoint, WEFTD_ETCD_PREFIX: PREFIX },
  });
  let stdout = '';
  let stderr = '';
  child.stdout!.on('data', (d) => (stdout += d));
  child.stderr!.on('data', (d) => (stderr += d));
  let exit: number | null | undefined;
  const closed = new Promise<number | null>((r) => child.on('close', (code) => r((exit = code))));
  const events = () =>
    stdout
      .split('\n')
      .filter(Boolean)
      .map((l) => {
        const e = JSON.parse(l) as { type: string; node: { subnet: string; publicIP: string } };
        return `${e.type} ${e.node.subnet} ${e.node.publicIP}`;
      });
  const output = () => `stdout:\n${stdout}\nstderr:\n${stderr}\nexit: ${exit}`;

  t.truthy(await eventually(() => events().length >= 1, 30_000), `no listing; ${output()}`);
  await putLease('198.18.7.0/24', '198.51.100.17', '0a:00:00:00:00:07');
  t.truthy(await eventually(() => events().length >= 2, 20_000), `live watch; ${output()}`);
  t.deepEqual(events(), ['ADDED 198.18.6.0/24 198.51.100.16', 'ADDED 198.18.7.0/24 198.51.100.17']);

  // Freeze weftctl, restart etcd under it (its stream breaks), change the lease table and
  // compact past everything it has seen: when it resumes, the watch cannot continue from its
  // revision and only a re-list brings these changes in.
  process.kill(child.pid!, 'SIGSTOP');
  try {
    await etcd.stop();
    await etcd.start();
    await etcd.del(leaseKey('198.18.6.0/24'));
    await putLease('198.18.7.0/24', '198.51.100.27', '0a:00:00:00:00:07');
    await putLease('198.18.8.0/24', '198.51.100.18', '0a:00:00:00:00:08');
    await compactAll();
  } finally {
    process.kill(child.pid!, 'SIGCONT');
  }
  const gap = await eventually(() => (events().length >= 5 ? events().slice(2) : undefined), 30_000);
  t.truthy(gap, `changes behind the compaction; ${output()}`);
  t.deepEqual(
    [...gap!].sort(),
    ['ADDED 198.18.8.0/24 198.51.100.18', 'DELETED 198.18.6.0/24 198.51.100.16', 'MODIFIED 198.18.7.0/24 198.51.100.27'],
    output(),
  );

  // The watch goes on after the re-list, and another compaction while it is live changes nothing.
  await putLease('198.18.9.0/24', '198.51.100.19', '0a:00:00:00:00:09');
  await compactAll();
  await etcd.del(leaseKey('198.18.7.0/24'));
  t.truthy(await eventually(() => events().length >= 7, 20_000), `watch after the re-list; ${output()}`);
  t.deepEqual(events().slice(5), ['ADDED 198.18.9.0/24 198.51.100.19', 'DELETED 198.18.7.0/24 198.51.100.27'], output());
  t.is(exit, undefined, `still watching; ${output()}`);

  child.kill('SIGINT');
  t.is(await closed, 0, output());
  t.is(events().length, 7, 'no event twice');
});

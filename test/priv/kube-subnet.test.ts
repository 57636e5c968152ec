/**
 * The kube subnet manager against the lab API server (lab/apiserver, backed by a real etcd):
 * podCIDR lease, annotations, NetworkUnavailable, the Node informer (peer add / update / delete,
 * malformed and unannotated nodes), an API server outage with a 410 relist, a node whose podCIDR
 * comes later. See kube-env.ts for the namespaces: nothing runs in the root namespace.
 */
import test from 'ava';
import { killAndWait } from '../../lab/etcd.ts';
import { eventually } from '../helpers/netns.ts';
import { API_PORT, KubeLab, P, peerNode, type Msg } from './kube-env.ts';

const NODE_IP = '198.51.100.11';

let lab: KubeLab;
const driver = (node: string) => lab.driver(node, { in: 'kn' });

const attrs = (mac: string, ip = NODE_IP) => ({ publicIP: ip, backendType: 'vxlan', backendData: { VNI: 1, VtepMAC: mac } });

test.before(async () => {
  lab = await KubeLab.create([{ name: 'kn', ip: NODE_IP }]);
});

test.after.always(async () => {
  await lab?.destroy();
});

test.serial('acquire: lease from podCIDR, annotations patched only when changed, MAC reuse, public-ip-overwrite, NetworkUnavailable=False', async (t) => {
  const d = driver('n1');
  t.is((await d.api('POST', '/api/v1/nodes', peerNode('n1', { cidr: '198.18.1.0/24', annotations: { 'example.com/keep': 'me' } }))).status, 201);
  // A condition set by someone else (the kubelet) must survive our status patch.
  const st = await d.api('PATCH', '/api/v1/nodes/n1/status', { status: { conditions: [{ type: 'Ready', status: 'True', reason: 'KubeletReady' }] } }, 'application/strategic-merge-patch+json');
  t.is(st.status, 200, JSON.stringify(st.body));
  t.deepEqual(await d.call('config'), { network: '198.18.0.0/16', vni: 1 });
  t.is(await d.call('previousMac', { vni: 1 }), null, 'no annotation yet: nothing to reuse');

  const lease = await d.call('acquire', { attrs: attrs('0a:00:00:00:01:01') });
  t.is(lease.subnet, '198.18.1.0/24');
  t.is(lease.publicIP, NODE_IP);
  t.is(lease.expiresAt, undefined, 'a podCIDR never expires: nothing for the renewer to do');
  const n = (await d.api('GET', '/api/v1/nodes/n1')).body;
  t.like(n.metadata.annotations, {
    'example.com/keep': 'me',
    [`${P}kube-subnet-manager`]: 'true',
    [`${P}backend-type`]: 'vxlan',
    [`${P}backend-data`]: '{"VNI":1,"VtepMAC":"0a:00:00:00:01:01"}',
    [`${P}public-ip`]: NODE_IP,
  });
  t.is(await d.call('previousMac', { vni: 1 }), '0a:00:00:00:01:01', 'after a reboot the daemon can recreate the device with this MAC');
  t.is(await d.call('previousMac', { vni: 2 }), null);

  // Same attributes again: nothing to patch, the object is not written.
  const rv = n.metadata.resourceVersion;
  await d.call('acquire', { attrs: attrs('0a:00:00:00:01:01') });
  t.is((await d.api('GET', '/api/v1/nodes/n1')).body.metadata.resourceVersion, rv);
  const renewed = await d.call('renew', { lease });
  t.deepEqual(renewed, lease);
  t.is((await d.api('GET', '/api/v1/nodes/n1')).body.metadata.resourceVersion, rv, 'renew writes nothing');

  // An operator's public-ip-overwrite wins.
  await d.api('PATCH', '/api/v1/nodes/n1', { metadata: { annotations: { [`${P}public-ip-overwrite`]: '203.0.113.7' } } }, 'application/merge-patch+json');
  const over = await d.call('acquire', { attrs: attrs('0a:00:00:00:01:01') });
  t.is(over.publicIP, '203.0.113.7');
  t.is((await d.api('GET', '/api/v1/nodes/n1')).body.metadata.annotations[`${P}public-ip`], '203.0.113.7');
  await d.api('PATCH', '/api/v1/nodes/n1', { metadata: { annotations: { [`${P}public-ip-overwrite`]: null } } }, 'application/merge-patch+json');
  t.is((await d.call('acquire', { attrs: attrs('0a:00:00:00:01:01') })).publicIP, NODE_IP);

  t.true(await d.call('ready', { subnet: '198.18.1.0/24' }));
  const conds = (await d.api('GET', '/api/v1/nodes/n1')).body.status.conditions as Array<Record<string, string>>;
  const nu = conds.find((c) => c.type === 'NetworkUnavailable');
  t.like(nu, { status: 'False', reason: 'WeftIsUp' });
  t.truthy(nu?.lastTransitionTime);
  t.like(
    conds.find((c) => c.type === 'Ready'),
    { status: 'True', reason: 'KubeletReady' },
    'conditions merge by type',
  );
  // Ready again: already set, no write.
  const rv2 = (await d.api('GET', '/api/v1/nodes/n1')).body.metadata.resourceVersion;
  await d.call('ready', { subnet: '198.18.1.0/24' });
  t.is((await d.api('GET', '/api/v1/nodes/n1')).body.metadata.resourceVersion, rv2);
  await d.call('close');
});

test.serial('podCIDR not assigned yet: one log line naming the cause, then picked up from the watch', async (t) => {
  const d = driver('n5');
  t.is((await d.api('POST', '/api/v1/nodes', peerNode('n5', { annotations: {} }))).status, 201);
  await d.call('config');
  const acquiring = d.request('acquire', { attrs: attrs('0a:00:00:00:05:01', '198.51.100.15') }, 60_000);
  t.truthy(await d.waitFor((m) => m.event === 'log' && /allocate-node-cidrs/.test(m.msg)), 'the log line names --allocate-node-cidrs');
  // A while later: still one line, still waiting.
  await new Promise((r) => setTimeout(r, 6000));
  t.is(d.messages.filter((m) => m.event === 'log' && /podCIDR/.test(m.msg) && m.level !== 'info').length, 1, 'exactly one line while waiting');
  t.false(
    d.messages.some((m) => m.id !== undefined && m.result?.subnet),
    'no lease without a podCIDR',
  );
  const at = Date.now();
  t.is((await d.api('PATCH', '/api/v1/nodes/n5', { spec: { podCIDR: '198.18.5.0/24' } }, 'application/merge-patch+json')).status, 200);
  const m = await acquiring;
  t.true(m.ok, m.error);
  t.is(m.result.subnet, '198.18.5.0/24');
  // The driver re-reads the Node only every 60 s: this fast, it came from the watch.
  t.true(Date.now() - at < 2000, `picked up from the watch (${Date.now() - at} ms)`);
  t.is((await d.api('GET', '/api/v1/nodes/n5')).body.metadata.annotations[`${P}public-ip`], '198.51.100.15');
  await d.call('close');
});

test.serial('podCIDR outside Network: a clear error, no annotations written', async (t) => {
  const d = driver('n6');
  await d.api('POST', '/api/v1/nodes', peerNode('n6', { cidr: '203.0.113.0/24', annotations: {} }));
  const m = await d.request('acquire', { attrs: attrs('0a:00:00:00:06:01') });
  t.false(m.ok);
  t.is(m.name, 'PodCIDRError');
  t.false(m.retryable, 'retrying cannot fix a podCIDR outside Network');
  t.regex(m.error, /podCIDR 203\.0\.113\.0\/24 is outside the network 198\.18\.0\.0\/16/);
  t.deepEqual((await d.api('GET', '/api/v1/nodes/n6')).body.metadata.annotations ?? {}, {});
  await d.api('DELETE', '/api/v1/nodes/n6');
  await d.call('close');
});

test.serial('informer: peers added, changed, removed; malformed and unannotated nodes skipped', async (t) => {
  const d = driver('n1');
  await d.call('acquire', { attrs: attrs('0a:00:00:00:01:01') });
  await d.call('watch');
  const snap = await d.waitFor((m) => m.event === 'snapshot');
  // n5 (annotated by the previous test) is a peer; n1 is us and never appears.
  t.deepEqual(
    snap!.leases.map((l: Msg) => l.subnet),
    ['198.18.5.0/24'],
  );

  let from = d.messages.length;
  await d.api('POST', '/api/v1/nodes', peerNode('n2', { cidr: '198.18.2.0/24' }));
  const put = await d.waitFor((m) => m.event === 'put' && m.lease.subnet === '198.18.2.0/24', { from });
  t.like(put!.lease, { publicIP: '198.51.100.12', backendType: 'vxlan', backendData: { VNI: 1, VtepMAC: '0a:00:00:00:02:01' } });

  // A change that is not ours to care about (a label) produces no event.
  from = d.messages.length;
  await d.api('PATCH', '/api/v1/nodes/n2', { metadata: { labels: { zone: 'a' } } }, 'application/merge-patch+json');
  // A MAC change and an IP change do.
  await d.api('PATCH', '/api/v1/nodes/n2', { metadata: { annotations: { [`${P}backend-data`]: '{"VNI":1,"VtepMAC":"0a:00:00:00:02:02"}' } } }, 'application/merge-patch+json');
  t.truthy(await d.waitFor((m) => m.event === 'put' && m.lease.backendData.VtepMAC === '0a:00:00:00:02:02', { from }));
  t.is(d.messages.slice(from).filter((m) => m.event === 'put' || m.event === 'delete').length, 1, 'the label change was silent');
  from = d.messages.length;
  await d.api('PATCH', '/api/v1/nodes/n2', { metadata: { annotations: { [`${P}public-ip`]: '198.51.100.22' } } }, 'application/merge-patch+json');
  t.truthy(await d.waitFor((m) => m.event === 'put' && m.lease.publicIP === '198.51.100.22', { from }));

  // Annotations removed -> delete; back -> put; node deleted -> delete.
  from = d.messages.length;
  await d.api('PATCH', '/api/v1/nodes/n2', { metadata: { annotations: { [`${P}backend-data`]: null } } }, 'application/merge-patch+json');
  t.truthy(await d.waitFor((m) => m.event === 'delete' && m.subnet === '198.18.2.0/24', { from }));
  from = d.messages.length;
  await d.api('PATCH', '/api/v1/nodes/n2', { metadata: { annotations: { [`${P}backend-data`]: '{"VNI":1,"VtepMAC":"0a:00:00:00:02:03"}' } } }, 'application/merge-patch+json');
  t.truthy(await d.waitFor((m) => m.event === 'put' && m.lease.backendData.VtepMAC === '0a:00:00:00:02:03', { from }));
  from = d.messages.length;
  t.is((await d.api('DELETE', '/api/v1/nodes/n2')).status, 200);
  t.truthy(await d.waitFor((m) => m.event === 'delete' && m.subnet === '198.18.2.0/24', { from }));

  // Unannotated: counted, not logged, not leased.
  from = d.messages.length;
  await d.api('POST', '/api/v1/nodes', peerNode('n3', { cidr: '198.18.3.0/24', annotations: {} }));
  t.truthy(await d.waitFor((m) => m.event === 'pending' && m.count === 1, { from }));

  // Malformed: bad JSON, bad MAC, outside Network, overlapping ours -> one line each, never leased.
  from = d.messages.length;
  await d.api('POST', '/api/v1/nodes', peerNode('n4', { cidr: '198.18.4.0/24', annotations: { ...peerNode('x').metadata.annotations, [`${P}backend-data`]: '{"VNI":1,' } }));
  await d.api('POST', '/api/v1/nodes', peerNode('n7', { cidr: '198.18.7.0/24', mac: 'ff:ff:ff:ff:ff:ff' }));
  await d.api('POST', '/api/v1/nodes', peerNode('n8', { cidr: '203.0.113.0/24' }));
  await d.api('POST', '/api/v1/nodes', peerNode('n9', { cidr: '198.18.1.128/25' }));
  for (const [name, re] of [
    ['n4', /not JSON/],
    ['n7', /VtepMAC/],
    ['n8', /outside the network/],
    ['n9', /overlaps our subnet/],
  ] as const) {
    const m = await d.waitFor((x) => x.event === 'malformed' && x.node === name, { from });
    t.truthy(m, `${name} reported`);
    t.regex(m?.why ?? '', re);
  }
  // Touch them repeatedly (as heartbeats do): no new lines.
  for (let i = 0; i < 3; i++) {
    for (const name of ['n4', 'n7']) await d.api('PATCH', `/api/v1/nodes/${name}`, { metadata: { labels: { beat: String(i) } } }, 'application/merge-patch+json');
  }
  await new Promise((r) => setTimeout(r, 1000));
  const lines = d.messages.slice(from).filter((m) => m.event === 'log' && /ignoring node/.test(m.msg));
  t.is(lines.length, 4, lines.map((l) => l.msg).join('\n'));
  t.false(
    d.messages.slice(from).some((m) => m.event === 'put'),
    'nothing malformed became a lease',
  );
  t.deepEqual(
    (await d.call('list')).map((l: Msg) => l.subnet),
    ['198.18.5.0/24'],
  );
  for (const name of ['n3', 'n4', 'n7', 'n8', 'n9']) await d.api('DELETE', `/api/v1/nodes/${name}`);
  await d.call('close');
});

test.serial('API server down, changes made elsewhere and etcd compacted: the informer relists (410) and misses nothing', async (t) => {
  const d = driver('n1');
  await d.call('acquire', { attrs: attrs('0a:00:00:00:01:01') });
  for (const [name, cidr] of [
    ['p1', '198.18.11.0/24'],
    ['p2', '198.18.12.0/24'],
    ['p3', '198.18.13.0/24'],
  ]) {
    await d.api('POST', '/api/v1/nodes', peerNode(name, { cidr, mac: `0a:00:00:00:0b:${cidr.split('.')[2]}` }));
  }
  await d.call('watch');
  const snap = await d.waitFor((m) => m.event === 'snapshot');
  t.deepEqual(snap!.leases.map((l: Msg) => l.subnet).sort(), ['198.18.11.0/24', '198.18.12.0/24', '198.18.13.0/24', '198.18.5.0/24']);

  // Our server goes away; a second one (same etcd) takes the changes, then etcd is compacted so
  // the informer's resourceVersion is gone by the time our server is back.
  const from = d.messages.length;
  await killAndWait(lab.apiPid!, 'SIGTERM');
  t.truthy(await d.waitFor((m) => m.event === 'log' && /node watch: .*restarting/.test(m.msg), { from }), 'the informer error is noticed');
  const other = await lab.startApi(API_PORT + 1);
  const viaOther = lab.driver('nobody', { in: 'kn', port: API_PORT + 1 });
  t.is((await viaOther.api('DELETE', '/api/v1/nodes/p1')).status, 200);
  await viaOther.api('PATCH', '/api/v1/nodes/p2', { metadata: { annotations: { [`${P}backend-data`]: '{"VNI":1,"VtepMAC":"0a:00:00:00:0c:0c"}' } } }, 'application/merge-patch+json');
  await viaOther.api('POST', '/api/v1/nodes', peerNode('p4', { cidr: '198.18.14.0/24', mac: '0a:00:00:00:0b:0e' }));
  for (let i = 0; i < 5; i++) await viaOther.api('PATCH', '/api/v1/nodes/p3', { metadata: { labels: { churn: String(i) } } }, 'application/merge-patch+json');
  await viaOther.call('compact');
  await viaOther.call('close');
  await killAndWait(other, 'SIGTERM');

  lab.apiPid = await lab.startApi(API_PORT);
  t.truthy(await d.waitFor((m) => m.event === 'delete' && m.subnet === '198.18.11.0/24', { from, timeoutMs: 20_000 }), 'deleted while away');
  t.truthy(await d.waitFor((m) => m.event === 'put' && m.lease.subnet === '198.18.12.0/24' && m.lease.backendData.VtepMAC === '0a:00:00:00:0c:0c', { from }), 'changed while away');
  t.truthy(await d.waitFor((m) => m.event === 'put' && m.lease.subnet === '198.18.14.0/24', { from }), 'added while away');
  t.truthy(await d.waitFor((m) => m.event === 'log' && /ok again/.test(m.msg), { from }));
  t.truthy(
    d.messages.slice(from).find((m) => m.event === 'log' && /node list: re-listed \d+ node\(s\), 3 change\(s\) since the watch stopped/.test(m.msg)),
    'the changes came from a relist (410), not a replayed watch',
  );
  const changes = d.messages.slice(from).filter((m) => m.event === 'put' || m.event === 'delete');
  t.is(changes.length, 3, `exactly the three real changes: ${JSON.stringify(changes)}`);
  t.is(d.events('snapshot').length, 1, 'relist changes arrive as events, not a second snapshot');

  // The watch is alive again after the relist.
  const after = d.messages.length;
  await d.api('DELETE', '/api/v1/nodes/p4');
  t.truthy(await d.waitFor((m) => m.event === 'delete' && m.subnet === '198.18.14.0/24', { from: after }));
  for (const name of ['p2', 'p3']) await d.api('DELETE', `/api/v1/nodes/${name}`);
  await d.call('close');
});

test.serial('our annotations removed by someone else are written back', async (t) => {
  const d = driver('n1');
  await d.call('acquire', { attrs: attrs('0a:00:00:00:01:01') });
  await d.call('watch');
  await d.waitFor((m) => m.event === 'snapshot');
  await d.api('PATCH', '/api/v1/nodes/n1', { metadata: { annotations: { [`${P}backend-data`]: null, [`${P}public-ip`]: '198.51.100.99' } } }, 'application/merge-patch+json');
  t.true(
    await eventually(async () => {
      const a = (await d.api('GET', '/api/v1/nodes/n1')).body.metadata.annotations;
      return a[`${P}backend-data`] === '{"VNI":1,"VtepMAC":"0a:00:00:00:01:01"}' && a[`${P}public-ip`] === NODE_IP;
    }, 10_000),
  );
  await d.call('close');
});

test.serial('API server restart without compaction: the watch resumes from its resourceVersion, no relist, one log line', async (t) => {
  const d = driver('n1');
  await d.call('acquire', { attrs: attrs('0a:00:00:00:01:01') });
  await d.call('watch');
  await d.waitFor((m) => m.event === 'snapshot');
  const from = d.messages.length;
  await killAndWait(lab.apiPid!, 'SIGTERM');
  t.truthy(await d.waitFor((m) => m.event === 'log' && /node watch: .*restarting/.test(m.msg), { from }));
  // Down for several backoff rounds (200 ms doubling to 1 s in the driver).
  await new Promise((r) => setTimeout(r, 4000));
  const apiLog: string[] = [];
  lab.apiPid = await lab.startApi(API_PORT, { args: ['--log-level', 'debug', '--bookmark-interval', '1s'], log: apiLog });
  t.truthy(await d.waitFor((m) => m.event === 'log' && /ok again/.test(m.msg), { from, timeoutMs: 20_000 }));
  const failures = d.messages.slice(from).filter((m) => m.event === 'log' && /node watch: .*restarting/.test(m.msg));
  t.true(failures.length <= 2, `an outage is not logged once per retry:\n${failures.map((f) => f.msg).join('\n')}`);
  await d.api('POST', '/api/v1/nodes', peerNode('q1', { cidr: '198.18.21.0/24', mac: '0a:00:00:00:15:01' }));
  t.truthy(await d.waitFor((m) => m.event === 'put' && m.lease.subnet === '198.18.21.0/24', { from }));
  t.false(
    d.messages.slice(from).some((m) => m.event === 'log' && /node list:/.test(m.msg)),
    'resumed from the resourceVersion, no relist needed',
  );
  // The reconnect asked for bookmarks (client-node's informer does not by itself) and named a
  // resourceVersion; no full list reached this server, only the one-item lists that read its
  // current resourceVersion (not behind ours: the store kept its data).
  const urls = apiLog
    .map((l) => (l.startsWith('{') ? (JSON.parse(l) as { method?: string; url?: string }) : {}))
    .filter((r) => r.method === 'GET' && r.url?.startsWith('/api/v1/nodes'))
    .map((r) => r.url!);
  const watches = urls.filter((u) => /[?&]watch=true/.test(u) && !/fieldSelector/.test(u));
  t.true(watches.length > 0, urls.join('\n'));
  for (const u of watches) {
    t.regex(u, /allowWatchBookmarks=true/);
    t.regex(u, /resourceVersion=[1-9]\d*/);
  }
  t.false(
    urls.some((u) => !/watch=true/.test(u) && !/[?&]limit=1(&|$)/.test(u) && /^\/api\/v1\/nodes(\?|$)/.test(u)),
    `no relist: ${urls.join('\n')}`,
  );
  t.true(
    urls.some((u) => /[?&]limit=1(&|$)/.test(u)),
    `the current resourceVersion read before resuming: ${urls.join('\n')}`,
  );
  await d.api('DELETE', '/api/v1/nodes/q1');
  t.truthy(await d.waitFor((m) => m.event === 'delete' && m.subnet === '198.18.21.0/24', { from }));
  await d.call('close');
});

test.serial('our Node not registered: a retryable error naming --node-name', async (t) => {
  const d = driver('ghost');
  const m = await d.request('acquire', { attrs: attrs('0a:00:00:00:09:01') });
  t.false(m.ok);
  t.regex(m.error, /node "ghost" is not registered.*--node-name/);
  t.true(m.retryable);
  // weftd reads its remembered VTEP MAC before creating the device: it waits for the Node to be
  // registered (a retryable condition) rather than guessing, until it is stopped.
  let answer: Record<string, unknown> | undefined;
  const pending = d.request('previousMac', { vni: 1 }, 10_000).then(
    (m) => (answer = m),
    () => undefined,
  );
  await new Promise((r) => setTimeout(r, 2500));
  t.is(answer, undefined, 'still waiting for our Node after 2.5 s (no MAC guessed)');
  await d.call('close');
  await pending;
  if (answer) t.false(answer.ok, 'stopping ends the wait without a MAC');
});

/**
 * The test API server (lab/apiserver) against a real etcd, over HTTP, as weft's clients use it.
 *
 * Set-up (test/helpers/apiserver.ts): one throwaway namespace with etcd and the server (a child
 * process started with `nsenter --net=`) on 198.51.100.2; the root namespace gets no address. This
 * test process talks to the server through a unix socket that socat, inside the namespace,
 * forwards to 198.51.100.2:6443; etcd is read and compacted with etcdctl inside the namespace.
 * The server runs with --bookmark-interval 1s so bookmarks can be seen in a test.
 */
import test from 'ava';
import { ControlPlane, type Reply } from '../helpers/apiserver.ts';
import { inNs } from '../helpers/netns.ts';

let cp: ControlPlane;

test.before(async () => {
  cp = await ControlPlane.start({ args: ['--bookmark-interval', '1s'] });
});

test.after.always(async () => {
  await cp?.destroy();
});

const SMP = 'application/strategic-merge-patch+json';
const MERGE = 'application/merge-patch+json';
const JSONPATCH = 'application/json-patch+json';

function node(name: string, extra: Record<string, unknown> = {}) {
  return { apiVersion: 'v1', kind: 'Node', metadata: { name, labels: { 'weft.test/role': 'worker' } }, spec: { podCIDR: '198.18.7.0/24' }, ...extra };
}

async function ok(t: { is: (a: unknown, b: unknown, m?: string) => void }, r: Promise<Reply>, code = 200): Promise<any> {
  const res = await r;
  t.is(res.status, code, res.text);
  return res.json;
}

test.serial('create, get and list carry uid, creationTimestamp and resourceVersion = etcd mod revision', async (t) => {
  const created = await ok(t, cp.request('POST', '/api/v1/nodes', { body: node('rv-a') }), 201);
  t.regex(created.metadata.uid, /^[0-9a-f-]{36}$/);
  t.regex(created.metadata.creationTimestamp, /^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ$/);
  t.is(created.metadata.generation, undefined, 'nodes carry no generation in kube');
  t.deepEqual(created.spec.podCIDRs, ['198.18.7.0/24']);
  const kv = JSON.parse(await cp.etcd.ctl(['get', '/registry/core/nodes/rv-a', '-w', 'json']));
  t.is(String(kv.kvs[0].mod_revision), created.metadata.resourceVersion, 'resourceVersion is the key mod revision');
  const stored = JSON.parse(Buffer.from(kv.kvs[0].value, 'base64').toString());
  t.is(stored.metadata.resourceVersion, undefined, 'etcd holds the object without resourceVersion');

  const got = await ok(t, cp.request('GET', '/api/v1/nodes/rv-a'));
  t.deepEqual(got, created);
  await ok(t, cp.request('POST', '/api/v1/namespaces/default/configmaps', { body: { metadata: { name: 'bump' }, data: { a: '1' } } }), 201);
  const list = await ok(t, cp.request('GET', '/api/v1/nodes'));
  t.is(list.kind, 'NodeList');
  const rev = JSON.parse(await cp.etcd.ctl(['get', '/', '-w', 'json'])).header.revision;
  t.is(list.metadata.resourceVersion, String(rev), 'a list carries the store revision, not the newest item');
  const item = list.items.find((i: any) => i.metadata.name === 'rv-a');
  t.is(item.metadata.resourceVersion, created.metadata.resourceVersion);
  t.is(item.kind, undefined, 'list items carry no kind, as kube sends them');

  const dup = await cp.request('POST', '/api/v1/nodes', { body: node('rv-a') });
  t.is(dup.status, 409);
  t.like(dup.json, { kind: 'Status', status: 'Failure', reason: 'AlreadyExists', code: 409 });
  const missing = await cp.request('GET', '/api/v1/nodes/nope');
  t.like(missing.json, { kind: 'Status', reason: 'NotFound', code: 404, message: 'nodes "nope" not found' });
});

test.serial('list then watch from its resourceVersion: every change once, in order, headers before any event', async (t) => {
  const list = await ok(t, cp.request('GET', '/api/v1/nodes?labelSelector=weft.test/role=worker'));
  const w = cp.watch(`/api/v1/nodes?watch=true&resourceVersion=${list.metadata.resourceVersion}&labelSelector=weft.test/role=worker`);
  t.teardown(() => w.close());
  await w.opened;
  t.is(w.status, 200);
  t.is(w.events.length, 0, 'headers arrive with no event yet (flushed at once)');
  t.is(w.headers['transfer-encoding'], 'chunked');
  t.is(w.headers['content-type'], 'application/json');

  const a = await ok(t, cp.request('POST', '/api/v1/nodes', { body: node('w-a') }), 201);
  const other = await ok(t, cp.request('POST', '/api/v1/nodes', { body: { metadata: { name: 'w-other', labels: { 'weft.test/role': 'infra' } } } }), 201);
  const a2 = await ok(t, cp.request('PATCH', '/api/v1/nodes/w-a', { contentType: MERGE, body: { metadata: { annotations: { x: 'y' } } } }));
  // Leaving the selector shows up as a deletion for this watcher; joining it as an addition.
  await ok(t, cp.request('PATCH', '/api/v1/nodes/w-other', { contentType: MERGE, body: { metadata: { labels: { 'weft.test/role': 'worker' } } } }));
  await ok(t, cp.request('DELETE', '/api/v1/nodes/w-a'));
  const del = await w.next((e) => e.type === 'DELETED' && e.object.metadata.name === 'w-a');
  const seen = w.events.map((e) => `${e.type} ${e.object.metadata.name}`);
  t.deepEqual(seen, ['ADDED w-a', 'MODIFIED w-a', 'ADDED w-other', 'DELETED w-a']);
  t.is(w.events[0]!.object.metadata.resourceVersion, a.metadata.resourceVersion);
  t.is(w.events[1]!.object.metadata.resourceVersion, a2.metadata.resourceVersion);
  t.is(w.events[0]!.object.kind, 'Node');
  t.true(BigInt(del.object.metadata.resourceVersion) > BigInt(a2.metadata.resourceVersion), 'a deletion carries the deletion revision');
  t.not(other.metadata.resourceVersion, undefined);
  const rvs = w.events.map((e) => BigInt(e.object.metadata.resourceVersion));
  t.deepEqual(
    [...rvs].sort((x, y) => (x < y ? -1 : 1)),
    rvs,
    'events in revision order',
  );
  await ok(t, cp.request('DELETE', '/api/v1/nodes/w-other'));
});

test.serial('a watch resumed from an older resourceVersion replays exactly what came after it', async (t) => {
  const c = await ok(t, cp.request('POST', '/api/v1/namespaces/default/configmaps', { body: { metadata: { name: 'resume' }, data: { v: '0' } } }), 201);
  const revs: string[] = [];
  for (let i = 1; i <= 3; i++) {
    const u = await ok(t, cp.request('PATCH', '/api/v1/namespaces/default/configmaps/resume', { contentType: MERGE, body: { data: { v: String(i) } } }));
    revs.push(u.metadata.resourceVersion);
  }
  const w = cp.watch(`/api/v1/namespaces/default/configmaps?watch=1&resourceVersion=${revs[0]}&fieldSelector=metadata.name=resume`);
  t.teardown(() => w.close());
  await w.next((e) => e.object.metadata.resourceVersion === revs[2]);
  t.deepEqual(
    w.events.map((e) => [e.type, e.object.data.v, e.object.metadata.resourceVersion]),
    [
      ['MODIFIED', '2', revs[1]],
      ['MODIFIED', '3', revs[2]],
    ],
  );
  t.true(BigInt(c.metadata.resourceVersion) < BigInt(revs[0]!));
  // The same through the single-object watch path.
  const one = cp.watch(`/api/v1/namespaces/default/configmaps/resume?watch=true&resourceVersion=${revs[1]}`);
  t.teardown(() => one.close());
  t.is((await one.next((e) => e.type === 'MODIFIED')).object.metadata.resourceVersion, revs[2]);
  // Without a resourceVersion the watch starts with the current state as ADDED.
  const w0 = cp.watch('/api/v1/namespaces/default/configmaps?watch=1&fieldSelector=metadata.name=resume');
  t.teardown(() => w0.close());
  const first = await w0.next((e) => e.type === 'ADDED');
  t.is(first.object.data.v, '3');
});

test.serial('410 after compaction: ERROR event with a Status on a watch, HTTP 410 on an exact list', async (t) => {
  const c = await ok(t, cp.request('POST', '/api/v1/namespaces/default/configmaps', { body: { metadata: { name: 'old' }, data: { v: '0' } } }), 201);
  const old = c.metadata.resourceVersion;
  await ok(t, cp.request('PATCH', '/api/v1/namespaces/default/configmaps/old', { contentType: MERGE, body: { data: { v: '1' } } }));
  const before = await ok(t, cp.request('GET', `/api/v1/namespaces/default/configmaps?resourceVersion=${old}&resourceVersionMatch=Exact`));
  t.is(before.items.find((i: any) => i.metadata.name === 'old').data.v, '0', 'an exact list reads at that revision');
  const rev = JSON.parse(await cp.etcd.ctl(['get', '/', '-w', 'json'])).header.revision;
  await cp.etcd.ctl(['compact', String(rev)]);

  const w = cp.watch(`/api/v1/namespaces/default/configmaps?watch=1&resourceVersion=${old}`);
  await w.opened;
  t.is(w.status, 200, 'kube answers a watch with 200 and then the ERROR event');
  const ev = await w.next((e) => e.type === 'ERROR');
  t.like(ev.object, { kind: 'Status', status: 'Failure', code: 410, reason: 'Expired' });
  await w.waitEnd();

  const list = await cp.request('GET', `/api/v1/namespaces/default/configmaps?resourceVersion=${old}&resourceVersionMatch=Exact`);
  t.is(list.status, 410);
  t.like(list.json, { kind: 'Status', code: 410, reason: 'Expired' });
  // From the compaction revision on, watching works again.
  const w2 = cp.watch(`/api/v1/namespaces/default/configmaps?watch=1&resourceVersion=${rev}`);
  t.teardown(() => w2.close());
  await w2.opened;
  await ok(t, cp.request('PATCH', '/api/v1/namespaces/default/configmaps/old', { contentType: MERGE, body: { data: { v: '2' } } }));
  t.is((await w2.next((e) => e.type === 'MODIFIED')).object.data.v, '2');
});

test.serial('BOOKMARK events only with allowWatchBookmarks, carrying a resourceVersion already delivered', async (t) => {
  const c = await ok(t, cp.request('POST', '/api/v1/namespaces/default/configmaps', { body: { metadata: { name: 'bm' } } }), 201);
  const rv = c.metadata.resourceVersion;
  const withB = cp.watch(`/api/v1/namespaces/default/configmaps?watch=1&resourceVersion=${rv}&allowWatchBookmarks=true`);
  const without = cp.watch(`/api/v1/namespaces/default/configmaps?watch=1&resourceVersion=${rv}`);
  t.teardown(() => {
    withB.close();
    without.close();
  });
  const bm = await withB.next((e) => e.type === 'BOOKMARK', 5000);
  t.is(bm.object.kind, 'ConfigMap');
  t.is(bm.object.metadata.resourceVersion, rv);
  t.deepEqual(Object.keys(bm.object.metadata), ['resourceVersion']);
  const u = await ok(t, cp.request('PATCH', '/api/v1/namespaces/default/configmaps/bm', { contentType: MERGE, body: { data: { a: 'b' } } }));
  await withB.next((e) => e.type === 'BOOKMARK' && e.object.metadata.resourceVersion === u.metadata.resourceVersion, 5000);
  await without.next((e) => e.type === 'MODIFIED');
  // The watch-list protocol: current state, then a bookmark marking its end.
  const wl = cp.watch('/api/v1/namespaces/default/configmaps?watch=1&sendInitialEvents=true&resourceVersionMatch=NotOlderThan&allowWatchBookmarks=true&fieldSelector=metadata.name=bm');
  t.teardown(() => wl.close());
  const end = await wl.next((e) => e.type === 'BOOKMARK');
  t.deepEqual(wl.events.map((e) => e.type).slice(0, 2), ['ADDED', 'BOOKMARK']);
  t.is(end.object.metadata.annotations['k8s.io/initial-events-end'], 'true');
  t.true(BigInt(end.object.metadata.resourceVersion) >= BigInt(u.metadata.resourceVersion));
  const bad = await cp.request('GET', '/api/v1/namespaces/default/configmaps?watch=1&sendInitialEvents=true');
  t.is(bad.status, 422);
  await new Promise((r) => setTimeout(r, 1500));
  t.false(without.events.some((e) => e.type === 'BOOKMARK'));
});

test.serial('timeoutSeconds ends the watch; a client that goes away closes its etcd watch', async (t) => {
  const started = Date.now();
  const w = cp.watch('/api/v1/nodes?watch=1&timeoutSeconds=1');
  await w.waitEnd(5000);
  const took = Date.now() - started;
  t.true(took >= 900 && took < 4000, `ended after ${took} ms`);

  const watchers = async () => {
    const m = /^etcd_debugging_mvcc_watcher_total (\S+)$/m.exec(inNs(cp.netns, 'curl', ['-s', `${cp.etcd.endpoint}/metrics`]));
    return Number(m?.[1]);
  };
  const base = await watchers();
  const ws = [1, 2, 3].map(() => cp.watch('/api/v1/nodes?watch=1'));
  await Promise.all(ws.map((x) => x.opened));
  await eventuallyEq(watchers, base + 3);
  for (const x of ws) x.close();
  await eventuallyEq(watchers, base);
  t.pass();
});

async function eventuallyEq(fn: () => Promise<number>, want: number, ms = 10_000): Promise<void> {
  const end = Date.now() + ms;
  let got = NaN;
  while (Date.now() < end) {
    got = await fn();
    if (got === want) return;
    await new Promise((r) => setTimeout(r, 100));
  }
  throw new Error(`wanted ${want}, got ${got}`);
}

test.serial('strategic merge patch on nodes/status merges conditions by type; merge and JSON patches', async (t) => {
  await ok(t, cp.request('POST', '/api/v1/nodes', { body: node('p-a') }), 201);
  const cond = (type: string, status: string, reason: string) => ({ type, status, reason, lastTransitionTime: '2026-01-01T00:00:00Z' });
  await ok(
    t,
    cp.request('PATCH', '/api/v1/nodes/p-a/status', { contentType: SMP, body: { status: { conditions: [cond('Ready', 'True', 'KubeletReady'), cond('MemoryPressure', 'False', 'Fine')] } } }),
  );
  const up = await ok(
    t,
    cp.request('PATCH', '/api/v1/nodes/p-a/status', {
      contentType: SMP,
      body: {
        metadata: { annotations: { 'flannel.alpha.coreos.com/backend-type': 'vxlan' } },
        status: { conditions: [cond('NetworkUnavailable', 'False', 'FlannelIsUp'), { type: 'Ready', status: 'False' }] },
      },
    }),
  );
  t.deepEqual(
    up.status.conditions.map((c: any) => [c.type, c.status, c.reason]),
    [
      ['Ready', 'False', 'KubeletReady'],
      ['MemoryPressure', 'False', 'Fine'],
      ['NetworkUnavailable', 'False', 'FlannelIsUp'],
    ],
  );
  t.is(up.metadata.annotations['flannel.alpha.coreos.com/backend-type'], 'vxlan', 'metadata changes pass through /status (flannel relies on it)');
  // $patch: delete drops one element; a /status write cannot touch the spec, a main write not the status.
  const del = await ok(
    t,
    cp.request('PATCH', '/api/v1/nodes/p-a/status', { contentType: SMP, body: { spec: { unschedulable: true }, status: { conditions: [{ type: 'MemoryPressure', $patch: 'delete' }] } } }),
  );
  t.deepEqual(
    del.status.conditions.map((c: any) => c.type),
    ['Ready', 'NetworkUnavailable'],
  );
  t.is(del.spec.unschedulable, undefined);
  const main = await ok(t, cp.request('PATCH', '/api/v1/nodes/p-a', { contentType: MERGE, body: { spec: { unschedulable: true }, status: { conditions: [] } } }));
  t.true(main.spec.unschedulable);
  t.is(main.status.conditions.length, 2);
  // A merge patch replaces lists; a JSON patch edits by path.
  const mp = await ok(t, cp.request('PATCH', '/api/v1/nodes/p-a/status', { contentType: MERGE, body: { status: { conditions: [cond('Ready', 'True', 'Back')] } } }));
  t.deepEqual(
    mp.status.conditions.map((c: any) => c.reason),
    ['Back'],
  );
  const jp = await ok(
    t,
    cp.request('PATCH', '/api/v1/nodes/p-a', {
      contentType: JSONPATCH,
      body: [
        { op: 'test', path: '/spec/podCIDR', value: '198.18.7.0/24' },
        { op: 'add', path: '/metadata/labels/weft.test~1jp', value: 'yes' },
        { op: 'remove', path: '/spec/unschedulable' },
      ],
    }),
  );
  t.is(jp.metadata.labels['weft.test/jp'], 'yes');
  t.is(jp.spec.unschedulable, undefined);
  const failed = await cp.request('PATCH', '/api/v1/nodes/p-a', {
    contentType: JSONPATCH,
    body: [
      { op: 'test', path: '/spec/podCIDR', value: 'nope' },
      { op: 'remove', path: '/metadata/labels' },
    ],
  });
  t.is(failed.status, 422, failed.text);
  t.is((await ok(t, cp.request('GET', '/api/v1/nodes/p-a'))).metadata.labels['weft.test/jp'], 'yes', 'a failed JSON patch changes nothing');
  const cidr = await cp.request('PATCH', '/api/v1/nodes/p-a', { contentType: MERGE, body: { spec: { podCIDR: '198.18.8.0/24', podCIDRs: ['198.18.8.0/24'] } } });
  t.is(cidr.status, 422, 'podCIDR cannot change once set');
  const unknown = await cp.request('PATCH', '/api/v1/nodes/p-a', { contentType: 'application/json', body: {} });
  t.is(unknown.status, 415);
  // A patch that changes nothing writes nothing.
  const same = await ok(t, cp.request('PATCH', '/api/v1/nodes/p-a', { contentType: MERGE, body: { metadata: { labels: { 'weft.test/jp': 'yes' } } } }));
  t.is(same.metadata.resourceVersion, jp.metadata.resourceVersion);
});

test.serial('409 Conflict on a stale resourceVersion in PUT and PATCH; unconditional writes succeed', async (t) => {
  const c = await ok(t, cp.request('POST', '/api/v1/namespaces/default/configmaps', { body: { metadata: { name: 'cas' }, data: { v: '0' } } }), 201);
  const u = await ok(t, cp.request('PUT', '/api/v1/namespaces/default/configmaps/cas', { body: { ...c, data: { v: '1' } } }));
  t.true(BigInt(u.metadata.resourceVersion) > BigInt(c.metadata.resourceVersion));
  t.is(u.metadata.uid, c.metadata.uid);
  const stale = await cp.request('PUT', '/api/v1/namespaces/default/configmaps/cas', { body: { ...c, data: { v: 'stale' } } });
  t.is(stale.status, 409);
  t.like(stale.json, { kind: 'Status', reason: 'Conflict', code: 409 });
  t.regex(stale.json.message, /the object has been modified/);
  const staleP = await cp.request('PATCH', '/api/v1/namespaces/default/configmaps/cas', { contentType: MERGE, body: { metadata: { resourceVersion: c.metadata.resourceVersion }, data: { v: 'x' } } });
  t.is(staleP.status, 409);
  const { resourceVersion: _, ...meta } = c.metadata;
  const free = await ok(t, cp.request('PUT', '/api/v1/namespaces/default/configmaps/cas', { body: { ...c, metadata: meta, data: { v: '2' } } }));
  t.is(free.data.v, '2');
  t.is(free.metadata.creationTimestamp, c.metadata.creationTimestamp);
  const missing = await cp.request('PUT', '/api/v1/namespaces/default/configmaps/absent', { body: { metadata: { name: 'absent' } } });
  t.is(missing.status, 404);
  const wrongName = await cp.request('PUT', '/api/v1/namespaces/default/configmaps/cas', { body: { metadata: { name: 'other' } } });
  t.is(wrongName.status, 400);
});

test.serial('services: clusterIP allocated from the range, a taken IP refused, released on delete; node ports', async (t) => {
  const svc = (name: string, spec: Record<string, unknown>) => ({ apiVersion: 'v1', kind: 'Service', metadata: { name }, spec });
  const a = await ok(t, cp.request('POST', '/api/v1/namespaces/default/services', { body: svc('alloc-a', { selector: { app: 'a' }, ports: [{ port: 80, targetPort: 8080 }] }) }), 201);
  t.regex(a.spec.clusterIP, /^198\.19\.\d+\.\d+$/);
  t.deepEqual(a.spec.clusterIPs, [a.spec.clusterIP]);
  t.like(a.spec, { type: 'ClusterIP', sessionAffinity: 'None', ipFamilyPolicy: 'SingleStack', internalTrafficPolicy: 'Cluster' });
  t.deepEqual(a.spec.ports, [{ port: 80, targetPort: 8080, protocol: 'TCP' }]);
  t.deepEqual(a.status, { loadBalancer: {} });

  const taken = await cp.request('POST', '/api/v1/namespaces/default/services', { body: svc('alloc-b', { clusterIP: a.spec.clusterIP, ports: [{ port: 80 }] }) });
  t.is(taken.status, 422, taken.text);
  t.like(taken.json, { reason: 'Invalid' });
  t.regex(taken.json.message, /already allocated/);
  const outside = await cp.request('POST', '/api/v1/namespaces/default/services', { body: svc('alloc-b', { clusterIP: '198.18.0.10', ports: [{ port: 80 }] }) });
  t.is(outside.status, 422);
  const headless = await ok(t, cp.request('POST', '/api/v1/namespaces/default/services', { body: svc('alloc-h', { clusterIP: 'None', selector: { app: 'h' } }) }), 201);
  t.is(headless.spec.clusterIP, 'None');
  // Updating without clusterIP keeps it; changing it is refused.
  const { clusterIP: _ip, clusterIPs: _ips, ...rest } = a.spec;
  const kept = await ok(t, cp.request('PUT', '/api/v1/namespaces/default/services/alloc-a', { body: { ...a, spec: { ...rest, selector: { app: 'a2' } } } }));
  t.is(kept.spec.clusterIP, a.spec.clusterIP);
  const changed = await cp.request('PATCH', '/api/v1/namespaces/default/services/alloc-a', { contentType: MERGE, body: { spec: { clusterIP: '198.19.0.99', clusterIPs: ['198.19.0.99'] } } });
  t.is(changed.status, 422);
  // Ports merge by port in a strategic merge patch.
  const sp = await ok(
    t,
    cp.request('PATCH', '/api/v1/namespaces/default/services/alloc-a', {
      contentType: SMP,
      body: {
        spec: {
          ports: [
            { name: 'https', port: 443 },
            { port: 80, name: 'http' },
          ],
        },
      },
    }),
  );
  t.deepEqual(
    sp.spec.ports.map((p: any) => [p.name, p.port, p.targetPort]),
    [
      ['http', 80, 8080],
      ['https', 443, 443],
    ],
  );

  await ok(t, cp.request('DELETE', '/api/v1/namespaces/default/services/alloc-a'));
  const again = await ok(t, cp.request('POST', '/api/v1/namespaces/default/services', { body: svc('alloc-b', { clusterIP: a.spec.clusterIP, ports: [{ port: 80 }] }) }), 201);
  t.is(again.spec.clusterIP, a.spec.clusterIP, 'a deleted service frees its IP');

  const np = await ok(t, cp.request('POST', '/api/v1/namespaces/default/services', { body: svc('alloc-np', { type: 'NodePort', ports: [{ port: 53, protocol: 'UDP' }] }) }), 201);
  t.true(np.spec.ports[0].nodePort >= 30000 && np.spec.ports[0].nodePort <= 32767);
  t.is(np.spec.externalTrafficPolicy, 'Cluster');
  for (const bad of [
    { ports: [{ port: 0 }] },
    { ports: [{ port: 70000 }] },
    { ports: [{ port: 80, nodePort: 30080 }] },
    { type: 'NodePort', ports: [{ port: 80, nodePort: 80 }] },
    { type: 'NodePort', ports: [{ port: 80, nodePort: np.spec.ports[0].nodePort, protocol: 'UDP' }] },
    { ports: [{ port: 80 }, { port: 81 }] },
    { ports: [{ port: 80, protocol: 'ICMP' }] },
  ]) {
    const r = await cp.request('POST', '/api/v1/namespaces/default/services', { body: svc('alloc-bad', bad) });
    t.is(r.status, 422, `${JSON.stringify(bad)}: ${r.text}`);
  }
  const bad = await cp.request('POST', '/api/v1/namespaces/default/services', { body: svc('9starts-with-digit', { ports: [{ port: 80 }] }) });
  t.is(bad.status, 422, 'service names are DNS-1035 labels');
});

test.serial('endpointslices: generation, generateName, label selection', async (t) => {
  const body = {
    apiVersion: 'discovery.k8s.io/v1',
    kind: 'EndpointSlice',
    metadata: { generateName: 'web-', labels: { 'kubernetes.io/service-name': 'web' } },
    addressType: 'IPv4',
    endpoints: [{ addresses: ['198.18.1.5'], conditions: { ready: true }, nodeName: 'n1' }],
    ports: [{ name: 'http', port: 8080 }],
  };
  const s = await ok(t, cp.request('POST', '/apis/discovery.k8s.io/v1/namespaces/default/endpointslices', { body }), 201);
  t.regex(s.metadata.name, /^web-[a-z0-9]{5}$/);
  t.is(s.metadata.generation, 1);
  t.is(s.ports[0].protocol, 'TCP');
  const u = await ok(
    t,
    cp.request('PATCH', `/apis/discovery.k8s.io/v1/namespaces/default/endpointslices/${s.metadata.name}`, { contentType: SMP, body: { endpoints: [{ addresses: ['198.18.1.6'] }] } }),
  );
  t.is(u.metadata.generation, 2);
  t.deepEqual(u.endpoints, [{ addresses: ['198.18.1.6'] }], 'endpoints is an atomic list');
  const m = await ok(t, cp.request('PATCH', `/apis/discovery.k8s.io/v1/namespaces/default/endpointslices/${s.metadata.name}`, { contentType: MERGE, body: { metadata: { labels: { x: 'y' } } } }));
  t.is(m.metadata.generation, 2, 'metadata changes leave generation alone');
  const l = await ok(t, cp.request('GET', '/apis/discovery.k8s.io/v1/endpointslices?labelSelector=kubernetes.io/service-name%20in%20(web,other),x'));
  t.deepEqual(
    l.items.map((i: any) => i.metadata.name),
    [s.metadata.name],
  );
  const none = await ok(t, cp.request('GET', '/apis/discovery.k8s.io/v1/endpointslices?labelSelector=kubernetes.io/service-name!=web'));
  t.is(none.items.length, 0);
  const badAddr = await cp.request('POST', '/apis/discovery.k8s.io/v1/namespaces/default/endpointslices', { body: { ...body, endpoints: [{ addresses: ['not-an-ip'] }] } });
  t.is(badAddr.status, 422);
  const noNs = await cp.request('POST', '/apis/discovery.k8s.io/v1/namespaces/missing/endpointslices', { body });
  t.is(noNs.status, 404, 'creating in a namespace that does not exist fails');
});

test.serial('hostile input: bad JSON, huge bodies, bad names and selectors get Status errors', async (t) => {
  const badJson = await cp.request('POST', '/api/v1/nodes', { body: '{"metadata": ' });
  t.is(badJson.status, 400);
  t.like(badJson.json, { kind: 'Status', reason: 'BadRequest', code: 400 });
  const cbor = await cp.request('POST', '/api/v1/nodes', { body: '\xd9\xd9\xf7', contentType: 'application/cbor' });
  t.is(cbor.status, 415);
  t.is(cbor.json.reason, 'UnsupportedMediaType');
  for (const pb of ['k8s\u0000\u000a\u00ff', 'not protobuf', 'k8s\u0000\u000a\u0004\u000a\u0002v1\u0012\u0002Po']) {
    const r = await cp.request('POST', '/api/v1/nodes', { body: pb, contentType: 'application/vnd.kubernetes.protobuf' });
    t.is(r.status, 400, `${JSON.stringify(pb)}: ${r.text}`);
  }
  const deep = await cp.request('POST', '/api/v1/nodes', { body: `{"metadata":{"name":"deep"},"spec":${'{"a":'.repeat(100_000)}1${'}'.repeat(100_000)}}` });
  t.is(deep.status, 400, 'deeply nested input is refused, not a crash');
  const deepPatch = await cp.request('PATCH', '/api/v1/nodes/rv-a', { contentType: MERGE, body: `{"spec":${'['.repeat(100_000)}${']'.repeat(100_000)}}` });
  t.is(deepPatch.status, 400);
  const notObj = await cp.request('POST', '/api/v1/nodes', { body: '[1,2]' });
  t.is(notObj.status, 400);
  const huge = await cp.request('POST', '/api/v1/namespaces/default/configmaps', { body: { metadata: { name: 'huge' }, data: { a: 'x'.repeat(4 * 1024 * 1024) } } }).catch((e: Error) => e);
  if (huge instanceof Error) t.regex(huge.message, /EPIPE|ECONNRESET|socket hang up/);
  else t.is(huge.status, 413);
  for (const name of ['UPPER', 'a_b', '-x', 'x'.repeat(254)]) {
    const r = await cp.request('POST', '/api/v1/nodes', { body: node(name) });
    t.is(r.status, 422, name);
    t.is(r.json.reason, 'Invalid');
  }
  const badLabel = await cp.request('POST', '/api/v1/nodes', { body: { metadata: { name: 'bl', labels: { 'bad key!': 'v' } } } });
  t.is(badLabel.status, 422);
  const wrongKind = await cp.request('POST', '/api/v1/nodes', { body: { kind: 'Service', metadata: { name: 'wk' } } });
  t.is(wrongKind.status, 400);
  for (const q of ['labelSelector=a%20in%20(b', 'labelSelector=%3D%3Dx', 'fieldSelector=spec.nodeName=x', 'resourceVersion=abc']) {
    const r = await cp.request('GET', `/api/v1/nodes?${q}`);
    t.is(r.status, 400, q);
  }
  const unknown = await cp.request('GET', '/api/v1/pods');
  t.is(unknown.status, 404);
  t.is(unknown.json.kind, 'Status');
  const setRv = await cp.request('POST', '/api/v1/nodes', { body: { metadata: { name: 'srv', resourceVersion: '5' } } });
  t.is(setRv.status, 400);
  const traversal = await cp.request('GET', '/api/v1/namespaces/default/configmaps/..%2F..%2Fcore%2Fnodes%2Frv-a');
  t.is(traversal.status, 404, 'a name that cannot exist (here: one reaching into another key) is not found');
  t.is((await cp.request('GET', '/api/v1/nodes/%E0%A4%A')).status, 400);
  const future = await cp.request('GET', '/api/v1/nodes?resourceVersion=99999999');
  t.is(future.status, 504);
  t.is(future.json.reason, 'Timeout');
  const limit = await ok(t, cp.request('GET', '/api/v1/nodes?limit=1'));
  t.true(Array.isArray(limit.items), 'limit is accepted (a full list is a valid answer)');
});

test.serial('discovery documents', async (t) => {
  const v = await ok(t, cp.request('GET', '/version'));
  t.is(v.major, '1');
  const api = await ok(t, cp.request('GET', '/api'));
  t.deepEqual(api.versions, ['v1']);
  const v1 = await ok(t, cp.request('GET', '/api/v1'));
  t.is(v1.kind, 'APIResourceList');
  t.truthy(v1.resources.find((r: any) => r.name === 'nodes' && !r.namespaced && r.verbs.includes('watch')));
  t.truthy(v1.resources.find((r: any) => r.name === 'nodes/status'));
  t.truthy(v1.resources.find((r: any) => r.name === 'services' && r.namespaced));
  const apis = await ok(t, cp.request('GET', '/apis'));
  t.deepEqual(
    apis.groups.map((g: any) => g.name),
    ['discovery.k8s.io'],
  );
  const g = await ok(t, cp.request('GET', '/apis/discovery.k8s.io'));
  t.is(g.preferredVersion.groupVersion, 'discovery.k8s.io/v1');
  const dv1 = await ok(t, cp.request('GET', '/apis/discovery.k8s.io/v1'));
  t.deepEqual(
    dv1.resources.map((r: any) => r.name),
    ['endpointslices'],
  );
});

test.serial('an open watch survives an etcd restart and delivers what changed after it', async (t) => {
  const c = await ok(t, cp.request('POST', '/api/v1/namespaces/default/configmaps', { body: { metadata: { name: 'restart' }, data: { v: '0' } } }), 201);
  const w = cp.watch(`/api/v1/namespaces/default/configmaps?watch=1&resourceVersion=${c.metadata.resourceVersion}&fieldSelector=metadata.name=restart`);
  t.teardown(() => w.close());
  await w.opened;
  await cp.etcd.restart();
  let u: Reply | undefined;
  // Writes fail with a 500 Status until the client has reconnected.
  for (let i = 0; i < 100 && u?.status !== 200; i++) {
    u = await cp.request('PATCH', '/api/v1/namespaces/default/configmaps/restart', { contentType: MERGE, body: { data: { v: '1' } } });
    if (u.status !== 200) {
      t.like(u.json, { kind: 'Status', code: 500 });
      await new Promise((r) => setTimeout(r, 200));
    }
  }
  t.is(u?.status, 200);
  const ev = await w.next((e) => e.type === 'MODIFIED', 15_000);
  t.is(ev.object.data.v, '1');
  t.false(w.ended);
});

test.serial('concurrent writers: unconditional patches all land; concurrent creates get distinct cluster IPs', async (t) => {
  await ok(t, cp.request('POST', '/api/v1/nodes', { body: node('race') }), 201);
  const n = 20;
  const res = await Promise.all(Array.from({ length: n }, (_, i) => cp.request('PATCH', '/api/v1/nodes/race', { contentType: SMP, body: { metadata: { labels: { [`l${i}`]: 'x' } } } })));
  t.deepEqual(
    res.map((r) => r.status),
    Array(n).fill(200),
  );
  const final = await ok(t, cp.request('GET', '/api/v1/nodes/race'));
  for (let i = 0; i < n; i++) t.is(final.metadata.labels[`l${i}`], 'x');
  const rvs = new Set(res.map((r) => r.json.metadata.resourceVersion));
  t.is(rvs.size, n, 'each patch made its own revision');

  // Twenty allocations at once: every claim is its own etcd transaction.
  const svcs = await Promise.all(
    Array.from({ length: n }, (_, i) => cp.request('POST', '/api/v1/namespaces/default/services', { body: { metadata: { name: `race-${i}` }, spec: { ports: [{ port: 80 }] } } })),
  );
  t.deepEqual(
    svcs.map((r) => r.status),
    Array(n).fill(201),
  );
  t.is(new Set(svcs.map((r) => r.json.spec.clusterIP)).size, n);
  const claims = await cp.etcd.getPrefix('/registry/ranges/serviceips/');
  for (const s of svcs) t.true([...claims.values()].includes(`default/${s.json.metadata.name}`));
});

test.serial('delete answers: Services return the object, ConfigMaps a Status; finalizers hold an object until removed', async (t) => {
  await ok(t, cp.request('POST', '/api/v1/namespaces/default/services', { body: { metadata: { name: 'del-svc' }, spec: { ports: [{ port: 80 }] } } }), 201);
  const ds = await ok(t, cp.request('DELETE', '/api/v1/namespaces/default/services/del-svc'));
  t.like(ds, { kind: 'Service', metadata: { name: 'del-svc' } });
  await ok(t, cp.request('POST', '/api/v1/namespaces/default/configmaps', { body: { metadata: { name: 'del-cm' } } }), 201);
  const dc = await ok(t, cp.request('DELETE', '/api/v1/namespaces/default/configmaps/del-cm'));
  t.like(dc, { kind: 'Status', status: 'Success', details: { name: 'del-cm', kind: 'configmaps' } });

  const c = await ok(t, cp.request('POST', '/api/v1/namespaces/default/configmaps', { body: { metadata: { name: 'fin', finalizers: ['weft.test/hold'] } } }), 201);
  const w = cp.watch(`/api/v1/namespaces/default/configmaps?watch=1&resourceVersion=${c.metadata.resourceVersion}&fieldSelector=metadata.name=fin`);
  t.teardown(() => w.close());
  const marked = await ok(t, cp.request('DELETE', '/api/v1/namespaces/default/configmaps/fin'));
  t.truthy(marked.metadata.deletionTimestamp);
  t.is(marked.kind, 'ConfigMap');
  t.is((await cp.request('GET', '/api/v1/namespaces/default/configmaps/fin')).status, 200, 'still there while a finalizer is pending');
  const more = await cp.request('PATCH', '/api/v1/namespaces/default/configmaps/fin', { contentType: MERGE, body: { metadata: { finalizers: ['weft.test/hold', 'weft.test/more'] } } });
  t.is(more.status, 422);
  await ok(t, cp.request('PATCH', '/api/v1/namespaces/default/configmaps/fin', { contentType: JSONPATCH, body: [{ op: 'remove', path: '/metadata/finalizers' }] }));
  t.is((await cp.request('GET', '/api/v1/namespaces/default/configmaps/fin')).status, 404);
  await w.next((e) => e.type === 'DELETED');
  t.deepEqual(
    w.events.map((e) => e.type),
    ['MODIFIED', 'DELETED'],
  );
});

/**
 * @kubernetes/client-node 2.x against the test API server: a Node informer lists, watches, sees
 * adds, updates and deletes, and relists after a 410; a strategic-merge patch of nodes/status
 * through the generated client merges conditions by type.
 *
 * Set-up as in apiserver.test.ts (test/helpers/apiserver.ts): etcd and the server in a throwaway
 * namespace. The informer is test/helpers/informer-client.ts, run inside the namespace via
 * nsenter, printing what it sees as JSON lines; this process changes objects through the
 * unix-socket forwarder and compacts etcd with etcdctl. The server runs with
 * --min-request-timeout 2, so its watches end every 2-4 s and the informer re-watches from its
 * last resourceVersion, which is how a compaction turns into a 410 for it.
 */
import type { ChildProcess } from 'node:child_process';
import { join } from 'node:path';
import test from 'ava';
import { ControlPlane } from '../helpers/apiserver.ts';

let cp: ControlPlane;
let client: ChildProcess;
const lines: any[] = [];

async function seen(pred: (l: any) => boolean, ms = 20_000): Promise<any> {
  const end = Date.now() + ms;
  for (;;) {
    const hit = lines.find(pred);
    if (hit) return hit;
    if (Date.now() > end) throw new Error(`informer never printed the line; got:\n${lines.map((l) => JSON.stringify(l)).join('\n')}`);
    await new Promise((r) => setTimeout(r, 50));
  }
}

test.before(async () => {
  cp = await ControlPlane.start({ args: ['--min-request-timeout', '2'] });
  const r = await cp.request('POST', '/api/v1/nodes', { body: { metadata: { name: 'inf-a' } } });
  if (r.status !== 201) throw new Error(r.text);
  client = cp.spawnInNs(process.execPath, [join(import.meta.dirname, '..', 'helpers', 'informer-client.ts'), cp.kubeconfig]);
  let buf = '';
  client.stdout!.on('data', (c: Buffer) => {
    buf += c.toString();
    for (let i = buf.indexOf('\n'); i >= 0; i = buf.indexOf('\n')) {
      lines.push(JSON.parse(buf.slice(0, i)));
      buf = buf.slice(i + 1);
    }
  });
  client.stderr!.on('data', (c: Buffer) => lines.push({ ev: 'stderr', msg: c.toString() }));
});

test.after.always(async () => {
  client?.kill('SIGKILL');
  await cp?.destroy();
});

test.serial('informer: list, then add / update / delete from the watch', async (t) => {
  await seen((l) => l.ev === 'add' && l.name === 'inf-a');
  t.is(lines.filter((l) => l.ev === 'list').length, 1);
  const b = (await cp.request('POST', '/api/v1/nodes', { body: { metadata: { name: 'inf-b' } } })).json;
  await seen((l) => l.ev === 'add' && l.name === 'inf-b' && l.rv === b.metadata.resourceVersion);
  const u = (await cp.request('PATCH', '/api/v1/nodes/inf-b', { contentType: 'application/merge-patch+json', body: { metadata: { labels: { x: 'y' } } } })).json;
  await seen((l) => l.ev === 'update' && l.name === 'inf-b' && l.rv === u.metadata.resourceVersion);
  await cp.request('DELETE', '/api/v1/nodes/inf-b');
  await seen((l) => l.ev === 'delete' && l.name === 'inf-b');
  t.false(
    lines.some((l) => l.ev === 'error'),
    JSON.stringify(lines),
  );
});

test.serial('informer: a re-watch past the compaction gets 410 and relists, then keeps watching', async (t) => {
  // Let at least one re-watch happen first (watches end every 2-4 s): that alone must not relist.
  const connects = () => lines.filter((l) => l.ev === 'connect').length;
  const c0 = connects();
  await seen(() => connects() > c0, 10_000);
  t.is(lines.filter((l) => l.ev === 'list').length, 1, 'a plain re-watch resumes without listing');

  // The informer's resourceVersion is inf-a's last change; move the store past it, then compact.
  const a = (await cp.request('PATCH', '/api/v1/nodes/inf-a', { contentType: 'application/merge-patch+json', body: { metadata: { labels: { gen: '1' } } } })).json;
  await seen((l) => l.ev === 'update' && l.rv === a.metadata.resourceVersion);
  for (let i = 0; i < 3; i++) await cp.request('POST', '/api/v1/namespaces/default/configmaps', { body: { metadata: { name: `filler-${i}` } } });
  const rev = JSON.parse(await cp.etcd.ctl(['get', '/', '-w', 'json'])).header.revision;
  await cp.etcd.ctl(['compact', String(rev)]);
  await seen((l) => l.ev === 'list' && lines.indexOf(l) > lines.findIndex((x) => x.ev === 'update' && x.rv === a.metadata.resourceVersion), 15_000);
  t.is(lines.filter((l) => l.ev === 'list').length, 2, 'exactly one relist');
  t.false(
    lines.some((l) => l.ev === 'error'),
    'a 410 is not an error for the informer',
  );

  // Still watching after the relist.
  const c = (await cp.request('POST', '/api/v1/nodes', { body: { metadata: { name: 'inf-c' } } })).json;
  await seen((l) => l.ev === 'add' && l.name === 'inf-c' && l.rv === c.metadata.resourceVersion);
});

test.serial('client-node strategic merge patch of nodes/status merges conditions by type', async (t) => {
  const cond = (type: string, status: string) => ({ type, status, lastTransitionTime: '2026-01-01T00:00:00Z', lastHeartbeatTime: '2026-01-01T00:00:00Z', reason: 'Test', message: '' });
  client.stdin!.write(`patch inf-a ${JSON.stringify({ status: { conditions: [cond('Ready', 'True')] } })}\n`);
  await seen((l) => l.ev === 'patched' && l.conditions?.length === 1);
  client.stdin!.write(`patch inf-a ${JSON.stringify({ status: { conditions: [cond('NetworkUnavailable', 'False')] } })}\n`);
  const p = await seen((l) => l.ev === 'patched' && l.conditions?.length === 2);
  t.deepEqual(p.conditions, ['Ready', 'NetworkUnavailable']);
  await seen((l) => l.ev === 'update' && l.name === 'inf-a' && l.rv === p.rv);
  t.false(
    lines.some((l) => l.ev === 'patch-error'),
    JSON.stringify(lines.filter((l) => l.ev === 'patch-error')),
  );
});

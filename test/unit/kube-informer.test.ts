/**
 * keepInformer (src/kube/informer.ts) against a small in-process Nodes endpoint on 127.0.0.1:
 * an API server that comes back on an emptied store (its resourceVersion behind ours). Without
 * `currentVersion` the informer resumes its watch from a version the store has not reached and
 * sees nothing; with it, the informer lists afresh and follows the new store.
 */
import { createServer, type ServerResponse } from 'node:http';
import type { AddressInfo } from 'node:net';
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import test from 'ava';
import { KubeConfig, type V1Node } from '@kubernetes/client-node';
import { keepInformer, storeBehind } from '../../src/kube/informer.ts';
import { KubeNodeClient } from '../../src/kube/client.ts';
import { silentLog } from '../../src/core/log.ts';

test('storeBehind: only a lower decimal resourceVersion is behind', (t) => {
  t.true(storeBehind('7', '1234'));
  t.true(storeBehind('99', '100'));
  t.false(storeBehind('100', '100'));
  t.false(storeBehind('12345678901234567890', '9'));
  t.false(storeBehind(undefined, '5'));
  t.false(storeBehind('', '5'));
  t.false(storeBehind('abc', '5'), 'opaque versions are not judged');
  t.false(storeBehind('3', 'x9'));
});

/** Nodes in a store with etcd-like revisions; a watch from a version the store lacks waits, as etcd's does. */
class FakeNodes {
  rev = 0;
  readonly nodes = new Map<string, V1Node>();
  readonly watchers = new Set<{ from: number; res: ServerResponse }>();
  readonly requests: string[] = [];
  readonly server = createServer((req, res) => {
    const url = new URL(req.url ?? '/', 'http://x');
    this.requests.push(url.search);
    if (url.pathname !== '/api/v1/nodes') {
      res.writeHead(404).end();
      return;
    }
    if (url.searchParams.get('watch') !== 'true') {
      res.writeHead(200, { 'content-type': 'application/json' });
      res.end(JSON.stringify({ kind: 'NodeList', apiVersion: 'v1', metadata: { resourceVersion: String(this.rev) }, items: [...this.nodes.values()] }));
      return;
    }
    res.writeHead(200, { 'content-type': 'application/json', 'transfer-encoding': 'chunked' });
    res.flushHeaders();
    const w = { from: Number(url.searchParams.get('resourceVersion') ?? 0), res };
    this.watchers.add(w);
    res.on('close', () => this.watchers.delete(w));
  });

  #send(type: string, obj: V1Node): void {
    for (const w of this.watchers) if (this.rev > w.from) w.res.write(`${JSON.stringify({ type, object: obj })}\n`);
  }

  put(name: string): void {
    const type = this.nodes.has(name) ? 'MODIFIED' : 'ADDED';
    const obj: V1Node = { apiVersion: 'v1', kind: 'Node', metadata: { name, resourceVersion: String(++this.rev) } };
    this.nodes.set(name, obj);
    this.#send(type, obj);
  }

  /** The API server restarted on an emptied etcd: every watch cut, nothing stored, revision 1. */
  wipe(): void {
    for (const w of this.watchers) w.res.destroy();
    this.watchers.clear();
    this.nodes.clear();
    this.rev = 1;
  }
}

async function withApi(t: { teardown(fn: () => void | Promise<void>): void }) {
  const api = new FakeNodes();
  await new Promise<void>((r) => api.server.listen(0, '127.0.0.1', r));
  t.teardown(() => {
    api.server.closeAllConnections();
    api.server.close();
  });
  const dir = mkdtempSync(join(tmpdir(), 'weft-kube-informer-'));
  t.teardown(() => rmSync(dir, { recursive: true, force: true }));
  const file = join(dir, 'kubeconfig');
  // client-node 2.x refuses plain http unless insecure-skip-tls-verify is set.
  const { port } = api.server.address() as AddressInfo;
  writeFileSync(
    file,
    JSON.stringify({
      apiVersion: 'v1',
      kind: 'Config',
      clusters: [{ name: 'c', cluster: { server: `http://127.0.0.1:${port}`, 'insecure-skip-tls-verify': true } }],
      users: [{ name: 'u', user: {} }],
      contexts: [{ name: 'x', context: { cluster: 'c', user: 'u' } }],
      'current-context': 'x',
    }),
  );
  const kc = new KubeConfig();
  kc.loadFromFile(file);
  return { api, kc, client: new KubeNodeClient(kc, { timeoutMs: 2000 }) };
}

const until = async (cond: () => boolean, ms = 5000) => {
  const end = Date.now() + ms;
  while (!cond() && Date.now() < end) await new Promise((r) => setTimeout(r, 20));
  return cond();
};

/** Runs an informer over `api`; `seen` is the set of Node names it holds. */
function run(kc: KubeConfig, client: KubeNodeClient, opts: { probe: boolean }) {
  const ac = new AbortController();
  const seen = new Set<string>();
  const warnings: string[] = [];
  const done = keepInformer<V1Node>(ac.signal, {
    kc,
    path: '/api/v1/nodes',
    what: 'node watch',
    list: () => client.list(),
    currentVersion: opts.probe ? async () => (await client.list({ limit: 1 })).metadata?.resourceVersion : undefined,
    onAdd: (n) => seen.add(n.metadata!.name!),
    onUpdate: (n) => seen.add(n.metadata!.name!),
    onDelete: (n) => seen.delete(n.metadata!.name!),
    log: { ...silentLog, warn: (m: string) => void warnings.push(m) },
    backoffMs: { min: 50, max: 200 },
  });
  return { seen, warnings, stop: () => (ac.abort(), done) };
}

test('keepInformer: an API server back on an emptied store is listed afresh (its resourceVersion is behind ours)', async (t) => {
  const { api, kc, client } = await withApi(t);
  for (let i = 0; i < 50; i++) api.put('a'); // rev 50
  api.put('b');
  const inf = run(kc, client, { probe: true });
  t.teardown(inf.stop);
  t.true(await until(() => inf.seen.has('a') && inf.seen.has('b') && api.watchers.size === 1));
  const listedBefore = api.requests.filter((q) => !q.includes('watch')).length;
  t.true(
    api.requests.some((q) => q.includes('watch=true') && q.includes('resourceVersion=51')),
    'the watch opened from the listing without asking how new it is',
  );
  t.is(api.requests.filter((q) => q.includes('limit=1')).length, 0);
  api.wipe();
  // Re-created on the new store, at versions far below the ones the informer saw.
  t.true(await until(() => api.watchers.size === 1 && !inf.seen.has('a')), 'listed the empty store: the old Nodes are gone');
  api.put('a');
  t.true(await until(() => inf.seen.has('a')), 'the re-created Node arrives through the new watch');
  t.false(inf.seen.has('b'));
  t.true(
    api.requests.some((q) => q.includes('limit=1')),
    'asked for the current version before resuming',
  );
  t.true(api.requests.filter((q) => !q.includes('watch') && !q.includes('limit=1')).length > listedBefore, 'and listed again');
  t.regex(inf.warnings.join('\n'), /resourceVersion 1 is behind ours \(51\): its store was emptied or restored; listing afresh/);
});

test('keepInformer without currentVersion: resumes from a version the emptied store lacks and sees nothing (the hazard)', async (t) => {
  const { api, kc, client } = await withApi(t);
  for (let i = 0; i < 50; i++) api.put('a');
  const inf = run(kc, client, { probe: false });
  t.teardown(inf.stop);
  t.true(await until(() => inf.seen.has('a') && api.watchers.size === 1));
  api.wipe();
  t.true(await until(() => api.watchers.size === 1), 'the watch reconnects');
  api.put('c');
  t.false(await until(() => inf.seen.has('c'), 1000), 'but from resourceVersion 50: nothing arrives');
  t.true(inf.seen.has('a'), 'and the lost Node is still held');
});

test('keepInformer: a store that is not behind resumes the watch without listing', async (t) => {
  const { api, kc, client } = await withApi(t);
  for (let i = 0; i < 5; i++) api.put('a');
  const inf = run(kc, client, { probe: true });
  t.teardown(inf.stop);
  t.true(await until(() => inf.seen.has('a') && api.watchers.size === 1));
  const lists = () => api.requests.filter((q) => !q.includes('watch') && !q.includes('limit=1')).length;
  const before = lists();
  // The connection breaks, the store keeps its data (an API server restart on the same etcd).
  for (const w of api.watchers) w.res.destroy();
  api.watchers.clear();
  t.true(await until(() => api.watchers.size === 1));
  api.put('d');
  t.true(await until(() => inf.seen.has('d')));
  t.is(lists(), before, 'no relist');
  t.is(api.requests.filter((q) => q.includes('watch=true') && /resourceVersion=5(&|$)/.test(q)).length, 2, 'the watch resumed from where it was');
  t.deepEqual(
    inf.warnings.filter((w) => /behind/.test(w)),
    [],
  );
});

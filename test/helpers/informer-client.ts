/**
 * A client-node (2.x) Node informer, run inside a test namespace by
 * test/priv/apiserver-informer.test.ts: `node informer-client.ts <kubeconfig>`. Prints one JSON
 * line per thing it sees: `{"ev":"list"}` when the informer lists (start-up and every relist),
 * `{"ev":"add"|"update"|"delete","name","rv"}`, `{"ev":"error","msg"}`, `{"ev":"connect"}`.
 * It also patches nodes on request (a line `patch <name> <json>` on stdin, strategic merge on
 * nodes/<name>/status, as flannel does) and answers `{"ev":"patched","name","rv"}`.
 */
import { createInterface } from 'node:readline';
import { CoreV1Api, KubeConfig, makeInformer, PatchStrategy, setHeaderOptions, type V1Node } from '@kubernetes/client-node';

const kc = new KubeConfig();
kc.loadFromFile(process.argv[2]!);
const api = kc.makeApiClient(CoreV1Api);
const out = (o: object) => process.stdout.write(`${JSON.stringify(o)}\n`);

const informer = makeInformer<V1Node>(kc, '/api/v1/nodes', async () => {
  out({ ev: 'list' });
  return api.listNode();
});
for (const ev of ['add', 'update', 'delete'] as const) {
  informer.on(ev, (n: V1Node) => out({ ev, name: n.metadata?.name, rv: n.metadata?.resourceVersion }));
}
informer.on('connect', () => out({ ev: 'connect' }));
informer.on('error', (err: unknown) => out({ ev: 'error', msg: String((err as Error)?.message ?? err) }));
await informer.start();

createInterface({ input: process.stdin }).on('line', (line) => {
  const m = /^patch (\S+) (.+)$/.exec(line);
  if (!m) return;
  api
    .patchNodeStatus({ name: m[1]!, body: JSON.parse(m[2]!) }, setHeaderOptions('Content-Type', PatchStrategy.StrategicMergePatch))
    .then((n) => out({ ev: 'patched', name: n.metadata?.name, rv: n.metadata?.resourceVersion, conditions: n.status?.conditions?.map((c) => c.type) }))
    .catch((err: unknown) => out({ ev: 'patch-error', msg: String((err as Error)?.message ?? err) }));
});

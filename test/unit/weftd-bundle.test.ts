/**
 * weftd as scripts/build.ts bundles it: what a weftd loads at start (its entry and the chunks
 * the entry imports statically) holds neither mode's client nor the Service proxy; each comes
 * in through import() only when its mode (or --proxy) runs.
 */
import test from 'ava';
import { build } from 'esbuild';
import { weftdBundleOptions } from '../../scripts/bundle-options.ts';

test("weftd's start-up code holds no etcd or Kubernetes client and no proxy; import() brings each", async (t) => {
  const out = await build({ entryPoints: { weftd: 'cmd/weftd.ts' }, outdir: 'dist/bin', write: false, metafile: true, ...weftdBundleOptions, logLevel: 'silent' });
  const outputs = out.metafile.outputs;
  const entry = Object.keys(outputs).find((f) => outputs[f].entryPoint === 'cmd/weftd.ts');
  if (!entry) return t.fail('no entry output');
  // The entry and every chunk reached from it by static imports: what Node loads at start.
  const atStart = new Set<string>([entry]);
  const lazy = new Set<string>();
  for (const f of atStart) {
    for (const i of outputs[f].imports) {
      if (i.external) continue;
      if (i.kind === 'dynamic-import') lazy.add(i.path);
      else atStart.add(i.path);
    }
  }
  const inputs = (files: Iterable<string>) => [...files].flatMap((f) => Object.keys(outputs[f].inputs));
  const heavy = /node_modules\/(@kubernetes\/client-node|etcd3|@grpc\/grpc-js|undici)\/|^src\/(kube\/client|proxy\/controller|subnet\/etcd)\.ts$/;
  t.deepEqual(
    inputs(atStart).filter((f) => heavy.test(f)),
    [],
  );
  // What import() brings, with the chunks those import in turn.
  const reached = new Set(lazy);
  for (const f of reached) for (const i of outputs[f].imports) if (!i.external) reached.add(i.path);
  const later = inputs([...reached].filter((f) => !atStart.has(f)));
  for (const f of ['src/subnet/etcd.ts', 'src/kube/client.ts', 'src/proxy/controller.ts', 'src/subnet/kube/index.ts']) t.true(later.includes(f), `${f} is loaded by import()`);
});

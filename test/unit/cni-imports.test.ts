/** Every pod start pays for what the CNI binary loads: keep heavy modules off its import graph. */
import test from 'ava';
import { build } from 'esbuild';

test('cmd/weft.ts bundles without etcd3, winston or daemon code', async (t) => {
  const out = await build({
    entryPoints: ['cmd/weft.ts'],
    bundle: true,
    platform: 'node',
    format: 'cjs',
    write: false,
    metafile: true,
    external: ['netlink'],
    logLevel: 'silent',
  });
  const inputs = Object.keys(out.metafile.inputs);
  t.deepEqual(inputs.filter((f) => /node_modules\/(etcd3|winston|yaml|@grpc)\//.test(f)), []);
  t.deepEqual(inputs.filter((f) => f.includes('node_modules')), [], 'only weft sources are bundled; netlink is loaded at run time');
  t.deepEqual(inputs.filter((f) => /^src\/(subnet|backend|rules|status)\//.test(f)), [], 'no daemon or CLI code');
  t.true(inputs.includes('src/cni/skel.ts'));
});

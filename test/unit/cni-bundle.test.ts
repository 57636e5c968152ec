/**
 * The CNI binary as scripts/build.ts bundles it. Every pod start pays for what it loads:
 * netlink's raw socket only (src/netlink encodes and reads the messages itself; not the
 * package's typed rtnetlink layer, nor its index with nl80211, genl and wireguard), its
 * native binding through src/netlink/load.ts, no other package (etcd3, winston, ...), no daemon
 * or CLI code, and nothing but Node built-ins required at run time.
 */
import { builtinModules } from 'node:module';
import test from 'ava';
import { build } from 'esbuild';
import { nativeNetlink } from '../../scripts/esbuild-netlink.ts';

test('cmd/weft.ts bundles only the raw socket of netlink and requires only built-ins', async (t) => {
  const out = await build({
    entryPoints: ['cmd/weft.ts'],
    bundle: true,
    platform: 'node',
    format: 'cjs',
    write: false,
    metafile: true,
    plugins: [nativeNetlink],
    logLevel: 'silent',
  });
  const inputs = Object.keys(out.metafile.inputs);
  const fromPackages = inputs.filter((f) => f.includes('node_modules/')).sort();
  t.deepEqual(fromPackages, ['node_modules/netlink/dist/raw.js']);
  t.true(inputs.includes('src/netlink/load.ts'), "netlink's node-gyp-build loader is replaced");
  t.deepEqual(
    inputs.filter((f) => /^src\/(subnet|backend|rules|status|daemon)\//.test(f)),
    [],
    'no daemon or CLI code',
  );
  t.true(inputs.includes('src/cni/skel.ts'));
  const builtins = new Set([...builtinModules, ...builtinModules.map((m) => `node:${m}`)]);
  const runtime = Object.values(out.metafile.outputs).flatMap((o) => o.imports.filter((i) => i.external).map((i) => i.path));
  t.deepEqual(
    runtime.filter((p) => !builtins.has(p)),
    [],
    'only Node built-ins are required at run time',
  );
});

/**
 * The CNI binary as scripts/build.ts bundles it. Every pod start pays for what it loads:
 * netlink's rtnetlink part only (not the package index with nl80211, genl and wireguard), its
 * native binding through src/netlink/load.ts, no other package (etcd3, winston, ...), no daemon
 * or CLI code, and nothing but Node built-ins required at run time.
 */
import { builtinModules } from 'node:module';
import test from 'ava';
import { build } from 'esbuild';
import { nativeNetlink } from '../../scripts/esbuild-netlink.ts';

test('cmd/weft.ts bundles only the rtnetlink part of netlink and requires only built-ins', async (t) => {
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
  t.deepEqual(fromPackages, [
    'node_modules/netlink/dist/constants.js',
    'node_modules/netlink/dist/netlink.js',
    'node_modules/netlink/dist/raw.js',
    'node_modules/netlink/dist/rt/gen_structs.js',
    'node_modules/netlink/dist/rt/ifla.js',
    'node_modules/netlink/dist/rt/rt.js',
    'node_modules/netlink/dist/rt/structs.js',
    'node_modules/netlink/dist/structs.js',
  ]);
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

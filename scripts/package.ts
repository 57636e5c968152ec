/**
 * Packages the CNI plugin for hosts without Node.js, the layout the install-cni init container
 * copies to `/opt/cni/bin/` and `/opt/cni/lib/weft/`:
 *
 *   dist/pkg/bin/weft             the fast-path launcher (static C, src/fastpath/launcher.c):
 *                                 what kubelet execs; forwards the request to weftd's socket
 *   dist/pkg/bin/weft-standalone  the plugin as a Node single executable application (SEA): the
 *                                 launcher execs it (found beside itself) when weftd is not serving
 *   dist/pkg/lib/weft/*.node      the SEA's native addons
 *
 * A SEA's embedded script can `require` only built-in modules, so everything is bundled, and
 * the two native addons are loaded at run time with `process.dlopen` from a known directory:
 * `WEFT_NATIVE_DIR`, else `<executable>/../lib/weft` (src/netns searches the same places for
 * setns.node). netlink loads its prebuilt binary through `node-gyp-build(__dirname + '/..')`,
 * which cannot work inside a bundle; the esbuild plugin in scripts/esbuild-netlink.ts replaces
 * that module with src/netlink/load.ts. The executable is a copy of the running Node 24 with the bundle injected by postject;
 * V8's code cache for the bundle is embedded to cut start-up time.
 *
 *   node scripts/package.ts            # after `node scripts/build.ts` (needs dist/native)
 */
import { execFileSync } from 'node:child_process';
import { chmodSync, copyFileSync, mkdirSync, mkdtempSync, rmSync, writeFileSync, renameSync } from 'node:fs';
import { createRequire } from 'node:module';
import { join } from 'node:path';
import { build } from 'esbuild';
import { bundleOptions } from './bundle-options.ts';
import { nativeNetlink } from './esbuild-netlink.ts';
import { buildLauncher } from './build-launcher.ts';

const root = join(import.meta.dirname, '..');
const out = join(root, 'dist', 'pkg');
const binDir = join(out, 'bin');
const libDir = join(out, 'lib', 'weft');

/** The SEA fuse postject flips; fixed by Node (see node/doc/api/single-executable-applications.md). */
const SEA_FUSE = 'NODE_SEA_FUSE_fce680ab2cc467b6e072b8b5df1996b2';

/** Bundles `cmd/<name>.ts` into one CommonJS file with no run-time requires but built-ins. */
async function bundle(name: string, outfile: string): Promise<void> {
  await build({
    entryPoints: [join(root, 'cmd', `${name}.ts`)],
    outfile,
    ...bundleOptions,
    plugins: [nativeNetlink],
    logLevel: 'warning',
  });
}

/** Turns a bundle into a single executable at `exe` (atomically: written aside, then renamed). */
function makeExecutable(script: string, exe: string): void {
  const blob = join(work, 'sea.blob');
  const config = join(work, 'sea-config.json');
  writeFileSync(config, JSON.stringify({ main: script, output: blob, disableExperimentalSEAWarning: true, useCodeCache: true }));
  execFileSync(process.execPath, ['--experimental-sea-config', config], { stdio: 'pipe' });
  const tmp = `${exe}.tmp-${process.pid}`;
  copyFileSync(process.execPath, tmp);
  chmodSync(tmp, 0o755);
  const postject = join(root, 'node_modules', '.bin', 'postject');
  execFileSync(postject, [tmp, 'NODE_SEA_BLOB', blob, '--sentinel-fuse', SEA_FUSE], { stdio: 'pipe' });
  renameSync(tmp, exe);
}

mkdirSync(out, { recursive: true });
// A private scratch dir: concurrent runs (a test and a benchmark) must not share one.
const work = mkdtempSync(join(out, '.work-'));
mkdirSync(binDir, { recursive: true });
mkdirSync(libDir, { recursive: true });

/** Copies by rename: overwriting a shared object in place would corrupt processes that map it. */
function install(src: string, dest: string): void {
  const tmp = `${dest}.tmp-${process.pid}`;
  copyFileSync(src, tmp);
  renameSync(tmp, dest);
}

try {
  const script = join(work, 'weft.cjs');
  await bundle('weft', script);
  // The standalone first: the launcher must never be in place without its fallback. The SEA's
  // execPath is weft-standalone itself (the launcher execve's it), so <execPath>/../lib/weft is
  // still the addon directory.
  makeExecutable(script, join(binDir, 'weft-standalone'));
  buildLauncher(join(binDir, 'weft'));
  const require = createRequire(import.meta.url);
  const netlinkDir = join(require.resolve('netlink/package.json'), '..');
  install(join(netlinkDir, 'prebuilds', `linux-${process.arch}`, 'node.napi.node'), join(libDir, 'netlink.node'));
  install(join(root, 'dist', 'native', 'setns.node'), join(libDir, 'setns.node'));
} finally {
  rmSync(work, { recursive: true, force: true });
}
console.log('packaged dist/pkg/bin/weft (launcher), dist/pkg/bin/weft-standalone and dist/pkg/lib/weft/{netlink,setns}.node');

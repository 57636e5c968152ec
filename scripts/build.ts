/**
 * Build: typecheck-free bundling of each cmd/ entry into an executable file under dist/bin, plus
 * the native addons under dist/native. `npm run typecheck` runs tsc separately.
 *
 * Bundles are CommonJS (what a Node single executable application needs) with a shebang naming
 * the Node binary that ran the build (the project's pinned Node 24), so `dist/bin/weft` is
 * exec'able as is, the way kubelet runs a CNI plugin.
 *
 * Every output is written to a temporary file in its own directory and renamed into place, so a
 * test or benchmark exec'ing dist/ while this runs sees the old file or the new one, never a
 * half-written one (an overwritten addon corrupts processes that have it mapped).
 */
import { execFile } from 'node:child_process';
import { chmodSync, mkdirSync, readdirSync, readFileSync, renameSync, rmSync, statSync, writeFileSync } from 'node:fs';
import { createRequire } from 'node:module';
import { basename, join } from 'node:path';
import { promisify } from 'node:util';
import { build } from 'esbuild';
import { buildLauncher } from './build-launcher.ts';
import { bundleOptions, weftdBundleOptions, weftdNodeFlags } from './bundle-options.ts';
import { nativeNetlink } from './esbuild-netlink.ts';

const root = join(import.meta.dirname, '..');
const dist = join(root, 'dist');
let seq = 0;

/** A temporary name beside `file` (same directory, so the rename is atomic). */
function tmpName(file: string): string {
  return `${file}.tmp-${process.pid}-${seq++}`;
}

/** Writes `data` to `file` atomically. */
function writeAtomic(file: string, data: string | Uint8Array, mode = 0o644): void {
  const tmp = tmpName(file);
  try {
    writeFileSync(tmp, data, { mode });
    chmodSync(tmp, mode); // writeFileSync's mode is masked by the umask
    renameSync(tmp, file);
  } finally {
    rmSync(tmp, { force: true });
  }
}

/** Copies the files of `src` (recursively) into `dest`, each atomically. */
function copyTreeAtomic(src: string, dest: string): void {
  mkdirSync(dest, { recursive: true });
  for (const e of readdirSync(src, { withFileTypes: true })) {
    if (e.isDirectory()) copyTreeAtomic(join(src, e.name), join(dest, e.name));
    else writeAtomic(join(dest, e.name), readFileSync(join(src, e.name)));
  }
}

/** Runs `cc` writing to a temporary file, then renames it to `outfile`. */
async function cc(outfile: string, args: string[]): Promise<void> {
  const tmp = tmpName(outfile);
  try {
    const { stderr } = await promisify(execFile)('cc', [...args, '-o', tmp]);
    if (stderr) process.stderr.write(stderr);
    renameSync(tmp, outfile);
  } finally {
    rmSync(tmp, { force: true });
  }
}

mkdirSync(join(dist, 'bin'), { recursive: true });
mkdirSync(join(dist, 'native'), { recursive: true });
// The bundles are CommonJS, but the root package.json says "type": "module", which Node applies
// to extensionless files under it: this scope marker makes dist/bin/* load as CommonJS.
writeAtomic(join(dist, 'package.json'), '{ "type": "commonjs" }\n');
// etcd3 reads its .proto files at run time from `<its lib dir>/../proto`; bundled, that is
// dist/bin/../proto.
copyTreeAtomic(join(root, 'node_modules', 'etcd3', 'proto'), join(dist, 'proto'));
// netlink's prebuilt binding, loaded by the weft bundle from dist/bin/../native (src/netlink/load.ts).
const require = createRequire(import.meta.url);
const netlinkPkg = join(require.resolve('netlink/package.json'), '..');
writeAtomic(join(dist, 'native', 'netlink.node'), readFileSync(join(netlinkPkg, 'prebuilds', `linux-${process.arch}`, 'node.napi.node')), 0o755);

const setns = cc(join(dist, 'native', 'setns.node'), [
  '-O2',
  '-Wall',
  '-Werror',
  '-shared',
  '-fPIC',
  '-I',
  join(root, 'node_modules', 'node-api-headers', 'include'),
  join(root, 'src', 'netns', 'native', 'setns.c'),
]);
// The CNI fast-path launcher (static C, forwards to weftd; see src/fastpath/launcher.c). It
// writes aside and renames itself.
buildLauncher(join(dist, 'bin', 'weft-fast'));

const entries = readdirSync(join(root, 'cmd')).filter((f) => f.endsWith('.ts') && f !== 'weftd.ts');
// V8 flags for an entry, on its shebang line. Linux passes everything after the interpreter as
// ONE argument, so several flags go through `/usr/bin/env -S`, which splits them (coreutils
// 8.30+; bookworm has 9.1). weftd: a 1 MiB young generation keeps its RSS under 100 MB with
// 1000 peers (bench peers: 104 -> 91 MiB); --optimize-for-size takes ~5 MiB more off (bench
// peers, 6 interleaved runs each: 94.5 -> 89.4 MiB mean) at the same convergence and p50.
// One V8 helper thread (--v8-pool-size=1) and no JIT tiers (V8's interpreter only: no compiled
// code, and the compilers' pages of the node binary never paged in): bench idle with 1000 peers
// 94.9 -> 76.6 MiB, convergence 477 -> 455 ms (bench/results/sample-2026-12-01-v8flags-
// {before,after}.json.txt); weftd's work is netlink, etcd and the API server, not JavaScript.
// Not --jitless: that also drops WebAssembly, which the Kubernetes client's HTTP parser
// (undici's llhttp) needs.
const nodeFlags: Record<string, string[]> = { weftd: weftdNodeFlags };
const shebangFor = (node: string, flags: string[] = []) => (flags.length > 1 ? `#!/usr/bin/env -S ${node} ${flags.join(' ')}` : `#!${[node, ...flags].join(' ')}`);
// The CNI plugin, started once per pod, bundles the rtnetlink part of `netlink` (loading the
// package's index at each start cost more than the rest of the bundle); weftd and weftctl,
// long-lived or interactive, load `netlink` from node_modules beside dist/ (the image ships it).
// The plugin is also split in two: `dist/bin/weft.js`, the bundle, started by `dist/bin/weft`,
// which first turns on Node's compile cache (in dist/cache) so that V8 does not parse the
// bundle's 330 KB at every start: a module's cache only applies to modules loaded after it is
// enabled. Node checksums cache files and keys them by content; when the directory cannot be
// created or written, it only costs time (measured in README "Where the ADD time goes").
const fastStart = new Set(['weft']);
const loader = (bundle: string) => `"use strict";
try {
  require("node:module").enableCompileCache(require("node:path").join(__dirname, "..", "cache"));
} catch {}
require("./${bundle}");
`;
// weftd is split into ES modules (scripts/bundle-options.ts says why), started by `dist/bin/weftd`.
async function buildWeftd(): Promise<void> {
  const bin = join(dist, 'bin');
  const out = await build({
    entryPoints: { weftd: join(root, 'cmd', 'weftd.ts') },
    outdir: bin,
    write: false,
    ...weftdBundleOptions,
    sourcemap: false,
    logLevel: 'warning',
  });
  // Chunks first, then the entry that imports them, then the starter: a weftd started meanwhile
  // finds every file its entry names.
  const entry = join(bin, 'weftd.mjs');
  const files = out.outputFiles.sort((a, b) => Number(a.path === entry) - Number(b.path === entry));
  for (const f of files) writeAtomic(f.path, f.contents);
  const shebang = shebangFor(process.env.WEFT_SHEBANG ?? process.execPath, nodeFlags.weftd);
  writeAtomic(
    join(bin, 'weftd'),
    `${shebang}
"use strict";
import("./weftd.mjs");
`,
    0o755,
  );
  // Chunks of earlier builds: kept an hour, for a weftd of that build still loading its own.
  const current = new Set(files.map((f) => basename(f.path)));
  for (const name of readdirSync(bin)) {
    if (!/^weftd-\w+\.mjs$/.test(name) || current.has(name)) continue;
    if (Date.now() - statSync(join(bin, name)).mtimeMs > 3600_000) rmSync(join(bin, name), { force: true });
  }
}
// Cache entries of earlier builds are keyed by content no file has any more.
rmSync(join(dist, 'cache'), { recursive: true, force: true });
// weftd's CNI worker threads (src/fastpath/pool.ts) load this file beside the weftd bundle.
const cniWorker = build({
  entryPoints: [join(root, 'src', 'fastpath', 'worker.ts')],
  write: false,
  ...bundleOptions,
  sourcemap: false,
  external: ['netlink'],
  logLevel: 'warning',
}).then((out) => writeAtomic(join(dist, 'bin', 'weft-cni-worker.js'), out.outputFiles[0].contents));
await Promise.all([
  setns,
  cniWorker,
  buildWeftd(),
  ...entries.map(async (file) => {
    const name = file.replace(/\.ts$/, '');
    const fast = fastStart.has(name);
    const shebang = shebangFor(process.env.WEFT_SHEBANG ?? process.execPath, nodeFlags[name]);
    const out = await build({
      entryPoints: [join(root, 'cmd', file)],
      outfile: join(dist, 'bin', name),
      write: false,
      ...bundleOptions,
      sourcemap: false,
      // Native and optional pieces resolved at run time from node_modules beside dist/.
      external: fast ? [] : ['netlink'],
      plugins: fast ? [nativeNetlink] : [],
      ...(fast ? {} : { banner: { js: shebang } }),
      logLevel: 'warning',
    });
    const bundle = out.outputFiles[0].contents;
    if (fast) {
      writeAtomic(join(dist, 'bin', `${name}.js`), bundle);
      writeAtomic(join(dist, 'bin', name), `${shebang}\n${loader(`${name}.js`)}`, 0o755);
    } else {
      writeAtomic(join(dist, 'bin', name), bundle, 0o755);
    }
  }),
]);
console.log(`built ${[...entries, 'weftd.ts'].map((e) => `dist/bin/${e.replace(/\.ts$/, '')}`).join(', ')} and dist/native/{setns,netlink}.node`);

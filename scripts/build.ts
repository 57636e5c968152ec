/**
 * Build: typecheck-free bundling of each cmd/ entry into an executable file under dist/bin, plus
 * the setns addon under dist/native. `npm run typecheck` runs tsc separately.
 *
 * Bundles are CommonJS (what a Node single executable application needs) with a shebang naming
 * the Node binary that ran the build (the project's pinned Node 24), so `dist/bin/weft` is
 * exec'able as is, the way kubelet runs a CNI plugin.
 */
import { execFileSync } from 'node:child_process';
import { chmodSync, cpSync, mkdirSync, readdirSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { build } from 'esbuild';
import { buildLauncher } from '../src/fastpath/build.ts';

const root = join(import.meta.dirname, '..');
const dist = join(root, 'dist');
mkdirSync(join(dist, 'bin'), { recursive: true });
mkdirSync(join(dist, 'native'), { recursive: true });
// The bundles are CommonJS, but the root package.json says "type": "module", which Node applies
// to extensionless files under it: this scope marker makes dist/bin/* load as CommonJS.
writeFileSync(join(dist, 'package.json'), '{ "type": "commonjs" }\n');
// etcd3 reads its .proto files at run time from `<its lib dir>/../proto`; bundled, that is
// dist/bin/../proto.
cpSync(join(root, 'node_modules', 'etcd3', 'proto'), join(dist, 'proto'), { recursive: true });

execFileSync('cc', [
  '-O2', '-Wall', '-Werror', '-shared', '-fPIC',
  '-I', join(root, 'node_modules', 'node-api-headers', 'include'),
  '-o', join(dist, 'native', 'setns.node'),
  join(root, 'src', 'netns', 'native', 'setns.c'),
], { stdio: 'inherit' });
// The CNI fast-path launcher (static C, forwards to weftd; see src/fastpath/launcher.c).
buildLauncher(join(dist, 'bin', 'weft-fast'));

const entries = readdirSync(join(root, 'cmd')).filter((f) => f.endsWith('.ts'));
// V8 flags for an entry, on its shebang line (Linux passes them as one argument). weftd: a 1 MiB
// young generation keeps its RSS under 100 MB with 1000 peers (bench peers: 104 -> 91 MiB).
const nodeFlags: Record<string, string> = { weftd: ' --max-semi-space-size=1' };
await Promise.all(
  entries.map(async (file) => {
    const name = file.replace(/\.ts$/, '');
    const outfile = join(dist, 'bin', name);
    await build({
      entryPoints: [join(root, 'cmd', file)],
      outfile,
      bundle: true,
      platform: 'node',
      target: 'node24',
      format: 'cjs',
      minifySyntax: true,
      sourcemap: false,
      // Native and optional pieces resolved at run time from node_modules beside dist/.
      external: ['netlink', 'cpu-features', 'ssh2'],
      banner: { js: `#!${process.env.WEFT_SHEBANG ?? process.execPath}${nodeFlags[name] ?? ''}` },
      logLevel: 'warning',
    });
    chmodSync(outfile, 0o755);
  }),
);
console.log(`built ${entries.map((e) => `dist/bin/${e.replace(/\.ts$/, '')}`).join(', ')} and dist/native/setns.node`);

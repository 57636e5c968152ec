/**
 * The esbuild options every weft bundle shares (scripts/build.ts for dist/bin, scripts/package.ts
 * for the single executable): one CommonJS file for Node 24.
 */
import type { BuildOptions } from 'esbuild';

export const bundleOptions = {
  bundle: true,
  platform: 'node',
  target: 'node24',
  format: 'cjs',
  minifySyntax: true,
  // src/native/load.ts looks beside its source only when unbundled.
  define: { 'import.meta.dirname': 'undefined' },
} satisfies BuildOptions;

/**
 * weftd's: split (esbuild's code splitting, which needs ES modules) into `dist/bin/weftd.mjs` and
 * chunks `dist/bin/weftd-<hash>.mjs`, so that what cmd/weftd.ts loads with import() (the etcd
 * client, the Kubernetes client, the Service proxy) is read only by a weftd whose mode uses it:
 * V8 keeps a script's whole source in its heap, and the one bundle's 7.9 MB (two bytes a
 * character: some comments are not ASCII) cost 15 MiB of heap in every mode. Bundled CommonJS
 * packages (etcd3, grpc-js, winston) expect `require`, `__filename` and `__dirname` (etcd3
 * finds its .proto files at `<its dir>/../proto`, i.e. dist/proto): each chunk defines them.
 * `netlink` is resolved at run time from node_modules beside dist/. Whitespace and comments are
 * minified away for the same heap: one non-ASCII character in a kept comment (a dash, a "±")
 * makes V8 hold the whole chunk two bytes a character (the Kubernetes client's 5.6 MB chunk
 * took 11 MiB); names stay, so stack traces still name their functions.
 */
export const weftdBundleOptions = {
  ...bundleOptions,
  minifyWhitespace: true,
  // license comments (undici's polyfills carry non-ASCII names) go to <chunk>.LEGAL.txt beside it
  legalComments: 'external',
  format: 'esm',
  splitting: true,
  outExtension: { '.js': '.mjs' },
  chunkNames: 'weftd-[hash]',
  external: ['netlink'],
  banner: {
    js: [
      "import { createRequire as __weftCreateRequire } from 'node:module';",
      'const require = __weftCreateRequire(import.meta.url), __filename = import.meta.filename, __dirname = import.meta.dirname;',
    ].join(' '),
  },
} satisfies BuildOptions;

/** weftd's V8 flags, on its starter's shebang (scripts/build.ts says why each). */
export const weftdNodeFlags = ['--max-semi-space-size=1', '--optimize-for-size', '--v8-pool-size=1', '--no-opt', '--no-maglev', '--no-sparkplug'];

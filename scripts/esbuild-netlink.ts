/**
 * esbuild plugin for bundling the `netlink` package: its `require('node-gyp-build')(...)`
 * (which looks for prebuilds beside the package, gone once bundled) becomes
 * src/netlink/load.ts, a lazy `process.dlopen` of `netlink.node` from WEFT_NATIVE_DIR,
 * `<bundle>/../native` or `<executable>/../lib/weft`. Used by scripts/build.ts (dist/bin/weft,
 * with `dist/native/netlink.node`) and by scripts/package.ts (the packaged executable).
 */
import { join, sep } from 'node:path';
import type { Plugin } from 'esbuild';

const netlinkDir = join(import.meta.dirname, '..', 'src', 'netlink');

/** Whether a module is part of the netlink package. */
function inNetlink(file: string): boolean {
  return file.includes(`${sep}node_modules${sep}netlink${sep}`);
}

export const nativeNetlink: Plugin = {
  name: 'weft-native-netlink',
  setup(b) {
    // Only netlink's own loader: anything else asking for node-gyp-build resolves as usual.
    b.onResolve({ filter: /^node-gyp-build$/ }, (args) => (inNetlink(args.importer) ? { path: 'node-gyp-build', namespace: 'weft-native-netlink' } : undefined));
    b.onLoad({ filter: /^node-gyp-build$/, namespace: 'weft-native-netlink' }, () => ({
      loader: 'js',
      resolveDir: netlinkDir,
      contents: `module.exports = require('./load.ts').nodeGypBuild;`,
    }));
    // netlink.js does `__importStar(require("util"))` (for getSystemErrorName), whose
    // hasOwnProperty walk over util's keys triggers util's lazy getters: ~35 more built-in
    // modules (streams, worker_threads, ...) loaded at every start. Handing it util marked
    // `__esModule` makes __importStar return it as is.
    b.onResolve({ filter: /^util$/ }, (args) => (inNetlink(args.importer) ? { path: 'util', namespace: 'weft-native-netlink' } : undefined));
    b.onLoad({ filter: /^util$/, namespace: 'weft-native-netlink' }, () => ({
      loader: 'js',
      contents: `module.exports = new Proxy(require('node:util'), { get: (util, key) => (key === '__esModule' ? true : util[key]) });`,
    }));
  },
};

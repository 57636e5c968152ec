/**
 * esbuild plugin for bundling the `netlink` package: its `require('node-gyp-build')(...)`
 * (which looks for prebuilds beside the package, gone once bundled) becomes
 * src/netlink/load.ts, a lazy `process.dlopen` of `netlink.node` from WEFT_NATIVE_DIR,
 * `<bundle>/../native` or `<executable>/../lib/weft`. Used by scripts/build.ts (dist/bin/weft,
 * with `dist/native/netlink.node`) and usable by scripts/package.ts (the packaged executable).
 */
import { join, sep } from 'node:path';
import type { Plugin } from 'esbuild';

const netlinkDir = join(import.meta.dirname, '..', 'src', 'netlink');

export const nativeNetlink: Plugin = {
  name: 'weft-native-netlink',
  setup(b) {
    // Only netlink's own loader: anything else asking for node-gyp-build resolves as usual.
    b.onResolve({ filter: /^node-gyp-build$/ }, (args) =>
      args.importer.includes(`${sep}node_modules${sep}netlink${sep}`) ? { path: 'node-gyp-build', namespace: 'weft-native-netlink' } : undefined,
    );
    b.onLoad({ filter: /.*/, namespace: 'weft-native-netlink' }, () => ({
      loader: 'js',
      resolveDir: netlinkDir,
      contents: `module.exports = require('./load.ts').nodeGypBuild;`,
    }));
  },
};

/**
 * netlink's native binding for bundles. The package loads it with
 * `require('node-gyp-build')(__dirname + '/..')`, which searches `node_modules/netlink/prebuilds`
 * and cannot work once the package is bundled; the esbuild plugin in scripts/esbuild-netlink.ts
 * makes that `require` return {@link nodeGypBuild} below, which loads `netlink.node` through
 * src/native/load.ts instead. Never imported by weft's own code.
 */
import { loadNative } from '../native/load.ts';

type Binding = Record<string | symbol, unknown>;

let binding: Binding | undefined;

function load(): Binding {
  binding ??= loadNative<Binding>('netlink.node');
  return binding;
}

/**
 * Stands in for `node-gyp-build`: ignores the package directory it is given and returns the
 * binding, loaded on first use (opening a socket), not at start-up. A broken install then fails
 * inside the plugin's error handling, as a CNI error, and VERSION works regardless.
 */
export function nodeGypBuild(_dir?: string): Binding {
  return new Proxy({} as Binding, { get: (_, prop) => load()[prop] });
}

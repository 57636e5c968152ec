/**
 * netlink's native binding for bundles. The package loads it with
 * `require('node-gyp-build')(__dirname + '/..')`, which searches `node_modules/netlink/prebuilds`
 * and cannot work once the package is bundled; the esbuild plugin in scripts/esbuild-netlink.ts
 * makes that `require` return {@link nodeGypBuild} below, which `process.dlopen`s `netlink.node`
 * from a known directory instead (the same places src/netns looks for `setns.node`):
 * `WEFT_NATIVE_DIR`; beside the bundle (`dist/bin/../native`); beside a packaged executable
 * (`<executable>/../lib/weft`). Never imported by weft's own code.
 */
import { dirname, join } from 'node:path';

type Binding = Record<string | symbol, unknown>;

let binding: Binding | undefined;

/** The directories searched for `netlink.node`, in order. */
export function nativeDirs(): string[] {
  const dirs: string[] = [];
  if (process.env.WEFT_NATIVE_DIR) dirs.push(process.env.WEFT_NATIVE_DIR);
  if (process.argv[1]) dirs.push(join(dirname(process.argv[1]), '..', 'native'));
  dirs.push(join(dirname(process.execPath), '..', 'lib', 'weft'));
  return dirs;
}

function load(): Binding {
  if (binding) return binding;
  const dirs = nativeDirs();
  let lastErr: unknown;
  for (const dir of dirs) {
    try {
      const mod = { exports: {} as Binding };
      process.dlopen(mod, join(dir, 'netlink.node'));
      binding = mod.exports;
      return binding;
    } catch (err) {
      lastErr = err;
    }
  }
  throw new Error(`load native netlink addon (looked in ${dirs.join(', ')})`, { cause: lastErr });
}

/**
 * Stands in for `node-gyp-build`: ignores the package directory it is given and returns the
 * binding, loaded on first use (opening a socket), not at start-up. A broken install then fails
 * inside the plugin's error handling, as a CNI error, and VERSION works regardless.
 */
export function nodeGypBuild(_dir?: string): Binding {
  return new Proxy({} as Binding, { get: (_, prop) => load()[prop] });
}

/**
 * Loads weft's native addons (`setns.node`, netlink's `netlink.node`) with `process.dlopen`
 * from a known directory, so bundles and single executables never depend on node_modules
 * layout. Searched in order: `WEFT_NATIVE_DIR`; beside a bundle (`dist/bin/../native`);
 * (the real file, symlinks resolved); beside a packaged executable (`<executable>/../lib/weft`); when running from source (tests,
 * bench, lab), the repository's `dist/native`. Never the working directory: kubelet's cwd is
 * no place to load native code from.
 */
import { realpathSync } from 'node:fs';
import { dirname, join } from 'node:path';

/** `file`'s real path: a plugin exec'd through a symlink looks beside the file, not the link. */
function real(file: string): string {
  try {
    return realpathSync(file);
  } catch {
    return file;
  }
}

/** The directories searched for native addons, in order. */
export function nativeDirs(): string[] {
  const dirs: string[] = [];
  if (process.env.WEFT_NATIVE_DIR) dirs.push(process.env.WEFT_NATIVE_DIR);
  if (process.argv[1]) dirs.push(join(dirname(real(process.argv[1])), '..', 'native'));
  dirs.push(join(dirname(process.execPath), '..', 'lib', 'weft'));
  // Bundles define `import.meta.dirname` as undefined (scripts/build.ts, scripts/package.ts).
  const sourceDir: string | undefined = import.meta.dirname;
  if (sourceDir) dirs.push(join(sourceDir, '..', '..', 'dist', 'native'));
  return dirs;
}

/** `process.dlopen`s `file` from the first directory that has a loadable one. */
export function loadNative<T>(file: string): T {
  const dirs = nativeDirs();
  let lastErr: unknown;
  for (const dir of dirs) {
    try {
      const mod = { exports: {} as T };
      process.dlopen(mod, join(dir, file));
      return mod.exports;
    } catch (err) {
      lastErr = err;
    }
  }
  throw new Error(`load native ${file.replace(/\.node$/, '')} addon (looked in ${dirs.join(', ')})`, { cause: lastErr });
}

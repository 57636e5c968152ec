/** Where the built pieces live, and whether they are there. */
import { accessSync, constants } from 'node:fs';
import { join } from 'node:path';

export const root = join(import.meta.dirname, '..', '..');
export const dist = join(root, 'dist');
export const bins = {
  weft: join(dist, 'bin', 'weft'),
  /**
   * `WEFT_BENCH_WEFTD` runs another build's weftd instead (e.g. a copy of main's dist/ beside a
   * node_modules, to measure before and after back to back).
   */
  weftd: process.env.WEFT_BENCH_WEFTD || join(dist, 'bin', 'weftd'),
  /** The fast-path launcher (src/fastpath/launcher.c), built by scripts/build-launcher.ts. */
  launcher: join(dist, 'bin', 'weft-fast'),
  bridge: '/usr/lib/cni/bridge',
  hostLocal: '/usr/lib/cni/host-local',
};

/** Undefined when `file` is an executable, else a reason fit for "not available: ...". */
export function missing(file: string, hint = 'run `node scripts/build.ts`'): string | undefined {
  try {
    accessSync(file, constants.X_OK);
    return undefined;
  } catch {
    return `${file} not built (${hint})`;
  }
}

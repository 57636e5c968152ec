/**
 * Builds the fast-path launcher: `node scripts/build-launcher.ts [OUTFILE]` (default
 * dist/bin/weft-fast). A static binary when the toolchain can link one (no loader, no libc
 * lookups at start), else dynamic.
 */
import { execFileSync } from 'node:child_process';
import { mkdirSync, renameSync, rmSync } from 'node:fs';
import { dirname, join } from 'node:path';

const root = join(import.meta.dirname, '..');

/** The default output path of the launcher. */
export const LAUNCHER = join(root, 'dist', 'bin', 'weft-fast');

/** Compiles launcher.c to `outfile`; returns the path. */
export function buildLauncher(outfile = LAUNCHER): string {
  mkdirSync(dirname(outfile), { recursive: true });
  const src = join(root, 'src', 'fastpath', 'launcher.c');
  // Built beside and renamed over: a runtime or test exec'ing the old one never sees a half-written file.
  const tmp = `${outfile}.tmp-${process.pid}`;
  const args = ['-O2', '-Wall', '-Wextra', '-Werror', '-o', tmp, src];
  try {
    try {
      execFileSync('cc', ['-static', ...args], { stdio: ['ignore', 'ignore', 'pipe'] });
    } catch {
      execFileSync('cc', args, { stdio: 'inherit' });
    }
    renameSync(tmp, outfile);
  } finally {
    rmSync(tmp, { force: true });
  }
  return outfile;
}

if (process.argv[1] === import.meta.filename) {
  console.log(`built ${buildLauncher(process.argv[2])}`);
}

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

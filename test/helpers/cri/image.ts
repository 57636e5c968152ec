/**
 * The pod sandbox ("pause") image, built locally: no registry is reachable from the tests, and
 * containerd's CRI plugin needs its sandbox_image in its image store before RunPodSandbox. The
 * image is one static binary (pause.c, `cc -static`) in one uncompressed layer, written as an
 * OCI image-layout tar that `ctr images import` reads.
 */
import { execFileSync } from 'node:child_process';
import { createHash } from 'node:crypto';
import { mkdirSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';

/** The name the sandbox image is imported under (and the CRI config's sandbox_image). */
export const PAUSE_IMAGE = 'weft.test/pause:1';

function blob(dir: string, data: Buffer | string): { digest: string; size: number } {
  const buf = Buffer.isBuffer(data) ? data : Buffer.from(data);
  const hex = createHash('sha256').update(buf).digest('hex');
  writeFileSync(join(dir, 'blobs', 'sha256', hex), buf);
  return { digest: `sha256:${hex}`, size: buf.length };
}

/** Writes `<workDir>/pause.tar` (OCI layout) and returns its path. */
export function buildPauseImage(workDir: string): string {
  const stage = mkdtempSync(join(workDir, 'pause-'));
  try {
    const rootfs = join(stage, 'rootfs');
    mkdirSync(rootfs);
    execFileSync('cc', ['-static', '-O2', '-o', join(rootfs, 'pause'), join(import.meta.dirname, 'pause.c')], { stdio: 'pipe' });
    const layout = join(stage, 'layout');
    mkdirSync(join(layout, 'blobs', 'sha256'), { recursive: true });
    // Fixed owner and mtime: the same source gives the same layer digest.
    const layerTar = join(stage, 'layer.tar');
    execFileSync('tar', ['--owner=0', '--group=0', '--numeric-owner', '--mtime=@0', '-C', rootfs, '-cf', layerTar, 'pause']);
    const layerBuf = readFileSync(layerTar);
    const layer = blob(layout, layerBuf);
    const config = blob(
      layout,
      JSON.stringify({
        architecture: process.arch === 'x64' ? 'amd64' : process.arch,
        os: 'linux',
        config: { Entrypoint: ['/pause'], WorkingDir: '/' },
        rootfs: { type: 'layers', diff_ids: [layer.digest] },
        history: [{ created_by: 'weft test/helpers/cri/image.ts' }],
      }),
    );
    const manifest = blob(
      layout,
      JSON.stringify({
        schemaVersion: 2,
        mediaType: 'application/vnd.oci.image.manifest.v1+json',
        config: { mediaType: 'application/vnd.oci.image.config.v1+json', ...config },
        layers: [{ mediaType: 'application/vnd.oci.image.layer.v1.tar', ...layer }],
      }),
    );
    writeFileSync(join(layout, 'oci-layout'), JSON.stringify({ imageLayoutVersion: '1.0.0' }));
    writeFileSync(
      join(layout, 'index.json'),
      JSON.stringify({
        schemaVersion: 2,
        manifests: [
          {
            mediaType: 'application/vnd.oci.image.manifest.v1+json',
            ...manifest,
            // containerd names the imported image after this annotation.
            annotations: { 'io.containerd.image.name': PAUSE_IMAGE, 'org.opencontainers.image.ref.name': '1' },
          },
        ],
      }),
    );
    const out = join(workDir, 'pause.tar');
    execFileSync('tar', ['-C', layout, '-cf', out, 'oci-layout', 'index.json', 'blobs']);
    return out;
  } finally {
    rmSync(stage, { recursive: true, force: true });
  }
}

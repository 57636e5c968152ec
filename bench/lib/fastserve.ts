/** Starts bench/lib/cni-server.ts in a node namespace and waits until it listens. */
import { join } from 'node:path';
import type { ChildProcess } from 'node:child_process';
import type { BenchScope } from './scope.ts';
import { root } from './paths.ts';

export interface Served {
  socket: string;
  child: ChildProcess;
  /** Requests handled so far: command, in-process ms, and ms spent per kind of dependency. */
  handled: Handled[];
}

export interface Handled {
  command: string;
  ms: number;
  parts: Record<string, number>;
}

export async function startFastServer(scope: BenchScope, nodeNs: string, dir: string): Promise<Served> {
  const socket = join(dir, 'cni.sock');
  const child = scope.spawn(process.execPath, [join(root, 'bench', 'lib', 'cni-server.ts'), socket], {
    ns: nodeNs,
    cwd: root,
    // The one network it serves: bench/lib/confs.ts weftConfig's paths under `dir`.
    env: { PATH: process.env.PATH ?? '/usr/bin:/bin', WEFT_FASTPATH_TIMING: '1', WEFT_SERVE_DATA_DIR: join(dir, 'weft-ipam'), WEFT_SERVE_WORKERS: process.env.WEFT_SERVE_WORKERS ?? '0' },
  });
  const handled: Handled[] = [];
  let err = '';
  let partial = '';
  child.stderr!.on('data', (b: Buffer) => {
    const lines = (partial + b.toString()).split('\n');
    partial = lines.pop() ?? '';
    for (const line of lines) {
      const m = /^handled (\S+) ([\d.]+) (\{.*\})$/.exec(line);
      if (m) handled.push({ command: m[1], ms: Number(m[2]), parts: JSON.parse(m[3]) });
      else if (line) err += `${line}\n`;
    }
  });
  await new Promise<void>((resolve, reject) => {
    const timer = setTimeout(() => reject(new Error(`fast-path server did not start: ${err}`)), 15_000);
    child.stdout!.on('data', (b: Buffer) => {
      if (b.toString().includes('ready')) clearTimeout(timer), resolve();
    });
    child.once('exit', (code) => (clearTimeout(timer), reject(new Error(`fast-path server exited ${code}: ${err.slice(0, 500)}`))));
  });
  return { socket, child, handled };
}

/** Starts bench/lib/cni-server.ts in a node namespace and waits until it listens. */
import { join } from 'node:path';
import type { ChildProcess } from 'node:child_process';
import type { BenchScope } from './scope.ts';
import { root } from './paths.ts';
import { weftdNodeFlags } from '../../scripts/bundle-options.ts';

export interface Served {
  socket: string;
  child: ChildProcess;
  /** Requests handled so far: command, in-process ms, and ms spent per kind of dependency. */
  handled: Handled[];
  /** With `loop`: the main thread's worst event-loop delay (ms) of each second, with its time. */
  loopDelays: Array<{ at: number; ms: number }>;
}

export interface ServeOptions {
  /** Worker threads as weftd runs them (`--cni-workers`, started on demand); default 0: in-process, timed per dependency. */
  workers?: number;
  /** Report the main thread's event-loop delay every second. */
  loop?: boolean;
  /** Time each dependency call (default); false times only whole requests, with nothing wrapped. */
  parts?: boolean;
}

export interface Handled {
  command: string;
  ms: number;
  parts: Record<string, number>;
}

export async function startFastServer(scope: BenchScope, nodeNs: string, dir: string, opts: ServeOptions = {}): Promise<Served> {
  const socket = join(dir, 'cni.sock');
  const workers = String(opts.workers ?? process.env.WEFT_SERVE_WORKERS ?? '0');
  // weftd's own V8 flags (its starter's shebang), so the handler runs as it does in weftd
  const child = scope.spawn(process.execPath, [...weftdNodeFlags, join(root, 'bench', 'lib', 'cni-server.ts'), socket], {
    ns: nodeNs,
    cwd: root,
    // The one network it serves: bench/lib/confs.ts weftConfig's paths under `dir`.
    env: {
      PATH: process.env.PATH ?? '/usr/bin:/bin',
      WEFT_FASTPATH_TIMING: opts.parts === false ? 'total' : '1',
      WEFT_SERVE_DATA_DIR: join(dir, 'weft-ipam'),
      WEFT_SERVE_WORKERS: workers,
      ...(opts.loop ? { WEFT_SERVE_LOOP: '1' } : {}),
      // weftd's --nice for the server's threads; WEFT_BENCH_NICE=0 measures without it
      ...(process.env.WEFT_BENCH_NICE !== undefined ? { WEFT_SERVE_NICE: process.env.WEFT_BENCH_NICE } : {}),
    },
  });
  const handled: Handled[] = [];
  const loopDelays: Served['loopDelays'] = [];
  let err = '';
  let partial = '';
  child.stderr!.on('data', (b: Buffer) => {
    const lines = (partial + b.toString()).split('\n');
    partial = lines.pop() ?? '';
    for (const line of lines) {
      const m = /^handled (\S+) ([\d.]+) (\{.*\})$/.exec(line);
      const d = /^loop-delay-max ([\d.]+)$/.exec(line);
      if (m) handled.push({ command: m[1], ms: Number(m[2]), parts: JSON.parse(m[3]) });
      else if (d) loopDelays.push({ at: Date.now(), ms: Number(d[1]) });
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
  return { socket, child, handled, loopDelays };
}

/**
 * Throwaway kernel and file state for benchmarks. Same rules as the test helpers: every
 * namespace is `wt-bench-<pid>-<rand>-<kind><n>`, every process and directory is registered, and
 * everything is removed on normal exit, on failure, and on SIGINT/SIGTERM. The undo steps are
 * synchronous so they also run from an `exit` handler. Namespaces left by a bench run whose
 * process is gone (kill -9) are swept on the next start.
 */
import { execFileSync, spawn, type ChildProcess, type SpawnOptions } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { eventually as pollUntil } from '../../test/helpers/netns.ts';

/** Runs a command synchronously; throws with its stderr on failure. */
export function sh(cmd: string, args: string[], opts: { input?: string; env?: NodeJS.ProcessEnv } = {}): string {
  return execFileSync(cmd, args, { encoding: 'utf8', input: opts.input, env: opts.env, stdio: ['pipe', 'pipe', 'pipe'], maxBuffer: 64 << 20 });
}

/** `ip -j` in a namespace, parsed. */
export function ipJson<T = any>(ns: string, ...args: string[]): T[] {
  const out = sh('ip', ['-n', ns, '-j', ...args]).trim();
  return out ? (JSON.parse(out) as T[]) : [];
}

/** Runs a command inside a namespace (nsenter, not `ip netns exec`, which remounts /sys). */
export function inNs(ns: string, cmd: string, args: string[], opts: { input?: string; env?: NodeJS.ProcessEnv } = {}): string {
  return sh('nsenter', [`--net=/run/netns/${ns}`, '--', cmd, ...args], opts);
}

function alive(pid: number): boolean {
  try {
    process.kill(pid, 0);
    return true;
  } catch (err) {
    return (err as NodeJS.ErrnoException).code === 'EPERM';
  }
}

/** Deletes `wt-bench-<pid>-*` namespaces whose creating process no longer exists. */
export function sweepStale(): string[] {
  const swept: string[] = [];
  for (const line of sh('ip', ['netns', 'list']).split('\n')) {
    const m = /^(wt-bench-(\d+)-\S+)/.exec(line);
    if (!m || alive(Number(m[2]))) continue;
    try {
      sh('ip', ['netns', 'del', m[1]]);
      swept.push(m[1]);
    } catch {
      /* raced with another sweeper */
    }
  }
  return swept;
}

const live = new Set<BenchScope>();
let hooked = false;

function hookSignals(): void {
  if (hooked) return;
  hooked = true;
  const cleanAll = () => {
    for (const s of live) s.cleanupSync();
  };
  process.on('exit', cleanAll);
  for (const sig of ['SIGINT', 'SIGTERM', 'SIGHUP'] as const) {
    process.on(sig, () => {
      process.stderr.write(`\nbench: ${sig}, cleaning up\n`);
      cleanAll();
      process.exit(130);
    });
  }
}

/** Everything one figure created; `cleanupSync()` undoes it in reverse order. */
export class BenchScope {
  readonly id = `${process.pid}-${randomBytes(2).toString('hex')}`;
  readonly #undo: Array<() => void> = [];
  #n = 0;

  constructor() {
    hookSignals();
    live.add(this);
  }

  /** Creates a namespace with `lo` up and returns its name. */
  netns(kind: string): string {
    const name = `wt-bench-${this.id}-${kind}${this.#n++}`;
    sh('ip', ['netns', 'add', name]);
    this.defer(() => sh('ip', ['netns', 'del', name]));
    sh('ip', ['-n', name, 'link', 'set', 'lo', 'up']);
    return name;
  }

  /** A fresh directory under the system temp dir (or `base`), removed at cleanup. */
  tmpdir(kind: string, base = tmpdir()): string {
    const dir = mkdtempSync(join(base, `wt-bench-${kind}-`));
    this.defer(() => rmSync(dir, { recursive: true, force: true }));
    return dir;
  }

  /** Spawns a long-running process (optionally inside `ns`); it is killed at cleanup. */
  spawn(cmd: string, args: string[], opts: SpawnOptions & { ns?: string } = {}): ChildProcess {
    const { ns, ...rest } = opts;
    const [c, a] = ns ? ['nsenter', [`--net=/run/netns/${ns}`, '--', cmd, ...args]] : [cmd, args];
    const child = spawn(c, a, { stdio: ['ignore', 'pipe', 'pipe'], ...rest });
    this.defer(() => {
      if (child.exitCode === null && child.signalCode === null) child.kill('SIGKILL');
    });
    return child;
  }

  defer(fn: () => void): void {
    this.#undo.push(fn);
  }

  cleanupSync(): void {
    while (this.#undo.length) {
      const fn = this.#undo.pop()!;
      try {
        fn();
      } catch {
        /* best effort: keep tearing down */
      }
    }
    live.delete(this);
  }
}

/** The tests' poller (test/helpers/netns.ts), polling every 20 ms: bench timings want finer steps. */
export function eventually<T>(fn: () => T | Promise<T>, timeoutMs = 10_000, intervalMs = 20): Promise<T> {
  return pollUntil(fn, timeoutMs, intervalMs);
}

export const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

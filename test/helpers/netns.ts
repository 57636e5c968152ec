/**
 * Throwaway namespaces for privileged tests. Every name gets a random suffix so ava's parallel
 * workers never collide, and `scope.cleanup()` deletes everything it made (register it with
 * `t.teardown`). Kernel state is read back with `ip -j`: the oracle, not the code under test.
 */
import { execFile, execFileSync, spawn, type ChildProcess, type SpawnOptions } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { promisify } from 'node:util';

const execFileP = promisify(execFile);

export function suffix(): string {
  return randomBytes(3).toString('hex');
}

/** Runs `ip` (or any command) synchronously; throws with stderr on failure. */
export function sh(cmd: string, args: string[], opts: { input?: string; env?: NodeJS.ProcessEnv } = {}): string {
  return execFileSync(cmd, args, { encoding: 'utf8', input: opts.input, env: opts.env, stdio: ['pipe', 'pipe', 'pipe'] });
}

export async function run(cmd: string, args: string[], opts: { input?: string; env?: NodeJS.ProcessEnv; timeout?: number } = {}) {
  const child = execFileP(cmd, args, { encoding: 'utf8', env: opts.env, timeout: opts.timeout ?? 60_000, maxBuffer: 64 << 20 });
  if (opts.input !== undefined) {
    child.child.stdin?.end(opts.input);
  }
  return child;
}

/** Runs a command inside a namespace via nsenter (not `ip netns exec`, which remounts /sys). */
export function inNs(ns: string, cmd: string, args: string[], opts: { input?: string; env?: NodeJS.ProcessEnv } = {}): string {
  return sh('nsenter', [`--net=/run/netns/${ns}`, '--', cmd, ...args], opts);
}

/** `ip -j` in a namespace, parsed. */
export function ipJson<T = any>(ns: string, ...args: string[]): T[] {
  const out = sh('ip', ['-n', ns, '-j', ...args]).trim();
  return out ? (JSON.parse(out) as T[]) : [];
}

export function ping(ns: string, ip: string, count = 1): boolean {
  try {
    inNs(ns, 'ping', ['-c', String(count), '-W', '2', '-i', '0.2', ip]);
    return true;
  } catch {
    return false;
  }
}

/** Everything a test created, torn down in reverse order. */
export class Scope {
  readonly id = suffix();
  readonly namespaces: string[] = [];
  readonly #undo: Array<() => void | Promise<void>> = [];

  /** Creates `w<kind>-<id>-<n>` (at most 15 chars is not required for netns names). */
  netns(kind: string): string {
    const name = `wt-${kind}-${this.id}-${this.namespaces.length}`;
    sh('ip', ['netns', 'add', name]);
    this.namespaces.push(name);
    sh('ip', ['-n', name, 'link', 'set', 'lo', 'up']);
    this.defer(() => {
      try {
        sh('ip', ['netns', 'del', name]);
      } catch {
        /* already gone */
      }
    });
    return name;
  }

  /** Spawns a long-running process; it is killed at cleanup. */
  spawn(cmd: string, args: string[], opts: SpawnOptions = {}): ChildProcess {
    const child = spawn(cmd, args, { stdio: ['ignore', 'pipe', 'pipe'], ...opts });
    this.defer(() => {
      if (child.exitCode === null && child.signalCode === null) child.kill('SIGKILL');
    });
    return child;
  }

  defer(fn: () => void | Promise<void>): void {
    this.#undo.push(fn);
  }

  async cleanup(): Promise<void> {
    while (this.#undo.length) {
      const fn = this.#undo.pop()!;
      try {
        await fn();
      } catch {
        /* best effort: keep tearing down */
      }
    }
  }
}

/** Polls `fn` until it returns truthy or `timeoutMs` passes; returns the last value. */
export async function eventually<T>(fn: () => T | Promise<T>, timeoutMs = 10_000, intervalMs = 100): Promise<T> {
  const end = Date.now() + timeoutMs;
  let last: T;
  for (;;) {
    try {
      last = await fn();
      if (last) return last;
    } catch (err) {
      if (Date.now() > end) throw err;
    }
    if (Date.now() > end) return last!;
    await new Promise((r) => setTimeout(r, intervalMs));
  }
}

/** A finished command: its exit code (null when killed) and what it printed. */
export interface Finished {
  code: number | null;
  stdout: string;
  stderr: string;
}

/**
 * Runs `cmd` inside namespace `ns` (nsenter) with exactly `env`; resolves when it exits, whatever
 * its exit code (rejects only if it could not be started).
 */
export function runInNs(ns: string, cmd: string, args: string[], env: NodeJS.ProcessEnv): Promise<Finished> {
  return new Promise((res, rej) => {
    const child = spawn('nsenter', [`--net=/run/netns/${ns}`, '--', cmd, ...args], { env });
    let stdout = '';
    let stderr = '';
    child.stdout!.on('data', (d) => (stdout += d));
    child.stderr!.on('data', (d) => (stderr += d));
    child.on('error', rej);
    child.on('close', (code) => res({ code, stdout, stderr }));
  });
}

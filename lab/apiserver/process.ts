/**
 * Runs the API server (main.ts) as a child process inside a network namespace, next to etcd in a
 * lab or test control plane: `nsenter --net=/run/netns/<netns> -- node lab/apiserver/main.ts ...`.
 * Resolves once it prints its "listening on" line; {@link ApiServerProcess.stop} ends it.
 */
import { spawn } from 'node:child_process';
import { closeSync, openSync } from 'node:fs';
import { join } from 'node:path';
import { killAndWait } from '../etcd.ts';

export interface ApiServerProcessOptions {
  /** Network namespace under /run/netns (the control plane's, where etcd runs). */
  netns: string;
  /** `ip:port` to listen on inside it, e.g. `198.51.100.2:6443`. */
  listen: string;
  /** etcd client URLs. */
  etcd: string[];
  /** Client TLS for etcd (a lab with etcdTls: its TestPki's ca, clientCert, clientKey). */
  etcdTls?: { cafile: string; certfile: string; keyfile: string };
  serviceClusterIPRange?: string;
  /** Written by the server once it listens. */
  kubeconfig?: string;
  /** stdout/stderr appended here; otherwise kept in memory for error messages. */
  logFile?: string;
  /** Let the server outlive this process (the lab CLI). */
  detached?: boolean;
  /** More flags (`--bookmark-interval 1s`, `--log-level debug`). */
  args?: string[];
  timeoutMs?: number;
}

export interface ApiServerProcess {
  readonly pid: number;
  /** `http://ip:port`. */
  readonly url: string;
  /** What the server printed (when no logFile was given). */
  output(): string;
  /** SIGTERM, then SIGKILL after 5 s; waits until it is gone. */
  stop(): Promise<void>;
}

export async function spawnApiServer(opts: ApiServerProcessOptions): Promise<ApiServerProcess> {
  const args = [
    `--net=/run/netns/${opts.netns}`,
    '--',
    process.execPath,
    join(import.meta.dirname, 'main.ts'),
    '--listen',
    opts.listen,
    '--etcd',
    opts.etcd.join(','),
    '--service-cluster-ip-range',
    opts.serviceClusterIPRange ?? '198.19.0.0/16',
    ...(opts.kubeconfig ? ['--kubeconfig', opts.kubeconfig] : []),
    ...(opts.etcdTls ? ['--etcd-cafile', opts.etcdTls.cafile, '--etcd-certfile', opts.etcdTls.certfile, '--etcd-keyfile', opts.etcdTls.keyfile] : []),
    ...(opts.args ?? []),
  ];
  const fd = opts.logFile ? openSync(opts.logFile, 'a') : undefined;
  // With a log file the "listening on" line is still read from stdout, so only stderr goes there.
  const child = spawn('nsenter', args, { stdio: ['ignore', 'pipe', fd ?? 'pipe'], detached: opts.detached ?? false });
  if (fd !== undefined) closeSync(fd);
  let out = '';
  child.stdout!.on('data', (c: Buffer) => (out += c.toString()));
  child.stderr?.on('data', (c: Buffer) => (out += c.toString()));
  const pid = child.pid!;
  const stop = async () => {
    if (child.exitCode === null && child.signalCode === null) await killAndWait(pid, 'SIGTERM', { graceMs: 5000 });
  };
  try {
    const url = await new Promise<string>((resolve, reject) => {
      const t = setTimeout(() => reject(new Error(`api server in "${opts.netns}" did not start within ${opts.timeoutMs ?? 20_000} ms: ${out}`)), opts.timeoutMs ?? 20_000);
      const onData = () => {
        const m = /listening on (\S+)/.exec(out);
        if (!m) return;
        clearTimeout(t);
        child.off('exit', onExit);
        resolve(m[1]!);
      };
      const onExit = (code: number | null) => {
        clearTimeout(t);
        reject(new Error(`api server in "${opts.netns}" exited (${code}): ${out}`));
      };
      child.stdout!.on('data', onData);
      child.once('exit', onExit);
    });
    if (opts.detached) {
      child.stdout!.destroy();
      child.unref();
    }
    return { pid, url, output: () => out, stop };
  } catch (err) {
    await stop();
    throw err;
  }
}

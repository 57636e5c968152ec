/**
 * A control plane for API server tests: one throwaway namespace (`wt-as-<id>-0`) holding a veth
 * pair (both ends inside) with 198.51.100.2/24, a real etcd on it, and lab/apiserver/main.ts as a child process
 * started with `nsenter --net=`. Nothing gets an address in the root namespace. The test process
 * reaches the server through a unix socket that a `socat` inside the namespace forwards to
 * 198.51.100.2:6443 (a unix socket lives in the filesystem, not in a network namespace); real
 * clients (kubectl, a client-node script) run inside the namespace via nsenter and use the
 * kubeconfig the server wrote. `destroy()` stops all three processes and deletes the namespace.
 */
import { spawn, type ChildProcess } from 'node:child_process';
import { mkdtempSync, rmSync } from 'node:fs';
import { request } from 'node:http';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { EtcdServer, killAndWait } from '../../lab/etcd.ts';
import { spawnApiServer, type ApiServerProcess } from '../../lab/apiserver/process.ts';
import { run, Scope, sh } from './netns.ts';

export const API_IP = '198.51.100.2';
export const API_URL = `http://${API_IP}:6443`;

export interface Reply {
  status: number;
  headers: Record<string, string | string[] | undefined>;
  text: string;
  json: any;
}

export interface WatchEvent {
  type: string;
  object: any;
}

/** An open watch: events as they arrive, and whether (and when) the server ended it. */
export class WatchStream {
  readonly events: WatchEvent[] = [];
  status = 0;
  headers: Record<string, string | string[] | undefined> = {};
  ended = false;
  readonly #waiters = new Set<() => void>();
  #abort: () => void = () => undefined;
  readonly opened: Promise<void>;

  constructor(socket: string, path: string, headers: Record<string, string> = {}) {
    this.opened = new Promise((resolveOpen, rejectOpen) => {
      const req = request({ socketPath: socket, path, headers: { accept: 'application/json', ...headers } }, (res) => {
        this.status = res.statusCode ?? 0;
        this.headers = res.headers;
        resolveOpen();
        let buf = '';
        res.setEncoding('utf8');
        res.on('data', (c: string) => {
          buf += c;
          for (let i = buf.indexOf('\n'); i >= 0; i = buf.indexOf('\n')) {
            const line = buf.slice(0, i);
            buf = buf.slice(i + 1);
            if (line.trim()) this.events.push(JSON.parse(line));
          }
          this.#wake();
        });
        const end = () => {
          this.ended = true;
          this.#wake();
        };
        res.on('end', end);
        res.on('close', end);
        res.on('error', end);
      });
      req.on('error', (err) => {
        this.ended = true;
        this.#wake();
        rejectOpen(err);
      });
      req.end();
      this.#abort = () => req.destroy();
    });
  }

  #wake(): void {
    for (const w of [...this.#waiters]) w();
  }

  /** Waits until `pred` holds for some event (returns it) or the timeout passes (throws). */
  async next(pred: (e: WatchEvent) => boolean, timeoutMs = 10_000): Promise<WatchEvent> {
    const end = Date.now() + timeoutMs;
    for (;;) {
      const hit = this.events.find(pred);
      if (hit) return hit;
      if (this.ended) throw new Error(`watch ended without the event; got ${JSON.stringify(this.events.map((e) => e.type))}`);
      const left = end - Date.now();
      if (left <= 0) throw new Error(`timed out waiting for a watch event; got ${JSON.stringify(this.events.map((e) => e.type))}`);
      await new Promise<void>((r) => {
        const t = setTimeout(done, left);
        const self = this;
        function done() {
          clearTimeout(t);
          self.#waiters.delete(done);
          r();
        }
        this.#waiters.add(done);
      });
    }
  }

  /** Resolves when the server ends the stream (throws after the timeout). */
  async waitEnd(timeoutMs = 10_000): Promise<void> {
    const end = Date.now() + timeoutMs;
    while (!this.ended) {
      if (Date.now() > end) throw new Error('watch did not end');
      await new Promise((r) => setTimeout(r, 20));
    }
  }

  close(): void {
    this.#abort();
  }
}

export class ControlPlane {
  readonly scope = new Scope();
  readonly dir = mkdtempSync(join(tmpdir(), 'weft-apiserver-'));
  readonly socket = join(this.dir, 'api.sock');
  readonly kubeconfig = join(this.dir, 'kubeconfig');
  readonly netns: string;
  readonly etcd: EtcdServer;
  #server: ApiServerProcess | undefined;
  #socat: ChildProcess | undefined;

  private constructor() {
    this.netns = this.scope.netns('as');
    try {
      // No dummy driver on this kernel: a veth pair with both ends inside the namespace.
      sh('ip', ['-n', this.netns, 'link', 'add', 'eth0', 'type', 'veth', 'peer', 'name', 'eth0p']);
      sh('ip', ['-n', this.netns, 'addr', 'add', `${API_IP}/24`, 'dev', 'eth0']);
      sh('ip', ['-n', this.netns, 'link', 'set', 'eth0p', 'up']);
      sh('ip', ['-n', this.netns, 'link', 'set', 'eth0', 'up']);
    } catch (err) {
      void this.scope.cleanup();
      rmSync(this.dir, { recursive: true, force: true });
      throw err;
    }
    this.etcd = new EtcdServer({ netns: this.netns, ip: API_IP, dataDir: join(this.dir, 'etcd') });
  }

  /** Namespace, etcd, API server and the socket forwarder; everything is undone on failure. */
  static async start(opts: { args?: string[] } = {}): Promise<ControlPlane> {
    const cp = new ControlPlane();
    try {
      await cp.etcd.start();
      await cp.startServer(opts.args ?? []);
      cp.#socat = spawn('nsenter', [`--net=/run/netns/${cp.netns}`, '--', 'socat', `UNIX-LISTEN:${cp.socket},fork,mode=600,backlog=256`, `TCP:${API_IP}:6443`], { stdio: 'ignore' });
      for (let i = 0; ; i++) {
        try {
          if ((await cp.request('GET', '/healthz')).status === 200) break;
        } catch (err) {
          if (i > 100) throw err;
        }
        await new Promise((r) => setTimeout(r, 50));
      }
      return cp;
    } catch (err) {
      await cp.destroy();
      throw err;
    }
  }

  get serverLog(): string {
    return this.#server?.output() ?? '';
  }

  /** Starts lab/apiserver/main.ts in the namespace (again, after {@link stopServer}). */
  async startServer(args: string[] = []): Promise<void> {
    this.#server = await spawnApiServer({ netns: this.netns, listen: `${API_IP}:6443`, etcd: [this.etcd.endpoint], kubeconfig: this.kubeconfig, args });
  }

  async stopServer(): Promise<void> {
    await this.#server?.stop();
  }

  /** One HTTP request through the forwarder; a JSON body is sent as JSON unless `contentType` says otherwise. */
  request(method: string, path: string, opts: { body?: unknown; contentType?: string; headers?: Record<string, string> } = {}): Promise<Reply> {
    const body = opts.body === undefined ? undefined : typeof opts.body === 'string' ? opts.body : JSON.stringify(opts.body);
    return new Promise((res, rej) => {
      const req = request(
        {
          socketPath: this.socket,
          method,
          path,
          headers: { accept: 'application/json', ...(body !== undefined ? { 'content-type': opts.contentType ?? 'application/json' } : {}), ...opts.headers },
          timeout: 15_000,
        },
        (r) => {
          let text = '';
          r.setEncoding('utf8');
          r.on('data', (c: string) => (text += c));
          r.on('end', () => {
            let json: unknown;
            try {
              json = JSON.parse(text);
            } catch {
              json = undefined;
            }
            res({ status: r.statusCode ?? 0, headers: r.headers, text, json });
          });
        },
      );
      req.on('timeout', () => req.destroy(new Error(`${method} ${path} timed out`)));
      req.on('error', rej);
      req.end(body);
    });
  }

  watch(path: string, headers?: Record<string, string>): WatchStream {
    return new WatchStream(this.socket, path, headers);
  }

  /** Runs the real kubectl inside the namespace against this server; its stdout. */
  async kubectl(args: string[], opts: { input?: string; timeout?: number } = {}): Promise<string> {
    return (await this.kubectlRun(args, opts)).stdout;
  }

  /** Same, with stderr (warnings, -v logs). */
  async kubectlRun(args: string[], opts: { input?: string; timeout?: number } = {}): Promise<{ stdout: string; stderr: string }> {
    return run('nsenter', [`--net=/run/netns/${this.netns}`, '--', 'kubectl', '--kubeconfig', this.kubeconfig, ...args], {
      input: opts.input,
      timeout: opts.timeout ?? 30_000,
      env: { ...process.env, HOME: this.dir, KUBECACHEDIR: join(this.dir, 'kubecache') },
    });
  }

  /** Starts a long-running process inside the namespace (killed at destroy). */
  spawnInNs(cmd: string, args: string[], env?: NodeJS.ProcessEnv): ChildProcess {
    return this.scope.spawn('nsenter', [`--net=/run/netns/${this.netns}`, '--', cmd, ...args], { stdio: ['pipe', 'pipe', 'pipe'], env: { ...process.env, HOME: this.dir, ...env } });
  }

  async destroy(): Promise<void> {
    if (this.#socat?.pid && this.#socat.exitCode === null) await killAndWait(this.#socat.pid, 'SIGKILL');
    await this.stopServer();
    await this.etcd.destroy();
    await this.scope.cleanup();
    rmSync(this.dir, { recursive: true, force: true });
  }
}

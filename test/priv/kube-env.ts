/**
 * A control plane for the kube subnet manager's privileged tests: an underlay bridge in its own
 * namespace, a control-plane namespace on 198.51.100.2 running a real etcd and the lab API
 * server (lab/apiserver/main.ts), and node namespaces on the same /24. The manager runs in
 * child processes (kube-driver.ts) started with `nsenter --net=` inside a node namespace, so no
 * socket or address is ever made in the root namespace. `destroy()` removes everything.
 */
import { spawn, type ChildProcess } from 'node:child_process';
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { createInterface } from 'node:readline';
import { EtcdServer, killAndWait } from '../../lab/etcd.ts';
import { eventually, Scope, sh } from '../helpers/netns.ts';

export const CP_IP = '198.51.100.2';
export const API_PORT = 6443;
export const P = 'flannel.alpha.coreos.com/';
const DRIVER = new URL('./kube-driver.ts', import.meta.url).pathname;
const API_MAIN = new URL('../../lab/apiserver/main.ts', import.meta.url).pathname;

export type Msg = Record<string, any>;

/** One kube-driver.ts process and its message stream. */
export class Driver {
  readonly child: ChildProcess;
  readonly messages: Msg[] = [];
  #next = 1;
  readonly #waiting = new Map<number, (m: Msg) => void>();
  stderr = '';

  constructor(netns: string, args: string[]) {
    this.child = spawn('nsenter', [`--net=/run/netns/${netns}`, '--', process.execPath, DRIVER, ...args], { stdio: ['pipe', 'pipe', 'pipe'] });
    this.child.stderr!.on('data', (d) => (this.stderr = (this.stderr + d).slice(-8000)));
    createInterface({ input: this.child.stdout! }).on('line', (line) => {
      let m: Msg;
      try {
        m = JSON.parse(line);
      } catch {
        return;
      }
      this.messages.push(m);
      if (typeof m.id === 'number') this.#waiting.get(m.id)?.(m);
    });
  }

  /** Sends one request; resolves with its answer (`ok`, `result` / `error`). */
  request(op: string, args: Msg = {}, timeoutMs = 30_000): Promise<Msg> {
    const id = this.#next++;
    return new Promise((resolve, reject) => {
      const timer = setTimeout(() => reject(new Error(`driver op ${op} timed out; stderr: ${this.stderr}`)), timeoutMs);
      this.#waiting.set(id, (m) => {
        clearTimeout(timer);
        this.#waiting.delete(id);
        resolve(m);
      });
      this.child.stdin!.write(`${JSON.stringify({ id, op, ...args })}\n`);
    });
  }

  async call(op: string, args: Msg = {}, timeoutMs?: number): Promise<any> {
    const m = await this.request(op, args, timeoutMs);
    if (!m.ok) throw new Error(`${op}: ${m.error}`);
    return m.result;
  }

  /** A raw API request (the test's kubectl). */
  async api(method: string, path: string, body?: unknown, contentType?: string): Promise<{ status: number; body: any }> {
    return this.call('api', { method, path, body, contentType });
  }

  events(kind: string): Msg[] {
    return this.messages.filter((m) => m.event === kind);
  }

  /** Waits for a message after index `from` that satisfies `pred`. */
  async waitFor(pred: (m: Msg) => boolean, opts: { from?: number; timeoutMs?: number } = {}): Promise<Msg | undefined> {
    let found: Msg | undefined;
    await eventually(() => (found = this.messages.slice(opts.from ?? 0).find(pred)), opts.timeoutMs ?? 15_000, 50);
    return found;
  }

  async stop(): Promise<void> {
    if (this.child.exitCode !== null || this.child.signalCode !== null) return;
    if (this.child.pid) await killAndWait(this.child.pid, 'SIGKILL', { graceMs: 5000 });
  }
}

/** A Node object with flannel's annotations (or the given ones). */
export function peerNode(name: string, o: { cidr?: string; mac?: string; ip?: string; annotations?: Record<string, string> } = {}) {
  const annotations = o.annotations ?? {
    [`${P}kube-subnet-manager`]: 'true',
    [`${P}backend-type`]: 'vxlan',
    [`${P}backend-data`]: JSON.stringify({ VNI: 1, VtepMAC: o.mac ?? '0a:00:00:00:02:01' }),
    [`${P}public-ip`]: o.ip ?? '198.51.100.12',
  };
  return { apiVersion: 'v1', kind: 'Node', metadata: { name, annotations }, spec: o.cidr === undefined ? {} : { podCIDR: o.cidr } };
}

export class KubeLab {
  readonly scope: Scope;
  readonly ul: string;
  readonly cp: string;
  readonly dir: string;
  readonly etcd: EtcdServer;
  readonly netConf: string;
  /** Node namespaces by the name given to create(). */
  readonly ns = new Map<string, string>();
  apiPid: number | undefined;

  private constructor(scope: Scope, o: { ul: string; cp: string; dir: string; etcd: EtcdServer; netConf: string }) {
    this.scope = scope;
    this.ul = o.ul;
    this.cp = o.cp;
    this.dir = o.dir;
    this.etcd = o.etcd;
    this.netConf = o.netConf;
  }

  /** Builds the underlay, etcd and the API server on port {@link API_PORT}, plus one namespace per node. */
  static async create(nodes: Array<{ name: string; ip: string }>): Promise<KubeLab> {
    const scope = new Scope();
    try {
      const ul = scope.netns('kul');
      sh('ip', ['-n', ul, 'link', 'add', 'br0', 'type', 'bridge']);
      sh('ip', ['-n', ul, 'link', 'set', 'br0', 'up']);
      let k = 0;
      const attach = (ns: string, ip: string) => {
        const host = `v${k++}`;
        sh('ip', ['-n', ul, 'link', 'add', host, 'type', 'veth', 'peer', 'name', 'eth0', 'netns', ns]);
        sh('ip', ['-n', ul, 'link', 'set', host, 'master', 'br0', 'up']);
        sh('ip', ['-n', ns, 'addr', 'add', `${ip}/24`, 'dev', 'eth0']);
        sh('ip', ['-n', ns, 'link', 'set', 'eth0', 'up']);
      };
      const cp = scope.netns('kcp');
      attach(cp, CP_IP);
      const dir = mkdtempSync(join(tmpdir(), 'weft-kube-'));
      scope.defer(() => rmSync(dir, { recursive: true, force: true }));
      const etcd = new EtcdServer({ netns: cp, ip: CP_IP, dataDir: join(dir, 'etcd'), logFile: join(dir, 'etcd.log') });
      scope.defer(() => etcd.destroy());
      await etcd.start();
      const netConf = join(dir, 'net-conf.json');
      writeFileSync(netConf, JSON.stringify({ Network: '198.18.0.0/16', Backend: { Type: 'vxlan', VNI: 1, Port: 8472 } }));
      const lab = new KubeLab(scope, { ul, cp, dir, etcd, netConf });
      for (const n of nodes) {
        const ns = scope.netns('kn');
        attach(ns, n.ip);
        lab.ns.set(n.name, ns);
      }
      lab.apiPid = await lab.startApi();
      return lab;
    } catch (err) {
      await scope.cleanup();
      throw err;
    }
  }

  /** Starts the lab API server in the control-plane namespace; its stderr lines go to `log`. */
  async startApi(port = API_PORT, opts: { args?: string[]; log?: string[] } = {}): Promise<number> {
    const args = [API_MAIN, '--listen', `${CP_IP}:${port}`, '--etcd', this.etcd.endpoint, '--log-level', 'warn', ...(opts.args ?? [])];
    const child = spawn('nsenter', [`--net=/run/netns/${this.cp}`, '--', process.execPath, ...args], { stdio: ['ignore', 'pipe', 'pipe'] });
    let err = '';
    createInterface({ input: child.stderr! }).on('line', (line) => {
      err = `${err}${line}\n`.slice(-4000);
      opts.log?.push(line);
    });
    this.scope.defer(() => {
      if (child.exitCode === null && child.signalCode === null) child.kill('SIGKILL');
    });
    await new Promise<void>((resolve, reject) => {
      const timer = setTimeout(() => reject(new Error(`API server did not start: ${err}`)), 30_000);
      createInterface({ input: child.stdout! }).on('line', (line) => {
        if (!/listening on/.test(line)) return;
        clearTimeout(timer);
        resolve();
      });
      child.once('exit', (code) => reject(new Error(`API server exited (${code}): ${err}`)));
    });
    return child.pid!;
  }

  /** A driver for Node `node`, running in namespace `ns` (by the name given to create()). */
  driver(node: string, opts: { in: string; port?: number }): Driver {
    const ns = this.ns.get(opts.in);
    if (!ns) throw new Error(`no namespace for "${opts.in}"`);
    const server = `http://${CP_IP}:${opts.port ?? API_PORT}`;
    const d = new Driver(ns, ['drive', '--server', server, '--node', node, '--net-conf', this.netConf, '--etcd', this.etcd.endpoint]);
    this.scope.defer(() => d.stop());
    return d;
  }

  destroy(): Promise<void> {
    return this.scope.cleanup();
  }
}

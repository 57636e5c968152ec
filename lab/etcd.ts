/**
 * A real etcd (Debian's `/usr/bin/etcd`, v3 API) for the lab and the multi-node tests. It runs
 * inside a given network namespace, listening on one IP (the namespace's underlay address), so
 * daemons in node namespaces reach it over the test underlay; root-namespace 127.0.0.1 is not
 * reachable from there. The data dir survives stop/start (a restart keeps the leases).
 */
import { execFile, execFileSync, spawn } from 'node:child_process';
import { closeSync, existsSync, mkdirSync, mkdtempSync, openSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { promisify } from 'node:util';

const execFileP = promisify(execFile);

export interface EtcdServerOptions {
  /** Network namespace name (under /run/netns) to run in. */
  netns: string;
  /** Address to listen on inside that namespace. */
  ip: string;
  clientPort?: number;
  peerPort?: number;
  /** Data dir; a temp dir (removed by destroy()) when omitted. */
  dataDir?: string;
  /** stdout/stderr go here (appended); discarded when omitted. */
  logFile?: string;
  /** Let the process outlive this one (the lab CLI); tests keep it attached. */
  detached?: boolean;
  etcdBin?: string;
  /** An already running server's pid (re-attaching to a lab). */
  pid?: number;
  /** Serve TLS and require client certificates (see {@link makeTestPki}). */
  tls?: TestPki;
}

/** PEM files of a throwaway CA, an etcd server certificate and a client certificate. */
export interface TestPki {
  ca: string;
  serverCert: string;
  serverKey: string;
  clientCert: string;
  clientKey: string;
}

/**
 * Creates a CA plus server (SAN = `serverIP`) and client certificates in `dir` with openssl.
 * For tests and the lab only: keys are unencrypted and valid for a day.
 */
export function makeTestPki(dir: string, serverIP: string): TestPki {
  mkdirSync(dir, { recursive: true });
  const f = (n: string) => join(dir, n);
  const ssl = (...args: string[]) => execFileSync('openssl', args, { stdio: ['ignore', 'pipe', 'pipe'] });
  ssl('req', '-x509', '-newkey', 'rsa:2048', '-nodes', '-days', '1', '-subj', '/CN=weft-test-ca', '-keyout', f('ca.key'), '-out', f('ca.pem'));
  const leaf = (name: string, ext: string) => {
    ssl('req', '-newkey', 'rsa:2048', '-nodes', '-subj', `/CN=weft-test-${name}`, '-keyout', f(`${name}.key`), '-out', f(`${name}.csr`));
    writeFileSync(f(`${name}.ext`), ext);
    ssl('x509', '-req', '-in', f(`${name}.csr`), '-CA', f('ca.pem'), '-CAkey', f('ca.key'), '-CAcreateserial', '-days', '1', '-extfile', f(`${name}.ext`), '-out', f(`${name}.pem`));
  };
  leaf('server', `subjectAltName=IP:${serverIP}\nextendedKeyUsage=serverAuth\n`);
  leaf('client', 'extendedKeyUsage=clientAuth\n');
  return { ca: f('ca.pem'), serverCert: f('server.pem'), serverKey: f('server.key'), clientCert: f('client.pem'), clientKey: f('client.key') };
}

export class EtcdServer {
  readonly opts: Required<Pick<EtcdServerOptions, 'netns' | 'ip' | 'clientPort' | 'peerPort'>> & EtcdServerOptions;
  readonly dataDir: string;
  readonly #ownDataDir: boolean;
  #pid: number | undefined;

  constructor(opts: EtcdServerOptions) {
    this.opts = { clientPort: 2379, peerPort: 2380, ...opts };
    this.#ownDataDir = !opts.dataDir;
    this.dataDir = opts.dataDir ?? mkdtempSync(join(tmpdir(), 'weft-etcd-'));
    this.#pid = opts.pid;
  }

  /** `http(s)://ip:port`, what weftd's --etcd-endpoints takes. */
  get endpoint(): string {
    return `${this.opts.tls ? 'https' : 'http'}://${this.opts.ip}:${this.opts.clientPort}`;
  }

  get pid(): number | undefined {
    return this.#pid;
  }

  get running(): boolean {
    return this.#pid !== undefined && existsSync(`/proc/${this.#pid}`) && !isZombie(this.#pid);
  }

  /** Starts etcd and waits until it answers a health check. */
  async start(timeoutMs = 30_000): Promise<void> {
    if (this.running) return;
    mkdirSync(this.dataDir, { recursive: true });
    const { ip, peerPort } = this.opts;
    const peer = `http://${ip}:${peerPort}`;
    const args = [
      `--net=/run/netns/${this.opts.netns}`,
      '--',
      this.opts.etcdBin ?? 'etcd',
      '--name',
      'weft-lab',
      '--data-dir',
      this.dataDir,
      '--listen-client-urls',
      this.endpoint,
      '--advertise-client-urls',
      this.endpoint,
      '--listen-peer-urls',
      peer,
      '--initial-advertise-peer-urls',
      peer,
      '--initial-cluster',
      `weft-lab=${peer}`,
      '--initial-cluster-state',
      'new',
      '--heartbeat-interval',
      '50',
      '--election-timeout',
      '500',
      '--log-level',
      'warn',
      '--logger',
      'zap',
    ];
    const tls = this.opts.tls;
    if (tls) args.push('--cert-file', tls.serverCert, '--key-file', tls.serverKey, '--trusted-ca-file', tls.ca, '--client-cert-auth');
    const fd = this.opts.logFile ? openSync(this.opts.logFile, 'a') : 'ignore';
    const child = spawn('nsenter', args, { stdio: ['ignore', fd, fd], detached: this.opts.detached ?? false });
    if (typeof fd === 'number') closeSync(fd);
    if (this.opts.detached) child.unref();
    this.#pid = child.pid;
    try {
      await this.waitHealthy(timeoutMs);
    } catch (err) {
      await this.stop();
      throw err;
    }
  }

  /** Polls `etcdctl endpoint health` until it succeeds. */
  async waitHealthy(timeoutMs = 30_000): Promise<void> {
    const end = Date.now() + timeoutMs;
    let last: unknown;
    while (Date.now() < end) {
      if (this.#pid !== undefined && !this.running) throw new Error(`etcd in "${this.opts.netns}" exited during start-up`);
      try {
        await this.ctl(['endpoint', 'health']);
        return;
      } catch (err) {
        last = err;
      }
      await new Promise((r) => setTimeout(r, 200));
    }
    throw new Error(`etcd at ${this.endpoint} not healthy after ${timeoutMs} ms`, { cause: last });
  }

  /** Stops etcd (SIGTERM, then SIGKILL after 10 s) and waits for it to exit. */
  async stop(signal: NodeJS.Signals = 'SIGTERM'): Promise<void> {
    const pid = this.#pid;
    if (pid === undefined) return;
    await killAndWait(pid, signal);
    this.#pid = undefined;
  }

  async restart(): Promise<void> {
    await this.stop();
    await this.start();
  }

  /** Runs etcdctl (v3) against this server from inside its namespace; returns stdout. */
  async ctl(args: string[], input?: string): Promise<string> {
    const p = execFileP(
      'nsenter',
      [
        `--net=/run/netns/${this.opts.netns}`,
        '--',
        'etcdctl',
        `--endpoints=${this.endpoint}`,
        '--dial-timeout=2s',
        '--command-timeout=5s',
        ...(this.opts.tls ? [`--cacert=${this.opts.tls.ca}`, `--cert=${this.opts.tls.clientCert}`, `--key=${this.opts.tls.clientKey}`] : []),
        ...args,
      ],
      { encoding: 'utf8', env: { ...process.env, ETCDCTL_API: '3' }, timeout: 15_000 },
    );
    if (input !== undefined) p.child.stdin?.end(input);
    return (await p).stdout;
  }

  async put(key: string, value: string): Promise<void> {
    await this.ctl(['put', key, '--', value]);
  }

  /** The value at `key`, or undefined. */
  async get(key: string): Promise<string | undefined> {
    const out = await this.ctl(['get', key, '--print-value-only']);
    return out ? out.replace(/\n$/, '') : undefined;
  }

  /** Key -> value for every key under `prefix`. */
  async getPrefix(prefix: string): Promise<Map<string, string>> {
    const out = await this.ctl(['get', prefix, '--prefix', '-w', 'json']);
    const res = JSON.parse(out) as { kvs?: Array<{ key: string; value: string }> };
    const m = new Map<string, string>();
    for (const kv of res.kvs ?? []) m.set(Buffer.from(kv.key, 'base64').toString(), Buffer.from(kv.value, 'base64').toString());
    return m;
  }

  async del(key: string, opts: { prefix?: boolean } = {}): Promise<void> {
    await this.ctl(['del', key, ...(opts.prefix ? ['--prefix'] : [])]);
  }

  /** Stops the server and removes a temp data dir. Idempotent. */
  async destroy(): Promise<void> {
    await this.stop('SIGKILL');
    if (this.#ownDataDir) rmSync(this.dataDir, { recursive: true, force: true });
  }
}

function isZombie(pid: number): boolean {
  try {
    const stat = readFileSync(`/proc/${pid}/stat`, 'utf8');
    return / Z /.test(stat.slice(stat.lastIndexOf(')')));
  } catch {
    return false;
  }
}

/** Signals `pid` and waits until it is gone (SIGKILL after `graceMs`). */
export async function killAndWait(pid: number, signal: NodeJS.Signals = 'SIGTERM', opts: { graceMs?: number } = {}): Promise<void> {
  const graceMs = opts.graceMs ?? 10_000;
  const alive = () => existsSync(`/proc/${pid}`) && !isZombie(pid);
  try {
    process.kill(pid, signal);
  } catch {
    return;
  }
  const end = Date.now() + graceMs;
  while (alive()) {
    if (Date.now() > end) {
      try {
        process.kill(pid, 'SIGKILL');
      } catch {
        return;
      }
    }
    await new Promise((r) => setTimeout(r, 50));
  }
}

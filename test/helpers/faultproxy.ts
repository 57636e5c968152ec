/**
 * A fault-injecting TCP proxy for the fault suite (microsoft/etcd3's tests put one between the
 * client and etcd; this is ours). It runs as its own process inside the control-plane namespace
 * (faultproxy-main.ts), between the daemons and etcd, and is driven over stdin/stdout:
 *
 * - `pass`: forward both ways (connections made while blackholed are connected upstream now);
 * - `blackhole`: forward nothing, in either direction, on existing and new connections; bytes
 *   stay queued (reading is paused, as a dead path leaves them unacknowledged), so a short
 *   blackhole resumes like a network that came back;
 * - `reset`: close every current connection with a TCP RST; new ones pass;
 * - `halfopen`: every current connection dies for good without the client being told: the
 *   upstream side is closed, the client side stays open and silent forever (a path that went
 *   away while the client had nothing to send); new ones pass;
 * each optionally for one client address only (`blackhole 198.51.100.13`), so one node can be
 * partitioned from etcd while the others are not.
 *
 * {@link FaultProxy} is the proxy itself (usable in-process); {@link FaultProxyProcess} starts
 * and drives the namespaced process.
 */
import { spawn, type ChildProcess } from 'node:child_process';
import { createConnection, createServer, type Server, type Socket } from 'node:net';
import { join } from 'node:path';
import { createInterface } from 'node:readline';

export type FaultMode = 'pass' | 'blackhole';

interface Conn {
  client: Socket;
  upstream?: Socket;
  piped: boolean;
}

/** The proxy: listens on `listen`, forwards to `upstream`. */
export class FaultProxy {
  readonly #conns = new Set<Conn>();
  /** Half-open client sockets: never read, written or closed until the proxy closes. */
  readonly #zombies = new Set<Socket>();
  readonly #server: Server;
  readonly #upstream: { host: string; port: number };
  /** Mode per client address; `*` for everyone else. */
  readonly #modes = new Map<string, FaultMode>([['*', 'pass']]);
  /** Connections accepted and resets done (figures for the test). */
  accepted = 0;
  resets = 0;

  constructor(upstream: { host: string; port: number }) {
    this.#upstream = upstream;
    this.#server = createServer((s) => this.#accept(s));
  }

  listen(host: string, port: number): Promise<void> {
    return new Promise((resolve, reject) => {
      this.#server.once('error', reject);
      this.#server.listen(port, host, () => resolve());
    });
  }

  #modeFor(addr: string | undefined): FaultMode {
    return this.#modes.get(addr ?? '') ?? this.#modes.get('*')!;
  }

  /** Sets the mode for one client address, or for everyone (`*`: also clears per-address modes). */
  setMode(mode: FaultMode, addr = '*'): void {
    if (addr === '*') this.#modes.clear();
    this.#modes.set(addr, mode);
    for (const c of this.#conns) this.#apply(c);
  }

  /** RSTs every connection (of `addr`, or all); returns how many. */
  reset(addr = '*'): number {
    let n = 0;
    for (const c of [...this.#conns]) {
      if (addr !== '*' && c.client.remoteAddress !== addr) continue;
      c.client.resetAndDestroy();
      c.upstream?.resetAndDestroy();
      this.#conns.delete(c);
      n++;
    }
    this.resets += n;
    return n;
  }

  /** Makes every connection (of `addr`, or all) half-open; returns how many. */
  halfOpen(addr = '*'): number {
    let n = 0;
    for (const c of [...this.#conns]) {
      if (addr !== '*' && c.client.remoteAddress !== addr) continue;
      this.#conns.delete(c);
      if (c.piped) c.client.unpipe(c.upstream);
      c.upstream?.unpipe(c.client);
      c.client.pause();
      c.client.removeAllListeners('data');
      c.client.on('error', () => undefined);
      c.upstream?.removeAllListeners('close');
      c.upstream?.on('error', () => undefined);
      c.upstream?.destroy();
      this.#zombies.add(c.client);
      n++;
    }
    return n;
  }

  #accept(client: Socket): void {
    this.accepted++;
    const c: Conn = { client, piped: false };
    this.#conns.add(c);
    client.pause();
    const drop = () => {
      if (!this.#conns.delete(c)) return;
      client.destroy();
      c.upstream?.destroy();
    };
    client.on('error', drop);
    client.on('close', drop);
    this.#apply(c);
  }

  /** Brings a connection in line with its mode. */
  #apply(c: Conn): void {
    if (!this.#conns.has(c)) return;
    const mode = this.#modeFor(c.client.remoteAddress);
    if (mode === 'blackhole') {
      if (c.piped) {
        c.client.unpipe(c.upstream);
        c.upstream!.unpipe(c.client);
        c.piped = false;
      }
      c.client.pause();
      c.upstream?.pause();
      return;
    }
    if (!c.upstream) {
      const up = createConnection(this.#upstream);
      c.upstream = up;
      up.pause();
      const drop = () => {
        if (!this.#conns.delete(c)) return;
        c.client.destroy();
        up.destroy();
      };
      up.on('error', drop);
      up.on('close', drop);
      up.once('connect', () => this.#apply(c));
      return;
    }
    if (c.upstream.connecting || c.piped) return;
    c.client.pipe(c.upstream);
    c.upstream.pipe(c.client);
    c.piped = true;
  }

  get connections(): number {
    return this.#conns.size;
  }

  close(): void {
    this.reset();
    for (const z of this.#zombies) z.destroy();
    this.#server.close();
  }
}

/** The proxy process in a namespace, driven over its stdin; every command waits for its answer. */
export class FaultProxyProcess {
  readonly #child: ChildProcess;
  readonly #answers: Array<(line: string) => void> = [];
  readonly listen: string;

  private constructor(child: ChildProcess, listen: string) {
    this.#child = child;
    this.listen = listen;
    createInterface({ input: child.stdout! }).on('line', (line) => this.#answers.shift()?.(line));
  }

  /** Starts the proxy in namespace `netns` on `listen` (`ip:port`) towards `upstream`. */
  static async start(netns: string, opts: { listen: string; upstream: string }): Promise<FaultProxyProcess> {
    const main = join(import.meta.dirname, 'faultproxy-main.ts');
    const child = spawn('nsenter', [`--net=/run/netns/${netns}`, '--', process.execPath, main, opts.listen, opts.upstream], { stdio: ['pipe', 'pipe', 'inherit'] });
    const p = new FaultProxyProcess(child, opts.listen);
    const ready = await p.#next(10_000);
    if (ready !== 'listening') {
      child.kill('SIGKILL');
      throw new Error(`fault proxy did not start: ${ready}`);
    }
    return p;
  }

  #next(timeoutMs = 5000): Promise<string> {
    if (this.#child.exitCode !== null || this.#child.signalCode !== null) {
      return Promise.reject(new Error(`fault proxy exited (${this.#child.exitCode ?? this.#child.signalCode})`));
    }
    return new Promise((resolve, reject) => {
      const timer = setTimeout(() => reject(new Error('fault proxy: no answer')), timeoutMs);
      this.#answers.push((line) => {
        clearTimeout(timer);
        resolve(line);
      });
    });
  }

  async #cmd(line: string): Promise<string> {
    const answer = this.#next();
    this.#child.stdin!.write(`${line}\n`);
    const a = await answer;
    if (!a.startsWith('ok')) throw new Error(`fault proxy: "${line}": ${a}`);
    return a;
  }

  async pass(addr?: string): Promise<void> {
    await this.#cmd(`pass${addr ? ` ${addr}` : ''}`);
  }

  async blackhole(addr?: string): Promise<void> {
    await this.#cmd(`blackhole${addr ? ` ${addr}` : ''}`);
  }

  /** RSTs the current connections; resolves with how many there were. */
  async reset(addr?: string): Promise<number> {
    return Number((await this.#cmd(`reset${addr ? ` ${addr}` : ''}`)).split(' ')[1]);
  }

  /** Leaves the current connections half-open; resolves with how many there were. */
  async halfOpen(addr?: string): Promise<number> {
    return Number((await this.#cmd(`halfopen${addr ? ` ${addr}` : ''}`)).split(' ')[1]);
  }

  /** `{ accepted, resets, connections }` so far. */
  async stats(): Promise<{ accepted: number; resets: number; connections: number }> {
    return JSON.parse((await this.#cmd('stats')).slice(3));
  }

  async stop(): Promise<void> {
    if (this.#child.exitCode !== null) return;
    const exited = new Promise((r) => this.#child.once('exit', r));
    this.#child.kill('SIGTERM');
    await exited;
  }
}

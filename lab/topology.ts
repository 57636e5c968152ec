/**
 * A multi-node weft cluster in network namespaces on one machine, for the lab CLI and the
 * multi-node tests:
 *
 * ```
 *   <p>-cp-<id>  etcd on 198.51.100.2 ─┐
 *   <p>-n1-<id>  eth0 198.51.100.11 ───┤ bridge br0 in <p>-ul-<id> (the underlay)
 *   <p>-n2-<id>  eth0 198.51.100.12 ───┘
 *   pods: <p>-n1p1-<id> ... made by the real CNI binary inside their node namespace
 * ```
 *
 * Each node runs `weftd` via `nsenter --net=` with its own subnet file, IPAM dir and log under
 * `workDir/<node>/`. Everything is recorded in `workDir/state.json`, so another process (the lab
 * CLI's `down`) can tear it down with {@link destroyTopology}. Teardown is idempotent.
 */
import { execFile, execFileSync, spawn } from 'node:child_process';
import { closeSync, existsSync, mkdirSync, openSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { randomBytes } from 'node:crypto';
import { join, resolve } from 'node:path';
import { promisify } from 'node:util';
import { EtcdServer, killAndWait, makeTestPki, type TestPki } from './etcd.ts';
import { spawnApiServer } from './apiserver/process.ts';
import { ECHO_CLIENT, ECHO_SERVER } from './echo/index.ts';

/** One echo request's outcome: the reply line, or an error code, and how long it took. */
export interface EchoReply {
  reply?: string;
  err?: string;
  ms: number;
}

const execFileP = promisify(execFile);
const ROOT = resolve(import.meta.dirname, '..');

/** The lab's Service ClusterIP range (inside 198.18.0.0/15, apart from the pod network). */
/**
 * With the default pod network (198.18.0.0/16, /24 per node), the last subnet a lab node leases
 * in etcd mode (SubnetMax): 198.18.200.0/24 to 198.18.255.0/24 are left to the leases tests
 * write by hand (fake peers, invalid leases), which must never be a node's own.
 */
export const LAB_SUBNET_MAX = '198.18.199.0';
export const LAB_SERVICE_RANGE = '198.19.0.0/16';

/** The CNI network name of the lab's pods (their IPAM store is `<node dataDir>/<this>`). */
export const LAB_NETWORK_NAME = 'weft-lab';

export interface TopologyOptions {
  /** Directory for state, logs, subnet files, IPAM stores and etcd data (created). */
  workDir: string;
  /** Namespace name prefix; `wt` (what test.sh checks for leftovers) by default. */
  prefix?: string;
  /** Random suffix by default. */
  id?: string;
  /** First three octets of the underlay /24: `198.51.100` (default) or `203.0.113`. */
  underlay?: string;
  /** Pod network written to etcd's config; default 198.18.0.0/16 with /24 per node. */
  podNetwork?: string;
  subnetLen?: number;
  etcdPrefix?: string;
  /** Extra config keys merged into the network config (SubnetMin, Backend, ...). */
  networkConfig?: Record<string, unknown>;
  /** weftd flags added to every daemon (e.g. short --lease-ttl for tests). */
  weftdArgs?: string[];
  weftdBin?: string;
  weftBin?: string;
  /** Processes outlive the creating process (lab CLI). */
  detached?: boolean;
  /** Serve etcd over TLS with client certificates (throwaway PKI in workDir/pki). */
  etcdTls?: boolean;
  /**
   * `kube`: the lab API server (lab/apiserver) runs beside etcd in the control-plane namespace,
   * plays kube-controller-manager's node IPAM, and weftd runs with --kube-subnet-mgr (the lease
   * is the Node's podCIDR). `etcd` (default): weftd leases subnets in etcd.
   */
  mode?: 'etcd' | 'kube';
  /** Kubernetes mode: assign podCIDRs to new Nodes (default true; false leaves them unassigned). */
  allocateNodeCIDRs?: boolean;
}

export interface LabNode {
  name: string;
  index: number;
  netns: string;
  ip: string;
  dir: string;
  subnetFile: string;
  dataDir: string;
  logFile: string;
  /** 127.0.0.1:9333 inside the node namespace. */
  healthzAddr: string;
  pid?: number;
}

export interface LabPod {
  name: string;
  node: string;
  netns: string;
  containerId: string;
  /** Pod address without prefix length. */
  ip: string;
  result: unknown;
  /** The echo server (lab/echo) running in the pod, if one was started. */
  echoPid?: number;
}

export interface TopologyState {
  id: string;
  prefix: string;
  workDir: string;
  underlay: string;
  podNetwork: string;
  etcdPrefix: string;
  etcdNetns: string;
  underlayNetns: string;
  etcdEndpoint: string;
  /** Present when etcd serves TLS: CA and client certificate files for clients. */
  etcdTls?: TestPki;
  etcdPid?: number;
  mode: 'etcd' | 'kube';
  /** Kubernetes mode: the API server's URL, its pid, the kubeconfig and net-conf.json files. */
  apiServer?: { url: string; pid?: number; kubeconfig: string; netConf: string; logFile: string };
  nodes: LabNode[];
  pods: LabPod[];
}

function sh(cmd: string, args: string[]): string {
  return execFileSync(cmd, args, { encoding: 'utf8', stdio: ['ignore', 'pipe', 'pipe'] });
}

function ipn(ns: string, ...args: string[]): string {
  return sh('ip', ['-n', ns, ...args]);
}

/** A running lab cluster. */
export class Topology {
  readonly state: TopologyState;
  readonly etcd: EtcdServer;
  readonly #opts: TopologyOptions;

  private constructor(opts: TopologyOptions, state: TopologyState, etcd: EtcdServer) {
    this.#opts = opts;
    this.state = state;
    this.etcd = etcd;
  }

  /**
   * Builds the underlay and the control-plane namespace, starts etcd and stores the network
   * config. Nodes are added with {@link addNode}. On failure everything made so far is removed.
   */
  static async create(opts: TopologyOptions): Promise<Topology> {
    const prefix = opts.prefix ?? 'wt';
    const id = opts.id ?? randomBytes(3).toString('hex');
    const workDir = resolve(opts.workDir);
    mkdirSync(workDir, { recursive: true });
    // A new lab starts from an empty etcd (leases of an earlier lab would look like peers).
    rmSync(join(workDir, 'etcd'), { recursive: true, force: true });
    const underlay = opts.underlay ?? '198.51.100';
    const state: TopologyState = {
      id,
      prefix,
      workDir,
      underlay,
      podNetwork: opts.podNetwork ?? '198.18.0.0/16',
      etcdPrefix: opts.etcdPrefix ?? '/coreos.com/network',
      underlayNetns: `${prefix}-ul-${id}`,
      etcdNetns: `${prefix}-cp-${id}`,
      etcdEndpoint: `${opts.etcdTls ? 'https' : 'http'}://${underlay}.2:2379`,
      mode: opts.mode ?? 'etcd',
      nodes: [],
      pods: [],
    };
    if (opts.etcdTls) state.etcdTls = makeTestPki(join(workDir, 'pki'), `${underlay}.2`);
    const etcd = new EtcdServer({
      tls: state.etcdTls,
      netns: state.etcdNetns,
      ip: `${underlay}.2`,
      dataDir: join(workDir, 'etcd'),
      logFile: join(workDir, 'etcd.log'),
      detached: opts.detached,
    });
    const topo = new Topology(opts, state, etcd);
    try {
      topo.#save();
      sh('ip', ['netns', 'add', state.underlayNetns]);
      ipn(state.underlayNetns, 'link', 'set', 'lo', 'up');
      ipn(state.underlayNetns, 'link', 'add', 'br0', 'type', 'bridge');
      ipn(state.underlayNetns, 'link', 'set', 'br0', 'up');
      // The underlay's "router": nodes route what they have no route for here, as real nodes have
      // a default route (a Service IP no rule DNATs must get a routing decision, not ENETUNREACH).
      // The underlay namespace forwards nothing (ip_forward stays 0), so nothing leaves the lab.
      ipn(state.underlayNetns, 'addr', 'add', `${underlay}.1/24`, 'dev', 'br0');
      topo.#attach(state.etcdNetns, 'vcp', `${underlay}.2`);
      await etcd.start();
      state.etcdPid = etcd.pid;
      const config = {
        Network: state.podNetwork,
        SubnetLen: opts.subnetLen ?? 24,
        Backend: { Type: 'vxlan', VNI: 1, Port: 8472 },
        // Nodes lease at random in etcd mode: never where tests write leases (LAB_SUBNET_MAX).
        ...(state.mode !== 'kube' && state.podNetwork === '198.18.0.0/16' && (opts.subnetLen ?? 24) === 24 ? { SubnetMax: LAB_SUBNET_MAX } : {}),
        ...opts.networkConfig,
      };
      if (state.mode === 'kube') await topo.#startApiServer(config);
      else await etcd.put(`${state.etcdPrefix}/config`, JSON.stringify(config));
      topo.#save();
      return topo;
    } catch (err) {
      await topo.destroy();
      throw err;
    }
  }

  /** Creates namespace `ns`, wires its eth0 to the underlay bridge and gives it `ip`/24. */
  #attach(ns: string, hostEnd: string, ip: string): void {
    sh('ip', ['netns', 'add', ns]);
    ipn(ns, 'link', 'set', 'lo', 'up');
    ipn(this.state.underlayNetns, 'link', 'add', hostEnd, 'type', 'veth', 'peer', 'name', 'eth0', 'netns', ns);
    ipn(this.state.underlayNetns, 'link', 'set', hostEnd, 'master', 'br0', 'up');
    ipn(ns, 'addr', 'add', `${ip}/24`, 'dev', 'eth0');
    ipn(ns, 'link', 'set', 'eth0', 'up');
  }

  /**
   * Kubernetes mode: net-conf.json (what the DaemonSet's ConfigMap holds), then the API server
   * on etcd with node IPAM for the pod network. It listens on the control plane's underlay
   * address, so node namespaces reach it as a real cluster's nodes would.
   */
  async #startApiServer(config: { Network: string; SubnetLen: number }): Promise<void> {
    const s = this.state;
    const netConf = join(s.workDir, 'net-conf.json');
    // As kube-flannel.yml ships it: Network and Backend; the podCIDRs' size is the node IPAM's.
    const { SubnetLen: _mask, ...netConfJson } = config;
    writeFileSync(netConf, `${JSON.stringify(netConfJson, null, 2)}\n`);
    const kubeconfig = join(s.workDir, 'kubeconfig');
    const logFile = join(s.workDir, 'apiserver.log');
    const ipam = this.#opts.allocateNodeCIDRs ?? true;
    const api = await spawnApiServer({
      netns: s.etcdNetns,
      listen: `${s.underlay}.2:6443`,
      etcd: [s.etcdEndpoint],
      etcdTls: s.etcdTls ? { cafile: s.etcdTls.ca, certfile: s.etcdTls.clientCert, keyfile: s.etcdTls.clientKey } : undefined,
      serviceClusterIPRange: LAB_SERVICE_RANGE,
      kubeconfig,
      logFile,
      detached: this.#opts.detached,
      args: ipam ? ['--allocate-node-cidrs', '--cluster-cidr', config.Network, '--node-cidr-mask-size', String(config.SubnetLen)] : [],
    });
    s.apiServer = { url: api.url, pid: api.pid, kubeconfig, netConf, logFile };
  }

  /**
   * A request to the lab API server, made with curl from inside the control-plane namespace
   * (the root namespace has no route to the underlay). Returns the parsed JSON body.
   */
  async api(method: string, path: string, body?: unknown, opts: { contentType?: string; allow404?: boolean } = {}): Promise<any> {
    const api = this.state.apiServer;
    if (!api) throw new Error('lab: not in Kubernetes mode (no API server)');
    const args = [`--net=/run/netns/${this.state.etcdNetns}`, '--', 'curl', '-sS', '-m', '10', '-X', method, '-w', '\n%{http_code}', '-H', 'accept: application/json'];
    if (body !== undefined) args.push('-H', `content-type: ${opts.contentType ?? 'application/json'}`, '--data-binary', '@-');
    const p = execFileP('nsenter', [...args, `${api.url}${path}`], { encoding: 'utf8', timeout: 15_000 });
    // curl may exit without reading stdin (no body to send, or a quick failure): the pipe's EPIPE
    // would otherwise be an uncaught error; curl's exit status and output say what happened.
    p.child.stdin?.on('error', () => undefined);
    if (body === undefined) p.child.stdin?.end();
    else p.child.stdin?.end(JSON.stringify(body));
    const { stdout } = await p;
    const cut = stdout.lastIndexOf('\n');
    const code = Number(stdout.slice(cut + 1));
    const text = stdout.slice(0, cut);
    if (code === 404 && opts.allow404) return undefined;
    if (code < 200 || code >= 300) throw new Error(`lab API ${method} ${path}: HTTP ${code}: ${text.slice(0, 500)}`);
    return text ? JSON.parse(text) : undefined;
  }

  /** Kubernetes mode: registers node `name` as kubelet would (the Node, then its addresses). */
  async #registerNode(node: LabNode): Promise<void> {
    await this.api('POST', '/api/v1/nodes', {
      apiVersion: 'v1',
      kind: 'Node',
      metadata: { name: node.name, labels: { 'kubernetes.io/hostname': node.name, 'kubernetes.io/os': 'linux' } },
    });
    await this.api(
      'PATCH',
      `/api/v1/nodes/${node.name}/status`,
      {
        status: {
          addresses: [
            { type: 'InternalIP', address: node.ip },
            { type: 'Hostname', address: node.name },
          ],
        },
      },
      { contentType: 'application/strategic-merge-patch+json' },
    );
  }

  /** Kubernetes mode: the Node object (undefined once deleted). */
  getNode(name: string): Promise<any> {
    return this.api('GET', `/api/v1/nodes/${name}`, undefined, { allow404: true });
  }

  /** Kubernetes mode: waits until the node IPAM (or a test) gave `name` a podCIDR. */
  async waitPodCIDR(name: string, timeoutMs = 10_000): Promise<string> {
    const end = Date.now() + timeoutMs;
    for (;;) {
      const cidr = (await this.getNode(name))?.spec?.podCIDR;
      if (cidr) return cidr;
      if (Date.now() > end) throw new Error(`lab: node "${name}" got no podCIDR within ${timeoutMs} ms`);
      await new Promise((r) => setTimeout(r, 100));
    }
  }

  #save(): void {
    writeFileSync(join(this.state.workDir, 'state.json'), `${JSON.stringify(this.state, null, 2)}\n`);
  }

  node(name: string): LabNode {
    const n = this.state.nodes.find((x) => x.name === name);
    if (!n) throw new Error(`lab node "${name}" not found`);
    return n;
  }

  /** Adds node `n<k>` (namespace, underlay link, address). Starts weftd unless `start: false`. */
  async addNode(opts: { start?: boolean; args?: string[] } = {}): Promise<LabNode> {
    const index = this.state.nodes.reduce((m, n) => Math.max(m, n.index), 0) + 1;
    if (index > 200) throw new Error('lab: too many nodes');
    const name = `n${index}`;
    const dir = join(this.state.workDir, name);
    mkdirSync(dir, { recursive: true });
    const node: LabNode = {
      name,
      index,
      netns: `${this.state.prefix}-${name}-${this.state.id}`,
      ip: `${this.state.underlay}.${10 + index}`,
      dir,
      subnetFile: join(dir, 'subnet.env'),
      dataDir: join(dir, 'ipam'),
      logFile: join(dir, 'weftd.log'),
      healthzAddr: '127.0.0.1:9333',
    };
    this.state.nodes.push(node);
    this.#save();
    this.#attach(node.netns, `v${name}`, node.ip);
    ipn(node.netns, 'route', 'add', 'default', 'via', `${this.state.underlay}.1`, 'dev', 'eth0');
    if (this.state.mode === 'kube') await this.#registerNode(node);
    if (opts.start ?? true) await this.startDaemon(name, { args: opts.args });
    return node;
  }

  /** The weftd command line for a node (without extra args). */
  weftdArgs(node: LabNode): string[] {
    const api = this.state.apiServer;
    const source =
      this.state.mode === 'kube' && api
        ? ['--kube-subnet-mgr', '--kubeconfig', api.kubeconfig, '--net-config-path', api.netConf]
        : ['--etcd-endpoints', this.state.etcdEndpoint, '--etcd-prefix', this.state.etcdPrefix];
    return [
      ...source,
      '--iface',
      'eth0',
      '--subnet-file',
      node.subnetFile,
      '--cni-data-dir',
      node.dataDir,
      '--healthz-addr',
      node.healthzAddr,
      '--node-name',
      node.name,
      '--ip-masq',
      '--log-level',
      'debug',
      ...(this.state.etcdTls && this.state.mode !== 'kube'
        ? ['--etcd-cafile', this.state.etcdTls.ca, '--etcd-certfile', this.state.etcdTls.clientCert, '--etcd-keyfile', this.state.etcdTls.clientKey]
        : []),
      ...(this.#opts.weftdArgs ?? []),
    ];
  }

  /**
   * Starts weftd in the node's namespace (log appended to node.logFile). With `wait` (default)
   * resolves once /readyz answers 200.
   */
  async startDaemon(name: string, opts: { args?: string[]; wait?: boolean; timeoutMs?: number } = {}): Promise<number> {
    const node = this.node(name);
    if (node.pid && isAlive(node.pid)) throw new Error(`weftd on "${name}" is already running (pid ${node.pid})`);
    const bin = this.#opts.weftdBin ?? join(ROOT, 'dist', 'bin', 'weftd');
    const fd = openSync(node.logFile, 'a');
    const child = spawn('nsenter', [`--net=/run/netns/${node.netns}`, '--', bin, ...this.weftdArgs(node), ...(opts.args ?? [])], {
      stdio: ['ignore', fd, fd],
      detached: this.#opts.detached ?? false,
      // Each node serves the CNI fast path on its own socket, not the host's /run/weft/cni.sock.
      env: { ...process.env, WEFTD_CNI_SOCKET: process.env.WEFTD_CNI_SOCKET ?? join(node.dir, 'cni.sock') },
    });
    closeSync(fd);
    if (this.#opts.detached) child.unref();
    node.pid = child.pid;
    this.#save();
    if (opts.wait ?? true) await this.waitReady(name, opts.timeoutMs);
    return node.pid!;
  }

  /** Stops a node's weftd and waits for it to exit. */
  async stopDaemon(name: string, signal: NodeJS.Signals = 'SIGTERM'): Promise<void> {
    const node = this.node(name);
    if (node.pid) await killAndWait(node.pid, signal);
    node.pid = undefined;
    this.#save();
  }

  /** GET a daemon endpoint (/healthz, /readyz, /metrics) from inside the node namespace. */
  async http(name: string, path: string): Promise<{ status: number; body: string }> {
    const node = this.node(name);
    const { stdout } = await execFileP('nsenter', [`--net=/run/netns/${node.netns}`, '--', 'curl', '-s', '-m', '3', '-w', '\n%{http_code}', `http://${node.healthzAddr}${path}`], {
      encoding: 'utf8',
      timeout: 10_000,
    }).catch(() => ({ stdout: '\n0' }));
    const cut = stdout.lastIndexOf('\n');
    return { status: Number(stdout.slice(cut + 1)), body: stdout.slice(0, cut) };
  }

  async waitReady(name: string, timeoutMs = 30_000): Promise<void> {
    const node = this.node(name);
    const end = Date.now() + timeoutMs;
    while (Date.now() < end) {
      if (node.pid && !isAlive(node.pid)) throw new Error(`weftd on "${name}" exited; see ${node.logFile}:\n${tail(node.logFile)}`);
      if ((await this.http(name, '/readyz')).status === 200) return;
      await new Promise((r) => setTimeout(r, 200));
    }
    throw new Error(`weftd on "${name}" not ready after ${timeoutMs} ms; see ${node.logFile}:\n${tail(node.logFile)}`);
  }

  /** The node's FLANNEL_* subnet file as a map (empty when absent). */
  subnetEnv(name: string): Record<string, string> {
    const file = this.node(name).subnetFile;
    if (!existsSync(file)) return {};
    const out: Record<string, string> = {};
    for (const line of readFileSync(file, 'utf8').split('\n')) {
      const m = /^(\w+)=(.*)$/.exec(line);
      if (m) out[m[1]] = m[2];
    }
    return out;
  }

  #cniConf(node: LabNode): string {
    return JSON.stringify({
      cniVersion: '1.0.0',
      name: LAB_NETWORK_NAME,
      type: 'weft',
      bridge: 'cni0',
      subnetFile: node.subnetFile,
      dataDir: node.dataDir,
    });
  }

  async #cni(node: LabNode, req: { command: 'ADD' | 'DEL'; pod: { netns: string; containerId: string } }): Promise<string> {
    const { command, pod } = req;
    const bin = this.#opts.weftBin ?? join(ROOT, 'dist', 'bin', 'weft');
    const p = execFileP('nsenter', [`--net=/run/netns/${node.netns}`, '--', bin], {
      encoding: 'utf8',
      timeout: 30_000,
      env: {
        PATH: process.env.PATH,
        CNI_COMMAND: command,
        CNI_CONTAINERID: pod.containerId,
        CNI_NETNS: `/run/netns/${pod.netns}`,
        CNI_IFNAME: 'eth0',
        CNI_PATH: '/usr/lib/cni',
      },
    });
    p.child.stdin?.end(this.#cniConf(node));
    try {
      return (await p).stdout;
    } catch (err) {
      const e = err as { stdout?: string; stderr?: string };
      throw new Error(`weft CNI ${command} on "${node.name}" failed: ${e.stdout ?? ''} ${e.stderr ?? ''}`.trim(), { cause: err });
    }
  }

  /** Creates a pod namespace on `nodeName` and runs the real CNI binary's ADD for it. */
  async addPod(nodeName: string): Promise<LabPod> {
    const node = this.node(nodeName);
    const k = this.state.pods.filter((p) => p.node === nodeName).length + 1;
    const name = `${nodeName}p${k}`;
    const pod: LabPod = { name, node: nodeName, netns: `${this.state.prefix}-${name}-${this.state.id}`, containerId: `lab-${this.state.id}-${name}`, ip: '', result: null };
    sh('ip', ['netns', 'add', pod.netns]);
    this.state.pods.push(pod);
    this.#save();
    ipn(pod.netns, 'link', 'set', 'lo', 'up');
    const out = await this.#cni(node, { command: 'ADD', pod });
    const result = JSON.parse(out) as { ips?: Array<{ address: string }> };
    const addr = result.ips?.[0]?.address;
    if (!addr) throw new Error(`weft CNI ADD on "${nodeName}" returned no address: ${out}`);
    pod.ip = addr.split('/')[0];
    pod.result = result;
    this.#save();
    return pod;
  }

  /**
   * Starts the TCP + UDP echo server (lab/echo/server.cjs) in a pod; resolves once it listens.
   * It answers every connection or datagram with "<pod name> <client address>".
   */
  async startEcho(podName: string, ports: { tcp: number[]; udp: number[] }): Promise<number> {
    const pod = this.state.pods.find((p) => p.name === podName);
    if (!pod) throw new Error(`lab pod "${podName}" not found`);
    const child = spawn('nsenter', [`--net=/run/netns/${pod.netns}`, '--', process.execPath, ECHO_SERVER, pod.name, ports.tcp.join(','), ports.udp.join(',')], {
      stdio: ['ignore', 'pipe', 'ignore'],
      detached: this.#opts.detached ?? false,
    });
    await new Promise<void>((resolve, reject) => {
      let out = '';
      const timer = setTimeout(() => reject(new Error(`echo server in "${pod.name}" did not start`)), 15_000);
      child.stdout!.on('data', (d: Buffer) => {
        out += d;
        if (!out.includes('ready')) return;
        clearTimeout(timer);
        resolve();
      });
      child.once('exit', (code) => {
        clearTimeout(timer);
        reject(new Error(`echo server in "${pod.name}" exited (${code})`));
      });
    });
    child.stdout!.destroy();
    if (this.#opts.detached) child.unref();
    pod.echoPid = child.pid;
    this.#save();
    return child.pid!;
  }

  /**
   * Makes `count` echo requests (lab/echo/client.cjs) from namespace `netns`, one after another:
   * each reply is "<endpoint pod> <source address it saw>", or an error code (ECONNREFUSED, TIMEOUT).
   */
  async echoRequest(netns: string, o: { host: string; port: number; proto?: 'tcp' | 'udp'; count?: number; timeoutMs?: number }): Promise<EchoReply[]> {
    const req = { proto: 'tcp', count: 1, timeoutMs: 2000, ...o };
    const { stdout } = await execFileP('nsenter', [`--net=/run/netns/${netns}`, '--', process.execPath, ECHO_CLIENT, JSON.stringify(req)], {
      encoding: 'utf8',
      timeout: 30_000 + req.count * req.timeoutMs,
      maxBuffer: 16 << 20,
    });
    return JSON.parse(stdout) as EchoReply[];
  }

  /** Runs CNI DEL for a pod and deletes its namespace. */
  async removePod(name: string): Promise<void> {
    const pod = this.state.pods.find((p) => p.name === name);
    if (!pod) return;
    if (pod.echoPid && isAlive(pod.echoPid)) await killAndWait(pod.echoPid, 'SIGKILL');
    await this.#cni(this.node(pod.node), { command: 'DEL', pod }).catch(() => undefined);
    try {
      sh('ip', ['netns', 'del', pod.netns]);
    } catch {
      /* already gone */
    }
    this.state.pods = this.state.pods.filter((p) => p !== pod);
    this.#save();
  }

  /** Stops etcd (SIGTERM by default) and waits; the data dir and leases are kept. */
  async stopEtcd(signal: NodeJS.Signals = 'SIGTERM'): Promise<void> {
    await this.etcd.stop(signal);
    this.state.etcdPid = undefined;
    this.#save();
  }

  /** Starts etcd again on the same data dir and waits until healthy. */
  async startEtcd(): Promise<void> {
    await this.etcd.start();
    this.state.etcdPid = this.etcd.pid;
    this.#save();
  }

  /** Kubernetes mode: stops the API server (SIGTERM by default); etcd keeps its objects. */
  async stopApiServer(signal: NodeJS.Signals = 'SIGTERM'): Promise<void> {
    const api = this.state.apiServer;
    if (api?.pid && isAlive(api.pid)) await killAndWait(api.pid, signal);
    if (api) api.pid = undefined;
    this.#save();
  }

  /** Kubernetes mode: starts the API server again on the same etcd. */
  async startApiServer(): Promise<void> {
    const api = this.state.apiServer;
    if (!api) throw new Error('lab: not in Kubernetes mode');
    const config = JSON.parse(readFileSync(api.netConf, 'utf8')) as { Network: string; SubnetLen?: number };
    // net-conf.json carries no SubnetLen (as kube-flannel ships it): the node IPAM's size is the lab's.
    await this.#startApiServer({ ...config, SubnetLen: config.SubnetLen ?? this.#opts.subnetLen ?? 24 });
    this.#save();
  }

  /** Stops every process and deletes every namespace; logs stay in the work dir. */
  async destroy(): Promise<void> {
    this.state.etcdPid = this.etcd.pid;
    await destroyTopology(this.state);
  }
}

function isAlive(pid: number): boolean {
  try {
    process.kill(pid, 0);
    const stat = readFileSync(`/proc/${pid}/stat`, 'utf8');
    return !/ Z /.test(stat.slice(stat.lastIndexOf(')')));
  } catch {
    return false;
  }
}

function tail(file: string, lines = 20): string {
  try {
    return readFileSync(file, 'utf8').trimEnd().split('\n').slice(-lines).join('\n');
  } catch {
    return '';
  }
}

/**
 * Last-resort synchronous teardown (for a `process.on('exit')` hook when a test runner dies):
 * SIGKILL every recorded process and delete every recorded namespace.
 */
export function destroyTopologySync(state: TopologyState): void {
  for (const pid of [...state.pods.map((p) => p.echoPid), ...state.nodes.map((n) => n.pid), state.apiServer?.pid, state.etcdPid]) {
    if (pid && isAlive(pid)) {
      try {
        process.kill(pid, 'SIGKILL');
      } catch {
        /* gone */
      }
    }
  }
  for (const ns of [...state.pods.map((p) => p.netns), ...state.nodes.map((n) => n.netns), state.etcdNetns, state.underlayNetns]) {
    try {
      sh('ip', ['netns', 'del', ns]);
    } catch {
      /* already gone */
    }
  }
}

/**
 * Tears down a topology from its state (object or `workDir` holding state.json): kills weftd
 * and etcd, deletes pod, node, control-plane and underlay namespaces. Idempotent; keeps the work
 * dir's logs unless `removeWorkDir`.
 */
export async function destroyTopology(stateOrDir: TopologyState | string, opts: { removeWorkDir?: boolean } = {}): Promise<void> {
  let state: TopologyState;
  if (typeof stateOrDir === 'string') {
    const file = join(stateOrDir, 'state.json');
    if (!existsSync(file)) return;
    state = JSON.parse(readFileSync(file, 'utf8')) as TopologyState;
  } else {
    state = stateOrDir;
  }
  await Promise.all([...state.pods.map((p) => p.echoPid), ...state.nodes.map((n) => n.pid)].map((pid) => (pid && isAlive(pid) ? killAndWait(pid, 'SIGKILL') : undefined)));
  if (state.apiServer?.pid && isAlive(state.apiServer.pid)) await killAndWait(state.apiServer.pid, 'SIGKILL');
  if (state.apiServer) state.apiServer.pid = undefined;
  if (state.etcdPid && isAlive(state.etcdPid)) await killAndWait(state.etcdPid, 'SIGKILL');
  const names = [...state.pods.map((p) => p.netns), ...state.nodes.map((n) => n.netns), state.etcdNetns, state.underlayNetns];
  for (const ns of names) {
    try {
      sh('ip', ['netns', 'del', ns]);
    } catch {
      /* already gone */
    }
  }
  for (const n of state.nodes) n.pid = undefined;
  state.etcdPid = undefined;
  if (opts.removeWorkDir) rmSync(state.workDir, { recursive: true, force: true });
  else if (existsSync(state.workDir)) writeFileSync(join(state.workDir, 'state.json'), `${JSON.stringify({ ...state, nodes: [], pods: [] }, null, 2)}\n`);
}

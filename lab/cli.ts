/**
 * The lab: a whole weft cluster on this machine, in network namespaces (lab/topology.ts builds
 * it). `scripts/lab.sh` installs what is missing, builds, and runs this file:
 *
 *   node lab/cli.ts up [--nodes N] [--pods N] [--etcd]
 *                                               underlay, control plane (etcd + the lab API
 *                                               server), N nodes running weftd, pods; --etcd: weftd
 *                                               leases subnets in etcd instead of Kubernetes mode
 *   node lab/cli.ts status                      what is running
 *   node lab/cli.ts exec <target> <cmd...>      run a command in a node, pod, underlay or etcd
 *   node lab/cli.ts down                        remove everything the lab made (safe twice)
 *
 * Common flags: --name (default "lab"), --state-dir (default /run/weft-lab), --prefix (namespace
 * prefix, default "weft"), --underlay (198.51.100 or 203.0.113). Namespaces are named
 * `<prefix>-<role>-<name>`, e.g. weft-n1-lab, weft-n1p2-lab; state, logs and subnet files live in
 * `<state-dir>/<name>/`.
 */
import { execFile, spawn } from 'node:child_process';
import { existsSync, readdirSync, readFileSync, rmdirSync, rmSync } from 'node:fs';
import { join, resolve } from 'node:path';
import { parseArgs } from 'node:util';
import { destroyTopology, LAB_NETWORK_NAME, Topology, type LabNode, type LabPod, type TopologyState } from './topology.ts';

const ROOT = resolve(import.meta.dirname, '..');
const BIN = join(ROOT, 'dist', 'bin');
const started = Date.now();

class UsageError extends Error {}

interface LabArgs {
  name: string;
  stateDir: string;
  prefix: string;
  underlay: string;
  nodes: number;
  pods: number;
  /** weftd's mode: Kubernetes (the default, as the install) or etcd (`--etcd`). */
  mode: 'kube' | 'etcd';
}

function parse(argv: string[]): { cmd: string; rest: string[]; args: LabArgs } {
  const cmd = argv[0] ?? '';
  // exec: lab flags come first, then the target; the command after it passes through untouched.
  let end = argv.length;
  if (cmd === 'exec') {
    let i = 1;
    while (i < argv.length && argv[i]!.startsWith('--')) i += argv[i]!.includes('=') ? 1 : 2;
    end = Math.min(i + 1, argv.length);
  }
  const own = argv.slice(0, end);
  let parsed;
  try {
    parsed = parseArgs({
      args: own.slice(1),
      allowPositionals: true,
      options: {
        name: { type: 'string', default: 'lab' },
        'state-dir': { type: 'string', default: '/run/weft-lab' },
        prefix: { type: 'string', default: 'weft' },
        underlay: { type: 'string', default: '198.51.100' },
        nodes: { type: 'string', default: '3' },
        pods: { type: 'string', default: '2' },
        etcd: { type: 'boolean', default: false },
      },
    });
  } catch (err) {
    throw new UsageError((err as Error).message);
  }
  const v = parsed.values;
  if (!/^[a-z0-9]{1,8}$/.test(v.name!)) throw new UsageError(`--name must be 1-8 lower-case letters or digits, got "${v.name}"`);
  if (!/^[a-z]{1,6}$/.test(v.prefix!)) throw new UsageError(`--prefix must be 1-6 lower-case letters, got "${v.prefix}"`);
  if (!['198.51.100', '203.0.113'].includes(v.underlay!)) {
    throw new UsageError(`--underlay must be 198.51.100 or 203.0.113 (documentation ranges only), got "${v.underlay}"`);
  }
  const int = (s: string, flag: string, min: number, max: number) => {
    if (!/^\d+$/.test(s) || Number(s) < min || Number(s) > max) throw new UsageError(`--${flag} must be a number from ${min} to ${max}, got "${s}"`);
    return Number(s);
  };
  const rest = cmd === 'exec' ? [...parsed.positionals, ...argv.slice(own.length)] : parsed.positionals;
  return {
    cmd,
    rest,
    args: {
      name: v.name!,
      stateDir: resolve(v['state-dir']!),
      prefix: v.prefix!,
      underlay: v.underlay!,
      nodes: int(v.nodes!, 'nodes', 1, 20),
      pods: int(v.pods!, 'pods', 0, 10),
      mode: v.etcd ? 'etcd' : 'kube',
    },
  };
}

function step(msg: string): void {
  const t = ((Date.now() - started) / 1000).toFixed(1).padStart(5);
  process.stdout.write(`[${t}s] ${msg}\n`);
}

function workDir(a: LabArgs): string {
  return join(a.stateDir, a.name);
}

function readState(a: LabArgs): TopologyState | undefined {
  const file = join(workDir(a), 'state.json');
  if (!existsSync(file)) return undefined;
  return JSON.parse(readFileSync(file, 'utf8')) as TopologyState;
}

function netnsExists(name: string): boolean {
  return existsSync(`/run/netns/${name}`);
}

function alive(pid: number | undefined): boolean {
  if (!pid) return false;
  try {
    process.kill(pid, 0);
    return true;
  } catch {
    return false;
  }
}

/** Runs a command in a namespace; resolves with its output and exit code (never rejects). */
function inNs(netns: string, cmd: string, args: string[], env: NodeJS.ProcessEnv = process.env): Promise<{ code: number; out: string }> {
  return new Promise((res) => {
    execFile('nsenter', [`--net=/run/netns/${netns}`, '--', cmd, ...args], { encoding: 'utf8', env, timeout: 60_000 }, (err, stdout, stderr) => {
      res({ code: err ? (typeof err.code === 'number' ? err.code : 1) : 0, out: stdout + stderr });
    });
  });
}

/**
 * Environment for commands run in the lab: weftctl on PATH, pointed at the lab's control plane
 * (the API server through KUBECONFIG in Kubernetes mode, so kubectl works too; etcd otherwise)
 * and, on nodes and pods, at the node's subnet file.
 */
function nodeEnv(state: TopologyState, node?: LabNode): NodeJS.ProcessEnv {
  const api = state.apiServer;
  return {
    ...process.env,
    PATH: `${BIN}:${process.env.PATH ?? '/usr/sbin:/usr/bin:/sbin:/bin'}`,
    ...(state.mode === 'kube' && api
      ? { KUBECONFIG: api.kubeconfig, WEFTD_KUBE_SUBNET_MGR: 'true', WEFTD_NET_CONFIG_PATH: api.netConf }
      : { WEFTD_ETCD_ENDPOINTS: state.etcdEndpoint, WEFTD_ETCD_PREFIX: state.etcdPrefix }),
    ...(node ? { WEFTD_SUBNET_FILE: node.subnetFile } : {}),
  };
}

async function pingMatrix(pods: LabPod[]): Promise<{ text: string; ok: number; total: number }> {
  const pairs = pods.flatMap((a) => pods.filter((b) => b !== a).map((b) => [a, b] as const));
  const results = new Map<string, boolean>();
  await Promise.all(
    pairs.map(async ([a, b]) => {
      let ok = false;
      for (let attempt = 0; attempt < 3 && !ok; attempt++) ok = (await inNs(a.netns, 'ping', ['-c', '1', '-W', '2', b.ip])).code === 0;
      results.set(`${a.name}>${b.name}`, ok);
    }),
  );
  const w = Math.max(4, ...pods.map((p) => p.name.length));
  const head = `${'from\\to'.padEnd(w + 2)}${pods.map((p) => p.name.padStart(w + 2)).join('')}`;
  const rows = pods.map((a) => `${a.name.padEnd(w + 2)}${pods.map((b) => (a === b ? '-' : results.get(`${a.name}>${b.name}`) ? 'ok' : 'FAIL').padStart(w + 2)).join('')}`);
  const ok = [...results.values()].filter(Boolean).length;
  return { text: [head, ...rows].join('\n'), ok, total: pairs.length };
}

async function up(a: LabArgs): Promise<number> {
  const existing = readState(a);
  if (existing && [existing.underlayNetns, ...existing.nodes.map((n) => n.netns)].some(netnsExists)) {
    process.stderr.write(`lab "${a.name}" is already up (state in ${workDir(a)}); see "./scripts/lab.sh status" or run "./scripts/lab.sh down" first\n`);
    return 1;
  }
  if (existing) await destroyTopology(workDir(a), { removeWorkDir: true });
  for (const bin of ['weft', 'weftd', 'weftctl']) {
    if (!existsSync(join(BIN, bin))) throw new Error(`${join(BIN, bin)} is missing: run "node scripts/build.ts" (scripts/lab.sh does)`);
  }

  const kube = a.mode === 'kube';
  step(`creating lab "${a.name}": underlay ${a.underlay}.0/24, ${kube ? 'etcd + API server' : 'etcd'}, ${a.nodes} node(s) with ${a.pods} pod(s) each, weftd in ${kube ? 'Kubernetes' : 'etcd'} mode`);
  let topo: Topology | undefined;
  const abort = () => {
    process.stderr.write('\ninterrupted: tearing the lab down\n');
    void destroyTopology(workDir(a), { removeWorkDir: true }).finally(() => process.exit(130));
  };
  process.once('SIGINT', abort);
  process.once('SIGTERM', abort);
  try {
    // Kubernetes mode runs as the install does: weftd is the Service proxy too (no kube-proxy).
    const weftdArgs = kube ? ['--proxy'] : [];
    topo = await Topology.create({ workDir: workDir(a), prefix: a.prefix, id: a.name, underlay: a.underlay, detached: true, mode: a.mode, weftdArgs });
    const s = topo.state;
    step(`underlay bridge br0 in ${s.underlayNetns}; etcd ready at ${s.etcdEndpoint} (in ${s.etcdNetns}); pod network ${s.podNetwork}`);
    if (s.apiServer) step(`API server ready at ${s.apiServer.url} (in ${s.etcdNetns}), assigning node podCIDRs from ${s.podNetwork}; kubeconfig ${s.apiServer.kubeconfig}`);
    for (let i = 0; i < a.nodes; i++) {
      const node = await topo.addNode();
      const env = topo.subnetEnv(node.name);
      let kubeFacts = '';
      if (kube) {
        const obj = await topo.getNode(node.name);
        const cond = (obj?.status?.conditions ?? []).find((c: { type: string }) => c.type === 'NetworkUnavailable');
        kubeFacts = `, podCIDR ${obj?.spec?.podCIDR ?? '?'}, NetworkUnavailable=${cond?.status ?? '?'} (${cond?.reason ?? 'unset'})`;
      }
      step(`node ${node.name} ${node.ip} (${node.netns}): weftd ready, subnet ${env.FLANNEL_SUBNET ?? '?'}, MTU ${env.FLANNEL_MTU ?? '?'}${kubeFacts}`);
    }
    for (const node of s.nodes) {
      for (let k = 0; k < a.pods; k++) {
        const pod = await topo.addPod(node.name);
        step(`pod ${pod.name} on ${node.name} (${pod.netns}): ${pod.ip} via the weft CNI plugin`);
      }
    }
  } catch (err) {
    process.stderr.write(`lab up failed: ${(err as Error).message}\n`);
    await destroyTopology(workDir(a));
    process.stderr.write(`everything the lab made was removed; logs are kept in ${workDir(a)}\n`);
    return 1;
  } finally {
    process.removeListener('SIGINT', abort);
    process.removeListener('SIGTERM', abort);
  }
  const s = topo.state;

  step('pinging every pod from every pod');
  const matrix = await pingMatrix(s.pods);
  process.stdout.write(`\n${matrix.text}\n${matrix.ok}/${matrix.total} pings ok\n\n`);

  const services = kube ? await serviceDemo(topo) : { ok: true, text: '' };
  if (services.text) process.stdout.write(services.text);

  step('weftctl get nodes (run on n1)');
  const n1 = s.nodes[0]!;
  const get = await inNs(n1.netns, join(BIN, 'weftctl'), ['get', 'nodes'], nodeEnv(s, n1));
  process.stdout.write(`\n${get.out}\n`);
  let consistent = 0;
  for (const node of s.nodes) {
    const check = await inNs(node.netns, join(BIN, 'weftctl'), ['check'], nodeEnv(s, node));
    if (check.code === 0) consistent++;
    else process.stdout.write(`weftctl check on ${node.name}:\n${check.out}\n`);
  }
  step(`weftctl check: ${consistent}/${s.nodes.length} node(s) consistent with ${kube ? 'the Node annotations' : 'etcd'}`);

  const pod = s.pods[0];
  const other = s.pods.find((p) => p.node !== pod?.node) ?? s.pods[1];
  const opt = [a.name !== 'lab' ? ` --name ${a.name}` : '', a.prefix !== 'weft' ? ` --prefix ${a.prefix}` : '', a.stateDir !== '/run/weft-lab' ? ` --state-dir ${a.stateDir}` : ''].join('');
  const lab = `./scripts/lab.sh`;
  process.stdout.write(
    `${[
      `\nThe lab is up. Explore it:`,
      pod && other ? `  ${lab} exec${opt} ${pod.name} ping -c 3 ${other.ip}      # a command in a pod` : '',
      `  ${lab} exec${opt} n1 ip -d link show flannel.1      # a command on a node`,
      `  ${lab} exec${opt} n1 ip route; ${lab} exec${opt} n1 bridge fdb show dev flannel.1`,
      `  ${lab} exec${opt} n1 weftctl get nodes -o wide       # weftctl on a node (${kube ? 'KUBECONFIG' : 'etcd'} preset)`,
      kube ? `  ${lab} exec${opt} n1 kubectl get nodes -o wide       # kubectl against the lab API server` : '',
      `  ${lab} exec${opt} n1 weftctl check                   # kernel state vs ${kube ? 'the Node annotations' : 'etcd'}`,
      `  ${lab} exec${opt} underlay tcpdump -ni br0 udp port 8472   # capture VXLAN on the underlay`,
      `  ${lab} status${opt}`,
      `  ${lab} down${opt}                                    # remove everything`,
      `Logs: ${workDir(a)}/<node>/weftd.log, ${workDir(a)}/etcd.log${kube ? `, ${workDir(a)}/apiserver.log` : ''}`,
      '',
    ]
      .filter((l) => l !== '')
      .join('\n')}\n`,
  );
  return matrix.ok === matrix.total && consistent === s.nodes.length && services.ok ? 0 : 1;
}

/**
 * Kubernetes mode's Service walk-through: echo servers (TCP 8080, UDP 5353) in the first pod of
 * the first two nodes, a Service `default/echo` (ports 80/TCP, 53/UDP) and its EndpointSlice
 * through the API server, then every pod calls the ClusterIP over both protocols, and one
 * `weftctl trace` shows the walk from a pod to the ClusterIP.
 */
async function serviceDemo(topo: Topology): Promise<{ ok: boolean; text: string }> {
  const s = topo.state;
  const backends = s.nodes
    .slice(0, 2)
    .map((n) => s.pods.find((p) => p.node === n.name))
    .filter((p): p is LabPod => Boolean(p));
  if (!backends.length) return { ok: true, text: '' };
  for (const p of backends) await topo.startEcho(p.name, { tcp: [8080], udp: [5353] });
  const svc = await topo.api('POST', '/api/v1/namespaces/default/services', {
    apiVersion: 'v1',
    kind: 'Service',
    metadata: { name: 'echo', namespace: 'default' },
    spec: {
      selector: { app: 'echo' },
      ports: [
        { name: 'tcp', port: 80, targetPort: 8080, protocol: 'TCP' },
        { name: 'udp', port: 53, targetPort: 5353, protocol: 'UDP' },
      ],
    },
  });
  await topo.api('POST', '/apis/discovery.k8s.io/v1/namespaces/default/endpointslices', {
    apiVersion: 'discovery.k8s.io/v1',
    kind: 'EndpointSlice',
    metadata: { name: 'echo-lab', namespace: 'default', labels: { 'kubernetes.io/service-name': 'echo' } },
    addressType: 'IPv4',
    endpoints: backends.map((p) => ({ addresses: [p.ip], nodeName: p.node, conditions: { ready: true } })),
    ports: [
      { name: 'tcp', port: 8080, protocol: 'TCP' },
      { name: 'udp', port: 5353, protocol: 'UDP' },
    ],
  });
  const ip: string = svc.spec.clusterIP;
  step(`Service default/echo: ClusterIP ${ip}, ports 80/TCP and 53/UDP, endpoints ${backends.map((p) => `${p.name} ${p.ip}`).join(', ')}`);
  // The proxies program the Service within moments; give them up to 10 s.
  const first = s.pods[0]!;
  for (let i = 0; i < 100; i++) {
    if ((await topo.echoRequest(first.netns, { host: ip, port: 80, timeoutMs: 500 }))[0]?.reply) break;
    await new Promise((r) => setTimeout(r, 100));
  }
  const lines: string[] = [];
  let ok = 0;
  for (const pod of s.pods) {
    const [tcp] = await topo.echoRequest(pod.netns, { host: ip, port: 80 });
    const [udp] = await topo.echoRequest(pod.netns, { host: ip, port: 53, proto: 'udp' });
    const fine = Boolean(tcp?.reply && udp?.reply);
    if (fine) ok++;
    const who = (r: typeof tcp) => r?.reply?.split(' ')[0] ?? r?.err ?? '?';
    lines.push(`  ${pod.name.padEnd(6)} -> ${ip}:80/tcp answered by ${who(tcp)}, :53/udp answered by ${who(udp)}${fine ? '' : '  FAIL'}`);
  }
  step(`every pod calls the ClusterIP: ${ok}/${s.pods.length} ok`);
  const node = s.nodes.find((n) => n.name === first.node)!;
  const trace = await inNs(node.netns, join(BIN, 'weftctl'), ['trace', first.ip, `${ip}:80/tcp`, '--ipam-dir', join(node.dataDir, LAB_NETWORK_NAME)], nodeEnv(s, node));
  step(`weftctl trace ${first.ip} ${ip}:80/tcp (run on ${node.name})`);
  return { ok: ok === s.pods.length, text: `\n${lines.join('\n')}\n\n${trace.out}\n` };
}

/** Namespaces of this lab, also ones a crashed `up` may not have recorded. */
function labNamespaces(a: LabArgs): string[] {
  const names = existsSync('/run/netns') ? readdirSync('/run/netns') : [];
  const re = new RegExp(`^${a.prefix}-(ul|cp|n\\d+|n\\d+p\\d+)-${a.name}$`);
  return names.filter((n) => re.test(n));
}

async function down(a: LabArgs): Promise<number> {
  const state = readState(a);
  const strays = labNamespaces(a);
  if (!state && !strays.length) {
    process.stdout.write(`lab "${a.name}": nothing to tear down\n`);
    return 0;
  }
  if (state) await destroyTopology(workDir(a), { removeWorkDir: true });
  for (const ns of labNamespaces(a)) {
    await new Promise((r) => execFile('ip', ['netns', 'del', ns], r));
  }
  rmSync(workDir(a), { recursive: true, force: true });
  try {
    rmdirSync(a.stateDir); // only when no other lab is in it
  } catch {
    /* not empty or already gone */
  }
  const left = labNamespaces(a);
  if (left.length) {
    process.stderr.write(`lab "${a.name}": could not delete namespaces ${left.join(', ')}\n`);
    return 1;
  }
  process.stdout.write(`lab "${a.name}" removed: processes stopped, namespaces and ${workDir(a)} deleted\n`);
  return 0;
}

async function status(a: LabArgs): Promise<number> {
  const s = readState(a);
  if (!s || !netnsExists(s.underlayNetns)) {
    process.stdout.write(`lab "${a.name}" is not up\n`);
    return 1;
  }
  const api = s.apiServer ? `, API server ${s.apiServer.url} ${alive(s.apiServer.pid) ? 'running' : 'STOPPED'}` : '';
  process.stdout.write(`lab "${a.name}" (${s.mode ?? 'etcd'} mode): underlay ${s.underlay}.0/24 (${s.underlayNetns}), etcd ${s.etcdEndpoint} ${alive(s.etcdPid) ? 'running' : 'STOPPED'}${api}\n`);
  for (const n of s.nodes) {
    const pods = s.pods.filter((p) => p.node === n.name).map((p) => `${p.name} ${p.ip}`);
    process.stdout.write(`  ${n.name} ${n.ip} weftd ${alive(n.pid) ? `running (pid ${n.pid})` : 'STOPPED'}; pods: ${pods.join(', ') || 'none'}\n`);
  }
  const n1 = s.nodes[0];
  if (n1 && alive(s.etcdPid)) {
    const get = await inNs(n1.netns, join(BIN, 'weftctl'), ['get', 'nodes'], nodeEnv(s, n1));
    process.stdout.write(`\n${get.out}`);
  }
  return 0;
}

function resolveTarget(s: TopologyState, target: string): { netns: string; node?: LabNode } {
  if (target === 'underlay' || target === 'ul') return { netns: s.underlayNetns };
  if (target === 'etcd' || target === 'cp') return { netns: s.etcdNetns };
  const node = s.nodes.find((n) => n.name === target || n.netns === target);
  if (node) return { netns: node.netns, node };
  const pod = s.pods.find((p) => p.name === target || p.netns === target);
  if (pod) return { netns: pod.netns, node: s.nodes.find((n) => n.name === pod.node) };
  const names = ['underlay', 'etcd', ...s.nodes.map((n) => n.name), ...s.pods.map((p) => p.name)];
  throw new UsageError(`no lab target "${target}"; one of: ${names.join(', ')}`);
}

async function exec(a: LabArgs, rest: string[]): Promise<number> {
  const [target, ...cmd] = rest;
  if (!target || !cmd.length) throw new UsageError('usage: lab.sh exec <node|pod|underlay|etcd> <command> [args...]');
  const s = readState(a);
  if (!s || !netnsExists(s.underlayNetns)) throw new UsageError(`lab "${a.name}" is not up (./scripts/lab.sh up)`);
  const t = resolveTarget(s, target);
  const child = spawn('nsenter', [`--net=/run/netns/${t.netns}`, '--', ...cmd], { stdio: 'inherit', env: nodeEnv(s, t.node) });
  return await new Promise((res) => {
    child.on('error', (err) => {
      process.stderr.write(`lab exec: ${err.message}\n`);
      res(127);
    });
    child.on('close', (code, signal) => res(code ?? (signal ? 128 : 1)));
  });
}

const USAGE = `usage: ./scripts/lab.sh up|down|status|exec [flags]

  up [--nodes N] [--pods N] [--etcd]
                              start the lab (default 3 nodes, 2 pods each); ends with a ping matrix.
                              weftd runs in Kubernetes mode against the lab API server; --etcd
                              runs it on etcd (flannel's etcd schema) instead
  status                      what runs, and weftctl get nodes
  exec TARGET CMD [ARGS...]   run CMD in a node (n1), pod (n1p1), "underlay" or "etcd" namespace;
                              weftctl is on PATH there, pointed at the lab's control plane
                              (KUBECONFIG is set in Kubernetes mode, so kubectl works too)
  down                        remove everything the lab made (safe to run twice)

  --name NAME (default lab)  --state-dir DIR (default /run/weft-lab)
  --prefix P (namespace prefix, default weft)  --underlay 198.51.100|203.0.113
`;

async function main(argv: string[]): Promise<number> {
  const { cmd, rest, args } = parse(argv);
  switch (cmd) {
    case 'up':
      return await up(args);
    case 'down':
      return await down(args);
    case 'status':
      return await status(args);
    case 'exec':
      return await exec(args, rest);
    case '':
    case 'help':
    case '--help':
    case '-h':
      process.stdout.write(USAGE);
      return cmd === '' ? 2 : 0;
    default:
      throw new UsageError(`unknown lab command "${cmd}"`);
  }
}

main(process.argv.slice(2)).then(
  (code) => process.exit(code),
  (err) => {
    const hint = err instanceof UsageError ? '\nRun "./scripts/lab.sh help" for usage.' : '';
    process.stderr.write(`lab: ${(err as Error).message}${hint}\n`);
    process.exit(2);
  },
);

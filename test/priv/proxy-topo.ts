/**
 * A one-node Service topology for the proxy's kernel tests, all in throwaway namespaces:
 *
 *   ext (203.0.113.2) --veth-- node (203.0.113.1, default route via ext; br0 198.18.0.1/24)
 *                                   |-- client 198.18.0.10
 *                                   |-- pod-1  198.18.0.11   echo servers: tcp 8080, 8081; udp 5353
 *                                   |-- pod-2  198.18.0.12
 *                                   `-- pod-3  198.18.0.13
 *
 * Bridge ports have hairpin mode on (as the CNI plugin sets it). The echo servers answer
 * "<pod> <client address>" so tests see which endpoint answered and what source it saw.
 * Clients are Node scripts run inside a namespace; they print one JSON result.
 */
import { ECHO_CLIENT, ECHO_SERVER } from '../../lab/echo/index.ts';
import { execFile, type ChildProcess } from 'node:child_process';
import { inNs, Scope, sh } from '../helpers/netns.ts';

export const NODE_IP = '198.18.0.1';
export const CLIENT_IP = '198.18.0.10';
export const POD_IPS = ['198.18.0.11', '198.18.0.12', '198.18.0.13'];
export const EXT_NODE_IP = '203.0.113.1';
export const EXT_IP = '203.0.113.2';

export interface Reply {
  reply?: string;
  err?: string;
  ms: number;
}

export interface Topo {
  scope: Scope;
  node: string;
  client: string;
  pods: string[];
  ext: string;
  nodeNetns: string;
  /** Runs `count` requests from namespace `ns`, one after another. */
  request(ns: string, o: { host: string; port: number; proto?: 'tcp' | 'udp'; count?: number; timeoutMs?: number; srcPort?: number }): Promise<Reply[]>;
  /** Starts a request loop in the background; resolve with its results. */
  requestAsync(ns: string, o: { host: string; port: number; proto?: 'tcp' | 'udp'; count?: number; timeoutMs?: number }): { child: ChildProcess; result: Promise<Reply[]> };
  nsh(ns: string, cmd: string, args: string[]): string;
  /** The node-side bridge port of pod namespace `ns`. */
  portOf(ns: string): string;
}

function addPod(scope: Scope, node: string, name: string, ip: string, idx: number): string {
  const ns = scope.netns(name);
  const host = `vp${idx}-${scope.id}`;
  sh('ip', ['-n', node, 'link', 'add', host, 'type', 'veth', 'peer', 'name', 'eth0', 'netns', ns]);
  sh('ip', ['-n', node, 'link', 'set', host, 'master', 'br0', 'up']);
  sh('ip', ['-n', node, 'link', 'set', host, 'type', 'bridge_slave', 'hairpin', 'on']);
  sh('ip', ['-n', ns, 'addr', 'add', `${ip}/24`, 'dev', 'eth0']);
  sh('ip', ['-n', ns, 'link', 'set', 'eth0', 'up']);
  sh('ip', ['-n', ns, 'route', 'add', 'default', 'via', NODE_IP]);
  return ns;
}

/** Builds the topology and starts the echo servers; register `scope.cleanup` with t.teardown. */
export async function buildTopo(): Promise<Topo> {
  const scope = new Scope();
  try {
    return await build(scope);
  } catch (err) {
    await scope.cleanup();
    throw err;
  }
}

async function build(scope: Scope): Promise<Topo> {
  const serverJs = ECHO_SERVER;
  const clientJs = ECHO_CLIENT;
  const node = scope.netns('pxnode');
  const nodeNetns = `/run/netns/${node}`;
  sh('ip', ['-n', node, 'link', 'add', 'br0', 'type', 'bridge']);
  sh('ip', ['-n', node, 'addr', 'add', `${NODE_IP}/24`, 'dev', 'br0']);
  sh('ip', ['-n', node, 'link', 'set', 'br0', 'up']);
  inNs(node, 'sysctl', ['-qw', 'net.ipv4.ip_forward=1']);
  inNs(node, 'sysctl', ['-qw', 'net.bridge.bridge-nf-call-iptables=1']);
  const ext = scope.netns('pxext');
  sh('ip', ['-n', node, 'link', 'add', 'up0', 'type', 'veth', 'peer', 'name', 'eth0', 'netns', ext]);
  sh('ip', ['-n', node, 'addr', 'add', `${EXT_NODE_IP}/24`, 'dev', 'up0']);
  sh('ip', ['-n', node, 'link', 'set', 'up0', 'up']);
  sh('ip', ['-n', ext, 'addr', 'add', `${EXT_IP}/24`, 'dev', 'eth0']);
  sh('ip', ['-n', ext, 'link', 'set', 'eth0', 'up']);
  sh('ip', ['-n', ext, 'route', 'add', '198.19.0.0/16', 'via', EXT_NODE_IP]);
  // the node's default route points at the underlay, as on a real node: traffic to a
  // ClusterIP that no rule DNATs is routed (and reaches the filter-forward checks)
  sh('ip', ['-n', node, 'route', 'add', 'default', 'via', EXT_IP]);
  const client = addPod(scope, node, 'pxcli', CLIENT_IP, 0);
  const pods = POD_IPS.map((ip, i) => addPod(scope, node, `pxpod${i + 1}`, ip, i + 1));

  await Promise.all(
    pods.map(
      (ns, i) =>
        new Promise<void>((resolve, reject) => {
          const child = scope.spawn('nsenter', [`--net=/run/netns/${ns}`, '--', process.execPath, serverJs, `pod-${i + 1}`, '8080,8081', '5353']);
          let out = '';
          const timer = setTimeout(() => reject(new Error(`echo server in ${ns} did not start: ${out}`)), 15_000);
          child.stdout!.on('data', (d) => {
            out += d;
            if (out.includes('ready')) {
              clearTimeout(timer);
              resolve();
            }
          });
          child.on('exit', (code) => reject(new Error(`echo server in ${ns} exited ${code}`)));
        }),
    ),
  );

  const run = (ns: string, o: object) => {
    let child!: ChildProcess;
    const result = new Promise<Reply[]>((resolve, reject) => {
      child = execFile('nsenter', [`--net=/run/netns/${ns}`, '--', process.execPath, clientJs, JSON.stringify(o)], { encoding: 'utf8', timeout: 110_000, maxBuffer: 16 << 20 }, (err, out, stderr) => {
        if (err) return reject(new Error(`client in ${ns}: ${stderr || err.message}`));
        resolve(JSON.parse(out) as Reply[]);
      });
    });
    return { child, result };
  };
  const withDefaults = (o: { proto?: string; count?: number; timeoutMs?: number }) => ({ proto: 'tcp', count: 1, timeoutMs: 2000, ...o });
  return {
    scope,
    node,
    client,
    pods,
    ext,
    nodeNetns,
    request: (ns, o) => run(ns, withDefaults(o)).result,
    requestAsync: (ns, o) => run(ns, withDefaults(o)),
    nsh: (ns, cmd, args) => inNs(ns, cmd, args),
    portOf: (ns) => `vp${[client, ...pods].indexOf(ns)}-${scope.id}`,
  };
}

/** A Service object as the API server would send it. */
export function rawService(name: string, spec: Record<string, unknown>): unknown {
  return { apiVersion: 'v1', kind: 'Service', metadata: { namespace: 'default', name, resourceVersion: '1' }, spec: { type: 'ClusterIP', ...spec } };
}

/** An EndpointSlice object as the API server would send it. */
export function rawSlice(
  service: string,
  endpoints: Array<{ ip: string; ready?: boolean; serving?: boolean; terminating?: boolean; node?: string }>,
  ports: Array<{ name: string; port: number; protocol: string }>,
): unknown {
  return {
    apiVersion: 'discovery.k8s.io/v1',
    kind: 'EndpointSlice',
    metadata: { namespace: 'default', name: `${service}-abcde`, labels: { 'kubernetes.io/service-name': service } },
    addressType: 'IPv4',
    endpoints: endpoints.map((e) => ({
      addresses: [e.ip],
      conditions: { ready: e.ready ?? true, serving: e.serving ?? e.ready ?? true, terminating: e.terminating ?? false },
      nodeName: e.node ?? 'node-a',
    })),
    ports,
  };
}

/** Counts replies by answering pod. */
export function tally(replies: Reply[]): Record<string, number> {
  const out: Record<string, number> = {};
  for (const r of replies) {
    const k = r.reply ? r.reply.split(' ')[0]! : `err:${r.err}`;
    out[k] = (out[k] ?? 0) + 1;
  }
  return out;
}

/**
 * `weftctl get services`: each Service's ClusterIP, ports, ready/total endpoints, and whether
 * this node's proxy table programs it as the API says it should. The API side is a
 * {@link ServiceSource} (services-kube.ts); the node side is `ip weft-proxy`, read with `nft -j`
 * and evaluated with the trace's evaluator, so "programmed" means the kernel would DNAT the
 * ClusterIP to exactly the endpoints weftd should use (or reject it when there are none).
 * Without any Kubernetes API config the listing comes from the table alone and says so.
 */
import { stringify } from 'yaml';
import { UsageError } from '../core/errors.ts';
import { readProxyTable } from '../proxy/nft.ts';
import { selectEndpoints, skipReason, type ServicePortState } from '../proxy/endpoints.ts';
import type { EndpointSlice, Service } from '../proxy/types.ts';
import { table as textTable } from '../status/render.ts';
import { intFlag, outputFormat } from './args.ts';
import type { CommandContext } from './context.ts';
import { KubeServiceSource, type ServiceSource } from './services-kube.ts';
import { evaluate, parseProxyTable, type ProxyTable } from './trace/nft.ts';

/** One Service port as `get services` reports it. */
export interface ServicePortStatus {
  name: string;
  protocol: string;
  port: number;
  nodePort?: number;
  /** Endpoints with ready (or unset) condition / all endpoints in the slices. */
  ready?: number;
  total?: number;
  /** What the node's table does with clusterIP . proto . port. */
  programmed: 'yes' | 'no' | 'differs' | 'unknown';
  /** The table's verdict: DNAT targets, `reject`, or nothing. */
  kernel: string[];
  /** The endpoints weftd should program (ready, else serving+terminating). */
  expected?: string[];
}

/** One Service row. */
export interface ServiceStatus {
  namespace: string;
  name: string;
  type?: string;
  clusterIP: string;
  ports: ServicePortStatus[];
  /** Not proxied at all (headless, ExternalName, another proxy's), and why. */
  skipped?: string;
}

/** What `get services` prints. */
export interface ServiceList {
  /** `kubernetes (<server>) + node table`, or `node table only`. */
  source: string;
  /** Whether this node has the table at all. */
  table: 'present' | 'absent' | 'unreadable';
  items: ServiceStatus[];
  warnings: string[];
}

const PROTO: Record<string, string> = { TCP: 'tcp', UDP: 'udp', SCTP: 'sctp' };

/** The table's verdict for one ClusterIP port: DNAT targets (sorted), `reject`, or []. */
export function kernelVerdict(t: ProxyTable, clusterIP: string, protocol: string, port: number): string[] {
  const proto = PROTO[protocol] ?? protocol.toLowerCase();
  if (proto !== 'tcp' && proto !== 'udp') {
    const key = `${clusterIP} . ${proto} . ${port}`;
    return (t.maps['service-ips'] ?? []).some((e) => e.key.join(' . ') === key) ? ['programmed (not evaluated)'] : [];
  }
  // a source outside every affinity set and the cluster, so every random arm shows
  const pkt = { saddr: '0.0.0.0', daddr: clusterIP, protocol: proto as 'tcp' | 'udp', dport: port, local: new Set<string>() };
  const nat = evaluate(t, 'nat-prerouting', pkt).outcomes.filter((o) => o.verdict === 'dnat' && o.addr);
  if (nat.length) return [...new Set(nat.map((o) => `${o.addr}:${o.port ?? port}`))].sort(byAddr);
  const key = `${clusterIP} . ${proto} . ${port}`;
  if ((t.maps['no-endpoint-services'] ?? []).some((e) => e.key.join(' . ') === key)) return ['reject'];
  return [];
}

function byAddr(a: string, b: string): number {
  const n = (s: string) => s.split(/[.:]/).map(Number);
  const x = n(a);
  const y = n(b);
  for (let i = 0; i < Math.max(x.length, y.length); i++) if ((x[i] ?? 0) !== (y[i] ?? 0)) return (x[i] ?? 0) - (y[i] ?? 0);
  return 0;
}

function portStatus(sp: ServicePortState, t: ProxyTable | undefined): ServicePortStatus {
  const expected = (sp.internalLocal ? sp.localEndpoints : sp.clusterEndpoints).map((e) => `${e.ip}:${e.port}`).sort(byAddr);
  const kernel = t ? kernelVerdict(t, sp.clusterIP, sp.protocol, sp.port) : [];
  let programmed: ServicePortStatus['programmed'] = 'unknown';
  if (t) {
    const want = expected.length ? expected : ['reject'];
    if (!kernel.length) programmed = 'no';
    // Local traffic policy: this node's endpoints depend on a node name weftctl does not know
    else if (sp.internalLocal) programmed = 'yes';
    else programmed = want.length === kernel.length && want.every((e, i) => e === kernel[i]) ? 'yes' : 'differs';
  }
  const out: ServicePortStatus = {
    name: sp.portName,
    protocol: sp.protocol,
    port: sp.port,
    ready: sp.allEndpoints.filter((e) => e.ready).length,
    total: sp.allEndpoints.length,
    programmed,
    kernel,
    expected,
  };
  if (sp.nodePort !== undefined) out.nodePort = sp.nodePort;
  return out;
}

/** Joins the API's view with the node's table (pure). */
export function serviceStatuses(services: readonly Service[], slices: readonly EndpointSlice[], t: ProxyTable | undefined): ServiceStatus[] {
  const state = selectEndpoints(services, slices);
  const out: ServiceStatus[] = [];
  for (const svc of services) {
    const row: ServiceStatus = { namespace: svc.metadata.namespace, name: svc.metadata.name, type: svc.spec.type, clusterIP: svc.spec.clusterIP || '<none>', ports: [] };
    const why = skipReason(svc);
    if (why) {
      // not proxied: its ports as declared, nothing expected in the table
      row.skipped = why;
      for (const p of svc.spec.ports) row.ports.push({ name: p.name, protocol: p.protocol, port: p.port, programmed: 'no', kernel: [] });
    }
    for (const sp of state.ports) if (sp.namespace === row.namespace && sp.name === row.name) row.ports.push(portStatus(sp, t));
    out.push(row);
  }
  return out.sort((a, b) => `${a.namespace}/${a.name}`.localeCompare(`${b.namespace}/${b.name}`));
}

const CHAIN_LABEL = /^(?:svc|local)-[A-Z2-7]{8}-([^/]+)\/([^/]+)\/[a-z]+\/(.+)$/;

/** The Services the table alone knows (no API): one row per ClusterIP, named by chain labels. */
export function tableStatuses(t: ProxyTable): ServiceStatus[] {
  const rows = new Map<string, ServiceStatus>();
  const add = (key: Array<string | number>, chain: string | undefined) => {
    if (key.length !== 3) return;
    const [ip, proto, port] = [String(key[0]), String(key[1]), Number(key[2])];
    const m = chain ? CHAIN_LABEL.exec(chain) : null;
    const id = m ? `${m[1]}/${m[2]}` : `?/${ip}`;
    let row = rows.get(id);
    if (!row) {
      row = { namespace: m?.[1] ?? '<unknown>', name: m?.[2] ?? '<unknown>', clusterIP: ip, ports: [] };
      rows.set(id, row);
    }
    row.ports.push({ name: m?.[3] ?? '', protocol: proto.toUpperCase(), port, programmed: 'yes', kernel: kernelVerdict(t, ip, proto.toUpperCase(), port) });
  };
  for (const e of t.maps['service-ips'] ?? []) add(e.key, 'target' in e.verdict ? e.verdict.target : undefined);
  for (const e of t.maps['no-endpoint-services'] ?? []) add(e.key, undefined);
  return [...rows.values()].sort((a, b) => `${a.namespace}/${a.name}`.localeCompare(`${b.namespace}/${b.name}`));
}

function portsText(s: ServiceStatus): string {
  return s.ports.map((p) => `${p.port}${p.nodePort !== undefined ? `:${p.nodePort}` : ''}/${p.protocol}`).join(',') || '<none>';
}

function programmedText(s: ServiceStatus): string {
  if (s.skipped) return `skipped (${s.skipped})`;
  const v = new Set(s.ports.map((p) => p.programmed));
  if (!v.size) return '<none>';
  if (v.size === 1) return [...v][0]!;
  return s.ports.map((p) => `${p.port}/${p.protocol}:${p.programmed}`).join(',');
}

/** Renders the list like kubectl (aligned columns; -o wide adds the kernel's endpoints). */
export function renderServices(list: ServiceList, format: 'table' | 'wide' | 'json' | 'yaml'): string {
  const obj = { apiVersion: 'v1', kind: 'List', metadata: { source: list.source, table: list.table }, items: list.items, warnings: list.warnings };
  if (format === 'json') return `${JSON.stringify(obj, null, 2)}\n`;
  if (format === 'yaml') return stringify(obj);
  const notes = [...list.warnings.map((w) => `warning: ${w}`)];
  if (list.table !== 'present') notes.push(`note: table ip weft-proxy is ${list.table} on this node: nothing is programmed here`);
  if (!list.items.length) return `${[`No services found (${list.source}).`, ...notes].join('\n')}\n`;
  const apiMode = list.items.some((s) => s.ports.some((p) => p.total !== undefined));
  // from the table alone "programmed" is always yes: show what it programs instead
  const header = ['NAMESPACE', 'NAME', 'CLUSTER-IP', 'PORT(S)', 'ENDPOINTS', ...(apiMode ? ['PROGRAMMED'] : [])];
  if (format === 'wide') header.push('KERNEL');
  const rows = list.items.map((s) => {
    const ready = s.ports.reduce((n, p) => Math.max(n, p.ready ?? 0), 0);
    const total = s.ports.reduce((n, p) => Math.max(n, p.total ?? 0), 0);
    const kernel = s.ports.map((p) => (p.kernel[0] === 'reject' ? 'reject' : String(p.kernel.length))).join(',');
    const r = [s.namespace, s.name, s.clusterIP, portsText(s), ...(apiMode ? [`${ready}/${total}`, programmedText(s)] : [kernel || '0'])];
    if (format === 'wide') r.push(s.ports.map((p) => `${p.port}/${p.protocol}->${p.kernel.join('|') || '<none>'}`).join(' ') || '<none>');
    return r;
  });
  const head = apiMode ? '' : `# ${list.source}: no Kubernetes API config (pass --kubeconfig or set $KUBECONFIG); endpoints as programmed\n`;
  return head + textTable(header, rows) + (notes.length ? `${notes.join('\n')}\n` : '');
}

/** True when some Kubernetes API config is available (flag, in-cluster, or $KUBECONFIG). */
function haveKubeConfig(ctx: CommandContext): boolean {
  return Boolean(ctx.flags.kubeconfig || ctx.env.KUBECONFIG || ctx.env.KUBERNETES_SERVICE_HOST);
}

/** `get services`. Exit 0. */
export async function getServicesCommand(ctx: CommandContext): Promise<number> {
  const format = outputFormat(ctx.flags);
  if (ctx.flags.watch) throw new UsageError('get services does not support --watch');
  const warnings: string[] = [];
  let t: ProxyTable | undefined;
  let tableState: ServiceList['table'] = 'absent';
  try {
    const json = await readProxyTable({ timeoutMs: 10_000 });
    if (json !== undefined) {
      t = parseProxyTable(json);
      tableState = 'present';
    }
  } catch (err) {
    tableState = 'unreadable';
    warnings.push(`cannot read table ip weft-proxy: ${(err as Error).message}`);
  }
  let list: ServiceList;
  const src: ServiceSource | undefined = haveKubeConfig(ctx)
    ? new KubeServiceSource({ kubeconfig: ctx.flags.kubeconfig, env: ctx.env, timeoutMs: 1000 * (intFlag(ctx.flags, 'timeout') ?? 10) })
    : undefined;
  if (src) {
    const l = await src.list();
    warnings.push(...l.invalid.map((s) => `not valid, ignored: ${s}`));
    list = { source: `kubernetes API ${l.server} + node table`, table: tableState, items: serviceStatuses(l.services, l.slices, t), warnings };
  } else {
    list = { source: 'node table only', table: tableState, items: t ? tableStatuses(t) : [], warnings };
  }
  ctx.out(renderServices(list, format));
  return 0;
}

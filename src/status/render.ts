/**
 * Renders the status model like kubectl: aligned columns by default, more columns with
 * `-o wide`, the model itself with `-o json|yaml`. Pure functions returning text. Nodes of the
 * Kubernetes source (with {@link NodeLease.kube}) get their own columns and JSON shape: a Node's
 * name, addresses and condition instead of etcd lease times.
 */
import { stringify } from 'yaml';
import type { AnnotationsState, CheckReport, ConditionSummary, NetworkSummary, NodeEvent, NodeLease, NodeList } from './model.ts';

/** Output formats of `-o`. */
export type OutputFormat = 'table' | 'wide' | 'json' | 'yaml';

export const OUTPUT_FORMATS: readonly OutputFormat[] = ['table', 'wide', 'json', 'yaml'];

/** kubectl-style short duration: `45s`, `5m10s`, `3h12m`, `2d4h`. */
export function formatDuration(seconds: number | undefined): string {
  if (seconds === undefined || !Number.isFinite(seconds) || seconds < 0) return '<none>';
  const s = Math.floor(seconds);
  if (s < 60) return `${s}s`;
  if (s < 3600) return s % 60 ? `${Math.floor(s / 60)}m${s % 60}s` : `${s / 60}m`;
  if (s < 86_400) {
    const m = Math.floor((s % 3600) / 60);
    return m ? `${Math.floor(s / 3600)}h${m}m` : `${Math.floor(s / 3600)}h`;
  }
  const h = Math.floor((s % 86_400) / 3600);
  return h ? `${Math.floor(s / 86_400)}d${h}h` : `${Math.floor(s / 86_400)}d`;
}

/** Left-aligned columns separated by three spaces (kubectl's spacing). */
export function table(header: string[], rows: string[][]): string {
  const widths = header.map((h, i) => Math.max(h.length, ...rows.map((r) => (r[i] ?? '').length)));
  const line = (cells: string[]) =>
    cells
      .map((c, i) => (i === cells.length - 1 ? c : c.padEnd(widths[i]!)))
      .join('   ')
      .trimEnd();
  return `${[line(header), ...rows.map(line)].join('\n')}\n`;
}

const HEADER = ['PUBLIC IP', 'SUBNET', 'VTEP MAC', 'EXPIRES IN', 'LEASE AGE'];
const WIDE = ['VNI', 'BACKEND', 'VTEP IP', 'ETCD LEASE', 'REVISION'];

const KUBE_HEADER = ['NAME', 'INTERNAL-IP', 'POD-CIDR', 'VTEP-MAC', 'PUBLIC-IP', 'NETWORK-UNAVAILABLE', 'AGE'];
const KUBE_WIDE = ['BACKEND', 'VNI', 'ANNOTATIONS'];
/** Room `--watch` leaves per kube column for values later events may carry. */
const KUBE_WATCH_WIDTHS = [8, 12, 15, 18, 17, 15, 19, 5, 7, 5];

/** The NETWORK-UNAVAILABLE cell: `False/WeftIsUp`, `True`, `<none>`. */
export function conditionCell(c: ConditionSummary | undefined): string {
  if (!c) return '<none>';
  return c.reason ? `${c.status}/${c.reason}` : c.status;
}

/** The ANNOTATIONS cell: `ok`, `missing: no podCIDR`, `malformed: backend-data is not JSON`. */
export function annotationsCell(a: AnnotationsState): string {
  return a.reason ? `${a.state}: ${a.reason}` : a.state;
}

/**
 * Text from a Node (anyone with nodes patch can write annotations and conditions) made safe for
 * a terminal: control characters (escape sequences, newlines) are shown escaped.
 */
export function printable(s: string): string {
  // biome-ignore lint/suspicious/noControlCharactersInRegex: matching them is the point
  return s.replace(/[\u0000-\u001f\u007f-\u009f]/g, (c) => `\\x${c.charCodeAt(0).toString(16).padStart(2, '0')}`);
}

function kubeRow(n: NodeLease, wide: boolean): string[] {
  const k = n.kube!;
  const base = [k.name, k.internalIP ?? '<none>', k.podCIDR ?? '<none>', n.vtepMAC ?? '<none>', n.publicIP || '<none>', conditionCell(k.networkUnavailable), formatDuration(k.ageSeconds)];
  const cells = wide ? [...base, n.backendType || '<none>', n.vni === undefined ? '<none>' : String(n.vni), annotationsCell(k.annotations)] : base;
  return cells.map(printable);
}

function headerOf(list: NodeList, wide: boolean): string[] {
  if (list.source === 'kube') return wide ? [...KUBE_HEADER, ...KUBE_WIDE] : KUBE_HEADER;
  return wide ? [...HEADER, ...WIDE] : HEADER;
}

function row(n: NodeLease, wide: boolean): string[] {
  if (n.kube) return kubeRow(n, wide);
  const base = [n.publicIP, n.subnet, n.vtepMAC ?? '<none>', formatDuration(n.expiresInSeconds), formatDuration(n.leaseAgeSeconds)];
  if (!wide) return base;
  return [...base, n.vni === undefined ? '<none>' : String(n.vni), n.backendType || '<none>', n.vtepIP, leaseHex(n) ?? '<none>', n.modRevision];
}

/** The etcd lease id as etcdctl prints it (hex); undefined for none. */
function leaseHex(n: NodeLease): string | undefined {
  return n.etcdLeaseId === '0' ? undefined : BigInt(n.etcdLeaseId).toString(16);
}

function serialize(value: unknown, format: 'json' | 'yaml'): string {
  return format === 'json' ? `${JSON.stringify(value, null, 2)}\n` : stringify(value);
}

/** A Kubernetes-mode node in `-o json|yaml`: the Node's facts and its lease, no etcd fields. */
export interface KubeNodeItem {
  name: string;
  internalIP?: string;
  podCIDR?: string;
  publicIP?: string;
  publicIPOverwrite?: string;
  vtepIP?: string;
  vtepMAC?: string;
  backendType?: string;
  vni?: number;
  backendData?: unknown;
  networkUnavailable?: ConditionSummary;
  creationTimestamp?: string;
  ageSeconds?: number;
  annotations: AnnotationsState;
  weftAnnotations: Record<string, string>;
  resourceVersion: string;
}

/** A node as `-o json|yaml` prints it: the lease for etcd, a {@link KubeNodeItem} for kube. */
export function nodeItem(n: NodeLease): NodeLease | KubeNodeItem {
  const k = n.kube;
  if (!k) return n;
  const item: KubeNodeItem = {
    name: k.name,
    internalIP: k.internalIP,
    podCIDR: k.podCIDR,
    publicIP: n.publicIP || undefined,
    publicIPOverwrite: k.publicIPOverwrite,
    vtepIP: n.vtepIP || undefined,
    vtepMAC: n.vtepMAC,
    backendType: n.backendType || undefined,
    vni: n.vni,
    backendData: n.backendData,
    networkUnavailable: k.networkUnavailable,
    creationTimestamp: k.creationTimestamp,
    ageSeconds: k.ageSeconds,
    annotations: k.annotations,
    weftAnnotations: k.weftAnnotations,
    resourceVersion: n.modRevision,
  };
  // Absent stays absent (as in the API's own JSON), not `null`.
  return Object.fromEntries(Object.entries(item).filter(([, v]) => v !== undefined)) as unknown as KubeNodeItem;
}

/** The nodes as kubectl prints a list with `-o json|yaml`. */
export function nodeListObject(list: NodeList): { apiVersion: 'v1'; kind: 'List'; items: Array<NodeLease | KubeNodeItem> } {
  return { apiVersion: 'v1', kind: 'List', items: list.nodes.map(nodeItem) };
}

/** `get nodes`. An empty list says so instead of printing a bare header. */
export function renderNodes(list: NodeList, format: OutputFormat): string {
  if (format === 'json' || format === 'yaml') return serialize(nodeListObject(list), format);
  if (!list.nodes.length) return list.source === 'kube' ? `No nodes found in ${list.location}.\n` : `No node leases found under "${list.location}".\n`;
  const wide = format === 'wide';
  return table(
    headerOf(list, wide),
    list.nodes.map((n) => row(n, wide)),
  );
}

/**
 * One `--watch` event: a table row with the event in front (the header is printed once, with
 * the initial list, by {@link renderWatchHeader}); one JSON document per line for json.
 */
export function renderNodeEvent(ev: NodeEvent, format: OutputFormat, widths?: number[]): string {
  const doc = ev.node.kube ? { type: ev.type, node: nodeItem(ev.node) } : ev;
  if (format === 'json') return `${JSON.stringify(doc)}\n`;
  if (format === 'yaml') return `---\n${stringify(doc)}`;
  const cells = [ev.type, ...row(ev.node, format === 'wide')];
  return `${(widths ? cells.map((c, i) => (i === cells.length - 1 ? c : c.padEnd(widths[i]!))) : cells).join('   ').trimEnd()}\n`;
}

/** The initial table of `--watch`, with an EVENT column; returns the column widths for rows. */
export function renderWatchHeader(list: NodeList, format: OutputFormat): { text: string; widths: number[] } {
  const wide = format === 'wide';
  const header = ['EVENT', ...headerOf(list, wide)];
  const rows = list.nodes.map((n) => ['ADDED', ...row(n, wide)]);
  // Leave room for the longest values later events are likely to carry.
  const room = (i: number) => (list.source === 'kube' ? (KUBE_WATCH_WIDTHS[i] ?? 0) : i === 0 ? 8 : i === 1 || i === 2 ? 18 : 0);
  const widths = header.map((h, i) => Math.max(h.length, room(i), ...rows.map((r) => r[i]!.length)));
  const line = (cells: string[]) =>
    cells
      .map((c, i) => (i === cells.length - 1 ? c : c.padEnd(widths[i]!)))
      .join('   ')
      .trimEnd();
  return { text: `${[line(header), ...rows.map(line)].join('\n')}\n`, widths };
}

/** `get network`: the config nodes lease from. */
export function renderNetwork(c: NetworkSummary, format: OutputFormat): string {
  if (format === 'json' || format === 'yaml') return serialize(c, format);
  return table(
    ['NETWORK', 'SUBNET LEN', 'SUBNET RANGE', 'BACKEND', 'VNI', 'PORT'],
    [[c.network, `/${c.subnetLen}`, `${c.subnetMin} - ${c.subnetMax}`, c.backend.type, String(c.backend.vni), String(c.backend.port)]],
  );
}

/** `describe node`: every field, kubectl-describe style. */
export function renderDescribe(node: NodeLease, config: NetworkSummary | undefined, format: OutputFormat): string {
  if (format === 'json' || format === 'yaml') return serialize({ node: nodeItem(node), network: config }, format);
  if (node.kube) return describeKube(node, config);
  const lines: [string, string][] = [
    ['Public IP', node.publicIP],
    ['Subnet', node.subnet],
    ['VTEP IP', `${node.vtepIP} (address of flannel.${node.vni ?? config?.backend.vni ?? 1} on the node; peers route via it)`],
    ['VTEP MAC', node.vtepMAC ?? '<none>'],
    ['Backend', `${node.backendType || '<none>'}${node.vni !== undefined ? ` (VNI ${node.vni})` : ''}`],
    ['Backend data', JSON.stringify(node.backendData)],
    ['etcd key', node.key],
    ['etcd lease', leaseHex(node) ? `${leaseHex(node)} (hex)` : '<none> (never expires)'],
    ['Expires in', formatDuration(node.expiresInSeconds)],
    ['Lease age', `${formatDuration(node.leaseAgeSeconds)} (of a ${formatDuration(node.grantedTTLSeconds)} TTL; restarts at each renewal)`],
    ['Revision', `${node.modRevision} (last modified)`],
  ];
  if (config) {
    lines.push(['Network', `${config.network} (subnets /${config.subnetLen}, VNI ${config.backend.vni}, UDP ${config.backend.port})`]);
  }
  const w = Math.max(...lines.map(([k]) => k.length)) + 1;
  return `${lines.map(([k, v]) => `${`${k}:`.padEnd(w)}  ${v}`).join('\n')}\n`;
}

/** `describe node` of a Kubernetes Node. */
function describeKube(node: NodeLease, config: NetworkSummary | undefined): string {
  const k = node.kube!;
  const c = k.networkUnavailable;
  const vni = node.vni ?? config?.backend.vni ?? 1;
  const lines: [string, string][] = [
    ['Name', k.name],
    ['Internal IP', k.internalIP ?? '<none>'],
    ['Pod CIDR', k.podCIDR ?? '<none> (not assigned: kube-controller-manager --allocate-node-cidrs?)'],
    ['Public IP', `${node.publicIP || '<none>'}${k.publicIPOverwrite ? ` (public-ip-overwrite ${k.publicIPOverwrite})` : ''}`],
    ['VTEP IP', node.vtepIP ? `${node.vtepIP} (address of flannel.${vni} on the node; peers route via it)` : '<none>'],
    ['VTEP MAC', node.vtepMAC ?? '<none>'],
    ['Backend', `${node.backendType || '<none>'}${node.vni !== undefined ? ` (VNI ${node.vni})` : ''}`],
    ['Backend data', node.backendData === undefined ? '<none>' : JSON.stringify(node.backendData)],
    ['Annotations', `${annotationsCell(k.annotations)}${k.annotations.state === 'ok' ? ' (a peer: every weftd programs it)' : ' (not a peer: weftd programs nothing for it)'}`],
    ['NetworkUnavailable', c ? `${c.status}${c.reason ? ` (${c.reason}${c.message ? `: ${c.message}` : ''})` : ''}${c.lastTransitionTime ? ` since ${c.lastTransitionTime}` : ''}` : '<none>'],
    ['Created', k.creationTimestamp ? `${k.creationTimestamp} (${formatDuration(k.ageSeconds)} ago)` : '<none>'],
    ['Resource version', node.modRevision],
  ];
  const raw = Object.entries(k.weftAnnotations).sort(([a], [b]) => (a < b ? -1 : 1));
  for (const [i, [key, v]] of raw.entries()) lines.push([i === 0 ? 'Weft annotations' : '', `${key}=${v}`]);
  if (!raw.length) lines.push(['Weft annotations', '<none>']);
  if (config) lines.push(['Network', `${config.network} (VNI ${config.backend.vni}, UDP ${config.backend.port})`]);
  const w = Math.max(...lines.map(([key]) => key.length)) + 1;
  return `${lines.map(([key, v]) => `${(key ? `${key}:` : '').padEnd(w)}  ${printable(v)}`).join('\n')}\n`;
}

/** `check`: one line per finding, then a verdict. */
export function renderCheck(report: CheckReport, format: OutputFormat): string {
  if (format === 'json' || format === 'yaml') return serialize(report, format);
  const out: string[] = [];
  const self = report.self ? `${report.self.publicIP} ${report.self.subnet}` : 'unknown (no lease for this node)';
  out.push(`node: ${self}, device ${report.device}, ${report.peers.length} peer(s)`);
  if (report.peers.length) {
    out.push(
      table(
        ['PEER SUBNET', 'PUBLIC IP', 'VTEP MAC', 'NEIGHBOR', 'FDB', 'ROUTE'],
        report.peers.map((p) => [p.subnet, p.publicIP, p.vtepMAC ?? '<none>', p.neighbor, p.fdb, p.route]),
      ).trimEnd(),
    );
  }
  for (const s of report.skipped ?? []) out.push(`skipped node "${s.node}" (not a peer, no entries expected): ${printable(s.why)}`);
  for (const f of report.findings) out.push(`${f.kind.padEnd(7)} ${f.object}: ${f.detail}`);
  out.push(report.consistent ? `consistent: kernel state matches ${report.against ?? 'etcd'}` : `inconsistent: ${report.findings.length} difference(s)`);
  return `${out.join('\n')}\n`;
}

/**
 * Renders the status model like kubectl: aligned columns by default, more columns with
 * `-o wide`, the model itself with `-o json|yaml`. Pure functions returning text.
 */
import { stringify } from 'yaml';
import type { CheckReport, NetworkSummary, NodeEvent, NodeLease, NodeList } from './model.ts';

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
  return [line(header), ...rows.map(line)].join('\n') + '\n';
}

const HEADER = ['PUBLIC IP', 'SUBNET', 'VTEP MAC', 'EXPIRES IN', 'LEASE AGE'];
const WIDE = ['VNI', 'BACKEND', 'VTEP IP', 'ETCD LEASE', 'REVISION'];

function row(n: NodeLease, wide: boolean): string[] {
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

/** The nodes as kubectl prints a list with `-o json|yaml`. */
export function nodeListObject(list: NodeList): { apiVersion: 'v1'; kind: 'List'; items: NodeLease[] } {
  return { apiVersion: 'v1', kind: 'List', items: list.nodes };
}

/** `get nodes`. An empty list says so instead of printing a bare header. */
export function renderNodes(list: NodeList, format: OutputFormat): string {
  if (format === 'json' || format === 'yaml') return serialize(nodeListObject(list), format);
  if (!list.nodes.length) return `No node leases found under "${list.location}".\n`;
  const wide = format === 'wide';
  return table(wide ? [...HEADER, ...WIDE] : HEADER, list.nodes.map((n) => row(n, wide)));
}

/**
 * One `--watch` event: a table row with the event in front (the header is printed once, with
 * the initial list, by {@link renderWatchHeader}); one JSON document per line for json.
 */
export function renderNodeEvent(ev: NodeEvent, format: OutputFormat, widths?: number[]): string {
  if (format === 'json') return `${JSON.stringify(ev)}\n`;
  if (format === 'yaml') return `---\n${stringify(ev)}`;
  const cells = [ev.type, ...row(ev.node, format === 'wide')];
  return (widths ? cells.map((c, i) => (i === cells.length - 1 ? c : c.padEnd(widths[i]!))) : cells).join('   ').trimEnd() + '\n';
}

/** The initial table of `--watch`, with an EVENT column; returns the column widths for rows. */
export function renderWatchHeader(list: NodeList, format: OutputFormat): { text: string; widths: number[] } {
  const wide = format === 'wide';
  const header = ['EVENT', ...(wide ? [...HEADER, ...WIDE] : HEADER)];
  const rows = list.nodes.map((n) => ['ADDED', ...row(n, wide)]);
  // Leave room for the longest values later events are likely to carry.
  const widths = header.map((h, i) => Math.max(h.length, i === 0 ? 8 : 0, i === 1 || i === 2 ? 18 : 0, ...rows.map((r) => r[i]!.length)));
  const line = (cells: string[]) => cells.map((c, i) => (i === cells.length - 1 ? c : c.padEnd(widths[i]!))).join('   ').trimEnd();
  return { text: [line(header), ...rows.map(line)].join('\n') + '\n', widths };
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
  if (format === 'json' || format === 'yaml') return serialize({ node, network: config }, format);
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
  return lines.map(([k, v]) => `${`${k}:`.padEnd(w)}  ${v}`).join('\n') + '\n';
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
  for (const f of report.findings) out.push(`${f.kind.padEnd(7)} ${f.object}: ${f.detail}`);
  out.push(report.consistent ? 'consistent: kernel state matches etcd' : `inconsistent: ${report.findings.length} difference(s)`);
  return out.join('\n') + '\n';
}

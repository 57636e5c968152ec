/**
 * Server-side printing (`Accept: application/json;as=Table;g=meta.k8s.io;v=v1`), which kubectl
 * asks for on `get`: a meta.k8s.io/v1 Table with the columns kube-apiserver prints for each kind
 * (priority 1 = only with `-o wide`).
 */
import type { IncomingMessage } from 'node:http';
import type { Json } from './patch.ts';
import type { ResourceDef } from './resources.ts';
import type { KubeObject } from './store.ts';

export function wantsTable(req: IncomingMessage): boolean {
  const accept = req.headers.accept ?? '';
  // The first acceptable type wins; kubectl lists Table first and plain JSON as the fallback.
  const first = accept.split(',')[0] ?? '';
  return /as=Table/.test(first) && /g=meta\.k8s\.io/.test(first);
}

type Col = { name: string; type?: string; priority?: number; cell: (o: any) => Json };

function age(o: any): string {
  const t = Date.parse(o.metadata?.creationTimestamp ?? '');
  if (Number.isNaN(t)) return '<unknown>';
  const s = Math.max(0, Math.floor((Date.now() - t) / 1000));
  if (s < 120) return `${s}s`;
  if (s < 600) return `${Math.floor(s / 60)}m${s % 60 ? `${s % 60}s` : ''}`;
  if (s < 3 * 3600) return `${Math.floor(s / 60)}m`;
  if (s < 48 * 3600) return `${Math.floor(s / 3600)}h`;
  return `${Math.floor(s / 86400)}d`;
}

const NAME: Col = { name: 'Name', cell: (o) => o.metadata?.name ?? '' };
const AGE: Col = { name: 'Age', cell: age };

function nodeStatus(o: any): string {
  const ready = (o.status?.conditions ?? []).find((c: any) => c?.type === 'Ready');
  const s = ready?.status === 'True' ? 'Ready' : ready ? 'NotReady' : 'Unknown';
  return o.spec?.unschedulable ? `${s},SchedulingDisabled` : s;
}

function nodeRoles(o: any): string {
  const roles = Object.keys(o.metadata?.labels ?? {})
    .filter((k) => k.startsWith('node-role.kubernetes.io/'))
    .map((k) => k.slice('node-role.kubernetes.io/'.length))
    .filter(Boolean);
  return roles.length ? roles.sort().join(',') : '<none>';
}

function address(o: any, type: string): string {
  return (o.status?.addresses ?? []).find((a: any) => a?.type === type)?.address ?? '<none>';
}

function svcPorts(o: any): string {
  const ps = (o.spec?.ports ?? []).map((p: any) => `${p.port}${p.nodePort ? `:${p.nodePort}` : ''}/${p.protocol ?? 'TCP'}`);
  return ps.length ? ps.join(',') : '<none>';
}

function sliceEndpoints(o: any): string {
  const addrs: string[] = (o.endpoints ?? []).flatMap((e: any) => e?.addresses ?? []);
  if (!addrs.length) return '<unset>';
  return addrs.length > 3 ? `${addrs.slice(0, 3).join(',')} + ${addrs.length - 3} more...` : addrs.join(',');
}

const COLUMNS: Record<string, Col[]> = {
  Node: [
    NAME,
    { name: 'Status', cell: nodeStatus },
    { name: 'Roles', cell: nodeRoles },
    AGE,
    { name: 'Version', cell: (o) => o.status?.nodeInfo?.kubeletVersion ?? '' },
    { name: 'Internal-IP', priority: 1, cell: (o) => address(o, 'InternalIP') },
    { name: 'External-IP', priority: 1, cell: (o) => address(o, 'ExternalIP') },
    { name: 'OS-Image', priority: 1, cell: (o) => o.status?.nodeInfo?.osImage ?? '<unknown>' },
    { name: 'Kernel-Version', priority: 1, cell: (o) => o.status?.nodeInfo?.kernelVersion ?? '<unknown>' },
    { name: 'Container-Runtime', priority: 1, cell: (o) => o.status?.nodeInfo?.containerRuntimeVersion ?? '<unknown>' },
  ],
  Service: [
    NAME,
    { name: 'Type', cell: (o) => o.spec?.type ?? 'ClusterIP' },
    { name: 'Cluster-IP', cell: (o) => o.spec?.clusterIP || '<none>' },
    { name: 'External-IP', cell: (o) => (o.spec?.externalIPs ?? []).join(',') || (o.spec?.type === 'ExternalName' ? o.spec?.externalName : '') || '<none>' },
    { name: 'Port(s)', cell: svcPorts },
    AGE,
    {
      name: 'Selector',
      priority: 1,
      cell: (o) =>
        Object.entries(o.spec?.selector ?? {})
          .map(([k, v]) => `${k}=${v}`)
          .join(',') || '<none>',
    },
  ],
  EndpointSlice: [
    NAME,
    { name: 'AddressType', cell: (o) => o.addressType ?? '' },
    { name: 'Ports', cell: (o) => (o.ports ?? []).map((p: any) => String(p.port ?? '<unset>')).join(',') || '<unset>' },
    { name: 'Endpoints', cell: sliceEndpoints },
    AGE,
  ],
  ConfigMap: [NAME, { name: 'Data', type: 'integer', cell: (o) => Object.keys(o.data ?? {}).length + Object.keys(o.binaryData ?? {}).length }, AGE],
  Namespace: [NAME, { name: 'Status', cell: (o) => o.status?.phase ?? '' }, AGE],
};

/** A Table of `objs`; rows carry the object's metadata (or the whole object with includeObject=Object). */
export function renderTable(def: ResourceDef, objs: KubeObject[], opts: { resourceVersion?: string; includeObject?: string | null } = {}) {
  const cols = COLUMNS[def.kind] ?? [NAME, AGE];
  return {
    kind: 'Table',
    apiVersion: 'meta.k8s.io/v1',
    metadata: opts.resourceVersion ? { resourceVersion: opts.resourceVersion } : {},
    columnDefinitions: cols.map((c) => ({ name: c.name, type: c.type ?? 'string', format: c.name === 'Name' ? 'name' : '', description: '', priority: c.priority ?? 0 })),
    rows: objs.map((o) => ({
      cells: cols.map((c) => c.cell(o)),
      object: opts.includeObject === 'Object' ? o : opts.includeObject === 'None' ? undefined : { kind: 'PartialObjectMetadata', apiVersion: 'meta.k8s.io/v1', metadata: o.metadata },
    })),
  };
}

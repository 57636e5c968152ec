/**
 * Discovery documents (the legacy, unaggregated form kubectl falls back to when the server does
 * not answer in the aggregated `apidiscovery.k8s.io/v2` format): /version, /api, /api/v1, /apis,
 * /apis/<group>, /apis/<group>/<version>.
 */
import { apiVersion, RESOURCES, type ResourceDef } from './resources.ts';

const VERBS = ['create', 'delete', 'get', 'list', 'patch', 'update', 'watch'];

export const VERSION_INFO = {
  major: '1',
  minor: '32',
  gitVersion: 'v1.32.0-weft-lab',
  gitCommit: '0000000000000000000000000000000000000000',
  gitTreeState: 'clean',
  buildDate: '2026-01-01T00:00:00Z',
  goVersion: 'go1.23.0',
  compiler: 'gc',
  platform: 'linux/amd64',
};

function groups(): Map<string, string[]> {
  const m = new Map<string, string[]>();
  for (const r of RESOURCES) {
    if (!r.group) continue;
    const vs = m.get(r.group) ?? [];
    if (!vs.includes(r.version)) vs.push(r.version);
    m.set(r.group, vs);
  }
  return m;
}

function groupDoc(name: string, versions: string[]) {
  const vs = versions.map((v) => ({ groupVersion: `${name}/${v}`, version: v }));
  return { name, versions: vs, preferredVersion: vs[0] };
}

/** The discovery document at `path`, or undefined when `path` is not one. */
export function discovery(path: string): unknown {
  if (path === '/version') return VERSION_INFO;
  if (path === '/api') return { kind: 'APIVersions', versions: ['v1'], serverAddressByClientCIDRs: [{ clientCIDR: '0.0.0.0/0', serverAddress: '' }] };
  if (path === '/apis') {
    return { kind: 'APIGroupList', apiVersion: 'v1', groups: [...groups()].map(([n, vs]) => groupDoc(n, vs)) };
  }
  if (path === '/api/v1') return resourceList('', 'v1');
  const m = /^\/apis\/([^/]+)(?:\/([^/]+))?$/.exec(path);
  if (!m) return undefined;
  const vs = groups().get(m[1]!);
  if (!vs) return undefined;
  if (!m[2]) return { kind: 'APIGroup', apiVersion: 'v1', ...groupDoc(m[1]!, vs) };
  if (!vs.includes(m[2])) return undefined;
  return resourceList(m[1]!, m[2]);
}

function resourceList(group: string, version: string) {
  const defs = RESOURCES.filter((r) => r.group === group && r.version === version);
  const resources: unknown[] = [];
  for (const r of defs) {
    resources.push(entry(r));
    if (r.status) resources.push({ name: `${r.resource}/status`, singularName: '', namespaced: r.namespaced, kind: r.kind, verbs: ['get', 'patch', 'update'] });
  }
  return { kind: 'APIResourceList', apiVersion: 'v1', groupVersion: apiVersion(defs[0]!), resources };
}

function entry(r: ResourceDef) {
  return {
    name: r.resource,
    singularName: r.singular,
    namespaced: r.namespaced,
    kind: r.kind,
    verbs: VERBS,
    ...(r.shortNames.length ? { shortNames: r.shortNames } : {}),
    // `kubectl get all` expands the "all" category (of these kinds, kube puts only services in it).
    ...(r.resource === 'services' ? { categories: ['all'] } : {}),
    storageVersionHash: Buffer.from(`${r.group}/${r.version}/${r.kind}`).toString('base64').slice(0, 11),
  };
}

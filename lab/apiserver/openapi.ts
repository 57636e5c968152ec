/**
 * Just enough OpenAPI v3 for kubectl: `kubectl apply/create/replace` validate by default, and
 * kubectl skips its own schema validation when the server's OpenAPI says the resource's PATCH
 * takes the `fieldValidation` query parameter (it then sends `fieldValidation=Strict` and lets
 * the server check). So each group-version document lists the resources' paths with their
 * operations, the x-kubernetes-group-version-kind extension and that parameter; it carries no
 * schemas, so `kubectl apply` computes strategic merge patches from its compiled-in types (the
 * same patchMergeKey tags resources.ts copies) and `kubectl explain` does not work.
 */
import { createHash } from 'node:crypto';
import { apiVersion, RESOURCES, type ResourceDef } from './resources.ts';

function gvPath(group: string, version: string): string {
  return group ? `apis/${group}/${version}` : `api/${version}`;
}

const QUERY = (name: string) => ({ name, in: 'query', schema: { type: 'string', uniqueItems: true } });

function operations(r: ResourceDef) {
  const gvk = { group: r.group, version: r.version, kind: r.kind };
  const op = (action: string, extra: Record<string, unknown> = {}) => ({
    operationId: `${action}${r.kind}`,
    'x-kubernetes-action': action,
    'x-kubernetes-group-version-kind': gvk,
    responses: { '200': { description: 'OK' } },
    ...extra,
  });
  const write = { parameters: [QUERY('dryRun'), QUERY('fieldManager'), QUERY('fieldValidation')] };
  const body = (types: string[]) => ({ requestBody: { content: Object.fromEntries(types.map((t) => [t, { schema: {} }])) } });
  const patch = { ...write, ...body(['application/json-patch+json', 'application/merge-patch+json', 'application/strategic-merge-patch+json']) };
  const prefix = `/${gvPath(r.group, r.version)}${r.namespaced ? '/namespaces/{namespace}' : ''}/${r.resource}`;
  const paths: Record<string, unknown> = {
    [prefix]: { get: op('list'), post: op('post', write) },
    [`${prefix}/{name}`]: { get: op('get'), put: op('put', write), patch: op('patch', patch), delete: op('delete') },
  };
  if (r.status) paths[`${prefix}/{name}/status`] = { get: op('get'), put: op('put', write), patch: op('patch', patch) };
  return paths;
}

function gvDoc(group: string, version: string) {
  const paths: Record<string, unknown> = {};
  for (const r of RESOURCES.filter((x) => x.group === group && x.version === version)) Object.assign(paths, operations(r));
  return { openapi: '3.0.0', info: { title: 'Kubernetes', version: 'v1.32.0-weft-lab' }, paths, components: { schemas: {} } };
}

const GVS = [...new Set(RESOURCES.map((r) => apiVersion(r)))].map((gv) => {
  const [group, version] = gv.includes('/') ? gv.split('/') : ['', gv];
  const doc = JSON.stringify(gvDoc(group!, version!));
  return { path: gvPath(group!, version!), doc, hash: createHash('sha512').update(doc).digest('hex').slice(0, 32).toUpperCase() };
});

/** The document at an /openapi/v3 path, or undefined (404). */
export function openapiV3(path: string): string | undefined {
  if (path === '/openapi/v3') {
    return JSON.stringify({ paths: Object.fromEntries(GVS.map((g) => [g.path, { serverRelativeURL: `/openapi/v3/${g.path}?hash=${g.hash}` }])) });
  }
  return GVS.find((g) => path === `/openapi/v3/${g.path}`)?.doc;
}

/**
 * The resources this server knows: where they live in the URL space, how discovery lists them,
 * their names' rules, strategic-merge list semantics (the `patchStrategy`/`patchMergeKey` tags of
 * k8s.io/api), which field selectors they take, and their create/update rules (defaults,
 * validation, what a status update may change). Service specifics are in services.ts.
 */
import type { KeyAllocator } from './alloc.ts';
import type { NameRule } from './names.ts';
import { checkLabelValue, checkQualifiedName, parseCIDR, parseIPv4 } from './names.ts';
import type { Json, PatchSchema } from './patch.ts';
import type { KubeObject } from './store.ts';
import { serviceHooks } from './services.ts';

export type Cause = { field: string; message: string };

/** What create/update hooks may use. */
export interface HookContext {
  serviceIPs: KeyAllocator;
  nodePorts: KeyAllocator;
  dryRun: boolean;
}

/** Undoes what a hook claimed (the write after it failed). */
export type Undo = () => Promise<void>;

export interface Hooks {
  /** Defaults and validates a new object; may claim values (cluster IPs), returning their undo. */
  create?(obj: KubeObject, ctx: HookContext): Promise<{ causes: Cause[]; undo?: Undo; commit?: Undo }>;
  /** Same for an update of `old`; `commit` runs after the write (releasing what the old one held). */
  update?(obj: KubeObject, old: KubeObject, ctx: HookContext): Promise<{ causes: Cause[]; undo?: Undo; commit?: Undo }>;
  /** After a delete (releases what the object held). */
  deleted?(old: KubeObject, ctx: HookContext): Promise<void>;
}

export interface ResourceDef {
  group: string;
  version: string;
  /** Plural, as in the URL. */
  resource: string;
  singular: string;
  kind: string;
  namespaced: boolean;
  shortNames: string[];
  nameRule: NameRule;
  /** Has a /status subresource: updates of the resource keep the old status, and /status the old spec. */
  status: boolean;
  /** A DELETE answers with the deleted object (kube's ReturnDeletedObject), not a Status. */
  returnDeleted: boolean;
  /** Sets metadata.generation (1 on create, +1 when anything but metadata and status changes). */
  generation: boolean;
  patchSchema: PatchSchema;
  /** Top-level fields of the kind (fieldValidation checks these and metadata's, not deeper). */
  topFields: string[];
  /** Extra field selector fields (metadata.name and metadata.namespace always work). */
  fields?: (obj: KubeObject) => Record<string, string>;
  hooks?: Hooks;
}

export function apiVersion(def: ResourceDef): string {
  return def.group ? `${def.group}/${def.version}` : def.version;
}

const SPEC_STATUS = ['spec', 'status'];

const meta: PatchSchema = {
  'metadata.finalizers': { primitive: true },
  'metadata.ownerReferences': { mergeKey: 'uid' },
};

const nodes: ResourceDef = {
  group: '',
  version: 'v1',
  resource: 'nodes',
  singular: 'node',
  kind: 'Node',
  returnDeleted: false,
  topFields: SPEC_STATUS,
  namespaced: false,
  shortNames: ['no'],
  nameRule: 'subdomain',
  status: true,
  generation: false,
  patchSchema: {
    ...meta,
    'spec.podCIDRs': { primitive: true },
    'status.conditions': { mergeKey: 'type' },
    'status.addresses': { mergeKey: 'type' },
  },
  fields: (o) => ({ 'spec.unschedulable': String((o.spec as { unschedulable?: boolean } | undefined)?.unschedulable ?? false) }),
  hooks: {
    async create(obj) {
      return { causes: nodeCauses(obj) };
    },
    async update(obj, old) {
      const causes = nodeCauses(obj);
      // The node IPAM controller sets podCIDR once; kube refuses to change it after that.
      const was = (old.spec ?? {}) as { podCIDR?: Json; podCIDRs?: Json };
      const now = obj.spec as { podCIDR?: Json; podCIDRs?: Json };
      if (was.podCIDR && now.podCIDR !== was.podCIDR) causes.push({ field: 'spec.podCIDR', message: `Forbidden: node updates may not change podCIDR except from "" to valid` });
      if (Array.isArray(was.podCIDRs) && was.podCIDRs.length && JSON.stringify(now.podCIDRs) !== JSON.stringify(was.podCIDRs))
        causes.push({ field: 'spec.podCIDRs', message: 'Forbidden: node updates may not change podCIDR except from "" to valid' });
      return { causes };
    },
  },
};

function nodeCauses(obj: KubeObject): Cause[] {
  const causes: Cause[] = [];
  const spec = (obj.spec ?? {}) as { podCIDR?: Json; podCIDRs?: Json };
  obj.spec = spec as Json;
  if (spec.podCIDR !== undefined && spec.podCIDR !== '' && !parseCIDR(spec.podCIDR))
    causes.push({ field: 'spec.podCIDR', message: `Invalid value: ${JSON.stringify(spec.podCIDR)}: must be a valid CIDR` });
  if (spec.podCIDRs !== undefined) {
    if (!Array.isArray(spec.podCIDRs)) causes.push({ field: 'spec.podCIDRs', message: 'must be a list' });
    else {
      spec.podCIDRs.forEach((c, i) => {
        if (!parseCIDR(c)) causes.push({ field: `spec.podCIDRs[${i}]`, message: `Invalid value: ${JSON.stringify(c)}: must be a valid CIDR` });
      });
      if (spec.podCIDR && spec.podCIDRs[0] !== spec.podCIDR) causes.push({ field: 'spec.podCIDRs', message: 'the first entry must match spec.podCIDR' });
    }
  } else if (typeof spec.podCIDR === 'string' && spec.podCIDR) {
    spec.podCIDRs = [spec.podCIDR];
  }
  const status = obj.status as { addresses?: Json } | undefined;
  if (status && status.addresses !== undefined && !Array.isArray(status.addresses)) causes.push({ field: 'status.addresses', message: 'must be a list' });
  return causes;
}

const services: ResourceDef = {
  group: '',
  version: 'v1',
  resource: 'services',
  singular: 'service',
  kind: 'Service',
  returnDeleted: true,
  topFields: SPEC_STATUS,
  namespaced: true,
  shortNames: ['svc'],
  nameRule: 'label1035',
  status: true,
  generation: false,
  patchSchema: {
    ...meta,
    'spec.ports': { mergeKey: 'port' },
    'spec.externalIPs': { primitive: true },
    'status.conditions': { mergeKey: 'type' },
  },
  hooks: serviceHooks,
};

const configmaps: ResourceDef = {
  group: '',
  version: 'v1',
  resource: 'configmaps',
  singular: 'configmap',
  kind: 'ConfigMap',
  returnDeleted: false,
  topFields: ['data', 'binaryData', 'immutable'],
  namespaced: true,
  shortNames: ['cm'],
  nameRule: 'subdomain',
  status: false,
  generation: false,
  patchSchema: meta,
  hooks: {
    async create(obj) {
      return { causes: configMapCauses(obj) };
    },
    async update(obj) {
      return { causes: configMapCauses(obj) };
    },
  },
};

function configMapCauses(obj: KubeObject): Cause[] {
  const causes: Cause[] = [];
  for (const f of ['data', 'binaryData'] as const) {
    const d = obj[f];
    if (d === undefined || d === null) continue;
    if (typeof d !== 'object' || Array.isArray(d)) {
      causes.push({ field: f, message: 'must be a map of strings' });
      continue;
    }
    for (const [k, v] of Object.entries(d)) {
      if (!/^[-._a-zA-Z0-9]{1,253}$/.test(k)) causes.push({ field: `${f}[${k}]`, message: "a valid config key must consist of alphanumeric characters, '-', '_' or '.'" });
      if (typeof v !== 'string') causes.push({ field: `${f}[${k}]`, message: 'must be a string' });
    }
  }
  return causes;
}

const namespaces: ResourceDef = {
  group: '',
  version: 'v1',
  resource: 'namespaces',
  singular: 'namespace',
  kind: 'Namespace',
  returnDeleted: true,
  topFields: SPEC_STATUS,
  namespaced: false,
  shortNames: ['ns'],
  nameRule: 'label',
  status: true,
  generation: false,
  patchSchema: { ...meta, 'status.conditions': { mergeKey: 'type' } },
  fields: (o) => ({ 'status.phase': String((o.status as { phase?: string } | undefined)?.phase ?? '') }),
  hooks: {
    async create(obj) {
      const name = String(obj.metadata.name);
      obj.metadata.labels = { ...((obj.metadata.labels ?? {}) as Record<string, Json>), 'kubernetes.io/metadata.name': name };
      obj.spec = { finalizers: ['kubernetes'], ...((obj.spec ?? {}) as Record<string, Json>) };
      obj.status = { phase: 'Active' };
      return { causes: [] };
    },
    async update(obj, old) {
      obj.metadata.labels = { ...((obj.metadata.labels ?? {}) as Record<string, Json>), 'kubernetes.io/metadata.name': String(old.metadata.name) };
      return { causes: [] };
    },
  },
};

const endpointslices: ResourceDef = {
  group: 'discovery.k8s.io',
  version: 'v1',
  resource: 'endpointslices',
  singular: 'endpointslice',
  kind: 'EndpointSlice',
  returnDeleted: false,
  topFields: ['addressType', 'endpoints', 'ports'],
  namespaced: true,
  shortNames: [],
  nameRule: 'subdomain',
  status: false,
  generation: true,
  // endpoints and ports are atomic lists (+listType=atomic): a patch replaces them.
  patchSchema: meta,
  hooks: {
    async create(obj) {
      return { causes: sliceCauses(obj) };
    },
    async update(obj, old) {
      const causes = sliceCauses(obj);
      if (obj.addressType !== old.addressType) causes.push({ field: 'addressType', message: 'field is immutable' });
      return { causes };
    },
  },
};

const PROTOCOLS = ['TCP', 'UDP', 'SCTP'];

function sliceCauses(obj: KubeObject): Cause[] {
  const causes: Cause[] = [];
  const at = obj.addressType;
  if (at !== 'IPv4' && at !== 'IPv6' && at !== 'FQDN') causes.push({ field: 'addressType', message: `Unsupported value: ${JSON.stringify(at ?? '')}: supported values: "FQDN", "IPv4", "IPv6"` });
  const eps = obj.endpoints ?? [];
  if (!Array.isArray(eps)) causes.push({ field: 'endpoints', message: 'must be a list' });
  else {
    if (eps.length > 1000) causes.push({ field: 'endpoints', message: 'Too many: must have at most 1000 items' });
    eps.forEach((e, i) => {
      const ep = e as { addresses?: Json; conditions?: Json };
      if (!Array.isArray(ep.addresses) || ep.addresses.length < 1 || ep.addresses.length > 100) {
        causes.push({ field: `endpoints[${i}].addresses`, message: 'must contain between 1 and 100 addresses' });
        return;
      }
      ep.addresses.forEach((a, j) => {
        if (at === 'IPv4' && parseIPv4(a) === undefined) causes.push({ field: `endpoints[${i}].addresses[${j}]`, message: `Invalid value: ${JSON.stringify(a)}: must be a valid IPv4 address` });
      });
      if (ep.conditions !== undefined) {
        for (const [k, v] of Object.entries((ep.conditions ?? {}) as Record<string, Json>)) {
          if (v !== null && typeof v !== 'boolean') causes.push({ field: `endpoints[${i}].conditions.${k}`, message: 'must be a boolean' });
        }
      }
    });
  }
  const ports = obj.ports ?? [];
  if (!Array.isArray(ports)) causes.push({ field: 'ports', message: 'must be a list' });
  else {
    if (ports.length > 100) causes.push({ field: 'ports', message: 'Too many: must have at most 100 items' });
    ports.forEach((p, i) => {
      const port = p as { port?: Json; protocol?: Json; name?: Json };
      if (port.protocol === undefined) port.protocol = 'TCP';
      if (!PROTOCOLS.includes(String(port.protocol))) causes.push({ field: `ports[${i}].protocol`, message: `Unsupported value: ${JSON.stringify(port.protocol)}` });
      if (port.port !== undefined && port.port !== null && !(Number.isInteger(port.port) && (port.port as number) >= 0 && (port.port as number) <= 65535))
        causes.push({ field: `ports[${i}].port`, message: 'must be between 0 and 65535, inclusive' });
      if (port.name === undefined) port.name = '';
    });
  }
  return causes;
}

/** Checks labels and annotations every object carries. */
export function metadataCauses(obj: KubeObject): Cause[] {
  const causes: Cause[] = [];
  for (const f of ['labels', 'annotations'] as const) {
    const m = obj.metadata[f];
    if (m === undefined || m === null) continue;
    if (typeof m !== 'object' || Array.isArray(m)) {
      causes.push({ field: `metadata.${f}`, message: 'must be a map of strings' });
      continue;
    }
    let size = 0;
    for (const [k, v] of Object.entries(m)) {
      const bad = checkQualifiedName(k);
      if (bad) causes.push({ field: `metadata.${f}`, message: `Invalid value: ${JSON.stringify(k)}: ${bad}` });
      if (f === 'labels') {
        const badV = checkLabelValue(v);
        if (badV) causes.push({ field: `metadata.labels`, message: `Invalid value: ${JSON.stringify(v)}: ${badV}` });
      } else if (typeof v !== 'string') causes.push({ field: `metadata.annotations`, message: `Invalid value for ${JSON.stringify(k)}: must be a string` });
      else size += k.length + v.length;
    }
    if (size > 256 * 1024) causes.push({ field: 'metadata.annotations', message: 'Too long: must have at most 262144 bytes' });
  }
  return causes;
}

/** Every resource this server serves. */
export const RESOURCES: readonly ResourceDef[] = [nodes, services, configmaps, namespaces, endpointslices];

/** The resource at group/version/resource, or undefined. */
export function findResource(group: string, version: string, resource: string): ResourceDef | undefined {
  return RESOURCES.find((r) => r.group === group && r.version === version && r.resource === resource);
}

const META_FIELDS = new Set([
  'name',
  'generateName',
  'namespace',
  'selfLink',
  'uid',
  'resourceVersion',
  'generation',
  'creationTimestamp',
  'deletionTimestamp',
  'deletionGracePeriodSeconds',
  'labels',
  'annotations',
  'ownerReferences',
  'finalizers',
  'managedFields',
]);

/** Fields of `obj` the kind does not have (top level and metadata only), as `spec.x`-style paths. */
export function unknownFields(def: ResourceDef, obj: KubeObject): string[] {
  const out: string[] = [];
  for (const k of Object.keys(obj)) if (k !== 'apiVersion' && k !== 'kind' && k !== 'metadata' && !def.topFields.includes(k)) out.push(k);
  for (const k of Object.keys(obj.metadata)) if (!META_FIELDS.has(k)) out.push(`metadata.${k}`);
  return out;
}

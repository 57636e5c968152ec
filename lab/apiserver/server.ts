/**
 * A small Kubernetes API server over plain HTTP for tests and the lab, backed by a real etcd
 * (see store.ts). It serves what weft and kubectl use: discovery, and get / list / watch / create
 * / update / patch / delete of Nodes (+status), Services (+status), EndpointSlices, ConfigMaps
 * and Namespaces, with label and field selectors, the three patch types, 409 on stale
 * resourceVersions, 410 for compacted ones and Status objects for every error. No auth, no
 * admission, no protobuf, no server-side apply, limit/continue ignored (a full list is a valid
 * answer to a limited one).
 *
 * Concurrency: requests run side by side; every write is a compare-and-swap on the key's revision
 * in etcd (retried for unconditional updates and patches), so the server keeps no state of its own
 * apart from open watches (one etcd watch each, cancelled when the client goes away).
 */
import { randomBytes, randomUUID } from 'node:crypto';
import { createServer, type IncomingMessage, type ServerResponse } from 'node:http';
import type { AddressInfo } from 'node:net';
import { Etcd3, type IOptions } from 'etcd3';
import type { Log } from '../../src/core/log.ts';
import { silentLog } from '../../src/core/log.ts';
import { errText } from '../../src/core/errors.ts';
import { etcdClientOptions } from '../../src/subnet/etcd.ts';
import { KeyAllocator } from './alloc.ts';
import { discovery } from './discovery.ts';
import { NodeIpam } from './nodeipam.ts';
import { openapiV3 } from './openapi.ts';
import { checkName, formatIPv4, parseCIDR } from './names.ts';
import { deepEqual, jsonPatch, mergePatch, PatchError, strategicMergePatch, type Json } from './patch.ts';
import { apiVersion, findResource, metadataCauses, RESOURCES, unknownFields, type HookContext, type ResourceDef } from './resources.ts';
import { matches, parseSelector, type Selector } from './selectors.ts';
import { ApiError, alreadyExists, badRequest, conflict, failure, invalid, notFound, type ResourceRef } from './status.ts';
import { asObject, checkDepth, isTrue, mediaType, parseRV, readBody, send } from './http.ts';
import { Store, type KubeObject } from './store.ts';
import { renderTable, wantsTable } from './table.ts';
import { serveWatch, withKind, type WatchContext } from './watch.ts';

export interface ApiServerOptions {
  /** Address to listen on (inside the namespace the process runs in). */
  host: string;
  /** 0 picks a free port. */
  port: number;
  /** etcd client URLs (with TLS files, kube-apiserver's --etcd-cafile/certfile/keyfile), or ready etcd3 options. */
  etcd: string[] | IOptions;
  etcdTls?: { cafile?: string; certfile?: string; keyfile?: string };
  /** Key prefix in etcd (default `/registry`). */
  etcdPrefix?: string;
  /** `--service-cluster-ip-range`, an IPv4 CIDR. */
  serviceClusterIPRange: string;
  /** `--service-node-port-range`, `first-last` (default 30000-32767). */
  nodePortRange?: string;
  /** How often a watch that asked for bookmarks gets one (default 60 s, as kube sends about once a minute). */
  bookmarkIntervalMs?: number;
  /**
   * Create `default/kubernetes` (ClusterIP = the range's first address, port 443 -> `address`:`port`)
   * and its EndpointSlice, as kube-apiserver does. Off unless asked for, so tests that count
   * Services see only their own.
   */
  kubernetesService?: { address: string; port?: number };
  /**
   * Also run kube-controller-manager's node IPAM (`--allocate-node-cidrs`): nodes without a
   * podCIDR get one from `clusterCIDR` (see nodeipam.ts).
   */
  nodeIpam?: { clusterCIDR: string; nodeMaskSize?: number };
  /** Largest request body accepted (default 3 MiB, kube-apiserver's limit). */
  maxBodyBytes?: number;
  /** Most watches open at once (default 4096); more get 429. */
  maxWatches?: number;
  /** Longest watch when the client names no timeoutSeconds (default 30 min, as --min-request-timeout). */
  maxWatchSeconds?: number;
  log?: Log;
}

export interface ApiServer {
  /** `http://host:port`. */
  readonly url: string;
  readonly store: Store;
  close(): Promise<void>;
}

/** Namespaces kube-apiserver creates at start-up. */
const SYSTEM_NAMESPACES = ['default', 'kube-system', 'kube-public', 'kube-node-lease'];

/** Starts the server; resolves once it listens and the system namespaces exist. */
export async function startApiServer(opts: ApiServerOptions): Promise<ApiServer> {
  const range = parseCIDR(opts.serviceClusterIPRange);
  if (!range || range.len > 30 || range.len < 8) throw new Error(`service cluster IP range "${opts.serviceClusterIPRange}" must be an IPv4 network between /8 and /30`);
  const np = /^(\d+)-(\d+)$/.exec(opts.nodePortRange ?? '30000-32767');
  if (!np || Number(np[1]) < 1 || Number(np[2]) > 65535 || Number(np[1]) > Number(np[2])) throw new Error(`node port range "${opts.nodePortRange}" must be first-last`);
  const client = new Etcd3(Array.isArray(opts.etcd) ? etcdClientOptions({ endpoints: opts.etcd, ...opts.etcdTls }) : opts.etcd);
  const store = new Store(client, opts.etcdPrefix);
  const size = 2 ** (32 - range.len);
  const api = new Api(store, {
    // The network and broadcast addresses are never handed out, as in kube's allocator.
    serviceIPs: new KeyAllocator(client, { dir: `${store.prefix}/ranges/serviceips`, first: range.base + 1, last: range.base + size - 2, what: 'service IPs', reserved: [range.base + 1] }),
    nodePorts: new KeyAllocator(client, { dir: `${store.prefix}/ranges/servicenodeports`, first: Number(np[1]), last: Number(np[2]), what: 'node ports' }),
    bookmarkIntervalMs: opts.bookmarkIntervalMs ?? 60_000,
    maxBodyBytes: opts.maxBodyBytes ?? 3 * 1024 * 1024,
    maxWatchSeconds: opts.maxWatchSeconds ?? 1800,
    maxWatches: opts.maxWatches ?? 4096,
    log: opts.log ?? silentLog,
  });
  const server = createServer((req, res) => void api.handle(req, res));
  server.headersTimeout = 30_000;
  server.requestTimeout = 0; // Watches are long; bodies are bounded by size and the socket timeout.
  try {
    const nsDef = findResource('', 'v1', 'namespaces')!;
    for (const name of SYSTEM_NAMESPACES) {
      if (!(await store.get(store.key(nsDef, undefined, name)))) await api.create(nsDef, undefined, { apiVersion: 'v1', kind: 'Namespace', metadata: { name } }, false);
    }
    if (opts.kubernetesService)
      await ensureKubernetesService(api, store, { clusterIP: formatIPv4(range.base + 1), address: opts.kubernetesService.address, port: opts.kubernetesService.port ?? opts.port });
    await new Promise<void>((resolve, reject) => {
      server.once('error', reject);
      server.listen(opts.port, opts.host, () => {
        server.off('error', reject);
        resolve();
      });
    });
  } catch (err) {
    client.close();
    throw new Error(`start api server on ${opts.host}:${opts.port}`, { cause: err });
  }
  const ipam = opts.nodeIpam ? new NodeIpam(store, { ...opts.nodeIpam, log: opts.log ?? silentLog }) : undefined;
  ipam?.start();
  const addr = server.address() as AddressInfo;
  const host = addr.family === 'IPv6' ? `[${addr.address}]` : addr.address;
  return {
    url: `http://${host}:${addr.port}`,
    store,
    async close() {
      await ipam?.stop();
      api.closeWatches();
      server.closeAllConnections();
      await new Promise<void>((r) => server.close(() => r()));
      client.close();
    },
  };
}

/**
 * The `kubernetes` Service and its EndpointSlice (kube's "bootstrap controller"): created when
 * missing, the slice's address and port brought up to date when they differ.
 */
async function ensureKubernetesService(api: Api, store: Store, o: { clusterIP: string; address: string; port: number }): Promise<void> {
  const svcDef = findResource('', 'v1', 'services')!;
  const sliceDef = findResource('discovery.k8s.io', 'v1', 'endpointslices')!;
  const labels = { component: 'apiserver', provider: 'kubernetes' };
  if (!(await store.get(store.key(svcDef, 'default', 'kubernetes')))) {
    await api.create(
      svcDef,
      'default',
      { apiVersion: 'v1', kind: 'Service', metadata: { name: 'kubernetes', labels }, spec: { clusterIP: o.clusterIP, ports: [{ name: 'https', port: 443, protocol: 'TCP', targetPort: o.port }] } },
      false,
    );
  }
  const slice = {
    apiVersion: 'discovery.k8s.io/v1',
    kind: 'EndpointSlice',
    metadata: { name: 'kubernetes', labels: { 'kubernetes.io/service-name': 'kubernetes', 'endpointslice.kubernetes.io/managed-by': 'weft-lab-apiserver' } },
    addressType: 'IPv4',
    endpoints: [{ addresses: [o.address], conditions: { ready: true } }],
    ports: [{ name: 'https', port: o.port, protocol: 'TCP' }],
  };
  const key = store.key(sliceDef, 'default', 'kubernetes');
  const cur = await store.get(key);
  if (!cur) await api.create(sliceDef, 'default', slice, false);
  else if (!deepEqual(cur.obj.endpoints ?? null, slice.endpoints) || !deepEqual(cur.obj.ports ?? null, slice.ports)) {
    await store.update(key, { ...cur.obj, endpoints: slice.endpoints, ports: slice.ports, metadata: { ...cur.obj.metadata, generation: Number(cur.obj.metadata.generation ?? 1) + 1 } }, cur.rev);
  }
}

interface ApiConfig {
  serviceIPs: KeyAllocator;
  nodePorts: KeyAllocator;
  bookmarkIntervalMs: number;
  maxBodyBytes: number;
  maxWatchSeconds: number;
  maxWatches: number;
  log: Log;
}

/** A parsed resource URL. */
interface Target {
  def: ResourceDef;
  namespace: string | undefined;
  name: string | undefined;
  subresource: 'status' | undefined;
  /** `/api/v1/watch/...`, the deprecated watch path. */
  watchPath: boolean;
}

// kube's GuaranteedUpdate retries until the request times out; this bounds it by count, with a
// short random pause once writers keep colliding.
const MAX_CONFLICT_RETRIES = 100;

async function backoff(attempt: number): Promise<void> {
  if (attempt >= 3) await new Promise((r) => setTimeout(r, Math.random() * Math.min(50, attempt * 5)));
}

class Api {
  readonly #store: Store;
  readonly #cfg: ApiConfig;
  readonly #watchCtx: WatchContext;

  constructor(store: Store, cfg: ApiConfig) {
    this.#store = store;
    this.#cfg = cfg;
    this.#watchCtx = { store, log: cfg.log, bookmarkIntervalMs: cfg.bookmarkIntervalMs, maxWatchSeconds: cfg.maxWatchSeconds, maxWatches: cfg.maxWatches, open: new Set() };
  }

  closeWatches(): void {
    for (const stop of [...this.#watchCtx.open]) stop();
  }

  async handle(req: IncomingMessage, res: ServerResponse): Promise<void> {
    const started = Date.now();
    try {
      await this.#route(req, res);
    } catch (err) {
      const e = err instanceof ApiError ? err : err instanceof PatchError ? new ApiError(422, 'Invalid', err.message) : undefined;
      if (!e) this.#cfg.log.error('api request failed', { method: req.method, url: req.url, err: errText(err) });
      const status = e ? e.toStatus() : failure(500, 'InternalError', `Internal error occurred: ${errText(err)}`);
      if (!res.headersSent) send(res, status.code, status);
      else res.destroy();
    } finally {
      this.#cfg.log.debug('api request', { method: req.method, url: req.url, code: res.statusCode, ms: Date.now() - started });
    }
  }

  async #route(req: IncomingMessage, res: ServerResponse): Promise<void> {
    const url = new URL(req.url ?? '/', 'http://x');
    const path = url.pathname.replace(/\/+$/, '') || '/';
    const method = req.method ?? 'GET';
    if (method === 'GET') {
      if (path === '/healthz' || path === '/readyz' || path === '/livez') {
        res.writeHead(200, { 'content-type': 'text/plain' }).end('ok');
        return;
      }
      const doc = discovery(path);
      if (doc !== undefined) return send(res, 200, doc);
      const oa = openapiV3(path);
      if (oa !== undefined) {
        res.writeHead(200, { 'content-type': 'application/json', 'content-length': Buffer.byteLength(oa) }).end(oa);
        return;
      }
    }
    const target = parseTarget(path);
    if (!target) throw new ApiError(404, 'NotFound', 'the server could not find the requested resource');
    // No object can have an invalid name, and names end up in etcd keys and selectors.
    if (target.name !== undefined && checkName(target.name, 'subdomain')) throw notFound(ref(target.def, target.name));
    const q = url.searchParams;
    const dryRun = q.getAll('dryRun').includes('All');
    if (q.getAll('dryRun').some((v) => v !== 'All')) throw badRequest('dryRun may only be "All"');
    const { def, namespace, name, subresource } = target;
    if (!name) {
      if (subresource) throw new ApiError(404, 'NotFound', 'the server could not find the requested resource');
      if (method === 'GET' && (target.watchPath || isTrue(q.get('watch')))) return this.#watch(req, res, target, q);
      if (method === 'GET') return this.#list(req, res, target, q);
      if (method === 'POST') {
        const body = asObject(await readBody(req, this.#cfg.maxBodyBytes));
        checkFields(def, body, fieldValidation(q), res);
        const created = await this.create(def, namespace, body, dryRun);
        return send(res, 201, created);
      }
      throw new ApiError(405, 'MethodNotAllowed', `the server does not allow this method on the requested resource`);
    }
    if (method === 'GET' && (target.watchPath || isTrue(q.get('watch')))) {
      const fs = q.get('fieldSelector');
      q.set('fieldSelector', fs ? `${fs},metadata.name=${name}` : `metadata.name=${name}`);
      return this.#watch(req, res, target, q);
    }
    switch (method) {
      case 'GET': {
        const cur = await this.#store.get(this.#store.key(def, namespace, name));
        if (!cur) throw notFound(ref(def, name));
        return sendObject(req, res, def, withKind(def, cur.obj), q);
      }
      case 'PUT': {
        const body = asObject(await readBody(req, this.#cfg.maxBodyBytes));
        checkFields(def, body, fieldValidation(q), res);
        return send(res, 200, await this.#put(target, name, body, dryRun));
      }
      case 'PATCH': {
        const type = mediaType(req);
        const raw = await readBody(req, this.#cfg.maxBodyBytes, { patch: true });
        checkDepth(raw);
        const fv = fieldValidation(q);
        return send(res, 200, await this.#patch(target, name, { type, raw, dryRun, check: (o) => checkFields(def, o, fv, res) }));
      }
      case 'DELETE': {
        const raw = (await readBody(req, this.#cfg.maxBodyBytes, { optional: true })) as Json | undefined;
        return send(res, 200, await this.#delete(target, name, { options: raw, dryRun }));
      }
      default:
        throw new ApiError(405, 'MethodNotAllowed', 'the server does not allow this method on the requested resource');
    }
  }

  #hookCtx(dryRun: boolean): HookContext {
    return { serviceIPs: this.#cfg.serviceIPs, nodePorts: this.#cfg.nodePorts, dryRun };
  }

  /** POST: checks, defaults, stores; the new object. */
  async create(def: ResourceDef, namespace: string | undefined, body: KubeObject, dryRun: boolean): Promise<KubeObject> {
    checkKind(def, body);
    const meta = body.metadata;
    if (def.namespaced) {
      if (meta.namespace !== undefined && meta.namespace !== '' && meta.namespace !== namespace)
        throw badRequest('the namespace of the provided object does not match the namespace sent on the request');
      const nsDef = findResource('', 'v1', 'namespaces')!;
      if (!(await this.#store.get(this.#store.key(nsDef, undefined, namespace!)))) throw notFound(ref(nsDef, namespace!));
      meta.namespace = namespace!;
    } else delete meta.namespace;
    if ((meta.name === undefined || meta.name === '') && typeof meta.generateName === 'string' && meta.generateName) {
      meta.name = `${meta.generateName}${randomSuffix()}`;
    }
    const name = meta.name;
    if (typeof name !== 'string' || name === '') throw invalid(ref(def, ''), [{ field: 'metadata.name', message: 'Required value: name or generateName is required' }]);
    const bad = checkName(name, def.nameRule);
    if (bad) throw invalid(ref(def, name), [{ field: 'metadata.name', message: `Invalid value: ${JSON.stringify(name)}: ${bad}` }]);
    if (meta.resourceVersion !== undefined && meta.resourceVersion !== '') throw badRequest('resourceVersion should not be set on objects to be created');
    meta.uid = randomUUID();
    meta.creationTimestamp = timestamp();
    for (const f of ['deletionTimestamp', 'deletionGracePeriodSeconds', 'selfLink', 'managedFields', 'resourceVersion']) delete meta[f];
    if (def.generation) meta.generation = 1;
    else delete meta.generation;
    const causes = metadataCauses(body);
    const hook = def.hooks?.create ? await def.hooks.create(body, this.#hookCtx(dryRun)) : { causes: [] };
    causes.push(...hook.causes);
    if (causes.length) {
      await hook.undo?.();
      throw invalid(ref(def, name), causes);
    }
    if (dryRun) {
      await hook.undo?.();
      return body;
    }
    let rev: bigint | undefined;
    try {
      rev = await this.#store.create(this.#store.key(def, namespace, name), body);
    } catch (err) {
      await hook.undo?.();
      throw err;
    }
    if (rev === undefined) {
      await hook.undo?.();
      throw alreadyExists(ref(def, name));
    }
    return { ...body, metadata: { ...body.metadata, resourceVersion: String(rev) } };
  }

  /** PUT: replaces the object (or its status) if `metadata.resourceVersion` is current or unset. */
  async #put(t: Target, name: string, body: KubeObject, dryRun: boolean): Promise<KubeObject> {
    checkKind(t.def, body);
    if (body.metadata.name !== undefined && body.metadata.name !== name) throw badRequest(`the name of the object (${String(body.metadata.name)}) does not match the name on the URL (${name})`);
    if (t.def.namespaced && body.metadata.namespace !== undefined && body.metadata.namespace !== '' && body.metadata.namespace !== t.namespace)
      throw badRequest('the namespace of the provided object does not match the namespace sent on the request');
    const rv = body.metadata.resourceVersion;
    if (rv !== undefined && rv !== '' && (typeof rv !== 'string' || !/^\d+$/.test(rv))) throw badRequest(`invalid resourceVersion ${JSON.stringify(rv)}`);
    return this.#update(t, name, { dryRun, conditional: typeof rv === 'string' && rv !== '', next: () => structuredClone(body) });
  }

  async #patch(t: Target, name: string, p: { type: string; raw: unknown; dryRun: boolean; check: (o: KubeObject) => void }): Promise<KubeObject> {
    const patch = p.raw as Json;
    let apply: (cur: KubeObject) => Json;
    switch (p.type) {
      case 'application/merge-patch+json':
        apply = (cur) => mergePatch(cur, patch);
        break;
      case 'application/strategic-merge-patch+json':
        apply = (cur) => strategicMergePatch(cur, patch, t.def.patchSchema);
        break;
      case 'application/json-patch+json':
        apply = (cur) => jsonPatch(cur, patch);
        break;
      case 'application/apply-patch+yaml':
        throw new ApiError(415, 'UnsupportedMediaType', 'server-side apply is not supported by this server');
      default:
        throw new ApiError(
          415,
          'UnsupportedMediaType',
          `the body of the request was in an unknown format - accepted media types include: application/json-patch+json, application/merge-patch+json, application/strategic-merge-patch+json`,
        );
    }
    // A patch that sets resourceVersion is a precondition: no retry past a conflict.
    const conditional = Array.isArray(patch)
      ? patch.some((op) => typeof op === 'object' && op !== null && !Array.isArray(op) && op.path === '/metadata/resourceVersion')
      : typeof patch === 'object' && patch !== null && typeof patch.metadata === 'object' && patch.metadata !== null && !Array.isArray(patch.metadata) && patch.metadata.resourceVersion != null;
    return this.#update(t, name, {
      dryRun: p.dryRun,
      conditional,
      next: (cur) => {
        const out = apply(cur);
        if (typeof out !== 'object' || out === null || Array.isArray(out)) throw new PatchError('the patched object is not a JSON object');
        const obj = asObject(out);
        p.check(obj);
        return obj;
      },
    });
  }

  /**
   * The shared update loop: `next` turns the current object into the wanted one; the write is a
   * CAS on the current revision, retried from a fresh read unless the caller's resourceVersion
   * was a precondition.
   */
  async #update(t: Target, name: string, o: { dryRun: boolean; conditional: boolean; next: (cur: KubeObject) => KubeObject }): Promise<KubeObject> {
    const { def } = t;
    const key = this.#store.key(def, t.namespace, name);
    for (let attempt = 0; ; attempt++) {
      const cur = await this.#store.get(key);
      if (!cur) throw notFound(ref(def, name));
      const old = withKind(def, cur.obj);
      const obj = o.next(structuredClone(old));
      checkKind(def, obj);
      const meta = obj.metadata;
      if (meta.name !== undefined && meta.name !== name) throw badRequest(`the name of the object (${String(meta.name)}) does not match the name on the URL (${name})`);
      const rv = meta.resourceVersion;
      if (rv !== undefined && rv !== '' && rv !== String(cur.rev)) throw conflict(ref(def, name), 'the object has been modified; please apply your changes to the latest version and try again');
      if (meta.uid !== undefined && meta.uid !== '' && meta.uid !== old.metadata.uid)
        throw conflict(ref(def, name), `Precondition failed: UID in precondition: ${String(old.metadata.uid)}, UID in object meta: ${String(meta.uid)}`);
      // What the server owns is kept from the stored object.
      meta.name = name;
      if (def.namespaced) meta.namespace = t.namespace!;
      else delete meta.namespace;
      for (const f of ['uid', 'creationTimestamp', 'deletionTimestamp', 'deletionGracePeriodSeconds', 'generation'] as const) {
        if (old.metadata[f] === undefined) delete meta[f];
        else meta[f] = old.metadata[f]!;
      }
      delete meta.resourceVersion;
      delete meta.managedFields;
      delete meta.selfLink;
      if (def.status) {
        if (t.subresource === 'status') {
          // A status write changes status and metadata only (flannel sets annotations this way).
          const status = obj.status;
          for (const k of Object.keys(obj)) if (k !== 'metadata' && k !== 'status') delete obj[k];
          for (const [k, v] of Object.entries(old)) if (k !== 'metadata' && k !== 'status') obj[k] = v;
          if (status === undefined) delete obj.status;
        } else if (old.status === undefined) delete obj.status;
        else obj.status = old.status;
      }
      if (def.generation && !sameExceptMeta(obj, old)) meta.generation = Number(old.metadata.generation ?? 0) + 1;
      const causes = metadataCauses(obj);
      const hook = def.hooks?.update ? await def.hooks.update(obj, old, this.#hookCtx(o.dryRun)) : { causes: [] };
      causes.push(...hook.causes);
      if (causes.length) {
        await hook.undo?.();
        throw invalid(ref(def, name), causes);
      }
      if (old.metadata.deletionTimestamp) {
        const before = Array.isArray(old.metadata.finalizers) ? old.metadata.finalizers : [];
        const now = Array.isArray(meta.finalizers) ? meta.finalizers : [];
        if (now.some((f) => !before.includes(f))) {
          await hook.undo?.();
          throw invalid(ref(def, name), [{ field: 'metadata.finalizers', message: 'Forbidden: no new finalizers can be added if the object is being deleted' }]);
        }
        if (now.length === 0 && !o.dryRun) {
          // The last finalizer is gone: the deletion completes.
          await hook.undo?.();
          const rev = await this.#store.delete(key, cur.rev);
          if (rev !== undefined) {
            await def.hooks?.deleted?.(old, this.#hookCtx(false));
            return { ...obj, metadata: { ...obj.metadata, resourceVersion: String(rev) } };
          }
          if (o.conditional || attempt >= MAX_CONFLICT_RETRIES) throw conflict(ref(def, name), 'the object has been modified; please apply your changes to the latest version and try again');
          await backoff(attempt);
          continue;
        }
      }
      const oldStored = { ...old, metadata: { ...old.metadata } };
      delete oldStored.metadata.resourceVersion;
      // An update that changes nothing is not written (no new resourceVersion, no watch event).
      if (deepEqual(obj, oldStored) || o.dryRun) {
        await hook.undo?.();
        return o.dryRun ? { ...obj, metadata: { ...obj.metadata, resourceVersion: String(cur.rev) } } : old;
      }
      let rev: bigint | undefined;
      try {
        rev = await this.#store.update(key, obj, cur.rev);
      } catch (err) {
        await hook.undo?.();
        throw err;
      }
      if (rev !== undefined) {
        await hook.commit?.();
        return { ...obj, metadata: { ...obj.metadata, resourceVersion: String(rev) } };
      }
      await hook.undo?.();
      if (o.conditional || attempt >= MAX_CONFLICT_RETRIES) throw conflict(ref(def, name), 'the object has been modified; please apply your changes to the latest version and try again');
      await backoff(attempt);
    }
  }

  async #delete(t: Target, name: string, o: { options: Json | undefined; dryRun: boolean }): Promise<unknown> {
    const { def } = t;
    if (t.subresource) throw new ApiError(405, 'MethodNotAllowed', 'the server does not allow this method on the requested resource');
    const pre = (typeof o.options === 'object' && o.options !== null && !Array.isArray(o.options) ? o.options.preconditions : undefined) as { uid?: Json; resourceVersion?: Json } | undefined;
    const key = this.#store.key(def, t.namespace, name);
    for (let attempt = 0; ; attempt++) {
      const cur = await this.#store.get(key);
      if (!cur) throw notFound(ref(def, name));
      if (pre?.uid && pre.uid !== cur.obj.metadata.uid)
        throw conflict(ref(def, name), `Precondition failed: UID in precondition: ${String(pre.uid)}, UID in object meta: ${String(cur.obj.metadata.uid)}`);
      if (pre?.resourceVersion && pre.resourceVersion !== String(cur.rev))
        throw conflict(ref(def, name), `Precondition failed: ResourceVersion in precondition: ${String(pre.resourceVersion)}, ResourceVersion in object meta: ${cur.rev}`);
      const details = { name, ...(def.group ? { group: def.group } : {}), kind: def.resource, uid: String(cur.obj.metadata.uid) };
      if (o.dryRun) return { kind: 'Status', apiVersion: 'v1', metadata: {}, status: 'Success', details };
      if (def.resource === 'namespaces' && SYSTEM_NAMESPACES.slice(0, 3).includes(name)) throw new ApiError(403, 'Forbidden', `namespaces "${name}" is forbidden: this namespace may not be deleted`);
      const finalizers = cur.obj.metadata.finalizers;
      if (Array.isArray(finalizers) && finalizers.length) {
        // Finalizers keep the object: it is only marked, and goes when the last one is removed.
        if (cur.obj.metadata.deletionTimestamp) return withKind(def, cur.obj);
        const marked = { ...cur.obj, metadata: { ...cur.obj.metadata, deletionTimestamp: timestamp(), deletionGracePeriodSeconds: 0 } };
        const rev = await this.#store.update(key, marked, cur.rev);
        if (rev !== undefined) return withKind(def, { ...marked, metadata: { ...marked.metadata, resourceVersion: String(rev) } });
        if (attempt >= MAX_CONFLICT_RETRIES) throw conflict(ref(def, name), 'the object has been modified; please apply your changes to the latest version and try again');
        await backoff(attempt);
        continue;
      }
      const rev = await this.#store.delete(key, cur.rev);
      if (rev === undefined) {
        if (attempt >= MAX_CONFLICT_RETRIES) throw conflict(ref(def, name), 'the object has been modified; please apply your changes to the latest version and try again');
        await backoff(attempt);
        continue;
      }
      await def.hooks?.deleted?.(cur.obj, this.#hookCtx(false));
      // A namespace takes its contents with it (kube's namespace controller does this later).
      if (def.resource === 'namespaces') {
        for (const r of RESOURCES.filter((x) => x.namespaced)) {
          const items = await this.#store.list(this.#store.dir(r, name));
          for (const it of items.items) await r.hooks?.deleted?.(it.obj, this.#hookCtx(false));
          await this.#store.deleteAll(this.#store.dir(r, name));
        }
      }
      // Services and Namespaces answer with the deleted object, the others with a Status.
      if (def.returnDeleted) return withKind(def, cur.obj);
      return { kind: 'Status', apiVersion: 'v1', metadata: {}, status: 'Success', details };
    }
  }

  #watch(req: IncomingMessage, res: ServerResponse, t: Target, q: URLSearchParams): Promise<void> {
    return serveWatch(req, res, { def: t.def, dir: this.#store.dir(t.def, t.namespace), q, filter: selectors(t.def, q), ctx: this.#watchCtx });
  }

  async #list(req: IncomingMessage, res: ServerResponse, t: Target, q: URLSearchParams): Promise<void> {
    const { def } = t;
    const filter = selectors(def, q);
    const rv = parseRV(q.get('resourceVersion'));
    const exact = q.get('resourceVersionMatch') === 'Exact';
    if (exact && (rv === undefined || rv === 0n)) throw badRequest('resourceVersionMatch "Exact" needs a non-zero resourceVersion');
    const listing = await this.#store.list(this.#store.dir(def, t.namespace), { atRevision: exact ? rv : undefined });
    // kube's watch cache answers a version it has not reached yet with 504 (client-go retries).
    if (rv !== undefined && rv > listing.rev)
      throw new ApiError(504, 'Timeout', `Too large resource version: ${rv}, current: ${listing.rev}`, { causes: [{ reason: 'ResourceVersionTooLarge', message: 'Too large resource version' }] });
    const items = listing.items.map((s) => s.obj).filter(filter);
    const bare = items.map(({ apiVersion: _a, kind: _k, ...rest }) => rest);
    const list = {
      kind: `${def.kind}List`,
      apiVersion: apiVersion(def),
      metadata: { resourceVersion: String(exact ? rv : listing.rev) },
      // Items carry no kind/apiVersion in a list, as kube-apiserver sends them.
      items: bare,
    };
    if (wantsTable(req))
      return send(
        res,
        200,
        renderTable(
          def,
          items.map((o) => withKind(def, o)),
          { resourceVersion: list.metadata.resourceVersion, includeObject: q.get('includeObject') },
        ),
      );
    send(res, 200, list);
  }
}

function selectors(def: ResourceDef, q: URLSearchParams): (o: KubeObject) => boolean {
  const labels: Selector = parseSelector(q.get('labelSelector') ?? undefined);
  const fields: Selector = parseSelector(q.get('fieldSelector') ?? undefined, { field: true });
  for (const r of fields) {
    if (r.key !== 'metadata.name' && r.key !== 'metadata.namespace' && !(def.fields && r.key in def.fields({ metadata: {} } as KubeObject)))
      throw badRequest(`"${r.key}" is not a known field selector: only "metadata.name", "metadata.namespace"`);
  }
  return (o) => {
    const l = (o.metadata.labels ?? {}) as Record<string, string>;
    if (!matches(labels, l)) return false;
    if (!fields.length) return true;
    const f = { 'metadata.name': String(o.metadata.name ?? ''), 'metadata.namespace': String(o.metadata.namespace ?? ''), ...def.fields?.(o) };
    return matches(fields, f);
  };
}

function parseTarget(path: string): Target | undefined {
  let seg: string[];
  try {
    seg = path
      .split('/')
      .filter(Boolean)
      .map((s) => decodeURIComponent(s));
  } catch {
    throw badRequest('malformed URL escape');
  }
  let group: string;
  let version: string;
  let rest: string[];
  if (seg[0] === 'api' && seg.length >= 3) [group, version, rest] = ['', seg[1]!, seg.slice(2)];
  else if (seg[0] === 'apis' && seg.length >= 4) [group, version, rest] = [seg[1]!, seg[2]!, seg.slice(3)];
  else return undefined;
  let watchPath = false;
  if (rest[0] === 'watch') {
    watchPath = true;
    rest = rest.slice(1);
  }
  let namespace: string | undefined;
  if (rest[0] === 'namespaces' && rest.length >= 3 && findResource(group, version, rest[2]!)?.namespaced) {
    namespace = rest[1]!;
    rest = rest.slice(2);
  }
  const def = findResource(group, version, rest[0] ?? '');
  if (!def || rest.length > 3) return undefined;
  if (def.namespaced && namespace === undefined && rest.length > 1) return undefined;
  if (!def.namespaced && namespace !== undefined) return undefined;
  const sub = rest[2];
  if (sub !== undefined && !(sub === 'status' && def.status)) return undefined;
  if (namespace !== undefined && checkName(namespace, 'label')) return undefined;
  return { def, namespace, name: rest[1], subresource: sub as 'status' | undefined, watchPath };
}

function ref(def: ResourceDef, name: string): ResourceRef {
  return { group: def.group, resource: def.resource, kind: def.kind, name };
}

function checkKind(def: ResourceDef, obj: KubeObject): void {
  if (obj.kind !== undefined && obj.kind !== def.kind) throw badRequest(`the kind of the object (${String(obj.kind)}) does not match the resource (${def.kind})`);
  if (obj.apiVersion !== undefined && obj.apiVersion !== apiVersion(def))
    throw badRequest(`the API version in the data (${String(obj.apiVersion)}) does not match the expected API version (${apiVersion(def)})`);
  obj.apiVersion = apiVersion(def);
  obj.kind = def.kind;
}

type FieldValidation = 'Strict' | 'Warn' | 'Ignore';

function fieldValidation(q: URLSearchParams): FieldValidation {
  const v = q.get('fieldValidation') ?? 'Warn';
  if (v !== 'Strict' && v !== 'Warn' && v !== 'Ignore') throw badRequest(`fieldValidation must be one of "Strict", "Warn", "Ignore", not ${JSON.stringify(v)}`);
  return v;
}

/**
 * kube's server-side field validation, for the top level and metadata only: Strict refuses
 * unknown fields (400), Warn (the default) answers with Warning headers, Ignore stays quiet.
 */
function checkFields(def: ResourceDef, obj: KubeObject, mode: FieldValidation, res: ServerResponse): void {
  if (mode === 'Ignore') return;
  const unknown = unknownFields(def, obj);
  if (!unknown.length) return;
  if (mode === 'Strict') throw badRequest(`strict decoding error: ${unknown.map((f) => `unknown field "${f}"`).join(', ')}`);
  if (!res.headersSent)
    res.setHeader(
      'Warning',
      unknown.map((f) => `299 - "unknown field \\"${f}\\""`),
    );
}

function sameExceptMeta(a: KubeObject, b: KubeObject): boolean {
  const strip = (o: KubeObject) => Object.fromEntries(Object.entries(o).filter(([k]) => k !== 'metadata' && k !== 'status')) as Json;
  return deepEqual(strip(a), strip(b));
}

function sendObject(req: IncomingMessage, res: ServerResponse, def: ResourceDef, obj: KubeObject, q: URLSearchParams): void {
  const table = wantsTable(req) ? renderTable(def, [obj], { resourceVersion: String(obj.metadata.resourceVersion), includeObject: q.get('includeObject') }) : undefined;
  send(res, 200, table ?? obj);
}

function timestamp(): string {
  return new Date().toISOString().replace(/\.\d{3}Z$/, 'Z');
}

function randomSuffix(): string {
  // kube's generateName suffix: 5 characters without vowels or look-alikes.
  const alphabet = 'bcdfghjklmnpqrstvwxz2456789';
  return [...randomBytes(5)].map((b) => alphabet[b % alphabet.length]).join('');
}

/**
 * Decodes the protobuf bodies typed clients send (`application/vnd.kubernetes.protobuf`, e.g.
 * `kubectl create namespace|configmap|service`) into the JSON the rest of the server handles.
 * The envelope is the 4 bytes `k8s\0` and a runtime.Unknown {typeMeta, raw}; `raw` is the object
 * in the k8s.io/api generated.proto layout. Only the kinds below are known, with the fields of
 * theirs that JSON clients can set; unknown fields are skipped as protobuf readers do. Empty
 * strings, lists and maps are dropped, as Go's `omitempty` JSON encoding would. Responses stay
 * JSON (kubectl accepts both).
 */
import { badRequest } from './status.ts';
import type { Json } from './patch.ts';

type Kind = 'string' | 'bytes' | 'bool' | 'int' | 'intstr' | 'smap' | 'bmap' | { msg: string };
type Field = { n: number; name: string; kind: Kind; repeated?: true };

const f = (n: number, name: string, kind: Kind, repeated?: true): Field => ({ n, name, kind, ...(repeated ? { repeated } : {}) });

const MESSAGES: Record<string, Field[]> = {
  Unknown: [f(1, 'typeMeta', { msg: 'TypeMeta' }), f(2, 'raw', 'bytes'), f(3, 'contentEncoding', 'string'), f(4, 'contentType', 'string')],
  TypeMeta: [f(1, 'apiVersion', 'string'), f(2, 'kind', 'string')],
  ObjectMeta: [
    f(1, 'name', 'string'),
    f(2, 'generateName', 'string'),
    f(3, 'namespace', 'string'),
    f(5, 'uid', 'string'),
    f(6, 'resourceVersion', 'string'),
    f(11, 'labels', 'smap'),
    f(12, 'annotations', 'smap'),
    f(13, 'ownerReferences', { msg: 'OwnerReference' }, true),
    f(14, 'finalizers', 'string', true),
  ],
  OwnerReference: [f(5, 'apiVersion', 'string'), f(1, 'kind', 'string'), f(3, 'name', 'string'), f(4, 'uid', 'string'), f(6, 'controller', 'bool'), f(7, 'blockOwnerDeletion', 'bool')],
  ConfigMap: [f(1, 'metadata', { msg: 'ObjectMeta' }), f(4, 'immutable', 'bool'), f(2, 'data', 'smap'), f(3, 'binaryData', 'bmap')],
  Namespace: [f(1, 'metadata', { msg: 'ObjectMeta' }), f(2, 'spec', { msg: 'NamespaceSpec' })],
  NamespaceSpec: [f(1, 'finalizers', 'string', true)],
  Service: [f(1, 'metadata', { msg: 'ObjectMeta' }), f(2, 'spec', { msg: 'ServiceSpec' })],
  ServiceSpec: [
    f(1, 'ports', { msg: 'ServicePort' }, true),
    f(2, 'selector', 'smap'),
    f(3, 'clusterIP', 'string'),
    f(18, 'clusterIPs', 'string', true),
    f(4, 'type', 'string'),
    f(5, 'externalIPs', 'string', true),
    f(7, 'sessionAffinity', 'string'),
    f(8, 'loadBalancerIP', 'string'),
    f(9, 'loadBalancerSourceRanges', 'string', true),
    f(10, 'externalName', 'string'),
    f(11, 'externalTrafficPolicy', 'string'),
    f(12, 'healthCheckNodePort', 'int'),
    f(13, 'publishNotReadyAddresses', 'bool'),
    f(19, 'ipFamilies', 'string', true),
    f(17, 'ipFamilyPolicy', 'string'),
    f(20, 'allocateLoadBalancerNodePorts', 'bool'),
    f(21, 'loadBalancerClass', 'string'),
    f(22, 'internalTrafficPolicy', 'string'),
    f(23, 'trafficDistribution', 'string'),
  ],
  ServicePort: [f(1, 'name', 'string'), f(2, 'protocol', 'string'), f(6, 'appProtocol', 'string'), f(3, 'port', 'int'), f(4, 'targetPort', 'intstr'), f(5, 'nodePort', 'int')],
  IntOrString: [f(1, 'type', 'int'), f(2, 'intVal', 'int'), f(3, 'strVal', 'string')],
  MapEntry: [f(1, 'key', 'string'), f(2, 'value', 'bytes')],
};

/** The top-level kinds a protobuf body may carry, by apiVersion/kind. */
const TOP: Record<string, string> = { 'v1/ConfigMap': 'ConfigMap', 'v1/Namespace': 'Namespace', 'v1/Service': 'Service' };

const MAGIC = Buffer.from([0x6b, 0x38, 0x73, 0x00]);
const MAX_DEPTH = 32;

class Reader {
  pos = 0;
  readonly buf: Buffer;

  constructor(buf: Buffer) {
    this.buf = buf;
  }

  varint(): bigint {
    let out = 0n;
    for (let shift = 0n; shift < 70n; shift += 7n) {
      if (this.pos >= this.buf.length) throw badRequest('protobuf: truncated varint');
      const b = this.buf[this.pos++]!;
      out |= BigInt(b & 0x7f) << shift;
      if (!(b & 0x80)) return out;
    }
    throw badRequest('protobuf: varint too long');
  }

  bytes(): Buffer {
    const len = Number(this.varint());
    if (len > this.buf.length - this.pos) throw badRequest('protobuf: length past the end');
    const b = this.buf.subarray(this.pos, this.pos + len);
    this.pos += len;
    return b;
  }

  skip(wire: number): void {
    if (wire === 0) this.varint();
    else if (wire === 1) this.pos += 8;
    else if (wire === 2) this.bytes();
    else if (wire === 5) this.pos += 4;
    else throw badRequest(`protobuf: unsupported wire type ${wire}`);
    if (this.pos > this.buf.length) throw badRequest('protobuf: truncated field');
  }
}

function decode(buf: Buffer, msg: string, depth: number): Record<string, Json> {
  if (depth > MAX_DEPTH) throw badRequest('protobuf: nested too deeply');
  const fields = MESSAGES[msg]!;
  const out: Record<string, Json> = {};
  const r = new Reader(buf);
  while (r.pos < buf.length) {
    const key = r.varint();
    const n = Number(key >> 3n);
    const wire = Number(key & 7n);
    const fd = fields.find((x) => x.n === n);
    if (!fd) {
      r.skip(wire);
      continue;
    }
    const want = fd.kind === 'bool' || fd.kind === 'int' ? 0 : 2;
    if (wire !== want) throw badRequest(`protobuf: ${msg}.${fd.name} has wire type ${wire}`);
    let v: Json;
    const k = fd.kind;
    if (k === 'bool') v = r.varint() !== 0n;
    else if (k === 'int') v = Number(BigInt.asIntN(32, r.varint()));
    else if (k === 'string') v = r.bytes().toString('utf8');
    else if (k === 'bytes') v = r.bytes().toString('base64');
    else if (k === 'intstr') {
      const is = decode(r.bytes(), 'IntOrString', depth + 1);
      v = is.type === 1 ? ((is.strVal as string) ?? '') : ((is.intVal as number) ?? 0);
    } else if (k === 'smap' || k === 'bmap') {
      const e = decode(r.bytes(), 'MapEntry', depth + 1);
      const val = Buffer.from((e.value as string) ?? '', 'base64');
      const m = (out[fd.name] ?? {}) as Record<string, Json>;
      m[(e.key as string) ?? ''] = k === 'smap' ? val.toString('utf8') : val.toString('base64');
      out[fd.name] = m;
      continue;
    } else v = decode(r.bytes(), k.msg, depth + 1);
    if (fd.repeated) out[fd.name] = [...((out[fd.name] as Json[] | undefined) ?? []), v];
    else out[fd.name] = v;
  }
  return out;
}

/** Drops what Go's omitempty JSON would leave out. */
function prune(v: Json): Json | undefined {
  if (Array.isArray(v)) return v.length ? v.map((x) => prune(x) ?? {}) : undefined;
  if (v && typeof v === 'object') {
    const o: Record<string, Json> = {};
    for (const [k, x] of Object.entries(v)) {
      const p = prune(x);
      if (p !== undefined) o[k] = p;
    }
    return Object.keys(o).length ? o : undefined;
  }
  if (v === '' || v === false || v === null) return undefined;
  return v;
}

/** True when `body` starts with the Kubernetes protobuf envelope. */
export function isProtobuf(body: Buffer): boolean {
  return body.length >= 4 && body.subarray(0, 4).equals(MAGIC);
}

/** The JSON object a protobuf body encodes; 415-worthy kinds and malformed input throw 400. */
export function decodeProtobuf(body: Buffer): Record<string, Json> {
  if (!isProtobuf(body)) throw badRequest('protobuf: missing the "k8s\\0" envelope');
  const env = decode(body.subarray(4), 'Unknown', 0);
  const tm = (env.typeMeta ?? {}) as { apiVersion?: string; kind?: string };
  const gvk = `${tm.apiVersion ?? ''}/${tm.kind ?? ''}`;
  const msg = TOP[gvk];
  if (!msg) throw badRequest(`protobuf bodies of ${gvk} are not supported by this server; send JSON`);
  if (env.contentEncoding) throw badRequest('protobuf: content encodings are not supported');
  const obj = decode(Buffer.from((env.raw as string) ?? '', 'base64'), msg, 1);
  const pruned = (prune(obj) ?? {}) as Record<string, Json>;
  // Map values that are empty strings are data, not absence: keep them.
  for (const [path, src] of [
    ['data', obj.data],
    ['binaryData', obj.binaryData],
  ] as const)
    if (src) pruned[path] = src;
  const meta = obj.metadata as Record<string, Json> | undefined;
  if (meta?.labels || meta?.annotations) {
    pruned.metadata = { ...((pruned.metadata ?? {}) as Record<string, Json>), ...(meta.labels ? { labels: meta.labels } : {}), ...(meta.annotations ? { annotations: meta.annotations } : {}) };
  }
  const spec = pruned.spec as { ports?: Array<Record<string, Json>>; healthCheckNodePort?: Json } | undefined;
  // Zero node ports and targetPorts are "unset" (omitempty) in Go as well.
  if (spec?.healthCheckNodePort === 0) delete spec.healthCheckNodePort;
  for (const p of spec?.ports ?? []) {
    if (p.targetPort === 0) delete p.targetPort;
    if (p.nodePort === 0) delete p.nodePort;
  }
  return { apiVersion: tm.apiVersion!, kind: tm.kind!, ...pruned };
}

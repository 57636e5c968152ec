/**
 * Service defaults, validation and allocation, as kube-apiserver's service REST storage does:
 * type ClusterIP by default; `spec.clusterIP` allocated from the service range when empty
 * (`None` = headless, ExternalName services get none); node ports allocated for NodePort and
 * LoadBalancer services; ports default protocol TCP and targetPort = port; on update the
 * allocated values are carried over when left out, and may not be changed.
 */
import type { Cause, HookContext, Hooks, Undo } from './resources.ts';
import { RangeFullError } from './alloc.ts';
import { formatIPv4, parseIPv4 } from './names.ts';
import type { Json } from './patch.ts';
import type { KubeObject } from './store.ts';

type Port = { name?: Json; protocol?: Json; port?: Json; targetPort?: Json; nodePort?: Json; appProtocol?: Json };
type Spec = {
  type?: Json;
  clusterIP?: Json;
  clusterIPs?: Json;
  ports?: Json;
  selector?: Json;
  sessionAffinity?: Json;
  externalName?: Json;
  ipFamilies?: Json;
  ipFamilyPolicy?: Json;
  internalTrafficPolicy?: Json;
  externalTrafficPolicy?: Json;
};

const TYPES = ['ClusterIP', 'NodePort', 'LoadBalancer', 'ExternalName'];
const PROTOCOLS = ['TCP', 'UDP', 'SCTP'];

function specOf(obj: KubeObject): Spec {
  if (typeof obj.spec !== 'object' || obj.spec === null || Array.isArray(obj.spec)) obj.spec = {};
  return obj.spec as Spec;
}

function needsNodePorts(type: Json | undefined): boolean {
  return type === 'NodePort' || type === 'LoadBalancer';
}

/** Defaults and checks everything that does not need the allocators. */
function defaultAndCheck(obj: KubeObject): Cause[] {
  const causes: Cause[] = [];
  const spec = specOf(obj);
  spec.type ??= 'ClusterIP';
  if (!TYPES.includes(String(spec.type)))
    causes.push({ field: 'spec.type', message: `Unsupported value: ${JSON.stringify(spec.type)}: supported values: "ClusterIP", "ExternalName", "LoadBalancer", "NodePort"` });
  spec.sessionAffinity ??= 'None';
  if (spec.sessionAffinity !== 'None' && spec.sessionAffinity !== 'ClientIP') causes.push({ field: 'spec.sessionAffinity', message: `Unsupported value: ${JSON.stringify(spec.sessionAffinity)}` });
  if (spec.selector !== undefined && spec.selector !== null) {
    if (typeof spec.selector !== 'object' || Array.isArray(spec.selector)) causes.push({ field: 'spec.selector', message: 'must be a map of strings' });
    else for (const [k, v] of Object.entries(spec.selector)) if (typeof v !== 'string') causes.push({ field: `spec.selector[${k}]`, message: 'must be a string' });
  }
  const external = spec.type === 'ExternalName';
  if (external) {
    if (typeof spec.externalName !== 'string' || !spec.externalName) causes.push({ field: 'spec.externalName', message: 'Required value' });
    if (spec.clusterIP) causes.push({ field: 'spec.clusterIP', message: 'may not be set for ExternalName services' });
  } else {
    spec.ipFamilies ??= ['IPv4'];
    spec.ipFamilyPolicy ??= 'SingleStack';
    spec.internalTrafficPolicy ??= 'Cluster';
    if (needsNodePorts(spec.type)) spec.externalTrafficPolicy ??= 'Cluster';
    const ip = spec.clusterIP ?? '';
    if (ip !== '' && ip !== 'None' && parseIPv4(ip) === undefined) causes.push({ field: 'spec.clusterIP', message: `Invalid value: ${JSON.stringify(ip)}: must be a valid IP address or "None"` });
    if (ip === 'None' && needsNodePorts(spec.type)) causes.push({ field: 'spec.clusterIP', message: `may not be "None" for ${String(spec.type)} services` });
    if (spec.clusterIPs !== undefined && spec.clusterIPs !== null) {
      if (!Array.isArray(spec.clusterIPs) || spec.clusterIPs.length > 1 || (spec.clusterIPs.length === 1 && ip !== '' && spec.clusterIPs[0] !== ip))
        causes.push({ field: 'spec.clusterIPs', message: 'must be a single-item list matching spec.clusterIP (IPv4 single stack)' });
      else if (spec.clusterIPs.length === 1 && ip === '') spec.clusterIP = spec.clusterIPs[0]!;
    }
  }
  if (spec.ports === undefined || spec.ports === null) spec.ports = [];
  if (!Array.isArray(spec.ports)) {
    causes.push({ field: 'spec.ports', message: 'must be a list' });
    return causes;
  }
  const ports = spec.ports as Port[];
  if (ports.length === 0 && !external && spec.clusterIP !== 'None') causes.push({ field: 'spec.ports', message: 'Required value' });
  const names = new Set<string>();
  const seen = new Set<string>();
  ports.forEach((p, i) => {
    const f = `spec.ports[${i}]`;
    if (typeof p !== 'object' || p === null || Array.isArray(p)) {
      causes.push({ field: f, message: 'must be an object' });
      return;
    }
    p.protocol ??= 'TCP';
    if (!PROTOCOLS.includes(String(p.protocol))) causes.push({ field: `${f}.protocol`, message: `Unsupported value: ${JSON.stringify(p.protocol)}: supported values: "SCTP", "TCP", "UDP"` });
    if (!Number.isInteger(p.port) || (p.port as number) < 1 || (p.port as number) > 65535)
      causes.push({ field: `${f}.port`, message: `Invalid value: ${JSON.stringify(p.port ?? null)}: must be between 1 and 65535, inclusive` });
    p.targetPort ??= p.port ?? null;
    const tp = p.targetPort;
    if (typeof tp === 'number' ? !Number.isInteger(tp) || tp < 1 || tp > 65535 : typeof tp !== 'string' || !/^[a-z0-9]([-a-z0-9]{0,13}[a-z0-9])?$/.test(tp))
      causes.push({ field: `${f}.targetPort`, message: `Invalid value: ${JSON.stringify(tp)}: must be a port number (1-65535) or an IANA service name` });
    const name = typeof p.name === 'string' ? p.name : '';
    if (p.name !== undefined && typeof p.name !== 'string') causes.push({ field: `${f}.name`, message: 'must be a string' });
    if (ports.length > 1 && !name) causes.push({ field: `${f}.name`, message: 'Required value' });
    if (name && names.has(name)) causes.push({ field: `${f}.name`, message: `Duplicate value: ${JSON.stringify(name)}` });
    names.add(name);
    const key = `${String(p.port)}/${String(p.protocol)}`;
    if (seen.has(key)) causes.push({ field: f, message: `Duplicate value: port ${String(p.port)} protocol ${String(p.protocol)}` });
    seen.add(key);
    if (p.nodePort !== undefined && p.nodePort !== null && p.nodePort !== 0) {
      if (!needsNodePorts(spec.type)) causes.push({ field: `${f}.nodePort`, message: `Forbidden: may not be used when \`type\` is '${String(spec.type)}'` });
      else if (!Number.isInteger(p.nodePort)) causes.push({ field: `${f}.nodePort`, message: 'must be an integer' });
    } else delete p.nodePort;
  });
  return causes;
}

/** The values an object holds in the two ranges. */
function held(obj: KubeObject | undefined): { ips: number[]; ports: number[] } {
  if (!obj) return { ips: [], ports: [] };
  const spec = specOf(obj);
  const ip = parseIPv4(spec.clusterIP);
  const ports = Array.isArray(spec.ports) ? (spec.ports as Port[]).map((p) => p.nodePort).filter((n): n is number => Number.isInteger(n)) : [];
  return { ips: ip === undefined ? [] : [ip], ports: [...new Set(ports)] };
}

/**
 * Claims what `obj` asks for that `old` did not hold; allocates empty cluster IP and node ports.
 * On any failure releases what it claimed. Returns causes (422) or the claims' undo.
 */
async function allocate(obj: KubeObject, old: KubeObject | undefined, ctx: HookContext): Promise<{ causes: Cause[]; undo?: Undo }> {
  const spec = specOf(obj);
  const owner = `${String(obj.metadata.namespace)}/${String(obj.metadata.name)}`;
  const before = held(old);
  const undo: Undo[] = [];
  const rollback = async () => {
    for (const u of undo.reverse()) await u().catch(() => undefined);
  };
  const causes: Cause[] = [];
  try {
    if (spec.type !== 'ExternalName' && spec.clusterIP !== 'None') {
      if (!spec.clusterIP) {
        if (!ctx.dryRun) {
          const n = await ctx.serviceIPs.allocate(owner);
          undo.push(() => ctx.serviceIPs.release(n));
          spec.clusterIP = formatIPv4(n);
        }
      } else {
        const n = parseIPv4(spec.clusterIP)!;
        if (!ctx.serviceIPs.contains(n))
          causes.push({
            field: 'spec.clusterIPs',
            message: `Invalid value: ${JSON.stringify([spec.clusterIP])}: failed to allocate IP ${String(spec.clusterIP)}: provided IP is not in the valid range. The range of valid IPs is the service cluster IP range`,
          });
        else if (!before.ips.includes(n) && !ctx.dryRun) {
          if (await ctx.serviceIPs.claim(n, owner)) undo.push(() => ctx.serviceIPs.release(n));
          else
            causes.push({ field: 'spec.clusterIPs', message: `Invalid value: ${JSON.stringify([spec.clusterIP])}: failed to allocate IP ${String(spec.clusterIP)}: provided IP is already allocated` });
        }
      }
    }
    if (spec.type !== 'ExternalName') spec.clusterIPs = spec.clusterIP ? [spec.clusterIP] : [];
    if (needsNodePorts(spec.type)) {
      const ports = spec.ports as Port[];
      ports.forEach((p, i) => {
        if (p.nodePort !== undefined && !ctx.nodePorts.contains(p.nodePort as number))
          causes.push({ field: `spec.ports[${i}].nodePort`, message: `Invalid value: ${String(p.nodePort)}: provided port is not in the valid range` });
      });
      if (!causes.length && !ctx.dryRun) {
        for (const [i, p] of ports.entries()) {
          if (p.nodePort !== undefined) {
            const n = p.nodePort as number;
            if (before.ports.includes(n) || ports.slice(0, i).some((q) => q.nodePort === n)) continue;
            if (await ctx.nodePorts.claim(n, owner)) undo.push(() => ctx.nodePorts.release(n));
            else causes.push({ field: `spec.ports[${i}].nodePort`, message: `Invalid value: ${n}: provided port is already allocated` });
          } else {
            const n = await ctx.nodePorts.allocate(owner);
            undo.push(() => ctx.nodePorts.release(n));
            p.nodePort = n;
          }
        }
      }
    }
  } catch (err) {
    await rollback();
    if (err instanceof RangeFullError) return { causes: [{ field: 'spec', message: `Internal error: ${err.message}` }] };
    throw err;
  }
  if (causes.length) {
    await rollback();
    return { causes };
  }
  return { causes, undo: rollback };
}

/** Releases what `old` held and `now` does not. */
async function releaseDropped(old: KubeObject, now: KubeObject | undefined, ctx: HookContext): Promise<void> {
  if (ctx.dryRun) return;
  const a = held(old);
  const b = held(now);
  for (const ip of a.ips) if (!b.ips.includes(ip) && ctx.serviceIPs.contains(ip)) await ctx.serviceIPs.release(ip);
  for (const p of a.ports) if (!b.ports.includes(p) && ctx.nodePorts.contains(p)) await ctx.nodePorts.release(p);
}

export const serviceHooks: Hooks = {
  async create(obj, ctx) {
    obj.status = { loadBalancer: {} };
    const causes = defaultAndCheck(obj);
    if (causes.length) return { causes };
    return allocate(obj, undefined, ctx);
  },

  async update(obj, old, ctx) {
    const spec = specOf(obj);
    const oldSpec = specOf(old);
    // Left-out allocated values are carried over (kube's patchAllocatedValues).
    if (spec.type !== 'ExternalName' && oldSpec.type !== 'ExternalName') {
      if (!spec.clusterIP && oldSpec.clusterIP) spec.clusterIP = oldSpec.clusterIP;
      if ((!Array.isArray(spec.clusterIPs) || spec.clusterIPs.length === 0) && oldSpec.clusterIPs) spec.clusterIPs = oldSpec.clusterIPs;
    }
    if (needsNodePorts(spec.type) && needsNodePorts(oldSpec.type) && Array.isArray(spec.ports) && Array.isArray(oldSpec.ports)) {
      for (const p of spec.ports as Port[]) {
        if (typeof p !== 'object' || p === null || p.nodePort) continue;
        const prev = (oldSpec.ports as Port[]).find((q) => q.port === p.port && (q.protocol ?? 'TCP') === (p.protocol ?? 'TCP'));
        if (prev?.nodePort) p.nodePort = prev.nodePort;
      }
    }
    const causes = defaultAndCheck(obj);
    if (oldSpec.type !== 'ExternalName' && spec.type !== 'ExternalName' && oldSpec.clusterIP && spec.clusterIP !== oldSpec.clusterIP)
      causes.push({ field: 'spec.clusterIPs[0]', message: `Invalid value: ${JSON.stringify(spec.clusterIP)}: may not change once set` });
    if (causes.length) return { causes };
    const res = await allocate(obj, old, ctx);
    if (res.causes.length) return res;
    return { causes: [], undo: res.undo, commit: () => releaseDropped(old, obj, ctx) };
  },

  async deleted(old, ctx) {
    await releaseDropped(old, undefined, ctx);
  },
};

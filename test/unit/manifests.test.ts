/**
 * The install manifests, the conflist and the Dockerfile must agree with each other: no Docker
 * engine or cluster runs here, so this is where a renamed ConfigMap key, a probe on the wrong
 * port or an image path the Dockerfile never creates gets caught.
 */
import test from 'ava';
import { readFileSync, readdirSync } from 'node:fs';
import { dirname, join, posix } from 'node:path';
import { parseAllDocuments } from 'yaml';
import * as kubeClient from '@kubernetes/client-node';
import { parseOptions } from '../../src/daemon/options.ts';
import { DEFAULTS as CNI_DEFAULTS } from '../../src/cni/config.ts';
import { DEFAULT_SOCKET } from '../../src/fastpath/server.ts';

const root = join(import.meta.dirname, '..', '..');

type Obj = Record<string, any>;

/** The objects of one manifest directory (its *.yaml files, in the order kubectl applies them). */
function loadManifests(dir: string): Obj[] {
  const objs: Obj[] = [];
  for (const file of readdirSync(dir)
    .filter((f) => f.endsWith('.yaml'))
    .sort()) {
    for (const doc of parseAllDocuments(readFileSync(join(dir, file), 'utf8'))) {
      if (doc.errors.length) throw new Error(`${file}: ${doc.errors[0]!.message}`);
      const obj = doc.toJS();
      if (obj) objs.push(obj);
    }
  }
  return objs;
}

/** One install: `install/` (Kubernetes mode, the default) or `install/etcd/` (etcd mode). */
interface ManifestSet {
  mode: 'kube' | 'etcd';
  dir: string;
  objs: Obj[];
  ns: Obj;
  sa: Obj;
  role: Obj;
  binding: Obj;
  cm: Obj;
  ds: Obj;
  pod: Obj;
  allContainers: Obj[];
  weftd: Obj;
  /** Environment weftd's options are parsed with (what the manifest's env gives, resolved). */
  env: NodeJS.ProcessEnv;
}

function manifestSet(mode: 'kube' | 'etcd'): ManifestSet {
  const dir = mode === 'kube' ? join(root, 'install') : join(root, 'install', 'etcd');
  const objs = loadManifests(dir);
  const one = (kind: string): Obj => {
    const found = objs.filter((o) => o.kind === kind);
    if (found.length !== 1) throw new Error(`${dir}: expected one ${kind}, found ${found.length}`);
    return found[0]!;
  };
  const ds = one('DaemonSet');
  const pod = ds.spec.template.spec;
  const weftd = pod.containers.find((c: Obj) => c.name === 'weftd');
  // Downward-API values as kubelet would fill them in; etcd endpoints from the ConfigMap.
  const cm = one('ConfigMap');
  const env: NodeJS.ProcessEnv = {};
  for (const e of weftd.env ?? []) {
    if (e.value !== undefined) env[e.name] = e.value;
    else if (e.valueFrom?.configMapKeyRef) env[e.name] = cm.data[e.valueFrom.configMapKeyRef.key];
    else if (e.valueFrom?.fieldRef?.fieldPath === 'spec.nodeName') env[e.name] = 'node-1';
    else if (e.valueFrom?.fieldRef?.fieldPath === 'status.hostIP') env[e.name] = '198.51.100.7';
  }
  return {
    mode,
    dir,
    objs,
    ns: one('Namespace'),
    sa: one('ServiceAccount'),
    role: one('ClusterRole'),
    binding: one('ClusterRoleBinding'),
    cm,
    ds,
    pod,
    allContainers: [...(pod.initContainers ?? []), ...pod.containers],
    weftd,
    env,
  };
}

const sets = [manifestSet('kube'), manifestSet('etcd')];
const [kube, etcd] = sets as [ManifestSet, ManifestSet];
const conflist = JSON.parse(readFileSync(join(root, 'cni-conf', '10-weft.conflist'), 'utf8'));

/** Dockerfile instructions of the final stage, continuation lines joined. */
function dockerfile(): { stages: string[][]; final: string[] } {
  const lines = readFileSync(join(root, 'Dockerfile'), 'utf8').replace(/\\\n/g, ' ').split('\n');
  const stages: string[][] = [];
  for (const line of lines.map((l) => l.trim()).filter((l) => l && !l.startsWith('#'))) {
    if (/^FROM\s/i.test(line)) stages.push([]);
    stages.at(-1)?.push(line);
  }
  return { stages, final: stages.at(-1)! };
}

/** Every path the final image gets from COPY (destinations, with sources' basenames under dirs). */
function imagePaths(): Set<string> {
  const paths = new Set<string>();
  for (const line of dockerfile().final) {
    const m = /^COPY\s+(?:--from=\S+\s+)?(.+)$/i.exec(line);
    if (m) {
      const parts = m[1]!.split(/\s+/);
      const dest = parts.pop()!;
      paths.add(dest.replace(/\/$/, ''));
      if (dest.endsWith('/')) for (const src of parts) paths.add(posix.join(dest, posix.basename(src)));
    }
    const ln = /^RUN\s+ln\s+-s\s+(.+)$/.exec(line);
    if (ln) {
      const parts = ln[1]!.split(/\s+/);
      const dest = parts.pop()!;
      for (const src of parts) paths.add(posix.join(dest, posix.basename(src)));
    }
  }
  return paths;
}

/** `resource verb` strings (`nodes get`, `discovery.k8s.io/endpointslices list`) a role grants. */
function granted(role: Obj): Set<string> {
  const out = new Set<string>();
  for (const rule of role.rules ?? []) {
    for (const group of rule.apiGroups ?? []) {
      for (const res of rule.resources ?? []) {
        for (const verb of rule.verbs ?? []) out.add(`${group ? `${group}/` : ''}${res} ${verb}`);
      }
    }
  }
  return out;
}

/**
 * Kubernetes API calls in src/ and cmd/, mapped to the permission each needs: client-node's typed
 * methods (`core.listServiceForAllNamespaces()`: every method name of every `*Api` class
 * client-node exports is looked for) and the collection paths handed to its Watch /
 * makeInformer (src/kube/informer.ts), which need `watch`. A typed call this table does not know
 * fails the test, so no new call slips in without its RBAC.
 */
const TYPED_CALLS: Record<string, string> = {
  readNode: 'nodes get',
  listNode: 'nodes list',
  patchNode: 'nodes patch',
  replaceNode: 'nodes update',
  patchNodeStatus: 'nodes/status patch',
  replaceNodeStatus: 'nodes/status update',
  listServiceForAllNamespaces: 'services list',
  listNamespacedService: 'services list',
  listEndpointSliceForAllNamespaces: 'discovery.k8s.io/endpointslices list',
  listNamespacedEndpointSlice: 'discovery.k8s.io/endpointslices list',
};
const WATCH_PATHS: Record<string, string> = {
  '/api/v1/nodes': 'nodes watch',
  '/api/v1/services': 'services watch',
  '/apis/discovery.k8s.io/v1/endpointslices': 'discovery.k8s.io/endpointslices watch',
};

/** Every method name of client-node's generated API classes (CoreV1Api, DiscoveryV1Api, ...). */
const API_METHODS: Set<string> = (() => {
  const out = new Set<string>();
  for (const [name, value] of Object.entries(kubeClient)) {
    if (!/Api$/.test(name) || typeof value !== 'function' || !value.prototype) continue;
    // Generated per-resource methods (`readNode`, `listServiceForAllNamespaces`); the generic
    // KubernetesObjectApi's bare `list`/`create` would match every array and map in src/.
    for (const m of Object.getOwnPropertyNames(value.prototype)) if (/^(?:read|list|patch|replace|create|delete|connect|watch)[A-Z]/.test(m)) out.add(m);
  }
  return out;
})();

function sourceFiles(dir: string): string[] {
  const out: string[] = [];
  for (const e of readdirSync(dir, { withFileTypes: true })) {
    const p = join(dir, e.name);
    if (e.isDirectory()) out.push(...sourceFiles(p));
    else if (e.name.endsWith('.ts')) out.push(p);
  }
  return out;
}

/** Permissions the code in src/ and cmd/ needs, each with where it is used. */
function usedPermissions(): { used: Map<string, string>; unknown: string[] } {
  const used = new Map<string, string>();
  const unknown: string[] = [];
  for (const file of [...sourceFiles(join(root, 'src')), ...sourceFiles(join(root, 'cmd'))]) {
    const text = readFileSync(file, 'utf8');
    const where = file.slice(root.length + 1);
    if (/\bKubernetesObjectApi\b/.test(text)) unknown.push(`${where}: KubernetesObjectApi (generic calls: add their permissions here)`);
    for (const m of text.matchAll(/\.([a-z]\w*)\(/g)) {
      if (!API_METHODS.has(m[1]!)) continue;
      const perm = TYPED_CALLS[m[1]!];
      if (perm) used.set(perm, where);
      else unknown.push(`${where}: ${m[1]}`);
    }
    for (const m of text.matchAll(/['"`](\/apis?\/[a-z0-9./-]+)['"`?]/g)) {
      const perm = WATCH_PATHS[m[1]!];
      if (perm) used.set(perm, where);
      else unknown.push(`${where}: ${m[1]}`);
    }
  }
  return { used, unknown };
}

for (const set of sets) {
  const { mode, objs, ns, sa, role, binding, cm, ds, pod, allContainers, weftd } = set;
  const title = (what: string) => `${mode} mode (${set.dir.slice(root.length + 1)}/): ${what}`;

  test(title('every manifest parses and carries the kinds an install needs'), (t) => {
    t.deepEqual(objs.map((o) => o.kind).sort(), ['ClusterRole', 'ClusterRoleBinding', 'ConfigMap', 'DaemonSet', 'Namespace', 'ServiceAccount']);
    for (const o of objs) t.truthy(o.apiVersion, `${o.kind} has an apiVersion`);
  });

  test(title('namespaced objects live in the Namespace, the binding names the role and account'), (t) => {
    for (const o of [sa, cm, ds]) t.is(o.metadata.namespace, ns.metadata.name, `${o.kind} namespace`);
    t.is(binding.roleRef.kind, 'ClusterRole');
    t.is(binding.roleRef.name, role.metadata.name);
    t.deepEqual(binding.subjects, [{ kind: 'ServiceAccount', name: sa.metadata.name, namespace: ns.metadata.name }]);
    t.is(pod.serviceAccountName, sa.metadata.name);
  });

  test(title('ConfigMap keys referenced by env and volumes exist; its conflist is cni-conf/10-weft.conflist'), (t) => {
    const keys = new Set(Object.keys(cm.data));
    for (const c of allContainers) {
      for (const e of c.env ?? []) {
        const ref = e.valueFrom?.configMapKeyRef;
        if (ref) {
          t.is(ref.name, cm.metadata.name, `${c.name} ${e.name}`);
          // An optional key may be absent, but the ConfigMap must show the operator how to set it.
          if (ref.optional && !keys.has(ref.key)) t.regex(readFileSync(join(set.dir, '20-configmap.yaml'), 'utf8'), new RegExp(`#\\s*${ref.key}:`), `${c.name} ${e.name} -> ${ref.key}`);
          else t.true(keys.has(ref.key), `${c.name} ${e.name} -> ${ref.key}`);
        }
      }
    }
    const cmVolumes = pod.volumes.filter((v: Obj) => v.configMap);
    t.true(cmVolumes.length > 0);
    for (const v of cmVolumes) {
      t.is(v.configMap.name, cm.metadata.name);
      for (const item of v.configMap.items ?? []) t.true(keys.has(item.key), `volume item ${item.key}`);
    }
    t.deepEqual(JSON.parse(cm.data['cni-conf.json']), conflist);
    const net = JSON.parse(cm.data['net-conf.json']);
    t.regex(net.Network, /^\d+\.\d+\.\d+\.\d+\/\d+$/);
    t.is(net.Backend.Type, 'vxlan');
  });

  test(title('DaemonSet: host network and PIDs, no cluster DNS, tolerates every taint, requests resources'), (t) => {
    t.true(pod.hostNetwork);
    // Runtimes may name a pod's namespace /proc/<pid>/ns/net with a host pid.
    t.true(pod.hostPID);
    // Cluster DNS runs on the pod network: depending on it deadlocks a fresh cluster. `Default`
    // is the node's resolver (ClusterFirst would silently mean the same for hostNetwork, say it).
    t.is(pod.dnsPolicy, 'Default');
    t.true(pod.tolerations.some((tol: Obj) => tol.operator === 'Exists' && tol.effect === 'NoSchedule' && !tol.key));
    t.true(pod.tolerations.some((tol: Obj) => tol.operator === 'Exists' && tol.effect === 'NoExecute' && !tol.key));
    for (const c of allContainers) t.truthy(c.resources?.requests?.memory, `${c.name} requests memory`);
    const selector = ds.spec.selector.matchLabels;
    for (const [k, v] of Object.entries(selector)) t.is(ds.spec.template.metadata.labels[k], v);
  });

  test(title('only weftd is privileged, with the reason beside it; init containers get only what they need'), (t) => {
    // The fast path needs setns (SYS_ADMIN) and a writable /proc/sys (sysctls in pod namespaces),
    // which only a privileged container gets; the YAML says why.
    t.true(weftd.securityContext.privileged);
    const yaml = readFileSync(join(set.dir, '30-daemonset.yaml'), 'utf8');
    const reason = yaml.slice(0, yaml.indexOf('privileged: true'));
    t.regex(reason.slice(-2500), /SYS_ADMIN: setns\(CLONE_NEWNET\)/);
    t.regex(reason.slice(-2500), /read-only/);
    t.true(pod.initContainers.length > 0);
    for (const c of pod.initContainers) {
      const sc = c.securityContext ?? {};
      t.falsy(sc.privileged, `${c.name} is not privileged`);
      t.false(sc.allowPrivilegeEscalation, `${c.name}: no privilege escalation`);
      t.true(sc.readOnlyRootFilesystem, `${c.name}: read-only root`);
      t.deepEqual(sc.capabilities, { drop: ['ALL'] }, `${c.name}: no capabilities`);
      t.is(sc.seccompProfile?.type, 'RuntimeDefault', `${c.name}: default seccomp`);
    }
    // Writing root-owned host directories needs uid 0 (nothing more); the rest runs as nobody.
    for (const c of pod.initContainers) t.is(c.securityContext.runAsUser, c.name === 'install-cni' ? 0 : 65534, c.name);
  });

  test(title('volume mounts name declared volumes; hostPaths cover the subnet file and CNI dirs'), (t) => {
    const volumes = new Map<string, Obj>(pod.volumes.map((v: Obj) => [v.name, v]));
    for (const c of allContainers) {
      for (const m of c.volumeMounts ?? []) t.true(volumes.has(m.name), `${c.name} mounts ${m.name}`);
    }
    const hostPaths = pod.volumes
      .filter((v: Obj) => v.hostPath)
      .map((v: Obj) => v.hostPath.path)
      .sort();
    t.deepEqual(hostPaths, ['/etc/cni/net.d', '/opt/cni', '/run/flannel', '/run/weft', '/var/lib/cni/networks', '/var/run/netns']);

    // weftd writes the subnet file into the hostPath the CNI plugin (on the host) reads it from.
    const subnetFile = weftd.args.find((a: string) => a.startsWith('--subnet-file=')).split('=')[1];
    t.is(subnetFile, conflist.plugins[0].subnetFile);
    const mount = weftd.volumeMounts.find((m: Obj) => m.mountPath === dirname(subnetFile));
    t.truthy(mount, 'weftd mounts the subnet file directory');
    t.is(volumes.get(mount.name)!.hostPath.path, dirname(conflist.plugins[0].subnetFile));
  });

  /** weftd's mount of `containerPath` and the hostPath behind it. */
  const weftdHostPath = (containerPath: string): { mount: Obj; hostPath?: string } => {
    const mount = weftd.volumeMounts.find((m: Obj) => containerPath === m.mountPath || containerPath.startsWith(`${m.mountPath}/`));
    if (!mount) return { mount };
    const vol = pod.volumes.find((v: Obj) => v.name === mount.name);
    return { mount, hostPath: vol?.hostPath && posix.join(vol.hostPath.path, containerPath.slice(mount.mountPath.length)) };
  };

  test(title("fast path: weftd serves the socket the launcher dials, on the host, with the fallback's IPAM store and the pods' namespaces"), (t) => {
    const opts = parseOptions(weftd.args, set.env, 'node')!;
    // The launcher dials the conflist's fastpathSocket, else its compiled-in default.
    const launcher = readFileSync(join(root, 'src', 'fastpath', 'launcher.c'), 'utf8');
    const launcherDefault = /#define DEFAULT_SOCKET "([^"]+)"/.exec(launcher)![1];
    t.is(launcherDefault, DEFAULT_SOCKET, 'launcher and weftd share the default');
    t.is(opts.cniSocket, conflist.plugins[0].fastpathSocket ?? launcherDefault, 'weftd --cni-socket is where the launcher dials');
    t.is(weftdHostPath(posix.dirname(opts.cniSocket)).hostPath, posix.dirname(opts.cniSocket), 'the socket directory is the same host directory');

    // Same IPAM store as weft-standalone on the host, or two allocators share a subnet blindly.
    const dataDir = conflist.plugins[0].dataDir ?? CNI_DEFAULTS.dataDir;
    const ipam = weftdHostPath(dataDir);
    t.truthy(ipam.mount, `weftd mounts ${dataDir}`);
    t.is(ipam.hostPath, dataDir, "IPAM store is the host's");
    t.falsy(ipam.mount.readOnly);
    // Pod namespaces appear after weftd started: they must propagate into the container.
    for (const nsDir of ['/var/run/netns', '/run/netns']) {
      const m = weftdHostPath(`${nsDir}/cni-1234`);
      if (!m.mount) continue;
      t.is(m.hostPath, `${nsDir}/cni-1234`);
      t.is(m.mount.mountPropagation, 'HostToContainer');
    }
    t.true(
      weftd.volumeMounts.some((m: Obj) => m.mountPropagation === 'HostToContainer' && /^\/(var\/)?run\/netns$/.test(m.mountPath)),
      'weftd sees pod namespaces',
    );
    t.truthy(weftdHostPath(opts.subnetFile).mount);
    // weftd serves only its own network: the conflist must name exactly it, or every request is refused.
    const plugin = conflist.plugins[0];
    t.is(plugin.subnetFile ?? CNI_DEFAULTS.subnetFile, opts.subnetFile, 'conflist subnetFile is weftd --subnet-file');
    t.is(dataDir, opts.cniDataDir, 'conflist dataDir is weftd --cni-data-dir');
    t.is(plugin.bridge ?? CNI_DEFAULTS.bridge, opts.cniBridge, 'conflist bridge is weftd --cni-bridge');
  });

  test(title('install-cni writes where kubelet and the packaged plugin look'), (t) => {
    const init = pod.initContainers.find((c: Obj) => c.name === 'install-cni');
    const env = Object.fromEntries(init.env.map((e: Obj) => [e.name, e.value]));
    const hostPathOf = (containerPath: string): string => {
      const m = init.volumeMounts.find((vm: Obj) => containerPath === vm.mountPath || containerPath.startsWith(`${vm.mountPath}/`));
      t.truthy(m, `${containerPath} is on a mount`);
      const vol = pod.volumes.find((v: Obj) => v.name === m.name);
      return posix.join(vol.hostPath.path, containerPath.slice(m.mountPath.length));
    };
    const binDir = hostPathOf(env.WEFT_HOST_CNI_BIN_DIR);
    t.is(binDir, '/opt/cni/bin');
    // The packaged plugin loads its addons from <executable>/../lib/weft (scripts/package.ts).
    t.is(hostPathOf(env.WEFT_HOST_CNI_LIB_DIR), posix.join(binDir, '..', 'lib', 'weft'));
    t.is(hostPathOf(env.WEFT_HOST_CNI_CONF_DIR), '/etc/cni/net.d');
    const confMount = init.volumeMounts.find((vm: Obj) => env.WEFT_CNI_CONF_FILE.startsWith(`${vm.mountPath}/`));
    const confVol = pod.volumes.find((v: Obj) => v.name === confMount.name);
    t.true(confVol.configMap.items.some((i: Obj) => posix.join(confMount.mountPath, i.path) === env.WEFT_CNI_CONF_FILE && i.key === 'cni-conf.json'));
    const script = readFileSync(join(root, 'install', 'install-cni.sh'), 'utf8');
    for (const name of ['WEFT_HOST_CNI_BIN_DIR', 'WEFT_HOST_CNI_LIB_DIR', 'WEFT_HOST_CNI_CONF_DIR', 'WEFT_CNI_CONF_FILE']) {
      t.true(script.includes(`\${${name}:-`), `install-cni.sh reads ${name}`);
    }
    t.regex(script, /src=\$\{WEFT_CNI_SRC_DIR:-\/opt\/weft\/cni\}/);
    t.true(imagePaths().has('/opt/weft/cni'), 'the image has the packaged plugin where install-cni looks');
  });

  test(title('probes hit weftd health endpoints on the address it is told to serve (its default)'), (t) => {
    const addr = weftd.args.find((a: string) => a.startsWith('--healthz-addr=')).split('=')[1];
    t.is(addr, parseOptions([], {}, 'node')!.healthzAddr, "the manifest states weftd's default explicitly");
    // Every flag the DaemonSet passes is one weftd accepts.
    t.notThrows(() => parseOptions(weftd.args, set.env, 'node'));
    const [host, port] = addr.split(':');
    for (const [probe, path] of [
      [weftd.livenessProbe, '/healthz'],
      [weftd.readinessProbe, '/readyz'],
    ] as const) {
      t.is(probe.httpGet.path, path);
      t.is(String(probe.httpGet.port), port);
      t.is(probe.httpGet.host, host);
    }
  });

  test(title('every command the manifests run is a file the Dockerfile puts in the image'), (t) => {
    const paths = imagePaths();
    const images = new Set(allContainers.map((c) => c.image));
    t.is(images.size, 1, 'one image for all containers');
    for (const c of allContainers) t.true(paths.has(c.command[0]), `${c.name}: ${c.command[0]} in the image`);
  });
}

test('the two sets differ only where the mode does: same names, same image, same node-side layout', (t) => {
  for (const kind of ['Namespace', 'ServiceAccount', 'ClusterRole', 'ConfigMap', 'DaemonSet']) {
    t.is(kube.objs.find((o) => o.kind === kind)!.metadata.name, etcd.objs.find((o) => o.kind === kind)!.metadata.name, kind);
  }
  t.deepEqual(kube.ns, etcd.ns, 'one Namespace definition');
  t.is(kube.weftd.image, etcd.weftd.image);
  t.deepEqual(
    kube.pod.initContainers.find((c: Obj) => c.name === 'install-cni'),
    etcd.pod.initContainers.find((c: Obj) => c.name === 'install-cni'),
  );
  t.is(kube.cm.data['cni-conf.json'], etcd.cm.data['cni-conf.json']);
  t.deepEqual(kube.weftd.securityContext, etcd.weftd.securityContext);
});

test('kube mode: kube subnet manager on the mounted net-conf.json, node name from the downward API, no etcd anywhere', (t) => {
  const { weftd, pod, cm } = kube;
  // The mode and the file come from the environment, so weftctl in the container sees them too.
  const envOf = (name: string) => weftd.env.find((e: Obj) => e.name === name)?.value;
  t.is(envOf('WEFTD_KUBE_SUBNET_MGR'), 'true');
  t.true(weftd.args.includes('--ip-masq'));
  const netConfPath = envOf('WEFTD_NET_CONFIG_PATH');
  t.is(netConfPath, '/etc/kube-weft/net-conf.json');
  // The ConfigMap's net-conf.json is mounted exactly there.
  const mount = weftd.volumeMounts.find((m: Obj) => netConfPath!.startsWith(`${m.mountPath}/`));
  t.truthy(mount, 'net-conf.json is on a mount');
  t.true(mount.readOnly);
  const vol = pod.volumes.find((v: Obj) => v.name === mount.name);
  t.is(vol.configMap.name, cm.metadata.name);
  t.true(vol.configMap.items.some((i: Obj) => i.key === 'net-conf.json' && posix.join(mount.mountPath, i.path) === netConfPath));
  // flannel's net-conf.json: Network + Backend; no etcd-era keys in the ConfigMap.
  t.deepEqual(Object.keys(JSON.parse(cm.data['net-conf.json'])).sort(), ['Backend', 'Network']);
  t.deepEqual(Object.keys(cm.data).sort(), ['cni-conf.json', 'net-conf.json']);
  const nodeName = weftd.env.find((e: Obj) => e.name === 'NODE_NAME');
  t.is(nodeName?.valueFrom?.fieldRef?.fieldPath, 'spec.nodeName');
  const text = readFileSync(join(kube.dir, '30-daemonset.yaml'), 'utf8') + readFileSync(join(kube.dir, '20-configmap.yaml'), 'utf8');
  for (const c of kube.allContainers) {
    for (const e of c.env ?? []) t.false(/ETCD/.test(e.name), `${c.name}: ${e.name}`);
    t.false(
      (c.args ?? []).some((a: string) => a.includes('etcd')),
      `${c.name} args name no etcd`,
    );
  }
  t.false(/^\s*-\s*name:\s*etcd/m.test(text), 'no etcd volume');
  t.deepEqual(
    kube.pod.initContainers.map((c: Obj) => c.name),
    ['install-cni'],
    'no network-config init: the network comes from the mounted file',
  );
  // The parsed options: what weftd will run with.
  const opts = parseOptions(weftd.args, kube.env, 'node') as unknown as Obj;
  t.true(opts.kubeSubnetMgr, 'parseOptions sees $WEFTD_KUBE_SUBNET_MGR');
  t.is(opts.netConfPath ?? opts.netConfigPath, netConfPath);
  t.is(opts.nodeName, 'node-1', 'node name from NODE_NAME (spec.nodeName)');
});

test('kube mode: the ServiceAccount token is mounted (in-cluster config)', (t) => {
  t.not(kube.sa.automountServiceAccountToken, false);
  t.true(kube.pod.automountServiceAccountToken);
});

test('kube mode: the ClusterRole grants exactly the API calls the code makes', (t) => {
  const { used, unknown } = usedPermissions();
  t.deepEqual(unknown, [], "every Kubernetes API call in src/ is in the test's permission table");
  const grants = granted(kube.role);
  for (const [perm, where] of used) t.true(grants.has(perm), `${perm} (used in ${where}) is granted`);
  for (const perm of grants) t.true(used.has(perm), `${perm} is granted but no code uses it`);
  // The kube subnet manager's and the Service proxy's calls, at least: the scan must find them.
  for (const perm of ['nodes get', 'nodes list', 'nodes watch', 'nodes/status patch', 'services list', 'services watch']) t.true(used.has(perm), `code uses ${perm}`);
  // Nothing that writes anything but a Node's status; no wildcards.
  for (const rule of kube.role.rules) {
    for (const v of rule.verbs) t.true(['get', 'list', 'watch', 'patch'].includes(v), `verb ${v}`);
    t.false([...rule.resources, ...rule.verbs, ...rule.apiGroups].includes('*'));
  }
});

test('etcd mode: RBAC grants nothing (it reads etcd and the downward API only), no token mounted', (t) => {
  t.deepEqual(etcd.role.rules, []);
  t.false(etcd.pod.automountServiceAccountToken);
  const fieldRefs = etcd.weftd.env.filter((e: Obj) => e.valueFrom?.fieldRef).map((e: Obj) => e.valueFrom.fieldRef.fieldPath);
  t.deepEqual(fieldRefs.sort(), ['spec.nodeName', 'status.hostIP']);
  t.truthy(parseOptions(etcd.weftd.args, etcd.env, 'node')!.etcdEndpoints.length);
});

test('conflist: CNI 1.0.0 (what containerd 1.6/1.7 and the reference plugins 1.1 accept), weft then portmap', (t) => {
  // containerd before 2.0 vendors libcni 1.1, which rejects a 1.1.0 result ("unsupported CNI
  // result version", seen in test/priv/cri.test.ts), and so do the reference plugins before 1.2
  // (Debian 12's portmap): 1.0.0 is the newest version the runtimes users run all accept.
  t.is(conflist.cniVersion, '1.0.0');
  t.is(conflist.name, 'weft');
  t.deepEqual(
    conflist.plugins.map((p: Obj) => p.type),
    ['weft', 'portmap'],
  );
  t.deepEqual(conflist.plugins[1].capabilities, { portMappings: true });
});

test('packaging: the launcher is installed as the plugin kubelet runs, the standalone beside it under the name the launcher falls back to', (t) => {
  const launcher = readFileSync(join(root, 'src', 'fastpath', 'launcher.c'), 'utf8');
  t.regex(launcher, /snprintf\(cand, sizeof cand, "%s\/weft-standalone", dir\)/, 'launcher falls back to weft-standalone beside itself');
  const pkg = readFileSync(join(root, 'scripts', 'package.ts'), 'utf8');
  t.regex(pkg, /makeExecutable\(script, join\(binDir, 'weft-standalone'\)\)/);
  t.regex(pkg, /buildLauncher\(join\(binDir, 'weft'\)\)/);
  t.is(conflist.plugins[0].type, 'weft', 'kubelet execs <bin dir>/weft: the launcher');
  const script = readFileSync(join(root, 'install', 'install-cni.sh'), 'utf8');
  const standalone = script.indexOf('install_atomic "$src/bin/weft-standalone" "$bin_dir/weft-standalone" 0755');
  const launcherLine = script.indexOf('install_atomic "$src/bin/weft" "$bin_dir/weft" 0755');
  const conf = script.indexOf('install_atomic "$conf_file"');
  t.true(standalone > 0 && launcherLine > standalone, 'the standalone is in place before the launcher');
  t.true(conf > launcherLine, 'the conflist (node Ready) comes last');
  // The image ships dist/pkg (both binaries and lib/weft) where install-cni reads it.
  const { stages, final } = dockerfile();
  t.true(final.some((l) => /^COPY --from=build \/src\/dist\/pkg\/ \/opt\/weft\/cni\/$/.test(l)));
  t.true(stages[0]!.some((l) => /node scripts\/package\.ts/.test(l)));
});

test('Dockerfile: multi-stage on Node 24, final image has nft, node and the external modules', (t) => {
  const { stages, final } = dockerfile();
  t.true(stages.length >= 2);
  t.regex(stages[0]![0]!, /^FROM node:24/);
  t.true(final.some((l) => /apt-get install .*nftables/.test(l)));
  // The tools weftd execs are in the image: iptables-{nft,legacy}-{save,restore} (src/rules) and
  // conntrack (the Service proxy), from Debian's iptables and conntrack packages.
  t.regex(readFileSync(join(root, 'src', 'rules', 'iptables.ts'), 'utf8'), /`iptables-\$\{backend\}-\$\{tool\}`/);
  t.regex(readFileSync(join(root, 'src', 'proxy', 'nft.ts'), 'utf8'), /sbin\('conntrack'\)/);
  for (const pkg of ['iptables', 'conntrack'])
    t.true(
      final.some((l) => new RegExp(`apt-get install .*\\b${pkg}\\b`).test(l)),
      `final image installs ${pkg}`,
    );
  const paths = imagePaths();
  t.true(paths.has('/usr/local/bin/node'));
  // weftd/weftctl are bundles that leave some modules external (scripts/build.ts): the image must
  // ship them.
  const build = readFileSync(join(root, 'scripts', 'build.ts'), 'utf8');
  // Every module named on the `external:` line (some bundles externalise more than others).
  const externals = [.../'([^']+)'/g[Symbol.matchAll](/external: (.*)$/m.exec(build)![1]!)].map((m) => m[1]!);
  t.true(externals.includes('netlink'));
  for (const mod of externals) {
    t.true(paths.has(`/opt/weft/node_modules/${mod}`), `${mod} is in /opt/weft/node_modules`);
  }
  t.true(
    final.some((l) => l.includes('/opt/weft/native')),
    'setns addon beside the bundles (bin/../native)',
  );
  // scripts/build.ts writes what the bundles read at run time beside them: dist/proto (etcd3)
  // and dist/package.json (CommonJS scope); the image keeps the same relative layout.
  t.regex(build, /join\(dist, 'proto'\)/);
  t.true(paths.has('/opt/weft/proto') && paths.has('/opt/weft/package.json'));
  t.true(
    stages[0]!.some((l) => /WEFT_SHEBANG=\/usr\/local\/bin\/node/.test(l)),
    'bundles name the image node',
  );
});

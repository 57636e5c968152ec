/**
 * The real kubectl (v1.32, /usr/bin/kubectl) against the test API server: discovery, server-side
 * printing, watch, patch, apply and delete. Set-up as in apiserver.test.ts (test/helpers/
 * apiserver.ts): etcd and the server in a throwaway namespace; kubectl runs inside it through
 * nsenter with the kubeconfig the server wrote; this process checks results over the unix-socket
 * forwarder. No `--validate=false` anywhere: the server's OpenAPI v3 stub tells kubectl to leave
 * validation to the server. The server runs with --kubernetes-service and --allocate-node-cidrs
 * (the node IPAM kube-controller-manager would run), so those are checked here too.
 */
import test from 'ava';
import { ControlPlane } from '../helpers/apiserver.ts';

let cp: ControlPlane;

test.before(async () => {
  cp = await ControlPlane.start({ args: ['--kubernetes-service', '--allocate-node-cidrs', '--cluster-cidr', '198.18.0.0/16'] });
  const n = await cp.request('POST', '/api/v1/nodes', {
    body: {
      metadata: { name: 'k-n1', labels: { 'node-role.kubernetes.io/control-plane': '' } },
      spec: { podCIDR: '198.18.1.0/24' },
      status: {
        addresses: [{ type: 'InternalIP', address: '198.51.100.11' }],
        conditions: [{ type: 'Ready', status: 'True', reason: 'KubeletReady' }],
        nodeInfo: { kubeletVersion: 'v1.32.0', osImage: 'Debian', kernelVersion: '6.1.0', containerRuntimeVersion: 'containerd://1.7' },
      },
    },
  });
  if (n.status !== 201) throw new Error(n.text);
});

test.after.always(async () => {
  await cp?.destroy();
});

test.serial('the kubernetes Service and EndpointSlice exist, as kube-apiserver makes them', async (t) => {
  const out = await cp.kubectl(['get', 'svc,endpointslices', 'kubernetes']);
  t.regex(out, /^service\/kubernetes\s+ClusterIP\s+198\.19\.0\.1\s+<none>\s+443\/TCP\s/m);
  t.regex(out, /^endpointslice.discovery.k8s.io\/kubernetes\s+IPv4\s+6443\s+198\.51\.100\.2\s/m);
  // The first address is kept for it: no other Service is handed 198.19.0.1.
  const taken = await cp.request('POST', '/api/v1/namespaces/default/services', { body: { metadata: { name: 'first' }, spec: { clusterIP: '198.19.0.1', ports: [{ port: 80 }] } } });
  t.is(taken.status, 422);
});

test.serial('node IPAM: nodes without a podCIDR get distinct /24s of the cluster CIDR; deletion releases', async (t) => {
  const podCIDR = async (name: string) => {
    const end = Date.now() + 10_000;
    for (;;) {
      const n = (await cp.request('GET', `/api/v1/nodes/${name}`)).json;
      if (n.spec?.podCIDR) return n.spec as { podCIDR: string; podCIDRs: string[] };
      if (Date.now() > end) throw new Error(`node "${name}" got no podCIDR`);
      await new Promise((r) => setTimeout(r, 100));
    }
  };
  t.regex(
    await cp.kubectl(['apply', '-f', '-'], { input: 'apiVersion: v1\nkind: Node\nmetadata: {name: ipam-a}\n---\napiVersion: v1\nkind: Node\nmetadata: {name: ipam-b}\n' }),
    /node\/ipam-b created/,
  );
  const a = await podCIDR('ipam-a');
  const b = await podCIDR('ipam-b');
  t.regex(a.podCIDR, /^198\.18\.\d+\.0\/24$/);
  t.deepEqual(a.podCIDRs, [a.podCIDR]);
  t.not(a.podCIDR, b.podCIDR);
  // Lowest free first; 198.18.1.0/24 is k-n1's (set by hand), so it is skipped.
  t.deepEqual([a.podCIDR, b.podCIDR].sort(), ['198.18.0.0/24', '198.18.2.0/24']);
  const claims = async () => [...(await cp.etcd.getPrefix('/registry/ranges/nodecidrs/')).values()].sort();
  t.deepEqual(await claims(), ['ipam-a', 'ipam-b', 'k-n1']);
  await cp.kubectl(['delete', 'node', 'ipam-a', 'ipam-b']);
  const end = Date.now() + 10_000;
  while ((await claims()).length !== 1 && Date.now() < end) await new Promise((r) => setTimeout(r, 100));
  t.deepEqual(await claims(), ['k-n1']);
});

test.serial('kubectl get nodes: table, -o wide, -o json', async (t) => {
  const table = await cp.kubectl(['get', 'nodes']);
  t.regex(table, /^NAME\s+STATUS\s+ROLES\s+AGE\s+VERSION\n/);
  t.regex(table, /^k-n1\s+Ready\s+control-plane\s+\d+s\s+v1\.32\.0$/m);
  const wide = await cp.kubectl(['get', 'nodes', '-o', 'wide']);
  t.regex(wide, /INTERNAL-IP\s+EXTERNAL-IP\s+OS-IMAGE\s+KERNEL-VERSION\s+CONTAINER-RUNTIME/);
  t.regex(wide, /^k-n1\s+Ready\s+control-plane\s+\S+\s+v1\.32\.0\s+198\.51\.100\.11\s+<none>\s+Debian\s+6\.1\.0\s+containerd:\/\/1\.7$/m);
  const list = JSON.parse(await cp.kubectl(['get', 'nodes', '-o', 'json']));
  t.is(list.kind, 'List');
  const n = list.items.find((i: any) => i.metadata.name === 'k-n1');
  t.is(n.kind, 'Node');
  t.is(n.spec.podCIDR, '198.18.1.0/24');
  const one = JSON.parse(await cp.kubectl(['get', 'node', 'k-n1', '-o', 'json']));
  t.is(one.metadata.uid, n.metadata.uid);
  const missing = await cp.kubectlRun(['get', 'node', 'nope']).catch((e: { stderr: string }) => e);
  t.regex((missing as { stderr: string }).stderr, /Error from server \(NotFound\): nodes "nope" not found/);
});

test.serial('kubectl get nodes -w sees a change; kubectl patch (strategic and merge, main and status)', async (t) => {
  const w = cp.spawnInNs('kubectl', ['--kubeconfig', cp.kubeconfig, 'get', 'nodes', '-w', '-o', 'custom-columns=NAME:.metadata.name,TAINT:.metadata.labels.weft\\.test/tainted']);
  let out = '';
  w.stdout!.on('data', (c: Buffer) => (out += c.toString()));
  w.stderr!.on('data', (c: Buffer) => (out += c.toString()));
  t.teardown(() => void w.kill('SIGKILL'));
  const until = async (re: RegExp) => {
    const end = Date.now() + 15_000;
    while (!re.test(out)) {
      if (Date.now() > end) throw new Error(`kubectl -w never printed ${re}; got:\n${out}`);
      await new Promise((r) => setTimeout(r, 100));
    }
  };
  await until(/^k-n1\s+<none>$/m);
  const p = await cp.kubectl(['patch', 'node', 'k-n1', '-p', '{"metadata":{"labels":{"weft.test/tainted":"yes"}}}']);
  t.regex(p, /node\/k-n1 patched/);
  await until(/^k-n1\s+yes$/m);
  t.pass('the watch printed the change');

  await cp.kubectl(['patch', 'node', 'k-n1', '--subresource=status', '-p', '{"status":{"conditions":[{"type":"NetworkUnavailable","status":"False","reason":"FlannelIsUp"}]}}']);
  await cp.kubectl(['patch', 'node', 'k-n1', '--type=merge', '-p', '{"spec":{"unschedulable":true}}']);
  const n = (await cp.request('GET', '/api/v1/nodes/k-n1')).json;
  t.deepEqual(
    n.status.conditions.map((c: any) => c.type),
    ['Ready', 'NetworkUnavailable'],
    'conditions merged by type',
  );
  t.true(n.spec.unschedulable);
  t.regex(await cp.kubectl(['get', 'nodes']), /Ready,SchedulingDisabled/);
  const none = await cp.kubectl(['patch', 'node', 'k-n1', '--type=merge', '-p', '{"spec":{"unschedulable":true}}']);
  t.regex(none, /patched \(no change\)/);
});

const MANIFEST = (targetPort: number, addr: string) => `apiVersion: v1
kind: Service
metadata:
  name: web
  namespace: default
  labels: {app: web}
spec:
  selector: {app: web}
  ports:
  - name: http
    port: 80
    targetPort: ${targetPort}
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata:
  name: web-1
  namespace: default
  labels: {kubernetes.io/service-name: web}
addressType: IPv4
endpoints:
- addresses: [${addr}]
  conditions: {ready: true}
  nodeName: k-n1
ports:
- name: http
  port: ${targetPort}
  protocol: TCP
`;

test.serial('kubectl apply -f / delete -f of a Service and an EndpointSlice', async (t) => {
  const first = await cp.kubectlRun(['apply', '-f', '-'], { input: MANIFEST(8080, '198.18.1.5') });
  t.regex(first.stdout, /service\/web created/);
  t.regex(first.stdout, /endpointslice.discovery.k8s.io\/web-1 created/);
  t.notRegex(first.stderr, /warning/i, first.stderr);
  const svc = (await cp.request('GET', '/api/v1/namespaces/default/services/web')).json;
  t.regex(svc.spec.clusterIP, /^198\.19\./);
  t.truthy(svc.metadata.annotations['kubectl.kubernetes.io/last-applied-configuration']);

  const again = await cp.kubectlRun(['apply', '-f', '-', '-v=6'], { input: MANIFEST(9090, '198.18.1.6') });
  t.regex(again.stdout, /service\/web configured/);
  t.regex(again.stdout, /endpointslice.discovery.k8s.io\/web-1 configured/);
  t.regex(again.stderr, /PATCH http:\/\/198\.51\.100\.2:6443\/api\/v1\/namespaces\/default\/services\/web\?fieldManager=kubectl-client-side-apply&fieldValidation=Strict 200/);
  t.notRegex(again.stderr, /warning/i);
  const svc2 = (await cp.request('GET', '/api/v1/namespaces/default/services/web')).json;
  t.is(svc2.spec.ports[0].targetPort, 9090);
  t.is(svc2.spec.clusterIP, svc.spec.clusterIP, 'apply keeps the allocated clusterIP');
  const slice = (await cp.request('GET', '/apis/discovery.k8s.io/v1/namespaces/default/endpointslices/web-1')).json;
  t.deepEqual(slice.endpoints[0].addresses, ['198.18.1.6']);
  t.is(slice.metadata.generation, 2);
  const same = await cp.kubectl(['apply', '-f', '-'], { input: MANIFEST(9090, '198.18.1.6') });
  t.regex(same, /service\/web unchanged/);

  const table = await cp.kubectl(['get', 'svc,endpointslices', '-o', 'wide']);
  t.regex(table, new RegExp(`service/web\\s+ClusterIP\\s+${svc.spec.clusterIP.replace(/\./g, '\\.')}\\s+<none>\\s+80/TCP\\s+\\S+\\s+app=web`));
  t.regex(table, /endpointslice.discovery.k8s.io\/web-1\s+IPv4\s+9090\s+198\.18\.1\.6/);

  // Strict field validation: an unknown top-level field is refused.
  const bad = await cp.kubectlRun(['apply', '-f', '-'], { input: MANIFEST(9090, '198.18.1.6').replace('addressType: IPv4', 'addressType: IPv4\nbogus: 1') }).catch((e: { stderr: string }) => e);
  t.regex((bad as { stderr: string }).stderr, /unknown field "bogus"/);

  const del = await cp.kubectl(['delete', '-f', '-'], { input: MANIFEST(9090, '198.18.1.6') });
  t.regex(del, /service "web" deleted/);
  t.regex(del, /endpointslice.discovery.k8s.io "web-1" deleted/);
  t.is((await cp.request('GET', '/api/v1/namespaces/default/services/web')).status, 404);
  t.is((await cp.request('GET', '/apis/discovery.k8s.io/v1/namespaces/default/endpointslices/web-1')).status, 404);
  // The IP went back to the range: a new service may take it explicitly.
  const reuse = await cp.request('POST', '/api/v1/namespaces/default/services', { body: { metadata: { name: 'reuse' }, spec: { clusterIP: svc.spec.clusterIP, ports: [{ port: 80 }] } } });
  t.is(reuse.status, 201, reuse.text);
});

test.serial('kubectl apply of a Namespace and a ConfigMap; kubectl create (protobuf bodies) of namespace, configmap, service', async (t) => {
  const ns = 'apiVersion: v1\nkind: Namespace\nmetadata: {name: team-a}\n---\napiVersion: v1\nkind: ConfigMap\nmetadata: {name: cfg, namespace: team-a}\ndata: {a: "1", b: "2"}\n';
  const applied = await cp.kubectl(['apply', '-f', '-'], { input: ns });
  t.regex(applied, /namespace\/team-a created/);
  t.regex(applied, /configmap\/cfg created/);
  t.regex(await cp.kubectl(['-n', 'team-a', 'get', 'cm']), /^cfg\s+2\s+\S+$/m);
  t.regex(await cp.kubectl(['get', 'ns']), /^team-a\s+Active/m);
  t.regex(await cp.kubectl(['delete', 'namespace', 'team-a']), /namespace "team-a" deleted/);
  t.is((await cp.request('GET', '/api/v1/namespaces/team-a/configmaps/cfg')).status, 404, 'a namespace takes its objects with it');
  // `kubectl create namespace|configmap|service` are typed clients: their bodies are protobuf.
  t.regex(await cp.kubectl(['create', 'namespace', 'team-b']), /namespace\/team-b created/);
  t.regex(await cp.kubectl(['-n', 'team-b', 'create', 'configmap', 'cfg', '--from-literal=a=1', '--from-literal=empty=']), /configmap\/cfg created/);
  const cm = (await cp.request('GET', '/api/v1/namespaces/team-b/configmaps/cfg')).json;
  t.deepEqual(cm.data, { a: '1', empty: '' });
  t.is(cm.metadata.namespace, 'team-b');
  t.regex(await cp.kubectl(['-n', 'team-b', 'create', 'service', 'nodeport', 'np', '--tcp=80:8080', '--node-port=30080']), /service\/np created/);
  const np = (await cp.request('GET', '/api/v1/namespaces/team-b/services/np')).json;
  t.like(np.spec, { type: 'NodePort', selector: { app: 'np' } });
  t.deepEqual(np.spec.ports, [{ name: '80-8080', protocol: 'TCP', port: 80, targetPort: 8080, nodePort: 30080 }]);
  t.is(np.spec.healthCheckNodePort, undefined);
  t.deepEqual(np.metadata.labels, { app: 'np' });
  t.regex(await cp.kubectl(['get', 'ns', 'team-b']), /^team-b\s+Active/m);
});

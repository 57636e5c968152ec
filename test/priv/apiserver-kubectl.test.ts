/**
 * The real kubectl (v1.32, /usr/bin/kubectl) against the test API server: discovery, server-side
 * printing, watch, patch, apply and delete. Set-up as in apiserver.test.ts (test/helpers/
 * apiserver.ts): etcd and the server in a throwaway namespace; kubectl runs inside it through
 * nsenter with the kubeconfig the server wrote; this process checks results over the unix-socket
 * forwarder. No `--validate=false` anywhere: the server's OpenAPI v3 stub tells kubectl to leave
 * validation to the server.
 */
import test from 'ava';
import { ControlPlane } from '../helpers/apiserver.ts';

let cp: ControlPlane;

test.before(async () => {
  cp = await ControlPlane.start();
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
  t.deepEqual(n.status.conditions.map((c: any) => c.type), ['Ready', 'NetworkUnavailable'], 'conditions merged by type');
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

test.serial('kubectl apply of a Namespace and a ConfigMap; typed protobuf bodies are refused with 415', async (t) => {
  const ns = 'apiVersion: v1\nkind: Namespace\nmetadata: {name: team-a}\n---\napiVersion: v1\nkind: ConfigMap\nmetadata: {name: cfg, namespace: team-a}\ndata: {a: "1", b: "2"}\n';
  const applied = await cp.kubectl(['apply', '-f', '-'], { input: ns });
  t.regex(applied, /namespace\/team-a created/);
  t.regex(applied, /configmap\/cfg created/);
  t.regex(await cp.kubectl(['-n', 'team-a', 'get', 'cm']), /^cfg\s+2\s+\S+$/m);
  t.regex(await cp.kubectl(['get', 'ns']), /^team-a\s+Active/m);
  t.regex(await cp.kubectl(['delete', 'namespace', 'team-a']), /namespace "team-a" deleted/);
  t.is((await cp.request('GET', '/api/v1/namespaces/team-a/configmaps/cfg')).status, 404, 'a namespace takes its objects with it');
  // `kubectl create namespace|configmap` send protobuf, which this server does not decode.
  const pb = await cp.kubectlRun(['create', 'namespace', 'team-b']).catch((e: { stderr: string }) => e);
  t.regex((pb as { stderr: string }).stderr, /UnsupportedMediaType|unknown format/);
});

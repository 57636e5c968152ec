/**
 * `weftctl get services` against the lab API server (test/helpers/apiserver.ts: a throwaway
 * control-plane namespace with etcd and lab/apiserver) through @kubernetes/client-node, joined
 * with a proxy table applied in that same namespace by the proxy's ruleset builder. The table is
 * built for one Service only, so "programmed" must say yes for it and no for the other.
 */
import test from 'ava';
import { execFile } from 'node:child_process';
import { resolve } from 'node:path';
import { parseCIDR } from '../../src/ip/ipv4.ts';
import { selectEndpoints } from '../../src/proxy/endpoints.ts';
import { nftApply } from '../../src/proxy/nft.ts';
import { buildRuleset, fullScript } from '../../src/proxy/ruleset.ts';
import { validateEndpointSlice, validateService } from '../../src/proxy/types.ts';
import type { ServiceStatus } from '../../src/ctl/services.ts';
import { ControlPlane } from '../helpers/apiserver.ts';

const WEFTCTL = resolve(import.meta.dirname, '..', '..', 'dist', 'bin', 'weftctl');
let cp: ControlPlane;

const ECHO = {
  apiVersion: 'v1',
  kind: 'Service',
  metadata: { name: 'echo', namespace: 'default' },
  spec: {
    clusterIP: '198.19.0.10',
    ports: [
      { name: 'tcp', port: 80, protocol: 'TCP' },
      { name: 'udp', port: 53, protocol: 'UDP' },
    ],
  },
};
const EMPTY = { apiVersion: 'v1', kind: 'Service', metadata: { name: 'empty', namespace: 'default' }, spec: { clusterIP: '198.19.0.11', ports: [{ port: 80 }] } };
const HEADLESS = { apiVersion: 'v1', kind: 'Service', metadata: { name: 'headless', namespace: 'default' }, spec: { clusterIP: 'None', ports: [{ port: 80 }] } };
const SLICE = {
  apiVersion: 'discovery.k8s.io/v1',
  kind: 'EndpointSlice',
  metadata: { name: 'echo-abc', namespace: 'default', labels: { 'kubernetes.io/service-name': 'echo' } },
  addressType: 'IPv4',
  endpoints: [
    { addresses: ['198.18.1.2'], conditions: { ready: true }, nodeName: 'n1' },
    { addresses: ['198.18.2.2'], conditions: { ready: false }, nodeName: 'n2' },
  ],
  ports: [
    { name: 'tcp', port: 8080, protocol: 'TCP' },
    { name: 'udp', port: 5353, protocol: 'UDP' },
  ],
};

function weftctl(args: string[], env: NodeJS.ProcessEnv = {}): Promise<{ code: number; stdout: string; stderr: string }> {
  const clean = { PATH: process.env.PATH, ...env };
  return new Promise((res) => {
    execFile('nsenter', [`--net=/run/netns/${cp.netns}`, '--', WEFTCTL, ...args], { encoding: 'utf8', timeout: 30_000, env: clean }, (err, stdout, stderr) => {
      res({ code: err ? ((err as { code?: number }).code ?? -1) : 0, stdout, stderr });
    });
  });
}

test.before(async () => {
  cp = await ControlPlane.start();
  for (const svc of [ECHO, EMPTY, HEADLESS]) {
    const r = await cp.request('POST', '/api/v1/namespaces/default/services', { body: svc });
    if (r.status !== 201) throw new Error(`create service: ${r.status} ${r.text}`);
  }
  const r = await cp.request('POST', '/apis/discovery.k8s.io/v1/namespaces/default/endpointslices', { body: SLICE });
  if (r.status !== 201) throw new Error(`create endpointslice: ${r.status} ${r.text}`);
  const v = <T>(x: { ok: true; value: T } | { ok: false; reason: string }): T => {
    if (!x.ok) throw new Error(x.reason);
    return x.value;
  };
  // programmed for echo only, as a node would have it before it saw "empty"
  const state = selectEndpoints([v(validateService(ECHO))], [v(validateEndpointSlice(SLICE))], { nodeName: 'n1' });
  await nftApply(fullScript(buildRuleset(state, { clusterCIDR: parseCIDR('198.18.0.0/16') })), { netns: `/run/netns/${cp.netns}` });
});

test.after.always(async () => {
  await cp?.destroy();
});

test.serial('get services joins the API (ready/total) with the node table (programmed or not)', async (t) => {
  const r = await weftctl(['get', 'services', '--kubeconfig', cp.kubeconfig, '-o', 'json']);
  t.is(r.code, 0, r.stderr);
  const list = JSON.parse(r.stdout) as { kind: string; metadata: { table: string }; items: ServiceStatus[] };
  t.is(list.kind, 'List');
  t.is(list.metadata.table, 'present');
  const by = (name: string) => list.items.find((s) => s.name === name)!;
  const echo = by('echo');
  t.is(echo.clusterIP, '198.19.0.10');
  t.deepEqual(
    echo.ports.map((p) => [p.port, p.protocol, p.ready, p.total, p.programmed, p.kernel]),
    [
      [80, 'TCP', 1, 2, 'yes', ['198.18.1.2:8080']],
      [53, 'UDP', 1, 2, 'yes', ['198.18.1.2:5353']],
    ],
  );
  t.deepEqual(
    by('empty').ports.map((p) => [p.port, p.ready, p.total, p.programmed, p.kernel]),
    [[80, 0, 0, 'no', []]],
  );
  t.is(by('headless').skipped, 'headless service');
  // the "kubernetes" Service the lab server creates, or not: either way it is not programmed here
  for (const s of list.items.filter((x) => !['echo', 'empty', 'headless'].includes(x.name)))
    t.true(
      s.ports.every((p) => p.programmed === 'no'),
      s.name,
    );
});

test.serial('the table view: aligned columns, from $KUBECONFIG too', async (t) => {
  const r = await weftctl(['get', 'svc'], { KUBECONFIG: cp.kubeconfig });
  t.is(r.code, 0, r.stderr);
  t.regex(r.stdout, /^NAMESPACE +NAME +CLUSTER-IP +PORT\(S\) +ENDPOINTS +PROGRAMMED$/m);
  t.regex(r.stdout, /^default +echo +198\.19\.0\.10 +80\/TCP,53\/UDP +1\/2 +yes$/m);
  t.regex(r.stdout, /^default +empty +198\.19\.0\.11 +80\/TCP +0\/0 +no$/m);
});

test.serial('without any API config: what the table alone programs', async (t) => {
  const r = await weftctl(['get', 'services', '-o', 'wide']);
  t.is(r.code, 0, r.stderr);
  t.regex(r.stdout, /node table only: no Kubernetes API config/);
  t.regex(r.stdout, /^default +echo +198\.19\.0\.10 +53\/UDP,80\/TCP +1,1 +53\/UDP->198\.18\.1\.2:5353 80\/TCP->198\.18\.1\.2:8080$/m);
  t.notRegex(r.stdout, /empty/);
});

test.serial('an unreachable API server is an error (exit 2) that says so', async (t) => {
  const r = await weftctl(['get', 'services', '--kubeconfig', cp.kubeconfig, '--timeout', '2'], {});
  t.is(r.code, 0, 'reachable first');
  await cp.stopServer();
  const down = await weftctl(['get', 'services', '--kubeconfig', cp.kubeconfig, '--timeout', '2']);
  t.is(down.code, 2);
  t.regex(down.stderr, /kube API list (services|endpointslices)/);
});

/**
 * Child process for the kube subnet manager's privileged tests (not a test file itself). The
 * tests run it with `nsenter --net=<namespace>` so that every socket it opens lives on the test
 * underlay, never in the root namespace.
 *
 *   kube-driver.ts drive --server URL --node NAME --net-conf PATH [--etcd URL]
 *     a KubeSubnetManager, driven by JSON lines on stdin `{"id":1,"op":"acquire",...}` and
 *     answering on stdout `{"id":1,"ok":true,"result":..}`; watch callbacks, log lines and the
 *     metric hooks arrive as `{"event":"snapshot"|"put"|"delete"|"log"|"malformed"|"pending",..}`.
 *     `api` performs a raw HTTP request against the server (the test's kubectl), `compact`
 *     compacts etcd up to its current revision (to force 410 Gone on old resourceVersions).
 *     `up` is weftd's kube-mode start-up in miniature on the real VXLAN backend: the device is
 *     created with the MAC from our annotation (previousVtepMAC), the lease is the podCIDR, the
 *     watch drives the backend, then ready(). It is how the daemon is meant to use the manager.
 */
import { createInterface } from 'node:readline';
import { writeFileSync, mkdtempSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { parseArgs } from 'node:util';
import { Etcd3 } from 'etcd3';
import { formatCIDR, parseCIDR } from '../../src/ip/ipv4.ts';
import { isRetryable } from '../../src/core/errors.ts';
import { loadKubeConfig } from '../../src/kube/client.ts';
import { KubeSubnetManager } from '../../src/subnet/kube/index.ts';
import type { Lease } from '../../src/subnet/lease.ts';
import { VxlanNetwork } from '../../src/backend/vxlan/network.ts';
import { openNetlink } from '../../src/netlink/index.ts';
import type { NetworkConfig } from '../../src/subnet/config.ts';

const { positionals, values } = parseArgs({
  allowPositionals: true,
  options: {
    etcd: { type: 'string' },
    server: { type: 'string' },
    node: { type: 'string' },
    'net-conf': { type: 'string' },
    prefix: { type: 'string' },
  },
});

const out = (o: unknown) => process.stdout.write(`${JSON.stringify(o)}\n`);
const leaseJson = (l: Lease) => ({ subnet: formatCIDR(l.subnet), publicIP: l.publicIP, backendType: l.backendType, backendData: l.backendData, expiresAt: l.expiresAt });

async function drive(): Promise<void> {
  const dir = mkdtempSync(join(tmpdir(), 'weft-kube-driver-'));
  const kubeconfig = join(dir, 'kubeconfig');
  writeFileSync(
    kubeconfig,
    `apiVersion: v1\nkind: Config\nclusters:\n- name: lab\n  cluster:\n    server: ${values.server}\nusers:\n- name: u\n  user: {}\ncontexts:\n- name: lab\n  context: {cluster: lab, user: u}\ncurrent-context: lab\n`,
  );
  const emitLog = (level: string) => (msg: string, meta?: Record<string, unknown>) => out({ event: 'log', level, msg, meta });
  const manager = new KubeSubnetManager({
    kc: loadKubeConfig({ kubeconfig, env: {} }).kc,
    nodeName: values.node!,
    netConfPath: values['net-conf'],
    annotationPrefix: values.prefix,
    // Short backoffs so outages heal within a test's patience; a long podCIDR re-read interval
    // so a test can tell the watch picked the podCIDR up.
    restartBackoffMs: { min: 200, max: 1000 },
    podCIDRPollMs: 60_000,
    log: { error: emitLog('error'), warn: emitLog('warn'), info: emitLog('info'), debug: emitLog('debug') },
    onMalformedNode: (node, why) => out({ event: 'malformed', node, why }),
    onUnannotatedNodes: (count) => out({ event: 'pending', count }),
  });
  const watchAbort = new AbortController();
  let config: NetworkConfig | undefined;
  const etcd = values.etcd ? new Etcd3({ hosts: [values.etcd] }) : undefined;

  const ops: Record<string, (req: Record<string, any>) => Promise<unknown>> = {
    config: async () => {
      config = await manager.getConfig();
      return { network: formatCIDR(config.network), vni: config.backend.vni };
    },
    previousMac: async (req) => (await manager.previousVtepMAC(req.vni ?? 1)) ?? null,
    acquire: async (req) => leaseJson(await manager.acquireLease(config ?? (await manager.getConfig()), req.attrs, { ttlSeconds: 0 })),
    renew: async (req) => leaseJson(await manager.renewLease({ ...req.lease, subnet: parseCIDR(req.lease.subnet) }, req.lease, { ttlSeconds: 0 })),
    ready: async (req) => {
      await manager.ready!({ subnet: parseCIDR(req.subnet), publicIP: '', backendType: 'vxlan', backendData: null });
      return true;
    },
    watch: async () => {
      manager
        .watchLeases(watchAbort.signal, {
          snapshot: (leases) => out({ event: 'snapshot', leases: leases.map(leaseJson) }),
          event: (ev) => out(ev.type === 'put' ? { event: 'put', lease: leaseJson(ev.lease) } : { event: 'delete', subnet: formatCIDR(ev.subnet) }),
        })
        .then(
          () => out({ event: 'watchEnded' }),
          (err) => out({ event: 'watchEnded', error: String(err) }),
        );
      return true;
    },
    list: async () => (await manager.listLeases()).leases.map(leaseJson),
    up: async (req) => {
      const cfg = config ?? (await manager.getConfig());
      const nl = openNetlink();
      const parent = await nl.linkByName(req.iface);
      const reuse = await manager.previousVtepMAC(cfg.backend.vni);
      const silent = { error() {}, warn() {}, info() {}, debug() {} };
      const network = await VxlanNetwork.open(nl, {
        device: { name: `flannel.${cfg.backend.vni}`, vni: cfg.backend.vni, port: cfg.backend.port, local: req.ip, parentIndex: parent.index, mtu: parent.mtu - 50, mac: reuse },
        log: silent,
      });
      const lease = await manager.acquireLease(cfg, { publicIP: req.ip, backendType: 'vxlan', backendData: network.backendData }, { ttlSeconds: 0 });
      await network.setSubnet(lease.subnet);
      let synced!: () => void;
      const first = new Promise<void>((r) => (synced = r));
      const applied = (what: string) => () => out({ event: 'applied', what, peers: network.peerCount });
      manager.watchLeases(watchAbort.signal, {
        snapshot: (leases) => void network.applySnapshot(leases).then(applied('snapshot')).finally(synced),
        event: (ev) => void (ev.type === 'put' ? network.applyPut(ev.lease) : network.applyDelete({ subnet: ev.subnet })).then(applied(ev.type)),
      });
      await first;
      await network.reconcile();
      await manager.ready({ ...lease });
      return { ...leaseJson(lease), reusedMac: reuse ?? null, mac: (network.backendData as { VtepMAC: string }).VtepMAC };
    },
    api: async (req) => {
      const res = await fetch(`${values.server}${req.path}`, {
        method: req.method ?? 'GET',
        headers: req.body === undefined ? {} : { 'content-type': req.contentType ?? 'application/json' },
        body: req.body === undefined ? undefined : JSON.stringify(req.body),
        signal: AbortSignal.timeout(10_000),
      });
      const text = await res.text();
      let body: unknown = text;
      try {
        body = JSON.parse(text);
      } catch {
        /* not JSON */
      }
      return { status: res.status, body };
    },
    compact: async () => {
      const rev = (await etcd!.get('/__weft_compact_probe').exec()).header.revision;
      await etcd!.kv.compact({ revision: rev, physical: true });
      return rev;
    },
    close: async () => {
      watchAbort.abort();
      manager.close();
      etcd?.close();
      setTimeout(() => process.exit(0), 50);
      return true;
    },
  };

  const rl = createInterface({ input: process.stdin });
  rl.on('line', (line) => {
    let req: Record<string, any>;
    try {
      req = JSON.parse(line);
    } catch {
      return;
    }
    const op = ops[req.op];
    if (!op) return out({ id: req.id, ok: false, error: `unknown op ${req.op}` });
    op(req).then(
      (result) => out({ id: req.id, ok: true, result }),
      (err) => out({ id: req.id, ok: false, error: String((err as Error)?.message ?? err), name: (err as Error)?.name, retryable: isRetryable(err) }),
    );
  });
  rl.on('close', () => process.exit(0));
}

if (positionals[0] === 'drive') await drive();
else {
  process.stderr.write('usage: kube-driver.ts drive --server URL --node NAME --net-conf PATH [--etcd URL]\n');
  process.exit(2);
}

/**
 * weftd: the node daemon. Parses flags (each also from WEFTD_* env), wires the subnet manager
 * (etcd, or Kubernetes with --kube-subnet-mgr), the VXLAN backend, netlink and the logger, and
 * runs until SIGTERM/SIGINT. Exit codes: 0 after a clean stop, 2 on bad usage, 1 on a fatal error.
 */
import { hostname } from 'node:os';
import { setFlagsFromString } from 'node:v8';
import { expectedDevice } from '../src/backend/vxlan/expected.ts';
import { VxlanNetwork } from '../src/backend/vxlan/network.ts';
import type { BackendFactory } from '../src/daemon/backend.ts';
import { createLogger } from '../src/daemon/logger.ts';
import { Metrics } from '../src/daemon/metrics.ts';
import { errText, UsageError } from '../src/core/errors.ts';
import { setProcessNice } from '../src/core/priority.ts';
import { parseOptions, usage } from '../src/daemon/options.ts';
import { runDaemon } from '../src/daemon/run.ts';
import { openNetlink } from '../src/netlink/index.ts';
import { openRtMonitor } from '../src/netlink/monitor.ts';
import { setSysctl } from '../src/netns/index.ts';
import type { SubnetManager } from '../src/subnet/manager.ts';
import type { NetworkConfig } from '../src/subnet/config.ts';
import { DEFAULT_WORKERS, startCniFastpath, type FastpathServer } from '../src/fastpath/index.ts';

async function main(): Promise<number> {
  let opts;
  try {
    opts = parseOptions(process.argv.slice(2), process.env, hostname());
  } catch (err) {
    if (err instanceof UsageError) {
      process.stderr.write(`weftd: ${err.message}\n\n${usage()}`);
      return 2;
    }
    throw err;
  }
  if (!opts) {
    process.stdout.write(usage());
    return 0;
  }
  const log = createLogger({ level: opts.logLevel, node: opts.nodeName });
  // Before any thread is started on demand: those inherit it (src/core/priority.ts).
  const niceError = setProcessNice(opts.nice);
  if (niceError) log.warn(`--nice ${opts.nice}: not applied: ${niceError}`);
  const metrics = new Metrics();
  const ac = new AbortController();
  for (const sig of ['SIGTERM', 'SIGINT'] as const) {
    process.on(sig, () => {
      if (!ac.signal.aborted) log.info(`${sig}: stopping`);
      ac.abort();
    });
  }
  // The one choice between the modes: everything below runs on the SubnetManager interface.
  // Each mode's client (the Kubernetes client, etcd3 with gRPC) and the Service proxy are
  // loaded with import() only when used: in the bundle, a module reached only that way is
  // evaluated on first import, and the client libraries cost tens of MiB of heap
  // (docs/benchmarks.md, idle).
  let manager: SubnetManager;
  try {
    manager = opts.kubeSubnetMgr
      ? (await import('../src/subnet/kube/index.ts')).createKubeSubnetManager({
          kubeconfig: opts.kubeconfig,
          nodeName: opts.nodeName,
          netConfPath: opts.netConfigPath,
          annotationPrefix: opts.kubeAnnotationPrefix,
          setNodeNetworkUnavailable: opts.setNodeNetworkUnavailable,
          log,
          signal: ac.signal,
          onMalformedNode: () => metrics.malformedNodes.inc(),
          onUnannotatedNodes: (n) => metrics.unannotatedNodes.set(n),
          onError: () => metrics.kubeErrors.inc(),
        })
      : new (await import('../src/subnet/etcd.ts')).EtcdSubnetManager({
          endpoints: opts.etcdEndpoints,
          prefix: opts.etcdPrefix,
          cafile: opts.etcdCafile,
          certfile: opts.etcdCertfile,
          keyfile: opts.etcdKeyfile,
          onError: () => metrics.etcdErrors.inc(),
          resyncIntervalMs: opts.resyncIntervalMs,
          onResyncRepair: (n) => metrics.resyncRepairs.inc(n),
          onWatchRestart: (reason) => metrics.watchRestarts.inc({ reason }),
          watchStallMs: opts.watchStallMs,
          log,
        });
  } catch (err) {
    if (err instanceof UsageError) {
      process.stderr.write(`weftd: ${err.message}\n`);
      return 2;
    }
    log.error(`fatal: ${errText(err)}`);
    return 1;
  }
  const nl = openNetlink();
  // A second socket for reconcile's dumps, so they never hold up programming a new peer.
  const dumpNl = openNetlink();
  // Pods' traffic is routed through this host; then flannel's VXLAN device (expected.ts says
  // what it must look like: flannel.<VNI>, the underlay MTU less the encapsulation).
  const openBackend: BackendFactory = async (config, { external, onRepair }) => {
    setSysctl('net.ipv4.ip_forward', '1');
    // A recreated device keeps the MAC peers know us by, where the manager remembers one (the
    // Kubernetes manager waits out an unreachable API server here).
    const mac = await manager.previousVtepMAC?.(config.backend.vni);
    return VxlanNetwork.open(nl, {
      device: { ...expectedDevice(external.link, { vni: config.backend.vni, port: config.backend.port, local: external.ip }), mac },
      log,
      dumpNl,
      // Kernel notifications in weftd's namespace, the one nl was opened in.
      monitor: (handlers) => openRtMonitor(handlers),
      onRepair,
    });
  };
  log.info(
    `weftd starting`,
    opts.kubeSubnetMgr
      ? { mode: 'kube', node: opts.nodeName, netConf: opts.netConfigPath, subnetFile: opts.subnetFile }
      : { mode: 'etcd', etcd: opts.etcdEndpoints.join(','), prefix: opts.etcdPrefix, subnetFile: opts.subnetFile },
  );
  // CNI fast path (src/fastpath): the launcher (dist/bin/weft-fast, installed as /opt/cni/bin/weft)
  // forwards CNI requests to this process. --cni-socket "" disables it; not being able to serve
  // is not fatal (launchers fall back to the standalone plugin).
  let fastpath: Promise<FastpathServer | undefined> = Promise.resolve(undefined);
  if (opts.cniSocket) {
    const network = { subnetFile: opts.subnetFile, dataDir: opts.cniDataDir, bridge: opts.cniBridge };
    const workers = { ...DEFAULT_WORKERS, max: opts.cniWorkers };
    fastpath = startCniFastpath({ path: opts.cniSocket, signal: ac.signal, network, workers, log: (m) => log.debug(m), warn: (m) => log.warn(m) }).then(
      (s) => {
        log.info(`serving CNI requests on ${s.path}`);
        return s;
      },
      (err) => {
        log.warn(`cni fast path off: ${errText(err)}`);
        return undefined;
      },
    );
  }
  // The Service proxy (kube-proxy's role) reads Services and EndpointSlices from the API server:
  // the same kubeconfig as Kubernetes mode, also usable beside an etcd-mode overlay.
  let serviceProxy: ((config: NetworkConfig) => Promise<void>) | undefined;
  if (opts.proxy) {
    // The starter runs V8's interpreter only, for the overlay's idle footprint (scripts/build.ts);
    // the proxy's syncs build and diff rulesets of tens of thousands of lines, so its weftd turns
    // the compiler tiers back on (they are consulted as functions warm up, so this takes effect).
    for (const tier of ['--sparkplug', '--maglev', '--opt']) setFlagsFromString(tier);
    const [{ loadKubeConfig }, { runServiceProxy }] = await Promise.all([import('../src/kube/client.ts'), import('../src/proxy/controller.ts')]);
    let kc;
    try {
      kc = loadKubeConfig({ kubeconfig: opts.kubeconfig }).kc;
    } catch (err) {
      process.stderr.write(`weftd: --proxy: ${errText(err)}\n`);
      return 2;
    }
    serviceProxy = (config) =>
      runServiceProxy(ac.signal, {
        kc,
        nodeName: opts.nodeName,
        clusterCIDR: config.network,
        nodePortRange: opts.nodePortRange,
        fullSyncIntervalMs: opts.proxyFullSyncIntervalMs,
        log,
        onSync: (r, state) => {
          metrics.proxySyncs.inc({ mode: r.mode });
          if (r.mode !== 'unchanged') metrics.proxySyncSeconds.observe(r.ms / 1000);
          metrics.proxyServicePorts.set(state.ports.length);
        },
        onSyncError: () => metrics.proxySyncs.inc({ mode: 'failed' }),
        onInvalid: (kind) => metrics.proxyInvalidObjects.inc({ kind }),
        onDrift: () => metrics.repairs.inc(),
        onApiError: () => metrics.kubeErrors.inc(),
      });
  }
  try {
    await runDaemon(opts, { nl, manager, openBackend, serviceProxy, log, metrics, signal: ac.signal });
    return 0;
  } catch (err) {
    log.error(`fatal: ${errText(err)}`);
    return 1;
  } finally {
    // SIGTERM: CNI requests in flight finish (or are undone) before we exit, bounded well
    // below the DaemonSet's terminationGracePeriodSeconds.
    await (await fastpath)?.drain(10_000);
    manager.close();
    nl.close();
    dumpNl.close();
  }
}

main().then(
  (code) => setTimeout(() => process.exit(code), 50),
  (err) => {
    process.stderr.write(`weftd: ${(err as Error).stack ?? err}\n`);
    process.exit(1);
  },
);

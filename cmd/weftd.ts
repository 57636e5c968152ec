/**
 * weftd: the node daemon. Parses flags (each also from WEFTD_* env), wires the etcd subnet
 * manager, the VXLAN backend, netlink and the logger, and runs until SIGTERM/SIGINT. Exit codes: 0 after a clean
 * stop, 2 on bad usage, 1 on a fatal error.
 */
import { hostname } from 'node:os';
import { expectedDevice } from '../src/backend/vxlan/expected.ts';
import { VxlanNetwork } from '../src/backend/vxlan/network.ts';
import type { BackendFactory } from '../src/daemon/backend.ts';
import { createLogger } from '../src/daemon/logger.ts';
import { Metrics } from '../src/daemon/metrics.ts';
import { errText, UsageError } from '../src/core/errors.ts';
import { parseOptions, usage } from '../src/daemon/options.ts';
import { runDaemon } from '../src/daemon/run.ts';
import { openNetlink } from '../src/netlink/index.ts';
import { setSysctl } from '../src/netns/index.ts';
import { EtcdSubnetManager } from '../src/subnet/etcd.ts';
import { startCniFastpath } from '../src/fastpath/index.ts';

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
  const metrics = new Metrics();
  const ac = new AbortController();
  for (const sig of ['SIGTERM', 'SIGINT'] as const) {
    process.on(sig, () => {
      if (!ac.signal.aborted) log.info(`${sig}: stopping`);
      ac.abort();
    });
  }
  let manager: EtcdSubnetManager;
  try {
    manager = new EtcdSubnetManager({
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
    log.error(`fatal: ${errText(err)}`);
    return 1;
  }
  const nl = openNetlink();
  // A second socket for reconcile's dumps, so they never hold up programming a new peer.
  const dumpNl = openNetlink();
  // Pods' traffic is routed through this host; then flannel's VXLAN device (expected.ts says
  // what it must look like: flannel.<VNI>, the underlay MTU less the encapsulation).
  const openBackend: BackendFactory = (config, { external, onRepair }) => {
    setSysctl('net.ipv4.ip_forward', '1');
    return VxlanNetwork.open(nl, {
      device: expectedDevice(external.link, { vni: config.backend.vni, port: config.backend.port, local: external.ip }),
      log,
      dumpNl,
      onRepair,
    });
  };
  log.info(`weftd starting`, { etcd: opts.etcdEndpoints.join(','), prefix: opts.etcdPrefix, subnetFile: opts.subnetFile });
  // CNI fast path (src/fastpath): the launcher (dist/bin/weft-fast, installed as /opt/cni/bin/weft)
  // forwards CNI requests to this process. --cni-socket "" disables it; not being able to serve
  // is not fatal (launchers fall back to the standalone plugin).
  if (opts.cniSocket) {
    startCniFastpath({ path: opts.cniSocket, signal: ac.signal, log: (m) => log.debug(m) }).then(
      (s) => log.info(`serving CNI requests on ${s.path}`),
      (err) => log.warn(`cni fast path off: ${errText(err)}`),
    );
  }
  try {
    await runDaemon(opts, { nl, manager, openBackend, log, metrics, signal: ac.signal });
    return 0;
  } catch (err) {
    log.error(`fatal: ${errText(err)}`);
    return 1;
  } finally {
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

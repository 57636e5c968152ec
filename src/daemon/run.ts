/**
 * weftd's lifecycle, in order (each step is its own module in this folder):
 *   1. read the network config from the subnet manager (missing/invalid: one clear log line, retry);
 *   2. backend (backend.ts): find the external interface and public IP, open the backend's
 *      device (flannel.<VNI> for VXLAN, reusing a compatible device and its MAC);
 *   3. lease (lease.ts): take a subnet lease carrying the backend data (our old lease, else our
 *      old subnet, else a free one), and from then on keep it renewed;
 *   4. peer glue (peers.ts): program every peer from the lease table, then follow the watch;
 *      every lease passes the lease gate (src/subnet/validate.ts) first;
 *   5. rules keeper (rules.ts: the forward rules always, masquerade with --ip-masq, the
 *      iptables FORWARD accept rules) and the subnet file, then the manager's ready hook;
 *      ready (health.ts);
 *   6. until aborted: renew the lease, follow the watch, reconcile kernel state and rules
 *      (reconcile.ts); with --proxy, the Service proxy (src/proxy) runs beside it all from step 1.
 *      A lost subnet (lease.ts) makes the node not ready and writes the lost form of the subnet
 *      file until the subnet is reclaimed, or moves the node (flannel.1 and cni0's gateway) once
 *      no pod is left on it (pods.ts).
 * Aborting (SIGTERM) stops the loops and leaves the data plane in place, so pods keep talking
 * while the daemon restarts; the next start picks everything up again without disruption.
 * The daemon knows only the SubnetManager and BackendNetwork interfaces; cmd/weftd.ts wires
 * the etcd manager and the VXLAN backend.
 */
import type { Server } from 'node:http';
import { systemClock, type Clock } from '../core/clock.ts';
import { errText } from '../core/errors.ts';
import type { Log } from '../core/log.ts';
import { constantDelay, retrying, type RetryPolicy } from '../core/retry.ts';
import { readPreviousSubnet, writeSubnetEnv } from '../core/subnetenv.ts';
import { formatCIDR, type IPv4Net } from '../ip/ipv4.ts';
import type { Netlink } from '../netlink/index.ts';
import type { NetworkConfig } from '../subnet/config.ts';
import type { Lease } from '../subnet/lease.ts';
import type { SubnetManager } from '../subnet/manager.ts';
import { LeaseGate, nodeFacts } from '../subnet/validate.ts';
import { openBackend, type BackendFactory } from './backend.ts';
import { Health } from './health.ts';
import { acquireLease, LeaseKeeper } from './lease.ts';
import { moveBridgeGateway, podAddressesIn } from './pods.ts';
import { Metrics } from './metrics.ts';
import type { DaemonOptions } from './options.ts';
import { PeerGlue } from './peers.ts';
import { reconcileLoop } from './reconcile.ts';
import { nftRules, RulesKeeper, type RulesOps } from './rules.ts';
import { startHealthServer } from './server.ts';

/** The waits between attempts of each step that is retried until it works. */
export interface DaemonRetry {
  /** Reading the network config. */
  config: RetryPolicy;
  /** Taking the first lease. */
  lease: RetryPolicy;
  /** Renewing it. */
  renew: RetryPolicy;
  /** The first full reconcile pass (every peer in the kernel). */
  peers: RetryPolicy;
  /** Rules, subnet file and the manager's ready hook. */
  publish: RetryPolicy;
}

export const DEFAULT_DAEMON_RETRY: DaemonRetry = {
  config: constantDelay(2000),
  lease: constantDelay(5000),
  renew: constantDelay(1000),
  peers: constantDelay(1000),
  publish: constantDelay(2000),
};

export interface DaemonDeps {
  /** Netlink in the node's namespace (finding the external interface). */
  nl: Netlink;
  manager: SubnetManager;
  /** Opens the backend network (cmd/weftd.ts: VXLAN). */
  openBackend: BackendFactory;
  log: Log;
  clock?: Clock;
  metrics?: Metrics;
  /** nftables and iptables operations (injected so unit wiring can skip nft and iptables). */
  rules?: RulesOps;
  retry?: Partial<DaemonRetry>;
  /**
   * The Service proxy (--proxy; cmd/weftd.ts wires src/proxy/controller.ts): started once the
   * network config is known, runs beside the overlay until the signal aborts.
   */
  serviceProxy?: (config: NetworkConfig) => Promise<void>;
  /** Aborting it stops the daemon (SIGTERM). */
  signal: AbortSignal;
}

/** Resolves when `p` settles or `signal` aborts, whichever is first. */
function unlessAborted(p: Promise<unknown>, signal: AbortSignal): Promise<unknown> {
  return Promise.race([p, new Promise((r) => signal.addEventListener('abort', r, { once: true }))]);
}

/** Runs the daemon until `signal` aborts. Throws only for errors retrying cannot fix. */
export async function runDaemon(opts: DaemonOptions, deps: DaemonDeps): Promise<void> {
  const { nl, manager, log, signal } = deps;
  const clock = deps.clock ?? systemClock;
  const metrics = deps.metrics ?? new Metrics({ clock });
  const retry = { ...DEFAULT_DAEMON_RETRY, ...deps.retry };
  const step = { signal, clock, log };
  const health = new Health({ clock, metrics, stallMs: Health.stallMsFor(opts.reconcileIntervalMs) });
  let server: Server | undefined;
  let backend: { close?(): void } | undefined;
  if (opts.healthzAddr) {
    server = await startHealthServer(opts.healthzAddr, { healthy: () => health.healthy(), ready: () => health.ready, metrics, log });
    log.info(`serving /healthz, /readyz, /metrics on ${opts.healthzAddr}`);
  }
  try {
    const config = await retrying('network config', () => manager.getConfig(), { ...step, policy: retry.config });
    if (!config) return;
    log.info(`network ${formatCIDR(config.network)}, /${config.subnetLen} per node, vxlan VNI ${config.backend.vni} port ${config.backend.port}`);
    // Services do not wait for the overlay: a node's own pods can use them meanwhile.
    const proxying = deps.serviceProxy?.(config).catch((err) => {
      health.fail();
      log.error(`service proxy stopped: ${errText(err)}`);
      throw err;
    });
    // Observed now (a rejection must not go unhandled while the overlay starts); awaited below.
    proxying?.catch(() => undefined);
    const { external, network } = await openBackend(config, {
      nl,
      open: deps.openBackend,
      iface: opts.iface,
      publicIP: opts.publicIP,
      log,
      onRepair: () => metrics.repairs.inc(),
    });
    backend = network;

    const leaseCtx = {
      manager,
      config,
      attrs: () => ({ publicIP: external.ip, backendType: network.backendType, backendData: network.backendData }),
      ttlSeconds: opts.leaseTtlSeconds,
      clock,
      log,
    };
    const podsOn = async (subnet: IPv4Net) => (await podAddressesIn(opts.cniDataDir, subnet)).length;
    const first = await acquireLease(readPreviousSubnet(opts.subnetFile), { ...leaseCtx, signal, retry: retry.lease, podsOn });
    if (!first) return;
    await network.setSubnet(first.lease.subnet);
    const readFacts = async () => nodeFacts(await nl.addrs(), await nl.routes(), { vxlanIndex: network.deviceIndex });
    const facts = await readFacts();
    const gate = new LeaseGate({
      config,
      ownSubnet: first.lease.subnet,
      ownMAC: network.deviceMAC,
      vtepMAC: (l) => network.peerMAC(l),
      ...facts,
    });

    const rules = new RulesKeeper(deps.rules ?? nftRules, { log, onRepair: () => metrics.repairs.inc() });
    const rulesSpec = (lease: Lease) => ({ network: config.network, subnet: lease.subnet, masquerade: opts.ipMasq });
    const env = (lease: Lease) => ({ network: config.network, subnet: lease.subnet, mtu: network.mtu, ipMasq: opts.ipMasq });
    // The lost form while the subnet is lost, read at the moment of writing (a loss may be
    // noticed while the rules are being applied).
    const publish = async (lease: Lease) => {
      await rules.apply(rulesSpec(lease));
      writeSubnetEnv(opts.subnetFile, env(lease), { lostTo: keeper.lostTo });
    };
    // Created before the keeper so a move (onNewLease) can re-validate; it follows the watch below.
    let glue: PeerGlue | undefined;
    const keeper: LeaseKeeper = new LeaseKeeper(first.lease, {
      ...leaseCtx,
      renewMarginMs: opts.renewMarginSeconds * 1000,
      retry: retry.renew,
      metrics,
      podsOn,
      lostTo: first.lostTo,
      onLost: async (lease) => {
        health.setLost(true);
        await publish(lease);
      },
      onReclaimed: async (lease) => {
        // The lost state ends when this returns: write the normal file then.
        writeSubnetEnv(opts.subnetFile, env(lease));
        health.setLost(false);
      },
      onNewLease: async (lease, old) => {
        await network.setSubnet(lease.subnet);
        // Replacing flannel.1's only address makes the kernel flush every route on it, without
        // a route notification: a full pass puts the peers' routes back now (no pod is on this
        // node while it moves, so the moment without them costs nothing).
        await network.reconcile();
        glue!.update({ ownSubnet: lease.subnet });
        const bridge = await moveBridgeGateway(nl, { from: old.subnet, to: lease.subnet });
        if (bridge) log.info(`moved the pod gateway on "${bridge}" to ${formatCIDR(lease.subnet)}`);
        await rules.apply(rulesSpec(lease));
        writeSubnetEnv(opts.subnetFile, env(lease));
        health.setLost(false);
      },
    });
    if (first.lostTo) health.setLost(true);
    // Renewal runs from here on, also while the peers are still being programmed.
    glue = new PeerGlue({ manager, network, gate, facts, own: keeper, publicIP: external.ip, log, metrics });
    const renewing = keeper.run(signal);
    const peers = glue.follow(signal);
    await unlessAborted(peers.synced, signal);
    if (signal.aborted) return;

    // Ready means every peer is really in the kernel: one full reconcile pass must succeed.
    await retrying('program peers', () => network.reconcile(), { ...step, policy: retry.peers });
    if (signal.aborted) return;
    await retrying('forward/masquerade rules and subnet file', () => publish(keeper.lease), { ...step, policy: retry.publish });
    if (signal.aborted) return;
    if (manager.ready) await retrying('report the lease complete', () => manager.ready!(keeper.lease), { ...step, policy: retry.publish });
    if (signal.aborted) return;
    health.setReady(true);
    health.passed();
    if (keeper.lostTo) log.warn(`started, not ready: subnet ${formatCIDR(keeper.lease.subnet)} is held by ${keeper.lostTo}; ${network.peerCount} peer(s)`);
    else log.info(`ready: subnet ${formatCIDR(keeper.lease.subnet)}, ${network.peerCount} peer(s), subnet file ${opts.subnetFile}`);

    // Drift repair as the kernel announces it; the reconcile loop below is the slow safety net.
    const watching = network.watch?.(signal).catch((err) => log.warn(`kernel notification watch: ${(err as Error).message}`));
    const reconciling = reconcileLoop(signal, {
      network,
      rules: { keeper: rules, spec: () => rulesSpec(keeper.lease) },
      refreshFacts: async () => void glue!.refreshFacts(await readFacts()),
      intervalMs: opts.reconcileIntervalMs,
      clock,
      health,
      metrics,
      log,
    });
    await Promise.all([renewing, peers.done, reconciling, proxying, watching]);
  } catch (err) {
    health.fail();
    throw err;
  } finally {
    backend?.close?.();
    health.setReady(false);
    server?.close();
    server?.closeAllConnections();
    log.info('stopped; the data plane (device, peers, rules) stays in place');
  }
}

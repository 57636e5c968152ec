/**
 * weftd's lifecycle, in order:
 *   1. read the network config from etcd (missing/invalid: one clear log line, retry);
 *   2. find the external interface and public IP;
 *   3. ensure flannel.<VNI> (reusing a compatible device and its MAC);
 *   4. take a subnet lease carrying that MAC (our old lease, else our old subnet, else random);
 *   5. program every peer from the lease table, then watch it;
 *   6. masquerade/forward rules (--ip-masq), subnet file -> ready;
 *   7. until aborted: renew the lease, follow the watch, reconcile kernel state.
 * Aborting (SIGTERM) stops the loops and leaves the data plane in place, so pods keep talking
 * while the daemon restarts; the next start picks everything up again without disruption.
 */
import type { Server } from 'node:http';
import { formatCIDR, formatIPv4, type IPv4Net } from '../ip/ipv4.ts';
import { LinkNotFoundError, type Link, type Netlink } from '../netlink/index.ts';
import { setSysctl } from '../netns/index.ts';
import type { Log } from '../core/log.ts';
import { errText } from '../core/errors.ts';
import { VxlanNetwork } from '../backend/vxlan/network.ts';
import { ensureRules, readRules, rulesPresent, type RulesSpec } from '../rules/nft.ts';
import { OutOfSubnetsError } from '../subnet/choose.ts';
import { systemClock, type Clock } from '../core/clock.ts';
import type { NetworkConfig } from '../subnet/config.ts';
import { leaseId, type Lease, type LeaseAttrs } from '../subnet/lease.ts';
import { LeaseLostError, type SubnetManager } from '../subnet/manager.ts';
import { Renewer } from '../subnet/renew.ts';
import { Metrics } from './metrics.ts';
import type { DaemonOptions } from './options.ts';
import { startHealthServer } from './server.ts';
import { readPreviousSubnet, writeSubnetFile } from './subnetfile.ts';

export interface DaemonDeps {
  nl: Netlink;
  /** A second socket in the same namespace for reconcile's dumps (see VxlanNetworkOptions). */
  dumpNl?: Netlink;
  manager: SubnetManager;
  log: Log;
  clock?: Clock;
  metrics?: Metrics;
  /** Applies nftables rules (injected so unit wiring can skip nft). */
  applyRules?: typeof ensureRules;
  /** Reads the table's fingerprint (undefined: no table), compared with what applyRules returned. */
  readRules?: typeof readRules;
  /** Shape check, used only when no fingerprint could be read back after applying. */
  checkRules?: typeof rulesPresent;
  /** Aborting it stops the daemon (SIGTERM). */
  signal: AbortSignal;
}

/** The external interface and the address VXLAN packets leave from. */
export interface External {
  link: Link;
  ip: string;
}

/** Resolves --iface / --public-ip (or the default route's interface) to a link and address. */
export async function findExternal(nl: Netlink, opts: { iface?: string; publicIP?: string }): Promise<External> {
  const addrs = await nl.addrs();
  let link: Link;
  if (opts.iface) {
    try {
      link = await nl.linkByName(opts.iface);
    } catch (err) {
      if (err instanceof LinkNotFoundError) throw new Error(`--iface: interface "${opts.iface}" not found`);
      throw err;
    }
  } else if (opts.publicIP) {
    const a = addrs.find((x) => x.ip === opts.publicIP);
    if (!a) throw new Error(`--public-ip: no interface has address ${opts.publicIP}`);
    link = await nl.linkByIndex(a.index);
  } else {
    const def = (await nl.routes()).find((r) => r.dst === '0.0.0.0/0' && r.index);
    if (!def) throw new Error('no default route to pick the external interface from; pass --iface or --public-ip');
    link = await nl.linkByIndex(def.index!);
  }
  const own = addrs.filter((a) => a.index === link.index);
  const ip = opts.publicIP ?? own[0]?.ip;
  if (!ip) throw new Error(`interface "${link.name}" has no IPv4 address; pass --public-ip`);
  return { link, ip };
}

/** Repeats `fn` until it succeeds or `signal` aborts; logs each distinct failure once. */
async function retrying<T>(what: string, fn: () => Promise<T>, opts: { signal: AbortSignal; clock: Clock; log: Log; delayMs?: number }): Promise<T | undefined> {
  const { signal, clock, log } = opts;
  const delayMs = opts.delayMs ?? 2000;
  let last = '';
  let lastAt = 0;
  while (!signal.aborted) {
    try {
      const v = await fn();
      if (last) log.info(`${what}: ok now`);
      return v;
    } catch (err) {
      const msg = (err as Error).message;
      if (msg !== last || clock.now() - lastAt > 60_000) {
        log.error(`${what}: ${msg}; retrying every ${delayMs / 1000}s`);
        last = msg;
        lastAt = clock.now();
      }
      await clock.sleep(delayMs, signal);
    }
  }
  return undefined;
}

/** Runs the daemon until `signal` aborts. Throws only for errors retrying cannot fix. */
export async function runDaemon(opts: DaemonOptions, deps: DaemonDeps): Promise<void> {
  const { nl, manager, log, signal } = deps;
  const clock = deps.clock ?? systemClock;
  const metrics = deps.metrics ?? new Metrics();
  const applyRules = deps.applyRules ?? ensureRules;
  const readRulesNow = deps.readRules ?? readRules;
  const checkRules = deps.checkRules ?? rulesPresent;
  // weft's table as read back right after we last wrote it: any difference later is drift.
  let rulesPrint: string | undefined;
  const rulesDrift = async (spec: RulesSpec): Promise<string | undefined> => {
    if (rulesPrint === undefined) return (await checkRules(spec)) ? undefined : 'it was missing or incomplete';
    const now = await readRulesNow();
    if (now === undefined) return 'it was missing';
    return now === rulesPrint ? undefined : 'its rules had been changed';
  };
  let failed = false;
  // Liveness: once running, the reconcile loop must keep completing passes (a wedged netlink
  // socket or event loop shows up here); before that, only a fatal error counts.
  let lastPassAt = 0;
  const stallMs = Math.max(30_000, 10 * opts.reconcileIntervalMs);
  const healthy = () => !failed && (!lastPassAt || clock.now() - lastPassAt < stallMs);
  let server: Server | undefined;
  if (opts.healthzAddr) {
    server = await startHealthServer(opts.healthzAddr, { healthy, ready: () => metrics.ready, metrics, now: () => clock.now() });
    log.info(`serving /healthz, /readyz, /metrics on ${opts.healthzAddr}`);
  }
  try {
    const config = await retrying('network config', () => manager.getConfig(), { signal, clock, log });
    if (!config) return;
    log.info(`network ${formatCIDR(config.network)}, /${config.subnetLen} per node, vxlan VNI ${config.backend.vni} port ${config.backend.port}`);
    const ext = await findExternal(nl, opts);
    log.info(`external interface "${ext.link.name}", public IP ${ext.ip}, MTU ${ext.link.mtu}`);
    setSysctl('net.ipv4.ip_forward', '1');

    const network = await VxlanNetwork.open(nl, {
      device: {
        name: `flannel.${config.backend.vni}`,
        vni: config.backend.vni,
        port: config.backend.port,
        local: ext.ip,
        parentIndex: ext.link.index,
        mtu: ext.link.mtu - 50,
      },
      log,
      dumpNl: deps.dumpNl,
      onRepair: () => metrics.repairs++,
    });
    const attrs = (): LeaseAttrs => ({ publicIP: ext.ip, backendType: 'vxlan', backendData: network.backendData });
    const ttlSeconds = opts.leaseTtlSeconds;
    const acquire = async (previous: IPv4Net | undefined): Promise<Lease | undefined> =>
      retrying('subnet lease', async () => {
        try {
          return await manager.acquireLease(config, attrs(), { previous, ttlSeconds });
        } catch (err) {
          if (err instanceof OutOfSubnetsError) throw new Error(`${err.message}; waiting for a lease to expire or be deleted`, { cause: err });
          throw err;
        }
      }, { signal, clock, log, delayMs: 5000 });

    let lease = await acquire(readPreviousSubnet(opts.subnetFile));
    if (!lease) return;
    log.info(`leased subnet ${leaseId(lease)}`, { publicIP: ext.ip, expires: new Date(lease.expiresAt ?? 0).toISOString() });
    metrics.leaseExpiresAt = lease.expiresAt ?? 0;
    await network.setSubnet(lease.subnet);

    const publish = async (current: Lease, cfg: NetworkConfig) => {
      if (opts.ipMasq) rulesPrint = await applyRules({ network: cfg.network, subnet: current.subnet, masquerade: true });
      writeSubnetFile(opts.subnetFile, { network: cfg.network, subnet: current.subnet, mtu: network.link.mtu, ipMasq: opts.ipMasq });
    };

    let renewFailingSince = 0;
    let renewLoggedAt = 0;
    const renewer = new Renewer(lease.expiresAt ?? clock.now(), {
      clock,
      renewMarginMs: opts.renewMarginSeconds * 1000,
      retryMs: 1000,
      renew: async () => {
        try {
          lease = await manager.renewLease(lease!, attrs(), { ttlSeconds });
        } catch (err) {
          if (!(err instanceof LeaseLostError)) throw err;
          log.error(`${err.message}; taking a new subnet`);
          const fresh = await manager.acquireLease(config, attrs(), { ttlSeconds });
          lease = fresh;
          await network.setSubnet(fresh.subnet);
          await publish(fresh, config);
          log.info(`leased subnet ${leaseId(fresh)}`);
        }
        if (renewFailingSince) log.info(`renew lease: ok again after ${Math.round((clock.now() - renewFailingSince) / 1000)}s`);
        renewFailingSince = 0;
        metrics.renewals++;
        metrics.leaseExpiresAt = lease.expiresAt ?? 0;
        log.debug(`renewed lease ${leaseId(lease)}`, { expires: new Date(metrics.leaseExpiresAt).toISOString() });
        return metrics.leaseExpiresAt;
      },
      onError: (err) => {
        // Retried every second: log the first failure and then once a minute, not every retry.
        const now = clock.now();
        if (!renewFailingSince || now - renewLoggedAt >= 60_000) {
          log.warn(`renew lease: ${errText(err)}${renewFailingSince ? ` (failing for ${Math.round((now - renewFailingSince) / 1000)}s)` : ''}`);
          renewLoggedAt = now;
        }
        renewFailingSince ||= now;
      },
    });

    // Renewal runs from here on, also while the peers are still being programmed.
    const renewing = renewer.run(signal);

    let firstSnapshot!: () => void;
    const synced = new Promise<void>((r) => (firstSnapshot = r));
    const isOwn = (subnet: IPv4Net) => subnet.ip === lease!.subnet.ip && subnet.prefixLen === lease!.subnet.prefixLen;
    const watching = manager.watchLeases(signal, {
      snapshot: (leases) => {
        if (!leases.some((l) => isOwn(l.subnet) && l.publicIP === ext.ip)) renewer.kick();
        network
          .applySnapshot(leases)
          .then(() => {
            metrics.peers = network.peerCount;
            log.info(`lease table synced: ${network.peerCount} peer(s)`);
          })
          .catch((err) => log.error(`apply lease table: ${errText(err)}`))
          .finally(firstSnapshot);
      },
      event: (ev) => {
        const subnet = ev.type === 'put' ? ev.lease.subnet : ev.subnet;
        if (isOwn(subnet)) {
          if (ev.type === 'delete' || ev.lease.publicIP !== ext.ip) {
            log.warn(`our lease ${formatIPv4(subnet.ip)}/${subnet.prefixLen} was ${ev.type === 'delete' ? 'deleted' : 'taken over'}; renewing`);
            renewer.kick();
          }
          return;
        }
        const p = ev.type === 'put' ? network.applyPut(ev.lease) : network.applyDelete({ subnet });
        p.then(() => (metrics.peers = network.peerCount)).catch((err) => log.error(`apply lease change: ${errText(err)}`));
      },
    });
    await Promise.race([synced, new Promise((r) => signal.addEventListener('abort', r, { once: true }))]);
    if (signal.aborted) return;

    // Ready means every peer is really in the kernel: one full reconcile pass must succeed.
    await retrying('program peers', () => network.reconcile(), { signal, clock, log, delayMs: 1000 });
    if (signal.aborted) return;
    await retrying('masquerade rules and subnet file', () => publish(lease!, config), { signal, clock, log });
    if (signal.aborted) return;
    metrics.ready = true;
    lastPassAt = clock.now();
    log.info(`ready: subnet ${leaseId(lease)}, ${network.peerCount} peer(s), subnet file ${opts.subnetFile}`);

    const reconciling = (async () => {
      // nft is a process spawn, so the rules are checked less often than the kernel objects.
      const rulesEvery = Math.max(1, Math.round(10_000 / opts.reconcileIntervalMs));
      for (let pass = 1; !signal.aborted; pass++) {
        await clock.sleep(opts.reconcileIntervalMs, signal);
        if (signal.aborted) break;
        try {
          await network.reconcile();
          metrics.peers = network.peerCount;
          lastPassAt = clock.now();
          if (opts.ipMasq && pass % rulesEvery === 0) {
            const spec = { network: config.network, subnet: lease!.subnet, masquerade: true };
            const drift = await rulesDrift(spec);
            if (drift) {
              // One nft transaction replaces the whole table (see src/rules/nft.ts).
              rulesPrint = await applyRules(spec);
              metrics.repairs++;
              log.info(`repair: nftables table "ip weft" put back (${drift})`);
            }
          }
        } catch (err) {
          log.warn(`reconcile: ${errText(err)}`);
        }
      }
    })();
    await Promise.all([renewing, watching, reconciling]);
  } catch (err) {
    failed = true;
    throw err;
  } finally {
    metrics.ready = false;
    server?.close();
    server?.closeAllConnections();
    log.info('stopped; the data plane (device, peers, rules) stays in place');
  }
}

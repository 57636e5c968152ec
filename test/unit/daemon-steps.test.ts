/**
 * weftd's steps, each alone with fakes of the interfaces they use, and the whole lifecycle with
 * a subnet manager whose lease never expires (the shape a Kubernetes manager has) and a fake
 * backend network. Kernel behaviour is covered by test/priv/weftd-*.test.ts and overlay.test.ts.
 */
import test from 'ava';
import { existsSync, mkdtempSync, readFileSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import type { BackendNetwork } from '../../src/backend/types.ts';
import type { Log } from '../../src/core/log.ts';
import { constantDelay } from '../../src/core/retry.ts';
import { parseSubnetEnv } from '../../src/core/subnetenv.ts';
import { Health } from '../../src/daemon/health.ts';
import { LeaseKeeper } from '../../src/daemon/lease.ts';
import { Metrics } from '../../src/daemon/metrics.ts';
import { parseOptions } from '../../src/daemon/options.ts';
import { followPeers, PeerGlue, REJECTION_LINES } from '../../src/daemon/peers.ts';
import { RulesKeeper, type RulesOps } from '../../src/daemon/rules.ts';
import { reconcileLoop } from '../../src/daemon/reconcile.ts';
import { runDaemon } from '../../src/daemon/run.ts';
import { formatCIDR, parseCIDR, type IPv4Net } from '../../src/ip/ipv4.ts';
import type { Netlink } from '../../src/netlink/index.ts';
import { ConfigError, parseNetworkConfig, type NetworkConfig } from '../../src/subnet/config.ts';
import type { Lease, LeaseAttrs } from '../../src/subnet/lease.ts';
import { LeaseLostError, type LeaseWatchHandler, type SubnetManager } from '../../src/subnet/manager.ts';
import { LeaseGate, type LeaseContext } from '../../src/subnet/validate.ts';
import { FakeClock } from '../helpers/clock.ts';

function recordingLog(): Log & { lines: string[] } {
  const lines: string[] = [];
  const at = (level: string) => (msg: string) => lines.push(`${level} ${msg}`);
  return { lines, error: at('error'), warn: at('warn'), info: at('info'), debug: at('debug') };
}

const config = parseNetworkConfig(JSON.stringify({ Network: '198.18.0.0/16', Backend: { Type: 'vxlan', VNI: 7 } }));
const mkLease = (cidr: string, publicIP: string, expiresAt?: number): Lease => ({
  subnet: parseCIDR(cidr),
  publicIP,
  backendType: 'vxlan',
  backendData: { VNI: 7, VtepMAC: `02:00:00:00:00:${publicIP.slice(-2)}` },
  expiresAt,
});

/** A subnet manager in memory: one lease per call of acquireLease from `subnets`. */
class FakeManager implements SubnetManager {
  readonly calls: string[] = [];
  readonly readyWith: Lease[] = [];
  handler?: LeaseWatchHandler;
  configFailures = 0;
  renewError?: Error;
  #subnets: string[];
  #table: Lease[];
  #expires: (() => number | undefined) | undefined;
  /** Called inside ready(), to check what is in place at that moment. */
  onReady?: () => void;

  constructor(opts: { subnets: string[]; table?: Lease[]; expires?: () => number | undefined }) {
    this.#subnets = opts.subnets;
    this.#table = opts.table ?? [];
    this.#expires = opts.expires;
  }
  async getConfig(): Promise<NetworkConfig> {
    this.calls.push('getConfig');
    if (this.configFailures-- > 0) throw new ConfigError('network config not found');
    return config;
  }
  async listLeases() {
    return { leases: this.#table, revision: '1' };
  }
  async acquireLease(_c: NetworkConfig, attrs: LeaseAttrs, opts: { previous?: IPv4Net }): Promise<Lease> {
    const subnet = this.#subnets.shift()!;
    this.calls.push(`acquire ${subnet}${opts.previous ? ` previous ${formatCIDR(opts.previous)}` : ''}`);
    return { subnet: parseCIDR(subnet), ...attrs, expiresAt: this.#expires?.() };
  }
  async renewLease(lease: Lease, attrs: LeaseAttrs): Promise<Lease> {
    this.calls.push(`renew ${formatCIDR(lease.subnet)}`);
    if (this.renewError) throw this.renewError;
    return { ...lease, ...attrs, expiresAt: this.#expires?.() };
  }
  async watchLeases(signal: AbortSignal, handler: LeaseWatchHandler): Promise<void> {
    this.handler = handler;
    handler.snapshot(this.#table);
    await new Promise((r) => signal.addEventListener('abort', r, { once: true }));
  }
  async ready(lease: Lease): Promise<void> {
    this.onReady?.();
    this.readyWith.push(lease);
  }
  close() {}
}

/** A backend network that records what it is told. */
class FakeNetwork implements BackendNetwork {
  readonly backendType = 'vxlan';
  readonly backendData = { VNI: 7, VtepMAC: '02:00:00:00:00:11' };
  readonly mtu = 1450;
  readonly calls: string[] = [];
  readonly peers = new Map<string, Lease>();
  own?: string;
  async applySnapshot(leases: Lease[]) {
    this.calls.push(`snapshot ${leases.length}`);
    this.peers.clear();
    for (const l of leases) if (formatCIDR(l.subnet) !== this.own) this.peers.set(formatCIDR(l.subnet), l);
  }
  async applyPut(lease: Lease) {
    this.calls.push(`put ${formatCIDR(lease.subnet)}`);
    this.peers.set(formatCIDR(lease.subnet), lease);
  }
  async applyDelete(lease: Pick<Lease, 'subnet'>) {
    this.calls.push(`delete ${formatCIDR(lease.subnet)}`);
    this.peers.delete(formatCIDR(lease.subnet));
  }
  async reconcile() {
    this.calls.push('reconcile');
    return 0;
  }
  get peerCount() {
    return this.peers.size;
  }
  async setSubnet(subnet: IPv4Net) {
    this.own = formatCIDR(subnet);
    this.calls.push(`setSubnet ${this.own}`);
  }
  readonly deviceIndex = 9;
  readonly deviceMAC = '02:00:00:00:00:11';
  peerMAC(lease: Lease): string {
    const mac = (lease.backendData as { VtepMAC?: unknown } | undefined)?.VtepMAC;
    if (typeof mac !== 'string') throw new Error('BackendData has no valid "VtepMAC"');
    return mac;
  }
}

/** A gate for our node 198.51.100.11 on eth0 (198.51.100.0/24), owning `own`, as run.ts builds it. */
function gateFor(own: string, network: FakeNetwork, facts: Partial<LeaseContext> = {}): LeaseGate {
  return new LeaseGate({
    config,
    ownSubnet: parseCIDR(own),
    ownMAC: network.deviceMAC,
    vtepMAC: (l) => network.peerMAC(l),
    ownAddresses: ['198.51.100.11'],
    connectedRoutes: [parseCIDR('198.51.100.0/24')],
    ...facts,
  });
}

/** Just enough netlink to find the external interface: eth0 (index 2) with 198.51.100.11 and the default route. */
const fakeNl = {
  addrs: async () => [{ index: 2, ip: '198.51.100.11', prefixLen: 24 }],
  routes: async () => [{ dst: '0.0.0.0/0', gateway: '198.51.100.1', index: 2 }],
  linkByIndex: async (index: number) => ({ index, name: 'eth0', mtu: 1500, mac: '02:00:00:00:00:02', up: true }),
} as unknown as Netlink;

async function until(what: string, cond: () => boolean, ms = 5000): Promise<void> {
  const end = Date.now() + ms;
  while (!cond()) {
    if (Date.now() > end) throw new Error(`timed out waiting for ${what}`);
    await new Promise((r) => setTimeout(r, 5));
  }
}

test("metrics: prom-client exposition with weftd's families and the default process metrics, one registry per daemon", async (t) => {
  const clock = new FakeClock();
  clock.t = 40_000;
  const m = new Metrics({ clock });
  const other = new Metrics({ clock });
  m.peers.set(3);
  m.setLeaseExpiry(100_000);
  m.etcdErrors.inc(2);
  m.repairs.inc(5);
  m.resyncRepairs.inc(4);
  m.renewals.inc();
  const text = await m.render();
  t.regex(text, /^# TYPE weftd_peers gauge\nweftd_peers 3$/m);
  t.regex(text, /^weftd_lease_expiry_seconds 60$/m);
  t.regex(text, /^weftd_lease_expiry_timestamp_seconds 100$/m);
  t.regex(text, /^# TYPE weftd_etcd_errors_total counter\nweftd_etcd_errors_total 2$/m);
  t.regex(text, /^weftd_reconcile_repairs_total 5$/m);
  t.regex(text, /^weftd_lease_renewals_total 1$/m);
  t.regex(text, /^# TYPE weftd_watch_resync_repairs_total counter\nweftd_watch_resync_repairs_total 4$/m);
  t.regex(text, /^weftd_ready 0$/m);
  t.regex(text, /^process_cpu_user_seconds_total \S+$/m, 'process metrics');
  t.regex(text, /^nodejs_eventloop_lag_seconds \S+$/m, 'event-loop metrics');
  t.regex(m.contentType, /^text\/plain; version=0\.0\.4/);
  const otherText = await other.render();
  t.regex(otherText, /^weftd_peers 0$/m, 'a second daemon in the same process has its own values');
  t.regex(otherText, /^weftd_lease_expiry_seconds 0$/m);
  m.setLeaseExpiry(undefined);
  t.regex(await m.render(), /^weftd_lease_expiry_seconds 0$/m, 'a lease that never expires shows 0');
});

test('rules keeper: applies, sees the table changed or gone, and puts it back once', async (t) => {
  let table: string | undefined;
  const applied: string[] = [];
  const ops: RulesOps = {
    apply: async (spec) => {
      applied.push(formatCIDR(spec.subnet));
      table = `print-${applied.length}`;
      return table;
    },
    read: async () => table,
    check: async () => table !== undefined,
    ensureForward: async (net) => {
      applied.push(`forward ${formatCIDR(net)}`);
      forward = undefined;
    },
    forwardDrift: async () => forward,
  };
  let forward: string | undefined;
  let repairs = 0;
  const log = recordingLog();
  const keeper = new RulesKeeper(ops, { log, onRepair: () => repairs++ });
  const spec = { network: config.network, subnet: parseCIDR('198.18.3.0/24'), masquerade: true };
  t.is(await keeper.drift(spec), 'it was missing or incomplete', 'nothing applied and no table yet');
  await keeper.apply(spec);
  t.is(await keeper.drift(spec), undefined);
  t.false(await keeper.repair(spec), 'no drift: nothing re-applied');
  table = 'someone edited it';
  t.is(await keeper.drift(spec), 'its rules had been changed');
  t.true(await keeper.repair(spec));
  t.is(await keeper.drift(spec), undefined, 'the new fingerprint is the reference now');
  table = undefined;
  t.true(await keeper.repair(spec));
  forward = 'iptables-nft: jump from FORWARD to WEFT-FORWARD missing';
  t.true(await keeper.repair(spec), 'the FORWARD accept rules drifted, the table did not');
  t.false(await keeper.repair(spec));
  t.deepEqual(applied, ['198.18.3.0/24', 'forward 198.18.0.0/16', '198.18.3.0/24', '198.18.3.0/24', 'forward 198.18.0.0/16']);
  t.is(repairs, 3);
  t.deepEqual(log.lines, [
    'info repair: nftables table "ip weft" put back (its rules had been changed)',
    'info repair: nftables table "ip weft" put back (it was missing)',
    'info repair: iptables FORWARD accept rules put back (iptables-nft: jump from FORWARD to WEFT-FORWARD missing)',
  ]);
});

test('lease keeper: renews before expiry; a lost subnet waits (not moved while pods use it), is reclaimed when free, moved once no pod is left', async (t) => {
  const clock = new FakeClock();
  const manager = new FakeManager({ subnets: ['198.18.5.0/24'], expires: () => clock.now() + 60_000 });
  const events: string[] = [];
  const metrics = new Metrics({ clock });
  const log = recordingLog();
  let pods = 2;
  let onLostFailures = 1;
  const keeper = new LeaseKeeper(mkLease('198.18.4.0/24', '198.51.100.11', 60_000), {
    manager,
    config,
    attrs: () => ({ publicIP: '198.51.100.11', backendType: 'vxlan', backendData: {} }),
    ttlSeconds: 60,
    clock,
    log,
    renewMarginMs: 10_000,
    retry: constantDelay(1000),
    metrics,
    podsOn: async (s) => (events.push(`podsOn ${formatCIDR(s)}`), pods),
    onLost: async (l, holder) => {
      if (onLostFailures-- > 0) throw new Error('subnet file not writable');
      events.push(`lost ${formatCIDR(l.subnet)} to ${holder}`);
    },
    onReclaimed: async (l) => void events.push(`reclaimed ${formatCIDR(l.subnet)}`),
    onNewLease: async (l, old) => void events.push(`moved ${formatCIDR(old.subnet)} -> ${formatCIDR(l.subnet)}`),
  });
  t.true(keeper.isOwn(parseCIDR('198.18.4.0/24')));
  const ac = new AbortController();
  const running = keeper.run(ac.signal);
  await clock.advance(49_999);
  t.deepEqual(manager.calls, []);
  await clock.advance(1);
  t.deepEqual(manager.calls, ['renew 198.18.4.0/24'], 'renewed the margin before expiry');

  // Lost: one error line naming the holder; onLost retried until it works; pods hold the move back.
  manager.renewError = new LeaseLostError('198.18.4.0/24', '198.51.100.99');
  keeper.kick();
  await clock.advance(0);
  t.is(keeper.lostTo, '198.51.100.99');
  t.regex(await metrics.render(), /^weftd_subnet_lost 1$/m);
  await clock.advance(1000);
  await clock.advance(1000);
  t.deepEqual(events, ['lost 198.18.4.0/24 to 198.51.100.99', 'podsOn 198.18.4.0/24', 'podsOn 198.18.4.0/24']);
  t.false(
    manager.calls.some((c) => c.startsWith('acquire')),
    'not moved while pods use the subnet',
  );
  t.true(keeper.isOwn(parseCIDR('198.18.4.0/24')));
  const errors = log.lines.filter((l) => l.startsWith('error'));
  t.is(errors.length, 1, log.lines.join('\n'));
  t.regex(errors[0], /^error subnet 198\.18\.4\.0\/24 is now held by the node at 198\.51\.100\.99: not ready/);
  t.is(log.lines.filter((l) => l === 'info lost subnet 198.18.4.0/24: 2 pod address(es) still allocated on it; waiting').length, 1, log.lines.join('\n'));

  // The key frees up: the next renewal takes the same subnet again.
  manager.renewError = undefined;
  await clock.advance(1000);
  t.deepEqual(events.slice(3), ['reclaimed 198.18.4.0/24']);
  t.is(keeper.lostTo, undefined);
  t.regex(await metrics.render(), /^weftd_subnet_lost 0$/m);
  t.true(
    log.lines.some((l) => /^info reclaimed subnet 198\.18\.4\.0\/24 \(held by 198\.51\.100\.99 for \d+s\)$/.test(l)),
    log.lines.join('\n'),
  );

  // Lost again, and no pod is left: the node moves to a new subnet.
  events.length = 0;
  manager.renewError = new LeaseLostError('198.18.4.0/24', '198.51.100.98');
  pods = 0;
  keeper.kick();
  await clock.advance(0);
  t.deepEqual(events, ['lost 198.18.4.0/24 to 198.51.100.98', 'podsOn 198.18.4.0/24', 'moved 198.18.4.0/24 -> 198.18.5.0/24']);
  t.true(keeper.isOwn(parseCIDR('198.18.5.0/24')));
  t.is(keeper.lostTo, undefined);
  t.regex(await metrics.render(), /^weftd_subnet_lost 0$/m);
  t.true(manager.calls.includes('acquire 198.18.5.0/24'));
  ac.abort();
  await running;
});

test('lease keeper: starting lost (a restart while another node holds the subnet) waits without a lease', async (t) => {
  const clock = new FakeClock();
  const manager = new FakeManager({ subnets: [] });
  manager.renewError = new LeaseLostError('198.18.4.0/24', '198.51.100.99');
  const events: string[] = [];
  const keeper = new LeaseKeeper(mkLease('198.18.4.0/24', '198.51.100.11'), {
    manager,
    config,
    attrs: () => ({ publicIP: '198.51.100.11', backendType: 'vxlan', backendData: {} }),
    ttlSeconds: 60,
    clock,
    log: recordingLog(),
    renewMarginMs: 10_000,
    retry: constantDelay(1000),
    metrics: new Metrics({ clock }),
    lostTo: '198.51.100.99',
    podsOn: async () => 1,
    onLost: async (l, holder) => void events.push(`lost ${formatCIDR(l.subnet)} to ${holder}`),
    onReclaimed: async (l) => void events.push(`reclaimed ${formatCIDR(l.subnet)}`),
    onNewLease: async () => void events.push('moved'),
  });
  t.is(keeper.lostTo, '198.51.100.99');
  const ac = new AbortController();
  const running = keeper.run(ac.signal);
  await clock.advance(0);
  t.deepEqual(events, ['lost 198.18.4.0/24 to 198.51.100.99'], 'a lease without expiry is still retried at once when starting lost');
  manager.renewError = undefined;
  await clock.advance(1000);
  t.deepEqual(events, ['lost 198.18.4.0/24 to 198.51.100.99', 'reclaimed 198.18.4.0/24']);
  ac.abort();
  await running;
});

test('peer glue: other leases go to the backend, our own lease deleted or taken over kicks a renewal', async (t) => {
  const manager = new FakeManager({ subnets: [], table: [mkLease('198.18.2.0/24', '198.51.100.12')] });
  const network = new FakeNetwork();
  const own = parseCIDR('198.18.1.0/24');
  let kicks = 0;
  const metrics = new Metrics();
  const ac = new AbortController();
  const log = recordingLog();
  const { synced, done } = followPeers(ac.signal, {
    manager,
    network,
    gate: gateFor('198.18.1.0/24', network),
    own: { isOwn: (s) => s.ip === own.ip && s.prefixLen === own.prefixLen, kick: () => kicks++ },
    publicIP: '198.51.100.11',
    log,
    metrics,
  });
  await synced;
  t.is(kicks, 1, 'the snapshot lacks our lease: renew (re-create) it');
  manager.handler!.event({ type: 'put', lease: mkLease('198.18.3.0/24', '198.51.100.13') });
  manager.handler!.event({ type: 'put', lease: mkLease('198.18.1.0/24', '198.51.100.11') });
  t.is(kicks, 1, 'our own lease as we wrote it: nothing to do');
  manager.handler!.event({ type: 'put', lease: mkLease('198.18.1.0/24', '198.51.100.99') });
  manager.handler!.event({ type: 'delete', subnet: own });
  manager.handler!.event({ type: 'delete', subnet: parseCIDR('198.18.2.0/24') });
  t.is(kicks, 3);
  await until('backend calls', () => network.calls.length === 3);
  t.deepEqual(network.calls, ['snapshot 1', 'put 198.18.3.0/24', 'delete 198.18.2.0/24'], 'our own subnet never reaches the backend');
  t.regex(await metrics.render(), /^weftd_peers 1$/m);
  t.true(log.lines.includes('warn our lease 198.18.1.0/24 was taken over; renewing'));
  ac.abort();
  await done;
});

/** A lease whose VtepMAC is given (mkLease derives it from the PublicIP). */
const withMAC = (cidr: string, publicIP: string, mac: string): Lease => ({ ...mkLease(cidr, publicIP), backendData: { VNI: 7, VtepMAC: mac } });

test('peer glue with the gate: invalid leases never reach the backend, are logged once and counted; a later valid value is applied', async (t) => {
  const good = mkLease('198.18.2.0/24', '198.51.100.12');
  const table = [
    mkLease('198.18.1.0/24', '198.51.100.11'),
    good,
    mkLease('1.0.0.0/8', '198.51.100.13'),
    mkLease('198.18.3.128/25', '198.51.100.14'),
    mkLease('198.18.4.0/24', '198.51.100.11'),
    withMAC('198.18.5.0/24', '198.51.100.15', '01:00:5e:00:00:01'),
    withMAC('198.18.6.0/24', '198.51.100.16', '02:00:00:00:00:12'),
  ];
  const manager = new FakeManager({ subnets: [], table });
  const network = new FakeNetwork();
  network.own = '198.18.1.0/24';
  const metrics = new Metrics();
  const ac = new AbortController();
  const log = recordingLog();
  const own = parseCIDR('198.18.1.0/24');
  const { synced, done } = followPeers(ac.signal, {
    manager,
    network,
    gate: gateFor('198.18.1.0/24', network),
    own: { isOwn: (s) => s.ip === own.ip && s.prefixLen === own.prefixLen, kick: () => {} },
    publicIP: '198.51.100.11',
    log,
    metrics,
  });
  await synced;
  t.deepEqual(network.calls, ['snapshot 2'], 'our own lease and 198.18.2.0/24 pass; the backend leaves our own out');
  t.deepEqual([...network.peers.keys()], ['198.18.2.0/24']);
  t.deepEqual(
    log.lines.filter((l) => l.startsWith('warn')),
    [
      'warn ignoring lease 1.0.0.0/8 (PublicIP 198.51.100.13): subnet 1.0.0.0/8 is not inside network 198.18.0.0/16',
      "warn ignoring lease 198.18.3.128/25 (PublicIP 198.51.100.14): subnet 198.18.3.128/25 is not a /24 (the network's SubnetLen)",
      "warn ignoring lease 198.18.4.0/24 (PublicIP 198.51.100.11): PublicIP 198.51.100.11 is this node's address",
      'warn ignoring lease 198.18.5.0/24 (PublicIP 198.51.100.15): VtepMAC 01:00:5e:00:00:01 is multicast',
      'warn ignoring lease 198.18.6.0/24 (PublicIP 198.51.100.16): VtepMAC 02:00:00:00:00:12 is also used by the lease for 198.18.2.0/24, which ranks first',
    ],
  );
  t.regex(await metrics.render(), /^weftd_invalid_leases 5$/m);
  t.regex(log.lines.at(-1)!, /^info lease table synced: 1 peer\(s\), 5 invalid lease\(s\) ignored$/);

  // A resync with the same table: nothing new to log, nothing new for the backend.
  const before = log.lines.length;
  manager.handler!.snapshot(table);
  await until('second snapshot', () => network.calls.length === 2);
  t.deepEqual(
    log.lines.slice(before).filter((l) => l.startsWith('warn')),
    [],
  );
  // Later valid values for two rejected keys are applied; a rejected one deleted costs nothing.
  manager.handler!.event({ type: 'put', lease: withMAC('198.18.5.0/24', '198.51.100.15', '02:00:00:00:00:15') });
  manager.handler!.event({ type: 'delete', subnet: parseCIDR('1.0.0.0/8') });
  manager.handler!.event({ type: 'put', lease: mkLease('198.18.3.0/24', '198.51.100.14') });
  // The same key turning bad again is taken out of the kernel.
  manager.handler!.event({ type: 'put', lease: withMAC('198.18.5.0/24', '198.51.100.15', 'ff:ff:ff:ff:ff:ff') });
  await until('backend calls', () => network.calls.length === 5);
  t.deepEqual(network.calls.slice(2), ['put 198.18.5.0/24', 'put 198.18.3.0/24', 'delete 198.18.5.0/24']);
  t.deepEqual([...network.peers.keys()].sort(), ['198.18.2.0/24', '198.18.3.0/24']);
  t.is(log.lines.at(-1), 'warn ignoring lease 198.18.5.0/24 (PublicIP 198.51.100.15): VtepMAC ff:ff:ff:ff:ff:ff is the broadcast address');
  t.regex(await metrics.render(), /^weftd_invalid_leases 4$/m, '198.18.3.128/25, 198.18.4.0/24, 198.18.6.0/24 and 198.18.5.0/24 again');
  ac.abort();
  await done;
});

test('peer glue with the gate: a flood of invalid leases logs 20 lines and a count; our move and new routes re-validate', async (t) => {
  const junk = Array.from({ length: REJECTION_LINES + 5 }, (_, i) => mkLease(`1.${i}.0.0/16`, '198.51.100.13'));
  const manager = new FakeManager({ subnets: [], table: [mkLease('198.18.2.0/24', '198.51.100.12'), mkLease('198.18.3.0/24', '198.51.100.13'), ...junk] });
  const network = new FakeNetwork();
  network.own = '198.18.1.0/24';
  const metrics = new Metrics();
  const ac = new AbortController();
  const log = recordingLog();
  let own = parseCIDR('198.18.1.0/24');
  const facts = { ownAddresses: ['198.51.100.11'], connectedRoutes: [parseCIDR('198.51.100.0/24')] };
  const glue = new PeerGlue({
    manager,
    network,
    gate: gateFor('198.18.1.0/24', network),
    facts,
    own: { isOwn: (s) => s.ip === own.ip && s.prefixLen === own.prefixLen, kick: () => {} },
    publicIP: '198.51.100.11',
    log,
    metrics,
  });
  const { synced, done } = glue.follow(ac.signal);
  await synced;
  const warns = log.lines.filter((l) => l.startsWith('warn'));
  t.is(warns.length, REJECTION_LINES + 1);
  t.is(warns.at(-1), 'warn and 5 more invalid lease(s) ignored');
  t.regex(await metrics.render(), /^weftd_invalid_leases 25$/m);
  t.deepEqual([...network.peers.keys()], ['198.18.2.0/24', '198.18.3.0/24']);

  // Another node on our subnet is refused while it is ours; after we moved to 198.18.9.0/24 its
  // lease is re-validated and programmed.
  manager.handler!.event({ type: 'put', lease: mkLease('198.18.1.0/24', '198.51.100.17') });
  t.regex(log.lines.at(-1)!, /^warn ignoring lease 198\.18\.1\.0\/24 \(PublicIP 198\.51\.100\.17\): subnet 198\.18\.1\.0\/24 overlaps our subnet 198\.18\.1\.0\/24/);
  own = parseCIDR('198.18.9.0/24');
  network.own = '198.18.9.0/24';
  glue.update({ ownSubnet: own });
  await until('move applied', () => network.calls.length === 2);
  t.deepEqual(network.calls, ['snapshot 2', 'put 198.18.1.0/24']);
  t.regex(await metrics.render(), /^weftd_invalid_leases 25$/m);

  t.false(glue.refreshFacts({ ownAddresses: ['198.51.100.11'], connectedRoutes: [parseCIDR('198.51.100.0/24')] }), 'same facts: no re-validation');
  t.true(glue.refreshFacts({ ownAddresses: ['198.51.100.11'], connectedRoutes: [parseCIDR('198.51.100.0/24'), parseCIDR('198.18.3.0/24')] }));
  await until('new route applied', () => network.calls.length === 3);
  t.is(network.calls[2], 'delete 198.18.3.0/24', 'a lease over a connected network of this node is taken out');
  t.is(log.lines.at(-1), 'warn ignoring lease 198.18.3.0/24 (PublicIP 198.51.100.13): subnet 198.18.3.0/24 overlaps connected route 198.18.3.0/24');
  t.regex(await metrics.render(), /^weftd_invalid_leases 26$/m);
  t.true(glue.refreshFacts(facts));
  await until('route gone again', () => network.calls.length === 4);
  t.is(network.calls[3], 'put 198.18.3.0/24');
  ac.abort();
  await done;
});

test('reconcile loop: every pass reconciles; every 10 s the rules are repaired and the node facts re-read, a failure of one not stopping the other', async (t) => {
  const clock = new FakeClock();
  const network = new FakeNetwork();
  const metrics = new Metrics({ clock });
  const log = recordingLog();
  const seen: string[] = [];
  let forwardDrift: string | undefined = 'iptables-legacy: chain WEFT-FORWARD missing';
  const keeper = new RulesKeeper(
    {
      apply: async () => 'print',
      read: async () => 'print',
      check: async () => true,
      ensureForward: async () => void seen.push('ensure forward'),
      forwardDrift: async () => {
        if (forwardDrift === 'boom') throw new Error('iptables-nft-save: boom');
        return forwardDrift;
      },
    },
    { log, onRepair: () => metrics.repairs.inc() },
  );
  await keeper.apply({ network: config.network, subnet: parseCIDR('198.18.1.0/24'), masquerade: false });
  seen.length = 0;
  const ac = new AbortController();
  const loop = reconcileLoop(ac.signal, {
    network,
    rules: { keeper, spec: () => ({ network: config.network, subnet: parseCIDR('198.18.1.0/24'), masquerade: false }) },
    refreshFacts: async () => void seen.push('facts'),
    intervalMs: 2000,
    clock,
    health: new Health({ clock, metrics, stallMs: 60_000 }),
    metrics,
    log,
  });
  for (let i = 0; i < 4; i++) await clock.advance(2000);
  t.is(network.calls.filter((c) => c === 'reconcile').length, 4);
  t.deepEqual(seen, [], 'no rules tick before 10 s');
  await clock.advance(2000);
  await until('rules tick', () => seen.length === 2);
  t.deepEqual(seen, ['ensure forward', 'facts']);
  t.true(log.lines.includes('info repair: iptables FORWARD accept rules put back (iptables-legacy: chain WEFT-FORWARD missing)'));
  forwardDrift = 'boom';
  for (let i = 0; i < 5; i++) await clock.advance(2000);
  await until('second tick', () => seen.length === 3);
  t.is(seen[2], 'facts', 'the facts are re-read even when the rules check failed');
  t.true(log.lines.includes('warn reconcile rules: iptables-nft-save: boom'));
  t.regex(await metrics.render(), /^weftd_reconcile_repairs_total 1$/m);
  ac.abort();
  await loop;
});

test('runDaemon without --ip-masq: the forward rules and the iptables FORWARD accept rules all the same, no masquerade', async (t) => {
  const dir = mkdtempSync(join(tmpdir(), 'weftd-unit-'));
  t.teardown(() => rmSync(dir, { recursive: true, force: true }));
  const manager = new FakeManager({ subnets: ['198.18.1.0/24'], table: [mkLease('198.18.1.0/24', '198.51.100.11')] });
  const applied: string[] = [];
  const ac = new AbortController();
  const running = runDaemon(
    { ...parseOptions(['--subnet-file', join(dir, 'subnet.env')], {}, 'n1')!, healthzAddr: '', reconcileIntervalMs: 20 },
    {
      nl: fakeNl,
      manager,
      openBackend: async () => new FakeNetwork(),
      log: recordingLog(),
      rules: {
        apply: async (spec) => (applied.push(`table masquerade ${spec.masquerade}`), 'print'),
        read: async () => 'print',
        check: async () => true,
        ensureForward: async (net) => void applied.push(`forward ${formatCIDR(net)}`),
        forwardDrift: async () => undefined,
      },
      signal: ac.signal,
    },
  );
  await until('ready', () => manager.readyWith.length > 0);
  t.deepEqual(applied, ['table masquerade false', 'forward 198.18.0.0/16']);
  t.false(parseSubnetEnv(readFileSync(join(dir, 'subnet.env'), 'utf8')).ipMasq);
  ac.abort();
  await running;
});

test('health: unhealthy after a fatal error or when reconcile passes stop', (t) => {
  const clock = new FakeClock();
  const metrics = new Metrics({ clock });
  const h = new Health({ clock, metrics, stallMs: Health.stallMsFor(1000) });
  t.is(Health.stallMsFor(1000), 30_000);
  t.is(Health.stallMsFor(10_000), 30_000);
  t.is(Health.stallMsFor(60_000), 180_000);
  clock.t = 1_000_000;
  t.true(h.healthy(), 'before the first pass only a fatal error counts');
  h.passed();
  clock.t += 29_999;
  t.true(h.healthy());
  clock.t += 1;
  t.false(h.healthy(), 'no pass for the stall limit');
  h.passed();
  t.true(h.healthy());
  h.fail();
  t.false(h.healthy());
});

test('runDaemon: a lease that never expires, the ready hook after the subnet file, a kicked renewal, a clean stop', async (t) => {
  const dir = mkdtempSync(join(tmpdir(), 'weftd-unit-'));
  t.teardown(() => rmSync(dir, { recursive: true, force: true }));
  const subnetFile = join(dir, 'subnet.env');
  const manager = new FakeManager({
    subnets: ['198.18.1.0/24'],
    table: [mkLease('198.18.1.0/24', '198.51.100.11'), mkLease('198.18.2.0/24', '198.51.100.12'), mkLease('1.0.0.0/8', '198.51.100.13')],
  });
  manager.configFailures = 1;
  let fileAtReady: string | undefined;
  manager.onReady = () => (fileAtReady = existsSync(subnetFile) ? readFileSync(subnetFile, 'utf8') : undefined);
  const network = new FakeNetwork();
  const opened: string[] = [];
  const metrics = new Metrics();
  const log = recordingLog();
  const opts = { ...parseOptions(['--subnet-file', subnetFile, '--ip-masq'], {}, 'n1')!, healthzAddr: '', reconcileIntervalMs: 20 };
  const rulesApplied: string[] = [];
  const rules: RulesOps = {
    apply: async (spec) => (rulesApplied.push(`${formatCIDR(spec.subnet)} masquerade ${spec.masquerade}`), 'print'),
    read: async () => 'print',
    check: async () => true,
    ensureForward: async (net) => void rulesApplied.push(`forward ${formatCIDR(net)}`),
    forwardDrift: async () => undefined,
  };
  const ac = new AbortController();
  const running = runDaemon(opts, {
    nl: fakeNl,
    manager,
    openBackend: async (cfg, { external }) => {
      opened.push(`vni ${cfg.backend.vni} on ${external.link.name} ${external.ip}`);
      return network;
    },
    log,
    metrics,
    rules,
    retry: { config: constantDelay(10) },
    signal: ac.signal,
  });
  await until('ready', () => manager.readyWith.length > 0);
  t.deepEqual(opened, ['vni 7 on eth0 198.51.100.11']);
  t.deepEqual(manager.calls.slice(0, 3), ['getConfig', 'getConfig', 'acquire 198.18.1.0/24'], 'config retried, then one lease');
  t.true(log.lines.includes('error network config: network config not found; retrying every 0.01s'));
  t.truthy(fileAtReady, 'the subnet file exists when the ready hook runs');
  const env = parseSubnetEnv(fileAtReady!);
  t.is(formatCIDR(env.subnet), '198.18.1.0/24');
  t.is(env.mtu, 1450, "the backend's MTU");
  t.true(env.ipMasq);
  t.deepEqual(rulesApplied, ['198.18.1.0/24 masquerade true', 'forward 198.18.0.0/16']);
  t.deepEqual(network.calls.slice(0, 3), ['setSubnet 198.18.1.0/24', 'snapshot 2', 'reconcile']);
  t.is(network.peerCount, 1);
  t.true(
    log.lines.some((l) => /^info leased subnet 198\.18\.1\.0\/24$/.test(l)),
    log.lines.join('\n'),
  );
  const text = await metrics.render();
  t.regex(text, /^weftd_ready 1$/m);
  t.regex(text, /^weftd_peers 1$/m);
  t.regex(text, /^weftd_invalid_leases 1$/m, 'the 1.0.0.0/8 lease never reached the backend (snapshot 2 above)');
  t.true(log.lines.includes('warn ignoring lease 1.0.0.0/8 (PublicIP 198.51.100.13): subnet 1.0.0.0/8 is not inside network 198.18.0.0/16'));

  await until('reconcile passes', () => network.calls.filter((c) => c === 'reconcile').length >= 4);
  t.false(
    manager.calls.some((c) => c.startsWith('renew')),
    'a lease without expiry is not renewed on a timer',
  );
  manager.handler!.event({ type: 'delete', subnet: parseCIDR('198.18.1.0/24') });
  await until('kicked renewal', () => manager.calls.includes('renew 198.18.1.0/24'));
  t.is(manager.readyWith.length, 1, 'the ready hook runs once');

  ac.abort();
  await running;
  t.regex(await metrics.render(), /^weftd_ready 0$/m, 'not ready once stopped');
  t.is(log.lines.at(-1), 'info stopped; the data plane (device, peers, rules) stays in place');
});

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
import { followPeers } from '../../src/daemon/peers.ts';
import { RulesKeeper, type RulesOps } from '../../src/daemon/rules.ts';
import { runDaemon } from '../../src/daemon/run.ts';
import { formatCIDR, parseCIDR, type IPv4Net } from '../../src/ip/ipv4.ts';
import type { Netlink } from '../../src/netlink/index.ts';
import { ConfigError, parseNetworkConfig, type NetworkConfig } from '../../src/subnet/config.ts';
import type { Lease, LeaseAttrs } from '../../src/subnet/lease.ts';
import { LeaseLostError, type LeaseWatchHandler, type SubnetManager } from '../../src/subnet/manager.ts';
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

test('metrics: prom-client exposition with weftd\'s families and the default process metrics, one registry per daemon', async (t) => {
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
  };
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
  t.deepEqual(applied, ['198.18.3.0/24', '198.18.3.0/24', '198.18.3.0/24']);
  t.is(repairs, 2);
  t.deepEqual(log.lines, [
    'info repair: nftables table "ip weft" put back (its rules had been changed)',
    'info repair: nftables table "ip weft" put back (it was missing)',
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
  t.false(manager.calls.some((c) => c.startsWith('acquire')), 'not moved while pods use the subnet');
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
  t.true(log.lines.some((l) => /^info reclaimed subnet 198\.18\.4\.0\/24 \(held by 198\.51\.100\.99 for \d+s\)$/.test(l)), log.lines.join('\n'));

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

test('health: unhealthy after a fatal error or when reconcile passes stop', (t) => {
  const clock = new FakeClock();
  const metrics = new Metrics({ clock });
  const h = new Health({ clock, metrics, stallMs: Health.stallMsFor(1000) });
  t.is(Health.stallMsFor(1000), 30_000);
  t.is(Health.stallMsFor(10_000), 100_000);
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
  const manager = new FakeManager({ subnets: ['198.18.1.0/24'], table: [mkLease('198.18.1.0/24', '198.51.100.11'), mkLease('198.18.2.0/24', '198.51.100.12')] });
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
    apply: async (spec) => (rulesApplied.push(formatCIDR(spec.subnet)), 'print'),
    read: async () => 'print',
    check: async () => true,
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
  t.deepEqual(rulesApplied, ['198.18.1.0/24']);
  t.deepEqual(network.calls.slice(0, 3), ['setSubnet 198.18.1.0/24', 'snapshot 2', 'reconcile']);
  t.is(network.peerCount, 1);
  t.true(log.lines.some((l) => /^info leased subnet 198\.18\.1\.0\/24$/.test(l)), log.lines.join('\n'));
  const text = await metrics.render();
  t.regex(text, /^weftd_ready 1$/m);
  t.regex(text, /^weftd_peers 1$/m);

  await until('reconcile passes', () => network.calls.filter((c) => c === 'reconcile').length >= 4);
  t.false(manager.calls.some((c) => c.startsWith('renew')), 'a lease without expiry is not renewed on a timer');
  manager.handler!.event({ type: 'delete', subnet: parseCIDR('198.18.1.0/24') });
  await until('kicked renewal', () => manager.calls.includes('renew 198.18.1.0/24'));
  t.is(manager.readyWith.length, 1, 'the ready hook runs once');

  ac.abort();
  await running;
  t.regex(await metrics.render(), /^weftd_ready 0$/m, 'not ready once stopped');
  t.is(log.lines.at(-1), 'info stopped; the data plane (device, peers, rules) stays in place');
});

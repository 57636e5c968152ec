/**
 * Syncing on a real kernel: partial syncs touch only the changed Service (rule handles of the
 * others survive), a deleted Service leaves no chain, stale UDP conntrack entries are deleted,
 * and drift is noticed and repaired. Topology in proxy-topo.ts; the oracles are `nft -j` and
 * `conntrack -L` in the node namespace and what the echo servers answer.
 */
import test from 'ava';
import { chmodSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { EndpointSelector, selectEndpoints, type ProxyState } from '../../src/proxy/endpoints.ts';
import { silentLog } from '../../src/core/log.ts';
import { nftApply, tableFingerprint } from '../../src/proxy/nft.ts';
import { buildRuleset, fullScript } from '../../src/proxy/ruleset.ts';
import { ProxySyncer } from '../../src/proxy/sync.ts';
import { validateEndpointSlice, validateService, type EndpointSlice, type Service } from '../../src/proxy/types.ts';
import { buildTopo, POD_IPS, rawService, rawSlice, tally, type Topo } from './proxy-topo.ts';

let topo: Topo;

const ports = [
  { name: 'http', port: 8080, protocol: 'TCP' },
  { name: 'dns', port: 5353, protocol: 'UDP' },
];
const svcPorts = [
  { name: 'http', port: 80 },
  { name: 'dns', port: 53, protocol: 'UDP' },
];

/** Desired state from API-shaped objects: service name -> [clusterIP, endpoints]. */
function state(spec: Record<string, [string, Array<{ ip: string; ready?: boolean }>]>): ProxyState {
  const services = Object.entries(spec).map(([name, [ip]]) => validateService(rawService(name, { clusterIP: ip, ports: svcPorts })));
  const slices = Object.entries(spec).map(([name, [, eps]]) => validateEndpointSlice(rawSlice(name, eps, ports)));
  return selectEndpoints(
    services.map((r) => (r.ok ? r.value : fail(r.reason))),
    slices.map((r) => (r.ok ? r.value : fail(r.reason))),
    { nodeName: 'node-a' },
  );
}

function fail(reason: string): never {
  throw new Error(`fixture invalid: ${reason}`);
}

interface Listing {
  chains: Set<string>;
  /** chain -> rule handles in order. */
  handles: Map<string, number[]>;
  elements: Map<string, string>;
}

function listing(): Listing {
  const doc = JSON.parse(topo.nsh(topo.node, '/usr/sbin/nft', ['-j', 'list', 'table', 'ip', 'weft-proxy'])) as { nftables: Array<Record<string, any>> };
  const l: Listing = { chains: new Set(), handles: new Map(), elements: new Map() };
  for (const o of doc.nftables) {
    if (o.chain) l.chains.add(o.chain.name);
    if (o.rule) l.handles.set(o.rule.chain, [...(l.handles.get(o.rule.chain) ?? []), o.rule.handle]);
    if (o.map || o.set) {
      const m = o.map ?? o.set;
      l.elements.set(m.name, JSON.stringify(m.elem ?? []));
    }
  }
  return l;
}

const A = '198.19.0.20';
const B = '198.19.0.21';
const C = '198.19.0.22';
const [P1, P2, P3] = POD_IPS as [string, string, string];

test.before(async () => {
  topo = await buildTopo();
});

test.after.always(async () => {
  await topo?.scope.cleanup();
});

test.serial('partial sync rewrites only the changed service; a deleted one leaves no chain', async (t) => {
  const syncer = new ProxySyncer({ netns: topo.nodeNetns });
  const all = [{ ip: P1 }, { ip: P2 }, { ip: P3 }];
  t.is((await syncer.sync(state({ a: [A, all], b: [B, all], c: [C, all] }))).mode, 'full');
  const before = listing();
  t.true([...before.chains].some((c) => c.includes('/c/')));

  const r = await syncer.sync(state({ a: [A, all], b: [B, [{ ip: P1 }, { ip: P2 }, { ip: P3, ready: false }]] }));
  t.is(r.mode, 'partial');
  const after = listing();
  t.deepEqual(
    [...after.chains].filter((c) => c.includes('/c/')),
    [],
    'no chain of the deleted service',
  );
  t.false(after.elements.get('service-ips')!.includes(C), 'no map element of the deleted service');
  t.false(after.elements.get('cluster-ips')!.includes(C));
  for (const [chain, handles] of before.handles) {
    if (chain.includes('/a/') || !/^(svc|ep|ext|local)-/.test(chain)) t.deepEqual(after.handles.get(chain), handles, `untouched: ${chain}`);
  }
  const bSvc = [...after.chains].filter((c) => c.startsWith('svc-') && c.includes('/b/'));
  t.is(bSvc.length, 2);
  for (const c of bSvc) t.notDeepEqual(after.handles.get(c), before.handles.get(c), `rewritten: ${c}`);
  t.false(
    [...after.chains].some((c) => c.includes('/b/') && c.includes(`__${P3}/`)),
    'the not-ready endpoint chain is gone',
  );
  t.true(
    [...after.chains].some((c) => c.includes('/b/') && c.includes(`__${P1}/`)),
    'kept endpoint chains stay',
  );
  t.deepEqual(r.diff!.addedChains, []);

  const counts = tally(await topo.request(topo.client, { host: B, port: 80, count: 60 }));
  t.deepEqual(Object.keys(counts).sort(), ['pod-1', 'pod-2'], 'not-ready endpoint excluded');
  t.deepEqual(Object.keys(tally(await topo.request(topo.client, { host: A, port: 80, count: 60 }))).sort(), ['pod-1', 'pod-2', 'pod-3']);
  const [gone] = await topo.request(topo.client, { host: C, port: 80, timeoutMs: 700 });
  t.is(gone!.err, 'TIMEOUT', 'a deleted service is no longer answered nor rejected');

  t.is((await syncer.sync(state({ a: [A, all], b: [B, [{ ip: P1 }, { ip: P2 }, { ip: P3, ready: false }]] }))).mode, 'unchanged');
  const [none] = await Promise.all([syncer.sync(state({ a: [A, all], b: [B, []] })), syncer.sync(state({ a: [A, all], b: [B, [{ ip: P2 }]] }))]);
  t.is(none.mode, 'partial', 'concurrent syncs are serialized and each is a valid partial');
  t.deepEqual(Object.keys(tally(await topo.request(topo.client, { host: B, port: 80, count: 20 }))), ['pod-2']);
});

test.serial('partial syncs narrowed to the changed Services leave the table a full sync of the same state leaves', async (t) => {
  const syncer = new ProxySyncer({ netns: topo.nodeNetns, log: silentLog });
  const selector = new EndpointSelector({ nodeName: 'node-a' });
  const services = new Map<string, Service>();
  const slices = new Map<string, EndpointSlice>();
  const put = (name: string, ip: string, eps: Array<{ ip: string; ready?: boolean }>) => {
    const s = validateService(rawService(name, { clusterIP: ip, ports: svcPorts }));
    const sl = validateEndpointSlice(rawSlice(name, eps, ports));
    services.set(`default/${name}`, s.ok ? s.value : fail(s.reason));
    slices.set(`default/${name}`, sl.ok ? sl.value : fail(sl.reason));
  };
  const slicesOf = (id: string) => (slices.has(id) ? [slices.get(id)!] : []);
  const table = () => tableFingerprint(topo.nsh(topo.node, '/usr/sbin/nft', ['-j', 'list', 'table', 'ip', 'weft-proxy']));
  put('na', A, [{ ip: P1 }, { ip: P2 }]);
  put('nb', B, [{ ip: P1 }]);
  put('nc', C, [{ ip: P3 }]);
  t.is((await syncer.sync(selector.select(services, slicesOf).state, { full: true })).mode, 'full');
  const steps: Array<[string, () => void]> = [
    ['an endpoint replaced', () => put('nb', B, [{ ip: P2 }])],
    ['a Service gone', () => services.delete('default/nc')],
    ['its slice gone', () => slices.delete('default/nc')],
    ['a Service added, no endpoint yet', () => put('nd', C, [])],
    ['a ClusterIP now shared with another Service', () => put('nd', A, [{ ip: P3, ready: false }])],
  ];
  const ids = ['default/na', 'default/nb', 'default/nc', 'default/nd'];
  for (const [what, change] of steps) {
    const before = new Map(ids.map((id) => [id, [services.get(id), slices.get(id)]]));
    change();
    const dirty = ids.filter((id) => before.get(id)![0] !== services.get(id) || before.get(id)![1] !== slices.get(id));
    const { state: st, changed } = selector.select(services, slicesOf, dirty);
    const r = await syncer.sync(st, { changed });
    t.true(r.mode === 'partial' || r.mode === 'unchanged', what);
    const partial = table();
    t.is((await syncer.sync(st, { full: true })).mode, 'full');
    t.is(partial, table(), `${what}: the same table as a full sync's`);
  }
  const counts = tally(await topo.request(topo.client, { host: B, port: 80, count: 20 }));
  t.deepEqual(Object.keys(counts), ['pod-2']);
  syncer.close();
});

test.serial('a full sync rewrites the table in place: base chains keep their hooks, stale and foreign chains go', async (t) => {
  // a table replaced whole would get the same handles back (they count from 1 per table): the
  // syncer's warning is what tells the fallback apart
  const warnings: string[] = [];
  const log = { ...silentLog, warn: (msg: string, meta?: Record<string, unknown>) => warnings.push(`${msg} ${JSON.stringify(meta ?? {})}`) };
  const syncer = new ProxySyncer({ netns: topo.nodeNetns, log });
  const all = [{ ip: P1 }, { ip: P2 }, { ip: P3 }];
  await syncer.sync(state({ a: [A, all], b: [B, all] }), { full: true });
  const baseHandles = () => {
    const doc = JSON.parse(topo.nsh(topo.node, '/usr/sbin/nft', ['-j', 'list', 'table', 'ip', 'weft-proxy'])) as { nftables: Array<Record<string, any>> };
    return Object.fromEntries(doc.nftables.filter((o) => o.chain?.hook).map((o) => [o.chain.name, o.chain.handle]));
  };
  const before = baseHandles();
  t.is(Object.keys(before).length, 7, JSON.stringify(before));
  // someone else's chain inside our table is drift a full sync removes
  topo.nsh(topo.node, '/usr/sbin/nft', ['add', 'chain', 'ip', 'weft-proxy', 'foreign-chain']);
  // and so are elements nobody declared (`flush table` alone would keep them)
  topo.nsh(topo.node, '/usr/sbin/nft', ['add element ip weft-proxy cluster-ips { 198.19.0.99 }; add element ip weft-proxy service-ips { 198.19.0.99 . tcp . 81 : goto reject-chain }']);
  const r = await syncer.sync(state({ a: [A, all] }), { full: true });
  t.is(r.mode, 'full');
  t.deepEqual(baseHandles(), before, 'the same base chains: never unregistered from their hooks');
  t.deepEqual(warnings, [], 'rewritten in place, not replaced whole');
  const after = listing();
  t.false(after.chains.has('foreign-chain'));
  t.false(after.elements.get('cluster-ips')!.includes('198.19.0.99'), after.elements.get('cluster-ips'));
  t.false(after.elements.get('service-ips')!.includes('198.19.0.99'), after.elements.get('service-ips'));
  t.true(after.elements.get('cluster-ips')!.includes(A), 'what the ruleset declares is back');
  t.deepEqual(
    [...after.chains].filter((c) => c.includes('/b/')),
    [],
    'no chain of the removed service',
  );
  t.deepEqual(Object.keys(tally(await topo.request(topo.client, { host: A, port: 80, count: 30 }))).sort(), ['pod-1', 'pod-2', 'pod-3']);
});

test.serial('stale UDP conntrack entries to a removed endpoint are deleted after the sync', async (t) => {
  const syncer = new ProxySyncer({ netns: topo.nodeNetns });
  const one = state({ d: [A, [{ ip: P1 }]] });
  const moved = state({ d: [A, [{ ip: P2 }]] });
  await syncer.sync(one, { full: true });
  const srcPort = 40053;
  const udp = () => topo.request(topo.client, { host: A, port: 53, proto: 'udp', srcPort });
  t.is((await udp())[0]!.reply, 'pod-1 198.18.0.10');
  const flows = () => topo.nsh(topo.node, 'conntrack', ['-L', '-p', 'udp', '--orig-dst', A]).trim();
  t.regex(flows(), new RegExp(`src=${P1.replace(/\./g, '\\.')} dst=198\\.18\\.0\\.10 sport=5353 dport=${srcPort}`));

  // control: the same rules applied without the cleanup keep the flow on the old endpoint
  await nftApply(fullScript(buildRuleset(moved)), { netns: topo.nodeNetns });
  t.is((await udp())[0]!.reply, 'pod-1 198.18.0.10', 'stale flow (kubernetes #19029) reproduced');

  const r = await syncer.sync(moved, { full: true });
  t.true(r.flowsDeleted >= 1, `deleted ${r.flowsDeleted}`);
  t.notRegex(flows(), new RegExp(`src=${P1.replace(/\./g, '\\.')} `));
  t.is((await udp())[0]!.reply, 'pod-2 198.18.0.10', 'the same client port now reaches the new endpoint');
  const tcp = await topo.request(topo.client, { host: A, port: 80 });
  t.is(tcp[0]!.reply, 'pod-2 198.18.0.10');
});

test.serial('drift (a rule deleted, the table deleted) is noticed and repaired by a full sync', async (t) => {
  const syncer = new ProxySyncer({ netns: topo.nodeNetns });
  const s = state({ e: [A, [{ ip: P3 }]] });
  t.false(await syncer.drifted(), 'nothing to compare before the first sync');
  await syncer.sync(s);
  t.false(await syncer.drifted());
  const l = listing();
  const chain = [...l.chains].find((c) => c.startsWith('ep-') && c.includes('/e/tcp/'))!;
  const dnat = l.handles.get(chain)!.at(-1)!;
  topo.nsh(topo.node, '/usr/sbin/nft', ['delete', 'rule', 'ip', 'weft-proxy', chain, 'handle', String(dnat)]);
  const [broken] = await topo.request(topo.client, { host: A, port: 80, timeoutMs: 700 });
  t.truthy(broken!.err, 'the damage is real');
  t.true(await syncer.drifted());
  t.is((await syncer.sync(s)).mode, 'full', 'after drift the next sync is full even with nothing changed');
  t.false(await syncer.drifted());
  t.is((await topo.request(topo.client, { host: A, port: 80 }))[0]!.reply, 'pod-3 198.18.0.10');

  topo.nsh(topo.node, '/usr/sbin/nft', ['delete', 'table', 'ip', 'weft-proxy']);
  t.true(await syncer.drifted());
  t.is((await syncer.sync(s)).mode, 'full');
  t.is((await topo.request(topo.client, { host: A, port: 80 }))[0]!.reply, 'pod-3 198.18.0.10');
});

test.serial('readBack "full": after a partial sync the next check re-baselines, later drift is seen', async (t) => {
  const syncer = new ProxySyncer({ netns: topo.nodeNetns, readBack: 'full' });
  t.is((await syncer.sync(state({ g: [A, [{ ip: P1 }, { ip: P2 }]] }))).mode, 'full');
  t.false(await syncer.drifted());
  t.is((await syncer.sync(state({ g: [A, [{ ip: P1 }]] }))).mode, 'partial');
  t.false(await syncer.drifted(), 'baseline taken');
  t.false(await syncer.drifted());
  const chain = [...listing().chains].find((c) => c.startsWith('svc-') && c.includes('/g/tcp/'))!;
  topo.nsh(topo.node, '/usr/sbin/nft', ['flush', 'chain', 'ip', 'weft-proxy', chain]);
  t.true(await syncer.drifted());
  t.is((await syncer.sync(state({ g: [A, [{ ip: P1 }]] }))).mode, 'full');
  t.is((await topo.request(topo.client, { host: A, port: 80 }))[0]!.reply, 'pod-1 198.18.0.10');
});

test.serial('readBack "lazy": no read-back in a sync, the next check re-baselines, later drift is seen', async (t) => {
  const syncer = new ProxySyncer({ netns: topo.nodeNetns, readBack: 'lazy' });
  t.is((await syncer.sync(state({ h: [A, [{ ip: P1 }, { ip: P2 }]] }))).mode, 'full');
  t.false(await syncer.drifted(), 'baseline taken after the full sync');
  const chain = [...listing().chains].find((c) => c.startsWith('svc-') && c.includes('/h/tcp/'))!;
  topo.nsh(topo.node, '/usr/sbin/nft', ['flush', 'chain', 'ip', 'weft-proxy', chain]);
  t.true(await syncer.drifted(), 'an edit after the baseline is drift');
  t.is((await syncer.sync(state({ h: [A, [{ ip: P1 }, { ip: P2 }]] }))).mode, 'full');
  t.is((await syncer.sync(state({ h: [A, [{ ip: P2 }]] }))).mode, 'partial');
  // the documented cost of 'lazy': an edit before the first check after a sync becomes the
  // baseline (with 'always' the sync's own read-back would make this check report it)
  const svc = [...listing().chains].find((c) => c.startsWith('svc-') && c.includes('/h/tcp/'))!;
  topo.nsh(topo.node, '/usr/sbin/nft', ['flush', 'chain', 'ip', 'weft-proxy', svc]);
  t.false(await syncer.drifted());
  topo.nsh(topo.node, '/usr/sbin/nft', ['delete', 'table', 'ip', 'weft-proxy']);
  t.true(await syncer.drifted(), 'a deleted table is drift even before a baseline');
  t.is((await syncer.sync(state({ h: [A, [{ ip: P2 }]] }))).mode, 'full');
  t.false(await syncer.drifted());
  t.false(await syncer.drifted());
  t.is((await topo.request(topo.client, { host: A, port: 80 }))[0]!.reply, 'pod-2 198.18.0.10');
});

test.serial('the drift check runs beside syncs: a sync never waits for it, and its reading is discarded when a sync ran', async (t) => {
  const syncer = new ProxySyncer({ netns: topo.nodeNetns, readBack: 'lazy' });
  t.is((await syncer.sync(state({ k: [A, [{ ip: P1 }, { ip: P2 }]] }))).mode, 'full');
  t.false(await syncer.drifted(), 'baseline taken');
  const svc = [...listing().chains].find((c) => c.startsWith('svc-') && c.includes('/k/tcp/'))!;
  topo.nsh(topo.node, '/usr/sbin/nft', ['flush', 'chain', 'ip', 'weft-proxy', svc]);
  // a check started first, a sync right after: the sync is not queued behind the check, and
  // the check's reading (taken while the sync ran) is thrown away rather than misread
  const check = syncer.drifted();
  const r = await syncer.sync(state({ k: [A, [{ ip: P2 }]] }), { full: true });
  t.is(r.mode, 'full');
  t.false(await check, 'a reading overlapping a sync is discarded');
  t.false(await syncer.drifted(), 're-baselined after the sync');
  topo.nsh(topo.node, '/usr/sbin/nft', ['flush', 'chain', 'ip', 'weft-proxy', svc]);
  t.true(await syncer.drifted(), 'with no sync meanwhile the reading is compared');
  t.is((await syncer.sync(state({ k: [A, [{ ip: P2 }]] }))).mode, 'full');
  t.is((await topo.request(topo.client, { host: A, port: 80 }))[0]!.reply, 'pod-2 198.18.0.10');
  syncer.close();
});

test.serial('partial syncs survive the netlink socket and the kept nft -i process going away', async (t) => {
  const syncer = new ProxySyncer({ netns: topo.nodeNetns });
  t.is((await syncer.sync(state({ m: [A, [{ ip: P1 }, { ip: P2 }]] }))).mode, 'full');
  t.like(await syncer.sync(state({ m: [A, [{ ip: P1 }]] })), { mode: 'partial', via: 'nfnl' });
  syncer.close(); // as if both had died: the next partial sync opens another socket
  t.like(await syncer.sync(state({ m: [A, [{ ip: P2 }]] })), { mode: 'partial', via: 'nfnl' });
  t.deepEqual(Object.keys(tally(await topo.request(topo.client, { host: A, port: 80, count: 10 }))), ['pod-2']);
  syncer.close();
});

for (const [via, opts, error] of [
  ['the netlink batch', {}, /nfnl: line \d+ .*: ENOENT/],
  ['the kept nft -i', { nfnl: false }, /nft -i/],
] as const) {
  test.serial(`a failed partial sync through ${via} leaves the kernel as it was and the next sync is full`, async (t) => {
    const syncer = new ProxySyncer({ netns: topo.nodeNetns, ...opts });
    t.teardown(() => syncer.close());
    await syncer.sync(state({ f: [A, [{ ip: P1 }, { ip: P2 }]] }));
    // someone removes a chain the next partial sync expects to flush
    const l = listing();
    const ep = [...l.chains].find((c) => c.startsWith('ep-') && c.includes('/f/tcp/') && c.includes(`__${P2}/`))!;
    const svc = [...l.chains].find((c) => c.startsWith('svc-') && c.includes('/f/tcp/'))!;
    topo.nsh(topo.node, '/usr/sbin/nft', ['flush', 'chain', 'ip', 'weft-proxy', svc]);
    topo.nsh(topo.node, '/usr/sbin/nft', ['delete', 'chain', 'ip', 'weft-proxy', ep]);
    const before = topo.nsh(topo.node, '/usr/sbin/nft', ['list', 'table', 'ip', 'weft-proxy']);
    // the kernel's (or nft's) refusal is detected whichever way the script went
    await t.throwsAsync(syncer.sync(state({ f: [A, [{ ip: P1 }]] })), { message: error });
    t.is(topo.nsh(topo.node, '/usr/sbin/nft', ['list', 'table', 'ip', 'weft-proxy']), before, 'all or nothing');
    t.is((await syncer.sync(state({ f: [A, [{ ip: P1 }]] }))).mode, 'full');
    t.deepEqual(Object.keys(tally(await topo.request(topo.client, { host: A, port: 80, count: 10 }))), ['pod-1']);
  });
}

test.serial('a drift check reads the table only when something was committed since it was last known', async (t) => {
  // nft behind a wrapper that logs each call: the check's only way to read the table
  const dir = mkdtempSync(join(tmpdir(), 'weft-nftlog-'));
  t.teardown(() => rmSync(dir, { recursive: true, force: true }));
  const log = join(dir, 'calls');
  const nftBin = join(dir, 'nft');
  writeFileSync(nftBin, `#!/bin/sh\necho "$*" >> ${log}\nexec /usr/sbin/nft "$@"\n`);
  chmodSync(nftBin, 0o755);
  const reads = () =>
    readFileSync(log, 'utf8')
      .split('\n')
      .filter((l) => l.startsWith('-j list table')).length;
  const syncer = new ProxySyncer({ netns: topo.nodeNetns, readBack: 'lazy', nftBin });
  t.teardown(() => syncer.close());
  await syncer.sync(state({ g: [C, [{ ip: P1 }, { ip: P2 }]] }), { full: true });
  const after = reads();
  t.false(await syncer.drifted(), 'the first check takes the baseline');
  t.is(reads(), after + 1);
  t.false(await syncer.drifted());
  t.false(await syncer.drifted());
  t.is(reads(), after + 1, 'no commit since: no read');
  // someone else's commit, in another table: read, compared, no drift
  topo.nsh(topo.node, '/usr/sbin/nft', ['add', 'table', 'ip', 'weft-nftlog-other']);
  t.teardown(() => topo.nsh(topo.node, '/usr/sbin/nft', ['delete', 'table', 'ip', 'weft-nftlog-other']));
  t.false(await syncer.drifted());
  t.is(reads(), after + 2);
  t.false(await syncer.drifted());
  t.is(reads(), after + 2);
  // an edit of our table is seen
  const chain = [...listing().chains].find((c) => c.startsWith('svc-') && c.includes('/g/tcp/'))!;
  topo.nsh(topo.node, '/usr/sbin/nft', ['flush', 'chain', 'ip', 'weft-proxy', chain]);
  t.true(await syncer.drifted());
  t.is((await syncer.sync(state({ g: [C, [{ ip: P1 }, { ip: P2 }]] }))).mode, 'full');
  // a partial sync leaves a baseline to take: the next check reads once, then not again
  t.is((await syncer.sync(state({ g: [C, [{ ip: P2 }]] }))).mode, 'partial');
  const n = reads();
  t.false(await syncer.drifted());
  t.false(await syncer.drifted());
  t.is(reads(), n + 1);
});

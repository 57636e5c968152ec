/**
 * The netlink executor on a real kernel, against nft itself: two throwaway namespaces get the
 * same full sync from nft; then every partial sync of proxy-shapes.ts goes through `nft -f`
 * in one and through ProxySyncer (whose first choice is the netlink batch) in the other, and
 * `nft -j list table` must give the same fingerprint (what weftctl and the drift check read)
 * after each step. A batch the kernel refuses changes nothing and throws.
 */
import test from 'ava';
import { parseCIDR } from '../../src/ip/ipv4.ts';
import { ExecError, nftApply, readProxyNames, readProxyTable, tableFingerprint } from '../../src/proxy/nft.ts';
import { NfnlExecutor } from '../../src/proxy/nfnl.ts';
import { buildRuleset, fullScript, partialScript, tableNames, type RulesetOptions, type TableNames } from '../../src/proxy/ruleset.ts';
import { ProxySyncer } from '../../src/proxy/sync.ts';
import { shapeSteps } from '../helpers/proxy-shapes.ts';
import { Scope } from '../helpers/netns.ts';

async function listing(netns: string): Promise<unknown> {
  const json = await readProxyTable({ netns });
  if (json === undefined) throw new Error(`no table in ${netns}`);
  return JSON.parse(tableFingerprint(json));
}

for (const [label, ruleset] of [
  ['cluster CIDR /15', { clusterCIDR: parseCIDR('198.18.0.0/15') }],
  ['cluster CIDR /16', { clusterCIDR: parseCIDR('198.18.0.0/16') }],
  ['no cluster CIDR', {}],
] as Array<[string, RulesetOptions]>) {
  test(`every partial sync through netlink leaves the table nft would (${label})`, async (t) => {
    const scope = new Scope();
    t.teardown(() => scope.cleanup());
    const ref = `/run/netns/${scope.netns('nft')}`;
    const ours = `/run/netns/${scope.netns('nfnl')}`;
    const steps = shapeSteps();
    const syncer = new ProxySyncer({ netns: ours, ruleset, readBack: 'never', shell: false });
    scope.defer(() => syncer.close());

    let prev = buildRuleset(steps[0]!.state, ruleset);
    await nftApply(fullScript(prev), { netns: ref });
    t.is((await syncer.sync(steps[0]!.state)).mode, 'full');
    t.deepEqual(await listing(ours), await listing(ref), 'after the full sync');
    for (const step of steps.slice(1)) {
      const next = buildRuleset(step.state, ruleset);
      await nftApply(partialScript(prev, next), { netns: ref });
      const r = await syncer.sync(step.state);
      t.is(r.mode, 'partial', step.what);
      t.is(r.via, 'nfnl', `${step.what}: applied as a netlink batch`);
      t.deepEqual(await listing(ours), await listing(ref), step.what);
      prev = next;
    }
  });
}

test('a batch the kernel refuses changes nothing, names the line and errno; the next one works', async (t) => {
  const scope = new Scope();
  t.teardown(() => scope.cleanup());
  const ns = `/run/netns/${scope.netns('nfnl')}`;
  const steps = shapeSteps();
  const rs = buildRuleset(steps[0]!.state, {});
  await nftApply(fullScript(rs), { netns: ns });
  const before = await listing(ns);
  const nl = new NfnlExecutor({ netns: ns });
  scope.defer(() => nl.close());

  const chain = 'svc-AAAAAAAA-shapes/new/tcp/80';
  const missing = 'svc-BBBBBBBB-shapes/missing/tcp/80';
  const bad = [
    `add chain ip weft-proxy ${chain}`,
    `add rule ip weft-proxy ${chain} jump mark-for-masquerade`,
    `add rule ip weft-proxy ${missing} drop`,
    `add element ip weft-proxy cluster-ips { 198.19.9.9 }`,
    '',
  ].join('\n');
  const err = await t.throwsAsync(nl.apply(bad), { instanceOf: ExecError });
  t.regex(err?.message ?? '', /line 3 .*svc-BBBBBBBB.*: ENOENT/);
  t.deepEqual(await listing(ns), before, 'nothing of the batch stayed');

  // a chain still referenced: refused by the kernel (EBUSY), the flush before it undone too
  const used = [...rs.chains.keys()].find((c) => c.startsWith('ep-'))!;
  const busy = await t.throwsAsync(nl.apply(`flush chain ip weft-proxy ${used}\ndelete chain ip weft-proxy ${used}\n`), { instanceOf: ExecError });
  t.regex(busy?.message ?? '', /line 2 .*: EBUSY/);
  t.deepEqual(await listing(ns), before);

  const r = await nl.apply(`add chain ip weft-proxy ${chain}\nadd rule ip weft-proxy ${chain} goto reject-chain\n`);
  t.deepEqual(r, { applied: true, messages: 2 });
  const after = JSON.stringify(await listing(ns));
  t.true(after.includes(chain) && after.includes('reject-chain'));

  // an unknown shape sends nothing
  t.deepEqual(await nl.apply(`add rule ip weft-proxy ${chain} counter\n`), { applied: false, reason: `rule shape in "add rule ip weft-proxy ${chain} counter"` });
  t.is(JSON.stringify(await listing(ns)), after);
});

test('a syncer falls back to nft for a script it cannot translate, whole', async (t) => {
  const scope = new Scope();
  t.teardown(() => scope.cleanup());
  const ns = `/run/netns/${scope.netns('nfnl')}`;
  // a /0 cluster CIDR: its masquerade rule is no shape the executor knows
  const ruleset = { clusterCIDR: parseCIDR('0.0.0.0/0') };
  const steps = shapeSteps();
  const syncer = new ProxySyncer({ netns: ns, ruleset, readBack: 'never' });
  scope.defer(() => syncer.close());
  await syncer.sync(steps[0]!.state);
  const r = await syncer.sync(steps[1]!.state);
  t.is(r.mode, 'partial');
  t.is(r.via, 'nft-i');
  const json = await readProxyTable({ netns: ns });
  t.truthy(json?.includes('198.18.1.20'));
});

test('element lists too long for one message are split as nft splits them, same table', async (t) => {
  const scope = new Scope();
  t.teardown(() => scope.cleanup());
  const ref = `/run/netns/${scope.netns('nft')}`;
  const ours = `/run/netns/${scope.netns('nfnl')}`;
  const base = fullScript(buildRuleset(shapeSteps()[0]!.state, {}));
  for (const ns of [ref, ours]) await nftApply(base, { netns: ns });
  const long = `ep-AAAAAAAA-${'x'.repeat(240)}`;
  const svc = 'svc-AAAAAAAA-shapes/long/tcp/80';
  const items = Array.from({ length: 600 }, (_, i) => `198.19.${100 + Math.floor(i / 250)}.${1 + (i % 250)} . tcp . 80 : goto ${long}`);
  const arms = Array.from({ length: 600 }, (_, i) => `${i} : goto ${long}`);
  const script = [
    `add chain ip weft-proxy ${long}`,
    `add chain ip weft-proxy ${svc}`,
    `add rule ip weft-proxy ${svc} numgen random mod 600 vmap { ${arms.join(', ')} }`,
    `add element ip weft-proxy service-ips { ${items.join(', ')} }`,
    '',
  ].join('\n');
  await nftApply(script, { netns: ref });
  const nl = new NfnlExecutor({ netns: ours });
  scope.defer(() => nl.close());
  const r = await nl.apply(script);
  t.true(r.applied && r.messages > 6, 'more than one message per list');
  t.deepEqual(await listing(ours), await listing(ref));
});

test("the table's chain, set and map names over netlink equal nft's listings (other tables' left out)", async (t) => {
  const scope = new Scope();
  t.teardown(() => scope.cleanup());
  const ns = `/run/netns/${scope.netns('nfnl')}`;
  const x = new NfnlExecutor({ netns: ns });
  scope.defer(() => x.close());
  const empty = await x.names();
  t.deepEqual([empty.chains.size, empty.sets.size, empty.maps.size], [0, 0, 0], 'no table: no names');
  // every shape: affinity sets (dynamic), the frame's set and maps, anonymous vmaps (left out)
  for (const step of shapeSteps()) await nftApply(fullScript(buildRuleset(step.state, { nodePortAddresses: ['198.51.100.1'] })), { netns: ns });
  // another table of the family with the same names: not ours
  await nftApply('add table ip other\nadd chain ip other services\nadd set ip other cluster-ips { type ipv4_addr; }\nadd map ip other only-there { type ipv4_addr : verdict; }\n', { netns: ns });
  const got = await x.names();
  const want = tableNames(await readProxyNames({ netns: ns }))!;
  const sorted = (n: TableNames) => [[...n.chains].sort(), [...n.sets].sort(), [...n.maps].sort()];
  t.deepEqual(sorted(got), sorted(want));
  t.true(got.sets.has('nodeport-ips') && got.maps.has('service-ips') && [...got.sets].some((s) => s.startsWith('aff-')), JSON.stringify(sorted(got)).slice(0, 300));
  t.false(got.maps.has('only-there'));
});

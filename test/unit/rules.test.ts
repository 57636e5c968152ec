import test from 'ava';
import { parseCIDR } from '../../src/ip/ipv4.ts';
import { rulesFingerprint, rulesScript } from '../../src/rules/nft.ts';

const spec = { network: parseCIDR('10.244.0.0/16'), subnet: parseCIDR('10.244.3.0/24') };

test("rules: one transaction that replaces weft's own table (add, delete, define)", (t) => {
  const lines = rulesScript({ ...spec, masquerade: true }).split('\n');
  t.deepEqual(lines.slice(0, 3), ['add table ip weft', 'delete table ip weft', 'table ip weft {']);
  t.false(
    lines.some((l) => /flush ruleset|table ip (nat|filter)\b/.test(l)),
    'never touches other tables',
  );
});

test("rules: masquerade equal to flannel's FLANNEL-POSTRTG, in its order, and forward accept", (t) => {
  const s = rulesScript({ ...spec, masquerade: true });
  t.true(s.includes('type nat hook postrouting priority srcnat; policy accept;'));
  const post = s.slice(s.indexOf('chain postrouting'));
  const rules = post
    .split('\n')
    .slice(2)
    .map((l) => l.trim())
    .filter((l) => l && l !== '}');
  t.deepEqual(rules, [
    'meta mark & 0x4000 == 0x4000 return',
    'ip saddr 10.244.3.0/24 ip daddr 10.244.0.0/16 return',
    'ip saddr 10.244.0.0/16 ip daddr 10.244.3.0/24 return',
    'ip saddr != 10.244.0.0/16 ip daddr 10.244.3.0/24 return',
    'ip saddr 10.244.0.0/16 ip daddr != 224.0.0.0/4 masquerade fully-random',
    'ip saddr != 10.244.0.0/16 ip daddr 10.244.0.0/16 masquerade fully-random',
  ]);
  t.true(s.includes('type filter hook forward priority filter; policy accept;'));
  t.true(s.includes('ip saddr 10.244.0.0/16 accept'));
  t.true(s.includes('ip daddr 10.244.0.0/16 accept'));
});

test('rules: without masquerade the forward chain is still there, and no nat', (t) => {
  const s = rulesScript({ ...spec, masquerade: false });
  t.false(s.includes('postrouting'));
  t.false(s.includes('masquerade'));
  t.true(s.includes('chain forward'));
  t.true(s.includes('ip saddr 10.244.0.0/16 accept'));
  t.true(s.includes('ip daddr 10.244.0.0/16 accept'));
});

// `nft -j list table ip weft` (nftables 1.0.6), forward chain only.
function nftJson(opts: { handleBase: number; rules: Array<'saddr' | 'daddr'>; policy?: string }): string {
  const rule = (field: string, i: number) => ({
    rule: {
      family: 'ip',
      table: 'weft',
      chain: 'forward',
      handle: opts.handleBase + 2 + i,
      expr: [{ match: { op: '==', left: { payload: { protocol: 'ip', field } }, right: { prefix: { addr: '198.18.0.0', len: 16 } } } }, { accept: null }],
    },
  });
  return JSON.stringify({
    nftables: [
      { metainfo: { version: '1.0.6', release_name: 'Lester Gooch #5', json_schema_version: 1 } },
      { table: { family: 'ip', name: 'weft', handle: opts.handleBase } },
      { chain: { family: 'ip', table: 'weft', name: 'forward', handle: opts.handleBase + 1, type: 'filter', hook: 'forward', prio: 0, policy: opts.policy ?? 'accept' } },
      ...opts.rules.map(rule),
    ],
  });
}

test('rules fingerprint: the same table replaced again (new handles) matches; a deleted, edited or reordered rule or another policy does not', (t) => {
  const ours = rulesFingerprint(nftJson({ handleBase: 2, rules: ['saddr', 'daddr'] }));
  t.is(rulesFingerprint(nftJson({ handleBase: 40, rules: ['saddr', 'daddr'] })), ours);
  t.not(rulesFingerprint(nftJson({ handleBase: 2, rules: ['saddr'] })), ours, 'one rule deleted');
  t.not(rulesFingerprint(nftJson({ handleBase: 2, rules: ['daddr', 'saddr'] })), ours, 'rules reordered');
  t.not(rulesFingerprint(nftJson({ handleBase: 2, rules: ['saddr', 'saddr'] })), ours, 'a rule edited');
  t.not(rulesFingerprint(nftJson({ handleBase: 2, rules: ['saddr', 'daddr'], policy: 'drop' })), ours, 'chain policy changed');
  t.false(ours.includes('handle') || ours.includes('metainfo'));
  t.throws(() => rulesFingerprint('not json'));
});

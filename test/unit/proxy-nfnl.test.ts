/**
 * The netlink executor's translation (src/proxy/nfnl.ts) against nft's own bytes: for each
 * script in proxy-nfnl.fixture.json (regenerate with test/helpers/nfnl-capture.ts), the batch
 * we encode must decode to the same messages, attributes and values as the one nft 1.0.6 sent,
 * except for sequence numbers, the ACK flag (we ask for one per message) and set IDs (nft
 * also sends IDs of sets it has cached, which the kernel ignores when the name is found).
 */
import test from 'ava';
import { readFileSync } from 'node:fs';
import { encodeBatch, translateScript } from '../../src/proxy/nfnl.ts';

const fixture = JSON.parse(readFileSync(new URL('./proxy-nfnl.fixture.json', import.meta.url), 'utf8')) as { cases: Array<{ what: string; script: string; nft: string }> };

type Node = { t: number; v: string } | { t: number; n: Node[] };

function attrs(buf: Buffer): Node[] {
  const out: Node[] = [];
  for (let off = 0; off + 4 <= buf.length; ) {
    const len = buf.readUInt16LE(off);
    const type = buf.readUInt16LE(off + 2);
    const p = buf.subarray(off + 4, off + len);
    out.push(type & 0x8000 ? { t: type & 0x7fff, n: attrs(p) } : { t: type, v: p.toString('hex') });
    off += (len + 3) & ~3;
  }
  return out;
}

interface Msg {
  type: number;
  flags: number;
  family: number;
  res: number;
  attrs: Node[];
}

function messages(buf: Buffer): Msg[] {
  const out: Msg[] = [];
  for (let off = 0; off < buf.length; ) {
    const len = buf.readUInt32LE(off);
    out.push({ type: buf.readUInt16LE(off + 4), flags: buf.readUInt16LE(off + 6) & ~0x4, family: buf[off + 16]!, res: buf.readUInt16BE(off + 18), attrs: attrs(buf.subarray(off + 20, off + len)) });
    off += (len + 3) & ~3;
  }
  return out;
}

const hexName = (n: Node | undefined) => (n && 'v' in n ? Buffer.from(n.v, 'hex').toString('utf8').replace(/\0+$/, '') : undefined);

/** Without set IDs: NFTA_SET_ID, NFTA_SET_ELEM_LIST_SET_ID, and those of lookup and dynset. */
function withoutSetIds(m: Msg): Msg {
  const sub = m.type & 0xff;
  const strip = (nodes: Node[], drop: number | undefined): Node[] => nodes.filter((n) => n.t !== drop);
  let a = m.attrs;
  if (sub === 9) a = strip(a, 10);
  if (sub === 12) a = strip(a, 4);
  const exprs = (nodes: Node[]): Node[] =>
    nodes.map((n) => {
      if (!('n' in n)) return n;
      if (n.t === 4 && sub === 6) return { t: 4, n: n.n.map(expr) };
      return n;
    });
  const expr = (e: Node): Node => {
    if (!('n' in e)) return e;
    const name = hexName(e.n.find((x) => x.t === 1));
    const drop = name === 'lookup' ? 4 : name === 'dynset' ? 2 : undefined;
    return { t: e.t, n: e.n.map((x) => (x.t === 2 && 'n' in x ? { t: 2, n: strip(x.n, drop) } : x)) };
  };
  return { ...m, attrs: exprs(a) };
}

for (const c of fixture.cases) {
  test(`nft's batch: ${c.what}`, (t) => {
    const tr = translateScript(c.script);
    if (!tr.ok) return t.fail(`not translated: ${tr.reason}: ${tr.line}`);
    const ours = messages(encodeBatch(tr.messages, 1000)).map(withoutSetIds);
    const theirs = messages(Buffer.from(c.nft, 'base64')).map(withoutSetIds);
    t.is(ours.length, theirs.length);
    for (let i = 0; i < Math.max(ours.length, theirs.length); i++) t.deepEqual(ours[i], theirs[i], `message ${i}`);
  });
}

test('sequence numbers run from BATCH_BEGIN; ACK asked on each message only', (t) => {
  const tr = translateScript('flush chain ip weft-proxy svc-AAAAAAAA-a/b/tcp/80\ndelete chain ip weft-proxy svc-AAAAAAAA-a/b/tcp/80\n');
  if (!tr.ok) return t.fail();
  const b = encodeBatch(tr.messages, 7);
  const seqs: number[] = [];
  const flags: number[] = [];
  for (let off = 0; off < b.length; off += b.readUInt32LE(off)) {
    seqs.push(b.readUInt32LE(off + 8));
    flags.push(b.readUInt16LE(off + 6));
  }
  t.deepEqual(seqs, [7, 8, 9, 10]);
  t.deepEqual(flags, [1, 5, 5, 1]);
});

test('anonymous vmap: its set, elements and lookup share one batch ID, new for each rule', (t) => {
  const rule = 'add rule ip weft-proxy svc-AAAAAAAA-a/b/tcp/80 numgen random mod 2 vmap { 0 : goto ep-AAAAAAAA-a/b/tcp/80__198.18.0.1/80, 1 : goto ep-BBBBBBBB-a/b/tcp/80__198.18.0.2/80 }';
  const tr = translateScript(`${rule}\n${rule}\n`);
  if (!tr.ok) return t.fail();
  const ids = messages(encodeBatch(tr.messages, 1)).flatMap((m) => {
    if ((m.type & 0xff) === 9) return [`set:${(m.attrs.find((a) => a.t === 10) as { v: string }).v}`];
    if ((m.type & 0xff) === 12) return [`elem:${(m.attrs.find((a) => a.t === 4) as { v: string }).v}`];
    return [];
  });
  t.deepEqual(ids, ['set:00000001', 'elem:00000001', 'set:00000002', 'elem:00000002']);
  t.deepEqual(
    tr.messages.map((m) => m.line),
    [0, 0, 0, 1, 1, 1],
  );
});

test('an affinity set added in the batch is referenced by its ID too', (t) => {
  const set = 'aff-AAAAAAAA-a/b/tcp/80__198.18.0.1/80';
  const tr = translateScript(
    [
      `add set ip weft-proxy ${set} { type ipv4_addr; flags dynamic,timeout; timeout 60s; }`,
      `add rule ip weft-proxy ep-AAAAAAAA-a/b/tcp/80__198.18.0.1/80 update @${set} { ip saddr }`,
      `add rule ip weft-proxy svc-AAAAAAAA-a/b/tcp/80 ip saddr @${set} goto ep-AAAAAAAA-a/b/tcp/80__198.18.0.1/80`,
    ].join('\n'),
  );
  t.true(tr.ok);
  if (!tr.ok) return;
  const rules = messages(encodeBatch(tr.messages, 1)).filter((m) => (m.type & 0xff) === 6);
  const idOf = (m: Msg, name: string, attr: number) => {
    const ex = (m.attrs.find((a) => a.t === 4) as { n: Node[] }).n.find((e) => 'n' in e && hexName(e.n.find((x) => x.t === 1)) === name) as { n: Node[] };
    return ((ex.n.find((x) => x.t === 2) as { n: Node[] }).n.find((x) => x.t === attr) as { v: string } | undefined)?.v;
  };
  t.is(idOf(rules[0]!, 'dynset', 2), '00000001');
  t.is(idOf(rules[1]!, 'lookup', 4), '00000001');
  // a set the batch does not declare goes by name alone
  const other = translateScript(`add rule ip weft-proxy svc-AAAAAAAA-a/b/tcp/80 ip saddr @${set} goto ep-AAAAAAAA-a/b/tcp/80__198.18.0.1/80\n`);
  if (!other.ok) return t.fail();
  t.is(idOf(messages(encodeBatch(other.messages, 1))[1]!, 'lookup', 4), undefined);
});

test('anything not of a known shape is refused whole, naming the line', (t) => {
  const ok = 'add chain ip weft-proxy svc-AAAAAAAA-a/b/tcp/80';
  for (const [line, why] of [
    ['add rule ip weft-proxy svc-AAAAAAAA-a/b/tcp/80 counter', 'rule shape'],
    ['add rule ip weft-proxy svc-AAAAAAAA-a/b/tcp/80 ip saddr 198.18.0.01 jump mark-for-masquerade', 'address'],
    ['add rule ip weft-proxy svc-AAAAAAAA-a/b/tcp/80 jump accept', 'name'],
    ['add rule ip weft-proxy svc-AAAAAAAA-a/b/tcp/80 numgen random mod 2 vmap { 0 : goto reject-chain, 2 : goto reject-chain }', 'vmap keys'],
    ['add rule ip weft-proxy svc-AAAAAAAA-a/b/tcp/80 numgen random mod 2 vmap { 0 : goto reject-chain, 0 : goto reject-chain }', 'vmap keys'],
    ['add rule ip weft-proxy svc-AAAAAAAA-a/b/tcp/80 ip daddr 198.19.0.1 tcp dport 80 ip saddr != 198.18.0.1/16 jump mark-for-masquerade', 'prefix'],
    ['add rule ip weft-proxy svc-AAAAAAAA-a/b/tcp/80 ip daddr 198.19.0.1 tcp dport 0 ip saddr != 198.18.0.0/16 jump mark-for-masquerade', 'port'],
    ['add chain ip weft-proxy svc-AAAAAAAA-a/b/tcp/80 { type nat hook output priority 0; }', 'command'],
    ['add chain ip weft-proxy services', 'name'],
    ['add element ip weft-proxy nodeport-ips { 198.18.0.1 }', 'set'],
    ['add element ip weft-proxy service-ips { 198.19.0.1 . tcp . 80 }', 'element'],
    ['add element ip weft-proxy service-nodeports { icmp . 80 : goto reject-chain }', 'protocol'],
    ['add set ip weft-proxy aff-AAAAAAAA-a/b/tcp/80__198.18.0.1/80 { type ipv4_addr; flags dynamic,timeout; timeout 0s; }', 'set declaration'],
    ['add table ip weft-proxy', 'command'],
    ['add rule ip other svc-AAAAAAAA-a/b/tcp/80 drop', 'command'],
    ['delete map ip weft-proxy service-ips', 'command'],
  ] as const) {
    const tr = translateScript(`${ok}\n${line}\n${ok}\n`);
    t.false(tr.ok, line);
    if (!tr.ok) {
      t.is(tr.line, line);
      t.true(tr.reason.startsWith(why), `${line}: ${tr.reason}`);
    }
  }
  t.deepEqual(translateScript(''), { ok: true, messages: [], lines: [] });
});

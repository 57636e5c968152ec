import test from 'ava';
import { parseCIDR } from '../../src/ip/ipv4.ts';
import { selectEndpoints, type ProxyState } from '../../src/proxy/endpoints.ts';
import { buildRuleset, canPartial, diffRulesets, fullScript, refreshScript, rulesetNames, tableNames, nftName, partialScript, shortHash } from '../../src/proxy/ruleset.ts';
import { validateEndpointSlice, validateService, type EndpointSlice, type Service } from '../../src/proxy/types.ts';

function service(name: string, spec: Record<string, unknown>): Service {
  const r = validateService({ metadata: { namespace: 'ns1', name }, spec: { ports: [{ name: 'http', port: 80 }], ...spec } });
  if (!r.ok) throw new Error(r.reason);
  return r.value;
}
function slice(svc: string, ipsAndNodes: Array<[string, string?]>, ports: unknown[] = [{ name: 'http', port: 8080, protocol: 'TCP' }]): EndpointSlice {
  const r = validateEndpointSlice({
    metadata: { namespace: 'ns1', name: `${svc}-1`, labels: { 'kubernetes.io/service-name': svc } },
    addressType: 'IPv4',
    endpoints: ipsAndNodes.map(([ip, node]) => ({ addresses: [ip], nodeName: node ?? 'node-a' })),
    ports,
  });
  if (!r.ok) throw new Error(r.reason);
  return r.value;
}

/**
 * A tiny model of the kernel's side of the commands the builder emits, strict the way nft is:
 * deleting or flushing what is not there, referencing an undeclared chain or set, deleting a
 * chain or set still referenced, or adding a map key twice fails the whole transaction.
 */
class Kernel {
  chains = new Map<string, string[]>();
  sets = new Map<string, string>();
  elements = new Map<string, Map<string, string>>();
  table = false;

  apply(script: string): void {
    const snap = JSON.stringify(this.dump());
    try {
      for (const line of script.split('\n').filter(Boolean)) this.#one(line);
    } catch (err) {
      Object.assign(this, Kernel.load(JSON.parse(snap)));
      throw err;
    }
  }

  static load(d: ReturnType<Kernel['dump']>): Partial<Kernel> {
    return { table: d.table, chains: new Map(d.chains), sets: new Map(d.sets), elements: new Map(d.elements.map(([k, v]) => [k, new Map(v)])) };
  }

  dump() {
    const sort = <T>(m: Map<string, T>) => [...m.entries()].sort(([a], [b]) => (a < b ? -1 : 1));
    return {
      table: this.table,
      chains: sort(this.chains),
      sets: sort(this.sets),
      elements: sort(this.elements)
        .map(([k, v]) => [k, sort(v)] as [string, Array<[string, string]>])
        .filter(([, v]) => v.length),
    };
  }

  #refs(text: string): { chains: string[]; sets: string[] } {
    return { chains: [...text.matchAll(/(?:goto|jump) (\S+?)(?=[ ,}]|$)/g)].map((m) => m[1]!), sets: [...text.matchAll(/@(\S+)/g)].map((m) => m[1]!) };
  }

  #checkRefs(text: string): void {
    const r = this.#refs(text);
    for (const c of r.chains) if (!this.chains.has(c)) throw new Error(`no chain ${c}`);
    for (const s of r.sets) if (!this.sets.has(s) && !this.elements.has(s)) throw new Error(`no set ${s}`);
  }

  #referenced(name: string): boolean {
    for (const rules of this.chains.values())
      for (const r of rules) {
        const refs = this.#refs(r);
        if (refs.chains.includes(name) || refs.sets.includes(name)) return true;
      }
    for (const m of this.elements.values()) for (const v of m.values()) if (v === `goto ${name}`) return true;
    return false;
  }

  #one(line: string): void {
    const T = 'ip weft-proxy';
    let m: RegExpExecArray | null;
    if ((m = /^add table ip weft-proxy( \{.*\})?$/.exec(line))) return void (this.table = true);
    if (line === `delete table ${T}`) {
      if (!this.table) throw new Error('no table');
      this.table = false;
      this.chains.clear();
      this.sets.clear();
      this.elements.clear();
      return;
    }
    if (!this.table) throw new Error(`no table for: ${line}`);
    if ((m = /^add (set|map) ip weft-proxy (\S+) (\{.*\})$/.exec(line))) {
      const [, kind, name, decl] = m;
      if (kind === 'set' && /dynamic/.test(decl!)) {
        if (this.sets.has(name!) && this.sets.get(name!) !== decl) throw new Error(`set ${name} exists differently`);
        this.sets.set(name!, decl!);
      } else if (!this.elements.has(name!)) this.elements.set(name!, new Map());
      return;
    }
    if ((m = /^add chain ip weft-proxy (\S+)( \{.*\})?$/.exec(line))) {
      if (!this.chains.has(m[1]!)) this.chains.set(m[1]!, []);
      return;
    }
    if ((m = /^flush chain ip weft-proxy (\S+)$/.exec(line))) {
      if (!this.chains.has(m[1]!)) throw new Error(`flush: no chain ${m[1]}`);
      this.chains.set(m[1]!, []);
      return;
    }
    if ((m = /^flush (set|map) ip weft-proxy (\S+)$/.exec(line))) {
      const els = this.elements.get(m[2]!);
      if (!els) throw new Error(`flush: no ${m[1]} ${m[2]}`);
      els.clear();
      return;
    }
    if ((m = /^delete map ip weft-proxy (\S+)$/.exec(line))) {
      if (!this.elements.has(m[1]!)) throw new Error(`delete: no map ${m[1]}`);
      if (this.#referenced(m[1]!)) throw new Error(`delete: ${m[1]} still referenced`);
      this.elements.delete(m[1]!);
      return;
    }
    if ((m = /^delete (chain|set) ip weft-proxy (\S+)$/.exec(line))) {
      const store = m[1] === 'chain' ? this.chains : this.sets;
      if (!store.has(m[2]!)) throw new Error(`delete: no ${m[1]} ${m[2]}`);
      if (this.#referenced(m[2]!)) throw new Error(`delete: ${m[2]} still referenced`);
      if (m[1] === 'chain' && this.chains.get(m[2]!)!.length) throw new Error(`delete: chain ${m[2]} not empty`);
      store.delete(m[2]!);
      return;
    }
    if ((m = /^add rule ip weft-proxy (\S+) (.*)$/.exec(line))) {
      const rules = this.chains.get(m[1]!);
      if (!rules) throw new Error(`rule: no chain ${m[1]}`);
      this.#checkRefs(m[2]!);
      rules.push(m[2]!);
      return;
    }
    if ((m = /^(add|delete) element ip weft-proxy (\S+) \{ (.*) \}$/.exec(line))) {
      const map = this.elements.get(m[2]!);
      if (!map) throw new Error(`element: no map ${m[2]}`);
      for (const item of m[3]!.split(', ')) {
        const [k, v = ''] = item.split(' : ');
        if (m[1] === 'add') {
          if (map.has(k!)) throw new Error(`element ${k} exists in ${m[2]}`);
          this.#checkRefs(v);
          map.set(k!, v);
        } else {
          if (!map.has(k!)) throw new Error(`element ${k} not in ${m[2]}`);
          map.delete(k!);
        }
      }
      return;
    }
    throw new Error(`unknown command: ${line}`);
  }
}

const cidr = parseCIDR('198.18.0.0/15');

function basic(): ProxyState {
  return selectEndpoints(
    [
      service('web', { clusterIP: '198.19.0.10', type: 'NodePort', ports: [{ name: 'http', port: 80, nodePort: 30080 }] }),
      service('dns', { clusterIP: '198.19.0.11', sessionAffinity: 'ClientIP', sessionAffinityConfig: { clientIP: { timeoutSeconds: 60 } }, ports: [{ name: 'dns', port: 53, protocol: 'UDP' }] }),
      service('empty', { clusterIP: '198.19.0.12', type: 'NodePort', ports: [{ name: 'http', port: 80, nodePort: 30081 }] }),
      service('loc', { clusterIP: '198.19.0.13', type: 'NodePort', externalTrafficPolicy: 'Local', ports: [{ name: 'http', port: 80, nodePort: 30082 }] }),
    ],
    [
      slice('web', [['198.18.0.11'], ['198.18.0.12'], ['198.18.1.13', 'node-b']]),
      slice('dns', [['198.18.0.11'], ['198.18.0.12']], [{ name: 'dns', port: 5353, protocol: 'UDP' }]),
      slice('loc', [['198.18.1.14', 'node-b']]),
    ],
    { nodeName: 'node-a' },
  );
}

const lines = (s: string) => s.split('\n').filter(Boolean);

test('ruleset: full sync replaces the table in one transaction and is consistent', (t) => {
  const rs = buildRuleset(basic(), { clusterCIDR: cidr });
  const s = fullScript(rs);
  t.deepEqual(lines(s).slice(0, 3), ['add table ip weft-proxy', 'delete table ip weft-proxy', 'add table ip weft-proxy { comment "weft service proxy"; }']);
  t.false(/flush ruleset|table ip (nat|filter)\b|table inet/.test(s), 'never touches other tables');
  const k = new Kernel();
  k.apply(s);
  k.apply(s);
  t.deepEqual(new Kernel().dump().chains, [], 'sanity: empty kernel');
  t.is(fullScript(buildRuleset(basic(), { clusterCIDR: cidr })), s, 'deterministic');
});

test('ruleset: base chains hook where kube-proxy hooks; reject only in filter chains', (t) => {
  const s = fullScript(buildRuleset(basic()));
  for (const hook of [
    'filter-input { type filter hook input priority -110;',
    'filter-forward { type filter hook forward priority -110;',
    'filter-output { type filter hook output priority -110;',
    'filter-output-post-dnat { type filter hook output priority -90;',
    'nat-prerouting { type nat hook prerouting priority dstnat;',
    'nat-output { type nat hook output priority -100;',
    'nat-postrouting { type nat hook postrouting priority srcnat;',
  ])
    t.true(s.includes(`add chain ip weft-proxy ${hook}`), hook);
  t.true(s.includes('add rule ip weft-proxy services ip daddr . meta l4proto . th dport vmap @service-ips'));
  t.true(s.includes('add rule ip weft-proxy services fib daddr type local ip daddr != 127.0.0.0/8 meta l4proto . th dport vmap @service-nodeports'));
  t.true(s.includes('add rule ip weft-proxy reject-chain meta l4proto tcp reject with tcp reset'));
  t.true(s.includes('add rule ip weft-proxy masquerading meta mark & 0x4000 == 0 return'));
  t.true(s.includes('add rule ip weft-proxy mark-for-masquerade meta mark set meta mark or 0x4000'));
  // only reject-chain rejects, and only filter-hooked chains reach it
  const rejecting = lines(s)
    .filter((l) => / reject( |$)/.test(l))
    .map((l) => l.split(' ')[4]);
  t.deepEqual([...new Set(rejecting)], ['reject-chain']);
  for (const l of lines(s).filter((x) => x.includes('reject-chain') && x.startsWith('add rule'))) t.regex(l, /cluster-ips-check|reject-chain /);
});

test('ruleset: a service port with endpoints -> map element -> numgen over endpoint chains that hairpin-mark then DNAT', (t) => {
  const rs = buildRuleset(basic(), { clusterCIDR: cidr });
  const web = rs.elements.get('service-ips')!.get('198.19.0.10 . tcp . 80')!;
  t.regex(web, /^goto svc-[A-Z2-7]{8}-ns1\/web\/tcp\/http$/);
  const svc = rs.chains.get(web.slice(5))!;
  t.is(svc[0], 'ip daddr 198.19.0.10 tcp dport 80 ip saddr != 198.18.0.0/15 jump mark-for-masquerade');
  const m = /^numgen random mod 3 vmap \{ 0 : goto (\S+), 1 : goto (\S+), 2 : goto (\S+) \}$/.exec(svc[1]!);
  t.truthy(m, svc[1]);
  const eps = m!.slice(1).map((c) => rs.chains.get(c)!);
  t.deepEqual(
    eps.map((r) => r[r.length - 1]),
    ['meta l4proto tcp dnat to 198.18.0.11:8080', 'meta l4proto tcp dnat to 198.18.0.12:8080', 'meta l4proto tcp dnat to 198.18.1.13:8080'],
  );
  t.deepEqual(
    eps.map((r) => r[0]),
    ['ip saddr 198.18.0.11 jump mark-for-masquerade', 'ip saddr 198.18.0.12 jump mark-for-masquerade', 'ip saddr 198.18.1.13 jump mark-for-masquerade'],
  );
  t.true(rs.elements.get('cluster-ips')!.has('198.19.0.10'));
  t.false(rs.elements.get('no-endpoint-services')!.has('198.19.0.10 . tcp . 80'));
});

test('ruleset: no usable endpoint -> reject by ClusterIP and NodePort, no chains', (t) => {
  const rs = buildRuleset(basic());
  t.is(rs.elements.get('no-endpoint-services')!.get('198.19.0.12 . tcp . 80'), 'goto reject-chain');
  t.is(rs.elements.get('no-endpoint-nodeports')!.get('tcp . 30081'), 'goto reject-chain');
  t.false(rs.elements.get('service-ips')!.has('198.19.0.12 . tcp . 80'));
  t.false([...rs.chains.keys()].some((c) => c.includes('/empty/')));
  t.true(rs.elements.get('cluster-ips')!.has('198.19.0.12'), 'its other ports are still rejected as unknown');
});

test('ruleset: NodePort chains: Cluster policy masquerades; Local keeps source, node traffic uses all endpoints', (t) => {
  const rs = buildRuleset(basic());
  const webExt = rs.elements.get('service-nodeports')!.get('tcp . 30080')!.slice(5);
  t.regex(webExt, /^ext-/);
  t.deepEqual(rs.chains.get(webExt), ['jump mark-for-masquerade', `goto ${rs.elements.get('service-ips')!.get('198.19.0.10 . tcp . 80')!.slice(5)}`]);
  const locExt = rs.elements.get('service-nodeports')!.get('tcp . 30082')!.slice(5);
  const r = rs.chains.get(locExt)!;
  t.deepEqual(r.slice(0, 1), ['fib saddr type local jump mark-for-masquerade']);
  t.regex(r[1]!, /^fib saddr type local goto svc-/);
  t.is(r[2], 'drop', 'no endpoint on this node: external traffic dropped');
  const withAddrs = fullScript(buildRuleset(basic(), { nodePortAddresses: ['203.0.113.5', '203.0.113.4', '203.0.113.5'] }));
  t.true(withAddrs.includes('add element ip weft-proxy nodeport-ips { 203.0.113.4, 203.0.113.5 }'));
  t.true(withAddrs.includes('add rule ip weft-proxy services ip daddr @nodeport-ips meta l4proto . th dport vmap @service-nodeports'));
});

test('ruleset: Local internal policy picks among local endpoints; none -> reject', (t) => {
  const st = selectEndpoints(
    [service('a', { clusterIP: '198.19.0.20', internalTrafficPolicy: 'Local' }), service('b', { clusterIP: '198.19.0.21', internalTrafficPolicy: 'Local' })],
    [slice('a', [['198.18.0.11'], ['198.18.1.11', 'node-b']]), slice('b', [['198.18.1.12', 'node-b']])],
    { nodeName: 'node-a' },
  );
  const rs = buildRuleset(st, { clusterCIDR: cidr });
  const a = rs.elements.get('service-ips')!.get('198.19.0.20 . tcp . 80')!;
  t.regex(a, /^goto local-/);
  t.regex(rs.chains.get(a.slice(5))![0]!, /^numgen random mod 1 vmap \{ 0 : goto ep-\S+__198\.18\.0\.11\/8080 \}$/);
  t.is(rs.elements.get('no-endpoint-services')!.get('198.19.0.21 . tcp . 80'), 'goto reject-chain');
});

test('ruleset: ClientIP affinity: per-endpoint timeout sets, looked up before numgen, refreshed before DNAT', (t) => {
  const rs = buildRuleset(basic());
  const svc = rs.chains.get(rs.elements.get('service-ips')!.get('198.19.0.11 . udp . 53')!.slice(5))!;
  t.is(svc.length, 4);
  t.regex(svc[0]!, /^ip saddr @aff-\S+__198\.18\.0\.11\/5353 goto ep-\S+__198\.18\.0\.11\/5353$/);
  t.regex(svc[2]!, /^numgen random mod 2 /);
  // after the vmap, the first endpoint: what a packet gets if it walks the rules a sync is
  // replacing and its lookup finds the old map's arms already gone
  t.is(svc[3], `goto ${/goto (\S+)$/.exec(svc[0]!)![1]}`);
  const sets = [...rs.sets.entries()];
  t.is(sets.length, 2);
  for (const [, decl] of sets) t.is(decl, '{ type ipv4_addr; flags dynamic,timeout; timeout 60s; }');
  const ep = rs.chains.get(/goto (\S+)$/.exec(svc[0]!)![1]!)!;
  t.deepEqual(ep.slice(1), [`update @${/@(\S+)/.exec(svc[0]!)![1]} { ip saddr }`, 'meta l4proto udp dnat to 198.18.0.11:5353']);
});

test('ruleset: names are stable hashes plus validated parts; anything else is refused', (t) => {
  t.is(shortHash('x'), shortHash('x'));
  t.not(shortHash('ns/a'), shortHash('ns/b'));
  t.regex(shortHash('x'), /^[A-Z2-7]{8}$/);
  // SHA-256("x") starts 2d711642b7: 00101 10101 11000 10001 01100 10000 10101 10111 in base32
  t.is(shortHash('x'), 'FVYRMQVX');
  t.is(nftName('svc-ABCDEFGH-ns/name/tcp/http'), 'svc-ABCDEFGH-ns/name/tcp/http');
  for (const bad of ['a b', 'a;b', 'a"b', 'a}b', 'a\nb', '-a', 'x'.repeat(256), '']) t.throws(() => nftName(bad));
  // a state forged past validation still cannot inject text
  const st = basic();
  const forged: ProxyState = { ...st, ports: [{ ...st.ports[0]!, name: 'web; flush ruleset' }] };
  t.throws(() => buildRuleset(forged), { message: /unsafe nft name/ });
  const forgedIP: ProxyState = { ...st, ports: [{ ...st.ports[0]!, clusterIP: '1.2.3.4 } ; flush ruleset ; {' }] };
  t.throws(() => buildRuleset(forgedIP));
  const forgedPort: ProxyState = { ...st, ports: [{ ...st.ports[0]!, port: 1e6 }] };
  t.throws(() => buildRuleset(forgedPort));
});

test('ruleset: a partial sync touches only the changed service and leaves nothing of a deleted one', (t) => {
  const prevState = basic();
  const prev = buildRuleset(prevState, { clusterCIDR: cidr });
  const nextState = selectEndpoints(
    [
      service('web', { clusterIP: '198.19.0.10', type: 'NodePort', ports: [{ name: 'http', port: 80, nodePort: 30080 }] }),
      service('empty', { clusterIP: '198.19.0.12', type: 'NodePort', ports: [{ name: 'http', port: 80, nodePort: 30081 }] }),
      service('loc', { clusterIP: '198.19.0.13', type: 'NodePort', externalTrafficPolicy: 'Local', ports: [{ name: 'http', port: 80, nodePort: 30082 }] }),
    ],
    [slice('web', [['198.18.0.11'], ['198.18.1.13', 'node-b']]), slice('loc', [['198.18.1.14', 'node-b']])],
    { nodeName: 'node-a' },
  );
  const next = buildRuleset(nextState, { clusterCIDR: cidr });
  t.true(canPartial(prev, next));
  const script = partialScript(prev, next);
  const touched = new Set(
    lines(script)
      .filter((l) => /chain|rule/.test(l))
      .map((l) => l.split(' ')[4]),
  );
  for (const c of touched) t.regex(c!, /\/(web|dns)\//, `only web and dns chains touched: ${c}`);
  t.true(
    lines(script).some((l) => l.startsWith('flush chain') && /svc-\S+\/web\//.test(l)),
    'web chain rewritten',
  );
  t.true(
    lines(script).some((l) => /^delete chain .*__198\.18\.0\.12\/8080$/.test(l)),
    'removed endpoint chain deleted',
  );
  const k = new Kernel();
  k.apply(fullScript(prev));
  k.apply(script);
  const want = new Kernel();
  want.apply(fullScript(next));
  t.deepEqual(k.dump(), want.dump());
  t.false(
    k.dump().chains.some(([n]) => n.includes('/dns/')),
    'no chain of the deleted service',
  );
  t.false(
    k.dump().sets.some(([n]) => n.includes('/dns/')),
    'no set of the deleted service',
  );
  t.is(partialScript(next, next), '', 'no change, no transaction');
  const d = diffRulesets(prev, next);
  t.deepEqual([d.addedChains.length, d.removedSets.length], [0, 2]);
  t.true(canPartial(prev, buildRuleset(nextState)), 'the cluster CIDR lives in service chains: a partial sync rewrites them');
  t.false(canPartial(prev, buildRuleset(nextState, { clusterCIDR: cidr, nodePortAddresses: ['203.0.113.4'] })), 'a different frame needs a full sync');
});

test('ruleset: random sequences of partial syncs always equal a fresh full sync', (t) => {
  let seed = 12345;
  const rnd = (n: number) => {
    seed = (seed * 1103515245 + 12345) & 0x7fffffff;
    return seed % n;
  };
  const randomState = (): ProxyState => {
    const svcs: Service[] = [];
    const slices: EndpointSlice[] = [];
    for (let i = 0; i < 6; i++) {
      if (rnd(4) === 0) continue;
      const name = `s${i}`;
      const udp = rnd(2) === 0;
      svcs.push(
        service(name, {
          clusterIP: `198.19.0.${10 + i}`,
          type: rnd(2) ? 'NodePort' : 'ClusterIP',
          sessionAffinity: rnd(3) === 0 ? 'ClientIP' : 'None',
          sessionAffinityConfig: { clientIP: { timeoutSeconds: 10 + rnd(2) } },
          internalTrafficPolicy: rnd(4) === 0 ? 'Local' : 'Cluster',
          externalTrafficPolicy: rnd(3) === 0 ? 'Local' : 'Cluster',
          ports: [{ name: 'p', port: 80 + rnd(2), protocol: udp ? 'UDP' : 'TCP', nodePort: 30000 + i }],
        }),
      );
      const eps: Array<[string, string?]> = [];
      for (let e = 0; e < 4; e++) if (rnd(2)) eps.push([`198.18.${rnd(2)}.${11 + e}`, rnd(2) ? 'node-a' : 'node-b']);
      slices.push(slice(name, eps, [{ name: 'p', port: 8080 + rnd(2), protocol: udp ? 'UDP' : 'TCP' }]));
    }
    return selectEndpoints(svcs, slices, { nodeName: 'node-a' });
  };
  const k = new Kernel();
  let prev = buildRuleset(randomState());
  k.apply(fullScript(prev));
  for (let step = 0; step < 150; step++) {
    const next = buildRuleset(randomState());
    t.true(canPartial(prev, next));
    k.apply(partialScript(prev, next));
    const want = new Kernel();
    want.apply(fullScript(next));
    t.deepEqual(k.dump(), want.dump(), `step ${step}`);
    prev = next;
  }
});

test('refreshScript: flush in place, delete only what the ruleset no longer declares; tableNames reads nft -j', (t) => {
  const rs = buildRuleset(basic());
  const json = JSON.stringify({
    nftables: [
      { metainfo: { version: '1.0.6' } },
      { table: { family: 'ip', name: 'weft-proxy' } },
      { chain: { family: 'ip', table: 'weft-proxy', name: 'nat-prerouting', hook: 'prerouting' } },
      { chain: { family: 'ip', table: 'weft-proxy', name: 'svc-OLD-default/gone/tcp/http' } },
      { set: { family: 'ip', table: 'weft-proxy', name: 'cluster-ips' } },
      { set: { family: 'ip', table: 'weft-proxy', name: 'aff-OLD' } },
      { map: { family: 'ip', table: 'weft-proxy', name: 'old-map' } },
    ],
  });
  const names = tableNames(json)!;
  t.deepEqual([...names.chains], ['nat-prerouting', 'svc-OLD-default/gone/tcp/http']);
  t.deepEqual([...names.maps], ['old-map']);
  t.is(tableNames(undefined), undefined);
  // what a full sync reads: the family's chain, set and map listings, other tables' left out
  const doc = (...objs: object[]) => JSON.stringify({ nftables: [{ metainfo: { version: '1.0.6' } }, ...objs] });
  const lists = tableNames([
    doc({ chain: { family: 'ip', table: 'weft-proxy', name: 'services' } }, { chain: { family: 'ip', table: 'weft', name: 'forward' } }),
    doc({ set: { family: 'ip', table: 'other', name: 'cluster-ips' } }, { set: { family: 'ip', table: 'weft-proxy', name: 'aff-X' } }),
    doc({ map: { family: 'ip', table: 'weft-proxy', name: 'service-ips' } }),
  ])!;
  t.deepEqual([[...lists.chains], [...lists.sets], [...lists.maps]], [['services'], ['aff-X'], ['service-ips']]);
  t.deepEqual([...tableNames([doc(), doc(), doc()])!.chains], [], 'no table: nothing to delete');
  const s = refreshScript(rs, names);
  const lines = s.split('\n');
  t.is(lines[0], 'add table ip weft-proxy');
  t.false(s.includes('delete table'), 'the table (and its base chains) is never deleted');
  t.true(lines.includes('flush chain ip weft-proxy nat-prerouting') && lines.includes('flush chain ip weft-proxy svc-OLD-default/gone/tcp/http'), 'every chain the table holds is flushed');
  t.true(lines.includes('delete chain ip weft-proxy svc-OLD-default/gone/tcp/http'));
  t.true(lines.includes('delete set ip weft-proxy aff-OLD'));
  t.true(lines.includes('delete map ip weft-proxy old-map'));
  t.false(
    lines.some((l) => /^delete (chain|set) ip weft-proxy (nat-prerouting|cluster-ips)$/.test(l)),
    'what the ruleset declares stays',
  );
  t.true(lines.includes('flush set ip weft-proxy cluster-ips'), "the frame's sets are emptied: flush table keeps elements");
  t.false(
    lines.some((l) => /^flush (set|map) ip weft-proxy (aff-|old-map)/.test(l)),
    'affinity state kept; what goes is not flushed',
  );
});

test('refreshScript: from any table to the ruleset, chains with anonymous sets refilled before the rest', (t) => {
  const opts = { clusterCIDR: cidr };
  const next = buildRuleset(basic(), opts);
  const older = basic();
  // the old table: one Service's endpoint replaced, another Service gone, a foreign chain and element
  const web = older.ports.find((p) => p.name === 'web')!;
  const moved = { ...web, clusterEndpoints: [{ ...web.clusterEndpoints[0]!, ip: '198.18.0.99' }, ...web.clusterEndpoints.slice(1)] };
  const prev = buildRuleset({ ...older, ports: [moved, ...older.ports.filter((p) => p.name !== 'web' && p.name !== 'loc')] }, opts);
  const k = new Kernel();
  k.apply(fullScript(prev));
  k.apply('add chain ip weft-proxy foreign-chain\nadd rule ip weft-proxy foreign-chain jump services\nadd element ip weft-proxy cluster-ips { 198.19.0.99 }\n');
  const existing = rulesetNames(prev);
  existing.chains.add('foreign-chain');
  const s = refreshScript(next, existing);
  k.apply(s);
  const want = new Kernel();
  want.apply(fullScript(next));
  t.deepEqual(k.dump(), want.dump(), 'the same table as a fresh one');
  const ls = lines(s);
  const at = (re: RegExp) => ls.findIndex((l) => re.test(l));
  const lastAt = (re: RegExp) => ls.length - 1 - [...ls].reverse().findIndex((l) => re.test(l));
  // the kernel walks the whole transaction for each anonymous set a rule binds: those rules first
  t.true(lastAt(/ vmap \{ /) < at(/^add rule ip weft-proxy ep-/), 'every numgen vmap before the first endpoint rule');
  t.true(lastAt(/ vmap \{ /) < at(/^flush chain ip weft-proxy ep-/), 'and before the endpoint chains are flushed');
  t.true(at(/^delete /) > lastAt(/^flush /), 'deletions after every flush');
  t.false(
    ls.some((l) => /^add chain ip weft-proxy (\S+)$/.test(l) && next.chains.has(l.split(' ')[4]!) && existing.chains.has(l.split(' ')[4]!)),
    'only Service chains the table lacks are declared',
  );
  for (const name of existing.chains) t.is(ls.filter((l) => l === `flush chain ip weft-proxy ${name}`).length, 1, name);
  // a fresh table's order is the same idea
  const full = lines(fullScript(next));
  t.true(full.findLastIndex((l) => / vmap \{ /.test(l)) < full.findIndex((l) => /^add rule ip weft-proxy ep-/.test(l)));
});

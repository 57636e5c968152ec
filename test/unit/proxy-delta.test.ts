import test from 'ava';
import { silentLog } from '../../src/core/log.ts';
import { parseCIDR } from '../../src/ip/ipv4.ts';
import { ProxyCache } from '../../src/proxy/controller.ts';
import { EndpointSelector, selectEndpoints, sliceService, type ProxyState } from '../../src/proxy/endpoints.ts';
import { buildRuleset, canPartial, fullScript, LiveRuleset, partialScript } from '../../src/proxy/ruleset.ts';
import { staleUDPFlows } from '../../src/proxy/sync.ts';
import { validateEndpointSlice, validateService, type EndpointSlice, type Service } from '../../src/proxy/types.ts';

const OPTS = { nodeName: 'node-a', nodePortRange: { min: 30000, max: 30003 } };
const RULESET = { clusterCIDR: parseCIDR('198.18.0.0/16') };

function caches() {
  const onChange = () => {};
  return {
    services: new ProxyCache<Service>('Service', validateService, { log: silentLog, owner: (s) => `${s.metadata.namespace}/${s.metadata.name}`, onChange }),
    slices: new ProxyCache<EndpointSlice>('EndpointSlice', validateEndpointSlice, { log: silentLog, owner: sliceService, onChange }),
  };
}

/** mulberry32: a seeded generator whose low bits are random too (an LCG's alternate). */
function rng(seed: number) {
  return (n: number) => {
    seed = (seed + 0x6d2b79f5) | 0;
    let x = Math.imul(seed ^ (seed >>> 15), 1 | seed);
    x = (x + Math.imul(x ^ (x >>> 7), 61 | x)) ^ x;
    return ((x ^ (x >>> 14)) >>> 0) % n;
  };
}

/** Random raw objects from small pools, so ClusterIP keys, node ports and slices collide often. */
function generator(rnd: (n: number) => number) {
  const pick = <T>(xs: readonly T[]): T => xs[rnd(xs.length)]!;
  const ns = () => pick(['ns1', 'ns2']);
  const svcName = () => pick(['a', 'b', 'c', 'd', 'e']);
  const proto = () => (rnd(4) === 0 ? 'UDP' : 'TCP');
  const service = (namespace = ns(), name = svcName()): object => {
    const named = rnd(3) > 0;
    const ports = named
      ? ['p', 'q'].slice(0, 1 + rnd(2)).map((n) => ({ name: n, port: 80 + rnd(2), protocol: proto(), nodePort: 29999 + rnd(6) }))
      : [{ port: 80 + rnd(2), protocol: proto(), nodePort: 29999 + rnd(6) }];
    const labels = rnd(12) === 0 ? { 'service.kubernetes.io/service-proxy-name': 'other' } : {};
    return {
      metadata: { namespace, name, labels },
      spec: {
        type: pick(['ClusterIP', 'NodePort', 'NodePort', 'LoadBalancer', ...(rnd(6) === 0 ? ['ExternalName'] : [])]),
        clusterIP: rnd(15) === 0 ? 'None' : rnd(30) === 0 ? 'bogus' : pick(['198.19.0.10', '198.19.0.11', '198.19.0.12', '198.19.0.13']),
        ports,
        sessionAffinity: rnd(4) === 0 ? 'ClientIP' : 'None',
        sessionAffinityConfig: { clientIP: { timeoutSeconds: 10 + rnd(2) } },
        internalTrafficPolicy: rnd(4) === 0 ? 'Local' : 'Cluster',
        externalTrafficPolicy: rnd(3) === 0 ? 'Local' : 'Cluster',
      },
    };
  };
  const slice = (namespace = ns(), name = `x${rnd(8)}`): object => ({
    metadata: { namespace, name, labels: { 'kubernetes.io/service-name': svcName() } },
    addressType: rnd(30) === 0 ? 'IPv6' : 'IPv4',
    endpoints: Array.from({ length: rnd(4) }, () => ({
      addresses: [`198.18.${rnd(2)}.${11 + rnd(5)}`],
      conditions: { ready: rnd(4) > 0, serving: rnd(2) > 0, terminating: rnd(3) === 0 },
      nodeName: pick(['node-a', 'node-b']),
    })),
    ports: [{ name: pick(['p', 'q', '']), port: 8080 + rnd(2), protocol: proto() }, ...(rnd(2) ? [{ name: pick(['p', 'q']), port: 9090, protocol: proto() }] : [])],
  });
  return { service, slice, ns, svcName };
}

const sortedFlows = (s: ReturnType<typeof staleUDPFlows>) => s.map((f) => JSON.stringify(f)).sort();

test('delta: random Service and slice changes; the incremental state, ruleset and scripts equal a recomputation of everything', (t) => {
  for (const seed of [1, 2, 3, 4]) {
    const rnd = rng(seed);
    const gen = generator(rnd);
    const c = caches();
    const keptServices = new Map<string, object>();
    const keptSlices = new Map<string, object>();
    const selector = new EndpointSelector(OPTS);
    let { state } = selector.select(c.services.items, (id) => c.slices.of(id));
    const live = new LiveRuleset(state, RULESET);
    let prevFull = buildRuleset(state, RULESET);
    for (let step = 0; step < 400; step++) {
      const what = rnd(10);
      if (what < 3) {
        const o = gen.service() as { metadata: { namespace: string; name: string } };
        keptServices.set(`${o.metadata.namespace}/${o.metadata.name}`, o);
        c.services.upsert(o);
      } else if (what < 4) {
        const k = `${gen.ns()}/${gen.svcName()}`;
        keptServices.delete(k);
        c.services.remove({ metadata: { namespace: k.split('/')[0], name: k.split('/')[1] } });
      } else if (what < 8) {
        // often a slice already there, under another Service label: its old Service changes too
        const o = gen.slice() as { metadata: { namespace: string; name: string } };
        keptSlices.set(`${o.metadata.namespace}/${o.metadata.name}`, o);
        c.slices.upsert(o);
      } else if (what < 9) {
        const ns = gen.ns();
        const name = `x${rnd(8)}`;
        keptSlices.delete(`${ns}/${name}`);
        c.slices.remove({ metadata: { namespace: ns, name } });
      } else {
        // a relist: the same objects again (new objects after validation), one more slice
        const extra = gen.slice() as { metadata: { namespace: string; name: string } };
        keptSlices.set(`${extra.metadata.namespace}/${extra.metadata.name}`, extra);
        c.services.replace([...keptServices.values()] as never);
        c.slices.replace([...keptSlices.values()] as never);
      }
      const dirty = new Set([...c.services.takeDirty(), ...c.slices.takeDirty()]);
      const sel = selector.select(c.services.items, (id) => c.slices.of(id), dirty);
      const want = selectEndpoints([...c.services.items.values()], [...c.slices.items.values()], OPTS);
      t.deepEqual(sel.state, want, `seed ${seed} step ${step}: state`);
      for (const [id, ports] of sel.changed)
        t.deepEqual(
          ports,
          want.ports.filter((sp) => `${sp.namespace}/${sp.name}` === id),
          `seed ${seed} step ${step}: changed ${id}`,
        );

      const nextFull = buildRuleset(want, RULESET);
      const d = live.delta(sel.changed);
      t.true(canPartial(live.rs, d.after));
      t.is(partialScript(d.before, d.after), partialScript(prevFull, nextFull), `seed ${seed} step ${step}: partial script`);
      t.deepEqual(
        sortedFlows(staleUDPFlows({ ports: d.beforePorts, skipped: [] }, { ports: d.afterPorts, skipped: [] })),
        sortedFlows(staleUDPFlows(state, want)),
        `seed ${seed} step ${step}: stale flows`,
      );
      live.commit(d);
      t.is(fullScript(live.rs), fullScript(nextFull), `seed ${seed} step ${step}: whole ruleset`);
      t.deepEqual([...live.rs.elements.keys()].sort(), [...nextFull.elements.keys()].sort(), 'no map left without elements');
      prevFull = nextFull;
      state = want;
    }
    // a fresh selection (a full sync's) gives the same again
    t.deepEqual(selector.select(c.services.items, (id) => c.slices.of(id)).state, state);
  }
});

test('delta: a slice moved to another Service marks both; an unchanged Service is not in `changed`', (t) => {
  const c = caches();
  const svc = (name: string, ip: string) => ({ metadata: { namespace: 'ns1', name }, spec: { clusterIP: ip, ports: [{ name: 'p', port: 80 }] } });
  const slice = (owner: string) => ({
    metadata: { namespace: 'ns1', name: 'x', labels: { 'kubernetes.io/service-name': owner } },
    addressType: 'IPv4',
    endpoints: [{ addresses: ['198.18.0.11'] }],
    ports: [{ name: 'p', port: 8080 }],
  });
  c.services.upsert(svc('a', '198.19.0.10'));
  c.services.upsert(svc('b', '198.19.0.11'));
  c.services.upsert(svc('c', '198.19.0.12'));
  c.slices.upsert(slice('a'));
  const selector = new EndpointSelector();
  const all = new Set([...c.services.takeDirty(), ...c.slices.takeDirty()]);
  t.deepEqual([...all].sort(), ['ns1/a', 'ns1/b', 'ns1/c']);
  const first = selector.select(c.services.items, (id) => c.slices.of(id), all);
  t.is(first.state.ports[0]!.clusterEndpoints.length, 1);
  c.slices.upsert(slice('b'));
  const dirty = new Set([...c.services.takeDirty(), ...c.slices.takeDirty()]);
  t.deepEqual([...dirty].sort(), ['ns1/a', 'ns1/b']);
  const next = selector.select(c.services.items, (id) => c.slices.of(id), dirty);
  t.deepEqual([...next.changed.keys()].sort(), ['ns1/a', 'ns1/b']);
  t.deepEqual(
    next.state.ports.map((sp) => [sp.name, sp.clusterEndpoints.length]),
    [
      ['a', 0],
      ['b', 1],
      ['c', 0],
    ],
  );
  t.is(next.state.ports[2], first.state.ports[2], "c's port is the same object");
});

test('delta: freeing a ClusterIP key or node port hands it to the next claimant, which did not change itself', (t) => {
  const raw = (name: string, nodePort: number) => ({ metadata: { namespace: 'ns1', name }, spec: { type: 'NodePort', clusterIP: '198.19.0.10', ports: [{ name: 'p', port: 80, nodePort }] } });
  const c = caches();
  c.services.upsert(raw('a', 30000));
  c.services.upsert(raw('b', 30001));
  const selector = new EndpointSelector();
  const one = selector.select(c.services.items, () => [], c.services.takeDirty());
  t.deepEqual(
    one.state.ports.map((sp) => sp.name),
    ['a'],
  );
  t.deepEqual(
    one.state.skipped.map((s) => s.reason),
    ['TCP/198.19.0.10:80 already belongs to another service'],
  );
  c.services.remove({ metadata: { namespace: 'ns1', name: 'a' } });
  const two = selector.select(c.services.items, () => [], c.services.takeDirty());
  t.deepEqual(
    two.state.ports.map((sp) => [sp.name, sp.nodePort]),
    [['b', 30001]],
  );
  t.deepEqual([...two.changed.keys()].sort(), ['ns1/a', 'ns1/b']);
  t.deepEqual(two.state, selectEndpoints([...c.services.items.values()], []));
});

test('delta: the syncer-side model keeps a ClusterIP shared with an unchanged Service', (t) => {
  const svc = (name: string, port: number) => {
    const r = validateService({ metadata: { namespace: 'ns1', name }, spec: { clusterIP: '198.19.0.10', ports: [{ name: 'p', port }] } });
    if (!r.ok) throw new Error(r.reason);
    return r.value;
  };
  const a = svc('a', 80);
  const b = svc('b', 81);
  const two: ProxyState = selectEndpoints([a, b], []);
  const live = new LiveRuleset(two);
  const d = live.delta(new Map([['ns1/a', []]]));
  const script = partialScript(d.before, d.after);
  t.false(/cluster-ips/.test(script), 'b still needs 198.19.0.10 in cluster-ips');
  t.is(script, partialScript(buildRuleset(two), buildRuleset(selectEndpoints([b], []))));
  live.commit(d);
  t.is(fullScript(live.rs), fullScript(buildRuleset(selectEndpoints([b], []))));
});

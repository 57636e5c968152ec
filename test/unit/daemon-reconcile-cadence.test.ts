/**
 * The reconcile loop's two cadences (src/daemon/reconcile.ts): the kernel's full check every
 * --reconcile-interval (60 s by default, the event path covers the time between) and the rules
 * check about every 10 s whatever that interval is.
 */
import test from 'ava';
import type { BackendNetwork } from '../../src/backend/types.ts';
import { parseCIDR } from '../../src/ip/ipv4.ts';
import { Health } from '../../src/daemon/health.ts';
import { Metrics } from '../../src/daemon/metrics.ts';
import { reconcileLoop } from '../../src/daemon/reconcile.ts';
import { RulesKeeper } from '../../src/daemon/rules.ts';
import { FakeClock } from '../helpers/clock.ts';

const log = { error() {}, warn() {}, info() {}, debug() {} };
const network = parseCIDR('198.18.0.0/16');

async function run(t: { is: (a: unknown, b: unknown, m?: string) => void }, intervalMs: number, steps: Array<{ advance: number; passes: number; rules: number }>) {
  const clock = new FakeClock();
  const metrics = new Metrics({ clock });
  let passes = 0;
  let reads = 0;
  const net = {
    reconcile: async () => {
      passes++;
      return 0;
    },
    peerCount: 0,
  } as unknown as BackendNetwork;
  const keeper = new RulesKeeper(
    {
      apply: async () => 'print',
      read: async () => {
        reads++;
        return 'print';
      },
      check: async () => true,
      ensureForward: async () => undefined,
      forwardDrift: async () => undefined,
    },
    { log, onRepair() {} },
  );
  await keeper.apply({ network, subnet: parseCIDR('198.18.1.0/24'), masquerade: true });
  const ac = new AbortController();
  const loop = reconcileLoop(ac.signal, {
    network: net,
    rules: { keeper, spec: () => ({ network, subnet: parseCIDR('198.18.1.0/24'), masquerade: true }) },
    intervalMs,
    clock,
    health: new Health({ clock, metrics, stallMs: Health.stallMsFor(intervalMs) }),
    metrics,
    log,
  });
  let at = 0;
  for (const s of steps) {
    at += s.advance;
    await clock.advance(s.advance);
    t.is(passes, s.passes, `full checks after ${at} ms`);
    t.is(reads, s.rules, `rules checks after ${at} ms`);
  }
  ac.abort();
  await loop;
}

test('60 s interval: rules every 10 s, the full check every 60 s', async (t) => {
  const steps = [];
  for (let i = 1; i <= 12; i++) steps.push({ advance: 10_000, passes: Math.floor(i / 6), rules: i });
  await run(t, 60_000, steps);
});

test('1 s interval: a full check every second and the rules every tenth, as before', async (t) => {
  const steps = [];
  for (let i = 1; i <= 20; i++) steps.push({ advance: 1000, passes: i, rules: Math.floor(i / 10) });
  await run(t, 1000, steps);
});

/**
 * The steady state: every interval one backend reconcile pass (kernel objects; the backend's
 * event watch repairs announced drift in between) and, about every 10 s whatever the interval
 * (nft and iptables-save are process spawns), the rules keeper's drift check and a fresh look
 * at the node's addresses and routes for the lease gate. A failed pass is logged and the next
 * one tries again.
 */
import type { BackendNetwork } from '../backend/types.ts';
import type { Clock } from '../core/clock.ts';
import { errText } from '../core/errors.ts';
import type { Log } from '../core/log.ts';
import type { RulesSpec } from '../rules/nft.ts';
import type { Health } from './health.ts';
import type { Metrics } from './metrics.ts';
import type { RulesKeeper } from './rules.ts';

/** How often the rules (and the node's facts) are checked: about this often, at most. */
const RULES_CHECK_MS = 10_000;

export interface ReconcileLoopOptions {
  network: BackendNetwork;
  /** The rules to keep in place. */
  rules: { keeper: RulesKeeper; spec: () => RulesSpec };
  /** Called on the rules' ticks: re-reads the node's facts for the lease gate. */
  refreshFacts?: () => Promise<void>;
  intervalMs: number;
  clock: Clock;
  health: Health;
  metrics: Metrics;
  log: Log;
}

/** Runs reconcile passes until `signal` aborts. */
export async function reconcileLoop(signal: AbortSignal, opts: ReconcileLoopOptions): Promise<void> {
  const { network, rules, refreshFacts, intervalMs, clock, health, metrics, log } = opts;
  // One tick per interval, or per RULES_CHECK_MS when the interval is longer (60 s by default):
  // the rules keep their 10 s cadence while the kernel's full check runs every interval.
  const tickMs = Math.min(intervalMs, RULES_CHECK_MS);
  const passEvery = Math.max(1, Math.round(intervalMs / tickMs));
  const rulesEvery = Math.max(1, Math.round(RULES_CHECK_MS / tickMs));
  for (let tick = 1; !signal.aborted; tick++) {
    await clock.sleep(tickMs, signal);
    if (signal.aborted) break;
    if (tick % passEvery === 0) {
      try {
        await network.reconcile();
        metrics.peers.set(network.peerCount);
        health.passed();
      } catch (err) {
        log.warn(`reconcile: ${errText(err)}`);
      }
    }
    if (tick % rulesEvery !== 0) continue;
    try {
      await rules.keeper.repair(rules.spec());
    } catch (err) {
      log.warn(`reconcile rules: ${errText(err)}`);
    }
    try {
      await refreshFacts?.();
    } catch (err) {
      log.warn(`read node addresses and routes: ${errText(err)}`);
    }
  }
}

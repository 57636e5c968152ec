/**
 * The steady state: every interval one backend reconcile pass (kernel objects) and, less often
 * because nft and iptables-save are process spawns, the rules keeper's drift check and a fresh
 * look at the node's addresses and routes for the lease gate. A failed pass is logged and the
 * next one tries again.
 */
import type { BackendNetwork } from '../backend/types.ts';
import type { Clock } from '../core/clock.ts';
import { errText } from '../core/errors.ts';
import type { Log } from '../core/log.ts';
import type { RulesSpec } from '../rules/nft.ts';
import type { Health } from './health.ts';
import type { Metrics } from './metrics.ts';
import type { RulesKeeper } from './rules.ts';

/** How often the rules (and the node's facts) are checked at most. */
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
  const rulesEvery = Math.max(1, Math.round(RULES_CHECK_MS / intervalMs));
  for (let pass = 1; !signal.aborted; pass++) {
    await clock.sleep(intervalMs, signal);
    if (signal.aborted) break;
    try {
      await network.reconcile();
      metrics.peers.set(network.peerCount);
      health.passed();
    } catch (err) {
      log.warn(`reconcile: ${errText(err)}`);
    }
    if (pass % rulesEvery !== 0) continue;
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

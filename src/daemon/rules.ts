/**
 * The rules keeper: puts weft's nftables table (forward, and masquerade with --ip-masq:
 * src/rules/nft.ts) and the ACCEPT rules in the host's iptables FORWARD chain
 * (src/rules/iptables.ts) in place, and puts them back when someone changed or deleted them.
 * nft drift is judged against the table's fingerprint as read back right after we last wrote
 * it; iptables drift by reading WEFT-FORWARD and its jump in every backend with a FORWARD chain
 * (so a firewall started after weftd is noticed too).
 */
import type { Log } from '../core/log.ts';
import type { IPv4Net } from '../ip/ipv4.ts';
import { ensureIptablesForward, iptablesForwardDrift } from '../rules/iptables.ts';
import { ensureRules, readRules, rulesPresent, type RulesSpec } from '../rules/nft.ts';

/** The nft and iptables operations the keeper uses (injected so unit wiring can skip both). */
export interface RulesOps {
  /** Applies the table; returns its fingerprint as read back (undefined: could not read it). */
  apply: (spec: RulesSpec) => Promise<string | undefined>;
  /** The table's current fingerprint (undefined: no table). */
  read: () => Promise<string | undefined>;
  /** Shape check, used only when no fingerprint could be read back after applying. */
  check: (spec: RulesSpec) => Promise<boolean>;
  /** Puts the iptables FORWARD accept rules for `network` in place (every backend that has FORWARD). */
  ensureForward: (network: IPv4Net) => Promise<unknown>;
  /** Why those rules are not in place; undefined when they are. */
  forwardDrift: (network: IPv4Net) => Promise<string | undefined>;
}

/** The real nft and iptables. */
export const nftRules: RulesOps = {
  apply: (spec) => ensureRules(spec),
  read: () => readRules(),
  check: (spec) => rulesPresent(spec),
  ensureForward: (network) => ensureIptablesForward(network),
  forwardDrift: (network) => iptablesForwardDrift(network),
};

export class RulesKeeper {
  readonly #ops: RulesOps;
  readonly #opts: { log: Log; onRepair: () => void };
  /** The table as read back right after we last wrote it: any difference later is drift. */
  #print: string | undefined;

  constructor(ops: RulesOps, opts: { log: Log; onRepair: () => void }) {
    this.#ops = ops;
    this.#opts = opts;
  }

  /**
   * Writes the whole table (one nft transaction) and remembers what it looks like, then the
   * iptables FORWARD accept rules.
   */
  async apply(spec: RulesSpec): Promise<void> {
    await this.#applyTable(spec);
    await this.#ops.ensureForward(spec.network);
  }

  async #applyTable(spec: RulesSpec): Promise<void> {
    this.#print = await this.#ops.apply(spec);
  }

  /** Why the table differs from what we wrote, or undefined when it does not. */
  async drift(spec: RulesSpec): Promise<string | undefined> {
    if (this.#print === undefined) return (await this.#ops.check(spec)) ? undefined : 'it was missing or incomplete';
    const now = await this.#ops.read();
    if (now === undefined) return 'it was missing';
    return now === this.#print ? undefined : 'its rules had been changed';
  }

  /** Puts the table and the FORWARD accept rules back where they drifted; true when it did. */
  async repair(spec: RulesSpec): Promise<boolean> {
    let repaired = false;
    const drift = await this.drift(spec);
    if (drift) {
      await this.#applyTable(spec);
      this.#opts.onRepair();
      this.#opts.log.info(`repair: nftables table "ip weft" put back (${drift})`);
      repaired = true;
    }
    const why = await this.#ops.forwardDrift(spec.network);
    if (why) {
      await this.#ops.ensureForward(spec.network);
      this.#opts.onRepair();
      this.#opts.log.info(`repair: iptables FORWARD accept rules put back (${why})`);
      repaired = true;
    }
    return repaired;
  }
}

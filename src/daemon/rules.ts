/**
 * The rules keeper: puts weft's nftables table (masquerade/forward, src/rules/nft.ts) in place
 * and puts it back when someone changed or deleted it. Drift is judged against the table's
 * fingerprint as read back right after we last wrote it.
 */
import type { Log } from '../core/log.ts';
import { ensureRules, readRules, rulesPresent, type RulesSpec } from '../rules/nft.ts';

/** The nft operations the keeper uses (injected so unit wiring can skip nft). */
export interface RulesOps {
  /** Applies the table; returns its fingerprint as read back (undefined: could not read it). */
  apply: (spec: RulesSpec) => Promise<string | undefined>;
  /** The table's current fingerprint (undefined: no table). */
  read: () => Promise<string | undefined>;
  /** Shape check, used only when no fingerprint could be read back after applying. */
  check: (spec: RulesSpec) => Promise<boolean>;
}

/** The real nft. */
export const nftRules: RulesOps = { apply: (spec) => ensureRules(spec), read: () => readRules(), check: (spec) => rulesPresent(spec) };

export class RulesKeeper {
  readonly #ops: RulesOps;
  readonly #opts: { log: Log; onRepair: () => void };
  /** The table as read back right after we last wrote it: any difference later is drift. */
  #print: string | undefined;

  constructor(ops: RulesOps, opts: { log: Log; onRepair: () => void }) {
    this.#ops = ops;
    this.#opts = opts;
  }

  /** Writes the whole table (one nft transaction) and remembers what it looks like. */
  async apply(spec: RulesSpec): Promise<void> {
    this.#print = await this.#ops.apply(spec);
  }

  /** Why the table differs from what we wrote, or undefined when it does not. */
  async drift(spec: RulesSpec): Promise<string | undefined> {
    if (this.#print === undefined) return (await this.#ops.check(spec)) ? undefined : 'it was missing or incomplete';
    const now = await this.#ops.read();
    if (now === undefined) return 'it was missing';
    return now === this.#print ? undefined : 'its rules had been changed';
  }

  /** Puts the table back if it drifted; true when it did. */
  async repair(spec: RulesSpec): Promise<boolean> {
    const drift = await this.drift(spec);
    if (!drift) return false;
    await this.apply(spec);
    this.#opts.onRepair();
    this.#opts.log.info(`repair: nftables table "ip weft" put back (${drift})`);
    return true;
  }
}

/**
 * The sync loop's one step: desired {@link ProxyState} -> kernel, then stale UDP flows out.
 *
 * Concurrency: {@link ProxySyncer.sync} calls are serialized on one promise chain (a partial
 * sync is a diff against what the previous one applied, so two must never interleave). The
 * drift check reads the table beside that chain and keeps its reading only when no sync ran
 * meanwhile, so no sync ever waits for it. Nothing else holds state.
 *
 * Failure: a failed transaction changed nothing (nft applies all or nothing), but a failed
 * partial sync means the kernel is not what we think, so the next sync is a full one; the
 * same after drift. Stale-conntrack deletion runs after a successful sync and only logs its
 * errors: the rules are right, and a leftover flow ages out on its own.
 */
import type { Log } from '../core/log.ts';
import { silentLog } from '../core/log.ts';
import { errText } from '../core/errors.ts';
import { servicePortKey, type ProxyEndpoint, type ProxyState, type ServicePortState } from './endpoints.ts';
import { conntrackDelete, nftApply, NftShell, readProxyNames, readProxyTable, SHELL_MAX_SCRIPT, tableFingerprintSliced, type ConntrackFilter, type ExecOptions } from './nft.ts';
import { NfnlExecutor } from './nfnl.ts';
import {
  canPartial,
  diffRulesets,
  fullScript,
  LiveRuleset,
  partialScript,
  refreshScript,
  rulesetNames,
  tableNames,
  type Ruleset,
  type RulesetDelta,
  type RulesetDiff,
  type RulesetOptions,
  type TableNames,
} from './ruleset.ts';

function used(sp: ServicePortState): Map<string, ProxyEndpoint> {
  const m = new Map<string, ProxyEndpoint>();
  for (const e of [...sp.clusterEndpoints, ...sp.localEndpoints]) m.set(`${e.ip}:${e.port}`, e);
  return m;
}

/**
 * UDP flows to delete after moving from `prev` to `next` (pure): flows DNATed to an endpoint
 * the rules no longer send to, per ClusterIP and NodePort (kubernetes #19029), and every flow
 * to a Service port that had no endpoint before (they were created before the reject rules).
 */
export function staleUDPFlows(prev: ProxyState | undefined, next: ProxyState): ConntrackFilter[] {
  const out: ConntrackFilter[] = [];
  const before = new Map<string, ServicePortState>();
  for (const sp of prev?.ports ?? []) if (sp.protocol === 'UDP') before.set(servicePortKey(sp), sp);
  const after = new Map<string, ServicePortState>();
  for (const sp of next.ports) if (sp.protocol === 'UDP') after.set(servicePortKey(sp), sp);
  for (const [key, old] of before) {
    const now = after.get(key);
    const keep = now && now.clusterIP === old.clusterIP && now.port === old.port ? used(now) : new Map<string, ProxyEndpoint>();
    const keepNode = now && now.nodePort === old.nodePort ? keep : new Map<string, ProxyEndpoint>();
    for (const [k, e] of used(old)) {
      if (!keep.has(k)) out.push({ origDst: old.clusterIP, port: old.port, dnatTo: e.ip });
      if (old.nodePort !== undefined && !keepNode.has(k)) out.push({ port: old.nodePort, dnatTo: e.ip });
    }
  }
  if (prev) {
    for (const [key, sp] of after) {
      const old = before.get(key);
      const hadNone = !old || used(old).size === 0 || old.clusterIP !== sp.clusterIP || old.port !== sp.port;
      if (hadNone && used(sp).size > 0) out.push({ origDst: sp.clusterIP, port: sp.port });
    }
  }
  return out;
}

export interface SyncerOptions extends ExecOptions {
  log?: Log;
  ruleset?: RulesetOptions;
  /**
   * When to read the table back for {@link ProxySyncer.drifted}: after every sync (default),
   * after full syncs only, or never (no drift detection). Reading back costs as much as a full
   * sync's apply at scale (1000 Services x 10 endpoints: about 0.5-2 s on a busy 2-core machine,
   * against about 0.1-0.2 s for the partial sync itself); with `full`, the first drift check
   * after a partial sync only takes a new baseline, so a change made in between goes unnoticed
   * until the next periodic full sync. `lazy`: never during a sync; the first drift check after
   * any sync takes the baseline, so syncs never wait for a read-back, and a change made between
   * a sync and that check goes unnoticed until the next full sync rewrites the table.
   */
  readBack?: 'always' | 'full' | 'lazy' | 'never';
  /**
   * Apply partial syncs that {@link NfnlExecutor} does not take through one kept `nft -i`
   * process ({@link NftShell}; default true) instead of a `nft -f` each: about half the cost
   * at 1000 Services x 10 endpoints. Full syncs always use `nft -f`.
   */
  shell?: boolean;
  /**
   * Apply partial syncs as one nf_tables netlink batch written directly ({@link NfnlExecutor};
   * default true): no nft process and no dump of the table into nft's cache, which is most of
   * a partial sync's cost at scale. A script with a line it does not translate goes to nft
   * (`shell` or `nft -f`) whole.
   */
  nfnl?: boolean;
}

export interface SyncResult {
  mode: 'full' | 'partial' | 'unchanged';
  /** What a partial sync changed. */
  diff?: RulesetDiff;
  /** How a partial sync was applied: netlink batch, kept `nft -i`, or `nft -f`. */
  via?: 'nfnl' | 'nft-i' | 'nft-f';
  /** Stale UDP conntrack entries deleted. */
  flowsDeleted: number;
  ms: number;
}

/** Programs `ip weft-proxy` from successive desired states. */
export class ProxySyncer {
  readonly #opts: SyncerOptions;
  readonly #log: Log;
  #applied: { live: LiveRuleset; state: ProxyState } | undefined;
  #fingerprint: string | undefined;
  #needFull = true;
  /** The kernel's table is what the last sync applied (no failure, no drift seen since). */
  #kernelKnown = false;
  #baselineStale = false;
  #chain: Promise<unknown> = Promise.resolve();
  /** Syncs queued or running; {@link drifted} discards a reading taken while any was. */
  #pending = 0;
  /** Bumped when a sync ends: a drift reading from before it is stale. */
  #gen = 0;
  #checking = false;
  /**
   * The nf_tables generation at which the table was last known to be as {@link #applied} says
   * (read right after a sync, or before a drift check that found none): while the kernel is
   * still at it, nobody has committed anything since and a drift check need not read the
   * table. A commit by someone else in the moment between our own and that reading would go
   * unseen until the next full sync.
   */
  #knownGen: number | undefined;
  readonly #shell: NftShell | undefined;
  readonly #nfnl: NfnlExecutor | undefined;

  constructor(opts: SyncerOptions = {}) {
    this.#opts = opts;
    this.#log = opts.log ?? silentLog;
    this.#shell = opts.shell === false ? undefined : new NftShell(opts);
    this.#nfnl = opts.nfnl === false ? undefined : new NfnlExecutor({ netns: opts.netns, timeoutMs: opts.timeoutMs });
  }

  /** Ends the kept `nft -i` process and the netlink socket, if any (a later sync opens others). */
  close(): void {
    this.#shell?.close();
    this.#nfnl?.close();
  }

  #serial<T>(fn: () => Promise<T>): Promise<T> {
    const p = this.#chain.then(fn, fn);
    this.#chain = p.catch(() => {});
    return p;
  }

  /**
   * Brings the kernel to `state`: a full sync the first time, after a failure or when asked.
   * `changed` (what `EndpointSelector.select` says changed since the previous call's
   * state: Service -> its ports now) narrows a partial sync to those Services, so its cost
   * follows the change, not the table; without it the whole state is compared.
   */
  sync(state: ProxyState, opts: { full?: boolean; changed?: ReadonlyMap<string, readonly ServicePortState[]> } = {}): Promise<SyncResult> {
    this.#pending++;
    return this.#serial(async () => {
      try {
        return await this.#sync(state, opts.full ?? false, opts.changed);
      } catch (err) {
        // whatever failed, the next `changed` is not relative to what the kernel has
        this.#needFull = true;
        throw err;
      } finally {
        this.#pending--;
        this.#gen++;
      }
    });
  }

  async #sync(state: ProxyState, full: boolean, changed: ReadonlyMap<string, readonly ServicePortState[]> | undefined): Promise<SyncResult> {
    const t0 = performance.now();
    const prev = this.#applied;
    const partial = !full && !this.#needFull ? prev : undefined;
    // a partial sync with `changed` looks at those Services' share of the ruleset only
    let delta: RulesetDelta | undefined = partial && changed ? partial.live.delta(changed) : undefined;
    if (delta && !canPartial(partial!.live.rs, delta.after)) delta = undefined;
    const live = delta ? undefined : new LiveRuleset(state, this.#opts.ruleset);
    const sides = delta ?? (partial && canPartial(partial.live.rs, live!.rs) ? { before: partial.live.rs, after: live!.rs } : undefined);
    // phase times for the debug log: where a slow sync spends its time
    let tApply = t0;
    let tApplied = t0;
    let mode: SyncResult['mode'];
    let diff: RulesetDiff | undefined;
    let via: SyncResult['via'];
    if (sides) {
      diff = diffRulesets(sides.before, sides.after);
      const script = partialScript(sides.before, sides.after, diff);
      mode = script ? 'partial' : 'unchanged';
      tApply = performance.now();
      if (script) {
        try {
          via = await this.#applyPartial(script);
        } catch (err) {
          this.#needFull = true;
          this.#kernelKnown = false;
          this.#knownGen = undefined;
          this.#log.warn('proxy partial sync failed; next sync is full', { err: errText(err) });
          throw err;
        }
      }
    } else {
      mode = 'full';
      tApply = performance.now();
      try {
        // An asked-for full sync (periodic, drift) reads the kernel: it is the clean-up of record.
        await this.#full(live!.rs, full ? undefined : prev?.live.rs);
      } catch (err) {
        this.#needFull = true;
        this.#kernelKnown = false;
        this.#knownGen = undefined;
        throw err;
      }
    }
    tApplied = performance.now();
    this.#needFull = false;
    this.#kernelKnown = true;
    if (delta) prev!.live.commit(delta);
    this.#applied = { live: live ?? prev!.live, state };
    if (mode !== 'unchanged') this.#knownGen = await this.#generation();
    const readBack = this.#opts.readBack ?? 'always';
    if ((mode === 'partial' && readBack === 'full') || (mode !== 'unchanged' && readBack === 'lazy')) this.#baselineStale = true;
    if (mode !== 'unchanged' && (readBack === 'always' || (readBack === 'full' && mode === 'full'))) {
      this.#baselineStale = false;
      try {
        const json = await readProxyTable(this.#opts);
        this.#fingerprint = json === undefined ? undefined : await tableFingerprintSliced(json);
      } catch (err) {
        this.#fingerprint = undefined;
        this.#log.warn('proxy table read-back failed', { err: errText(err) });
      }
    }
    let flowsDeleted = 0;
    const stale = delta ? staleUDPFlows({ ports: delta.beforePorts, skipped: [] }, { ports: delta.afterPorts, skipped: [] }) : staleUDPFlows(prev?.state, state);
    if (stale.length) {
      try {
        flowsDeleted = await conntrackDelete(stale, this.#opts);
      } catch (err) {
        this.#log.warn('proxy stale UDP conntrack deletion failed', { err: errText(err), filters: stale.length });
      }
    }
    const t1 = performance.now();
    const ms = t1 - t0;
    const r1 = (x: number) => Math.round(x * 10) / 10;
    // buildMs: model and script text; applyMs: nft -f; afterMs: read-back and conntrack
    this.#log.debug('proxy sync', { mode, via, ms: r1(ms), buildMs: r1(tApply - t0), applyMs: r1(tApplied - tApply), afterMs: r1(t1 - tApplied), servicePorts: state.ports.length, flowsDeleted });
    return { mode, diff, via, flowsDeleted, ms };
  }

  /** A partial script through the netlink batch when it translates, else through nft. */
  async #applyPartial(script: string): Promise<NonNullable<SyncResult['via']>> {
    if (this.#nfnl) {
      const r = await this.#nfnl.apply(script);
      if (r.applied) return 'nfnl';
      this.#log.debug('proxy partial sync through nft', { reason: r.reason });
    }
    if (this.#shell && script.length <= SHELL_MAX_SCRIPT) {
      await this.#shell.apply(script);
      return 'nft-i';
    }
    await nftApply(script, this.#opts);
    return 'nft-f';
  }

  /**
   * A full sync: the table rewritten in place (base chains stay on their hooks, so no packet
   * meets a gap), deleting what the kernel's table holds beyond `next` (after drift or a restart
   * only the kernel knows: its chain, set and map names are read first, not its rules). Only
   * when that read or the in-place transaction fails (a declaration changed incompatibly) is
   * the table replaced whole.
   */
  async #full(next: Ruleset, prev: Ruleset | undefined): Promise<void> {
    let existing: TableNames | undefined;
    try {
      // What the last sync applied, while nothing says the kernel differs; else the kernel's own.
      // (Only the chains named here are flushed: an asked-for full sync always reads them.)
      existing = prev && this.#kernelKnown ? rulesetNames(prev) : await this.#kernelNames();
    } catch (err) {
      this.#log.warn('proxy table read failed; replacing it whole', { err: errText(err) });
    }
    if (existing) {
      try {
        await nftApply(refreshScript(next, existing), this.#opts);
        return;
      } catch (err) {
        this.#log.warn('proxy table could not be rewritten in place; replacing it whole', { err: errText(err) });
      }
    }
    await nftApply(fullScript(next), this.#opts);
  }

  /** The kernel's chain, set and map names: netlink dumps, else nft's listings. */
  async #kernelNames(): Promise<TableNames | undefined> {
    if (this.#nfnl) {
      try {
        return await this.#nfnl.names();
      } catch (err) {
        this.#log.debug('proxy: netlink listing of the table failed; asking nft', { err: errText(err) });
      }
    }
    return tableNames(await readProxyNames(this.#opts));
  }

  /**
   * True when the table differs from what the last sync left (someone edited, flushed or
   * deleted it); the next sync is then a full one. False before the first sync.
   *
   * Runs beside the sync chain, not on it: reading a big table back takes about as long as a
   * full sync's apply (1000 Services x 10 endpoints: about 1 s), and a change must not wait
   * behind it. The reading is compared only when no sync was queued, running or finished
   * while it was taken; otherwise it is discarded (false: not known to have drifted), since it
   * may show the table before, after or (across several transactions) between syncs. Checks
   * do not overlap: a second call while one reads gets false.
   */
  async drifted(): Promise<boolean> {
    if (!this.#applied || this.#opts.readBack === 'never' || this.#pending > 0 || this.#checking) return false;
    const gen = this.#gen;
    this.#checking = true;
    let now: string | undefined;
    let kernelGen: number | undefined;
    try {
      // Nothing committed since the table was known and compared: no read (the listing takes
      // ~1 s of nft at 1000 Services x 10 endpoints). A baseline still to take needs the read.
      kernelGen = await this.#generation();
      if (!this.#baselineStale && kernelGen !== undefined && kernelGen === this.#knownGen) return false;
      const json = await readProxyTable(this.#opts);
      if (this.#gen !== gen || this.#pending > 0) return false;
      now = json === undefined ? undefined : await tableFingerprintSliced(json);
    } finally {
      this.#checking = false;
    }
    if (this.#gen !== gen || this.#pending > 0) return false;
    if (this.#baselineStale && now !== undefined) {
      this.#baselineStale = false;
      this.#fingerprint = now;
      this.#knownGen = kernelGen;
      return false;
    }
    const drift = now === undefined || now !== this.#fingerprint;
    if (drift) {
      this.#needFull = true;
      this.#kernelKnown = false;
      this.#knownGen = undefined;
    } else this.#knownGen = kernelGen;
    return drift;
  }

  /** The ruleset generation, or undefined without the netlink executor or when it cannot say. */
  async #generation(): Promise<number | undefined> {
    try {
      return await this.#nfnl?.generation();
    } catch (err) {
      this.#log.debug('proxy: nf_tables generation unknown', { err: errText(err) });
      return undefined;
    }
  }
}

/**
 * The proxy table as `nft -j list table ip weft-proxy` prints it, parsed, and a small evaluator
 * that runs one packet through its chains the way the kernel would, forking where the kernel
 * would pick at random (`numgen random mod N vmap`). It reads the rules themselves, not the
 * chain names: a trace must show what the kernel does with the table it has (someone else's
 * edit included), not what weftd meant to write. Matches it does not understand count as "no
 * match" and are reported, so an unknown rule can never be silently taken.
 *
 * The JSON is hostile input like any other: everything is type-checked as it is read, and the
 * evaluation is bounded in depth and in the number of forks.
 */

/** One rule: its `expr` list as nft prints it. */
export interface NftRule {
  handle?: number;
  expr: unknown[];
}

/** A verdict map element: key parts (`198.19.0.10`, `tcp`, 80) and its verdict. */
export interface MapElement {
  key: Array<string | number>;
  verdict: { kind: 'goto' | 'jump'; target: string } | { kind: 'accept' | 'drop' | 'return' | 'continue' };
}

/** The parts of the table a trace reads. Plain objects, so a fixture is just JSON. */
export interface ProxyTable {
  chains: Record<string, NftRule[]>;
  /** Set name -> elements as strings (addresses, or `a . b` for concatenations). */
  sets: Record<string, string[]>;
  maps: Record<string, MapElement[]>;
}

const MAX_OBJECTS = 200_000;

function isObj(v: unknown): v is Record<string, unknown> {
  return typeof v === 'object' && v !== null && !Array.isArray(v);
}

function keyPart(v: unknown): string | number | undefined {
  if (typeof v === 'string' || typeof v === 'number') return v;
  // elements with timeouts or counters come as {elem: {val, timeout, ...}}
  if (isObj(v) && isObj(v.elem)) return keyPart(v.elem.val);
  return undefined;
}

function keyParts(v: unknown): Array<string | number> | undefined {
  if (isObj(v) && isObj(v.elem)) return keyParts(v.elem.val);
  if (isObj(v) && Array.isArray(v.concat)) {
    const parts = v.concat.map(keyPart);
    return parts.every((p) => p !== undefined) ? (parts as Array<string | number>) : undefined;
  }
  const p = keyPart(v);
  return p === undefined ? undefined : [p];
}

function verdictOf(v: unknown): MapElement['verdict'] | undefined {
  if (!isObj(v)) return undefined;
  for (const kind of ['goto', 'jump'] as const) {
    const t = v[kind];
    if (isObj(t) && typeof t.target === 'string') return { kind, target: t.target };
  }
  for (const kind of ['accept', 'drop', 'return', 'continue'] as const) if (kind in v) return { kind };
  return undefined;
}

/** Parses `nft -j list table` output; throws on anything that is not an nft listing. */
export function parseProxyTable(json: string): ProxyTable {
  let doc: unknown;
  try {
    doc = JSON.parse(json);
  } catch (err) {
    throw new Error('nft -j output is not JSON', { cause: err });
  }
  if (!isObj(doc) || !Array.isArray(doc.nftables)) throw new Error('nft -j output has no "nftables" list');
  if (doc.nftables.length > MAX_OBJECTS) throw new Error(`nft -j output has more than ${MAX_OBJECTS} objects`);
  const t: ProxyTable = { chains: Object.create(null), sets: Object.create(null), maps: Object.create(null) };
  for (const o of doc.nftables) {
    if (!isObj(o)) continue;
    if (isObj(o.chain) && typeof o.chain.name === 'string') t.chains[o.chain.name] ??= [];
    if (isObj(o.rule) && typeof o.rule.chain === 'string' && Array.isArray(o.rule.expr)) {
      t.chains[o.rule.chain] ??= [];
      t.chains[o.rule.chain]!.push({ handle: typeof o.rule.handle === 'number' ? o.rule.handle : undefined, expr: o.rule.expr });
    }
    const set = isObj(o.set) ? o.set : undefined;
    if (set && typeof set.name === 'string') {
      const elems = Array.isArray(set.elem) ? set.elem : [];
      t.sets[set.name] = elems
        .map(keyParts)
        .filter((k): k is Array<string | number> => !!k)
        .map((k) => k.join(' . '));
    }
    const map = isObj(o.map) ? o.map : undefined;
    if (map && typeof map.name === 'string' && map.map === 'verdict') {
      const out: MapElement[] = [];
      for (const e of Array.isArray(map.elem) ? map.elem : []) {
        if (!Array.isArray(e) || e.length !== 2) continue;
        const key = keyParts(e[0]);
        const verdict = verdictOf(e[1]);
        if (key && verdict) out.push({ key, verdict });
      }
      t.maps[map.name] = out;
    }
  }
  return t;
}

/** The packet being walked through the table. */
export interface Packet {
  saddr: string;
  daddr: string;
  protocol: 'tcp' | 'udp';
  dport?: number;
  /** Addresses of this node (for `fib saddr|daddr type local`). */
  local: ReadonlySet<string>;
}

/** A terminal result of one path through the chains. */
export interface Outcome {
  verdict: 'dnat' | 'reject' | 'drop' | 'accept' | 'continue';
  /** DNAT target. */
  addr?: string;
  port?: number;
  /** `random 1/2` per fork, `affinity` for a ClientIP set hit. */
  choice: string[];
  /** The mark-for-masquerade bit was set on the way. */
  masquerade: boolean;
  /** Chains entered, in order. */
  chains: string[];
  /** Verdict-map lookups that matched: `service-ips[198.19.0.10 . tcp . 80]`. */
  lookups: Array<{ map: string; key: string; target?: string }>;
  /** Internal: the current chain ended by `return` or a goto'd chain's end; its caller continues. */
  ended?: boolean;
}

/** What an evaluation found besides outcomes: rules it could not read. */
export interface EvalNotes {
  unknown: string[];
}

const MAX_DEPTH = 32;
const MAX_OUTCOMES = 4096;

type Val = string | number | undefined;

function ipNum(s: string): number | undefined {
  const m = /^(\d{1,3})\.(\d{1,3})\.(\d{1,3})\.(\d{1,3})$/.exec(s);
  if (!m) return undefined;
  const o = m.slice(1).map(Number);
  if (o.some((x) => x > 255)) return undefined;
  return ((o[0]! << 24) | (o[1]! << 16) | (o[2]! << 8) | o[3]!) >>> 0;
}

class Evaluator {
  readonly #t: ProxyTable;
  readonly #p: Packet;
  readonly notes: EvalNotes = { unknown: [] };
  #count = 0;

  constructor(table: ProxyTable, pkt: Packet) {
    this.#t = table;
    this.#p = pkt;
  }

  /** The value of a match's left side; `null` when the packet has no such field (no match). */
  #left(l: unknown): Val | null {
    if (!isObj(l)) return undefined;
    const p = this.#p;
    if (isObj(l.payload)) {
      const { protocol, field } = l.payload;
      if (protocol === 'ip') return field === 'saddr' ? p.saddr : field === 'daddr' ? p.daddr : undefined;
      if (protocol === 'tcp' || protocol === 'udp' || protocol === 'th') {
        if (protocol !== 'th' && protocol !== p.protocol) return null;
        if (field === 'dport') return p.dport ?? null;
        return undefined;
      }
      return undefined;
    }
    if (isObj(l.meta)) return l.meta.key === 'l4proto' || l.meta.key === 'protocol' ? p.protocol : undefined;
    if (isObj(l.fib) && l.fib.result === 'type' && Array.isArray(l.fib.flags)) {
      const which = l.fib.flags.includes('saddr') ? p.saddr : l.fib.flags.includes('daddr') ? p.daddr : undefined;
      return which === undefined ? undefined : p.local.has(which) ? 'local' : 'unicast';
    }
    if (isObj(l.ct) && l.ct.key === 'state') return 'new';
    if (isObj(l) && Array.isArray(l.concat)) {
      const parts = l.concat.map((x) => this.#left(x));
      if (parts.includes(null)) return null;
      return parts.some((x) => x === undefined) ? undefined : parts.join(' . ');
    }
    return undefined;
  }

  /** Does `v` equal / fall in `r`? undefined when `r` is a form this evaluator does not know. */
  #in(v: string | number, r: unknown): boolean | undefined {
    if (typeof r === 'string' && r.startsWith('@')) {
      const set = this.#t.sets[r.slice(1)];
      return set ? set.includes(String(v)) : false;
    }
    if (typeof r === 'string' || typeof r === 'number') return String(v) === String(r);
    if (isObj(r) && isObj(r.prefix) && typeof r.prefix.addr === 'string' && typeof r.prefix.len === 'number') {
      const a = ipNum(String(v));
      const n = ipNum(r.prefix.addr);
      if (a === undefined || n === undefined || r.prefix.len < 0 || r.prefix.len > 32) return undefined;
      const mask = r.prefix.len === 0 ? 0 : (~0 << (32 - r.prefix.len)) >>> 0;
      return (a & mask) >>> 0 === (n & mask) >>> 0;
    }
    if (isObj(r) && Array.isArray(r.range) && r.range.length === 2) {
      const [lo, hi] = r.range.map((x) => (typeof x === 'number' ? x : ipNum(String(x))));
      const x = typeof v === 'number' ? v : ipNum(v);
      return lo === undefined || hi === undefined || x === undefined ? undefined : x >= lo && x <= hi;
    }
    if (isObj(r) && Array.isArray(r.set)) {
      const hits = r.set.map((e) => this.#in(v, e));
      return hits.includes(true) ? true : hits.includes(undefined) ? undefined : false;
    }
    if (Array.isArray(r)) return this.#in(v, { set: r });
    return undefined;
  }

  /** A match expression: true, false, or undefined (not understood). */
  #match(m: Record<string, unknown>): boolean | undefined {
    const v = this.#left(m.left);
    if (v === null) return false;
    if (v === undefined) return undefined;
    const hit = this.#in(v, m.right);
    if (hit === undefined) return undefined;
    return m.op === '!=' ? !hit : m.op === '==' || m.op === 'in' ? hit : undefined;
  }

  chain(name: string, st: Outcome, depth: number): Outcome[] {
    const rules = this.#t.chains[name];
    if (!rules) {
      this.notes.unknown.push(`chain "${name}" is referenced but not in the table`);
      return [{ ...st, verdict: 'continue' }];
    }
    if (depth > MAX_DEPTH) throw new Error(`chains nest deeper than ${MAX_DEPTH} at "${name}" (a loop?)`);
    return this.#rules(name, rules, 0, { ...st, chains: [...st.chains, name] }, depth).map((o) => (o.ended ? { ...o, ended: undefined } : o));
  }

  #rules(chain: string, rules: NftRule[], from: number, st: Outcome, depth: number): Outcome[] {
    for (let i = from; i < rules.length; i++) {
      const res = this.#rule(chain, rules[i]!, st, depth);
      if (res === 'nomatch') continue;
      const out: Outcome[] = [];
      for (const o of res) {
        if (o.verdict === 'continue' && !o.ended) out.push(...this.#rules(chain, rules, i + 1, o, depth));
        else out.push(o);
      }
      return this.#bound(out);
    }
    return [{ ...st, verdict: 'continue' }];
  }

  #bound(out: Outcome[]): Outcome[] {
    this.#count += out.length;
    if (this.#count > MAX_OUTCOMES) throw new Error(`more than ${MAX_OUTCOMES} paths through the proxy table`);
    return out;
  }

  /** Runs one rule; 'nomatch' when a match fails, else the outcomes ('continue' = next rule). */
  #rule(chain: string, rule: NftRule, st: Outcome, depth: number): Outcome[] | 'nomatch' {
    let states: Outcome[] = [st];
    for (const e of rule.expr) {
      if (!isObj(e)) continue;
      if (isObj(e.match)) {
        const hit = this.#match(e.match);
        if (hit === undefined) this.notes.unknown.push(`${chain} rule ${rule.handle ?? '?'}: match ${JSON.stringify(e.match).slice(0, 200)} not understood (taken as no match)`);
        if (hit !== true) return 'nomatch';
        if (typeof e.match.right === 'string' && e.match.right.startsWith('@aff-')) states = states.map((s) => ({ ...s, choice: [...s.choice, 'affinity'] }));
        continue;
      }
      const next: Outcome[] = [];
      for (const s of states) {
        const r = this.#statement(chain, rule, e, s, depth);
        if (r === 'nomatch') return 'nomatch';
        next.push(...r);
      }
      // statements after a terminal verdict never run; forks that continue run the rest
      const terminal = next.filter((s) => s.verdict !== 'continue' || s.ended);
      const going = next.filter((s) => s.verdict === 'continue' && !s.ended);
      if (!going.length) return terminal;
      states = going;
      if (terminal.length) {
        const rest = this.#restOf(chain, rule, e, going, depth);
        return rest === 'nomatch' ? terminal : [...terminal, ...rest];
      }
    }
    return states.map((s) => ({ ...s, verdict: 'continue' }));
  }

  /** Runs the statements after `after` in `rule` for `states` (a fork where some arms ended). */
  #restOf(chain: string, rule: NftRule, after: unknown, states: Outcome[], depth: number): Outcome[] | 'nomatch' {
    const idx = rule.expr.indexOf(after);
    const rest: NftRule = { handle: rule.handle, expr: rule.expr.slice(idx + 1) };
    const out: Outcome[] = [];
    for (const s of states) {
      const r = this.#rule(chain, rest, s, depth);
      if (r === 'nomatch') return 'nomatch';
      out.push(...r);
    }
    return out;
  }

  #verdict(v: MapElement['verdict'], st: Outcome, depth: number): Outcome[] {
    switch (v.kind) {
      case 'jump':
        return this.chain(v.target, st, depth + 1);
      case 'goto':
        // a return from a goto'd chain returns to our caller: 'continue' there is the caller's
        return this.chain(v.target, st, depth + 1).map((o) => (o.verdict === 'continue' ? { ...o, ended: true } : o));
      case 'return':
        return [{ ...st, verdict: 'continue', ended: true }];
      case 'continue':
        return [{ ...st, verdict: 'continue' }];
      default:
        return [{ ...st, verdict: v.kind }];
    }
  }

  #statement(chain: string, rule: NftRule, e: Record<string, unknown>, st: Outcome, depth: number): Outcome[] | 'nomatch' {
    const v = verdictOf(e);
    if (v) return this.#verdict(v, st, depth);
    if ('counter' in e || 'set' in e || 'log' in e || 'limit' in e || 'notrack' in e) return [st];
    if (isObj(e.mangle)) {
      const val = JSON.stringify(e.mangle.value ?? '');
      const masq = isObj(e.mangle.key) && isObj(e.mangle.key.meta) && e.mangle.key.meta.key === 'mark' && /"\|":\[\{"meta":\{"key":"mark"\}\},16384\]/.test(val);
      return [masq ? { ...st, masquerade: true } : st];
    }
    if (isObj(e.dnat)) {
      const addr = typeof e.dnat.addr === 'string' ? e.dnat.addr : undefined;
      const port = typeof e.dnat.port === 'number' ? e.dnat.port : undefined;
      return [{ ...st, verdict: 'dnat', addr, port }];
    }
    if ('reject' in e) return [{ ...st, verdict: 'reject' }];
    if ('masquerade' in e || 'snat' in e) return [{ ...st, verdict: 'accept' }];
    if (isObj(e.vmap)) return this.#vmap(chain, rule, e.vmap, st, depth);
    this.notes.unknown.push(`${chain} rule ${rule.handle ?? '?'}: statement ${Object.keys(e)[0]} not understood (ignored)`);
    return [st];
  }

  #vmap(chain: string, rule: NftRule, vm: Record<string, unknown>, st: Outcome, depth: number): Outcome[] | 'nomatch' {
    const key = vm.key;
    if (isObj(key) && isObj(key.numgen) && key.numgen.mode === 'random' && typeof key.numgen.mod === 'number') {
      const arms = isObj(vm.data) && Array.isArray(vm.data.set) ? vm.data.set : [];
      const n = key.numgen.mod;
      const out: Outcome[] = [];
      for (const arm of arms) {
        if (!Array.isArray(arm) || arm.length !== 2) continue;
        const target = verdictOf(arm[1]);
        if (!target || typeof arm[0] !== 'number' || arm[0] >= n) continue;
        out.push(...this.#verdict(target, { ...st, choice: [...st.choice, `random 1/${n}`] }, depth));
      }
      // arms the modulus never reaches, or values it reaches without an arm (no match there)
      if (arms.length !== n) this.notes.unknown.push(`${chain} rule ${rule.handle ?? '?'}: numgen mod ${n} has ${arms.length} arm(s)`);
      return out.length ? out : 'nomatch';
    }
    const v = this.#left(key);
    if (v === null) return 'nomatch';
    if (v === undefined || typeof vm.data !== 'string' || !vm.data.startsWith('@')) {
      this.notes.unknown.push(`${chain} rule ${rule.handle ?? '?'}: vmap ${JSON.stringify(vm).slice(0, 200)} not understood (taken as no match)`);
      return 'nomatch';
    }
    const name = vm.data.slice(1);
    const el = (this.#t.maps[name] ?? []).find((m) => m.key.join(' . ') === String(v));
    if (!el) return 'nomatch';
    const lookups = [...st.lookups, { map: name, key: String(v), target: 'target' in el.verdict ? el.verdict.target : undefined }];
    return this.#verdict(el.verdict, { ...st, lookups }, depth);
  }
}

/**
 * Runs `pkt` through base chain `chain` of `table`. Every way it can end is an outcome (one per
 * random arm); `notes.unknown` lists what could not be evaluated.
 */
export function evaluate(table: ProxyTable, chain: string, pkt: Packet): { outcomes: Outcome[]; notes: EvalNotes } {
  const ev = new Evaluator(table, pkt);
  const start: Outcome = { verdict: 'continue', choice: [], masquerade: false, chains: [], lookups: [] };
  const outcomes = ev.chain(chain, start, 0).map(({ ended: _, ...o }) => o);
  return { outcomes, notes: ev.notes };
}

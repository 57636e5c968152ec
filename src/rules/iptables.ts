/**
 * ACCEPT rules for the pod network in the host's iptables FORWARD chain, in weft's own chain
 * `WEFT-FORWARD` (`-s <Network> -j ACCEPT`, `-d <Network> -j ACCEPT`, as flannel's FLANNEL-FWD),
 * jumped to from FORWARD.
 *
 * Why: netfilter runs every base chain registered on a hook, and a drop in any of them is final.
 * The accepting `forward` chain in `table ip weft` (src/rules/nft.ts) does not stop a host whose
 * iptables FORWARD policy is DROP (Docker, ufw and firewalld set one) from dropping pod traffic.
 *
 * Which iptables: a node drives iptables either through nf_tables (iptables-nft, which keeps its
 * chains in nft's `table ip filter`) or through the legacy x_tables; a host in transition can
 * have both, and then both hooks run. Instead of picking one mode by counting rules (kube-proxy's
 * iptables-wrapper does that to choose ONE binary), weft looks at each backend and keeps its
 * rules in every one whose filter FORWARD chain exists, since either can drop:
 *   - nft: nft itself is asked whether `table ip filter` has a `FORWARD` chain
 *     (`iptables-nft-save` prints empty built-in chains that do not exist);
 *   - legacy: the kernel lists `filter` in /proc/net/ip_tables_names (asking iptables-legacy
 *     would register the table, so it is not asked first).
 * A backend without a FORWARD chain cannot drop anything, and nothing is created there. The
 * caller checks again periodically ({@link iptablesForwardDrift}), so a firewall that starts
 * after weftd is noticed.
 *
 * No gap: one `iptables-restore --noflush` per backend declares WEFT-FORWARD (which empties it)
 * and refills it in the same commit, which both backends apply atomically; the jump is added only
 * when missing. Nothing is removed when weftd stops or restarts ({@link removeIptablesForward} is
 * for uninstalling).
 *
 * Position: the jump is inserted at the top of FORWARD, where flannel appends it, because
 * firewalld ends FORWARD with a REJECT rule that an appended jump never reaches. Afterwards only
 * its presence is checked, not its position: Docker re-inserts its own jumps at the top when it
 * restarts, and fighting it over the first slot would loop.
 */
import { execFile } from 'node:child_process';
import { existsSync, readFileSync } from 'node:fs';
import { formatCIDR, type IPv4Net } from '../ip/ipv4.ts';
import { defaultNftBin } from './nft.ts';

/** weft's own chain in the filter table. */
export const FORWARD_CHAIN = 'WEFT-FORWARD';

/** `nft`: iptables-nft (nf_tables); `legacy`: iptables-legacy (x_tables). */
export type IptablesBackend = 'nft' | 'legacy';

export const IPTABLES_BACKENDS: readonly IptablesBackend[] = ['nft', 'legacy'];

/** What one backend's filter table holds of weft's (from `iptables-save -t filter`). */
export interface ForwardObserved {
  /** Rules in FORWARD that are exactly `-j WEFT-FORWARD`. */
  jumps: number;
  /** WEFT-FORWARD's rules as iptables-save prints them (`-A WEFT-FORWARD ...`); undefined: no chain. */
  chain: string[] | undefined;
}

/** The rules WEFT-FORWARD must hold, in iptables-save's canonical form. */
export function forwardRules(network: IPv4Net): string[] {
  const net = formatCIDR(network);
  return [`-A ${FORWARD_CHAIN} -s ${net} -j ACCEPT`, `-A ${FORWARD_CHAIN} -d ${net} -j ACCEPT`];
}

const JUMP = `-A FORWARD -j ${FORWARD_CHAIN}`;

/** Reads weft's part of the `*filter` section of iptables-save output (pure, for tests). */
export function parseForwardSave(text: string): ForwardObserved {
  let inFilter = false;
  let jumps = 0;
  let chain: string[] | undefined;
  for (const raw of text.split('\n')) {
    const line = raw.trim();
    if (line.startsWith('*')) {
      inFilter = line === '*filter';
      continue;
    }
    if (!inFilter) continue;
    if (line === 'COMMIT') {
      inFilter = false;
    } else if (line.startsWith(`:${FORWARD_CHAIN} `)) {
      chain ??= [];
    } else if (line === JUMP) {
      jumps++;
    } else if (line.startsWith(`-A ${FORWARD_CHAIN} `)) {
      chain ??= [];
      chain.push(line);
    }
  }
  return { jumps, chain };
}

/**
 * Why `observed` is not what {@link forwardRestoreScript} leaves behind for `network`, or
 * undefined when it is (pure).
 */
export function forwardDrift(network: IPv4Net, observed: ForwardObserved): string | undefined {
  if (!observed.chain) return `chain ${FORWARD_CHAIN} missing`;
  const want = forwardRules(network);
  if (observed.chain.length !== want.length || observed.chain.some((r, i) => r !== want[i])) return `chain ${FORWARD_CHAIN} changed`;
  if (observed.jumps === 0) return `jump from FORWARD to ${FORWARD_CHAIN} missing`;
  if (observed.jumps > 1) return `${observed.jumps} jumps from FORWARD to ${FORWARD_CHAIN}`;
  return undefined;
}

/**
 * The `iptables-restore --noflush` input that (re)writes WEFT-FORWARD for `network` and leaves
 * exactly one jump to it from FORWARD, given what the table holds now (pure).
 */
export function forwardRestoreScript(network: IPv4Net, observed: ForwardObserved): string {
  const lines = ['*filter', `:${FORWARD_CHAIN} - [0:0]`, ...forwardRules(network)];
  if (observed.jumps === 0) lines.push(`-I FORWARD 1 -j ${FORWARD_CHAIN}`);
  for (let i = 1; i < observed.jumps; i++) lines.push(`-D FORWARD -j ${FORWARD_CHAIN}`);
  lines.push('COMMIT', '');
  return lines.join('\n');
}

/** Where the iptables and nft binaries are (defaults: the system's, found in the sbin directories). */
export interface IptablesOptions {
  /** Directory holding iptables-{nft,legacy}-{save,restore}. */
  binDir?: string;
  nftBin?: string;
  /** Only look at these backends (default both). */
  backends?: readonly IptablesBackend[];
}

function iptablesBin(backend: IptablesBackend, tool: 'save' | 'restore', opts: IptablesOptions): string {
  const name = `iptables-${backend}-${tool}`;
  if (opts.binDir) return `${opts.binDir}/${name}`;
  return ['/usr/sbin', '/sbin', '/usr/bin'].map((d) => `${d}/${name}`).find((p) => existsSync(p)) ?? name;
}

function run(bin: string, args: string[], input?: string): Promise<string> {
  return new Promise((resolve, reject) => {
    const child = execFile(bin, args, { encoding: 'utf8', timeout: 30_000, maxBuffer: 16 << 20 }, (err, out, stderr) => {
      if (err) reject(new Error(`${bin} ${args.join(' ')}: ${stderr.trim() || err.message}`, { cause: err }));
      else resolve(out);
    });
    // A tool that exits without reading its input must not take weftd down with EPIPE; its exit
    // status carries the failure.
    child.stdin?.on('error', () => {});
    child.stdin?.end(input ?? '');
  });
}

/** True when nft's `table ip filter` (iptables-nft's) has a FORWARD chain. */
async function nftHasForward(opts: IptablesOptions): Promise<boolean> {
  const out = await run(opts.nftBin ?? defaultNftBin(), ['-j', 'list', 'chains', 'ip']);
  const doc = JSON.parse(out) as { nftables?: Array<{ chain?: { table?: string; name?: string } }> };
  return (doc.nftables ?? []).some((o) => o.chain?.table === 'filter' && o.chain.name === 'FORWARD');
}

/** True when the legacy filter table is registered in this network namespace. */
function legacyHasForward(): boolean {
  // /proc/net follows the reading process's network namespace; absent without x_tables.
  try {
    return readFileSync('/proc/net/ip_tables_names', 'utf8').split('\n').includes('filter');
  } catch {
    return false;
  }
}

/** The backends whose filter FORWARD chain exists here (see the module note). */
export async function iptablesForwardBackends(opts: IptablesOptions = {}): Promise<IptablesBackend[]> {
  const out: IptablesBackend[] = [];
  for (const b of opts.backends ?? IPTABLES_BACKENDS) {
    if (b === 'nft' ? await nftHasForward(opts) : legacyHasForward()) out.push(b);
  }
  return out;
}

/** weft's part of one backend's filter table as the kernel has it now. */
export async function readIptablesForward(backend: IptablesBackend, opts: IptablesOptions = {}): Promise<ForwardObserved> {
  return parseForwardSave(await run(iptablesBin(backend, 'save', opts), ['-t', 'filter']));
}

/** What {@link ensureIptablesForward} did in one backend. */
export interface ForwardReport {
  backend: IptablesBackend;
  /** Why it was rewritten (undefined: it was already in place; it is rewritten anyway). */
  drift: string | undefined;
}

async function eachBackend<T>(opts: IptablesOptions, fn: (b: IptablesBackend) => Promise<T>): Promise<T[]> {
  const out: T[] = [];
  const errors: string[] = [];
  for (const b of await iptablesForwardBackends(opts)) {
    try {
      out.push(await fn(b));
    } catch (err) {
      errors.push(`iptables-${b}: ${(err as Error).message}`);
    }
  }
  if (errors.length) throw new Error(errors.join('; '));
  return out;
}

/**
 * Writes WEFT-FORWARD for `network` and its jump in every backend that has a FORWARD chain
 * (atomically per backend, no moment without the ACCEPT rules), then reads it back. Idempotent.
 * Rejects when a backend fails (after trying the others) or reads back other than written.
 */
export async function ensureIptablesForward(network: IPv4Net, opts: IptablesOptions = {}): Promise<ForwardReport[]> {
  return eachBackend(opts, async (backend) => {
    const before = await readIptablesForward(backend, opts);
    await run(iptablesBin(backend, 'restore', opts), ['-w', '5', '--noflush'], forwardRestoreScript(network, before));
    const after = forwardDrift(network, await readIptablesForward(backend, opts));
    if (after) throw new Error(`rules read back differ from those written (${after})`);
    return { backend, drift: forwardDrift(network, before) };
  });
}

/**
 * Why the rules are not (all) in place, e.g. `iptables-legacy: jump from FORWARD to
 * WEFT-FORWARD missing`; undefined when every backend with a FORWARD chain has them. A backend
 * whose FORWARD chain appeared since the last {@link ensureIptablesForward} shows up here too.
 */
export async function iptablesForwardDrift(network: IPv4Net, opts: IptablesOptions = {}): Promise<string | undefined> {
  const reasons = await eachBackend(opts, async (b) => {
    const why = forwardDrift(network, await readIptablesForward(b, opts));
    return why && `iptables-${b}: ${why}`;
  });
  const found = reasons.filter((r) => r !== undefined);
  return found.length ? found.join('; ') : undefined;
}

/** Removes the jumps and WEFT-FORWARD from every backend (uninstall; idempotent). */
export async function removeIptablesForward(opts: IptablesOptions = {}): Promise<void> {
  await eachBackend(opts, async (backend) => {
    const seen = await readIptablesForward(backend, opts);
    if (!seen.chain && !seen.jumps) return;
    const lines = ['*filter'];
    for (let i = 0; i < seen.jumps; i++) lines.push(`-D FORWARD -j ${FORWARD_CHAIN}`);
    if (seen.chain) lines.push(`-F ${FORWARD_CHAIN}`, `-X ${FORWARD_CHAIN}`);
    lines.push('COMMIT', '');
    await run(iptablesBin(backend, 'restore', opts), ['-w', '5', '--noflush'], lines.join('\n'));
  });
}

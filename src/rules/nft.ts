/**
 * Forward and masquerade rules in weft's own nftables table (`table ip weft`), never touching
 * anybody else's chains. The `forward` chain (accept from and to the pod network) is always
 * there; the nat `postrouting` chain only with masquerading (--ip-masq). A host's iptables
 * FORWARD chain can still drop what this table accepts: src/rules/iptables.ts covers that.
 *
 * The table is replaced in ONE `nft -f` transaction: `add table` (so the delete cannot fail),
 * `delete table`, then the full new table. nftables applies a transaction atomically, so there is
 * no moment without rules (flannel flushes and re-adds its iptables chains, which breaks egress
 * during restarts: flannel#2237).
 *
 * The masquerade rules are flannel's iptables ones (FLANNEL-POSTRTG), including the early
 * RETURN for packets kube-proxy marked for its own masquerade. flannel's nftables variant differs
 * in two places that look unintended, and weft follows the iptables rules, which most clusters
 * run: it matches the mark exactly (`meta mark 0x4000`) where kube-proxy sets one bit, and returns
 * `ip saddr != <our subnet> ip daddr <Network>`, which makes its last masquerade rule unreachable.
 *
 * `nft` and `iptables-restore` are the ecosystem's own interfaces here (kube-proxy drives them the
 * same way), which is why src/rules/ is the one place in src/ that runs child processes.
 */
import { execFile } from 'node:child_process';
import { existsSync } from 'node:fs';
import { formatCIDR, type IPv4Net } from '../ip/ipv4.ts';

export const TABLE = 'weft';

/**
 * kube-proxy's masquerade mark (its `--masquerade-bit` 14, both in iptables and nftables mode),
 * tested as a bit like flannel's `-m mark --mark 0x4000/0x4000`.
 */
export const KUBE_PROXY_MASQ_MARK = '0x4000';

export interface RulesSpec {
  /** The whole pod network. */
  network: IPv4Net;
  /** This node's subnet. */
  subnet: IPv4Net;
  /** Add the nat postrouting chain (--ip-masq). The forward chain is always there. */
  masquerade: boolean;
}

/** The complete `nft -f` script for `spec` (pure, for tests and `weftctl`). */
export function rulesScript(spec: RulesSpec): string {
  const net = formatCIDR(spec.network);
  const sub = formatCIDR(spec.subnet);
  const lines = [
    `add table ip ${TABLE}`,
    `delete table ip ${TABLE}`,
    `table ip ${TABLE} {`,
    '  chain forward {',
    '    type filter hook forward priority filter; policy accept;',
    `    ip saddr ${net} accept`,
    `    ip daddr ${net} accept`,
    '  }',
  ];
  if (spec.masquerade) {
    // flannel's masquerade rules (pkg/trafficmngr/iptables: FLANNEL-POSTRTG), in its order.
    lines.push(
      '  chain postrouting {',
      '    type nat hook postrouting priority srcnat; policy accept;',
      // kube-proxy marked it for its own masquerade: NATing it here too would NAT it twice
      `    meta mark & ${KUBE_PROXY_MASQ_MARK} == ${KUBE_PROXY_MASQ_MARK} return`,
      // our pods -> any pod, and any pod -> our pods, keep their source address
      `    ip saddr ${sub} ip daddr ${net} return`,
      `    ip saddr ${net} ip daddr ${sub} return`,
      // outside -> our own pods keeps its source
      `    ip saddr != ${net} ip daddr ${sub} return`,
      // pod -> outside (not multicast) leaves with the node's address
      `    ip saddr ${net} ip daddr != 224.0.0.0/4 masquerade fully-random`,
      // outside -> other nodes' pods is masqueraded so replies come back through us
      `    ip saddr != ${net} ip daddr ${net} masquerade fully-random`,
      '  }',
    );
  }
  lines.push('}', '');
  return lines.join('\n');
}

/**
 * The system's nft. Looked up in the sbin directories first: a PATH that starts with
 * node_modules/.bin would find an unrelated npm package's `nft`.
 */
export function defaultNftBin(): string {
  return ['/usr/sbin/nft', '/sbin/nft', '/usr/bin/nft'].find((p) => existsSync(p)) ?? 'nft';
}

/** Runs `nft -f -` with `script`; rejects with nft's stderr. */
export function nftApply(script: string, opts: { nftBin?: string; signal?: AbortSignal } = {}): Promise<void> {
  return new Promise((resolve, reject) => {
    const child = execFile(opts.nftBin ?? defaultNftBin(), ['-f', '-'], { encoding: 'utf8', timeout: 30_000 }, (err, _out, stderr) => {
      if (err) reject(new Error(`nft: ${stderr.trim() || err.message}`, { cause: err }));
      else resolve();
    });
    child.stdin?.end(script);
  });
}

/**
 * True when weft's table is present with the chains `spec` asks for (a cheap shape check, for
 * `weftctl`-style callers; the daemon compares {@link readRules} fingerprints, which also
 * notices a rule deleted or edited inside the table).
 */
export function rulesPresent(spec: RulesSpec, opts: { nftBin?: string } = {}): Promise<boolean> {
  return new Promise((resolve) => {
    execFile(opts.nftBin ?? defaultNftBin(), ['list', 'table', 'ip', TABLE], { encoding: 'utf8', timeout: 30_000 }, (err, out) => {
      if (err) return resolve(false);
      const net = formatCIDR(spec.network);
      const want = ['chain forward', `ip saddr ${net} accept`, `ip daddr ${net} accept`];
      if (spec.masquerade) want.push('chain postrouting', `ip saddr ${formatCIDR(spec.subnet)} ip daddr ${net} return`, 'masquerade');
      resolve(want.every((w) => out.includes(w)));
    });
  });
}

/** Drops `handle` keys (they change every time the table is replaced) at any depth. */
function withoutHandles(v: unknown): unknown {
  if (Array.isArray(v)) return v.map(withoutHandles);
  if (v && typeof v === 'object') {
    const out: Record<string, unknown> = {};
    for (const [k, x] of Object.entries(v)) if (k !== 'handle') out[k] = withoutHandles(x);
    return out;
  }
  return v;
}

/**
 * A fingerprint of `nft -j list table ip weft` (chains, their hooks and policies, every rule's
 * expressions, in order; handles left out) from nft's JSON output, (pure, for tests).
 */
export function rulesFingerprint(json: string): string {
  const doc = JSON.parse(json) as { nftables?: Array<Record<string, unknown>> };
  const items = (doc.nftables ?? []).filter((o) => !('metainfo' in o));
  return JSON.stringify(withoutHandles(items));
}

/**
 * The fingerprint of weft's table as the kernel has it now, or undefined when there is no
 * table. Comparing it with the one read right after {@link ensureRules} notices any change
 * inside the table: a rule deleted, edited or added, a chain's policy changed.
 */
export function readRules(opts: { nftBin?: string } = {}): Promise<string | undefined> {
  return new Promise((resolve, reject) => {
    execFile(opts.nftBin ?? defaultNftBin(), ['-j', 'list', 'table', 'ip', TABLE], { encoding: 'utf8', timeout: 30_000, maxBuffer: 16 << 20 }, (err, out, stderr) => {
      if (err) {
        // "No such file or directory": the table is not there.
        if (/No such file or directory|does not exist/i.test(stderr)) return resolve(undefined);
        return reject(new Error(`nft -j list table ip ${TABLE}: ${stderr.trim() || err.message}`, { cause: err }));
      }
      try {
        resolve(rulesFingerprint(out));
      } catch (cause) {
        reject(new Error(`nft -j list table ip ${TABLE}: unreadable output`, { cause }));
      }
    });
  });
}

/**
 * Installs or atomically replaces weft's table and returns its fingerprint as read back (see
 * {@link readRules}), the reference later checks compare against; undefined when it cannot be
 * read back (an nft without JSON output), so callers fall back to {@link rulesPresent}.
 */
export async function ensureRules(spec: RulesSpec, opts: { nftBin?: string } = {}): Promise<string | undefined> {
  await nftApply(rulesScript(spec), opts);
  return readRules(opts).catch(() => undefined);
}

/** Removes weft's table (idempotent). */
export async function removeRules(opts: { nftBin?: string } = {}): Promise<void> {
  await nftApply(`add table ip ${TABLE}\ndelete table ip ${TABLE}\n`, opts);
}

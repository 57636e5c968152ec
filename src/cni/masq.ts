/**
 * Per-pod masquerade, for nodes where weftd does not masquerade (FLANNEL_IPMASQ=false): what
 * flannel's CNI plugin gets by delegating with the bridge plugin's `ipMasq`, so pods reach the
 * outside either way. One nftables table of the plugin's own, `ip weft-pods`, never anybody
 * else's chains: a set of pod addresses and a nat postrouting chain that leaves pod -> pod
 * network traffic alone (the whole FLANNEL_NETWORK, not only this node's subnet as the bridge
 * plugin does: pods on other nodes see the real source) and masquerades the rest but multicast.
 * ADD adds the pod's address to the set; DEL and GC remove it before the address is released.
 * Each change is one `nft -f -` transaction, so concurrent ADDs never see a half-made table.
 */
import { existsSync } from 'node:fs';

export const MASQ_TABLE = 'weft-pods';

/** Masquerade for pod addresses (test doubles implement it in memory). */
export interface PodMasq {
  /** Masquerades traffic from `ip` leaving `network` (CIDR). Idempotent. */
  add(ip: string, network: string): Promise<void>;
  /** Stops masquerading `ip`; absent already (or no table) is fine. */
  remove(ip: string): Promise<void>;
}

/** The ADD transaction: table, set, chain (rules replaced in place), and the pod's element. */
export function masqAddScript(ip: string, network: string): string {
  const t = `ip ${MASQ_TABLE}`;
  return [
    `add table ${t}`,
    `add set ${t} pods { type ipv4_addr; }`,
    `add chain ${t} postrouting { type nat hook postrouting priority srcnat; policy accept; }`,
    `flush chain ${t} postrouting`,
    `add rule ${t} postrouting ip saddr @pods ip daddr ${network} return`,
    `add rule ${t} postrouting ip saddr @pods ip daddr != 224.0.0.0/4 masquerade`,
    `add element ${t} pods { ${ip} }`,
    '',
  ].join('\n');
}

/** Where nft is: the sbin directories first (a PATH may hold an unrelated npm `nft`). */
function nftBin(): string {
  return ['/usr/sbin/nft', '/sbin/nft', '/usr/bin/nft'].find((p) => existsSync(p)) ?? 'nft';
}

function nft(script: string): Promise<{ ok: boolean; stderr: string }> {
  // Loaded only here: a node that masquerades in weftd never pays for child_process.
  const { execFile } = process.getBuiltinModule('node:child_process');
  return new Promise((resolve, reject) => {
    const child = execFile(nftBin(), ['-f', '-'], { encoding: 'utf8', timeout: 20_000 }, (err, _out, stderr) => {
      if (err && (err as NodeJS.ErrnoException).code === 'ENOENT') return reject(new Error('nft not found (needed for per-pod masquerade, FLANNEL_IPMASQ=false)', { cause: err }));
      resolve({ ok: !err, stderr: String(stderr).trim() });
    });
    child.stdin?.end(script);
  });
}

/** The system's nftables, through the `nft` binary. */
export const systemMasq: PodMasq = {
  async add(ip, network) {
    const r = await nft(masqAddScript(ip, network));
    if (!r.ok) throw new Error(`set up masquerade for ${ip}: nft: ${r.stderr}`);
  },
  async remove(ip) {
    const r = await nft(`delete element ip ${MASQ_TABLE} pods { ${ip} }\n`);
    // No table, no set, or no such element: nothing to undo.
    if (!r.ok && !/No such file or directory|does not exist/i.test(r.stderr)) throw new Error(`remove masquerade for ${ip}: nft: ${r.stderr}`);
  },
};

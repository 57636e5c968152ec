/**
 * `weftctl trace --probe`: sends one real packet from the source pod's namespace and reports
 * where this node saw it. The sightings come from named counters in a temporary nftables table
 * (`ip weft-trace-<random>`, removed afterwards, also on failure) whose rules match the probe
 * only: at prerouting before conntrack and NAT (it entered the node), at forward after DNAT
 * (which endpoint the kernel picked, the one thing the static walk cannot know), at postrouting
 * per output device (bridge or VXLAN device), at output for the VXLAN-encapsulated copy
 * (outer UDP to the peer node, matched on the inner source address at its fixed offset), and at
 * input (delivered to, or rejected by, the node). Counters rather than a capture: no tool beyond
 * nft is needed, and only the probe's own packets count.
 *
 * The sender runs as `nsenter --net=<pod netns> -- node -e ...` (or here, for a source address
 * of this node), bound to the source address so the kernel cannot pick another: a TCP connect
 * (one SYN, with retries counted), one UDP datagram, or one ICMP echo without a port. The pod's namespace is
 * `--src-netns`, or found among /run/netns: the one namespace with an interface carrying the
 * source address (and, when the node has a neighbor entry for it, that MAC). Ambiguity is an
 * error rather than a guess.
 */
import { execFile } from 'node:child_process';
import { existsSync, readdirSync, realpathSync } from 'node:fs';
import { randomBytes } from 'node:crypto';
import { join } from 'node:path';
import { UsageError } from '../../core/errors.ts';
import { parseIPv4 } from '../../ip/ipv4.ts';
import { openNetlink } from '../../netlink/index.ts';
import { openNetns, type NetNs } from '../../netns/index.ts';
import type { EncapHop, ProbeResult, ProbeSighting, TraceReport } from './model.ts';

/** Where CNI runtimes (containerd, CRI-O, podman) and `ip netns` put pod namespaces. */
export const NETNS_DIRS = ['/run/netns', '/var/run/netns'];
const MAX_NAMESPACES = 2048;

function nftBin(): string {
  return ['/usr/sbin/nft', '/sbin/nft', '/usr/bin/nft'].find((p) => existsSync(p)) ?? 'nft';
}

function exec(cmd: string, args: string[], opts: { input?: string; timeoutMs: number }): Promise<{ code: number; stdout: string; stderr: string }> {
  return new Promise((resolve, reject) => {
    const child = execFile(cmd, args, { encoding: 'utf8', timeout: opts.timeoutMs, killSignal: 'SIGKILL', maxBuffer: 8 << 20 }, (err, stdout, stderr) => {
      if (err && typeof (err as NodeJS.ErrnoException).code === 'string') return reject(new Error(`run "${cmd}"`, { cause: err }));
      resolve({ code: err ? ((err as { code?: number }).code ?? 1) : 0, stdout, stderr });
    });
    child.stdin?.on('error', () => {});
    child.stdin?.end(opts.input ?? '');
  });
}

async function nft(script: string): Promise<void> {
  const r = await exec(nftBin(), ['-f', '-'], { input: script, timeoutMs: 10_000 });
  if (r.code !== 0) throw new Error(`nft -f: ${r.stderr.trim().split('\n').slice(0, 4).join('; ')}`);
}

/**
 * The source pod's namespace: `explicit`, or the only namespace under {@link NETNS_DIRS} with
 * an interface holding `src` (whose MAC is `mac`, when given). Throws UsageError otherwise.
 */
export async function findSourceNetns(src: string, opts: { explicit?: string; mac?: string; dirs?: string[] } = {}): Promise<string> {
  if (opts.explicit) {
    openNetns(opts.explicit).close();
    return opts.explicit;
  }
  const found = new Map<string, string>();
  let seen = 0;
  for (const dir of opts.dirs ?? NETNS_DIRS) {
    let names: string[];
    try {
      names = readdirSync(dir);
    } catch {
      continue;
    }
    for (const name of names) {
      if (++seen > MAX_NAMESPACES) break;
      const path = join(dir, name);
      let ns: NetNs;
      try {
        ns = openNetns(path);
      } catch {
        continue;
      }
      try {
        const nl = openNetlink({ netns: ns });
        try {
          const addr = (await nl.addrs()).find((a) => a.ip === src);
          if (!addr) continue;
          if (opts.mac && (await nl.linkByIndex(addr.index)).mac !== opts.mac) continue;
          // /var/run is /run on every current distribution: one namespace, two names
          if (!found.has(realKey(path))) found.set(realKey(path), path);
        } finally {
          nl.close();
        }
      } catch {
        // a namespace that vanished or refuses netlink is not the pod's
      } finally {
        ns.close();
      }
    }
  }
  return pickNamespace([...found.values()], src);
}

function realKey(path: string): string {
  try {
    return realpathSync(path);
  } catch {
    return path;
  }
}

/** The one candidate, or a UsageError saying what to pass instead. */
export function pickNamespace(found: string[], src: string): string {
  if (found.length === 1) return found[0]!;
  if (!found.length) throw new UsageError(`no network namespace under ${NETNS_DIRS.join(' or ')} holds ${src}: pass --src-netns PATH for --probe`);
  throw new UsageError(`several namespaces hold ${src} (${found.slice(0, 4).join(', ')}): pass --src-netns PATH for --probe`);
}

/** The probe's counters and the rules that feed them (pure; names are fixed, values validated). */
export function probeScript(table: string, r: TraceReport): { script: string; points: Map<string, Omit<ProbeSighting, 'packets'>> } {
  const q = r.query;
  const T = `ip ${table}`;
  const src = ipText(q.src);
  const points = new Map<string, Omit<ProbeSighting, 'packets'>>();
  const lines = [`add table ${T}`];
  const chains: Array<[string, string]> = [
    ['probe-pre', 'type filter hook prerouting priority -400; policy accept;'],
    ['probe-fwd', 'type filter hook forward priority -400; policy accept;'],
    ['probe-inp', 'type filter hook input priority -400; policy accept;'],
    ['probe-out', 'type filter hook output priority -400; policy accept;'],
    ['probe-post', 'type filter hook postrouting priority -400; policy accept;'],
  ];
  for (const [name, spec] of chains) lines.push(`add chain ${T} ${name} { ${spec} }`);
  const l4 = q.port === undefined ? 'icmp type echo-request' : q.protocol === 'tcp' ? 'tcp flags & (syn | ack) == syn' : 'meta l4proto udp';
  const count = (name: string, chain: string, match: string, p: Omit<ProbeSighting, 'packets'>) => {
    lines.push(`add counter ${T} ${name}`);
    lines.push(`add rule ${T} ${chain} ${match} ${l4} counter name ${name}`);
    points.set(name, p);
  };
  const dst = ipText(q.dst);
  const dport = q.port !== undefined ? ` th dport ${q.port}` : '';
  if (r.ingress === 'this-node') count('c_out', 'probe-out', `ip saddr ${src} ip daddr ${dst}${dport}`, { point: 'output', detail: `sent by this node to ${dst}` });
  else count('c_pre', 'probe-pre', `ip saddr ${src} ip daddr ${dst}${dport}`, { point: 'prerouting', detail: `entered the node from ${src} on ${r.ingress}` });
  const targets = [...new Set(r.paths.map((p) => p.to).concat(r.service.verdict === 'none' ? [] : [q.dst]))];
  targets.forEach((t, i) => {
    const what = t === q.dst && r.service.verdict !== 'none' ? `forwarded still addressed to ${t} (not DNATed)` : `forwarded to ${t}${t !== q.dst ? ' (the endpoint the kernel picked)' : ''}`;
    count(`c_fwd${i}`, 'probe-fwd', `ip saddr ${src} ip daddr ${ipText(t)}`, { point: 'forward', detail: what });
  });
  count('c_inp', 'probe-inp', `ip saddr ${src}`, { point: 'input', detail: 'delivered to this node (local socket, or refused by it)' });
  const devs = new Set<string>();
  for (const p of r.paths) for (const h of p.hops) if (h.kind === 'route' && h.dev && /^[a-zA-Z0-9_.-]{1,15}$/.test(h.dev)) devs.add(h.dev);
  let i = 0;
  for (const d of devs) count(`c_post${i++}`, 'probe-post', `oifname "${d}" ip saddr ${src}`, { point: 'postrouting', detail: `left through ${d}` });
  const encaps = r.paths.flatMap((p) => p.hops.filter((h): h is EncapHop => h.kind === 'encap' && !!h.outerDst));
  const seen = new Set<string>();
  encaps.forEach((e, i) => {
    if (seen.has(e.outerDst!)) return;
    seen.add(e.outerDst!);
    // outer UDP header (8) + VXLAN header (8) + inner Ethernet (14) + 12 = the inner source address
    const inner = `0x${parseIPv4(src).toString(16).padStart(8, '0')}`;
    lines.push(`add counter ${T} c_enc${i}`);
    lines.push(`add rule ${T} probe-out ip daddr ${ipText(e.outerDst!)} udp dport ${e.udpPort} @th,336,32 ${inner} counter name c_enc${i}`);
    points.set(`c_enc${i}`, { point: 'encap', detail: `encapsulated: ${e.outerSrc ?? '?'} -> ${e.outerDst} UDP ${e.udpPort} VNI ${e.vni}` });
  });
  return { script: `${lines.join('\n')}\n`, points };
}

function ipText(s: string): string {
  parseIPv4(s);
  return s;
}

const SENDER = `
const [proto, host, port, localAddress] = process.argv.slice(1);
const done = (s) => { process.stdout.write(s); process.exit(0); };
if (proto === 'tcp') {
  const c = require('node:net').connect({ host, port: Number(port), localAddress });
  c.setTimeout(1500, () => { c.destroy(); done('timeout'); });
  c.on('connect', () => { c.destroy(); done('connected'); });
  c.on('error', (e) => done(e.code === 'ECONNREFUSED' ? 'refused' : String(e.code || e.message)));
} else {
  const s = require('node:dgram').createSocket('udp4');
  s.on('message', () => done('reply'));
  s.on('error', (e) => done(e.code === 'ECONNREFUSED' ? 'refused' : String(e.code || e.message)));
  s.bind(0, localAddress, () => s.connect(Number(port), host, () => s.send('weftctl trace probe\\n', (e) => { if (e) done(String(e.code)); })));
  setTimeout(() => done('sent (no reply within 1.5 s)'), 1500);
}
`;

async function send(netns: string, r: TraceReport): Promise<string> {
  const q = r.query;
  const pre = r.ingress === 'this-node' ? [] : ['nsenter', `--net=${netns}`, '--'];
  if (q.port === undefined) {
    const argv = [...pre, 'ping', '-n', '-c', '1', '-W', '1', '-I', q.src, q.dst];
    const out = await exec(argv[0]!, argv.slice(1), { timeoutMs: 5000 });
    return out.code === 0 ? 'reply' : 'no reply within 1 s';
  }
  const argv = [...pre, process.execPath, '-e', SENDER, q.protocol, q.dst, String(q.port), q.src];
  const out = await exec(argv[0]!, argv.slice(1), { timeoutMs: 5000 });
  if (out.code !== 0 && !out.stdout) throw new Error(`probe sender in "${netns}" failed: ${out.stderr.trim().slice(0, 300)}`);
  return out.stdout.trim();
}

/** Sends the probe and reads the counters; the temporary table is gone when this returns. */
export async function runProbe(r: TraceReport, netns: string): Promise<ProbeResult> {
  const table = `weft-trace-${randomBytes(4).toString('hex')}`;
  const { script, points } = probeScript(table, r);
  await nft(script);
  try {
    const outcome = await send(netns, r);
    // the encapsulated copy and a forwarded packet are counted before the sender hears back;
    // a short pause covers a reply that raced the last counter
    await new Promise((res) => setTimeout(res, 100));
    const list = await exec(nftBin(), ['-j', 'list', 'table', 'ip', table], { timeoutMs: 10_000 });
    if (list.code !== 0) throw new Error(`nft -j list table ip ${table}: ${list.stderr.trim().slice(0, 300)}`);
    const sightings: ProbeSighting[] = [];
    const doc = JSON.parse(list.stdout) as { nftables?: Array<{ counter?: { name?: string; packets?: number } }> };
    for (const o of doc.nftables ?? []) {
      const c = o.counter;
      const p = c?.name ? points.get(c.name) : undefined;
      if (p && typeof c!.packets === 'number' && c!.packets > 0) sightings.push({ ...p, packets: c!.packets });
    }
    const order = ['output', 'prerouting', 'forward', 'input', 'postrouting', 'encap'];
    sightings.sort((a, b) => order.indexOf(a.point) - order.indexOf(b.point));
    return { netns: r.ingress === 'this-node' ? 'this node' : netns, outcome, sightings };
  } finally {
    await nft(`delete table ip ${table}\n`);
  }
}

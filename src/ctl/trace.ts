/**
 * `weftctl trace <src-pod-ip> <dst-ip>[:port[/tcp|udp]] [--probe]`: the packet walk on this
 * node, from live kernel state (src/ctl/trace/: model, walk, live reader, probe, render).
 */
import { UsageError } from '../core/errors.ts';
import { formatIPv4, isIPv4, parseIPv4 } from '../ip/ipv4.ts';
import { outputFormat } from './args.ts';
import type { CommandContext } from './context.ts';
import { traceLive } from './trace/live.ts';
import type { TraceQuery } from './trace/model.ts';
import { findSourceNetns, runProbe } from './trace/probe.ts';
import { renderTrace } from './trace/render.ts';

function address(text: string, what: string): string {
  if (!isIPv4(text) || formatIPv4(parseIPv4(text)) !== text) throw new UsageError(`${what} "${text}" is not an IPv4 address like 198.18.1.5`);
  return text;
}

/** Parses the two arguments (pure); throws UsageError. */
export function parseTraceArgs(args: readonly string[]): TraceQuery {
  const [src, dst] = args;
  if (!src || !dst) throw new UsageError('trace needs a source pod IP and a destination, e.g. weftctl trace 198.18.1.5 198.19.0.10:80/tcp');
  const m = /^([0-9.]+)(?::(\d{1,5})(?:\/(tcp|udp))?)?$/i.exec(dst);
  if (!m) throw new UsageError(`destination "${dst}" is not IP[:PORT[/tcp|udp]]`);
  const q: TraceQuery = { src: address(src, 'source'), dst: address(m[1]!, 'destination'), protocol: (m[3]?.toLowerCase() as 'tcp' | 'udp' | undefined) ?? 'tcp' };
  if (m[2] !== undefined) {
    const port = Number(m[2]);
    if (port < 1 || port > 65535) throw new UsageError(`port ${m[2]} is outside 1..65535`);
    q.port = port;
  }
  return q;
}

/** Exit status 0 when the walk reaches a pod, the peer node or this node; 1 when it ends short. */
export async function traceCommand(ctx: CommandContext): Promise<number> {
  const format = outputFormat(ctx.flags, ['table', 'json', 'yaml']) as 'table' | 'json' | 'yaml';
  const q = parseTraceArgs(ctx.args ?? []);
  if (ctx.flags['src-netns'] && !ctx.flags.probe) throw new UsageError('--src-netns is only used with --probe');
  const first = await traceLive(q, { ipamDir: ctx.flags['ipam-dir'] });
  const snapshot = first.snapshot;
  let report = first.report;
  if (ctx.flags.probe) {
    let netns = 'this node';
    if (report.ingress !== 'this-node') {
      const bridge = snapshot.links.find((l) => l.name === report.ingress);
      const mac = bridge ? snapshot.neighbors.find((n) => n.index === bridge.index && n.ip === q.src)?.mac : undefined;
      netns = await findSourceNetns(q.src, { explicit: ctx.flags['src-netns'], mac });
    }
    const probe = await runProbe(report, netns);
    // the probe made the kernel resolve what it had not yet (a local pod's ARP entry, so its
    // bridge port): walk the state as it is now, next to where the packet was seen
    ({ report } = await traceLive(q, { ipamDir: ctx.flags['ipam-dir'] }));
    report.probe = probe;
  }
  ctx.out(renderTrace(report, format));
  const ends = report.paths.map((p) => p.hops.at(-1));
  const ok =
    report.service.verdict !== 'none' && report.service.verdict !== 'dnat'
      ? false
      : ends.length > 0 && ends.every((h) => h?.kind === 'end' && ['local-pod', 'peer-node', 'this-node', 'external'].includes(h.at));
  return ok ? 0 : 1;
}

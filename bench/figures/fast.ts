/**
 * Figures 1 and 2 again, with weft called through the fast path: the static launcher forwards
 * each request to a warm process running the same CNI handler (src/fastpath), as weftd does.
 */
import type { BenchScope } from '../lib/scope.ts';
import { bins, missing } from '../lib/paths.ts';
import { startFastServer, type Handled, type Served, type ServeOptions } from '../lib/fastserve.ts';
import { median, round, summarize } from '../lib/stats.ts';
import { unavailable, type BenchContext, type Figure } from '../lib/report.ts';
import { figAddDel } from './add-del.ts';
import { figConcurrent } from './concurrent.ts';

function serverFor(box: { handled?: Handled[]; loopDelays?: Served['loopDelays'] }, opts: ServeOptions = {}) {
  return async (scope: BenchScope, nodeNs: string, dir: string) => {
    const s = await startFastServer(scope, nodeNs, dir, opts);
    box.handled = s.handled;
    box.loopDelays = s.loopDelays;
    return { fastpathSocket: s.socket };
  };
}

/** Medians of the in-process time and of each dependency's share, for one command. */
export function breakdown(handled: Handled[], command: string): Record<string, number> | undefined {
  const hs = handled.filter((h) => h.command === command);
  if (!hs.length) return undefined;
  const keys = Object.keys(hs[0].parts).filter((k) => !k.includes('.'));
  const out: Record<string, number> = { total: round(median(hs.map((h) => h.ms))) };
  for (const k of keys) out[k] = round(median(hs.map((h) => h.parts[k] ?? 0)));
  // Calls awaited in parallel can make the parts add up to more than the total: clamp at 0.
  if (keys.length) out.other = round(Math.max(0, median(hs.map((h) => h.ms - keys.reduce((a, k) => a + (h.parts[k] ?? 0), 0)))));
  return out;
}

/** Median ms per dependency method (e.g. "netlink.linkAdd") for one command, largest first. */
export function methodBreakdown(handled: Handled[], command: string): Record<string, number> {
  const hs = handled.filter((h) => h.command === command);
  const keys = new Set(hs.flatMap((h) => Object.keys(h.parts).filter((k) => k.includes('.'))));
  const pairs = [...keys].map((k) => [k, round(median(hs.map((h) => h.parts[k] ?? 0)))] as const);
  return Object.fromEntries(pairs.sort((a, b) => b[1] - a[1]));
}

function inProcessSummary(fig: Figure, handled: Handled[] = []): Figure {
  for (const cmd of ['ADD', 'DEL']) {
    const b = breakdown(handled, cmd);
    if (!b) continue;
    fig.details[`inProcess${cmd}`] = { ...b, methods: methodBreakdown(handled, cmd), samples: summarize(handled.filter((h) => h.command === cmd).map((h) => h.ms)) };
    fig.notes.push(
      `in-process ${cmd} (inside the server, medians): ${Object.entries(b)
        .map(([k, v]) => `${k} ${v} ms`)
        .join(', ')}`,
    );
  }
  return fig;
}

export async function figFastAdd(ctx: BenchContext): Promise<Figure> {
  const title = 'pod ADD/DEL latency via the fast path (launcher -> in-daemon CNI)';
  const why = missing(bins.launcher, 'run `node scripts/build-launcher.ts`');
  if (why) return unavailable('fast', title, why);
  const box: { handled?: Handled[] } = {};
  // The handler as weftd runs it, its dependencies unwrapped (the per-dependency split, which
  // costs a little per call, is figure `where`'s).
  const fig = await figAddDel(ctx, { weftPlugin: bins.launcher, id: 'fast', title, serve: serverFor(box, { parts: false }), target: 0.5 });
  return inProcessSummary(fig, box.handled);
}

export async function figFastConcurrent(ctx: BenchContext): Promise<Figure> {
  const title = '100 concurrent ADDs/DELs via the fast path';
  const why = missing(bins.launcher, 'run `node scripts/build-launcher.ts`');
  if (why) return unavailable('fastconc', title, why);
  // As weftd serves them: worker threads started on demand (--cni-workers 2), the main thread
  // watched for event-loop delay (weftd exports the same as nodejs_eventloop_lag_* metrics).
  const box: { handled?: Handled[]; loopDelays?: Served['loopDelays'] } = {};
  const fig = await figConcurrent(ctx, { weftPlugin: bins.launcher, id: 'fastconc', title, serve: serverFor(box, { workers: Number(process.env.WEFT_BENCH_CNI_WORKERS ?? 2), loop: true }) });
  if (fig.available) {
    // Each report is the worst delay of the second before it: those overlapping weft's burst
    // (first ADD forked to last DEL exited) are the target's; the whole run's also takes in the
    // reference plugin's burst, namespace set-up and checks, which compete for the same CPUs.
    const all = box.loopDelays ?? [];
    const win = (fig.details.weft as { window?: { start: number; end: number } } | undefined)?.window;
    const inBurst = win ? all.filter((d) => d.at > win.start && d.at - 1000 < win.end).map((d) => d.ms) : [];
    const worst = (ms: number[]) => (ms.length ? Math.max(...ms) : null);
    fig.rows.push({
      metric: "server's main thread: worst event-loop delay in a second of weft's burst",
      unit: 'ms',
      weft: worst(inBurst),
      target: '< 50 ms',
      met: inBurst.length ? worst(inBurst)! < 50 : undefined,
    });
    fig.rows.push({ metric: "server's main thread: worst event-loop delay in any second of the run", unit: 'ms', weft: worst(all.map((d) => d.ms)) });
    fig.details.loopDelayMaxPerSecond = all.map((d) => ({ ms: d.ms, sinceBurstStart: win ? d.at - win.start : null }));
    fig.details.burstMs = win ? win.end - win.start : null;
    const n = (cmd: string) => (box.handled ?? []).filter((h) => h.command === cmd).length;
    // The probe ADD/DEL before the burst is served too; the rest fell back to the standalone binary.
    fig.notes.push(`served by the fast-path server (the rest fell back to the standalone binary): ${n('ADD') - 1} ADDs, ${n('DEL') - 1} DELs of ${fig.details.pods}`);
  }
  return fig;
}

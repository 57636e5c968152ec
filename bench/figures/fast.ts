/**
 * Figures 1 and 2 again, with weft called through the fast path: the static launcher forwards
 * each request to a warm process running the same CNI handler (src/fastpath), as weftd does.
 */
import type { BenchScope } from '../lib/scope.ts';
import { bins, missing } from '../lib/paths.ts';
import { startFastServer } from '../lib/fastserve.ts';
import { summarize } from '../lib/stats.ts';
import { unavailable, type BenchContext, type Figure } from '../lib/report.ts';
import { figAddDel } from './add-del.ts';
import { figConcurrent } from './concurrent.ts';

function serverFor(details: Record<string, unknown>) {
  return async (scope: BenchScope, nodeNs: string, dir: string) => {
    const s = await startFastServer(scope, nodeNs, dir);
    details.inProcess = s.handled;
    return { fastpathSocket: s.socket };
  };
}

function inProcessSummary(fig: Figure, details: Record<string, unknown>): Figure {
  const handled = (details.inProcess ?? []) as Array<[string, number]>;
  const of = (cmd: string) => handled.filter(([c]) => c === cmd).map(([, ms]) => ms);
  if (handled.length) {
    const add = summarize(of('ADD'));
    const del = summarize(of('DEL'));
    fig.details.inProcess = { add, del };
    fig.notes.push(`in-process handler time (inside the server, no start-up): ADD median ${add.median} ms, DEL median ${del.median} ms`);
  }
  return fig;
}

export async function figFastAdd(ctx: BenchContext): Promise<Figure> {
  const title = 'pod ADD/DEL latency via the fast path (launcher -> in-daemon CNI)';
  const why = missing(bins.launcher, 'run `node src/fastpath/build.ts`');
  if (why) return unavailable('fast', title, why);
  const details: Record<string, unknown> = {};
  const fig = await figAddDel(ctx, { weftPlugin: bins.launcher, id: 'fast', title, serve: serverFor(details) });
  return inProcessSummary(fig, details);
}

export async function figFastConcurrent(ctx: BenchContext): Promise<Figure> {
  const title = '100 concurrent ADDs/DELs via the fast path';
  const why = missing(bins.launcher, 'run `node src/fastpath/build.ts`');
  if (why) return unavailable('fastconc', title, why);
  const details: Record<string, unknown> = {};
  const fig = await figConcurrent(ctx, { weftPlugin: bins.launcher, id: 'fastconc', title, serve: serverFor(details) });
  return inProcessSummary(fig, details);
}

/** `weftctl get nodes [--watch]`. */
import { renderNodeEvent, renderNodes, renderWatchHeader } from '../status/render.ts';
import { outputFormat } from './args.ts';
import type { CommandContext } from './context.ts';
import { NodeEvents } from './watch.ts';

/** Prints the nodes; with `--watch`, then every change until the signal aborts. */
export async function getNodesCommand(ctx: CommandContext): Promise<number> {
  const format = outputFormat(ctx.flags);
  const list = await ctx.source.listNodes();
  if (!ctx.flags.watch) {
    ctx.out(renderNodes(list, format));
    return 0;
  }
  let widths: number[] | undefined;
  if (format === 'table' || format === 'wide') {
    const head = renderWatchHeader(list, format);
    widths = head.widths;
    ctx.out(head.text);
  } else {
    for (const node of list.nodes) ctx.out(renderNodeEvent({ type: 'ADDED', node }, format));
  }
  const events = new NodeEvents(list.nodes, (ev) => ctx.out(renderNodeEvent(ev, format, widths)));
  await ctx.source.watchNodes(ctx.interrupted(), events);
  return 0;
}

/** `weftctl describe node NAME`. */
import { UsageError } from '../core/errors.ts';
import { findNode } from '../status/collect.ts';
import { renderDescribe } from '../status/render.ts';
import { outputFormat } from './args.ts';
import type { CommandContext } from './context.ts';

/** Everything known about one node, found by name (kube), public IP or subnet. */
export async function describeNodeCommand(ctx: CommandContext): Promise<number> {
  if (!ctx.arg) {
    const what = ctx.source.mode === 'kube' ? 'a node name, public IP or podCIDR, e.g. weftctl describe node n1' : 'a public IP or subnet, e.g. weftctl describe node 198.51.100.11';
    throw new UsageError(`describe node needs ${what}`);
  }
  const format = outputFormat(ctx.flags, ['table', 'json', 'yaml']);
  const node = ctx.source.findNode ? await ctx.source.findNode(ctx.arg) : findNode(await ctx.source.listNodes(), ctx.arg);
  // The network only adds context here; a missing or broken config does not hide the node.
  const config = await ctx.source.getNetwork().catch(() => undefined);
  ctx.out(renderDescribe(node, config, format));
  return 0;
}

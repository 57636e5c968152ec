/**
 * `weftctl check`: this node's kernel state against the source's view of the network, through
 * src/status/check.ts (reading the kernel, comparing).
 */
import { openNetlink } from '../netlink/index.ts';
import { compareState, readKernelState } from '../status/check.ts';
import { renderCheck } from '../status/render.ts';
import { ConfigError } from '../subnet/config.ts';
import { outputFormat } from './args.ts';
import type { CommandContext } from './context.ts';

/** Exit status 0 when consistent, 1 when differences were found. */
export async function checkCommand(ctx: CommandContext): Promise<number> {
  const format = outputFormat(ctx.flags, ['table', 'json', 'yaml']);
  const subnetFile = ctx.flags['subnet-file'] ?? ctx.env.WEFTD_SUBNET_FILE ?? '/run/flannel/subnet.env';
  const config = await ctx.source.getNetwork();
  if (!config) throw new ConfigError(`no network config at "${ctx.source.configLocation}": nothing to check against`);
  const { nodes } = await ctx.source.listNodes();
  const device = ctx.flags.device ?? `flannel.${config.backend.vni}`;
  const nl = openNetlink();
  const kernel = await readKernelState(nl, device, subnetFile).finally(() => nl.close());
  const report = compareState({ kernel, leases: nodes, config, device, subnetFile, publicIP: ctx.flags['public-ip'] });
  ctx.out(renderCheck(report, format));
  return report.consistent ? 0 : 1;
}

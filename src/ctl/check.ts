/**
 * `weftctl check`: this node's kernel state against the source's view of the network, through
 * src/status/check.ts (reading the kernel, comparing), plus the iptables FORWARD accept rules
 * weftd keeps (src/rules/iptables.ts), read in the namespace weftctl runs in. A source that
 * knows more than its node listing (kube: our own Node, peers weftd skips) provides the basis.
 */
import { errText } from '../core/errors.ts';
import { parseCIDR } from '../ip/ipv4.ts';
import { openNetlink } from '../netlink/index.ts';
import { iptablesForwardDrift } from '../rules/iptables.ts';
import { compareState, readKernelState } from '../status/check.ts';
import type { CheckBasis } from '../status/model.ts';
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
  const device = ctx.flags.device ?? `flannel.${config.backend.vni}`;
  const nl = openNetlink();
  const kernel = await readKernelState(nl, device, subnetFile).finally(() => nl.close());
  kernel.forward = await iptablesForwardDrift(parseCIDR(config.network)).then(
    (drift) => ({ drift }),
    (err) => ({ error: errText(err) }),
  );
  const publicIP = ctx.flags['public-ip'];
  let basis: CheckBasis;
  if (ctx.source.checkBasis) {
    const nodeName = ctx.flags['node-name'] ?? (ctx.env.WEFTD_NODE_NAME || ctx.env.NODE_NAME || undefined);
    basis = await ctx.source.checkBasis({ nodeName, localIP: publicIP ?? kernel.device?.vxlan?.local });
  } else {
    basis = { config, leases: (await ctx.source.listNodes()).nodes, findings: [], skipped: [] };
  }
  const report = compareState({
    kernel,
    leases: basis.leases,
    config: basis.config,
    device,
    subnetFile,
    publicIP: publicIP ?? basis.publicIP,
    against: ctx.source.description,
  });
  report.findings.unshift(...basis.findings);
  report.consistent = report.findings.length === 0;
  if (ctx.source.description) report.against = ctx.source.description;
  if (basis.skipped.length) report.skipped = basis.skipped;
  ctx.out(renderCheck(report, format));
  return report.consistent ? 0 : 1;
}

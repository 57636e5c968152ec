/** `weftctl network init` and `get network`: the network config nodes lease from. */
import { readFileSync } from 'node:fs';
import { UsageError } from '../core/errors.ts';
import { formatCIDR } from '../ip/ipv4.ts';
import { summarizeConfig } from '../status/collect.ts';
import { etcdOnly } from '../status/kube.ts';
import { SourceUnavailableError, type NetworkSummary, type StatusSource } from '../status/model.ts';
import { renderNetwork } from '../status/render.ts';
import { ConfigError, parseNetworkConfig, type NetworkConfig } from '../subnet/config.ts';
import { intFlag, outputFormat } from './args.ts';
import type { CommandContext } from './context.ts';

/** `network init` would change a network nodes are using; the message says why. */
export class NetworkInUseError extends Error {
  constructor(message: string) {
    super(message);
    this.name = 'NetworkInUseError';
  }
}

/** The JSON weftctl stores for `network init` flags (flannel's field names). */
export function networkConfigText(opts: { network: string; subnetLen?: number; vni?: number; port?: number }): string {
  const backend: Record<string, unknown> = { Type: 'vxlan' };
  if (opts.vni !== undefined) backend.VNI = opts.vni;
  if (opts.port !== undefined) backend.Port = opts.port;
  const cfg: Record<string, unknown> = { Network: opts.network };
  if (opts.subnetLen !== undefined) cfg.SubnetLen = opts.subnetLen;
  cfg.Backend = backend;
  return JSON.stringify(cfg);
}

/** What `network init` did. */
export type InitResult = { action: 'created' | 'updated' | 'unchanged'; config: NetworkSummary; leases: number };

function parseStored(text: string): NetworkConfig | undefined {
  try {
    return parseNetworkConfig(text);
  } catch {
    return undefined; // an invalid stored config may always be replaced
  }
}

/**
 * Writes the network config. Validates it first (ConfigError). If a config is stored already and
 * differs in Network or SubnetLen while leases exist, refuses with {@link NetworkInUseError}
 * unless `force`: those leases (and every pod address in them) would lie outside the new layout.
 * The write is guarded by the stored version, so two concurrent inits cannot interleave.
 */
export async function initNetwork(source: StatusSource, text: string, opts: { force?: boolean } = {}): Promise<InitResult> {
  const next = parseNetworkConfig(text);
  const stored = JSON.stringify(JSON.parse(text));
  for (let attempt = 0; attempt < 5; attempt++) {
    const cur = await source.readNetworkConfig();
    const { nodes } = await source.listNodes();
    const result = (action: InitResult['action']): InitResult => ({ action, config: summarizeConfig(next), leases: nodes.length });
    if (cur?.text === stored) return result('unchanged');
    const old = cur && parseStored(cur.text);
    const layoutChanged = !old || old.network.ip !== next.network.ip || old.network.prefixLen !== next.network.prefixLen || old.subnetLen !== next.subnetLen;
    if (old && layoutChanged && nodes.length > 0 && !opts.force) {
      const was = `${formatCIDR(old.network)} (subnets /${old.subnetLen})`;
      const now = `${formatCIDR(next.network)} (subnets /${next.subnetLen})`;
      throw new NetworkInUseError(
        `refusing to change the network from ${was} to ${now}: ${nodes.length} node lease(s) exist ` +
          `(${nodes
            .slice(0, 5)
            .map((n) => `${n.publicIP} ${n.subnet}`)
            .join(', ')}${nodes.length > 5 ? ', ...' : ''}) ` +
          'and their pods would be outside the new network; drain the nodes and stop weftd first, or pass --force',
      );
    }
    if (await source.writeNetworkConfig(stored, { ifVersion: cur?.version })) return result(cur ? 'updated' : 'created');
  }
  throw new SourceUnavailableError(`write "${source.configLocation}": it kept changing under us`);
}

/** The config text `network init` was given: `--config-file` or the flags. */
function configText(ctx: CommandContext): string {
  const f = ctx.flags;
  const file = f['config-file'];
  if (file) {
    if (f.network || f['subnet-len'] || f.vni || f.port) throw new UsageError('--config-file and --network/--subnet-len/--vni/--port are exclusive');
    try {
      return readFileSync(file, 'utf8');
    } catch (err) {
      throw new UsageError(`read --config-file "${file}": ${(err as NodeJS.ErrnoException).code ?? (err as Error).message}`);
    }
  }
  if (!f.network) throw new UsageError('network init needs --network CIDR (e.g. --network 10.244.0.0/16) or --config-file');
  return networkConfigText({ network: f.network, subnetLen: intFlag(f, 'subnet-len'), vni: intFlag(f, 'vni'), port: intFlag(f, 'port') });
}

/** `weftctl network init`. */
export async function networkInitCommand(ctx: CommandContext): Promise<number> {
  if (ctx.source.mode === 'kube') throw etcdOnly('network init');
  const res = await initNetwork(ctx.source, configText(ctx), { force: ctx.flags.force });
  const c = res.config;
  const what = `${c.network}, subnets /${c.subnetLen} (${c.subnetMin} - ${c.subnetMax}), vxlan VNI ${c.backend.vni} UDP ${c.backend.port}`;
  ctx.out(`network config ${res.action} at ${ctx.source.configLocation}: ${what}\n`);
  if (res.action === 'updated' && res.leases > 0) {
    ctx.out(`warning: ${res.leases} node lease(s) exist; restart weftd on every node to apply the change\n`);
  }
  return 0;
}

/** `weftctl get network`. */
export async function getNetworkCommand(ctx: CommandContext): Promise<number> {
  const format = outputFormat(ctx.flags, ['table', 'json', 'yaml']);
  const config = await ctx.source.getNetwork();
  if (!config) throw new ConfigError(`no network config at "${ctx.source.configLocation}" (create it with: weftctl network init --network CIDR)`);
  ctx.out(renderNetwork(config, format));
  return 0;
}

/**
 * weftctl: kubectl-style status and setup CLI for weft. Parses arguments, wires the etcd subnet
 * manager and the status collectors, prints, and exits:
 * 0 success (and `check` consistent), 1 `check` found differences, 2 any error.
 */
import { UsageError } from '../src/core/errors.ts';
import { readFileSync } from 'node:fs';
import { parseArgs, type ParseArgsConfig } from 'node:util';
import { openNetlink } from '../src/netlink/index.ts';
import { checkNode } from '../src/status/check.ts';
import {
  collectConfig,
  collectNodes,
  findNode,
  initNetwork,
  networkConfigText,
  NetworkInUseError,
  NodeNotFoundError,
  watchNodes,
} from '../src/status/collect.ts';
import {
  OUTPUT_FORMATS,
  renderCheck,
  renderDescribe,
  renderNodeEvent,
  renderNetwork,
  renderNodes,
  renderWatchHeader,
  type OutputFormat,
} from '../src/status/render.ts';
import { VERSION } from '../src/status/version.ts';
import { ConfigError } from '../src/subnet/config.ts';
import { DEFAULT_ETCD_PREFIX, EtcdSubnetManager, EtcdUnavailableError } from '../src/subnet/etcd.ts';

const USAGE = `weftctl: inspect and set up a weft pod network (state in etcd, flannel's schema)

Usage:
  weftctl network init --network CIDR [--subnet-len N] [--vni N] [--port N] [--force]
  weftctl network init --config-file FILE [--force]
  weftctl get network [-o json|yaml]
  weftctl get nodes [-o wide|json|yaml] [--watch]
  weftctl describe node <public-ip|subnet> [-o json|yaml]
  weftctl check [--subnet-file FILE] [--device NAME] [--public-ip IP] [-o json|yaml]
  weftctl version

Connection (same flags and environment as weftd):
  --etcd-endpoints URLS   comma separated   [$WEFTD_ETCD_ENDPOINTS, default http://127.0.0.1:2379]
  --etcd-prefix PATH                        [$WEFTD_ETCD_PREFIX, default ${DEFAULT_ETCD_PREFIX}]
  --etcd-cafile FILE, --etcd-certfile FILE, --etcd-keyfile FILE
                                            [$WEFTD_ETCD_CAFILE, $WEFTD_ETCD_CERTFILE, $WEFTD_ETCD_KEYFILE]
  --timeout SECONDS       per etcd call (default 5)
  --subnet-file FILE      (check) weftd's subnet file [$WEFTD_SUBNET_FILE, default /run/flannel/subnet.env]

check runs on a node (inside its network namespace, e.g. nsenter --net=...) and compares the
kernel state with etcd. Exit status: 0 ok, 1 check found differences, 2 error.
`;

/** etcd failed; the message names the endpoints and the operation. */
class EtcdError extends Error {}

const options = {
  'etcd-endpoints': { type: 'string' },
  'etcd-prefix': { type: 'string' },
  'etcd-cafile': { type: 'string' },
  'etcd-certfile': { type: 'string' },
  'etcd-keyfile': { type: 'string' },
  timeout: { type: 'string' },
  output: { type: 'string', short: 'o' },
  watch: { type: 'boolean', short: 'w' },
  network: { type: 'string' },
  'subnet-len': { type: 'string' },
  vni: { type: 'string' },
  port: { type: 'string' },
  'config-file': { type: 'string' },
  force: { type: 'boolean' },
  'subnet-file': { type: 'string' },
  device: { type: 'string' },
  'public-ip': { type: 'string' },
  help: { type: 'boolean', short: 'h' },
} satisfies ParseArgsConfig['options'];

type Values = ReturnType<typeof parse>['values'];

function parse(argv: string[]) {
  try {
    return parseArgs({ args: argv, options, allowPositionals: true, strict: true });
  } catch (err) {
    throw new UsageError((err as Error).message);
  }
}

function intFlag(v: Values, name: 'subnet-len' | 'vni' | 'port' | 'timeout'): number | undefined {
  const s = v[name];
  if (s === undefined) return undefined;
  if (!/^\d+$/.test(s)) throw new UsageError(`--${name} must be a whole number, got "${s}"`);
  return Number(s);
}

function outputFormat(v: Values, allowed: readonly OutputFormat[] = OUTPUT_FORMATS): OutputFormat {
  const o = (v.output ?? 'table') as OutputFormat;
  if (!allowed.includes(o)) throw new UsageError(`-o must be one of ${allowed.filter((f) => f !== 'table').join(', ')}, got "${o}"`);
  return o;
}

function connect(v: Values): { mgr: EtcdSubnetManager; endpoints: string[] } {
  const env = process.env;
  const endpoints = (v['etcd-endpoints'] ?? env.WEFTD_ETCD_ENDPOINTS ?? 'http://127.0.0.1:2379')
    .split(',')
    .map((s) => s.trim())
    .filter(Boolean);
  if (!endpoints.length) throw new UsageError('--etcd-endpoints is empty');
  for (const e of endpoints) {
    if (!/^https?:\/\/[^/\s]+\/?$/.test(e)) throw new UsageError(`etcd endpoint "${e}" is not a URL like http://198.51.100.1:2379`);
  }
  const timeout = intFlag(v, 'timeout') ?? 5;
  const mgr = new EtcdSubnetManager({
    endpoints,
    prefix: v['etcd-prefix'] ?? env.WEFTD_ETCD_PREFIX ?? DEFAULT_ETCD_PREFIX,
    cafile: v['etcd-cafile'] ?? env.WEFTD_ETCD_CAFILE,
    certfile: v['etcd-certfile'] ?? env.WEFTD_ETCD_CERTFILE,
    keyfile: v['etcd-keyfile'] ?? env.WEFTD_ETCD_KEYFILE,
    callTimeoutMs: timeout * 1000,
  });
  return { mgr, endpoints };
}

function out(text: string): void {
  process.stdout.write(text);
}

async function networkInit(v: Values, mgr: EtcdSubnetManager): Promise<number> {
  let text: string;
  if (v['config-file']) {
    if (v.network || v['subnet-len'] || v.vni || v.port) throw new UsageError('--config-file and --network/--subnet-len/--vni/--port are exclusive');
    try {
      text = readFileSync(v['config-file'], 'utf8');
    } catch (err) {
      throw new UsageError(`read --config-file "${v['config-file']}": ${(err as NodeJS.ErrnoException).code ?? (err as Error).message}`);
    }
  } else {
    if (!v.network) throw new UsageError('network init needs --network CIDR (e.g. --network 10.244.0.0/16) or --config-file');
    text = networkConfigText({ network: v.network, subnetLen: intFlag(v, 'subnet-len'), vni: intFlag(v, 'vni'), port: intFlag(v, 'port') });
  }
  const res = await initNetwork(mgr, text, { force: v.force });
  const c = res.config;
  const what = `${c.network}, subnets /${c.subnetLen} (${c.subnetMin} - ${c.subnetMax}), vxlan VNI ${c.backend.vni} UDP ${c.backend.port}`;
  const verb = { created: 'created', updated: 'updated', unchanged: 'unchanged' }[res.action];
  out(`network config ${verb} at ${mgr.prefix}/config: ${what}\n`);
  if (res.action === 'updated' && res.leases > 0) {
    out(`warning: ${res.leases} node lease(s) exist; restart weftd on every node to apply the change\n`);
  }
  return 0;
}

async function getNodes(v: Values, mgr: EtcdSubnetManager): Promise<number> {
  const format = outputFormat(v);
  const list = await collectNodes(mgr);
  if (!v.watch) {
    out(renderNodes(list, format));
    return 0;
  }
  let widths: number[] | undefined;
  if (format === 'table' || format === 'wide') {
    const head = renderWatchHeader(list, format);
    widths = head.widths;
    out(head.text);
  } else {
    for (const node of list.nodes) out(renderNodeEvent({ type: 'ADDED', node }, format));
  }
  const ac = new AbortController();
  process.once('SIGINT', () => ac.abort());
  process.once('SIGTERM', () => ac.abort());
  await watchNodes(mgr, list, ac.signal, (ev) => out(renderNodeEvent(ev, format, widths)));
  return 0;
}

async function main(argv: string[]): Promise<number> {
  const { values: v, positionals: pos } = parse(argv);
  if (v.help || pos.length === 0) {
    out(USAGE);
    return pos.length === 0 && !v.help ? 2 : 0;
  }
  const [cmd, sub, arg, ...rest] = pos;
  if (cmd === 'version') {
    out(`weftctl ${VERSION} (node ${process.version})\n`);
    return 0;
  }
  const known = ['network init', 'get nodes', 'get node', 'get network', 'describe node', 'check'];
  const verb = cmd === 'check' ? 'check' : `${cmd} ${sub ?? ''}`.trim();
  if (!known.includes(verb)) throw new UsageError(`unknown command "${pos.join(' ')}"`);
  const maxArgs = verb === 'describe node' ? 3 : verb === 'check' ? 1 : 2;
  if (pos.length > maxArgs || rest.length) throw new UsageError(`unexpected argument "${pos.slice(maxArgs).join(' ')}"`);

  const { mgr, endpoints } = connect(v);
  try {
    switch (verb) {
      case 'network init':
        return await networkInit(v, mgr);
      case 'get network': {
        const format = outputFormat(v, ['table', 'json', 'yaml']);
        const config = await collectConfig(mgr);
        if (!config) throw new ConfigError(`no network config at "${mgr.prefix}/config" (create it with: weftctl network init --network CIDR)`);
        out(renderNetwork(config, format));
        return 0;
      }
      case 'get nodes':
      case 'get node':
        return await getNodes(v, mgr);
      case 'describe node': {
        if (!arg) throw new UsageError('describe node needs a public IP or subnet, e.g. weftctl describe node 198.51.100.11');
        const format = outputFormat(v, ['table', 'json', 'yaml']);
        const list = await collectNodes(mgr);
        const node = findNode(list, arg);
        const config = await collectConfig(mgr).catch(() => undefined);
        out(renderDescribe(node, config, format));
        return 0;
      }
      case 'check': {
        const format = outputFormat(v, ['table', 'json', 'yaml']);
        const nl = openNetlink();
        try {
          const report = await checkNode(mgr, nl, {
            subnetFile: v['subnet-file'] ?? process.env.WEFTD_SUBNET_FILE ?? '/run/flannel/subnet.env',
            device: v.device,
            publicIP: v['public-ip'],
          });
          out(renderCheck(report, format));
          return report.consistent ? 0 : 1;
        } finally {
          nl.close();
        }
      }
    }
    throw new UsageError(`unknown command "${verb}"`);
  } catch (err) {
    if (err instanceof EtcdUnavailableError) {
      throw new EtcdError(`cannot reach etcd at ${endpoints.join(', ')}: ${tidyGrpc(err.message.replace(/^etcd /, ''))}`);
    }
    throw err;
  } finally {
    mgr.close();
  }
}

/** gRPC's UNAVAILABLE text on one line, without its trailers, doubled "Error:" and OpenSSL codes. */
function tidyGrpc(msg: string): string {
  return msg
    .replace(/\s*\(\d{4}-\d\d-\d\dT[\d:.]+Z\)/g, '')
    .replace(/\.? Resolution note:\s*$/, '')
    .replace(/Last error: Error: /, 'last error: ')
    .replace(/Last error: /, 'last error: ')
    .replace(/ - Local \([^)]*\)/, '')
    .replace(/[0-9A-F]+:error:[0-9A-F]+:SSL routines:[^:]*:([^:]+):\S+?:\d+:?(SSL alert number \d+)?/, 'TLS: $1')
    .replace(/\s*\n\s*/g, ' ')
    .trim();
}

/** One line, no stack: what failed and, for etcd, where. */
function describeError(err: unknown): string {
  if (err instanceof UsageError) return `${err.message}\nRun "weftctl --help" for usage.`;
  if (err instanceof EtcdError || err instanceof ConfigError || err instanceof NetworkInUseError || err instanceof NodeNotFoundError) return err.message;
  const e = err as Error;
  let msg = e?.message ?? String(err);
  for (let c = (e as { cause?: unknown })?.cause; c instanceof Error; c = (c as { cause?: unknown }).cause) msg += `: ${c.message}`;
  return msg;
}

// grpc-js sets the TLS server name to the endpoint's IP, which Node flags with a deprecation
// warning (DEP0123) on every TLS connection; it is not the operator's concern.
process.noDeprecation = true;

main(process.argv.slice(2)).then(
  (code) => {
    process.exitCode = code;
  },
  (err) => {
    process.stderr.write(`weftctl: ${describeError(err)}\n`);
    process.exitCode = 2;
  },
);

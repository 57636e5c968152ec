/**
 * weftctl's command line: flags, the command they name, and the checks every command shares
 * (whole-number flags, `-o`). Everything here throws UsageError; nothing connects anywhere.
 */
import { parseArgs, type ParseArgsConfig } from 'node:util';
import { UsageError } from '../core/errors.ts';
import { OUTPUT_FORMATS, type OutputFormat } from '../status/render.ts';
import { DEFAULT_ETCD_PREFIX } from '../subnet/lease.ts';
import { DEFAULT_NET_CONF_PATH } from '../subnet/kube/netconf.ts';

export const USAGE = `weftctl: inspect and set up a weft pod network (state in etcd, flannel's schema, or
Kubernetes Node objects and their flannel annotations)

Usage:
  weftctl network init --network CIDR [--subnet-len N] [--vni N] [--port N] [--force]   (etcd mode)
  weftctl network init --config-file FILE [--force]                                     (etcd mode)
  weftctl get network [-o json|yaml]
  weftctl get nodes [-o wide|json|yaml] [--watch]
  weftctl describe node <name|public-ip|subnet> [-o json|yaml]
  weftctl check [--subnet-file FILE] [--device NAME] [--public-ip IP] [--node-name NAME] [-o json|yaml]
  weftctl trace <src-pod-ip> <dst-ip>[:port[/tcp|udp]] [--probe [--src-netns PATH]] [--ipam-dir DIR] [-o json|yaml]
  weftctl get services [--kubeconfig FILE] [-o wide|json|yaml]
  weftctl version

Kubernetes mode (when --kubeconfig or --kube-subnet-mgr is given, or $WEFTD_KUBE_SUBNET_MGR is true,
as for weftd): nodes are the API's Node objects, the network is net-conf.json.
  --kubeconfig FILE       [$WEFTD_KUBECONFIG; default: in-cluster service account, else $KUBECONFIG]
  --kube-subnet-mgr       Kubernetes mode with the default kubeconfig   [$WEFTD_KUBE_SUBNET_MGR]
  --net-config-path FILE  [$WEFTD_NET_CONFIG_PATH, default ${DEFAULT_NET_CONF_PATH}]
  --kube-annotation-prefix PREFIX           [$WEFTD_KUBE_ANNOTATION_PREFIX, default flannel.alpha.coreos.com]
  --node-name NAME        (check) this node's Node [$WEFTD_NODE_NAME, $NODE_NAME; default: found by IP]

etcd mode (same flags and environment as weftd):
  --etcd-endpoints URLS   comma separated   [$WEFTD_ETCD_ENDPOINTS, default http://127.0.0.1:2379]
  --etcd-prefix PATH                        [$WEFTD_ETCD_PREFIX, default ${DEFAULT_ETCD_PREFIX}]
  --etcd-cafile FILE, --etcd-certfile FILE, --etcd-keyfile FILE
                                            [$WEFTD_ETCD_CAFILE, $WEFTD_ETCD_CERTFILE, $WEFTD_ETCD_KEYFILE]

Both modes:
  --timeout SECONDS       per etcd or API call (default 5)
  --subnet-file FILE      (check) weftd's subnet file [$WEFTD_SUBNET_FILE, default /run/flannel/subnet.env]

check runs on a node (inside its network namespace, e.g. nsenter --net=...) and compares the
kernel state with etcd or the Node annotations. Exit status: 0 ok, 1 check found differences, 2 error.

trace also runs on a node: it walks a packet from a local pod (or the node itself) through the
Service proxy (table ip weft-proxy), the routing table, neighbor and FDB entries, to a local
bridge port or over VXLAN to the peer node, from live kernel state. --probe sends one real
packet from the pod's namespace (found under /run/netns, or --src-netns) and reports where this
node saw it; exit status 1 when the walk ends short of a pod or node. get services reads
Services and EndpointSlices from the Kubernetes API (--kubeconfig, in-cluster, or $KUBECONFIG)
and whether this node's table programs them; without any API config it lists what the table
alone holds.
`;

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
  probe: { type: 'boolean' },
  'src-netns': { type: 'string' },
  'ipam-dir': { type: 'string' },
  kubeconfig: { type: 'string' },
  'kube-subnet-mgr': { type: 'boolean' },
  'net-config-path': { type: 'string' },
  'kube-annotation-prefix': { type: 'string' },
  'node-name': { type: 'string' },
  help: { type: 'boolean', short: 'h' },
} satisfies ParseArgsConfig['options'];

/** The commands weftctl knows, by their words on the command line. */
export const VERBS = ['network init', 'get network', 'get nodes', 'get services', 'describe node', 'check', 'trace', 'version', 'help'] as const;
export type Verb = (typeof VERBS)[number];

/** What the command line asks for. */
export interface CommandLine {
  verb: Verb;
  /** The node of `describe node NAME`. */
  arg?: string;
  /** Positional arguments after the command words (`trace SRC DST`). */
  args?: string[];
  flags: Flags;
  /** `help` when no command was named at all (usage, exit 2) rather than asked for (exit 0). */
  unasked?: boolean;
}

function parseFlags(argv: string[]) {
  try {
    return parseArgs({ args: argv, options, allowPositionals: true, strict: true });
  } catch (err) {
    throw new UsageError((err as Error).message);
  }
}

/** The parsed flags, as node:util's parseArgs returns them. */
export type Flags = ReturnType<typeof parseFlags>['values'];

/** Parses `argv` (without node and script) into a {@link CommandLine}. */
export function parseCommandLine(argv: string[]): CommandLine {
  const { values: flags, positionals: pos } = parseFlags(argv);
  if (flags.help || pos.length === 0) return { verb: 'help', flags, unasked: !flags.help };
  const [cmd, sub, arg] = pos;
  // `get node` / `get service` / `get svc` are kubectl's aliases; `check`, `trace` and `version` take no noun.
  const noun = cmd === 'get' && sub === 'node' ? 'nodes' : cmd === 'get' && (sub === 'service' || sub === 'svc') ? 'services' : (sub ?? '');
  const words = cmd === 'check' || cmd === 'version' || cmd === 'trace' ? cmd : `${cmd} ${noun}`.trim();
  const verb = VERBS.find((v) => v === words && v !== 'help');
  if (!verb) throw new UsageError(`unknown command "${pos.join(' ')}"`);
  const maxArgs = verb === 'describe node' || verb === 'trace' ? 3 : verb === 'check' || verb === 'version' ? 1 : 2;
  if (pos.length > maxArgs) throw new UsageError(`unexpected argument "${pos.slice(maxArgs).join(' ')}"`);
  if (verb === 'trace') return { verb, args: pos.slice(1), flags };
  return { verb, arg: verb === 'describe node' ? arg : undefined, flags };
}

/** A flag that must be a whole number; undefined when not given. */
export function intFlag(flags: Flags, name: 'subnet-len' | 'vni' | 'port' | 'timeout'): number | undefined {
  const s = flags[name];
  if (s === undefined) return undefined;
  if (!/^\d+$/.test(s)) throw new UsageError(`--${name} must be a whole number, got "${s}"`);
  return Number(s);
}

/** `-o`, checked against what the command can print (table when not given). */
export function outputFormat(flags: Flags, allowed: readonly OutputFormat[] = OUTPUT_FORMATS): OutputFormat {
  const o = (flags.output ?? 'table') as OutputFormat;
  if (!allowed.includes(o)) throw new UsageError(`-o must be one of ${allowed.filter((f) => f !== 'table').join(', ')}, got "${o}"`);
  return o;
}

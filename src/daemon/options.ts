/**
 * weftd's flags. Every flag can also come from the environment as `WEFTD_<FLAG>` in upper snake
 * case (`--etcd-endpoints` <- `WEFTD_ETCD_ENDPOINTS`); a flag on the command line wins.
 */
import { parseArgs } from 'node:util';
import { isIPv4 } from '../ip/ipv4.ts';
// The constant from lease.ts, not etcd.ts: parsing flags must not load the etcd client.
import { DEFAULT_ETCD_PREFIX } from '../subnet/lease.ts';
import { annotationNames, DEFAULT_ANNOTATION_PREFIX } from '../subnet/kube/annotations.ts';
import { DEFAULT_NET_CONF_PATH } from '../subnet/kube/netconf.ts';
import { DEFAULT_SOCKET } from '../fastpath/server.ts';
import { LOG_LEVELS } from './logger.ts';
import { DEFAULT_CNI_DATA_DIR } from './pods.ts';
import { UsageError } from '../core/errors.ts';
import { DEFAULT_NICE } from '../core/priority.ts';

export { UsageError };

export interface DaemonOptions {
  /** Kubernetes mode (flannel's kube subnet manager): lease = node.spec.podCIDR, no etcd. */
  kubeSubnetMgr: boolean;
  /** Kubernetes mode: kubeconfig file (else in-cluster, else $KUBECONFIG). */
  kubeconfig?: string;
  /** Kubernetes mode: flannel's net-conf.json. */
  netConfigPath: string;
  /** Kubernetes mode: annotation prefix (flannel's by default, so flannel nodes interoperate). */
  kubeAnnotationPrefix: string;
  /** Kubernetes mode: set NetworkUnavailable=False once the node is ready. */
  setNodeNetworkUnavailable: boolean;
  /** Run the Service proxy (src/proxy). */
  proxy: boolean;
  nodePortRange: { min: number; max: number };
  proxyFullSyncIntervalMs: number;
  etcdEndpoints: string[];
  etcdPrefix: string;
  etcdCafile?: string;
  etcdCertfile?: string;
  etcdKeyfile?: string;
  iface?: string;
  publicIP?: string;
  subnetFile: string;
  ipMasq: boolean;
  /** `host:port`; empty disables the server. */
  healthzAddr: string;
  nodeName: string;
  leaseTtlSeconds: number;
  renewMarginSeconds: number;
  /** The periodic full check (the event path repairs announced drift at once, see src/backend/vxlan/drift.ts). */
  reconcileIntervalMs: number;
  /** How often the watched lease table is compared with a full etcd listing; 0 disables. */
  resyncIntervalMs: number;
  /** No watch event and no progress answer for this long: restart the watch (src/subnet/etcdwatch.ts). */
  watchStallMs: number;
  logLevel: string;
  /** Unix socket of the CNI fast path (src/fastpath); empty disables it. */
  cniSocket: string;
  /** The pods' IPAM dataDir and bridge the fast path serves (requests naming others are refused); the dataDir also tells which pods still use a lost subnet (src/daemon/pods.ts). */
  cniDataDir: string;
  cniBridge: string;
  /** Most worker threads for CNI requests (started on demand); 0 runs them on the main thread. */
  cniWorkers: number;
  /** Nice value of every weftd thread (src/core/priority.ts); 0 leaves it. */
  nice: number;
}

/** Longest unix socket path the kernel accepts (sun_path is 108 bytes, NUL-terminated). */
const MAX_SOCKET_PATH = 107;

const FLAGS = {
  'kube-subnet-mgr': { type: 'boolean', default: false, help: 'Kubernetes mode: the subnet is node.spec.podCIDR, peers come from Node annotations; no etcd' },
  kubeconfig: { type: 'string', help: 'Kubernetes mode: kubeconfig file (default: in-cluster service account, else $KUBECONFIG)' },
  'net-config-path': { type: 'string', default: DEFAULT_NET_CONF_PATH, help: "Kubernetes mode: network config (flannel's net-conf.json)" },
  'kube-annotation-prefix': { type: 'string', default: DEFAULT_ANNOTATION_PREFIX, help: 'Kubernetes mode: prefix of the Node annotations weft reads and writes' },
  'set-node-network-unavailable': { type: 'boolean', default: true, help: 'Kubernetes mode: set the NetworkUnavailable=False condition once ready (--no-set-node-network-unavailable: leave it)' },
  proxy: { type: 'boolean', default: false, help: 'Service proxy: ClusterIP/NodePort to ready endpoints in nftables (the kube-proxy role; needs the Kubernetes API)' },
  'service-node-port-range': { type: 'string', default: '30000-32767', help: "Service proxy: the NodePort range (kube-apiserver's --service-node-port-range)" },
  'proxy-full-sync-interval': { type: 'string', default: '5m', help: 'Service proxy: how often the whole ip weft-proxy table is rewritten' },
  'etcd-endpoints': { type: 'string', default: 'http://127.0.0.1:2379', help: 'comma-separated etcd client URLs' },
  'etcd-prefix': { type: 'string', default: DEFAULT_ETCD_PREFIX, help: 'etcd key prefix (config at <prefix>/config)' },
  'etcd-cafile': { type: 'string', help: 'CA bundle for etcd TLS' },
  'etcd-certfile': { type: 'string', help: 'client certificate for etcd TLS' },
  'etcd-keyfile': { type: 'string', help: 'client key for etcd TLS' },
  iface: { type: 'string', help: "external interface (default: the default route's)" },
  'public-ip': { type: 'string', help: "this node's IP on the underlay (default: the interface's first IPv4)" },
  'subnet-file': { type: 'string', default: '/run/flannel/subnet.env', help: 'where to write FLANNEL_* for the CNI plugin' },
  'ip-masq': { type: 'boolean', default: false, help: 'masquerade pod traffic leaving the pod network (nftables)' },
  'healthz-addr': { type: 'string', default: '127.0.0.1:9333', help: 'host:port for /healthz, /readyz, /metrics ("" disables)' },
  'node-name': { type: 'string', help: "this node's name (also $NODE_NAME; required in Kubernetes mode; default in etcd mode: hostname)" },
  'lease-ttl': { type: 'string', default: '24h', help: 'subnet lease TTL (e.g. 24h, 90s)' },
  'renew-margin': { type: 'string', default: '1h', help: 'renew the lease this long before it expires' },
  'reconcile-interval': {
    type: 'string',
    default: '60s',
    help: 'how often kernel state (device, address, every peer entry) gets a full check, the safety net: drift the kernel announces on the VXLAN device is repaired at once regardless; firewall rules are checked about every 10s either way',
  },
  'resync-interval': { type: 'string', default: '5m', help: 'how often the lease table is re-listed to catch changes the watch missed ("0" disables)' },
  'watch-stall-timeout': {
    type: 'string',
    default: '15s',
    help: 'restart the etcd watch after this long without an event or a progress answer (progress is asked for every third of it)',
  },
  'log-level': { type: 'string', default: 'info', help: `one of ${LOG_LEVELS.join(', ')}` },
  'cni-socket': { type: 'string', default: DEFAULT_SOCKET, help: 'unix socket serving the CNI fast path to the weft launcher ("" disables)' },
  'cni-data-dir': {
    type: 'string',
    default: DEFAULT_CNI_DATA_DIR,
    help: 'the IPAM dataDir of the only network the CNI fast path serves; a lost subnet is left only when no pod address is allocated in it',
  },
  'cni-bridge': { type: 'string', default: 'cni0', help: 'the bridge of the only network the CNI fast path serves' },
  'cni-workers': { type: 'string', default: '2', help: 'most worker threads running CNI requests, started on demand and stopped after 60 s idle ("0": on the main thread)' },
  nice: {
    type: 'string',
    default: String(DEFAULT_NICE),
    help: 'nice value (-20 to 19) of weftd\'s threads, so that pod bursts do not hold up its control loop; "0" leaves it',
  },
  help: { type: 'boolean', default: false, help: 'show this help' },
} as const;

type FlagName = keyof typeof FLAGS;

/** `--flag-name` -> `WEFTD_FLAG_NAME`. */
export function envName(flag: string): string {
  return `WEFTD_${flag.toUpperCase().replaceAll('-', '_')}`;
}

/** Parses `90s`, `500ms`, `5m`, `24h` or bare seconds into milliseconds. */
export function parseDuration(text: string, flag: string): number {
  const m = /^(\d+(?:\.\d+)?)(ms|s|m|h)?$/.exec(text.trim());
  if (!m) throw new UsageError(`--${flag}: invalid duration "${text}" (e.g. 24h, 90s, 500ms)`);
  const unit = { ms: 1, s: 1000, m: 60_000, h: 3_600_000 }[m[2] ?? 's']!;
  return Math.round(Number(m[1]) * unit);
}

export function usage(): string {
  const lines = ['usage: weftd [flags]', ''];
  for (const [name, f] of Object.entries(FLAGS)) {
    const dflt = 'default' in f && f.default !== false ? ` (default ${JSON.stringify(f.default)})` : '';
    lines.push(`  --${name.padEnd(20)} ${f.help}${dflt}  [$${envName(name)}]`);
  }
  return `${lines.join('\n')}\n`;
}

/** Returns undefined when --help was asked for. Throws {@link UsageError}. */
export function parseOptions(argv: string[], env: NodeJS.ProcessEnv, hostname: string): DaemonOptions | undefined {
  let parsed;
  try {
    parsed = parseArgs({
      args: argv,
      options: Object.fromEntries(Object.entries(FLAGS).map(([k, f]) => [k, { type: f.type }])) as Record<FlagName, { type: 'string' | 'boolean' }>,
      allowPositionals: false,
      // `--no-<flag>` turns a boolean off (for the ones that default to true).
      allowNegative: true,
      strict: true,
    });
  } catch (err) {
    throw new UsageError((err as Error).message);
  }
  const values = parsed.values as Record<string, string | boolean | undefined>;
  const get = (name: FlagName): string | boolean | undefined => {
    if (values[name] !== undefined) return values[name];
    const e = env[envName(name)];
    if (e !== undefined) {
      if (FLAGS[name].type === 'boolean') {
        if (!/^(1|0|true|false|yes|no)$/i.test(e)) throw new UsageError(`$${envName(name)}: expected true or false, got "${e}"`);
        return /^(1|true|yes)$/i.test(e);
      }
      return e;
    }
    return 'default' in FLAGS[name] ? (FLAGS[name] as { default: string | boolean }).default : undefined;
  };
  const str = (name: FlagName) => get(name) as string | undefined;
  if (get('help')) return undefined;

  const kube = Boolean(get('kube-subnet-mgr'));
  // flannel's DaemonSet passes the node name as NODE_NAME (downward API); accept it too.
  const nodeName = str('node-name') || env.NODE_NAME || '';
  if (kube && !nodeName) throw new UsageError("--kube-subnet-mgr needs the node name: --node-name or $NODE_NAME (the downward API's spec.nodeName)");
  // Local traffic policies compare EndpointSlices' nodeName with ours: a hostname guess (case,
  // overrides, cloud names) would silently make no endpoint local.
  if (get('proxy') && !nodeName) throw new UsageError("--proxy needs the node name as Kubernetes knows it: --node-name or $NODE_NAME (the downward API's spec.nodeName)");
  const netConfigPath = str('net-config-path')!;
  if (!netConfigPath.startsWith('/')) throw new UsageError(`--net-config-path: "${netConfigPath}" is not an absolute path`);
  const annotationPrefix = str('kube-annotation-prefix')!;
  try {
    annotationNames(annotationPrefix);
  } catch (err) {
    throw new UsageError(`--kube-annotation-prefix: ${(err as Error).message}`);
  }
  const npr = /^(\d{1,5})-(\d{1,5})$/.exec(str('service-node-port-range')!);
  const nodePortRange = npr ? { min: Number(npr[1]), max: Number(npr[2]) } : undefined;
  if (!nodePortRange || nodePortRange.min < 1 || nodePortRange.max > 65535 || nodePortRange.min > nodePortRange.max) {
    throw new UsageError(`--service-node-port-range: "${str('service-node-port-range')}" is not a range like 30000-32767`);
  }
  const fullSync = parseDuration(str('proxy-full-sync-interval')!, 'proxy-full-sync-interval');
  if (fullSync < 10_000) throw new UsageError('--proxy-full-sync-interval: must be at least 10s');
  const endpoints = (str('etcd-endpoints') ?? '')
    .split(',')
    .map((s) => s.trim())
    .filter(Boolean);
  if (!kube && !endpoints.length) throw new UsageError('--etcd-endpoints: at least one endpoint is required');
  for (const e of endpoints) {
    if (!/^https?:\/\/[^/]+\/?$/.test(e)) throw new UsageError(`--etcd-endpoints: "${e}" is not an http(s)://host:port URL`);
  }
  const publicIP = str('public-ip') || undefined;
  if (publicIP && !isIPv4(publicIP)) throw new UsageError(`--public-ip: "${publicIP}" is not an IPv4 address`);
  const subnetFile = str('subnet-file')!;
  if (!subnetFile.startsWith('/')) throw new UsageError(`--subnet-file: "${subnetFile}" is not an absolute path`);
  const ttl = parseDuration(str('lease-ttl')!, 'lease-ttl');
  const margin = parseDuration(str('renew-margin')!, 'renew-margin');
  if (ttl < 5000) throw new UsageError('--lease-ttl: must be at least 5s');
  if (margin >= ttl) throw new UsageError(`--renew-margin (${str('renew-margin')}) must be shorter than --lease-ttl (${str('lease-ttl')})`);
  const reconcile = parseDuration(str('reconcile-interval')!, 'reconcile-interval');
  if (reconcile < 100) throw new UsageError('--reconcile-interval: must be at least 100ms');
  const resync = parseDuration(str('resync-interval')!, 'resync-interval');
  if (resync !== 0 && resync < 1000) throw new UsageError('--resync-interval: must be 0 (off) or at least 1s');
  const watchStall = parseDuration(str('watch-stall-timeout')!, 'watch-stall-timeout');
  if (watchStall < 1000) throw new UsageError('--watch-stall-timeout: must be at least 1s');
  const logLevel = str('log-level')!;
  if (!(LOG_LEVELS as readonly string[]).includes(logLevel)) throw new UsageError(`--log-level: "${logLevel}" is not one of ${LOG_LEVELS.join(', ')}`);
  const cniSocket = str('cni-socket') ?? '';
  if (cniSocket && !cniSocket.startsWith('/')) throw new UsageError(`--cni-socket: "${cniSocket}" is not an absolute path`);
  if (Buffer.byteLength(cniSocket) > MAX_SOCKET_PATH) throw new UsageError(`--cni-socket: "${cniSocket}" is longer than ${MAX_SOCKET_PATH} bytes (a unix socket path limit)`);
  const cniDataDir = str('cni-data-dir')!;
  if (!cniDataDir.startsWith('/')) throw new UsageError(`--cni-data-dir: "${cniDataDir}" is not an absolute path`);
  const cniBridge = str('cni-bridge')!;
  if (!/^[^/:\s]{1,15}$/.test(cniBridge) || cniBridge === '.' || cniBridge === '..') throw new UsageError(`--cni-bridge: "${cniBridge}" is not an interface name`);
  const cniWorkersText = str('cni-workers')!;
  const cniWorkers = Number(cniWorkersText);
  if (!/^\d+$/.test(cniWorkersText) || cniWorkers > 16) throw new UsageError(`--cni-workers: "${cniWorkersText}" is not a number from 0 to 16`);
  const niceText = str('nice')!.trim();
  const nice = Number(niceText);
  if (!/^-?\d+$/.test(niceText) || nice < -20 || nice > 19) throw new UsageError(`--nice: "${niceText}" is not a number from -20 to 19`);
  const tls = { cafile: str('etcd-cafile'), certfile: str('etcd-certfile'), keyfile: str('etcd-keyfile') };
  if ((tls.certfile || tls.keyfile) && !(tls.certfile && tls.keyfile)) throw new UsageError('--etcd-certfile and --etcd-keyfile go together');
  return {
    kubeSubnetMgr: kube,
    kubeconfig: str('kubeconfig') || undefined,
    netConfigPath,
    kubeAnnotationPrefix: annotationPrefix,
    setNodeNetworkUnavailable: Boolean(get('set-node-network-unavailable')),
    proxy: Boolean(get('proxy')),
    nodePortRange,
    proxyFullSyncIntervalMs: fullSync,
    etcdEndpoints: endpoints,
    etcdPrefix: str('etcd-prefix')!,
    etcdCafile: tls.cafile || undefined,
    etcdCertfile: tls.certfile || undefined,
    etcdKeyfile: tls.keyfile || undefined,
    iface: str('iface') || undefined,
    publicIP,
    subnetFile,
    ipMasq: Boolean(get('ip-masq')),
    healthzAddr: str('healthz-addr') ?? '',
    nodeName: nodeName || hostname,
    leaseTtlSeconds: Math.ceil(ttl / 1000),
    renewMarginSeconds: Math.ceil(margin / 1000),
    reconcileIntervalMs: reconcile,
    resyncIntervalMs: resync,
    watchStallMs: watchStall,
    logLevel,
    cniSocket,
    cniDataDir,
    cniBridge,
    cniWorkers,
    nice,
  };
}

/**
 * weftd's flags. Every flag can also come from the environment as `WEFTD_<FLAG>` in upper snake
 * case (`--etcd-endpoints` <- `WEFTD_ETCD_ENDPOINTS`); a flag on the command line wins.
 */
import { parseArgs } from 'node:util';
import { isIPv4 } from '../ip/ipv4.ts';
import { DEFAULT_ETCD_PREFIX } from '../subnet/etcd.ts';
import { DEFAULT_SOCKET } from '../fastpath/server.ts';
import { LOG_LEVELS } from './logger.ts';
import { DEFAULT_CNI_DATA_DIR } from './pods.ts';
import { UsageError } from '../core/errors.ts';

export { UsageError };

export interface DaemonOptions {
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
  reconcileIntervalMs: number;
  /** How often the watched lease table is compared with a full etcd listing; 0 disables. */
  resyncIntervalMs: number;
  /** No watch event and no progress answer for this long: restart the watch (src/subnet/etcdwatch.ts). */
  watchStallMs: number;
  logLevel: string;
  /** Unix socket of the CNI fast path (src/fastpath); empty disables it. */
  cniSocket: string;
  /** The CNI plugin's IPAM `dataDir`: which pods still use a lost subnet (src/daemon/pods.ts). */
  cniDataDir: string;
}

/** Longest unix socket path the kernel accepts (sun_path is 108 bytes, NUL-terminated). */
const MAX_SOCKET_PATH = 107;

const FLAGS = {
  'etcd-endpoints': { type: 'string', default: 'http://127.0.0.1:2379', help: 'comma-separated etcd client URLs' },
  'etcd-prefix': { type: 'string', default: DEFAULT_ETCD_PREFIX, help: 'etcd key prefix (config at <prefix>/config)' },
  'etcd-cafile': { type: 'string', help: 'CA bundle for etcd TLS' },
  'etcd-certfile': { type: 'string', help: 'client certificate for etcd TLS' },
  'etcd-keyfile': { type: 'string', help: 'client key for etcd TLS' },
  iface: { type: 'string', help: 'external interface (default: the default route\'s)' },
  'public-ip': { type: 'string', help: 'this node\'s IP on the underlay (default: the interface\'s first IPv4)' },
  'subnet-file': { type: 'string', default: '/run/flannel/subnet.env', help: 'where to write FLANNEL_* for the CNI plugin' },
  'ip-masq': { type: 'boolean', default: false, help: 'masquerade pod traffic leaving the pod network (nftables)' },
  'healthz-addr': { type: 'string', default: '127.0.0.1:9333', help: 'host:port for /healthz, /readyz, /metrics ("" disables)' },
  'node-name': { type: 'string', help: 'name used in logs (default: hostname)' },
  'lease-ttl': { type: 'string', default: '24h', help: 'subnet lease TTL (e.g. 24h, 90s)' },
  'renew-margin': { type: 'string', default: '1h', help: 'renew the lease this long before it expires' },
  'reconcile-interval': { type: 'string', default: '1s', help: 'how often kernel state is checked and repaired' },
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
    help: "the CNI plugin's IPAM dataDir; a lost subnet is left only when no pod address is allocated in it",
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
  return lines.join('\n') + '\n';
}

/** Returns undefined when --help was asked for. Throws {@link UsageError}. */
export function parseOptions(argv: string[], env: NodeJS.ProcessEnv, hostname: string): DaemonOptions | undefined {
  let parsed;
  try {
    parsed = parseArgs({
      args: argv,
      options: Object.fromEntries(Object.entries(FLAGS).map(([k, f]) => [k, { type: f.type }])) as Record<FlagName, { type: 'string' | 'boolean' }>,
      allowPositionals: false,
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

  const endpoints = (str('etcd-endpoints') ?? '').split(',').map((s) => s.trim()).filter(Boolean);
  if (!endpoints.length) throw new UsageError('--etcd-endpoints: at least one endpoint is required');
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
  const tls = { cafile: str('etcd-cafile'), certfile: str('etcd-certfile'), keyfile: str('etcd-keyfile') };
  if ((tls.certfile || tls.keyfile) && !(tls.certfile && tls.keyfile)) throw new UsageError('--etcd-certfile and --etcd-keyfile go together');
  return {
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
    nodeName: str('node-name') || hostname,
    leaseTtlSeconds: Math.ceil(ttl / 1000),
    renewMarginSeconds: Math.ceil(margin / 1000),
    reconcileIntervalMs: reconcile,
    resyncIntervalMs: resync,
    watchStallMs: watchStall,
    logLevel,
    cniSocket,
    cniDataDir,
  };
}

/**
 * The test API server's command line (see server.ts):
 *
 *   node lab/apiserver/main.ts --listen 198.51.100.2:6443 --etcd http://198.51.100.2:2379 \
 *     --service-cluster-ip-range 198.19.0.0/16 [--service-node-port-range 30000-32767] \
 *     [--etcd-prefix /registry] [--etcd-cafile F --etcd-certfile F --etcd-keyfile F] [--bookmark-interval 60s] [--min-request-timeout 1800] \
 *     [--kubeconfig out.yaml] [--kubernetes-service [--advertise-address IP]] [--log-level info]
 *     [--allocate-node-cidrs --cluster-cidr 198.18.0.0/16 [--node-cidr-mask-size 24]]
 *
 * --kubernetes-service creates `default/kubernetes` (first IP of the range, port 443) and its
 * EndpointSlice pointing at --advertise-address (default: the --listen host), as kube-apiserver
 * always does; off by default so tests see only their own Services.
 * --allocate-node-cidrs is kube-controller-manager's node IPAM, run in this process (nodeipam.ts).
 * --min-request-timeout is kube-apiserver's: a watch without timeoutSeconds ends after a random
 * time between that many seconds and twice as many.
 *
 * Run it inside the control-plane namespace (`nsenter --net=/run/netns/<ns> -- node ...`). It
 * prints `listening on <url>` on stdout once it serves, writes the kubeconfig if asked, and exits
 * on SIGTERM/SIGINT.
 */
import { parseArgs } from 'node:util';
import winston from 'winston';
import { errText, UsageError } from '../../src/core/errors.ts';
import { writeKubeconfig } from './kubeconfig.ts';
import { parseIPv4 } from './names.ts';
import { startApiServer } from './server.ts';

function duration(s: string): number {
  const m = /^(\d+)(ms|s|m)?$/.exec(s);
  if (!m) throw new UsageError(`invalid duration "${s}"`);
  return Number(m[1]) * (m[2] === 'ms' ? 1 : m[2] === 'm' ? 60_000 : 1000);
}

function seconds(s: string): number {
  if (!/^\d{1,6}$/.test(s) || Number(s) < 1) throw new UsageError(`invalid --min-request-timeout "${s}" (whole seconds)`);
  return Number(s);
}

async function main(argv: string[]): Promise<void> {
  const parse = () =>
    parseArgs({
      args: argv,
      options: {
        listen: { type: 'string', default: '127.0.0.1:6443' },
        etcd: { type: 'string', multiple: true },
        'etcd-prefix': { type: 'string', default: '/registry' },
        'etcd-cafile': { type: 'string' },
        'etcd-certfile': { type: 'string' },
        'etcd-keyfile': { type: 'string' },
        'service-cluster-ip-range': { type: 'string', default: '198.19.0.0/16' },
        'service-node-port-range': { type: 'string', default: '30000-32767' },
        'bookmark-interval': { type: 'string', default: '60s' },
        'min-request-timeout': { type: 'string', default: '1800' },
        kubeconfig: { type: 'string' },
        'kubernetes-service': { type: 'boolean', default: false },
        'allocate-node-cidrs': { type: 'boolean', default: false },
        'cluster-cidr': { type: 'string' },
        'node-cidr-mask-size': { type: 'string', default: '24' },
        'advertise-address': { type: 'string' },
        'log-level': { type: 'string', default: 'info' },
      },
    }).values;
  let v: ReturnType<typeof parse>;
  try {
    v = parse();
  } catch (err) {
    throw new UsageError((err as Error).message);
  }
  const m = /^(.+):(\d+)$/.exec(v.listen!);
  if (!m) throw new UsageError(`--listen must be host:port, not "${v.listen}"`);
  const etcd = (v.etcd ?? []).flatMap((e) => e.split(',')).filter(Boolean);
  if (!etcd.length) throw new UsageError('--etcd is required');
  const advertise = v['advertise-address'] ?? m[1]!;
  if (v['kubernetes-service'] && (parseIPv4(advertise) === undefined || advertise === '0.0.0.0')) throw new UsageError(`--kubernetes-service needs an IPv4 --advertise-address (not "${advertise}")`);
  if (v['allocate-node-cidrs'] && !v['cluster-cidr']) throw new UsageError('--allocate-node-cidrs needs --cluster-cidr');
  if (!/^\d{1,2}$/.test(v['node-cidr-mask-size']!)) throw new UsageError(`invalid --node-cidr-mask-size "${v['node-cidr-mask-size']}"`);
  const log = winston.createLogger({
    level: v['log-level'],
    format: winston.format.combine(winston.format.timestamp(), winston.format.json()),
    transports: [new winston.transports.Console({ stderrLevels: ['error', 'warn', 'info', 'debug'] })],
  });
  const server = await startApiServer({
    host: m[1]!.replace(/^\[|\]$/g, ''),
    port: Number(m[2]),
    etcd,
    etcdPrefix: v['etcd-prefix'],
    etcdTls: { cafile: v['etcd-cafile'], certfile: v['etcd-certfile'], keyfile: v['etcd-keyfile'] },
    serviceClusterIPRange: v['service-cluster-ip-range']!,
    nodePortRange: v['service-node-port-range'],
    bookmarkIntervalMs: duration(v['bookmark-interval']!),
    maxWatchSeconds: seconds(v['min-request-timeout']!),
    log,
    kubernetesService: v['kubernetes-service'] ? { address: advertise } : undefined,
    nodeIpam: v['allocate-node-cidrs'] ? { clusterCIDR: v['cluster-cidr']!, nodeMaskSize: Number(v['node-cidr-mask-size']) } : undefined,
  });
  if (v.kubeconfig) writeKubeconfig(v.kubeconfig, { server: server.url });
  process.stdout.write(`listening on ${server.url}\n`);
  const ac = new AbortController();
  for (const sig of ['SIGTERM', 'SIGINT'] as const) process.once(sig, () => ac.abort());
  await new Promise((r) => ac.signal.addEventListener('abort', r, { once: true }));
  await server.close();
}

main(process.argv.slice(2)).catch((err) => {
  process.stderr.write(`weft-apiserver: ${errText(err)}\n`);
  process.exit(err instanceof UsageError ? 2 : 1);
});

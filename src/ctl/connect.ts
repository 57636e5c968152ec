/**
 * Picks and opens the {@link StatusSource} the flags and weftd's environment name: the Kubernetes
 * API when `--kubeconfig` or `--kube-subnet-mgr` is given or `$WEFTD_KUBE_SUBNET_MGR` is true (as
 * weftd decides its mode), else etcd. The commands never see which.
 */
import { UsageError } from '../core/errors.ts';
import { loadKubeConfig } from '../kube/client.ts';
import { EtcdStatusSource } from '../status/collect.ts';
import { KubeStatusSource } from '../status/kube.ts';
import type { StatusSource } from '../status/model.ts';
import { EtcdSubnetManager } from '../subnet/etcd.ts';
import { DEFAULT_ETCD_PREFIX } from '../subnet/lease.ts';
import { annotationNames } from '../subnet/kube/annotations.ts';
import { DEFAULT_NET_CONF_PATH } from '../subnet/kube/netconf.ts';
import { intFlag, type Flags } from './args.ts';

/** True when the flags or environment ask for Kubernetes mode. */
export function kubeMode(flags: Flags, env: NodeJS.ProcessEnv): boolean {
  if (flags.kubeconfig !== undefined || flags['kube-subnet-mgr']) return true;
  const e = env.WEFTD_KUBE_SUBNET_MGR;
  if (e === undefined || e === '') return false;
  // Read as weftd reads it, so weftctl beside weftd (same environment) picks the same mode.
  if (!/^(1|0|true|false|yes|no)$/i.test(e)) throw new UsageError(`$WEFTD_KUBE_SUBNET_MGR: expected true or false, got "${e}"`);
  return /^(1|true|yes)$/i.test(e);
}

/**
 * Opens the source; nothing is dialled until the first call. `note` gets what an operator should
 * see beside the output: a watch re-listing after a compaction or reconnect, unreadable leases.
 */
export function openSource(flags: Flags, opts: { env: NodeJS.ProcessEnv; note?: (msg: string) => void }): StatusSource {
  const env = opts.env;
  const timeout = intFlag(flags, 'timeout') ?? 5;
  if (kubeMode(flags, env)) return openKubeSource(flags, { env, note: opts.note, timeoutMs: timeout * 1000 });
  const endpoints = (flags['etcd-endpoints'] ?? env.WEFTD_ETCD_ENDPOINTS ?? 'http://127.0.0.1:2379')
    .split(',')
    .map((s) => s.trim())
    .filter(Boolean);
  if (!endpoints.length) throw new UsageError('--etcd-endpoints is empty');
  for (const e of endpoints) {
    if (!/^https?:\/\/[^/\s]+\/?$/.test(e)) throw new UsageError(`etcd endpoint "${e}" is not a URL like http://198.51.100.1:2379`);
  }
  const mgr = new EtcdSubnetManager({
    endpoints,
    prefix: flags['etcd-prefix'] ?? env.WEFTD_ETCD_PREFIX ?? DEFAULT_ETCD_PREFIX,
    cafile: flags['etcd-cafile'] ?? env.WEFTD_ETCD_CAFILE,
    certfile: flags['etcd-certfile'] ?? env.WEFTD_ETCD_CERTFILE,
    keyfile: flags['etcd-keyfile'] ?? env.WEFTD_ETCD_KEYFILE,
    callTimeoutMs: timeout * 1000,
    log: {
      error: (msg: string) => opts.note?.(msg),
      warn: (msg: string) => opts.note?.(msg),
      info: (msg: string) => opts.note?.(msg),
      debug: () => undefined,
    },
  });
  return new EtcdStatusSource(mgr, { endpoints });
}

function openKubeSource(flags: Flags, opts: { env: NodeJS.ProcessEnv; note?: (msg: string) => void; timeoutMs: number }): StatusSource {
  const env = opts.env;
  const netConfPath = flags['net-config-path'] ?? env.WEFTD_NET_CONFIG_PATH ?? DEFAULT_NET_CONF_PATH;
  const annotationPrefix = flags['kube-annotation-prefix'] ?? env.WEFTD_KUBE_ANNOTATION_PREFIX;
  if (annotationPrefix !== undefined) {
    try {
      annotationNames(annotationPrefix);
    } catch (err) {
      throw new UsageError(`--kube-annotation-prefix: ${(err as Error).message}`);
    }
  }
  const kubeconfig = flags.kubeconfig ?? (env.WEFTD_KUBECONFIG || undefined);
  if (kubeconfig === '') throw new UsageError('--kubeconfig is empty');
  const { kc, server } = loadKubeConfig({ kubeconfig, env });
  return new KubeStatusSource({ kc, server, netConfPath, annotationPrefix, timeoutMs: opts.timeoutMs, note: opts.note });
}

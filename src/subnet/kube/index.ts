/**
 * Kubernetes mode's subnet manager (flannel's kube subnet manager): config from net-conf.json,
 * lease = the Node's podCIDR, peers from Node annotations. weftd wires it with
 * {@link createKubeSubnetManager}.
 */
import type { Clock } from '../../core/clock.ts';
import type { Log } from '../../core/log.ts';
import { UsageError } from '../../core/errors.ts';
import { loadKubeConfig } from '../../kube/client.ts';
import { KubeSubnetManager } from './manager.ts';

export * from './annotations.ts';
export * from './netconf.ts';
export * from './table.ts';
export * from './manager.ts';
export * from './informer.ts';

export interface CreateKubeSubnetManagerOptions {
  /** --kubeconfig; else in-cluster, else $KUBECONFIG. */
  kubeconfig?: string;
  /** --node-name / NODE_NAME (required). */
  nodeName: string;
  /** --net-config-path (default /etc/kube-weft/net-conf.json). */
  netConfPath?: string;
  /** --kube-annotation-prefix (default flannel.alpha.coreos.com). */
  annotationPrefix?: string;
  /** --set-node-network-unavailable (default true). */
  setNodeNetworkUnavailable?: boolean;
  log?: Log;
  clock?: Clock;
  signal?: AbortSignal;
  env?: NodeJS.ProcessEnv;
  onMalformedNode?: (node: string, why: string) => void;
  onUnannotatedNodes?: (count: number) => void;
  onError?: (err: unknown) => void;
}

/** Loads the kubeconfig and builds the manager; throws UsageError for a missing/bad kubeconfig. */
export function createKubeSubnetManager(opts: CreateKubeSubnetManagerOptions): KubeSubnetManager {
  if (!opts.nodeName) throw new UsageError('--kube-subnet-mgr needs the node name: --node-name or NODE_NAME');
  const { kc, source, server } = loadKubeConfig({ kubeconfig: opts.kubeconfig, env: opts.env });
  opts.log?.info(`kube subnet manager: API server ${server} (${source} config), node "${opts.nodeName}"`);
  return new KubeSubnetManager({ ...opts, kc });
}

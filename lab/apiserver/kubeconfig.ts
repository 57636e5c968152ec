/** A kubeconfig for this server: one cluster, one context, no credentials (the server has no auth). */
import { writeFileSync } from 'node:fs';
import YAML from 'yaml';

export interface KubeconfigOptions {
  /** The server's URL, e.g. `http://198.51.100.2:6443`. */
  server: string;
  /** Cluster, user and context name (default `weft-lab`). */
  name?: string;
  namespace?: string;
}

/**
 * The kubeconfig's text. It sets insecure-skip-tls-verify: for https that accepts lab certificates,
 * and @kubernetes/client-node 2.x refuses a plain-http server unless it is set (kubectl ignores it
 * for http).
 */
export function kubeconfig(opts: KubeconfigOptions): string {
  const name = opts.name ?? 'weft-lab';
  const cluster: Record<string, unknown> = { server: opts.server };
  cluster['insecure-skip-tls-verify'] = true;
  return YAML.stringify({
    apiVersion: 'v1',
    kind: 'Config',
    clusters: [{ name, cluster }],
    users: [{ name, user: {} }],
    contexts: [{ name, context: { cluster: name, user: name, ...(opts.namespace ? { namespace: opts.namespace } : {}) } }],
    'current-context': name,
    preferences: {},
  });
}

/** Writes {@link kubeconfig} to `path` (mode 0600, as kubectl writes its own). */
export function writeKubeconfig(path: string, opts: KubeconfigOptions): void {
  writeFileSync(path, kubeconfig(opts), { mode: 0o600 });
}

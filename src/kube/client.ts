/**
 * The small part of the Kubernetes API weftd uses, on `@kubernetes/client-node` 2.x: loading a
 * kubeconfig, and nodes get / list / patch status, each with a deadline and errors that say what
 * failed. Never imported by the CNI plugin (its bundle must stay free of client-node).
 *
 * client-node quirks handled here:
 * - PATCH defaults to JSON patch; strategic merge needs the Content-Type set per call
 *   (`setHeaderOptions`).
 * - Non-watch calls have no deadline of their own: a middleware puts an AbortSignal on each.
 * - ApiException messages carry the whole response; we keep the status and the API's message.
 */
import { existsSync } from 'node:fs';
import { CoreV1Api, KubeConfig, PatchStrategy, setHeaderMiddleware, type ConfigurationOptions, type V1Node, type V1NodeList } from '@kubernetes/client-node';
import { markRetryable, UsageError } from '../core/errors.ts';

const SA_TOKEN = '/var/run/secrets/kubernetes.io/serviceaccount/token';

/** Where the kubeconfig came from (for the start-up log line). */
export type KubeConfigSource = 'file' | 'in-cluster' | 'KUBECONFIG';

/**
 * Loads the client config: `kubeconfig` (a path) if given, else the pod's service account
 * (KUBERNETES_SERVICE_HOST/PORT and the mounted token), else `$KUBECONFIG`. Throws
 * {@link UsageError} when none applies or the file is unusable.
 */
export function loadKubeConfig(opts: { kubeconfig?: string; env?: NodeJS.ProcessEnv } = {}): { kc: KubeConfig; source: KubeConfigSource; server: string } {
  const env = opts.env ?? process.env;
  const kc = new KubeConfig();
  let source: KubeConfigSource;
  const fromFile = (path: string, what: string) => {
    try {
      kc.loadFromFile(path);
    } catch (cause) {
      throw new UsageError(`${what}: cannot load kubeconfig "${path}": ${(cause as Error).message}`, { cause });
    }
  };
  if (opts.kubeconfig) {
    fromFile(opts.kubeconfig, '--kubeconfig');
    source = 'file';
  } else if (env.KUBERNETES_SERVICE_HOST && env.KUBERNETES_SERVICE_PORT && existsSync(SA_TOKEN)) {
    kc.loadFromCluster();
    source = 'in-cluster';
  } else if (env.KUBECONFIG) {
    const path = env.KUBECONFIG.split(':').find((p) => p && existsSync(p));
    if (!path) throw new UsageError(`$KUBECONFIG: no such file "${env.KUBECONFIG}"`);
    fromFile(path, '$KUBECONFIG');
    source = 'KUBECONFIG';
  } else {
    throw new UsageError('no Kubernetes API config: pass --kubeconfig, run in a pod with a service account token, or set $KUBECONFIG');
  }
  const cluster = kc.getCurrentCluster();
  if (!cluster) throw new UsageError(`kubeconfig (${source}) has no current cluster`);
  let url: URL;
  try {
    url = new URL(cluster.server);
  } catch {
    throw new UsageError(`kubeconfig (${source}): cluster server ${JSON.stringify(cluster.server)} is not a URL`);
  }
  if (url.protocol !== 'https:' && url.protocol !== 'http:') {
    throw new UsageError(`kubeconfig (${source}): cluster server "${cluster.server}" is not http(s)`);
  }
  if (url.protocol === 'http:' && !cluster.skipTLSVerify) {
    // client-node refuses plain http unless skipTLSVerify is set; there is no TLS to verify, so
    // setting it changes nothing else (the lab's API server speaks plain http).
    kc.clusters = kc.clusters.map((c) => (c.name === cluster.name ? { ...c, skipTLSVerify: true } : c));
  }
  return { kc, source, server: cluster.server };
}

/** The API server answered with an error status, or could not be reached (status 0). */
export class KubeApiError extends Error {
  readonly status: number;
  constructor(op: string, status: number, detail: string, options?: { cause?: unknown }) {
    super(`kube API ${op}: ${status ? `HTTP ${status}${detail ? `: ${detail}` : ''}` : detail || 'unreachable'}`, options);
    this.name = 'KubeApiError';
    this.status = status;
    // Unreachable, throttled or a server-side failure: worth retrying; 4xx is ours to fix.
    if (status === 0 || status === 429 || status >= 500 || status === 409) markRetryable(this);
  }
}

/** A client-node failure as a {@link KubeApiError} (status, the server's message, or why it was unreachable). */
export function toApiError(op: string, err: unknown): KubeApiError {
  const e = err as { code?: unknown; body?: unknown; name?: string; message?: string; cause?: unknown };
  if (typeof e?.code === 'number' && e.code >= 100) {
    let detail = '';
    const body = e.body;
    if (typeof body === 'string') {
      try {
        const parsed = JSON.parse(body) as { message?: unknown };
        detail = typeof parsed.message === 'string' ? parsed.message : body;
      } catch {
        detail = body;
      }
    } else if (body && typeof body === 'object' && typeof (body as { message?: unknown }).message === 'string') {
      detail = (body as { message: string }).message;
    }
    return new KubeApiError(op, e.code, detail.slice(0, 300), { cause: err });
  }
  const why = e?.name === 'TimeoutError' ? 'timed out' : ((e?.cause as Error | undefined)?.message ?? e?.message ?? String(err));
  return new KubeApiError(op, 0, why, { cause: err });
}

export interface NodeClientOptions {
  /** Deadline of each call (ms). */
  timeoutMs?: number;
}

/** Nodes get / list / status patch with deadlines; what the kube subnet manager needs. */
export interface NodeClient {
  get(name: string): Promise<V1Node>;
  /** Every Node; with `limit`, at most that many (with the list's resourceVersion all the same). */
  list(opts?: { limit?: number }): Promise<V1NodeList>;
  /** Strategic-merge PATCH on `nodes/<name>/status`. */
  patchStatus(name: string, body: object): Promise<V1Node>;
}

/**
 * Per-call options for client-node: a deadline (its calls have none of their own) and the one
 * header the call needs (Accept, or a patch's Content-Type).
 */
export function callOptions(header: [string, string], timeoutMs: number): ConfigurationOptions {
  const base = setHeaderMiddleware(header[0], header[1]);
  return {
    middleware: [
      {
        pre: (ctx) => {
          ctx.setSignal(AbortSignal.timeout(timeoutMs));
          return base.pre(ctx);
        },
        post: base.post,
      },
    ],
    middlewareMergeStrategy: 'append',
  };
}

/** {@link NodeClient} on client-node's CoreV1Api. */
export class KubeNodeClient implements NodeClient {
  readonly api: CoreV1Api;
  readonly #timeoutMs: number;

  constructor(kc: KubeConfig, opts: NodeClientOptions = {}) {
    this.api = kc.makeApiClient(CoreV1Api);
    this.#timeoutMs = opts.timeoutMs ?? 10_000;
  }

  #options(header: [string, string], timeoutMs = this.#timeoutMs): ConfigurationOptions {
    return callOptions(header, timeoutMs);
  }

  async get(name: string): Promise<V1Node> {
    try {
      return await this.api.readNode({ name }, this.#options(['Accept', 'application/json']));
    } catch (err) {
      throw toApiError(`get node "${name}"`, err);
    }
  }

  async list(opts: { limit?: number } = {}): Promise<V1NodeList> {
    try {
      // A full listing of a large cluster is megabytes: a longer deadline than single objects.
      if (opts.limit !== undefined) return await this.api.listNode({ limit: opts.limit }, this.#options(['Accept', 'application/json']));
      return await this.api.listNode({}, this.#options(['Accept', 'application/json'], Math.max(this.#timeoutMs, 60_000)));
    } catch (err) {
      throw toApiError('list nodes', err);
    }
  }

  async patchStatus(name: string, body: object): Promise<V1Node> {
    try {
      return await this.api.patchNodeStatus({ name, body }, this.#options(['Content-Type', PatchStrategy.StrategicMergePatch]));
    } catch (err) {
      throw toApiError(`patch node "${name}" status`, err);
    }
  }
}

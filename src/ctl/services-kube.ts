/**
 * Where `get services` reads Services and EndpointSlices: the Kubernetes API through
 * `@kubernetes/client-node` (kubeconfig loading shared with weftd's kube mode), each list paged
 * and under a deadline. Objects go through the proxy's validators, so what is shown is what
 * weftd's proxy would accept; rejected objects are reported, not hidden.
 */
import { CoreV1Api, DiscoveryV1Api } from '@kubernetes/client-node';
import { callOptions, KubeApiError, loadKubeConfig, toApiError } from '../kube/client.ts';
import { validateEndpointSlice, validateService, type EndpointSlice, type Service } from '../proxy/types.ts';

/** What a {@link ServiceSource} lists. */
export interface ServiceListing {
  /** The API server, for messages. */
  server: string;
  services: Service[];
  slices: EndpointSlice[];
  /** Objects that failed validation: `namespace/name: why`. */
  invalid: string[];
}

/** The source of Services for `get services`. */
export interface ServiceSource {
  list(): Promise<ServiceListing>;
}

const PAGE = 500;
const MAX_PAGES = 200;

async function paged<T>(op: string, fetch: (cont: string | undefined) => Promise<{ items: T[]; metadata?: { _continue?: string } }>): Promise<T[]> {
  const out: T[] = [];
  let cont: string | undefined;
  for (let page = 0; page < MAX_PAGES; page++) {
    let res: { items: T[]; metadata?: { _continue?: string } };
    try {
      res = await fetch(cont);
    } catch (err) {
      throw toApiError(op, err);
    }
    out.push(...res.items);
    cont = res.metadata?._continue || undefined;
    if (!cont) return out;
  }
  throw new KubeApiError(op, 0, `more than ${MAX_PAGES * PAGE} objects`);
}

/** Services and EndpointSlices from the API server the kubeconfig names. */
export class KubeServiceSource implements ServiceSource {
  readonly #core: CoreV1Api;
  readonly #discovery: DiscoveryV1Api;
  readonly #server: string;
  readonly #timeoutMs: number;

  /** Throws UsageError when no kubeconfig can be loaded. */
  constructor(opts: { kubeconfig?: string; env?: NodeJS.ProcessEnv; timeoutMs?: number }) {
    const { kc, server } = loadKubeConfig({ kubeconfig: opts.kubeconfig, env: opts.env });
    this.#core = kc.makeApiClient(CoreV1Api);
    this.#discovery = kc.makeApiClient(DiscoveryV1Api);
    this.#server = server;
    this.#timeoutMs = opts.timeoutMs ?? 10_000;
  }

  async list(): Promise<ServiceListing> {
    const o = callOptions(['Accept', 'application/json'], this.#timeoutMs);
    const [rawSvcs, rawSlices] = await Promise.all([
      paged('list services', (cont) => this.#core.listServiceForAllNamespaces({ limit: PAGE, _continue: cont }, o)),
      paged('list endpointslices', (cont) => this.#discovery.listEndpointSliceForAllNamespaces({ limit: PAGE, _continue: cont }, o)),
    ]);
    const invalid: string[] = [];
    const name = (x: unknown) => {
      const m = (x as { metadata?: { namespace?: unknown; name?: unknown } })?.metadata;
      return `${String(m?.namespace ?? '?')}/${String(m?.name ?? '?')}`;
    };
    const services: Service[] = [];
    for (const raw of rawSvcs) {
      const v = validateService(raw);
      if (v.ok) services.push(v.value);
      else invalid.push(`service ${name(raw)}: ${v.reason}`);
    }
    const slices: EndpointSlice[] = [];
    for (const raw of rawSlices) {
      // IPv6 slices are not ours to show (IPv4 only); they are not errors either
      if ((raw as { addressType?: string }).addressType !== 'IPv4') continue;
      const v = validateEndpointSlice(raw);
      if (v.ok) slices.push(v.value);
      else invalid.push(`endpointslice ${name(raw)}: ${v.reason}`);
    }
    return { server: this.#server, services, slices, invalid };
  }
}

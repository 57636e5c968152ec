/**
 * A minimal CRI client (runtime.v1 over gRPC on a unix socket), the calls kubelet makes to start
 * and stop a pod sandbox. Every call has a deadline: a hung runtime fails the test, not hangs it.
 */
import { credentials, loadPackageDefinition, Metadata, type ServiceError } from '@grpc/grpc-js';
import { loadSync } from '@grpc/proto-loader';
import { join } from 'node:path';

export interface PodSandboxMetadata {
  name: string;
  uid: string;
  namespace: string;
  attempt?: number;
}

export interface PodSandboxConfig {
  metadata: PodSandboxMetadata;
  hostname?: string;
  logDirectory?: string;
  dnsConfig?: { servers?: string[]; searches?: string[]; options?: string[] };
  portMappings?: Array<{ protocol?: 'TCP' | 'UDP' | 'SCTP'; containerPort: number; hostPort?: number; hostIp?: string }>;
  labels?: Record<string, string>;
  annotations?: Record<string, string>;
  linux?: { cgroupParent?: string; securityContext?: { namespaceOptions?: { network?: string; pid?: string; ipc?: string } }; sysctls?: Record<string, string> };
}

export interface PodSandboxStatus {
  id: string;
  metadata: PodSandboxMetadata;
  state: 'SANDBOX_READY' | 'SANDBOX_NOTREADY';
  createdAt: string;
  network?: { ip: string; additionalIps: Array<{ ip: string }> };
  labels: Record<string, string>;
  annotations: Record<string, string>;
}

export interface PodSandboxStatusResponse {
  status: PodSandboxStatus;
  /** Verbose only: JSON strings (containerd: `info` with the runtime spec, pid, CNI result). */
  info: Record<string, string>;
}

type Callback<T> = (err: ServiceError | null, res: T) => void;
type Rpc = (req: object, meta: Metadata, opts: { deadline: Date }, cb: Callback<any>) => void;

const packageDef = loadSync(join(import.meta.dirname, 'runtime.proto'), {
  keepCase: false,
  longs: String,
  enums: String,
  defaults: true,
  oneofs: true,
});
const runtimeV1 = (loadPackageDefinition(packageDef) as any).runtime.v1;

export class CriClient {
  readonly #client: any;
  readonly #timeoutMs: number;

  /** `socket`: the runtime's unix socket path. */
  constructor(socket: string, opts: { timeoutMs?: number } = {}) {
    this.#client = new runtimeV1.RuntimeService(`unix://${socket}`, credentials.createInsecure());
    this.#timeoutMs = opts.timeoutMs ?? 60_000;
  }

  #call<T>(method: string, req: object, timeoutMs = this.#timeoutMs): Promise<T> {
    return new Promise((resolve, reject) => {
      const fn = this.#client[method] as Rpc;
      fn.call(this.#client, req, new Metadata(), { deadline: new Date(Date.now() + timeoutMs) }, (err, res) => {
        if (err) reject(new Error(`CRI ${method}: ${err.details || err.message}`, { cause: err }));
        else resolve(res as T);
      });
    });
  }

  version(): Promise<{ version: string; runtimeName: string; runtimeVersion: string; runtimeApiVersion: string }> {
    return this.#call('Version', { version: 'v1' }, 10_000);
  }

  /** RunPodSandbox: returns the sandbox id once it is ready (network set up by CNI ADD). */
  async runPodSandbox(config: PodSandboxConfig): Promise<string> {
    const res = await this.#call<{ podSandboxId: string }>('RunPodSandbox', { config, runtimeHandler: '' });
    return res.podSandboxId;
  }

  async podSandboxStatus(id: string, verbose = true): Promise<PodSandboxStatusResponse> {
    return this.#call('PodSandboxStatus', { podSandboxId: id, verbose });
  }

  async stopPodSandbox(id: string): Promise<void> {
    await this.#call('StopPodSandbox', { podSandboxId: id });
  }

  async removePodSandbox(id: string): Promise<void> {
    await this.#call('RemovePodSandbox', { podSandboxId: id });
  }

  async listPodSandbox(): Promise<Array<{ id: string; metadata: PodSandboxMetadata; state: string }>> {
    const res = await this.#call<{ items: Array<{ id: string; metadata: PodSandboxMetadata; state: string }> }>('ListPodSandbox', {});
    return res.items;
  }

  close(): void {
    this.#client.close();
  }
}

/** The sandbox's network namespace path from containerd's verbose status (its runtime spec). */
export function sandboxNetns(res: PodSandboxStatusResponse): string | undefined {
  const raw = res.info.info;
  if (!raw) return undefined;
  const info = JSON.parse(raw) as { runtimeSpec?: { linux?: { namespaces?: Array<{ type: string; path?: string }> } } };
  return info.runtimeSpec?.linux?.namespaces?.find((n) => n.type === 'network')?.path;
}

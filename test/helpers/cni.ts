/**
 * Invoking a CNI plugin binary the way a runtime does, inside a test's node namespace:
 * `nsenter --net=/run/netns/<node> -- <bin>` with CNI_* env and the configuration on stdin.
 * `WEFT_CNI_BIN` points the suite at another build of weft (e.g. the packaged artefact).
 */
import { spawn } from 'node:child_process';
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join, resolve } from 'node:path';
import { Scope } from './netns.ts';

export const WEFT_BIN = resolve(process.env.WEFT_CNI_BIN ?? 'dist/bin/weft');
export const REF_BRIDGE = '/usr/lib/cni/bridge';
export const REF_HOST_LOCAL = '/usr/lib/cni/host-local';

export interface CniCall {
  command: 'ADD' | 'DEL' | 'CHECK' | 'VERSION' | 'STATUS' | 'GC' | string;
  conf: unknown;
  containerID?: string;
  /** Pod namespace name (under /run/netns) or an absolute path. */
  netns?: string;
  ifname?: string;
  bin?: string;
  /** Extra or overriding env; `undefined` removes a variable. */
  env?: Record<string, string | undefined>;
}

export interface CniOutcome {
  code: number | null;
  stdout: string;
  stderr: string;
  /** stdout parsed, when it is JSON. */
  json: any;
}

/** Runs one CNI request in `node`'s namespace; never throws on a non-zero exit. */
export function cni(node: string, call: CniCall): Promise<CniOutcome> {
  const env: Record<string, string> = { PATH: process.env.PATH ?? '/usr/bin:/bin', CNI_PATH: '/usr/lib/cni' };
  env.CNI_COMMAND = call.command;
  if (call.containerID !== undefined) env.CNI_CONTAINERID = call.containerID;
  if (call.netns !== undefined) env.CNI_NETNS = call.netns.startsWith('/') || call.netns === '' ? call.netns : `/run/netns/${call.netns}`;
  if (call.ifname !== undefined) env.CNI_IFNAME = call.ifname;
  for (const [k, v] of Object.entries(call.env ?? {})) {
    if (v === undefined) delete env[k];
    else env[k] = v;
  }
  const stdin = typeof call.conf === 'string' ? call.conf : JSON.stringify(call.conf);
  return new Promise((resolvePromise, reject) => {
    const child = spawn('nsenter', [`--net=/run/netns/${node}`, '--', call.bin ?? WEFT_BIN], { env, stdio: ['pipe', 'pipe', 'pipe'] });
    let stdout = '';
    let stderr = '';
    child.stdout.on('data', (d) => (stdout += d));
    child.stderr.on('data', (d) => (stderr += d));
    child.on('error', reject);
    child.on('close', (code) => {
      let json: unknown;
      try {
        json = stdout.trim() ? JSON.parse(stdout) : undefined;
      } catch {
        json = undefined;
      }
      resolvePromise({ code, stdout, stderr, json });
    });
    child.stdin.end(stdin);
  });
}

export interface CniEnvFixture {
  dir: string;
  subnetFile: string;
  dataDir: string;
  /** `<dataDir>/<name>`: the IPAM directory of the test network. */
  ipamDir: string;
  name: string;
  conf(extra?: Record<string, unknown>, version?: string): Record<string, unknown>;
}

/**
 * A per-test temp dir with a subnet file (`198.18.<n>.1/24` in `198.18.0.0/16`, MTU 1450) and
 * an IPAM dataDir; removed at scope cleanup.
 */
export function cniFixture(scope: Scope, opts: { third?: number; mtu?: number; name?: string } = {}): CniEnvFixture {
  const dir = mkdtempSync(join(tmpdir(), 'wt-cni-'));
  scope.defer(() => rmSync(dir, { recursive: true, force: true }));
  const third = opts.third ?? 1;
  const subnetFile = join(dir, 'subnet.env');
  writeFileSync(subnetFile, `FLANNEL_NETWORK=198.18.0.0/16\nFLANNEL_SUBNET=198.18.${third}.1/24\nFLANNEL_MTU=${opts.mtu ?? 1450}\nFLANNEL_IPMASQ=true\n`);
  const dataDir = join(dir, 'data');
  const name = opts.name ?? 'wt-net';
  return {
    dir,
    subnetFile,
    dataDir,
    ipamDir: join(dataDir, name),
    name,
    conf: (extra = {}, version = '1.0.0') => ({ cniVersion: version, name, type: 'weft', subnetFile, dataDir, ...extra }),
  };
}

/** Same FNV-1a derivation as src/cni/plugin.ts, recomputed here so tests check it independently. */
export function expectedVethName(containerID: string, ifname: string): string {
  let h = 0x811c9dc5;
  for (const ch of `${containerID}\0${ifname}`) {
    h ^= ch.charCodeAt(0);
    h = Math.imul(h, 0x01000193) >>> 0;
  }
  return `veth${h.toString(16).padStart(8, '0')}`;
}

/** A throwaway scope (torn down with the test), a node namespace and a CNI fixture in it. */
export function cniSetup(t: { teardown(fn: () => unknown): void }, third: number): { scope: Scope; node: string; fx: CniEnvFixture } {
  const scope = new Scope();
  t.teardown(() => scope.cleanup());
  const node = scope.netns('node');
  const fx = cniFixture(scope, { third });
  return { scope, node, fx };
}

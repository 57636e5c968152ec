/**
 * Calls a CNI plugin the way a container runtime does: a fresh process in the node's network
 * namespace, config on stdin, only the CNI variables plus a plain PATH in the environment (no
 * NODE_EXTRA_CA_CERTS or anything else inherited from the shell running the bench).
 */
import { execFileSync, spawn } from 'node:child_process';
import { mkdirSync, mkdtempSync, readFileSync, rmSync, statSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { dist } from './paths.ts';

export interface CniCall {
  /** Absolute path of the plugin binary. */
  plugin: string;
  command: 'ADD' | 'DEL' | 'CHECK' | 'VERSION' | 'STATUS' | 'GC';
  containerId: string;
  /** Pod namespace name under /run/netns (empty for a DEL without netns). */
  podNs: string;
  /** Node namespace name under /run/netns the plugin runs in. */
  nodeNs: string;
  config: object;
  cniPath?: string;
  ifname?: string;
  /** Added to the runtime environment (only to measure what a variable costs). */
  extraEnv?: Record<string, string>;
}

export interface CniOutcome {
  ms: number;
  code: number;
  stdout: string;
  stderr: string;
  /** Parsed stdout when it is JSON. */
  result?: any;
}

/** The environment kubelet/containerd would give the plugin for this call. */
export function runtimeEnv(call: CniCall): Record<string, string> {
  return {
    PATH: '/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin',
    CNI_COMMAND: call.command,
    CNI_CONTAINERID: call.containerId,
    CNI_NETNS: call.podNs ? `/run/netns/${call.podNs}` : '',
    CNI_IFNAME: call.ifname ?? 'eth0',
    CNI_ARGS: `IgnoreUnknown=1;K8S_POD_NAMESPACE=bench;K8S_POD_NAME=${call.containerId}`,
    CNI_PATH: call.cniPath ?? '/usr/lib/cni',
    ...call.extraEnv,
  };
}

const toolDir = join(dist, 'bench');
const cnitime = join(toolDir, 'cnitime');
let built = false;

/** Compiles bench/lib/cnitime.c into dist/bench/ when missing or older than its source. */
export function buildCnitime(): string {
  if (built) return cnitime;
  const src = join(import.meta.dirname, 'cnitime.c');
  let fresh = false;
  try {
    fresh = statSync(cnitime).mtimeMs >= statSync(src).mtimeMs;
  } catch {
    /* not built yet */
  }
  if (!fresh) {
    mkdirSync(toolDir, { recursive: true });
    execFileSync('cc', ['-O2', '-Wall', '-Werror', '-o', cnitime, src], { stdio: 'inherit' });
  }
  built = true;
  return cnitime;
}

let confDir: string | undefined;
const confFiles = new Map<string, string>();

/** The config written once to a file (cnitime feeds it to the plugin's stdin). */
export function configFile(config: object): string {
  const text = JSON.stringify(config);
  let file = confFiles.get(text);
  if (file) return file;
  if (!confDir) {
    const dir = mkdtempSync(join(tmpdir(), 'wt-bench-conf-'));
    confDir = dir;
    process.on('exit', () => rmSync(dir, { recursive: true, force: true }));
  }
  file = join(confDir, `${confFiles.size}.json`);
  writeFileSync(file, text);
  confFiles.set(text, file);
  return file;
}

function parseOut(stdout: string): any {
  try {
    return stdout.trim() ? JSON.parse(stdout) : undefined;
  } catch {
    return undefined;
  }
}

/**
 * Runs one CNI call through cnitime, which enters the node namespace itself and times the
 * plugin from fork to exit (our own spawn cost is not counted).
 */
export function callCni(call: CniCall): Promise<CniOutcome> {
  const tool = buildCnitime();
  return new Promise((resolve, reject) => {
    const child = spawn(tool, [`/run/netns/${call.nodeNs}`, call.plugin, configFile(call.config)], {
      env: runtimeEnv(call),
      stdio: ['ignore', 'pipe', 'pipe', 'pipe'],
    });
    const out: Buffer[] = [];
    const err: Buffer[] = [];
    const rep: Buffer[] = [];
    child.stdout!.on('data', (b: Buffer) => out.push(b));
    child.stderr!.on('data', (b: Buffer) => err.push(b));
    (child.stdio[3] as NodeJS.ReadableStream).on('data', (b: Buffer) => rep.push(b));
    child.on('error', reject);
    child.on('close', (code) => {
      const stdout = Buffer.concat(out).toString('utf8');
      const stderr = Buffer.concat(err).toString('utf8');
      const m = /^([\d.]+) (\d+)/.exec(Buffer.concat(rep).toString('utf8'));
      if (code !== 0 || !m) return reject(new Error(`cnitime failed (exit ${code}): ${stderr.trim()}`));
      resolve({ ms: Number(m[1]), code: Number(m[2]), stdout, stderr, result: parseOut(stdout) });
    });
  });
}

/** Result of starting many calls at once. */
export interface BatchOutcome {
  wallMs: number;
  calls: CniOutcome[];
}

/**
 * Starts all `calls` (same plugin, node namespace and config) at the same instant from one
 * cnitime process, and waits for all of them.
 */
export function callCniBatch(calls: CniCall[], scratch: string): Promise<BatchOutcome> {
  const tool = buildCnitime();
  const first = calls[0];
  const lines = calls.map((c) =>
    Object.entries(runtimeEnv(c))
      .filter(([k]) => k.startsWith('CNI_'))
      .map(([k, v]) => `${k}=${v}`)
      .join('\t'),
  );
  const spec = join(scratch, 'calls.txt');
  writeFileSync(spec, `${lines.join('\n')}\n`);
  return new Promise((resolve, reject) => {
    const child = spawn(tool, [`/run/netns/${first.nodeNs}`, first.plugin, configFile(first.config), scratch, spec], {
      env: runtimeEnv(first),
      stdio: ['ignore', 'ignore', 'pipe', 'pipe'],
    });
    const err: Buffer[] = [];
    const rep: Buffer[] = [];
    child.stderr!.on('data', (b: Buffer) => err.push(b));
    (child.stdio[3] as NodeJS.ReadableStream).on('data', (b: Buffer) => rep.push(b));
    child.on('error', reject);
    child.on('close', (code) => {
      const text = Buffer.concat(rep).toString('utf8');
      const wall = /^wall ([\d.]+)$/m.exec(text);
      if (code !== 0 || !wall) return reject(new Error(`cnitime batch failed (exit ${code}): ${Buffer.concat(err).toString().trim()}`));
      const res: CniOutcome[] = [];
      for (const m of text.matchAll(/^(\d+) ([\d.]+) (\d+)$/gm)) {
        const i = Number(m[1]);
        const stdout = readFileSync(join(scratch, `${i}.out`), 'utf8');
        res[i] = { ms: Number(m[2]), code: Number(m[3]), stdout, stderr: readFileSync(join(scratch, `${i}.err`), 'utf8'), result: parseOut(stdout) };
      }
      resolve({ wallMs: Number(wall[1]), calls: res });
    });
  });
}

/** Throws a readable error unless the call succeeded. */
export function expectOk(what: string, o: CniOutcome): CniOutcome {
  if (o.code !== 0) {
    throw new Error(`${what} failed (exit ${o.code}): ${o.stdout.trim()} ${o.stderr.trim()}`.slice(0, 800));
  }
  return o;
}

/** The pod IPv4 address (without prefix) from an ADD result. */
export function resultIp(result: any): string | undefined {
  const a = result?.ips?.[0]?.address as string | undefined;
  return a?.split('/')[0];
}

/** Times fork+exec of `/bin/true` by cnitime: the floor under every call. */
export function spawnBaseline(nodeNs: string): Promise<number> {
  return callCni({ plugin: '/bin/true', command: 'VERSION', containerId: 'x', podNs: '', nodeNs, config: {} }).then((o) => o.ms);
}

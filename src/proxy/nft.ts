/**
 * The proxy's executor: `nft -f -` for a sync, `nft -j list table` to read it back for drift
 * checks, and `conntrack -D` for stale UDP flows. Each runs as a child process in the current
 * network namespace, or in the one named by `netns` (through `nsenter --net=`, the way the rest
 * of weft enters namespaces), with a timeout and bounded output: nft's error for a large
 * failed script repeats every bad line, and a listing of 10k chains is megabytes.
 */
import { spawn } from 'node:child_process';
import { existsSync } from 'node:fs';
import { formatIPv4, parseIPv4 } from '../ip/ipv4.ts';
import { PROXY_TABLE } from './ruleset.ts';

export interface ExecOptions {
  /** nft binary (default: the system's, found in the sbin directories first). */
  nftBin?: string;
  /** conntrack binary (default: the system's). */
  conntrackBin?: string;
  /** A network namespace path (`/run/netns/NAME`) to run in, instead of the current one. */
  netns?: string;
  timeoutMs?: number;
  signal?: AbortSignal;
}

/** A command that failed; `stderr` is nft's or conntrack's message, truncated. */
export class ExecError extends Error {
  readonly stderr: string;
  readonly code: number | null;
  constructor(message: string, opts: { stderr: string; code: number | null; cause?: unknown }) {
    super(message, { cause: opts.cause });
    this.name = 'ExecError';
    this.stderr = opts.stderr;
    this.code = opts.code;
  }
}

const MAX_STDOUT = 256 << 20;
const MAX_STDERR = 64 << 10;

function sbin(name: string): string {
  // a PATH that starts with node_modules/.bin finds an unrelated npm package called `nft`
  return [`/usr/sbin/${name}`, `/sbin/${name}`, `/usr/bin/${name}`].find((p) => existsSync(p)) ?? name;
}

interface Result {
  stdout: string;
  stderr: string;
  code: number | null;
}

function run(bin: string, args: string[], opts: ExecOptions & { input?: string; maxStdout?: number }): Promise<Result> {
  const [cmd, argv] = opts.netns ? ['nsenter', [`--net=${opts.netns}`, '--', bin, ...args]] : [bin, args];
  const maxOut = opts.maxStdout ?? MAX_STDOUT;
  return new Promise((resolve, reject) => {
    const child = spawn(cmd, argv, { stdio: ['pipe', 'pipe', 'pipe'], signal: opts.signal, timeout: opts.timeoutMs ?? 30_000, killSignal: 'SIGKILL' });
    const out: Buffer[] = [];
    const err: Buffer[] = [];
    let outLen = 0;
    let errLen = 0;
    let tooLong = false;
    child.stdout.on('data', (b: Buffer) => {
      outLen += b.length;
      if (outLen > maxOut) {
        tooLong = true;
        child.kill('SIGKILL');
      } else out.push(b);
    });
    child.stderr.on('data', (b: Buffer) => {
      if (errLen < MAX_STDERR) err.push(b.subarray(0, MAX_STDERR - errLen));
      errLen += b.length;
    });
    child.on('error', (cause) => reject(new ExecError(`run "${bin}"`, { stderr: '', code: null, cause })));
    child.on('close', (code, signal) => {
      const stderr = Buffer.concat(err).toString('utf8').trim();
      if (tooLong) return reject(new ExecError(`"${bin}" printed more than ${maxOut} bytes`, { stderr, code }));
      if (signal) return reject(new ExecError(`"${bin}" killed by ${signal}${opts.signal?.aborted ? ' (aborted)' : ' (timeout?)'}`, { stderr, code }));
      resolve({ stdout: Buffer.concat(out).toString('utf8'), stderr, code });
    });
    child.stdin.on('error', () => {});
    child.stdin.end(opts.input ?? '');
  });
}

/** Applies `script` as one nft transaction (`nft -f -`); all or nothing. */
export async function nftApply(script: string, opts: ExecOptions = {}): Promise<void> {
  const r = await run(opts.nftBin ?? sbin('nft'), ['-f', '-'], { ...opts, input: script, maxStdout: MAX_STDERR });
  if (r.code !== 0) {
    const first = r.stderr.split('\n').slice(0, 6).join('\n');
    throw new ExecError(`nft -f: ${first || `exit ${r.code}`}`, { stderr: r.stderr, code: r.code });
  }
}

/** `nft -j list table ip weft-proxy` as text, or undefined when the table does not exist. */
export async function readProxyTable(opts: ExecOptions = {}): Promise<string | undefined> {
  const r = await run(opts.nftBin ?? sbin('nft'), ['-j', 'list', 'table', 'ip', PROXY_TABLE], opts);
  if (r.code === 0) return r.stdout;
  if (/No such file or directory|does not exist/i.test(r.stderr)) return undefined;
  throw new ExecError(`nft -j list table ip ${PROXY_TABLE}: ${r.stderr.slice(0, 500) || `exit ${r.code}`}`, { stderr: r.stderr, code: r.code });
}

function withoutVolatile(v: unknown): unknown {
  if (Array.isArray(v)) return v.map(withoutVolatile);
  if (v && typeof v === 'object') {
    const o = v as Record<string, unknown>;
    const out: Record<string, unknown> = {};
    // dynamic sets (ClientIP affinity) fill from traffic: their elements are not drift
    const dynamic = Array.isArray(o.flags) && o.flags.includes('dynamic');
    for (const [k, x] of Object.entries(o)) {
      if (k === 'handle' || (dynamic && k === 'elem')) continue;
      out[k] = withoutVolatile(x);
    }
    return out;
  }
  return v;
}

/**
 * A fingerprint of the table listing (`nft -j`): objects in order, handles and the contents
 * of dynamic sets left out. Two equal fingerprints mean nobody changed the table in between.
 */
export function tableFingerprint(json: string): string {
  const doc = JSON.parse(json) as { nftables?: Array<Record<string, unknown>> };
  if (!doc || !Array.isArray(doc.nftables)) throw new Error('nft -j output has no "nftables" list');
  return JSON.stringify(withoutVolatile(doc.nftables.filter((o) => !('metainfo' in o))));
}

/** Removes the proxy's table (idempotent). */
export async function removeProxyTable(opts: ExecOptions = {}): Promise<void> {
  await nftApply(`add table ip ${PROXY_TABLE}\ndelete table ip ${PROXY_TABLE}\n`, opts);
}

/**
 * One set of UDP flows to delete: those sent to `origDst`:`port` (a ClusterIP or, with no
 * `origDst`, any local address's NodePort) that were DNATed to `dnatTo`; without `dnatTo`,
 * every flow to that address and port.
 */
export interface ConntrackFilter {
  origDst?: string;
  port: number;
  dnatTo?: string;
}

/** The conntrack(8) arguments for `f` (pure). */
export function conntrackArgs(f: ConntrackFilter): string[] {
  if (!Number.isInteger(f.port) || f.port < 1 || f.port > 65535) throw new Error(`bad port ${f.port}`);
  const args = ['-D', '-p', 'udp'];
  if (f.origDst !== undefined) args.push('--orig-dst', formatIPv4(parseIPv4(f.origDst)));
  args.push('--orig-port-dst', String(f.port));
  if (f.dnatTo !== undefined) args.push('--dst-nat', formatIPv4(parseIPv4(f.dnatTo)));
  return args;
}

/**
 * Deletes the UDP conntrack entries each filter names; returns how many were deleted. "No
 * entry matched" is success (conntrack exits 1 with "0 flow entries" then).
 */
export async function conntrackDelete(filters: readonly ConntrackFilter[], opts: ExecOptions = {}): Promise<number> {
  let deleted = 0;
  for (const f of filters) {
    const r = await run(opts.conntrackBin ?? sbin('conntrack'), conntrackArgs(f), { ...opts, maxStdout: 1 << 20 });
    const m = /(\d+) flow entries have been deleted/.exec(r.stderr);
    if (r.code !== 0 && !(m && m[1] === '0')) {
      throw new ExecError(`conntrack ${conntrackArgs(f).join(' ')}: ${r.stderr.slice(0, 300) || `exit ${r.code}`}`, { stderr: r.stderr, code: r.code });
    }
    if (m) deleted += Number(m[1]);
  }
  return deleted;
}

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

/**
 * A command that failed; `stderr` is nft's or conntrack's message, truncated. `code` is its exit
 * code; for a netlink batch the kernel refused (nfnl.ts), the errno.
 */
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

/**
 * The `nft -j` listings of the ip family's chains, sets and maps (names and declarations, no
 * rules): what a full sync needs to know of the kernel's table. At 1000 Services x 10
 * endpoints they take about a tenth of `list table`, which prints every rule.
 */
export async function readProxyNames(opts: ExecOptions = {}): Promise<string[]> {
  const bin = opts.nftBin ?? sbin('nft');
  return Promise.all(
    ['chains', 'sets', 'maps'].map(async (what) => {
      const r = await run(bin, ['-j', 'list', what, 'ip'], opts);
      if (r.code !== 0) throw new ExecError(`nft -j list ${what} ip: ${r.stderr.slice(0, 500) || `exit ${r.code}`}`, { stderr: r.stderr, code: r.code });
      return r.stdout;
    }),
  );
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

function listed(json: string): unknown[] {
  const doc = JSON.parse(json) as { nftables?: Array<Record<string, unknown>> };
  if (!doc || !Array.isArray(doc.nftables)) throw new Error('nft -j output has no "nftables" list');
  return doc.nftables.filter((o) => !('metainfo' in o));
}

/**
 * A fingerprint of the table listing (`nft -j`): objects in order, handles and the contents
 * of dynamic sets left out. Two equal fingerprints mean nobody changed the table in between.
 */
export function tableFingerprint(json: string): string {
  return JSON.stringify(listed(json).map(withoutVolatile));
}

/**
 * {@link tableFingerprint}, the same string, computed `slice` objects at a time with the event
 * loop let run in between: at 1000 Services x 10 endpoints the listing has ~45k objects and the
 * walk takes ~0.2 s, which in one piece would hold up every other timer of weftd.
 */
export async function tableFingerprintSliced(json: string, slice = 2000): Promise<string> {
  const objs = listed(json);
  const parts: string[] = [];
  for (let i = 0; i < objs.length; i += slice) {
    if (i) await new Promise<void>((resolve) => setImmediate(resolve));
    for (const o of objs.slice(i, i + slice)) parts.push(JSON.stringify(withoutVolatile(o)));
  }
  return `[${parts.join(',')}]`;
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

/** Scripts up to this size go through {@link NftShell}; larger ones (full syncs) through `nft -f`. */
export const SHELL_MAX_SCRIPT = 256 << 10;

/**
 * One long-lived `nft -i` (interactive) process for small transactions: partial syncs that the
 * netlink executor (nfnl.ts, the first choice) does not translate.
 *
 * Why: a `nft -f` of a 7-line partial script against a 1000 Services x 10 endpoints table
 * costs about 55-60 ms, nearly all of it nft loading its cache of the table (11k chains, 1000
 * anonymous sets) in a fresh process; the same transaction through one kept `nft -i` took
 * about 30 ms in the same namespace (measured by hand, docs/benchmarks.md).
 *
 * Protocol: the script's lines are joined with "; " into one input line, which nft parses,
 * evaluates and commits as one batch (all or nothing, as with `-f`); then a line nft cannot
 * parse, `@weft-end-<n>`, whose syntax error on stderr marks the end of that transaction's
 * output. Anything nft wrote to stderr before that marker is the transaction's error: the
 * apply fails. A timeout, an exit or a broken pipe kills the process and fails the apply; the
 * next one starts a fresh process. After `maxUses` transactions the process is replaced (its
 * line-editing history grows with every line). Calls are serialized.
 */
export class NftShell {
  readonly #opts: ExecOptions & { maxUses?: number };
  #child: ReturnType<typeof spawn> | undefined;
  #err = '';
  #uses = 0;
  #seq = 0;
  #wake: (() => void) | undefined;
  #chain: Promise<unknown> = Promise.resolve();

  constructor(opts: ExecOptions & { maxUses?: number } = {}) {
    this.#opts = opts;
  }

  /** Applies `script` (lines of nft commands, no line ending in "\\") as one transaction. */
  apply(script: string): Promise<void> {
    const p = this.#chain.then(() => this.#apply(script));
    this.#chain = p.catch(() => {});
    return p;
  }

  #start(): ReturnType<typeof spawn> {
    const bin = this.#opts.nftBin ?? sbin('nft');
    const [cmd, argv] = this.#opts.netns ? ['nsenter', [`--net=${this.#opts.netns}`, '--', bin, '-i']] : [bin, ['-i']];
    // HOME elsewhere: nft -i reads and writes a history file there
    const child = spawn(cmd, argv, { stdio: ['pipe', 'ignore', 'pipe'], env: { PATH: process.env.PATH ?? '/usr/sbin:/usr/bin:/sbin:/bin', HOME: '/nonexistent' } });
    this.#err = '';
    this.#uses = 0;
    child.stderr!.on('data', (b: Buffer) => {
      this.#err += b.toString('utf8');
      if (this.#err.length > MAX_STDERR * 4) this.#err = this.#err.slice(-MAX_STDERR * 2);
      this.#wake?.();
    });
    const gone = () => {
      if (this.#child === child) this.#child = undefined;
      this.#wake?.();
    };
    child.on('error', gone);
    child.on('close', gone);
    child.stdin!.on('error', () => {});
    // an idle shell must not keep weftd (or a test) alive; a pending apply holds its timer
    child.unref();
    for (const s of [child.stdin, child.stderr] as Array<{ unref?: () => void } | null>) s?.unref?.();
    this.#child = child;
    return child;
  }

  async #apply(script: string): Promise<void> {
    const lines = script.split('\n').filter((l) => l.trim() !== '');
    if (!lines.length) return;
    if (lines.some((l) => l.endsWith('\\') || l.includes('#'))) throw new Error('script not fit for nft -i (continuation or comment)');
    if ((this.#child && this.#uses >= (this.#opts.maxUses ?? 1000)) || this.#child?.exitCode != null) this.close();
    const child = this.#child ?? this.#start();
    this.#uses++;
    const marker = `@weft-end-${++this.#seq}`;
    const start = this.#err.length;
    child.stdin!.write(`${lines.join('; ')}\n${marker}\n`);
    const timeoutMs = this.#opts.timeoutMs ?? 30_000;
    const deadline = performance.now() + timeoutMs;
    // the marker's whole error block: its echoed line and the caret under the "@"
    const needle = `\n${marker}\n^\n`;
    for (;;) {
      const at = this.#err.indexOf(needle, start);
      if (at >= 0) {
        // the marker's own error block starts at the last "Error:" before its echoed line
        const own = this.#err.lastIndexOf('Error:', at);
        const before = this.#err.slice(start, own >= start ? own : at).trim();
        this.#err = this.#err.slice(at + needle.length);
        if (before) throw new ExecError(`nft -i: ${before.split('\n').slice(0, 3).join('\n').slice(0, 600)}`, { stderr: before.slice(0, MAX_STDERR), code: null });
        return;
      }
      if (this.#child !== child) throw new ExecError('nft -i exited', { stderr: this.#err.slice(start, start + MAX_STDERR), code: child.exitCode });
      const left = deadline - performance.now();
      if (left <= 0 || this.#opts.signal?.aborted) {
        this.close();
        throw new ExecError(`nft -i gave no answer within ${timeoutMs} ms${this.#opts.signal?.aborted ? ' (aborted)' : ''}`, { stderr: '', code: null });
      }
      await new Promise<void>((resolve) => {
        const t = setTimeout(resolve, left);
        this.#wake = () => {
          clearTimeout(t);
          resolve();
        };
      });
      this.#wake = undefined;
    }
  }

  /** Ends the process (the next apply starts another). */
  close(): void {
    const c = this.#child;
    this.#child = undefined;
    if (c && c.exitCode === null) c.kill('SIGKILL');
  }
}

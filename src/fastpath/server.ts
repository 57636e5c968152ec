/**
 * weftd's side of the CNI fast path: a unix socket on which the daemon runs CNI requests
 * forwarded by the launcher, with the same handler code the standalone binary runs.
 *
 * Whoever can talk to this socket acts as root on the node, so:
 * - the directory must be ours and writable by nobody else (created 0700 when missing), and the
 *   socket is bound under umask 0177, so it is 0600 from its first instant;
 * - every connection's SO_PEERCRED uid must be 0; anyone else is refused (and logged) before a
 *   byte is read;
 * - a request is bounded in size (protocol.ts) and time (`requestTimeoutMs` until the go byte);
 * - requests for one (containerID, ifname) run one after another, in arrival order, each after
 *   the work its predecessor's reply left running (a DEL's veth deletion);
 * - `drain()` lets requests in flight finish (bounded) before the daemon exits.
 */
import { chmodSync, lstatSync, mkdirSync, statSync, unlinkSync } from 'node:fs';
import { createConnection, createServer, type Server, type Socket } from 'node:net';
import { dirname } from 'node:path';
import { errText } from '../core/errors.ts';
import { peerCred, reserveFdTable } from '../native/sys.ts';
import { ACK, decodeRequest, encodeReply, GO, MAX_REQUEST, ProtocolError, type CniReply, type CniRequest } from './protocol.ts';

/** Runs one CNI request in-process; must never throw (errors are CNI error JSON + exit code). */
export type CniHandler = (req: CniRequest) => Promise<CniReply>;

/** Default socket path; the launcher reads `fastpathSocket` from the network config. */
export const DEFAULT_SOCKET = '/run/weft/cni.sock';

/**
 * Connections open at once beyond which new ones are closed at accept (the launcher then falls
 * back to the standalone binary). A node starts pods by the tens, not by the thousand.
 */
export const MAX_CONNECTIONS = 512;

export interface FastpathOptions {
  /** Socket path (default {@link DEFAULT_SOCKET}). */
  path?: string;
  handler: CniHandler;
  /** Closing the server when aborted. */
  signal?: AbortSignal;
  /** Per-request detail (debug). */
  log?: (msg: string) => void;
  /** Refused peers and handler bugs (warn); default `log`. */
  warn?: (msg: string) => void;
  /** How long a connection may take to deliver its request and its go byte (default 15 s, longer than the launcher's 10 s wait for the acknowledgement). */
  requestTimeoutMs?: number;
  /** Uids allowed to connect (default only 0). */
  allowUids?: readonly number[];
}

export interface FastpathServer {
  readonly path: string;
  /** Stops accepting, removes the socket file; requests in flight still complete. */
  close(): Promise<void>;
  /**
   * Stops accepting (as close) and waits until every request already handed over (acknowledged
   * or running) has replied, at most `timeoutMs`; connections still idle then are dropped.
   * Resolves true when nothing was left in flight. Call it on SIGTERM before exiting.
   */
  drain(timeoutMs: number): Promise<boolean>;
  /** Requests acknowledged or running now. */
  inFlight(): number;
}

/** The socket directory is unsafe: not a directory, or not ours alone. */
export class SocketDirError extends Error {
  constructor(dir: string, why: string) {
    super(`cni socket directory "${dir}" ${why}`);
    this.name = 'SocketDirError';
  }
}

/** True when something accepts connections on `path`. */
function isServed(path: string): Promise<boolean> {
  return new Promise((resolve) => {
    const c = createConnection(path);
    c.once('connect', () => {
      c.destroy();
      resolve(true);
    });
    c.once('error', () => resolve(false));
  });
}

/** Creates the socket's directory 0700 when missing; refuses one another user could write to. */
function ensureSocketDir(dir: string): void {
  mkdirSync(dir, { recursive: true, mode: 0o700 });
  const st = lstatSync(dir);
  if (!st.isDirectory()) throw new SocketDirError(dir, 'is not a directory (a symlink?)');
  const uid = process.geteuid?.() ?? 0;
  if (st.uid !== uid) throw new SocketDirError(dir, `is owned by uid ${st.uid}, not ${uid}`);
  if (st.mode & 0o022) throw new SocketDirError(dir, `is writable by group or others (mode ${(st.mode & 0o777).toString(8)})`);
}

/** Binds under umask 0177: the socket never exists with a wider mode than 0600. */
async function listenPrivate(server: Server, path: string): Promise<void> {
  const old = process.umask(0o177);
  try {
    await new Promise<void>((resolve, reject) => {
      server.once('error', reject);
      // bind(2) happens inside listen(), synchronously, so the umask below is restored after it.
      server.listen(path, () => {
        server.off('error', reject);
        resolve();
      });
      process.umask(old);
    });
  } finally {
    process.umask(old);
  }
  chmodSync(path, 0o600);
  const st = lstatSync(path);
  if (!st.isSocket() || (st.mode & 0o777) !== 0o600) throw new Error(`cni socket "${path}" is not a 0600 socket after bind`);
}

/** At most one log line per second for a repeated event, with how many were not logged. */
function rateLimited(log: (msg: string) => void): (msg: string) => void {
  let last = 0;
  let skipped = 0;
  return (msg) => {
    const now = Date.now();
    if (now - last < 1000) return void skipped++;
    log(skipped ? `${msg} (and ${skipped} more not logged)` : msg);
    last = now;
    skipped = 0;
  };
}

/**
 * Listens on the socket. A stale socket file (nobody listening) is replaced; a live one means
 * another daemon serves it, which is an error.
 */
export async function serveCni(opts: FastpathOptions): Promise<FastpathServer> {
  const path = opts.path ?? DEFAULT_SOCKET;
  const log = opts.log ?? (() => undefined);
  const warn = opts.warn ?? log;
  const timeoutMs = opts.requestTimeoutMs ?? 15_000;
  ensureSocketDir(dirname(path));
  let exists = false;
  try {
    exists = lstatSync(path).isSocket();
    if (!exists) throw new Error(`cni socket path "${path}" exists and is not a socket`);
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code !== 'ENOENT') throw err;
  }
  if (exists) {
    if (await isServed(path)) throw new Error(`cni socket "${path}" is already served by another process`);
    unlinkSync(path);
  }

  // The namespace the daemon serves; read once, while the main thread is at home.
  const netns = String(statSync('/proc/self/ns/net').ino);
  const state: ConnState = {
    handler: opts.handler,
    timeoutMs,
    log,
    warnPeer: rateLimited(warn),
    warn,
    netns,
    allowUids: new Set(opts.allowUids ?? [0]),
    chains: new Map(),
    inFlight: new Set(),
    idle: new Set(),
    draining: false,
  };
  const server: Server = createServer({ allowHalfOpen: true }, (sock) => handle(sock, state));
  server.maxConnections = MAX_CONNECTIONS;
  await listenPrivate(server, path);
  // Room for every connection (and what their requests open) before a burst needs it: growing
  // the table later stalls the event loop (src/native/sys.ts). Best effort: it only costs time.
  try {
    if (!reserveFdTable(2 * MAX_CONNECTIONS)) warn(`cni fast path: the descriptor limit (RLIMIT_NOFILE) is below ${2 * MAX_CONNECTIONS}: the table was not grown`);
  } catch (err) {
    warn(`cni fast path: could not grow the file descriptor table: ${errText(err)}`);
  }
  let closed: Promise<void> | undefined;
  const close = () =>
    (closed ??= new Promise<void>((resolve) => {
      server.close(() => resolve());
      try {
        unlinkSync(path);
      } catch {
        /* already gone */
      }
    }));
  const drain = async (drainMs: number): Promise<boolean> => {
    state.draining = true;
    void close();
    // Connections that have not handed over a request are not ours to finish: the launcher falls back.
    for (const s of state.idle) s.destroy();
    const deadline = Date.now() + drainMs;
    while (state.inFlight.size && Date.now() < deadline) {
      await Promise.race([Promise.allSettled([...state.inFlight].map((c) => c.done)), new Promise((r) => setTimeout(r, Math.max(0, deadline - Date.now())))]);
    }
    const left = state.inFlight.size;
    if (left) warn(`cni fast path: ${left} request(s) still in flight after ${drainMs} ms; exiting anyway`);
    return left === 0;
  };
  opts.signal?.addEventListener('abort', () => void close(), { once: true });
  log(`cni fast path listening on ${path}`);
  return { path, close, drain, inFlight: () => state.inFlight.size };
}

/** The variable the launcher sets to the inode of its network namespace. */
export const NETNS_VAR = 'WEFT_LAUNCHER_NETNS';

interface Conn {
  /** Settles when this connection's request has replied (or the connection is gone). */
  done: Promise<void>;
}

interface ConnState {
  handler: CniHandler;
  timeoutMs: number;
  log: (m: string) => void;
  warn: (m: string) => void;
  warnPeer: (m: string) => void;
  /** Inode of the daemon's network namespace. */
  netns: string;
  allowUids: ReadonlySet<number>;
  /** Tail of each (containerID, ifname)'s queue of requests. */
  chains: Map<string, Promise<void>>;
  /** Acknowledged or running requests. */
  inFlight: Set<Conn>;
  /** Connections that have not been acknowledged yet. */
  idle: Set<Socket>;
  draining: boolean;
}

/** The peer's credentials, or why they cannot be known. */
function peerOf(sock: Socket): { uid: number; pid: number } | string {
  const fd = (sock as unknown as { _handle?: { fd?: number } })._handle?.fd;
  if (typeof fd !== 'number' || fd < 0) return 'no file descriptor';
  try {
    return peerCred(fd);
  } catch (err) {
    return (err as Error).message;
  }
}

/** Runs `fn` after every earlier request for `key`; the chain forgets settled tails. */
function inOrder(chains: Map<string, Promise<void>>, job: { key: string | undefined; run: () => Promise<void> }): Promise<void> {
  const { key, run: fn } = job;
  if (key === undefined) return fn();
  const prev = chains.get(key) ?? Promise.resolve();
  const run = prev.then(fn, fn);
  chains.set(key, run);
  void run.finally(() => {
    if (chains.get(key) === run) chains.delete(key);
  });
  return run;
}

function handle(sock: Socket, st: ConnState): void {
  const peer = peerOf(sock);
  if (typeof peer === 'string' || !(peer.uid === 0 || st.allowUids.has(peer.uid))) {
    const who = typeof peer === 'string' ? `an unknown peer (${peer})` : `uid ${peer.uid} (pid ${peer.pid})`;
    st.warnPeer(`cni fast path: refused a connection from ${who}: only root may use it`);
    sock.destroy();
    return;
  }
  if (st.draining) return void sock.destroy();
  const chunks: Buffer[] = [];
  let size = 0;
  let req: CniRequest | undefined;
  let started = false;
  let conn: (Conn & { finish(): void }) | undefined;
  st.idle.add(sock);
  const timer = setTimeout(() => {
    if (!started) drop('timed out waiting for the request');
  }, st.timeoutMs);
  const finish = () => {
    clearTimeout(timer);
    st.idle.delete(sock);
    conn?.finish();
  };
  function drop(why: string) {
    st.log(`cni fast path: dropped a connection: ${why}`);
    sock.destroy();
    finish();
  }
  sock.on('error', finish);
  sock.on('close', () => {
    if (!started) finish();
  });
  sock.on('end', () => {
    if (!started) drop('closed before go');
  });
  sock.on('data', (data: Buffer) => {
    if (started) return;
    if (!req) {
      size += data.length;
      if (size > MAX_REQUEST) return drop('request too large');
      chunks.push(data);
      try {
        req = decodeRequest(chunks.length === 1 ? chunks[0] : Buffer.concat(chunks, size));
      } catch (err) {
        return drop(err instanceof ProtocolError ? err.message : String(err));
      }
      if (!req) return;
      chunks.length = 0;
      // A launcher in another node's namespace (lab, tests) must not be served here: closing
      // without an acknowledgement makes it fall back to the standalone binary.
      const theirs = req.env[NETNS_VAR];
      delete req.env[NETNS_VAR];
      if (theirs !== undefined && theirs !== st.netns) return drop(`launcher in another network namespace (${theirs}, ours ${st.netns})`);
      if (st.draining) return drop('draining');
      let resolveDone!: () => void;
      const done = new Promise<void>((r) => (resolveDone = r));
      conn = {
        done,
        finish: () => {
          st.inFlight.delete(conn!);
          resolveDone();
        },
      };
      st.idle.delete(sock);
      st.inFlight.add(conn);
      sock.write(Buffer.of(ACK));
      return;
    }
    if (data[0] !== GO || data.length !== 1) return drop('expected go byte');
    started = true;
    clearTimeout(timer);
    const r = req;
    const c = conn!;
    const key = r.env.CNI_CONTAINERID && r.env.CNI_IFNAME ? `${r.env.CNI_CONTAINERID}\0${r.env.CNI_IFNAME}` : undefined;
    // Run to the end even when the launcher has gone: an ADD is completed (or undone by its
    // own error path) either way, and the runtime's DEL for it queues behind it.
    const run = async () => {
      let reply: CniReply;
      try {
        reply = await st.handler(r);
      } catch (err) {
        // Handlers report errors as CNI JSON themselves; reaching here is a bug in the handler.
        st.warn(`cni fast path: handler threw: ${(err as Error)?.stack ?? err}`);
        reply = { code: 1, stdout: `${JSON.stringify({ cniVersion: '1.0.0', code: 999, msg: `weftd: ${(err as Error)?.message ?? err}` })}\n` };
      }
      if (!sock.destroyed) sock.end(encodeReply(reply));
      // What the reply did not wait for (a DEL's veth deletion) still holds this request's
      // (containerID, ifname) and the drain; its failure is weftd's to report, not the runtime's.
      await reply.settled?.catch((err) => st.warn(`cni fast path: after ${r.env.CNI_COMMAND} of ${r.env.CNI_CONTAINERID ?? '?'}: ${errText(err)}`));
    };
    void inOrder(st.chains, { key, run }).finally(() => c.finish());
  });
}

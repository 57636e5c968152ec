/**
 * weftd's side of the CNI fast path: a unix socket on which the daemon runs CNI requests
 * forwarded by the launcher, with the same handler code the standalone binary runs.
 */
import { mkdirSync, chmodSync, unlinkSync, lstatSync, statSync } from 'node:fs';
import { createConnection, createServer, type Server, type Socket } from 'node:net';
import { dirname } from 'node:path';
import { ACK, decodeRequest, encodeReply, GO, ProtocolError, type CniReply, type CniRequest } from './protocol.ts';

/** Runs one CNI request in-process; must never throw (errors are CNI error JSON + exit code). */
export type CniHandler = (req: CniRequest) => Promise<CniReply>;

/** Default socket path; the launcher reads `fastpathSocket` from the network config. */
export const DEFAULT_SOCKET = '/run/weft/cni.sock';

export interface FastpathOptions {
  /** Socket path (default {@link DEFAULT_SOCKET}). */
  path?: string;
  handler: CniHandler;
  /** Closing the server when aborted. */
  signal?: AbortSignal;
  log?: (msg: string) => void;
  /** How long a connection may take to deliver its request and its go byte (default 15 s, longer than the launcher's 10 s wait for the acknowledgement). */
  requestTimeoutMs?: number;
}

export interface FastpathServer {
  readonly path: string;
  /** Stops accepting, removes the socket file; requests in flight still complete. */
  close(): Promise<void>;
}

/** True when something accepts connections on `path`. */
function isServed(path: string): Promise<boolean> {
  return new Promise((resolve) => {
    const c = createConnection(path);
    c.once('connect', () => (c.destroy(), resolve(true)));
    c.once('error', () => resolve(false));
  });
}

/**
 * Listens on the socket. A stale socket file (nobody listening) is replaced; a live one means
 * another daemon serves it, which is an error.
 */
export async function serveCni(opts: FastpathOptions): Promise<FastpathServer> {
  const path = opts.path ?? DEFAULT_SOCKET;
  const log = opts.log ?? (() => undefined);
  const timeoutMs = opts.requestTimeoutMs ?? 15_000;
  mkdirSync(dirname(path), { recursive: true, mode: 0o755 });
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
  const server: Server = createServer({ allowHalfOpen: true }, (sock) => handle(sock, { handler: opts.handler, timeoutMs, log, netns }));
  await new Promise<void>((resolve, reject) => {
    server.once('error', reject);
    server.listen(path, () => (server.off('error', reject), resolve()));
  });
  chmodSync(path, 0o600);
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
  opts.signal?.addEventListener('abort', () => void close(), { once: true });
  log(`cni fast path listening on ${path}`);
  return { path, close };
}

/** The variable the launcher sets to the inode of its network namespace. */
export const NETNS_VAR = 'WEFT_LAUNCHER_NETNS';

interface ConnOptions {
  handler: CniHandler;
  timeoutMs: number;
  log: (m: string) => void;
  /** Inode of the daemon's network namespace. */
  netns: string;
}

function handle(sock: Socket, { handler, timeoutMs, log, netns }: ConnOptions): void {
  const chunks: Buffer[] = [];
  let size = 0;
  let req: CniRequest | undefined;
  let started = false;
  const timer = setTimeout(() => {
    if (!started) sock.destroy();
  }, timeoutMs);
  const drop = (why: string) => {
    clearTimeout(timer);
    log(`cni fast path: dropped a connection: ${why}`);
    sock.destroy();
  };
  sock.on('error', () => clearTimeout(timer));
  sock.on('end', () => {
    if (!started) drop('closed before go');
  });
  sock.on('data', (data: Buffer) => {
    if (started) return;
    if (!req) {
      chunks.push(data);
      size += data.length;
      try {
        req = decodeRequest(chunks.length === 1 ? chunks[0] : Buffer.concat(chunks, size));
      } catch (err) {
        return drop(err instanceof ProtocolError ? err.message : String(err));
      }
      if (!req) return;
      // A launcher in another node's namespace (lab, tests) must not be served here: closing
      // without an acknowledgement makes it fall back to the standalone binary.
      const theirs = req.env[NETNS_VAR];
      delete req.env[NETNS_VAR];
      if (theirs !== undefined && theirs !== netns) return drop(`launcher in another network namespace (${theirs}, ours ${netns})`);
      sock.write(Buffer.of(ACK));
      return;
    }
    if (data[0] !== GO || data.length !== 1) return drop('expected go byte');
    started = true;
    clearTimeout(timer);
    const r = req;
    void handler(r).then(
      (reply) => sock.end(encodeReply(reply)),
      (err) => {
        // Handlers report errors as CNI JSON themselves; reaching here is a bug in the handler.
        log(`cni fast path: handler threw: ${(err as Error)?.stack ?? err}`);
        sock.end(encodeReply({ code: 1, stdout: JSON.stringify({ cniVersion: '1.0.0', code: 999, msg: `weftd: ${(err as Error)?.message ?? err}` }) + '\n' }));
      },
    );
  });
}

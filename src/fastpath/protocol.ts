/**
 * Wire format between the launcher (launcher.c) and weftd's CNI socket. Lengths are
 * little-endian u32.
 *
 *   launcher -> "WFT1" envLen env stdinLen stdin   env = "K=V\0" repeated
 *   daemon   -> 'A'                                 whole request read, nothing done yet
 *   launcher -> 'G'                                 go ahead (never sent after a timeout)
 *   daemon   -> code outLen stdout errLen stderr
 *
 * The two-step start guarantees that a launcher which gave up waiting and fell back to the
 * standalone binary never races the daemon on the same request.
 */

export const MAGIC = 'WFT1';
export const ACK = 0x41; // 'A'
export const GO = 0x47; // 'G'
/**
 * Refuse requests larger than this, whole (a network config is a few KiB, a chained one with
 * prevResult tens); the launcher refuses stdin above {@link MAX_STDIN} itself.
 */
export const MAX_REQUEST = 1 << 20;
/** The forwarded environment (CNI_* and PATH only) stays far below this. */
export const MAX_ENV = 64 << 10;
/** Largest network config the launcher forwards (launcher.c MAX_STDIN). */
export const MAX_STDIN = MAX_REQUEST - MAX_ENV - 12;

export interface CniRequest {
  env: Record<string, string>;
  stdin: string;
}

export interface CniReply {
  /** Process exit code the launcher exits with. */
  code: number;
  stdout: string;
  stderr?: string;
  /**
   * In-process only, never on the wire: work the reply does not wait for (a DEL's veth
   * deletion). The server runs the next request for the same (containerID, ifname), and lets
   * weftd exit, only once it has settled; it rejects with what failed.
   */
  settled?: Promise<void>;
}

export class ProtocolError extends Error {
  constructor(msg: string) {
    super(msg);
    this.name = 'ProtocolError';
  }
}

/** Encodes a request (used by tests and by any Node client). */
export function encodeRequest(req: CniRequest): Buffer {
  const env = Buffer.from(
    Object.entries(req.env)
      .map(([k, v]) => `${k}=${v}\0`)
      .join(''),
    'utf8',
  );
  const stdin = Buffer.from(req.stdin, 'utf8');
  const head = Buffer.alloc(8);
  const out = Buffer.concat([Buffer.from(MAGIC), head.subarray(0, 4), env, head.subarray(4), stdin]);
  out.writeUInt32LE(env.length, 4);
  out.writeUInt32LE(stdin.length, 8 + env.length);
  return out;
}

/**
 * Parses a request from the bytes received so far: undefined while incomplete, throws
 * {@link ProtocolError} on garbage.
 */
export function decodeRequest(buf: Buffer): CniRequest | undefined {
  if (buf.length >= 4 && buf.subarray(0, 4).toString('latin1') !== MAGIC) throw new ProtocolError('bad magic');
  if (buf.length > MAX_REQUEST) throw new ProtocolError('request too large');
  if (buf.length < 8) return undefined;
  const envLen = buf.readUInt32LE(4);
  if (envLen > MAX_ENV) throw new ProtocolError('environment too large');
  if (buf.length < 12 + envLen) return undefined;
  const stdinLen = buf.readUInt32LE(8 + envLen);
  if (stdinLen > MAX_STDIN) throw new ProtocolError('request too large');
  const total = 12 + envLen + stdinLen;
  if (buf.length < total) return undefined;
  if (buf.length > total) throw new ProtocolError('trailing bytes after request');
  const env: Record<string, string> = {};
  for (const kv of buf
    .subarray(8, 8 + envLen)
    .toString('utf8')
    .split('\0')) {
    const eq = kv.indexOf('=');
    if (eq > 0) env[kv.slice(0, eq)] = kv.slice(eq + 1);
  }
  return { env, stdin: buf.subarray(12 + envLen, total).toString('utf8') };
}

/** Encodes the daemon's reply. */
export function encodeReply(reply: CniReply): Buffer {
  const out = Buffer.from(reply.stdout, 'utf8');
  const err = Buffer.from(reply.stderr ?? '', 'utf8');
  const b = Buffer.alloc(12 + out.length + err.length);
  b.writeUInt32LE(reply.code >>> 0, 0);
  b.writeUInt32LE(out.length, 4);
  out.copy(b, 8);
  b.writeUInt32LE(err.length, 8 + out.length);
  err.copy(b, 12 + out.length);
  return b;
}

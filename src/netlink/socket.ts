/**
 * One rtnetlink request at the wire level: header out, the answers with its sequence number
 * back, errors as {@link NetlinkError}. Over the `netlink` package's raw socket (its native
 * binding) but not its request layer, which types every attribute of every answer and chains
 * four promises and a timer per request: ~230 µs a request on V8's interpreter (weftd's flags),
 * against ~70 µs here, and a pod ADD makes about ten.
 *
 * The socket keeps the process alive only while a request waits (the CNI binary exits when its
 * work is done), and each request has a deadline: a lost answer must not hold its caller forever.
 */
import { getSystemErrorName } from 'node:util';
import { RawNetlinkSocket } from 'netlink/dist/raw.js';
import { NetlinkError } from './errors.ts';
import { NETLINK_ROUTE, NLM_F, NLMSG_DONE, NLMSG_ERROR, NLMSG_HDRLEN } from './uapi.ts';

/** How long one request waits for its answers. The kernel answers at once; a reply can still be lost. */
const REQUEST_TIMEOUT_MS = 15_000;

/** One answer: message type and body (after the netlink header). */
export interface NlMessage {
  type: number;
  body: Buffer;
}

interface Waiter {
  op: string;
  /** Answers collected until the one that ends the request. */
  got: NlMessage[];
  /** Ends at NLMSG_DONE (dumps) rather than at the first NLMSG_ERROR or reply. */
  dump: boolean;
  /** Ends at the ACK, collecting what comes before it (NLM_F_ECHO). */
  ack: boolean;
  timer: NodeJS.Timeout;
  resolve(msgs: NlMessage[]): void;
  reject(err: Error): void;
}

function errnoName(errno: number): string {
  try {
    return getSystemErrorName(-Math.abs(errno));
  } catch {
    return `errno ${Math.abs(errno)}`;
  }
}

export class RtSocket {
  readonly #raw: RawNetlinkSocket;
  readonly #port: number;
  readonly #waiting = new Map<number, Waiter>();
  #seq = 1;
  #closed = false;

  /** Binds a socket in the calling thread's current network namespace. */
  constructor() {
    this.#raw = new RawNetlinkSocket(NETLINK_ROUTE);
    this.#port = this.#raw.address().port;
    // Only the kernel (port 0) answers for the kernel; root could send from another socket.
    this.#raw.on('message', (buf: Buffer, rinfo: { port: number }) => {
      if (rinfo.port === 0) this.#receive(buf);
    });
    // ENOBUFS and the like: answers may be lost, so nothing waiting can be trusted to end
    this.#raw.on('error', (err: Error) => this.#failAll(err));
    this.#raw.unref();
  }

  /**
   * Sends one message and resolves with its answers: for a dump, every entry until DONE; with
   * `ack`, whatever precedes the ACK (an echo); otherwise the one reply. A kernel error rejects
   * with {@link NetlinkError} named by `op`.
   */
  request(op: string, type: number, flags: number, body: Buffer): Promise<NlMessage[]> {
    if (this.#closed) return Promise.reject(new Error(`${op}: netlink socket closed`));
    const seq = this.#seq;
    this.#seq = (this.#seq % 0x7fffffff) + 1;
    const msg = Buffer.allocUnsafe(NLMSG_HDRLEN + body.length);
    msg.writeUInt32LE(msg.length, 0);
    msg.writeUInt16LE(type, 4);
    msg.writeUInt16LE(flags | NLM_F.REQUEST, 6);
    msg.writeUInt32LE(seq, 8);
    msg.writeUInt32LE(this.#port, 12);
    body.copy(msg, NLMSG_HDRLEN);
    return new Promise<NlMessage[]>((resolve, reject) => {
      const timer = setTimeout(() => this.#settle(seq, new Error(`${op}: no answer within ${REQUEST_TIMEOUT_MS / 1000} s`)), REQUEST_TIMEOUT_MS);
      timer.unref();
      if (!this.#waiting.size) this.#raw.ref();
      this.#waiting.set(seq, { op, got: [], dump: (flags & NLM_F.DUMP) === NLM_F.DUMP, ack: (flags & NLM_F.ACK) !== 0, timer, resolve, reject });
      try {
        this.#raw.send(msg, {}, (err?: Error) => {
          if (err) this.#settle(seq, new Error(`${op}: send`, { cause: err }));
        });
      } catch (err) {
        this.#settle(seq, new Error(`${op}: send`, { cause: err }));
      }
    });
  }

  #receive(buf: Buffer): void {
    for (let off = 0; off + NLMSG_HDRLEN <= buf.length; ) {
      const len = buf.readUInt32LE(off);
      if (len < NLMSG_HDRLEN || off + len > buf.length) return;
      const type = buf.readUInt16LE(off + 4);
      const seq = buf.readUInt32LE(off + 8);
      const w = this.#waiting.get(seq);
      const body = buf.subarray(off + NLMSG_HDRLEN, off + len);
      off += (len + 3) & ~3;
      if (!w) continue; // a late answer to a request that timed out
      if (type === NLMSG_ERROR) {
        const errno = body.length >= 4 ? body.readInt32LE(0) : -1;
        this.#settle(seq, errno === 0 ? undefined : new NetlinkError(w.op, errnoName(errno)));
      } else if (type === NLMSG_DONE) {
        // a dump's end carries its error, if any, as an int
        const errno = body.length >= 4 ? body.readInt32LE(0) : 0;
        this.#settle(seq, errno < 0 ? new NetlinkError(w.op, errnoName(errno)) : undefined);
      } else {
        w.got.push({ type, body });
        if (!w.dump && !w.ack) this.#settle(seq);
      }
    }
  }

  #settle(seq: number, err?: Error): void {
    const w = this.#waiting.get(seq);
    if (!w) return;
    this.#waiting.delete(seq);
    clearTimeout(w.timer);
    if (!this.#waiting.size && !this.#closed) this.#raw.unref();
    if (err) w.reject(err);
    else w.resolve(w.got);
  }

  #failAll(err: Error): void {
    for (const [seq, w] of this.#waiting) this.#settle(seq, new Error(`${w.op}: netlink socket error`, { cause: err }));
  }

  close(): void {
    if (this.#closed) return;
    this.#closed = true;
    for (const [seq, w] of this.#waiting) this.#settle(seq, new Error(`${w.op}: netlink socket closed`));
    this.#raw.close();
  }
}

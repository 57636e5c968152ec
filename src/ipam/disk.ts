/**
 * host-local's on-disk store, byte for byte, so a node can switch between weft and
 * bridge + host-local without leaking addresses:
 * - directory `<dataDir>/<network name>/`;
 * - `lock`: host-local's lock file; allocation and release hold flock(LOCK_EX) on it (as
 *   host-local does through go-filemutex), so weft and host-local can share a store at once;
 * - one file per allocated address, named by the address, content `<containerID>\r\n<ifname>`.
 *   Written to a temporary name first and link(2)ed into place (the atomic claim: link never
 *   replaces), so the file never exists without its owner in it;
 * - `last_reserved_ip.0`: the last address handed out (round-robin hint), written via rename.
 * Synchronous fs calls on purpose: they are tiny and the CNI binary runs once per request;
 * every read is bounded (the store's directory is root's, but its files are not weft's alone).
 */
import { closeSync, ftruncateSync, linkSync, mkdirSync, openSync, readdirSync, unlinkSync, writeFileSync, writeSync, constants as fsc, type Dirent } from 'node:fs';
import { join } from 'node:path';
import { markRetryable } from '../core/errors.ts';
import { readFileBounded, readSmallFile } from '../core/readfile.ts';
import { formatIPv4, isIPv4, parseIPv4 } from '../ip/ipv4.ts';
import { tryLockExclusive, unlock } from '../native/sys.ts';
import type { Owner } from './allocator.ts';
import type { Allocation, Store } from './store.ts';

const LINE_BREAK = '\r\n';
const LAST_RESERVED = 'last_reserved_ip.0';
const LOCK = 'lock';
/** An allocation file holds an ID (<= 1024 bytes, config.ts) and an interface name. */
const MAX_ALLOCATION_FILE = 4096;
/** How long to wait for host-local (or another weft) to let go of the lock. */
const LOCK_TIMEOUT_MS = 30_000;

/**
 * Per-directory queue inside this process. flock(2) locks belong to open files, so two
 * requests in weftd would otherwise each lock their own descriptor and exclude each other only
 * by polling; the queue hands the lock over in order, and the flock excludes other processes.
 */
const queues = new Map<string, Promise<void>>();
let seq = 0;

function code(err: unknown): string | undefined {
  return (err as NodeJS.ErrnoException).code;
}

/** Parses a reservation file's content; host-local before 0.8 wrote the container ID alone. */
function parseOwner(text: string): Owner {
  const trimmed = text.trim();
  const br = trimmed.indexOf(LINE_BREAK);
  return br < 0 ? { containerID: trimmed, ifname: '' } : { containerID: trimmed.slice(0, br).trim(), ifname: trimmed.slice(br + 2).trim() };
}

export class DiskStore implements Store {
  /** `<dataDir>/<network name>` */
  readonly dir: string;

  constructor(dataDir: string, network: string) {
    this.dir = join(dataDir, network);
  }

  #ensureDir(): void {
    mkdirSync(this.dir, { recursive: true, mode: 0o755 });
  }

  async locked<T>(fn: () => Promise<T>): Promise<T> {
    const prev = queues.get(this.dir) ?? Promise.resolve();
    let done!: () => void;
    const mine = prev.then(() => new Promise<void>((r) => (done = r)));
    queues.set(this.dir, mine);
    await prev;
    try {
      const fd = await this.#flock();
      try {
        return await fn();
      } finally {
        unlock(fd);
        closeSync(fd);
      }
    } finally {
      done();
      if (queues.get(this.dir) === mine) queues.delete(this.dir);
    }
  }

  /** Opens `<dir>/lock` and takes flock(LOCK_EX) on it without ever blocking the thread. */
  async #flock(): Promise<number> {
    const path = join(this.dir, LOCK);
    const open = () => openSync(path, fsc.O_RDONLY | fsc.O_CREAT | fsc.O_NOFOLLOW | fsc.O_NONBLOCK, 0o600);
    let fd: number;
    try {
      try {
        fd = open();
      } catch (err) {
        // The store's first use: the directory is made here, not checked on every call.
        if (code(err) !== 'ENOENT') throw err;
        this.#ensureDir();
        fd = open();
      }
    } catch (err) {
      throw new Error(`open IPAM lock "${path}"`, { cause: err });
    }
    try {
      const deadline = Date.now() + LOCK_TIMEOUT_MS;
      // Holders (host-local, another worker thread) keep it for a millisecond or two: poll often.
      for (let wait = 1; !tryLockExclusive(fd); wait = Math.min(wait * 2, 5)) {
        if (Date.now() >= deadline) throw markRetryable(new Error(`IPAM lock "${path}" is still held after ${LOCK_TIMEOUT_MS / 1000} s`));
        await new Promise((r) => setTimeout(r, wait));
      }
      return fd;
    } catch (err) {
      closeSync(fd);
      throw err;
    }
  }

  async reserve(ip: number, owner: Owner): Promise<boolean> {
    const file = join(this.dir, formatIPv4(ip));
    const tmp = join(this.dir, `.reserve-${formatIPv4(ip)}-${process.pid}-${seq++}-${Date.now()}`);
    const write = () => writeFileSync(tmp, `${owner.containerID}${LINE_BREAK}${owner.ifname}`, { flag: 'wx', mode: 0o644 });
    try {
      try {
        write();
      } catch (err) {
        if (code(err) !== 'ENOENT') throw err;
        this.#ensureDir(); // reserve() outside locked(), on a store never used
        write();
      }
    } catch (err) {
      throw new Error(`write reservation "${tmp}"`, { cause: err });
    }
    try {
      linkSync(tmp, file);
      return true;
    } catch (err) {
      if (code(err) === 'EEXIST') return false;
      throw new Error(`reserve ${formatIPv4(ip)} in "${this.dir}"`, { cause: err });
    } finally {
      try {
        unlinkSync(tmp);
      } catch {
        /* only a stray temporary: list() ignores it */
      }
    }
  }

  async release(ip: number): Promise<void> {
    try {
      unlinkSync(join(this.dir, formatIPv4(ip)));
    } catch (err) {
      if (code(err) !== 'ENOENT') throw new Error(`release ${formatIPv4(ip)} in "${this.dir}"`, { cause: err });
    }
  }

  async releaseByOwner(owner: Owner): Promise<number[]> {
    return this.locked(() => this.#releaseByOwner(owner));
  }

  async #releaseByOwner(owner: Owner): Promise<number[]> {
    const freed: number[] = [];
    for (const a of await this.list()) {
      // Match host-local: `<id>\r\n<ifname>`, or a legacy file holding just the ID.
      if (a.containerID === owner.containerID && (a.ifname === owner.ifname || a.ifname === '')) {
        await this.release(a.ip);
        freed.push(a.ip);
      }
    }
    return freed;
  }

  async list(): Promise<Allocation[]> {
    let entries: Dirent[];
    try {
      entries = readdirSync(this.dir, { withFileTypes: true });
    } catch (err) {
      if (code(err) === 'ENOENT') return [];
      throw new Error(`list allocations in "${this.dir}"`, { cause: err });
    }
    const out: Allocation[] = [];
    for (const e of entries) {
      const name = e.name;
      if (!isIPv4(name)) continue;
      let text: string;
      try {
        // The directory entry's type saves an fstat per file; the read is bounded either way.
        text = e.isFile() ? readSmallFile(join(this.dir, name), MAX_ALLOCATION_FILE) : readFileBounded(join(this.dir, name), MAX_ALLOCATION_FILE);
      } catch (err) {
        if (code(err) === 'ENOENT') continue; // released meanwhile
        // Not a regular file or absurdly large: not ours to read or free, but the address is taken.
        if (code(err) === 'EFBIG' || code(err) === 'EINVAL') {
          out.push({ ip: parseIPv4(name), containerID: '', ifname: '' });
          continue;
        }
        throw new Error(`read allocation "${join(this.dir, name)}"`, { cause: err });
      }
      out.push({ ip: parseIPv4(name), ...parseOwner(text) });
    }
    return out;
  }

  async lastReserved(): Promise<number | undefined> {
    try {
      const text = readFileBounded(join(this.dir, LAST_RESERVED), 64).trim();
      return isIPv4(text) ? parseIPv4(text) : undefined;
    } catch {
      return undefined;
    }
  }

  /**
   * Rewritten in place, as host-local does, but without truncating to zero first: on ext4, a
   * rename over a file or a truncation to zero makes the kernel start writing the new data out
   * (auto_da_alloc), ~0.2 ms of a pod ADD here against ~20 µs. The file is a hint read under
   * the lock; whatever a crash leaves in it only moves where the round robin starts.
   */
  async setLastReserved(ip: number): Promise<void> {
    const text = Buffer.from(formatIPv4(ip));
    const fd = openSync(join(this.dir, LAST_RESERVED), fsc.O_WRONLY | fsc.O_CREAT | fsc.O_NOFOLLOW | fsc.O_NONBLOCK, 0o644);
    try {
      writeSync(fd, text, 0, text.length, 0);
      ftruncateSync(fd, text.length);
    } finally {
      closeSync(fd);
    }
  }

  async checkWritable(): Promise<void> {
    const probe = join(this.dir, `.weft-probe.${process.pid}`);
    try {
      this.#ensureDir();
      writeFileSync(probe, '', { flag: 'wx' });
      unlinkSync(probe);
    } catch (err) {
      throw new Error(`IPAM store "${this.dir}" is not writable`, { cause: err });
    }
  }
}

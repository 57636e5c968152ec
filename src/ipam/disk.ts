/**
 * host-local's on-disk store, byte for byte, so a node can switch between weft and
 * bridge + host-local without leaking addresses:
 * - directory `<dataDir>/<network name>/`;
 * - one file per allocated address, named by the address, created with O_EXCL (the atomic
 *   claim: concurrent ADDs for different containers never get the same address), content
 *   `<containerID>\r\n<ifname>`;
 * - `last_reserved_ip.0`: the last address handed out (round-robin hint), written via rename.
 * Synchronous fs calls on purpose: they are tiny and the CNI binary runs once per request.
 */
import { closeSync, mkdirSync, openSync, readdirSync, readFileSync, renameSync, unlinkSync, writeFileSync, writeSync } from 'node:fs';
import { join } from 'node:path';
import { formatIPv4, isIPv4, parseIPv4 } from '../ip/ipv4.ts';
import type { Owner } from './allocator.ts';
import type { Allocation, Store } from './store.ts';

const LINE_BREAK = '\r\n';
const LAST_RESERVED = 'last_reserved_ip.0';

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

  async reserve(ip: number, owner: Owner): Promise<boolean> {
    this.#ensureDir();
    const file = join(this.dir, formatIPv4(ip));
    let fd: number;
    try {
      fd = openSync(file, 'wx', 0o644);
    } catch (err) {
      if (code(err) === 'EEXIST') return false;
      throw new Error(`reserve ${formatIPv4(ip)} in "${this.dir}"`, { cause: err });
    }
    try {
      writeSync(fd, `${owner.containerID}${LINE_BREAK}${owner.ifname}`);
    } catch (err) {
      closeSync(fd);
      unlinkSync(file);
      throw new Error(`write reservation "${file}"`, { cause: err });
    }
    closeSync(fd);
    return true;
  }

  async release(ip: number): Promise<void> {
    try {
      unlinkSync(join(this.dir, formatIPv4(ip)));
    } catch (err) {
      if (code(err) !== 'ENOENT') throw new Error(`release ${formatIPv4(ip)} in "${this.dir}"`, { cause: err });
    }
  }

  async releaseByOwner(owner: Owner): Promise<number[]> {
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
    let names: string[];
    try {
      names = readdirSync(this.dir);
    } catch (err) {
      if (code(err) === 'ENOENT') return [];
      throw new Error(`list allocations in "${this.dir}"`, { cause: err });
    }
    const out: Allocation[] = [];
    for (const name of names) {
      if (!isIPv4(name)) continue;
      let text: string;
      try {
        text = readFileSync(join(this.dir, name), 'utf8');
      } catch (err) {
        if (code(err) === 'ENOENT') continue; // released meanwhile
        throw new Error(`read allocation "${join(this.dir, name)}"`, { cause: err });
      }
      out.push({ ip: parseIPv4(name), ...parseOwner(text) });
    }
    return out;
  }

  async lastReserved(): Promise<number | undefined> {
    try {
      const text = readFileSync(join(this.dir, LAST_RESERVED), 'utf8').trim();
      return isIPv4(text) ? parseIPv4(text) : undefined;
    } catch {
      return undefined;
    }
  }

  async setLastReserved(ip: number): Promise<void> {
    const tmp = join(this.dir, `.${LAST_RESERVED}.${process.pid}.tmp`);
    writeFileSync(tmp, formatIPv4(ip), { mode: 0o644 });
    renameSync(tmp, join(this.dir, LAST_RESERVED));
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

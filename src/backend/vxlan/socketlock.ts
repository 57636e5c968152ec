/**
 * The lock on one netlink socket: up to `limit` shared holders at once (peer programming:
 * independent requests, each matched to its ack by sequence number), or one exclusive holder
 * (a dump, which must not interleave with other replies on the same socket, or a device
 * repair that changes the index every peer entry hangs off). Waiters are admitted in arrival
 * order, so a dump is not starved by a stream of peer updates, nor the other way round.
 */
export class SocketLock {
  readonly #limit: number;
  #active = 0;
  #exclusive = false;
  readonly #waiting: Array<{ exclusive: boolean; go: () => void }> = [];

  constructor(limit: number) {
    if (!Number.isInteger(limit) || limit < 1) throw new RangeError(`socket lock limit must be a positive integer, got ${limit}`);
    this.#limit = limit;
  }

  /** Holders right now (for tests). */
  get active(): number {
    return this.#active;
  }

  /** Runs `fn` alongside at most `limit - 1` other shared holders. */
  shared<T>(fn: () => Promise<T>): Promise<T> {
    return this.#hold(false, fn);
  }

  /** Runs `fn` alone. */
  exclusive<T>(fn: () => Promise<T>): Promise<T> {
    return this.#hold(true, fn);
  }

  async #hold<T>(exclusive: boolean, fn: () => Promise<T>): Promise<T> {
    await this.#enter(exclusive);
    try {
      return await fn();
    } finally {
      this.#leave();
    }
  }

  #fits(exclusive: boolean): boolean {
    return exclusive ? this.#active === 0 : !this.#exclusive && this.#active < this.#limit;
  }

  #admit(exclusive: boolean): void {
    this.#active++;
    this.#exclusive = exclusive;
  }

  #enter(exclusive: boolean): Promise<void> | undefined {
    if (!this.#waiting.length && this.#fits(exclusive)) {
      this.#admit(exclusive);
      return undefined;
    }
    return new Promise((go) => this.#waiting.push({ exclusive, go }));
  }

  #leave(): void {
    this.#active--;
    this.#exclusive = false;
    while (this.#waiting.length && this.#fits(this.#waiting[0]!.exclusive)) {
      const w = this.#waiting.shift()!;
      this.#admit(w.exclusive);
      w.go();
    }
  }
}

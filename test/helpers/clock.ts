/** A clock unit tests drive by hand: sleeps resolve when `advance` passes their deadline. */
import type { Clock } from '../../src/core/clock.ts';

export class FakeClock implements Clock {
  t = 0;
  sleeps: Array<{ until: number; resolve: () => void }> = [];
  now() {
    return this.t;
  }
  sleep(ms: number, signal?: AbortSignal) {
    return new Promise<void>((resolve) => {
      const entry = { until: this.t + ms, resolve };
      this.sleeps.push(entry);
      signal?.addEventListener('abort', () => resolve(), { once: true });
    });
  }
  /** Moves time on by `ms`, wakes the sleeps that are due and lets their continuations run. */
  async advance(ms: number) {
    this.t += ms;
    for (const s of this.sleeps.filter((x) => x.until <= this.t)) s.resolve();
    this.sleeps = this.sleeps.filter((x) => x.until > this.t);
    for (let i = 0; i < 10; i++) await Promise.resolve();
    await new Promise((r) => setImmediate(r));
  }
}

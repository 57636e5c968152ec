/**
 * weftd's nice value. Its main thread runs the control loop (lease renewal, peer programming,
 * health, the CNI socket), which must keep its pace while a pod burst makes a hundred
 * launchers compete for the node's CPUs. Raising the main thread alone is not enough: it
 * waits on its helpers, V8's GC thread (a major GC joins its concurrent marking) and the CNI
 * workers (a MessagePort's lock), and one of those preempted at nice 0 holds it up for tens of
 * milliseconds. So every thread gets the value. Linux keeps it per thread, and a new thread
 * starts with its creator's, so set at start-up it covers the threads started on demand too.
 *
 * Measured (bench fastconc, 100 pods through the launcher, 2 shared cores, descriptor table
 * pre-grown): the main thread's worst event-loop delay in a second of the burst was 28-92 ms at
 * nice 0 and 10-38 ms at -10, five runs each (bench/results/sample-2026-12-01-nice{0,}-fd*).
 * The nice value weighs threads against the others in their CPU cgroup: there the server and
 * the launchers shared one. Under Kubernetes the launchers run in the runtime's cgroup and the
 * kernel weighs weftd's pod against it by CPU request; nice still orders what runs inside it
 * (docs/benchmarks.md has runs with the two in separate cgroups).
 */
import { readdirSync } from 'node:fs';
import { setPriority } from 'node:os';
import { errText } from './errors.ts';

/** weftd's default (--nice). */
export const DEFAULT_NICE = -10;

/**
 * Sets the nice value (-20..19) of every thread of this process (0: leaves them as they are);
 * returns why it could not (no CAP_SYS_NICE: a hand-run weftd works the same, less steadily in
 * bursts), or undefined.
 */
export function setProcessNice(nice: number): string | undefined {
  if (nice === 0) return undefined;
  let error: string | undefined;
  for (const tid of readdirSync('/proc/self/task')) {
    try {
      // os.setPriority takes a pid; Linux's PRIO_PROCESS applies to the one task (thread) named.
      setPriority(Number(tid), nice);
    } catch (err) {
      // A thread that ended meanwhile is not an error worth reporting; the first refusal is.
      // os.setPriority throws ERR_SYSTEM_ERROR with the errno's name in `info.code`.
      if ((err as { info?: { code?: string } }).info?.code !== 'ESRCH') error ??= errText(err);
    }
  }
  return error;
}

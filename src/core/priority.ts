/**
 * weftd's main thread runs its control loop (lease renewal, peer programming, health, the CNI
 * socket), which must keep its pace while a pod burst makes a hundred launchers compete for
 * the node's CPUs. Linux keeps the nice value per thread, and a thread starts with its
 * creator's: so the main thread's is raised, and the CNI worker threads (the burst's bulk
 * work) put back the value the process started with ({@link ThreadPriority.workerNice}).
 *
 * Measured (bench fastconc, 100 pods through the launcher, 2 shared cores): the main thread's
 * worst event-loop delay in a second of the burst was 45-75 ms at nice 0, 12-29 ms at -10 (bench/results/sample-2026-12-01-nice.json.txt).
 */
import { getPriority, setPriority } from 'node:os';
import { errText } from './errors.ts';

/** weftd's default for its main thread (--nice). */
export const DEFAULT_NICE = -10;

export interface ThreadPriority {
  /** The nice value threads doing bulk work should run at: the process's own before the raise. */
  workerNice: number;
  /** Why the calling thread's nice could not be set, if it could not. */
  error?: string;
}

/** Sets the calling thread's nice value (-20..19) to `nice`; 0 changes nothing. */
export function setMainThreadNice(nice: number): ThreadPriority {
  // getPriority/setPriority(0) are the calling thread's: Linux's PRIO_PROCESS 0 is the caller task.
  const workerNice = getPriority(0);
  if (nice === 0 || nice === workerNice) return { workerNice };
  try {
    setPriority(0, nice);
    return { workerNice };
  } catch (err) {
    // No CAP_SYS_NICE (a hand-run weftd): the daemon works the same, only less steadily in bursts.
    return { workerNice, error: errText(err) };
  }
}

/** In a worker thread: back to `nice` (it inherited the main thread's), best effort. */
export function setWorkerThreadNice(nice: number | undefined): void {
  if (nice === undefined || getPriority(0) === nice) return;
  try {
    setPriority(0, nice);
  } catch {
    /* lowering one's priority cannot fail for want of rights; nothing to do if it does */
  }
}

/**
 * A CNI worker thread of the fast path (./pool.ts): runs requests with the same handler as the
 * main thread would ({@link handleCniWith}), so netlink's blocking sendmsg, namespace switches
 * (setns moves only this thread), sysctl and IPAM file calls never stall weftd's event loop.
 * Requests arrive as `{ id, req }` and are answered `{ id, reply }` (then `{ id, settled }`
 * when the reply left work running: a DEL's veth deletion); several run at once.
 */
import { parentPort, workerData } from 'node:worker_threads';
import { errText } from '../core/errors.ts';
import type { OwnNetwork } from '../cni/config.ts';
import { handleCniWith } from './handler.ts';
import type { CniReply, CniRequest } from './protocol.ts';

/** What the pool passes as workerData. */
export interface WorkerInit {
  network: OwnNetwork;
}

/** Messages between the pool and a worker. */
export type ToWorker = { id: number; req: CniRequest };
/**
 * A reply (`more`: its background work follows, as a `settled` message with the same id, and
 * `error` when it failed), or 'ready' once, when the worker has loaded.
 */
export type FromWorker = { id: number; reply: Omit<CniReply, 'settled'>; more?: boolean } | { id: number; settled: true; error?: string };

if (parentPort && (workerData as { weftCniWorker?: WorkerInit } | undefined)?.weftCniWorker) {
  const port = parentPort;
  const { network } = (workerData as { weftCniWorker: WorkerInit }).weftCniWorker;
  port.postMessage('ready');
  port.on('message', (msg: ToWorker) => {
    void handleCniWith(msg.req, { network }).then(
      ({ settled, ...reply }) => {
        port.postMessage({ id: msg.id, reply, more: settled !== undefined } satisfies FromWorker);
        settled?.then(
          () => port.postMessage({ id: msg.id, settled: true } satisfies FromWorker),
          (err) => port.postMessage({ id: msg.id, settled: true, error: errText(err) } satisfies FromWorker),
        );
      },
      (err) =>
        port.postMessage({
          id: msg.id,
          reply: { code: 1, stdout: `${JSON.stringify({ cniVersion: '1.0.0', code: 999, msg: `weftd worker: ${(err as Error)?.message ?? err}` })}\n` },
        } satisfies FromWorker),
    );
  });
}

/**
 * The fast path's worker threads give the same replies as the in-process handler (they run the
 * same code); a closed pool answers with a CNI error instead of hanging. No kernel state.
 */
import test from 'ava';
import { cniHandler } from '../../src/fastpath/handler.ts';
import { startWorkerPool } from '../../src/fastpath/pool.ts';
import type { CniRequest } from '../../src/fastpath/protocol.ts';

const network = { subnetFile: '/run/wt-nowhere/subnet.env', dataDir: '/run/wt-nowhere/data', bridge: 'wtbr0' };
const requests: CniRequest[] = [
  { env: { CNI_COMMAND: 'VERSION' }, stdin: '{"cniVersion":"1.1.0"}' },
  { env: { CNI_COMMAND: 'ADD', CNI_CONTAINERID: 'c1', CNI_IFNAME: 'eth0', CNI_NETNS: '/run/netns/wt-none' }, stdin: '{"cniVersion":"1.0.0","name":"n","dataDir":"/tmp"}' },
  { env: { CNI_COMMAND: 'ADD' }, stdin: 'not json' },
  { env: { CNI_COMMAND: 'BOGUS' }, stdin: '{}' },
];

test('workers reply exactly as the in-process handler does', async (t) => {
  const pool = startWorkerPool({ network, min: 1, max: 2 });
  t.teardown(() => pool.close());
  const local = cniHandler({ network });
  for (const req of requests) {
    const [a, b] = await Promise.all([pool.handler(req), local(req)]);
    t.deepEqual(a, b, JSON.stringify(req.env));
  }
  // Many at once: every one answered.
  const many = await Promise.all(Array.from({ length: 20 }, () => pool.handler(requests[0])));
  t.true(many.every((r) => r.code === 0));
});

test('a closed pool answers with a CNI error, never hangs', async (t) => {
  const pool = startWorkerPool({ network, min: 1, max: 1 });
  await pool.close();
  const r = await pool.handler(requests[0]);
  t.is(r.code, 1);
  t.is(JSON.parse(r.stdout).code, 999);
});

test('with no worker kept idle, the first request runs inline while one starts; later ones go to it', async (t) => {
  const local = cniHandler({ network });
  let inline = 0;
  const pool = startWorkerPool({ network, min: 0, max: 1, inline: (req) => (inline++, local(req)) });
  t.teardown(() => pool.close());
  t.deepEqual(await pool.handler(requests[0]!), await local(requests[0]!));
  t.is(inline, 1, 'the first did not wait for a worker');
  let moved = false;
  for (let i = 0; i < 200 && !moved; i++) {
    const before = inline;
    t.deepEqual(await pool.handler(requests[3]!), await local(requests[3]!));
    moved = inline === before;
    if (!moved) await new Promise((r) => setTimeout(r, 25));
  }
  t.true(moved, 'requests went to the worker once it had loaded');
});

test('while no worker has loaded, only one request at a time runs inline; the rest of a burst waits for the worker', async (t) => {
  const local = cniHandler({ network });
  let inline = 0;
  let release!: () => void;
  const held = new Promise<void>((r) => (release = r));
  // the inline request is held until the burst has been handed out
  const pool = startWorkerPool({ network, min: 0, max: 1, inline: async (req) => (inline++, await held, local(req)) });
  t.teardown(() => pool.close());
  const burst = Array.from({ length: 10 }, () => pool.handler(requests[0]!));
  await new Promise((r) => setTimeout(r, 50));
  t.is(inline, 1, 'one inline request, not ten');
  release();
  const replies = await Promise.all(burst);
  t.true(replies.every((r) => r.code === 0));
  t.is(inline, 1);
});

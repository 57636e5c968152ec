/**
 * LinkBatchDeleter: deletes asked for together go as one linksDel; when that fails, each link
 * is deleted on its own with its own outcome (gone is done). No kernel state.
 */
import test from 'ava';
import { LinkBatchDeleter } from '../../src/netlink/batchdel.ts';
import { NetlinkError } from '../../src/netlink/errors.ts';
import type { Netlink } from '../../src/netlink/types.ts';

/** The batch's socket is closed just after its deletes settle. */
const tick = () => new Promise((r) => setImmediate(r));

function fake(opts: { batchFails?: boolean; errno?: Record<number, string> }) {
  const calls: string[] = [];
  const open = () =>
    ({
      linksDel: async (ix: readonly number[]) => {
        calls.push(`linksDel ${ix.join(',')}`);
        if (opts.batchFails) throw new NetlinkError('delete group', 'EOPNOTSUPP');
      },
      linkDel: async (i: number) => {
        calls.push(`linkDel ${i}`);
        const e = opts.errno?.[i];
        if (e) throw new NetlinkError(`delete link ${i}`, e);
      },
      close: () => calls.push('close'),
    }) as unknown as Netlink;
  return { calls, open };
}

test('deletes asked at once go in one batch; a lone one is a plain delete', async (t) => {
  const f = fake({});
  const d = new LinkBatchDeleter(f.open);
  await Promise.all([3, 4, 5].map((i) => d.delete(i)));
  await d.delete(7);
  await tick();
  t.deepEqual(f.calls, ['linksDel 3,4,5', 'close', 'linkDel 7', 'close']);
});

test('a failed batch falls back to one delete each: gone is done, another error is that delete’s own', async (t) => {
  const f = fake({ batchFails: true, errno: { 4: 'ENODEV', 5: 'EBUSY' } });
  const d = new LinkBatchDeleter(f.open);
  const results = await Promise.allSettled([3, 4, 5].map((i) => d.delete(i)));
  await tick();
  t.deepEqual(
    results.map((r) => r.status),
    ['fulfilled', 'fulfilled', 'rejected'],
  );
  t.deepEqual(f.calls, ['linksDel 3,4,5', 'linkDel 3', 'linkDel 4', 'linkDel 5', 'close']);
  // and it keeps serving afterwards
  await d.delete(9);
  await tick();
  t.deepEqual(f.calls.slice(-2), ['linkDel 9', 'close']);
});

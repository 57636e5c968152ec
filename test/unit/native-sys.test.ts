/**
 * The native addon's descriptor-table call (src/native/sys.ts, reserveFds in
 * src/netns/native/setns.c), in the test worker's own process: it grows the table and leaves no
 * descriptor open; a count beyond what the kernel allows is `false`, not an error.
 */
import test from 'ava';
import { readdirSync, readFileSync } from 'node:fs';
import { reserveFdTable, sys } from '../../src/native/sys.ts';

const fdSize = () => Number(/^FDSize:\s+(\d+)/m.exec(readFileSync('/proc/self/status', 'utf8'))?.[1]);

test('reserveFdTable grows the descriptor table and closes what it opened', (t) => {
  const open = readdirSync('/proc/self/fd').length;
  t.true(reserveFdTable(2048));
  t.true(fdSize() >= 2048, `FDSize ${fdSize()}`);
  t.is(readdirSync('/proc/self/fd').length, open, 'no descriptor left open');
  // Above fs.nr_open (at most 2^30): the kernel refuses, the call says so.
  t.false(reserveFdTable(2 ** 30));
  for (const bad of [0, -1, Number.NaN, 2 ** 31, '8' as unknown as number]) {
    t.throws(() => sys().reserveFds(bad), { instanceOf: TypeError }, String(bad));
  }
});

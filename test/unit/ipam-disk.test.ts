import test from 'ava';
import { spawn, spawnSync } from 'node:child_process';
import { mkdtempSync, readdirSync, readFileSync, rmSync, writeFileSync, mkdirSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { DiskStore } from '../../src/ipam/disk.ts';
import { allocate, type Store } from '../../src/ipam/index.ts';
import { formatIPv4, parseCIDR, parseIPv4 } from '../../src/ip/ipv4.ts';

function tmp(t: { teardown(fn: () => void): void }) {
  const dir = mkdtempSync(join(tmpdir(), 'wt-ipam-'));
  t.teardown(() => rmSync(dir, { recursive: true, force: true }));
  return dir;
}

test('disk store writes host-local files: <dataDir>/<name>/<ip> = "<id>\\r\\n<ifname>", last_reserved_ip.0', async (t) => {
  const dir = tmp(t);
  const store = new DiskStore(dir, 'net') satisfies Store;
  t.true(await store.reserve(parseIPv4('198.18.1.5'), { containerID: 'abc', ifname: 'eth0' }));
  t.false(await store.reserve(parseIPv4('198.18.1.5'), { containerID: 'other', ifname: 'eth0' }), 'O_EXCL claim');
  t.is(readFileSync(join(dir, 'net', '198.18.1.5'), 'utf8'), 'abc\r\neth0');
  await store.setLastReserved(parseIPv4('198.18.1.5'));
  t.is(readFileSync(join(dir, 'net', 'last_reserved_ip.0'), 'utf8'), '198.18.1.5');
  t.is(formatIPv4((await store.lastReserved())!), '198.18.1.5');
  t.deepEqual(readdirSync(join(dir, 'net')).sort(), ['198.18.1.5', 'last_reserved_ip.0']);
});

test('disk store lists and releases by owner, including legacy ID-only files; ignores other files', async (t) => {
  const dir = tmp(t);
  mkdirSync(join(dir, 'net'));
  writeFileSync(join(dir, 'net', '198.18.1.2'), 'a\r\neth0');
  writeFileSync(join(dir, 'net', '198.18.1.3'), 'a\r\neth1');
  writeFileSync(join(dir, 'net', '198.18.1.4'), 'legacy\n');
  writeFileSync(join(dir, 'net', 'lock'), '');
  const store = new DiskStore(dir, 'net');
  t.is((await store.list()).length, 3);
  t.deepEqual((await store.releaseByOwner({ containerID: 'a', ifname: 'eth0' })).map(formatIPv4), ['198.18.1.2']);
  t.deepEqual((await store.releaseByOwner({ containerID: 'legacy', ifname: 'eth0' })).map(formatIPv4), ['198.18.1.4']);
  t.deepEqual(await store.releaseByOwner({ containerID: 'a', ifname: 'eth0' }), [], 'twice is fine');
  t.deepEqual(readdirSync(join(dir, 'net')).sort(), ['198.18.1.3', 'lock']);
  await store.release(parseIPv4('198.18.1.200'));
  t.deepEqual(await new DiskStore(dir, 'absent').list(), []);
});

test('concurrent allocations on the disk store never share an address', async (t) => {
  const dir = tmp(t);
  const range = { subnet: parseCIDR('198.18.1.0/24'), gateway: parseIPv4('198.18.1.1') };
  // Separate store objects, as separate processes would have.
  const got = await Promise.all(Array.from({ length: 40 }, (_, i) => allocate(new DiskStore(dir, 'net'), range, { containerID: `c${i}`, ifname: 'eth0' })));
  t.is(new Set(got).size, 40);
  t.is(readdirSync(join(dir, 'net')).filter((f) => f.startsWith('198.')).length, 40);
});

test('checkWritable says why the store cannot be written', async (t) => {
  const dir = tmp(t);
  writeFileSync(join(dir, 'file'), '');
  const err = await t.throwsAsync(new DiskStore(join(dir, 'file'), 'net').checkWritable());
  t.regex(err!.message, /is not writable/);
  await t.notThrowsAsync(new DiskStore(dir, 'net').checkWritable());
  t.deepEqual(readdirSync(join(dir, 'net')), [], 'probe removed');
});

test("allocation waits for host-local's flock on <dir>/lock and goes on once it is released", async (t) => {
  const dir = tmp(t);
  mkdirSync(join(dir, 'net'));
  const range = { subnet: parseCIDR('198.18.1.0/24'), gateway: parseIPv4('198.18.1.1') };
  // flock(1) takes the same flock(2) lock go-filemutex does, in another process.
  const holder = spawn('flock', ['-x', join(dir, 'net', 'lock'), '-c', 'echo held; sleep 0.6']);
  await new Promise<void>((r) => holder.stdout.once('data', () => r()));
  const t0 = Date.now();
  const ip = await allocate(new DiskStore(dir, 'net'), range, { containerID: 'c1', ifname: 'eth0' });
  const waited = Date.now() - t0;
  t.is(formatIPv4(ip), '198.18.1.2');
  t.true(waited >= 300, `allocation waited for the lock (${waited} ms)`);
  await new Promise((r) => (holder.exitCode !== null ? r(undefined) : holder.once('exit', r)));
  // And the other way round: while weft holds the lock, flock -n fails.
  const store = new DiskStore(dir, 'net');
  const seen = await store.locked(async () => spawnSync('flock', ['-n', '-x', join(dir, 'net', 'lock'), 'true']).status);
  t.is(seen, 1, 'host-local (flock -n) could not take it while weft held it');
  t.is(spawnSync('flock', ['-n', '-x', join(dir, 'net', 'lock'), 'true']).status, 0, 'free again after');
});

test('two concurrent ADDs for one container get one address; the other is refused', async (t) => {
  const dir = tmp(t);
  const range = { subnet: parseCIDR('198.18.1.0/24'), gateway: parseIPv4('198.18.1.1') };
  const owner = { containerID: 'same', ifname: 'eth0' };
  const results = await Promise.allSettled(Array.from({ length: 8 }, () => allocate(new DiskStore(dir, 'net'), range, owner)));
  t.is(results.filter((r) => r.status === 'fulfilled').length, 1);
  for (const r of results) if (r.status === 'rejected') t.is((r.reason as Error).name, 'DuplicateAllocationError');
  t.deepEqual(
    readdirSync(join(dir, 'net')).filter((f) => f.startsWith('198.')),
    ['198.18.1.2'],
  );
});

test('a reservation file appears with its owner already in it; no temporary is left', async (t) => {
  const dir = tmp(t);
  const store = new DiskStore(dir, 'net');
  const file = join(dir, 'net', '198.18.1.9');
  // Poll as a concurrent reader would: the file is never seen empty.
  const seen: string[] = [];
  let stop = false;
  const reader = (async () => {
    while (!stop) {
      try {
        seen.push(readFileSync(file, 'utf8'));
      } catch {
        /* not there yet */
      }
      await new Promise((r) => setImmediate(r));
    }
  })();
  for (let i = 0; i < 50; i++) {
    t.true(await store.reserve(parseIPv4('198.18.1.9'), { containerID: `c${i}`, ifname: 'eth0' }));
    await new Promise((r) => setImmediate(r));
    await store.release(parseIPv4('198.18.1.9'));
  }
  stop = true;
  await reader;
  t.false(seen.includes(''), 'never empty');
  t.deepEqual(
    readdirSync(join(dir, 'net')).filter((f) => f.startsWith('.')),
    [],
    'no temporary left',
  );
});

test('oversized or non-regular allocation files are read bounded and count as taken', async (t) => {
  const dir = tmp(t);
  mkdirSync(join(dir, 'net'));
  writeFileSync(join(dir, 'net', '198.18.1.2'), 'x'.repeat(1 << 20));
  mkdirSync(join(dir, 'net', '198.18.1.3'));
  spawnSync('mkfifo', [join(dir, 'net', '198.18.1.4')]);
  writeFileSync(join(dir, 'net', 'last_reserved_ip.0'), '1'.repeat(1 << 20));
  const store = new DiskStore(dir, 'net');
  const list = await store.list();
  t.deepEqual(list.map((a) => [formatIPv4(a.ip), a.containerID]).sort(), [
    ['198.18.1.2', ''],
    ['198.18.1.3', ''],
    ['198.18.1.4', ''],
  ]);
  t.is(await store.lastReserved(), undefined);
  const range = { subnet: parseCIDR('198.18.1.0/24'), gateway: parseIPv4('198.18.1.1') };
  t.is(formatIPv4(await allocate(store, range, { containerID: 'c', ifname: 'eth0' })), '198.18.1.5');
});

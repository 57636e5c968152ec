import test from 'ava';
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
  t.deepEqual((await store.releaseByOwner({ containerID: 'a', ifname: 'eth0' })), [], 'twice is fine');
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

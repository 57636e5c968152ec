/**
 * The fast-path server in-process, with a stub handler (no kernel): where and how its socket is
 * made, per-(containerID, ifname) ordering, and drain() on shutdown.
 */
import test from 'ava';
import { chmodSync, lstatSync, mkdirSync, mkdtempSync, rmSync, statSync, symlinkSync } from 'node:fs';
import { createConnection } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { encodeRequest, type CniReply, type CniRequest } from '../../src/fastpath/protocol.ts';
import { serveCni, SocketDirError, type CniHandler } from '../../src/fastpath/server.ts';

function tmp(t: { teardown(fn: () => void): void }): string {
  const dir = mkdtempSync(join(tmpdir(), 'wt-fpserver-'));
  t.teardown(() => rmSync(dir, { recursive: true, force: true }));
  return dir;
}

/** One request over the socket: the reply's code and stdout, or undefined when dropped. */
function call(socket: string, env: Record<string, string>): Promise<{ code: number; stdout: string } | undefined> {
  return new Promise((resolve) => {
    const s = createConnection(socket);
    let buf = Buffer.alloc(0);
    let acked = false;
    s.on('connect', () => s.write(encodeRequest({ env, stdin: '{}' })));
    s.on('error', () => resolve(undefined));
    s.on('close', () => resolve(undefined));
    s.on('data', (d) => {
      buf = Buffer.concat([buf, d]);
      if (!acked && buf[0] === 0x41) {
        acked = true;
        buf = buf.subarray(1);
        s.write(Buffer.of(0x47));
      }
      if (acked && buf.length >= 8 && buf.length >= 12 + buf.readUInt32LE(4)) {
        resolve({ code: buf.readUInt32LE(0), stdout: buf.subarray(8, 8 + buf.readUInt32LE(4)).toString() });
        s.destroy();
      }
    });
  });
}

const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

/** A handler that takes `ms` (from env.MS) and records start/end order. */
function slowHandler(events: string[]): CniHandler {
  return async (req: CniRequest): Promise<CniReply> => {
    events.push(`start ${req.env.TAG}`);
    await sleep(Number(req.env.MS ?? '0'));
    events.push(`end ${req.env.TAG}`);
    return { code: 0, stdout: `${req.env.TAG}\n` };
  };
}

test('a missing directory is created 0700 and the socket is 0600', async (t) => {
  const socket = join(tmp(t), 'run', 'weft', 'cni.sock');
  const server = await serveCni({ path: socket, handler: slowHandler([]) });
  t.teardown(() => server.close());
  t.is(statSync(join(socket, '..')).mode & 0o777, 0o700);
  t.is(lstatSync(socket).mode & 0o777, 0o600);
  t.deepEqual(await call(socket, { TAG: 'x' }), { code: 0, stdout: 'x\n' });
});

test('a directory writable by group or others, or a symlink, is refused', async (t) => {
  const dir = tmp(t);
  const open = join(dir, 'open');
  mkdirSync(open);
  chmodSync(open, 0o777);
  await t.throwsAsync(serveCni({ path: join(open, 'cni.sock'), handler: slowHandler([]) }), { instanceOf: SocketDirError, message: /writable by group or others/ });
  const real = join(dir, 'real');
  mkdirSync(real, { mode: 0o700 });
  symlinkSync(real, join(dir, 'link'));
  await t.throwsAsync(serveCni({ path: join(dir, 'link', 'cni.sock'), handler: slowHandler([]) }), { instanceOf: SocketDirError, message: /not a directory/ });
});

test('requests for one (containerID, ifname) run in arrival order; others run alongside', async (t) => {
  const socket = join(tmp(t), 'cni.sock');
  const events: string[] = [];
  const server = await serveCni({ path: socket, handler: slowHandler(events) });
  t.teardown(() => server.close());
  const a = { CNI_CONTAINERID: 'c1', CNI_IFNAME: 'eth0' };
  const first = call(socket, { ...a, TAG: 'add', MS: '300' });
  await sleep(50);
  const second = call(socket, { ...a, TAG: 'del', MS: '0' });
  await sleep(20);
  const other = call(socket, { CNI_CONTAINERID: 'c2', CNI_IFNAME: 'eth0', TAG: 'other', MS: '0' });
  await Promise.all([first, second, other]);
  t.true(events.indexOf('end add') < events.indexOf('start del'), events.join(', '));
  t.true(events.indexOf('end other') < events.indexOf('end add'), `another container does not wait: ${events.join(', ')}`);
});

test('drain() lets requests in flight finish, refuses new ones, and is bounded', async (t) => {
  const socket = join(tmp(t), 'cni.sock');
  const events: string[] = [];
  const server = await serveCni({ path: socket, handler: slowHandler(events) });
  const inflight = call(socket, { TAG: 'slow', MS: '300' });
  await sleep(50);
  t.is(server.inFlight(), 1);
  const drained = server.drain(5000);
  t.is(await call(socket, { TAG: 'late' }), undefined, 'no new request once draining');
  t.true(await drained);
  t.deepEqual(await inflight, { code: 0, stdout: 'slow\n' }, 'the one in flight got its reply');
  t.deepEqual(events, ['start slow', 'end slow']);

  const socket2 = join(tmp(t), 'cni.sock');
  const server2 = await serveCni({ path: socket2, handler: slowHandler([]) });
  void call(socket2, { TAG: 'stuck', MS: '3000' });
  await sleep(50);
  const t0 = Date.now();
  t.false(await server2.drain(200), 'gives up after the bound');
  t.true(Date.now() - t0 < 1000);
});

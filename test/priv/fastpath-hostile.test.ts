/**
 * Hostile clients against a running weftd's CNI fast path (lab topology: etcd, one node, weftd
 * in the node's namespace). Whoever reaches the socket must not get more than a pod on weftd's
 * own network: non-root peers are refused, foreign subnetFile/dataDir/bridge are refused before
 * anything is made, weftd's own namespace is never a pod's, a FIFO as CNI_NETNS neither hangs
 * weftd nor delays /healthz, oversized requests and a thousand connections do not hurt it.
 * Every "pod" namespace is the test's own; weftd's own namespace is the lab node's, never the
 * machine's root namespace.
 */
import test from 'ava';
import { execFileSync } from 'node:child_process';
import { chmodSync, existsSync, lstatSync, mkdtempSync, readFileSync, rmSync, statSync } from 'node:fs';
import { createConnection, type Socket } from 'node:net';
import { tmpdir } from 'node:os';
import { join, resolve } from 'node:path';
import { buildLauncher, LAUNCHER } from '../../scripts/build-launcher.ts';
import { encodeRequest } from '../../src/fastpath/protocol.ts';
import { startCluster, type Cluster } from '../helpers/cluster.ts';
import { cni } from '../helpers/cni.ts';
import { eventually, ipJson, Scope } from '../helpers/netns.ts';

const root = resolve(import.meta.dirname, '..', '..');

let cluster: Cluster;
let dir = '';
let socket = '';
let dataDir = '';
const scope = new Scope();

test.before(async () => {
  const src = join(root, 'src', 'fastpath', 'launcher.c');
  if (!existsSync(LAUNCHER) || statSync(LAUNCHER).mtimeMs < statSync(src).mtimeMs) buildLauncher();
  dir = mkdtempSync(join(tmpdir(), 'wt-hostile-'));
  // A directory weftd creates itself: it must come out 0700.
  socket = join(dir, 'run', 'cni.sock');
  dataDir = join(dir, 'ipam');
  process.env.WEFTD_CNI_SOCKET = socket;
  process.env.WEFTD_CNI_DATA_DIR = dataDir;
  cluster = await startCluster({ nodes: 1 });
  await eventually(() => existsSync(socket), 10_000);
});

test.after.always(async () => {
  scope.cleanup();
  await cluster?.destroy();
  if (dir) rmSync(dir, { recursive: true, force: true });
});

const node = () => cluster.node('n1');
const conf = (extra: Record<string, unknown> = {}) => ({ cniVersion: '1.0.0', name: 'wt-hostile', type: 'weft', subnetFile: node().subnetFile, ...extra });
const cniEnv = (command: string, netns: string, containerID = 'h1', ifname = 'eth0') => ({
  CNI_COMMAND: command,
  CNI_CONTAINERID: containerID,
  CNI_IFNAME: ifname,
  CNI_NETNS: netns,
  CNI_PATH: '/usr/lib/cni',
});

interface RawOutcome {
  /** The daemon acknowledged the request. */
  acked: boolean;
  /** Exit code and stdout of the reply, when one came. */
  code?: number;
  stdout?: string;
  ms: number;
}

/** Talks the wire protocol directly (no launcher, no fallback): what a hostile root client sees. */
function rawRequest(bytes: Buffer, timeoutMs = 10_000): Promise<RawOutcome> {
  const t0 = Date.now();
  return new Promise((resolvePromise) => {
    const s = createConnection(socket);
    let buf = Buffer.alloc(0);
    let acked = false;
    const done = (o: Omit<RawOutcome, 'ms' | 'acked'> = {}) => {
      clearTimeout(timer);
      s.destroy();
      resolvePromise({ acked, ...o, ms: Date.now() - t0 });
    };
    const timer = setTimeout(() => done(), timeoutMs);
    s.on('connect', () => s.write(bytes));
    s.on('error', () => done());
    s.on('close', () => done());
    s.on('data', (d) => {
      buf = Buffer.concat([buf, d]);
      if (!acked && buf[0] === 0x41) {
        acked = true;
        buf = buf.subarray(1);
        s.write(Buffer.of(0x47));
      }
      if (acked && buf.length >= 8) {
        const outLen = buf.readUInt32LE(4);
        if (buf.length >= 12 + outLen) done({ code: buf.readUInt32LE(0), stdout: buf.subarray(8, 8 + outLen).toString() });
      }
    });
  });
}

const request = (env: Record<string, string>, stdin: unknown) => rawRequest(encodeRequest({ env, stdin: typeof stdin === 'string' ? stdin : JSON.stringify(stdin) }));

/** /healthz from inside the node, with how long it took. */
async function healthz(): Promise<{ status: number; ms: number }> {
  const t0 = Date.now();
  const r = await cluster.topo.http('n1', '/healthz');
  return { status: r.status, ms: Date.now() - t0 };
}

const vethsOnNode = () =>
  ipJson(node().netns, 'link', 'show', 'type', 'veth')
    .map((l) => l.ifname)
    .filter((n) => n !== 'eth0');

test.serial('weftd runs CNI requests on its worker threads', (t) => {
  const log = readFileSync(node().logFile, 'utf8');
  t.regex(log, /cni fast path: up to 2 worker threads, started on demand/);
  t.notRegex(log, /no worker threads/);
});

test.serial('the socket is 0600 in a 0700 directory weftd created', (t) => {
  const st = lstatSync(socket);
  t.true(st.isSocket());
  t.is(st.mode & 0o777, 0o600);
  t.is(statSync(join(dir, 'run')).mode & 0o777, 0o700);
});

test.serial('a non-root peer is refused before a byte is read, and logged', async (t) => {
  // Open the file modes up to reach the socket as nobody: SO_PEERCRED alone must keep it out.
  for (const d of [dir, join(dir, 'run')]) chmodSync(d, 0o711);
  chmodSync(socket, 0o666);
  t.teardown(() => {
    chmodSync(socket, 0o600);
    for (const d of [dir, join(dir, 'run')]) chmodSync(d, 0o700);
  });
  const pod = scope.netns('pod');
  const client = `
    const s = require('node:net').createConnection(${JSON.stringify(socket)});
    let got = '';
    s.on('connect', () => s.write(Buffer.from(process.argv[1], 'base64')));
    s.on('data', (d) => (got += d.toString('latin1')));
    s.on('error', (e) => { console.log((e.code === 'ECONNRESET' || e.code === 'EPIPE' ? 'closed ' : 'error ' + e.code + ' ') + JSON.stringify(got)); process.exit(0); });
    s.on('close', () => { console.log('closed ' + JSON.stringify(got)); process.exit(0); });
    setTimeout(() => { console.log('timeout ' + JSON.stringify(got)); process.exit(0); }, 15000);
  `;
  const req = encodeRequest({ env: cniEnv('ADD', `/run/netns/${pod}`, 'nobody1'), stdin: JSON.stringify(conf()) }).toString('base64');
  const out = execFileSync('setpriv', ['--reuid=65534', '--regid=65534', '--clear-groups', process.execPath, '-e', client, req], { encoding: 'utf8' }).trim();
  t.is(out, 'closed ""', 'connection closed (reset, or EPIPE on our write) with no acknowledgement');
  t.deepEqual(
    ipJson(pod, 'link', 'show').map((l) => l.ifname),
    ['lo'],
    'nothing done for it',
  );
  t.deepEqual(vethsOnNode(), []);
  await eventually(() => /refused a connection from uid 65534/.test(readFileSync(node().logFile, 'utf8')), 5000);
  t.regex(readFileSync(node().logFile, 'utf8'), /refused a connection from uid 65534 \(pid \d+\)/);
});

test.serial('foreign subnetFile, dataDir and bridge are refused and nothing is created', async (t) => {
  const pod = scope.netns('pod');
  const foreignDir = join(dir, 'foreign-data');
  const cases: Array<[string, Record<string, unknown>]> = [
    ['subnetFile', { subnetFile: '/etc/shadow' }],
    ['subnetFile', { subnetFile: '/dev/zero' }],
    ['dataDir', { dataDir: foreignDir }],
    ['dataDir', { dataDir: `/proc/1/root${dataDir}` }],
    ['bridge', { bridge: 'wtevil0' }],
    ['bridge', { bridge: 'eth0' }],
  ];
  const mtuBefore = ipJson(node().netns, 'link', 'show', 'dev', 'eth0')[0].mtu;
  for (const [key, extra] of cases) {
    const r = await request(cniEnv('ADD', `/run/netns/${pod}`), conf(extra));
    t.true(r.acked);
    t.is(r.code, 1, JSON.stringify(extra));
    const err = JSON.parse(r.stdout!);
    t.is(err.code, 7, r.stdout);
    t.regex(err.msg, new RegExp(`"${key}" .* is not this node's network`));
    t.false(/root:|\$[0-9a-z]\$/.test(r.stdout!), 'no file content in the reply');
  }
  t.false(existsSync(foreignDir), 'the foreign dataDir was not created');
  t.false(existsSync(dataDir) && existsSync(join(dataDir, 'wt-hostile')) && JSON.stringify(ipFilesOf(join(dataDir, 'wt-hostile'))) !== '[]', 'no allocation');
  t.false(
    ipJson(node().netns, 'link', 'show').some((l) => l.ifname === 'wtevil0'),
    'no bridge made',
  );
  t.is(ipJson(node().netns, 'link', 'show', 'dev', 'eth0')[0].mtu, mtuBefore, 'the underlay MTU is untouched');
  t.deepEqual(vethsOnNode(), []);
  t.deepEqual(
    ipJson(pod, 'link', 'show').map((l) => l.ifname),
    ['lo'],
  );
});

function ipFilesOf(d: string): string[] {
  return existsSync(d)
    ? execFileSync('ls', [d], { encoding: 'utf8' })
        .split('\n')
        .filter((f) => /^\d+\.\d+\.\d+\.\d+$/.test(f))
    : [];
}

test.serial("weftd's own namespace as CNI_NETNS is refused for ADD, CHECK and DEL; its routes and links stay", async (t) => {
  const own = [`/run/netns/${node().netns}`, `/proc/${node().pid}/ns/net`];
  const routes = () => JSON.stringify(ipJson(node().netns, 'route', 'show'));
  const links = () => JSON.stringify(ipJson(node().netns, 'link', 'show').map((l) => [l.ifname, l.mtu, l.operstate]));
  const [routesBefore, linksBefore] = [routes(), links()];
  for (const netns of own) {
    for (const command of ['ADD', 'DEL', 'CHECK']) {
      const extra = command === 'CHECK' ? { prevResult: { cniVersion: '1.0.0', interfaces: [{ name: 'eth0', sandbox: netns }], ips: [] } } : {};
      const r = await request(cniEnv(command, netns, 'own1', 'eth0'), conf(extra));
      t.is(r.code, 1, `${command} ${netns}: ${r.stdout}`);
      t.is(JSON.parse(r.stdout!).code, 4);
      t.regex(JSON.parse(r.stdout!).msg, /the node's own network namespace/);
    }
  }
  t.is(routes(), routesBefore, 'routes untouched');
  t.is(links(), linksBefore, 'links untouched (eth0 was not deleted)');
});

test.serial('a FIFO as CNI_NETNS fails fast, and /healthz keeps answering within 1 s meanwhile', async (t) => {
  const fifo = join(dir, 'not-a-netns');
  execFileSync('mkfifo', [fifo]);
  const [r, h] = await Promise.all([request(cniEnv('ADD', fifo), conf()), new Promise((r) => setTimeout(r, 20)).then(healthz)]);
  t.is(r.code, 1);
  t.is(JSON.parse(r.stdout!).code, 4, r.stdout);
  t.true(r.ms < 2000, `answered in ${r.ms} ms`);
  t.is(h.status, 200);
  t.true(h.ms < 1000, `/healthz in ${h.ms} ms`);
  // DEL too (it tolerates a gone namespace, not a FIFO).
  const d = await request(cniEnv('DEL', fifo), conf());
  t.is(d.code, 0, d.stdout);
  t.true(d.ms < 2000);
  for (const path of ['/dev/zero', '/proc/self/status', dir]) {
    const x = await request(cniEnv('ADD', path), conf());
    t.is(JSON.parse(x.stdout!).code, 4, `${path}: ${x.stdout}`);
  }
});

test.serial('an oversized request is dropped without an acknowledgement; weftd lives on', async (t) => {
  const big = encodeRequest({ env: cniEnv('ADD', '/nonexistent'), stdin: JSON.stringify(conf({ pad: 'x'.repeat(2 << 20) })) });
  const r = await rawRequest(big);
  t.false(r.acked);
  t.is(r.code, undefined);
  const lying = Buffer.alloc(12);
  lying.write('WFT1');
  lying.writeUInt32LE(0x7fffffff, 4); // claims a 2 GiB environment
  const r2 = await rawRequest(lying);
  t.false(r2.acked);
  t.true(r2.ms < 2000, 'refused on the length, not after waiting for the bytes');
  t.is((await healthz()).status, 200);
});

test.serial('1000 simultaneous connections do not crash it; a real request still works after', async (t) => {
  const socks: Socket[] = [];
  await Promise.all(
    Array.from(
      { length: 1000 },
      (_, i) =>
        new Promise<void>((resolvePromise) => {
          const s = createConnection(socket);
          socks.push(s);
          s.on('error', () => resolvePromise());
          s.on('connect', () => {
            // A third idle, a third garbage, a third half a request.
            if (i % 3 === 1) s.write('GET / HTTP/1.1\r\n\r\n');
            if (i % 3 === 2) s.write(encodeRequest({ env: cniEnv('ADD', '/x'), stdin: '{}' }).subarray(0, 20));
            resolvePromise();
          });
        }),
    ),
  );
  const h = await healthz();
  t.is(h.status, 200);
  t.true(h.ms < 1000, `/healthz in ${h.ms} ms with 1000 connections open`);
  for (const s of socks) s.destroy();
  t.truthy(node().pid && process.kill(node().pid!, 0), 'weftd is alive');

  const pod = scope.netns('pod');
  const fullConf = conf({ fastpathSocket: socket });
  const add = await eventually(
    async () => {
      const r = await cni(node().netns, { bin: LAUNCHER, command: 'ADD', conf: fullConf, containerID: 'after1000', netns: pod, ifname: 'eth0', env: { WEFT_LAUNCHER_DEBUG: '1' } });
      return r.code === 0 && !/falling back/.test(r.stderr) ? r : undefined;
    },
    10_000,
    200,
  );
  t.truthy(add, 'served by weftd after the storm');
  const del = await cni(node().netns, { bin: LAUNCHER, command: 'DEL', conf: fullConf, containerID: 'after1000', netns: pod, ifname: 'eth0' });
  t.is(del.code, 0, del.stdout);
  t.deepEqual(vethsOnNode(), []);
});

test.serial('the launcher forwards only CNI_* and PATH (to the fallback too)', async (t) => {
  // NODE_OPTIONS that would stop any Node process from starting: forwarded, the standalone
  // fallback would fail. With no server on the socket the launcher must exec it without it.
  const pod = scope.netns('pod');
  const offline = conf({ fastpathSocket: join(dir, 'nobody.sock'), dataDir: join(dir, 'fallback-ipam') });
  const env = { NODE_OPTIONS: '--require=/nonexistent-wt-preload.js', WEFT_LAUNCHER_DEBUG: '1' };
  const add = await cni(node().netns, { bin: LAUNCHER, command: 'ADD', conf: offline, containerID: 'envtest', netns: pod, ifname: 'eth0', env });
  t.is(add.code, 0, add.stdout + add.stderr);
  t.regex(add.stderr, /falling back/);
  const del = await cni(node().netns, { bin: LAUNCHER, command: 'DEL', conf: offline, containerID: 'envtest', netns: pod, ifname: 'eth0', env });
  t.is(del.code, 0, del.stdout + del.stderr);
  t.deepEqual(vethsOnNode(), []);
});

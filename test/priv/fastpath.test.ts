/**
 * The CNI fast path: the static launcher forwarding requests to a process serving the CNI
 * handler in-process (bench/lib/cni-server.ts runs the same server weftd runs), compared with
 * the standalone binary; and the launcher's fallback to the standalone binary when the server
 * is absent, dead, or never acknowledges.
 */
import test from 'ava';
import { existsSync, mkdirSync, readdirSync, statSync, symlinkSync } from 'node:fs';
import { createServer } from 'node:net';
import { join, resolve } from 'node:path';
import { buildLauncher, LAUNCHER } from '../../scripts/build-launcher.ts';
import { cni, cniSetup, WEFT_BIN, type CniEnvFixture } from '../helpers/cni.ts';
import { eventually, ipJson, type Scope } from '../helpers/netns.ts';

const root = resolve(import.meta.dirname, '..', '..');

test.before(() => {
  const src = join(root, 'src', 'fastpath', 'launcher.c');
  if (!existsSync(LAUNCHER) || statSync(LAUNCHER).mtimeMs < statSync(src).mtimeMs) buildLauncher();
});

interface Server {
  socket: string;
  handled: string[];
  kill(signal: NodeJS.Signals): void;
  /** Its stderr so far. */
  log(): string;
}

/** Starts the fast-path server inside `node` and waits until it listens. */
async function startServer(scope: Scope, node: string, fx: CniEnvFixture, opts: { workers?: number } = {}): Promise<Server> {
  const socket = join(fx.dir, 'cni.sock');
  const child = scope.spawn('nsenter', [`--net=/run/netns/${node}`, '--', process.execPath, join(root, 'bench', 'lib', 'cni-server.ts'), socket], {
    cwd: root,
    env: { PATH: process.env.PATH, WEFT_FASTPATH_TIMING: '1', WEFT_SERVE_WORKERS: String(opts.workers ?? 0) },
  });
  const handled: string[] = [];
  let log = '';
  child.stderr!.on('data', (b: Buffer) => {
    log += b.toString();
    for (const m of b.toString().matchAll(/^handled (\S+) /gm)) handled.push(m[1]);
  });
  let ready = false;
  child.stdout!.on('data', (b: Buffer) => (ready ||= b.toString().includes('ready')));
  const ok = await eventually(() => ready || child.exitCode !== null, 20_000, 50);
  if (!ok || !ready) throw new Error(`fast-path server did not start: ${log}`);
  return { socket, handled, kill: (sig) => child.kill(sig), log: () => log };
}

const setup = cniSetup;

function ipFiles(fx: CniEnvFixture): string[] {
  return existsSync(fx.ipamDir) ? readdirSync(fx.ipamDir).filter((f) => /^\d+\.\d+\.\d+\.\d+$/.test(f)) : [];
}

/** The pod's kernel state that an ADD is responsible for, minus per-run values (MACs). */
function podState(pod: string) {
  const eth0 = ipJson(pod, 'addr', 'show', 'dev', 'eth0')[0];
  return {
    mtu: eth0?.mtu,
    up: eth0?.flags.includes('UP'),
    addrs: (eth0?.addr_info ?? []).filter((a: any) => a.family === 'inet').map((a: any) => `${a.local}/${a.prefixlen}`),
    routes: ipJson(pod, 'route', 'show')
      .map((r) => `${r.dst} ${r.gateway ?? ''} ${r.dev}`)
      .sort(),
  };
}

function normalize(result: any) {
  return {
    ...result,
    interfaces: result.interfaces.map((i: any) => ({ ...i, mac: typeof i.mac, sandbox: i.sandbox && 'sandbox' })),
  };
}

test('ADD and DEL through the launcher with the server up match the standalone binary', async (t) => {
  const fast = setup(t, 41);
  const solo = setup(t, 41); // same subnet, its own node: results must be identical
  const server = await startServer(fast.scope, fast.node, fast.fx);
  const fastPod = fast.scope.netns('pod');
  const soloPod = solo.scope.netns('pod');
  const conf = (fx: CniEnvFixture) => fx.conf({ fastpathSocket: server.socket });

  const a = await cni(fast.node, { bin: LAUNCHER, command: 'ADD', conf: conf(fast.fx), containerID: 'c1', netns: fastPod, ifname: 'eth0' });
  const b = await cni(solo.node, { bin: WEFT_BIN, command: 'ADD', conf: solo.fx.conf(), containerID: 'c1', netns: soloPod, ifname: 'eth0' });
  t.is(a.code, 0, a.stdout + a.stderr);
  t.is(b.code, 0, b.stdout + b.stderr);
  t.deepEqual(server.handled, ['ADD'], 'the request was served in-process');
  t.deepEqual(normalize(a.json), normalize(b.json));
  t.is(a.json.ips[0].address, '198.18.41.2/24');
  t.deepEqual(podState(fastPod), podState(soloPod));
  t.deepEqual(ipFiles(fast.fx), ['198.18.41.2']);
  const veth = ipJson(fast.node, 'link', 'show', 'type', 'veth');
  t.deepEqual(
    veth.map((l) => [l.ifname, l.master]),
    [[a.json.interfaces[1].name, 'cni0']],
  );

  // Same error for the same bad request: a second ADD of the same interface.
  const again = await cni(fast.node, { bin: LAUNCHER, command: 'ADD', conf: conf(fast.fx), containerID: 'c1', netns: fastPod, ifname: 'eth0' });
  const againSolo = await cni(solo.node, { bin: WEFT_BIN, command: 'ADD', conf: solo.fx.conf(), containerID: 'c1', netns: soloPod, ifname: 'eth0' });
  t.is(again.code, 1);
  t.is(again.code, againSolo.code);
  t.is(again.json.code, againSolo.json.code);
  t.is(again.json.code, 100, 'interface already exists');
  t.deepEqual(ipFiles(fast.fx), ['198.18.41.2'], 'the failed second ADD took no address and released none');

  const d = await cni(fast.node, { bin: LAUNCHER, command: 'DEL', conf: conf(fast.fx), containerID: 'c1', netns: fastPod, ifname: 'eth0' });
  t.is(d.code, 0, d.stdout + d.stderr);
  t.is(d.stdout, '');
  t.deepEqual(server.handled, ['ADD', 'ADD', 'DEL']);
  t.deepEqual(
    ipJson(fastPod, 'link', 'show').map((l) => l.ifname),
    ['lo'],
  );
  t.deepEqual(ipJson(fast.node, 'link', 'show', 'type', 'veth'), []);
  t.deepEqual(ipFiles(fast.fx), []);

  const v = await cni(fast.node, { bin: LAUNCHER, command: 'VERSION', conf: conf(fast.fx) });
  t.is(v.code, 0);
  t.true(v.json.supportedVersions.includes('1.1.0'));
});

for (const [workers, third] of [
  [0, 42],
  [4, 48],
] as const)
  test(`20 concurrent ADDs through the server (${workers ? `${workers} worker threads` : 'main thread'}) get distinct addresses; DELs release them all`, async (t) => {
    const { scope, node, fx } = setup(t, third);
    const server = await startServer(scope, node, fx, { workers });
    const pods = Array.from({ length: 20 }, () => scope.netns('pod'));
    const conf = fx.conf({ fastpathSocket: server.socket });
    const adds = await Promise.all(pods.map((pod, i) => cni(node, { bin: LAUNCHER, command: 'ADD', conf, containerID: `c${i}`, netns: pod, ifname: 'eth0' })));
    for (const a of adds) t.is(a.code, 0, a.stdout + a.stderr);
    const ips = adds.map((a) => a.json.ips[0].address);
    t.is(new Set(ips).size, 20);
    for (const [i, pod] of pods.entries()) t.deepEqual(podState(pod).addrs, [ips[i]]);
    t.is(server.handled.filter((c) => c === 'ADD').length, 20);
    const dels = await Promise.all(pods.map((pod, i) => cni(node, { bin: LAUNCHER, command: 'DEL', conf, containerID: `c${i}`, netns: pod, ifname: 'eth0' })));
    for (const d of dels) t.is(d.code, 0, d.stdout + d.stderr);
    t.deepEqual(ipFiles(fx), []);
    // DEL replies once the veths are down; the kernel's unregistration of a burst finishes after.
    for (const l of ipJson(node, 'link', 'show', 'type', 'veth')) t.false(l.flags.includes('UP'), `${l.ifname} is down when DEL has replied`);
    t.deepEqual(await eventually(() => (ipJson(node, 'link', 'show', 'type', 'veth').length ? undefined : []), 5000, 50), []);
  });

test('a fast-path DEL replies before the kernel has unregistered the veth, and a new ADD of the same container and interface waits for it', async (t) => {
  const { scope, node, fx } = setup(t, 49);
  const server = await startServer(scope, node, fx, { workers: 2 });
  const conf = fx.conf({ fastpathSocket: server.socket });
  const pod = scope.netns('pod');
  const call = (command: 'ADD' | 'DEL') => cni(node, { bin: LAUNCHER, command, conf, containerID: 'same', netns: pod, ifname: 'eth0' });
  const others = Array.from({ length: 24 }, () => scope.netns('pod'));
  const other = (command: 'ADD' | 'DEL', i: number) => cni(node, { bin: LAUNCHER, command, conf, containerID: `o${i}`, netns: others[i]!, ifname: 'eth0' });
  // Each ADD comes right after a DEL of the same (containerID, ifname) into the same namespace,
  // while a burst of other DELs keeps the deleter busy, so that DEL's veth is still queued for
  // deletion when the ADD arrives: the ADD would fail with "already exists" if it did not wait.
  t.is((await call('ADD')).code, 0);
  for (let round = 0; round < 3; round++) {
    for (const a of await Promise.all(others.map((_, i) => other('ADD', i)))) t.is(a.code, 0, a.stdout + a.stderr);
    const burst = Promise.all(others.map((_, i) => other('DEL', i)));
    const d = await call('DEL');
    t.is(d.code, 0, `round ${round}: ${d.stdout}${d.stderr}`);
    const a = await call('ADD');
    t.is(a.code, 0, `round ${round}: ${a.stdout}${a.stderr}`);
    for (const o of await burst) t.is(o.code, 0, o.stdout + o.stderr);
  }
  t.is((await call('DEL')).code, 0);
  t.deepEqual(ipFiles(fx), [], 'every address released');
  t.deepEqual(await eventually(() => (ipJson(node, 'link', 'show', 'type', 'veth').length ? undefined : []), 5000, 50), []);
  t.deepEqual(
    ipJson(pod, 'link', 'show').map((l) => l.ifname),
    ['lo'],
  );
  t.notRegex(server.log(), /after DEL/, 'no background deletion failed');
});

test("with no server, and with a dead server's stale socket, the launcher falls back to the standalone binary", async (t) => {
  const { scope, node, fx } = setup(t, 43);
  const pod = scope.netns('pod');
  const absent = fx.conf({ fastpathSocket: join(fx.dir, 'nobody.sock') });
  const add = await cni(node, { bin: LAUNCHER, command: 'ADD', conf: absent, containerID: 'c1', netns: pod, ifname: 'eth0', env: { WEFT_LAUNCHER_DEBUG: '1' } });
  t.is(add.code, 0, add.stdout + add.stderr);
  t.regex(add.stderr, /falling back to .*weft/);
  t.is(add.json.ips[0].address, '198.18.43.2/24');
  t.deepEqual(podState(pod).addrs, ['198.18.43.2/24']);

  // A server killed with SIGKILL leaves its socket file: connect is refused, fall back again.
  const server = await startServer(scope, node, fx);
  server.kill('SIGKILL');
  await eventually(async () => {
    const probe = await cni(node, { bin: LAUNCHER, command: 'VERSION', conf: fx.conf({ fastpathSocket: server.socket }), env: { WEFT_LAUNCHER_DEBUG: '1' } });
    return /falling back/.test(probe.stderr);
  });
  t.true(existsSync(server.socket), 'stale socket file is still there');
  const del = await cni(node, { bin: LAUNCHER, command: 'DEL', conf: fx.conf({ fastpathSocket: server.socket }), containerID: 'c1', netns: pod, ifname: 'eth0', env: { WEFT_LAUNCHER_DEBUG: '1' } });
  t.is(del.code, 0, del.stdout + del.stderr);
  t.regex(del.stderr, /falling back/);
  t.deepEqual(
    ipJson(pod, 'link', 'show').map((l) => l.ifname),
    ['lo'],
  );
  t.deepEqual(ipFiles(fx), []);
  t.deepEqual(server.handled, []);
});

test('a server that accepts but never acknowledges is abandoned: the launcher falls back and the request runs once', async (t) => {
  const { scope, node, fx } = setup(t, 44);
  const pod = scope.netns('pod');
  const socket = join(fx.dir, 'mute.sock');
  const received: number[] = [];
  const mute = createServer((sock) => sock.on('data', (b) => received.push(b.length)));
  await new Promise<void>((r) => mute.listen(socket, r));
  t.teardown(() => mute.close());
  const add = await cni(node, { bin: LAUNCHER, command: 'ADD', conf: fx.conf({ fastpathSocket: socket }), containerID: 'c1', netns: pod, ifname: 'eth0', env: { WEFT_LAUNCHER_DEBUG: '1' } });
  t.is(add.code, 0, add.stdout + add.stderr);
  t.regex(add.stderr, /falling back .*no acknowledgement/);
  t.true(received.length > 0, 'the mute server got the request');
  t.deepEqual(podState(pod).addrs, [add.json.ips[0].address]);
  t.deepEqual(ipFiles(fx), [add.json.ips[0].address.split('/')[0]]);
});

test("a launcher in another node's namespace is not served there: it falls back and configures its own node", async (t) => {
  const a = setup(t, 45);
  const b = setup(t, 46);
  const server = await startServer(a.scope, a.node, a.fx);
  const pod = b.scope.netns('pod');
  const conf = b.fx.conf({ fastpathSocket: server.socket });
  const add = await cni(b.node, { bin: LAUNCHER, command: 'ADD', conf, containerID: 'c1', netns: pod, ifname: 'eth0', env: { WEFT_LAUNCHER_DEBUG: '1' } });
  t.is(add.code, 0, add.stdout + add.stderr);
  t.regex(add.stderr, /falling back .*no acknowledgement/);
  t.deepEqual(server.handled, []);
  t.is(add.json.ips[0].address, '198.18.46.2/24');
  t.is(ipJson(b.node, 'link', 'show', 'type', 'veth').length, 1, "the veth is on the launcher's node");
  t.deepEqual(ipJson(a.node, 'link', 'show', 'type', 'veth'), [], "nothing on the server's node");
  // The same launcher from the server's own namespace is served.
  const podA = a.scope.netns('pod');
  const addA = await cni(a.node, { bin: LAUNCHER, command: 'ADD', conf: a.fx.conf({ fastpathSocket: server.socket }), containerID: 'c2', netns: podA, ifname: 'eth0' });
  t.is(addA.code, 0, addA.stdout + addA.stderr);
  t.deepEqual(server.handled, ['ADD']);
});

test("the launcher and the standalone plugin work when exec'd through a symlink (a common /opt/cni/bin install)", async (t) => {
  const { scope, node, fx } = setup(t, 47);
  const links = join(fx.dir, 'opt-cni-bin');
  mkdirSync(links);
  symlinkSync(LAUNCHER, join(links, 'weft'));
  symlinkSync(WEFT_BIN, join(links, 'weft-solo'));
  const pod = scope.netns('pod');
  const pod2 = scope.netns('pod');
  // The standalone through a link: its addons are found beside the real file.
  const solo = await cni(node, { bin: join(links, 'weft-solo'), command: 'ADD', conf: fx.conf(), containerID: 's1', netns: pod, ifname: 'eth0' });
  t.is(solo.code, 0, solo.stdout + solo.stderr);
  // The launcher through a link with no server: it falls back to the standalone beside its real file.
  const offline = fx.conf({ fastpathSocket: join(fx.dir, 'nobody.sock') });
  const viaLink = await cni(node, { bin: join(links, 'weft'), command: 'ADD', conf: offline, containerID: 's2', netns: pod2, ifname: 'eth0', env: { WEFT_LAUNCHER_DEBUG: '1' } });
  t.is(viaLink.code, 0, viaLink.stdout + viaLink.stderr);
  t.regex(viaLink.stderr, new RegExp(`falling back to ${WEFT_BIN.replace(/[.*+?^${}()|[\]\\]/g, '\\$&')}`));
  // And served by the server when it is up.
  const server = await startServer(scope, node, fx);
  const del = await cni(node, { bin: join(links, 'weft'), command: 'DEL', conf: fx.conf({ fastpathSocket: server.socket }), containerID: 's2', netns: pod2, ifname: 'eth0' });
  t.is(del.code, 0, del.stdout + del.stderr);
  t.deepEqual(server.handled, ['DEL']);
  const del1 = await cni(node, { bin: join(links, 'weft-solo'), command: 'DEL', conf: fx.conf(), containerID: 's1', netns: pod, ifname: 'eth0' });
  t.is(del1.code, 0, del1.stdout + del1.stderr);
  t.deepEqual(ipFiles(fx), []);
  t.deepEqual(ipJson(node, 'link', 'show', 'type', 'veth'), []);
});

test('SIGTERM during a 50-pod burst: the server drains, every call completes or errors, nothing leaks', async (t) => {
  const { scope, node, fx } = setup(t, 49);
  const server = await startServer(scope, node, fx, { workers: 2 });
  const pods = Array.from({ length: 50 }, () => scope.netns('pod'));
  const conf = fx.conf({ fastpathSocket: server.socket });
  const adds = Promise.all(pods.map((pod, i) => cni(node, { bin: LAUNCHER, command: 'ADD', conf, containerID: `t${i}`, netns: pod, ifname: 'eth0' })));
  // Mid-burst: some served, others still arriving.
  t.true(await eventually(() => server.handled.length >= 5, 20_000, 5), 'the burst reached the server');
  server.kill('SIGTERM');
  const results = await adds;
  for (const r of results) {
    t.true(r.code === 0 || r.code === 1, `exit ${r.code}`);
    const json = JSON.parse(r.stdout);
    if (r.code === 0) t.truthy(json.ips?.[0]?.address, r.stdout);
    else t.true(Number.isInteger(json.code), r.stdout);
  }
  t.log(`${results.filter((r) => r.code === 0).length} of 50 ADDs succeeded; ${server.handled.filter((c) => c === 'ADD').length} served by the server before it stopped`);
  t.true(await eventually(() => /drained all/.test(server.log()), 15_000), `the server drained: ${server.log()}`);
  // The runtime deletes every pod afterwards (through the fallback now): nothing may be left.
  const dels = await Promise.all(pods.map((pod, i) => cni(node, { bin: LAUNCHER, command: 'DEL', conf, containerID: `t${i}`, netns: pod, ifname: 'eth0' })));
  for (const d of dels) t.is(d.code, 0, d.stdout + d.stderr);
  t.deepEqual(ipFiles(fx), []);
  t.deepEqual(ipJson(node, 'link', 'show', 'type', 'veth'), []);
  for (const pod of pods)
    t.deepEqual(
      ipJson(pod, 'link', 'show').map((l) => l.ifname),
      ['lo'],
    );
});

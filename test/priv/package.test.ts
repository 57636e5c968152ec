/**
 * The packaged CNI plugin (scripts/package.ts: the fast-path launcher as `weft`, the Node single
 * executable application as `weft-standalone`, and its native addons), installed the way the
 * DaemonSet's init container does it (install/install-cni.sh) into a temporary "host" tree,
 * then run like kubelet runs it: by path, with a PATH that holds no Node.js, from its install
 * location. With no daemon the launcher falls back to the standalone; with a weftd-style server
 * on the socket the request runs in the server. The full CNI suite runs against the fallback
 * too: `WEFT_CNI_BIN=dist/pkg/bin/weft ava test/priv/cni*.test.ts`.
 */
import test from 'ava';
import { execFileSync, spawnSync } from 'node:child_process';
import { cpSync, existsSync, mkdirSync, mkdtempSync, readdirSync, readFileSync, rmSync, statSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join, resolve } from 'node:path';
import { cni, cniFixture, type CniEnvFixture } from '../helpers/cni.ts';
import { eventually, ipJson, ping, Scope } from '../helpers/netns.ts';

const root = resolve('.');
const scope = new Scope();
let host = '';
/** Like kubelet: no Node.js anywhere on PATH. */
const BARE_PATH = '/usr/sbin:/usr/bin:/sbin:/bin';
const bin = () => join(host, 'opt/cni/bin/weft');
const standalone = () => join(host, 'opt/cni/bin/weft-standalone');
/** Makes the launcher say on stderr when and to what it falls back. */
const DEBUG = { PATH: BARE_PATH, WEFT_LAUNCHER_DEBUG: '1' };

function installCni(env: Record<string, string> = {}): string {
  return execFileSync('sh', [join(root, 'install/install-cni.sh')], {
    encoding: 'utf8',
    stdio: ['ignore', 'pipe', 'pipe'],
    env: {
      PATH: BARE_PATH,
      WEFT_CNI_SRC_DIR: join(root, 'dist/pkg'),
      WEFT_HOST_CNI_BIN_DIR: join(host, 'opt/cni/bin'),
      WEFT_HOST_CNI_LIB_DIR: join(host, 'opt/cni/lib/weft'),
      WEFT_HOST_CNI_CONF_DIR: join(host, 'etc/cni/net.d'),
      WEFT_CNI_CONF_FILE: join(root, 'cni-conf/10-weft.conflist'),
      ...env,
    },
  });
}

test.before(() => {
  execFileSync(process.execPath, [join(root, 'scripts/package.ts')], { stdio: 'pipe' });
  host = mkdtempSync(join(tmpdir(), 'wt-pkg-host-'));
  scope.defer(() => rmSync(host, { recursive: true, force: true }));
  installCni();
});
test.after.always(() => scope.cleanup());

test('install-cni puts the plugin, its addons and the conflist where kubelet looks; again is a no-op', (t) => {
  t.true((statSync(bin()).mode & 0o111) !== 0, 'plugin is executable');
  t.true((statSync(standalone()).mode & 0o111) !== 0, 'standalone fallback is executable');
  t.deepEqual(readdirSync(join(host, 'opt/cni/bin')).sort(), ['weft', 'weft-standalone']);
  // bin/weft is the small launcher, not the Node executable.
  t.true(statSync(bin()).size < statSync(standalone()).size / 10);
  t.deepEqual(readdirSync(join(host, 'opt/cni/lib/weft')).sort(), ['netlink.node', 'setns.node']);
  const installed = readFileSync(join(host, 'etc/cni/net.d/10-weft.conflist'), 'utf8');
  t.is(installed, readFileSync(join(root, 'cni-conf/10-weft.conflist'), 'utf8'));
  const before = readdirSync(join(host, 'opt/cni/bin')).sort();
  t.regex(installCni(), /installed .*opt\/cni\/bin\/weft/);
  t.deepEqual(readdirSync(join(host, 'opt/cni/bin')).sort(), before, 'no temp files left behind');
  t.false(readdirSync(join(host, 'etc/cni/net.d')).some((f) => f.includes('tmp')));
});

test('install-cni refuses a conflist that does not configure weft and keeps the installed one', (t) => {
  const bad = join(host, 'bad.conflist');
  writeFileSync(bad, JSON.stringify({ cniVersion: '1.1.0', name: 'other', plugins: [{ type: 'bridge' }] }));
  const err = t.throws(() => installCni({ WEFT_CNI_CONF_FILE: bad })) as Error & { stderr: string };
  t.regex(err.stderr, /does not configure the weft plugin/);
  t.is(readFileSync(join(host, 'etc/cni/net.d/10-weft.conflist'), 'utf8'), readFileSync(join(root, 'cni-conf/10-weft.conflist'), 'utf8'));
});

test("packaged plugin answers VERSION with no Node.js on PATH, through the launcher's fallback", (t) => {
  const input = JSON.stringify({ cniVersion: '1.1.0', fastpathSocket: join(host, 'nobody.sock') });
  const r = spawnSync(bin(), [], { input, env: { ...DEBUG, CNI_COMMAND: 'VERSION' }, encoding: 'utf8' });
  t.is(r.status, 0, r.stderr);
  t.deepEqual(JSON.parse(r.stdout).supportedVersions, ['0.3.0', '0.3.1', '0.4.0', '1.0.0', '1.1.0']);
  t.regex(r.stderr, new RegExp(`falling back to ${standalone()}: cannot connect`));
});

test('install-cni refuses a package whose standalone does not run, before touching the conflist', (t) => {
  const pkg = mkdtempSync(join(tmpdir(), 'wt-pkg-src-'));
  const target = mkdtempSync(join(tmpdir(), 'wt-pkg-host2-'));
  t.teardown(() => {
    rmSync(pkg, { recursive: true, force: true });
    rmSync(target, { recursive: true, force: true });
  });
  cpSync(join(root, 'dist/pkg'), pkg, { recursive: true });
  // A standalone that is not the plugin: the launcher's check must catch it.
  writeFileSync(join(pkg, 'bin/weft-standalone'), '#!/bin/sh\nexit 3\n', { mode: 0o755 });
  const err = t.throws(() =>
    installCni({
      WEFT_CNI_SRC_DIR: pkg,
      WEFT_HOST_CNI_BIN_DIR: join(target, 'opt/cni/bin'),
      WEFT_HOST_CNI_LIB_DIR: join(target, 'opt/cni/lib/weft'),
      WEFT_HOST_CNI_CONF_DIR: join(target, 'etc/cni/net.d'),
    }),
  ) as Error & { stderr: string };
  t.regex(err.stderr, /weft-standalone does not run/);
  t.deepEqual(readdirSync(join(target, 'etc/cni/net.d')), [], 'no conflist: the node does not become Ready');
});

test('the launcher alone (standalone missing) answers with a permanent CNI error, not "try again" forever', (t) => {
  const dir = mkdtempSync(join(tmpdir(), 'wt-pkg-alone-'));
  t.teardown(() => rmSync(dir, { recursive: true, force: true }));
  cpSync(bin(), join(dir, 'weft'));
  const input = JSON.stringify({ cniVersion: '1.1.0', fastpathSocket: join(dir, 'nobody.sock') });
  const r = spawnSync(join(dir, 'weft'), [], { input, env: { PATH: BARE_PATH, CNI_COMMAND: 'VERSION' }, encoding: 'utf8' });
  t.is(r.status, 1);
  t.is(JSON.parse(r.stdout).code, 999);
  t.regex(JSON.parse(r.stdout).msg, /no standalone weft binary.*broken install/);
});

test('packaged plugin: two pods ping each other through cni0; CHECK passes; DEL removes everything', async (t) => {
  const s = new Scope();
  t.teardown(() => s.cleanup());
  const node = s.netns('pkgnode');
  const fx = cniFixture(s, { third: 7 });
  const conf = fx.conf({}, '1.1.0');
  const call = (command: string, i: number, pod: string, extra: Record<string, unknown> = {}) =>
    cni(node, { command, conf: { ...conf, ...extra }, containerID: `pkg${i}`, netns: pod, ifname: 'eth0', bin: bin(), env: { PATH: BARE_PATH } });
  const pods = [s.netns('pkgpod'), s.netns('pkgpod')];
  const results: any[] = [];
  for (const [i, pod] of pods.entries()) {
    const add = await call('ADD', i, pod);
    t.is(add.code, 0, add.stdout + add.stderr);
    results.push(add.json);
  }
  const ips = results.map((r) => r.ips[0].address.split('/')[0]);
  t.deepEqual(ips, ['198.18.7.2', '198.18.7.3']);
  t.true(ping(pods[0]!, ips[1]!, 2), 'pod 0 reaches pod 1');
  const check = await call('CHECK', 0, pods[0]!, { prevResult: results[0] });
  t.is(check.code, 0, check.stdout + check.stderr);
  for (const [i, pod] of pods.entries()) {
    const del = await call('DEL', i, pod);
    t.is(del.code, 0, del.stdout + del.stderr);
  }
  t.deepEqual(ipJson(node, 'link', 'show', 'type', 'veth'), []);
  t.deepEqual(
    readdirSync(fx.ipamDir).filter((f) => /^\d+\.\d+\.\d+\.\d+$/.test(f)),
    [],
  );
});

test('a broken install (addons missing) answers with a CNI error, not a crash, and leaves nothing; $WEFT_NATIVE_DIR mends it', async (t) => {
  const s = new Scope();
  t.teardown(() => s.cleanup());
  const broken = mkdtempSync(join(tmpdir(), 'wt-pkg-broken-'));
  s.defer(() => rmSync(broken, { recursive: true, force: true }));
  mkdirSync(join(broken, 'bin'));
  cpSync(bin(), join(broken, 'bin/weft'));
  cpSync(standalone(), join(broken, 'bin/weft-standalone'));
  const node = s.netns('pkgnode');
  const pod = s.netns('pkgpod');
  const fx = cniFixture(s, { third: 8 });
  const add = await cni(node, { command: 'ADD', conf: fx.conf({}, '1.1.0'), containerID: 'b1', netns: pod, ifname: 'eth0', bin: join(broken, 'bin/weft'), env: { PATH: BARE_PATH } });
  t.not(add.code, 0);
  t.truthy(add.json, `stdout is CNI error JSON: ${add.stdout}`);
  t.is(typeof add.json.code, 'number');
  t.regex(`${add.json.msg} ${add.json.details ?? ''}`, /native (netlink|setns) addon/);
  t.deepEqual(ipJson(node, 'link', 'show', 'type', 'veth'), []);
  t.deepEqual(
    ipJson(pod, 'link', 'show').map((l) => l.ifname),
    ['lo'],
  );
  t.deepEqual(existsSync(fx.ipamDir) ? readdirSync(fx.ipamDir).filter((f) => /^\d+\.\d+\.\d+\.\d+$/.test(f)) : [], []);

  // The launcher forwards only CNI_* and PATH, so $WEFT_NATIVE_DIR from the runtime's
  // environment does not reach the standalone through it...
  const env = { PATH: BARE_PATH, WEFT_NATIVE_DIR: join(host, 'opt/cni/lib/weft') };
  const conf = fx.conf({}, '1.1.0');
  const still = await cni(node, { command: 'ADD', conf, containerID: 'b1', netns: pod, ifname: 'eth0', bin: join(broken, 'bin/weft'), env });
  t.not(still.code, 0, still.stdout);
  t.regex(`${still.json?.msg} ${still.json?.details ?? ''}`, /native (netlink|setns) addon/);
  // ...but it mends the standalone run on its own.
  const fixed = await cni(node, { command: 'ADD', conf, containerID: 'b1', netns: pod, ifname: 'eth0', bin: join(broken, 'bin/weft-standalone'), env });
  t.is(fixed.code, 0, fixed.stdout + fixed.stderr);
  const del = await cni(node, { command: 'DEL', conf, containerID: 'b1', netns: pod, ifname: 'eth0', bin: join(broken, 'bin/weft-standalone'), env });
  t.is(del.code, 0, del.stdout + del.stderr);
  t.deepEqual(ipJson(node, 'link', 'show', 'type', 'veth'), []);
});

/** Starts a weftd-style fast-path server (bench/lib/cni-server.ts: weftd's server and handler) in `node` on a socket in the fixture's temp dir. */
async function startServer(s: Scope, node: string, fx: CniEnvFixture): Promise<{ socket: string; handled: string[] }> {
  const socket = join(fx.dir, 'cni.sock');
  const child = s.spawn('nsenter', [`--net=/run/netns/${node}`, '--', process.execPath, join(root, 'bench/lib/cni-server.ts'), socket], {
    cwd: root,
    env: { PATH: process.env.PATH, WEFT_FASTPATH_TIMING: '1' },
  });
  const handled: string[] = [];
  let log = '';
  let ready = false;
  child.stderr!.on('data', (b: Buffer) => {
    log += b.toString();
    for (const m of b.toString().matchAll(/^handled (\S+) /gm)) handled.push(m[1]!);
  });
  child.stdout!.on('data', (b: Buffer) => (ready ||= b.toString().includes('ready')));
  await eventually(() => ready || child.exitCode !== null, 20_000, 50);
  if (!ready) throw new Error(`fast-path server did not start: ${log}`);
  return { socket, handled };
}

test('with weftd serving the socket, the installed launcher runs ADD and DEL in the daemon; without, in the standalone', async (t) => {
  const s = new Scope();
  t.teardown(() => s.cleanup());
  const node = s.netns('pkgnode');
  const fx = cniFixture(s, { third: 9 });
  const server = await startServer(s, node, fx);
  const conf = fx.conf({ fastpathSocket: server.socket }, '1.1.0');
  const pods = [s.netns('pkgpod'), s.netns('pkgpod')];
  const call = (command: string, i: number) => cni(node, { command, conf, containerID: `fp${i}`, netns: pods[i]!, ifname: 'eth0', bin: bin(), env: DEBUG });

  const add = await call('ADD', 0);
  t.is(add.code, 0, add.stdout + add.stderr);
  t.notRegex(add.stderr, /falling back/);
  t.deepEqual(server.handled, ['ADD'], 'served in-process by the server');
  t.is(add.json.ips[0].address, '198.18.9.2/24');
  t.deepEqual(
    ipJson(pods[0]!, 'addr', 'show', 'dev', 'eth0')[0]
      .addr_info.filter((a: any) => a.family === 'inet')
      .map((a: any) => a.local),
    ['198.18.9.2'],
  );

  // The same install with nobody on the socket: the standalone beside the launcher serves it,
  // with the same IPAM store (next address, not the one the server handed out).
  const offline = fx.conf({ fastpathSocket: join(fx.dir, 'nobody.sock') }, '1.1.0');
  const add2 = await cni(node, { command: 'ADD', conf: offline, containerID: 'fp1', netns: pods[1]!, ifname: 'eth0', bin: bin(), env: DEBUG });
  t.is(add2.code, 0, add2.stdout + add2.stderr);
  t.regex(add2.stderr, new RegExp(`falling back to ${standalone()}`));
  t.is(add2.json.ips[0].address, '198.18.9.3/24');
  t.deepEqual(server.handled, ['ADD'], 'the server did not see the fallback request');
  t.true(ping(pods[1]!, '198.18.9.2', 2), 'the fallback pod reaches the fast-path pod');

  const del = await call('DEL', 0);
  t.is(del.code, 0, del.stdout + del.stderr);
  t.deepEqual(server.handled, ['ADD', 'DEL']);
  const del2 = await cni(node, { command: 'DEL', conf: offline, containerID: 'fp1', netns: pods[1]!, ifname: 'eth0', bin: bin(), env: DEBUG });
  t.is(del2.code, 0, del2.stdout + del2.stderr);
  t.deepEqual(ipJson(node, 'link', 'show', 'type', 'veth'), []);
  t.deepEqual(
    readdirSync(fx.ipamDir).filter((f) => /^\d+\.\d+\.\d+\.\d+$/.test(f)),
    [],
  );
});

/**
 * The packaged CNI plugin (scripts/package.ts: a Node single executable application plus its
 * native addons), installed the way the DaemonSet's init container does it
 * (install/install-cni.sh) into a temporary "host" tree, then run like kubelet runs it: by
 * path, with a PATH that holds no Node.js, from its install location. The full CNI suite runs
 * against it too: `WEFT_CNI_BIN=dist/pkg/bin/weft ava test/priv/cni*.test.ts`.
 */
import test from 'ava';
import { execFileSync } from 'node:child_process';
import { cpSync, existsSync, mkdirSync, mkdtempSync, readdirSync, readFileSync, rmSync, statSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join, resolve } from 'node:path';
import { cni, cniFixture } from '../helpers/cni.ts';
import { ipJson, ping, Scope } from '../helpers/netns.ts';

const root = resolve('.');
const scope = new Scope();
let host = '';
/** Like kubelet: no Node.js anywhere on PATH. */
const BARE_PATH = '/usr/sbin:/usr/bin:/sbin:/bin';
const bin = () => join(host, 'opt/cni/bin/weft');

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

test('packaged plugin answers VERSION with no Node.js on PATH', (t) => {
  const out = execFileSync(bin(), [], { input: '{"cniVersion":"1.1.0"}', env: { PATH: BARE_PATH, CNI_COMMAND: 'VERSION' }, encoding: 'utf8' });
  t.deepEqual(JSON.parse(out).supportedVersions, ['0.3.0', '0.3.1', '0.4.0', '1.0.0', '1.1.0']);
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
  t.deepEqual(readdirSync(fx.ipamDir).filter((f) => /^\d+\.\d+\.\d+\.\d+$/.test(f)), []);
});

test('a broken install (addons missing) answers with a CNI error, not a crash, and leaves nothing', async (t) => {
  const s = new Scope();
  t.teardown(() => s.cleanup());
  const broken = mkdtempSync(join(tmpdir(), 'wt-pkg-broken-'));
  s.defer(() => rmSync(broken, { recursive: true, force: true }));
  mkdirSync(join(broken, 'bin'));
  cpSync(bin(), join(broken, 'bin/weft'));
  const node = s.netns('pkgnode');
  const pod = s.netns('pkgpod');
  const fx = cniFixture(s, { third: 8 });
  const add = await cni(node, { command: 'ADD', conf: fx.conf({}, '1.1.0'), containerID: 'b1', netns: pod, ifname: 'eth0', bin: join(broken, 'bin/weft'), env: { PATH: BARE_PATH } });
  t.not(add.code, 0);
  t.truthy(add.json, `stdout is CNI error JSON: ${add.stdout}`);
  t.is(typeof add.json.code, 'number');
  t.regex(`${add.json.msg} ${add.json.details ?? ''}`, /native (netlink|setns) addon/);
  t.deepEqual(ipJson(node, 'link', 'show', 'type', 'veth'), []);
  t.deepEqual(ipJson(pod, 'link', 'show').map((l) => l.ifname), ['lo']);
  t.deepEqual(existsSync(fx.ipamDir) ? readdirSync(fx.ipamDir).filter((f) => /^\d+\.\d+\.\d+\.\d+$/.test(f)) : [], []);
});

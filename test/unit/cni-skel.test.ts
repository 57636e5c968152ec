/** The skel without a kernel: dispatch, error mapping and stdout discipline, with stub deps. */
import test from 'ava';
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { CniError, ERR, retryable, toErrorJson } from '../../src/cni/errors.ts';
import type { Deps } from '../../src/cni/plugin.ts';
import { hostVethName } from '../../src/cni/plugin.ts';
import { runSkel } from '../../src/cni/skel.ts';
import { FakeStore } from '../../src/ipam/fake.ts';
import { parseIPv4 } from '../../src/ip/ipv4.ts';
import { expectedVethName } from '../helpers/cni.ts';

function stubDeps(store = new FakeStore()): Deps {
  const never = () => {
    throw new Error('kernel access not expected in this test');
  };
  return { openNetlink: never, openNetns: never, isOwnNetns: never, masq: { add: never, remove: never }, writeSysctl: never, store: () => store, log: () => undefined };
}

async function run(env: Record<string, string | undefined>, stdin: string, deps = stubDeps()) {
  let stdout = '';
  let stderr = '';
  const code = await runSkel({ env, stdin, stdout: (s) => (stdout += s), stderr: (s) => (stderr += s) }, deps);
  return { code, stdout, stderr, json: stdout ? JSON.parse(stdout) : undefined };
}

const addEnv = { CNI_COMMAND: 'ADD', CNI_CONTAINERID: 'c', CNI_NETNS: '/run/netns/p', CNI_IFNAME: 'eth0' };

test('toErrorJson: CniError keeps its code, retryable is 11, anything else 999', (t) => {
  t.deepEqual(toErrorJson(new CniError(ERR.INVALID_CONFIG, 'bad', 'why'), '1.0.0'), { cniVersion: '1.0.0', code: 7, msg: 'bad', details: 'why' });
  t.deepEqual(toErrorJson(retryable('daemon not ready', new Error('ENOENT')), '0.4.0'), { cniVersion: '0.4.0', code: 11, msg: 'daemon not ready', details: 'ENOENT' });
  t.deepEqual(toErrorJson(new Error('create bridge "cni0"', { cause: new Error('EPERM') }), '1.1.0'), {
    cniVersion: '1.1.0',
    code: 999,
    msg: 'create bridge "cni0"',
    details: 'create bridge "cni0": EPERM',
  });
  t.is(toErrorJson('a string', '1.1.0').code, 999);
});

test('VERSION answers with the supported versions', async (t) => {
  const r = await run({ CNI_COMMAND: 'VERSION' }, '{"cniVersion":"0.3.1"}');
  t.is(r.code, 0);
  t.deepEqual(r.json, { cniVersion: '0.3.1', supportedVersions: ['0.3.0', '0.3.1', '0.4.0', '1.0.0', '1.1.0'] });
  t.is((await run({ CNI_COMMAND: 'VERSION' }, '')).json.cniVersion, '1.1.0');
});

test('errors: JSON on stdout (one line), diagnostics on stderr, exit code 1', async (t) => {
  const r = await run(addEnv, '{nope');
  t.is(r.code, 1);
  t.is(r.json.code, 6);
  t.is(r.json.cniVersion, '1.1.0');
  t.is(r.stdout.trim().split('\n').length, 1);
  t.regex(r.stderr, /ADD failed/);
  const v = await run(addEnv, '{"cniVersion":"0.4.0","name":"n","subnetFile":"/nonexistent/subnet.env"}');
  t.is(v.json.cniVersion, '0.4.0', 'errors answer in the requested version');
});

test('ADD with no subnet file is code 11 before touching the kernel', async (t) => {
  const r = await run(addEnv, JSON.stringify({ cniVersion: '1.0.0', name: 'n', subnetFile: '/nonexistent/subnet.env' }));
  t.is(r.code, 1);
  t.is(r.json.code, 11);
  t.regex(r.json.msg, /node daemon \(weftd\) is not ready/);
});

test('STATUS with the fake store: ready, read-only store and full subnet are 50', async (t) => {
  const dir = mkdtempSync(join(tmpdir(), 'wt-skel-'));
  t.teardown(() => rmSync(dir, { recursive: true, force: true }));
  const subnetFile = join(dir, 'subnet.env');
  writeFileSync(subnetFile, 'FLANNEL_NETWORK=198.18.0.0/16\nFLANNEL_SUBNET=198.18.1.1/29\nFLANNEL_MTU=1450\n');
  const conf = JSON.stringify({ cniVersion: '1.1.0', name: 'n', subnetFile });
  const store = new FakeStore();
  t.is((await run({ CNI_COMMAND: 'STATUS' }, conf, stubDeps(store))).code, 0);
  store.readOnly = true;
  t.is((await run({ CNI_COMMAND: 'STATUS' }, conf, stubDeps(store))).json.code, 50);
  store.readOnly = false;
  for (let i = 2; i <= 6; i++) await store.reserve(parseIPv4(`198.18.1.${i}`), { containerID: `c${i}`, ifname: 'eth0' });
  const full = await run({ CNI_COMMAND: 'STATUS' }, conf, stubDeps(store));
  t.deepEqual(full.json, { cniVersion: '1.1.0', code: 50, msg: 'no free address in 198.18.1.0/29' });
});

test('host veth names are veth + 8 hex, stable per (containerID, ifname)', (t) => {
  const a = hostVethName('abc', 'eth0');
  t.regex(a, /^veth[0-9a-f]{8}$/);
  t.is(a, hostVethName('abc', 'eth0'));
  t.not(a, hostVethName('abc', 'eth1'));
  t.not(a, hostVethName('abd', 'eth0'));
  t.is(a, expectedVethName('abc', 'eth0'));
});

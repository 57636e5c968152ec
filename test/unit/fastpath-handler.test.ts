/**
 * The fast path's in-process handler: the CNI skel with the same system dependencies as the
 * standalone binary (src/cni/deps.ts), configured from the forwarded request, not from weftd's
 * own environment, with output collected into the reply. VERSION only: no kernel state.
 */
import test from 'ava';
import type { Deps } from '../../src/cni/plugin.ts';
import { handleCni, handleCniWith } from '../../src/fastpath/handler.ts';
import { setSysctl } from '../../src/netns/index.ts';

const version = { CNI_COMMAND: 'VERSION' };
const stdin = '{"cniVersion":"1.1.0"}';

test('VERSION through the handler: code 0, the supported versions on stdout', async (t) => {
  const reply = await handleCni({ env: version, stdin });
  t.is(reply.code, 0, reply.stderr);
  t.deepEqual(JSON.parse(reply.stdout).supportedVersions, ['0.3.0', '0.3.1', '0.4.0', '1.0.0', '1.1.0']);
});

test('dependencies are the system ones, configured from the request; log lines go to its stderr', async (t) => {
  const before = process.env.WEFT_TEST_FAIL_AFTER;
  process.env.WEFT_TEST_FAIL_AFTER = 'bridge'; // weftd's own environment must not leak in
  t.teardown(() => {
    if (before === undefined) delete process.env.WEFT_TEST_FAIL_AFTER;
    else process.env.WEFT_TEST_FAIL_AFTER = before;
  });
  const seen: Deps[] = [];
  const reply = await handleCniWith({ env: { ...version, WEFT_TEST_FAIL_AFTER: 'ipam' }, stdin }, (deps) => {
    seen.push(deps);
    deps.log('from the wrapped deps');
    return deps;
  });
  t.is(seen.length, 1);
  t.is(seen[0]!.failAfter, 'ipam');
  t.is(seen[0]!.writeSysctl, setSysctl, 'the shared system sysctl writer, not a copy');
  t.is(reply.stderr, 'from the wrapped deps\n');
  t.is(reply.code, 0);

  const plain: Deps[] = [];
  await handleCniWith({ env: version, stdin }, (deps) => (plain.push(deps), deps));
  t.is(plain[0]!.failAfter, undefined, 'no hook unless the request sets it');
});

/**
 * The fast path's in-process handler: the CNI skel with the same system dependencies as the
 * standalone binary (src/cni/deps.ts), confined to the one network it serves, with output
 * collected into the reply. No kernel state: VERSION, and requests refused before any.
 */
import test from 'ava';
import type { Deps } from '../../src/cni/plugin.ts';
import { cniHandler, handleCniWith } from '../../src/fastpath/handler.ts';
import { LinkNotFoundError } from '../../src/netlink/errors.ts';
import { isOwnNetns, setSysctl } from '../../src/netns/index.ts';

const version = { CNI_COMMAND: 'VERSION' };
const stdin = '{"cniVersion":"1.1.0"}';
const network = { subnetFile: '/run/wt-nowhere/subnet.env', dataDir: '/run/wt-nowhere/data', bridge: 'wtbr0' };

test('VERSION through the handler: code 0, the supported versions on stdout', async (t) => {
  const reply = await cniHandler({ network })({ env: version, stdin });
  t.is(reply.code, 0, reply.stderr);
  t.deepEqual(JSON.parse(reply.stdout).supportedVersions, ['0.3.0', '0.3.1', '0.4.0', '1.0.0', '1.1.0']);
});

test('dependencies are the system ones, confined to the network; log lines go to its stderr', async (t) => {
  const seen: Deps[] = [];
  const reply = await handleCniWith(
    { env: version, stdin },
    {
      network,
      wrap: (deps) => {
        seen.push(deps);
        deps.log('from the wrapped deps');
        return deps;
      },
    },
  );
  t.is(seen.length, 1);
  t.deepEqual(seen[0]!.network, network);
  t.is(seen[0]!.writeSysctl, setSysctl, 'the shared system sysctl writer, not a copy');
  t.is(seen[0]!.isOwnNetns, isOwnNetns);
  t.false('failAfter' in seen[0]!, 'no test hook in the shipped dependencies');
  t.is(reply.stderr, 'from the wrapped deps\n');
  t.is(reply.code, 0);
});

for (const [key, value] of [
  ['subnetFile', '/etc/shadow'],
  ['dataDir', '/proc/1/root/tmp'],
  ['bridge', 'eth0'],
  ['subnetFile', 42],
] as const) {
  test(`a request naming another ${key} (${JSON.stringify(value)}) is refused before anything is touched`, async (t) => {
    const touched: string[] = [];
    const never = (what: string) => () => {
      touched.push(what);
      throw new Error(`${what} must not be called`);
    };
    const conf = JSON.stringify({ cniVersion: '1.0.0', name: 'wt-net', type: 'weft', [key]: value });
    for (const command of ['ADD', 'DEL', 'CHECK']) {
      const reply = await handleCniWith(
        { env: { CNI_COMMAND: command, CNI_CONTAINERID: 'c1', CNI_IFNAME: 'eth0', CNI_NETNS: '/run/netns/wt-none' }, stdin: conf },
        { network, wrap: (d) => ({ ...d, openNetlink: never('openNetlink'), openNetns: never('openNetns'), store: never('store'), writeSysctl: never('writeSysctl') }) },
      );
      t.is(reply.code, 1, command);
      const err = JSON.parse(reply.stdout);
      t.is(err.code, 7, command);
      t.regex(err.msg, new RegExp(`"${key}" .* is not this node's network`));
      t.false(/root:|\$6\$/.test(reply.stdout), 'no file content echoed');
    }
    t.deepEqual(touched, []);
  });
}

test("the network's own values, or none, pass the confinement", async (t) => {
  const confs = [{}, network, { subnetFile: network.subnetFile }, { dataDir: `${network.dataDir}/` }];
  for (const extra of confs) {
    let store: string | undefined;
    const reply = await handleCniWith(
      { env: { CNI_COMMAND: 'DEL', CNI_CONTAINERID: 'c1', CNI_IFNAME: 'eth0' }, stdin: JSON.stringify({ cniVersion: '1.0.0', name: 'wt-net', ...extra }) },
      {
        network,
        wrap: (d) => ({
          ...d,
          openNetlink: () => ({ linkByName: async (n: string) => Promise.reject(new LinkNotFoundError(n)), close() {} }) as never,
          store: (conf) => ((store = `${conf.dataDir}|${conf.bridge}|${conf.subnetFile}`), { list: async () => [], releaseByOwner: async () => [] }) as never,
        }),
      },
    );
    t.is(store, `${network.dataDir}|${network.bridge}|${network.subnetFile}`, `${JSON.stringify(extra)}: ${reply.stdout}`);
    t.is(reply.code, 0, reply.stdout);
  }
});

import test from 'ava';
import { DEFAULTS, isValidContainerID, parseCniArgs, parseConf, parseEnv } from '../../src/cni/config.ts';
import { CniError } from '../../src/cni/errors.ts';
import { parseSubnetFile } from '../../src/cni/subnetfile.ts';
import { formatCIDR, formatIPv4 } from '../../src/ip/ipv4.ts';

const env = (extra: Record<string, string | undefined> = {}) => ({
  CNI_COMMAND: 'ADD',
  CNI_CONTAINERID: 'abc123',
  CNI_NETNS: '/run/netns/pod',
  CNI_IFNAME: 'eth0',
  CNI_PATH: '/opt/cni/bin:/usr/lib/cni',
  ...extra,
});

function code(fn: () => unknown): number | undefined {
  try {
    fn();
  } catch (err) {
    return err instanceof CniError ? err.code : -1;
  }
  return undefined;
}

test('parseEnv reads the CNI_* variables', (t) => {
  const e = parseEnv(env({ CNI_ARGS: 'IgnoreUnknown=1;K8S_POD_NAMESPACE=default;K8S_POD_NAME=web-0' }));
  t.deepEqual(e, {
    command: 'ADD',
    containerID: 'abc123',
    netns: '/run/netns/pod',
    ifname: 'eth0',
    args: { IgnoreUnknown: '1', K8S_POD_NAMESPACE: 'default', K8S_POD_NAME: 'web-0' },
    path: ['/opt/cni/bin', '/usr/lib/cni'],
  });
  t.is(parseEnv(env({ CNI_COMMAND: 'DEL', CNI_NETNS: '' })).netns, '', 'DEL may omit the namespace');
  t.is(parseEnv({ CNI_COMMAND: 'STATUS' }).command, 'STATUS');
});

test('parseEnv: missing or invalid variables are code 4', (t) => {
  t.is(
    code(() => parseEnv(env({ CNI_COMMAND: undefined }))),
    4,
  );
  t.is(
    code(() => parseEnv(env({ CNI_COMMAND: 'add' }))),
    4,
  );
  t.is(
    code(() => parseEnv(env({ CNI_CONTAINERID: undefined }))),
    4,
  );
  t.is(
    code(() => parseEnv(env({ CNI_CONTAINERID: '../etc' }))),
    4,
  );
  t.is(
    code(() => parseEnv(env({ CNI_CONTAINERID: 'a\r\nb' }))),
    4,
  );
  t.is(
    code(() => parseEnv(env({ CNI_IFNAME: undefined }))),
    4,
  );
  t.is(
    code(() => parseEnv(env({ CNI_IFNAME: 'sixteen-chars-xx' }))),
    4,
  );
  t.is(
    code(() => parseEnv(env({ CNI_IFNAME: 'a:b' }))),
    4,
  );
  t.is(
    code(() => parseEnv(env({ CNI_IFNAME: '..' }))),
    4,
  );
  t.is(
    code(() => parseEnv(env({ CNI_NETNS: undefined }))),
    4,
  );
  t.is(
    code(() => parseEnv(env({ CNI_NETNS: 'netns/pod' }))),
    4,
  );
  t.is(
    code(() => parseEnv(env({ CNI_ARGS: 'novalue' }))),
    4,
  );
  t.is(
    code(() => parseEnv(env({ CNI_COMMAND: 'CHECK', CNI_NETNS: '' }))),
    4,
  );
  t.deepEqual(parseCniArgs(''), {});
});

test('container IDs: letters, digits, _ . - only, not leading punctuation', (t) => {
  t.true(isValidContainerID('3f2a9c0e1b4d'));
  t.true(isValidContainerID('pod_1.sandbox-x'));
  for (const bad of ['', '-x', '.x', 'a/b', 'a b', 'a\nb', 'a\\b', 'é']) t.false(isValidContainerID(bad), JSON.stringify(bad));
});

test('parseConf applies defaults', (t) => {
  const c = parseConf('{"cniVersion":"1.0.0","name":"cbr0","type":"weft"}', 'ADD');
  t.deepEqual(c, {
    cniVersion: '1.0.0',
    name: 'cbr0',
    type: 'weft',
    subnetFile: DEFAULTS.subnetFile,
    dataDir: DEFAULTS.dataDir,
    bridge: 'cni0',
    hairpinMode: true,
    isDefaultGateway: true,
    mtu: undefined,
    prevResult: undefined,
  });
  t.is(DEFAULTS.subnetFile, '/run/flannel/subnet.env');
  t.is(DEFAULTS.dataDir, '/var/lib/cni/networks');
  const o = parseConf(JSON.stringify({ cniVersion: '0.3.1', name: 'n', bridge: 'br1', hairpinMode: false, isDefaultGateway: false, mtu: 1400, dataDir: '/d', subnetFile: '/s' }), 'ADD');
  t.like(o, { bridge: 'br1', hairpinMode: false, isDefaultGateway: false, mtu: 1400, dataDir: '/d', subnetFile: '/s' });
});

test('parseConf error codes: 6 malformed, 1 version, 7 invalid', (t) => {
  t.is(
    code(() => parseConf('{', 'ADD')),
    6,
  );
  t.is(
    code(() => parseConf('"text"', 'ADD')),
    6,
  );
  t.is(
    code(() => parseConf('{"name":"n"}', 'ADD')),
    1,
  );
  t.is(
    code(() => parseConf('{"cniVersion":"0.2.0","name":"n"}', 'ADD')),
    1,
  );
  t.is(
    code(() => parseConf('{"cniVersion":"9.9.9","name":"n"}', 'ADD')),
    1,
  );
  t.is(
    code(() => parseConf('{"cniVersion":"0.3.1","name":"n"}', 'CHECK')),
    1,
  );
  t.is(
    code(() => parseConf('{"cniVersion":"1.0.0","name":"n","cni.dev/valid-attachments":[]}', 'GC')),
    1,
  );
  t.is(
    code(() => parseConf('{"cniVersion":"1.0.0","name":"n"}', 'STATUS')),
    1,
  );
  t.is(
    code(() => parseConf('{"cniVersion":"1.0.0"}', 'ADD')),
    7,
  );
  t.is(
    code(() => parseConf('{"cniVersion":"1.0.0","name":"a/b"}', 'ADD')),
    7,
  );
  t.is(
    code(() => parseConf('{"cniVersion":"1.0.0","name":"n","mtu":1.5}', 'ADD')),
    7,
  );
  t.is(
    code(() => parseConf('{"cniVersion":"1.0.0","name":"n","bridge":"way-too-long-name"}', 'ADD')),
    7,
  );
  t.is(
    code(() => parseConf('{"cniVersion":"1.0.0","name":"n","dataDir":"rel"}', 'ADD')),
    7,
  );
  t.is(
    code(() => parseConf('{"cniVersion":"1.0.0","name":"n","prevResult":[]}', 'ADD')),
    7,
  );
  t.is(
    code(() => parseConf('{"cniVersion":"1.1.0","name":"n"}', 'GC')),
    7,
  );
  t.is(
    code(() => parseConf('{"cniVersion":"1.1.0","name":"n","cni.dev/valid-attachments":[{"containerID":1}]}', 'GC')),
    7,
  );
});

test('parseConf reads GC attachments under either key', (t) => {
  const a = [{ containerID: 'c', ifname: 'eth0' }];
  t.deepEqual(parseConf(JSON.stringify({ cniVersion: '1.1.0', name: 'n', 'cni.dev/valid-attachments': a }), 'GC').validAttachments, a);
  t.deepEqual(parseConf(JSON.stringify({ cniVersion: '1.1.0', name: 'n', 'cni.dev/attachments': a }), 'GC').validAttachments, a);
});

test('subnet file: flannel keys parsed; malformed is code 7', (t) => {
  const s = parseSubnetFile('FLANNEL_NETWORK=198.18.0.0/16\nFLANNEL_SUBNET=198.18.1.1/24\nFLANNEL_MTU=1450\nFLANNEL_IPMASQ=true\n# comment\nFLANNEL_IPV6_NETWORK=\n');
  t.is(formatCIDR(s.network), '198.18.0.0/16');
  t.is(formatCIDR(s.subnet), '198.18.1.0/24');
  t.is(formatIPv4(s.gateway), '198.18.1.1');
  t.is(s.mtu, 1450);
  t.true(s.ipMasq);
  for (const bad of [
    '',
    'FLANNEL_NETWORK=198.18.0.0/16\nFLANNEL_SUBNET=198.18.1.1/24\n',
    'FLANNEL_NETWORK=198.18.0.0/16\nFLANNEL_SUBNET=198.18.1.0/24\nFLANNEL_MTU=1450\n',
    'FLANNEL_NETWORK=198.18.0.0/16\nFLANNEL_SUBNET=198.18.1.1/31\nFLANNEL_MTU=1450\n',
    'FLANNEL_NETWORK=198.18.0.0/24\nFLANNEL_SUBNET=198.18.1.1/24\nFLANNEL_MTU=1450\n',
    'FLANNEL_NETWORK=198.18.0.0/16\nFLANNEL_SUBNET=198.18.1.1/24\nFLANNEL_MTU=20\n',
    'FLANNEL_NETWORK=198.18.0.0/16\nFLANNEL_SUBNET=198.18.1.1/24\nFLANNEL_MTU=1450\nFLANNEL_IPMASQ=maybe\n',
    'garbage',
  ]) {
    t.is(
      code(() => parseSubnetFile(bad)),
      7,
      JSON.stringify(bad),
    );
  }
});

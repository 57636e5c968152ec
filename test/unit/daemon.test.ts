import test from 'ava';
import { envName, parseDuration, parseOptions, usage, UsageError } from '../../src/daemon/options.ts';
import { parseListenAddr } from '../../src/daemon/server.ts';
import { errText } from '../../src/core/errors.ts';

test('options: defaults', (t) => {
  const o = parseOptions([], {}, 'host-a')!;
  t.deepEqual(o, {
    kubeSubnetMgr: false,
    kubeconfig: undefined,
    netConfigPath: '/etc/kube-weft/net-conf.json',
    kubeAnnotationPrefix: 'flannel.alpha.coreos.com',
    setNodeNetworkUnavailable: true,
    proxy: false,
    nodePortRange: { min: 30000, max: 32767 },
    proxyFullSyncIntervalMs: 300_000,
    etcdEndpoints: ['http://127.0.0.1:2379'],
    etcdPrefix: '/coreos.com/network',
    etcdCafile: undefined,
    etcdCertfile: undefined,
    etcdKeyfile: undefined,
    iface: undefined,
    publicIP: undefined,
    subnetFile: '/run/flannel/subnet.env',
    ipMasq: false,
    healthzAddr: '127.0.0.1:9333',
    nodeName: 'host-a',
    leaseTtlSeconds: 86_400,
    renewMarginSeconds: 3600,
    reconcileIntervalMs: 60_000,
    resyncIntervalMs: 300_000,
    logLevel: 'info',
    cniSocket: '/run/weft/cni.sock',
    cniDataDir: '/var/lib/cni/networks',
    watchStallMs: 15000,
    cniBridge: 'cni0',
    cniWorkers: 2,
    nice: -10,
  });
});

test('options: Kubernetes mode needs the node name (flag or $NODE_NAME), not etcd; bad prefix refused', (t) => {
  t.throws(() => parseOptions(['--kube-subnet-mgr'], {}, 'host-a'), { instanceOf: UsageError, message: /node name/ });
  const o = parseOptions([], { WEFTD_KUBE_SUBNET_MGR: 'true', NODE_NAME: 'node-1', WEFTD_ETCD_ENDPOINTS: '' }, 'host-a')!;
  t.true(o.kubeSubnetMgr);
  t.is(o.nodeName, 'node-1');
  t.deepEqual(o.etcdEndpoints, []);
  t.is(parseOptions(['--kube-subnet-mgr', '--node-name', 'n2', '--kubeconfig', '/k'], { NODE_NAME: 'node-1' }, 'h')!.nodeName, 'n2');
  t.false(parseOptions(['--kube-subnet-mgr', '--node-name', 'n2', '--no-set-node-network-unavailable'], {}, 'h')!.setNodeNetworkUnavailable);
  t.throws(() => parseOptions(['--kube-subnet-mgr', '--node-name', 'n2', '--kube-annotation-prefix', 'Not_A/Prefix'], {}, 'h'), { instanceOf: UsageError, message: /annotation-prefix/ });
  t.throws(() => parseOptions(['--kube-subnet-mgr', '--node-name', 'n2', '--net-config-path', 'rel.json'], {}, 'h'), { instanceOf: UsageError, message: /net-config-path/ });
  t.throws(() => parseOptions(['--etcd-endpoints', ''], {}, 'h'), { instanceOf: UsageError, message: /etcd-endpoints/ });
  t.throws(() => parseOptions(['--proxy'], {}, 'h'), { instanceOf: UsageError, message: /--proxy needs the node name/ });
  t.is(parseOptions(['--proxy'], { NODE_NAME: 'worker-1' }, 'Worker-1')!.nodeName, 'worker-1');
});

test('options: every flag also from WEFTD_* env, flags win', (t) => {
  t.is(envName('etcd-endpoints'), 'WEFTD_ETCD_ENDPOINTS');
  const env = {
    WEFTD_ETCD_ENDPOINTS: 'http://198.51.100.2:2379,https://198.51.100.3:2379',
    WEFTD_ETCD_PREFIX: '/weft/network',
    WEFTD_IP_MASQ: 'true',
    WEFTD_PUBLIC_IP: '198.51.100.11',
    WEFTD_LEASE_TTL: '90s',
    WEFTD_RENEW_MARGIN: '30s',
    WEFTD_SUBNET_FILE: '/run/weft/n1.env',
    WEFTD_RESYNC_INTERVAL: '30s',
  };
  const o = parseOptions(['--etcd-prefix', '/from/flag', '--node-name', 'n1'], env, 'h')!;
  t.deepEqual(o.etcdEndpoints, ['http://198.51.100.2:2379', 'https://198.51.100.3:2379']);
  t.is(o.etcdPrefix, '/from/flag');
  t.true(o.ipMasq);
  t.is(o.publicIP, '198.51.100.11');
  t.is(o.leaseTtlSeconds, 90);
  t.is(o.renewMarginSeconds, 30);
  t.is(o.subnetFile, '/run/weft/n1.env');
  t.is(o.nodeName, 'n1');
  t.is(o.resyncIntervalMs, 30_000);
  t.is(parseOptions(['--resync-interval', '0'], env, 'h')!.resyncIntervalMs, 0, '0 turns the resync off');
  t.is(parseOptions(['--help'], {}, 'h'), undefined);
  t.true(usage().includes('--etcd-endpoints') && usage().includes('[$WEFTD_ETCD_ENDPOINTS]'));
});

test('options: bad values are usage errors that say what is wrong', (t) => {
  const bad: Array<[string[], Record<string, string>, RegExp]> = [
    [['--bogus'], {}, /bogus/],
    [['--etcd-endpoints', '198.51.100.2:2379'], {}, /not an http\(s\):\/\/host:port URL/],
    [['--public-ip', 'eth0'], {}, /--public-ip: "eth0" is not an IPv4 address/],
    [['--subnet-file', 'rel/path'], {}, /not an absolute path/],
    [['--lease-ttl', '1h', '--renew-margin', '2h'], {}, /--renew-margin \(2h\) must be shorter than --lease-ttl \(1h\)/],
    [['--lease-ttl', 'soon'], {}, /invalid duration "soon"/],
    [['--log-level', 'loud'], {}, /"loud" is not one of/],
    [['--resync-interval', '500ms'], {}, /--resync-interval: must be 0 \(off\) or at least 1s/],
    [[], { WEFTD_RESYNC_INTERVAL: 'often' }, /--resync-interval: invalid duration "often"/],
    [['--etcd-certfile', '/c.pem'], {}, /go together/],
    [[], { WEFTD_IP_MASQ: 'maybe' }, /WEFTD_IP_MASQ: expected true or false/],
    [['--nice=-21'], {}, /--nice: "-21" is not a number from -20 to 19/],
    [['--nice', '20'], {}, /--nice: "20" is not a number from -20 to 19/],
    [[], { WEFTD_NICE: 'high' }, /--nice: "high" is not a number/],
  ];
  for (const [argv, env, re] of bad) {
    const err = t.throws(() => parseOptions(argv, env, 'h'), { instanceOf: UsageError }, argv.join(' '));
    t.regex(err!.message, re);
  }
});

test('options: --cni-socket from flag or $WEFTD_CNI_SOCKET, empty disables the fast path, bad paths refused', (t) => {
  const sock = (argv: string[], env: Record<string, string> = {}) => parseOptions(argv, env, 'h')!.cniSocket;
  t.is(sock([]), '/run/weft/cni.sock');
  t.is(sock(['--cni-socket', '/tmp/x/cni.sock']), '/tmp/x/cni.sock');
  t.is(sock([], { WEFTD_CNI_SOCKET: '/tmp/y.sock' }), '/tmp/y.sock');
  t.is(sock(['--cni-socket=/tmp/flag.sock'], { WEFTD_CNI_SOCKET: '/tmp/env.sock' }), '/tmp/flag.sock', 'the flag wins');
  t.is(sock([], { WEFTD_CNI_SOCKET: '' }), '', 'empty env disables');
  t.is(sock(['--cni-socket='], {}), '', 'empty flag disables');
  t.is(sock(['--cni-socket='], { WEFTD_CNI_SOCKET: '/tmp/env.sock' }), '', 'an empty flag still wins over the env');
  for (const [argv, re] of [
    [['--cni-socket', 'run/weft/cni.sock'], /--cni-socket: "run\/weft\/cni.sock" is not an absolute path/],
    [['--cni-socket', `/${'d'.repeat(107)}`], /longer than 107 bytes/],
  ] as const) {
    const err = t.throws(() => parseOptions([...argv], {}, 'h'), { instanceOf: UsageError });
    t.regex(err!.message, re);
  }
  t.notThrows(() => parseOptions(['--cni-socket', `/${'d'.repeat(106)}`], {}, 'h'), '107 bytes fit');
  t.regex(usage(), /--cni-socket .*\(default "\/run\/weft\/cni.sock"\) {2}\[\$WEFTD_CNI_SOCKET\]/);
});

test('options: --nice from flag or $WEFTD_NICE, -20 to 19', (t) => {
  const nice = (argv: string[], env: Record<string, string> = {}) => parseOptions(argv, env, 'h')!.nice;
  t.is(nice([]), -10);
  t.is(nice(['--nice', '0']), 0);
  t.is(nice(['--nice=-20']), -20);
  t.is(nice([], { WEFTD_NICE: '19' }), 19);
});

test('durations', (t) => {
  t.is(parseDuration('24h', 'x'), 86_400_000);
  t.is(parseDuration('90s', 'x'), 90_000);
  t.is(parseDuration('90', 'x'), 90_000);
  t.is(parseDuration('500ms', 'x'), 500);
  t.is(parseDuration('1.5m', 'x'), 90_000);
});

test('listen address and error text helpers', (t) => {
  t.deepEqual(parseListenAddr('127.0.0.1:9333'), { host: '127.0.0.1', port: 9333 });
  t.deepEqual(parseListenAddr(':9333'), { host: '0.0.0.0', port: 9333 });
  t.throws(() => parseListenAddr('9333'), { message: /invalid listen address/ });
  t.is(errText(new Error('outer', { cause: new Error('inner') })), 'outer: inner');
});

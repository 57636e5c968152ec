/**
 * weftctl against a real etcd (lab/etcd.ts) in a throwaway namespace that also stands in for a
 * node: an eth0 (veth) on the test underlay, and for `check` a flannel.1 with peer entries built
 * by hand with `ip`/`bridge` (the oracle), so check is judged against state weftctl did not make.
 * `get nodes --watch` is also run across an etcd restart and a compaction of what it has seen.
 */
import test from 'ava';
import { mkdtempSync, rmSync, unlinkSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join, resolve } from 'node:path';
import { parse as parseYaml } from 'yaml';
import { EtcdServer } from '../../lab/etcd.ts';
import { eventually, inNs, runInNs, Scope, sh } from '../helpers/netns.ts';

const WEFTCTL = resolve('dist/bin/weftctl');
const NODE_IP = '198.51.100.11';

const scope = new Scope();
let ns = '';
let etcd: EtcdServer;
let dir = '';

test.before(async () => {
  ns = scope.netns('ctl');
  // No dummy driver on this kernel: a veth pair with both ends here stands in for the uplink.
  sh('ip', ['-n', ns, 'link', 'add', 'eth0', 'type', 'veth', 'peer', 'name', 'uplink']);
  sh('ip', ['-n', ns, 'addr', 'add', `${NODE_IP}/24`, 'dev', 'eth0']);
  sh('ip', ['-n', ns, 'link', 'set', 'eth0', 'up']);
  sh('ip', ['-n', ns, 'link', 'set', 'uplink', 'up']);
  dir = mkdtempSync(join(tmpdir(), 'weftctl-test-'));
  scope.defer(() => rmSync(dir, { recursive: true, force: true }));
  etcd = new EtcdServer({ netns: ns, ip: NODE_IP, clientPort: 2379, peerPort: 2380 });
  scope.defer(() => etcd.destroy());
  await etcd.start();
});
test.after.always(() => scope.cleanup());

interface Run {
  code: number | null;
  stdout: string;
  stderr: string;
}

/** Runs weftctl inside the namespace (where etcd is reachable); never throws on exit codes. */
function weftctl(args: string[], env: Record<string, string> = {}): Promise<Run> {
  return runInNs(ns, WEFTCTL, args, { PATH: process.env.PATH!, WEFTD_ETCD_ENDPOINTS: etcd.endpoint, ...env });
}

let prefixes = 0;
/** A fresh etcd prefix per test, so tests in this file never see each other's keys. */
function freshPrefix(): string {
  return `/weft-test-${process.pid}-${++prefixes}/network`;
}

async function putLease(prefix: string, subnet: string, publicIP: string, mac: string, ttl = 3600): Promise<void> {
  const out = await etcd.ctl(['lease', 'grant', String(ttl)]);
  const id = /lease ([0-9a-f]+) granted/.exec(out)![1]!;
  const value = JSON.stringify({ PublicIP: publicIP, BackendType: 'vxlan', BackendData: { VNI: 1, VtepMAC: mac } });
  await etcd.ctl(['put', `--lease=${id}`, `${prefix}/subnets/${subnet.replace('/', '-')}`, value]);
}

const noStack = /\n\s+at .+\(/;

test('network init writes flannel config, is idempotent, and get network shows it', async (t) => {
  const p = freshPrefix();
  const env = { WEFTD_ETCD_PREFIX: p };
  const r1 = await weftctl(['network', 'init', '--network', '198.18.0.0/16', '--subnet-len', '24', '--vni', '1', '--port', '8472'], env);
  t.is(r1.code, 0, r1.stderr);
  t.regex(r1.stdout, /created/);
  t.deepEqual(JSON.parse((await etcd.get(`${p}/config`))!), {
    Network: '198.18.0.0/16',
    SubnetLen: 24,
    Backend: { Type: 'vxlan', VNI: 1, Port: 8472 },
  });
  const r2 = await weftctl(['network', 'init', '--network', '198.18.0.0/16', '--subnet-len', '24', '--vni', '1', '--port', '8472'], env);
  t.is(r2.code, 0);
  t.regex(r2.stdout, /unchanged/);
  const get = await weftctl(['get', 'network', '-o', 'json'], env);
  t.is(get.code, 0, get.stderr);
  t.like(JSON.parse(get.stdout), { network: '198.18.0.0/16', subnetLen: 24, subnetMin: '198.18.1.0', subnetMax: '198.18.255.0' });
  // Without leases, the network may change freely.
  const r3 = await weftctl(['network', 'init', '--network', '198.19.0.0/16'], env);
  t.is(r3.code, 0, r3.stderr);
  t.regex(r3.stdout, /updated/);
});

test('network init refuses to change Network while leases exist, says why, and --force overrides', async (t) => {
  const p = freshPrefix();
  const env = { WEFTD_ETCD_PREFIX: p };
  t.is((await weftctl(['network', 'init', '--network', '198.18.0.0/16'], env)).code, 0);
  await putLease(p, '198.18.5.0/24', '198.51.100.21', '0a:00:00:00:05:01');
  const before = await etcd.get(`${p}/config`);
  const r = await weftctl(['network', 'init', '--network', '198.19.0.0/16'], env);
  t.is(r.code, 2);
  t.regex(r.stderr, /refusing to change the network from 198\.18\.0\.0\/16.*to 198\.19\.0\.0\/16.*1 node lease\(s\) exist.*198\.51\.100\.21 198\.18\.5\.0\/24.*--force/s);
  t.notRegex(r.stderr, noStack);
  t.is(await etcd.get(`${p}/config`), before);
  // Changing only the VNI keeps the layout: allowed, with a warning to restart the daemons.
  const vni = await weftctl(['network', 'init', '--network', '198.18.0.0/16', '--vni', '7'], env);
  t.is(vni.code, 0, vni.stderr);
  t.regex(vni.stdout, /restart weftd/);
  const forced = await weftctl(['network', 'init', '--network', '198.19.0.0/16', '--force'], env);
  t.is(forced.code, 0, forced.stderr);
  t.is(JSON.parse((await etcd.get(`${p}/config`))!).Network, '198.19.0.0/16');
});

test('network init rejects bad input clearly and writes nothing', async (t) => {
  const p = freshPrefix();
  const env = { WEFTD_ETCD_PREFIX: p };
  for (const [args, msg] of [
    [['network', 'init', '--network', '198.18.0.1/16'], /host bits set/],
    [['network', 'init', '--network', 'nonsense'], /not a valid IPv4 CIDR/],
    [['network', 'init', '--network', '198.18.0.0/16', '--subnet-len', '8'], /SubnetLen/],
    [['network', 'init', '--network', '198.18.0.0/16', '--vni', 'x'], /--vni must be a whole number/],
    [['network', 'init'], /needs --network/],
    [['network', 'init', '--config-file', join(dir, 'absent.json')], /read --config-file/],
  ] as const) {
    const r = await weftctl([...args], env);
    t.is(r.code, 2, `${args.join(' ')}: ${r.stdout}`);
    t.regex(r.stderr, msg);
    t.notRegex(r.stderr, noStack);
  }
  t.is(await etcd.get(`${p}/config`), undefined);
  const file = join(dir, 'net-conf.json');
  writeFileSync(file, '{"Network":"198.18.0.0/16","Backend":{"Type":"vxlan"}}');
  t.is((await weftctl(['network', 'init', '--config-file', file], env)).code, 0);
  t.is(JSON.parse((await etcd.get(`${p}/config`))!).Network, '198.18.0.0/16');
});

test('get nodes: table, wide, json and yaml from the leases', async (t) => {
  const p = freshPrefix();
  const env = { WEFTD_ETCD_PREFIX: p };
  t.is((await weftctl(['network', 'init', '--network', '198.18.0.0/16'], env)).code, 0);
  const empty = await weftctl(['get', 'nodes'], env);
  t.is(empty.code, 0);
  t.regex(empty.stdout, /No node leases found/);
  await putLease(p, '198.18.2.0/24', '198.51.100.12', '0a:00:00:00:00:02', 3600);
  await putLease(p, '198.18.10.0/24', '198.51.100.13', '0a:00:00:00:00:03', 600);

  const table = await weftctl(['get', 'nodes'], env);
  t.is(table.code, 0, table.stderr);
  const lines = table.stdout.trimEnd().split('\n');
  t.regex(lines[0]!, /^PUBLIC IP\s+SUBNET\s+VTEP MAC\s+EXPIRES IN\s+LEASE AGE$/);
  t.is(lines.length, 3);
  t.regex(lines[1]!, /^198\.51\.100\.12\s+198\.18\.2\.0\/24\s+0a:00:00:00:00:02\s+(59m\d*s?|1h)\s+\d+s$/);
  t.regex(lines[2]!, /^198\.51\.100\.13\s+198\.18\.10\.0\/24\s+0a:00:00:00:00:03\s+(9m\d*s?|10m)\s+\d+s$/);

  const wide = await weftctl(['get', 'nodes', '-o', 'wide'], env);
  t.regex(wide.stdout.split('\n')[0]!, /VNI\s+BACKEND\s+VTEP IP\s+ETCD LEASE\s+REVISION/);
  t.regex(wide.stdout, /198\.18\.2\.0\/24.*\s1\s+vxlan\s+198\.18\.2\.0\s+[0-9a-f]+\s+\d+/);

  // A kubectl-style list, as `kubectl get -o json` prints one.
  const json = JSON.parse((await weftctl(['get', 'nodes', '-o', 'json'], env)).stdout);
  t.deepEqual(Object.keys(json), ['apiVersion', 'kind', 'items']);
  t.like(json, { apiVersion: 'v1', kind: 'List' });
  t.is(json.items.length, 2);
  t.like(json.items[0], { publicIP: '198.51.100.12', subnet: '198.18.2.0/24', vtepMAC: '0a:00:00:00:00:02', vni: 1, vtepIP: '198.18.2.0' });
  t.true(json.items[0].expiresInSeconds > 3500 && json.items[0].expiresInSeconds <= 3600);
  const yaml = parseYaml((await weftctl(['get', 'nodes', '-o', 'yaml'], env)).stdout);
  t.like(yaml, { apiVersion: 'v1', kind: 'List' });
  t.deepEqual(
    yaml.items.map((n: { subnet: string }) => n.subnet),
    ['198.18.2.0/24', '198.18.10.0/24'],
  );
  const bad = await weftctl(['get', 'nodes', '-o', 'xml'], env);
  t.is(bad.code, 2);
  t.regex(bad.stderr, /-o must be one of wide, json, yaml/);
});

test('describe node by public IP or subnet; an unknown node is a clear error', async (t) => {
  const p = freshPrefix();
  const env = { WEFTD_ETCD_PREFIX: p };
  t.is((await weftctl(['network', 'init', '--network', '198.18.0.0/16'], env)).code, 0);
  await putLease(p, '198.18.4.0/24', '198.51.100.14', '0a:00:00:00:00:04');
  for (const q of ['198.51.100.14', '198.18.4.0/24']) {
    const r = await weftctl(['describe', 'node', q], env);
    t.is(r.code, 0, r.stderr);
    t.regex(r.stdout, /Public IP:\s+198\.51\.100\.14/);
    t.regex(r.stdout, /Subnet:\s+198\.18\.4\.0\/24/);
    t.regex(r.stdout, /VTEP MAC:\s+0a:00:00:00:00:04/);
    t.regex(r.stdout, new RegExp(`etcd key:\\s+${p}/subnets/198\\.18\\.4\\.0-24`));
    t.regex(r.stdout, /Network:\s+198\.18\.0\.0\/16/);
  }
  const json = JSON.parse((await weftctl(['describe', 'node', '198.51.100.14', '-o', 'json'], env)).stdout);
  t.deepEqual(json.node.backendData, { VNI: 1, VtepMAC: '0a:00:00:00:00:04' });
  const missing = await weftctl(['describe', 'node', '198.51.100.99'], env);
  t.is(missing.code, 2);
  t.regex(missing.stderr, /no node with public IP or subnet "198\.51\.100\.99"/);
});

/** `weftctl get nodes --watch -o json` running in the namespace, its events as `TYPE SUBNET PUBLIC-IP`. */
function watchNodes(prefix: string) {
  const child = scope.spawn('nsenter', [`--net=/run/netns/${ns}`, '--', WEFTCTL, 'get', 'nodes', '--watch', '-o', 'json'], {
    env: { PATH: process.env.PATH!, WEFTD_ETCD_ENDPOINTS: etcd.endpoint, WEFTD_ETCD_PREFIX: prefix },
  });
  let stdout = '';
  let stderr = '';
  let exit: number | null | undefined;
  child.stdout!.on('data', (d) => (stdout += d));
  child.stderr!.on('data', (d) => (stderr += d));
  const closed = new Promise<number | null>((r) => child.on('close', (code) => r((exit = code))));
  const events = () =>
    stdout
      .split('\n')
      .filter(Boolean)
      .map((l) => {
        const e = JSON.parse(l) as { type: string; node: { subnet: string; publicIP: string } };
        return `${e.type} ${e.node.subnet} ${e.node.publicIP}`;
      });
  /** Waits for `n` events in all; undefined when they do not come. */
  const first = (n: number, timeoutMs = 20_000) => eventually(() => (events().length >= n ? events() : undefined), timeoutMs);
  const output = () => `stdout:\n${stdout}\nstderr:\n${stderr}\nexit: ${exit}`;
  return { child, closed, events, first, output, stderr: () => stderr, running: () => exit === undefined };
}

test('get nodes --watch streams added, modified and deleted leases', async (t) => {
  const p = freshPrefix();
  await putLease(p, '198.18.6.0/24', '198.51.100.16', '0a:00:00:00:00:06');
  const w = watchNodes(p);
  // The existing lease comes first, from the listing; the watch continues from there.
  t.truthy(await w.first(1, 30_000), `no listing; ${w.output()}`);
  await putLease(p, '198.18.7.0/24', '198.51.100.17', '0a:00:00:00:00:07');
  await putLease(p, '198.18.7.0/24', '198.51.100.18', '0a:00:00:00:00:07');
  await etcd.del(`${p}/subnets/198.18.7.0-24`);
  t.deepEqual(await w.first(4), ['ADDED 198.18.6.0/24 198.51.100.16', 'ADDED 198.18.7.0/24 198.51.100.17', 'MODIFIED 198.18.7.0/24 198.51.100.18', 'DELETED 198.18.7.0/24 198.51.100.18'], w.output());
  w.child.kill('SIGINT');
  t.is(await w.closed, 0);
});

async function compactAll(): Promise<void> {
  const status = JSON.parse(await etcd.ctl(['endpoint', 'status', '-w', 'json'])) as Array<{ Status: { header: { revision: number } } }>;
  await etcd.ctl(['compact', String(status[0]!.Status.header.revision)]);
}

// Serial: it restarts etcd, and ava runs serial tests before the concurrent ones of a file.
test.serial('get nodes --watch keeps printing changes across an etcd compaction', async (t) => {
  const p = freshPrefix();
  await putLease(p, '198.18.6.0/24', '198.51.100.16', '0a:00:00:00:00:06');
  const w = watchNodes(p);
  t.truthy(await w.first(1, 30_000), `no listing; ${w.output()}`);
  await putLease(p, '198.18.7.0/24', '198.51.100.17', '0a:00:00:00:00:07');
  t.deepEqual(await w.first(2), ['ADDED 198.18.6.0/24 198.51.100.16', 'ADDED 198.18.7.0/24 198.51.100.17'], w.output());

  // Freeze weftctl, restart etcd under it (its stream breaks), change the lease table and
  // compact past everything it has seen: when it resumes, the watch cannot continue from its
  // revision and only a re-list brings these changes in.
  process.kill(w.child.pid!, 'SIGSTOP');
  try {
    await etcd.stop();
    await etcd.start();
    await etcd.del(`${p}/subnets/198.18.6.0-24`);
    await putLease(p, '198.18.7.0/24', '198.51.100.27', '0a:00:00:00:00:07');
    await putLease(p, '198.18.8.0/24', '198.51.100.18', '0a:00:00:00:00:08');
    await compactAll();
  } finally {
    process.kill(w.child.pid!, 'SIGCONT');
  }
  const gap = await w.first(5, 30_000);
  t.truthy(gap, `changes behind the compaction; ${w.output()}`);
  t.deepEqual(gap!.slice(2).sort(), ['ADDED 198.18.8.0/24 198.51.100.18', 'DELETED 198.18.6.0/24 198.51.100.16', 'MODIFIED 198.18.7.0/24 198.51.100.27'], w.output());
  // The operator is told why, beside the output.
  t.regex(w.stderr(), /^weftctl: lease watch: .*; re-listing$/m);

  // The watch goes on after the re-list; a compaction while it is live changes nothing.
  await putLease(p, '198.18.9.0/24', '198.51.100.19', '0a:00:00:00:00:09');
  await compactAll();
  await etcd.del(`${p}/subnets/198.18.7.0-24`);
  t.deepEqual((await w.first(7))?.slice(5), ['ADDED 198.18.9.0/24 198.51.100.19', 'DELETED 198.18.7.0/24 198.51.100.27'], w.output());
  t.true(w.running(), w.output());
  w.child.kill('SIGINT');
  t.is(await w.closed, 0, w.output());
  t.is(w.events().length, 7, 'no event twice');
});

test('unreachable etcd: names the endpoint and what failed, no stack trace', async (t) => {
  // 203.0.113.99 has no route in the namespace; nothing listens on port 2399.
  for (const endpoint of ['http://203.0.113.99:2379', `http://${NODE_IP}:2399`]) {
    const r = await weftctl(['get', 'nodes', '--timeout', '2'], { WEFTD_ETCD_ENDPOINTS: endpoint });
    t.is(r.code, 2);
    t.regex(r.stderr, new RegExp(`^weftctl: cannot reach etcd at ${endpoint.replaceAll('.', '\\.')}: list leases failed: .+`));
    t.notRegex(r.stderr, noStack);
    t.is(r.stderr.trim().split('\n').length, 1, r.stderr);
  }
  const flag = await weftctl(['get', 'nodes', '--etcd-endpoints', 'not-a-url']);
  t.is(flag.code, 2);
  t.regex(flag.stderr, /etcd endpoint "not-a-url" is not a URL/);
});

test('version and usage errors', async (t) => {
  const v = await weftctl(['version']);
  t.is(v.code, 0);
  t.regex(v.stdout, /^weftctl 0\.1\.0 \(node v24\./);
  const u = await weftctl(['frobnicate']);
  t.is(u.code, 2);
  t.regex(u.stderr, /unknown command "frobnicate"/);
});

test('check: consistent hand-built node state passes; each kind of drift is reported', async (t) => {
  const p = freshPrefix();
  const env = { WEFTD_ETCD_PREFIX: p };
  t.is((await weftctl(['network', 'init', '--network', '198.18.0.0/16'], env)).code, 0);
  const ip = (...a: string[]) => sh('ip', ['-n', ns, ...a]);
  ip('link', 'add', 'flannel.1', 'type', 'vxlan', 'id', '1', 'local', NODE_IP, 'dev', 'eth0', 'dstport', '8472', 'nolearning');
  t.teardown(() => {
    try {
      ip('link', 'del', 'flannel.1');
    } catch {
      /* gone */
    }
  });
  ip('link', 'set', 'flannel.1', 'mtu', '1450', 'up');
  ip('addr', 'add', '198.18.1.0/32', 'dev', 'flannel.1');
  const mac = (JSON.parse(ip('-j', 'link', 'show', 'flannel.1')) as Array<{ address: string }>)[0]!.address;
  await putLease(p, '198.18.1.0/24', NODE_IP, mac);
  const peers = [
    { subnet: '198.18.2.0/24', vtep: '198.18.2.0', pub: '198.51.100.12', mac: '0a:00:00:00:00:02' },
    { subnet: '198.18.3.0/24', vtep: '198.18.3.0', pub: '198.51.100.13', mac: '0a:00:00:00:00:03' },
  ];
  for (const peer of peers) {
    await putLease(p, peer.subnet, peer.pub, peer.mac);
    ip('neigh', 'replace', peer.vtep, 'lladdr', peer.mac, 'dev', 'flannel.1', 'nud', 'permanent');
    inNs(ns, 'bridge', ['fdb', 'append', peer.mac, 'dev', 'flannel.1', 'dst', peer.pub, 'self', 'permanent']);
    ip('route', 'replace', peer.subnet, 'via', peer.vtep, 'dev', 'flannel.1', 'onlink');
  }
  const subnetFile = join(dir, 'subnet.env');
  writeFileSync(subnetFile, 'FLANNEL_NETWORK=198.18.0.0/16\nFLANNEL_SUBNET=198.18.1.1/24\nFLANNEL_MTU=1450\nFLANNEL_IPMASQ=true\n');
  const check = () => weftctl(['check', '--subnet-file', subnetFile], env);

  const ok = await check();
  t.is(ok.code, 0, ok.stdout + ok.stderr);
  t.regex(ok.stdout, /node: 198\.51\.100\.11 198\.18\.1\.0\/24, device flannel\.1, 2 peer\(s\)/);
  t.regex(ok.stdout, /198\.18\.2\.0\/24\s+198\.51\.100\.12\s+0a:00:00:00:00:02\s+ok\s+ok\s+ok/);
  t.regex(ok.stdout, /consistent: kernel state matches etcd/);

  // Drift: a missing route, a peer's FDB entry pointing at an old IP, a leftover neighbor of a
  // node that left, and an MTU the subnet file disagrees with.
  ip('route', 'del', '198.18.3.0/24');
  inNs(ns, 'bridge', ['fdb', 'replace', '0a:00:00:00:00:02', 'dev', 'flannel.1', 'dst', '198.51.100.99', 'self', 'permanent']);
  ip('neigh', 'replace', '198.18.9.0', 'lladdr', '0a:00:00:00:00:09', 'dev', 'flannel.1', 'nud', 'permanent');
  writeFileSync(subnetFile, 'FLANNEL_NETWORK=198.18.0.0/16\nFLANNEL_SUBNET=198.18.1.1/24\nFLANNEL_MTU=1400\nFLANNEL_IPMASQ=true\n');
  const bad = await check();
  t.is(bad.code, 1, bad.stdout + bad.stderr);
  t.regex(bad.stdout, /missing route: 198\.18\.3\.0\/24 via 198\.18\.3\.0 dev flannel\.1 onlink/);
  t.regex(bad.stdout, /wrong\s+fdb: 0a:00:00:00:00:02 dst 198\.51\.100\.99, lease says 198\.51\.100\.12/);
  t.regex(bad.stdout, /extra\s+neighbor: 198\.18\.9\.0 lladdr 0a:00:00:00:00:09 dev flannel\.1/);
  t.regex(bad.stdout, /wrong\s+subnet-file: FLANNEL_MTU=1400, flannel\.1 MTU is 1450/);
  t.regex(bad.stdout, /inconsistent: 4 difference\(s\)/);
  const json = JSON.parse((await weftctl(['check', '--subnet-file', subnetFile, '-o', 'json'], env)).stdout);
  t.false(json.consistent);
  t.deepEqual(json.findings.map((f: { kind: string; object: string }) => `${f.kind} ${f.object}`).sort(), ['extra neighbor', 'missing route', 'wrong fdb', 'wrong subnet-file']);

  unlinkSync(subnetFile);
  ip('link', 'del', 'flannel.1');
  const gone = await check();
  t.is(gone.code, 1);
  t.regex(gone.stdout, /missing device: flannel\.1 \(vxlan VNI 1, UDP 8472\)/);
  t.regex(gone.stdout, /missing subnet-file/);
});

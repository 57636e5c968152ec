/**
 * The kube subnet manager against the lab API server (lab/apiserver, backed by a real etcd):
 * podCIDR lease, annotations, NetworkUnavailable, the Node informer (peer add / update / delete,
 * malformed and unannotated nodes), an API server outage with a 410 relist, a node whose podCIDR
 * comes later. etcd and the API server run in a control-plane namespace on a test underlay
 * (198.51.100.0/24); the manager runs in a child process (test/priv/kube-driver.ts) inside a node
 * namespace, so no socket is opened in the root namespace.
 */
import { spawn, type ChildProcess } from 'node:child_process';
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { createInterface } from 'node:readline';
import test from 'ava';
import { EtcdServer, killAndWait } from '../../lab/etcd.ts';
import { eventually, Scope, sh } from '../helpers/netns.ts';

const CP_IP = '198.51.100.2';
const NODE_IP = '198.51.100.11';
const API_PORT = 6443;
const P = 'flannel.alpha.coreos.com/';
const DRIVER = new URL('./kube-driver.ts', import.meta.url).pathname;
const API_MAIN = new URL('../../lab/apiserver/main.ts', import.meta.url).pathname;

type Msg = Record<string, any>;

/** One kube-driver.ts process and its message stream. */
class Driver {
  readonly child: ChildProcess;
  readonly messages: Msg[] = [];
  #next = 1;
  readonly #waiting = new Map<number, (m: Msg) => void>();
  stderr = '';

  constructor(netns: string, args: string[]) {
    this.child = spawn('nsenter', [`--net=/run/netns/${netns}`, '--', process.execPath, DRIVER, ...args], { stdio: ['pipe', 'pipe', 'pipe'] });
    this.child.stderr!.on('data', (d) => (this.stderr = (this.stderr + d).slice(-8000)));
    createInterface({ input: this.child.stdout! }).on('line', (line) => {
      let m: Msg;
      try {
        m = JSON.parse(line);
      } catch {
        return;
      }
      this.messages.push(m);
      if (typeof m.id === 'number') this.#waiting.get(m.id)?.(m);
    });
  }

  /** Sends one request; resolves with its answer (`ok`, `result` / `error`). */
  request(op: string, args: Msg = {}, timeoutMs = 30_000): Promise<Msg> {
    const id = this.#next++;
    return new Promise((resolve, reject) => {
      const timer = setTimeout(() => reject(new Error(`driver op ${op} timed out; stderr: ${this.stderr}`)), timeoutMs);
      this.#waiting.set(id, (m) => {
        clearTimeout(timer);
        this.#waiting.delete(id);
        resolve(m);
      });
      this.child.stdin!.write(`${JSON.stringify({ id, op, ...args })}\n`);
    });
  }

  async call(op: string, args: Msg = {}, timeoutMs?: number): Promise<any> {
    const m = await this.request(op, args, timeoutMs);
    if (!m.ok) throw new Error(`${op}: ${m.error}`);
    return m.result;
  }

  /** A raw API request (the test's kubectl). */
  async api(method: string, path: string, body?: unknown, contentType?: string): Promise<{ status: number; body: any }> {
    return this.call('api', { method, path, body, contentType });
  }

  events(kind: string): Msg[] {
    return this.messages.filter((m) => m.event === kind);
  }

  /** Waits for a message after index `from` that satisfies `pred`. */
  async waitFor(pred: (m: Msg) => boolean, opts: { from?: number; timeoutMs?: number } = {}): Promise<Msg | undefined> {
    let found: Msg | undefined;
    await eventually(() => (found = this.messages.slice(opts.from ?? 0).find(pred)), opts.timeoutMs ?? 15_000, 50);
    return found;
  }

  async stop(): Promise<void> {
    if (this.child.exitCode !== null || this.child.signalCode !== null) return;
    if (this.child.pid) await killAndWait(this.child.pid, 'SIGKILL', { graceMs: 5000 });
  }
}

interface Env {
  scope: Scope;
  cp: string;
  nodeNs: string;
  dir: string;
  etcd: EtcdServer;
  netConf: string;
  apiPid?: number;
}

let env: Env;

/** Starts the lab API server in the control-plane namespace on `port`; its stderr lines go to `log`. */
async function startApi(port: number, opts: { args?: string[]; log?: string[] } = {}): Promise<number> {
  const args = [API_MAIN, '--listen', `${CP_IP}:${port}`, '--etcd', env.etcd.endpoint, '--log-level', 'warn', ...(opts.args ?? [])];
  const child = spawn('nsenter', [`--net=/run/netns/${env.cp}`, '--', process.execPath, ...args], { stdio: ['ignore', 'pipe', 'pipe'] });
  let err = '';
  createInterface({ input: child.stderr! }).on('line', (line) => {
    err = `${err}${line}\n`.slice(-4000);
    opts.log?.push(line);
  });
  env.scope.defer(() => {
    if (child.exitCode === null && child.signalCode === null) child.kill('SIGKILL');
  });
  await new Promise<void>((resolve, reject) => {
    const timer = setTimeout(() => reject(new Error(`API server did not start: ${err}`)), 30_000);
    createInterface({ input: child.stdout! }).on('line', (line) => {
      if (!/listening on/.test(line)) return;
      clearTimeout(timer);
      resolve();
    });
    child.once('exit', (code) => reject(new Error(`API server exited (${code}): ${err}`)));
  });
  return child.pid!;
}

function driver(node: string): Driver {
  const d = new Driver(env.nodeNs, ['drive', '--server', `http://${CP_IP}:${API_PORT}`, '--node', node, '--net-conf', env.netConf, '--etcd', env.etcd.endpoint]);
  env.scope.defer(() => d.stop());
  return d;
}

const attrs = (mac: string, ip = NODE_IP) => ({ publicIP: ip, backendType: 'vxlan', backendData: { VNI: 1, VtepMAC: mac } });

function peerNode(name: string, o: { cidr?: string; mac?: string; ip?: string; annotations?: Record<string, string> } = {}) {
  const annotations = o.annotations ?? {
    [`${P}kube-subnet-manager`]: 'true',
    [`${P}backend-type`]: 'vxlan',
    [`${P}backend-data`]: JSON.stringify({ VNI: 1, VtepMAC: o.mac ?? '0a:00:00:00:02:01' }),
    [`${P}public-ip`]: o.ip ?? '198.51.100.12',
  };
  return { apiVersion: 'v1', kind: 'Node', metadata: { name, annotations }, spec: o.cidr === undefined ? {} : { podCIDR: o.cidr } };
}

test.before(async () => {
  const scope = new Scope();
  try {
    const cp = scope.netns('kcp');
    const nodeNs = scope.netns('kn');
    sh('ip', ['-n', cp, 'link', 'add', 'eth0', 'type', 'veth', 'peer', 'name', 'eth0', 'netns', nodeNs]);
    sh('ip', ['-n', cp, 'addr', 'add', `${CP_IP}/24`, 'dev', 'eth0']);
    sh('ip', ['-n', nodeNs, 'addr', 'add', `${NODE_IP}/24`, 'dev', 'eth0']);
    sh('ip', ['-n', cp, 'link', 'set', 'eth0', 'up']);
    sh('ip', ['-n', nodeNs, 'link', 'set', 'eth0', 'up']);
    const dir = mkdtempSync(join(tmpdir(), 'weft-kube-'));
    scope.defer(() => rmSync(dir, { recursive: true, force: true }));
    const etcd = new EtcdServer({ netns: cp, ip: CP_IP, dataDir: join(dir, 'etcd'), logFile: join(dir, 'etcd.log') });
    scope.defer(() => etcd.destroy());
    await etcd.start();
    const netConf = join(dir, 'net-conf.json');
    writeFileSync(netConf, JSON.stringify({ Network: '198.18.0.0/16', Backend: { Type: 'vxlan', VNI: 1, Port: 8472 } }));
    env = { scope, cp, nodeNs, dir, etcd, netConf };
    env.apiPid = await startApi(API_PORT);
  } catch (err) {
    await scope.cleanup();
    throw err;
  }
});

test.after.always(async () => {
  await env?.scope.cleanup();
});

test.serial('acquire: lease from podCIDR, annotations patched only when changed, MAC reuse, public-ip-overwrite, NetworkUnavailable=False', async (t) => {
  const d = driver('n1');
  t.is((await d.api('POST', '/api/v1/nodes', peerNode('n1', { cidr: '198.18.1.0/24', annotations: { 'example.com/keep': 'me' } }))).status, 201);
  // A condition set by someone else (the kubelet) must survive our status patch.
  const st = await d.api('PATCH', '/api/v1/nodes/n1/status', { status: { conditions: [{ type: 'Ready', status: 'True', reason: 'KubeletReady' }] } }, 'application/strategic-merge-patch+json');
  t.is(st.status, 200, JSON.stringify(st.body));
  t.deepEqual(await d.call('config'), { network: '198.18.0.0/16', vni: 1 });
  t.is(await d.call('previousMac', { vni: 1 }), null, 'no annotation yet: nothing to reuse');

  const lease = await d.call('acquire', { attrs: attrs('0a:00:00:00:01:01') });
  t.is(lease.subnet, '198.18.1.0/24');
  t.is(lease.publicIP, NODE_IP);
  t.is(lease.expiresAt, undefined, 'a podCIDR never expires: nothing for the renewer to do');
  const n = (await d.api('GET', '/api/v1/nodes/n1')).body;
  t.like(n.metadata.annotations, {
    'example.com/keep': 'me',
    [`${P}kube-subnet-manager`]: 'true',
    [`${P}backend-type`]: 'vxlan',
    [`${P}backend-data`]: '{"VNI":1,"VtepMAC":"0a:00:00:00:01:01"}',
    [`${P}public-ip`]: NODE_IP,
  });
  t.is(await d.call('previousMac', { vni: 1 }), '0a:00:00:00:01:01', 'after a reboot the daemon can recreate the device with this MAC');
  t.is(await d.call('previousMac', { vni: 2 }), null);

  // Same attributes again: nothing to patch, the object is not written.
  const rv = n.metadata.resourceVersion;
  await d.call('acquire', { attrs: attrs('0a:00:00:00:01:01') });
  t.is((await d.api('GET', '/api/v1/nodes/n1')).body.metadata.resourceVersion, rv);
  const renewed = await d.call('renew', { lease });
  t.deepEqual(renewed, lease);
  t.is((await d.api('GET', '/api/v1/nodes/n1')).body.metadata.resourceVersion, rv, 'renew writes nothing');

  // An operator's public-ip-overwrite wins.
  await d.api('PATCH', '/api/v1/nodes/n1', { metadata: { annotations: { [`${P}public-ip-overwrite`]: '203.0.113.7' } } }, 'application/merge-patch+json');
  const over = await d.call('acquire', { attrs: attrs('0a:00:00:00:01:01') });
  t.is(over.publicIP, '203.0.113.7');
  t.is((await d.api('GET', '/api/v1/nodes/n1')).body.metadata.annotations[`${P}public-ip`], '203.0.113.7');
  await d.api('PATCH', '/api/v1/nodes/n1', { metadata: { annotations: { [`${P}public-ip-overwrite`]: null } } }, 'application/merge-patch+json');
  t.is((await d.call('acquire', { attrs: attrs('0a:00:00:00:01:01') })).publicIP, NODE_IP);

  t.true(await d.call('ready', { subnet: '198.18.1.0/24' }));
  const conds = (await d.api('GET', '/api/v1/nodes/n1')).body.status.conditions as Array<Record<string, string>>;
  const nu = conds.find((c) => c.type === 'NetworkUnavailable');
  t.like(nu, { status: 'False', reason: 'WeftIsUp' });
  t.truthy(nu?.lastTransitionTime);
  t.like(conds.find((c) => c.type === 'Ready'), { status: 'True', reason: 'KubeletReady' }, 'conditions merge by type');
  // Ready again: already set, no write.
  const rv2 = (await d.api('GET', '/api/v1/nodes/n1')).body.metadata.resourceVersion;
  await d.call('ready', { subnet: '198.18.1.0/24' });
  t.is((await d.api('GET', '/api/v1/nodes/n1')).body.metadata.resourceVersion, rv2);
  await d.call('close');
});

test.serial('podCIDR not assigned yet: one log line naming the cause, then picked up from the watch', async (t) => {
  const d = driver('n5');
  t.is((await d.api('POST', '/api/v1/nodes', peerNode('n5', { annotations: {} }))).status, 201);
  await d.call('config');
  const acquiring = d.request('acquire', { attrs: attrs('0a:00:00:00:05:01', '198.51.100.15') }, 60_000);
  t.truthy(await d.waitFor((m) => m.event === 'log' && /allocate-node-cidrs/.test(m.msg)), 'the log line names --allocate-node-cidrs');
  // A while later: still one line, still waiting.
  await new Promise((r) => setTimeout(r, 6000));
  t.is(d.messages.filter((m) => m.event === 'log' && /podCIDR/.test(m.msg) && m.level !== 'info').length, 1, 'exactly one line while waiting');
  t.false(d.messages.some((m) => m.id !== undefined && m.result?.subnet), 'no lease without a podCIDR');
  const at = Date.now();
  t.is((await d.api('PATCH', '/api/v1/nodes/n5', { spec: { podCIDR: '198.18.5.0/24' } }, 'application/merge-patch+json')).status, 200);
  const m = await acquiring;
  t.true(m.ok, m.error);
  t.is(m.result.subnet, '198.18.5.0/24');
  // The driver re-reads the Node only every 60 s: this fast, it came from the watch.
  t.true(Date.now() - at < 2000, `picked up from the watch (${Date.now() - at} ms)`);
  t.is((await d.api('GET', '/api/v1/nodes/n5')).body.metadata.annotations[`${P}public-ip`], '198.51.100.15');
  await d.call('close');
});

test.serial('podCIDR outside Network: a clear error, no annotations written', async (t) => {
  const d = driver('n6');
  await d.api('POST', '/api/v1/nodes', peerNode('n6', { cidr: '203.0.113.0/24', annotations: {} }));
  const m = await d.request('acquire', { attrs: attrs('0a:00:00:00:06:01') });
  t.false(m.ok);
  t.is(m.name, 'PodCIDRError');
  t.regex(m.error, /podCIDR 203\.0\.113\.0\/24 is outside the network 198\.18\.0\.0\/16/);
  t.deepEqual((await d.api('GET', '/api/v1/nodes/n6')).body.metadata.annotations ?? {}, {});
  await d.api('DELETE', '/api/v1/nodes/n6');
  await d.call('close');
});

test.serial('informer: peers added, changed, removed; malformed and unannotated nodes skipped', async (t) => {
  const d = driver('n1');
  await d.call('acquire', { attrs: attrs('0a:00:00:00:01:01') });
  await d.call('watch');
  const snap = await d.waitFor((m) => m.event === 'snapshot');
  // n5 (annotated by the previous test) is a peer; n1 is us and never appears.
  t.deepEqual(snap!.leases.map((l: Msg) => l.subnet), ['198.18.5.0/24']);

  let from = d.messages.length;
  await d.api('POST', '/api/v1/nodes', peerNode('n2', { cidr: '198.18.2.0/24' }));
  const put = await d.waitFor((m) => m.event === 'put' && m.lease.subnet === '198.18.2.0/24', { from });
  t.like(put!.lease, { publicIP: '198.51.100.12', backendType: 'vxlan', backendData: { VNI: 1, VtepMAC: '0a:00:00:00:02:01' } });

  // A change that is not ours to care about (a label) produces no event.
  from = d.messages.length;
  await d.api('PATCH', '/api/v1/nodes/n2', { metadata: { labels: { zone: 'a' } } }, 'application/merge-patch+json');
  // A MAC change and an IP change do.
  await d.api('PATCH', '/api/v1/nodes/n2', { metadata: { annotations: { [`${P}backend-data`]: '{"VNI":1,"VtepMAC":"0a:00:00:00:02:02"}' } } }, 'application/merge-patch+json');
  t.truthy(await d.waitFor((m) => m.event === 'put' && m.lease.backendData.VtepMAC === '0a:00:00:00:02:02', { from }));
  t.is(d.messages.slice(from).filter((m) => m.event === 'put' || m.event === 'delete').length, 1, 'the label change was silent');
  from = d.messages.length;
  await d.api('PATCH', '/api/v1/nodes/n2', { metadata: { annotations: { [`${P}public-ip`]: '198.51.100.22' } } }, 'application/merge-patch+json');
  t.truthy(await d.waitFor((m) => m.event === 'put' && m.lease.publicIP === '198.51.100.22', { from }));

  // Annotations removed -> delete; back -> put; node deleted -> delete.
  from = d.messages.length;
  await d.api('PATCH', '/api/v1/nodes/n2', { metadata: { annotations: { [`${P}backend-data`]: null } } }, 'application/merge-patch+json');
  t.truthy(await d.waitFor((m) => m.event === 'delete' && m.subnet === '198.18.2.0/24', { from }));
  from = d.messages.length;
  await d.api('PATCH', '/api/v1/nodes/n2', { metadata: { annotations: { [`${P}backend-data`]: '{"VNI":1,"VtepMAC":"0a:00:00:00:02:03"}' } } }, 'application/merge-patch+json');
  t.truthy(await d.waitFor((m) => m.event === 'put' && m.lease.backendData.VtepMAC === '0a:00:00:00:02:03', { from }));
  from = d.messages.length;
  t.is((await d.api('DELETE', '/api/v1/nodes/n2')).status, 200);
  t.truthy(await d.waitFor((m) => m.event === 'delete' && m.subnet === '198.18.2.0/24', { from }));

  // Unannotated: counted, not logged, not leased.
  from = d.messages.length;
  await d.api('POST', '/api/v1/nodes', peerNode('n3', { cidr: '198.18.3.0/24', annotations: {} }));
  t.truthy(await d.waitFor((m) => m.event === 'pending' && m.count === 1, { from }));

  // Malformed: bad JSON, bad MAC, outside Network, overlapping ours -> one line each, never leased.
  from = d.messages.length;
  await d.api('POST', '/api/v1/nodes', peerNode('n4', { cidr: '198.18.4.0/24', annotations: { ...peerNode('x').metadata.annotations, [`${P}backend-data`]: '{"VNI":1,' } }));
  await d.api('POST', '/api/v1/nodes', peerNode('n7', { cidr: '198.18.7.0/24', mac: 'ff:ff:ff:ff:ff:ff' }));
  await d.api('POST', '/api/v1/nodes', peerNode('n8', { cidr: '203.0.113.0/24' }));
  await d.api('POST', '/api/v1/nodes', peerNode('n9', { cidr: '198.18.1.128/25' }));
  for (const [name, re] of [['n4', /not JSON/], ['n7', /VtepMAC/], ['n8', /outside the network/], ['n9', /overlaps our subnet/]] as const) {
    const m = await d.waitFor((x) => x.event === 'malformed' && x.node === name, { from });
    t.truthy(m, `${name} reported`);
    t.regex(m?.why ?? '', re);
  }
  // Touch them repeatedly (as heartbeats do): no new lines.
  for (let i = 0; i < 3; i++) {
    for (const name of ['n4', 'n7']) await d.api('PATCH', `/api/v1/nodes/${name}`, { metadata: { labels: { beat: String(i) } } }, 'application/merge-patch+json');
  }
  await new Promise((r) => setTimeout(r, 1000));
  const lines = d.messages.slice(from).filter((m) => m.event === 'log' && /ignoring node/.test(m.msg));
  t.is(lines.length, 4, lines.map((l) => l.msg).join('\n'));
  t.false(d.messages.slice(from).some((m) => m.event === 'put'), 'nothing malformed became a lease');
  t.deepEqual((await d.call('list')).map((l: Msg) => l.subnet), ['198.18.5.0/24']);
  for (const name of ['n3', 'n4', 'n7', 'n8', 'n9']) await d.api('DELETE', `/api/v1/nodes/${name}`);
  await d.call('close');
});

test.serial('API server down, changes made elsewhere and etcd compacted: the informer relists (410) and misses nothing', async (t) => {
  const d = driver('n1');
  await d.call('acquire', { attrs: attrs('0a:00:00:00:01:01') });
  for (const [name, cidr] of [['p1', '198.18.11.0/24'], ['p2', '198.18.12.0/24'], ['p3', '198.18.13.0/24']]) {
    await d.api('POST', '/api/v1/nodes', peerNode(name, { cidr, mac: `0a:00:00:00:0b:${cidr.split('.')[2]}` }));
  }
  await d.call('watch');
  const snap = await d.waitFor((m) => m.event === 'snapshot');
  t.deepEqual(snap!.leases.map((l: Msg) => l.subnet).sort(), ['198.18.11.0/24', '198.18.12.0/24', '198.18.13.0/24', '198.18.5.0/24']);

  // Our server goes away; a second one (same etcd) takes the changes, then etcd is compacted so
  // the informer's resourceVersion is gone by the time our server is back.
  const from = d.messages.length;
  await killAndWait(env.apiPid!, 'SIGTERM');
  t.truthy(await d.waitFor((m) => m.event === 'log' && /node watch: .*restarting/.test(m.msg), { from }), 'the informer error is noticed');
  const other = await startApi(API_PORT + 1);
  const viaOther = new Driver(env.nodeNs, ['drive', '--server', `http://${CP_IP}:${API_PORT + 1}`, '--node', 'nobody', '--net-conf', env.netConf, '--etcd', env.etcd.endpoint]);
  env.scope.defer(() => viaOther.stop());
  t.is((await viaOther.api('DELETE', '/api/v1/nodes/p1')).status, 200);
  await viaOther.api('PATCH', '/api/v1/nodes/p2', { metadata: { annotations: { [`${P}backend-data`]: '{"VNI":1,"VtepMAC":"0a:00:00:00:0c:0c"}' } } }, 'application/merge-patch+json');
  await viaOther.api('POST', '/api/v1/nodes', peerNode('p4', { cidr: '198.18.14.0/24', mac: '0a:00:00:00:0b:0e' }));
  for (let i = 0; i < 5; i++) await viaOther.api('PATCH', '/api/v1/nodes/p3', { metadata: { labels: { churn: String(i) } } }, 'application/merge-patch+json');
  await viaOther.call('compact');
  await viaOther.call('close');
  await killAndWait(other, 'SIGTERM');

  env.apiPid = await startApi(API_PORT);
  t.truthy(await d.waitFor((m) => m.event === 'delete' && m.subnet === '198.18.11.0/24', { from, timeoutMs: 20_000 }), 'deleted while away');
  t.truthy(await d.waitFor((m) => m.event === 'put' && m.lease.subnet === '198.18.12.0/24' && m.lease.backendData.VtepMAC === '0a:00:00:00:0c:0c', { from }), 'changed while away');
  t.truthy(await d.waitFor((m) => m.event === 'put' && m.lease.subnet === '198.18.14.0/24', { from }), 'added while away');
  t.truthy(await d.waitFor((m) => m.event === 'log' && /ok again/.test(m.msg), { from }));
  t.truthy(d.messages.slice(from).find((m) => m.event === 'log' && /node list: re-listed \d+ node\(s\), 3 change\(s\) since the watch stopped/.test(m.msg)), 'the changes came from a relist (410), not a replayed watch');
  const changes = d.messages.slice(from).filter((m) => m.event === 'put' || m.event === 'delete');
  t.is(changes.length, 3, `exactly the three real changes: ${JSON.stringify(changes)}`);
  t.is(d.events('snapshot').length, 1, 'relist changes arrive as events, not a second snapshot');

  // The watch is alive again after the relist.
  const after = d.messages.length;
  await d.api('DELETE', '/api/v1/nodes/p4');
  t.truthy(await d.waitFor((m) => m.event === 'delete' && m.subnet === '198.18.14.0/24', { from: after }));
  for (const name of ['p2', 'p3']) await d.api('DELETE', `/api/v1/nodes/${name}`);
  await d.call('close');
});

test.serial('our annotations removed by someone else are written back', async (t) => {
  const d = driver('n1');
  await d.call('acquire', { attrs: attrs('0a:00:00:00:01:01') });
  await d.call('watch');
  await d.waitFor((m) => m.event === 'snapshot');
  await d.api('PATCH', '/api/v1/nodes/n1', { metadata: { annotations: { [`${P}backend-data`]: null, [`${P}public-ip`]: '198.51.100.99' } } }, 'application/merge-patch+json');
  t.true(
    await eventually(async () => {
      const a = (await d.api('GET', '/api/v1/nodes/n1')).body.metadata.annotations;
      return a[`${P}backend-data`] === '{"VNI":1,"VtepMAC":"0a:00:00:00:01:01"}' && a[`${P}public-ip`] === NODE_IP;
    }, 10_000),
  );
  await d.call('close');
});

test.serial('API server restart without compaction: the watch resumes from its resourceVersion, no relist, one log line', async (t) => {
  const d = driver('n1');
  await d.call('acquire', { attrs: attrs('0a:00:00:00:01:01') });
  await d.call('watch');
  await d.waitFor((m) => m.event === 'snapshot');
  const from = d.messages.length;
  await killAndWait(env.apiPid!, 'SIGTERM');
  t.truthy(await d.waitFor((m) => m.event === 'log' && /node watch: .*restarting/.test(m.msg), { from }));
  // Down for several backoff rounds (200 ms doubling to 1 s in the driver).
  await new Promise((r) => setTimeout(r, 4000));
  const apiLog: string[] = [];
  env.apiPid = await startApi(API_PORT, { args: ['--log-level', 'debug', '--bookmark-interval', '1s'], log: apiLog });
  t.truthy(await d.waitFor((m) => m.event === 'log' && /ok again/.test(m.msg), { from, timeoutMs: 20_000 }));
  const failures = d.messages.slice(from).filter((m) => m.event === 'log' && /node watch: .*restarting/.test(m.msg));
  t.true(failures.length <= 2, `an outage is not logged once per retry:\n${failures.map((f) => f.msg).join('\n')}`);
  await d.api('POST', '/api/v1/nodes', peerNode('q1', { cidr: '198.18.21.0/24', mac: '0a:00:00:00:15:01' }));
  t.truthy(await d.waitFor((m) => m.event === 'put' && m.lease.subnet === '198.18.21.0/24', { from }));
  t.false(d.messages.slice(from).some((m) => m.event === 'log' && /node list:/.test(m.msg)), 'resumed from the resourceVersion, no relist needed');
  // The reconnect asked for bookmarks (client-node's informer does not by itself) and named a
  // resourceVersion; no list request reached this server.
  const urls = apiLog
    .map((l) => (l.startsWith('{') ? (JSON.parse(l) as { method?: string; url?: string }) : {}))
    .filter((r) => r.method === 'GET' && r.url?.startsWith('/api/v1/nodes'))
    .map((r) => r.url!);
  const watches = urls.filter((u) => /[?&]watch=true/.test(u) && !/fieldSelector/.test(u));
  t.true(watches.length > 0, urls.join('\n'));
  for (const u of watches) {
    t.regex(u, /allowWatchBookmarks=true/);
    t.regex(u, /resourceVersion=[1-9]\d*/);
  }
  t.false(urls.some((u) => !/watch=true/.test(u) && /^\/api\/v1\/nodes(\?|$)/.test(u)), `no relist: ${urls.join('\n')}`);
  await d.api('DELETE', '/api/v1/nodes/q1');
  t.truthy(await d.waitFor((m) => m.event === 'delete' && m.subnet === '198.18.21.0/24', { from }));
  await d.call('close');
});

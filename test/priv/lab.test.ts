/**
 * The README's first command end to end: `scripts/lab.sh up` builds a 3-node lab (etcd, weftd on
 * every node, two pods per node through the CNI binary), then `down` removes it, twice. The lab
 * gets its own name, a `wt` namespace prefix (test.sh's leftover check sees strays) and a temp
 * state dir, so it cannot collide with a user's lab. Bootstrap is skipped: the suite has run it,
 * and rebuilding dist/ here would swap binaries under other tests.
 */
import test from 'ava';
import { spawn } from 'node:child_process';
import { existsSync, mkdtempSync, readdirSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { suffix } from '../helpers/netns.ts';

const name = `lt${suffix().slice(0, 4)}`;
const stateDir = mkdtempSync(join(tmpdir(), 'wt-lab-'));
const flags = ['--name', name, '--prefix', 'wt', '--state-dir', stateDir];

function lab(args: string[]): Promise<{ code: number | null; out: string; err: string }> {
  return new Promise((res, rej) => {
    const child = spawn('bash', ['scripts/lab.sh', ...args], { env: { ...process.env, WEFT_LAB_SKIP_BOOTSTRAP: '1' } });
    let out = '';
    let err = '';
    child.stdout.on('data', (d) => (out += d));
    child.stderr.on('data', (d) => (err += d));
    child.on('error', rej);
    child.on('close', (code) => res({ code, out, err }));
  });
}

const labNamespaces = () => (existsSync('/run/netns') ? readdirSync('/run/netns') : []).filter((n) => n.endsWith(`-${name}`));

test.after.always(async () => {
  await lab(['down', ...flags]);
  rmSync(stateDir, { recursive: true, force: true });
});

test.serial('lab.sh up (Kubernetes mode) brings up 3 nodes and 6 pods that all reach each other and a Service; down removes everything, twice', async (t) => {
  t.timeout(300_000);
  const up = await lab(['up', ...flags]);
  t.is(up.code, 0, up.out + up.err);
  // Progress, as it goes.
  t.regex(up.out, /etcd ready at http:\/\/198\.51\.100\.2:2379/);
  t.regex(up.out, /API server ready at http:\/\/198\.51\.100\.2:6443/);
  for (const n of [1, 2, 3]) {
    t.regex(
      up.out,
      new RegExp(
        `node n${n} 198\\.51\\.100\\.1${n} \\(wt-n${n}-${name}\\): weftd ready, subnet 198\\.18\\.\\d+\\.1/24, MTU 1450, podCIDR 198\\.18\\.\\d+\\.0/24, NetworkUnavailable=False \\(WeftIsUp\\)`,
      ),
    );
  }
  for (const p of ['n1p1', 'n1p2', 'n2p1', 'n2p2', 'n3p1', 'n3p2']) t.regex(up.out, new RegExp(`pod ${p} on n\\d \\(wt-${p}-${name}\\): 198\\.(18|19)\\.\\d+\\.\\d+`));
  // The ping matrix: every pod reaches every other pod.
  t.regex(up.out, /30\/30 pings ok/);
  t.notRegex(up.out, /FAIL/);
  // The Service: every pod reaches it over TCP and UDP; the trace walks DNAT, route, VXLAN.
  t.regex(up.out, /Service default\/echo: ClusterIP 198\.19\.\d+\.\d+/);
  t.regex(up.out, /every pod calls the ClusterIP: 6\/6 ok/);
  t.regex(up.out, /service\s+dnat: service-ips\[198\.19\.[\d.]+ \. tcp \. 80\][\s\S]*encap\s+198\.51\.100\.1\d -> 198\.51\.100\.1\d UDP 8472 VNI 1/);
  // weftctl get nodes: one row per Node, and check finds every node consistent.
  const rows = up.out.split('\n').filter((l) => /^n[123]\s+198\.51\.100\.1[123]\s+198\.18\.\d+\.0\/24\s+([0-9a-f]{2}:){5}[0-9a-f]{2}\s+198\.51\.100\.1[123]\s+False\/WeftIsUp/.test(l));
  t.is(rows.length, 3, up.out);
  t.regex(up.out, /weftctl check: 3\/3 node\(s\) consistent with the Node annotations/);
  t.regex(up.out, /Explore it:[\s\S]*exec[\s\S]*tcpdump -ni br0 udp port 8472[\s\S]*lab\.sh down/);

  t.is(labNamespaces().length, 1 + 1 + 3 + 6, labNamespaces().join(' '));
  const exec = await lab(['exec', ...flags, 'n1', 'weftctl', 'get', 'nodes', '-o', 'json']);
  t.is(exec.code, 0, exec.err);
  t.is(JSON.parse(exec.out).items.length, 3);
  const kubectl = await lab(['exec', ...flags, 'n2', 'kubectl', 'get', 'nodes', '-o', 'name']);
  t.is(kubectl.code, 0, kubectl.err);
  t.deepEqual(kubectl.out.trim().split('\n'), ['node/n1', 'node/n2', 'node/n3']);
  const status = await lab(['status', ...flags]);
  t.is(status.code, 0, status.err);
  t.is(status.out.match(/weftd running/g)?.length, 3);
  const again = await lab(['up', ...flags]);
  t.is(again.code, 1);
  t.regex(again.err, /already up/);

  const down = await lab(['down', ...flags]);
  t.is(down.code, 0, down.out + down.err);
  t.deepEqual(labNamespaces(), []);
  t.false(existsSync(join(stateDir, name)));
  const down2 = await lab(['down', ...flags]);
  t.is(down2.code, 0, down2.out + down2.err);
  t.regex(down2.out, /nothing to tear down/);
});

test.serial('lab.sh up --etcd: weftd leases subnets in etcd, every pod reaches every other; down removes it', async (t) => {
  t.timeout(300_000);
  const up = await lab(['up', ...flags, '--etcd', '--nodes', '2', '--pods', '1']);
  t.is(up.code, 0, up.out + up.err);
  t.regex(up.out, /weftd in etcd mode/);
  t.notRegex(up.out, /API server/);
  t.regex(up.out, /2\/2 pings ok/);
  const rows = up.out.split('\n').filter((l) => /^198\.51\.100\.1[12]\s+198\.18\.\d+\.0\/24\s+([0-9a-f]{2}:){5}[0-9a-f]{2}\s+23h59m/.test(l));
  t.is(rows.length, 2, up.out);
  t.regex(up.out, /weftctl check: 2\/2 node\(s\) consistent with etcd/);
  const down = await lab(['down', ...flags]);
  t.is(down.code, 0, down.out + down.err);
  t.deepEqual(labNamespaces(), []);
});

test('lab.sh rejects addresses outside the documentation ranges and unknown commands', async (t) => {
  const bad = await lab(['up', ...flags, '--underlay', '10.0.0']);
  t.is(bad.code, 2);
  t.regex(bad.err, /--underlay must be 198\.51\.100 or 203\.0\.113/);
  const unknown = await lab(['frob', ...flags]);
  t.is(unknown.code, 2);
  t.regex(unknown.err, /unknown lab command "frob"/);
});

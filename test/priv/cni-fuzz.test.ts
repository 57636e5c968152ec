/**
 * A bounded, seeded fuzz run of mutated CNI requests (stdin JSON and CNI_* env, every command,
 * every CNI version) through the standalone plugin and through the fast path (a weftd-style
 * server with worker threads): every reply is a CNI result or error JSON with exit 0 or 1, and
 * once the attachments that did succeed are deleted nothing is left (no veth, no allocation).
 * Namespace paths are only the test's own pods, or things that are no namespace at all: never
 * a path that could name the machine's root namespace.
 */
import test, { type ExecutionContext } from 'ava';
import { execFileSync } from 'node:child_process';
import { existsSync, mkdirSync, readdirSync, writeFileSync } from 'node:fs';
import { createConnection } from 'node:net';
import { join, resolve } from 'node:path';
import { encodeRequest } from '../../src/fastpath/protocol.ts';
import { cni, cniSetup, type CniEnvFixture } from '../helpers/cni.ts';
import { eventually, ipJson } from '../helpers/netns.ts';

const root = resolve(import.meta.dirname, '..', '..');
const VERSIONS = ['0.3.0', '0.3.1', '0.4.0', '1.0.0', '1.1.0'];
const COMMANDS = ['ADD', 'DEL', 'CHECK', 'GC', 'STATUS', 'VERSION'];

/** mulberry32: a small seeded PRNG, so a failure replays. */
function rng(seed: number) {
  let a = seed >>> 0;
  const next = () => {
    a = (a + 0x6d2b79f5) >>> 0;
    let t = a;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };
  const pick = <T>(xs: readonly T[]): T => xs[Math.floor(next() * xs.length)]!;
  return { next, pick, chance: (p: number) => next() < p };
}

type Rand = ReturnType<typeof rng>;

function junk(r: Rand): unknown {
  return r.pick<unknown>([null, 0, -1, 1e300, true, [], {}, '', 'x'.repeat(5000), '../../etc', 'a\u0000b', '\u{1F600}', [1, 'a'], { a: { b: [] } }, '/', ' ']);
}

interface Case {
  env: Record<string, string>;
  stdin: string;
  /** Set for an ADD of a fresh container: when it succeeds, it is deleted at the end. */
  attach?: { containerID: string; ifname: string; netns: string };
}

function mutate(r: Rand, ctx: { fx: CniEnvFixture; pods: string[]; oddPaths: string[] }, i: number): Case {
  const version = r.pick(VERSIONS);
  const command = r.chance(0.05) ? r.pick(['add', 'BOGUS', '', 'ADD ', 'DEL\u0000']) : r.pick(COMMANDS);
  const containerID = r.chance(0.15) ? String(r.pick<unknown>(['', '../x', 'a/b', '-lead', 'x'.repeat(2000), 'ok\r\nx', '.hidden'])) : `fz${i}`;
  const ifname = r.chance(0.15) ? String(r.pick(['', 'x'.repeat(16), 'a/b', 'a b', '.', '..', 'eth:0'])) : r.pick(['eth0', 'net1']);
  const netns = r.chance(0.3) ? r.pick(ctx.oddPaths) : `/run/netns/${r.pick(ctx.pods)}`;
  const env: Record<string, string> = { CNI_COMMAND: command, CNI_CONTAINERID: containerID, CNI_IFNAME: ifname, CNI_NETNS: netns, CNI_PATH: '/usr/lib/cni' };
  for (const k of Object.keys(env)) if (r.chance(0.05)) delete env[k];
  if (r.chance(0.1)) env.CNI_ARGS = String(r.pick(['K8S_POD_NAME=x;IgnoreUnknown=1', ';;;', '=', 'a=b=c', 'x'.repeat(3000)]));

  const conf: Record<string, unknown> = ctx.fx.conf({}, version);
  if (command === 'GC') conf['cni.dev/valid-attachments'] = [];
  const keys = ['cniVersion', 'name', 'type', 'subnetFile', 'dataDir', 'bridge', 'mtu', 'hairpinMode', 'isDefaultGateway', 'prevResult', 'ipMasq', 'cni.dev/valid-attachments'];
  for (let n = r.chance(0.6) ? 1 + Math.floor(r.next() * 3) : 0; n > 0; n--) {
    const k = r.pick(keys);
    if (r.chance(0.3)) delete conf[k];
    else if (k === 'bridge' && r.chance(0.5)) conf[k] = r.pick(['wtfz0', 'eth0', 'lo']);
    else if (k === 'dataDir' && r.chance(0.5)) conf[k] = join(ctx.fx.dir, 'other-data');
    else if (k === 'subnetFile' && r.chance(0.5)) conf[k] = r.pick(['/dev/zero', ctx.oddPaths[0], join(ctx.fx.dir, 'missing.env')]);
    else if (k === 'prevResult' && r.chance(0.5)) conf[k] = { cniVersion: version, interfaces: [{ name: ifname, sandbox: netns }], ips: [{ address: 'x', interface: 9 }] };
    else conf[k] = junk(r);
  }
  let stdin = JSON.stringify(conf);
  if (r.chance(0.08)) stdin = stdin.slice(0, Math.floor(r.next() * stdin.length));
  if (r.chance(0.03)) stdin = r.pick(['', 'null', '[]', '"x"', '{', '\u0000\u0001']);
  const attach = command === 'ADD' && containerID === `fz${i}` ? { containerID, ifname, netns } : undefined;
  return { env, stdin, attach };
}

/** The reply is a CNI result or error, as the spec allows for the command. */
function assertReply(t: ExecutionContext, c: Case, code: number | null, stdout: string) {
  const what = `${JSON.stringify(c.env).slice(0, 300)} ${c.stdin.slice(0, 300)} -> ${code} ${stdout.slice(0, 300)}`;
  t.true(code === 0 || code === 1, `exit 0 or 1: ${what}`);
  if (code === 1) {
    const err = JSON.parse(stdout);
    t.true(Number.isInteger(err.code) && typeof err.msg === 'string' && err.msg.length > 0, `error JSON: ${what}`);
    return;
  }
  const out = stdout.trim();
  if (c.env.CNI_COMMAND === 'VERSION') return t.true(Array.isArray(JSON.parse(out).supportedVersions), what);
  if (c.env.CNI_COMMAND === 'ADD') {
    const res = JSON.parse(out);
    return t.true(typeof res.cniVersion === 'string' && Array.isArray(res.ips) && Array.isArray(res.interfaces), `ADD result: ${what}`);
  }
  t.is(out, '', `no output on success: ${what}`);
}

function setup(t: ExecutionContext, third: number) {
  const { scope, node, fx } = cniSetup(t, third);
  const pods = [scope.netns('pod'), scope.netns('pod'), scope.netns('pod')];
  const fifo = join(fx.dir, 'fifo');
  execFileSync('mkfifo', [fifo]);
  const plainFile = join(fx.dir, 'plain');
  writeFileSync(plainFile, 'FLANNEL_X=1\n');
  mkdirSync(join(fx.dir, 'dir'));
  const oddPaths = [fifo, plainFile, join(fx.dir, 'dir'), join(fx.dir, 'absent'), '/dev/null', '/dev/zero', '', 'relative/path', `/run/netns/${node}`];
  return { scope, node, fx, pods, oddPaths };
}

async function cleanup(t: ExecutionContext, s: ReturnType<typeof setup>, attached: Case['attach'][]) {
  for (const a of attached) {
    if (!a) continue;
    const del = await cni(s.node, { command: 'DEL', conf: s.fx.conf(), containerID: a.containerID, netns: a.netns, ifname: a.ifname });
    t.is(del.code, 0, del.stdout);
  }
  const veths = ipJson(s.node, 'link', 'show', 'type', 'veth').map((l) => l.ifname);
  t.deepEqual(veths, [], 'no veth left');
  const ipam = existsSync(s.fx.ipamDir) ? readdirSync(s.fx.ipamDir).filter((f) => /^\d+\.\d+\.\d+\.\d+$/.test(f)) : [];
  t.deepEqual(ipam, [], 'no allocation left');
  for (const pod of s.pods)
    t.deepEqual(
      ipJson(pod, 'link', 'show').map((l) => l.ifname),
      ['lo'],
      'pods empty',
    );
}

const N = Number(process.env.WEFT_FUZZ_N ?? '80');

test('fuzz: the standalone plugin answers every mutated request with CNI JSON and leaves nothing', async (t) => {
  const s = setup(t, 61);
  const r = rng(0x5eed0001);
  const attached: Case['attach'][] = [];
  for (let i = 0; i < N; i++) {
    const c = mutate(r, s, i);
    // A process environment cannot hold NUL bytes (the fast path's wire format can).
    const clean = Object.fromEntries(Object.entries(c.env).map(([k, v]) => [k, v.replaceAll('\0', '')]));
    const env: Record<string, string | undefined> = { CNI_COMMAND: undefined, CNI_CONTAINERID: undefined, CNI_IFNAME: undefined, CNI_NETNS: undefined, ...clean };
    const out = await cni(s.node, { command: clean.CNI_COMMAND ?? '', conf: c.stdin, env });
    assertReply(t, c, out.code, out.stdout);
    if (out.code === 0 && c.attach) attached.push(c.attach);
  }
  t.log(`${attached.length} ADDs succeeded of ${N} requests`);
  t.true(attached.length >= 2, 'some requests got through: the run exercised success paths too');
  await cleanup(t, s, attached);
});

test('fuzz: the fast path (worker threads) answers every mutated request with CNI JSON and leaves nothing', async (t) => {
  const s = setup(t, 62);
  const socket = join(s.fx.dir, 'cni.sock');
  const child = s.scope.spawn('nsenter', [`--net=/run/netns/${s.node}`, '--', process.execPath, join(root, 'bench', 'lib', 'cni-server.ts'), socket], {
    cwd: root,
    env: { PATH: process.env.PATH, WEFT_SERVE_WORKERS: '2' },
  });
  let ready = false;
  child.stdout!.on('data', (b: Buffer) => (ready ||= b.toString().includes('ready')));
  t.true(await eventually(() => ready, 20_000, 50), 'server started');
  const r = rng(0x5eed0002);
  const attached: Case['attach'][] = [];
  for (let i = 0; i < N * 2; i++) {
    const c = mutate(r, s, i);
    const reply = await new Promise<{ code: number; stdout: string }>((done, fail) => {
      const sock = createConnection(socket);
      let buf = Buffer.alloc(0);
      let acked = false;
      sock.on('connect', () => sock.write(encodeRequest({ env: c.env, stdin: c.stdin })));
      sock.on('error', fail);
      sock.on('close', () => fail(new Error(`closed without a reply: ${JSON.stringify(c.env)} ${c.stdin.slice(0, 200)}`)));
      sock.on('data', (d) => {
        buf = Buffer.concat([buf, d]);
        if (!acked && buf[0] === 0x41) {
          acked = true;
          buf = buf.subarray(1);
          sock.write(Buffer.of(0x47));
        }
        if (acked && buf.length >= 8 && buf.length >= 12 + buf.readUInt32LE(4)) {
          sock.removeAllListeners('close');
          sock.destroy();
          done({ code: buf.readUInt32LE(0), stdout: buf.subarray(8, 8 + buf.readUInt32LE(4)).toString() });
        }
      });
    });
    assertReply(t, c, reply.code, reply.stdout);
    if (reply.code === 0 && c.attach) attached.push(c.attach);
  }
  t.log(`${attached.length} ADDs succeeded of ${N * 2} requests`);
  t.true(attached.length >= 2, 'some requests got through: the run exercised success paths too');
  await cleanup(t, s, attached);
});

import test from 'ava';
import { mkdtempSync, readdirSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { FailureLog, retrying } from '../../src/core/retry.ts';
import { formatSubnetEnv, parseSubnetEnv, readPreviousSubnet, SubnetEnvError, writeSubnetEnv } from '../../src/core/subnetenv.ts';
import type { Log } from '../../src/core/log.ts';
import { formatCIDR, formatIPv4, parseCIDR } from '../../src/ip/ipv4.ts';
import { FakeClock } from '../helpers/clock.ts';

/** A Log that keeps `level message` lines. */
function recordingLog(): Log & { lines: string[] } {
  const lines: string[] = [];
  const at = (level: string) => (msg: string) => lines.push(`${level} ${msg}`);
  return { lines, error: at('error'), warn: at('warn'), info: at('info'), debug: at('debug') };
}

test('subnet.env: format and parse are inverse, the file is written atomically, the previous subnet read back', (t) => {
  const c = { network: parseCIDR('198.18.0.0/16'), subnet: parseCIDR('198.18.7.0/24'), mtu: 1450, ipMasq: true };
  const text = formatSubnetEnv(c);
  t.is(text, 'FLANNEL_NETWORK=198.18.0.0/16\nFLANNEL_SUBNET=198.18.7.1/24\nFLANNEL_MTU=1450\nFLANNEL_IPMASQ=true\n');
  const back = parseSubnetEnv(text);
  t.is(formatCIDR(back.network), '198.18.0.0/16');
  t.is(formatCIDR(back.subnet), '198.18.7.0/24');
  t.is(formatIPv4(back.gateway), '198.18.7.1');
  t.is(back.mtu, 1450);
  t.true(back.ipMasq);
  t.is(formatSubnetEnv({ network: back.network, subnet: back.subnet, mtu: back.mtu, ipMasq: back.ipMasq }), text);

  const dir = mkdtempSync(join(tmpdir(), 'weft-sf-'));
  t.teardown(() => rmSync(dir, { recursive: true, force: true }));
  const file = join(dir, 'sub', 'subnet.env');
  t.is(readPreviousSubnet(file), undefined, 'missing file');
  writeSubnetEnv(file, c);
  t.is(readFileSync(file, 'utf8'), text);
  t.deepEqual(readdirSync(join(dir, 'sub')), ['subnet.env'], 'no temp file left behind');
  t.deepEqual(readPreviousSubnet(file), parseCIDR('198.18.7.0/24'));
  writeFileSync(file, 'FLANNEL_SUBNET=198.18.9.1/24\n');
  t.deepEqual(readPreviousSubnet(file), parseCIDR('198.18.9.0/24'), 'only FLANNEL_SUBNET is needed for the previous subnet');
  writeFileSync(file, 'FLANNEL_SUBNET=not-a-cidr\n');
  t.is(readPreviousSubnet(file), undefined);
});

test('subnet.env: what is wrong is named', (t) => {
  const cases: Array<[string, RegExp]> = [
    ['', /FLANNEL_NETWORK is missing/],
    ['garbage', /line "garbage" is not KEY=VALUE/],
    ['FLANNEL_NETWORK=198.18.0.0\n', /FLANNEL_NETWORK: invalid CIDR/],
    ['FLANNEL_NETWORK=198.18.0.0/16\nFLANNEL_SUBNET=198.19.1.1/24\nFLANNEL_MTU=1450\n', /not inside FLANNEL_NETWORK/],
    ['FLANNEL_NETWORK=198.18.0.0/16\nFLANNEL_SUBNET=198.18.1.0/24\nFLANNEL_MTU=1450\n', /must name the gateway/],
    ['FLANNEL_NETWORK=198.18.0.0/16\nFLANNEL_SUBNET=198.18.1.1/24\nFLANNEL_MTU=1e3\n', /FLANNEL_MTU "1e3" is not an MTU/],
  ];
  for (const [text, re] of cases) {
    const err = t.throws(() => parseSubnetEnv(text), { instanceOf: SubnetEnvError }, JSON.stringify(text));
    t.regex(err!.message, re);
  }
});

test('retrying: waits as the policy says, logs a repeated failure once a minute, says when it works again', async (t) => {
  const clock = new FakeClock();
  const log = recordingLog();
  const delays: number[] = [];
  let calls = 0;
  const ac = new AbortController();
  const done = retrying(
    'network config',
    async () => {
      if (++calls < 4) throw new Error('not found');
      return 'config';
    },
    { signal: ac.signal, clock, log, policy: { delayMs: (n) => (delays.push(n), 40_000) } },
  );
  await clock.advance(0);
  for (let i = 0; i < 3; i++) await clock.advance(40_000);
  t.is(await done, 'config');
  t.is(calls, 4);
  t.deepEqual(delays, [1, 2, 3], 'the policy sees the failure count');
  t.deepEqual(log.lines, [
    'error network config: not found; retrying every 40s',
    'error network config: not found; retrying every 40s', // 80 s after the first: logged again
    'info network config: ok now',
  ]);
});

test('retrying: resolves undefined once aborted, without another attempt', async (t) => {
  const clock = new FakeClock();
  const ac = new AbortController();
  let calls = 0;
  const done = retrying(
    'x',
    async () => {
      calls++;
      throw new Error('down');
    },
    { signal: ac.signal, clock, log: recordingLog(), policy: { delayMs: () => 1000 } },
  );
  await clock.advance(0);
  ac.abort();
  t.is(await done, undefined);
  t.is(calls, 1);
});

test('failure log: the first failure, then once a minute with how long, then ok again', async (t) => {
  const clock = new FakeClock();
  const log = recordingLog();
  const f = new FailureLog('renew lease', { clock, log });
  f.ok();
  t.deepEqual(log.lines, [], 'ok without a failure says nothing');
  f.failed(new Error('etcd down', { cause: new Error('connection refused') }));
  clock.t = 30_000;
  f.failed(new Error('etcd down'));
  clock.t = 61_000;
  f.failed(new Error('etcd down'));
  clock.t = 65_000;
  f.ok();
  t.deepEqual(log.lines, ['warn renew lease: etcd down: connection refused', 'warn renew lease: etcd down (failing for 61s)', 'info renew lease: ok again after 65s']);
});

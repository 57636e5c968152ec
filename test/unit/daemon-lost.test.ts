/** A lost subnet's pieces: the lost form of the subnet file, the IPAM store scan, the start-up check. */
import test from 'ava';
import { mkdirSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { parseSubnetEnv, readPreviousSubnet, SubnetLostError, writeSubnetEnv } from '../../src/core/subnetenv.ts';
import { readSubnetFile } from '../../src/cni/subnetfile.ts';
import { isRetryable } from '../../src/cni/errors.ts';
import { podAddressesIn } from '../../src/daemon/pods.ts';
import { formatCIDR, formatIPv4, parseCIDR } from '../../src/ip/ipv4.ts';
import { acquireLease } from '../../src/daemon/lease.ts';
import { parseNetworkConfig } from '../../src/subnet/config.ts';
import { systemClock } from '../../src/core/clock.ts';
import { constantDelay } from '../../src/core/retry.ts';
import { silentLog } from '../../src/core/log.ts';

function tmp(t: { teardown(fn: () => void): void }): string {
  const dir = mkdtempSync(join(tmpdir(), 'weft-lost-'));
  t.teardown(() => rmSync(dir, { recursive: true, force: true }));
  return dir;
}

const contents = { network: parseCIDR('198.18.0.0/16'), subnet: parseCIDR('198.18.4.0/24'), mtu: 1450, ipMasq: true };

test('lost subnet file: no FLANNEL_SUBNET, the holder named, ADD retryable, the subnet remembered for a restart', (t) => {
  const file = join(tmp(t), 'subnet.env');
  writeSubnetEnv(file, contents, { lostTo: '198.51.100.99' });
  const text = readFileSync(file, 'utf8');
  t.notRegex(text, /^FLANNEL_SUBNET=/m, "flannel's plugin too refuses ADD without FLANNEL_SUBNET");
  t.regex(text, /^FLANNEL_NETWORK=198\.18\.0\.0\/16$/m);
  t.regex(text, /^WEFT_SUBNET_LOST=198\.18\.4\.1\/24$/m);
  t.regex(text, /^WEFT_SUBNET_HOLDER=198\.51\.100\.99$/m);
  const err = t.throws(() => parseSubnetEnv(text));
  t.true(err instanceof SubnetLostError);
  t.regex(err!.message, /lost this node's subnet 198\.18\.4\.1\/24 to the node at 198\.51\.100\.99/);
  const cniErr = t.throws(() => readSubnetFile(file));
  t.true(isRetryable(cniErr), 'ADD says try again later (11)');
  t.is(formatCIDR(readPreviousSubnet(file)!), '198.18.4.0/24');
  // Back to normal: the ordinary file again.
  writeSubnetEnv(file, contents);
  t.is(formatCIDR(parseSubnetEnv(readFileSync(file, 'utf8')).subnet), '198.18.4.0/24');
});

test('pods on a subnet: every network directory under dataDir, only addresses inside the subnet, bookkeeping files ignored', async (t) => {
  const dir = tmp(t);
  t.deepEqual(await podAddressesIn(join(dir, 'missing'), contents.subnet), [], 'no data dir: no pods');
  mkdirSync(join(dir, 'weft'));
  mkdirSync(join(dir, 'other'));
  writeFileSync(join(dir, 'weft', 'last_reserved_ip.0'), '198.18.4.7');
  writeFileSync(join(dir, 'weft', 'lock'), '');
  t.deepEqual(await podAddressesIn(dir, contents.subnet), []);
  writeFileSync(join(dir, 'weft', '198.18.4.7'), 'c1\r\neth0');
  writeFileSync(join(dir, 'other', '198.18.9.2'), 'c2\r\neth0');
  writeFileSync(join(dir, 'other', '198.18.4.200'), 'c3\r\neth0');
  t.deepEqual((await podAddressesIn(dir, contents.subnet)).map(formatIPv4).sort(), ['198.18.4.200', '198.18.4.7']);
});

test('start-up: the previous subnet held elsewhere with pods on it starts lost, only where nodes choose their subnets', async (t) => {
  const config = parseNetworkConfig(JSON.stringify({ Network: '198.18.0.0/16' }));
  const previous = parseCIDR('198.18.4.0/24');
  const holder = { subnet: previous, publicIP: '198.51.100.99', backendType: 'vxlan', backendData: { VNI: 1, VtepMAC: '02:00:00:00:00:99' } };
  const attrs = { publicIP: '198.51.100.11', backendType: 'vxlan', backendData: { VNI: 1, VtepMAC: '02:00:00:00:00:11' } };
  const acquired: string[] = [];
  const manager = (canLoseSubnet: boolean) =>
    ({
      canLoseSubnet,
      listLeases: async () => ({ leases: [holder], revision: '1' }),
      acquireLease: async () => {
        acquired.push('acquire');
        return { subnet: parseCIDR('198.18.9.0/24'), ...attrs };
      },
    }) as never;
  const ctx = (m: never, pods: number) => ({
    manager: m,
    config,
    attrs: () => attrs,
    ttlSeconds: 60,
    clock: systemClock,
    log: silentLog,
    signal: new AbortController().signal,
    retry: constantDelay(1),
    podsOn: async () => pods,
  });
  const lost = await acquireLease(previous, ctx(manager(true), 2));
  t.is(lost?.lostTo, '198.51.100.99');
  t.is(formatCIDR(lost!.lease.subnet), '198.18.4.0/24');
  t.deepEqual(acquired, [], 'no other subnet taken');
  const moved = await acquireLease(previous, ctx(manager(true), 0));
  t.is(formatCIDR(moved!.lease.subnet), '198.18.9.0/24', 'no pod left: a new subnet');
  const assigned = await acquireLease(previous, ctx(manager(false), 2));
  t.is(assigned?.lostTo, undefined, 'an assigned subnet (podCIDR) is followed');
  t.is(formatCIDR(assigned!.lease.subnet), '198.18.9.0/24');
});

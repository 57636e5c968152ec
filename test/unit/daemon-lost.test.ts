/** A lost subnet's pieces: the lost form of the subnet file, and the IPAM store scan. */
import test from 'ava';
import { mkdirSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { parseSubnetEnv, readPreviousSubnet, SubnetLostError, writeSubnetEnv } from '../../src/core/subnetenv.ts';
import { readSubnetFile } from '../../src/cni/subnetfile.ts';
import { isRetryable } from '../../src/cni/errors.ts';
import { podAddressesIn } from '../../src/daemon/pods.ts';
import { formatCIDR, formatIPv4, parseCIDR } from '../../src/ip/ipv4.ts';

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
  t.notRegex(text, /^FLANNEL_SUBNET=/m, 'flannel\'s plugin too refuses ADD without FLANNEL_SUBNET');
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

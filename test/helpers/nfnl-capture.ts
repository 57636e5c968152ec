/**
 * Regenerates test/unit/proxy-nfnl.fixture.json: the netlink batches nft itself sends for
 * partial-sync scripts, which src/proxy/nfnl.ts must reproduce. Needs root, nft and strace:
 *
 *   node test/helpers/nfnl-capture.ts > test/unit/proxy-nfnl.fixture.json
 *
 * Each script runs against a fresh copy of its base table in a throwaway namespace, under
 * `strace -e write=FD` (a hex dump of what nft writes); the batch is its last sendmsg.
 */
import { execFileSync } from 'node:child_process';
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { parseCIDR } from '../../src/ip/ipv4.ts';
import { buildRuleset, fullScript, partialScript } from '../../src/proxy/ruleset.ts';
import { shapeSteps } from './proxy-shapes.ts';
import { suffix } from './netns.ts';

const NFT = '/usr/sbin/nft';

/** The bytes of the last sendmsg in an `strace -e write=...` log. */
export function lastSendmsg(log: string): Buffer {
  let cur: number[] | undefined;
  let last: number[] = [];
  for (const line of log.split('\n')) {
    if (line.startsWith('sendmsg(')) {
      cur = [];
      last = cur;
      continue;
    }
    const m = /^ \| [0-9a-f]{5} {2}((?:[0-9a-f]{2} {1,2})+)/.exec(line);
    if (m && cur) for (const h of m[1]!.trim().split(/ +/)) cur.push(Number.parseInt(h, 16));
  }
  return Buffer.from(last);
}

function main(): void {
  const ns = `wt-nfcap-${suffix()}`;
  const dir = mkdtempSync(join(tmpdir(), 'nfcap-'));
  execFileSync('ip', ['netns', 'add', ns]);
  try {
    const inNs = (args: string[], input?: string) => execFileSync('nsenter', [`--net=/run/netns/${ns}`, '--', ...args], { input, encoding: 'utf8' });
    const cases: Array<{ what: string; script: string; nft: string }> = [];
    // nft's batch, base64
    const capture = (what: string, base: string, script: string) => {
      inNs([NFT, '-f', '-'], base);
      const file = join(dir, 'script.nft');
      const log = join(dir, 'trace.txt');
      writeFileSync(file, script);
      // fd 3 is nft's netlink socket (0-2 are the standard streams)
      inNs(['strace', '-e', 'trace=sendmsg', '-e', 'write=3', '-o', log, NFT, '-f', file]);
      cases.push({ what, script, nft: lastSendmsg(readFileSync(log, 'utf8')).toString('base64') });
    };
    for (const cidr of ['198.18.0.0/15']) {
      const opts = { clusterCIDR: parseCIDR(cidr) };
      const steps = shapeSteps();
      for (let i = 1; i < steps.length; i++) {
        const prev = buildRuleset(steps[i - 1]!.state, opts);
        const next = buildRuleset(steps[i]!.state, opts);
        capture(`${steps[i]!.what} (cluster CIDR ${cidr})`, fullScript(prev), partialScript(prev, next));
      }
    }
    // prefixes of every kind against one base: whole bytes, masked, a host
    const base = fullScript(buildRuleset(shapeSteps()[0]!.state, {}));
    const chain = 'svc-AAAAAAAA-shapes/x/tcp/80';
    const rules = ['198.0.0.0/8', '198.18.0.0/16', '198.18.0.0/17', '198.18.0.0/24', '198.18.0.0/25', '198.18.0.1/32', '128.0.0.0/1'].map(
      (c) => `add rule ip weft-proxy ${chain} ip daddr 198.19.0.9 tcp dport 65535 ip saddr != ${c} jump mark-for-masquerade`,
    );
    capture('prefixes, drop, plain jump', base, [`add chain ip weft-proxy ${chain}`, ...rules, `add rule ip weft-proxy ${chain} drop`, `add rule ip weft-proxy ${chain} jump services`, ''].join('\n'));
    // element lists longer than one attribute can hold (16-bit length): nft splits them
    const long = `ep-AAAAAAAA-${'x'.repeat(240)}`;
    const items = Array.from({ length: 280 }, (_, i) => `198.19.${100 + Math.floor(i / 250)}.${1 + (i % 250)} . tcp . 80 : goto ${long}`);
    const arms = Array.from({ length: 280 }, (_, i) => `${i} : goto ${long}`);
    capture(
      'element lists split across messages',
      base,
      [
        `add chain ip weft-proxy ${chain}`,
        `add chain ip weft-proxy ${long}`,
        `add element ip weft-proxy service-ips { ${items.join(', ')} }`,
        `add rule ip weft-proxy ${chain} numgen random mod 280 vmap { ${arms.join(', ')} }`,
        '',
      ].join('\n'),
    );
    process.stdout.write(`${JSON.stringify({ nft: inNs([NFT, '--version']).trim(), cases }, null, 1)}\n`);
  } finally {
    execFileSync('ip', ['netns', 'del', ns]);
    rmSync(dir, { recursive: true, force: true });
  }
}

if (import.meta.url === `file://${process.argv[1]}`) main();

/**
 * Where the CNI ADD time goes: process start-up, loading the bundle, and the work itself
 * (netlink, IPAM, namespaces, sysctls, measured inside a warm process), for the standalone
 * binary and the fast path, against the reference Go plugin measured alongside. All calls
 * interleaved, one round per pod.
 */
import { chmodSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { BenchScope } from '../lib/scope.ts';
import { callCni, expectOk, type CniCall } from '../lib/cni.ts';
import { refConfig, weftConfig, writeSubnetEnv } from '../lib/confs.ts';
import { bins, missing } from '../lib/paths.ts';
import { startFastServer } from '../lib/fastserve.ts';
import { median, round } from '../lib/stats.ts';
import { unavailable, type BenchContext, type Figure, type Row } from '../lib/report.ts';
import { verifyAdd } from './add-del.ts';
import { breakdown, methodBreakdown } from './fast.ts';

const SUBNET = '198.18.0.0/24';

export async function figWhere(ctx: BenchContext): Promise<Figure> {
  const id = 'where';
  const title = 'where the ADD time goes';
  const why = missing(bins.weft) ?? missing(bins.launcher, 'run `node scripts/build-launcher.ts`') ?? missing(bins.bridge, 'apt-get install containernetworking-plugins');
  if (why) return unavailable(id, title, why);
  const rounds = ctx.quick ? 8 : 20;
  const scope = new BenchScope();
  try {
    const dir = scope.tmpdir('where');
    const empty = join(dir, 'empty-node');
    writeFileSync(empty, `#!${process.execPath}\n`);
    chmodSync(empty, 0o755);
    const sNode = scope.netns('nodes'); // standalone weft
    const fNode = scope.netns('nodef'); // fast path
    const rNode = scope.netns('noder'); // reference
    const sDir = scope.tmpdir('s');
    const fDir = scope.tmpdir('f');
    const sConf = weftConfig(sDir, writeSubnetEnv(sDir, SUBNET));
    const server = await startFastServer(scope, fNode, fDir);
    const fConf = weftConfig(fDir, writeSubnetEnv(fDir, SUBNET), { fastpathSocket: server.socket });
    const rConf = refConfig(scope.tmpdir('r'), SUBNET);

    const samples: Record<string, number[]> = {};
    const time = async (key: string, call: CniCall, check?: (r: any) => void) => {
      const o = expectOk(key, await callCni(call));
      check?.(o.result);
      (samples[key] ??= []).push(o.ms);
    };
    const version = (plugin: string, nodeNs: string, config: object, extraEnv?: Record<string, string>): CniCall => ({
      plugin,
      command: 'VERSION',
      containerId: 'v',
      podNs: '',
      nodeNs,
      config,
      extraEnv,
    });
    const ca = process.env.NODE_EXTRA_CA_CERTS;
    for (let i = 0; i <= rounds; i++) {
      const steps: Array<() => Promise<void>> = [
        () => time('node, empty script', version(empty, sNode, {})),
        () => time('weft VERSION (start + load bundle)', version(bins.weft, sNode, sConf)),
        () => time('bridge VERSION (Go start)', version(bins.bridge, rNode, rConf)),
        () => time('launcher VERSION (fast-path round trip)', version(bins.launcher, fNode, fConf)),
      ];
      if (ca) steps.push(() => time('node, empty script, NODE_EXTRA_CA_CERTS set', version(empty, sNode, {}, { NODE_EXTRA_CA_CERTS: ca })));
      for (const [key, plugin, nodeNs, config] of [
        ['weft ADD standalone', bins.weft, sNode, sConf],
        ['weft ADD fast path', bins.launcher, fNode, fConf],
        ['bridge+host-local ADD', bins.bridge, rNode, rConf],
      ] as const) {
        steps.push(async () => {
          const podNs = scope.netns('pod');
          await time(key, { plugin, command: 'ADD', containerId: `w${i}`, podNs, nodeNs, config }, (r) => verifyAdd(key, r, podNs));
        });
      }
      // Rotate the order each round so no step always runs right after the same neighbour.
      for (let k = 0; k < steps.length; k++) await steps[(k + i) % steps.length]();
      if (i === 0) for (const k of Object.keys(samples)) samples[k] = []; // round 0 warms caches
    }
    const m = (k: string) => round(median(samples[k] ?? []));
    const goStart = m('bridge VERSION (Go start)');
    const refAdd = m('bridge+host-local ADD');
    const inproc = breakdown(server.handled, 'ADD');
    const rows: Row[] = [
      { metric: 'node start, empty script', unit: 'ms', weft: m('node, empty script'), ref: goStart, refName: 'bridge VERSION' },
      ...(ca ? [{ metric: 'same with NODE_EXTRA_CA_CERTS', unit: 'ms', weft: m('node, empty script, NODE_EXTRA_CA_CERTS set'), ref: goStart, refName: 'bridge VERSION' }] : []),
      { metric: 'weft VERSION: start + load bundle', unit: 'ms', weft: m('weft VERSION (start + load bundle)'), ref: goStart, refName: 'bridge VERSION' },
      { metric: 'launcher VERSION: fast-path round trip', unit: 'ms', weft: m('launcher VERSION (fast-path round trip)'), ref: goStart, refName: 'bridge VERSION' },
      { metric: 'weft ADD standalone', unit: 'ms', weft: m('weft ADD standalone'), ref: refAdd, refName: 'bridge+host-local ADD' },
      { metric: 'weft ADD fast path', unit: 'ms', weft: m('weft ADD fast path'), ref: refAdd, refName: 'bridge+host-local ADD' },
      ...Object.entries(inproc ?? {}).map(([k, v]) => ({ metric: `  in-process ADD: ${k}`, unit: 'ms', weft: v })),
    ];
    return {
      id,
      title,
      available: true,
      rows,
      notes: [
        `slowest dependency calls in an in-process ADD (medians): ${Object.entries(methodBreakdown(server.handled, 'ADD'))
          .slice(0, 6)
          .map(([k, v]) => `${k} ${v} ms`)
          .join(', ')}`,
        `${rounds} interleaved rounds; in-process parts are time awaited on each dependency inside the warm server (netns = opening namespaces and netlink sockets in them); other = config, subnet file, result`,
      ],
      details: { rounds, samples, inProcessADD: inproc, inProcessADDMethods: methodBreakdown(server.handled, 'ADD') },
    };
  } catch (err) {
    return unavailable(id, title, (err as Error).message);
  } finally {
    scope.cleanupSync();
  }
}

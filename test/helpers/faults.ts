/**
 * What the fault-injection suites (test/priv/faults.test.ts for etcd, faults-kube.test.ts for the
 * API server) share: the figures file, the dead-daemon report, pings between pods, and the
 * cluster-wide checks they assert after each scenario.
 */
import { spawn } from 'node:child_process';
import { mkdtempSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { pingStats, type Cluster } from './cluster.ts';
import type { FaultProxyProcess } from './faultproxy.ts';

/** Each scenario's figures, kept in one JSON file whose path every log line names. */
export class FaultFigures {
  readonly dir: string;
  readonly file: string;
  readonly #results: Record<string, unknown> = {};

  constructor(prefix: string) {
    this.dir = mkdtempSync(join(tmpdir(), prefix));
    this.file = join(this.dir, 'results.json');
  }

  record(t: { log(...v: unknown[]): void }, scenario: string, figures: Record<string, unknown>): void {
    this.#results[scenario] = figures;
    writeFileSync(this.file, `${JSON.stringify(this.#results, null, 2)}\n`);
    t.log(`${scenario}: ${JSON.stringify(figures)}`);
    t.log(`figures: ${this.file}`);
  }
}

export function isAlive(pid: number | undefined): boolean {
  try {
    return pid !== undefined && process.kill(pid, 0);
  } catch {
    return false;
  }
}

/**
 * The hooks both fault suites register: after each scenario the report (reportScenario) and the
 * proxy put back to pass (a scenario that failed mid-outage must not leave the next one behind a
 * blackhole); after the suite the proxy and the cluster go.
 */
export function faultSuiteHooks(
  test: { afterEach: { always(fn: (t: Parameters<typeof reportScenario>[0]) => Promise<void>): void }; after: { always(fn: () => Promise<void>): void } },
  suite: () => { cluster?: Cluster; proxy?: FaultProxyProcess },
  nodes: string[],
  figures: FaultFigures,
): void {
  test.afterEach.always(async (t) => {
    const { cluster, proxy } = suite();
    reportScenario(t, cluster, nodes, figures);
    await proxy?.pass();
  });
  test.after.always(async () => {
    const { cluster, proxy } = suite();
    await proxy?.stop();
    await cluster?.destroy();
  });
}

/**
 * After each scenario: logs the tail of the log of every node whose weftd is not running (a
 * scenario killed it), and when the scenario failed, keeps every node's whole log beside the
 * figures file (the cluster's own copies go with it).
 */
export function reportScenario(t: { log(...v: unknown[]): void; passed: boolean; title: string }, cluster: Cluster | undefined, nodes: string[], figures: FaultFigures): void {
  if (!cluster) return;
  for (const n of nodes) {
    if (!isAlive(cluster.node(n).pid)) t.log(`weftd on ${n} is not running; its log ends:\n${cluster.log(n).split('\n').slice(-40).join('\n')}`);
  }
  if (t.passed) return;
  const slug = t.title
    .replace(/^afterEach\.always hook for /, '')
    .replace(/[^A-Za-z0-9]+/g, '-')
    .slice(0, 60);
  for (const n of nodes) writeFileSync(join(figures.dir, `${slug}.${n}.log`), cluster.log(n));
  t.log(`weftd logs of the failed scenario: ${join(figures.dir, slug)}.<node>.log`);
}

/** Pings between the given node pairs' first pods every 200 ms for `seconds`; sent/lost per pair. */
export function pingPairs(cluster: Cluster, seconds: number, pairs: Array<[string, string]>) {
  const count = Math.round(seconds * 5);
  const pod = (node: string) => cluster.pods.find((p) => p.node === node)!;
  const runs = pairs.map(([a, b]) => {
    const from = pod(a);
    const to = pod(b);
    const child = spawn('nsenter', [`--net=/run/netns/${from.netns}`, '--', 'ping', '-n', '-q', '-c', String(count), '-i', '0.2', '-W', '2', to.ip], { stdio: ['ignore', 'pipe', 'pipe'] });
    let out = '';
    child.stdout.on('data', (d) => (out += d));
    const done = new Promise<{ sent: number; received: number }>((r) => child.on('close', () => r(pingStats(out))));
    return { name: `${a}->${b}`, done };
  });
  return {
    /** Waits for every ping run to finish; sent/lost per pair. */
    async results() {
      const out: Record<string, { sent: number; lost: number }> = {};
      for (const r of runs) {
        const s = await r.done;
        out[r.name] = { sent: s.sent, lost: s.sent - s.received };
      }
      return out;
    },
  };
}

/** Both directions around the ring n1 -> n2 -> n3 -> n1. */
export function ring(nodes: string[]): Array<[string, string]> {
  return nodes.map((n, i) => [n, nodes[(i + 1) % nodes.length]!]);
}

export const lostTotal = (r: Record<string, { lost: number }>) => Object.values(r).reduce((a, b) => a + b.lost, 0);
export const sentTotal = (r: Record<string, { sent: number }>) => Object.values(r).reduce((a, b) => a + b.sent, 0);

/** Every node has every other node as a peer, and exactly those (plus `extra` fakes) on flannel.1. */
export function converged(cluster: Cluster, nodes: string[], extra = 0): boolean {
  for (const n of nodes) {
    const others = nodes.filter((x) => x !== n);
    if (!others.every((p) => cluster.hasPeer(n, p))) return false;
    const o = cluster.overlay(n);
    const want = others.length + extra;
    if (o.routes.length !== want || o.neighs.length !== want || o.fdbs.length !== want) return false;
  }
  return true;
}

/** Each node's HTTP status for a daemon endpoint (/healthz, /readyz). */
export async function statuses(cluster: Cluster, nodes: string[], path: string): Promise<Record<string, number>> {
  return Object.fromEntries(await Promise.all(nodes.map(async (n) => [n, (await cluster.topo.http(n, path)).status] as const)));
}

/** A metric summed over every node and every label set. */
export async function metricSum(cluster: Cluster, nodes: string[], name: string): Promise<number> {
  let sum = 0;
  for (const n of nodes) {
    const { body } = await cluster.topo.http(n, '/metrics');
    for (const m of body.matchAll(new RegExp(`^${name}(?:\\{[^}]*\\})? (\\S+)$`, 'gm'))) sum += Number(m[1]);
  }
  return sum;
}

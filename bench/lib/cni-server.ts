/**
 * Serves the CNI fast path on its own, for the bench and the fast-path tests, without weftd:
 * `nsenter --net=/run/netns/NODE node bench/lib/cni-server.ts SOCKET`. Prints "ready" once
 * listening; on SIGTERM/SIGINT drains (requests in flight finish, at most 10 s, as weftd should)
 * and exits. With WEFT_FASTPATH_TIMING=1 each request is logged to
 * stderr as `handled <COMMAND> <ms> {"netlink":ms,"ipam":ms,"netns":ms,"sysctl":ms}`: its
 * in-process duration and the time spent awaiting each kind of dependency. With
 * WEFT_FASTPATH_TIMING=total, the duration only (`{}`): the dependencies are not wrapped, so the
 * handler runs as in weftd (each wrapped call costs a little on V8's interpreter).
 * Run it from the repository root (the setns addon is found under dist/native).
 * It serves one network, as weftd does: SOCKET's directory's `subnet.env` and `data` (the test
 * fixtures' layout, test/helpers/cni.ts), bridge cni0; WEFT_SERVE_SUBNET_FILE, _DATA_DIR and
 * _BRIDGE override them. WEFT_SERVE_WORKERS=N runs requests on up to N worker threads (WEFT_SERVE_MIN_WORKERS kept, default 0; requests run in-process while none has loaded, as in weftd), as weftd does
 * (no per-dependency timing then: the dependencies live in the workers). WEFT_SERVE_LOOP=1 prints
 * the main thread's worst event-loop delay each second (`loop-delay-max <ms>`). Its threads'
 * nice value is weftd's default (WEFT_SERVE_NICE sets another; 0 leaves it).
 */
import { dirname, join } from 'node:path';
import { handleCniWith, serveCni, startWorkerPool } from '../../src/fastpath/index.ts';
import type { Deps } from '../../src/cni/plugin.ts';
import { DEFAULT_NICE, setProcessNice } from '../../src/core/priority.ts';

/** ms per kind ('netlink', 'ipam', 'netns', 'sysctl') and per method ('netlink.linkAdd'). */
type Acc = Record<string, number>;

const now = () => process.hrtime.bigint();
const since = (t0: bigint) => Number(now() - t0) / 1e6;

/**
 * Wraps every method of `obj` so the time until it returns (or settles) is added to acc[key]
 * and acc[`${key}.${method}`].
 */
function timed<T extends object>(obj: T, acc: Acc, key: string): T {
  return new Proxy(obj, {
    get(target, prop) {
      const v = Reflect.get(target, prop, target);
      if (typeof v !== 'function') return v;
      return (...args: unknown[]) => timeCall(() => v.apply(target, args), acc, key, `${key}.${String(prop)}`);
    },
  });
}

function timeCall<R>(fn: () => R, acc: Acc, ...keys: string[]): R {
  const t0 = now();
  const add = () => {
    const ms = since(t0);
    for (const k of keys) acc[k] = (acc[k] ?? 0) + ms;
  };
  let r: R;
  try {
    r = fn();
  } catch (err) {
    add();
    throw err;
  }
  if (r instanceof Promise) return r.finally(add) as R;
  add();
  return r;
}

function instrument(deps: Deps, acc: Acc): Deps {
  return {
    ...deps,
    openNetlink: (ns) =>
      timed(
        timeCall(() => deps.openNetlink(ns), acc, 'netns'),
        acc,
        'netlink',
      ),
    openNetns: (path) => timeCall(() => deps.openNetns(path), acc, 'netns'),
    writeSysctl: (path, value) => timeCall(() => deps.writeSysctl(path, value), acc, 'sysctl'),
    store: (conf) => timed(deps.store(conf), acc, 'ipam'),
  };
}

async function main(): Promise<void> {
  const path = process.argv[2];
  if (!path) throw new Error('usage: cni-server.ts SOCKET');
  const timing = process.env.WEFT_FASTPATH_TIMING === '1' || process.env.WEFT_FASTPATH_TIMING === 'total';
  const parts = process.env.WEFT_FASTPATH_TIMING === '1';
  const ac = new AbortController();
  const env = process.env;
  const network = {
    subnetFile: env.WEFT_SERVE_SUBNET_FILE ?? join(dirname(path), 'subnet.env'),
    dataDir: env.WEFT_SERVE_DATA_DIR ?? join(dirname(path), 'data'),
    bridge: env.WEFT_SERVE_BRIDGE ?? 'cni0',
  };
  const workers = Number(env.WEFT_SERVE_WORKERS ?? '0');
  // As weftd (--nice): every thread, those started later included (src/core/priority.ts).
  const niceError = setProcessNice(Number(env.WEFT_SERVE_NICE ?? DEFAULT_NICE));
  if (niceError) process.stderr.write(`cni-server: nice not applied: ${niceError}\n`);
  const inline = (req: Parameters<typeof handleCniWith>[0]) => handleCniWith(req, { network });
  const pool = workers > 0 ? startWorkerPool({ network, min: Number(env.WEFT_SERVE_MIN_WORKERS ?? '0'), max: workers, inline }) : undefined;
  const server = await serveCni({
    path,
    signal: ac.signal,
    log: env.WEFT_SERVE_LOG === '1' ? (m) => process.stderr.write(`${m}\n`) : undefined,
    handler: async (req) => {
      if (pool) {
        const t0 = now();
        const reply = await pool.handler(req);
        if (timing) process.stderr.write(`handled ${req.env.CNI_COMMAND} ${since(t0)} {}\n`);
        return reply;
      }
      if (!timing) return handleCniWith(req, { network });
      if (!parts) {
        const t0 = now();
        const reply = await handleCniWith(req, { network });
        process.stderr.write(`handled ${req.env.CNI_COMMAND} ${since(t0)} {}\n`);
        return reply;
      }
      const acc: Acc = { netlink: 0, ipam: 0, netns: 0, sysctl: 0 };
      const t0 = now();
      const reply = await handleCniWith(req, { network, wrap: (deps) => instrument(deps, acc) });
      process.stderr.write(`handled ${req.env.CNI_COMMAND} ${since(t0)} ${JSON.stringify(acc)}\n`);
      return reply;
    },
  });
  if (env.WEFT_SERVE_LOOP === '1') {
    // The main thread's event-loop delay, worst per second: what a burst costs weftd's other work.
    const { monitorEventLoopDelay } = await import('node:perf_hooks');
    const h = monitorEventLoopDelay({ resolution: 5 });
    h.enable();
    setInterval(() => {
      process.stderr.write(`loop-delay-max ${(h.max / 1e6).toFixed(1)}\n`);
      h.reset();
    }, 1000).unref();
  }
  for (const sig of ['SIGTERM', 'SIGINT'] as const) {
    process.on(sig, () => {
      ac.abort();
      void server.drain(10_000).then(async (all) => {
        await pool?.close();
        process.stderr.write(`drained ${all ? 'all' : 'not all'}\n`);
        process.exit(0);
      });
    });
  }
  process.stdout.write('ready\n');
}

main().catch((err) => {
  process.stderr.write(`cni-server: ${(err as Error).stack ?? err}\n`);
  process.exit(1);
});

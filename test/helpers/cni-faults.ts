/**
 * Fault injection for the CNI handlers, on the tests' side only: shipped code has no switch for
 * it. `withFaultAt(deps, n)` wraps the real dependencies so that the n-th dependency call
 * (counting every netlink method, namespace open, sysctl write and store method, in the order
 * the handler makes them) throws; every other call, including those of the undo path after it,
 * goes through. Run as a program (`node test/helpers/cni-faults.ts`) it is a CNI plugin like
 * dist/bin/weft, with WEFT_FAULT_AT=n read here, by the test wiring.
 */
import { readFileSync, writeFileSync } from 'node:fs';
import { systemDeps } from '../../src/cni/deps.ts';
import type { Deps } from '../../src/cni/plugin.ts';
import { runSkel } from '../../src/cni/skel.ts';

/** Message of the injected error, so tests can tell it from a real one. */
export const INJECTED = 'injected failure at dependency call';

/** Wraps `deps` so that call number `at` (1-based) throws; `calls` records the calls made. */
export function withFaultAt(deps: Deps, at: number, opts: { calls?: string[] } = {}): Deps {
  const calls = opts.calls ?? [];
  const hit = (name: string) => {
    calls.push(name);
    if (calls.length === at) throw new Error(`${INJECTED} ${at} (${name})`);
  };
  const wrapObj = <T extends object>(obj: T, prefix: string): T =>
    new Proxy(obj, {
      get(target, prop) {
        const v = Reflect.get(target, prop, target);
        if (typeof v !== 'function' || prop === 'close') return typeof v === 'function' ? v.bind(target) : v;
        return (...args: unknown[]) => {
          const name = `${prefix}.${String(prop)}`;
          // Every netlink and store method is async: the fault is a rejected promise, as a real one.
          try {
            hit(name);
          } catch (err) {
            return Promise.reject(err);
          }
          return v.apply(target, args);
        };
      },
    });
  return {
    ...deps,
    openNetlink: (ns) => (hit('openNetlink'), wrapObj(deps.openNetlink(ns), ns ? 'pod' : 'host')),
    openNetns: (path) => (hit('openNetns'), deps.openNetns(path)),
    writeSysctl: (path, value) => (hit(`sysctl ${path}`), deps.writeSysctl(path, value)),
    store: (conf) => wrapObj(deps.store(conf), 'store'),
    masq: wrapObj(deps.masq, 'masq'),
  };
}

if (process.argv[1] === import.meta.filename) {
  const at = Number(process.env.WEFT_FAULT_AT ?? '0');
  const calls: string[] = [];
  const deps = withFaultAt(systemDeps({ log: (m) => process.stderr.write(`${m}\n`) }), at, { calls });
  let stdin = '';
  try {
    stdin = readFileSync(0, 'utf8');
  } catch {
    /* no stdin */
  }
  const code = await runSkel({ env: process.env, stdin, stdout: (s) => writeFileSync(1, s), stderr: (s) => process.stderr.write(s) }, deps);
  process.stderr.write(`fault-calls ${calls.length}\n`);
  process.exit(code);
}

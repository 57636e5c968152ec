/**
 * Picks and opens the {@link StatusSource} the flags and weftd's environment name. Today that is
 * etcd; the commands never see which.
 */
import { UsageError } from '../core/errors.ts';
import { EtcdStatusSource } from '../status/collect.ts';
import type { StatusSource } from '../status/model.ts';
import { DEFAULT_ETCD_PREFIX, EtcdSubnetManager } from '../subnet/etcd.ts';
import { intFlag, type Flags } from './args.ts';

/**
 * Opens the source; nothing is dialled until the first call. `note` gets what an operator should
 * see beside the output: a watch re-listing after a compaction or reconnect, unreadable leases.
 */
export function openSource(flags: Flags, opts: { env: NodeJS.ProcessEnv; note?: (msg: string) => void }): StatusSource {
  const env = opts.env;
  const endpoints = (flags['etcd-endpoints'] ?? env.WEFTD_ETCD_ENDPOINTS ?? 'http://127.0.0.1:2379')
    .split(',')
    .map((s) => s.trim())
    .filter(Boolean);
  if (!endpoints.length) throw new UsageError('--etcd-endpoints is empty');
  for (const e of endpoints) {
    if (!/^https?:\/\/[^/\s]+\/?$/.test(e)) throw new UsageError(`etcd endpoint "${e}" is not a URL like http://198.51.100.1:2379`);
  }
  const timeout = intFlag(flags, 'timeout') ?? 5;
  const mgr = new EtcdSubnetManager({
    endpoints,
    prefix: flags['etcd-prefix'] ?? env.WEFTD_ETCD_PREFIX ?? DEFAULT_ETCD_PREFIX,
    cafile: flags['etcd-cafile'] ?? env.WEFTD_ETCD_CAFILE,
    certfile: flags['etcd-certfile'] ?? env.WEFTD_ETCD_CERTFILE,
    keyfile: flags['etcd-keyfile'] ?? env.WEFTD_ETCD_KEYFILE,
    callTimeoutMs: timeout * 1000,
    log: {
      error: (msg: string) => opts.note?.(msg),
      warn: (msg: string) => opts.note?.(msg),
      info: (msg: string) => opts.note?.(msg),
      debug: () => undefined,
    },
  });
  return new EtcdStatusSource(mgr, { endpoints });
}

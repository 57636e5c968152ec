/**
 * net-conf.json, the network config of kube mode (kube-flannel.yml mounts it from a ConfigMap at
 * /etc/kube-flannel/net-conf.json; weft's default is /etc/kube-weft/net-conf.json). Same JSON as
 * the etcd config (`Network`, `SubnetLen`, `Backend {Type, VNI, Port}`), so it is parsed by
 * {@link parseNetworkConfig}. In kube mode the node subnets come from `spec.podCIDR`, so
 * SubnetLen/SubnetMin/SubnetMax only matter for validation.
 */
import { openSync, closeSync, fstatSync, readSync } from 'node:fs';
import { ConfigError, parseNetworkConfig, type NetworkConfig } from '../config.ts';

export const DEFAULT_NET_CONF_PATH = '/etc/kube-weft/net-conf.json';

/** A ConfigMap is at most 1 MiB; a network config is a few hundred bytes. */
const MAX_NET_CONF_BYTES = 64 * 1024;

/** Reads and parses net-conf.json; throws {@link ConfigError} naming the file. */
export function loadNetConf(path: string = DEFAULT_NET_CONF_PATH): NetworkConfig {
  let text: string;
  try {
    const fd = openSync(path, 'r');
    try {
      const size = fstatSync(fd).size;
      if (size > MAX_NET_CONF_BYTES) throw new ConfigError(`network config "${path}" is ${size} bytes (at most ${MAX_NET_CONF_BYTES})`);
      const buf = Buffer.alloc(Math.min(size, MAX_NET_CONF_BYTES) + 1);
      let n = 0;
      while (n < buf.length) {
        const r = readSync(fd, buf, n, buf.length - n, null);
        if (r <= 0) break;
        n += r;
      }
      if (n > MAX_NET_CONF_BYTES) throw new ConfigError(`network config "${path}" is larger than ${MAX_NET_CONF_BYTES} bytes`);
      text = buf.subarray(0, n).toString('utf8');
    } finally {
      closeSync(fd);
    }
  } catch (err) {
    if (err instanceof ConfigError) throw err;
    const code = (err as NodeJS.ErrnoException).code;
    throw new ConfigError(`network config "${path}" cannot be read${code ? ` (${code})` : ''}`, { cause: err });
  }
  try {
    return parseNetworkConfig(text);
  } catch (err) {
    if (err instanceof ConfigError) throw new ConfigError(`${err.message} (file "${path}")`, { cause: err });
    throw err;
  }
}

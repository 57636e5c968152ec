/**
 * The plugin's view of weftd's subnet file (format: src/core/subnetenv.ts): read it and turn
 * what can go wrong into CNI codes. Missing means weftd has not leased a subnet yet: a retryable
 * error (11), not a failure.
 */
import { readFileBounded } from '../core/readfile.ts';
import { parseSubnetEnv, SubnetEnvError, SubnetLostError, type SubnetEnv } from '../core/subnetenv.ts';
import { CniError, ERR, retryable } from './errors.ts';

/** The subnet file's contents, as the plugin uses them. */
export type SubnetInfo = SubnetEnv;

/** Parses subnet file text; throws code 7 naming what is wrong. */
export function parseSubnetFile(text: string, path = 'subnet.env'): SubnetInfo {
  try {
    return parseSubnetEnv(text);
  } catch (err) {
    // weftd is waiting to reclaim or move the subnet: try again later (STATUS turns it into 50).
    if (err instanceof SubnetLostError) throw retryable(err.message, err);
    if (err instanceof SubnetEnvError) throw new CniError(ERR.INVALID_CONFIG, `malformed subnet file "${path}": ${err.message}`);
    throw err;
  }
}

/** Reads the subnet file: missing -> retryable (11, weftd not ready); malformed -> 7; unreadable -> 5. */
export function readSubnetFile(path: string): SubnetInfo {
  let text: string;
  try {
    text = readFileBounded(path, 64 << 10); // a subnet.env is ~100 bytes
  } catch (cause) {
    if ((cause as NodeJS.ErrnoException).code === 'ENOENT') {
      throw retryable(`node daemon (weftd) is not ready: subnet file "${path}" does not exist yet`, cause);
    }
    throw new CniError(ERR.IO, `read subnet file "${path}"`, (cause as Error).message, { cause });
  }
  return parseSubnetFile(text, path);
}

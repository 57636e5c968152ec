/** STATUS: can this node serve ADD right now? Otherwise error 50 saying why. */
import { hasFree } from '../ipam/index.ts';
import { formatCIDR } from '../ip/ipv4.ts';
import { CniError, describe, ERR } from './errors.ts';
import type { Deps, Request } from './plugin.ts';
import { readSubnetFile, type SubnetInfo } from './subnetfile.ts';

export async function cmdStatus(req: Request, deps: Deps): Promise<void> {
  const { conf } = req;
  let subnet: SubnetInfo;
  try {
    subnet = readSubnetFile(conf.subnetFile);
  } catch (err) {
    throw new CniError(ERR.STATUS_NOT_READY, (err as Error).message, describe((err as Error).cause ?? ''));
  }
  const store = deps.store(conf);
  try {
    await store.checkWritable();
  } catch (err) {
    throw new CniError(ERR.STATUS_NOT_READY, (err as Error).message, describe((err as Error).cause ?? ''));
  }
  if (!(await hasFree(store, { subnet: subnet.subnet, gateway: subnet.gateway }))) {
    throw new CniError(ERR.STATUS_NOT_READY, `no free address in ${formatCIDR(subnet.subnet)}`);
  }
}

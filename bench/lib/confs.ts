/**
 * The two CNI configurations compared: weft, and Debian's bridge + host-local set up the way
 * flannel's CNI plugin delegates to them (hairpin, default gateway, MTU 1450), on the same subnet.
 */
import { writeFileSync } from 'node:fs';
import { join } from 'node:path';

export const NETWORK = '198.18.0.0/15';
export const MTU = 1450;

/** Writes a flannel-style subnet file for `subnet` (e.g. "198.18.0.0/24") and returns its path. */
export function writeSubnetEnv(dir: string, subnet: string): string {
  const [net, len] = subnet.split('/');
  const o = net.split('.').map(Number);
  const gw = `${o[0]}.${o[1]}.${o[2]}.${o[3] + 1}`;
  const file = join(dir, 'subnet.env');
  // IPMASQ=true: the node daemon masquerades, so neither side sets up per-pod masquerade (with
  // false, weft would add an nft element per pod as flannel's plugin does; the reference
  // config has no ipMasq).
  writeFileSync(file, `FLANNEL_NETWORK=${NETWORK}\nFLANNEL_SUBNET=${gw}/${len}\nFLANNEL_MTU=${MTU}\nFLANNEL_IPMASQ=true\n`);
  return file;
}

/** weft's network config, with its state kept under `dir`. */
export function weftConfig(dir: string, subnetFile: string, extra: object = {}): object {
  return {
    cniVersion: '1.0.0',
    name: 'wt-bench',
    type: 'weft',
    bridge: 'cni0',
    subnetFile,
    dataDir: join(dir, 'weft-ipam'),
    hairpinMode: true,
    isDefaultGateway: true,
    ...extra,
  };
}

/** bridge + host-local for the same subnet, with host-local's store under `dir`. */
export function refConfig(dir: string, subnet: string): object {
  const o = subnet.split('/')[0].split('.').map(Number);
  return {
    cniVersion: '1.0.0',
    name: 'wt-bench',
    type: 'bridge',
    bridge: 'cni0',
    mtu: MTU,
    hairpinMode: true,
    isGateway: true,
    isDefaultGateway: true,
    ipMasq: false,
    ipam: {
      type: 'host-local',
      dataDir: join(dir, 'host-local'),
      ranges: [[{ subnet, gateway: `${o[0]}.${o[1]}.${o[2]}.${o[3] + 1}` }]],
    },
  };
}

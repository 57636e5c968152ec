/** The vxlan backend's part of a lease: `{"VNI":1,"VtepMAC":"aa:bb:cc:dd:ee:ff"}` (flannel's). */
import { isMAC } from '../../ip/ipv4.ts';

export interface VxlanBackendData {
  vni: number;
  vtepMAC: string;
}

export function encodeBackendData(d: VxlanBackendData): { VNI: number; VtepMAC: string } {
  return { VNI: d.vni, VtepMAC: d.vtepMAC };
}

/** Parses a lease's BackendData; throws with the reason when it is not vxlan data. */
export function parseBackendData(data: unknown): VxlanBackendData {
  if (typeof data !== 'object' || data === null) throw new Error('BackendData is not an object');
  const o = data as Record<string, unknown>;
  if (typeof o.VtepMAC !== 'string' || !isMAC(o.VtepMAC)) throw new Error(`BackendData has no valid "VtepMAC"`);
  const vni = o.VNI === undefined ? 1 : o.VNI;
  if (typeof vni !== 'number' || !Number.isInteger(vni)) throw new Error('BackendData "VNI" is not an integer');
  return { vni, vtepMAC: o.VtepMAC.toLowerCase() };
}

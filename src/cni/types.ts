/** CNI spec types (containernetworking/cni SPEC.md, 0.3.0 to 1.1.0) as weft uses them. */

/** Versions weft speaks, oldest first. */
export const SUPPORTED_VERSIONS = ['0.3.0', '0.3.1', '0.4.0', '1.0.0', '1.1.0'] as const;
export type CniVersion = (typeof SUPPORTED_VERSIONS)[number];
export const LATEST_VERSION: CniVersion = '1.1.0';

export function isSupportedVersion(v: unknown): v is CniVersion {
  return typeof v === 'string' && (SUPPORTED_VERSIONS as readonly string[]).includes(v);
}

/** Compares two dotted versions numerically: negative, zero or positive. */
export function compareVersions(a: string, b: string): number {
  const pa = a.split('.').map(Number);
  const pb = b.split('.').map(Number);
  for (let i = 0; i < Math.max(pa.length, pb.length); i++) {
    const d = (pa[i] ?? 0) - (pb[i] ?? 0);
    if (d !== 0) return d;
  }
  return 0;
}

export type Command = 'ADD' | 'DEL' | 'CHECK' | 'VERSION' | 'STATUS' | 'GC';
export const COMMANDS: readonly Command[] = ['ADD', 'DEL', 'CHECK', 'VERSION', 'STATUS', 'GC'];

export interface Interface {
  name: string;
  mac?: string;
  mtu?: number;
  sandbox?: string;
}

export interface IPConfig {
  /** `a.b.c.d/len` */
  address: string;
  gateway?: string;
  /** Index into `interfaces`. */
  interface?: number;
  /** Only in 0.3.x/0.4.0 results. */
  version?: '4' | '6';
}

export interface RouteConfig {
  dst: string;
  gw?: string;
}

export interface DNS {
  nameservers?: string[];
  domain?: string;
  search?: string[];
  options?: string[];
}

/** A result in weft's internal (version-independent) form. */
export interface Result {
  cniVersion: string;
  interfaces: Interface[];
  ips: IPConfig[];
  routes: RouteConfig[];
  dns: DNS;
}

/** One attachment named in a GC request. */
export interface Attachment {
  containerID: string;
  ifname: string;
}

/** The CNI_* environment, validated for the command. */
export interface CniEnv {
  command: Command;
  containerID: string;
  /** Empty when not given (allowed for DEL). */
  netns: string;
  ifname: string;
  args: Record<string, string>;
  path: string[];
}

/**
 * Parsing and validating a CNI request: the CNI_* environment and the network configuration on
 * stdin. Everything a later step relies on (names used in paths, link names, numbers) is checked
 * here, so bad input fails before anything is created.
 */
import { posix } from 'node:path';
import { CniError, ERR } from './errors.ts';
import { COMMANDS, compareVersions, isSupportedVersion, SUPPORTED_VERSIONS, type Attachment, type CniEnv, type CniVersion, type Command } from './types.ts';

/** The network configuration weft reads, defaults applied. */
export interface NetConf {
  cniVersion: CniVersion;
  name: string;
  type: string;
  /** The node daemon's subnet file (flannel's format). */
  subnetFile: string;
  /** Parent of the per-network IPAM directory, as host-local's `dataDir`. */
  dataDir: string;
  bridge: string;
  hairpinMode: boolean;
  isDefaultGateway: boolean;
  /** Overrides FLANNEL_MTU when set. */
  mtu?: number;
  /**
   * Masquerade this pod's traffic leaving the pod network (./masq.ts). Unset: exactly when
   * weftd does not (FLANNEL_IPMASQ=false), as flannel's plugin sets the bridge plugin's ipMasq.
   */
  ipMasq?: boolean;
  /** The previous plugin's result (chained ADD, CHECK, DEL), as sent. */
  prevResult?: Record<string, unknown>;
  /** GC: attachments still in use. */
  validAttachments?: Attachment[];
}

export const DEFAULTS = {
  subnetFile: '/run/flannel/subnet.env',
  dataDir: '/var/lib/cni/networks',
  bridge: 'cni0',
  hairpinMode: true,
  isDefaultGateway: true,
} as const;

/**
 * The one network a server (weftd's fast path) serves. A request may leave these out (it gets
 * them) or name exactly these; naming anything else is refused, never widened to it.
 */
export interface OwnNetwork {
  subnetFile: string;
  dataDir: string;
  bridge: string;
}

/** `a//b/./c/` -> `/a/b/c`: the same path spelt differently is still the same. */
function samePath(a: string, b: string): boolean {
  const norm = (p: string) => posix.normalize(p).replace(/(.)\/+$/, '$1');
  return norm(a) === norm(b);
}

/** Refuses a request field that is not the server's own; returns the value to use. */
function confined(o: Record<string, unknown>, field: { key: keyof OwnNetwork; own: string }): string {
  const { key, own } = field;
  const v = o[key];
  if (v === undefined) return own;
  const same = typeof v === 'string' && (key === 'bridge' ? v === own : v.startsWith('/') && samePath(v, own));
  if (!same) {
    throw configError(`"${key}" ${JSON.stringify(v).slice(0, 200)} is not this node's network`, `weftd serves only its own network (${key} ${own}); leave "${key}" out or use that`);
  }
  return own;
}

/** libcni's rule for container IDs and network names: safe as file names and file content. */
const SAFE_ID = /^[a-zA-Z0-9][a-zA-Z0-9_.-]*$/;
const MAX_ID_LEN = 1024;

/** True when `name` is a valid Linux interface name (what CNI's ValidateInterfaceName checks). */
export function isValidIfname(name: string): boolean {
  return name.length > 0 && name.length <= 15 && name !== '.' && name !== '..' && !/[/:\s]/.test(name);
}

/** True when `id` cannot escape a directory or break the `<id>\r\n<ifname>` store format. */
export function isValidContainerID(id: string): boolean {
  return id.length <= MAX_ID_LEN && SAFE_ID.test(id);
}

function envError(msg: string, details = ''): CniError {
  return new CniError(ERR.INVALID_ENV, msg, details);
}

/** Parses `CNI_ARGS` (`K=V;K=V`). */
export function parseCniArgs(text: string): Record<string, string> {
  const out: Record<string, string> = {};
  if (!text) return out;
  for (const pair of text.split(';')) {
    if (!pair) continue;
    const eq = pair.indexOf('=');
    if (eq <= 0) throw envError('invalid CNI_ARGS: expected K=V pairs separated by ";"', pair);
    out[pair.slice(0, eq)] = pair.slice(eq + 1);
  }
  return out;
}

/** Reads the command from the environment; missing or unknown -> code 4. */
export function parseCommand(env: Record<string, string | undefined>): Command {
  const command = env.CNI_COMMAND;
  if (!command) throw envError('missing CNI_COMMAND');
  if (!(COMMANDS as readonly string[]).includes(command)) {
    throw envError(`unknown CNI_COMMAND "${command}"`, `expected one of ${COMMANDS.join(', ')}`);
  }
  return command as Command;
}

/** Parses and validates the CNI_* variables the command needs. Throws code 4. */
export function parseEnv(env: Record<string, string | undefined>): CniEnv {
  const command = parseCommand(env);
  const perContainer = command === 'ADD' || command === 'DEL' || command === 'CHECK';
  const containerID = env.CNI_CONTAINERID ?? '';
  const netns = env.CNI_NETNS ?? '';
  const ifname = env.CNI_IFNAME ?? '';
  if (perContainer) {
    if (!containerID) throw envError('missing CNI_CONTAINERID');
    if (!isValidContainerID(containerID)) {
      throw envError('invalid characters in CNI_CONTAINERID', 'allowed: letters, digits, "_", ".", "-", starting with a letter or digit');
    }
    if (!ifname) throw envError('missing CNI_IFNAME');
    if (!isValidIfname(ifname)) throw envError(`invalid CNI_IFNAME "${ifname}"`, 'at most 15 characters, no "/", ":" or whitespace');
    if (command !== 'DEL' && !netns) throw envError('missing CNI_NETNS');
    if (netns && !netns.startsWith('/')) throw envError(`invalid CNI_NETNS "${netns}": not an absolute path`);
  }
  return {
    command,
    containerID,
    netns,
    ifname,
    args: parseCniArgs(env.CNI_ARGS ?? ''),
    path: (env.CNI_PATH ?? '').split(':').filter(Boolean),
  };
}

function configError(msg: string, details = ''): CniError {
  return new CniError(ERR.INVALID_CONFIG, msg, details);
}

function optString(raw: Record<string, unknown>, key: string, dflt: string): string {
  const v = raw[key];
  if (v === undefined) return dflt;
  if (typeof v !== 'string' || v === '') throw configError(`invalid "${key}": expected a non-empty string`);
  return v;
}

function optBool(raw: Record<string, unknown>, key: string, dflt: boolean): boolean {
  const v = raw[key];
  if (v === undefined) return dflt;
  if (typeof v !== 'boolean') throw configError(`invalid "${key}": expected true or false`);
  return v;
}

/** Reads `cniVersion` from raw stdin, for error replies, without validating anything else. */
export function peekVersion(stdin: string): string | undefined {
  try {
    const v = (JSON.parse(stdin) as { cniVersion?: unknown }).cniVersion;
    return isSupportedVersion(v) ? v : undefined;
  } catch {
    return undefined;
  }
}

function parseAttachments(v: unknown, key: string): Attachment[] {
  if (!Array.isArray(v)) throw configError(`invalid "${key}": expected a list of {containerID, ifname}`);
  return v.map((a, i) => {
    const o = a as Record<string, unknown> | null;
    if (!o || typeof o !== 'object' || typeof o.containerID !== 'string' || typeof o.ifname !== 'string') {
      throw configError(`invalid "${key}"[${i}]: expected {containerID, ifname}`);
    }
    return { containerID: o.containerID, ifname: o.ifname };
  });
}

/**
 * Parses the network configuration. Malformed JSON -> 6; missing or unsupported cniVersion -> 1;
 * anything else invalid -> 7. With `own`, subnetFile, dataDir and bridge are confined to that
 * network ({@link OwnNetwork}).
 */
export function parseConf(stdin: string, command: Command, opts: { own?: OwnNetwork } = {}): NetConf {
  let raw: unknown;
  try {
    raw = JSON.parse(stdin);
  } catch (cause) {
    throw new CniError(ERR.DECODE, 'malformed network configuration: not valid JSON', (cause as Error).message);
  }
  if (!raw || typeof raw !== 'object' || Array.isArray(raw)) {
    throw new CniError(ERR.DECODE, 'malformed network configuration: expected a JSON object');
  }
  const o = raw as Record<string, unknown>;
  if (o.cniVersion === undefined || o.cniVersion === '') {
    throw new CniError(ERR.INCOMPATIBLE_VERSION, 'missing cniVersion', `supported: ${SUPPORTED_VERSIONS.join(', ')}`);
  }
  if (!isSupportedVersion(o.cniVersion)) {
    throw new CniError(ERR.INCOMPATIBLE_VERSION, `unsupported cniVersion "${String(o.cniVersion)}"`, `supported: ${SUPPORTED_VERSIONS.join(', ')}`);
  }
  const cniVersion = o.cniVersion;
  if (command === 'CHECK' && compareVersions(cniVersion, '0.4.0') < 0) {
    throw new CniError(ERR.INCOMPATIBLE_VERSION, `config version ${cniVersion} does not allow CHECK`, 'CHECK needs cniVersion 0.4.0 or later');
  }
  if ((command === 'STATUS' || command === 'GC') && compareVersions(cniVersion, '1.1.0') < 0) {
    throw new CniError(ERR.INCOMPATIBLE_VERSION, `config version ${cniVersion} does not allow ${command}`, `${command} needs cniVersion 1.1.0 or later`);
  }
  if (typeof o.name !== 'string' || o.name === '') throw configError('missing network name');
  if (!isValidContainerID(o.name) || o.name.length > 255) throw configError(`invalid network name "${o.name}"`, 'allowed: letters, digits, "_", ".", "-"');
  if (o.type !== undefined && typeof o.type !== 'string') throw configError('invalid "type": expected a string');

  const { own } = opts;
  const bridge = own ? confined(o, { key: 'bridge', own: own.bridge }) : optString(o, 'bridge', DEFAULTS.bridge);
  if (!isValidIfname(bridge)) throw configError(`invalid "bridge" "${bridge}": not a valid interface name`);
  const dataDir = own ? confined(o, { key: 'dataDir', own: own.dataDir }) : optString(o, 'dataDir', DEFAULTS.dataDir);
  if (!dataDir.startsWith('/')) throw configError(`invalid "dataDir" "${dataDir}": not an absolute path`);
  const subnetFile = own ? confined(o, { key: 'subnetFile', own: own.subnetFile }) : optString(o, 'subnetFile', DEFAULTS.subnetFile);
  if (!subnetFile.startsWith('/')) throw configError(`invalid "subnetFile" "${subnetFile}": not an absolute path`);

  let mtu: number | undefined;
  if (o.mtu !== undefined) {
    if (typeof o.mtu !== 'number' || !Number.isInteger(o.mtu) || o.mtu < 68 || o.mtu > 65535) {
      throw configError(`invalid "mtu" ${JSON.stringify(o.mtu)}: expected an integer between 68 and 65535`);
    }
    mtu = o.mtu;
  }

  let prevResult: Record<string, unknown> | undefined;
  if (o.prevResult !== undefined) {
    if (!o.prevResult || typeof o.prevResult !== 'object' || Array.isArray(o.prevResult)) {
      throw configError('invalid "prevResult": expected an object');
    }
    prevResult = o.prevResult as Record<string, unknown>;
  }

  const conf: NetConf = {
    cniVersion,
    name: o.name,
    type: typeof o.type === 'string' ? o.type : '',
    subnetFile,
    dataDir,
    bridge,
    hairpinMode: optBool(o, 'hairpinMode', DEFAULTS.hairpinMode),
    isDefaultGateway: optBool(o, 'isDefaultGateway', DEFAULTS.isDefaultGateway),
    mtu,
    prevResult,
  };
  if (o.ipMasq !== undefined) conf.ipMasq = optBool(o, 'ipMasq', false);
  if (command === 'GC') {
    // Spec 1.1 names the key cni.dev/valid-attachments; older drafts and libcni used cni.dev/attachments.
    const key = o['cni.dev/valid-attachments'] !== undefined ? 'cni.dev/valid-attachments' : 'cni.dev/attachments';
    if (o[key] === undefined) throw configError('GC needs "cni.dev/valid-attachments"', 'refusing to release every allocation');
    conf.validAttachments = parseAttachments(o[key], key);
  }
  return conf;
}

/**
 * CNI errors. Code that knows *why* an operation cannot succeed throws {@link CniError} with a
 * spec code; everything else is a plain error that the skel reports as {@link ERR.INTERNAL}.
 * The mapping to the spec's JSON happens in one place only: `toErrorJson` below, used by skel.
 */

/** Error codes: 1-11 and 50-51 from the CNI spec, 100+ weft's own. */
export const ERR = {
  INCOMPATIBLE_VERSION: 1,
  UNSUPPORTED_FIELD: 2,
  UNKNOWN_CONTAINER: 3,
  INVALID_ENV: 4,
  IO: 5,
  DECODE: 6,
  INVALID_CONFIG: 7,
  TRY_AGAIN_LATER: 11,
  STATUS_NOT_READY: 50,
  STATUS_PODS_AFFECTED: 51,
  /** The interface name is already taken inside the pod's namespace. */
  IFACE_EXISTS: 100,
  /** The bridge exists but is not a bridge, or carries a different gateway address. */
  BRIDGE_CONFLICT: 101,
  /** The node subnet has no free address left. */
  NO_FREE_ADDRESS: 102,
  /** CHECK found the live state different from prevResult. */
  CHECK_MISMATCH: 103,
  /** The host veth name is taken (a stale attachment of the same container that DEL will clear). */
  VETH_EXISTS: 104,
  INTERNAL: 999,
} as const;

export type ErrCode = (typeof ERR)[keyof typeof ERR];

/** An error with a CNI code, reported as `{code, msg, details}`. */
export class CniError extends Error {
  readonly code: number;
  readonly details: string;
  constructor(code: number, msg: string, details = '', options?: { cause?: unknown }) {
    super(msg, options);
    this.name = 'CniError';
    this.code = code;
    this.details = details;
  }
}

/** Marks an error as transient: the runtime should retry (CNI code 11). */
export const RETRYABLE: unique symbol = Symbol.for('weft.retryable');

/** Wraps `cause` so it is reported as code 11 with `msg`. */
export function retryable(msg: string, cause?: unknown): Error {
  const err = new Error(msg, { cause });
  (err as unknown as Record<symbol, boolean>)[RETRYABLE] = true;
  return err;
}

export function isRetryable(err: unknown): boolean {
  return err instanceof Error && (err as unknown as Record<symbol, unknown>)[RETRYABLE] === true;
}

/** The spec's error object. */
export interface ErrorJson {
  cniVersion: string;
  code: number;
  msg: string;
  details?: string;
}

/** Full message chain of an error and its causes, for `details`. */
export function describe(err: unknown): string {
  const parts: string[] = [];
  let cur: unknown = err;
  for (let depth = 0; cur !== undefined && depth < 8; depth++) {
    if (cur instanceof Error) {
      parts.push(cur.message);
      cur = cur.cause;
    } else {
      parts.push(String(cur));
      break;
    }
  }
  return parts.join(': ');
}

/** Maps any thrown value to the spec's error JSON. The only place this happens. */
export function toErrorJson(err: unknown, cniVersion: string): ErrorJson {
  if (err instanceof CniError) {
    const out: ErrorJson = { cniVersion, code: err.code, msg: err.message };
    const details = err.details || (err.cause !== undefined ? describe(err.cause) : '');
    if (details) out.details = details;
    return out;
  }
  if (isRetryable(err)) {
    const e = err as Error;
    const out: ErrorJson = { cniVersion, code: ERR.TRY_AGAIN_LATER, msg: e.message };
    if (e.cause !== undefined) out.details = describe(e.cause);
    return out;
  }
  const msg = err instanceof Error ? err.message : String(err);
  const out: ErrorJson = { cniVersion, code: ERR.INTERNAL, msg };
  const details = describe(err);
  if (details !== msg) out.details = details;
  return out;
}

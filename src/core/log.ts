/**
 * The one logging surface every role uses (a winston Logger satisfies it). Messages are lower
 * case and name what failed; per-peer and per-request detail goes to debug.
 */
export interface Log {
  error(msg: string, meta?: Record<string, unknown>): unknown;
  warn(msg: string, meta?: Record<string, unknown>): unknown;
  info(msg: string, meta?: Record<string, unknown>): unknown;
  debug(msg: string, meta?: Record<string, unknown>): unknown;
}

/** A Log that drops everything (tests, callers that have nothing to say). */
export const silentLog: Log = { error() {}, warn() {}, info() {}, debug() {} };

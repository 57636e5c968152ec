/**
 * Errors every role shares. Kept free of imports so the CNI plugin's bundle can use it.
 * - {@link UsageError}: bad flags or arguments; the entry points print usage and exit 2.
 * - {@link markRetryable} / {@link isRetryable}: one marker for conditions worth retrying
 *   (etcd or the API server unreachable, the daemon not ready yet), as microsoft/etcd3 marks
 *   recoverable errors with a symbol; the CNI skel maps them to code 11.
 * - {@link errText}: an error and its causes on one line, for logs and CLI messages.
 */

/** Bad command-line usage (flags, arguments, their environment variables). */
export class UsageError extends Error {
  constructor(message: string, options?: { cause?: unknown }) {
    super(message, options);
    this.name = 'UsageError';
  }
}

const RETRYABLE = Symbol.for('weft.retryable');

/** Marks `err` as worth retrying and returns it. */
export function markRetryable<E extends Error>(err: E): E {
  (err as unknown as Record<symbol, boolean>)[RETRYABLE] = true;
  return err;
}

/** True when `err` or one of its causes was marked with {@link markRetryable}. */
export function isRetryable(err: unknown): boolean {
  for (let e = err, i = 0; e && i < 8; e = (e as { cause?: unknown }).cause, i++) {
    if (typeof e === 'object' && (e as Record<symbol, unknown>)[RETRYABLE]) return true;
  }
  return false;
}

/** An error's message with its causes, for one log line: `outer: inner: root`. */
export function errText(err: unknown): string {
  const parts: string[] = [];
  for (let e = err, i = 0; e && i < 5; e = (e as { cause?: unknown }).cause, i++) {
    const msg = e instanceof Error ? e.message : String(e);
    // Wrappers often repeat their cause's text already ("etcd put failed: <cause>").
    if (!parts.length || !parts[parts.length - 1]!.endsWith(msg)) parts.push(msg);
  }
  return parts.join(': ');
}

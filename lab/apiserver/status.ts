/**
 * API errors as kube-apiserver reports them: a `Status` object (kind Status, status Failure,
 * reason, code, details) with the matching HTTP code. Handlers throw {@link ApiError}; the
 * server turns it into a response in one place.
 */

/** The `reason` values this server uses (metav1.StatusReason). */
export type StatusReason =
  | 'BadRequest'
  | 'NotFound'
  | 'AlreadyExists'
  | 'Conflict'
  | 'Gone'
  | 'Invalid'
  | 'MethodNotAllowed'
  | 'NotAcceptable'
  | 'UnsupportedMediaType'
  | 'RequestEntityTooLarge'
  | 'InternalError'
  | 'Expired'
  | 'ServiceUnavailable'
  | 'Timeout'
  | 'Forbidden'
  | 'TooManyRequests';

export interface StatusDetails {
  name?: string;
  group?: string;
  kind?: string;
  uid?: string;
  causes?: Array<{ reason?: string; message: string; field?: string }>;
}

/** A metav1.Status object. */
export interface Status {
  kind: 'Status';
  apiVersion: 'v1';
  metadata: Record<string, never>;
  status: 'Success' | 'Failure';
  message?: string;
  reason?: StatusReason;
  details?: StatusDetails;
  code: number;
}

/** An error the client sees as a Status with `code` and `reason`. */
export class ApiError extends Error {
  readonly code: number;
  readonly reason: StatusReason;
  readonly details: StatusDetails | undefined;

  constructor(code: number, reason: StatusReason, message: string, details?: StatusDetails) {
    super(message);
    this.name = 'ApiError';
    this.code = code;
    this.reason = reason;
    this.details = details;
  }

  toStatus(): Status {
    return failure(this.code, this.reason, this.message, this.details);
  }
}

export function failure(code: number, reason: StatusReason, message: string, details?: StatusDetails): Status {
  return { kind: 'Status', apiVersion: 'v1', metadata: {}, status: 'Failure', message, reason, ...(details ? { details } : {}), code };
}

/** What a resource's errors name: `nodes "n1"`, as kube words it. */
export interface ResourceRef {
  group: string;
  resource: string;
  kind: string;
  name: string;
}

function qualified(r: ResourceRef): string {
  return r.group ? `${r.resource}.${r.group}` : r.resource;
}

export function notFound(r: ResourceRef): ApiError {
  return new ApiError(404, 'NotFound', `${qualified(r)} "${r.name}" not found`, { name: r.name, group: r.group || undefined, kind: r.resource });
}

export function alreadyExists(r: ResourceRef): ApiError {
  return new ApiError(409, 'AlreadyExists', `${qualified(r)} "${r.name}" already exists`, { name: r.name, group: r.group || undefined, kind: r.resource });
}

export function conflict(r: ResourceRef, why: string): ApiError {
  return new ApiError(409, 'Conflict', `Operation cannot be fulfilled on ${qualified(r)} "${r.name}": ${why}`, {
    name: r.name,
    group: r.group || undefined,
    kind: r.resource,
  });
}

/** 422 with one cause per problem, like field validation errors. */
export function invalid(r: ResourceRef, causes: Array<{ field: string; message: string }>): ApiError {
  const list = causes.map((c) => `${c.field}: ${c.message}`).join(', ');
  return new ApiError(422, 'Invalid', `${r.kind} "${r.name}" is invalid: ${list}`, {
    name: r.name,
    group: r.group || undefined,
    kind: r.kind,
    causes: causes.map((c) => ({ reason: 'FieldValueInvalid', message: c.message, field: c.field })),
  });
}

export function badRequest(message: string): ApiError {
  return new ApiError(400, 'BadRequest', message);
}

/** The watch ERROR / HTTP 410 answer for a compacted resourceVersion. */
export function gone(rv: string): ApiError {
  return new ApiError(410, 'Expired', `The resourceVersion for the provided watch is too old. (requested ${rv})`);
}

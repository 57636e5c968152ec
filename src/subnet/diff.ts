/**
 * The one lease diff: what changed between two views of the lease table. The watch's resync
 * (src/subnet/resync.ts) uses it with "newer etcd revision" as the test for a change; others
 * compare the published attributes (the default).
 */
import { leaseId, sameAttrs, type Lease } from './lease.ts';

export interface LeaseDiff {
  added: Lease[];
  changed: Array<{ before: Lease; after: Lease }>;
  removed: Lease[];
}

export interface DiffOptions {
  /** True when `after` is no change from `before` (same subnet); default {@link sameAttrs}. */
  same?: (before: Lease, after: Lease) => boolean;
}

/** Compares two lease sets by subnet. */
export function diffLeases(before: Iterable<Lease>, after: Iterable<Lease>, opts: DiffOptions = {}): LeaseDiff {
  const same = opts.same ?? sameAttrs;
  const old = new Map<string, Lease>();
  for (const l of before) old.set(leaseId(l), l);
  const out: LeaseDiff = { added: [], changed: [], removed: [] };
  const seen = new Set<string>();
  for (const l of after) {
    const id = leaseId(l);
    seen.add(id);
    const prev = old.get(id);
    if (!prev) out.added.push(l);
    else if (!same(prev, l)) out.changed.push({ before: prev, after: l });
  }
  for (const [id, l] of old) if (!seen.has(id)) out.removed.push(l);
  return out;
}

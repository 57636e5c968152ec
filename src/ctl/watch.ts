/**
 * Turns a {@link StatusSource} watch (snapshots, puts, deletes) into kubectl's watch events
 * against the table already printed: a snapshot after a re-list is diffed with it, so changes
 * made while the stream was down still show up, once each.
 */
import type { NodeEvent, NodeLease, NodeWatchHandler } from '../status/model.ts';

function sameVerdict(a: NodeLease, b: NodeLease): boolean {
  return a.kube?.annotations.state === b.kube?.annotations.state && a.kube?.annotations.reason === b.kube?.annotations.reason;
}

/** The nodes printed so far, by key; emits an event for each change. */
export class NodeEvents implements NodeWatchHandler {
  readonly #known = new Map<string, NodeLease>();
  readonly #emit: (ev: NodeEvent) => void;

  /** `printed`: the listing already shown; `emit` gets each change after it. */
  constructor(printed: NodeLease[], emit: (ev: NodeEvent) => void) {
    for (const n of printed) this.#known.set(n.key, n);
    this.#emit = emit;
  }

  snapshot(nodes: NodeLease[]): void {
    const seen = new Set<string>();
    for (const n of nodes) {
      seen.add(n.key);
      this.put(n);
    }
    for (const key of [...this.#known.keys()]) if (!seen.has(key)) this.delete(key);
  }

  /**
   * A node that is new or at a new revision; a repeat of a known revision is dropped, unless
   * (kube) the node was judged differently because of another node (a podCIDR conflict).
   */
  put(node: NodeLease): void {
    const old = this.#known.get(node.key);
    if (old && old.modRevision === node.modRevision && sameVerdict(old, node)) return;
    this.#known.set(node.key, node);
    this.#emit({ type: old ? 'MODIFIED' : 'ADDED', node });
  }

  /** A delete carries no value: the node is reported as last seen, without its (gone) lease times. */
  delete(key: string): void {
    const node = this.#known.get(key);
    if (!node) return;
    this.#known.delete(key);
    this.#emit({ type: 'DELETED', node: { ...node, expiresInSeconds: undefined, leaseAgeSeconds: undefined } });
  }
}

/**
 * The three PATCH bodies kube-apiserver takes, applied to plain JSON (pure functions):
 * - JSON merge patch (RFC 7386, `application/merge-patch+json`): objects merge, null deletes,
 *   anything else (lists too) replaces.
 * - Strategic merge patch (`application/strategic-merge-patch+json`): like a merge patch, but
 *   lists named in the kind's {@link PatchSchema} merge by a key (node conditions by `type`,
 *   service ports by `port`) or as sets of primitives; directives `$patch: replace|delete`,
 *   `$retainKeys`, `$deleteFromPrimitiveList/<f>` and `$setElementOrder/<f>` (kubectl apply
 *   sends the last one) as apimachinery's strategicpatch package reads them.
 * - JSON patch (RFC 6902, `application/json-patch+json`): add/remove/replace/move/copy/test.
 * Failures are {@link PatchError}s (the server answers 422 or 400).
 */

export type Json = null | boolean | number | string | Json[] | { [k: string]: Json };
type Obj = { [k: string]: Json };

/** Dotted field paths (list items add nothing to the path) -> how that list merges. */
export type PatchSchema = Record<string, { mergeKey?: string; primitive?: true }>;

export class PatchError extends Error {
  constructor(message: string) {
    super(message);
    this.name = 'PatchError';
  }
}

const MAX_DEPTH = 64;
const MAX_OPS = 10_000;

function isObj(v: unknown): v is Obj {
  return typeof v === 'object' && v !== null && !Array.isArray(v);
}

function clone<T extends Json>(v: T): T {
  return structuredClone(v);
}

/** RFC 7386. */
export function mergePatch(target: Json, patch: Json, depth = 0): Json {
  if (depth > MAX_DEPTH) throw new PatchError('patch nests too deeply');
  if (!isObj(patch)) return clone(patch);
  const out: Obj = isObj(target) ? { ...target } : {};
  for (const [k, v] of Object.entries(patch)) {
    if (v === null) delete out[k];
    else out[k] = mergePatch(out[k] ?? null, v, depth + 1);
  }
  return out;
}

/** A strategic merge patch against `original` with the kind's list semantics in `schema`. */
export function strategicMergePatch(original: Json, patch: Json, schema: PatchSchema): Json {
  if (!isObj(patch)) throw new PatchError('a strategic merge patch must be a JSON object');
  const res = smpMap(isObj(original) ? original : {}, patch, { schema, path: '', depth: 0 });
  return res ?? {};
}

interface Ctx {
  schema: PatchSchema;
  path: string;
  depth: number;
}

function sub(ctx: Ctx, key: string): Ctx {
  if (ctx.depth >= MAX_DEPTH) throw new PatchError('patch nests too deeply');
  return { schema: ctx.schema, path: ctx.path ? `${ctx.path}.${key}` : key, depth: ctx.depth + 1 };
}

/** Merges map `patch` into `orig`; undefined means "delete this map" (`$patch: delete`). */
function smpMap(orig: Obj, patch: Obj, ctx: Ctx): Obj | undefined {
  const directive = patch.$patch;
  if (directive !== undefined) {
    if (directive === 'delete') return undefined;
    if (directive === 'replace') {
      const { $patch: _, ...rest } = patch;
      return stripDirectives(rest) as Obj;
    }
    if (directive !== 'merge') throw new PatchError(`unknown patch directive "${String(directive)}"`);
  }
  const out: Obj = { ...orig };
  const orders: Array<[string, Json]> = [];
  for (const [k, v] of Object.entries(patch)) {
    if (k === '$patch' || k === '$retainKeys') continue;
    if (k.startsWith('$setElementOrder/')) {
      orders.push([k.slice('$setElementOrder/'.length), v]);
      continue;
    }
    if (k.startsWith('$deleteFromPrimitiveList/')) {
      const f = k.slice('$deleteFromPrimitiveList/'.length);
      if (!Array.isArray(v)) throw new PatchError(`${k} must be a list`);
      const cur = out[f];
      if (Array.isArray(cur)) out[f] = cur.filter((x) => !v.some((d) => deepEqual(d, x)));
      continue;
    }
    if (k.startsWith('$')) throw new PatchError(`unknown patch directive key "${k}"`);
    if (v === null) {
      delete out[k];
      continue;
    }
    const c = sub(ctx, k);
    const cur = out[k];
    if (isObj(v)) {
      const merged = smpMap(isObj(cur) ? cur : {}, v, c);
      if (merged === undefined) delete out[k];
      else out[k] = merged;
    } else if (Array.isArray(v)) {
      out[k] = smpList(Array.isArray(cur) ? cur : [], v, c);
    } else {
      out[k] = v;
    }
  }
  if (patch.$retainKeys !== undefined) {
    const keep = patch.$retainKeys;
    if (!Array.isArray(keep) || !keep.every((x) => typeof x === 'string')) throw new PatchError('$retainKeys must be a list of strings');
    for (const k of Object.keys(out)) if (!keep.includes(k)) delete out[k];
  }
  for (const [f, order] of orders) {
    if (!Array.isArray(order)) throw new PatchError(`$setElementOrder/${f} must be a list`);
    const cur = out[f];
    if (Array.isArray(cur)) out[f] = reorder(cur, order, ctx.schema[sub(ctx, f).path]?.mergeKey);
  }
  return out;
}

function smpList(orig: Json[], patch: Json[], ctx: Ctx): Json[] {
  const how = ctx.schema[ctx.path];
  if (!how) return stripDirectives(patch) as Json[];
  if (how.primitive || !how.mergeKey) {
    const out = [...orig];
    for (const x of patch) if (!out.some((o) => deepEqual(o, x))) out.push(clone(x));
    return out;
  }
  const key = how.mergeKey;
  // `[{"$patch": "replace"}, ...items]` replaces the whole list.
  if (patch.some((p) => isObj(p) && p.$patch === 'replace' && Object.keys(p).length === 1)) {
    return patch.filter((p) => !(isObj(p) && p.$patch === 'replace')).map((p) => stripDirectives(p));
  }
  let out: Json[] = [...orig];
  for (const p of patch) {
    if (!isObj(p)) throw new PatchError(`${ctx.path}: list items must be objects (merge key "${key}")`);
    if (p[key] === undefined) throw new PatchError(`${ctx.path}: an item lacks the merge key "${key}"`);
    const i = out.findIndex((o) => isObj(o) && deepEqual(o[key] ?? null, p[key]!));
    if (p.$patch === 'delete') {
      if (i >= 0) out = out.filter((_, j) => j !== i);
      continue;
    }
    if (i < 0) {
      const fresh = smpMap({}, p, ctx);
      if (fresh) out.push(fresh);
    } else {
      const merged = smpMap(out[i] as Obj, p, ctx);
      if (merged === undefined) out = out.filter((_, j) => j !== i);
      else out[i] = merged;
    }
  }
  return out;
}

/** Orders `list` as `order` says (items it does not name keep their place after those it does). */
function reorder(list: Json[], order: Json[], mergeKey: string | undefined): Json[] {
  const id = (x: Json) => (mergeKey && isObj(x) ? (x[mergeKey] ?? null) : x);
  const named: Json[] = [];
  const rest: Json[] = [];
  for (const x of list) (order.some((o) => deepEqual(id(o), id(x))) ? named : rest).push(x);
  named.sort((a, b) => order.findIndex((o) => deepEqual(id(o), id(a))) - order.findIndex((o) => deepEqual(id(o), id(b))));
  return [...named, ...rest];
}

function stripDirectives(v: Json): Json {
  if (Array.isArray(v)) return v.map(stripDirectives);
  if (!isObj(v)) return v;
  const out: Obj = {};
  for (const [k, x] of Object.entries(v)) if (!k.startsWith('$')) out[k] = stripDirectives(x);
  return out;
}

export function deepEqual(a: Json, b: Json): boolean {
  if (a === b) return true;
  if (Array.isArray(a)) return Array.isArray(b) && a.length === b.length && a.every((x, i) => deepEqual(x, b[i]!));
  if (isObj(a) && isObj(b)) {
    const ka = Object.keys(a);
    if (ka.length !== Object.keys(b).length) return false;
    return ka.every((k) => Object.hasOwn(b, k) && deepEqual(a[k]!, b[k]!));
  }
  return false;
}

/** RFC 6901 pointer -> reference tokens. */
function tokens(ptr: unknown): string[] {
  if (typeof ptr !== 'string') throw new PatchError('a JSON patch path must be a string');
  if (ptr === '') return [];
  if (!ptr.startsWith('/')) throw new PatchError(`invalid JSON pointer "${ptr}"`);
  return ptr
    .slice(1)
    .split('/')
    .map((t) => t.replace(/~1/g, '/').replace(/~0/g, '~'));
}

function arrayIndex(t: string, len: number, forAdd: boolean): number {
  if (forAdd && t === '-') return len;
  if (!/^(0|[1-9][0-9]*)$/.test(t)) throw new PatchError(`invalid array index "${t}"`);
  const i = Number(t);
  if (i > len || (!forAdd && i === len)) throw new PatchError(`array index ${i} out of range`);
  return i;
}

function getAt(doc: Json, toks: string[]): Json {
  let cur: Json = doc;
  for (const t of toks) {
    if (Array.isArray(cur)) cur = cur[arrayIndex(t, cur.length, false)]!;
    else if (isObj(cur) && Object.hasOwn(cur, t)) cur = cur[t]!;
    else throw new PatchError(`path "/${toks.join('/')}" does not exist`);
  }
  return cur;
}

/** Applies one change at the parent of `toks`; `root` is replaced when toks is empty. */
function mutate(doc: Json, toks: string[], op: 'add' | 'remove' | 'replace', value?: Json): Json {
  if (toks.length === 0) {
    if (op === 'remove') throw new PatchError('cannot remove the whole document');
    return value!;
  }
  const parent = getAt(doc, toks.slice(0, -1));
  const last = toks[toks.length - 1]!;
  if (Array.isArray(parent)) {
    const i = arrayIndex(last, parent.length, op === 'add');
    if (op === 'add') parent.splice(i, 0, value!);
    else if (op === 'remove') parent.splice(i, 1);
    else parent[i] = value!;
  } else if (isObj(parent)) {
    if (op !== 'add' && !Object.hasOwn(parent, last)) throw new PatchError(`path "/${toks.join('/')}" does not exist`);
    if (op === 'remove') delete parent[last];
    else parent[last] = value!;
  } else {
    throw new PatchError(`path "/${toks.join('/')}" has no parent object`);
  }
  return doc;
}

/** RFC 6902; the document is copied first, so a failed patch leaves `doc` untouched. */
export function jsonPatch(doc: Json, ops: Json): Json {
  if (!Array.isArray(ops)) throw new PatchError('a JSON patch must be a list of operations');
  if (ops.length > MAX_OPS) throw new PatchError('too many JSON patch operations');
  let out = clone(doc);
  for (const raw of ops) {
    if (!isObj(raw)) throw new PatchError('a JSON patch operation must be an object');
    const path = tokens(raw.path);
    switch (raw.op) {
      case 'add':
      case 'replace':
        if (!Object.hasOwn(raw, 'value')) throw new PatchError(`"${raw.op}" needs a value`);
        out = mutate(out, path, raw.op, clone(raw.value!));
        break;
      case 'remove':
        out = mutate(out, path, 'remove');
        break;
      case 'copy':
      case 'move': {
        const from = tokens(raw.from);
        const v = clone(getAt(out, from));
        if (raw.op === 'move') {
          if (path.length > from.length && from.every((t, i) => path[i] === t)) throw new PatchError('cannot move a value into itself');
          out = mutate(out, from, 'remove');
        }
        out = mutate(out, path, 'add', v);
        break;
      }
      case 'test':
        if (!deepEqual(getAt(out, path), raw.value ?? null)) throw new PatchError(`test at "${String(raw.path)}" failed`);
        break;
      default:
        throw new PatchError(`unknown JSON patch operation ${JSON.stringify(raw.op)}`);
    }
  }
  return out;
}

/**
 * Label and field selectors in the query-string syntax kube-apiserver accepts
 * (k8s.io/apimachinery/pkg/labels): `a=b`, `a==b`, `a!=b`, `a in (x,y)`, `a notin (x)`, `a`, `!a`,
 * joined by commas. Pure; parse errors are {@link badRequest}s.
 */
import { badRequest } from './status.ts';

export type Requirement = { key: string; op: 'eq' | 'neq'; value: string } | { key: string; op: 'in' | 'notin'; values: string[] } | { key: string; op: 'exists' | 'notexists' };

export type Selector = Requirement[];

const MAX_SELECTOR = 4096;
// Label keys: optional DNS prefix "/" name; values: up to 63 chars of [A-Za-z0-9._-].
const KEY = /^([a-z0-9]([-a-z0-9.]{0,251}[a-z0-9])?\/)?[A-Za-z0-9]([-A-Za-z0-9_.]{0,61}[A-Za-z0-9])?$/;
const VALUE = /^(|[A-Za-z0-9]([-A-Za-z0-9_.]{0,61}[A-Za-z0-9])?)$/;

/** Splits on commas outside parentheses. */
function terms(s: string): string[] {
  const out: string[] = [];
  let depth = 0;
  let cur = '';
  for (const ch of s) {
    if (ch === '(') depth++;
    if (ch === ')') depth--;
    if (depth < 0) throw badRequest(`unable to parse requirement: unbalanced ")" in "${s}"`);
    if (ch === ',' && depth === 0) {
      out.push(cur);
      cur = '';
    } else cur += ch;
  }
  if (depth !== 0) throw badRequest(`unable to parse requirement: unbalanced "(" in "${s}"`);
  out.push(cur);
  return out.map((t) => t.trim());
}

function checkKey(key: string, field: boolean): string {
  if (field ? !/^[A-Za-z0-9._/-]{1,316}$/.test(key) : !KEY.test(key)) throw badRequest(`invalid selector key "${key}"`);
  return key;
}

function checkValue(v: string, field: boolean): string {
  if (field ? v.length > 316 : !VALUE.test(v)) throw badRequest(`invalid selector value "${v}"`);
  return v;
}

/** Parses a label selector (`field: true`: a field selector, which only takes =, ==, !=). */
export function parseSelector(s: string | undefined, opts: { field?: boolean } = {}): Selector {
  const field = opts.field ?? false;
  if (s === undefined || s.trim() === '') return [];
  if (s.length > MAX_SELECTOR) throw badRequest('selector too long');
  const out: Selector = [];
  for (const t of terms(s)) {
    if (t === '') throw badRequest(`unable to parse requirement: empty term in "${s}"`);
    const eq = /^(.+?)\s*(==|!=|=)\s*(.*)$/.exec(t);
    const set = field ? null : /^(\S+)\s+(in|notin)\s*\((.*)\)$/.exec(t);
    const not = field ? null : /^!\s*(\S+)$/.exec(t);
    if (eq) {
      out.push({ key: checkKey(eq[1]!.trim(), field), op: eq[2] === '!=' ? 'neq' : 'eq', value: checkValue(eq[3]!.trim(), field) });
    } else if (set) {
      const values = set[3]!.split(',').map((v) => checkValue(v.trim(), false));
      out.push({ key: checkKey(set[1]!, false), op: set[2] as 'in' | 'notin', values });
    } else if (not) {
      out.push({ key: checkKey(not[1]!, false), op: 'notexists' });
    } else if (!field && /^\S+$/.test(t)) {
      out.push({ key: checkKey(t, false), op: 'exists' });
    } else {
      throw badRequest(`unable to parse requirement: "${t}"`);
    }
  }
  return out;
}

/** True when `labels` (or field values) satisfy every requirement. */
export function matches(sel: Selector, labels: Record<string, string | undefined>): boolean {
  for (const r of sel) {
    const v = Object.hasOwn(labels, r.key) ? labels[r.key] : undefined;
    switch (r.op) {
      case 'eq':
        if (v !== r.value) return false;
        break;
      case 'neq':
        if (v === r.value) return false;
        break;
      case 'in':
        if (v === undefined || !r.values.includes(v)) return false;
        break;
      case 'notin':
        if (v !== undefined && r.values.includes(v)) return false;
        break;
      case 'exists':
        if (v === undefined) return false;
        break;
      case 'notexists':
        if (v !== undefined) return false;
        break;
    }
  }
  return true;
}

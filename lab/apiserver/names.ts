/** Name and value checks kube-apiserver applies (k8s.io/apimachinery/pkg/util/validation). */

const DNS1123_LABEL = /^[a-z0-9]([-a-z0-9]*[a-z0-9])?$/;
const DNS1035_LABEL = /^[a-z]([-a-z0-9]*[a-z0-9])?$/;

/** A problem with a name, or undefined when it is fine. */
export type NameRule = 'subdomain' | 'label' | 'label1035';

export function checkName(name: string, rule: NameRule): string | undefined {
  if (rule === 'subdomain') {
    if (name.length > 253) return 'must be no more than 253 characters';
    if (!name.split('.').every((p) => DNS1123_LABEL.test(p)))
      return "a lowercase RFC 1123 subdomain must consist of lower case alphanumeric characters, '-' or '.', and must start and end with an alphanumeric character";
    return undefined;
  }
  if (name.length > 63) return 'must be no more than 63 characters';
  if (rule === 'label' && !DNS1123_LABEL.test(name))
    return "a lowercase RFC 1123 label must consist of lower case alphanumeric characters or '-', and must start and end with an alphanumeric character";
  if (rule === 'label1035' && !DNS1035_LABEL.test(name))
    return "a DNS-1035 label must consist of lower case alphanumeric characters or '-', start with an alphabetic character, and end with an alphanumeric character";
  return undefined;
}

/** Label and annotation keys: optional DNS subdomain prefix, `/`, a name of up to 63 characters. */
export function checkQualifiedName(key: string): string | undefined {
  const parts = key.split('/');
  if (parts.length > 2) return 'a qualified name must have at most one "/"';
  const name = parts[parts.length - 1]!;
  if (parts.length === 2 && (parts[0] === '' || checkName(parts[0]!, 'subdomain'))) return 'prefix part must be a DNS-1123 subdomain';
  if (!/^[A-Za-z0-9]([-A-Za-z0-9_.]{0,61}[A-Za-z0-9])?$/.test(name)) return 'name part must consist of alphanumeric characters, "-", "_" or ".", at most 63 characters';
  return undefined;
}

export function checkLabelValue(v: unknown): string | undefined {
  if (typeof v !== 'string') return 'must be a string';
  if (!/^(|[A-Za-z0-9]([-A-Za-z0-9_.]{0,61}[A-Za-z0-9])?)$/.test(v)) return 'a valid label value must be 63 characters or less and consist of alphanumerics, "-", "_" or "."';
  return undefined;
}

/** Parses dotted-quad IPv4; undefined when malformed. */
export function parseIPv4(s: unknown): number | undefined {
  if (typeof s !== 'string') return undefined;
  const m = /^(\d{1,3})\.(\d{1,3})\.(\d{1,3})\.(\d{1,3})$/.exec(s);
  if (!m) return undefined;
  const o = m.slice(1).map(Number);
  if (o.some((x) => x > 255) || m.slice(1).some((x) => x.length > 1 && x.startsWith('0'))) return undefined;
  return ((o[0]! << 24) >>> 0) + (o[1]! << 16) + (o[2]! << 8) + o[3]!;
}

export function formatIPv4(n: number): string {
  return [n >>> 24, (n >>> 16) & 255, (n >>> 8) & 255, n & 255].join('.');
}

/** `a.b.c.d/len` -> first address and length; undefined when malformed or not the network address. */
export function parseCIDR(s: unknown): { base: number; len: number } | undefined {
  if (typeof s !== 'string') return undefined;
  const [ip, lenS, extra] = s.split('/');
  if (extra !== undefined || lenS === undefined || !/^\d{1,2}$/.test(lenS)) return undefined;
  const len = Number(lenS);
  const base = parseIPv4(ip);
  if (base === undefined || len > 32) return undefined;
  const mask = len === 0 ? 0 : (0xffffffff << (32 - len)) >>> 0;
  if ((base & mask) >>> 0 !== base) return undefined;
  return { base, len };
}

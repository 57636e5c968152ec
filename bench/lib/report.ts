/** The shape every figure returns, and the table printed from it. */

export interface Row {
  metric: string;
  unit: string;
  /** weft's value; null when not measured. */
  weft: number | null;
  /** The reference measured in the same run; null when there is none. */
  ref?: number | null;
  /** What the reference is (for the table's footnotes). */
  refName?: string;
  /** Human-readable target, e.g. "<= 1.0x" or "< 1000 ms". */
  target?: string;
  /** Whether the target was met (undefined: no target or not measured). */
  met?: boolean;
}

export interface Figure {
  id: string;
  title: string;
  /** False when a component is missing or the setup failed: `reason` says why. */
  available: boolean;
  reason?: string;
  rows: Row[];
  notes: string[];
  /** Raw samples and anything else worth keeping in the JSON file. */
  details: Record<string, unknown>;
}

export interface BenchContext {
  quick: boolean;
  log: (msg: string) => void;
}

export function unavailable(id: string, title: string, reason: string): Figure {
  return { id, title, available: false, reason, rows: [], notes: [], details: {} };
}

export function ratio(row: Row): number | null {
  if (row.weft === null || row.ref === null || row.ref === undefined || row.ref === 0) return null;
  return row.weft / row.ref;
}

function fmt(x: number | null | undefined, unit = ''): string {
  if (x === null || x === undefined || Number.isNaN(x)) return '-';
  const v = Number.isInteger(x) ? String(x) : Math.abs(x) >= 100 ? x.toFixed(0) : Math.abs(x) >= 10 ? x.toFixed(1) : x.toFixed(2);
  return unit ? `${v} ${unit}` : v;
}

/** Renders all figures as an aligned text table. */
export function renderTable(figs: Figure[]): string {
  const head = ['figure', 'metric', 'weft', 'reference', 'ratio', 'target', 'met'];
  const lines: string[][] = [head];
  for (const f of figs) {
    if (!f.available) {
      lines.push([f.id, `not available: ${f.reason ?? 'unknown'}`, '', '', '', '', '']);
      continue;
    }
    for (const r of f.rows) {
      const q = ratio(r);
      lines.push([
        f.id,
        r.metric,
        fmt(r.weft, r.unit),
        r.ref === undefined ? '' : fmt(r.ref, r.unit) + (r.refName ? ` (${r.refName})` : ''),
        q === null ? '' : `${q.toFixed(2)}x`,
        r.target ?? '',
        r.met === undefined ? '' : r.met ? 'yes' : 'NO',
      ]);
    }
  }
  const widths = head.map((_, i) => Math.max(...lines.filter((l) => l.length > 2 && !l[1].startsWith('not available')).map((l) => l[i].length)));
  return lines
    .map((l) =>
      l[1].startsWith('not available')
        ? `${l[0].padEnd(widths[0])}  ${l[1]}`
        : l
            .map((c, i) => c.padEnd(widths[i]))
            .join('  ')
            .trimEnd(),
    )
    .join('\n');
}

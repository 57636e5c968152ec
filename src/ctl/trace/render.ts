/** Prints a {@link TraceReport}: one line per hop, paths in order; `-o json|yaml` the model itself. */
import { stringify } from 'yaml';
import type { Hop, ServiceHop, TraceReport } from './model.ts';

function state(s: string[]): string {
  return s.length ? ` (${s.join(',')})` : '';
}

function problem(p: string | undefined): string {
  return p ? `\n             ! ${p}` : '';
}

/** One hop as `kind  text`. */
export function hopLine(h: Hop): string {
  const label = (k: string) => k.padEnd(10);
  switch (h.kind) {
    case 'service':
      return label('service') + serviceText(h);
    case 'route': {
      const q = `${h.dst}${h.src ? ` from ${h.src}` : ''}${h.iif ? ` iif ${h.iif}` : ''}`;
      if (h.error) return `${label('route')}${q}: ${h.error}`;
      const via = `${h.matched ? `${h.matched} ` : ''}${h.gateway ? `via ${h.gateway} ` : ''}dev ${h.dev ?? '?'}${h.onlink ? ' onlink' : ''}`;
      return `${label('route')}${q}: ${h.type} ${via}${h.table !== undefined && h.table !== 254 ? ` table ${h.table}` : ''}`;
    }
    case 'neighbor':
      return `${label('neighbor')}${h.ip} on ${h.dev}: ${h.mac ?? '<none>'}${state(h.state)}${problem(h.problem)}`;
    case 'fdb':
      return `${label('fdb')}${h.mac} on ${h.dev}: ${h.dst ? `-> node ${h.dst}` : h.port ? `port ${h.port}` : '<none>'}${state(h.state)}${problem(h.problem)}`;
    case 'encap':
      return `${label('encap')}${h.outerSrc ?? '?'} -> ${h.outerDst ?? '?'} UDP ${h.udpPort} VNI ${h.vni} from ${h.dev}${h.underlayDev ? ` out ${h.underlayDev}` : ''}${h.underlayGateway ? ` via ${h.underlayGateway}` : ''}${problem(h.problem)}`;
    case 'end':
      return `${label('end')}${h.at}: ${h.detail}`;
  }
}

function serviceText(s: ServiceHop): string {
  const head = s.map ? `${s.map}[${s.key}]${s.chain ? ` -> ${s.chain}` : ''}` : '';
  const svc = s.service ? ` (Service ${s.service}${s.servicePort ? ` port ${s.servicePort}` : ''})` : '';
  const lines = [`${s.verdict}${head ? `: ${head}` : ''}${svc}${s.detail ? `\n          ${s.detail}` : ''}`];
  for (const e of s.endpoints) lines.push(`          - ${e.ip}:${e.port}  ${e.choice}${e.masquerade ? '  (masquerade)' : ''}`);
  return lines.join('\n');
}

/** Renders the report as text, JSON or YAML. */
export function renderTrace(r: TraceReport, format: 'table' | 'json' | 'yaml'): string {
  if (format === 'json') return `${JSON.stringify(r, null, 2)}\n`;
  if (format === 'yaml') return stringify(r);
  const q = r.query;
  const out = [`trace ${q.src} -> ${q.dst}${q.port !== undefined ? `:${q.port}/${q.protocol}` : ''} (enters ${r.ingress === 'this-node' ? 'from this node itself' : `on ${r.ingress}`})`];
  out.push(hopLine(r.service));
  r.paths.forEach((p, i) => {
    out.push(`path ${i + 1}/${r.paths.length}: to ${p.to}${p.port !== undefined ? `:${p.port}` : ''} (${p.choice})`);
    for (const h of p.hops) out.push(`  ${hopLine(h).replace(/\n/g, '\n  ')}`);
  });
  if (r.probe) {
    out.push(`probe from ${r.probe.netns}: ${r.probe.outcome}`);
    if (!r.probe.sightings.length) out.push('  seen nowhere on this node');
    for (const s of r.probe.sightings) out.push(`  ${s.point.padEnd(12)}${s.packets} packet(s): ${s.detail}`);
  }
  for (const w of r.warnings) out.push(`warning: ${w}`);
  return `${out.join('\n')}\n`;
}

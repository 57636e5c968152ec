/** `/healthz`, `/readyz` and `/metrics` over plain HTTP. */
import { createServer, type Server } from 'node:http';
import type { Log } from '../core/log.ts';
import { errText } from '../core/errors.ts';
import type { Metrics } from './metrics.ts';

export interface HealthSource {
  healthy(): boolean;
  ready(): boolean;
  metrics: Metrics;
  log: Log;
}

/** Parses `host:port` (`:9333` means all addresses). */
export function parseListenAddr(addr: string): { host: string; port: number } {
  const m = /^(.*):(\d{1,5})$/.exec(addr);
  if (!m || Number(m[2]) > 65535) throw new Error(`invalid listen address "${addr}" (want host:port)`);
  return { host: m[1].replace(/^\[|\]$/g, '') || '0.0.0.0', port: Number(m[2]) };
}

/** Starts listening; resolves with the server once bound. */
export async function startHealthServer(addr: string, src: HealthSource): Promise<Server> {
  const { host, port } = parseListenAddr(addr);
  const server = createServer((req, res) => {
    const path = (req.url ?? '/').split('?')[0];
    const reply = (status: number, body: string, type = 'text/plain; charset=utf-8') => {
      res.writeHead(status, { 'content-type': type });
      res.end(body);
    };
    if (path === '/healthz') return src.healthy() ? reply(200, 'ok\n') : reply(500, 'unhealthy\n');
    if (path === '/readyz') return src.ready() ? reply(200, 'ok\n') : reply(503, 'not ready\n');
    if (path === '/metrics') {
      src.metrics.render().then(
        (text) => reply(200, text, src.metrics.contentType),
        (err) => {
          src.log.warn(`render metrics: ${errText(err)}`);
          reply(500, 'metrics unavailable\n');
        },
      );
      return;
    }
    reply(404, 'not found\n');
  });
  await new Promise<void>((resolve, reject) => {
    server.once('error', (err) => reject(new Error(`listen on "${addr}"`, { cause: err })));
    server.listen(port, host, () => resolve());
  });
  return server;
}

/**
 * Makes API requests to the lab API server on command, for the Kubernetes-mode figures. Runs
 * in the control-plane namespace (the server listens on its underlay address):
 * `node kube-writer.ts URL`. One JSON command per stdin line, one JSON line back; times are
 * `process.hrtime.bigint()` (CLOCK_MONOTONIC, comparable across processes) as strings. Requests
 * go over kept-alive connections, so a timed single request pays no TCP handshake.
 *
 *   {"op":"one","req":{method,path,body?,contentType?}}      -> {"t0","t1","status","body"}
 *   {"op":"batch","reqs":[...],"concurrency":N}              -> {"t0","t1","failed":[..first 5],"nFailed"}
 *      all requests, N in flight at a time; t0 before the first is sent, t1 once all answered
 */
import { Agent, request } from 'node:http';
import { createInterface } from 'node:readline';

interface Req {
  method: string;
  path: string;
  body?: unknown;
  contentType?: string;
}

const agent = new Agent({ keepAlive: true, maxSockets: 64 });

function call(base: URL, r: Req): Promise<{ status: number; body: string }> {
  return new Promise((resolve, reject) => {
    const data = r.body === undefined ? undefined : Buffer.from(JSON.stringify(r.body));
    const req = request(
      {
        agent,
        host: base.hostname,
        port: base.port,
        method: r.method,
        path: r.path,
        headers: { accept: 'application/json', ...(data ? { 'content-type': r.contentType ?? 'application/json', 'content-length': data.length } : {}) },
        timeout: 30_000,
      },
      (res) => {
        const chunks: Buffer[] = [];
        res.on('data', (c: Buffer) => chunks.push(c));
        res.on('end', () => resolve({ status: res.statusCode ?? 0, body: Buffer.concat(chunks).toString('utf8') }));
        res.on('error', reject);
      },
    );
    req.on('timeout', () => req.destroy(new Error(`${r.method} ${r.path}: timeout`)));
    req.on('error', reject);
    req.end(data);
  });
}

async function main(): Promise<void> {
  const [url] = process.argv.slice(2);
  if (!url) throw new Error('usage: kube-writer.ts URL');
  const base = new URL(url);
  const now = () => process.hrtime.bigint().toString();
  const reply = (o: object) => process.stdout.write(`${JSON.stringify(o)}\n`);
  // One warm request so the first timed one finds an open connection.
  await call(base, { method: 'GET', path: '/version' });
  process.stdout.write('ready\n');
  for await (const line of createInterface({ input: process.stdin, crlfDelay: Infinity })) {
    if (!line.trim()) continue;
    try {
      const cmd = JSON.parse(line) as { op: string; req?: Req; reqs?: Req[]; concurrency?: number };
      if (cmd.op === 'one') {
        const t0 = now();
        const r = await call(base, cmd.req!);
        const t1 = now();
        reply({ t0, t1, status: r.status, body: r.status >= 300 ? r.body.slice(0, 500) : r.body });
      } else if (cmd.op === 'batch') {
        const reqs = cmd.reqs!;
        const failed: string[] = [];
        let nFailed = 0;
        let next = 0;
        const t0 = now();
        const worker = async () => {
          while (next < reqs.length) {
            const r = reqs[next++]!;
            const res = await call(base, r).catch((e: Error) => ({ status: 0, body: e.message }));
            if (res.status < 200 || res.status >= 300) {
              nFailed++;
              if (failed.length < 5) failed.push(`${r.method} ${r.path}: ${res.status} ${res.body.slice(0, 200)}`);
            }
          }
        };
        await Promise.all(Array.from({ length: Math.max(1, Math.min(64, cmd.concurrency ?? 16)) }, worker));
        reply({ t0, t1: now(), failed, nFailed });
      } else {
        throw new Error(`unknown op "${cmd.op}"`);
      }
    } catch (err) {
      reply({ error: (err as Error).message });
    }
  }
  agent.destroy();
}

main().catch((err) => {
  process.stderr.write(`kube-writer: ${(err as Error).stack ?? err}\n`);
  process.exit(1);
});

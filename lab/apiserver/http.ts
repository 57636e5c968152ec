/**
 * Request and response plumbing shared by the handlers: bounded body reading (JSON, YAML or
 * protobuf), nesting and parameter checks, JSON responses.
 */
import type { IncomingMessage, ServerResponse } from 'node:http';
import YAML from 'yaml';
import { decodeProtobuf } from './protobuf.ts';
import { ApiError, badRequest } from './status.ts';
import type { KubeObject } from './store.ts';

/** Deepest nesting accepted in a body (deeper input would hit recursion limits further on). */
export const MAX_DEPTH = 200;

export function checkDepth(v: unknown): void {
  const stack: Array<[unknown, number]> = [[v, 0]];
  while (stack.length) {
    const [x, d] = stack.pop()!;
    if (typeof x !== 'object' || x === null) continue;
    if (d > MAX_DEPTH) throw badRequest(`the request body nests deeper than ${MAX_DEPTH} levels`);
    for (const y of Array.isArray(x) ? x : Object.values(x)) if (typeof y === 'object' && y !== null) stack.push([y, d + 1]);
  }
}

export function asObject(v: unknown): KubeObject {
  if (typeof v !== 'object' || v === null || Array.isArray(v)) throw badRequest('the request body must be a JSON object');
  checkDepth(v);
  const o = v as KubeObject;
  if (o.metadata === undefined || o.metadata === null) o.metadata = {};
  if (typeof o.metadata !== 'object' || Array.isArray(o.metadata)) throw badRequest('metadata must be an object');
  return o;
}

export function parseRV(v: string | null): bigint | undefined {
  if (v === null || v === '') return undefined;
  if (!/^\d{1,19}$/.test(v)) throw badRequest(`invalid resource version "${v}"`);
  return BigInt(v);
}

export function isTrue(v: string | null): boolean {
  return v === 'true' || v === '1';
}

export function mediaType(req: IncomingMessage): string {
  return (req.headers['content-type'] ?? '').split(';')[0]!.trim().toLowerCase();
}

/** The body, parsed (JSON, or YAML for application/yaml); bounded in size. */
export async function readBody(req: IncomingMessage, max: number, opts: { optional?: boolean; patch?: boolean } = {}): Promise<unknown> {
  const declared = Number(req.headers['content-length'] ?? 0);
  if (declared > max) {
    req.resume();
    throw new ApiError(413, 'RequestEntityTooLarge', `the request body is larger than ${max} bytes`);
  }
  const chunks: Buffer[] = [];
  let size = 0;
  // A body that trickles in is cut off (the server has no overall request timeout: watches).
  const timer = setTimeout(() => req.destroy(new Error('request body not received within 60 s')), 60_000);
  try {
    for await (const c of req as AsyncIterable<Buffer>) {
      size += c.length;
      if (size > max) {
        req.destroy();
        throw new ApiError(413, 'RequestEntityTooLarge', `the request body is larger than ${max} bytes`);
      }
      chunks.push(c);
    }
  } finally {
    clearTimeout(timer);
  }
  const raw = Buffer.concat(chunks);
  const text = raw.toString('utf8');
  if (text.trim() === '') {
    if (opts.optional) return undefined;
    throw badRequest('the request body is empty');
  }
  const type = mediaType(req);
  if (!opts.patch && type === 'application/vnd.kubernetes.protobuf') return decodeProtobuf(raw);
  // CBOR and other bodies are not decoded here.
  if (opts.patch ? !type.endsWith('+json') : type !== '' && type !== 'application/json' && type !== 'application/yaml')
    throw new ApiError(
      415,
      'UnsupportedMediaType',
      `the body of the request was in an unknown format - accepted media types include: application/json, application/yaml, application/vnd.kubernetes.protobuf (got "${type}")`,
    );
  try {
    if (type === 'application/yaml') return YAML.parse(text, { maxAliasCount: 100 });
    return JSON.parse(text);
  } catch (err) {
    throw badRequest(`the request body is not valid ${type === 'application/yaml' ? 'YAML' : 'JSON'}: ${(err as Error).message}`);
  }
}

export function send(res: ServerResponse, code: number, body: unknown): void {
  const text = JSON.stringify(body);
  res.writeHead(code, { 'content-type': 'application/json', 'content-length': Buffer.byteLength(text), 'cache-control': 'no-cache, private' });
  res.end(text);
}

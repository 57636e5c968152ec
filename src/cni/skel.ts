/**
 * The CNI skeleton: read the request (env + stdin), dispatch the command, and turn the outcome
 * into stdout JSON and an exit code. Errors become the spec's JSON here and nowhere else
 * (`toErrorJson`). stdout carries only the result or the error; diagnostics go to `stderr`.
 */
import { cmdAdd } from './add.ts';
import { cmdCheck } from './check.ts';
import { parseCommand, parseConf, parseEnv, peekVersion } from './config.ts';
import { cmdDel } from './del.ts';
import { describe, toErrorJson } from './errors.ts';
import { cmdGc } from './gc.ts';
import type { Deps, Request } from './plugin.ts';
import { cmdStatus } from './status.ts';
import { LATEST_VERSION, SUPPORTED_VERSIONS } from './types.ts';

export interface SkelIO {
  env: Record<string, string | undefined>;
  stdin: string;
  stdout(text: string): void;
  stderr(text: string): void;
}

async function dispatch(io: SkelIO, deps: Deps): Promise<Record<string, unknown> | undefined> {
  const command = parseCommand(io.env);
  if (command === 'VERSION') {
    return { cniVersion: peekVersion(io.stdin) ?? LATEST_VERSION, supportedVersions: [...SUPPORTED_VERSIONS] };
  }
  const env = parseEnv(io.env);
  const req: Request = { env, conf: parseConf(io.stdin, command, { own: deps.network }) };
  switch (command) {
    case 'ADD':
      return cmdAdd(req, deps);
    case 'DEL':
      return void (await cmdDel(req, deps));
    case 'CHECK':
      return void (await cmdCheck(req, deps));
    case 'STATUS':
      return void (await cmdStatus(req, deps));
    case 'GC':
      return void (await cmdGc(req, deps));
  }
}

/** Runs one CNI request; returns the process exit code (0 or 1). */
export async function runSkel(io: SkelIO, deps: Deps): Promise<number> {
  try {
    const out = await dispatch(io, deps);
    if (out !== undefined) io.stdout(`${JSON.stringify(out)}\n`);
    return 0;
  } catch (err) {
    const json = toErrorJson(err, peekVersion(io.stdin) ?? LATEST_VERSION);
    io.stderr(`weft: ${io.env.CNI_COMMAND ?? '?'} failed: ${describe(err)}\n`);
    io.stdout(`${JSON.stringify(json)}\n`);
    return 1;
  }
}

/**
 * weftctl: kubectl-style status and setup CLI for weft. Wiring only: parse the command line,
 * pick the state source, run the command (src/ctl/), exit:
 * 0 success (and `check` consistent), 1 `check` found differences, 2 any error.
 */
import { parseCommandLine } from '../src/ctl/args.ts';
import { openSource } from '../src/ctl/connect.ts';
import { describeError, runCommand } from '../src/ctl/run.ts';

// grpc-js sets the TLS server name to the endpoint's IP, which Node flags with a deprecation
// warning (DEP0123) on every TLS connection; it is not the operator's concern.
process.noDeprecation = true;

function interrupted(): AbortSignal {
  const ac = new AbortController();
  process.once('SIGINT', () => ac.abort());
  process.once('SIGTERM', () => ac.abort());
  return ac.signal;
}

async function main(argv: string[]): Promise<number> {
  const line = parseCommandLine(argv);
  return await runCommand(line, {
    openSource: () => openSource(line.flags, { env: process.env, note: (msg) => process.stderr.write(`weftctl: ${msg}\n`) }),
    out: (text) => process.stdout.write(text),
    interrupted,
    env: process.env,
  });
}

main(process.argv.slice(2)).then(
  (code) => {
    process.exitCode = code;
  },
  (err) => {
    process.stderr.write(`weftctl: ${describeError(err)}\n`);
    process.exitCode = 2;
  },
);

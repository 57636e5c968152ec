/**
 * weftctl's commands by name, and how their errors read: one line, no stack, the message alone
 * for errors that already say what failed and where.
 */
import { errText, UsageError } from '../core/errors.ts';
import { NodeNotFoundError } from '../status/collect.ts';
import { etcdOnly } from '../status/kube.ts';
import { SourceUnavailableError } from '../status/model.ts';
import { VERSION } from '../status/version.ts';
import { ConfigError } from '../subnet/config.ts';
import { USAGE, type CommandLine, type Verb } from './args.ts';
import { checkCommand } from './check.ts';
import { kubeMode } from './connect.ts';
import type { Command, CommandContext } from './context.ts';
import { describeNodeCommand } from './describe.ts';
import { getNodesCommand } from './get.ts';
import { getNetworkCommand, NetworkInUseError, networkInitCommand } from './network.ts';
import { getServicesCommand } from './services.ts';
import { traceCommand } from './trace.ts';

const COMMANDS: Record<Exclude<Verb, 'help' | 'version'>, Command> = {
  'network init': networkInitCommand,
  'get network': getNetworkCommand,
  'get nodes': getNodesCommand,
  'describe node': describeNodeCommand,
  check: checkCommand,
  trace: traceCommand,
  'get services': getServicesCommand,
};

/**
 * Runs the command `line` names; resolves with the exit status. The source is opened only for
 * commands that read state, and closed after them.
 */
export async function runCommand(line: CommandLine, deps: Omit<CommandContext, 'flags' | 'arg' | 'args' | 'source'> & { openSource: () => CommandContext['source'] }): Promise<number> {
  if (line.verb === 'help') {
    deps.out(USAGE);
    return line.unasked ? 2 : 0;
  }
  if (line.verb === 'version') {
    deps.out(`weftctl ${VERSION} (node ${process.version})\n`);
    return 0;
  }
  // Before opening anything: in Kubernetes mode there is no etcd config to write.
  if (line.verb === 'network init' && kubeMode(line.flags, deps.env)) throw etcdOnly('network init');
  const source = deps.openSource();
  try {
    return await COMMANDS[line.verb]({ ...deps, flags: line.flags, arg: line.arg, args: line.args, source });
  } finally {
    source.close();
  }
}

/** The one line weftctl prints for a failure. */
export function describeError(err: unknown): string {
  if (err instanceof UsageError) return `${err.message}\nRun "weftctl --help" for usage.`;
  const complete = [SourceUnavailableError, ConfigError, NetworkInUseError, NodeNotFoundError];
  if (complete.some((c) => err instanceof c)) return (err as Error).message;
  return errText(err);
}

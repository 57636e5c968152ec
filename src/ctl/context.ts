/** What every weftctl command is given: its flags, the source, and where to print. */
import type { StatusSource } from '../status/model.ts';
import type { Flags } from './args.ts';

export interface CommandContext {
  flags: Flags;
  /** The command's argument (`describe node NAME`). */
  arg?: string;
  /** Positional arguments after the command words (`trace SRC DST`). */
  args?: string[];
  source: StatusSource;
  out(text: string): void;
  /**
   * A signal SIGINT and SIGTERM abort, to end a watch cleanly; asking for it replaces their
   * default (exit at once), so only commands that stop on it ask.
   */
  interrupted(): AbortSignal;
  /** weftd's environment variables, the flags' defaults. */
  env: NodeJS.ProcessEnv;
}

/** A command; resolves with the exit status. */
export type Command = (ctx: CommandContext) => Promise<number>;

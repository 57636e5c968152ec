/** The daemon's one logger: winston, one line per event on stderr, `key=value`-free JSON meta. */
import winston from 'winston';

export type Logger = winston.Logger;

export const LOG_LEVELS = ['error', 'warn', 'info', 'debug'] as const;

/** Creates the process logger; `level` is one of {@link LOG_LEVELS}. */
export function createLogger(opts: { level?: string; node?: string } = {}): Logger {
  const { combine, timestamp, printf } = winston.format;
  return winston.createLogger({
    level: opts.level ?? 'info',
    defaultMeta: {},
    format: combine(
      timestamp(),
      printf(({ timestamp: ts, level, message, ...meta }) => {
        const extra = Object.keys(meta).length ? ` ${JSON.stringify(meta)}` : '';
        return `${ts as string} ${level}${opts.node ? ` [${opts.node}]` : ''} ${String(message)}${extra}`;
      }),
    ),
    transports: [new winston.transports.Console({ stderrLevels: [...LOG_LEVELS] })],
  });
}

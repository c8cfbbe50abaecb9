import { pino, type Logger, type DestinationStream } from 'pino';
import { LOG_LEVELS } from './config/schema.js';

export type { Logger };

/**
 * Field names that could ever carry a credential. pino replaces them with
 * `[redacted]` wherever they appear, one level deep, as a second line of
 * defence: the first is that no code logs a token or password at all
 * (Secret prints as `[secret]`, tokens are logged only as their hash).
 */
const REDACT = [
  'password',
  'token',
  'authorization',
  '*.password',
  '*.token',
  '*.authorization',
  'req.headers.authorization',
];

/** `sluice serve`'s level: SLUICE_LOG_LEVEL when set and not empty, else the config's; undefined when it is no level. */
export function serveLogLevel(configured: string, env: NodeJS.ProcessEnv = process.env): string | undefined {
  const level = env.SLUICE_LOG_LEVEL || configured;
  return LOG_LEVELS.includes(level) ? level : undefined;
}

export function createLogger(level: string, destination?: DestinationStream): Logger {
  const options = {
    level,
    base: { service: 'sluice' },
    redact: { paths: REDACT, censor: '[redacted]' },
    timestamp: pino.stdTimeFunctions.isoTime,
  };
  return destination ? pino(options, destination) : pino(options);
}

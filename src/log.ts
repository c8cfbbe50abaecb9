import { pino, type Logger, type DestinationStream } from 'pino';

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

export function createLogger(
  level: string = process.env.SLUICE_LOG_LEVEL ?? 'info',
  destination?: DestinationStream,
): Logger {
  const options = {
    level,
    base: { service: 'sluice' },
    redact: { paths: REDACT, censor: '[redacted]' },
    timestamp: pino.stdTimeFunctions.isoTime,
  };
  return destination ? pino(options, destination) : pino(options);
}

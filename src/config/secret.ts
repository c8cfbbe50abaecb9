import { inspect } from 'node:util';

/**
 * A credential read from the environment or a file. It prints as
 * `[secret]` through every route a value can leak by (String(), JSON,
 * util.inspect, pino), so a config object can be logged whole without
 * exposing the upstream password. Only `reveal()` gives the value, and only
 * the code that writes it to the upstream socket calls it.
 */
export class Secret {
  readonly #value: string;
  /** Where it came from, for messages: `env APP_DB_PASSWORD` or `file /run/x`. */
  readonly origin: string;

  constructor(value: string, origin: string) {
    this.#value = value;
    this.origin = origin;
  }

  reveal(): string {
    return this.#value;
  }

  toString(): string {
    return '[secret]';
  }

  toJSON(): string {
    return '[secret]';
  }

  [inspect.custom](): string {
    return `[secret from ${this.origin}]`;
  }
}

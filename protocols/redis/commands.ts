/**
 * The handful of Redis commands Sluice answers or rewrites itself instead of
 * passing them through, because passing them blindly would break the
 * request/reply pairing the relay relies on, or the identity boundary:
 *
 *   AUTH, HELLO ... AUTH     refused after login: identity cannot change mid-session
 *   HELLO 2|3 [SETNAME n]    forwarded; the relay tracks the protocol version
 *   RESET                    emulated: RESET, then re-authenticate upstream (see relay.ts)
 *   CLIENT REPLY OFF|SKIP    refused: replies would no longer pair with requests
 *   SELECT n                 forwarded for the target's db, refused for any other
 *   SWAPDB                   refused: it moves data across the db boundary
 *   MONITOR                  refused: it streams every other client's commands
 *   SYNC, PSYNC, REPLCONF    refused: the replication stream is not RESP
 *   (P|S)SUBSCRIBE           forwarded, and its confirmations awaited (relay.ts, pubsub.ts);
 *   (P|S)UNSUBSCRIBE         refused inside MULTI. Even unsubscribed, Redis confirms each
 *                            channel (RESP2: a reply per channel; RESP3: push messages)
 *   MULTI, EXEC, DISCARD     forwarded; tracked so a refusal inside MULTI aborts EXEC
 *
 * Everything else (QUIT and CLIENT REPLY ON included) goes to the upstream
 * untouched; its ACL decides. Classification is on the hot path: it looks at
 * the command name's length and first byte before comparing anything.
 */
import { error } from './replies.js';

export const Verdict = {
  Forward: 0,
  Refuse: 1,
  Reset: 2,
  Hello: 3,
  Subscribe: 4,
  Multi: 5,
  Exec: 6,
  Discard: 7,
  Quit: 8,
} as const;
export type Verdict = (typeof Verdict)[keyof typeof Verdict];

export interface Classified {
  verdict: Verdict;
  /** Refuse: the error reply Sluice sends instead. */
  reply?: Buffer;
  /** Hello: the protocol version the client asks for, when it names one. */
  proto?: 2 | 3;
}

const FORWARD: Classified = Object.freeze({ verdict: Verdict.Forward });
const RESET: Classified = Object.freeze({ verdict: Verdict.Reset });
const SUBSCRIBE: Classified = Object.freeze({ verdict: Verdict.Subscribe });
const MULTI: Classified = Object.freeze({ verdict: Verdict.Multi });
const EXEC: Classified = Object.freeze({ verdict: Verdict.Exec });
const DISCARD: Classified = Object.freeze({ verdict: Verdict.Discard });
const HELLO_SAME: Classified = Object.freeze({ verdict: Verdict.Hello });
const QUIT: Classified = Object.freeze({ verdict: Verdict.Quit });

export const IDENTITY_FIXED = error('sluice: identity cannot change within a session; open a new connection with another token');
const REFUSE_IDENTITY: Classified = Object.freeze({ verdict: Verdict.Refuse, reply: IDENTITY_FIXED });
/**
 * Redis finds a command by a hash of the whole name but compares names with
 * strcasecmp, which stops at a NUL byte: `FLUSHALL\0x` may run FLUSHALL
 * (when the two hash to one bucket) while Sluice, and its policy, would see
 * another, unknown command. No command has a NUL in its name.
 */
const REFUSE_NUL_NAME: Classified = Object.freeze({ verdict: Verdict.Refuse, reply: error('sluice: a command name cannot contain a NUL byte') });

/** Whether bytes [at, at + n) of `buf` hold a NUL. */
function hasNul(buf: Buffer, at: number, n: number): boolean {
  for (let i = at; i < at + n; i++) if (buf[i] === 0) return true;
  return false;
}
const REFUSE_MONITOR: Classified = Object.freeze({
  verdict: Verdict.Refuse,
  reply: error("sluice: MONITOR is not available through sluice (it would stream other clients' commands)"),
});
const REFUSE_CLIENT_REPLY: Classified = Object.freeze({
  verdict: Verdict.Refuse,
  reply: error('sluice: CLIENT REPLY OFF|SKIP is not supported through sluice (replies must pair with requests)'),
});
const REFUSE_SWAPDB: Classified = Object.freeze({
  verdict: Verdict.Refuse,
  reply: error('sluice: SWAPDB is not available through sluice (this target is bound to one db)'),
});
const REFUSE_REPLICATION: Classified = Object.freeze({
  verdict: Verdict.Refuse,
  reply: error('sluice: replication commands are not available through sluice'),
});

/** `-EXECABORT` as Redis sends it when a command was rejected while queuing. */
export const EXECABORT = error('Transaction discarded because of previous errors.', 'EXECABORT');

/** Case-insensitive compare of a command token with a lower-case ASCII literal. */
export function tokenIs(buf: Buffer, lower: string): boolean {
  return tokenAt(buf, 0, buf.length, lower);
}

/**
 * `tokenIs` for the token at bytes [at, at + n) of `buf`.
 *
 * Compared as Redis compares keywords, with strcasecmp, which stops at a NUL
 * byte: `AUTH\0anything` is the keyword AUTH to the server, so it is here
 * too. Otherwise a client could hide an option (HELLO's AUTH, SORT's STORE)
 * from Sluice that the server still acts on.
 */
export function tokenAt(buf: Buffer, at: number, n: number, lower: string): boolean {
  const k = lower.length;
  if (n < k || (n > k && buf[at + k] !== 0)) return false;
  for (let i = 0; i < k; i++) {
    let c = buf[at + i]!;
    if (c >= 0x41 && c <= 0x5a) c |= 0x20;
    if (c !== lower.charCodeAt(i)) return false;
  }
  return true;
}

/** A non-negative decimal integer argument, or -1. */
export function decimal(buf: Buffer): number {
  if (buf.length === 0 || buf.length > 9) return -1;
  let v = 0;
  for (let i = 0; i < buf.length; i++) {
    const c = buf[i]!;
    if (c < 0x30 || c > 0x39) return -1;
    v = v * 10 + (c - 0x30);
  }
  return v;
}

/** Classifies one command of an authenticated session bound to `db`. */
export class CommandClassifier {
  readonly #refuseSelect: Classified;

  constructor(private readonly db: number) {
    this.#refuseSelect = Object.freeze({ verdict: Verdict.Refuse, reply: error(`sluice: this target is bound to db ${db}`) });
  }

  classify(args: Buffer[]): Classified {
    const name = args[0]!;
    const byName = this.byName(name, 0, name.length);
    if (byName !== undefined) return byName;
    switch (name[0]! | 0x20) {
      case 0x63: // CLIENT
        return args.length >= 3 && tokenIs(args[1]!, 'reply') && !tokenIs(args[2]!, 'on') ? REFUSE_CLIENT_REPLY : FORWARD;
      case 0x68: // HELLO
        return this.#hello(args);
      default: // SELECT
        return args.length === 2 && decimal(args[1]!) !== this.db ? this.#refuseSelect : FORWARD;
    }
  }

  /**
   * The verdict the command name alone decides, or undefined when the
   * arguments decide (CLIENT, HELLO, SELECT). The name is bytes [at, at + n)
   * of `buf`: the relay asks this before any argument list is built, and
   * forwards a command answered FORWARD without building one.
   */
  byName(buf: Buffer, at: number, n: number): Classified | undefined {
    // GET, SET, DEL: no name this short hides a command behind a NUL byte (see below).
    if (n < 4) return FORWARD;
    if (hasNul(buf, at, n)) return REFUSE_NUL_NAME;
    // HGET, LPUSH...: the common commands fall out here or at the switch.
    if (n > 12) return FORWARD;
    switch (buf[at]! | 0x20) {
      case 0x61: // 'a'
        return tokenAt(buf, at, n, 'auth') ? REFUSE_IDENTITY : FORWARD;
      case 0x63: // 'c'
        return tokenAt(buf, at, n, 'client') ? undefined : FORWARD;
      case 0x64: // 'd'
        return tokenAt(buf, at, n, 'discard') ? DISCARD : FORWARD;
      case 0x65: // 'e'
        return tokenAt(buf, at, n, 'exec') ? EXEC : FORWARD;
      case 0x68: // 'h'
        return tokenAt(buf, at, n, 'hello') ? undefined : FORWARD;
      case 0x6d: // 'm'
        if (tokenAt(buf, at, n, 'multi')) return MULTI;
        return tokenAt(buf, at, n, 'monitor') ? REFUSE_MONITOR : FORWARD;
      case 0x70: // 'p'
        if (tokenAt(buf, at, n, 'psubscribe') || tokenAt(buf, at, n, 'punsubscribe')) return SUBSCRIBE;
        return tokenAt(buf, at, n, 'psync') ? REFUSE_REPLICATION : FORWARD;
      case 0x71: // 'q'
        return tokenAt(buf, at, n, 'quit') ? QUIT : FORWARD;
      case 0x75: // 'u'
        return tokenAt(buf, at, n, 'unsubscribe') ? SUBSCRIBE : FORWARD;
      case 0x72: // 'r'
        if (tokenAt(buf, at, n, 'reset')) return RESET;
        return tokenAt(buf, at, n, 'replconf') ? REFUSE_REPLICATION : FORWARD;
      case 0x73: // 's'
        if (tokenAt(buf, at, n, 'select')) return undefined;
        if (tokenAt(buf, at, n, 'subscribe') || tokenAt(buf, at, n, 'ssubscribe') || tokenAt(buf, at, n, 'sunsubscribe')) return SUBSCRIBE;
        if (tokenAt(buf, at, n, 'swapdb')) return REFUSE_SWAPDB;
        return tokenAt(buf, at, n, 'sync') ? REFUSE_REPLICATION : FORWARD;
      default:
        return FORWARD;
    }
  }

  /**
   * HELLO [protover [AUTH username password] [SETNAME clientname]] after
   * login. AUTH anywhere, even where Redis would refuse it as the protocol
   * version, is an attempt to change identity: refused here, and scrubbed
   * from the recording with the refusal.
   */
  #hello(args: Buffer[]): Classified {
    for (let i = 1; i < args.length; i++) if (tokenIs(args[i]!, 'auth')) return REFUSE_IDENTITY;
    if (args.length < 2) return HELLO_SAME;
    const v = decimal(args[1]!);
    // Anything but 2 or 3 gets the upstream's own -NOPROTO.
    return v === 2 || v === 3 ? { verdict: Verdict.Hello, proto: v } : HELLO_SAME;
  }
}

/** What a client may send before it authenticates. */
export type PreAuthCommand =
  | { kind: 'auth'; label?: string; token: string }
  | { kind: 'hello'; proto: 2 | 3; auth?: { label: string; token: string }; setName?: Buffer }
  | { kind: 'quit' }
  | { kind: 'error'; reply: Buffer }
  | { kind: 'noauth' };

export const NOAUTH = error('Authentication required.', 'NOAUTH');
const HELLO_NEEDS_AUTH = error(
  'HELLO must be called with the client already authenticated, otherwise the HELLO <proto> AUTH <user> <pass> option can be used to authenticate the client and select the RESP protocol version at the same time',
  'NOAUTH',
);

/**
 * Redis's `Syntax error in HELLO option '<option>'`, the option shown only
 * when it reads as a mistyped keyword: a misplaced token would otherwise be
 * echoed back, and recorded on the way.
 */
function helloSyntaxError(option: Buffer): Buffer {
  const word = option.toString('latin1');
  return error(/^[A-Za-z]{1,16}$/.test(word) ? `Syntax error in HELLO option '${word}'` : 'Syntax error in HELLO option');
}

/** Parses a command received before authentication (AUTH, HELLO, QUIT; anything else is NOAUTH). */
export function parsePreAuth(args: Buffer[]): PreAuthCommand {
  const name = args[0]!;
  if (tokenIs(name, 'auth')) {
    if (args.length === 2) return { kind: 'auth', token: args[1]!.toString('utf8') };
    if (args.length === 3) return { kind: 'auth', label: args[1]!.toString('utf8'), token: args[2]!.toString('utf8') };
    return { kind: 'error', reply: error("wrong number of arguments for 'auth' command") };
  }
  if (tokenIs(name, 'quit')) return { kind: 'quit' };
  if (!tokenIs(name, 'hello')) return { kind: 'noauth' };
  if (args.length < 2) return { kind: 'error', reply: HELLO_NEEDS_AUTH };
  const v = decimal(args[1]!);
  if (v !== 2 && v !== 3) {
    return { kind: 'error', reply: error('unsupported protocol version', 'NOPROTO') };
  }
  let auth: { label: string; token: string } | undefined;
  let setName: Buffer | undefined;
  for (let i = 2; i < args.length; i++) {
    const more = args.length - i - 1;
    if (tokenIs(args[i]!, 'auth') && more >= 2) {
      auth = { label: args[i + 1]!.toString('utf8'), token: args[i + 2]!.toString('utf8') };
      i += 2;
    } else if (tokenIs(args[i]!, 'setname') && more >= 1) {
      setName = args[i + 1]!;
      i += 1;
    } else {
      return { kind: 'error', reply: helloSyntaxError(args[i]!) };
    }
  }
  if (!auth) return { kind: 'error', reply: HELLO_NEEDS_AUTH };
  return { kind: 'hello', proto: v, auth, ...(setName ? { setName } : {}) };
}

/**
 * Pub/sub on the wire, as the relay must read it to keep its count of
 * replies exact (relay.ts).
 *
 * Outside pub/sub, Redis answers each command with exactly one reply. A
 * subscribed connection adds elements that answer nothing, and commands
 * that are answered by several:
 *
 * - messages: `message`, `pmessage`, `smessage`, sent whenever something is
 *   published. In RESP2 they are ordinary arrays, `*3\r\n$7\r\nmessage\r\n...`;
 *   in RESP3, pushes (`>3\r\n...`), out of band like every push.
 * - confirmations: (P|S)SUBSCRIBE and (P|S)UNSUBSCRIBE are answered by one
 *   element per channel or pattern named, `[kind, name, count]` (an array in
 *   RESP2, a push in RESP3), even for a name already (un)subscribed; an
 *   UNSUBSCRIBE that names none confirms each channel it drops, or once with
 *   a null name when there is none. The count is the connection's
 *   subscriptions after the step: channels and patterns together for the
 *   four classic kinds, shard channels alone for SSUBSCRIBE and SUNSUBSCRIBE.
 *   A command refused as a whole (ACL, arity) gets one error instead.
 *
 * While a RESP2 connection is subscribed, Redis refuses everything but
 * these commands, PING (answered `*2\r\n$4\r\npong\r\n...`), QUIT and RESET,
 * so no reply there can be mistaken for a message. Once the counts are back
 * to zero the connection is an ordinary one again (and RESET, answered
 * `+RESET`, drops every subscription without a confirmation).
 */
import { tokenAt } from './commands.js';

/** A pub/sub command, by what its confirmations are called. */
export const PubSubKind = {
  subscribe: 0,
  unsubscribe: 1,
  psubscribe: 2,
  punsubscribe: 3,
  ssubscribe: 4,
  sunsubscribe: 5,
} as const;
export type PubSubKind = (typeof PubSubKind)[keyof typeof PubSubKind];

/** What a top-level element's first member names: a confirmation's kind, or a message of any kind. */
export const MESSAGE = 6;
export type ElementName = PubSubKind | typeof MESSAGE;

const NAMES: ReadonlyArray<readonly [string, ElementName]> = [
  ['subscribe', PubSubKind.subscribe],
  ['unsubscribe', PubSubKind.unsubscribe],
  ['psubscribe', PubSubKind.psubscribe],
  ['punsubscribe', PubSubKind.punsubscribe],
  ['ssubscribe', PubSubKind.ssubscribe],
  ['sunsubscribe', PubSubKind.sunsubscribe],
  ['message', MESSAGE],
  ['pmessage', MESSAGE],
  ['smessage', MESSAGE],
];

/**
 * Enough of an element's first bytes to read its first member's name:
 * `*3\r\n$12\r\npunsubscribe\r\n` is 23 bytes.
 */
export const ELEMENT_HEAD_BYTES = 32;
/** Enough of an element's last bytes to read a confirmation's count, `:<up to 20 digits>\r\n`. */
export const ELEMENT_TAIL_BYTES = 24;

function nameOf(buf: Buffer, at: number, n: number): ElementName | undefined {
  for (const [name, kind] of NAMES) if (tokenAt(buf, at, n, name)) return kind;
  return undefined;
}

/** The pub/sub command `name` is, or undefined (case-insensitive, as Redis reads it). */
export function pubSubCommand(name: Buffer): PubSubKind | undefined {
  const kind = nameOf(name, 0, name.length);
  return kind === MESSAGE ? undefined : kind;
}

/** Index of the CRLF that ends the line starting at `at`, or -1 when `head` ends first. */
function lineEnd(head: Buffer, at: number): number {
  for (let i = at; i + 1 < head.length; i++) if (head[i] === 0x0d && head[i + 1] === 0x0a) return i;
  return -1;
}

/**
 * What the element whose first bytes are `head` names first: for an array
 * (`*`) or a push (`>`) whose first member is a bulk or simple string
 * spelling a confirmation's kind or a message's, that; else undefined.
 */
export function elementName(head: Buffer): ElementName | undefined {
  if (head.length < 4 || (head[0] !== 0x2a && head[0] !== 0x3e)) return undefined;
  const countEnd = lineEnd(head, 1);
  if (countEnd < 0) return undefined;
  const first = countEnd + 2;
  if (first >= head.length) return undefined;
  if (head[first] === 0x2b) {
    const end = lineEnd(head, first + 1);
    return end < 0 ? undefined : nameOf(head, first + 1, end - first - 1);
  }
  if (head[first] !== 0x24) return undefined;
  const lenEnd = lineEnd(head, first + 1);
  if (lenEnd < 0) return undefined;
  const len = Number(head.toString('latin1', first + 1, lenEnd));
  if (!Number.isInteger(len) || len < 0 || lenEnd + 2 + len > head.length) return undefined;
  return nameOf(head, lenEnd + 2, len);
}

/** The count a confirmation ends with (`:<n>\r\n`, its last member), or undefined. */
export function confirmationCount(tail: Buffer): number | undefined {
  const end = tail.length - 2;
  if (end < 2 || tail[end] !== 0x0d || tail[end + 1] !== 0x0a) return undefined;
  let i = end;
  while (i > 0 && tail[i - 1]! >= 0x30 && tail[i - 1]! <= 0x39) i--;
  if (i === end || i === 0 || tail[i - 1] !== 0x3a) return undefined;
  return Number(tail.toString('latin1', i, end));
}

/**
 * The subscriptions of the upstream connection, as its confirmations tell
 * them, in the order it sends them. Channels and patterns are told apart by
 * how the shared count moves: a `subscribe` that raises it added a channel,
 * one that leaves it added nothing (the channel was subscribed already).
 */
export class Subscriptions {
  #channels = 0;
  #patterns = 0;
  /** Channels and patterns, as the last classic confirmation counted them. */
  #classic = 0;
  #shard = 0;

  /** The upstream confirmed a step of `kind`, leaving `count` subscriptions of its family. */
  note(kind: PubSubKind, count: number): void {
    switch (kind) {
      case PubSubKind.subscribe:
        if (count > this.#classic) this.#channels++;
        break;
      case PubSubKind.unsubscribe:
        if (count < this.#classic) this.#channels--;
        break;
      case PubSubKind.psubscribe:
        if (count > this.#classic) this.#patterns++;
        break;
      case PubSubKind.punsubscribe:
        if (count < this.#classic) this.#patterns--;
        break;
      default:
        this.#shard = count;
        return;
    }
    this.#classic = count;
  }

  /** How many confirmations a `kind` command that names nothing gets now: one per subscription it drops, at least one. */
  confirmationsForAll(kind: PubSubKind): number {
    const n = kind === PubSubKind.unsubscribe ? this.#channels : kind === PubSubKind.punsubscribe ? this.#patterns : kind === PubSubKind.sunsubscribe ? this.#shard : 0;
    return Math.max(1, n);
  }

  /** Subscribed to anything: messages may come. */
  get any(): boolean {
    return this.#classic > 0 || this.#shard > 0;
  }

  /** RESET: the upstream dropped every subscription, confirming none. */
  clear(): void {
    this.#channels = this.#patterns = this.#classic = this.#shard = 0;
  }
}

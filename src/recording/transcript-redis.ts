/**
 * Redis side of the transcript: commands (client -> gateway) and replies
 * (gateway -> client) decoded from RESP2/RESP3
 * (https://github.com/redis/redis-specifications/blob/master/protocol/RESP3.md).
 *
 * A small whole-value parser, lenient where the gateway's framers
 * (protocols/redis/resp.ts) are strict: a forensic reader shows what was
 * sent, it does not police it. Values split across records are reassembled;
 * the parser says how many bytes it needs at least before it is worth
 * trying again (a bulk string's announced length), so a large value is
 * parsed once, not once per record.
 */
import type { Direction } from './format.js';
import { RespReplyFramer, RespRequestFramer } from '../../protocols/redis/resp.js';
import { ByteQueue, type EmitFn, type ProtocolDecoder, type Stamp, preview, printable } from './transcript.js';
import { redisCredentialArgs } from './scrub.js';
import { classifyCommand } from '../../protocols/redis/classify.js';
import { secretPositions } from '../../protocols/redis/command-gate.js';

export interface RespValue {
  /** The type byte as a character: + - : $ * _ , # ! = ( % ~ | > (or 'inline'). */
  t: string;
  /** Line types: the line; `$ ! =`: undefined (see `b`). */
  s?: string;
  b?: Buffer;
  items?: RespValue[];
  nil?: boolean;
}

const MAX_DEPTH = 64;

type Parsed = { v: RespValue; end: number } | { need: number };

function lineEnd(buf: Buffer, pos: number): number {
  const i = buf.indexOf('\r\n', pos, 'latin1');
  return i;
}

/** One RESP value at `pos`, or how many bytes of `buf` are needed at least. */
export function parseResp(buf: Buffer, pos: number, depth = 0): Parsed {
  if (depth > MAX_DEPTH) throw new RangeError('RESP nesting deeper than 64');
  if (pos >= buf.length) return { need: pos + 1 };
  const t = String.fromCharCode(buf[pos]!);
  const le = lineEnd(buf, pos + 1);
  if (le === -1) return { need: buf.length + 1 };
  const line = buf.toString('utf8', pos + 1, le);
  const after = le + 2;
  switch (t) {
    case '+':
    case '-':
    case ':':
    case ',':
    case '#':
    case '(':
      return { v: { t, s: line }, end: after };
    case '_':
      return { v: { t, nil: true }, end: after };
    case '$':
    case '!':
    case '=': {
      const n = Number(line);
      if (!Number.isInteger(n) || n < -1) throw new RangeError(`bad bulk length ${JSON.stringify(line.slice(0, 20))}`);
      if (n === -1) return { v: { t, nil: true }, end: after };
      if (buf.length < after + n + 2) return { need: after + n + 2 };
      return { v: { t, b: buf.subarray(after, after + n) }, end: after + n + 2 };
    }
    case '*':
    case '~':
    case '>':
    case '%':
    case '|': {
      const n = Number(line);
      if (!Number.isInteger(n) || n < -1) throw new RangeError(`bad aggregate length ${JSON.stringify(line.slice(0, 20))}`);
      if (n === -1) return { v: { t, nil: true }, end: after };
      const count = t === '%' || t === '|' ? 2 * n : n;
      const items: RespValue[] = [];
      let p = after;
      for (let i = 0; i < count; i++) {
        const r = parseResp(buf, p, depth + 1);
        if ('need' in r) return r;
        items.push(r.v);
        p = r.end;
      }
      return { v: { t, items }, end: p };
    }
    default: {
      // An inline command (telnet style): words on one line.
      const words = buf.toString('utf8', pos, le).trim().split(/\s+/).filter(Boolean);
      return { v: { t: 'inline', items: words.map((w) => ({ t: '$', b: Buffer.from(w) })) }, end: after };
    }
  }
}

/** Command arguments as buffers (bulk strings; inline words). */
export function commandArgs(v: RespValue): Buffer[] {
  return (v.items ?? []).map((i) => i.b ?? Buffer.from(i.s ?? ''));
}

const REDACTED = '[redacted]';

/** A command for a person: name, then each argument quoted and cut short; credentials never shown. */
export function renderCommand(args: readonly Buffer[]): string {
  if (!args.length) return '(empty command)';
  const secret = new Set(redisCredentialArgs(args));
  // The credentials a command carries past login (CONFIG SET requirepass, ACL SETUSER >pw, MIGRATE
  // AUTH): recorded as sent, shown as approvers and the audit trail see them.
  for (const i of secretPositions(classifyCommand([...args]), args)) secret.add(i);
  const parts = args.map((a, i) => {
    if (i === 0) return printable(a.toString('utf8'));
    if (secret.has(i)) return a.toString('latin1') === REDACTED ? REDACTED : '[withheld]';
    return preview(a, 64, true);
  });
  return parts.join(' ');
}

/** A reply for a person, nested values shortened. */
export function renderReply(v: RespValue, depth = 0): string {
  switch (v.t) {
    case '+':
      return `+${printable(v.s ?? '')}`;
    case '-':
      return `-${printable(v.s ?? '')}`;
    case ':':
      return `:${v.s}`;
    case ',':
    case '(':
      return `${v.t}${v.s}`;
    case '#':
      return v.s === 't' ? '#true' : '#false';
    case '_':
      return '(nil)';
    case '$':
    case '=':
    case '!':
      if (v.nil) return '(nil)';
      return depth === 0 ? `${v.t}${v.b!.length} ${preview(v.b!, 64, true)}` : preview(v.b!, 32, true);
    case 'inline':
      return renderCommand(commandArgs(v));
    default: {
      if (v.nil) return `${v.t}-1 (nil)`;
      const items = v.items ?? [];
      const pairs = v.t === '%' || v.t === '|';
      const n = pairs ? items.length / 2 : items.length;
      if (depth >= 2) return `${v.t}${n}`;
      const shown: string[] = [];
      const limit = 3;
      if (pairs) {
        for (let i = 0; i < Math.min(n, limit); i++) shown.push(`${renderReply(items[2 * i]!, depth + 1)}: ${renderReply(items[2 * i + 1]!, depth + 1)}`);
      } else {
        for (let i = 0; i < Math.min(n, limit); i++) shown.push(renderReply(items[i]!, depth + 1));
      }
      const more = n > limit ? ', ...' : '';
      const [open, close] = pairs ? ['{', '}'] : ['[', ']'];
      return `${v.t}${n} ${open}${shown.join(', ')}${more}${close}`;
    }
  }
}

/**
 * Uses the gateway's own framers to find where each command and reply
 * ends (RespRequestFramer assembles commands; RespReplyFramer reports reply
 * ends by stream offset without holding them, so a reply split over many
 * records is scanned once), then parses each whole reply once for display.
 */
export class RedisDecoder implements ProtocolDecoder {
  private readonly requests = new RespRequestFramer();
  private readonly replies = new RespReplyFramer();
  /** Server bytes of replies not yet ended. */
  private readonly pending = new ByteQueue();
  /** Stream offset of the first byte in `pending`. */
  private consumed = 0;
  private clientBytes = 0;
  private clientDone = 0;
  private dead: Partial<Record<Direction, boolean>> = {};

  push(direction: Direction, bytes: Buffer, at: Stamp, emit: EmitFn): void {
    if (this.dead[direction]) return;
    const fail = (err: unknown): void => {
      this.dead[direction] = true;
      emit({ ...at, dir: direction, kind: 'undecodable', text: `cannot decode the ${direction} stream further: ${err instanceof Error ? err.message : String(err)}` });
    };
    if (direction === 'client') {
      this.clientBytes += bytes.length;
      try {
        this.requests.push(bytes, {
          command: (raw, args) => {
            this.clientDone += raw.length;
            emit({ ...at, dir: 'client', kind: 'command', text: renderCommand(args), data: { command: args[0]?.toString('utf8').toUpperCase() ?? null, argc: args.length } });
          },
        });
      } catch (err) {
        fail(err);
      }
      return;
    }
    const ends: number[] = [];
    let failure: unknown;
    try {
      this.replies.push(bytes, { passthrough: (b) => this.pending.push(b), replyEnd: (info) => ends.push(info.end) });
    } catch (err) {
      failure = err;
    }
    for (const end of ends) {
      const whole = this.pending.take(end - this.consumed);
      this.consumed = end;
      // An attribute ('|') comes with the reply it annotates: both are in `whole`.
      let pos = 0;
      const shown: string[] = [];
      let kind = 'reply';
      while (pos < whole.length) {
        let r: ReturnType<typeof parseResp>;
        try {
          r = parseResp(whole, pos);
        } catch (err) {
          // Framed (the framer allows deeper nesting than the display parser), but not shown: the
          // stream goes on with the next reply.
          shown.push(`(not shown: ${err instanceof Error ? err.message : String(err)})`);
          kind = 'undecodable';
          break;
        }
        if ('need' in r) break;
        pos = r.end;
        const v = r.v;
        shown.push(renderReply(v));
        if (v.t === '>') kind = 'push';
        else if (v.t === '-' || v.t === '!') {
          const msg = v.s ?? v.b?.toString('utf8') ?? '';
          kind = /^NOPERM\b/.test(msg) || /sluice/i.test(msg) ? 'denied' : 'error';
        }
      }
      emit({ ...at, dir: 'server', kind, text: shown.join(' ') });
    }
    if (failure !== undefined) fail(failure);
  }

  finish(emit: EmitFn, at: Stamp): void {
    const left: Record<Direction, number> = { client: this.clientBytes - this.clientDone, server: this.pending.length };
    for (const d of ['client', 'server'] as const) {
      if (!this.dead[d] && left[d] > 0) {
        emit({ ...at, dir: d, kind: 'partial', text: `${left[d]} bytes of an unfinished ${d === 'client' ? 'command' : 'reply'} at the end` });
      }
    }
  }
}

/**
 * The steady state of a Redis session: commands flow client -> upstream
 * through the request framer, replies flow back through the reply framer.
 *
 * Client side, per chunk: every complete command is classified (commands.ts);
 * the forwarded ones are collected as spans of the chunk, so a chunk of
 * ordinary commands goes upstream as ONE write of the chunk itself. A command
 * whose name alone says "forward" (GET, SET, ...) and that the gate, if any,
 * allows by its kind (command-gate.ts `allows`) costs no allocation: the
 * framer hands over offsets, no argument list is built. A command
 * that straddles chunks is held by the framer until it is complete and then
 * forwarded whole: nothing of a command is forwarded before Sluice has seen
 * all of it.
 *
 * Upstream side, per chunk: the reply framer reports where each top-level
 * reply ends and the chunk is forwarded untouched, unless Sluice must put a
 * reply of its own between two upstream replies or take one out.
 *
 * Ordering. Redis answers every command with exactly one reply, in order
 * (RESP3 pushes are out of band and flagged by the framer). So the relay
 * numbers forwarded commands (`sent`) and upstream replies (`received`):
 * when Sluice answers a command itself (a refusal), its reply is due after
 * reply number `sent` - 1, and is queued until `received` catches up. The
 * same counting lets it drop the replies to commands it sent on its own
 * (the re-authentication after RESET, the DISCARD that replaces EXEC).
 *
 * Pub/sub breaks the pairing (RESP2 subscribe confirmations and messages
 * are ordinary arrays, one per channel). After a (P|S)SUBSCRIBE the relay
 * stops counting; its own replies then go out at the next reply boundary.
 * RESET brings the connection back to a known state: the relay recognises
 * the upstream's `+RESET` and counts again from there.
 *
 * Backpressure: a write that reports a full buffer pauses the other side
 * until 'drain', in both directions.
 */
import type { Socket } from 'node:net';
import type { Logger } from '../../src/log.js';
import { ReadHold, RelayReads } from '../../src/gateway/socket-reads.js';
import { endSocket } from '../../src/gateway/net.js';
import { CommandClassifier, EXECABORT, EXECABORT_CLOSING, IDENTITY_FIXED, Verdict, tokenIs } from './commands.js';
import { error, type RespVersion } from './replies.js';
import { RespProtocolError, RespReplyFramer, RespRequestFramer, type ReplyEndInfo, type ReplySink, type RequestSpanSink, type RespRequestLimits } from './resp.js';
import { encodeCommand } from './upstream.js';
import type { Judgement, RedisCommandGate } from './command-gate.js';
import { commandKind } from './classify.js';

export interface RedisRelayOptions {
  logger: Logger;
  /** Close the session after this long without a byte in either direction; 0 = never. */
  idleTimeoutMs: number;
  /** The db the target is bound to. */
  db: number;
  /** Commands that re-establish the target's identity and db after RESET, each answered by +OK. */
  reauth: Buffer[];
  /** The protocol the client negotiated. */
  proto: RespVersion;
  /** Limits on the client's commands (bulk and command size from the target's max_message_size). */
  requestLimits: Partial<RespRequestLimits>;
  /** Called once, when both sockets are closed. */
  onClose(reason: string): void;
  /**
   * Rewrites the upstream's bytes before the relay frames them (data
   * masking). `push` hands out what may go on through `emit`, in order; a
   * returned promise pauses reading from the upstream until it settles. A
   * rejection ends the session: nothing unmasked is sent.
   */
  serverTransform?: { push(chunk: Buffer, emit: (bytes: Buffer) => void): void | Promise<void>; close(): void };
  /** Policy and audit for each command the relay would forward. */
  gate?: RedisCommandGate;
  /**
   * The session recording, told which client bytes are framed (only those
   * are recorded) and which credential command to scrub first: an AUTH sent
   * again after login is refused, and must not reach the recording either.
   * `base` is the absolute client offset of the relay's first byte.
   */
  recordClient?: RelayRecording;
}

/** What the relay tells the session recording about the client's bytes (src/recording/tap.ts). */
export interface RelayRecording {
  /** Absolute client offset of the relay's first byte (the first byte after the login command). */
  base: number;
  /** A chunk read from the client, handed over before it is framed (not called for bytes given to `start`). */
  received(chunk: Buffer): void;
  /** A credential command among the bytes not yet recorded: record its scrubbed form. */
  scrub(raw: Buffer, args: Buffer[]): void;
  /** Client bytes before absolute offset `upTo` are framed. */
  framed(upTo: number): void;
}

export interface RelayStats {
  bytesFromClient: number;
  bytesFromUpstream: number;
  commands: number;
  refused: number;
}

const HALF_CLOSE_GRACE_MS = 10_000;
/** A client that broke the protocol gets its error after the replies already due; it waits no longer than this. */
const PROTOCOL_ERROR_GRACE_MS = 5_000;
/** Upper bound on the bytes of a reply Sluice holds back to drop (it expects `+OK`). */
const MAX_WITHHELD = 64 * 1024;

const RESET_CMD = encodeCommand(['RESET']);
const DISCARD_CMD = encodeCommand(['DISCARD']);
const PLUS_OK = Buffer.from('+OK\r\n');
const PLUS_RESET = Buffer.from('+RESET\r\n');

/** Bytes of Sluice's own replies a client may leave unread, or waiting behind a reply still due, before it is not read (see #holdForOwnReplies). */
const OWN_REPLIES_MAX = 64 * 1024;
const INJECT = 0;
const DROP = 1;
interface Action {
  kind: typeof INJECT | typeof DROP;
  /** INJECT: due once `received` >= n (-1: at the next reply boundary). DROP: the number of the reply to drop. */
  n: number;
  bytes?: Buffer;
  /** INJECT: close the session once written (a client protocol error). */
  final?: boolean;
}

/** A change to one upstream chunk: insert `bytes` at absolute offset `at`, or drop [at, dropTo). */
interface Edit {
  at: number;
  bytes?: Buffer;
  dropTo?: number;
}

export class RedisRelay {
  readonly stats: RelayStats = { bytesFromClient: 0, bytesFromUpstream: 0, commands: 0, refused: 0 };
  proto: RespVersion;
  readonly #classifier: CommandClassifier;
  #closed = false;
  #closeReason = 'closed';
  /**
   * Idle tracking without a clock read per chunk: the idle check compares
   * the bytes seen so far with what it saw last time, and dates activity to
   * its own ticks (so a session closes after idleTimeoutMs to idleTimeoutMs
   * plus one tick without traffic, never sooner).
   */
  #lastActivity = Date.now();
  #bytesAtCheck = 0;
  /** Bytes read from the upstream before serverTransform (stats count what it emits). */
  #transformIn = 0;
  #idleTimer: NodeJS.Timeout | undefined;
  #open = 2;

  // --- pairing ---
  #sent = 0;
  #received = 0;
  /**
   * true: `sent` counts forwarded commands and `received` non-push replies.
   * false (pub/sub): `sent` counts the fewest elements the forwarded commands
   * produce (one per channel for (UN)SUBSCRIBE) and `received` every element.
   */
  #paired = true;
  /** false only while an unpaired RESET waits for the upstream's `+RESET`. */
  #countReplies = true;
  /** An unpaired RESET was sent: replies are counted again after the upstream's `+RESET`. */
  #awaitingReset = false;
  #actions: Action[] = [];
  /** Bytes of Sluice's own replies waiting in #actions (INJECT), bounded by OWN_REPLIES_MAX (see #holdForOwnReplies). */
  #queuedReplyBytes = 0;
  /** A command is held for approval; commands behind it wait in `#backlog`. */
  #held = false;
  #backlog: Array<{ raw: Buffer; args: Buffer[] }> = [];
  #inMulti = false;
  #multiDirty = false;
  /** The client sent QUIT: the session ends because the client asked, whichever socket's end arrives first. */
  #clientQuit = false;
  /**
   * Nothing more the client sends is taken: after a protocol violation, or
   * a transaction that had to be aborted by ending the session
   * (#abortUnpairedExec). The session ends once the replies owed before it
   * are out.
   */
  #clientFailed = false;

  // --- client chunk being framed ---
  #cChunk: Buffer = Buffer.alloc(0);
  #spanStart = -1;
  #spanEnd = 0;
  /** Bytes for the upstream, before the span being collected (usually empty). */
  #toUpstream: Buffer[] = [];

  // --- upstream chunk being framed ---
  #uChunk: Buffer = Buffer.alloc(0);
  #uBase = 0;
  /** Absolute offset where the current top-level element started. */
  #elemStart = 0;
  #edits: Edit[] = [];
  /** Bytes of a reply to drop that began in an earlier chunk, held back. */
  #withheld: Buffer[] | null = null;
  #withheldBytes = 0;
  /** The last bytes of the previous upstream chunk, kept while waiting for `+RESET`. */
  #prevTail: Buffer = Buffer.alloc(0);
  #uPassthrough: Buffer | null = null;

  private readonly clientFramer: RespRequestFramer;
  private readonly upstreamFramer = new RespReplyFramer();

  readonly #requestSink: RequestSpanSink = { span: (buf, start, end) => this.#onSpan(buf, start, end) };
  readonly #replySink: ReplySink = {
    passthrough: (bytes) => {
      this.#uPassthrough = bytes;
    },
    replyEnd: (info) => this.#onReplyEnd(info),
  };

  /**
   * Read per chunk or per command, so kept in fields of their own: the
   * options objects the sessions build differ in shape (optional parts are
   * spread in), and a load from them in the relay's hot path was
   * megamorphic in profiles.
   */
  readonly #recording: RelayRecording | undefined;
  readonly #gate: RedisCommandGate | undefined;
  /** Why each socket is not being read (backpressure, a held command, masking, the recording). */
  readonly #reads: RelayReads;

  constructor(
    private readonly client: Socket,
    private readonly upstream: Socket,
    private readonly options: RedisRelayOptions,
  ) {
    this.proto = options.proto;
    this.clientFramer = new RespRequestFramer(options.requestLimits);
    this.#classifier = new CommandClassifier(options.db);
    this.#recording = options.recordClient;
    this.#gate = options.gate;
    this.#reads = new RelayReads(client, upstream);
  }

  /** Starts relaying: `toClient` first (the login reply), then bytes the client already sent after its AUTH/HELLO. */
  start(toClient: Buffer[], fromClient: Buffer[], fromUpstream: Buffer): void {
    for (const b of toClient) this.client.write(b);
    const rec = this.#recording;
    // The recording sees every chunk read, even one the relay then ignores (after a protocol violation).
    this.client.on('data', rec ? (chunk: Buffer) => (rec.received(chunk), this.#onClientData(chunk)) : (chunk: Buffer) => this.#onClientData(chunk));
    const transform = this.options.serverTransform;
    if (transform) {
      this.upstream.on('data', (chunk: Buffer) => {
        this.#transformIn += chunk.length;
        let pending: void | Promise<void>;
        try {
          pending = transform.push(chunk, (bytes) => {
            if (!this.#closed) this.#onUpstreamData(bytes);
          });
        } catch (err) {
          this.#transformFailed(err);
          return;
        }
        if (!pending) return;
        this.#reads.upstream.hold(ReadHold.transform);
        pending.then(
          () => {
            if (!this.#closed) this.#reads.upstream.release(ReadHold.transform);
          },
          (err: unknown) => this.#transformFailed(err),
        );
      });
    } else {
      this.upstream.on('data', (chunk: Buffer) => this.#onUpstreamData(chunk));
    }
    this.#wireEnds(this.client, this.upstream, 'client');
    this.#wireEnds(this.upstream, this.client, 'upstream');
    for (const socket of [this.client, this.upstream]) {
      socket.once('close', () => {
        if (--this.#open === 0) this.#finish();
        else endSocket(this.#peer(socket));
      });
    }
    if (this.options.idleTimeoutMs > 0) {
      const every = Math.max(250, Math.floor(this.options.idleTimeoutMs / 4));
      this.#idleTimer = setInterval(() => this.#checkIdle(), every);
      this.#idleTimer.unref();
    }
    if (fromUpstream.length > 0) this.#onUpstreamData(fromUpstream);
    for (const b of fromClient) if (b.length > 0 && !this.#clientFailed) this.#onClientData(b);
    this.#reads.start();
  }

  /**
   * The session's recording has fallen behind, or caught up
   * (RelayReads.recording). Not once the session is shutting down: then the
   * sockets must be read to see their ends (see shutdown).
   */
  holdForRecording(behind: boolean): void {
    if (!this.#closed) this.#reads.recording(behind);
  }

  /** Ends the session from the gateway's side; the client gets `-ERR sluice: <reason>` when that cannot cut a reply in two. */
  shutdown(reason: string): void {
    if (this.#closed) return;
    this.#closeReason = reason;
    this.#closed = true;
    // A session held for its recording is read again, as any other is while it closes: a socket
    // never read would not see its peer's end, and would wait for the grace timer to be destroyed.
    this.#reads.recording(false);
    this.#reads.client.release(ReadHold.replies);
    // The reason goes to the client only as the reply to a command that is
    // still owed one: an error nobody asked for breaks clients' reply queues
    // (ioredis throws "Command queue state error"), so with nothing owed the
    // connection simply closes, as Redis itself closes it on SHUTDOWN.
    const owed = this.#paired && this.#countReplies && this.#sent > this.#received && this.#actions.length === 0;
    if (owed && this.upstreamFramer.atReplyBoundary && this.#withheld === null && this.client.writable) {
      this.client.end(error(`sluice: ${reason}`));
    } else {
      this.client.end();
    }
    this.upstream.end();
    for (const socket of [this.client, this.upstream]) setTimeout(() => socket.destroy(), HALF_CLOSE_GRACE_MS).unref();
  }

  // --- client -> upstream ----------------------------------------------------

  #onClientData(chunk: Buffer): void {
    if (this.#clientFailed) return;
    this.stats.bytesFromClient += chunk.length;
    let failure: unknown;
    this.#cChunk = chunk;
    this.#spanStart = -1;
    try {
      this.clientFramer.pushSpans(chunk, this.#requestSink);
    } catch (err) {
      failure = err;
    }
    const flowing = this.#sendUpstream();
    // Recorded once the commands are on their way upstream: recording need not delay them.
    const rec = this.#recording;
    if (rec) rec.framed(rec.base + this.stats.bytesFromClient - this.clientFramer.bufferedBytes);
    if (!flowing && !this.#clientFailed) this.#reads.client.holdUntilDrained(this.upstream);
    this.#holdForOwnReplies();
    if (failure !== undefined) this.#clientViolation(failure);
  }

  /** One framed command, bytes [start, end) of `buf` (the chunk, or the framer's copy of a command that straddled chunks). */
  #onSpan(buf: Buffer, start: number, end: number): void {
    // The rest of a chunk after an EXEC that ends the session: never forwarded.
    if (this.#clientFailed) return;
    const framer = this.clientFramer;
    const nameAt = start + framer.argStart(0);
    const nameEnd = start + framer.argEnd(0);
    if (!this.#held && this.#paired && this.#classifier.byName(buf, nameAt, nameEnd - nameAt)?.verdict === Verdict.Forward) {
      const gate = this.#gate;
      // Nothing to track, and no judging, or a verdict that needs no more than the command's kind:
      // forwarded without building its argument list.
      if (gate === undefined || this.#allowedByKind(gate, buf, start, nameAt, nameEnd)) {
        this.stats.commands++;
        this.#sent++;
        this.#forwardSpan(buf, start, end);
        return;
      }
    }
    this.#onCommand(buf, start, end, framer.args(buf.subarray(start, end)));
  }

  /** Whether the gate allows every command of this one's kind (and counts it): then it needs no `judge`. */
  #allowedByKind(gate: RedisCommandGate, buf: Buffer, start: number, nameAt: number, nameEnd: number): boolean {
    const framer = this.clientFramer;
    const subAt = framer.argCount > 1 ? start + framer.argStart(1) : -1;
    const kind = commandKind(buf, nameAt, nameEnd, subAt, start + (subAt < 0 ? 0 : framer.argEnd(1)));
    return kind !== undefined && gate.allows(kind);
  }

  /** Writes what the chunk produced for the upstream; false when the upstream's buffer is full. */
  #sendUpstream(): boolean {
    if (this.#toUpstream.length === 0) {
      // The usual case: one span, often the chunk itself.
      return this.#spanStart < 0 || this.upstream.write(this.#takeSpan());
    }
    this.#flushSpan();
    const out = this.#toUpstream;
    this.#toUpstream = [];
    return writeAll(this.upstream, out);
  }

  /** A command, bytes [start, end) of `buf`, with its arguments (subarrays of those bytes). */
  #onCommand(buf: Buffer, start: number, end: number, args: Buffer[]): void {
    // After an EXEC that ends the session, nothing more is judged or forwarded: neither the rest of
    // its chunk (#onSpan) nor commands that waited behind a held one (#hold replays them here).
    if (this.#clientFailed) return;
    if (this.#held) {
      // A command is waiting for approval: everything after it waits too, in order. Its chunk is
      // recorded now, though: a credential in it is scrubbed now, not when the backlog is judged.
      if (this.#classifier.classify(args).reply === IDENTITY_FIXED) this.#recording?.scrub(buf.subarray(start, end), args);
      this.#backlog.push(ownCopy(buf.subarray(start, end), args));
      return;
    }
    this.stats.commands++;
    const c = this.#classifier.classify(args);
    const gate = this.#gate;
    if ((c.verdict === Verdict.Forward || c.verdict === Verdict.Subscribe || c.verdict === Verdict.Quit) && gate) {
      const judged = gate.judge(args);
      if (judged.action === 'deny') {
        this.#refuse(judged.reply);
        return;
      }
      if (judged.action === 'approve') {
        this.#hold(buf.subarray(start, end), args, judged);
        return;
      }
    }
    switch (c.verdict) {
      case Verdict.Forward:
        this.#forward(buf, start, end, args);
        return;
      case Verdict.Refuse:
        this.options.logger.info({ command: args[0]!.toString('latin1').slice(0, 32).toUpperCase() }, 'command refused');
        if (c.reply === IDENTITY_FIXED) this.#recording?.scrub(buf.subarray(start, end), args);
        this.#refuse(c.reply!);
        return;
      case Verdict.Hello:
        this.#forward(buf, start, end);
        if (c.proto) this.proto = c.proto;
        return;
      case Verdict.Subscribe:
        this.#forward(buf, start, end, args);
        this.#unpair(args);
        return;
      case Verdict.Multi:
        this.#forward(buf, start, end);
        this.#inMulti = true;
        return;
      case Verdict.Discard:
        this.#forward(buf, start, end);
        this.#inMulti = this.#multiDirty = false;
        return;
      case Verdict.Exec:
        if (this.#multiDirty && !this.#paired) {
          this.#abortUnpairedExec();
          return;
        }
        if (this.#multiDirty) {
          // A command was refused while queuing: Redis would abort EXEC. Discard upstream instead.
          this.#forwardOwn(DISCARD_CMD);
          this.#reply(EXECABORT);
        } else {
          this.#forward(buf, start, end);
        }
        this.#inMulti = this.#multiDirty = false;
        return;
      case Verdict.Reset:
        this.#reset();
        return;
      case Verdict.Quit:
        // Redis answers +OK and closes: its FIN follows from the client's request.
        this.#clientQuit = true;
        this.#forward(buf, start, end);
        return;
    }
  }

  /** Answers a command with an error instead of forwarding it; inside MULTI the EXEC will abort, as in Redis. */
  #refuse(reply: Buffer): void {
    this.stats.refused++;
    if (this.#inMulti) this.#multiDirty = true;
    this.#reply(reply);
  }

  /**
   * The EXEC of a transaction with a refused command, while the relay counts
   * pub/sub elements (after any SUBSCRIBE or UNSUBSCRIBE, until a RESET; a
   * RESP3 client may run transactions while subscribed): there DISCARD's
   * `+OK` cannot be dropped at its exact place (a message may come before
   * it), so nothing of the transaction may reach EXEC another way. The EXEC
   * is not sent, the client gets EXECABORT in its place and the session
   * ends; the upstream drops the queued commands with the connection, as
   * Redis does for any client that leaves mid-MULTI. Before, the refusal
   * did not mark the transaction there and the EXEC ran the rest of it.
   */
  #abortUnpairedExec(): void {
    this.#clientFailed = true;
    this.#reads.client.hold(ReadHold.failed);
    this.#inMulti = this.#multiDirty = false;
    this.#closeReason = 'transaction aborted while counting pub/sub replies';
    this.options.logger.info('a transaction with a refused command was aborted while pub/sub replies are counted; closing session');
    this.#reply(EXECABORT_CLOSING, true);
    // The EXECABORT waits for the replies owed before it; one that never comes (BLPOP k 0) must not
    // keep the session, whose client is no longer read, open for ever.
    setTimeout(() => this.shutdown('transaction aborted while counting pub/sub replies'), PROTOCOL_ERROR_GRACE_MS).unref();
  }

  /**
   * Holds a command for a human's approval: it and everything the client
   * sends after it wait (the client socket is paused) until the decision.
   */
  #hold(raw: Buffer, args: Buffer[], judged: Extract<Judgement, { action: 'approve' }>): void {
    this.#flushSpan();
    this.#held = true;
    this.#reads.client.hold(ReadHold.approval);
    const own = ownCopy(raw, args);
    void this.options.gate!.hold(own.raw, own.args, judged.verdict, judged.facts).then(
      (reply) => {
        if (this.#closed) return;
        this.#held = false;
        // The client broke the protocol after the held command: its error holds the held command's
        // place, the session is ending, and nothing of the client's is forwarded, approved or not.
        if (this.#clientFailed) return;
        if (reply) this.#refuse(reply);
        else this.#forwardApproved(own.raw, own.args);
        const backlog = this.#backlog;
        this.#backlog = [];
        for (let i = 0; i < backlog.length; i++) {
          const { raw: held, args: heldArgs } = backlog[i]!;
          this.#onCommand(held, 0, held.length, heldArgs);
          if (this.#held) {
            this.#backlog.push(...backlog.slice(i + 1));
            break;
          }
        }
        this.#sendUpstream();
        if (!this.#held) this.#reads.client.release(ReadHold.approval);
      },
      (err: unknown) => {
        this.options.logger.error({ err: err instanceof Error ? err.message : String(err) }, 'approval failed');
        this.shutdown('the approval flow failed');
      },
    );
  }

  /**
   * An approved command goes upstream as it would have unheld: a
   * (P|S)SUBSCRIBE switches to pub/sub counting, a QUIT's end is the
   * client's. Forwarded plainly, an approved SUBSCRIBE left the messages
   * that followed counted as replies to later commands.
   */
  #forwardApproved(raw: Buffer, args: Buffer[]): void {
    const verdict = this.#classifier.classify(args).verdict;
    if (verdict === Verdict.Quit) this.#clientQuit = true;
    this.#forward(raw, 0, raw.length, args);
    if (verdict === Verdict.Subscribe) this.#unpair(args);
  }

  /** Forwards a command of the client's, bytes [start, end) of `buf`; `args` only matter unpaired (pub/sub counting). */
  #forward(buf: Buffer, start: number, end: number, args?: Buffer[]): void {
    this.#sent += this.#paired || !args ? 1 : minElements(args);
    this.#forwardSpan(buf, start, end);
  }

  /** Queues bytes [start, end) of `buf` for the upstream: as part of one span when `buf` is the chunk being framed. */
  #forwardSpan(buf: Buffer, start: number, end: number): void {
    if (buf === this.#cChunk) {
      if (this.#spanStart >= 0 && start === this.#spanEnd) {
        this.#spanEnd = end;
        return;
      }
      this.#flushSpan();
      this.#spanStart = start;
      this.#spanEnd = end;
      return;
    }
    // A command that straddled chunks (the framer's copy) or waited for approval (a copy of its own).
    this.#flushSpan();
    this.#toUpstream.push(start === 0 && end === buf.length ? buf : buf.subarray(start, end));
  }

  /** Sends a command of Sluice's own whose reply (+OK) is dropped. */
  #forwardOwn(command: Buffer): void {
    this.#flushSpan();
    this.#toUpstream.push(command);
    this.#actions.push({ kind: DROP, n: this.#sent++ });
  }

  #flushSpan(): void {
    if (this.#spanStart >= 0) this.#toUpstream.push(this.#takeSpan());
  }

  /** The span collected so far (the chunk itself when it is all of it); none is collected after. */
  #takeSpan(): Buffer {
    const chunk = this.#cChunk;
    const span = this.#spanStart === 0 && this.#spanEnd === chunk.length ? chunk : chunk.subarray(this.#spanStart, this.#spanEnd);
    this.#spanStart = -1;
    return span;
  }

  /**
   * RESET must not reach the upstream alone: it would leave the connection
   * authenticated as `default` (or not at all). Sluice sends RESET followed
   * by the target's AUTH and SELECT, lets the client see `+RESET`, and drops
   * the two `+OK`s.
   */
  #reset(): void {
    this.#inMulti = this.#multiDirty = false;
    this.proto = 2;
    if (this.#paired) {
      this.#forward(RESET_CMD, 0, RESET_CMD.length);
      for (const c of this.options.reauth) this.#forwardOwn(c);
      return;
    }
    // Unpaired (pub/sub): count again from the upstream's +RESET.
    this.#flushSpan();
    this.#toUpstream.push(RESET_CMD, ...this.options.reauth);
    for (const a of this.#actions) if (a.kind === INJECT) a.n = -1;
    this.#paired = true;
    this.#countReplies = false;
    this.#awaitingReset = true;
    this.#sent = 0;
    this.#received = 0;
    for (let i = 0; i < this.options.reauth.length; i++) this.#actions.push({ kind: DROP, n: this.#sent++ });
  }

  /**
   * A (P|S)SUBSCRIBE or (P|S)UNSUBSCRIBE was just forwarded (counted as one
   * paired reply): switch to counting elements. Replies still due for
   * earlier commands stay due, one element each; the command itself owes
   * one per channel. An UNSUBSCRIBE from a client never subscribed counts
   * too: Redis still confirms each channel named, a RESP2 reply each (two
   * for `UNSUBSCRIBE a b`, where paired counting expected one and put every
   * later refusal a place too early) or, in RESP3, a push (which paired
   * counting skips: every later refusal waited for a reply that never came).
   */
  #unpair(args: Buffer[]): void {
    if (!this.#paired) return;
    const done = this.#received;
    this.#sent = this.#sent - 1 - done + minElements(args);
    this.#received = 0;
    for (const a of this.#actions) if (a.n > 0) a.n = Math.max(0, a.n - done);
    this.#paired = false;
  }

  /** A reply of Sluice's own, in order with the upstream's. */
  #reply(bytes: Buffer, final = false): void {
    const n = this.#sent;
    if (
      this.#actions.length === 0 &&
      this.#withheld === null &&
      this.upstreamFramer.atReplyBoundary &&
      this.#countReplies &&
      this.#received >= n
    ) {
      this.#writeClient([bytes]);
      if (final) this.#endAfterViolation();
      return;
    }
    this.#actions.push({ kind: INJECT, n, bytes, final });
    this.#queuedReplyBytes += bytes.length;
  }

  /**
   * Sluice's own replies (refusals, answers it makes itself) send nothing
   * upstream, so the upstream's backpressure never slows a client that sends
   * only refused commands: not reading them, it grew the client's write
   * queue without bound; behind a blocked command (BLPOP k 0), the queue of
   * replies waiting their turn grew however fast it read. Past
   * OWN_REPLIES_MAX of either, the client is not read until it has drained,
   * or the waiting replies are down to half.
   */
  #holdForOwnReplies(): void {
    if (this.#clientFailed || this.#closed) return;
    if (this.client.writableLength > OWN_REPLIES_MAX) this.#reads.client.holdUntilDrained(this.client);
    if (this.#queuedReplyBytes > OWN_REPLIES_MAX) this.#reads.client.hold(ReadHold.replies);
  }

  #clientViolation(err: unknown): void {
    this.#clientFailed = true;
    this.#reads.client.hold(ReadHold.failed);
    const message = err instanceof RespProtocolError ? err.message : 'Protocol error: internal error while framing';
    if (!(err instanceof RespProtocolError)) this.options.logger.error({ err }, 'unexpected framing failure');
    this.options.logger.warn(
      { side: 'client', offset: err instanceof RespProtocolError ? err.offset : undefined, reason: message },
      'protocol violation; closing session',
    );
    this.#closeReason = 'client protocol violation';
    // Redis answers the commands before the bad bytes, then `-ERR Protocol error: ...`, then closes.
    this.#reply(error(message), true);
    setTimeout(() => this.shutdown('client protocol violation'), PROTOCOL_ERROR_GRACE_MS).unref();
  }

  #endAfterViolation(): void {
    if (this.#closed) return;
    this.#closed = true;
    this.client.end();
    this.upstream.end();
    for (const socket of [this.client, this.upstream]) setTimeout(() => socket.destroy(), HALF_CLOSE_GRACE_MS).unref();
  }

  // --- upstream -> client ----------------------------------------------------

  #onUpstreamData(chunk: Buffer): void {
    this.stats.bytesFromUpstream += chunk.length;
    this.#uChunk = chunk;
    this.#uBase = this.upstreamFramer.offset;
    this.#uPassthrough = null;
    let failure: unknown;
    // Nothing of Sluice's own to put between replies or take out: count them, no call per reply.
    const counting = this.#actions.length === 0 && this.#withheld === null && this.#paired && this.#countReplies;
    try {
      if (counting) this.#received += this.upstreamFramer.pushCounting(chunk, this.#replySink);
      else this.upstreamFramer.push(chunk, this.#replySink);
    } catch (err) {
      failure = err;
    }
    if (counting) this.#elemStart = this.upstreamFramer.lastEnd;
    if (failure === undefined) this.#withholdTail(chunk);
    if (this.#awaitingReset) this.#keepTail(chunk);
    // Set by the framer's passthrough callback during push (TS cannot see that).
    const forwarded = this.#uPassthrough as Buffer | null;
    let flowing = true;
    let final = false;
    if (this.#edits.length === 0) {
      // The usual case: the chunk goes on untouched.
      if (forwarded && this.client.writable) flowing = this.client.write(forwarded);
    } else {
      let out = this.#applyEdits(forwarded ? forwarded.length : 0);
      this.#edits = [];
      final = out.includes(FINAL_MARK);
      if (final) out = out.filter((o) => o !== FINAL_MARK);
      if (out.length > 0) flowing = this.#writeClient(out);
    }
    if (!flowing) this.#reads.upstream.holdUntilDrained(this.client);
    if (final) this.#endAfterViolation();
    if (failure !== undefined) this.#upstreamViolation(failure);
  }

  #onReplyEnd(info: ReplyEndInfo): void {
    const start = this.#elemStart;
    this.#elemStart = info.end;
    let dropped = false;
    if (!info.push || !this.#paired) {
      if (this.#countReplies) {
        const no = this.#received++;
        const head = this.#actions[0];
        if (head && head.kind === DROP && head.n === no) {
          this.#actions.shift();
          this.#drop(start, info.end);
          dropped = true;
        }
      } else if (this.#awaitingReset && info.end - start === PLUS_RESET.length && this.#bytesOf(start, info.end).equals(PLUS_RESET)) {
        this.#awaitingReset = false;
        this.#countReplies = true;
      }
    }
    if (!dropped && this.#withheld) {
      // Held back as the start of a reply to drop, but it was a push: release it where it began.
      this.#edits.push({ at: this.#uBase, bytes: Buffer.concat(this.#withheld) });
      this.#withheld = null;
      this.#withheldBytes = 0;
    }
    this.#flushActions(info.end);
  }

  #flushActions(at: number): void {
    while (this.#actions.length > 0) {
      const head = this.#actions[0]!;
      if (head.kind !== INJECT) return;
      if (head.n !== -1 && !(this.#countReplies && this.#received >= head.n)) return;
      this.#actions.shift();
      this.#edits.push({ at, bytes: head.bytes! });
      if (head.final) this.#edits.push({ at, bytes: FINAL_MARK });
      this.#queuedReplyBytes -= head.bytes!.length;
      if (this.#queuedReplyBytes <= OWN_REPLIES_MAX / 2) this.#reads.client.release(ReadHold.replies);
    }
  }

  /** Drops the reply [start, end) after checking it is `+OK`. */
  #drop(start: number, end: number): void {
    const from = Math.max(start, this.#uBase);
    const here = this.#uChunk.subarray(from - this.#uBase, end - this.#uBase);
    const bytes = this.#withheld ? Buffer.concat([...this.#withheld, here]) : here;
    this.#withheld = null;
    this.#withheldBytes = 0;
    this.#edits.push({ at: from, dropTo: end });
    if (!bytes.equals(PLUS_OK)) {
      this.options.logger.error(
        { reply: bytes.toString('utf8', 0, Math.min(bytes.length, 200)) },
        'the upstream refused a command sluice sent on the session\'s behalf (re-authentication after RESET, or DISCARD)',
      );
      // Close once this chunk is written: the upstream's state is no longer the target's.
      this.#edits.push({ at: end, bytes: error('sluice: the upstream refused re-authentication; the session is closed') });
      this.#edits.push({ at: end, bytes: FINAL_MARK });
      this.#actions = [];
      this.#queuedReplyBytes = 0;
    }
  }

  /** A reply to drop has begun and goes on in the next chunk: hold its bytes back. */
  #withholdTail(chunk: Buffer): void {
    if (this.upstreamFramer.atReplyBoundary || !this.#countReplies || !this.#paired) return;
    const head = this.#actions[0];
    if (!head || head.kind !== DROP || head.n !== this.#received) return;
    const end = this.#uBase + chunk.length;
    const from = Math.max(this.#elemStart, this.#uBase);
    if (from >= end) return;
    (this.#withheld ??= []).push(chunk.subarray(from - this.#uBase));
    this.#withheldBytes += end - from;
    this.#edits.push({ at: from, dropTo: end });
    if (this.#withheldBytes > MAX_WITHHELD) {
      this.#edits.push({ at: end, bytes: FINAL_MARK });
      this.options.logger.error('the upstream sent an oversized reply to a command sluice sent itself; closing');
    }
  }

  #keepTail(chunk: Buffer): void {
    const keep = Math.min(chunk.length, PLUS_RESET.length);
    this.#prevTail = Buffer.concat([this.#prevTail, chunk.subarray(chunk.length - keep)]).subarray(-PLUS_RESET.length);
  }

  /** Bytes [start, end) of the upstream stream; `start` may lie in the previous chunk (only while awaiting +RESET). */
  #bytesOf(start: number, end: number): Buffer {
    if (start >= this.#uBase) return this.#uChunk.subarray(start - this.#uBase, end - this.#uBase);
    const before = this.#uBase - start;
    if (before > this.#prevTail.length) return Buffer.alloc(0);
    return Buffer.concat([this.#prevTail.subarray(this.#prevTail.length - before), this.#uChunk.subarray(0, end - this.#uBase)]);
  }

  /** The forwarded prefix of the chunk ([0, length)) with the edits applied. */
  #applyEdits(length: number): Buffer[] {
    const chunk = this.#uChunk;
    const base = this.#uBase;
    const out: Buffer[] = [];
    let pos = base;
    for (const e of this.#edits) {
      if (e.at > pos && e.at - base <= length) out.push(chunk.subarray(pos - base, e.at - base));
      if (e.at > pos) pos = Math.min(e.at, base + length);
      if (e.bytes) out.push(e.bytes);
      if (e.dropTo !== undefined) pos = Math.max(pos, e.dropTo);
    }
    if (pos < base + length) out.push(chunk.subarray(pos - base, length));
    return out;
  }

  #upstreamViolation(err: unknown): void {
    const message = err instanceof RespProtocolError ? err.message : 'internal error while framing';
    if (!(err instanceof RespProtocolError)) this.options.logger.error({ err }, 'unexpected framing failure');
    this.options.logger.warn(
      { side: 'upstream', offset: err instanceof RespProtocolError ? err.offset : undefined, reason: message },
      'protocol violation; closing session',
    );
    // The error goes to the client only if nothing of the bad reply was forwarded.
    const clean = this.#elemStart >= this.#uBase && this.#withheld === null;
    this.#closeReason = 'upstream protocol violation';
    this.#closed = true;
    if (clean && this.client.writable) this.client.end(error('sluice: the upstream server sent a malformed reply; the session is closed'));
    else this.client.end();
    this.upstream.destroy();
    setTimeout(() => this.client.destroy(), HALF_CLOSE_GRACE_MS).unref();
  }

  #transformFailed(err: unknown): void {
    this.options.logger.error({ err: err instanceof Error ? err.message : String(err) }, 'reply could not be masked; closing session');
    this.shutdown('a reply could not be masked; the session is closed and nothing unmasked was sent');
  }

  // --- both ------------------------------------------------------------------

  #writeClient(buffers: Buffer[]): boolean {
    if (!this.client.writable) return true;
    return writeAll(this.client, buffers);
  }

  #wireEnds(from: Socket, to: Socket, side: 'client' | 'upstream'): void {
    from.on('end', () => {
      // Half-close: pass the FIN along; the other side may still be sending.
      // The first side to end (or fail) is why the session ended; the other's end follows from it.
      if (!this.#closed && this.#closeReason === 'closed') {
        this.#closeReason = this.#clientQuit ? 'client ended the connection' : `${side} ended the connection`;
      }
      endSocket(to);
    });
    from.on('error', (err) => {
      this.options.logger.debug({ side, err: err.message }, 'socket error');
      if (!this.#closed && this.#closeReason === 'closed') this.#closeReason = `${side} socket error: ${err.message}`;
      from.destroy();
      endSocket(to);
    });
  }

  #checkIdle(): void {
    const now = Date.now();
    const bytes = this.stats.bytesFromClient + this.stats.bytesFromUpstream + this.#transformIn;
    if (bytes !== this.#bytesAtCheck) {
      this.#bytesAtCheck = bytes;
      this.#lastActivity = now;
      return;
    }
    if (now - this.#lastActivity < this.options.idleTimeoutMs) return;
    this.shutdown(`terminating connection after ${this.options.idleTimeoutMs} ms without traffic (idle_timeout)`);
  }

  #peer(socket: Socket): Socket {
    return socket === this.client ? this.upstream : this.client;
  }

  #finish(): void {
    if (this.#idleTimer) clearInterval(this.#idleTimer);
    this.#closed = true;
    this.options.serverTransform?.close();
    this.options.gate?.close();
    this.options.onClose(this.#closeReason);
  }
}

/** The fewest top-level elements a command produces: one per channel for the pub/sub commands, else one. */
function minElements(args: Buffer[]): number {
  const name = args[0]!;
  if (name.length < 9 || name.length > 12) return 1;
  // (p|s)subscribe, (p|s)unsubscribe
  if (tokenIs(name.subarray(name.length - 9), 'subscribe')) {
    return Math.max(1, args.length - 1);
  }
  return 1;
}

/** A command's bytes and arguments in a buffer of their own, to keep across an await. */
function ownCopy(raw: Buffer, args: Buffer[]): { raw: Buffer; args: Buffer[] } {
  const copy = Buffer.from(raw);
  return { raw: copy, args: args.map((a) => copy.subarray(a.byteOffset - raw.byteOffset, a.byteOffset - raw.byteOffset + a.length)) };
}

/** Marks, in an edit list, the point after which the session closes. Never written. */
const FINAL_MARK = Buffer.alloc(0);

function writeAll(to: Socket, buffers: Buffer[]): boolean {
  if (buffers.length === 1) return to.write(buffers[0]!);
  to.cork();
  let flowing = true;
  for (const b of buffers) flowing = to.write(b);
  to.uncork();
  return flowing;
}

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
 * Pub/sub breaks the pairing: messages answer nothing, and a (P|S)SUBSCRIBE
 * or (P|S)UNSUBSCRIBE is answered by one confirmation per channel
 * (pubsub.ts). From such a command on, the relay reads every top-level
 * element: it sets messages aside, counts a pub/sub command answered once
 * its last confirmation (or an error) has come, and follows the upstream's
 * subscriptions through the counts the confirmations carry. The count of
 * commands stays exact, so Sluice's own replies keep their places there
 * too; once the upstream has no subscription left and no pub/sub command
 * is unanswered (the last UNSUBSCRIBE, or RESET), the relay is back on the
 * fast path.
 *
 * Backpressure: a write that reports a full buffer pauses the other side
 * until 'drain', in both directions.
 */
import type { Socket } from 'node:net';
import type { Logger } from '../../src/log.js';
import { ReadHold, RelayReads } from '../../src/gateway/socket-reads.js';
import { endSocket } from '../../src/gateway/net.js';
import { CommandClassifier, EXECABORT, Verdict, tokenIs } from './commands.js';
import { error, type RespVersion } from './replies.js';
import { RespProtocolError, RespReplyFramer, RespRequestFramer, type ReplyEndInfo, type ReplySink, type RequestSpanSink, type RespRequestLimits } from './resp.js';
import { encodeCommand, upstreamErrorText } from './upstream.js';
import { redisCredentialArgs, redisKeyword } from '../../src/recording/scrub.js';
import type { Judgement, RedisCommandGate } from './command-gate.js';
import { commandKind } from './classify.js';
import { ELEMENT_HEAD_BYTES, ELEMENT_TAIL_BYTES, MESSAGE, PubSubKind, Subscriptions, confirmationCount, elementName, pubSubCommand } from './pubsub.js';
import { ErrorCodes } from '../../src/errors.js';

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
  /**
   * Client bytes before absolute offset `upTo` are framed. `midChunk`: the
   * chunk last `received` is still being framed (a reply is about to be
   * written for a command in it), so the rest of it need not be copied yet.
   */
  framed(upTo: number, midChunk?: boolean): void;
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

/**
 * Redis runs a (P|S)SUBSCRIBE queued in MULTI at EXEC and nests its
 * confirmations in EXEC's reply, where the relay cannot follow them; the
 * messages that then come would be counted as replies.
 */
const PUBSUB_IN_MULTI = error('sluice: (P|S)SUBSCRIBE and (P|S)UNSUBSCRIBE are not accepted inside MULTI');
const HELLO_IN_MULTI = error('sluice: HELLO is not accepted inside MULTI');
const PUBLISH_IN_MULTI = error('sluice: PUBLISH, SPUBLISH and scripts are not accepted inside MULTI after a (P|S)(UN)SUBSCRIBE on this connection');
/** Commands that publish, or may (a script can call PUBLISH). */
const PUBLISHERS = ['publish', 'spublish', 'eval', 'evalsha', 'eval_ro', 'evalsha_ro', 'fcall', 'fcall_ro'];

/** Bytes of Sluice's own replies a client may leave unread, or waiting behind a reply still due, before it is not read (see #holdForOwnReplies). */
const OWN_REPLIES_MAX = 64 * 1024;
const INJECT = 0;
const DROP = 1;
interface Action {
  kind: typeof INJECT | typeof DROP;
  /** INJECT: due once `received` >= n. DROP: the number of the command (one of Sluice's own) whose reply to drop. */
  n: number;
  bytes?: Buffer;
  /** INJECT: close the session once written (a client protocol error). */
  final?: boolean;
}

/** Commands whose answer the relay reads while not paired: the six pub/sub kinds (PubSubKind), and these. */
const RESET_WAIT = 6;
const HELLO_WAIT = 7;
const MULTI_WAIT = 8;
interface Awaited {
  /** The command's number (as `sent` counted it). */
  n: number;
  kind: PubSubKind | typeof RESET_WAIT | typeof HELLO_WAIT | typeof MULTI_WAIT;
  /** Elements still to come: confirmations, or one reply; -1 for an unsubscribe that names nothing (counted when it comes up). */
  left: number;
  /** HELLO: the protocol it asks for (none: it keeps the one in use). */
  proto?: RespVersion;
  /** MULTI: which one (#multis), so a refusal of it never ends a later transaction. */
  multi?: number;
}
/** What one top-level element is, while not paired. */
const ASIDE = 0;
const PART = 1;
const ANSWER = 2;

/** A change to one upstream chunk: insert `bytes` at absolute offset `at`, or drop [at, dropTo). */
interface Edit {
  at: number;
  bytes?: Buffer;
  dropTo?: number;
}

export class RedisRelay {
  readonly stats: RelayStats = { bytesFromClient: 0, bytesFromUpstream: 0, commands: 0, refused: 0 };
  /**
   * The protocol the upstream speaks, as of the replies read so far: from
   * the login, then the reply to each HELLO (one Redis refuses, or queues
   * in MULTI, changes nothing) and each `+RESET`.
   */
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
  /** Commands forwarded, and commands answered in full. */
  #sent = 0;
  #received = 0;
  /**
   * true: every reply that is not a RESP3 push answers one command.
   * false (pub/sub): each element is read (#answers), and `#awaited` holds
   * the forwarded commands whose answer is more than one plain reply.
   */
  #paired = true;
  #awaited: Awaited[] = [];
  readonly #subscriptions = new Subscriptions();
  /** The first bytes of the element in progress at the end of the last chunk, and where it started (while not paired). */
  #head: Buffer = Buffer.alloc(0);
  #headAt = -1;
  #actions: Action[] = [];
  /** Bytes of Sluice's own replies waiting in #actions (INJECT), bounded by OWN_REPLIES_MAX (see #holdForOwnReplies). */
  #queuedReplyBytes = 0;
  /** A command is held for approval; commands behind it wait in `#backlog`. */
  #held = false;
  #backlog: Array<{ raw: Buffer; args: Buffer[] }> = [];
  #inMulti = false;
  #multiDirty = false;
  /** MULTIs sent so far. */
  #multis = 0;
  /** The client sent QUIT: the session ends because the client asked, whichever socket's end arrives first. */
  #clientQuit = false;
  /**
   * Nothing more the client sends is taken: after a protocol violation. The
   * session ends once the replies owed before it are out.
   */
  #clientFailed = false;

  // --- client chunk being framed ---
  #cChunk: Buffer = Buffer.alloc(0);
  #spanStart = -1;
  #spanEnd = 0;
  /**
   * While a recorded session's chunk is being framed: the relay offset just
   * past the command being handled (judged, refused, held), else -1. A reply
   * Sluice writes then, a refusal say, is recorded after the client's bytes
   * up to here (#recordHandled): the record order is the order received.
   */
  #handledEnd = -1;
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
  /** The last bytes of the upstream chunks before this one, kept while an element is in progress (while not paired). */
  #prevTail: Buffer = Buffer.alloc(0);
  #uPassthrough: Buffer | null = null;
  /** The answers stopped matching the commands (#lostCount): the session is ending. */
  #countLost = false;

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
    // The recording sees every chunk read until the client breaks the protocol. What it sends after
    // that is read only to see its end (#endAfterViolation), and neither relayed nor recorded.
    this.client.on(
      'data',
      rec
        ? (chunk: Buffer) => {
            if (!this.#clientFailed) rec.received(chunk);
            this.#onClientData(chunk);
          }
        : (chunk: Buffer) => this.#onClientData(chunk),
    );
    const transform = this.options.serverTransform;
    if (transform) {
      this.upstream.on('data', (chunk: Buffer) => {
        // Closed: the client can no longer be written to; nothing is left to mask for it.
        if (this.#closed) return;
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
    // After a violation (its grace ran out: a reply owed before the error never came), nothing either
    // side sends is taken any more: read both only to see their ends.
    if (this.#clientFailed) this.#reads.closing();
    // The reason goes to the client only as the reply to a command that is
    // still owed one: an error nobody asked for breaks clients' reply queues
    // (ioredis throws "Command queue state error"), so with nothing owed the
    // connection simply closes, as Redis itself closes it on SHUTDOWN.
    const owed = this.#paired && this.#sent > this.#received && this.#actions.length === 0;
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
    if (rec) {
      const framer = this.clientFramer;
      // After a violation only the commands before the one that broke the protocol count as framed:
      // what follows was never parsed and may hold a credential (an inline `AUTH <token>`, a token
      // without its CRLF). The tap keeps it pending; at the end the session's scrubber decides what
      // of it may be recorded (tap.ts, framesClientAfterLogin).
      const framed = this.stats.bytesFromClient - framer.bufferedBytes;
      rec.framed(rec.base + (failure === undefined ? framed : Math.min(framed, framer.commandStart)));
      this.#handledEnd = -1;
    }
    if (!flowing && !this.#clientFailed) this.#reads.client.holdUntilDrained(this.upstream);
    this.#holdForOwnReplies();
    if (failure !== undefined) this.#clientViolation(failure);
  }

  /** One framed command, bytes [start, end) of `buf` (the chunk, or the framer's copy of a command that straddled chunks). */
  #onSpan(buf: Buffer, start: number, end: number): void {
    // Nothing of the client's is forwarded once it has broken the protocol.
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
    if (this.#recording !== undefined) this.#handledEnd = framer.commandStart + (end - start);
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
    // After a protocol violation nothing more is judged or forwarded, commands that waited behind
    // a held one (#hold replays them here) included.
    if (this.#clientFailed) return;
    if (this.#held) {
      // A command is waiting for approval: everything after it waits too, in order. Its chunk is
      // recorded now, though: a credential in it is scrubbed now, not when the backlog is judged.
      if (this.#classifier.classify(args).verdict === Verdict.Refuse && redisCredentialArgs(args).length > 0) this.#recording?.scrub(buf.subarray(start, end), args);
      this.#backlog.push(ownCopy(buf.subarray(start, end), args));
      return;
    }
    this.stats.commands++;
    const c = this.#classifier.classify(args);
    const gate = this.#gate;
    if (this.#inMulti) {
      const refusal = this.#refusedInMulti(c.verdict, args);
      if (refusal) {
        gate?.refusedBySluice(args, refusal);
        this.#refuse(refusal);
        return;
      }
    }
    // Every command the client sends is judged and audited, those Sluice follows itself (HELLO,
    // MULTI, EXEC, DISCARD, RESET) included; its own refusals (above the policy) are audited as
    // refused by the built-in rule, without a policy verdict.
    if (gate && c.verdict !== Verdict.Refuse) {
      const judged = gate.judge(args);
      if (judged.action === 'deny') {
        this.#refuseJudged(c.verdict, judged.reply);
        return;
      }
      if (judged.action === 'approve') {
        if (c.verdict === Verdict.Forward || c.verdict === Verdict.Subscribe || c.verdict === Verdict.Quit) this.#hold(buf.subarray(start, end), args, judged);
        // The relay follows what these do to the connection as they pass; held, they would not.
        else this.#refuseJudged(c.verdict, gate.refuseUnholdable(judged.verdict, judged.facts, args));
        return;
      }
    }
    switch (c.verdict) {
      case Verdict.Forward:
        this.#forward(buf, start, end);
        return;
      case Verdict.Refuse:
        // The name as Redis reads it: what follows a NUL in it is the client's, not a name.
        this.options.logger.info({ command: redisKeyword(args[0]!).slice(0, 32) }, 'command refused');
        // A credential in it (AUTH, HELLO ... AUTH, and their NUL-suffixed forms, refused by name) never reaches the recording.
        if (redisCredentialArgs(args).length > 0) this.#recording?.scrub(buf.subarray(start, end), args);
        gate?.refusedBySluice(args, c.reply!);
        this.#refuse(c.reply!);
        return;
      case Verdict.Hello:
        // Awaited, paired or not: the protocol changes with its reply (RESP2 messages are arrays,
        // RESP3's pushes), and only if Redis accepts it.
        this.#forward(buf, start, end);
        this.#awaited.push({ n: this.#sent - 1, kind: HELLO_WAIT, left: 1, proto: c.proto });
        this.#paired = false;
        return;
      case Verdict.Subscribe:
        this.#forward(buf, start, end);
        this.#awaitPubSub(args);
        return;
      case Verdict.Multi:
        this.#forward(buf, start, end);
        this.#inMulti = true;
        // A subscribed RESP2 connection is refused MULTI: read its answer, or the three kinds refused
        // inside MULTI (#refusedInMulti), UNSUBSCRIBE among them, would stay refused.
        if (!this.#paired) this.#awaited.push({ n: this.#sent - 1, kind: MULTI_WAIT, left: 1, multi: ++this.#multis });
        return;
      case Verdict.Discard:
        this.#forward(buf, start, end);
        this.#inMulti = this.#multiDirty = false;
        return;
      case Verdict.Exec:
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

  /**
   * Commands Redis would run at EXEC in ways the relay cannot follow: a
   * (P|S)(UN)SUBSCRIBE or a HELLO changes the connection with its answer
   * nested in EXEC's reply; and on a subscribed RESP3 connection Redis
   * before 7.2 (7.0.15 here) delivers a (S)PUBLISH's message to the
   * connection itself inside EXEC's array and pushes EXEC's last element
   * out of it (redis#12326), a script's PUBLISH included.
   */
  #refusedInMulti(verdict: Verdict, args: Buffer[]): Buffer | undefined {
    if (verdict === Verdict.Subscribe) return PUBSUB_IN_MULTI;
    if (verdict === Verdict.Hello) return HELLO_IN_MULTI;
    const subscribed = !this.#paired && (this.#subscriptions.any || this.#awaited.some((w) => w.kind < RESET_WAIT));
    if (subscribed && PUBLISHERS.some((name) => tokenIs(args[0]!, name))) return PUBLISH_IN_MULTI;
    return undefined;
  }

  /** Answers a command with an error instead of forwarding it; inside MULTI the EXEC will abort, as in Redis. */
  #refuse(reply: Buffer): void {
    this.stats.refused++;
    if (this.#inMulti) this.#multiDirty = true;
    this.#reply(reply);
  }

  /**
   * A refusal by the policy. An EXEC refused inside MULTI ends the
   * transaction as Redis ends one it aborts: DISCARD upstream (its +OK
   * dropped), the refusal to the client, and the connection out of MULTI.
   */
  #refuseJudged(verdict: Verdict, reply: Buffer): void {
    if (verdict === Verdict.Exec && this.#inMulti) {
      this.stats.refused++;
      this.#forwardOwn(DISCARD_CMD);
      this.#reply(reply);
      this.#inMulti = this.#multiDirty = false;
      return;
    }
    this.#refuse(reply);
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
   * (P|S)SUBSCRIBE is awaited as pub/sub, a QUIT's end is the client's.
   * Forwarded plainly, an approved SUBSCRIBE left the messages that
   * followed counted as replies to later commands.
   */
  #forwardApproved(raw: Buffer, args: Buffer[]): void {
    const verdict = this.#classifier.classify(args).verdict;
    if (verdict === Verdict.Quit) this.#clientQuit = true;
    this.#forward(raw, 0, raw.length);
    if (verdict === Verdict.Subscribe) this.#awaitPubSub(args);
  }

  /** Forwards a command of the client's, bytes [start, end) of `buf`. */
  #forward(buf: Buffer, start: number, end: number): void {
    this.#sent++;
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
    this.#forward(RESET_CMD, 0, RESET_CMD.length);
    // Awaited, paired or not: `+RESET` puts the upstream back on RESP2 and drops its subscriptions without confirming them.
    this.#awaited.push({ n: this.#sent - 1, kind: RESET_WAIT, left: 1 });
    this.#paired = false;
    for (const c of this.options.reauth) this.#forwardOwn(c);
  }

  /**
   * A (P|S)SUBSCRIBE or (P|S)UNSUBSCRIBE was just forwarded: it is answered
   * once one confirmation per channel named has come (pubsub.ts), or an
   * error. An UNSUBSCRIBE from a client never subscribed is awaited too:
   * Redis still confirms each channel named, a RESP2 reply each (two for
   * `UNSUBSCRIBE a b`) or, in RESP3, a push, which paired counting skips.
   */
  #awaitPubSub(args: Buffer[]): void {
    const kind = pubSubCommand(args[0]!)!;
    const named = args.length - 1;
    const namesAll = kind === PubSubKind.unsubscribe || kind === PubSubKind.punsubscribe || kind === PubSubKind.sunsubscribe;
    // A SUBSCRIBE that names nothing gets Redis's arity error: one element.
    this.#awaited.push({ n: this.#sent - 1, kind, left: named > 0 ? named : namesAll ? -1 : 1 });
    this.#paired = false;
  }

  /** A reply of Sluice's own, in order with the upstream's. */
  #reply(bytes: Buffer, final = false): void {
    const n = this.#sent;
    if (this.#actions.length === 0 && this.#withheld === null && this.upstreamFramer.atReplyBoundary && this.#received >= n) {
      this.#recordHandled();
      this.#writeClient([bytes]);
      if (final) this.#endAfterViolation();
      return;
    }
    this.#actions.push({ kind: INJECT, n, bytes, final });
    this.#queuedReplyBytes += bytes.length;
  }

  /**
   * A reply of Sluice's own is about to be written while the client's chunk
   * is framed: the client's bytes up to the end of the command it answers
   * are recorded first. Otherwise the tap, which records client bytes once
   * the whole chunk is framed (so that a credential in it is scrubbed
   * first), would record the answer before the command.
   */
  #recordHandled(): void {
    const rec = this.#recording;
    if (rec !== undefined && this.#handledEnd >= 0) rec.framed(rec.base + this.#handledEnd, true);
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
    // Once the error and the FIN are out, both sides are read again whatever held them: not to take
    // what they send (#onClientData drops the client's; the client can no longer be written to), but
    // to see their ends, so that the session ends when they close, not after the grace period below.
    this.client.end(() => this.#reads.closing());
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
    const counting = this.#actions.length === 0 && this.#withheld === null && this.#paired;
    try {
      if (counting) this.#received += this.upstreamFramer.pushCounting(chunk, this.#replySink);
      else this.upstreamFramer.push(chunk, this.#replySink);
    } catch (err) {
      failure = err;
    }
    if (counting) this.#elemStart = this.upstreamFramer.lastEnd;
    // Paired or not, never more answers than commands sent (one comparison a chunk).
    if (failure === undefined && this.#received > this.#sent) failure = this.#lostCount(this.#elemStart);
    if (failure === undefined) this.#withholdTail(chunk);
    if (!this.#paired && !this.upstreamFramer.atReplyBoundary) this.#keepElement(chunk);
    // Set by the framer's passthrough callback during push (TS cannot see that).
    // A lost count: nothing of the chunk goes on (which of its replies answer what is unknown).
    const forwarded = this.#countLost ? null : (this.#uPassthrough as Buffer | null);
    if (this.#countLost) this.#edits = [];
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
    if (this.#paired ? !info.push : this.#answers(start, info) === ANSWER) {
      const no = this.#received++;
      const head = this.#actions[0];
      if (head && head.kind === DROP && head.n === no) {
        this.#actions.shift();
        this.#drop(start, info.end);
        dropped = true;
      }
    }
    if (!dropped && this.#withheld) {
      // Held back as the start of a reply to drop, but it was a push or a message: release it where it began.
      this.#edits.push({ at: this.#uBase, bytes: Buffer.concat(this.#withheld) });
      this.#withheld = null;
      this.#withheldBytes = 0;
    }
    this.#flushActions(info.end);
    // Nothing subscribed and nothing awaited: every reply answers one command again.
    if (!this.#paired && this.#awaited.length === 0 && !this.#subscriptions.any) this.#paired = true;
  }

  /**
   * While not paired: what the element [start, info.end) is. ASIDE for a
   * message, or any other push but a confirmation awaited; PART for a
   * confirmation that leaves its command more to come; ANSWER when it
   * completes the answer to the next command (`received`).
   */
  #answers(start: number, info: ReplyEndInfo): number {
    const head = this.#elementHead(start, info.end);
    const name = head === undefined ? undefined : elementName(head);
    const next = this.#awaited[0];
    // Every reply owed is accounted for; should the count ever run ahead of the commands, end the
    // session rather than put Sluice's replies in the wrong places.
    if (next !== undefined && next.n < this.#received) throw this.#lostCount(info.end);
    const awaited = next !== undefined && next.n === this.#received ? next : undefined;
    const confirms = name !== undefined && name !== MESSAGE;
    if (info.push) {
      // Out of band, but a confirmation tells the subscriptions (and may be the one awaited).
      if (!confirms) return ASIDE;
      const count = this.#count(start, info.end);
      if (awaited === undefined || awaited.kind >= RESET_WAIT) {
        this.#subscriptions.note(name, count);
        return ASIDE;
      }
      return this.#confirmed(awaited, name, count);
    }
    // A RESP2 message: only while subscribed, when Redis runs no command that could answer with such an array.
    if (name === MESSAGE && this.proto === 2 && this.#subscriptions.any) return ASIDE;
    if (awaited === undefined) {
      if (this.#received >= this.#sent) throw this.#lostCount(info.end);
      return ANSWER;
    }
    if (awaited.kind === RESET_WAIT) {
      if (head !== undefined && head.equals(PLUS_RESET)) {
        this.#subscriptions.clear();
        this.proto = 2;
      }
    } else if (awaited.kind === HELLO_WAIT) {
      // Accepted, HELLO is answered by the server's properties, a map (RESP3) or an array (RESP2).
      if (awaited.proto !== undefined && head !== undefined && (head[0] === 0x25 || head[0] === 0x2a)) this.proto = awaited.proto;
    } else if (awaited.kind === MULTI_WAIT) {
      // Refused (`-ERR Can't execute 'multi'` while subscribed): no transaction, unless a later MULTI began one.
      if (head !== undefined && head[0] === 0x2d && awaited.multi === this.#multis) this.#inMulti = this.#multiDirty = false;
    } else if (confirms) {
      return this.#confirmed(awaited, name, this.#count(start, info.end));
    }
    // A HELLO's, RESET's or MULTI's reply, or a pub/sub command refused as a whole (an ACL, its arity): one element.
    this.#awaited.shift();
    return ANSWER;
  }

  /** A confirmation for the pub/sub command awaited next: of its own kind, or the count is lost. */
  #confirmed(awaited: Awaited, kind: PubSubKind, count: number): number {
    if (kind !== awaited.kind) throw this.#lostCount(this.#elemStart);
    // An unsubscribe that names nothing is confirmed once per subscription it drops, as they stand before it.
    if (awaited.left < 0) awaited.left = this.#subscriptions.confirmationsForAll(awaited.kind as PubSubKind);
    this.#subscriptions.note(kind, count);
    if (--awaited.left > 0) return PART;
    this.#awaited.shift();
    return ANSWER;
  }

  /** The count of answers failed: the session ends (#upstreamViolation), and nothing more is forwarded to the client. */
  #lostCount(offset: number): RespProtocolError {
    this.#countLost = true;
    return new RespProtocolError('the replies no longer match the commands sent', offset);
  }

  /** A confirmation's count; one that cannot be read leaves the subscriptions unknown, and the session ends. */
  #count(start: number, end: number): number {
    const count = confirmationCount(this.#bytesOf(Math.max(start, end - ELEMENT_TAIL_BYTES), end));
    if (count === undefined) {
      this.#countLost = true;
      throw new RespProtocolError('a pub/sub confirmation without a readable count', end);
    }
    return count;
  }

  /**
   * The first bytes of the element [start, end): from the chunk, or kept
   * from the chunk it began in (#keepElement). Undefined for one that began
   * while the relay was paired: the answer to a command before the first
   * pub/sub one, never a confirmation or a message.
   */
  #elementHead(start: number, end: number): Buffer | undefined {
    const base = this.#uBase;
    if (start >= base) return this.#uChunk.subarray(start - base, Math.min(end, start + ELEMENT_HEAD_BYTES) - base);
    if (this.#headAt !== start) return undefined;
    const missing = Math.min(ELEMENT_HEAD_BYTES, end - start) - this.#head.length;
    return missing <= 0 ? this.#head : Buffer.concat([this.#head, this.#uChunk.subarray(0, missing)]);
  }

  /** An element goes on in the next chunk: keep its first bytes, and the chunk's last (its count may straddle). */
  #keepElement(chunk: Buffer): void {
    const start = this.#elemStart;
    if (start >= this.#uBase) {
      this.#head = Buffer.from(chunk.subarray(start - this.#uBase, start - this.#uBase + ELEMENT_HEAD_BYTES));
      this.#headAt = start;
    } else if (this.#headAt === start && this.#head.length < ELEMENT_HEAD_BYTES) {
      this.#head = Buffer.concat([this.#head, chunk.subarray(0, ELEMENT_HEAD_BYTES - this.#head.length)]);
    }
    this.#keepTail(chunk);
  }

  #flushActions(at: number): void {
    while (this.#actions.length > 0) {
      const head = this.#actions[0]!;
      if (head.kind !== INJECT) return;
      if (this.#received < head.n) return;
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
        // Not the reply as it came: refusing the re-authentication, an upstream may quote its arguments.
        { reply: upstreamErrorText(bytes, 200) },
        'the upstream refused a command sluice sent on the session\'s behalf (re-authentication after RESET, or DISCARD)',
      );
      // Close once this chunk is written: the upstream's state is no longer the target's.
      this.#edits.push({ at: end, bytes: error('sluice: the upstream refused a command sluice sent for the session (re-authentication after RESET, or the DISCARD of an aborted transaction); the session is closed') });
      this.#edits.push({ at: end, bytes: FINAL_MARK });
      this.#actions = [];
      this.#queuedReplyBytes = 0;
    }
  }

  /** A reply to drop has begun and goes on in the next chunk: hold its bytes back. */
  #withholdTail(chunk: Buffer): void {
    if (this.upstreamFramer.atReplyBoundary) return;
    const head = this.#actions[0];
    if (!head || head.kind !== DROP || head.n !== this.#received) return;
    const end = this.#uBase + chunk.length;
    const from = Math.max(this.#elemStart, this.#uBase);
    if (from >= end) return;
    // Not paired, the element in progress may be a message, of any size: only a simple string can be the `+OK`.
    if (!this.#paired && this.#withheld === null && (this.#elemStart < this.#uBase || chunk[from - this.#uBase] !== 0x2b)) return;
    (this.#withheld ??= []).push(chunk.subarray(from - this.#uBase));
    this.#withheldBytes += end - from;
    this.#edits.push({ at: from, dropTo: end });
    if (this.#withheldBytes > MAX_WITHHELD) {
      this.#edits.push({ at: end, bytes: FINAL_MARK });
      this.options.logger.error('the upstream sent an oversized reply to a command sluice sent itself; closing');
    }
  }

  #keepTail(chunk: Buffer): void {
    const keep = Math.min(chunk.length, ELEMENT_TAIL_BYTES);
    this.#prevTail = Buffer.concat([this.#prevTail, chunk.subarray(chunk.length - keep)]).subarray(-ELEMENT_TAIL_BYTES);
  }

  /** Bytes [start, end) of the upstream stream; up to ELEMENT_TAIL_BYTES of them may lie in the chunks before (#keepTail). */
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
    // The error goes to the client only if nothing of the bad reply was forwarded, and as a reply to
    // a command: after a lost count, which is unknown.
    const clean = !this.#countLost && this.#elemStart >= this.#uBase && this.#withheld === null;
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
    // Closing already (its timer runs until the sockets are gone): told once.
    if (this.#closed || now - this.#lastActivity < this.options.idleTimeoutMs) return;
    this.options.logger.info({ code: ErrorCodes.IDLE_TIMEOUT, idleTimeoutMs: this.options.idleTimeoutMs }, 'idle timeout; closing session');
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

import type { GateContextBase, SqlStatementFacts, Verdict } from '../../src/policy/types.js';
import type { AuditEvent, AuditVerdict } from '../../src/store/types.js';
import { isoTime } from '../../src/store/iso-time.js';
import { releases, type ApprovalOutcome, type PendingApproval } from '../../src/policy/approvals.js';
import { ClassifiedQuery, classifyPrepared, classifyQuery, fingerprint, SqlParseError } from './classify.js';
import { namesCredential, PreparedCredentials, withoutArguments, withoutPassword } from './credentials.js';
import { Backend, Frontend, errorResponse, noticeResponse, parseMessage, queryMessage, sqlstate } from './messages.js';
import type { RelayGate, RelayIO } from './relay.js';
import { parameterStatusValue, type SqlDecoder } from './encoding.js';

/**
 * Policy and audit on a live PostgreSQL session: every statement is
 * classified from the real parse tree and judged before any byte of it
 * reaches the server.
 *
 * Simple Query ('Q'): all statements of the message are judged together; if
 * any is denied, nothing of the message is forwarded: REFUSAL_QUERY, text
 * the server cannot parse, goes upstream in its place (or, when the
 * Query's statements before the refused one open a transaction block,
 * REFUSAL_IN_BLOCK_QUERY), and the client gets its ErrorResponse (42501)
 * in the place of the server's error, then the server's ReadyForQuery.
 *
 * Extended protocol: the verdict is taken at Parse. On a denial Sluice has
 * the server fail the batch where the refused message stood: a Parse of
 * that text (REFUSAL_PARSE) goes upstream in its place, so the server rolls
 * back what the batch ran before it (its implicit transaction) or aborts
 * the transaction block, exactly as after an error of its own, and skips to
 * Sync. Sluice discards what the client sends up to that Sync too (but
 * Flush, which asks for the replies so far) and hands the client its
 * ErrorResponse in the place of the server's answer to the probe, where the
 * server's own error would be: right away after a Flush, not only at Sync.
 * When an earlier message of the batch failed on the server, the server
 * skips the probe, and the client sees that error, as it would (but for a
 * syntax error, which reads as the probe's: the client sees the refusal).
 *
 * Either way the server fails where the refused message stood, so a
 * refusal does to the transaction exactly what an error of the server's own
 * does: an implicit transaction (a batch up to Sync, a multi-statement
 * Query) is rolled back, a transaction block is aborted (status 'E', 25P02
 * for every statement but ROLLBACK, COMMIT rolls back), by the server
 * itself. A script that carries on after a refusal, pipelined or not, never
 * commits half its work, and Sluice keeps no transaction state of its own to
 * get wrong. The refusal reaches the client where the server's error would
 * be, in the order of the replies.
 *
 * Each forwarded Query or Sync owes one ReadyForQuery; the approval notice,
 * the one reply Sluice makes itself, is written once every reply owed
 * before it has passed.
 *
 * An `approve` verdict holds the message (and everything the client sends
 * after it) while a human decides; the client is told at once with a
 * NoticeResponse naming the approval. Approval forwards exactly the held
 * bytes; a denial or timeout answers like a policy denial.
 */

export interface GateContext extends GateContextBase {
  /** Turns SQL bytes into text in the session's client_encoding (default UTF-8). */
  decode?: SqlDecoder;
  /** The client_encoding the server reported at login, which `decode` reads. */
  clientEncoding?: string;
  /** Each message (its type, or -1 for pass-through bytes) as it is sent upstream, in order. */
  onForward?(type: number, bytes: Buffer): void;
}

/** A reply owed to the client, in order. */
type Owed =
  /** A Query or Sync was forwarded: the server will answer it with ReadyForQuery. */
  | { kind: 'server'; query?: true; copyIn?: true; refusal?: Buffer }
  /** A notice Sluice sends itself (an approval hold): written once everything before it has been. */
  | { kind: 'local'; notice: Buffer };

interface Held {
  type: number;
  bytes: Buffer;
}

/**
 * A forwarded statement waiting for the server's answer (CommandComplete or
 * ErrorResponse), then for its audit event to be built.
 *
 * The event is built after the relay has written the bytes of the chunk
 * that answered it (`afterWrite`), not while that chunk is framed: building
 * it, and decoding an Execute's bound parameters for its text, is audit
 * bookkeeping that need not delay the reply the client waits for. It is
 * built as one object literal with every common field: an event grown field
 * by field after construction gets a second (out-of-object) property store,
 * and the audit queue keeps every event alive for a batch, through
 * young-generation collections that copy each live object.
 */
interface OpenStatement {
  /** The audit text; for an Execute, the statement's (its parameters go in the event's `params`). */
  text: string;
  kind: string;
  verdict: AuditVerdict;
  extra: Partial<AuditEvent> | undefined;
  /** Epoch ms of the event's `time`. */
  at: number;
  /** Epoch ms its duration counts from. */
  started: number;
  /** Execute: the Bind message of its portal (a view of the client's bytes, read-only) and where its parameters start; decoded when the event is built. */
  bind: Buffer | null;
  paramsAt: number;
  /** Execute of a statement that may carry a password (namesCredential): its parameters as audited (never the values: one may be a password). */
  params: string | undefined;
  /** Filled in from the server's answer; `error` instead when it will never come. */
  durationMs: number;
  rows: number | undefined;
  sqlstate: string | undefined;
  error: string | undefined;
  masking: Record<string, number> | undefined;
}

/** The last Bind of a portal, for the audit text of its Executes. */
interface Bound {
  statement: Prepared | undefined;
  /** Null for a statement that may carry a password (namesCredential): its parameters may be one. */
  bind: Buffer | null;
  paramsAt: number;
  /** The approval that released this Bind (its Executes are audited as approved). */
  approvalId: string | undefined;
}

/**
 * A prepared statement whose Parse (or SQL PREPARE) needed an approval, or
 * an approver's window: see PgStatementGate.#approvalBound.
 */
interface ApprovalBound {
  /** The statement as judged: its verdict and fingerprint, and the text an approver is shown. */
  facts: SqlStatementFacts;
  /**
   * Statements the name may still be (#bindPrepared): bound to it before a
   * SQL PREPARE of it that the gate cannot see run. Each run of the name is
   * judged as all of them (boundFacts).
   */
  earlier?: readonly SqlStatementFacts[];
  /** The approval that released it, until the one Bind it covers takes it. */
  unspent: string | undefined;
  /** #opsSent when it was bound: only a Close or Parse of the name sent after it ends it. */
  since: number;
  /**
   * The batch (#batchesSent) of the Parse that released it, until the
   * server's ParseComplete confirms that Parse: while unconfirmed, only a
   * Bind in that same batch may spend `unspent` (the server skips such a
   * Bind when the Parse fails); a Bind in a later batch could run the
   * statement the name still is.
   */
  unconfirmedIn?: number;
}

/** A Parse or Close on its way: see PgStatementGate.#opsInFlight. */
interface StatementOp {
  /** Parse, or Close of a statement ('S') or a portal ('P'). */
  kind: 'parse' | 'S' | 'P';
  name: string;
  /** A Parse's statement. */
  statement: Prepared | undefined;
  /** The batch it was sent in (#batchesSent then). */
  batch: number;
  /** Its place among the Parses and Closes sent (#opsSent then). */
  seq: number;
  /**
   * A Parse released by an approval: the release it made of its name
   * (#approvalBound), and what that replaced, put back should the server
   * refuse or skip the Parse (#opFailed).
   */
  released?: { bound: ApprovalBound; replaced: ApprovalBound | undefined };
}

/** Every statement a released name may be now: the one bound last, and those it may not have replaced (ApprovalBound.earlier). */
function boundFacts(bound: ApprovalBound): SqlStatementFacts[] {
  return bound.earlier === undefined ? [bound.facts] : [...bound.earlier, bound.facts];
}

/** #executesApprovalBound: the message was held for an approval, or refused. */
const HELD: unique symbol = Symbol('held');

/** Most replies owed are a plain ReadyForQuery: one shared entry instead of an object per Query or Sync. */
const SERVER_REPLY: Owed = Object.freeze({ kind: 'server' });
/** Client messages by type, for an error that names one. */
const MESSAGE_NAMES: Record<number, string> = {
  [Frontend.Query]: 'Query',
  [Frontend.Parse]: 'Parse',
  [Frontend.Bind]: 'Bind',
  [Frontend.Describe]: 'Describe',
  [Frontend.Execute]: 'Execute',
  [Frontend.Close]: 'Close',
  [Frontend.Sync]: 'Sync',
  [Frontend.FunctionCall]: 'FunctionCall',
};
/** The ReadyForQuery owed for a simple Query (the one kind of message a COPY FROM STDIN may come from here, see #copyIn). */
const QUERY_REPLY: Owed = Object.freeze({ kind: 'server', query: true });
/** A simple Query with a COPY FROM STDIN in it: see #inCopy. */
const COPY_QUERY_REPLY: Owed = Object.freeze({ kind: 'server', query: true, copyIn: true });

/** A prepared statement as the audit trail names it. */
interface Prepared {
  text: string;
  kind: string;
  /** A statement that may carry a password (namesCredential): its parameters are never audited. */
  credential: boolean;
  /**
   * The SQL-prepared statement it EXECUTEs, by name (`Parse x "EXECUTE
   * p(1)"`): x runs whatever p is when x is bound, which may be a statement
   * prepared, or released by an approval, after x was parsed. A Bind of x is
   * judged as a Bind of p would be (#bindApprovalBound), and its parameters
   * are withheld when p may carry a password (#bind).
   */
  executes: string | undefined;
}

/** Every Prepared has the same fields, so the maps and lookups that hold them see one shape. */
function prepared(text: string, kind: string, credential = false, executes?: string): Prepared {
  return { text, kind, credential, executes };
}

/**
 * What Sluice sends upstream in the place of a message it refuses, so that
 * the server fails there as it would had the message failed on it (see
 * #refuseInBatch, #refuseQuery): text that is not SQL. The server's parser
 * fails on it (42601) before anything is planned or run, in any session
 * state (in an aborted transaction too: parsing comes before the 25P02
 * check), and nothing a client does can make it parse, so it needs no
 * secret. The server's log says why: `ERROR: syntax error at or near
 * "sluice"` with `STATEMENT: sluice: statement refused by policy`.
 */
const REFUSAL_TEXT = 'sluice: statement refused by policy';
const REFUSAL_QUERY = queryMessage(REFUSAL_TEXT);
/** Inside an extended batch, as a Parse of a named statement: a failed one leaves that name as it was (a Parse of the unnamed statement drops it before it parses). */
const REFUSAL_PARSE = parseMessage('sluice: refused', REFUSAL_TEXT);
/**
 * The probe of a refused Query whose statements before the refused one open
 * a transaction block (`BEGIN; INSERT ...; DROP ...`): run on the server,
 * they would leave the block open and aborted, so that what the client
 * sends next fails until it rolls back, and must not commit on its own.
 * BEGIN, then a statement that fails when it runs (a division by zero,
 * fully qualified so that no operator or function of the session's
 * search_path stands in for it); Sluice drops the BEGIN's CommandComplete.
 */
const REFUSAL_IN_BLOCK_QUERY = queryMessage(`BEGIN; SELECT pg_catalog.int4div(1, 0) -- ${REFUSAL_TEXT}`);


export class PgStatementGate implements RelayGate {
  readonly clientTypes = [
    Frontend.Query,
    Frontend.Parse,
    Frontend.Bind,
    Frontend.Describe,
    Frontend.Execute,
    Frontend.Close,
    Frontend.Sync,
    // Whole, for the one place the gate acts on it: behind a refusal in a batch (see #refuseInBatch).
    Frontend.Flush,
    Frontend.FunctionCall,
    Frontend.CopyDone,
    Frontend.CopyFail,
  ];
  readonly serverTypes = [
    Backend.ReadyForQuery,
    Backend.ParseComplete,
    Backend.CloseComplete,
    Backend.CopyInResponse,
    Backend.CommandComplete,
    Backend.ErrorResponse,
    Backend.EmptyQueryResponse,
    Backend.PortalSuspended,
    Backend.ParameterStatus,
  ];

  #io!: RelayIO;
  readonly #owed: Owed[] = [];
  /** Extended protocol: a message of the batch was refused; drop client messages until Sync (see #refuseInBatch). */
  #discardUntilSync = false;
  /** Refusals whose probe went upstream, oldest first, by the batch they stand in (#batchesSent when sent). */
  readonly #probes: Array<{ batch: number; error: Buffer }> = [];
  /**
   * The batch (by #batchesAnswered) the server last reported an error of its
   * own in: the server sends an error as it happens, so a batch may have
   * failed before the client has sent all of it. A refusal later in that
   * batch sends no probe: the server skips to Sync already, and the client
   * has its error.
   */
  #erroredBatch = -1;
  /** Refused Queries whose probe the server has not answered yet: while none is, a CommandComplete needs no look at #owed. */
  #queryRefusals = 0;
  /** Client messages waiting behind a held statement. */
  #backlog: Held[] = [];
  /** CopyInResponses since the last ReadyForQuery: the COPYs of the Query being answered (see CopyInResponse). */
  #copyInsOfQuery = 0;
  /** The client's reads are paused by the gate (a held statement): see #resumeClient. */
  #clientHeld = false;
  #pending: PendingApproval | undefined;
  /** Prepared statements by name (extended protocol) the server has created (ParseComplete): for audit text, and what a Bind runs (#bindApprovalBound). */
  readonly #statements = new Map<string, Prepared>();
  /**
   * Parses and Closes sent and not yet answered, in order. A statement
   * counts only once the server's ParseComplete says it exists, and is gone
   * only once its CloseComplete says so: one the server refuses (a named
   * statement that exists already, a syntax error) or skips after an
   * earlier error of its batch changes nothing there, so it must change
   * nothing here. A refused `Parse x "EXECUTE p"` would have taken x for
   * an EXECUTE of p; a skipped Close of an approval's statement would have
   * let it run again.
   */
  #opsInFlight: StatementOp[] = [];
  #opsSent = 0;
  /** Queries and Syncs sent upstream: each ends a batch the server answers with one ReadyForQuery. */
  #batchesSent = 0;
  /**
   * A Parse, Bind, Describe, Execute or Close went upstream since the last
   * Sync: a Query now would be read by the server only if nothing of that
   * batch failed (after an error it skips everything up to Sync), so which
   * ReadyForQuery answers what could no longer be told (see #query).
   */
  #extendedOpen = false;
  /**
   * A Query with a COPY FROM STDIN in it went upstream (or the server began
   * a later COPY of the same Query), and the client has sent neither
   * CopyDone nor CopyFail since, nor has the server answered it: inside a
   * COPY the server ignores a Sync and takes a Query for an error,
   * answering neither with a ReadyForQuery, and any other message there
   * ends the session (fromClient).
   */
  #inCopy = false;
  /** ReadyForQuery messages received: the batch the server is answering now. */
  #batchesAnswered = 0;
  /**
   * Prepared statements released by an approval or an approver's window, by
   * name (SQL's PREPARE and the protocol's Parse share one namespace on the
   * server). An approval releases one execution, not a statement the
   * client may then run again and again with parameters the approver never
   * saw: the Bind right behind an approved Parse is the one it covers; any
   * other Bind of the name, and any EXECUTE of it, is judged again (held
   * for a new approval, unless a window covers the statement). A name
   * leaves only with a Close of it, or a Parse of the unnamed statement
   * that reaches the server: a DEALLOCATE or DISCARD ALL the gate does not
   * follow keeps it, so a later statement of that name is held at each
   * Bind (fail closed).
   */
  readonly #approvalBound = new Map<string, ApprovalBound>();
  /** Statements this session prepared from one that may carry a password: their EXECUTEs' arguments are not shown. */
  readonly #credentialPrepared = new PreparedCredentials();
  /** The last Bind per named portal; the unnamed portal (almost every Bind) in its own field. */
  readonly #portals = new Map<string, Bound>();
  #unnamedPortal: Bound | undefined;
  /** The statement name of the last Bind, as bytes and text: drivers bind the same few names again and again. */
  #lastName = '';
  #lastNameBytes: Buffer = Buffer.alloc(0);
  readonly #open: OpenStatement[] = [];
  /** Answered statements whose events wait for `afterWrite`, in order. */
  #answered: OpenStatement[] = [];
  /**
   * Masked values per rule of the statement the server is answering. The
   * masker sits before the gate on the server stream, so it reports a
   * statement's counts just before the gate sees that CommandComplete.
   */
  #masked: Record<string, number> | undefined;
  #closed = false;

  constructor(private readonly ctx: GateContext) {}

  attach(io: RelayIO): void {
    this.#io = io;
  }

  /** Per-rule counts of masked values, from the result masker at the statement's CommandComplete: they go into its audit event. */
  noteMasked(counts: Record<string, number>): void {
    for (const [rule, n] of Object.entries(counts)) {
      if (n <= 0) continue;
      // Created with the first count: a statement with nothing masked carries no object.
      const masked = (this.#masked ??= {});
      masked[rule] = (masked[rule] ?? 0) + n;
    }
  }

  close(): void {
    this.#closed = true;
    this.#pending?.cancel();
    this.#finishOpen('session ended before the server answered');
    this.afterWrite();
  }

  /** The relay has written what the last chunk produced: build the audit events of the statements answered in it. */
  afterWrite(): void {
    const answered = this.#answered;
    if (answered.length === 0) return;
    this.#answered = [];
    const audit = this.ctx.audit;
    if (audit === undefined) return;
    for (let i = 0; i < answered.length; i++) audit.write(this.#answerEvent(answered[i]!));
  }

  // --- client -> server ----------------------------------------------------

  fromClient(type: number, bytes: Buffer): void {
    if (this.#pending || this.#backlog.length > 0) {
      // Own the bytes: they wait across an await for the decision.
      this.#holdClient();
      this.#backlog.push({ type, bytes: Buffer.from(bytes) });
      return;
    }
    if (this.#inCopy && type !== -1 && type !== Frontend.CopyDone && type !== Frontend.CopyFail && type !== Frontend.Flush) {
      // The server reads nothing but CopyData, CopyDone and CopyFail (and Flush, Sync) until the COPY
      // ends: anything else, judged or discarded here, would leave the replies paired with the wrong requests.
      this.#unpairable(`a ${MESSAGE_NAMES[type] ?? `'${String.fromCharCode(type)}' message`} inside COPY FROM STDIN (before its CopyDone or CopyFail)`);
      return;
    }
    if (this.#discardUntilSync) {
      if (type === Frontend.Sync) {
        this.#owed.push(SERVER_REPLY);
        this.#discardUntilSync = false;
        this.#up(bytes);
      } else if (type === Frontend.Flush) {
        // The client waits for the replies so far, the refusal's among them (the server's to the probe).
        this.#up(bytes);
      }
      return;
    }
    switch (type) {
      case Frontend.Query:
        if (this.#extendedOpen) {
          this.#unpairable('a Query inside an extended-protocol batch (before its Sync)');
          return;
        }
        this.#query(bytes);
        return;
      case Frontend.CopyDone:
      case Frontend.CopyFail:
        this.#inCopy = false;
        this.#up(bytes, type);
        return;
      case Frontend.Parse:
        this.#parse(bytes);
        return;
      case Frontend.Bind:
        if (this.#approvalBound.size > 0) {
          this.#bindApprovalBound(bytes);
          return;
        }
        if (this.ctx.audit) this.#bind(bytes);
        this.#up(bytes);
        return;
      case Frontend.Execute:
        if (this.ctx.audit) this.#execute(bytes);
        this.#up(bytes);
        return;
      case Frontend.Sync:
        this.#owed.push(SERVER_REPLY);
        this.#up(bytes);
        return;
      case Frontend.Close:
        this.#closeNamed(bytes);
        this.#up(bytes);
        return;
      case Frontend.FunctionCall:
        // Its refusal is a Query's (#refuseQuery), which inside a batch could not be paired with its
        // reply: as a Query there, it ends the session.
        if (this.#extendedOpen) {
          this.#unpairable('a FunctionCall inside an extended-protocol batch (before its Sync)');
          return;
        }
        // A fast-path function call bypasses SQL entirely: nothing to classify.
        this.#refuseQuery(
          errorResponse({
            severity: 'ERROR',
            code: sqlstate.FEATURE_NOT_SUPPORTED,
            message: 'sluice: the FunctionCall message is not supported; call the function from a query',
          }),
        );
        return;
      default:
        this.#up(bytes, type);
    }
  }

  /**
   * Everything the gate sends upstream goes through here, in the order the
   * server will answer it: the result masker pairs the server's replies
   * with the Describe and Execute they answer (ctx.onForward). `type` is
   * -1 for pass-through bytes, which are no whole message.
   */
  #up(bytes: Buffer, type: number = bytes[0]!): void {
    if (type === Frontend.Sync || type === Frontend.Query) {
      this.#batchesSent++;
      this.#extendedOpen = false;
    } else if (type === Frontend.Parse || type === Frontend.Bind || type === Frontend.Execute || type === Frontend.Describe || type === Frontend.Close) {
      this.#extendedOpen = true;
    }
    this.ctx.onForward?.(type, bytes);
    this.#io.toUpstream(bytes);
  }

  /** A Parse of `name` is sent: the statement exists once the server answers ParseComplete. */
  #parseSent(name: string, statement: Prepared, bytes: Buffer, released?: StatementOp['released']): void {
    const op: StatementOp = { kind: 'parse', name, statement, batch: this.#batchesSent, seq: this.#opsSent++ };
    if (released !== undefined) op.released = released;
    this.#opsInFlight.push(op);
    this.#up(bytes);
  }

  /**
   * A Parse or Close the server refused (a name that exists already, a
   * syntax error) or skipped after an earlier error of its batch. A Parse
   * released by an approval gives the release back: the name is still the
   * statement it was, and the approval's unspent Bind must not run that one
   * (`Parse s1 <approved UPDATE>` refused because s1 is a DELETE approved
   * and run before would otherwise have let the next Bind of s1 run the
   * DELETE again, unheld).
   */
  #opFailed(op: StatementOp): void {
    const released = op.released;
    if (released === undefined) return;
    if (this.#approvalBound.get(op.name) === released.bound) {
      if (released.replaced !== undefined) this.#approvalBound.set(op.name, released.replaced);
      else this.#approvalBound.delete(op.name);
      return;
    }
    // A later Parse of the name replaced this release already: it replaces what this one did.
    for (const later of this.#opsInFlight) {
      if (later.name === op.name && later.released?.replaced === released.bound) later.released.replaced = released.replaced;
    }
  }

  /** The statement a Bind names: by the last Parse or Close of it still on its way (a Bind behind a failed one fails too), else the one the server has. */
  #statement(name: string): Prepared | undefined {
    const inFlight = this.#opsInFlight;
    for (let i = inFlight.length - 1; i >= 0; i--) {
      const op = inFlight[i]!;
      if (op.name === name && op.kind !== 'P') return op.statement;
    }
    return this.#statements.get(name);
  }

  /** The server answered the oldest Parse or Close on its way (replies come in order): now it holds. */
  #opDone(kind: 'parse' | 'close'): void {
    const op = this.#opsInFlight.shift();
    if (op === undefined || (op.kind === 'parse') !== (kind === 'parse')) return;
    if (op.kind === 'parse') this.#statements.set(op.name, op.statement!);
    else if (op.kind === 'S') this.#statements.delete(op.name);
    if (op.released !== undefined) op.released.bound.unconfirmedIn = undefined;
    if (op.kind === 'S') {
      // The statement is gone: a Parse of the name behind this Close that fails leaves no statement to give a release back to.
      for (const later of this.#opsInFlight) if (later.name === op.name && later.released !== undefined) later.released.replaced = undefined;
    }
    // A Parse of the unnamed statement replaces it; a Close of a name ends it: an approval's
    // statement bound before this was sent is no longer there.
    if (op.kind !== 'P' && (op.kind === 'S' || op.name === '') && this.#approvalBound.size > 0) {
      const bound = this.#approvalBound.get(op.name);
      if (bound !== undefined && bound.since < op.seq) this.#approvalBound.delete(op.name);
    }
  }

  #query(bytes: Buffer): void {
    const text = this.#sql(bytes, 5).value;
    const started = Date.now();
    let query: ClassifiedQuery;
    try {
      query = classifyQuery(text);
    } catch (err) {
      this.#refuseUnparseable(err, text, false);
      return;
    }
    this.#credentialPrepared.notePrepares(query.shared);
    // Facts with the real text are built only for a refusal or a hold.
    const verdict = this.#judge(query);
    if (verdict.action === 'deny') {
      this.#deny(verdict, query.facts(), text, false);
      return;
    }
    if (verdict.action === 'approve') {
      this.#hold(Frontend.Query, bytes, verdict, query.facts(), text);
      return;
    }
    if (this.#approvalBound.size > 0 && this.#executesApprovalBound(Frontend.Query, bytes, query.shared, () => query.facts(), text) === HELD) return;
    this.#forwardQuery(bytes, query, started);
    // Statements prepared under an approver's window: each EXECUTE is judged again (#approvalBound).
    if (verdict.windowApproval !== undefined) this.#bindPrepared(query.facts());
  }

  /**
   * An allowed Query or Parse that EXECUTEs a statement released by an
   * approval (#approvalBound): held for a new approval of that statement,
   * unless a window covers it. The approver is shown what runs, and what
   * the prepared statement is. HELD when the message was held or refused;
   * else the facts of the released statement it runs (a window covers it),
   * or undefined when it runs none.
   */
  #executesApprovalBound(type: number, bytes: Buffer, shared: readonly SqlStatementFacts[], facts: () => SqlStatementFacts[], text: string): SqlStatementFacts[] | typeof HELD | undefined {
    let runs: SqlStatementFacts[] | undefined;
    for (let i = 0; i < shared.length; i++) {
      const f = shared[i]!;
      if (f.statementName === '' || !f.kinds.includes('execute')) continue;
      const bound = this.#approvalBound.get(f.statementName);
      if (bound === undefined) continue;
      const may = boundFacts(bound);
      const again = this.#judge(may);
      if (again.action === 'allow') {
        runs = may;
        continue;
      }
      // What the client sent is shown as each of its statements is (the Query may set a password too).
      const sent = facts()
        .map((g) => this.#shown(g.text, g))
        .join('; ');
      const shown = `${sent} -- ${f.statementName}: ${this.#boundText(bound)}`;
      if (again.action === 'deny') this.#deny(again, facts(), shown, type === Frontend.Parse);
      else this.#hold(type, bytes, again, facts(), text, { facts: may, text: shown });
      return HELD;
    }
    return runs;
  }

  /** What an approver is shown of a released name: the statement bound last, and what else it may still be. */
  #boundText(bound: ApprovalBound): string {
    const last = this.#shown(bound.facts.text, bound.facts);
    if (bound.earlier === undefined) return last;
    return `${last} (or, should the server have refused that PREPARE: ${bound.earlier.map((f) => this.#shown(f.text, f)).join(' | ')})`;
  }

  /**
   * A statement released by an approval or a window, prepared as `name`:
   * from now on each execution of it is judged again. `approvalId`: the
   * approval that released it covers the Bind right behind it.
   */
  #bindApproval(name: string, facts: SqlStatementFacts, approvalId?: string, earlier?: readonly SqlStatementFacts[]): ApprovalBound {
    const bound: ApprovalBound = { facts, unspent: approvalId, since: this.#opsSent };
    if (earlier !== undefined && earlier.length > 0) bound.earlier = earlier;
    this.#approvalBound.set(name, bound);
    return bound;
  }

  /**
   * SQL PREPAREs among statements released by an approval or a window: each
   * EXECUTE of what they prepare is judged again. The gate does not see
   * whether a PREPARE ran: the server refuses one whose name is taken, and
   * a PREPARE sent by Parse runs only if that statement is executed. So a
   * name already bound stays bound to what it was as well (earlier), and
   * its runs are judged as every statement it may be: a window for
   * `PREPARE x AS UPDATE ...` refused because x is a DELETE released
   * before must not let `EXECUTE x` run the DELETE.
   */
  #bindPrepared(facts: readonly SqlStatementFacts[]): void {
    for (const f of facts) {
      if (f.statementName === '' || !f.kinds.includes('prepare')) continue;
      const previous = this.#approvalBound.get(f.statementName);
      const earlier = previous === undefined ? undefined : boundFacts(previous).filter((p) => p.text !== f.text);
      this.#bindApproval(f.statementName, f, undefined, earlier);
    }
  }


  /**
   * A Bind while some statement is released by an approval (#approvalBound):
   * forwarded when its statement is not one of them, or when it is the Bind
   * the approval covers; otherwise the statement is judged again, and held
   * for a new approval (the approver sees the parameters) unless a window
   * covers it.
   */
  #bindApprovalBound(bytes: Buffer): void {
    const portal = this.#sql(bytes, 5);
    const name = this.#sql(bytes, portal.end);
    // A statement that EXECUTEs a released one (however long before it was released) runs it: judged as it.
    // Of the statement the server holds under that name (or the Parse of it on its way, which a Bind behind it follows).
    const runs = this.#statement(name.value)?.executes;
    const direct = this.#approvalBound.get(name.value);
    let bound = direct;
    let approvalId: string | undefined;
    if (direct?.unspent !== undefined && (direct.unconfirmedIn === undefined || direct.unconfirmedIn === this.#batchesSent)) {
      // The Bind right behind the approval of this statement itself: the one that approval covers.
      approvalId = direct.unspent;
      direct.unspent = undefined;
    } else if (runs !== undefined) {
      // What it EXECUTEs as that is now: a name may have been prepared again since it was bound.
      bound = this.#approvalBound.get(runs) ?? direct;
    }
    if (bound !== undefined) {
      if (approvalId === undefined) {
        const may = boundFacts(bound);
        const again = this.#judge(may);
        const shown = this.#boundText(bound);
        if (again.action === 'deny') {
          this.#deny(again, may, shown, true);
          return;
        }
        if (again.action === 'approve') {
          // A credential statement's parameters may be its password (`SELECT dblink_connect($1)`): never shown.
          const params = may.some((f) => this.#hidesArguments(f)) ? [] : bindParameters(bytes, name.end);
          const withParams = params.length > 0 ? `${shown} -- params: ${paramsJson(params)}` : shown;
          this.#hold(Frontend.Bind, bytes, again, may, shown, { facts: may, text: withParams });
          return;
        }
      }
    }
    if (this.ctx.audit) this.#bind(bytes, approvalId);
    this.#up(bytes);
  }

  #forwardQuery(bytes: Buffer, query: ClassifiedQuery, started: number, extra?: Partial<AuditEvent>): void {
    const copyIn = copiesFromClient(query.shared);
    this.#owed.push(copyIn ? COPY_QUERY_REPLY : QUERY_REPLY);
    if (copyIn) this.#inCopy = true;
    const verdict: AuditVerdict = extra?.approvalId ? 'approved' : 'allowed';
    if (this.ctx.audit) {
      const at = Date.now();
      for (let i = 0; i < query.length; i++) {
        const kinds = query.shared[i]!.kinds;
        this.#open.push(openStatement(this.#shown(query.text(i), query.shared[i]!), kindLabel(kinds), verdict, extra, at, started, null, 0));
      }
    }
    this.#record(verdict, query.length);
    this.#up(bytes);
  }

  #parse(bytes: Buffer): void {
    const name = this.#sql(bytes, 5);
    const query = this.#sql(bytes, name.end);
    let facts: SqlStatementFacts;
    try {
      facts = classifyPrepared(query.value);
    } catch (err) {
      this.#refuseUnparseable(err, query.value, true);
      return;
    }
    if (facts.statementName !== '') this.#credentialPrepared.notePrepares([facts]);
    // Remembered before the verdict, as SQL PREPAREs are: an EXECUTE naming a refused one still shows no password.
    if (this.#hidesArguments(facts)) this.#credentialPrepared.remember(name.value);
    const verdict = this.#judge([facts]);
    if (verdict.action === 'deny') {
      this.#deny(verdict, [facts], query.value, true);
      return;
    }
    if (verdict.action === 'approve') {
      this.#hold(Frontend.Parse, bytes, verdict, [facts], query.value);
      return;
    }
    const runs = this.#approvalBound.size > 0 ? this.#executesApprovalBound(Frontend.Parse, bytes, [facts], () => [facts], query.value) : undefined;
    if (runs === HELD) return;
    // A statement that EXECUTEs a released one (a window allows it now) is bound to that one: each
    // Bind of it runs it again, so each is judged again, as a Bind of the released one is.
    if (runs !== undefined) this.#parsed(name.value, bytes, [facts], true, undefined, runs);
    else this.#parsed(name.value, bytes, [facts], verdict.windowApproval !== undefined);
  }

  /**
   * Forwards a Parse of statement `name`. `approvalBound`: released by an
   * approval or a window, so that each execution of it is judged again (as
   * `judged`, when what it runs is another statement: an EXECUTE of a
   * released one); with `approvalId`, the Bind right behind it is the one
   * that approval covers. A Parse of the unnamed statement ends a release
   * of the one it replaces once the server has done it (#opDone).
   */
  #parsed(name: string, bytes: Buffer, facts: SqlStatementFacts[], approvalBound: boolean, approvalId?: string, judged: SqlStatementFacts[] = facts): void {
    const f = facts[0]!;
    let released: StatementOp['released'];
    if (approvalBound) {
      const replaced = this.#approvalBound.get(name);
      const bound = this.#bindApproval(name, judged.at(-1)!, approvalId, judged.slice(0, -1));
      bound.unconfirmedIn = this.#batchesSent;
      released = { bound, replaced };
      // A PREPARE sent by Parse: what it prepares is released with it.
      this.#bindPrepared(facts);
    }
    // Remembered by #parse already: an SQL EXECUTE of this name runs it too (one set of names for both).
    const executes = f.statementName !== '' && f.kinds.includes('execute') ? f.statementName : undefined;
    this.#parseSent(name, prepared(this.#shown(f.text, f), kindLabel(f.kinds), this.#hidesArguments(f), executes), bytes, released);
  }

  /** Statement text as the audit trail, logs and approvers see it: auditText, and an EXECUTE of a credential statement without its arguments. */
  #shown(text: string, facts: SqlStatementFacts): string {
    if (this.#credentialPrepared.executes(facts)) return withoutArguments(text);
    return auditText(text, facts);
  }

  /** Its parameters (Bind) or arguments (SQL EXECUTE) may be a password: never shown. */
  #hidesArguments(facts: SqlStatementFacts): boolean {
    return namesCredential(facts) || this.#credentialPrepared.executes(facts);
  }

  /**
   * Policy verdict, with an approver's time window turning `approve` into
   * `allow`. A simple Query is judged on its shape's shared facts (the
   * verdict is remembered per shape); a window is looked up by the
   * fingerprint of the real text.
   */
  #judge(statements: ClassifiedQuery | readonly SqlStatementFacts[]): Verdict & { windowApproval?: string } {
    const query = statements instanceof ClassifiedQuery ? statements : undefined;
    const facts = query ? query.shared : (statements as readonly SqlStatementFacts[]);
    const verdict = this.ctx.policy.evaluateAll(facts, query !== undefined);
    if (verdict.action !== 'approve' || !this.ctx.approvals) return verdict;
    const real = query ? query.facts() : facts;
    const windows = real.map((f) => this.ctx.approvals!.windowAllows(this.ctx.subject, this.ctx.target, fingerprint(f), this.ctx.issuer));
    if (windows.every((w) => w !== undefined)) {
      return { ...verdict, action: 'allow', reason: `approved for a window by ${windows[0]!.decidedBy}`, windowApproval: windows[0]!.id };
    }
    return verdict;
  }

  #deny(verdict: Verdict, facts: SqlStatementFacts[], sent: string, extended: boolean, approvalId?: string, auditVerdict: AuditVerdict = 'denied'): void {
    const text = facts.length > 0 ? facts.map((f) => this.#shown(f.text, f)).join('; ') : sent;
    const message = approvalId
      ? `sluice: approval ${approvalId} ${auditVerdict === 'approval_expired' ? 'expired' : auditVerdict === 'approval_cancelled' ? 'was cancelled' : 'was denied'}; the statement was not run`
      : `sluice: denied by rule "${verdict.rule ?? `default of policy ${verdict.policy}`}": ${verdict.reason}`;
    this.ctx.logger.info({ rule: verdict.rule, policy: verdict.policy, approvalId, verdict: auditVerdict, statement: truncate(text) }, 'statement refused');
    this.ctx.audit?.write(
      this.#event(text, facts.map((f) => f.kinds.join(',')).join(';'), auditVerdict, {
        ...(verdict.rule ? { rule: verdict.rule } : {}),
        ...(approvalId ? { approvalId } : {}),
        sqlstate: sqlstate.INSUFFICIENT_PRIVILEGE,
        error: message,
      }),
    );
    this.#record(auditVerdict, facts.length);
    const error = errorResponse({ severity: 'ERROR', code: sqlstate.INSUFFICIENT_PRIVILEGE, message });
    if (extended) this.#refuseInBatch(error);
    else this.#refuseQuery(error, facts);
  }

  #refuseUnparseable(err: unknown, sent: string, extended: boolean): void {
    if (!(err instanceof SqlParseError)) throw err;
    // Unparsed text could be a mistyped CREATE ROLE ... PASSWORD, or a connection string: cut it there.
    const text = withoutPassword(sent);
    const cut = text !== sent;
    // The parser's message quotes the text near where it stopped (`syntax error at or near
    // "hunter2"`): past a password it is not repeated to the log or the audit trail.
    const reason = cut ? 'the parser\'s message is withheld: the statement names a password' : err.message;
    const message = `sluice: statement refused: it does not parse (${reason})`;
    this.ctx.logger.info({ reason, statement: truncate(text) }, 'unparseable statement refused');
    this.ctx.audit?.write(this.#event(text, 'unparseable', 'denied', { sqlstate: err.sqlState, error: message }));
    this.#record('denied', 1);
    const error = errorResponse({ severity: 'ERROR', code: err.sqlState, message });
    if (extended) this.#refuseInBatch(error);
    else this.#refuseQuery(error);
  }

  /** The portal an Execute names. */
  #portalOf(execute: Buffer): string {
    return execute[5] === 0 ? '' : this.#sql(execute, 5).value;
  }

  /** A NUL-terminated SQL string or name (of a statement or portal), decoded in the session's encoding. */
  #sql(bytes: Buffer, offset: number): { value: string; end: number } {
    if (!this.ctx.decode) return cstring(bytes, offset);
    const nul = bytes.indexOf(0, offset);
    const end = nul < 0 ? bytes.length : nul;
    return { value: this.ctx.decode(bytes, offset, end), end: end + 1 };
  }

  // --- approvals -----------------------------------------------------------

  /**
   * Holds a Query, a Parse or a Bind for an approval. `shown`: what the
   * approver is shown and what the approval's fingerprint (for a window)
   * is taken from, when that is not the held message's own statements (an
   * EXECUTE or a Bind of a statement released by an earlier approval).
   */
  #hold(type: number, bytes: Buffer, verdict: Verdict, facts: SqlStatementFacts[], text: string, shown?: { facts: SqlStatementFacts[]; text: string }): void {
    const approvals = this.ctx.approvals;
    const extended = type !== Frontend.Query;
    if (!approvals) {
      // No approval flow configured: an approve rule cannot be honoured, so fail closed.
      this.#deny({ ...verdict, reason: `${verdict.reason} (needs approval, but approvals are not configured)` }, facts, text, extended);
      return;
    }
    const judged = shown?.facts ?? facts;
    const held = Buffer.from(bytes);
    const pending = approvals.requestFor(this.ctx, {
      protocol: 'postgres',
      policy: verdict.policy,
      rule: verdict.rule ?? '',
      text: shown?.text ?? facts.map((f) => this.#shown(f.text, f)).join('; '),
      heldBytes: held,
      fingerprint: judged.length === 1 ? fingerprint(judged[0]!) : judged.map((f) => fingerprint(f)).join(':'),
    });
    if ('refused' in pending) {
      // Over the approval limits (too many waiting, too long to show): refused, as a denial is.
      this.#deny({ ...verdict, reason: `${verdict.reason} (needs approval, but ${pending.refused})` }, facts, text, extended);
      return;
    }
    this.#pending = pending;
    const id = pending.record.id;
    this.#holdClient();
    this.#emit({
      kind: 'local',
      notice: noticeResponse({
        severity: 'NOTICE',
        code: '01000',
        message: `sluice: statement held for approval ${id} (rule "${verdict.rule}")`,
        detail: `waiting until ${pending.record.expiresAt}`,
        hint: `an approver runs: sluice approvals approve ${id}`,
      }),
    });
    this.#io.flush();
    const started = Date.now();
    void pending.outcome.then((outcome) => {
      if (this.#closed) return;
      try {
        this.#decided(this.#released(outcome, held), id, type, held, verdict, facts, text, started, judged);
      } catch (err) {
        // Outside the relay's framing, where a throw would end the session: so it is ended here,
        // not left as an unhandled rejection that ends the process (a failing store, say).
        this.ctx.logger.error({ err, approvalId: id }, 'failed while carrying out an approval decision');
        this.#closed = true;
        // What was decided before the failure (a denial's error) still reaches the client.
        this.#io.flush();
        this.#io.shutdown('internal error', errorResponse({ severity: 'FATAL', code: sqlstate.INTERNAL_ERROR, message: 'sluice: internal error; the session is closed' }));
      }
    });
  }

  /**
   * The outcome's status, checked against what is held: an approval releases
   * only the bytes, session and subject it was asked for (`releases`). Each
   * hold waits on its own outcome, so they always match; were that ever to
   * break, the held message is refused as a denied one, not run.
   */
  #released(outcome: ApprovalOutcome, held: Buffer): ApprovalOutcome['status'] {
    if (outcome.status !== 'approved' || releases(outcome.record, this.ctx.sessionId, this.ctx.subject, held)) return outcome.status;
    this.ctx.logger.error({ approvalId: outcome.record.id }, 'an approval does not match the held statement; refused');
    return 'denied';
  }

  /** Carries out an approval's outcome for the held message, then what the client sent behind it. */
  #decided(status: string, id: string, type: number, held: Buffer, verdict: Verdict, facts: SqlStatementFacts[], text: string, started: number, judged: SqlStatementFacts[]): void {
    this.#pending = undefined;
    if (status === 'approved') {
      this.ctx.approvals?.markUsed(id);
      if (type === Frontend.Query) {
        this.#forwardQuery(held, new ClassifiedQuery(text, facts, undefined), started, { approvalId: id, ...(verdict.rule ? { rule: verdict.rule } : {}) });
        this.#bindPrepared(facts);
      } else if (type === Frontend.Parse) {
        this.#parsed(this.#sql(held, 5).value, held, facts, true, id, judged);
      } else {
        if (this.ctx.audit) this.#bind(held, id);
        this.#up(held);
      }
    } else {
      const auditVerdict: AuditVerdict = status === 'expired' ? 'approval_expired' : status === 'cancelled' ? 'approval_cancelled' : 'approval_denied';
      this.#deny(verdict, facts, text, type !== Frontend.Query, id, auditVerdict);
    }
    // What the client sent behind it is judged now, in order (behind a refusal too: the server has the probe first).
    this.#replayBacklog();
  }

  // --- refusals -------------------------------------------------------------

  /**
   * A message of an extended batch is refused with `error`. The server is
   * made to fail the batch there, as it would have had the message failed
   * on it: REFUSAL_PARSE goes upstream in the refused message's place, and
   * its error rolls back the implicit transaction of the batch, so
   * statements the batch ran before it are not committed by its Sync
   * (JDBC's executeBatch counts on that), or aborts the open transaction
   * block. The client gets `error` in the place of that reply (fromServer).
   * What the client sends up to the Sync is discarded, as the server would
   * skip it. A batch the server has failed already (#erroredBatch) needs no
   * probe.
   */
  #refuseInBatch(error: Buffer): void {
    this.#discardUntilSync = true;
    if (this.#erroredBatch === this.#batchesSent) return;
    this.#probes.push({ batch: this.#batchesSent, error });
    this.#up(REFUSAL_PARSE, Frontend.Parse);
  }

  /**
   * The probe for a refused Query: REFUSAL_IN_BLOCK_QUERY when its
   * statements before the first one that would not have run (#wouldRun)
   * leave a transaction block open (BEGIN, and no COMMIT or ROLLBACK after
   * it), so that the server's transaction ends up as those statements and
   * the failure would have left it; else REFUSAL_QUERY.
   */
  #queryProbe(facts: readonly SqlStatementFacts[]): Buffer {
    let open = false;
    for (const f of facts) {
      if (!this.#wouldRun(f)) break;
      if (f.kinds.includes('transaction')) {
        const effect = blockEffect(f.text);
        if (effect !== undefined) open = effect === 'open';
      }
    }
    return open ? REFUSAL_IN_BLOCK_QUERY : REFUSAL_QUERY;
  }

  /** The policy lets the statement run without a new approval: allowed, or covered by a window; an EXECUTE of a statement an approval released, judged as that statement (#executesApprovalBound). */
  #wouldRun(f: SqlStatementFacts): boolean {
    const bound = f.statementName !== '' && f.kinds.includes('execute') ? this.#approvalBound.get(f.statementName) : undefined;
    if (bound !== undefined && this.#judge(boundFacts(bound)).action !== 'allow') return false;
    return this.#judge([f]).action === 'allow';
  }

  // --- server -> client ----------------------------------------------------

  fromServer(type: number, bytes: Buffer): void {
    switch (type) {
      case Backend.ParameterStatus:
        if (this.#readingChanged(bytes)) return;
        break;
      case Backend.ParseComplete:
        this.#opDone('parse');
        break;
      case Backend.CloseComplete:
        this.#opDone('close');
        break;
      case Backend.ReadyForQuery:
        if (this.#probes[0]?.batch === this.#batchesAnswered) {
          // The batch ended without the error its probe must have caused (see #readyForQuery).
          this.#probeNotRefused();
          return;
        }
        this.#batchesAnswered++;
        this.#copyInsOfQuery = 0;
        // Parses and Closes of the batch just answered that got no reply were refused, or skipped after an error.
        while (this.#opsInFlight.length > 0 && this.#opsInFlight[0]!.batch < this.#batchesAnswered) this.#opFailed(this.#opsInFlight.shift()!);
        this.#readyForQuery(bytes);
        return;
      case Backend.CopyInResponse:
        if (this.#copyIn()) return;
        // The Query's first COPY began when it was sent (a client may send its data and CopyDone
        // without waiting for this). A later one of the same Query (`COPY a FROM STDIN; COPY b FROM
        // STDIN`) begins here: the first one's CopyDone ended what the send began.
        if (++this.#copyInsOfQuery > 1) this.#inCopy = true;
        break;
      case Backend.ErrorResponse: {
        // The server skips the rest of the batch: no Parse or Close of it still on its way will be done.
        while (this.#opsInFlight.length > 0 && this.#opsInFlight[0]!.batch === this.#batchesAnswered) this.#opFailed(this.#opsInFlight.shift()!);
        const code = errorField(bytes, CODE_FIELD);
        // An error that ends the session (a terminated backend, a shutdown) is shown as it is.
        const severity = errorSeverity(bytes);
        const anError = severity !== 'FATAL' && severity !== 'PANIC';
        const answering = this.#answering();
        if (answering?.refusal !== undefined) {
          // A refused Query's probe: its one error is the refusal's place.
          const refusal = answering.refusal;
          answering.refusal = undefined;
          this.#queryRefusals--;
          if (anError) {
            this.#masked = undefined;
            this.#io.toClient(refusal);
            return;
          }
        }
        const probe = this.#probes[0];
        if (probe !== undefined && probe.batch === this.#batchesAnswered) {
          // The batch's first error: the probe's own (the client is told its refusal instead), or an
          // earlier message's, after which the server skipped the probe (that error is the answer).
          // An earlier statement's own syntax error (SQL the server's version does not know, which
          // Sluice's newer parser took) would be read as the probe's: the client sees the refusal.
          this.#probes.shift();
          // The server's answer to REFUSAL_PARSE: a syntax error.
          if (code === sqlstate.SYNTAX_ERROR && anError) {
            // Nothing of the batch is open but a statement of its own that failed with a syntax error.
            if (this.#open.length > 0) this.#closeOpen(code);
            this.#masked = undefined;
            this.#io.toClient(probe.error);
            return;
          }
        }
        this.#erroredBatch = this.#batchesAnswered;
        if (this.#open.length > 0) this.#closeOpen(code);
        break;
      }
      case Backend.CommandComplete:
        // The BEGIN of REFUSAL_IN_BLOCK_QUERY: the client sent none.
        if (this.#queryRefusals > 0 && this.#answering()?.refusal !== undefined) return;
        if (this.#open.length > 0) this.#closeOpen(undefined, rowsFromTag(bytes));
        break;
      case Backend.EmptyQueryResponse:
      case Backend.PortalSuspended:
        if (this.#open.length > 0) this.#closeOpen(undefined, undefined);
        break;
    }
    // The statement is answered: counts without an open audit row (audit off) must not leak into the next one.
    if (type === Backend.CommandComplete || type === Backend.ErrorResponse || type === Backend.EmptyQueryResponse || type === Backend.PortalSuspended) {
      this.#masked = undefined;
    }
    this.#io.toClient(bytes);
  }

  /**
   * The server reports (ParameterStatus) that a setting deciding how it
   * reads SQL changed. Every statement that names one is refused
   * (sluice-parser-settings), but a function or a DO block can change them
   * unseen; from then on this gate and the server would read the same text
   * differently (with standard_conforming_strings off, a backslash ends a
   * string here and not there). So the session ends here, before the reply
   * of the statement that did it reaches the client: fail closed. Whatever
   * the client pipelined behind that statement has reached the server
   * already; docs/policy.md says so.
   */
  #readingChanged(bytes: Buffer): boolean {
    const strings = parameterStatusValue(bytes, 'standard_conforming_strings');
    const encoding = parameterStatusValue(bytes, 'client_encoding');
    const changed =
      strings !== undefined && strings !== 'on'
        ? `standard_conforming_strings=${strings}`
        : encoding !== undefined && this.ctx.clientEncoding !== undefined && encoding !== this.ctx.clientEncoding
          ? `client_encoding=${encoding}`
          : undefined;
    if (changed === undefined) return false;
    this.ctx.logger.warn({ setting: changed }, 'the server reported a change to how it reads SQL; session closed');
    this.#io.shutdown(
      `the server reported ${changed}`,
      errorResponse({
        severity: 'FATAL',
        code: sqlstate.INSUFFICIENT_PRIVILEGE,
        message: `sluice: the session changed ${changed.split('=')[0]} (in a function or DO block?); sluice must read SQL as the server does, so the session is closed`,
      }),
    );
    return true;
  }

  /**
   * A message after which the server's replies could no longer be paired
   * with what the gate owes the client (see #extendedOpen, #inCopy): no
   * mainstream driver sends one, and the gate's own answers depend on that
   * pairing, so the session ends here (fail closed) with a FATAL naming it.
   */
  #unpairable(what: string): void {
    this.ctx.logger.warn({ reason: what }, 'a message sluice cannot pair with its replies; session closed');
    this.#io.shutdown(
      what,
      errorResponse({ severity: 'FATAL', code: sqlstate.PROTOCOL_VIOLATION, message: `sluice: ${what} is not supported; the session is closed` }),
    );
  }

  /**
   * COPY FROM STDIN started. From a simple Query, the replies pair as
   * always. From an Execute (the extended protocol), the server ignores
   * every Sync the client sends until CopyDone, and libpq sends one right
   * behind the Execute: the gate, which owes one ReadyForQuery per Sync,
   * would from then on put its refusals next to the wrong ReadyForQuery (a
   * statement that ran shown as denied) or wait for one that never comes.
   * The result masker stops trusting descriptions there too. Drivers send
   * COPY as a simple Query; this rare case ends the session, with a FATAL
   * that says what to do instead (fail closed).
   */
  #copyIn(): boolean {
    // The first reply the server still owes (Sluice's own notice may wait ahead of it).
    if (this.#answering()?.query === true) return false;
    this.ctx.logger.warn('COPY FROM STDIN through the extended protocol; session closed');
    this.#io.shutdown(
      'COPY FROM STDIN through the extended protocol',
      errorResponse({
        severity: 'FATAL',
        code: sqlstate.FEATURE_NOT_SUPPORTED,
        message: 'sluice: COPY FROM STDIN through the extended protocol (Parse/Bind/Execute) is not supported; send it as a simple query',
      }),
    );
    return true;
  }

  serverChunkDone(): void {
    this.#drainLocal();
  }

  #readyForQuery(bytes: Buffer): void {
    // Local replies queued before this one go first.
    this.#drainLocal();
    const owed = this.#owed[0]?.kind === 'server' ? (this.#owed.shift() as Extract<Owed, { kind: 'server' }>) : undefined;
    // Answered: a COPY in it is over, or never started (refused before its CopyInResponse).
    if (owed === COPY_QUERY_REPLY) this.#inCopy = false;
    if (owed?.refusal !== undefined) {
      // The probe's answer had no error: the server took it for SQL (a server that is not PostgreSQL?), and ran what
      // the refused message's batch or transaction held. Whatever it ran stands; fail closed.
      this.#probeNotRefused();
      return;
    }
    this.#finishOpen('not run: an earlier statement of the same message failed');
    // Outside a transaction block no portal survives (PostgreSQL drops them at transaction end):
    // let go of their Bind messages, which would otherwise keep a client chunk alive while the session idles.
    if (bytes[5] === 0x49 /* 'I' */) this.#forgetPortals();
    this.#io.toClient(bytes);
    this.#drainLocal();
  }

  // --- replies Sluice makes itself --------------------------------------------

  /** The Query or Sync whose replies the server is sending now: the first reply owed by the server. */
  #answering(): Extract<Owed, { kind: 'server' }> | undefined {
    for (let i = 0; i < this.#owed.length; i++) {
      const owed = this.#owed[i]!;
      if (owed.kind === 'server') return owed;
    }
    return undefined;
  }

  /**
   * A Query (or a FunctionCall outside a batch) is refused with `error`:
   * its probe (#queryProbe: `facts`, the Query's statements) goes upstream
   * in its place, and the client gets `error`
   * in the place of the server's (fromServer), then the server's
   * ReadyForQuery, whose status is what the failure made of the
   * transaction.
   */
  #refuseQuery(error: Buffer, facts: readonly SqlStatementFacts[] = []): void {
    this.#owed.push({ kind: 'server', query: true, refusal: error });
    this.#queryRefusals++;
    this.#up(facts.length > 1 ? this.#queryProbe(facts) : REFUSAL_QUERY, Frontend.Query);
  }

  /** The server answered a refusal's probe without the error it must cause: see #readyForQuery. */
  #probeNotRefused(): void {
    this.#probes.length = 0;
    this.ctx.logger.error('the server answered a refusal probe without an error; session closed');
    this.#io.shutdown(
      'refusal probe answered',
      errorResponse({ severity: 'FATAL', code: sqlstate.INTERNAL_ERROR, message: 'sluice: internal error; the session is closed' }),
    );
  }

  #emit(owed: Extract<Owed, { kind: 'local' }>): void {
    this.#owed.push(owed);
    this.#drainLocal();
  }

  #holdClient(): void {
    if (this.#clientHeld) return;
    this.#clientHeld = true;
    this.#io.holdClient();
  }

  /** Reads resume once nothing holds them: no decision awaited, nothing waiting to be judged. */
  #resumeClient(): void {
    if (!this.#clientHeld || this.#pending || this.#backlog.length > 0) return;
    this.#clientHeld = false;
    this.#io.releaseClient();
  }

  /** Judges what waited in #backlog, in order, until something holds it again; reads resume when none is left. */
  #replayBacklog(): void {
    const backlog = this.#backlog;
    this.#backlog = [];
    for (let i = 0; i < backlog.length; i++) {
      this.fromClient(backlog[i]!.type, backlog[i]!.bytes);
      if (this.#pending) {
        // Held again: what is left waits for that.
        this.#backlog.push(...backlog.slice(i + 1));
        break;
      }
    }
    this.#io.flush();
    this.#resumeClient();
  }

  /** Writes local replies that have reached the head of the queue, when the client stream is at a boundary. */
  #drainLocal(): void {
    while (this.#owed[0]?.kind === 'local' && this.#io.clientAtBoundary()) {
      const owed = this.#owed.shift() as Extract<Owed, { kind: 'local' }>;
      this.#io.toClient(owed.notice);
    }
  }

  // --- audit -------------------------------------------------------------------

  /**
   * Bind: which statement the portal runs, resolved now (a later Parse in
   * the same batch may replace the unnamed statement). Its parameters stay
   * bytes in the Bind message until the audit event is built.
   */
  #bind(bytes: Buffer, approvalId?: string): void {
    let at = 5;
    let portal = '';
    if (bytes[5] !== 0) {
      const p = this.#sql(bytes, 5);
      portal = p.value;
      at = p.end - 1;
    }
    const nameEnd = bytes.indexOf(0, at + 1);
    if (nameEnd < 0) return; // malformed: the server refuses it; nothing to audit
    const name = this.#statementName(bytes, at + 1, nameEnd);
    const statement = this.#statement(name);
    // Parameters of a credential statement may be its password: never kept. Nor those of a name an
    // SQL PREPARE has since made one (PREPARE replaces what a Parse made), or of an EXECUTE of one.
    const runs = statement?.executes;
    const credential = statement?.credential === true || this.#credentialPrepared.has(name) || (runs !== undefined && this.#credentialPrepared.has(runs));
    const bind = credential ? null : bytes;
    if (portal !== '') {
      this.#portals.set(portal, { statement, bind, paramsAt: nameEnd + 1, approvalId });
      return;
    }
    // The unnamed portal is rebound by almost every Bind: one object, updated in place (Execute copies what it needs).
    const unnamed = (this.#unnamedPortal ??= { statement: undefined, bind: null, paramsAt: 0, approvalId: undefined });
    unnamed.statement = statement;
    unnamed.bind = bind;
    unnamed.paramsAt = nameEnd + 1;
    unnamed.approvalId = approvalId;
  }

  /**
   * Close of a statement ('S') or a portal ('P'): the server forgets it once
   * it answers CloseComplete, and so does the gate then (#opDone). Without
   * this, a client that prepares and closes statement after statement grew
   * the gate's maps (each with the statement's text) for as long as the
   * session lived.
   */
  #closeNamed(bytes: Buffer): void {
    const name = this.#sql(bytes, 6).value;
    const kind = bytes[5] === 0x53 /* S */ ? 'S' : 'P';
    // A portal's last Bind is only audit bookkeeping: forgotten now.
    if (kind === 'P' && name !== '') this.#portals.delete(name);
    this.#opsInFlight.push({ kind, name, statement: undefined, batch: this.#batchesSent, seq: this.#opsSent++ });
  }

  #forgetPortals(): void {
    if (this.#portals.size > 0) this.#portals.clear();
    const unnamed = this.#unnamedPortal;
    if (unnamed !== undefined) {
      unnamed.statement = undefined;
      unnamed.bind = null;
      unnamed.approvalId = undefined;
    }
  }

  /** The statement name in bytes[start, end), reusing the last one's string when the bytes are the same. */
  #statementName(bytes: Buffer, start: number, end: number): string {
    if (end === start) return '';
    const last = this.#lastNameBytes;
    if (last.length === end - start) {
      let same = true;
      for (let i = 0; i < last.length; i++) {
        if (last[i] !== bytes[start + i]) {
          same = false;
          break;
        }
      }
      if (same) return this.#lastName;
    }
    // In the session's encoding, as SQL's names are: under LATIN1, two names that differ in a byte
    // that is not UTF-8 (0xe8, 0xe9) would both decode to U+FFFD and be one name to the gate.
    this.#lastName = this.ctx.decode ? this.ctx.decode(bytes, start, end) : bytes.toString('utf8', start, end);
    this.#lastNameBytes = Buffer.from(bytes.subarray(start, end));
    return this.#lastName;
  }

  #execute(bytes: Buffer): void {
    const portal = this.#portalOf(bytes);
    const bound = portal === '' ? this.#unnamedPortal : this.#portals.get(portal);
    const statement = bound?.statement;
    const now = Date.now();
    const approvalId = bound?.approvalId;
    const verdict: AuditVerdict = approvalId === undefined ? 'allowed' : 'approved';
    const extra = approvalId === undefined ? undefined : { approvalId };
    if (statement === undefined) {
      this.#open.push(openStatement(`(portal "${portal}")`, 'execute', verdict, extra, now, now, null, 0));
    } else if (statement.credential) {
      const open = openStatement(statement.text, statement.kind, verdict, extra, now, now, null, 0);
      open.params = '["[redacted]"]';
      this.#open.push(open);
    } else {
      this.#open.push(openStatement(statement.text, statement.kind, verdict, extra, now, now, bound!.bind, bound!.paramsAt));
    }
    this.#record(verdict, 1);
  }

  #event(text: string, kind: string, verdict: AuditVerdict, extra?: Partial<AuditEvent>, now = Date.now()): AuditEvent {
    const event: AuditEvent = {
      time: isoTime(now),
      sessionId: this.ctx.sessionId,
      subject: this.ctx.subject,
      target: this.ctx.target,
      protocol: 'postgres',
      kind,
      text,
      verdict,
      policy: this.ctx.policy.name,
    };
    return extra ? Object.assign(event, extra) : event;
  }

  #record(verdict: AuditVerdict, n: number): void {
    if (this.ctx.onVerdict) for (let i = 0; i < n; i++) this.ctx.onVerdict(verdict);
  }

  /** The server answered the oldest open statement: its event is built at `afterWrite`. */
  #closeOpen(sqlState: string | undefined, rows?: number): void {
    const open = this.#open.shift()!;
    open.durationMs = Date.now() - open.started;
    open.rows = rows;
    open.sqlstate = sqlState;
    open.masking = this.#masked;
    this.#masked = undefined;
    this.#answered.push(open);
  }

  /** Statements the server will never answer (an earlier one of the message failed, the session ended). */
  #finishOpen(reason: string): void {
    while (this.#open.length > 0) {
      const open = this.#open.shift()!;
      open.error = reason;
      this.#answered.push(open);
    }
  }

  #answerEvent(open: OpenStatement): AuditEvent {
    const ctx = this.ctx;
    const text = open.text;
    const params = open.bind === null ? open.params : boundParams(open.bind, open.paramsAt);
    if (open.error !== undefined) {
      // Never answered: no duration, no rows.
      const event = this.#event(text, open.kind, open.verdict, open.extra, open.at);
      if (params !== undefined) event.params = params;
      event.error = open.error;
      return event;
    }
    const durationMs = open.durationMs;
    const rows = open.rows;
    // The two common shapes as literals (see OpenStatement); the rare fields are added after.
    const event: AuditEvent =
      rows === undefined
        ? {
            time: isoTime(open.at), sessionId: ctx.sessionId, subject: ctx.subject, target: ctx.target, protocol: 'postgres',
            kind: open.kind, text, params, verdict: open.verdict, policy: ctx.policy.name, durationMs,
          }
        : {
            time: isoTime(open.at), sessionId: ctx.sessionId, subject: ctx.subject, target: ctx.target, protocol: 'postgres',
            kind: open.kind, text, params, verdict: open.verdict, policy: ctx.policy.name, durationMs, rows,
          };
    if (open.extra) Object.assign(event, open.extra);
    if (open.sqlstate) event.sqlstate = open.sqlstate;
    if (open.masking !== undefined) event.masking = open.masking;
    return event;
  }
}

function openStatement(
  text: string,
  kind: string,
  verdict: AuditVerdict,
  extra: Partial<AuditEvent> | undefined,
  at: number,
  started: number,
  bind: Buffer | null,
  paramsAt: number,
): OpenStatement {
  return { text, kind, verdict, extra, at, started, bind, paramsAt, params: undefined, durationMs: 0, rows: undefined, sqlstate: undefined, error: undefined, masking: undefined };
}

/** The parameters of a Bind as the audit event's `params` (a JSON array), or undefined when there are none. */
function boundParams(bind: Buffer, at: number): string | undefined {
  const params = bindParameters(bind, at);
  return params.length > 0 ? paramsJson(params) : undefined;
}

// --- wire helpers ---------------------------------------------------------------

/** A NUL-terminated string starting at `offset`; `end` is just past the NUL. */
function cstring(bytes: Buffer, offset: number): { value: string; end: number } {
  const nul = bytes.indexOf(0, offset);
  const end = nul < 0 ? bytes.length : nul;
  // The unnamed portal or statement, in almost every Bind and Execute.
  return { value: end === offset ? '' : bytes.toString('utf8', offset, end), end: end + 1 };
}

/** Bind parameter values for the audit trail: text as is, binary as hex, NULL as null. */
function bindParameters(bytes: Buffer, offset: number): string[] {
  try {
    const formatCount = bytes.readInt16BE(offset);
    const formats: number[] = [];
    let i = offset + 2;
    for (let f = 0; f < formatCount; f++, i += 2) formats.push(bytes.readInt16BE(i));
    const count = bytes.readInt16BE(i);
    i += 2;
    const out: string[] = [];
    for (let p = 0; p < count; p++) {
      const len = bytes.readInt32BE(i);
      i += 4;
      if (len < 0) {
        out.push('NULL');
        continue;
      }
      const format = formats.length === 0 ? 0 : formats.length === 1 ? formats[0]! : formats[p] ?? 0;
      out.push(format === 0 ? bytes.toString('utf8', i, i + len) : `\\x${bytes.toString('hex', i, i + len)}`);
      i += len;
    }
    return out;
  } catch {
    // The server will refuse a malformed Bind itself; the audit row just lacks parameters.
    return [];
  }
}

/**
 * JSON.stringify(params), exactly. Bound values are most often plain
 * printable ASCII (ids, dates, names), which JSON leaves as they are: those
 * are quoted by hand, several times cheaper than JSON.stringify on a small
 * array (it runs for every Execute). Anything else (a quote, a backslash, a
 * control character, non-ASCII) goes to JSON.stringify.
 */
export function paramsJson(params: readonly string[]): string {
  let out = '[';
  for (let i = 0; i < params.length; i++) {
    const p = params[i]!;
    for (let k = 0; k < p.length; k++) {
      const c = p.charCodeAt(k);
      if (c < 0x20 || c > 0x7e || c === 0x22 /* " */ || c === 0x5c /* \ */) return JSON.stringify(params);
    }
    out += i === 0 ? `"${p}"` : `,"${p}"`;
  }
  return `${out}]`;
}

/** Rows from a CommandComplete tag: the last number of `INSERT 0 5`, `SELECT 3`, `COPY 10` ... */
export function rowsFromTag(bytes: Buffer): number | undefined {
  // The tag is NUL-terminated: its digits end just before the last byte. Scanned in place, no string made.
  const end = bytes.length - 1;
  let start = end;
  while (start > 5 && bytes[start - 1]! >= 0x30 && bytes[start - 1]! <= 0x39) start--;
  if (start === end || start - 1 < 5 || bytes[start - 1] !== 0x20) return undefined;
  // Up to 15 digits add up exactly; a longer count goes through Number() as it always did.
  if (end - start > 15) return Number(bytes.toString('latin1', start, end));
  let n = 0;
  for (let i = start; i < end; i++) n = n * 10 + (bytes[i]! - 0x30);
  return n;
}

const CODE_FIELD = 0x43; // 'C'
const SEVERITY_FIELD = 0x56; // 'V': never localized (PostgreSQL 9.6 on)
const LOCALIZED_SEVERITY_FIELD = 0x53; // 'S'

/** A field of an ErrorResponse, by its one-byte code. */
function errorField(bytes: Buffer, field: number): string | undefined {
  for (let i = 5; i < bytes.length && bytes[i] !== 0; ) {
    const end = bytes.indexOf(0, i + 1);
    if (end < 0) return undefined;
    if (bytes[i] === field) return bytes.toString('latin1', i + 1, end);
    i = end + 1;
  }
  return undefined;
}

function errorSeverity(bytes: Buffer): string | undefined {
  return errorField(bytes, SEVERITY_FIELD) ?? errorField(bytes, LOCALIZED_SEVERITY_FIELD);
}

/**
 * What a transaction statement does to a block: BEGIN / START TRANSACTION
 * opens one; COMMIT, END, ROLLBACK, ABORT and PREPARE TRANSACTION end it,
 * unless `AND CHAIN` opens the next one at once; ROLLBACK TO, COMMIT /
 * ROLLBACK PREPARED, SAVEPOINT and RELEASE do neither.
 */
function blockEffect(text: string): 'open' | 'close' | undefined {
  const words = leadingWords(text, 8);
  const [first, second] = words;
  if (first === 'begin' || (first === 'start' && second === 'transaction')) return 'open';
  if (first === 'prepare') return second === 'transaction' ? 'close' : undefined;
  if (first !== 'commit' && first !== 'end' && first !== 'abort' && first !== 'rollback') return undefined;
  if (second === 'prepared' || words.includes('to')) return undefined;
  const chain = words.indexOf('chain');
  return chain > 1 && words[chain - 1] === 'and' ? 'open' : 'close';
}

/** Up to `n` leading words of a statement, lowercased, read past whitespace and comments (`--` lines, nested block comments) wherever they stand. */
function leadingWords(text: string, n: number): string[] {
  const words: string[] = [];
  let i = 0;
  while (i < text.length && words.length < n) {
    const c = text[i]!;
    if (/\s/.test(c)) {
      i++;
    } else if (text.startsWith('--', i)) {
      // To the end of the line, as the server's lexer reads it: a CR ends it too.
      while (i < text.length && text[i] !== '\n' && text[i] !== '\r') i++;
    } else if (text.startsWith('/*', i)) {
      let depth = 0;
      while (i < text.length) {
        if (text.startsWith('/*', i)) {
          depth++;
          i += 2;
        } else if (text.startsWith('*/', i)) {
          i += 2;
          if (--depth === 0) break;
        } else i++;
      }
    } else {
      const word = /^[A-Za-z_]+/.exec(text.slice(i, i + 64));
      if (word === null) break;
      words.push(word[0].toLowerCase());
      i += word[0].length;
    }
  }
  return words;
}

/**
 * Statement text as the audit trail, logs and approvers see it: a statement
 * that may carry a password (namesCredential: CREATE/ALTER ROLE ...
 * PASSWORD, a user mapping's OPTIONS, a connection string) is cut at the
 * password. Repeated statements share their cached facts, so the last
 * answer is remembered. PgStatementGate.#shown adds the session's SQL
 * EXECUTEs of such statements.
 */
function auditText(text: string, facts: SqlStatementFacts): string {
  if (facts !== lastFacts) {
    lastFactsCredential = namesCredential(facts);
    lastFacts = facts;
  }
  return lastFactsCredential ? withoutPassword(text) : text;
}

let lastFacts: SqlStatementFacts | undefined;
let lastFactsCredential = false;


/**
 * A statement's kinds as the audit trail writes them (`select`,
 * `explain_analyze,delete`). Repeated statements share their (frozen,
 * cached) kinds array, so the last one is remembered: one comparison
 * instead of a join per statement.
 */
let lastKinds: readonly string[] | undefined;
let lastKindsLabel = '';

function kindLabel(kinds: readonly string[]): string {
  if (kinds !== lastKinds) {
    lastKindsLabel = kinds.join(',');
    lastKinds = kinds;
  }
  return lastKindsLabel;
}

function truncate(text: string): string {
  return text.length > 500 ? `${text.slice(0, 500)}…` : text;
}

/** The portal an Execute names (Execute: portal name, then the row limit). */
/** A COPY ... FROM STDIN among the statements: the client then sends CopyData until CopyDone or CopyFail. */
function copiesFromClient(statements: readonly SqlStatementFacts[]): boolean {
  for (let i = 0; i < statements.length; i++) {
    const kinds = statements[i]!.kinds;
    if (kinds.includes('copy_from') && !kinds.includes('copy_file') && !kinds.includes('copy_program')) return true;
  }
  return false;
}
